/*
 * upstream_h1.c — the lean HTTP/1.1 client: plain http:// upstreams on the
 * worker's loop, without libcurl (issue 13, item 6).
 *
 * curl's per-transfer work (URL parse, a request built from a header list,
 * connection-cache lookup, its timers, ~75 allocations) was a quarter of a
 * passthrough request's CPU. For the case that carries most local traffic —
 * HTTP/1.1 keep-alive to a model server or another gateway — none of it is
 * needed: the request head is built once into one buffer and written with
 * the body in one writev; llhttp parses the answer and its body bytes go
 * straight to the exchange; idle connections wait in a per-worker list,
 * most recently used first, keyed by "host:port". curl keeps https (TLS,
 * HTTP/2), proxies named in the environment, and everything when the
 * operator asks for it (SLUICE_UPSTREAM_CLIENT=curl).
 *
 * The contract is upstream.h's, kept exactly, because the exchange and the
 * termination classifier must not tell the clients apart:
 * - on_head once, for the final (>= 200) head; 1xx heads are skipped.
 * - on_data may pause: the same bytes come again after sl_transfer_resume.
 *   The socket stops reading meanwhile; what the read held after them is
 *   kept and parsed on resume.
 * - on_done last, with curl's code for what happened: COULDNT_RESOLVE_HOST,
 *   COULDNT_CONNECT, OPERATION_TIMEDOUT (connect timeout only; the exchange
 *   owns the others), SEND_ERROR, RECV_ERROR, GOT_NOTHING (closed before any
 *   byte), PARTIAL_FILE (closed inside the body), WEIRD_SERVER_REPLY (not
 *   HTTP, or closed inside the head), WRITE_ERROR (on_data failed it).
 * - An abort closes the connection at once (the upstream sees it) and no
 *   callback follows; from inside a callback it takes effect as it returns.
 *
 * A pooled connection the upstream closed while it sat idle is seen at once
 * (idle connections keep reading, so their EOF closes them). The one race
 * left — the upstream closes it just as a request is written — ends with
 * nothing received; such a request is sent once more on a new connection,
 * as curl does, since the upstream cannot have acted on it.
 *
 * Idle connections are closed after IDLE_MAX_MS (curl's default maximum
 * age of an idle connection, 118 s) and beyond POOL_MAX per worker, the
 * oldest first.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "error.h"
#include "upstream_int.h"

#define POOL_MAX 256
#define IDLE_MAX_MS 118000
#define CONNECT_TIMEOUT_DEFAULT_MS 300000 /* curl's default */
#define READ_BUF (64 * 1024)
#define HEAD_MAX (256 * 1024)

struct sl_h1_conn_s {
    uv_tcp_t tcp;
    uv_timer_t timer; /* the connect timeout, then the idle timeout */
    uv_connect_t creq;
    uv_write_t wreq;
    uv_getaddrinfo_t gai;
    sl_upstream_t *up;
    sl_transfer_t *t; /* the transfer it carries; NULL while idle */
    llhttp_t parser;
    sl_buf_t rest;      /* bytes read after a pause, parsed on resume */
    sl_h1_conn_t *prev, *next; /* in the idle list */
    int idle, writing, closing, resolving;
    int pending; /* handles not yet closed, plus a running address lookup */
    char origin[];
};

static llhttp_settings_t settings;

static void conn_close(sl_h1_conn_t *c);
static void conn_connect(sl_transfer_t *t);
static void transfer_send(sl_transfer_t *t);
static int feed(sl_h1_conn_t *c, const char *p, size_t n);

/* ---- eligibility and the request head ---- */

/* Splits an http:// URL: host (brackets dropped), port, and the offset of
 * its path. 0 when the lean client cannot take it. */
