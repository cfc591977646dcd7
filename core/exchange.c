/*
 * exchange.c — one proxied request from plan to outcome (see exchange.h).
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
 * State has two lifetimes. The exchange holds what spans the request: the
 * client's connection, the Lua ctx, the termination notes, the attempt log,
 * the copy of the answer for the log hook. An attempt_t holds what one
 * upstream attempt builds — its plan, transfer, head, framer, held bytes,
 * kept events — and attempt_reset() is the one place that takes it apart,
 * before a retry and at the end. Three timers: t_wait (the attempt's first
 * byte, then idle), t_total (the attempt's whole transfer) and t_retry (the
 * backoff before the next attempt).
 *
 * Nothing is sent to the client before the first byte of the body is ready:
 * until then the exchange may still fail cleanly with a proper HTTP error in
 * the client's protocol (that is also the point after which retries become
 * impossible). Every way an exchange can end funnels into finalize(), which
 * runs exactly once: stop what still runs, end the client's answer
 * (classify; let Lua close the stream or build an error response), take the
 * outcome and hand it to the owner, free.
 */
#include "exchange.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

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

/* One upstream attempt: everything a retry throws away. All zero (with the
 * kept-event bounds set by attempt_init) before the attempt starts. */
typedef struct {
    sl_plan_t plan; /* the request hook plans every attempt anew */
    int have_plan;
    sl_transfer_t *xfer;
    int upstream_status;
    int got_first_byte;
    int paused; /* curl keeps the bytes until the client drains */
    enum body_mode mode;
    sl_sse_parser_t sse;
    int sse_on;
    sl_lua_resp_t head; /* the head to send when the first byte is ready */
    int head_ready;
    sl_buf_t body;          /* BUFFER mode */
    int observe;            /* passthrough SSE: OBSERVE_* — which events below to keep */
    sl_buf_t seen_ev[3];    /* the first event, the first and the latest usage-bearing
                             * ones: "event\0data" (see keep_event) */
    sl_buf_t last_ev;       /* the latest of them, "event\ndata" cut to 512 bytes of data:
                             * which block a failure tail must close */
    sl_str_t last_name, last_data; /* the latest event while it is a view into the feed
                                    * being framed: copied into last_ev once per feed */
    int last_pending;               /* last_name/last_data hold it */
    sl_buf_t held;          /* passthrough SSE: bytes of an event not yet whole */
    uint64_t events_framed; /* whole upstream SSE events framed so far */
    uint64_t events_sent;   /* ... of which the client was sent (passthrough) */
} attempt_t;

struct sl_exchange_s {
    sl_exchange_env_t env;
    const sl_transfer_ops_t *up; /* env.transfer, or curl's */
    sl_luahost_t *h;
    int ctx;
    sl_conn_t *conn;   /* NULL once the client is gone or answered */
    sl_request_t *req; /* valid while conn is set */
    sl_str_t feed;     /* the upstream bytes being framed (stream_data), else empty */
    char id[130];
    char *method, *path; /* copies: the request views die with the response */
    uint64_t bytes_in;
    char peer[64];

    sl_lua_task_t *task;
    attempt_t at;        /* the current upstream attempt */
    sl_buf_t out;        /* bytes produced by hooks */
    sl_buf_t answer;     /* bounded copy of what the client got, for the log hook */
    int capture_all;     /* history.bodies: capture streams too */
    uint64_t bytes_base; /* the connection's byte count when this request began */
    uint64_t bytes_out;  /* what this request sent, kept when the client leaves */

    uv_timer_t t_wait;  /* the attempt's first byte, then idle */
    uv_timer_t t_total; /* the attempt's whole transfer */
    uv_timer_t t_retry; /* the backoff before the next attempt */
    int open_handles;

    sl_term_t term;
    int attempts;              /* upstream attempts started */
    uint64_t attempt_start_ns; /* the latest one's start (kept through the backoff after it) */
    sl_attempt_t *attempt_log; /* ended attempts; suppliers owned, errors static */
    size_t nattempt_log;
    int finalized;
    uint64_t start_ns, first_out_ns;
    int sent_status; /* the status the client got (0: none sent) */
    char err[1024];  /* the first failure's text: the classifier borrows it */
    char *finish_err; /* a failed finish hook's text, once it is a cause of its own (a
                       * term note borrows it); the closing hooks' other errors are
                       * only logged, from buffers on the stack */
};

