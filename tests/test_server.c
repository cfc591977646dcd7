/*
 * test_server.c — the downstream HTTP/1.1 server (core/server.h).
 *
 * Each case starts a server on a free loopback port, drives its uv loop on
 * the test thread, and plays the client from a second thread with a plain
 * blocking socket, so what is checked is what a client sees on the wire:
 * requests arrive whole (method, path, query, headers, body — chunked or
 * not), keep-alive and pipelining answer in order, malformed or oversized
 * requests get 400/431/413 and a close, a silent connection is dropped by
 * the header timeout, a client that leaves mid-response is reported through
 * on_gone, chunked responses are framed correctly, and a header value with
 * CR/LF is refused before it can split a response. Also the edges a real
 * client population reaches: HEAD answered without a body, thousands of
 * pipelined requests answered in order (also behind a slow one, in linear
 * time), a client that pipelines without reading is not answered into
 * memory without bound, a dripping body is cut, and a full server makes room
 * by closing an idle keep-alive connection.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "buf.h"
#include "error.h"
#include "server.h"
#include "test_helpers.h"

static uv_loop_t loop;
static uv_timer_t ticker; /* keeps uv_run(ONCE) from blocking while we poll */

static void on_tick(uv_timer_t *t)
{
}

/* ---- the application side ---- */

enum app_mode {
    APP_RESPOND,       /* answer at once with an echo of the request */
    APP_RESPOND_LATER, /* answer from a timer (the request stays BUSY meanwhile) */
    APP_HOLD,          /* keep the request; watch for on_gone */
    APP_CHUNKED,       /* answer with a chunked body in two pieces */
    APP_CRLF,          /* try a header with CR/LF, then answer properly */
    APP_BIG,           /* answer at once, the echo padded to BIG_BODY bytes */
    APP_FIRST_LATER,   /* hold the first request (app.held), answer the rest at once */
};

#define BIG_BODY (16 * 1024)

typedef struct {
    char method[16];
    char path[256], query[256];
    char headers[2048]; /* "name: value\n" per header */
    sl_buf_t body;
    int error_status;
    int keep_alive;
    char peer[64];
} seen_t;

#define MAX_SEEN 8

static struct {
    enum app_mode mode;
    atomic_int nseen;
    seen_t seen[MAX_SEEN];
    sl_conn_t *held;
    atomic_int gone;
    int gone_err;
    int crlf_rc;
    uv_timer_t later;
    sl_conn_t *later_conn[MAX_SEEN];
    int later_seen[MAX_SEEN];
    int nlater;
} app;

static void on_gone(void *data, int err)
{
    app.gone_err = err;
    app.held = NULL;
    atomic_fetch_add(&app.gone, 1);
}

static const sl_conn_handler_t handler = {on_gone, NULL};

static void echo_respond(sl_conn_t *c, const seen_t *s)
{
    sl_buf_t b;
    sl_buf_init(&b, 0);
    sl_buf_printf(&b, "%s %s ?%s body=", s->method, s->path, s->query);
    sl_buf_append(&b, s->body.base, s->body.len);
    while (app.mode == APP_BIG && b.len < BIG_BODY)
        sl_buf_append_byte(&b, '.');
    sl_header_t h[] = {{SL_STR("Content-Type"), SL_STR("text/plain")}};
    sl_conn_respond(c, s->error_status ? s->error_status : 200, h, 1,
                    sl_str(b.base ? b.base : "", b.len));
    sl_buf_free(&b);
}

static void on_later(uv_timer_t *t)
{
    for (int i = 0; i < app.nlater; i++)
        echo_respond(app.later_conn[i], &app.seen[app.later_seen[i]]);
    app.nlater = 0;
}

static void on_request(sl_request_t *req, void *arg)
{
    int i = atomic_load(&app.nseen);
    seen_t *s = &app.seen[i < MAX_SEEN ? i : MAX_SEEN - 1];
    snprintf(s->method, sizeof s->method, "%s", req->method);
    snprintf(s->path, sizeof s->path, "%.*s", (int)req->path.len, req->path.base);
    snprintf(s->query, sizeof s->query, "%.*s", (int)req->query.len, req->query.base);
    size_t off = 0;
    s->headers[0] = '\0';
    for (size_t k = 0; k < req->nheaders && off < sizeof s->headers; k++)
        off += (size_t)snprintf(s->headers + off, sizeof s->headers - off, "%.*s: %.*s\n",
                                (int)req->headers[k].name.len, req->headers[k].name.base,
                                (int)req->headers[k].value.len, req->headers[k].value.base);
    sl_buf_init(&s->body, 0);
    sl_buf_append(&s->body, req->body.base, req->body.len);
    s->error_status = req->error_status;
    s->keep_alive = req->keep_alive;
    snprintf(s->peer, sizeof s->peer, "%s", req->peer);
    atomic_fetch_add(&app.nseen, 1);

    switch (app.mode) {
    case APP_RESPOND:
    case APP_BIG:
        echo_respond(req->conn, s);
        break;
    case APP_FIRST_LATER:
        if (i == 0) {
            app.held = req->conn;
            sl_conn_set_handler(req->conn, &handler, NULL);
        } else {
            echo_respond(req->conn, s);
        }
        break;
    case APP_RESPOND_LATER:
        app.later_seen[app.nlater] = i;
        app.later_conn[app.nlater++] = req->conn;
        sl_conn_set_handler(req->conn, &handler, NULL);
        uv_timer_start(&app.later, on_later, 20, 0);
        break;
    case APP_HOLD:
        app.held = req->conn;
        sl_conn_set_handler(req->conn, &handler, NULL);
        break;
    case APP_CHUNKED:
        sl_conn_send_head(req->conn, 200, NULL, 0, -1);
        sl_conn_send_body(req->conn, "hello", 5);
        sl_conn_send_body(req->conn, "", 0); /* nothing: must not end the body */
        sl_conn_send_body(req->conn, " world", 6);
        sl_conn_finish(req->conn);
        break;
    case APP_CRLF: {
        sl_header_t bad[] = {{SL_STR("X-Note"), SL_STR("a\r\nX-Injected: 1")}};
        app.crlf_rc = sl_conn_send_head(req->conn, 200, bad, 1, 0);
        echo_respond(req->conn, s);
        break;
    }
    }
}