static int split_url(const char *url, char *host, size_t hostcap, int *port, const char **path)
{
    if (strncasecmp(url, "http://", 7) != 0)
        return 0;
    const char *a = url + 7, *end = a + strcspn(a, "/?#");
    if (memchr(a, '@', (size_t)(end - a)))
        return 0; /* credentials in the URL: curl's business */
    const char *hs = a, *he, *colon;
    if (*a == '[') {
        hs = a + 1;
        he = memchr(hs, ']', (size_t)(end - hs));
        if (!he)
            return 0;
        colon = he + 1 < end && he[1] == ':' ? he + 1 : NULL;
    } else {
        colon = memchr(a, ':', (size_t)(end - a));
        he = colon ? colon : end;
    }
    if (he == hs || (size_t)(he - hs) >= hostcap)
        return 0;
    memcpy(host, hs, (size_t)(he - hs));
    host[he - hs] = '\0';
    *port = 80;
    if (colon) {
        char *pe;
        long v = strtol(colon + 1, &pe, 10);
        if (pe != end || v < 1 || v > 65535)
            return 0;
        *port = (int)v;
    }
    *path = end;
    return 1;
}

static int is_loopback(const char *host)
{
    return strcasecmp(host, "localhost") == 0 || strncmp(host, "127.", 4) == 0 ||
           strcmp(host, "::1") == 0;
}

/* curl sends http:// through a proxy named in the environment, except to
 * loopback (CURLOPT_NOPROXY): so such requests stay curl's. */
static int proxied(const sl_upstream_t *up, const char *host)
{
    return up->proxy_env && !is_loopback(host);
}

/* The request head as curl would send it: request line, Host, the caller's
 * headers (framing ones are the client's to set), Accept when the caller
 * set none, and the body's length. */
static int build_head(sl_transfer_t *t, const sl_transfer_req_t *req, const char *path,
                      const char *hostport)
{
    sl_buf_t *b = &t->h1.out;
    int get = strcasecmp(req->method, "GET") == 0, accept = 0;
    size_t plen = strcspn(path, "#");
    sl_buf_append_c(b, req->method);
    sl_buf_append_byte(b, ' ');
    if (plen == 0 || path[0] != '/')
        sl_buf_append_byte(b, '/');
    sl_buf_append(b, path, plen);
    sl_buf_append_c(b, " HTTP/1.1\r\nHost: ");
    sl_buf_append_c(b, hostport);
    sl_buf_append(b, "\r\n", 2);
    for (size_t i = 0; i < req->nheaders; i++) {
        sl_str_t n = req->headers[i].name, v = req->headers[i].value;
        if (sl_upstream_framing_header(n)) /* (sl_transfer_start refused values with CR/LF) */
            continue;
        accept |= sl_str_ieq_c(n, "accept");
        sl_buf_append_str(b, n);
        sl_buf_append(b, ": ", v.len ? 2 : 1);
        sl_buf_append_str(b, v);
        sl_buf_append(b, "\r\n", 2);
    }
    if (!accept)
        sl_buf_append_c(b, "Accept: */*\r\n");
    if (!get)
        sl_buf_printf(b, "Content-Length: %zu\r\n", req->body.len);
    return sl_buf_append(b, "\r\n", 2);
}

/* ---- the end of a transfer ---- */

static void transfer_free(sl_transfer_t *t)
{
    STAT_ADD(t->up, transfers, -1);
    if (t->paused)
        STAT_ADD(t->up, paused, -1);
    sl_buf_free(&t->head);
    sl_buf_free(&t->h1.out);
    sl_buf_free(&t->h1.pending);
    free(t->h1.origin);
    free(t);
}

static void idle_unlink(sl_h1_conn_t *c)
{
    sl_upstream_t *up = c->up;
    if (!c->idle)
        return;
    if (c->prev)
        c->prev->next = c->next;
    else
        up->idle_head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        up->idle_tail = c->prev;
    c->prev = c->next = NULL;
    c->idle = 0;
    up->nidle--;
    STAT_ADD(up, idle, -1);
    uv_timer_stop(&c->timer);
}

static void on_idle_timeout(uv_timer_t *tm)
{
    conn_close(tm->data);
}

/* A connection whose answer ended cleanly waits for the next request. */
static void idle_put(sl_h1_conn_t *c)
{
    sl_upstream_t *up = c->up;
    c->t = NULL;
    llhttp_init(&c->parser, HTTP_RESPONSE, &settings);
    c->parser.data = c;
    if (up->nidle == POOL_MAX)
        conn_close(up->idle_head);
    c->idle = 1;
    c->prev = up->idle_tail;
    c->next = NULL;
    if (up->idle_tail)
        up->idle_tail->next = c;
    else
        up->idle_head = c;
    up->idle_tail = c;
    up->nidle++;
    STAT_ADD(up, idle, 1);
    uv_timer_start(&c->timer, on_idle_timeout, IDLE_MAX_MS, 0);
}