static const sl_transfer_ops_t curl_transfer = {sl_transfer_start, sl_transfer_resume,
                                                sl_transfer_abort, sl_transfer_connected};

static void finalize(sl_exchange_t *ex);
static int maybe_retry(sl_exchange_t *ex, const sl_lua_failure_t *f);

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

static void put_hex(char *out, uint64_t v, int digits)
{
    static const char hex[] = "0123456789abcdef";
    for (int i = digits - 1; i >= 0; i--, v >>= 4)
        out[i] = hex[v & 15];
}

/* The client's x-request-id when it sent a usable one, else "req_" and 32
 * hex digits: 12 of milliseconds since the epoch, then 20 random ones. Ids
 * that sort by time keep the history's id index growing at its right edge;
 * random ones wrote a random page of it per record, which made the writer
 * slower as the table grew. */
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
    uint64_t ms = (uint64_t)(now_unix() * 1000.0);
    memcpy(ex->id, "req_", 4);
    put_hex(ex->id + 4, ms, 12);
    put_hex(ex->id + 16, next_random(), 16);
    put_hex(ex->id + 32, next_random(), 4);
    ex->id[36] = '\0';
}

static int is_event_stream(const sl_header_t *hv, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (sl_str_ieq_c(hv[i].name, "content-type"))
            return hv[i].value.len >= 17 &&
                   strncasecmp(hv[i].value.base, "text/event-stream", 17) == 0;
    return 0;
}

/* ---- the attempt ---- */

static void attempt_init(attempt_t *a)
{
    memset(a, 0, sizeof *a); /* MODE_NONE, OBSERVE_OFF, empty unbounded buffers */
    for (int i = 0; i < 3; i++)
        sl_buf_init(&a->seen_ev[i], 64 << 10);
    sl_buf_init(&a->last_ev, 1024);
}

/* Takes the current attempt apart — its transfer aborted (no callback
 * follows), its timers stopped, all it holds freed — and leaves an empty
 * one in its place. */
static void attempt_reset(sl_exchange_t *ex)
{
    attempt_t *a = &ex->at;
    if (a->xfer)
        ex->up->abort(a->xfer);
    uv_timer_stop(&ex->t_wait);
    uv_timer_stop(&ex->t_total);
    if (a->sse_on) {
        sl_sse_parser_free(&a->sse);
        sl_metrics_gauge_add(SL_GAUGE_STREAMS, -1);
    }
    if (a->have_plan)
        sl_plan_free(&a->plan);
    sl_lua_resp_free(&a->head);
    sl_buf_free(&a->body);
    for (int i = 0; i < 3; i++)
        sl_buf_free(&a->seen_ev[i]);
    sl_buf_free(&a->last_ev);
    sl_buf_free(&a->held);
    attempt_init(a);
}

/* Notes an attempt that ended in the attempt log. `error` is a reason name
 * (static) or NULL. Without memory the entry is left out, nothing else. */
static void attempt_log_add(sl_exchange_t *ex, int status, const char *error)
{
    sl_attempt_t *log = realloc(ex->attempt_log, (ex->nattempt_log + 1) * sizeof *log);
    if (!log)
        return;
    ex->attempt_log = log;
    const char *sup = ex->at.plan.supplier;
    log[ex->nattempt_log++] = (sl_attempt_t){strdup(sup ? sup : ""), status, error,
                                             (double)(uv_hrtime() - ex->attempt_start_ns) / 1e6};
}

/* ---- the client's side ---- */

/* Copies the upstream head into the attempt's head (send_head drops the
 * hop-by-hop fields of every head it sends, this one included). */
static void head_from_upstream(sl_exchange_t *ex, int status, const sl_header_t *hv, size_t n)
{
    sl_lua_resp_set_head(&ex->at.head, status, hv, n);
    ex->at.head_ready = 1;
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
    return send_head(ex, ex->at.head.status, ex->at.head.headers, ex->at.head.nheaders, -1);
}

