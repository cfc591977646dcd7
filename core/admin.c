/*
 * admin.c — the /_sluice/... endpoints (see admin.h). Everything answers on
 * the worker's loop except the history calls, which run on libuv's thread
 * pool: SQLite (through the records module's own read connections, after a
 * flush so a request that just finished is visible) must not stall the
 * worker's streams; and reload, which is answered when the main thread's
 * round over every worker is over (reload.h).
 */
#include "admin.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin_feed.h"
#include "error.h"
#include "log.h"
#include "metrics.h"
#include "redis.h"
#include "reload.h"
#include "ui.h"
#include "worker.h"

static const sl_header_t json_ct[] = {{SL_STR("content-type"), SL_STR("application/json")}};

static void reply(sl_request_t *req, int status, sl_str_t body)
{
    sl_conn_respond(req->conn, status, json_ct, 1, body);
}

static void reply_error(sl_request_t *req, int status, const char *message)
{
    sl_buf_t b;
    sl_buf_init(&b, 0);
    sl_buf_append_c(&b, "{\"error\":{\"type\":\"");
    sl_buf_append_c(&b, status == 404 ? "not_found" : status == 401 ? "authentication_error"
                                                                    : "invalid_request_error");
    sl_buf_append_c(&b, "\",\"message\":\"");
    sl_buf_append_json_str(&b, message, strlen(message));
    sl_buf_append_c(&b, "\"}}");
    reply(req, status, sl_str(b.base, b.len));
    sl_buf_free(&b);
}

/* Constant-time comparison so the token cannot be guessed byte by byte. */
static int secret_eq(sl_str_t a, const char *b)
{
    size_t bl = strlen(b);
    unsigned char diff = (unsigned char)(a.len != bl);
    for (size_t i = 0; i < a.len; i++)
        diff |= (unsigned char)(a.base[i] ^ b[i % (bl ? bl : 1)]);
    return diff == 0;
}

static int authorized(sl_worker_t *w, sl_request_t *req)
{
    const char *token = sl_luahost_config(w->host)->admin_token;
    if (!token || !*token)
        return 1;
    for (size_t i = 0; i < req->nheaders; i++) {
        sl_header_t *h = &req->headers[i];
        if (sl_str_ieq_c(h->name, "authorization") && h->value.len > 7 &&
            strncasecmp(h->value.base, "Bearer ", 7) == 0)
            return secret_eq(sl_str(h->value.base + 7, h->value.len - 7), token);
    }
    return 0;
}

/* Value of query parameter `name` (undecoded except '+' and %XX), into out. */
static int query_param(sl_str_t q, const char *name, char *out, size_t outlen)
{
    size_t nl = strlen(name);
    const char *p = q.base, *end = q.base + q.len;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *pe = amp ? amp : end;
        if ((size_t)(pe - p) > nl && memcmp(p, name, nl) == 0 && p[nl] == '=') {
            const char *v = p + nl + 1;
            size_t k = 0;
            while (v < pe && k + 1 < outlen) {
                if (*v == '%' && pe - v >= 3) {
                    char hex[3] = {v[1], v[2], 0};
                    out[k++] = (char)strtol(hex, NULL, 16);
                    v += 3;
                } else {
                    out[k++] = *v == '+' ? ' ' : *v;
                    v++;
                }
            }
            out[k] = '\0';
            return 1;
        }
        p = amp ? amp + 1 : end;
    }
    return 0;
}

/* A history call runs on libuv's thread pool: SQLite (the flush that makes
 * a just-finished request visible, a LIKE search over many rows) must not
 * stall the streams of the worker that received the admin request. */
typedef struct {
    uv_work_t work;
    sl_records_t *rs;
    sl_request_t *req;     /* NULL once the client has gone */
    enum { JOB_LIST, JOB_GET, JOB_DELETE, JOB_USAGE } kind;
    char id[160];
    char client[128], search[256], service[64], supplier[128], model[160], session[80];
    sl_records_filter_t f; /* its strings point into the buffers above */
    sl_records_usage_t usage;
    sl_buf_t out;
    int rc;
} history_job_t;

