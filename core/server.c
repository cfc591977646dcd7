/*
 * server.c — downstream HTTP/1.1 (see server.h).
 *
 * A connection alternates between two states: READING (llhttp parses bytes
 * into a request) and BUSY (a request was handed to the application and its
 * response is being written). While BUSY we keep reading so that EOF or a
 * reset is seen immediately — that is what lets a client disconnect abort
 * the upstream transfer at once — and any pipelined bytes are stashed
 * (bounded) and parsed after the response ends.
 *
 * Input order: bytes are parsed straight from the read buffer only when
 * nothing is stashed; otherwise they join the stash's tail, and conn_drive()
 * parses the stash front to back, one request at a time. The stash is
 * consumed in place (an offset; compacted only once half of it is spent), so
 * a long pipeline costs linear work. A response given from inside the request
 * callback lets conn_drive's loop go on; one given later schedules the loop
 * for the next iteration — never a re-entrant parse from the application.
 *
 * Every byte the server buffers is bounded: the request head by max_header,
 * the body by max_body, the stash by both, and responses to pipelined
 * requests by the write-queue high-water mark (above it the connection stops
 * parsing and reading until the client has read). One timer per connection
 * guards whatever it is waiting for: a head (slowloris), body bytes, the next
 * request, or a client that does not read its answers.
 *
 * A TLS listener (tls.h) changes only the two ends of a connection: bytes
 * read are decrypted before they reach the parser, and the write queue is
 * encrypted as a whole when it is flushed. Everything in between — parsing,
 * limits, timers, backpressure (counted in plaintext bytes) — is the same
 * code for both. The handshake happens before the first request byte, so it
 * runs under the header timeout.
 */
#include "server.h"

#include <errno.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "error.h"
#include "log.h"
#include "metrics.h"
#include "tls.h"

/* Write-queue capacity a connection keeps once its queue is written out
 * (see flush_conn); more is given back. */
#define SL_CONN_OUTQ_KEEP (4 * 1024)

/* Writes at least this large go straight to the socket when nothing is
 * queued before them (see conn_writev); smaller ones wait for the loop's
 * one write per connection, so many small SSE events share a syscall. */
#define SL_CONN_DIRECT_MIN (4 * 1024)

enum conn_state { CONN_READING, CONN_BUSY, CONN_CLOSING };

typedef struct {
    size_t name_off, name_len, value_off, value_len;
} header_off_t;

struct sl_conn_s {
    uv_tcp_t tcp;
    uv_timer_t timer;
    sl_server_t *srv;
    sl_conn_t *prev, *next;
    llhttp_t parser;
    enum conn_state state;

    sl_buf_t head; /* url + header names and values, back to back */
    size_t url_len;
    header_off_t *hoff;
    size_t nh, hcap;
    int in_value; /* last header callback was a value (a new field starts a header) */
    sl_header_t *hviews;
    sl_buf_t body;
    sl_buf_t stash; /* received, not yet parsed: bytes from stash_off on */
    size_t stash_off;
    int started; /* first byte of the current request head arrived */
    int head_done;
    int body_too_large;
    int want_close;
    int dispatching;  /* inside the request callback: conn_drive's loop goes on after it */
    int input_paused; /* write queue above high water: not parsing, not reading */
    unsigned served;  /* responses finished on this connection */
    uint64_t start_ms, body_start_ms; /* loop time the head / the body began */
    sl_conn_t *idle_prev, *idle_next; /* in the server's idle list (oldest first) */
    int in_idle;
    sl_request_t req;

    int head_only; /* answering HEAD: the head goes out, body bytes never do */
    int chunked;
    int committed;
    sl_buf_t outq;         /* bytes queued this loop iteration, flushed as one write */
    sl_conn_t *flush_next; /* in the server's list of connections to flush */
    int flush_queued;
    size_t write_queue; /* queued + in flight to the kernel */
    int above_high;
    uint64_t bytes_out;
    uint64_t bytes_in;

    sl_tls_t *tls; /* NULL on a plain-HTTP listener */

    const sl_conn_handler_t *h;
    void *hdata;
    char peer[64];
};

struct sl_server_s {
    uv_loop_t *loop;
    uv_tcp_t listener;
    sl_server_limits_t limits;
    sl_request_cb cb;
    void *app;
    llhttp_settings_t settings;
    sl_conn_t *conns;
    size_t nconns;
    size_t nclosing;                  /* of nconns, those already closing (no longer a slot) */
    sl_conn_t *idle_head, *idle_tail; /* READING, no request begun: eviction candidates */
    uv_check_t flush;                 /* after each loop iteration's I/O: write what was queued */
    uv_idle_t flush_nudge;            /* active while bytes are queued: keeps poll from blocking
                                       * (bytes queued from a timer would otherwise wait) */
    sl_conn_t *flush_list;
    int stopping;
    int listener_closed;
    void (*stop_done)(void *);
    void *stop_arg;
    sl_tls_ctx_t *tls; /* new connections' TLS context; NULL = plain HTTP */
    sl_buf_t plain;    /* decrypted input of the read being handled */
    char readbuf[64 * 1024];
};

typedef struct {
    uv_write_t req;
    sl_conn_t *conn;
    size_t len;
    sl_buf_t data; /* owned: the connection's queue, moved here */
} wreq_t;