/* Keeps what fits of the client's answer; the rest is dropped, not fatal. */
static void capture(sl_exchange_t *ex, const char *p, size_t n)
{
    size_t room = ex->answer.limit - ex->answer.len;
    sl_buf_append(&ex->answer, p, n < room ? n : room);
}

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
    if (ex->at.got_first_byte) {
        fail(ex, SL_TERM_CAUSE_TIMER_IDLE, 0, "no data from upstream within the idle timeout");
        return;
    }
    sl_lua_failure_t f = {"error",
                          0,
                          NULL,
                          0,
                          "UPSTREAM_TIMEOUT_FIRST_BYTE",
                          "upstream sent nothing within first_byte"};
    if (!maybe_retry(ex, &f))
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
    if (!ex->at.seen_ev[0].len)
        return;
    sl_lua_events_begin(ex->h);
    for (int i = 0; i < 3; i++) {
        sl_buf_t *b = &ex->at.seen_ev[i];
        if (!b->len)
            continue;
        size_t nl = strlen(b->base); /* the event name ends at the NUL */
        sl_sse_event_t ev = {sl_str(b->base, nl), sl_str(b->base + nl + 1, b->len - nl - 1),
                             SL_STR_NULL, -1};
        sl_lua_events_add(ex->h, &ev);
    }
    char err[1024];
    sl_lua_events_flush(ex->h, ex->ctx, "observe", NULL, err, sizeof err);
}

/* The latest event, for a failure tail. A stream has a hundred events per
 * answer and a tail is rare: an event that is a view into the feed being
 * framed is only remembered as such, and copied once when the feed is done
 * (keep_last_event); one the framer assembled in its own buffers (which
 * the next line may overwrite) is copied at once. */
static int in_feed(const sl_exchange_t *ex, sl_str_t v)
{
    return v.len == 0 || (v.base >= ex->feed.base && v.base + v.len <= ex->feed.base + ex->feed.len);
}

static void copy_last_event(attempt_t *a, sl_str_t name, sl_str_t data)
{
    sl_buf_reset(&a->last_ev);
    sl_buf_append_str(&a->last_ev, name);
    sl_buf_append_byte(&a->last_ev, '\n');
    sl_buf_append(&a->last_ev, data.base, data.len < 512 ? data.len : 512);
}

static void note_last_event(sl_exchange_t *ex, const sl_sse_event_t *ev)
{
    attempt_t *a = &ex->at;
    sl_str_t data = sl_str(ev->data.base, ev->data.len < 512 ? ev->data.len : 512);
    a->last_pending = in_feed(ex, ev->event) && in_feed(ex, data);
    if (a->last_pending)
        a->last_name = ev->event, a->last_data = data;
    else
        copy_last_event(a, ev->event, data);
}

static void keep_last_event(attempt_t *a)
{
    if (a->last_pending)
        copy_last_event(a, a->last_name, a->last_data);
    a->last_pending = 0;
}

static int on_sse_event(void *ud, const sl_sse_event_t *ev)
{
    sl_exchange_t *ex = ud;
    attempt_t *a = &ex->at;
    if (a->plan.nmarkers && sl_sse_marker_match(a->plan.markers, a->plan.nmarkers, ev))
        ex->term.terminal_seen = 1;
    a->events_framed++;
    if (a->mode == MODE_EVENTS)
        sl_lua_events_add(ex->h, ev);
    else if (a->observe) {
        if (a->events_framed == 1)
            keep_event(&a->seen_ev[0], ev);
        note_last_event(ex, ev);
        if (a->observe == OBSERVE_USAGE &&
            sl_sse_marker_match(a->plan.usage_markers, a->plan.nusage_markers, ev))
            keep_event(&a->seen_ev[a->seen_ev[1].len ? 2 : 1], ev);
    }
    return 0;
}

/* Chooses the body's path once the head is in (see the top of the file).
 * Returns 0, or a script error already failed. */
static int choose_mode(sl_exchange_t *ex, int status, const sl_header_t *hv, size_t n, int sse)
{
    attempt_t *a = &ex->at;
    if (!a->plan.transform) {
        a->mode = MODE_PASS;
        head_from_upstream(ex, status, hv, n);
    } else if (sse) {
        a->mode = MODE_EVENTS;
        sl_lua_resp_t r;
        int rc = sl_lua_response(ex->h, ex->ctx, status, hv, n, &r, ex->err, sizeof ex->err);
        if (rc) {
            sl_lua_resp_free(&r);
            fail(ex, SL_TERM_CAUSE_SCRIPT_ERROR, rc, ex->err);
            return rc;
        }
        if (r.status) {
            sl_lua_resp_free(&a->head);
            a->head = r;
            a->head_ready = 1;
        } else {
            sl_lua_resp_free(&r);
            head_from_upstream(ex, status, hv, n);
        }
    } else {
        a->mode = MODE_BUFFER;
        head_from_upstream(ex, status, hv, n); /* the body hook sees these headers */
        a->head_ready = 0;                     /* but the hook's answer replaces them */
    }
    return 0;
}