static void app_reset(enum app_mode mode)
{
    for (int i = 0; i < MAX_SEEN && i < atomic_load(&app.nseen); i++)
        sl_buf_free(&app.seen[i].body);
    atomic_store(&app.nseen, 0);
    atomic_store(&app.gone, 0);
    app.mode = mode;
    app.held = NULL;
    app.gone_err = 0;
    app.crlf_rc = 1;
    app.nlater = 0;
}

/* ---- the server under test ---- */

static sl_server_limits_t default_limits(void)
{
    sl_server_limits_t l = {
        .max_header = 8192,
        .max_headers_count = 50,
        .max_body = 1 << 20,
        .header_timeout_ms = 5000,
        .keepalive_timeout_ms = 5000,
        .max_connections = 100,
    };
    return l;
}

static int stopped;

static void on_stopped(void *arg)
{
    stopped = 1;
}

static sl_server_t *cur_server; /* the one the predicates below look at */

/* Resets the application to `mode` and starts a server with limits l (NULL:
 * the defaults) on a free port. NULL, with the case failed, if none would. */
static sl_server_t *serve(enum app_mode mode, const sl_server_limits_t *l, int *port)
{
    sl_server_limits_t defaults = default_limits();
    sl_server_t *s = NULL;
    app_reset(mode);
    for (int attempt = 0; attempt < 5 && !s; attempt++) {
        *port = th_free_port();
        if (sl_server_start(&s, &loop, "127.0.0.1", *port, l ? l : &defaults, NULL, on_request, NULL) !=
            0)
            s = NULL;
    }
    CHECK(s != NULL);
    cur_server = s;
    return s;
}

/* Runs the loop until cond() holds or timeout_ms passes; returns cond(). */
static int drive(int (*cond)(void), int timeout_ms)
{
    uint64_t end = uv_hrtime() + (uint64_t)timeout_ms * 1000000;
    uv_timer_again(&ticker);
    while (!cond() && uv_hrtime() < end)
        uv_run(&loop, UV_RUN_ONCE);
    return cond();
}

static int is_stopped(void)
{
    return stopped;
}

static void stop_server(sl_server_t *s)
{
    stopped = 0;
    sl_server_stop(s, on_stopped, NULL);
    CHECK(drive(is_stopped, 5000));
}

/* ---- the client side (its own thread, blocking sockets) ---- */

typedef struct {
    int port;
    const char *parts[4]; /* sent in order; NULL ends */
    int wait_between;     /* read a whole response between parts */
    int wait_seen;        /* before closing: wait until the app saw this many requests */
    int flood_after_seen; /* send parts[1] only once the app has parts[0]'s request */
    const char *drip;     /* after the parts, these bytes one at a time... */
    int drip_ms;          /* ...this far apart */
    int close_early;      /* close right after sending (a client that leaves) */
    const char *until;    /* stop reading once this appears */
    int responses;        /* or once this many "HTTP/1.1 " lines arrived */
    char resp[65536];
    size_t n;
    int eof;
    atomic_int done;
    pthread_t th;
} client_t;

/* How many complete responses (Content-Length or chunked) buf holds. */
static int complete_responses(const char *buf, size_t n)
{
    int k = 0;
    const char *p = buf, *end = buf + n;
    while (p < end) {
        const char *he = memmem(p, (size_t)(end - p), "\r\n\r\n", 4);
        if (!he)
            break;
        he += 4;
        const char *cl = memmem(p, (size_t)(he - p), "Content-Length: ", 16);
        if (cl) {
            size_t len = strtoul(cl + 16, NULL, 10);
            if ((size_t)(end - he) < len)
                break;
            p = he + len;
        } else {
            const char *z = memmem(he, (size_t)(end - he), "\r\n0\r\n\r\n", 7);
            if (!z && (size_t)(end - he) >= 5 && memcmp(he, "0\r\n\r\n", 5) == 0)
                z = he - 2;
            if (!z)
                break;
            p = z + 7;
        }
        k++;
    }
    return k;
}

/* Reads until `want` complete responses, the `until` marker, EOF or timeout. */
static void client_read(client_t *c, int fd, int want)
{
    for (;;) {
        if (want && complete_responses(c->resp, c->n) >= want)
            return;
        if (c->until && strstr(c->resp, c->until))
            return;
        if (c->n + 1 >= sizeof c->resp)
            return;
        ssize_t r = recv(fd, c->resp + c->n, sizeof c->resp - 1 - c->n, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            c->eof = r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK);
            return;
        }
        c->n += (size_t)r;
        c->resp[c->n] = '\0';
    }
}