static void on_history_client_gone(void *data, int err)
{
    ((history_job_t *)data)->req = NULL;
}

static const sl_conn_handler_t history_conn_handler = {on_history_client_gone, NULL};

static void history_work(uv_work_t *w)
{
    history_job_t *j = (history_job_t *)w;
    sl_records_flush(j->rs, 1000);
    if (j->kind == JOB_LIST) {
        j->rc = sl_records_query(j->rs, &j->f, &j->out);
    } else if (j->kind == JOB_USAGE) {
        j->rc = sl_records_usage(j->rs, &j->usage, &j->out);
    } else if (j->kind == JOB_DELETE) {
        j->rc = sl_records_delete(j->rs, j->id);
        if (!j->rc)
            sl_buf_append_c(&j->out, "{\"deleted\":true}");
    } else {
        j->rc = sl_records_get(j->rs, j->id, &j->out);
    }
}

static void history_done(uv_work_t *w, int status)
{
    history_job_t *j = (history_job_t *)w;
    sl_request_t *req = j->req;
    if (req) {
        sl_conn_set_handler(req->conn, NULL, NULL);
        if (status < 0)
            reply_error(req, 500, uv_strerror(status));
        else if (j->rc == SL_ENOTFOUND)
            reply_error(req, 404, "no such request");
        else if (j->rc)
            reply_error(req, 500, sl_strerror(j->rc));
        else
            reply(req, 200, sl_str(j->out.base, j->out.len));
    }
    sl_buf_free(&j->out);
    free(j);
}

static void queue_history_job(sl_worker_t *w, history_job_t *j)
{
    sl_request_t *req = j->req;
    sl_conn_set_handler(req->conn, &history_conn_handler, j);
    int rc = uv_queue_work(&w->loop, &j->work, history_work, history_done);
    if (rc) {
        sl_conn_set_handler(req->conn, NULL, NULL);
        reply_error(req, 500, uv_strerror(rc));
        sl_buf_free(&j->out);
        free(j);
    }
}

/* A history job for req on rs, or NULL once the client was told it could
 * not be made. */
static history_job_t *new_history_job(sl_request_t *req, sl_records_t *rs)
{
    history_job_t *j = calloc(1, sizeof *j);
    if (!j) {
        reply_error(req, 500, sl_strerror(SL_ENOMEM));
        return NULL;
    }
    j->rs = rs;
    j->req = req;
    sl_buf_init(&j->out, 0);
    return j;
}

/* A JSON document a Lua hook renders from this worker's state (the running
 * config, the live sessions, the gateway keys' use), answered as it is. */
static void reply_from_hook(sl_worker_t *w, sl_request_t *req, const char *hook,
                            const char *failure)
{
    char err[512];
    sl_buf_t out;
    sl_buf_init(&out, 0);
    if (sl_lua_call_string(w->host, hook, &out, err, sizeof err) == 0)
        reply(req, 200, sl_str(out.base, out.len));
    else
        reply_error(req, 500, failure);
    sl_buf_free(&out);
}