static void on_up_head(void *ud, int status, const sl_header_t *hv, size_t n)
{
    sl_exchange_t *ex = ud;
    attempt_t *a = &ex->at;
    /* A field with CR, LF or NUL cannot be relayed (it would split the
     * client's head): such an answer is the upstream's protocol error. */
    if (!sl_http_fields_relayable(hv, n)) {
        a->upstream_status = status;
        fail(ex, SL_TERM_CAUSE_UPSTREAM_INVALID, 0,
             "upstream sent a header field containing CR, LF or NUL");
        return;
    }
    if (status >= 400) {
        sl_lua_failure_t f = {"status", status, hv, n, NULL, NULL};
        if (maybe_retry(ex, &f))
            return;
    }
    a->upstream_status = status;
    ex->term.http_status = status;
    a->got_first_byte = 1;
    arm_wait(ex, a->plan.t_idle);
    int ok = status >= 200 && status < 300;
    /* Frame as SSE only what the upstream itself calls a stream: a supplier
     * that answers a stream request with a plain JSON body is passed (or
     * translated) as a body, not judged by a terminal event it never sends. */
    int sse = a->plan.stream && ok && is_event_stream(hv, n);
    ex->term.terminal_required = sse && a->plan.nmarkers > 0;
    if (choose_mode(ex, status, hv, n, sse))
        return;
    if (sse) {
        size_t max_event = sl_luahost_config(ex->h)->max_event;
        sl_sse_parser_init(&a->sse, max_event);
        a->sse_on = 1;
        if (a->mode == MODE_PASS)
            a->observe = ex->env.watch_usage ? OBSERVE_USAGE : OBSERVE_START;
        /* An event's lines are bounded by max_event; its line ends are not. */
        sl_buf_init(&a->held, max_event ? 2 * max_event + 4096 : 0);
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
    attempt_t *a = &ex->at;
    size_t at = sl_sse_parser_boundary(&a->sse);
    if (at == SL_SSE_NO_BOUNDARY)
        return sl_buf_append(&a->held, p, n);
    if ((a->held.len || at) && commit_head(ex) == 0) {
        if (ex->capture_all) {
            capture(ex, a->held.base, a->held.len);
            capture(ex, p, at);
        }
        sl_conn_send_body2(ex->conn, sl_str(a->held.base, a->held.len), sl_str(p, at));
        a->events_sent = a->events_framed;
        ex->term.terminal_delivered = ex->term.terminal_seen;
    }
    sl_buf_reset(&a->held);
    return sl_buf_append(&a->held, p + at, n - at);
}

/* Framed or translated bytes of a streamed (or passed) answer. */
static int stream_data(sl_exchange_t *ex, const char *p, size_t n)
{
    attempt_t *a = &ex->at;
    int batch = a->mode == MODE_EVENTS;
    sl_buf_reset(&ex->out);
    if (batch)
        sl_lua_events_begin(ex->h);
    ex->feed = sl_str(p, n);
    int frc = a->sse_on ? sl_sse_parser_feed(&a->sse, p, n, on_sse_event, ex) : 0;
    keep_last_event(a); /* the feed's bytes are the caller's: views end here */
    ex->feed = SL_STR_NULL;
    /* Passthrough: forward what is whole, also before an oversized event. */
    if (a->mode == MODE_PASS && a->sse_on && pass_whole_events(ex, p, n) == SL_ELIMIT)
        frc = SL_ELIMIT;
    if (frc == SL_ELIMIT) {
        /* The events framed before the oversized one are sent (translated
         * or passed), so what the client saw ends on an event boundary and
         * the encoder's state matches it. */
        if (batch &&
            sl_lua_events_flush(ex->h, ex->ctx, "events", &ex->out, ex->err, sizeof ex->err) == 0 &&
            ex->out.len && commit_head(ex) == 0)
            sl_conn_send_body(ex->conn, ex->out.base, ex->out.len);
        fail(ex, SL_TERM_CAUSE_LIMIT_EVENT, 0, "an SSE event exceeds max_event");
        return 0;
    }
    if (a->mode == MODE_PASS && a->sse_on)
        return 0; /* sent (or held) by pass_whole_events */
    if (batch) {
        int rc = sl_lua_events_flush(ex->h, ex->ctx, "events", &ex->out, ex->err, sizeof ex->err);
        if (rc) {
            fail(ex, SL_TERM_CAUSE_SCRIPT_ERROR, rc, ex->err);
            return 0;
        }
    }
    const char *bytes = a->mode == MODE_PASS ? p : ex->out.base;
    size_t len = a->mode == MODE_PASS ? n : ex->out.len;
    if (ex->capture_all || (a->mode == MODE_PASS && ex->env.watch_usage))
        capture(ex, bytes, len);
    if (len && commit_head(ex) == 0)
        sl_conn_send_body(ex->conn, bytes, len);
    return 0;
}

static int on_up_data(void *ud, const char *p, size_t n)
{
    sl_exchange_t *ex = ud;
    attempt_t *a = &ex->at;
    if (ex->finalized || !ex->conn)
        return 0;
    /* Backpressure: leave the bytes with curl until the client catches up.
     * Curl hands them over again on resume, so nothing is counted yet, and
     * the idle timer stops: a slow client is not a silent upstream. */
    if (a->mode != MODE_BUFFER && sl_conn_write_queue(ex->conn) >= SL_CONN_HIGH_WATER) {
        a->paused = 1;
        uv_timer_stop(&ex->t_wait);
        return SL_TRANSFER_PAUSE;
    }
    arm_wait(ex, a->plan.t_idle);
    ex->term.upstream_bytes += n;
    if (a->mode != MODE_BUFFER)
        return stream_data(ex, p, n);
    if (sl_buf_append(&a->body, p, n) == 0)
        return 0;
    sl_term_note(&ex->term, SL_TERM_CAUSE_LIMIT_RESPONSE, 0,
                 "upstream answer exceeds max_response");
    return SL_TRANSFER_FAIL; /* curl ends the transfer; on_done finalizes */
}

/* A whole buffered answer goes through the body hook. */
static void answer_from_body(sl_exchange_t *ex)
{
    attempt_t *a = &ex->at;
    sl_lua_resp_t r;
    int rc = sl_lua_body(ex->h, ex->ctx, a->upstream_status, a->head.headers, a->head.nheaders,
                         sl_str(a->body.base ? a->body.base : "", a->body.len), &r, ex->err,
                         sizeof ex->err);
    if (rc) {
        sl_term_note(&ex->term, SL_TERM_CAUSE_SCRIPT_ERROR, rc, ex->err);
    } else {
        if (r.upstream_invalid) { /* the answer said nothing usable: a 502, recorded so */
            snprintf(ex->err, sizeof ex->err, "%s", r.error ? r.error : "unusable answer");
            sl_term_note(&ex->term, SL_TERM_CAUSE_UPSTREAM_UNUSABLE, 0, ex->err);
        }
        respond_full(ex, r.status ? r.status : a->upstream_status, r.headers, r.nheaders,
                     sl_str(r.body.base ? r.body.base : "", r.body.len));
    }
    sl_lua_resp_free(&r);
}

static void on_up_done(void *ud, int curl_code, const char *errbuf)
{
    sl_exchange_t *ex = ud;
    /* The transfer is still alive during on_done: ask whether it connected,
     * or a connect timeout would be classified as a total timeout. */
    ex->term.connected = ex->up->connected(ex->at.xfer);
    ex->at.xfer = NULL;
    sl_term_note(&ex->term, SL_TERM_CAUSE_UPSTREAM_DONE, curl_code,
                 errbuf && *errbuf ? errbuf : NULL);
    if (curl_code != 0 && !(ex->conn && sl_conn_committed(ex->conn))) {
        sl_term_result_t r = sl_term_classify(&ex->term);
        sl_lua_failure_t f = {"error", 0, NULL, 0, sl_term_reason_name(r.reason), r.detail};
        if (maybe_retry(ex, &f))
            return;
    }
    if (curl_code == 0 && ex->at.mode == MODE_BUFFER && ex->conn)
        answer_from_body(ex);
    finalize(ex);
}

static void on_client_drain(void *data)
{
    sl_exchange_t *ex = data;
    if (ex->at.paused && ex->at.xfer) {
        ex->at.paused = 0;
        arm_wait(ex, ex->at.plan.t_idle);
        ex->up->resume(ex->at.xfer);
    }
}

/* The exchange lets go of its client's connection (it left, or its answer
 * is over); what the request sent it is kept for the record. */
static sl_conn_t *let_go_of_client(sl_exchange_t *ex)
{
    sl_conn_t *c = ex->conn;
    ex->bytes_out = sl_conn_bytes_out(c) - ex->bytes_base;
    ex->conn = NULL;
    return c;
}

static void on_client_gone(void *data, int err)
{
    sl_exchange_t *ex = data;
    let_go_of_client(ex);
    fail(ex, SL_TERM_CAUSE_CLIENT_CLOSED, err, "client closed the connection");
}

static const sl_conn_handler_t conn_handler = {on_client_gone, on_client_drain};

/* ---- retries ---- */

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
    if (ex->finalized || !ex->conn || sl_conn_committed(ex->conn) || !ex->at.have_plan)
        return 0;
    double delay = -1;
    char err[512];
    if (sl_lua_retry(ex->h, ex->ctx, f, &delay, err, sizeof err) != 0 || delay < 0)
        return 0;
    attempt_log_add(ex, f->status, f->reason);
    attempt_reset(ex);
    sl_buf_reset(&ex->answer); /* nothing reached the client: nothing to keep */
    sl_term_new_attempt(&ex->term);
    uv_timer_start(&ex->t_retry, on_retry_timer, (uint64_t)(delay * 1000.0 + 0.5), 0);
    return 1;
}