static void conn_close(sl_conn_t *c);
static void conn_notify_gone(sl_conn_t *c, int err);
static void conn_rearm(sl_conn_t *c);
static void arm_timer(sl_conn_t *c, uv_timer_cb cb, uint64_t ms);
static void idle_add(sl_conn_t *c);
static void idle_remove(sl_conn_t *c);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

static int stash_pending(const sl_conn_t *c)
{
    return c->stash_off < c->stash.len;
}

/* ---- llhttp callbacks: accumulate the request, bounded ---- */

static sl_conn_t *conn_of(llhttp_t *p)
{
    return (sl_conn_t *)p->data;
}

static int head_append(sl_conn_t *c, const char *at, size_t len)
{
    int rc = sl_buf_append(&c->head, at, len);
    if (rc == SL_ELIMIT) {
        llhttp_set_error_reason(&c->parser, "request head too large");
        return HPE_USER;
    }
    return rc ? HPE_USER : 0;
}

static int on_message_begin(llhttp_t *p)
{
    sl_conn_t *c = conn_of(p);
    sl_buf_reset(&c->head);
    sl_buf_reset(&c->body);
    c->url_len = 0;
    c->nh = 0;
    c->in_value = 0;
    c->head_done = 0;
    c->body_too_large = 0;
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    sl_conn_t *c = conn_of(p);
    c->url_len += len;
    return head_append(c, at, len);
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    sl_conn_t *c = conn_of(p);
    if (c->nh == 0 || c->in_value) {
        if (c->nh >= c->srv->limits.max_headers_count) {
            llhttp_set_error_reason(p, "too many headers");
            return HPE_USER;
        }
        if (c->nh == c->hcap) {
            size_t cap = c->hcap ? c->hcap * 2 : 32;
            header_off_t *n = realloc(c->hoff, cap * sizeof *n);
            if (!n)
                return HPE_USER;
            c->hoff = n;
            c->hcap = cap;
        }
        c->hoff[c->nh++] = (header_off_t){c->head.len, 0, c->head.len, 0};
        c->in_value = 0;
    }
    c->hoff[c->nh - 1].name_len += len;
    c->hoff[c->nh - 1].value_off = c->head.len + len;
    return head_append(c, at, len);
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    sl_conn_t *c = conn_of(p);
    if (c->nh == 0)
        return HPE_USER;
    if (!c->in_value)
        c->hoff[c->nh - 1].value_off = c->head.len;
    c->in_value = 1;
    c->hoff[c->nh - 1].value_len += len;
    return head_append(c, at, len);
}

static int on_headers_complete(llhttp_t *p)
{
    sl_conn_t *c = conn_of(p);
    c->head_done = 1;
    c->body_start_ms = uv_now(c->srv->loop);
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > c->srv->limits.max_body) {
        c->body_too_large = 1;
        return HPE_PAUSED; /* deliver a 413 now; the body is never read */
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    sl_conn_t *c = conn_of(p);
    if (c->body.len + len > c->srv->limits.max_body) {
        c->body_too_large = 1;
        return HPE_PAUSED;
    }
    return sl_buf_append(&c->body, at, len) ? HPE_USER : 0;
}

static int on_message_complete(llhttp_t *p)
{
    return HPE_PAUSED; /* one request at a time: resume after its response */
}

/* ---- writes ---- */

/* Bytes left the write queue. Below low water, producers resume: the
 * application's stream (on_drain) or, for a connection paused on pipelined
 * answers, parsing and reading. Above it, a paused connection's timer starts
 * over: the client is reading, only slowly. */
static void conn_wrote(sl_conn_t *c)
{
    if (c->write_queue >= SL_CONN_LOW_WATER) {
        if (c->input_paused)
            conn_rearm(c);
        return;
    }
    if (c->above_high) {
        c->above_high = 0;
        if (c->h && c->h->on_drain)
            c->h->on_drain(c->hdata);
    }
    if (c->input_paused && c->state == CONN_READING) {
        c->input_paused = 0;
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
        conn_rearm(c); /* schedules conn_drive for what is stashed */
    }
}

static void on_write(uv_write_t *w, int status)
{
    wreq_t *wr = (wreq_t *)w;
    sl_conn_t *c = wr->conn;
    c->write_queue -= wr->len;
    sl_buf_free(&wr->data);
    free(wr);
    if (status < 0) {
        conn_notify_gone(c, status);
        conn_close(c);
        return;
    }
    conn_wrote(c);
}

static void flush_unlink(sl_conn_t *c)
{
    if (!c->flush_queued)
        return;
    for (sl_conn_t **pp = &c->srv->flush_list; *pp; pp = &(*pp)->flush_next) {
        if (*pp == c) {
            *pp = c->flush_next;
            break;
        }
    }
    c->flush_queued = 0;
}

/* Hands the queued bytes to the kernel: directly when the socket takes them
 * (the common case: no allocation, no completion callback), else as one
 * uv_write that owns the queue's memory. Returns 0 or a negative error. */