static void handle_requests(sl_worker_t *w, sl_request_t *req, sl_str_t rest)
{
    sl_records_t *rs = w->app->records;
    if (!rs) {
        reply_error(req, 404, "request history is disabled (history.path is not set)");
        return;
    }
    if (rest.len == 0 && strcmp(req->method, "GET") != 0) {
        reply_error(req, 405, "use GET");
        return;
    }
    if (sl_str_eq(rest, SL_STR("stream")) && strcmp(req->method, "GET") == 0) {
        sl_admin_feed_start(w, req, rs); /* the live feed (admin_feed.h) */
        return;
    }
    history_job_t *j = new_history_job(req, rs);
    if (!j)
        return;
    if (rest.len == 0) {
        char num[32];
        j->kind = JOB_LIST;
        if (query_param(req->query, "limit", num, sizeof num))
            j->f.limit = atoi(num);
        if (query_param(req->query, "offset", num, sizeof num))
            j->f.offset = atoi(num);
        if (query_param(req->query, "status", num, sizeof num))
            j->f.status = atoi(num);
        if (query_param(req->query, "since", num, sizeof num))
            j->f.since = atof(num);
        if (query_param(req->query, "client", j->client, sizeof j->client))
            j->f.client = j->client;
        if (query_param(req->query, "search", j->search, sizeof j->search))
            j->f.search = j->search;
        if (query_param(req->query, "session", j->session, sizeof j->session))
            j->f.session = j->session;
        if (query_param(req->query, "until", num, sizeof num))
            j->f.until = atof(num);
        if (query_param(req->query, "partial", num, sizeof num))
            j->f.partial = strcmp(num, "true") == 0 || strcmp(num, "1") == 0;
        if (query_param(req->query, "service", j->service, sizeof j->service) && *j->service)
            j->f.service = j->service;
        if (query_param(req->query, "supplier", j->supplier, sizeof j->supplier) && *j->supplier)
            j->f.supplier = j->supplier;
        if (query_param(req->query, "model", j->model, sizeof j->model) && *j->model)
            j->f.model = j->model;
    } else {
        j->kind = strcmp(req->method, "DELETE") == 0 ? JOB_DELETE : JOB_GET;
        snprintf(j->id, sizeof j->id, "%.*s", (int)rest.len, rest.base);
    }
    queue_history_job(w, j);
}

/* GET /_sluice/usage?since=&until=&group_by=a,b: the totals, computed by
 * SQLite on the thread pool like every history read. */
static void handle_usage(sl_worker_t *w, sl_request_t *req)
{
    sl_records_t *rs = w->app->records;
    char num[32], groups[128];
    sl_records_usage_t u = {0};
    if (!rs) {
        reply_error(req, 404, "request history is disabled (history.path is not set)");
        return;
    }
    if (strcmp(req->method, "GET") != 0) {
        reply_error(req, 405, "use GET");
        return;
    }
    static const char *bounds[] = {"since", "until"};
    for (int i = 0; i < 2; i++) {
        char *end;
        if (!query_param(req->query, bounds[i], num, sizeof num) || !*num)
            continue;
        double v = strtod(num, &end);
        if (*end || !(v >= 0 && v < 1e12)) { /* NaN and infinity fail too: not JSON to echo */
            char msg[96];
            snprintf(msg, sizeof msg, "%s: expected unix seconds, e.g. 1767225600", bounds[i]);
            reply_error(req, 400, msg);
            return;
        }
        *(i ? &u.until : &u.since) = v;
    }
    if (query_param(req->query, "group_by", groups, sizeof groups) && *groups) {
        for (char *save = NULL, *g = strtok_r(groups, ",", &save); g;
             g = strtok_r(NULL, ",", &save)) {
            int k = sl_records_usage_group(g);
            if (k < 0 || u.ngroups == SL_USAGE_GROUPS_MAX) {
                char msg[256];
                if (k < 0)
                    snprintf(msg, sizeof msg, "group_by: unknown group \"%.64s\" (known: %s)", g,
                             sl_records_usage_groups());
                else
                    snprintf(msg, sizeof msg, "group_by: at most %d groups", SL_USAGE_GROUPS_MAX);
                reply_error(req, 400, msg);
                return;
            }
            u.groups[u.ngroups++] = k;
        }
    }
    history_job_t *j = new_history_job(req, rs);
    if (!j)
        return;
    j->kind = JOB_USAGE;
    j->usage = u;
    queue_history_job(w, j);
}

/* POST /_sluice/reload asks the main thread for a reload round (reload.h)
 * and answers when the round is over: every worker runs the new config, or
 * none does and the body says why. */
