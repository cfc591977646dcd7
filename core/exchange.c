/*
 * exchange.c — one proxied request from plan to record (see exchange.h).
 *
 * The body of an upstream answer takes one of three paths, chosen when its
 * head arrives:
 *   PASS    bytes go from curl straight to the client; if the answer is an
 *           SSE stream, C still frames it, only to spot the protocol's
 *           terminal event so the end can be classified honestly;
 *   EVENTS  the stream is framed into events and each read's batch goes
 *           through the events hook (translation), whose bytes are written;
 *   BUFFER  the whole body is collected (bounded by max_response) and handed
 *           to the body hook once complete.
 *
 * Nothing is sent to the client before the first byte of the body is ready:
 * until then the exchange may still fail cleanly with a proper HTTP error in
 * the client's protocol (that is also the point after which retries become
 * impossible). Every way an exchange can end funnels into finalize(), which
 * runs exactly once: classify, let Lua close the client's stream or build an
 * error response, write the access log and history record, free.
 */
#include "exchange.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "admin.h"
#include "error.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "sse.h"
#include "term.h"

enum body_mode { MODE_NONE, MODE_PASS, MODE_EVENTS, MODE_BUFFER };

/* What a passthrough stream keeps for Lua: the first event always (a
 * failure tail repeats its id), usage events only for the history. */
enum { OBSERVE_OFF, OBSERVE_START, OBSERVE_USAGE };

struct sl_exchange_s {
    sl_worker_t *w;
    sl_exchange_t *prev, *next;
    sl_luahost_t *h;
    int ctx;
    sl_conn_t *conn;            /* NULL once the client is gone or answered */
    sl_request_t *req;          /* valid while conn is set */
    char id[130];
    char *method, *path;        /* copies: the request views die with the response */
    uint64_t bytes_in;
    char peer_copy[64];

    sl_lua_task_t *task;
    sl_plan_t plan;
    int have_plan;
    sl_transfer_t *xfer;
    enum body_mode mode;
    sl_sse_parser_t sse;
    int sse_on;
    sl_lua_resp_t head;         /* the head to send when the first byte is ready */
    int head_ready;
    sl_buf_t body;              /* BUFFER mode */
    sl_buf_t out;               /* bytes produced by hooks */
    sl_buf_t answer;            /* bounded copy of what the client got, for the log hook */
    int capture_all;            /* history.bodies: capture streams too */
    int observe;                /* passthrough SSE: OBSERVE_* — which events below to keep */
    sl_buf_t seen_ev[3];        /* the first event, the first and the latest usage-bearing
                                 * ones: "event\0data" (see keep_event) */
    sl_buf_t last_ev;           /* the latest of them, "event\ndata" cut to 512 bytes of data:
                                 * which block a failure tail must close */
    sl_buf_t held;              /* passthrough SSE: bytes of an event not yet whole */
    uint64_t events_framed;     /* whole upstream SSE events framed so far */
    uint64_t events_sent;       /* ... of which the client was sent (passthrough) */
    uint64_t bytes_base;        /* the connection's byte count when this request began */
    uint64_t bytes_out;         /* what this request sent, kept when the client leaves */
    int upstream_status;

    uv_timer_t t_wait;          /* first byte, then idle */
    uv_timer_t t_total;
    int open_handles;
    int got_first_byte;
    int paused;

    sl_term_t term;
    int attempts;               /* upstream attempts started */
    uint64_t attempt_start_ns;
    sl_buf_t attempt_log;       /* JSON array text of finished attempts */
    int finalized;
    uint64_t start_ns, first_out_ns;
    int sent_status;            /* the status the client got (0: none sent) */
    char err[1024];     /* the first failure's text: the classifier borrows it */
    char err2[1024];    /* errors of the closing hooks, which must not clobber err */
    char err3[1024];    /* a failed finish hook's text, once it is a cause of its own */
};

static void finalize(sl_exchange_t *ex);
static int maybe_retry(sl_exchange_t *ex, const sl_lua_failure_t *f);

sl_exchange_t *sl_exchange_next(sl_exchange_t *ex)
{
    return ex->next;
}

/* ---- small helpers ---- */