/* Ends t with code (0: the answer is complete). Its connection goes back to
 * the pool when the answer ended cleanly and both sides keep it alive. */
static void finish(sl_transfer_t *t, int code, const char *why)
{
    sl_h1_conn_t *c = t->h1.conn;
    if (c) {
        t->h1.conn = NULL;
        c->t = NULL;
        if (code == 0 && !c->writing && !c->rest.len && llhttp_should_keep_alive(&c->parser))
            idle_put(c);
        else
            conn_close(c);
    }
    if (t->aborted) {
        transfer_free(t);
        return;
    }
    if (code && why)
        snprintf(t->errbuf, sizeof t->errbuf, "%s", why);
    t->cbs.on_done(t->ud, code, t->errbuf);
    transfer_free(t);
}

/* A failure of the connection before any byte of the answer: a pooled
 * connection that had gone stale gets the request once more on a new one. */
static void fail_io(sl_transfer_t *t, int code, const char *why)
{
    if (t->h1.reused && !t->h1.got_bytes && !t->h1.resent && !t->aborted) {
        sl_h1_conn_t *c = t->h1.conn;
        t->h1.conn = NULL;
        c->t = NULL;
        conn_close(c);
        t->h1.resent = 1;
        t->h1.reused = 0;
        t->connected = 0; /* until the new connection is up */
        conn_connect(t);
        return;
    }
    finish(t, code, why);
}

/* ---- parser callbacks (c->t is set while they run) ---- */

static int head_span(llhttp_t *p, const char *at, size_t n, int value)
{
    sl_transfer_t *t = ((sl_h1_conn_t *)p->data)->t;
    if (!value && (t->h1.in_value || t->h1.nhv == 0)) { /* a new header begins */
        if (t->h1.nhv < 64)
            t->h1.nhv++; /* beyond 64, the last slot is reused: the view caps as curl's did */
        uint32_t *h = t->h1.hv_off[t->h1.nhv - 1];
        h[0] = (uint32_t)t->head.len;
        h[1] = h[2] = h[3] = 0;
    } else if (value && !t->h1.in_value && t->h1.nhv) {
        t->h1.hv_off[t->h1.nhv - 1][2] = (uint32_t)t->head.len;
    }
    t->h1.in_value = value;
    if (!t->h1.nhv)
        return 0;
    if (sl_buf_append(&t->head, at, n)) {
        t->bad_head = "upstream response head exceeds 256 KiB";
        return HPE_USER;
    }
    t->h1.hv_off[t->h1.nhv - 1][value ? 3 : 1] += (uint32_t)n;
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    return head_span(p, at, n, 0);
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    return head_span(p, at, n, 1);
}

static int on_headers_complete(llhttp_t *p)
{
    sl_transfer_t *t = ((sl_h1_conn_t *)p->data)->t;
    int status = p->status_code;
    size_t n = t->h1.nhv;
    if (status < 200) { /* an interim head: forget it, the answer follows */
        sl_buf_reset(&t->head);
        t->h1.nhv = 0;
        t->h1.in_value = 0;
        return 0;
    }
    sl_header_t hv[64];
    for (size_t i = 0; i < n; i++) {
        const uint32_t *h = t->h1.hv_off[i];
        const char *v = t->head.base + h[2], *ve = v + h[3];
        while (v < ve && (*v == ' ' || *v == '\t'))
            v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        hv[i].name = sl_str(t->head.base + h[0], h[1]);
        hv[i].value = sl_str(v, (size_t)(ve - v));
    }
    t->head_sent = 1;
    t->cbs.on_head(t->ud, status, hv, n);
    return t->aborted ? HPE_USER : 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    sl_transfer_t *t = ((sl_h1_conn_t *)p->data)->t;
    int r = t->cbs.on_data(t->ud, at, n);
    if (t->aborted)
        return HPE_USER;
    if (r == SL_TRANSFER_FAIL) {
        t->h1.fail = CURLE_WRITE_ERROR;
        return HPE_USER;
    }
    if (r == SL_TRANSFER_PAUSE) {
        sl_buf_reset(&t->h1.pending);
        if (sl_buf_append(&t->h1.pending, at, n)) {
            t->h1.fail = CURLE_OUT_OF_MEMORY;
            return HPE_USER;
        }
        t->paused = 1;
        STAT_ADD(t->up, paused, 1);
        return HPE_PAUSED;
    }
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    sl_transfer_t *t = ((sl_h1_conn_t *)p->data)->t;
    if (p->status_code < 200)
        return 0; /* the end of an interim head */
    t->h1.complete = 1;
    return HPE_PAUSED; /* stop here: what follows is not this answer */
}