static int flush_conn(sl_conn_t *c)
{
    if (uv_is_closing((uv_handle_t *)&c->tcp))
        return 0;
    /* `queued` is what the write queue counted (plaintext); `len` is what
     * goes to the socket (ciphertext on TLS, handshake records included). */
    size_t queued = c->outq.len;
    if (c->tls) {
        if (queued && sl_tls_write(c->tls, c->outq.base, queued) != SL_TLS_OK)
            return SL_ETLS;
        if (c->state == CONN_CLOSING) /* a graceful close: after the last bytes */
            sl_tls_close_notify(c->tls);
        sl_buf_reset(&c->outq);
        if (sl_tls_take_output(c->tls, &c->outq))
            return SL_ENOMEM;
    }
    size_t len = c->outq.len;
    if (len == 0)
        return 0;
    uv_buf_t buf = uv_buf_init(c->outq.base, (unsigned)len);
    int n = uv_try_write((uv_stream_t *)&c->tcp, &buf, 1);
    if (n < 0 && n != UV_EAGAIN)
        return n;
    size_t done = n > 0 ? (size_t)n : 0;
    /* Plain bytes leave the queue as written; encrypted ones all at once
     * when their records are fully written. */
    size_t left = c->tls ? (done == len ? 0 : queued) : len - done;
    c->write_queue -= queued - left;
    if (done == len) {
        /* A kept-alive connection waits between requests with an empty
         * queue: it keeps a small buffer for the next answer's small
         * writes, never the capacity a large answer grew (256 idle
         * connections would otherwise hold tens of KB each). */
        if (c->outq.cap > SL_CONN_OUTQ_KEEP)
            sl_buf_free(&c->outq);
        else
            sl_buf_reset(&c->outq);
        conn_wrote(c);
        return 0;
    }
    wreq_t *wr = malloc(sizeof *wr);
    if (!wr)
        return SL_ENOMEM;
    wr->conn = c;
    wr->len = left;
    wr->data = c->outq; /* move: the request frees it */
    sl_buf_init(&c->outq, 0);
    buf = uv_buf_init(wr->data.base + done, (unsigned)(len - done));
    int rc = uv_write(&wr->req, (uv_stream_t *)&c->tcp, &buf, 1, on_write);
    if (rc < 0) {
        c->write_queue -= wr->len;
        sl_buf_free(&wr->data);
        free(wr);
        return rc;
    }
    return 0;
}

static void on_flush(uv_check_t *h)
{
    sl_server_t *s = h->data;
    sl_conn_t *list = s->flush_list;
    s->flush_list = NULL;
    uv_check_stop(h);
    uv_idle_stop(&s->flush_nudge);
    while (list) {
        sl_conn_t *c = list;
        list = c->flush_next;
        c->flush_queued = 0;
        int rc = flush_conn(c);
        if (rc) {
            conn_notify_gone(c, rc);
            conn_close(c);
        }
    }
}

static void on_nudge(uv_idle_t *h)
{
}

/* Puts the connection on this iteration's flush list (once). */
static void queue_flush(sl_conn_t *c)
{
    if (c->flush_queued)
        return;
    c->flush_queued = 1;
    c->flush_next = c->srv->flush_list;
    if (!c->srv->flush_list) {
        uv_check_start(&c->srv->flush, on_flush);
        uv_idle_start(&c->srv->flush_nudge, on_nudge);
    }
    c->srv->flush_list = c;
}

/* Queues up to four pieces (chunk size line, data in two parts, CRLF) for
 * this iteration's single write. A large write with nothing queued before
 * it goes to the socket at once instead (plain connections): no copy into
 * the queue, and a streamed answer's bytes are not held per connection
 * until the loop comes round; only what the kernel did not take is queued. */
static int conn_writev(sl_conn_t *c, const sl_str_t *v, size_t nv)
{
    if (c->state == CONN_CLOSING || uv_is_closing((uv_handle_t *)&c->tcp))
        return SL_ECLOSED;
    size_t len = 0;
    for (size_t i = 0; i < nv; i++)
        len += v[i].len;
    size_t sent = 0;
    if (!c->tls && c->write_queue == 0 && len >= SL_CONN_DIRECT_MIN && nv <= 4) {
        uv_buf_t bufs[4];
        for (size_t i = 0; i < nv; i++)
            bufs[i] = uv_buf_init((char *)v[i].base, (unsigned)v[i].len);
        int n = uv_try_write((uv_stream_t *)&c->tcp, bufs, (unsigned)nv);
        if (n > 0)
            sent = (size_t)n; /* an error is left for the queued write to meet */
    }
    c->bytes_out += sent;
    if (sent == len)
        return 0;
    int rc = sl_buf_reserve(&c->outq, len - sent);
    if (rc)
        return rc;
    c->bytes_out += len - sent;
    for (size_t i = 0, skip = sent; i < nv; i++) {
        size_t k = skip < v[i].len ? skip : v[i].len;
        skip -= k;
        sl_buf_append(&c->outq, v[i].base + k, v[i].len - k);
    }
    c->write_queue += len - sent;
    if (c->write_queue >= SL_CONN_HIGH_WATER)
        c->above_high = 1;
    queue_flush(c);
    return 0;
}

static int conn_write(sl_conn_t *c, const char *p, size_t n)
{
    sl_str_t v = sl_str(p, n);
    return conn_writev(c, &v, 1);
}