static double now_unix(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int valid_request_id(sl_str_t v)
{
    if (v.len == 0 || v.len > 128)
        return 0;
    for (size_t i = 0; i < v.len; i++)
        if (v.base[i] < 0x21 || v.base[i] > 0x7e)
            return 0;
    return 1;
}

/* Request ids need to be unique, not secret: a per-thread splitmix64 seeded
 * once from the OS, instead of a getrandom(2) call per request. */
static uint64_t next_random(void)
{
    static __thread uint64_t state;
    if (state == 0 && uv_random(NULL, NULL, &state, sizeof state, 0, NULL) != 0)
        state = uv_hrtime() ^ (uint64_t)(uintptr_t)&state;
    uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void make_request_id(sl_exchange_t *ex, const sl_request_t *req)
{
    for (size_t i = 0; i < req->nheaders; i++) {
        if (sl_str_ieq_c(req->headers[i].name, "x-request-id") &&
            valid_request_id(req->headers[i].value)) {
            memcpy(ex->id, req->headers[i].value.base, req->headers[i].value.len);
            ex->id[req->headers[i].value.len] = '\0';
            return;
        }
    }
    unsigned char rnd[16];
    static const char hex[] = "0123456789abcdef";
    uint64_t a = next_random(), b = next_random();
    memcpy(rnd, &a, 8);
    memcpy(rnd + 8, &b, 8);
    memcpy(ex->id, "req_", 4);
    for (size_t i = 0; i < sizeof rnd; i++) {
        ex->id[4 + 2 * i] = hex[rnd[i] >> 4];
        ex->id[5 + 2 * i] = hex[rnd[i] & 15];
    }
    ex->id[4 + 2 * sizeof rnd] = '\0';
}

static int is_event_stream(const sl_header_t *hv, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (sl_str_ieq_c(hv[i].name, "content-type"))
            return hv[i].value.len >= 17 && strncasecmp(hv[i].value.base, "text/event-stream", 17) == 0;
    return 0;
}

/* Copies the upstream head into ex->head (send_head drops the hop-by-hop
 * fields of every head it sends, this one included). */
static void head_from_upstream(sl_exchange_t *ex, int status, const sl_header_t *hv, size_t n)
{
    sl_lua_resp_free(&ex->head);
    ex->head.status = status;
    ex->head.headers = calloc(n ? n : 1, sizeof *ex->head.headers);
    for (size_t i = 0; i < n && ex->head.headers; i++) {
        sl_header_t *d = &ex->head.headers[ex->head.nheaders++];
        d->name = sl_str(strndup(hv[i].name.base, hv[i].name.len), hv[i].name.len);
        d->value = sl_str(strndup(hv[i].value.base, hv[i].value.len), hv[i].value.len);
    }
    ex->head_ready = 1;
}

/* Sends a head plus x-request-id. content_length < 0: chunked. */
static int send_head(sl_exchange_t *ex, int status, const sl_header_t *hv, size_t n,
                     int64_t content_length)
{
    sl_header_t stack[32];
    sl_header_t *all = n + 1 <= 32 ? stack : malloc((n + 1) * sizeof *all);
    if (!all)
        return SL_ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (!sl_str_ieq_c(hv[i].name, "x-request-id") && !sl_http_is_hop_by_hop(hv[i].name))
            all[k++] = hv[i];
    all[k++] = (sl_header_t){SL_STR("x-request-id"), sl_str_c(ex->id)};
    int rc = sl_conn_send_head(ex->conn, status, all, k, content_length);
    if (all != stack)
        free(all);
    if (!rc) {
        ex->first_out_ns = uv_hrtime();
        ex->sent_status = status;
    }
    return rc;
}

static int commit_head(sl_exchange_t *ex)
{
    if (!ex->conn || sl_conn_committed(ex->conn))
        return 0;
    return send_head(ex, ex->head.status, ex->head.headers, ex->head.nheaders, -1);
}

static void capture(sl_exchange_t *ex, const char *p, size_t n);

static int respond_full(sl_exchange_t *ex, int status, const sl_header_t *hv, size_t n,
                        sl_str_t body)
{
    if (ex->capture_all)
        capture(ex, body.base, body.len);
    int rc = send_head(ex, status, hv, n, (int64_t)body.len);
    if (!rc)
        rc = sl_conn_send_body(ex->conn, body.base, body.len);
    return rc;
}

/* Fails the exchange now with a cause the classifier understands. */
static void fail(sl_exchange_t *ex, sl_term_cause_t cause, int code, const char *detail)
{
    sl_term_note(&ex->term, cause, code, detail);
    finalize(ex);
}

/* ---- timers ---- */

static void on_wait_timeout(uv_timer_t *t)
{
    sl_exchange_t *ex = t->data;
    if (!ex->got_first_byte) {
        sl_lua_failure_t f = {"error", 0, NULL, 0, "UPSTREAM_TIMEOUT_FIRST_BYTE",
                              "upstream sent nothing within first_byte"};
        if (maybe_retry(ex, &f))
            return;
    }
    if (ex->got_first_byte)
        fail(ex, SL_TERM_CAUSE_TIMER_IDLE, 0, "no data from upstream within the idle timeout");
    else
        fail(ex, SL_TERM_CAUSE_TIMER_FIRST_BYTE, 0, "upstream sent nothing within first_byte");
}

static void on_total_timeout(uv_timer_t *t)
{
    fail(t->data, SL_TERM_CAUSE_TIMER_TOTAL, 0, "request exceeded the total timeout");
}

static void arm_wait(sl_exchange_t *ex, uint64_t ms)
{
    if (ms)
        uv_timer_start(&ex->t_wait, on_wait_timeout, ms, 0);
    else
        uv_timer_stop(&ex->t_wait);
}

/* ---- upstream callbacks ---- */

/* Keeps what fits of the client's answer; the rest is dropped, not fatal. */
static void capture(sl_exchange_t *ex, const char *p, size_t n)
{
    size_t room = ex->answer.limit - ex->answer.len;
    sl_buf_append(&ex->answer, p, n < room ? n : room);
}

/* Passthrough streams carry facts in events Lua never sees: the first event
 * names the answer (its id and model, which a failure tail must repeat),
 * and usage comes in the first and the latest usage-bearing events
 * (Anthropic: input in message_start, output in the last message_delta;
 * OpenAI and Gemini: cumulative). Keeping those three is enough for every
 * protocol and costs one Lua call per stream, at the end, instead of one
 * per event. */
static void keep_event(sl_buf_t *b, const sl_sse_event_t *ev)
{
    sl_buf_reset(b);
    if (sl_buf_append_str(b, ev->event) || sl_buf_append_byte(b, '\0') ||
        sl_buf_append_str(b, ev->data))
        sl_buf_reset(b); /* over the bound: that fact stays unknown */
}

/* Hands the kept events to the "observe" hook. */
static void observe_events(sl_exchange_t *ex)
{
    if (!ex->seen_ev[0].len)
        return;
    sl_lua_events_begin(ex->h);
    for (int i = 0; i < 3; i++) {
        sl_buf_t *b = &ex->seen_ev[i];
        if (!b->len)
            continue;
        size_t nl = strlen(b->base); /* the event name ends at the NUL */
        sl_sse_event_t ev = {sl_str(b->base, nl), sl_str(b->base + nl + 1, b->len - nl - 1),
                             SL_STR_NULL, -1};
        sl_lua_events_add(ex->h, &ev);
    }
    sl_lua_events_flush(ex->h, ex->ctx, "observe", NULL, ex->err2, sizeof ex->err2);
}

static int on_sse_event(void *ud, const sl_sse_event_t *ev)
{
    sl_exchange_t *ex = ud;
    if (ex->plan.nmarkers && sl_sse_marker_match(ex->plan.markers, ex->plan.nmarkers, ev))
        ex->term.terminal_seen = 1;
    ex->events_framed++;
    if (ex->mode == MODE_EVENTS)
        sl_lua_events_add(ex->h, ev);
    else if (ex->observe) {
        if (ex->events_framed == 1)
            keep_event(&ex->seen_ev[0], ev);
        sl_buf_reset(&ex->last_ev);
        sl_buf_append_str(&ex->last_ev, ev->event);
        sl_buf_append_byte(&ex->last_ev, '\n');
        sl_buf_append(&ex->last_ev, ev->data.base, ev->data.len < 512 ? ev->data.len : 512);
        if (ex->observe == OBSERVE_USAGE &&
            sl_sse_marker_match(ex->plan.usage_markers, ex->plan.nusage_markers, ev))
            keep_event(&ex->seen_ev[ex->seen_ev[1].len ? 2 : 1], ev);
    }
    return 0;
}

static void on_up_head(void *ud, int status, const sl_header_t *hv, size_t n)
{
    sl_exchange_t *ex = ud;
    /* A field with CR, LF or NUL cannot be relayed (it would split the
     * client's head): such an answer is the upstream's protocol error. */
    if (!sl_http_fields_relayable(hv, n)) {
        ex->upstream_status = status;
        fail(ex, SL_TERM_CAUSE_UPSTREAM_INVALID, 0,
             "upstream sent a header field containing CR, LF or NUL");
        return;
    }
    if (status >= 400) {
        sl_lua_failure_t f = {"status", status, hv, n, NULL, NULL};
        if (maybe_retry(ex, &f))
            return;
    }
    ex->upstream_status = status;
    ex->term.http_status = status;
    ex->got_first_byte = 1;
    arm_wait(ex, ex->plan.t_idle);
    int ok = status >= 200 && status < 300;
    /* Frame as SSE only what the upstream itself calls a stream: a supplier
     * that answers a stream request with a plain JSON body is passed (or
     * translated) as a body, not judged by a terminal event it never sends. */
    int sse = ex->plan.stream && ok && is_event_stream(hv, n);
    ex->term.terminal_required = sse && ex->plan.nmarkers > 0;
    if (!ex->plan.transform) {
        ex->mode = MODE_PASS;
        head_from_upstream(ex, status, hv, n);
    } else if (sse) {
        ex->mode = MODE_EVENTS;
        sl_lua_resp_t r;
        int rc = sl_lua_response(ex->h, ex->ctx, status, hv, n, &r, ex->err, sizeof ex->err);
        if (rc) {
            sl_lua_resp_free(&r);
            fail(ex, SL_TERM_CAUSE_SCRIPT_ERROR, rc, ex->err);
            return;
        }
        if (r.status) {
            sl_lua_resp_free(&ex->head);
            ex->head = r;
            ex->head_ready = 1;
        } else {
            sl_lua_resp_free(&r);
            head_from_upstream(ex, status, hv, n);
        }
    } else {
        ex->mode = MODE_BUFFER;
        head_from_upstream(ex, status, hv, n); /* the body hook sees these headers */
        ex->head_ready = 0;                    /* but the hook's answer replaces them */
    }
    if (sse) {
        sl_sse_parser_init(&ex->sse, sl_luahost_config(ex->h)->max_event);
        ex->sse_on = 1;
        if (ex->mode == MODE_PASS)
            ex->observe = ex->w->app->records ? OBSERVE_USAGE : OBSERVE_START;
        /* An event's lines are bounded by max_event; its line ends are not. */
        size_t max_event = sl_luahost_config(ex->h)->max_event;
        sl_buf_init(&ex->held, max_event ? 2 * max_event + 4096 : 0);
        sl_metrics_gauge_add(SL_GAUGE_STREAMS, 1);
    }
}

/* Passthrough SSE forwards whole events only: the bytes of an event still
 * arriving are held back until the blank line that ends it. So a stream cut
 * mid-event ends on an event boundary, and the failure tail that follows is
 * never glued onto half an event (which no SDK could parse). Returns
 * SL_ELIMIT when what is held outgrows its bound. */
static int pass_whole_events(sl_exchange_t *ex, const char *p, size_t n)
{
    size_t at = sl_sse_parser_boundary(&ex->sse);
    if (at == SL_SSE_NO_BOUNDARY)
        return sl_buf_append(&ex->held, p, n);
    if ((ex->held.len || at) && commit_head(ex) == 0) {
        if (ex->capture_all) {
            capture(ex, ex->held.base, ex->held.len);
            capture(ex, p, at);
        }
        if (ex->held.len)
            sl_conn_send_body(ex->conn, ex->held.base, ex->held.len);
        if (at)
            sl_conn_send_body(ex->conn, p, at);
        ex->events_sent = ex->events_framed;
        ex->term.terminal_delivered = ex->term.terminal_seen;
    }
    sl_buf_reset(&ex->held);
    return sl_buf_append(&ex->held, p + at, n - at);
}

static int on_up_data(void *ud, const char *p, size_t n)
{
    sl_exchange_t *ex = ud;
    if (ex->finalized || !ex->conn)
        return 0;
    /* Backpressure: leave the bytes with curl until the client catches up.
     * Curl hands them over again on resume, so nothing is counted yet, and
     * the idle timer stops: a slow client is not a silent upstream. */
    if (ex->mode != MODE_BUFFER && sl_conn_write_queue(ex->conn) >= SL_CONN_HIGH_WATER) {
        ex->paused = 1;
        uv_timer_stop(&ex->t_wait);
        return SL_TRANSFER_PAUSE;
    }
    arm_wait(ex, ex->plan.t_idle);
    ex->term.upstream_bytes += n;
    if (ex->mode == MODE_BUFFER) {
        if (sl_buf_append(&ex->body, p, n) == 0)
            return 0;
        sl_term_note(&ex->term, SL_TERM_CAUSE_LIMIT_RESPONSE, 0,
                     "upstream answer exceeds max_response");
        return SL_TRANSFER_FAIL; /* curl ends the transfer; on_done finalizes */
    }
    int rc = 0;
    int batch = ex->mode == MODE_EVENTS;
    sl_buf_reset(&ex->out);
    if (batch)
        sl_lua_events_begin(ex->h);
    int frc = ex->sse_on ? sl_sse_parser_feed(&ex->sse, p, n, on_sse_event, ex) : 0;
    /* Passthrough: forward what is whole, also before an oversized event. */
    if (ex->mode == MODE_PASS && ex->sse_on && pass_whole_events(ex, p, n) == SL_ELIMIT)
        frc = SL_ELIMIT;
    if (frc == SL_ELIMIT) {
        /* The events framed before the oversized one are sent (translated
         * or passed), so what the client saw ends on an event boundary and
         * the encoder's state matches it. */
        if (batch && sl_lua_events_flush(ex->h, ex->ctx, "events", &ex->out, ex->err,
                                         sizeof ex->err) == 0 &&
            ex->out.len && commit_head(ex) == 0)
            sl_conn_send_body(ex->conn, ex->out.base, ex->out.len);
        fail(ex, SL_TERM_CAUSE_LIMIT_EVENT, 0, "an SSE event exceeds max_event");
        return 0;
    }
    if (ex->mode == MODE_PASS && ex->sse_on)
        return 0; /* sent (or held) by pass_whole_events */
    if (batch) {
        rc = sl_lua_events_flush(ex->h, ex->ctx, "events", &ex->out, ex->err, sizeof ex->err);
        if (rc) {
            fail(ex, SL_TERM_CAUSE_SCRIPT_ERROR, rc, ex->err);
            return 0;
        }
    }
    const char *bytes = ex->mode == MODE_PASS ? p : ex->out.base;
    size_t len = ex->mode == MODE_PASS ? n : ex->out.len;
    if (ex->capture_all || (ex->mode == MODE_PASS && ex->w->app->records))
        capture(ex, bytes, len);
    if (len && commit_head(ex) == 0)
        sl_conn_send_body(ex->conn, bytes, len);
    return 0;
}

static void on_up_done(void *ud, int curl_code, const char *errbuf)
{
    sl_exchange_t *ex = ud;
    /* The transfer is still alive during on_done: ask whether it connected,
     * or a connect timeout would be classified as a total timeout. */
    ex->term.connected = sl_transfer_connected(ex->xfer);
    ex->xfer = NULL;
    sl_term_note(&ex->term, SL_TERM_CAUSE_UPSTREAM_DONE, curl_code,
                 errbuf && *errbuf ? errbuf : NULL);
    if (curl_code != 0 && !(ex->conn && sl_conn_committed(ex->conn))) {
        sl_term_result_t r = sl_term_classify(&ex->term);
        sl_lua_failure_t f = {"error", 0, NULL, 0, sl_term_reason_name(r.reason), r.detail};
        if (maybe_retry(ex, &f))
            return;
    }
    if (curl_code == 0 && ex->mode == MODE_BUFFER && ex->conn) {
        sl_lua_resp_t r;
        int rc = sl_lua_body(ex->h, ex->ctx, ex->upstream_status, ex->head.headers,
                             ex->head.nheaders,
                             sl_str(ex->body.base ? ex->body.base : "", ex->body.len), &r, ex->err,
                             sizeof ex->err);
        if (rc) {
            sl_term_note(&ex->term, SL_TERM_CAUSE_SCRIPT_ERROR, rc, ex->err);
        } else {
            if (r.upstream_invalid) { /* the answer said nothing usable: a 502, recorded so */
                snprintf(ex->err, sizeof ex->err, "%s", r.error ? r.error : "unusable answer");
                sl_term_note(&ex->term, SL_TERM_CAUSE_UPSTREAM_INVALID, 0, ex->err);
            }
            respond_full(ex, r.status ? r.status : ex->upstream_status, r.headers, r.nheaders,
                         sl_str(r.body.base ? r.body.base : "", r.body.len));
        }
        sl_lua_resp_free(&r);
    }
    finalize(ex);
}

static void on_client_drain(void *data)
{
    sl_exchange_t *ex = data;
    if (ex->paused && ex->xfer) {
        ex->paused = 0;
        arm_wait(ex, ex->plan.t_idle);
        sl_transfer_resume(ex->xfer);
    }
}

static void on_client_gone(void *data, int err)
{
    sl_exchange_t *ex = data;
    ex->bytes_out = sl_conn_bytes_out(ex->conn) - ex->bytes_base;
    ex->conn = NULL;
    fail(ex, SL_TERM_CAUSE_CLIENT_CLOSED, err, "client closed the connection");
}

static const sl_conn_handler_t conn_handler = {on_client_gone, on_client_drain};

/* ---- retries ---- */

/* Appends {supplier, status, error, duration_ms} for the attempt that just
 * ended to the attempt log the history record carries. */
static void log_attempt(sl_exchange_t *ex, int status, const char *error)
{
    sl_buf_t *b = &ex->attempt_log;
    sl_buf_append_c(b, b->len ? "," : "[");
    sl_buf_append_c(b, "{\"supplier\":\"");
    const char *sup = ex->plan.supplier ? ex->plan.supplier : "";
    sl_buf_append_json_str(b, sup, strlen(sup));
    sl_buf_printf(b, "\",\"status\":%d,\"error\":", status);
    if (error) {
        sl_buf_append_byte(b, '"');
        sl_buf_append_json_str(b, error, strlen(error));
        sl_buf_append_byte(b, '"');
    } else {
        sl_buf_append_c(b, "null");
    }
    sl_buf_printf(b, ",\"duration_ms\":%.1f}",
                  (double)(uv_hrtime() - ex->attempt_start_ns) / 1e6);
}

static void on_plan(void *ud, int rc, sl_plan_t *plan, const char *err);

static void on_retry_timer(uv_timer_t *t)
{
    sl_exchange_t *ex = t->data;
    int rc = sl_lua_request(ex->h, ex->ctx, on_plan, ex, &ex->task);
    if (rc)
        fail(ex, SL_TERM_CAUSE_SCRIPT_ERROR, rc, sl_strerror(rc));
}

/* Called for a failure before anything reached the client. Returns 1 if a
 * new attempt was scheduled (the current one is then abandoned), 0 if the
 * failure stands. Only the Lua retry hook decides: it knows the supplier's
 * policy, the fallback chain and Retry-After. */
static int maybe_retry(sl_exchange_t *ex, const sl_lua_failure_t *f)
{
    if (ex->finalized || !ex->conn || sl_conn_committed(ex->conn) || !ex->have_plan)
        return 0;
    double delay = -1;
    char err[512];
    if (sl_lua_retry(ex->h, ex->ctx, f, &delay, err, sizeof err) != 0 || delay < 0)
        return 0;
    log_attempt(ex, f->status, f->reason);
    if (ex->xfer) {
        sl_transfer_abort(ex->xfer);
        ex->xfer = NULL;
    }
    uv_timer_stop(&ex->t_wait);
    uv_timer_stop(&ex->t_total);
    if (ex->sse_on) {
        sl_sse_parser_free(&ex->sse);
        ex->sse_on = 0;
        sl_metrics_gauge_add(SL_GAUGE_STREAMS, -1);
    }
    sl_lua_resp_free(&ex->head);
    ex->head_ready = 0;
    ex->mode = MODE_NONE;
    ex->upstream_status = 0;
    ex->got_first_byte = 0;
    ex->paused = 0;
    sl_buf_reset(&ex->answer);
    for (int i = 0; i < 3; i++)
        sl_buf_reset(&ex->seen_ev[i]);
    sl_buf_free(&ex->held);
    sl_buf_reset(&ex->last_ev);
    ex->events_framed = ex->events_sent = 0;
    ex->observe = OBSERVE_OFF;
    sl_plan_free(&ex->plan);
    ex->have_plan = 0;
    sl_term_new_attempt(&ex->term);
    uv_timer_start(&ex->t_wait, on_retry_timer, (uint64_t)(delay * 1000.0 + 0.5), 0);
    return 1;
}

/* ---- the plan ---- */

static void start_upstream(sl_exchange_t *ex, const sl_request_t *req)
{
    sl_plan_t *p = &ex->plan;
    sl_transfer_req_t tr = {
        .url = p->url,
        .method = p->method,
        .headers = p->headers,
        .nheaders = p->nheaders,
        .body = p->body_original ? req->body : sl_str(p->body.base ? p->body.base : "", p->body.len),
        .connect_timeout_ms = p->t_connect,
        .verify_tls = p->verify_tls,
    };
    static const sl_transfer_cbs_t cbs = {on_up_head, on_up_data, on_up_done};
    sl_buf_free(&ex->body);
    sl_buf_init(&ex->body, sl_luahost_config(ex->h)->max_response);
    ex->attempts++;
    ex->attempt_start_ns = uv_hrtime();
    int rc = sl_transfer_start(ex->w->upstream, &tr, &cbs, ex, &ex->xfer);
    if (rc) {
        fail(ex, SL_TERM_CAUSE_UPSTREAM_DONE, CURLE_COULDNT_CONNECT, sl_strerror(rc));
        return;
    }
    if (p->t_first_byte)
        uv_timer_start(&ex->t_wait, on_wait_timeout, p->t_first_byte, 0);
    if (p->t_total)
        uv_timer_start(&ex->t_total, on_total_timeout, p->t_total, 0);
}

static void on_plan(void *ud, int rc, sl_plan_t *plan, const char *err)
{
    sl_exchange_t *ex = ud;
    ex->task = NULL;
    if (rc) {
        snprintf(ex->err, sizeof ex->err, "%s", err ? err : sl_strerror(rc));
        fail(ex, SL_TERM_CAUSE_SCRIPT_ERROR, rc, ex->err);
        return;
    }
    ex->plan = *plan;
    ex->have_plan = 1;
    if (plan->direct) {
        if (ex->conn)
            respond_full(ex, plan->status, plan->headers, plan->nheaders,
                         sl_str(plan->body.base ? plan->body.base : "", plan->body.len));
        sl_term_note(&ex->term, SL_TERM_CAUSE_LOCAL_ANSWER, plan->status, plan->error);
        finalize(ex);
        return;
    }
    /* The request views stay valid: no response has been sent yet, and a
     * client that left has already finalized (and cancelled) this task. */
    start_upstream(ex, ex->req);
}

/* ---- the end ---- */

static void on_handle_closed(uv_handle_t *hd)
{
    sl_exchange_t *ex = hd->data;
    if (--ex->open_handles > 0)
        return;
    free(ex->method);
    free(ex->path);
    free(ex);
}

static void write_access_log(sl_exchange_t *ex, const sl_term_result_t *res, int status,
                             double dur_ms, double ttfb_ms, uint64_t bytes_out)
{
    if (!sl_access_log_enabled())
        return;
    sl_buf_t b;
    sl_buf_init(&b, 0);
    const sl_plan_t *p = &ex->plan;
#define JS(key, val)                                                                         \
    do {                                                                                     \
        sl_buf_append_c(&b, ",\"" key "\":");                                                \
        if (val) {                                                                           \
            sl_buf_append_byte(&b, '"');                                                     \
            sl_buf_append_json_str(&b, (val), strlen(val));                                  \
            sl_buf_append_byte(&b, '"');                                                     \
        } else {                                                                             \
            sl_buf_append_c(&b, "null");                                                     \
        }                                                                                    \
    } while (0)
    sl_buf_printf(&b, "{\"time\":%.3f", now_unix());
    JS("id", ex->id);
    JS("peer", ex->peer_copy);
    JS("method", ex->method);
    JS("path", ex->path);
    JS("service", p->service);
    JS("client", p->client);
    JS("supplier", p->supplier);
    JS("model_in", p->model_in);
    JS("model_out", p->model_out);
    sl_buf_printf(&b, ",\"status\":%d,\"upstream_status\":%d,\"duration_ms\":%.1f", status,
                  ex->upstream_status, dur_ms);
    if (ttfb_ms >= 0)
        sl_buf_printf(&b, ",\"ttfb_ms\":%.1f", ttfb_ms);
    sl_buf_printf(&b, ",\"bytes_in\":%llu,\"bytes_out\":%llu", (unsigned long long)ex->bytes_in,
                  (unsigned long long)bytes_out);
    JS("reason", sl_term_reason_name(res->reason));
    sl_buf_printf(&b, ",\"partial\":%s,\"expected\":%s}", res->partial ? "true" : "false",
                  res->expected ? "true" : "false");
#undef JS
    sl_access_log_write(b.base, b.len);
    sl_buf_free(&b);
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void submit_record(sl_exchange_t *ex, const sl_term_result_t *res, int status,
                          double dur_ms, double ttfb_ms, uint64_t bytes_out,
                          const sl_lua_logfields_t *lf)
{
    sl_records_t *rs = ex->w->app->records;
    if (!rs)
        return;
    sl_record_t *r = sl_record_new();
    if (!r)
        return;
    if (ex->attempts > 0)
        log_attempt(ex, ex->upstream_status, res->reason == SL_TERM_COMPLETE
                                                 ? NULL
                                                 : sl_term_reason_name(res->reason));
    const sl_plan_t *p = &ex->plan;
    r->id = strdup(ex->id);
    r->time = now_unix() - dur_ms / 1000.0;
    r->client = dup_or_null(p->client ? p->client : lf->client);
    r->service = dup_or_null(p->service ? p->service : lf->service);
    r->method = dup_or_null(ex->method);
    r->path = dup_or_null(ex->path);
    r->route = dup_or_null(p->route);
    r->supplier = dup_or_null(p->supplier);
    r->model_in = dup_or_null(p->model_in ? p->model_in : lf->model_in);
    r->model_out = dup_or_null(lf->model_out ? lf->model_out : p->model_out);
    r->status = status;
    r->duration_ms = dur_ms;
    r->ttfb_ms = ttfb_ms;
    r->bytes_in = (int64_t)ex->bytes_in;
    r->bytes_out = (int64_t)bytes_out;
    r->input_tokens = lf->input_tokens;
    r->output_tokens = lf->output_tokens;
    r->cache_read_tokens = lf->cache_read_tokens;
    r->cache_write_tokens = lf->cache_write_tokens;
    r->reason = strdup(sl_term_reason_name(res->reason));
    r->partial = res->partial;
    r->expected = res->expected;
    if (res->reason != SL_TERM_COMPLETE) {
        sl_buf_t e;
        sl_buf_init(&e, 0);
        sl_buf_printf(&e, "partial=%s; reason=%s", res->partial ? "true" : "false",
                      sl_term_reason_name(res->reason));
        if (res->detail && *res->detail)
            sl_buf_printf(&e, "; %s", res->detail);
        r->error = strdup(sl_buf_cstr(&e));
        sl_buf_free(&e);
    }
    r->attempts = ex->attempts;
    if (ex->attempt_log.len) {
        sl_buf_append_byte(&ex->attempt_log, ']');
        r->attempts_json = strdup(sl_buf_cstr(&ex->attempt_log));
    }
    r->extra_json = dup_or_null(lf->extra_json);
    r->request_body = dup_or_null(lf->request_body);
    r->response_body = dup_or_null(lf->response_body);
    sl_records_submit(rs, r);
}

/* Asks Lua how the answer ends: closing bytes for a committed one (into
 * ex->out), else an error response (er). A finish hook that fails on a
 * committed answer is a script error of its own (after an answer that was
 * otherwise whole, SCRIPT_ERROR is then the reason): it is asked once more
 * with that outcome, and the host answers with the protocol's plain failure
 * tail, so the client still gets a well-formed end. */
static int run_finish(sl_exchange_t *ex, int committed, sl_term_result_t *res, int *ended,
                      sl_lua_resp_t *er)
{
    for (int round = 0;; round++) {
        sl_lua_outcome_t oc = {sl_term_reason_name(res->reason),
                               res->expected,
                               res->partial,
                               committed,
                               ex->upstream_status,
                               res->detail,
                               ex->sse_on,
                               ex->events_sent};
        sl_buf_reset(&ex->out);
        int frc =
            sl_lua_finish(ex->h, ex->ctx, &oc, &ex->out, ended, er, ex->err2, sizeof ex->err2);
        if (frc == 0 || !committed || round == 1)
            return frc;
        sl_lua_resp_free(er);
        snprintf(ex->err3, sizeof ex->err3, "finish hook failed: %.900s", ex->err2);
        sl_term_note(&ex->term, SL_TERM_CAUSE_SCRIPT_ERROR, frc, ex->err3);
        *res = sl_term_classify(&ex->term);
    }
}

/* The last resort when no proper answer can be sent: a plain JSON 502/504,
 * or, if even that fails, closing the connection (never a client that
 * waits for an answer that will not come). */
static void respond_fallback(sl_exchange_t *ex, const sl_term_result_t *res)
{
    static const sl_header_t ct[] = {{SL_STR("content-type"), SL_STR("application/json")}};
    if (respond_full(ex, res->reason == SL_TERM_UPSTREAM_TIMEOUT_FIRST_BYTE ? 504 : 502, ct, 1,
                     SL_STR("{\"error\":{\"type\":\"api_error\",\"message\":"
                            "\"gateway error (see sluice log)\"}}")) != 0) {
        sl_conn_close(ex->conn, 0);
        ex->conn = NULL;
    }
}

/* An answer whose head cannot be sent (a header value with CR/LF from a
 * script) becomes the fallback answer instead of no answer. */
static void respond_or_fallback(sl_exchange_t *ex, const sl_term_result_t *res, int status,
                                const sl_header_t *hv, size_t n, sl_str_t body)
{
    if (respond_full(ex, status, hv, n, body) != 0 && !sl_conn_committed(ex->conn))
        respond_fallback(ex, res);
}

static void finalize(sl_exchange_t *ex)
{
    if (ex->finalized)
        return;
    ex->finalized = 1;
    if (ex->task) {
        sl_lua_task_cancel(ex->task);
        ex->task = NULL;
    }
    if (ex->xfer) {
        ex->term.connected = sl_transfer_connected(ex->xfer);
        sl_transfer_abort(ex->xfer);
        ex->xfer = NULL;
    }
    uv_timer_stop(&ex->t_wait);
    uv_timer_stop(&ex->t_total);

    int committed = ex->conn ? sl_conn_committed(ex->conn) : ex->first_out_ns != 0;
    ex->term.committed = committed;
    sl_term_result_t res = sl_term_classify(&ex->term);
    /* A finished passthrough stream may end in bytes no blank line closed
     * (after its terminal event, or a protocol without one): they belong to
     * the answer. A cut stream drops them: they are half an event. */
    if (res.reason == SL_TERM_COMPLETE && ex->held.len && ex->conn && commit_head(ex) == 0) {
        sl_conn_send_body(ex->conn, ex->held.base, ex->held.len);
        committed = ex->term.committed = 1;
    }
    /* The tail of a cut passthrough stream repeats the answer's id and
     * closes what its latest event left open. */
    int cut_stream = ex->observe && committed && ex->conn && res.partial;
    if (ex->observe == OBSERVE_USAGE || cut_stream)
        observe_events(ex);
    if (cut_stream && ex->last_ev.len)
        sl_lua_ctx_set(ex->h, ex->ctx, "stream_last_event", sl_str(ex->last_ev.base, ex->last_ev.len));

    sl_lua_resp_t er;
    int ended = 0;
    int frc = run_finish(ex, committed, &res, &ended, &er);
    int abort_conn = 0;
    if (ex->conn) {
        if (committed) {
            if (!frc && ex->out.len)
                sl_conn_send_body(ex->conn, ex->out.base, ex->out.len);
            /* A cut answer that no protocol tail can mark (a plain body, or
             * a tail that failed) must not end like a whole one: close the
             * connection without the last chunk, so every HTTP client sees
             * a transport error instead of a truncated "success". */
            abort_conn = res.partial && (frc || !ended);
        } else if (!frc && er.status) {
            respond_or_fallback(ex, &res, er.status, er.headers, er.nheaders,
                                sl_str(er.body.base ? er.body.base : "", er.body.len));
        } else if (res.reason == SL_TERM_COMPLETE && ex->head_ready) {
            respond_or_fallback(ex, &res, ex->head.status, ex->head.headers, ex->head.nheaders,
                                SL_STR(""));
        } else {
            respond_fallback(ex, &res);
        }
    }
    sl_lua_resp_free(&er);
    /* What the client got; for a client already gone, what the upstream said. */
    int status = ex->sent_status ? ex->sent_status : ex->term.http_status;

    uint64_t bytes_out = ex->conn ? sl_conn_bytes_out(ex->conn) - ex->bytes_base : ex->bytes_out;
    uint64_t end = uv_hrtime();
    double dur_ms = (double)(end - ex->start_ns) / 1e6;
    double ttfb_ms = ex->first_out_ns ? (double)(ex->first_out_ns - ex->start_ns) / 1e6 : -1;

    sl_lua_logfields_t lf;
    memset(&lf, 0, sizeof lf);
    lf.input_tokens = lf.output_tokens = lf.cache_read_tokens = lf.cache_write_tokens = -1;
    if (ex->answer.len)
        sl_lua_ctx_set(ex->h, ex->ctx, "answer", sl_str(ex->answer.base, ex->answer.len));
    sl_lua_log(ex->h, ex->ctx, &lf, ex->err2, sizeof ex->err2);
    write_access_log(ex, &res, status, dur_ms, ttfb_ms, bytes_out);
    submit_record(ex, &res, status, dur_ms, ttfb_ms, bytes_out, &lf);
    const char *service = ex->plan.service ? ex->plan.service : lf.service;
    sl_metrics_request(service ? service : "none",
                       ex->plan.supplier ? ex->plan.supplier : "none", status);
    sl_lua_logfields_free(&lf);
    sl_metrics_outcome(sl_term_reason_name(res.reason), res.partial);
    sl_metrics_observe_duration(dur_ms / 1000.0);
    if (ttfb_ms >= 0)
        sl_metrics_observe_ttfb(ttfb_ms / 1000.0);
    if (ex->sse_on)
        sl_metrics_gauge_add(SL_GAUGE_STREAMS, -1);

    if (ex->conn) {
        if (abort_conn)
            sl_conn_close(ex->conn, 1); /* flush what was sent, then EOF: no final chunk */
        else
            sl_conn_finish(ex->conn);
        ex->conn = NULL;
    }
    if (ex->sse_on)
        sl_sse_parser_free(&ex->sse);
    sl_buf_free(&ex->body);
    sl_buf_free(&ex->out);
    sl_buf_free(&ex->attempt_log);
    sl_buf_free(&ex->answer);
    for (int i = 0; i < 3; i++)
        sl_buf_free(&ex->seen_ev[i]);
    sl_buf_free(&ex->last_ev);
    sl_buf_free(&ex->held);
    sl_lua_resp_free(&ex->head);
    if (ex->have_plan)
        sl_plan_free(&ex->plan);
    sl_lua_ctx_free(ex->h, ex->ctx);
    sl_luahost_release(ex->h);
    ex->h = NULL;
    sl_worker_t *w = ex->w;
    if (ex->prev)
        ex->prev->next = ex->next;
    else
        w->exchanges = ex->next;
    if (ex->next)
        ex->next->prev = ex->prev;
    w->nexchanges--;
    uv_close((uv_handle_t *)&ex->t_wait, on_handle_closed);
    uv_close((uv_handle_t *)&ex->t_total, on_handle_closed);
}

void sl_exchange_shutdown(sl_exchange_t *ex)
{
    if (ex->conn)
        sl_conn_set_handler(ex->conn, NULL, NULL);
    fail(ex, SL_TERM_CAUSE_SHUTDOWN, 0, "sluice is shutting down");
}

void sl_exchange_start(sl_request_t *req, void *worker)
{
    sl_worker_t *w = worker;
    if (sl_str_has_prefix(req->path, "/_sluice/")) {
        sl_admin_handle(w, req);
        return;
    }
    sl_exchange_t *ex = calloc(1, sizeof *ex);
    if (!ex) {
        sl_conn_close(req->conn, 0);
        return;
    }
    ex->w = w;
    ex->conn = req->conn;
    ex->bytes_base = sl_conn_bytes_out(req->conn);
    ex->req = req;
    ex->start_ns = req->start_ns ? req->start_ns : uv_hrtime();
    ex->bytes_in = req->bytes_in;
    ex->method = strdup(req->method);
    sl_buf_t path;
    sl_buf_init(&path, 0);
    sl_log_redact_query(&path, req->url);
    ex->path = strdup(sl_buf_cstr(&path) ? path.base : "");
    sl_buf_free(&path);
    snprintf(ex->peer_copy, sizeof ex->peer_copy, "%s", req->peer);
    make_request_id(ex, req);
    sl_term_init(&ex->term);
    sl_buf_init(&ex->out, 0);
    sl_buf_init(&ex->body, 0);
    sl_buf_init(&ex->attempt_log, 0);
    ex->capture_all = sl_luahost_config(w->host)->history_bodies;
    /* Bodies for the history are kept up to 1 MiB; without them, and only
     * when there is a history, a non-streamed passthrough answer is kept
     * (256 KiB) for the usage its record reports. */
    sl_buf_init(&ex->answer, ex->capture_all ? 1 << 20 : 256 << 10);
    for (int i = 0; i < 3; i++)
        sl_buf_init(&ex->seen_ev[i], 64 << 10);
    sl_buf_init(&ex->last_ev, 1024);
    sl_buf_init(&ex->held, 0);
    uv_timer_init(&w->loop, &ex->t_wait);
    uv_timer_init(&w->loop, &ex->t_total);
    ex->t_wait.data = ex->t_total.data = ex;
    ex->open_handles = 2;
    ex->next = w->exchanges;
    if (w->exchanges)
        w->exchanges->prev = ex;
    w->exchanges = ex;
    w->nexchanges++;
    sl_conn_set_handler(req->conn, &conn_handler, ex);

    ex->h = w->host;
    sl_luahost_retain(ex->h);
    ex->ctx = sl_lua_ctx_new(ex->h, req, ex->id);
    int rc = sl_lua_request(ex->h, ex->ctx, on_plan, ex, &ex->task);
    if (rc)
        fail(ex, SL_TERM_CAUSE_SCRIPT_ERROR, rc, sl_strerror(rc));
}