/* ---- reading ---- */

/* Parses n bytes of t's answer; settles t when the parser says it ended,
 * paused or failed. 1 when t has ended (and is freed). */
static int feed(sl_h1_conn_t *c, const char *p, size_t n)
{
    sl_transfer_t *t = c->t;
    t->h1.got_bytes = 1;
    t->in_callback++;
    llhttp_errno_t err = llhttp_execute(&c->parser, p, n);
    t->in_callback--;
    if (t->aborted) {
        finish(t, CURLE_WRITE_ERROR, NULL);
        return 1;
    }
    if (err == HPE_OK)
        return 0;
    if (err == HPE_PAUSED) {
        const char *at = llhttp_get_error_pos(&c->parser);
        size_t used = at ? (size_t)(at - p) : n;
        if (t->h1.complete) {
            if (used < n) /* bytes after the answer: the connection cannot be trusted */
                sl_buf_append(&c->rest, p + used, n - used);
            finish(t, 0, NULL);
            return 1;
        }
        /* paused by on_data: keep what the read held after those bytes */
        sl_buf_reset(&c->rest);
        sl_buf_append(&c->rest, p + used, n - used);
        uv_read_stop((uv_stream_t *)&c->tcp);
        return 0;
    }
    if (t->h1.fail) {
        finish(t, t->h1.fail, t->h1.fail == CURLE_WRITE_ERROR ? "the answer was refused by sluice"
                                                             : "out of memory");
        return 1;
    }
    if (t->bad_head) {
        finish(t, CURLE_WEIRD_SERVER_REPLY, t->bad_head);
        return 1;
    }
    char why[160];
    snprintf(why, sizeof why, "upstream sent an invalid HTTP response: %s",
             llhttp_get_error_reason(&c->parser));
    finish(t, CURLE_WEIRD_SERVER_REPLY, why);
    return 1;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    sl_h1_conn_t *c = h->data;
    *buf = uv_buf_init(c->up->rbuf, READ_BUF);
}

/* The upstream closed its side: a close-delimited body ends here; anything
 * else ended early. */
static void on_eof(sl_h1_conn_t *c)
{
    sl_transfer_t *t = c->t;
    if (!t->h1.got_bytes) {
        fail_io(t, CURLE_GOT_NOTHING, "upstream closed the connection without answering");
        return;
    }
    t->in_callback++;
    llhttp_errno_t err = llhttp_finish(&c->parser);
    t->in_callback--;
    if (t->aborted)
        finish(t, CURLE_WRITE_ERROR, NULL);
    else if (t->h1.complete || (err == HPE_OK && t->head_sent && !llhttp_message_needs_eof(&c->parser)))
        finish(t, 0, NULL);
    else if (!t->head_sent)
        finish(t, CURLE_WEIRD_SERVER_REPLY, "upstream closed the connection inside its response head");
    else
        finish(t, CURLE_PARTIAL_FILE, "upstream closed the connection before the answer's end");
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    sl_h1_conn_t *c = s->data;
    if (nread == 0)
        return;
    if (!c->t) { /* idle: the upstream closed it, or sent what nobody asked for */
        conn_close(c);
        return;
    }
    if (nread == UV_EOF) {
        on_eof(c);
    } else if (nread < 0) {
        char why[128];
        snprintf(why, sizeof why, "receiving from upstream failed: %s", uv_strerror((int)nread));
        fail_io(c->t, CURLE_RECV_ERROR, why);
    } else {
        feed(c, buf->base, (size_t)nread);
    }
}