/* ---- the plan ---- */

static void start_upstream(sl_exchange_t *ex, const sl_request_t *req)
{
    sl_plan_t *p = &ex->at.plan;
    sl_transfer_req_t tr = {
        .url = p->url,
        .method = p->method,
        .headers = p->headers,
        .nheaders = p->nheaders,
        .body =
            p->body_original ? req->body : sl_str(p->body.base ? p->body.base : "", p->body.len),
        .connect_timeout_ms = p->t_connect,
        .verify_tls = p->verify_tls,
    };
    static const sl_transfer_cbs_t cbs = {on_up_head, on_up_data, on_up_done};
    sl_buf_init(&ex->at.body, sl_luahost_config(ex->h)->max_response);
    ex->attempts++;
    ex->attempt_start_ns = uv_hrtime();
    int rc = ex->up->start(ex->env.upstream, &tr, &cbs, ex, &ex->at.xfer);
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
    ex->at.plan = *plan;
    ex->at.have_plan = 1;
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
        sl_lua_outcome_t oc = {
            sl_term_reason_name(res->reason), res->expected, res->partial,  committed,
            ex->at.upstream_status,           res->detail,   ex->at.sse_on, ex->at.events_sent};
        sl_buf_reset(&ex->out);
        char err[1024];
        int frc = sl_lua_finish(ex->h, ex->ctx, &oc, &ex->out, ended, er, err, sizeof err);
        if (frc == 0 || !committed || round == 1)
            return frc;
        sl_lua_resp_free(er);
        free(ex->finish_err);
        size_t n = strlen(err) + sizeof "finish hook failed: ";
        if ((ex->finish_err = malloc(n)))
            snprintf(ex->finish_err, n, "finish hook failed: %s", err);
        sl_term_note(&ex->term, SL_TERM_CAUSE_SCRIPT_ERROR, frc,
                     ex->finish_err ? ex->finish_err : "finish hook failed");
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
                            "\"gateway error (see sluice log)\"}}")) != 0)
        sl_conn_close(let_go_of_client(ex), 0);
}