static void *client_main(void *arg)
{
    client_t *c = arg;
    int fd = th_connect(c->port, 3000);
    if (fd < 0) {
        c->eof = -1;
        atomic_store(&c->done, 1);
        return NULL;
    }
    int i;
    for (i = 0; i < 4 && c->parts[i]; i++) {
        for (int ms = 0; i == 1 && c->flood_after_seen && atomic_load(&app.nseen) < 1 && ms < 3000;
             ms++)
            usleep(1000);
        th_send_all(fd, c->parts[i], strlen(c->parts[i]));
        if (c->wait_between && i + 1 < 4 && c->parts[i + 1])
            client_read(c, fd, i + 1);
    }
    for (const char *d = c->drip; d && *d; d++) {
        usleep((useconds_t)c->drip_ms * 1000);
        if (send(fd, d, 1, MSG_NOSIGNAL) != 1)
            break; /* cut off */
    }
    for (int ms = 0; c->wait_seen && atomic_load(&app.nseen) < c->wait_seen && ms < 3000; ms++)
        usleep(1000);
    if (!c->close_early) {
        client_read(c, fd, c->responses);
        /* After the wanted responses, see whether the server closes: a
         * short extra read that returns 0 means it did. */
        if (!c->eof && c->responses) {
            struct timeval tv = {0, 300000};
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
            char extra[256];
            ssize_t r = recv(fd, extra, sizeof extra, 0);
            if (r == 0)
                c->eof = 1;
            else if (r > 0 && c->n + (size_t)r + 1 < sizeof c->resp) {
                memcpy(c->resp + c->n, extra, (size_t)r);
                c->n += (size_t)r;
                c->resp[c->n] = '\0';
            }
        }
    }
    close(fd);
    atomic_store(&c->done, 1);
    return NULL;
}

static client_t *cur_client;

static int client_done(void)
{
    return atomic_load(&cur_client->done);
}

/* Runs the client to completion while driving the server's loop. */
static void run_client(client_t *c)
{
    cur_client = c;
    pthread_create(&c->th, NULL, client_main, c);
    CHECK(drive(client_done, 10000));
    pthread_join(c->th, NULL);
}

static client_t *client_new(int port)
{
    client_t *c = calloc(1, sizeof *c);
    c->port = port;
    return c;
}

/* ---- cases ---- */

static void test_request_delivered(void)
{
    int port;
    sl_server_t *s = serve(APP_RESPOND, NULL, &port);
    if (!s)
        return;
    client_t *c = client_new(port);
    c->parts[0] = "POST /v1/x?a=1&b=2 HTTP/1.1\r\nHost: h\r\nX-Test: Val\r\nX-Test: Two\r\n"
                  "Content-Length: 5\r\n\r\nhello";
    c->responses = 1;
    run_client(c);
    CHECK_EQ_INT(atomic_load(&app.nseen), 1);
    seen_t *r = &app.seen[0];
    CHECK(strcmp(r->method, "POST") == 0);
    CHECK(strcmp(r->path, "/v1/x") == 0);
    CHECK(strcmp(r->query, "a=1&b=2") == 0);
    CHECK_STR_HAS(r->headers, "Host: h\nX-Test: Val\nX-Test: Two\nContent-Length: 5\n");
    CHECK_EQ_MEM(r->body.base, r->body.len, "hello");
    CHECK_EQ_INT(r->error_status, 0);
    CHECK(r->keep_alive);
    CHECK(strncmp(r->peer, "127.0.0.1:", 10) == 0);
    CHECK(strncmp(c->resp, "HTTP/1.1 200 OK\r\n", 17) == 0);
    char cl[64];
    snprintf(cl, sizeof cl, "Content-Length: %zu\r\n", strlen("POST /v1/x ?a=1&b=2 body=hello"));
    CHECK_STR_HAS(c->resp, cl);
    CHECK_STR_HAS(c->resp, "Connection: keep-alive\r\n");
    CHECK_STR_HAS(c->resp, "\r\n\r\nPOST /v1/x ?a=1&b=2 body=hello");
    free(c);
    stop_server(s);
}

static void test_keep_alive_two_requests(void)
{
    int port;
    sl_server_t *s = serve(APP_RESPOND, NULL, &port);
    if (!s)
        return;
    client_t *c = client_new(port);
    c->parts[0] = "GET /one HTTP/1.1\r\nHost: h\r\n\r\n";
    c->parts[1] = "GET /two HTTP/1.1\r\nHost: h\r\n\r\n";
    c->wait_between = 1;
    c->responses = 2;
    run_client(c);
    CHECK_EQ_INT(atomic_load(&app.nseen), 2);
    CHECK_EQ_INT(complete_responses(c->resp, c->n), 2);
    CHECK(strcmp(app.seen[0].peer, app.seen[1].peer) == 0); /* one connection */
    char *one = strstr(c->resp, "GET /one"), *two = strstr(c->resp, "GET /two");
    CHECK(one && two && one < two);
    CHECK(!c->eof); /* still open after both */
    free(c);
    stop_server(s);
}