int sl_conn_send_head(sl_conn_t *c, int status, const sl_header_t *h, size_t n,
                      int64_t content_length)
{
    if (c->committed)
        return SL_EINVAL;
    sl_buf_t b;
    sl_buf_init(&b, 0);
    int keep = c->req.keep_alive && !c->want_close && !c->srv->stopping;
    int rc = sl_buf_printf(&b, "HTTP/1.1 %d %s\r\n", status, sl_http_reason(status));
    for (size_t i = 0; i < n && !rc; i++) {
        if (sl_http_has_ctl(h[i].name) || sl_http_has_ctl(h[i].value) || h[i].name.len == 0) {
            rc = SL_EINVAL;
            break;
        }
        rc = sl_buf_append_str(&b, h[i].name);
        rc = rc ? rc : sl_buf_append(&b, ": ", 2);
        rc = rc ? rc : sl_buf_append_str(&b, h[i].value);
        rc = rc ? rc : sl_buf_append(&b, "\r\n", 2);
    }
    if (!rc) {
        if (content_length >= 0)
            rc = sl_buf_printf(&b, "Content-Length: %lld\r\n", (long long)content_length);
        else
            rc = sl_buf_append_c(&b, "Transfer-Encoding: chunked\r\n");
    }
    if (!rc)
        rc = sl_buf_append_c(&b,
                             keep ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n");
    if (!rc)
        rc = conn_write(c, b.base, b.len);
    sl_buf_free(&b);
    if (rc)
        return rc;
    if (!keep)
        c->want_close = 1;
    c->committed = 1;
    c->chunked = content_length < 0;
    return 0;
}

int sl_conn_send_body2(sl_conn_t *c, sl_str_t a, sl_str_t b)
{
    if (!c->committed)
        return SL_EINVAL;
    size_t n = a.len + b.len;
    /* A HEAD answer has no body: bytes sent would be read as the next response. */
    if (n == 0 || c->head_only)
        return 0;
    if (!c->chunked)
        return conn_writev(c, (sl_str_t[]){a, b}, 2);
    char line[24];
    int m = snprintf(line, sizeof line, "%zx\r\n", n);
    return conn_writev(c, (sl_str_t[]){sl_str(line, (size_t)m), a, b, SL_STR("\r\n")}, 4);
}

int sl_conn_send_body(sl_conn_t *c, const char *p, size_t n)
{
    return sl_conn_send_body2(c, sl_str(p, n), SL_STR_NULL);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    sl_conn_t *c = req->data;
    free(req);
    conn_close(c);
}

/* The connection stops counting against max_connections and can no longer
 * be evicted; its memory goes in the close callback. */
static void conn_mark_closing(sl_conn_t *c)
{
    if (c->state == CONN_CLOSING)
        return;
    c->state = CONN_CLOSING;
    c->srv->nclosing++;
    idle_remove(c);
}

/* A graceful close waits for the client to take what is queued; a client
 * that never reads must not hold its socket (and up to the high-water mark
 * of memory) for ever: after keepalive_timeout it is closed outright. */
static void on_close_deadline(uv_timer_t *t)
{
    conn_close(t->data);
}

static void conn_close_graceful(sl_conn_t *c)
{
    conn_mark_closing(c);
    flush_unlink(c);
    if (flush_conn(c) != 0) {
        conn_close(c);
        return;
    }
    uv_shutdown_t *req = malloc(sizeof *req);
    uv_read_stop((uv_stream_t *)&c->tcp);
    if (!req || uv_shutdown(req, (uv_stream_t *)&c->tcp, on_shutdown) < 0) {
        free(req);
        conn_close(c);
        return;
    }
    req->data = c;
    uint64_t ms = c->srv->limits.keepalive_timeout_ms;
    arm_timer(c, on_close_deadline, ms ? ms : 60000);
}

int sl_conn_finish(sl_conn_t *c)
{
    if (c->state != CONN_BUSY)
        return SL_EINVAL;
    int rc = 0;
    if (c->committed && c->chunked && !c->head_only)
        rc = conn_write(c, "0\r\n\r\n", 5);
    c->h = NULL;
    c->hdata = NULL;
    c->committed = 0;
    c->chunked = 0;
    c->head_only = 0;
    c->started = 0;
    c->served++;
    c->state = CONN_READING;
    if (rc || c->want_close || c->body_too_large || c->srv->stopping) {
        conn_close_graceful(c); /* flushes, then shuts down */
        return rc;
    }
    /* Finished outside the request callback (an exchange's answer): written
     * now, before the exchange makes its record. Inside it, the answers of
     * pipelined requests go out together in the pass's one flush. */
    if (c->flush_queued && !c->dispatching) {
        flush_unlink(c);
        if ((rc = flush_conn(c)) != 0) {
            conn_close(c);
            return rc;
        }
    }
    llhttp_resume(&c->parser);
    idle_add(c);
    /* From inside the request callback conn_drive's loop goes on with the
     * stash; otherwise conn_rearm schedules it for the next iteration. */
    if (!c->dispatching)
        conn_rearm(c);
    return 0;
}

int sl_conn_respond(sl_conn_t *c, int status, const sl_header_t *h, size_t n, sl_str_t body)
{
    int rc = sl_conn_send_head(c, status, h, n, (int64_t)body.len);
    if (!rc)
        rc = sl_conn_send_body(c, body.base, body.len);
    int rc2 = sl_conn_finish(c);
    return rc ? rc : rc2;
}

size_t sl_conn_write_queue(const sl_conn_t *c)
{
    return c->write_queue;
}

int sl_conn_committed(const sl_conn_t *c)
{
    return c->committed;
}

uint64_t sl_conn_bytes_out(const sl_conn_t *c)
{
    return c->bytes_out;
}

void sl_conn_set_handler(sl_conn_t *c, const sl_conn_handler_t *h, void *data)
{
    c->h = h;
    c->hdata = data;
}

/* ---- connection lifecycle ---- */

/* After sl_server_stop(): once the listener and the last connection are
 * closed, report it and free the server (nobody may use it afterwards). */
static void on_flush_closed(uv_handle_t *h)
{
    sl_server_t *s = h->data;
    sl_tls_ctx_release(s->tls);
    sl_buf_free(&s->plain);
    free(s);
}

static void on_nudge_closed(uv_handle_t *h)
{
    sl_server_t *s = h->data;
    uv_close((uv_handle_t *)&s->flush, on_flush_closed);
}

static void stop_maybe_done(sl_server_t *s)
{
    if (!s->stopping || s->nconns > 0 || !s->listener_closed ||
        uv_is_closing((uv_handle_t *)&s->flush_nudge))
        return;
    if (s->stop_done)
        s->stop_done(s->stop_arg);
    uv_close((uv_handle_t *)&s->flush_nudge, on_nudge_closed);
}

static void on_timer_closed(uv_handle_t *h)
{
    sl_conn_t *c = h->data;
    sl_server_t *s = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->nconns--;
    s->nclosing--; /* conn_close marked it */
    sl_metrics_gauge_add(SL_GAUGE_CONNECTIONS, -1);
    sl_buf_free(&c->head);
    sl_buf_free(&c->body);
    sl_buf_free(&c->stash);
    sl_buf_free(&c->outq);
    sl_tls_free(c->tls);
    free(c->hoff);
    free(c->hviews);
    free(c);
    stop_maybe_done(s);
}

static void on_tcp_closed(uv_handle_t *h)
{
    sl_conn_t *c = h->data;
    uv_close((uv_handle_t *)&c->timer, on_timer_closed);
}

static void conn_close(sl_conn_t *c)
{
    if (uv_is_closing((uv_handle_t *)&c->tcp))
        return;
    conn_mark_closing(c);
    flush_unlink(c);
    c->write_queue -= c->outq.len;
    sl_buf_reset(&c->outq);
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->tcp, on_tcp_closed);
}