/* An answer whose head cannot be sent (a header value with CR/LF from a
 * script) becomes the fallback answer instead of no answer. */
static void respond_or_fallback(sl_exchange_t *ex, const sl_term_result_t *res, int status,
                                const sl_header_t *hv, size_t n, sl_str_t body)
{
    if (respond_full(ex, status, hv, n, body) != 0 && !sl_conn_committed(ex->conn))
        respond_fallback(ex, res);
}

/* Stops what still runs: the request coroutine, the transfer (asking first
 * whether it had connected: the classifier needs it), the timers. */
static void stop_work(sl_exchange_t *ex)
{
    if (ex->task) {
        sl_lua_task_cancel(ex->task);
        ex->task = NULL;
    }
    if (ex->at.xfer) {
        ex->term.connected = ex->up->connected(ex->at.xfer);
        ex->up->abort(ex->at.xfer);
        ex->at.xfer = NULL;
    }
    uv_timer_stop(&ex->t_wait);
    uv_timer_stop(&ex->t_total);
    uv_timer_stop(&ex->t_retry);
}

/* Classifies the end (into *res) and ends the client's answer by it: the
 * rest of a whole stream, or the protocol's tail of a cut one, or an error
 * response in the client's protocol, or the fallback. Returns 1 when the
 * connection must then close without the final chunk. */