static void pipelined(enum app_mode mode)
{
    int port;
    sl_server_t *s = serve(mode, NULL, &port);
    if (!s)
        return;
    client_t *c = client_new(port);
    c->parts[0] = "GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
                  "POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nxyz"
                  "GET /c HTTP/1.1\r\nHost: h\r\n\r\n";
    c->responses = 3;
    run_client(c);
    CHECK_EQ_INT(atomic_load(&app.nseen), 3);
    CHECK_EQ_INT(complete_responses(c->resp, c->n), 3);
    char *a = strstr(c->resp, "GET /a "), *b = strstr(c->resp, "POST /b ? body=xyz"),
         *cc = strstr(c->resp, "GET /c ");
    CHECK(a && b && cc && a < b && b < cc);
    free(c);
    stop_server(s);
}

static void test_pipelined_answered_in_order(void)
{
    pipelined(APP_RESPOND);
}

static void test_pipelined_with_slow_responses(void)
{
    /* The next request must wait for the current response to end. */
    pipelined(APP_RESPOND_LATER);
}

static void test_chunked_request_body(void)
{
    int port;
    sl_server_t *s = serve(APP_RESPOND, NULL, &port);
    if (!s)
        return;
    client_t *c = client_new(port);
    c->parts[0] = "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel";
    c->parts[1] = "lo\r\n6\r\n world\r\n0\r\n\r\n";
    c->responses = 1;
    run_client(c);
    CHECK_EQ_INT(atomic_load(&app.nseen), 1);
    CHECK_EQ_MEM(app.seen[0].body.base, app.seen[0].body.len, "hello world");
    CHECK_STR_HAS(c->resp, "body=hello world");
    free(c);
    stop_server(s);
}

/* The request gets `status` and a close; the application saw `seen`
 * requests (0: refused before it; 1: handed over with error_status set). */
static void expect_closed(const sl_server_limits_t *l, const char *request, const char *status,
                          int seen)
{
    int port;
    sl_server_t *s = serve(APP_RESPOND, l, &port);
    if (!s)
        return;
    client_t *c = client_new(port);
    c->parts[0] = request;
    c->responses = 1;
    run_client(c);
    CHECK_EQ_INT(atomic_load(&app.nseen), seen);
    if (strncmp(c->resp, status, strlen(status)) != 0)
        TH_FAIL("expected %s, got: %.80s\n", status, c->resp);
    CHECK_STR_HAS(c->resp, "Connection: close\r\n");
    CHECK(c->eof);
    free(c);
    stop_server(s);
}

static void test_malformed_gets_400_and_close(void)
{
    sl_server_limits_t l = default_limits();
    expect_closed(&l, "GET / HTTP/1.1\r\nHost h\r\n\r\n", "HTTP/1.1 400 ", 0);
    expect_closed(&l, "GARBAGE\r\n\r\n", "HTTP/1.1 400 ", 0);
    expect_closed(&l,
                  "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
                  "HTTP/1.1 400 ", 0);
}

static void test_oversized_head_gets_431(void)
{
    sl_server_limits_t l = default_limits();
    l.max_header = 1024;
    static char req[4096];
    char big[2001];
    memset(big, 'v', 2000);
    big[2000] = '\0';
    snprintf(req, sizeof req, "GET / HTTP/1.1\r\nHost: h\r\nX-Big: %s\r\n\r\n", big);
    expect_closed(&l, req, "HTTP/1.1 431 ", 0);

    l = default_limits();
    l.max_headers_count = 5;
    expect_closed(&l,
                  "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\nF: 6\r\nG: 7\r\n\r\n",
                  "HTTP/1.1 431 ", 0);
}

static void test_body_over_max_delivered_as_413(void)
{
    sl_server_limits_t l = default_limits();
    l.max_body = 10;
    static const char *reqs[] = {
        "POST /big HTTP/1.1\r\nHost: h\r\nContent-Length: 20\r\n\r\n01234567890123456789",
        "POST /big HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        "8\r\n01234567\r\n8\r\n89012345\r\n0\r\n\r\n",
    };
    for (int i = 0; i < 2; i++) {
        expect_closed(&l, reqs[i], "HTTP/1.1 413 ", 1);
        CHECK_EQ_INT(app.seen[0].error_status, 413);
        CHECK_EQ_INT(app.seen[0].body.len, 0);
    }
}

static int server_idle(void)
{
    return sl_server_connections(cur_server) == 0;
}

static int app_holding(void)
{
    return app.held != NULL;
}

static void test_graceful_close_to_a_client_that_never_reads_ends(void)
{
    /* An answer cut short ends with a graceful close (flush, then FIN). A
     * client that never reads must not keep that socket, and megabytes of
     * queued answer, for ever: keepalive_timeout bounds the wait. */
    sl_server_limits_t l = default_limits();
    l.keepalive_timeout_ms = 200;
    int port;
    sl_server_t *s = serve(APP_HOLD, &l, &port);
    if (!s)
        return;
    int fd = th_connect(port, 1000);
    CHECK(fd >= 0);
    const char *req = "GET /cut HTTP/1.1\r\nHost: h\r\n\r\n";
    CHECK(th_send_all(fd, req, strlen(req)) == 0);
    CHECK(drive(app_holding, 3000));
    if (app.held) {
        size_t n = 16 << 20;
        char *big = calloc(1, n);
        sl_conn_send_head(app.held, 200, NULL, 0, -1);
        sl_conn_send_body(app.held, big, n);
        sl_conn_close(app.held, 1);
        app.held = NULL;
        free(big);
    }
    CHECK(drive(server_idle, 5000));
    close(fd);
    stop_server(s);
}