void sl_conn_close(sl_conn_t *c, int graceful)
{
    c->h = NULL;
    if (graceful)
        conn_close_graceful(c);
    else
        conn_close(c);
}

/* A small fixed error response for requests that never reached the app. */
static void respond_raw_error(sl_conn_t *c, int status, const char *message)
{
    sl_buf_t b;
    sl_buf_init(&b, 0);
    sl_buf_printf(&b, "{\"error\":{\"type\":\"invalid_request_error\",\"message\":\"");
    sl_buf_append_json_str(&b, message, strlen(message));
    sl_buf_append_c(&b, "\"}}");
    char head[256];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n",
                     status, sl_http_reason(status), b.len);
    conn_writev(c, (sl_str_t[]){sl_str(head, (size_t)n), sl_str(b.base, b.len)}, 2);
    sl_buf_free(&b);
    conn_close_graceful(c);
}

static void build_request(sl_conn_t *c)
{
    sl_request_t *r = &c->req;
    free(c->hviews);
    c->hviews = c->nh ? malloc(c->nh * sizeof *c->hviews) : NULL;
    for (size_t i = 0; i < c->nh && c->hviews; i++) {
        c->hviews[i].name = sl_str(c->head.base + c->hoff[i].name_off, c->hoff[i].name_len);
        c->hviews[i].value = sl_str(c->head.base + c->hoff[i].value_off, c->hoff[i].value_len);
    }
    r->conn = c;
    r->method = llhttp_method_name((llhttp_method_t)c->parser.method);
    r->url = sl_str(c->head.base, c->url_len);
    const char *q = memchr(r->url.base, '?', r->url.len);
    r->path = q ? sl_str(r->url.base, (size_t)(q - r->url.base)) : r->url;
    r->query = q ? sl_str(q + 1, r->url.len - r->path.len - 1) : sl_str("", 0);
    r->headers = c->hviews;
    r->nheaders = c->hviews ? c->nh : 0;
    r->body =
        c->body_too_large ? sl_str("", 0) : sl_str(c->body.base ? c->body.base : "", c->body.len);
    r->keep_alive = llhttp_should_keep_alive(&c->parser);
    r->error_status = c->body_too_large ? 413 : 0;
    r->peer = c->peer;
    r->bytes_in = c->bytes_in;
    if (c->body_too_large)
        c->want_close = 1;
}

/* The client is gone while a response is in flight: tell the application
 * (once), so it stops using the connection before it is freed. */
static void conn_notify_gone(sl_conn_t *c, int err)
{
    if (c->state == CONN_BUSY && c->h && c->h->on_gone) {
        const sl_conn_handler_t *h = c->h;
        c->h = NULL;
        h->on_gone(c->hdata, err);
    }
}

/* ---- the one timer: what it guards depends on what the connection awaits ---- */

static void on_conn_timeout(uv_timer_t *t)
{
    sl_conn_t *c = t->data;
    if (c->state != CONN_READING)
        return;
    if (c->started && c->head_done && !c->input_paused) {
        /* A request is under way: say why it ends rather than vanish. */
        sl_log_debug("request body from %s not received in time", c->peer);
        respond_raw_error(c, 408, "request body not received in time");
        return;
    }
    conn_close(c); /* slow head, idle keep-alive, or answers left unread */
}