static int end_answer(sl_exchange_t *ex, sl_term_result_t *res)
{
    attempt_t *a = &ex->at;
    int committed = ex->conn ? sl_conn_committed(ex->conn) : ex->first_out_ns != 0;
    ex->term.committed = committed;
    *res = sl_term_classify(&ex->term);
    /* A finished passthrough stream may end in bytes no blank line closed
     * (after its terminal event, or a protocol without one): they belong to
     * the answer. A cut stream drops them: they are half an event. */
    if (res->reason == SL_TERM_COMPLETE && a->held.len && ex->conn && commit_head(ex) == 0) {
        sl_conn_send_body(ex->conn, a->held.base, a->held.len);
        committed = ex->term.committed = 1;
    }
    /* The tail of a cut passthrough stream repeats the answer's id and
     * closes what its latest event left open. */
    int cut_stream = a->observe && committed && ex->conn && res->partial;
    if (a->observe == OBSERVE_USAGE || cut_stream)
        observe_events(ex);
    if (cut_stream && a->last_ev.len)
        sl_lua_ctx_set(ex->h, ex->ctx, "stream_last_event",
                       sl_str(a->last_ev.base, a->last_ev.len));

    sl_lua_resp_t er;
    int ended = 0;
    int frc = run_finish(ex, committed, res, &ended, &er);
    int abort_conn = 0;
    if (ex->conn) {
        if (committed) {
            if (!frc && ex->out.len)
                sl_conn_send_body(ex->conn, ex->out.base, ex->out.len);
            /* A cut answer that no protocol tail can mark (a plain body, or
             * a tail that failed) must not end like a whole one: close the
             * connection without the last chunk, so every HTTP client sees
             * a transport error instead of a truncated "success". */
            abort_conn = res->partial && (frc || !ended);
        } else if (!frc && er.status) {
            respond_or_fallback(ex, res, er.status, er.headers, er.nheaders,
                                sl_str(er.body.base ? er.body.base : "", er.body.len));
        } else if (res->reason == SL_TERM_COMPLETE && a->head_ready) {
            respond_or_fallback(ex, res, a->head.status, a->head.headers, a->head.nheaders,
                                SL_STR(""));
        } else {
            respond_fallback(ex, res);
        }
    }
    sl_lua_resp_free(&er);
    return abort_conn;
}

/* Takes the outcome — with what only Lua knows, from the log hook: usage,
 * bodies, the names of a request that never got a plan — and hands it to
 * the owner. */
static void report(sl_exchange_t *ex, const sl_term_result_t *res)
{
    const sl_plan_t *p = &ex->at.plan; /* all NULL without a plan */
    uint64_t end = uv_hrtime();
    sl_outcome_t o = {
        .id = ex->id,
        .peer = ex->peer,
        .method = ex->method,
        .path = ex->path,
        .planned = {p->client, p->service, p->route, p->supplier, p->model_in, p->model_out},
        /* What the client got; for a client already gone, what the upstream said. */
        .status = ex->sent_status ? ex->sent_status : ex->term.http_status,
        .upstream_status = ex->at.upstream_status,
        .duration_ms = (double)(end - ex->start_ns) / 1e6,
        .ttfb_ms = ex->first_out_ns ? (double)(ex->first_out_ns - ex->start_ns) / 1e6 : -1,
        .bytes_in = (int64_t)ex->bytes_in,
        .bytes_out = (int64_t)ex->bytes_out, /* the client is let go of before the report */
        .end = *res,
        .attempts = ex->attempts,
    };

    sl_lua_logfields_t lf;
    memset(&lf, 0, sizeof lf);
    lf.input_tokens = lf.output_tokens = lf.cache_read_tokens = lf.cache_write_tokens = -1;
    lf.cost = -1;
    if (ex->answer.len)
        sl_lua_ctx_set(ex->h, ex->ctx, "answer", sl_str(ex->answer.base, ex->answer.len));
    char err[1024];
    sl_lua_log(ex->h, ex->ctx, &lf, err, sizeof err);
    o.end_time = now_unix();
    o.names = o.planned;
    o.names.client = p->client ? p->client : lf.client;
    o.names.service = p->service ? p->service : lf.service;
    o.names.model_in = p->model_in ? p->model_in : lf.model_in;
    o.names.model_out = lf.model_out ? lf.model_out : p->model_out;
    o.input_tokens = lf.input_tokens;
    o.output_tokens = lf.output_tokens;
    o.cache_read_tokens = lf.cache_read_tokens;
    o.cache_write_tokens = lf.cache_write_tokens;
    o.cost = lf.cost;
    o.gateway_key = lf.gateway_key;
    o.extra_json = lf.extra_json;
    o.request_body = lf.request_body;
    o.response_body = lf.response_body;
    if (ex->attempts > 0)
        attempt_log_add(ex, ex->at.upstream_status,
                        res->reason == SL_TERM_COMPLETE ? NULL : sl_term_reason_name(res->reason));
    o.attempt_log = ex->attempt_log;
    o.nattempt_log = ex->nattempt_log;

    ex->env.on_end(ex->env.owner, ex, &o);
    sl_lua_logfields_free(&lf);
}