typedef struct {
    sl_request_t *req; /* NULL once the client has gone */
    int nworkers;
} reload_job_t;

static void on_reload_client_gone(void *data, int err)
{
    ((reload_job_t *)data)->req = NULL;
}

static const sl_conn_handler_t reload_conn_handler = {on_reload_client_gone, NULL};

static void reload_done(void *data, int rc, const char *err)
{
    reload_job_t *j = data;
    sl_request_t *req = j->req;
    if (req && !(rc == SL_ECLOSED && !err)) {
        sl_conn_set_handler(req->conn, NULL, NULL);
        sl_buf_t b;
        sl_buf_init(&b, 0);
        if (rc == 0) {
            char n[64];
            snprintf(n, sizeof n, "{\"reloaded\":true,\"workers\":%d}", j->nworkers);
            sl_buf_append_c(&b, n);
        } else {
            sl_buf_append_c(&b, "{\"reloaded\":false,\"error\":{\"type\":\"reload_failed\","
                                "\"message\":\"");
            const char *msg = err ? err : sl_strerror(rc);
            sl_buf_append_json_str(&b, msg, strlen(msg));
            sl_buf_append_c(&b, "\"}}");
        }
        reply(req, rc == 0 ? 200 : rc == SL_ECLOSED ? 503 : 500, sl_str(b.base, b.len));
        sl_buf_free(&b);
    }
    free(j);
}

static void handle_reload(sl_worker_t *w, sl_request_t *req)
{
    if (strcmp(req->method, "POST") != 0) {
        reply_error(req, 405, "use POST");
        return;
    }
    reload_job_t *j = calloc(1, sizeof *j);
    if (!j) {
        reply_error(req, 500, sl_strerror(SL_ENOMEM));
        return;
    }
    j->req = req;
    j->nworkers = w->app->nworkers;
    sl_conn_set_handler(req->conn, &reload_conn_handler, j);
    int rc = sl_reload_request(w->app->reload, w, reload_done, j);
    if (rc) {
        sl_conn_set_handler(req->conn, NULL, NULL);
        free(j);
        reply_error(req, rc == SL_ECLOSED ? 503 : 500,
                    rc == SL_ECLOSED ? "sluice is shutting down" : sl_strerror(rc));
    }
}

/* One worker's upstream figures (upstream.h, SL_UPSTREAM_FIGURES): atomics
 * the worker itself writes as they change, so reading another worker's
 * never touches its curl state. Loaded and printed in the list's order. */
#define FIGURE_COUNT(name) +1
enum { UPSTREAM_FIGURES = 0 SL_UPSTREAM_FIGURES(FIGURE_COUNT) };
#undef FIGURE_COUNT

static void upstream_load(const sl_upstream_stats_t *s, size_t v[UPSTREAM_FIGURES])
{
    size_t i = 0;
#define FIGURE_LOAD(name) v[i++] = atomic_load_explicit(&s->name, memory_order_relaxed);
    SL_UPSTREAM_FIGURES(FIGURE_LOAD)
#undef FIGURE_LOAD
}

static int upstream_json(sl_buf_t *b, const size_t v[UPSTREAM_FIGURES])
{
    static const char *const names[] = {
#define FIGURE_NAME(name) #name,
        SL_UPSTREAM_FIGURES(FIGURE_NAME)
#undef FIGURE_NAME
    };
    int rc = 0;
    for (size_t i = 0; i < UPSTREAM_FIGURES; i++)
        rc |= sl_buf_printf(b, "%s\"%s\":%zu", i ? "," : "", names[i], v[i]);
    return rc;
}

/* GET /_sluice/health: up, how many workers, the session store this worker
 * uses, and the upstream side of every worker (connections open and idle,
 * transfers in flight, pooled curl handles), with their sums. */