static void on_drive_timer(uv_timer_t *t);

static void arm_timer(sl_conn_t *c, uv_timer_cb cb, uint64_t ms)
{
    uv_timer_stop(&c->timer);
    if (ms)
        uv_timer_start(&c->timer, cb, ms, 0);
}

/* Time left until start + limit, at least 1 ms (0 stays "no timer"). */
static uint64_t time_left(uint64_t now, uint64_t start, uint64_t limit)
{
    if (!limit)
        return 0;
    return start + limit > now ? start + limit - now : 1;
}

/* Sets the timer for the connection's current state. Called after anything
 * that changes what the connection awaits; deadlines (head, whole body) are
 * kept from when they began, so re-arming never extends them. */
static void conn_rearm(sl_conn_t *c)
{
    const sl_server_limits_t *l = &c->srv->limits;
    uint64_t now = uv_now(c->srv->loop), ms;
    if (c->state == CONN_CLOSING)
        return; /* its close deadline stands */
    if (c->state != CONN_READING) {
        ms = 0; /* BUSY: the application's timeouts rule */
    } else if (c->input_paused) {
        ms = l->keepalive_timeout_ms; /* restarted by each write the client lets finish */
    } else if (stash_pending(c)) {
        uv_timer_stop(&c->timer); /* parse the pipeline on the next iteration */
        uv_timer_start(&c->timer, on_drive_timer, 0, 0);
        return;
    } else if (!c->started) {
        ms = c->served ? l->keepalive_timeout_ms : l->header_timeout_ms;
    } else if (!c->head_done) {
        ms = time_left(now, c->start_ms, l->header_timeout_ms);
    } else {
        ms = l->body_timeout_ms;
        uint64_t total = time_left(now, c->body_start_ms, l->body_total_timeout_ms);
        if (total && (!ms || total < ms))
            ms = total;
    }
    arm_timer(c, on_conn_timeout, ms);
}

/* ---- idle connections: the ones max_connections may reclaim ---- */

/* A connection joins the tail when it starts waiting for a request (accept,
 * a finished response) and leaves when one begins or it closes, so the head
 * is the one that has waited longest. */
static void idle_add(sl_conn_t *c)
{
    sl_server_t *s = c->srv;
    idle_remove(c);
    c->idle_prev = s->idle_tail;
    c->idle_next = NULL;
    if (s->idle_tail)
        s->idle_tail->idle_next = c;
    else
        s->idle_head = c;
    s->idle_tail = c;
    c->in_idle = 1;
}

static void idle_remove(sl_conn_t *c)
{
    sl_server_t *s = c->srv;
    if (!c->in_idle)
        return;
    if (c->idle_prev)
        c->idle_prev->idle_next = c->idle_next;
    else
        s->idle_head = c->idle_next;
    if (c->idle_next)
        c->idle_next->idle_prev = c->idle_prev;
    else
        s->idle_tail = c->idle_prev;
    c->idle_prev = c->idle_next = NULL;
    c->in_idle = 0;
}

/* Closes the longest-idle connection that owes its client nothing (no
 * pipelined request waiting, no answer still being written). Returns 1 if it
 * found one. Idle connections that do owe something stay in the list, so the
 * walk passes them; there are few. */
static int evict_idle(sl_server_t *s)
{
    for (sl_conn_t *c = s->idle_head; c; c = c->idle_next) {
        if (c->state == CONN_READING && !c->started && !stash_pending(c) && !c->input_paused &&
            c->write_queue == 0) {
            sl_log_debug("max_connections reached: closing idle connection from %s", c->peer);
            conn_close(c);
            return 1;
        }
    }
    return 0;
}

/* ---- input: bytes → requests, in order ---- */

/* Keeps unparsed bytes for later. The spent front is dropped only once it is
 * at least half the buffer (or room is needed), so each byte is moved at most
 * once on average however long the pipeline. */
static int stash_add(sl_conn_t *c, const char *p, size_t n)
{
    sl_buf_t *st = &c->stash;
    if (c->stash_off == st->len) {
        st->len = c->stash_off = 0;
    } else if (c->stash_off &&
               (c->stash_off >= st->len / 2 || (st->limit && st->len + n > st->limit))) {
        sl_buf_consume(st, c->stash_off);
        c->stash_off = 0;
    }
    return sl_buf_append(st, p, n);
}

/* Runs llhttp over bytes and sets *used to how many it took. Returns 1 when
 * they complete a request (or a 413 is due), 0 when more bytes are needed
 * or the request was malformed (then it is answered and the connection is
 * closing). */
static int conn_parse(sl_conn_t *c, const char *data, size_t len, size_t *used)
{
    if (!c->started) {
        c->started = 1;
        c->req.start_ns = uv_hrtime();
        c->start_ms = uv_now(c->srv->loop);
        c->bytes_in = 0;
        idle_remove(c);
    }
    llhttp_errno_t err = llhttp_execute(&c->parser, data, len);
    *used = len;
    if (err == HPE_PAUSED) {
        const char *pos = llhttp_get_error_pos(&c->parser);
        *used = pos ? (size_t)(pos - data) : len;
    }
    c->bytes_in += *used;
    if (err == HPE_OK)
        return 0;
    if (err == HPE_PAUSED)
        return 1;
    const char *reason = llhttp_get_error_reason(&c->parser);
    int status = 400;
    if (err == HPE_USER && reason && strstr(reason, "too"))
        status = 431;
    sl_log_debug("malformed request from %s: %s (%s)", c->peer, llhttp_errno_name(err),
                 reason ? reason : "");
    respond_raw_error(c, status, reason ? reason : "malformed HTTP request");
    return 0;
}

