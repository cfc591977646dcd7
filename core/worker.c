/*
 * worker.c — one event-loop thread (see worker.h).
 *
 * Start-up happens on the calling (main) thread so a port already in use or
 * a broken config is reported before sluice claims to be up; only uv_run
 * moves to the new thread, and main starts no loop before every worker is
 * built: until then connections wait in the listen backlog, so nothing is
 * answered (not even health) while a later worker still reads the config
 * file — which ops may be rewriting the moment sluice looks up.
 *
 * Requests: /_sluice/... goes to the admin API, anything else becomes an
 * exchange, which the worker keeps in its list (to cut it at shutdown)
 * until the exchange hands back its outcome; the worker then reports it
 * to the access log, the history and the metrics.
 *
 * Shutdown is cooperative: stop accepting, let the exchanges in flight
 * finish, cut the stragglers with a SHUTDOWN outcome after
 * shutdown_timeout, then close every handle so uv_run returns.
 * Reloads are rounds over all workers run by the main thread (reload.h);
 * here is a worker's part: prepare a new host, then commit or drop it.
 */
#include "worker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "error.h"
#include "exchange.h"
#include "log.h"
#include "metrics.h"
#include "redis.h"
#include "reload.h"

/* ---- requests: admin or exchange ---- */

/* An exchange in flight, in the worker's list. */
struct sl_live_s {
    sl_worker_t *w;
    sl_exchange_t *ex;
    sl_live_t *prev, *next;
};

/* The exchange is over: report how, and forget it. */
static void on_log_nudge(uv_idle_t *h)
{
}

static void on_exchange_end(void *owner, sl_exchange_t *ex, const sl_outcome_t *o)
{
    sl_live_t *l = owner;
    sl_worker_t *w = l->w;
    sl_access_log_outcome(o);
    /* An exchange can end outside any I/O (its own timer): without the
     * nudge the line would wait in the batch until the next event. */
    uv_idle_start(&w->log_nudge, on_log_nudge);
    if (w->app->records)
        sl_records_submit_outcome(w->app->records, o);
    sl_metrics_request_outcome(o);
    if (l->prev)
        l->prev->next = l->next;
    else
        w->exchanges = l->next;
    if (l->next)
        l->next->prev = l->prev;
    w->nexchanges--;
    free(l);
}

static void on_request(sl_request_t *req, void *arg)
{
    sl_worker_t *w = arg;
    if (sl_str_has_prefix(req->path, "/_sluice/")) {
        sl_admin_handle(w, req);
        return;
    }
    sl_live_t *l = calloc(1, sizeof *l);
    sl_exchange_env_t env = {
        .loop = &w->loop,
        .host = w->host,
        .upstream = w->upstream,
        .watch_usage = w->app->records != NULL || sl_luahost_config(w->host)->watch_usage,
        .on_end = on_exchange_end,
        .owner = l,
    };
    if (!l || !(l->ex = sl_exchange_new(&env, req))) {
        free(l);
        sl_conn_close(req->conn, 0);
        return;
    }
    /* In the list before it runs: it may end before sl_exchange_run returns. */
    l->w = w;
    l->next = w->exchanges;
    if (w->exchanges)
        w->exchanges->prev = l;
    w->exchanges = l;
    w->nexchanges++;
    sl_exchange_run(l->ex);
}

/* ---- start, stop ---- */

static int parse_listen(const char *s, char *host, size_t hostlen, int *port)
{
    const char *colon = strrchr(s, ':');
    if (!colon)
        return SL_EINVAL;
    const char *h = s;
    size_t hl = (size_t)(colon - s);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    if (hl == 0 || hl >= hostlen)
        return SL_EINVAL;
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = atoi(colon + 1);
    return *port > 0 && *port < 65536 ? 0 : SL_EINVAL;
}