static void handle_health(sl_worker_t *w, sl_request_t *req)
{
    sl_buf_t b;
    sl_buf_init(&b, 0);
    int rc = sl_buf_printf(&b, "{\"status\":\"ok\",\"version\":\"%s\",\"workers\":%d",
                           SLUICE_VERSION, w->app->nworkers);
    /* With sessions.store = "redis": whether this worker reaches Redis
     * (sessions fall back to the in-process store while it does not). */
    if (sl_redis_configured(&w->loop))
        rc |= sl_buf_printf(&b,
                            ",\"session_store\":\"redis\",\"redis\":\"%s\","
                            "\"redis_connections\":%d",
                            sl_redis_worker_up(&w->loop) ? "up" : "down",
                            sl_redis_connected_workers());
    size_t sum[UPSTREAM_FIGURES] = {0}, v[UPSTREAM_FIGURES];
    sl_buf_t per;
    sl_buf_init(&per, 0);
    for (int i = 0; i < w->app->nworkers; i++) {
        upstream_load(&w->app->workers[i]->upstream_stats, v);
        for (int k = 0; k < UPSTREAM_FIGURES; k++)
            sum[k] += v[k];
        rc |= sl_buf_printf(&per, "%s{\"worker\":%d,", i ? "," : "", i + 1);
        rc |= upstream_json(&per, v);
        rc |= sl_buf_append_byte(&per, '}');
    }
    rc |= sl_buf_append_c(&b, ",\"upstream\":{");
    rc |= upstream_json(&b, sum);
    rc |= sl_buf_append_c(&b, ",\"workers\":[");
    rc |= sl_buf_append(&b, per.base, per.len);
    rc |= sl_buf_append_c(&b, "]}}");
    sl_buf_free(&per);
    if (rc)
        reply_error(req, 500, sl_strerror(SL_ENOMEM));
    else
        reply(req, 200, sl_str(b.base, b.len));
    sl_buf_free(&b);
}

void sl_admin_handle(sl_worker_t *w, sl_request_t *req)
{
    sl_str_t p = sl_str(req->path.base + 9, req->path.len - 9); /* after "/_sluice/" */
    if (sl_ui_handle(req, p)) /* the console's files: no data, no token (ui.h) */
        return;
    if (!authorized(w, req)) {
        reply_error(req, 401, "admin API requires Authorization: Bearer <admin token>");
        return;
    }
    if (sl_str_eq(p, SL_STR("health"))) {
        handle_health(w, req);
    } else if (sl_str_eq(p, SL_STR("metrics"))) {
        sl_buf_t out;
        sl_buf_init(&out, 0);
        sl_metrics_render(&out);
        static const sl_header_t prom[] = {
            {SL_STR("content-type"), SL_STR("text/plain; version=0.0.4")}};
        sl_conn_respond(req->conn, 200, prom, 1, sl_str(out.base, out.len));
        sl_buf_free(&out);
    } else if (sl_str_eq(p, SL_STR("requests"))) {
        handle_requests(w, req, SL_STR(""));
    } else if (sl_str_has_prefix(p, "requests/")) {
        handle_requests(w, req, sl_str(p.base + 9, p.len - 9));
    } else if (sl_str_eq(p, SL_STR("usage"))) {
        handle_usage(w, req);
    } else if (sl_str_eq(p, SL_STR("reload"))) {
        handle_reload(w, req);
    } else if (sl_str_eq(p, SL_STR("config"))) {
        reply_from_hook(w, req, "config", "cannot render the config (see the sluice log)");
    } else if (sl_str_eq(p, SL_STR("sessions"))) {
        reply_from_hook(w, req, "sessions", "cannot list the sessions (see the sluice log)");
    } else if (sl_str_eq(p, SL_STR("keys"))) {
        reply_from_hook(w, req, "keys", "cannot list the gateway keys (see the sluice log)");
    } else {
        reply_error(req, 404, "unknown admin endpoint");
    }
}