/* Hands the parsed request to the application. */
static void conn_dispatch(sl_conn_t *c)
{
    build_request(c);
    if (!c->hviews && c->nh) {
        conn_close(c);
        return;
    }
    c->state = CONN_BUSY;
    c->head_only = c->parser.method == HTTP_HEAD;
    uv_timer_stop(&c->timer);
    c->dispatching = 1;
    c->srv->cb(&c->req, c->srv->app);
    c->dispatching = 0;
}

/* Parses stashed requests front to back while the connection may take one:
 * it is READING (the previous response ended) and its client has read its
 * earlier answers (write queue under high water). Otherwise stops reading
 * too, so nothing more piles up until the client catches up. */
static void conn_drive(sl_conn_t *c)
{
    while (c->state == CONN_READING && !c->input_paused && stash_pending(c)) {
        if (c->write_queue >= SL_CONN_HIGH_WATER) {
            c->input_paused = 1;
            uv_read_stop((uv_stream_t *)&c->tcp);
            break;
        }
        size_t used;
        int complete =
            conn_parse(c, c->stash.base + c->stash_off, c->stash.len - c->stash_off, &used);
        c->stash_off += used;
        if (complete)
            conn_dispatch(c); /* the views it gets are copies: the stash may move */
    }
    conn_rearm(c);
}

static void on_drive_timer(uv_timer_t *t)
{
    conn_drive(t->data);
}

/* Bytes from the socket. */
static void conn_input(sl_conn_t *c, const char *data, size_t len)
{
    if (c->state == CONN_CLOSING || c->body_too_large)
        return; /* a 413 is due and the connection closes after it: drop the rest */
    if (c->state == CONN_READING && !c->input_paused && !stash_pending(c) &&
        c->write_queue < SL_CONN_HIGH_WATER) {
        /* The common case: parse from the read buffer, keep only what
         * follows a complete request. */
        size_t used;
        if (conn_parse(c, data, len, &used)) {
            if (used < len && !c->body_too_large && stash_add(c, data + used, len - used)) {
                conn_close(c);
                return;
            }
            conn_dispatch(c);
        }
    } else if (stash_add(c, data, len) != 0) {
        conn_notify_gone(c, SL_ELIMIT); /* a client pipelining more than we bound */
        conn_close(c);
        return;
    }
    conn_drive(c);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    sl_conn_t *c = h->data;
    *buf = uv_buf_init(c->srv->readbuf, sizeof c->srv->readbuf);
}

/* What nginx answers in the same case: a client that sent plain HTTP to a
 * TLS port learns why instead of seeing a reset. Written raw (there is no
 * TLS session to carry it), best effort, then the connection closes. */
static void refuse_plain_http(sl_conn_t *c)
{
    static const char answer[] = "HTTP/1.1 400 Bad Request\r\n"
                                 "Content-Type: text/plain\r\n"
                                 "Content-Length: 48\r\n"
                                 "Connection: close\r\n\r\n"
                                 "This port speaks HTTPS: use https:// to reach it";
    uv_buf_t b = uv_buf_init((char *)answer, sizeof answer - 1);
    uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    sl_log_debug("connection from %s: plain HTTP on a TLS port, refused", c->peer);
    conn_close(c);
}

/* Decrypts what arrived on a TLS connection and parses the plaintext. */
static void tls_input(sl_conn_t *c, const char *p, size_t n)
{
    sl_buf_t *plain = &c->srv->plain;
    sl_buf_reset(plain);
    int rc = sl_tls_feed(c->tls, p, n, plain);
    if (rc == SL_TLS_PLAIN_HTTP) {
        refuse_plain_http(c);
        return;
    }
    if (rc == SL_TLS_ERROR) {
        sl_log_debug("connection from %s: TLS: %s", c->peer, sl_tls_last_error(c->tls));
        conn_notify_gone(c, SL_ETLS);
        conn_close(c);
        return;
    }
    queue_flush(c); /* handshake records, alerts: whatever OpenSSL has to say */
    if (plain->len)
        conn_input(c, plain->base, plain->len);
    if (rc == SL_TLS_CLOSED && !uv_is_closing((uv_handle_t *)&c->tcp)) {
        conn_notify_gone(c, UV_EOF);
        conn_close(c);
    }
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    sl_conn_t *c = stream->data;
    if (nread > 0) {
        if (c->tls)
            tls_input(c, buf->base, (size_t)nread);
        else
            conn_input(c, buf->base, (size_t)nread);
        return;
    }
    if (nread == 0)
        return;
    /* EOF or error: if a response is in flight, the client is gone. */
    conn_notify_gone(c, (int)nread);
    conn_close(c);
}

static void peer_name(uv_tcp_t *tcp, char *out, size_t outlen)
{
    struct sockaddr_storage ss;
    int len = sizeof ss;
    char ip[64] = "?";
    int port = 0;
    if (uv_tcp_getpeername(tcp, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET) {
            uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof ip);
            port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof ip);
            port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
        }
    }
    snprintf(out, outlen, "%s:%d", ip, port);
}