static void test_header_timeout_closes_silent_connection(void)
{
    static const char *starts[] = {NULL, "GET / HT"}; /* silent; a head that stalls */
    for (int i = 0; i < 2; i++) {
        sl_server_limits_t l = default_limits();
        l.header_timeout_ms = 100;
        int port;
        sl_server_t *s = serve(APP_RESPOND, &l, &port);
        if (!s)
            return;
        client_t *c = client_new(port);
        c->parts[0] = starts[i];
        c->until = "\x01never";
        uint64_t t0 = uv_hrtime();
        run_client(c);
        CHECK(c->eof == 1); /* closed by the server, not by our 3 s read timeout */
        CHECK((uv_hrtime() - t0) / 1000000 < 2500);
        CHECK_EQ_INT(atomic_load(&app.nseen), 0);
        CHECK(drive(server_idle, 1000));
        free(c);
        stop_server(s);
    }
}

static int gone_or_closed(void)
{
    return atomic_load(&app.gone) > 0;
}

static void test_client_close_while_busy_calls_on_gone(void)
{
    int port;
    sl_server_t *s = serve(APP_HOLD, NULL, &port);
    if (!s)
        return;
    client_t *c = client_new(port);
    c->parts[0] = "POST /stream HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi";
    c->wait_seen = 1;
    c->close_early = 1;
    run_client(c);
    CHECK_EQ_INT(atomic_load(&app.nseen), 1);
    CHECK(drive(gone_or_closed, 3000));
    CHECK_EQ_INT(atomic_load(&app.gone), 1);
    CHECK(app.gone_err < 0);
    free(c);
    stop_server(s);
}

static void test_pipelining_past_the_bound_calls_on_gone(void)
{
    /* A client that pipelines more than the server will stash while a
     * response is in flight is cut off; the application still holds the
     * connection and must hear about it, or it will write to freed memory. */
    sl_server_limits_t l = default_limits();
    l.max_header = 512;
    l.max_body = 512;
    int port;
    sl_server_t *s = serve(APP_HOLD, &l, &port);
    if (!s)
        return;
    static char flood[8192];
    memset(flood, 'x', sizeof flood - 1);
    client_t *c = client_new(port);
    c->parts[0] = "GET /held HTTP/1.1\r\nHost: h\r\n\r\n";
    c->parts[1] = flood;
    c->flood_after_seen = 1;
    c->until = "\x01never";
    run_client(c);
    CHECK(drive(server_idle, 3000)); /* the flood is cut off */
    CHECK_EQ_INT(atomic_load(&app.nseen), 1);
    CHECK_EQ_INT(atomic_load(&app.gone), 1);
    if (!atomic_load(&app.gone) && sl_server_connections(s) > 0 && app.held)
        sl_conn_respond(app.held, 200, NULL, 0, SL_STR("")); /* let stop complete */
    free(c);
    stop_server(s);
}

static void test_chunked_response_framing(void)
{
    int port;
    sl_server_t *s = serve(APP_CHUNKED, NULL, &port);
    if (!s)
        return;
    client_t *c = client_new(port);
    c->parts[0] = "GET /chunks HTTP/1.1\r\nHost: h\r\n\r\n";
    c->parts[1] = "GET /chunks HTTP/1.1\r\nHost: h\r\n\r\n";
    c->wait_between = 1;
    c->responses = 2;
    run_client(c);
    CHECK_STR_HAS(c->resp, "Transfer-Encoding: chunked\r\n");
    CHECK(strstr(c->resp, "Content-Length") == NULL);
    const char *body = strstr(c->resp, "\r\n\r\n");
    const char *want = "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nHTTP/1.1 200";
    CHECK(body && strncmp(body + 4, want, strlen(want)) == 0);
    if (th_cur_failed)
        fprintf(stderr, "  got: %s\n", c->resp);
    CHECK_EQ_INT(th_count(c->resp, "0\r\n\r\n"), 2); /* keep-alive survives chunking */
    free(c);
    stop_server(s);
}

static void test_crlf_header_refused(void)
{
    int port;
    sl_server_t *s = serve(APP_CRLF, NULL, &port);
    if (!s)
        return;
    client_t *c = client_new(port);
    c->parts[0] = "GET /crlf HTTP/1.1\r\nHost: h\r\n\r\n";
    c->responses = 1;
    run_client(c);
    CHECK_EQ_INT(app.crlf_rc, SL_EINVAL);
    CHECK(strncmp(c->resp, "HTTP/1.1 200 OK\r\n", 17) == 0); /* the refusal sent nothing */
    CHECK(strstr(c->resp, "X-Injected") == NULL);
    CHECK(strstr(c->resp, "X-Note") == NULL);
    free(c);
    stop_server(s);
}

static int one_connection(void)
{
    return sl_server_connections(cur_server) == 1;
}

static void test_stop_closes_idle_connections(void)
{
    int port;
    sl_server_t *s = serve(APP_RESPOND, NULL, &port);
    if (!s)
        return;
    int fd = th_connect(port, 2000); /* connected, never sends */
    CHECK(fd >= 0);
    CHECK(drive(one_connection, 2000));
    stop_server(s); /* completes although a connection was open */
    char b[16];
    int eof = 0;
    th_recv_until(fd, b, sizeof b, NULL, &eof);
    CHECK(eof);
    close(fd);
}