static void close_walk(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void on_servers_stopped(void *arg)
{
    sl_worker_t *w = arg;
    if (w->nservers)
        w->nservers--;
}

/* Called often while stopping: when everything has drained, close the rest. */
static void on_shutdown_tick(uv_timer_t *t)
{
    sl_worker_t *w = t->data;
    if (w->nexchanges > 0 || w->nservers > 0)
        return;
    uv_timer_stop(t);
    sl_upstream_free(w->upstream);
    w->upstream = NULL;
    sl_redis_shutdown_worker(&w->loop); /* this worker's Redis connection, if any */
    uv_mutex_lock(&w->post_lock); /* nobody may wake `async` once it is closing */
    w->async_closed = 1;
    uv_mutex_unlock(&w->post_lock);
    uv_walk(&w->loop, close_walk, NULL);
}

static void on_shutdown_deadline(uv_timer_t *t)
{
    sl_worker_t *w = t->data;
    sl_live_t *l = w->exchanges;
    if (l)
        sl_log_warn("shutdown timeout: cutting %zu request(s) still in flight", w->nexchanges);
    while (l) {
        sl_live_t *next = l->next; /* l is freed as its exchange ends */
        sl_exchange_shutdown(l->ex);
        l = next;
    }
}

static void begin_stop(sl_worker_t *w)
{
    if (w->stopping)
        return;
    w->stopping = 1;
    size_t n = w->nservers;
    for (size_t i = 0; i < n; i++)
        sl_server_stop(w->servers[i], on_servers_stopped, w);
    uv_timer_start(&w->deadline, on_shutdown_deadline, sl_luahost_config(w->host)->shutdown_timeout_ms, 0);
    uv_timer_start(&w->shutdown_timer, on_shutdown_tick, 20, 20);
}

/* ---- reload rounds (reload.h): this worker's part ---- */

/* Addresses, and whether each speaks TLS: a reload may point a TLS listener
 * at other certificate files, but not turn it into plain HTTP or back. */
static int same_listen(const sl_config_t *a, const sl_config_t *b)
{
    if (a->nlisten != b->nlisten)
        return 0;
    for (size_t i = 0; i < a->nlisten; i++)
        if (strcmp(a->listen[i], b->listen[i]) != 0 || !a->tls_cert[i] != !b->tls_cert[i])
            return 0;
    return 1;
}

/* Loads the TLS context of every TLS listener of c into ctxs (nlisten
 * entries; NULL for plain ones). On failure releases what it loaded and
 * names the listener and the file. */
static int load_tls(const sl_config_t *c, sl_tls_ctx_t **ctxs, char *err, size_t errlen)
{
    for (size_t i = 0; i < c->nlisten; i++) {
        ctxs[i] = NULL;
        if (!c->tls_cert[i])
            continue;
        char why[512];
        if (!(ctxs[i] = sl_tls_ctx_new(c->tls_cert[i], c->tls_key[i], why, sizeof why))) {
            snprintf(err, errlen, "listen[%zu].tls (%s): %s", i + 1, c->listen[i], why);
            while (i--)
                sl_tls_ctx_release(ctxs[i]);
            return SL_ECONFIG;
        }
    }
    return 0;
}

static void release_tls(sl_tls_ctx_t **ctxs, size_t n)
{
    if (!ctxs)
        return;
    for (size_t i = 0; i < n; i++)
        sl_tls_ctx_release(ctxs[i]);
    free(ctxs);
}

static void join_listen(const sl_config_t *c, char *out, size_t outlen)
{
    size_t n = 0;
    out[0] = '\0';
    for (size_t i = 0; i < c->nlisten && n < outlen; i++)
        n += (size_t)snprintf(out + n, outlen - n, "%s%s", i ? ", " : "", c->listen[i]);
}

/* What only a restart can change. The listeners stay bound to the addresses
 * of the config sluice started with, and the new config's safety checks
 * (keys and admin token off loopback) were made against the addresses it
 * names: a config that names others would run unchecked on these sockets
 * (a public one losing its keys). */
static int check_restart_fields(const sl_worker_t *w, const sl_config_t *c, char *err,
                                size_t errlen)
{
    if (!same_listen(&w->bound, c)) {
        char was[256], now[256];
        join_listen(&w->bound, was, sizeof was);
        join_listen(c, now, sizeof now);
        snprintf(err, errlen,
                 "listen: sluice is bound to %s and the new config says %s; listen addresses "
                 "change only with a restart",
                 was, now);
        return SL_ECONFIG;
    }
    if (!w->app->workers_override && c->workers != w->bound.workers) {
        snprintf(err, errlen,
                 "workers: sluice runs %d worker(s) (configured %d) and the new config says %d; "
                 "the number of workers changes only with a restart",
                 w->app->nworkers, w->bound.workers, c->workers);
        return SL_ECONFIG;
    }
    return 0;
}

static void reload_prepare(sl_worker_t *w)
{
    char err[1024];
    sl_luahost_opts_t o = {w->app->config_path, w->app->lua_dir, w->id, &w->loop, w->upstream};
    sl_luahost_t *h;
    int rc = sl_luahost_new(&h, &o, err, sizeof err);
    if (!rc && (rc = check_restart_fields(w, sl_luahost_config(h), err, sizeof err)) != 0)
        sl_luahost_release(h);
    /* Certificates are read anew on every reload; a broken pair refuses the
     * reload and the listeners keep serving the old one. */
    sl_tls_ctx_t **tls = NULL;
    if (!rc) {
        tls = calloc(w->nservers ? w->nservers : 1, sizeof *tls);
        rc = tls ? load_tls(sl_luahost_config(h), tls, err, sizeof err) : SL_ENOMEM;
        if (rc) {
            free(tls);
            tls = NULL;
            sl_luahost_release(h);
        }
    }
    if (!rc) {
        sl_luahost_release(w->next_host);
        w->next_host = h;
        release_tls(w->next_tls, w->nservers);
        w->next_tls = tls;
    } else {
        sl_log_debug("reload: this worker cannot load the config: %s", err);
    }
    sl_reload_worker_done(w->app->reload, rc, err);
}

static void reload_finish(sl_worker_t *w, int commit)
{
    sl_luahost_t *h = w->next_host;
    sl_tls_ctx_t **tls = w->next_tls;
    w->next_host = NULL;
    w->next_tls = NULL;
    if (h && commit) {
        for (size_t i = 0; i < w->nservers; i++) {
            if (tls[i])
                sl_server_set_tls(w->servers[i], tls[i]);
            tls[i] = NULL; /* the server owns it now */
        }
        sl_luahost_t *old = w->host;
        w->host = h;
        sl_luahost_release(old); /* exchanges in flight keep their own reference */
        const sl_config_t *c = sl_luahost_config(h);
        for (size_t i = 0; i < w->nservers; i++)
            sl_server_set_limits(w->servers[i], &c->limits);
        atomic_store(&w->app->shutdown_timeout_ms, c->shutdown_timeout_ms);
    } else {
        sl_luahost_release(h);
    }
    release_tls(tls, w->nservers);
    sl_reload_worker_done(w->app->reload, 0, NULL);
}

static void on_async(uv_async_t *a)
{
    sl_worker_t *w = a->data;
    int cmds = atomic_exchange(&w->cmds, 0);
    /* A round's phases never overlap, but a finish and the next prepare
     * may arrive in one wake-up: finish first. */
    if (cmds & (SL_WORKER_CMD_RELOAD_COMMIT | SL_WORKER_CMD_RELOAD_ABORT))
        reload_finish(w, (cmds & SL_WORKER_CMD_RELOAD_COMMIT) != 0);
    if (cmds & SL_WORKER_CMD_RELOAD_PREPARE)
        reload_prepare(w);
    if (cmds & SL_WORKER_CMD_RELOAD_REPLY)
        sl_reload_deliver(w->app->reload, w);
    if (cmds & SL_WORKER_CMD_STOP)
        begin_stop(w);
}

/* After each pass of the loop, the access-log lines of the requests that
 * ended in it go out in one write (log.h). */
static void on_log_flush(uv_check_t *c)
{
    sl_worker_t *w = c->data;
    sl_access_log_flush();
    uv_idle_stop(&w->log_nudge);
}

static void run(void *arg)
{
    sl_worker_t *w = arg;
    sl_log_set_thread_id(w->id);
    sl_access_log_batch(1);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    sl_access_log_batch(0); /* writes what the last pass left */
}

int sl_worker_start(sl_worker_t *w, sl_app_t *app, int id, char *err, size_t errlen)
{
    int rc;
    w->id = id;
    w->app = app;
    uv_mutex_init(&w->post_lock);
    if ((rc = uv_loop_init(&w->loop)) < 0) {
        snprintf(err, errlen, "event loop: %s", uv_strerror(rc));
        return rc;
    }
    uv_async_init(&w->loop, &w->async, on_async);
    w->async.data = w;
    uv_timer_init(&w->loop, &w->shutdown_timer);
    uv_timer_init(&w->loop, &w->deadline);
    uv_check_init(&w->loop, &w->log_flush);
    uv_idle_init(&w->loop, &w->log_nudge);
    w->log_flush.data = w;
    uv_check_start(&w->log_flush, on_log_flush);
    uv_unref((uv_handle_t *)&w->log_flush); /* never what keeps the loop running */
    w->shutdown_timer.data = w->deadline.data = w;
    if ((rc = sl_upstream_new(&w->upstream, &w->loop)) != 0) {
        snprintf(err, errlen, "upstream client: %s", sl_strerror(rc));
        return rc;
    }
    sl_upstream_set_stats(w->upstream, &w->upstream_stats);
    sl_luahost_opts_t o = {app->config_path, app->lua_dir, id, &w->loop, w->upstream};
    if ((rc = sl_luahost_new(&w->host, &o, err, errlen)) != 0)
        return rc;
    const sl_config_t *c = sl_luahost_config(w->host);
    if ((rc = sl_luahost_config_copy(w->host, &w->bound)) != 0) {
        snprintf(err, errlen, "config: %s", sl_strerror(rc));
        return rc;
    }
    w->servers = calloc(c->nlisten ? c->nlisten : 1, sizeof *w->servers);
    sl_tls_ctx_t **tls = calloc(c->nlisten ? c->nlisten : 1, sizeof *tls);
    if (!w->servers || !tls) {
        free(tls);
        snprintf(err, errlen, "listen: %s", sl_strerror(SL_ENOMEM));
        return SL_ENOMEM;
    }
    if ((rc = load_tls(c, tls, err, errlen)) != 0) {
        free(tls);
        return rc;
    }
    for (size_t i = 0; i < c->nlisten; i++) {
        char host[128];
        int port;
        if (parse_listen(c->listen[i], host, sizeof host, &port)) {
            snprintf(err, errlen, "listen: bad address '%s' (want host:port)", c->listen[i]);
            rc = SL_ECONFIG;
            break;
        }
        rc = sl_server_start(&w->servers[w->nservers], &w->loop, host, port, &c->limits, tls[i],
                             on_request, w);
        if (rc) {
            snprintf(err, errlen, "listen %s: %s", c->listen[i], sl_strerror(rc));
            break;
        }
        tls[i] = NULL; /* the server owns it now */
        w->nservers++;
    }
    release_tls(tls, c->nlisten); /* the ones no server took, after a failure */
    return rc;
}

int sl_worker_run(sl_worker_t *w, char *err, size_t errlen)
{
    int rc = uv_thread_create(&w->thread, run, w);
    if (rc < 0)
        snprintf(err, errlen, "thread: %s", uv_strerror(rc));
    return rc < 0 ? rc : 0;
}

void sl_worker_post(sl_worker_t *w, int cmd)
{
    uv_mutex_lock(&w->post_lock);
    if (!w->async_closed) {
        atomic_fetch_or(&w->cmds, cmd);
        uv_async_send(&w->async);
    }
    uv_mutex_unlock(&w->post_lock);
}

void sl_worker_join(sl_worker_t *w)
{
    uv_thread_join(&w->thread);
    if (w->host)
        sl_luahost_release(w->host);
    w->host = NULL;
    sl_luahost_release(w->next_host); /* prepared by a round that shutdown overtook */
    w->next_host = NULL;
    release_tls(w->next_tls, w->nservers);
    w->next_tls = NULL;
    sl_config_free(&w->bound);
    uv_mutex_destroy(&w->post_lock);
    uv_loop_close(&w->loop);
    free(w->servers);
}