static void on_connection(uv_stream_t *ls, int status)
{
    sl_server_t *s = ls->data;
    if (status < 0 || s->stopping)
        return;
    sl_conn_t *c = calloc(1, sizeof *c);
    if (!c)
        return;
    c->srv = s;
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    sl_metrics_gauge_add(SL_GAUGE_CONNECTIONS, 1);
    if (uv_accept(ls, (uv_stream_t *)&c->tcp) < 0) {
        conn_close(c);
        return;
    }
    peer_name(&c->tcp, c->peer, sizeof c->peer);
    /* Full: an idle keep-alive connection gives way (its client reconnects
     * when it needs to), so idle sockets cannot lock everyone out. */
    size_t max = s->limits.max_connections;
    /* Closing sockets give up their slot but still hold an fd until their
     * close deadline: they may take at most as many again. */
    if (max && ((s->nconns - s->nclosing > max && !evict_idle(s)) || s->nconns > 2 * max)) {
        sl_log_debug("connection from %s refused: max_connections (%zu) all busy", c->peer, max);
        conn_close(c);
        return;
    }
    if (s->tls && !(c->tls = sl_tls_new(s->tls))) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    sl_buf_init(&c->head, s->limits.max_header);
    sl_buf_init(&c->body, 0);
    sl_buf_init(&c->stash, s->limits.max_header + s->limits.max_body);
    sl_buf_init(&c->outq, 0);
    llhttp_init(&c->parser, HTTP_REQUEST, &s->settings);
    c->parser.data = c;
    c->state = CONN_READING;
    idle_add(c);
    conn_rearm(c);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

/* Binds with SO_REUSEPORT so every worker has its own listening socket and
 * the kernel spreads connections between them (libuv 1.44 cannot ask for
 * it, so the socket is made here and handed to uv_tcp_open). */
static int bind_reuseport(const char *addr, int port, uv_os_sock_t *out)
{
    struct sockaddr_storage ss;
    socklen_t sslen;
    memset(&ss, 0, sizeof ss);
    if (uv_ip4_addr(addr, port, (struct sockaddr_in *)&ss) == 0) {
        sslen = sizeof(struct sockaddr_in);
    } else if (uv_ip6_addr(addr, port, (struct sockaddr_in6 *)&ss) == 0) {
        sslen = sizeof(struct sockaddr_in6);
    } else {
        return SL_EINVAL;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&ss, sslen) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    *out = fd;
    return 0;
}

int sl_server_start(sl_server_t **out, uv_loop_t *loop, const char *addr, int port,
                    const sl_server_limits_t *limits, sl_tls_ctx_t *tls, sl_request_cb cb,
                    void *app)
{
    sl_server_t *s = calloc(1, sizeof *s);
    if (!s)
        return SL_ENOMEM;
    s->loop = loop;
    sl_buf_init(&s->plain, 0);
    s->limits = *limits;
    s->cb = cb;
    s->app = app;
    llhttp_settings_init(&s->settings);
    s->settings.on_message_begin = on_message_begin;
    s->settings.on_url = on_url;
    s->settings.on_header_field = on_header_field;
    s->settings.on_header_value = on_header_value;
    s->settings.on_headers_complete = on_headers_complete;
    s->settings.on_body = on_body;
    s->settings.on_message_complete = on_message_complete;

    uv_os_sock_t fd = -1;
    int rc = bind_reuseport(addr, port, &fd);
    if (rc) {
        free(s);
        return rc;
    }
    uv_tcp_init(loop, &s->listener);
    s->listener.data = s;
    if ((rc = uv_tcp_open(&s->listener, fd)) < 0 ||
        (rc = uv_listen((uv_stream_t *)&s->listener, 1024, on_connection)) < 0) {
        close(fd);
        s->listener_closed = 1;
        uv_close((uv_handle_t *)&s->listener, (uv_close_cb)free);
        return rc;
    }
    uv_check_init(loop, &s->flush);
    uv_idle_init(loop, &s->flush_nudge);
    s->flush.data = s->flush_nudge.data = s;
    s->tls = tls;
    *out = s;
    return 0;
}

static void on_listener_closed(uv_handle_t *h)
{
    sl_server_t *s = h->data;
    s->listener_closed = 1;
    stop_maybe_done(s);
}

void sl_server_stop(sl_server_t *s, void (*done)(void *), void *arg)
{
    s->stopping = 1;
    s->stop_done = done;
    s->stop_arg = arg;
    for (sl_conn_t *c = s->conns, *next; c; c = next) {
        next = c->next;
        if (c->state == CONN_READING)
            conn_close(c); /* idle or mid-head: nothing owed to it */
    }
    uv_close((uv_handle_t *)&s->listener, on_listener_closed);
}

size_t sl_server_connections(const sl_server_t *s)
{
    return s->nconns;
}

void sl_server_set_limits(sl_server_t *s, const sl_server_limits_t *limits)
{
    s->limits = *limits;
}

void sl_server_set_tls(sl_server_t *s, sl_tls_ctx_t *tls)
{
    sl_tls_ctx_release(s->tls);
    s->tls = tls;
}

const char *sl_http_reason(int status)
{
    /* One status per line reads as the table it is. */
    // clang-format off
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Payload Too Large";
    case 422: return "Unprocessable Entity";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 529: return "Overloaded";
    default: return status < 300 ? "OK" : status < 500 ? "Client Error" : "Server Error";
    }
    // clang-format on
}