static void test_head_response_has_no_body(void)
{
    /* Claude Code opens with HEAD /: a body after that head would be read
     * as the start of the next response on the keep-alive connection. */
    static const char *reqs =
        "HEAD /h HTTP/1.1\r\nHost: h\r\n\r\nGET /g HTTP/1.1\r\nHost: h\r\n\r\n";
    enum app_mode modes[] = {APP_RESPOND, APP_CHUNKED};
    const char *second[] = {"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n",
                            "HTTP/1.1 200 OK\r\n"};
    const char *until[] = {"GET /g ? body=", "world\r\n0\r\n\r\n"};
    for (int m = 0; m < 2; m++) {
        int port;
        sl_server_t *s = serve(modes[m], NULL, &port);
        if (!s)
            return;
        client_t *c = client_new(port);
        c->parts[0] = reqs;
        c->until = until[m];
        run_client(c);
        CHECK_EQ_INT(atomic_load(&app.nseen), 2);
        CHECK(strcmp(app.seen[0].method, "HEAD") == 0);
        const char *end = strstr(c->resp, "\r\n\r\n");
        CHECK(strncmp(c->resp, "HTTP/1.1 200 OK\r\n", 17) == 0);
        if (m == 0) { /* the head still states the length a GET would get */
            char cl[64];
            snprintf(cl, sizeof cl, "Content-Length: %zu\r\n", strlen("HEAD /h ? body="));
            CHECK(end && memmem(c->resp, (size_t)(end - c->resp), cl, strlen(cl)));
        }
        CHECK(end && strncmp(end + 4, second[m], strlen(second[m])) == 0);
        CHECK(!c->eof);
        if (th_cur_failed)
            fprintf(stderr, "  got: %s\n", c->resp);
        free(c);
        stop_server(s);
    }
}

/* ---- many pipelined requests: a client thread that writes from a second
 * thread while it reads, and checks each response as it arrives ---- */

typedef struct {
    int port;
    const char *payload; /* requests GET /p/0, /p/1, ... back to back */
    size_t payload_len;
    size_t first_len;     /* sent alone first, the rest once the app has it */
    int rcvbuf;           /* 0, or a small receive buffer: a client that reads little */
    atomic_int read_gate; /* reads start only once this is set */
    int want;             /* responses expected */
    int got;              /* in order so far */
    int bad;              /* a response out of order or not 200 */
    int eof;
    char buf[1 << 20];
    size_t n;
    int fd;
    atomic_int sent, done;
    pthread_t th, wth;
} bulk_t;

static char *pipeline_of(int count, size_t *len)
{
    sl_buf_t b;
    sl_buf_init(&b, 0);
    for (int k = 0; k < count; k++)
        sl_buf_printf(&b, "GET /p/%d HTTP/1.1\r\nHost: h\r\n\r\n", k);
    *len = b.len;
    return b.base;
}

static void *bulk_writer(void *arg)
{
    bulk_t *b = arg;
    th_send_all(b->fd, b->payload + b->first_len, b->payload_len - b->first_len);
    atomic_store(&b->sent, 1);
    return NULL;
}

/* Checks the complete responses in b->buf: response k must be a 200 whose
 * echo body starts "GET /p/k ". Keeps the incomplete tail. */
static void bulk_check(bulk_t *b)
{
    size_t off = 0;
    for (;;) {
        const char *p = b->buf + off, *he = memmem(p, b->n - off, "\r\n\r\n", 4);
        if (!he)
            break;
        const char *cl = memmem(p, (size_t)(he - p), "Content-Length: ", 16);
        size_t len = cl ? strtoul(cl + 16, NULL, 10) : 0;
        const char *body = he + 4;
        if ((size_t)(b->buf + b->n - body) < len)
            break;
        char expect[64];
        int m = snprintf(expect, sizeof expect, "GET /p/%d ", b->got);
        if (strncmp(p, "HTTP/1.1 200 ", 13) != 0 || len < (size_t)m ||
            memcmp(body, expect, (size_t)m)) {
            fprintf(stderr, "  response %d: %.120s\n", b->got, p);
            b->bad = 1;
            return;
        }
        b->got++;
        off = (size_t)(body + len - b->buf);
    }
    memmove(b->buf, b->buf + off, b->n - off);
    b->n -= off;
}

static void *bulk_main(void *arg)
{
    bulk_t *b = arg;
    b->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (b->rcvbuf)
        setsockopt(b->fd, SOL_SOCKET, SO_RCVBUF, &b->rcvbuf, sizeof b->rcvbuf);
    struct timeval tv = {10, 0};
    setsockopt(b->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)b->port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(b->fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        b->eof = 1;
        atomic_store(&b->done, 1);
        return NULL;
    }
    if (b->first_len) {
        th_send_all(b->fd, b->payload, b->first_len);
        for (int ms = 0; atomic_load(&app.nseen) < 1 && ms < 3000; ms++)
            usleep(1000);
    }
    pthread_create(&b->wth, NULL, bulk_writer, b);
    while (!atomic_load(&b->read_gate))
        usleep(1000);
    while (b->got < b->want && !b->bad) {
        ssize_t r = recv(b->fd, b->buf + b->n, sizeof b->buf - b->n, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            b->eof = 1;
            break;
        }
        b->n += (size_t)r;
        bulk_check(b);
    }
    shutdown(b->fd, SHUT_RDWR); /* unblocks the writer if it is still stuck */
    pthread_join(b->wth, NULL);
    close(b->fd);
    atomic_store(&b->done, 1);
    return NULL;
}