static void on_handle_closed(uv_handle_t *hd)
{
    sl_exchange_t *ex = hd->data;
    if (--ex->open_handles > 0)
        return;
    free(ex->method);
    free(ex->path);
    free(ex->finish_err);
    free(ex);
}

/* Frees everything but the exchange itself, which goes when its timers
 * have closed. */
static void release(sl_exchange_t *ex)
{
    attempt_reset(ex);
    sl_buf_free(&ex->out);
    sl_buf_free(&ex->answer);
    for (size_t i = 0; i < ex->nattempt_log; i++)
        free((char *)ex->attempt_log[i].supplier);
    free(ex->attempt_log);
    ex->attempt_log = NULL;
    ex->nattempt_log = 0;
    sl_lua_ctx_free(ex->h, ex->ctx);
    sl_luahost_release(ex->h);
    ex->h = NULL;
    uv_close((uv_handle_t *)&ex->t_wait, on_handle_closed);
    uv_close((uv_handle_t *)&ex->t_total, on_handle_closed);
    uv_close((uv_handle_t *)&ex->t_retry, on_handle_closed);
}

static void finalize(sl_exchange_t *ex)
{
    if (ex->finalized)
        return;
    ex->finalized = 1;
    stop_work(ex);
    sl_term_result_t res;
    int abort_conn = end_answer(ex, &res);
    /* The client gets its whole answer (both calls write at once) before
     * the record and the log are made, not after them. */
    if (ex->conn) {
        sl_conn_t *c = let_go_of_client(ex); /* counted before the last chunk */
        if (abort_conn)
            sl_conn_close(c, 1); /* flush what was sent, then EOF: no final chunk */
        else
            sl_conn_finish(c);
    }
    report(ex, &res);
    release(ex);
}

/* ---- the API ---- */

void sl_exchange_shutdown(sl_exchange_t *ex)
{
    if (ex->conn)
        sl_conn_set_handler(ex->conn, NULL, NULL);
    fail(ex, SL_TERM_CAUSE_SHUTDOWN, 0, "sluice is shutting down");
}

sl_exchange_t *sl_exchange_new(const sl_exchange_env_t *env, sl_request_t *req)
{
    sl_exchange_t *ex = calloc(1, sizeof *ex);
    if (!ex)
        return NULL;
    ex->env = *env;
    ex->up = env->transfer ? env->transfer : &curl_transfer;
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
    snprintf(ex->peer, sizeof ex->peer, "%s", req->peer);
    make_request_id(ex, req);
    sl_term_init(&ex->term);
    attempt_init(&ex->at);
    sl_buf_init(&ex->out, 0);
    ex->capture_all = sl_luahost_config(env->host)->history_bodies;
    /* Bodies for the history are kept up to 1 MiB; without them, and only
     * when usage is watched (a history, or a gateway key charging tokens),
     * a non-streamed passthrough answer is kept (256 KiB) for its usage. */
    sl_buf_init(&ex->answer, ex->capture_all ? 1 << 20 : 256 << 10);
    uv_timer_init(env->loop, &ex->t_wait);
    uv_timer_init(env->loop, &ex->t_total);
    uv_timer_init(env->loop, &ex->t_retry);
    ex->t_wait.data = ex->t_total.data = ex->t_retry.data = ex;
    ex->open_handles = 3;
    sl_conn_set_handler(req->conn, &conn_handler, ex);
    ex->h = env->host;
    sl_luahost_retain(ex->h);
    ex->ctx = sl_lua_ctx_new(ex->h, req, ex->id);
    return ex;
}

void sl_exchange_run(sl_exchange_t *ex)
{
    int rc = sl_lua_request(ex->h, ex->ctx, on_plan, ex, &ex->task);
    if (rc)
        fail(ex, SL_TERM_CAUSE_SCRIPT_ERROR, rc, sl_strerror(rc));
}