/* ---- connecting and sending ---- */

/* Freed once nothing of it is pending: its two handles closed and no
 * address lookup running on the thread pool. */
static void conn_release(sl_h1_conn_t *c)
{
    if (--c->pending == 0) {
        sl_buf_free(&c->rest);
        free(c);
    }
}

static void on_closed(uv_handle_t *h)
{
    conn_release(h->data);
}

static void conn_close(sl_h1_conn_t *c)
{
    if (c->closing)
        return;
    idle_unlink(c);
    c->closing = 1;
    STAT_ADD(c->up, connections, -1);
    if (c->resolving)
        uv_cancel((uv_req_t *)&c->gai); /* on_resolved sees closing, sooner if this worked */
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, on_closed);
    uv_close((uv_handle_t *)&c->tcp, on_closed);
}

static void on_written(uv_write_t *w, int status)
{
    sl_h1_conn_t *c = w->data;
    c->writing = 0;
    if (c->closing || !c->t || status == 0)
        return;
    char why[128];
    snprintf(why, sizeof why, "sending to upstream failed: %s", uv_strerror(status));
    fail_io(c->t, CURLE_SEND_ERROR, why);
}

/* Head and body in one write; the answer is read as it comes (reading
 * started when the connection was made, so an early answer is not missed).
 * A request fits the socket buffer nearly always: written at once, with no
 * write request and no change to what epoll watches. What does not fit is
 * left to uv_write. */
static void transfer_send(sl_transfer_t *t)
{
    sl_h1_conn_t *c = t->h1.conn;
    uv_buf_t bufs[2] = {uv_buf_init(t->h1.out.base, (unsigned)t->h1.out.len),
                        uv_buf_init((char *)t->h1.body.base, (unsigned)t->h1.body.len)};
    unsigned nbufs = t->h1.body.len ? 2 : 1;
    int rc = uv_try_write((uv_stream_t *)&c->tcp, bufs, nbufs);
    if (rc >= 0 || rc == UV_EAGAIN) {
        size_t done = rc > 0 ? (size_t)rc : 0;
        for (unsigned i = 0; i < nbufs && done; i++) {
            size_t n = done < bufs[i].len ? done : bufs[i].len;
            bufs[i].base += n;
            bufs[i].len -= n;
            done -= n;
        }
        if (bufs[nbufs - 1].len == 0)
            return; /* all of it went out */
        uv_buf_t *rest = bufs[0].len ? bufs : bufs + 1;
        c->writing = 1;
        rc = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, rest, (unsigned)(bufs + nbufs - rest), on_written);
        if (rc == 0)
            return;
        c->writing = 0;
    }
    char why[128];
    snprintf(why, sizeof why, "sending to upstream failed: %s", uv_strerror(rc));
    fail_io(t, CURLE_SEND_ERROR, why);
}

static void connect_failed(sl_h1_conn_t *c, int code, const char *what, int status)
{
    char why[CURL_ERROR_SIZE];
    if (status)
        snprintf(why, sizeof why, "%s %s: %s", what, c->origin, uv_strerror(status));
    else
        snprintf(why, sizeof why, "%s %s", what, c->origin);
    finish(c->t, code, why);
}