static bulk_t *cur_bulk;

static int bulk_done(void)
{
    return atomic_load(&cur_bulk->done);
}

static int bulk_sent(void)
{
    return atomic_load(&cur_bulk->sent);
}

/* Starts a client that pipelines `count` requests, the first first_len
 * bytes alone. A slow reader has a small receive buffer and reads nothing
 * until the case sets read_gate. */
static bulk_t *bulk_start(int port, int count, size_t first_len, int slow_reader)
{
    bulk_t *b = calloc(1, sizeof *b);
    b->port = port;
    b->want = count;
    b->payload = pipeline_of(count, &b->payload_len);
    b->first_len = first_len;
    b->rcvbuf = slow_reader ? 4096 : 0;
    atomic_store(&b->read_gate, !slow_reader);
    cur_bulk = b;
    pthread_create(&b->th, NULL, bulk_main, b);
    return b;
}

/* Drives the server until the client is done; every response must have
 * come, in order. */
static void bulk_finish(bulk_t *b)
{
    cur_bulk = b;
    CHECK(drive(bulk_done, 60000));
    CHECK_EQ_INT(b->got, b->want);
    CHECK(!b->bad);
    pthread_join(b->th, NULL);
    free((char *)b->payload);
    free(b);
}

static void test_3000_pipelined_in_one_write_answered_in_order(void)
{
    /* Answered inside the request callback, as the admin API does: the
     * bytes read after the first request must not be parsed before the
     * ones stashed with it. */
    int port;
    sl_server_t *s = serve(APP_RESPOND, NULL, &port);
    if (!s)
        return;
    bulk_finish(bulk_start(port, 3000, 0, 0));
    stop_server(s);
}

static int never(void)
{
    return 0;
}

static void test_long_pipeline_behind_a_slow_response(void)
{
    /* ~18 MB of pipelined requests wait in the stash behind one held
     * response; consuming them must not re-copy the stash per request.
     * Linear work takes a few seconds; re-copying is ~8 TB of memmove,
     * which the 60 s bound (or the watchdog) fails. */
    sl_server_limits_t l = default_limits();
    l.max_body = 32 << 20;
    int port;
    sl_server_t *s = serve(APP_FIRST_LATER, &l, &port);
    if (!s)
        return;
    const int count = 500000;
    bulk_t *b = bulk_start(port, count, strlen("GET /p/0 HTTP/1.1\r\nHost: h\r\n\r\n"), 0);
    CHECK(drive(bulk_sent, 20000));
    drive(never, 1000); /* the server reads what the kernel still holds: all of it stashed */
    CHECK_EQ_INT(atomic_load(&app.nseen), 1);
    if (app.held)
        echo_respond(app.held, &app.seen[0]);
    bulk_finish(b);
    stop_server(s);
}

static int stable_polls;
static int last_seen_count;

/* True once the app's request count stopped moving for ~0.5 s. */
static int seen_stable(void)
{
    int n = atomic_load(&app.nseen);
    stable_polls = n == last_seen_count ? stable_polls + 1 : 0;
    last_seen_count = n;
    usleep(20000);
    return stable_polls >= 25;
}

static void test_pipelining_client_that_does_not_read_is_paused(void)
{
    /* 2000 pipelined requests whose 16 KB answers the client does not read:
     * the server must stop producing them (and stop reading) once the
     * write queue is high, not queue 32 MB, and carry on once it reads. */
    int port;
    sl_server_t *s = serve(APP_BIG, NULL, &port);
    if (!s)
        return;
    const int count = 2000;
    bulk_t *b = bulk_start(port, count, 0, 1);
    stable_polls = last_seen_count = 0;
    CHECK(drive(seen_stable, 20000));
    int answered = atomic_load(&app.nseen);
    /* What fits in the high-water mark plus the kernel's socket buffers. */
    CHECK(answered > 0 && answered < count / 2);
    if (th_cur_failed)
        fprintf(stderr, "  answered %d of %d while the client read nothing\n", answered, count);
    atomic_store(&b->read_gate, 1);
    bulk_finish(b);
    stop_server(s);
}

static void test_dripping_body_is_cut(void)
{
    /* A body that stalls longer than body_timeout: 408, and it never
     * reaches the application. */
    sl_server_limits_t l = default_limits();
    l.body_timeout_ms = 100;
    int port;
    sl_server_t *s = serve(APP_RESPOND, &l, &port);
    if (!s)
        return;
    client_t *c = client_new(port);
    c->parts[0] = "POST /slow HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nab";
    c->until = "\x01never";
    run_client(c);
    CHECK(strncmp(c->resp, "HTTP/1.1 408 ", 13) == 0);
    CHECK(c->eof);
    CHECK_EQ_INT(atomic_load(&app.nseen), 0);
    free(c);
    stop_server(s);

    /* Bytes that keep coming, each well within body_timeout, but the whole
     * body would take 2 s: body_total_timeout (300 ms) cuts it. */
    l.body_timeout_ms = 1000;
    l.body_total_timeout_ms = 300;
    s = serve(APP_RESPOND, &l, &port);
    if (!s)
        return;
    c = client_new(port);
    c->parts[0] = "POST /slow HTTP/1.1\r\nHost: h\r\nContent-Length: 40\r\n\r\n";
    c->drip = "0123456789012345678901234567890123456789";
    c->drip_ms = 50;
    c->responses = 1;
    run_client(c);
    CHECK_EQ_INT(atomic_load(&app.nseen), 0);
    CHECK(strncmp(c->resp, "HTTP/1.1 200", 12) != 0);
    free(c);
    stop_server(s);
}

/* ---- single-threaded peers: the test thread drives the loop and polls ---- */

typedef struct {
    int fd;
    char buf[4096];
    size_t n;
    int eof;
} peer_t;

static peer_t *cur_peer;
static const char *cur_marker;

static int peer_ready(void)
{
    peer_t *p = cur_peer;
    for (;;) {
        if (p->eof || (cur_marker && strstr(p->buf, cur_marker)))
            return 1;
        ssize_t r = recv(p->fd, p->buf + p->n, sizeof p->buf - 1 - p->n, MSG_DONTWAIT);
        if (r > 0) {
            p->n += (size_t)r;
            p->buf[p->n] = '\0';
            continue;
        }
        if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
            p->eof = 1;
        return p->eof;
    }
}

/* Drives the server until p has received marker (or, marker NULL, EOF). */
static int peer_wait(peer_t *p, const char *marker, int ms)
{
    cur_peer = p;
    cur_marker = marker;
    return drive(peer_ready, ms) && (!marker || strstr(p->buf, marker));
}

static void peer_open(peer_t *p, int port, const char *send_now)
{
    memset(p, 0, sizeof *p);
    p->fd = th_connect(port, 2000);
    CHECK(p->fd >= 0);
    if (send_now)
        th_send_all(p->fd, send_now, strlen(send_now));
}

static void test_full_server_closes_an_idle_connection_for_a_new_one(void)
{
    sl_server_limits_t l = default_limits();
    l.max_connections = 2;
    int port;
    sl_server_t *s = serve(APP_RESPOND, &l, &port);
    if (!s)
        return;
    peer_t a, b, c;
    peer_open(&a, port, NULL); /* connected, silent */
    peer_open(&b, port, "GET /b HTTP/1.1\r\nHost: h\r\n\r\n");
    CHECK(peer_wait(&b, "GET /b ? body=", 3000)); /* answered, now idle */
    peer_open(&c, port, "GET /c HTTP/1.1\r\nHost: h\r\n\r\n");
    CHECK(peer_wait(&c, "GET /c ? body=", 3000)); /* served although the server was full */
    CHECK(peer_wait(&a, NULL, 3000));             /* the longest idle gave way */
    CHECK(a.eof && a.n == 0);
    th_send_all(b.fd, "GET /b2 HTTP/1.1\r\nHost: h\r\n\r\n", 30);
    CHECK(peer_wait(&b, "GET /b2 ? body=", 3000)); /* the other one was left alone */
    CHECK(!b.eof);
    close(a.fd);
    close(b.fd);
    close(c.fd);
    stop_server(s);

    /* Nobody idle (both connections are mid-request): the newcomer is
     * refused and the requests under way are not harmed. */
    s = serve(APP_RESPOND, &l, &port);
    if (!s)
        return;
    peer_open(&a, port, "GET /a HT");
    peer_open(&b, port, "GET /b HT");
    drive(never, 300);
    peer_open(&c, port, "GET /c HTTP/1.1\r\nHost: h\r\n\r\n");
    CHECK(peer_wait(&c, NULL, 3000));
    CHECK(c.eof && c.n == 0);
    th_send_all(a.fd, "TP/1.1\r\nHost: h\r\n\r\n", 19);
    CHECK(peer_wait(&a, "GET /a ? body=", 3000));
    close(a.fd);
    close(b.fd);
    close(c.fd);
    stop_server(s);
}

int main(void)
{
    th_watchdog(120);
    uv_loop_init(&loop);
    uv_timer_init(&loop, &ticker);
    uv_timer_start(&ticker, on_tick, 5, 5);
    uv_timer_init(&loop, &app.later);
    RUN(test_request_delivered);
    RUN(test_keep_alive_two_requests);
    RUN(test_pipelined_answered_in_order);
    RUN(test_pipelined_with_slow_responses);
    RUN(test_chunked_request_body);
    RUN(test_malformed_gets_400_and_close);
    RUN(test_oversized_head_gets_431);
    RUN(test_body_over_max_delivered_as_413);
    RUN(test_header_timeout_closes_silent_connection);
    RUN(test_graceful_close_to_a_client_that_never_reads_ends);
    RUN(test_client_close_while_busy_calls_on_gone);
    RUN(test_pipelining_past_the_bound_calls_on_gone);
    RUN(test_chunked_response_framing);
    RUN(test_crlf_header_refused);
    RUN(test_stop_closes_idle_connections);
    RUN(test_head_response_has_no_body);
    RUN(test_3000_pipelined_in_one_write_answered_in_order);
    RUN(test_long_pipeline_behind_a_slow_response);
    RUN(test_pipelining_client_that_does_not_read_is_paused);
    RUN(test_dripping_body_is_cut);
    RUN(test_full_server_closes_an_idle_connection_for_a_new_one);
    app_reset(APP_RESPOND);
    uv_close((uv_handle_t *)&ticker, NULL);
    uv_close((uv_handle_t *)&app.later, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) != 0) {
        fprintf(stderr, "FAIL: handles left open on the loop\n");
        th_failed++;
    }
    return TEST_SUMMARY();
}