static void on_connected(uv_connect_t *req, int status)
{
    sl_h1_conn_t *c = req->data;
    if (c->closing)
        return;
    uv_timer_stop(&c->timer);
    if (status < 0) {
        connect_failed(c, CURLE_COULDNT_CONNECT, "failed to connect to", status);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    c->t->connected = 1;
    transfer_send(c->t);
}

static void on_connect_timeout(uv_timer_t *tm)
{
    sl_h1_conn_t *c = tm->data;
    connect_failed(c, CURLE_OPERATION_TIMEDOUT, "timed out connecting to", 0);
}

static void start_connect(sl_h1_conn_t *c, const struct sockaddr *sa)
{
    int rc = uv_tcp_connect(&c->creq, &c->tcp, sa, on_connected);
    if (rc < 0)
        connect_failed(c, CURLE_COULDNT_CONNECT, "failed to connect to", rc);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    sl_h1_conn_t *c = req->data;
    c->resolving = 0;
    if (c->closing) {
        uv_freeaddrinfo(res);
        conn_release(c);
        return;
    }
    conn_release(c);
    if (status < 0 || !res) {
        uv_timer_stop(&c->timer);
        connect_failed(c, CURLE_COULDNT_RESOLVE_HOST, "could not resolve", status);
    } else {
        start_connect(c, res->ai_addr);
    }
    uv_freeaddrinfo(res);
}

/* A new connection for t: resolved (unless the host is an address), then
 * connected under the connect timeout. */
static void conn_connect(sl_transfer_t *t)
{
    sl_upstream_t *up = t->up;
    size_t olen = strlen(t->h1.origin);
    sl_h1_conn_t *c = calloc(1, sizeof *c + olen + 1);
    if (!c) {
        finish(t, CURLE_OUT_OF_MEMORY, "out of memory");
        return;
    }
    memcpy(c->origin, t->h1.origin, olen + 1);
    c->up = up;
    c->t = t;
    t->h1.conn = c;
    sl_buf_init(&c->rest, 0);
    llhttp_init(&c->parser, HTTP_RESPONSE, &settings);
    c->parser.data = c;
    uv_tcp_init(up->loop, &c->tcp);
    uv_timer_init(up->loop, &c->timer);
    c->tcp.data = c->timer.data = c->creq.data = c->wreq.data = c->gai.data = c;
    c->pending = 2;
    STAT_ADD(up, connections, 1);
    STAT_ADD(up, connects_total, 1);
    uint64_t ms = t->h1.connect_timeout_ms ? t->h1.connect_timeout_ms : CONNECT_TIMEOUT_DEFAULT_MS;
    uv_timer_start(&c->timer, on_connect_timeout, ms, 0);

    /* The host is the origin without its port (and an IPv6 address's brackets). */
    char host[300];
    size_t hlen = (size_t)(strrchr(c->origin, ':') - c->origin);
    int v6 = c->origin[0] == '[';
    memcpy(host, c->origin + v6, hlen - 2 * v6);
    host[hlen - 2 * v6] = '\0';
    if (strcmp(host, "localhost") == 0)
        strcpy(host, "127.0.0.1");
    struct sockaddr_storage ss;
    if (uv_ip4_addr(host, t->h1.port, (struct sockaddr_in *)&ss) == 0 ||
        uv_ip6_addr(host, t->h1.port, (struct sockaddr_in6 *)&ss) == 0) {
        start_connect(c, (struct sockaddr *)&ss);
        return;
    }
    char port[8];
    snprintf(port, sizeof port, "%d", t->h1.port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    c->resolving = 1;
    c->pending++;
    int rc = uv_getaddrinfo(up->loop, &c->gai, on_resolved, host, port, &hints);
    if (rc < 0) {
        c->resolving = 0;
        c->pending--;
        uv_timer_stop(&c->timer);
        connect_failed(c, CURLE_COULDNT_RESOLVE_HOST, "could not resolve", rc);
    }
}

/* The most recently used idle connection to origin, taken out of the pool. */
static sl_h1_conn_t *idle_take(sl_upstream_t *up, const char *origin)
{
    for (sl_h1_conn_t *c = up->idle_tail; c; c = c->prev)
        if (strcmp(c->origin, origin) == 0) {
            idle_unlink(c);
            return c;
        }
    return NULL;
}

/* ---- the API upstream.c forwards to ---- */

static void init_settings(void)
{
    llhttp_settings_init(&settings);
    settings.on_header_field = on_header_field;
    settings.on_header_value = on_header_value;
    settings.on_headers_complete = on_headers_complete;
    settings.on_body = on_body;
    settings.on_message_complete = on_message_complete;
}

int sl_h1_init(sl_upstream_t *up)
{
    static uv_once_t once = UV_ONCE_INIT;
    uv_once(&once, init_settings);
    const char *proxies[] = {"http_proxy", "all_proxy", "ALL_PROXY"};
    for (size_t i = 0; i < sizeof proxies / sizeof proxies[0]; i++) {
        const char *v = getenv(proxies[i]);
        if (v && *v)
            up->proxy_env = 1;
    }
    const char *which = getenv("SLUICE_UPSTREAM_CLIENT");
    if (which && strcmp(which, "curl") == 0)
        up->curl_only = 1;
    up->rbuf = malloc(READ_BUF);
    return up->rbuf ? 0 : SL_ENOMEM;
}

int sl_h1_start(sl_transfer_t *t, const sl_transfer_req_t *req)
{
    sl_upstream_t *up = t->up;
    char host[256];
    const char *path;
    int port;
    if (up->curl_only || !split_url(req->url, host, sizeof host, &port, &path) || proxied(up, host))
        return SL_H1_DECLINED;
    t->lean = 1;
    sl_buf_init(&t->head, HEAD_MAX);
    sl_buf_init(&t->h1.out, 0);
    sl_buf_init(&t->h1.pending, 0);
    char origin[300];
    int v6 = strchr(host, ':') != NULL;
    snprintf(origin, sizeof origin, v6 ? "[%s]:%d" : "%s:%d", host, port);
    for (char *o = origin; *o; o++)
        *o = (char)tolower((unsigned char)*o);
    /* Host carries the port only when it is not the default, as curl sends it. */
    char hostport[300];
    if (port == 80)
        snprintf(hostport, sizeof hostport, v6 ? "[%s]" : "%s", host);
    else
        snprintf(hostport, sizeof hostport, "%s", origin);
    t->h1.origin = strdup(origin);
    t->h1.port = port;
    t->h1.body = req->body;
    t->h1.connect_timeout_ms = req->connect_timeout_ms;
    int rc = !t->h1.origin ? SL_ENOMEM : build_head(t, req, path, hostport);
    if (rc) {
        sl_buf_free(&t->head);
        sl_buf_free(&t->h1.out);
        free(t->h1.origin);
        return rc;
    }
    STAT_ADD(up, transfers, 1);
    sl_h1_conn_t *c = idle_take(up, t->h1.origin);
    if (!c) {
        conn_connect(t);
        return 0;
    }
    c->t = t;
    t->h1.conn = c;
    t->h1.reused = 1;
    t->connected = 1;
    transfer_send(t);
    return 0;
}

void sl_h1_resume(sl_transfer_t *t)
{
    if (!t->paused || t->aborted)
        return;
    t->paused = 0;
    STAT_ADD(t->up, paused, -1);
    sl_h1_conn_t *c = t->h1.conn;
    if (t->h1.pending.len) { /* the bytes on_data paused on, again */
        t->in_callback++;
        int r = t->cbs.on_data(t->ud, t->h1.pending.base, t->h1.pending.len);
        t->in_callback--;
        if (t->aborted) {
            finish(t, CURLE_WRITE_ERROR, NULL);
            return;
        }
        if (r == SL_TRANSFER_FAIL) {
            finish(t, CURLE_WRITE_ERROR, "the answer was refused by sluice");
            return;
        }
        if (r == SL_TRANSFER_PAUSE) {
            t->paused = 1;
            STAT_ADD(t->up, paused, 1);
            return;
        }
        sl_buf_reset(&t->h1.pending);
    }
    /* What the read held after them. Parsed even when empty: the parser
     * stopped inside the body's last span and has yet to see its end. feed
     * may pause again and refill rest, so it parses a copy. */
    llhttp_resume(&c->parser);
    sl_buf_t rest = c->rest;
    sl_buf_init(&c->rest, 0);
    int ended = feed(c, rest.base ? rest.base : "", rest.len);
    sl_buf_free(&rest);
    if (ended || t->paused)
        return;
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

void sl_h1_abort(sl_transfer_t *t)
{
    if (t->aborted)
        return;
    t->aborted = 1;
    if (t->in_callback)
        return; /* settled by feed (or resume) once the callback returns */
    finish(t, CURLE_WRITE_ERROR, NULL);
}

/* At the worker's end every exchange is over: only idle connections remain. */
void sl_h1_free(sl_upstream_t *up)
{
    while (up->idle_head)
        conn_close(up->idle_head);
    free(up->rbuf);
    up->rbuf = NULL;
}
