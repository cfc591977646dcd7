/*
 * test_upstream.c — outgoing HTTP (core/upstream.h): the lean HTTP/1.1
 * client for plain http:// (upstream_h1.c) and libcurl's multi on libuv.
 *
 * The supplier is a tiny HTTP/1.1 server on a second thread (blocking
 * sockets, canned responses, counts of connections and requests); the test
 * thread drives the uv loop. The cases are what the exchange relies on, and
 * main runs each of them on both clients, because the exchange and the
 * termination classifier must not be able to tell them apart: the head and
 * the body arrive through their callbacks and the request goes out as asked
 * (framing headers are the client's, not the caller's; a value that would
 * split the head is refused); sequential transfers share one pooled
 * connection; on_data can pause and the same bytes come again after resume;
 * an abort closes the connection at once and silences every callback; a
 * refused connection ends in on_done with CURLE_COULDNT_CONNECT; 1xx heads
 * are not reported as the answer; how an answer ends gives the same CURLcode
 * (close-delimited: complete; closed inside the body: PARTIAL_FILE; closed
 * before any byte: GOT_NOTHING; not HTTP: WEIRD_SERVER_REPLY); a pooled
 * connection the supplier closed is not used, and a request that meets one
 * closing just then is sent again on a new connection.
 *
 * It includes upstream.c to reach the table of origins known to speak
 * HTTP/2, which decides whether a curl transfer waits for multiplexing
 * (CURLOPT_PIPEWAIT): only https origins count, the table is bounded, an
 * HTTP/1.x answer or a failure to connect makes an origin unknown again, and
 * plain http:// never waits. Those cases run on curl only. That h2 answers
 * teach the table is shown end to end against nginx
 * (tests/e2e/test_upstream_concurrency.py): this supplier speaks HTTP/1.1 only.
 */
#define _GNU_SOURCE
#include <curl/curl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "buf.h"
#include "error.h"
#include "test_helpers.h"
#include "upstream.c" /* the statics: tls_origin, h2_* */

static uv_loop_t loop;
static uv_timer_t ticker;
static sl_upstream_t *up;
static int use_curl; /* the client the cases run on (main runs them on both) */

static int new_upstream(sl_upstream_t **u)
{
    int rc = sl_upstream_new(u, &loop);
    if (rc == 0)
        sl_upstream_use_curl(*u, use_curl);
    return rc;
}

static void on_tick(uv_timer_t *t)
{
}

/* Runs the loop until cond() holds or timeout_ms passes; returns cond(). */
static int drive(int (*cond)(void), int timeout_ms)
{
    uint64_t end = uv_hrtime() + (uint64_t)timeout_ms * 1000000;
    while (!cond() && uv_hrtime() < end)
        uv_run(&loop, UV_RUN_ONCE);
    return cond();
}

/* ---- the mock supplier (its own thread) ---- */

typedef struct {
    int lfd, port;
    const char *responses[4]; /* the answer to the n-th request (the last repeats); DROP closes */
    int hold;                 /* after answering, wait for the client to close */
    int close_after;          /* after answering, close the connection */
    atomic_int accepted, served, peer_closed, stop;
    atomic_size_t body_len; /* Content-Length of the last request */
    char last_req[8192];
    pthread_mutex_t mu;
    pthread_t th;
} mock_t;

/* Waits for fd to be readable, giving up when the test stops the mock. */
static int wait_readable(mock_t *m, int fd)
{
    while (!atomic_load(&m->stop)) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 20) > 0)
            return 1;
    }
    return 0;
}

/* Reads one request (head + Content-Length body) into buf; 0 on EOF/error.
 * A body longer than buf holds is read to its end and dropped past buf,
 * its length kept in m->body_len. */
static size_t read_request(mock_t *m, int fd, char *buf, size_t cap)
{
    size_t n = 0;
    for (;;) {
        buf[n] = '\0';
        char *he = strstr(buf, "\r\n\r\n");
        if (he) {
            const char *cl = strcasestr(buf, "\r\ncontent-length:");
            size_t head = (size_t)(he + 4 - buf), body = cl && cl < he ? strtoul(cl + 17, NULL, 10) : 0;
            atomic_store(&m->body_len, body);
            if (n >= head + body)
                return n;
            if (n + 1 >= cap) { /* drain the rest */
                char sink[65536];
                for (size_t left = head + body - n; left;) {
                    if (!wait_readable(m, fd))
                        return 0;
                    ssize_t r = recv(fd, sink, left < sizeof sink ? left : sizeof sink, 0);
                    if (r <= 0)
                        return 0;
                    left -= (size_t)r;
                }
                buf[cap - 1] = '\0';
                return cap - 1;
            }
        }
        if (n + 1 >= cap)
            return n;
        if (!wait_readable(m, fd))
            return 0;
        ssize_t r = recv(fd, buf + n, cap - 1 - n, 0);
        if (r <= 0)
            return 0;
        n += (size_t)r;
    }
}

/* As a response: read the request, then close without answering. */
#define DROP "<drop>"

static void serve_connection(mock_t *m, int fd)
{
    char req[8192];
    for (;;) {
        size_t n = read_request(m, fd, req, sizeof req);
        if (n == 0)
            return;
        int k = atomic_fetch_add(&m->served, 1);
        pthread_mutex_lock(&m->mu);
        memcpy(m->last_req, req, n < sizeof m->last_req ? n + 1 : sizeof m->last_req);
        m->last_req[sizeof m->last_req - 1] = '\0';
        pthread_mutex_unlock(&m->mu);
        const char *resp = NULL;
        for (int i = 0; i <= k && i < 4; i++)
            if (m->responses[i])
                resp = m->responses[i];
        if (resp && strcmp(resp, DROP) == 0)
            return;
        if (resp)
            th_send_all(fd, resp, strlen(resp));
        if (m->close_after)
            return;
        if (m->hold) {
            char b[256];
            ssize_t r = -1;
            while (wait_readable(m, fd) && (r = recv(fd, b, sizeof b, 0)) > 0)
                ;
            if (atomic_load(&m->stop))
                return;
            if (r == 0 || errno == ECONNRESET)
                atomic_store(&m->peer_closed, 1);
            return;
        }
    }
}

static void *mock_main(void *arg)
{
    mock_t *m = arg;
    while (!atomic_load(&m->stop)) {
        struct pollfd p = {m->lfd, POLLIN, 0};
        if (poll(&p, 1, 20) <= 0)
            continue;
        int fd = accept(m->lfd, NULL, NULL);
        if (fd < 0)
            continue;
        atomic_fetch_add(&m->accepted, 1);
        struct timeval tv = {5, 0};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        serve_connection(m, fd);
        close(fd);
    }
    return NULL;
}

static mock_t *mock_start(const char *resp0)
{
    mock_t *m = calloc(1, sizeof *m);
    m->responses[0] = resp0;
    pthread_mutex_init(&m->mu, NULL);
    m->lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    if (bind(m->lfd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(m->lfd, 16) != 0 ||
        getsockname(m->lfd, (struct sockaddr *)&sa, &len) != 0) {
        close(m->lfd);
        free(m);
        return NULL;
    }
    m->port = ntohs(sa.sin_port);
    pthread_create(&m->th, NULL, mock_main, m);
    return m;
}

static void mock_stop(mock_t *m)
{
    atomic_store(&m->stop, 1);
    pthread_join(m->th, NULL);
    close(m->lfd);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

/* ---- the transfer's owner ---- */

typedef struct {
    sl_transfer_t *t;
    int heads, dones, datas;
    int status;
    char headers[2048];    /* "name: value\n" */
    sl_buf_t body;         /* bytes consumed */
    sl_buf_t paused_bytes; /* bytes refused with a pause */
    int pause_once;        /* on_data returns 1 the first time */
    int abort_in_data;     /* on_data aborts the transfer */
    int connected_at_head;
    int code;
    char errbuf[256];
    int order_ok;    /* head before data before done */
    int after_abort; /* callbacks that came after an abort */
    int aborted;
} owner_t;

static owner_t *cur;

static void on_head(void *ud, int status, const sl_header_t *h, size_t n)
{
    owner_t *o = ud;
    o->after_abort += o->aborted;
    o->heads++;
    o->status = status;
    o->order_ok = o->datas == 0 && o->dones == 0;
    size_t off = 0;
    o->headers[0] = '\0';
    for (size_t i = 0; i < n && off < sizeof o->headers; i++)
        off += (size_t)snprintf(o->headers + off, sizeof o->headers - off, "%.*s: %.*s\n",
                                (int)h[i].name.len, h[i].name.base, (int)h[i].value.len,
                                h[i].value.base);
    o->connected_at_head = o->t ? sl_transfer_connected(o->t) : -1;
}

static int on_data(void *ud, const char *p, size_t n)
{
    owner_t *o = ud;
    o->after_abort += o->aborted;
    o->datas++;
    if (o->heads != 1)
        o->order_ok = 0;
    if (o->pause_once) {
        o->pause_once = 0;
        sl_buf_append(&o->paused_bytes, p, n);
        return 1;
    }
    if (o->abort_in_data) {
        o->aborted = 1;
        sl_buf_append(&o->body, p, n);
        sl_transfer_abort(o->t);
        return 0;
    }
    sl_buf_append(&o->body, p, n);
    return 0;
}

static void on_done(void *ud, int code, const char *errbuf)
{
    owner_t *o = ud;
    o->after_abort += o->aborted;
    o->dones++;
    o->code = code;
    snprintf(o->errbuf, sizeof o->errbuf, "%s", errbuf ? errbuf : "");
}

static const sl_transfer_cbs_t cbs = {on_head, on_data, on_done};

static void owner_init(owner_t *o)
{
    memset(o, 0, sizeof *o);
    sl_buf_init(&o->body, 0);
    sl_buf_init(&o->paused_bytes, 0);
}

static void owner_free(owner_t *o)
{
    sl_buf_free(&o->body);
    sl_buf_free(&o->paused_bytes);
}

static int cur_done(void)
{
    return cur->dones > 0;
}

static int start(owner_t *o, int port, const char *method, const char *path, const sl_header_t *h,
                 size_t n, sl_str_t body)
{
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    sl_transfer_req_t rq = {
        .url = url,
        .method = method,
        .headers = h,
        .nheaders = n,
        .body = body,
        .connect_timeout_ms = 2000,
        .verify_tls = 1,
    };
    return sl_transfer_start(up, &rq, &cbs, o, &o->t);
}

/* ---- cases ---- */

static void test_head_and_body_delivered(void)
{
    mock_t *m = mock_start("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Up: a b \r\n"
                           "Content-Length: 11\r\n\r\nhello world");
    CHECK(m != NULL);
    if (!m)
        return;
    owner_t o;
    owner_init(&o);
    cur = &o;
    /* Framing headers from the caller must not reach the wire: curl frames. */
    sl_header_t h[] = {{SL_STR("X-Req"), SL_STR("1")},
                       {SL_STR("Content-Length"), SL_STR("999")},
                       {SL_STR("Host"), SL_STR("evil.example")},
                       {SL_STR("X-Empty"), SL_STR("")}};
    CHECK_EQ_INT(start(&o, m->port, "POST", "/v1/messages?beta=true", h, 4, SL_STR("ping")), 0);
    CHECK_EQ_INT(sl_upstream_active(up), 1);
    CHECK(drive(cur_done, 5000));
    CHECK_EQ_INT(o.heads, 1);
    CHECK_EQ_INT(o.dones, 1);
    CHECK(o.order_ok);
    CHECK_EQ_INT(o.status, 200);
    CHECK_STR_HAS(o.headers, "Content-Type: application/json\n");
    CHECK_STR_HAS(o.headers, "X-Up: a b\n"); /* surrounding blanks trimmed */
    CHECK_EQ_MEM(o.body.base, o.body.len, "hello world");
    CHECK_EQ_INT(o.code, 0);
    CHECK_EQ_INT(o.connected_at_head, 1);
    CHECK_EQ_INT(sl_upstream_active(up), 0);

    pthread_mutex_lock(&m->mu);
    CHECK(strncmp(m->last_req, "POST /v1/messages?beta=true HTTP/1.1\r\n", 38) == 0);
    CHECK_STR_HAS(m->last_req, "\r\nX-Req: 1\r\n");
    CHECK_STR_HAS(m->last_req, "\r\nX-Empty:");
    CHECK_STR_HAS(m->last_req, "\r\nContent-Length: 4\r\n");
    /* (not a bare "999": the mock's port in Host may hold it) */
    CHECK(strcasestr(m->last_req, "Content-Length: 999") == NULL);
    CHECK(strstr(m->last_req, "evil.example") == NULL);
    CHECK(strcasestr(m->last_req, "\r\nExpect:") == NULL);
    CHECK_STR_HAS(m->last_req, "\r\nAccept: */*\r\n");
    CHECK_STR_HAS(m->last_req, "\r\n\r\nping");
    pthread_mutex_unlock(&m->mu);
    owner_free(&o);

    /* A value that would end the header line early never goes out. */
    sl_header_t evil[] = {{SL_STR("X-Req"), SL_STR("1\r\nX-Injected: yes")}};
    owner_init(&o);
    cur = &o;
    CHECK_EQ_INT(start(&o, m->port, "POST", "/v1", evil, 1, SL_STR("ping")), SL_EINVAL);
    CHECK_EQ_INT(sl_upstream_active(up), 0);
    owner_free(&o);
    mock_stop(m);
}

static void test_connection_reused(void)
{
    mock_t *m = mock_start("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    CHECK(m != NULL);
    if (!m)
        return;
    for (int i = 0; i < 2; i++) {
        owner_t o;
        owner_init(&o);
        cur = &o;
        CHECK_EQ_INT(start(&o, m->port, i ? "GET" : "POST", "/r", NULL, 0, SL_STR("{}")), 0);
        CHECK(drive(cur_done, 5000));
        CHECK_EQ_INT(o.code, 0);
        CHECK_EQ_MEM(o.body.base, o.body.len, "ok");
        owner_free(&o);
    }
    CHECK_EQ_INT(atomic_load(&m->served), 2);
    CHECK_EQ_INT(atomic_load(&m->accepted), 1);
    mock_stop(m);
}

/* A body larger than the socket takes at once still goes out whole (the
 * lean client writes what it can at once and leaves the rest to uv_write). */
static void test_large_body_sent_whole(void)
{
    mock_t *m = mock_start("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    CHECK(m != NULL);
    if (!m)
        return;
    size_t big = 16u << 20;
    char *body = malloc(big);
    memset(body, 'x', big);
    owner_t o;
    owner_init(&o);
    cur = &o;
    CHECK_EQ_INT(start(&o, m->port, "POST", "/big", NULL, 0, sl_str(body, big)), 0);
    CHECK(drive(cur_done, 10000));
    CHECK_EQ_INT(o.code, 0);
    CHECK_EQ_MEM(o.body.base, o.body.len, "ok");
    CHECK_EQ_INT(atomic_load(&m->body_len), big);
    CHECK_EQ_INT(atomic_load(&m->served), 1);
    owner_free(&o);
    free(body);
    mock_stop(m);
}

static owner_t *to_resume;

static void on_resume_timer(uv_timer_t *t)
{
    sl_transfer_resume(to_resume->t);
}

static void test_pause_then_resume_redelivers(void)
{
    mock_t *m = mock_start("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                           "Content-Length: 20\r\n\r\ndata: 0123456789\n\n\n\n");
    CHECK(m != NULL);
    if (!m)
        return;
    owner_t o;
    owner_init(&o);
    o.pause_once = 1;
    cur = &o;
    CHECK_EQ_INT(start(&o, m->port, "POST", "/s", NULL, 0, SL_STR("")), 0);
    /* Wait for the pause, give curl time to (wrongly) push more, resume. */
    uv_timer_t resume;
    uv_timer_init(&loop, &resume);
    to_resume = &o;
    for (uint64_t end = uv_hrtime() + 5000000000ull; o.paused_bytes.len == 0 && uv_hrtime() < end;)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK(o.paused_bytes.len > 0);
    uint64_t t0 = uv_hrtime();
    while ((uv_hrtime() - t0) < 100000000ull)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK_EQ_INT(o.body.len, 0); /* nothing consumed while paused */
    CHECK_EQ_INT(o.dones, 0);
    uv_timer_start(&resume, on_resume_timer, 1, 0);
    CHECK(drive(cur_done, 5000));
    CHECK_EQ_INT(o.code, 0);
    CHECK_EQ_MEM(o.body.base, o.body.len, "data: 0123456789\n\n\n\n");
    CHECK(o.body.len >= o.paused_bytes.len &&
          memcmp(o.body.base, o.paused_bytes.base, o.paused_bytes.len) == 0);
    uv_close((uv_handle_t *)&resume, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
    owner_free(&o);
    mock_stop(m);
}

static mock_t *cur_mock;

static int mock_saw_close(void)
{
    return atomic_load(&cur_mock->peer_closed);
}

static int cur_has_data(void)
{
    return cur->datas > 0;
}

static void abort_case(int from_callback)
{
    /* A long answer: the head and a first piece, then the supplier waits. */
    mock_t *m = mock_start("HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nfirst");
    CHECK(m != NULL);
    if (!m)
        return;
    m->hold = 1;
    owner_t o;
    owner_init(&o);
    o.abort_in_data = from_callback;
    cur = &o;
    cur_mock = m;
    CHECK_EQ_INT(start(&o, m->port, "POST", "/long", NULL, 0, SL_STR("x")), 0);
    CHECK(drive(cur_has_data, 5000));
    if (!from_callback) {
        o.aborted = 1;
        sl_transfer_abort(o.t);
    }
    CHECK(drive(mock_saw_close, 3000)); /* the supplier sees the connection go */
    /* Give curl every chance to call back; nothing may come. */
    uint64_t t0 = uv_hrtime();
    while ((uv_hrtime() - t0) < 200000000ull)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK_EQ_INT(o.after_abort, 0);
    CHECK_EQ_INT(o.dones, 0);
    CHECK_EQ_INT(sl_upstream_active(up), 0);
    owner_free(&o);
    mock_stop(m);
}

static void test_abort_mid_transfer(void)
{
    abort_case(0);
}

static void test_abort_from_on_data(void)
{
    abort_case(1);
}

static void test_connect_refused(void)
{
    int port = th_free_port(); /* nothing listens there */
    owner_t o;
    owner_init(&o);
    cur = &o;
    CHECK_EQ_INT(start(&o, port, "POST", "/", NULL, 0, SL_STR("x")), 0);
    CHECK(drive(cur_done, 5000));
    CHECK_EQ_INT(o.dones, 1);
    CHECK_EQ_INT(o.code, CURLE_COULDNT_CONNECT);
    CHECK_EQ_INT(o.heads, 0);
    CHECK_EQ_INT(o.datas, 0);
    CHECK(o.errbuf[0] != '\0'); /* something to put in the log */
    owner_free(&o);
}

static void check_origin(const char *url, const char *want)
{
    char *got = tls_origin(url);
    if (!want) {
        CHECK(got == NULL);
        if (got)
            fprintf(stderr, "  %s -> %s, want NULL\n", url, got);
    } else {
        CHECK(got != NULL);
        if (got && strcmp(got, want) != 0)
            TH_FAIL("%s -> %s, want %s\n", url, got, want);
    }
    free(got);
}

static void test_tls_origin(void)
{
    check_origin("https://API.Example.com/v1/chat/completions", "api.example.com:443");
    check_origin("HTTPS://api.example.com:8443/v1?x=1", "api.example.com:8443");
    check_origin("https://127.0.0.1:9/", "127.0.0.1:9");
    check_origin("https://[::1]:4443/v1", "[::1]:4443");
    check_origin("https://user:pw@h.example/x", "h.example:443");
    /* Plain HTTP never waits, so it has no origin in this sense. */
    check_origin("http://api.example.com/v1", NULL);
    check_origin("http://127.0.0.1:443/v1", NULL);
    check_origin("api.example.com/v1", NULL);
    check_origin("https://", NULL);
    check_origin("", NULL);
}

static void test_h2_table(void)
{
    sl_upstream_t *u;
    CHECK_EQ_INT(sl_upstream_new(&u, &loop), 0);
    CHECK(!h2_known(u, "a.example:443"));
    CHECK(!h2_known(u, NULL));
    h2_remember(u, "a.example:443");
    h2_remember(u, "a.example:443"); /* once only */
    h2_remember(u, "b.example:443");
    CHECK_EQ_INT(u->nh2, 2);
    CHECK(h2_known(u, "a.example:443"));
    CHECK(!h2_known(u, "a.example:8443"));
    h2_forget(u, "a.example:443");
    h2_forget(u, "never.example:443"); /* no-op */
    CHECK(!h2_known(u, "a.example:443"));
    CHECK(h2_known(u, "b.example:443"));
    CHECK_EQ_INT(u->nh2, 1);
    /* Bounded: past H2_ORIGINS the oldest is forgotten. */
    char name[64];
    for (int i = 0; i < H2_ORIGINS; i++) {
        snprintf(name, sizeof name, "h%d.example:443", i);
        h2_remember(u, name);
    }
    CHECK_EQ_INT(u->nh2, H2_ORIGINS);
    CHECK(!h2_known(u, "b.example:443"));
    CHECK(h2_known(u, "h0.example:443"));
    snprintf(name, sizeof name, "h%d.example:443", H2_ORIGINS - 1);
    CHECK(h2_known(u, name));
    sl_upstream_free(u); /* frees the table (ASan would tell) */
    for (int i = 0; i < 3; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
}

/* Starts a GET to a mock that answers 200 over HTTP/1.1, once the mock's
 * host:port (written to name) is in the h2 table. NULL if no mock. */
static mock_t *get_remembered_origin(owner_t *o, char name[static 64])
{
    mock_t *m = mock_start("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    CHECK(m != NULL);
    if (!m)
        return NULL;
    snprintf(name, 64, "127.0.0.1:%d", m->port);
    h2_remember(up, name);
    owner_init(o);
    cur = o;
    CHECK_EQ_INT(start(o, m->port, "GET", "/", NULL, 0, SL_STR("")), 0);
    return m;
}

static void test_plain_http_never_waits(void)
{
    /* Even with the same host:port in the table, http:// does not wait. */
    owner_t o;
    char name[64];
    mock_t *m = get_remembered_origin(&o, name);
    if (!m)
        return;
    CHECK(o.t->origin == NULL);
    CHECK_EQ_INT(o.t->pipewait, 0);
    CHECK(drive(cur_done, 5000));
    CHECK_EQ_INT(o.code, 0);
    h2_forget(up, name);
    CHECK_EQ_INT(up->nh2, 0);
    owner_free(&o);
    mock_stop(m);
}

static void test_http1_answer_makes_origin_unknown(void)
{
    /* As if an https origin known for h2 now answered over HTTP/1.1 (this
     * mock has no TLS: the transfer is given the origin by hand). */
    owner_t o;
    char name[64];
    mock_t *m = get_remembered_origin(&o, name);
    if (!m)
        return;
    o.t->origin = strdup(name);
    CHECK(drive(cur_done, 5000));
    CHECK_EQ_INT(o.code, 0);
    CHECK(!h2_known(up, name));
    CHECK_EQ_INT(up->nh2, 0);
    owner_free(&o);
    mock_stop(m);
}

static void test_known_h2_waits_and_connect_failure_forgets(void)
{
    int port = th_free_port(); /* nothing listens there */
    char name[64], url[96];
    snprintf(name, sizeof name, "127.0.0.1:%d", port);
    snprintf(url, sizeof url, "https://127.0.0.1:%d/v1", port);
    h2_remember(up, name);
    owner_t o;
    owner_init(&o);
    cur = &o;
    sl_transfer_req_t rq = {.url = url,
                            .method = "POST",
                            .body = SL_STR("x"),
                            .connect_timeout_ms = 2000,
                            .verify_tls = 1};
    CHECK_EQ_INT(sl_transfer_start(up, &rq, &cbs, &o, &o.t), 0);
    CHECK(o.t->origin && strcmp(o.t->origin, name) == 0);
    CHECK_EQ_INT(o.t->pipewait, 1);
    CHECK(drive(cur_done, 5000));
    CHECK_EQ_INT(o.code, CURLE_COULDNT_CONNECT);
    /* Down (or moved): later requests must not wait on its connections. */
    CHECK(!h2_known(up, name));
    owner_free(&o);

    owner_init(&o);
    cur = &o;
    CHECK_EQ_INT(sl_transfer_start(up, &rq, &cbs, &o, &o.t), 0);
    CHECK_EQ_INT(o.t->pipewait, 0);
    CHECK(drive(cur_done, 5000));
    CHECK_EQ_INT(up->nh2, 0);
    owner_free(&o);
}

static void test_no_body_and_interim_heads(void)
{
    mock_t *m = mock_start("HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n");
    CHECK(m != NULL);
    if (!m)
        return;
    owner_t o;
    owner_init(&o);
    cur = &o;
    CHECK_EQ_INT(start(&o, m->port, "DELETE", "/x", NULL, 0, SL_STR("")), 0);
    CHECK(drive(cur_done, 5000));
    CHECK_EQ_INT(o.heads, 1);
    CHECK_EQ_INT(o.status, 204);
    CHECK_STR_HAS(o.headers, "X-A: 1\n");
    CHECK_EQ_INT(o.datas, 0);
    CHECK_EQ_INT(o.code, 0);
    pthread_mutex_lock(&m->mu);
    CHECK(strncmp(m->last_req, "DELETE /x HTTP/1.1\r\n", 20) == 0);
    pthread_mutex_unlock(&m->mu);
    owner_free(&o);
    mock_stop(m);

    /* A 100 Continue before the answer is not the answer. */
    m = mock_start(
        "HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n"
        "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Length: 4\r\n\r\nslow");
    CHECK(m != NULL);
    if (!m)
        return;
    owner_init(&o);
    cur = &o;
    CHECK_EQ_INT(start(&o, m->port, "POST", "/x", NULL, 0, SL_STR("{}")), 0);
    CHECK(drive(cur_done, 5000));
    CHECK_EQ_INT(o.heads, 1);
    CHECK_EQ_INT(o.status, 429);
    CHECK_STR_HAS(o.headers, "Retry-After: 3\n");
    CHECK(strstr(o.headers, "X-Interim") == NULL);
    CHECK_EQ_MEM(o.body.base, o.body.len, "slow");
    CHECK_EQ_INT(o.code, 0);
    owner_free(&o);
    mock_stop(m);
}

/* One transfer against a supplier that closes after answering; its code. */
static int code_when_closed(const char *resp, owner_t *o)
{
    mock_t *m = mock_start(resp);
    CHECK(m != NULL);
    if (!m)
        return -1;
    m->close_after = 1;
    owner_init(o);
    cur = o;
    CHECK_EQ_INT(start(o, m->port, "POST", "/end", NULL, 0, SL_STR("{}")), 0);
    CHECK(drive(cur_done, 5000));
    mock_stop(m);
    return o->code;
}

static void test_how_answers_end(void)
{
    owner_t o;
    /* No length: the body ends with the connection, and is whole. */
    CHECK_EQ_INT(code_when_closed("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nto the end", &o), 0);
    CHECK_EQ_MEM(o.body.base, o.body.len, "to the end");
    owner_free(&o);
    /* Closed before the promised length: cut. */
    CHECK_EQ_INT(code_when_closed("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart", &o),
                 CURLE_PARTIAL_FILE);
    CHECK_EQ_MEM(o.body.base, o.body.len, "part");
    owner_free(&o);
    /* Closed before a byte of the answer. */
    CHECK_EQ_INT(code_when_closed(DROP, &o), CURLE_GOT_NOTHING);
    CHECK_EQ_INT(o.heads, 0);
    owner_free(&o);
    /* Not HTTP at all (curl says "Received HTTP/0.9": term.c reads both as
     * the upstream's protocol error). */
    int code = code_when_closed("SSH-2.0-OpenSSH_9.2\r\n\r\n", &o);
    CHECK_EQ_INT(code, use_curl ? CURLE_UNSUPPORTED_PROTOCOL : CURLE_WEIRD_SERVER_REPLY);
    CHECK_EQ_INT(o.heads, 0);
    owner_free(&o);
    /* Closed inside the head. */
    CHECK_EQ_INT(code_when_closed("HTTP/1.1 200 OK\r\nContent-Le", &o), CURLE_WEIRD_SERVER_REPLY);
    CHECK_EQ_INT(o.heads, 0);
    owner_free(&o);
}

static int plain_get(int port, owner_t *o)
{
    owner_init(o);
    cur = o;
    CHECK_EQ_INT(start(o, port, "GET", "/again", NULL, 0, SL_STR("")), 0);
    CHECK(drive(cur_done, 5000));
    return o->code;
}

/* A pooled connection the supplier closed while it was idle is not used;
 * one the supplier drops as the request arrives (it read the request and
 * closed without a byte: the race a keep-alive timeout makes) gets the
 * request again on a new connection, and the caller sees one answer. */
static void test_stale_pooled_connections(void)
{
    mock_t *m = mock_start("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    CHECK(m != NULL);
    if (!m)
        return;
    m->close_after = 1;
    owner_t o;
    for (int i = 0; i < 2; i++) {
        CHECK_EQ_INT(plain_get(m->port, &o), 0);
        CHECK_EQ_MEM(o.body.base, o.body.len, "ok");
        owner_free(&o);
        for (uint64_t t0 = uv_hrtime(); uv_hrtime() - t0 < 50000000ull;)
            uv_run(&loop, UV_RUN_ONCE); /* let the close arrive */
    }
    CHECK_EQ_INT(atomic_load(&m->accepted), 2);
    mock_stop(m);

    m = mock_start("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    CHECK(m != NULL);
    if (!m)
        return;
    m->responses[1] = DROP; /* the second request on the first connection */
    m->responses[2] = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh";
    CHECK_EQ_INT(plain_get(m->port, &o), 0);
    owner_free(&o);
    CHECK_EQ_INT(plain_get(m->port, &o), 0);
    CHECK_EQ_MEM(o.body.base, o.body.len, "fresh");
    CHECK_EQ_INT(o.heads, 1);
    CHECK_EQ_INT(o.dones, 1);
    owner_free(&o);
    CHECK_EQ_INT(atomic_load(&m->served), 3);
    CHECK_EQ_INT(atomic_load(&m->accepted), 2);
    mock_stop(m);
}

static void count_open(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h)) {
        (*(int *)arg)++;
        fprintf(stderr, "  open handle: %s\n", uv_handle_type_name(uv_handle_get_type(h)));
    }
}

static size_t figure(atomic_size_t *v)
{
    return atomic_load(v);
}

/* The figures a worker publishes for /_sluice/health follow its pool:
 * connections opened, reused and left idle, transfers in flight and paused,
 * handles pooled; a refused connect opens and closes a socket; freeing the
 * upstream closes everything. On a fresh upstream, so that counts are
 * absolute. */
static void test_stats_follow_the_pool(void)
{
    sl_upstream_t *saved = up, *fresh = NULL;
    sl_upstream_stats_t st = {0};
    CHECK_EQ_INT(new_upstream(&fresh), 0);
    if (!fresh)
        return;
    sl_upstream_set_stats(fresh, &st);
    up = fresh;
    mock_t *m = mock_start("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    mock_t *slow = mock_start("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                              "Content-Length: 20\r\n\r\ndata: 0123456789\n\n\n\n");
    CHECK(m && slow);
    if (!m || !slow)
        goto out;
    for (int i = 0; i < 2; i++) {
        owner_t o;
        owner_init(&o);
        cur = &o;
        CHECK_EQ_INT(start(&o, m->port, "GET", "/r", NULL, 0, SL_STR("")), 0);
        CHECK_EQ_INT(figure(&st.transfers), 1);
        CHECK(drive(cur_done, 5000));
        owner_free(&o);
    }
    CHECK_EQ_INT(figure(&st.transfers), 0);
    CHECK_EQ_INT(figure(&st.connections), 1); /* reused, not reopened */
    CHECK_EQ_INT(figure(&st.idle), 1);
    CHECK_EQ_INT(atomic_load(&st.connects_total), 1);
    CHECK_EQ_INT(figure(&st.handles_pooled), use_curl ? 1 : 0); /* the lean client has no handles */

    owner_t o;
    owner_init(&o);
    o.pause_once = 1;
    cur = &o;
    CHECK_EQ_INT(start(&o, slow->port, "POST", "/s", NULL, 0, SL_STR("")), 0);
    CHECK_EQ_INT(figure(&st.handles_pooled), 0); /* taken from the pool */
    for (uint64_t end = uv_hrtime() + 5000000000ull; o.paused_bytes.len == 0 && uv_hrtime() < end;)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK_EQ_INT(figure(&st.paused), 1);
    CHECK_EQ_INT(figure(&st.transfers), 1);
    CHECK_EQ_INT(figure(&st.connections), 2);
    sl_transfer_resume(o.t);
    CHECK_EQ_INT(figure(&st.paused), 0);
    CHECK(drive(cur_done, 5000));
    owner_free(&o);
    CHECK_EQ_INT(figure(&st.transfers), 0);
    CHECK_EQ_INT(figure(&st.idle), 2);

    owner_init(&o);
    cur = &o;
    CHECK_EQ_INT(start(&o, th_free_port(), "POST", "/", NULL, 0, SL_STR("x")), 0);
    CHECK(drive(cur_done, 5000));
    CHECK_EQ_INT(o.code, CURLE_COULDNT_CONNECT);
    owner_free(&o);
    CHECK_EQ_INT(atomic_load(&st.connects_total), 3);
    CHECK_EQ_INT(figure(&st.connections), 2); /* the refused one is closed again */

out:
    up = saved;
    sl_upstream_free(fresh);
    for (int i = 0; i < 5; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    CHECK_EQ_INT(figure(&st.connections), 0);
    CHECK_EQ_INT(figure(&st.idle), 0);
    CHECK_EQ_INT(figure(&st.handles_pooled), 0);
    if (m)
        mock_stop(m);
    if (slow)
        mock_stop(slow);
}

static void test_free_leaves_no_handles(void)
{
    /* A pooled connection is open from the cases above; freeing the
     * upstream must release its poll handle so the worker's loop can close. */
    mock_t *m = mock_start("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    CHECK(m != NULL);
    if (!m)
        return;
    owner_t o;
    owner_init(&o);
    cur = &o;
    CHECK_EQ_INT(start(&o, m->port, "GET", "/", NULL, 0, SL_STR("")), 0);
    CHECK(drive(cur_done, 5000));
    owner_free(&o);
    sl_upstream_free(up);
    up = NULL;
    uv_close((uv_handle_t *)&ticker, NULL);
    for (int i = 0; i < 5; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    int open = 0;
    uv_walk(&loop, count_open, &open);
    CHECK_EQ_INT(open, 0);
    mock_stop(m);
}

/* Which client takes a URL: plain http:// goes to the lean client, unless a
 * proxy in the environment applies (loopback is never proxied), the URL
 * carries credentials, or curl is asked for; everything else is curl's.
 * Each transfer is aborted before the loop runs, so nothing is sent. */
static int lean_for(sl_upstream_t *u, const char *url)
{
    owner_t o;
    owner_init(&o);
    sl_transfer_req_t rq = {.url = url, .method = "POST", .body = SL_STR("x"), .verify_tls = 1};
    int lean = -1;
    if (sl_transfer_start(u, &rq, &cbs, &o, &o.t) == 0) {
        lean = o.t->lean;
        sl_transfer_abort(o.t);
    }
    owner_free(&o);
    return lean;
}

static void test_which_client_takes_a_url(void)
{
    sl_upstream_t *u = NULL;
    CHECK_EQ_INT(sl_upstream_new(&u, &loop), 0);
    CHECK_EQ_INT(lean_for(u, "http://127.0.0.1:9/v1"), 1);
    CHECK_EQ_INT(lean_for(u, "HTTP://Example.invalid/v1"), 1);
    CHECK_EQ_INT(lean_for(u, "http://[::1]:9/v1"), 1);
    CHECK_EQ_INT(lean_for(u, "https://127.0.0.1:9/v1"), 0);
    CHECK_EQ_INT(lean_for(u, "http://user:secret@127.0.0.1:9/v1"), 0);
    sl_upstream_use_curl(u, 1);
    CHECK_EQ_INT(lean_for(u, "http://127.0.0.1:9/v1"), 0);
    sl_upstream_free(u);

    setenv("http_proxy", "http://127.0.0.1:9", 1);
    CHECK_EQ_INT(sl_upstream_new(&u, &loop), 0);
    unsetenv("http_proxy");
    CHECK_EQ_INT(lean_for(u, "http://example.invalid/v1"), 0); /* through the proxy: curl's */
    CHECK_EQ_INT(lean_for(u, "http://localhost:9/v1"), 1);      /* loopback is never proxied */
    CHECK_EQ_INT(lean_for(u, "http://127.0.0.1:9/v1"), 1);
    sl_upstream_free(u);
    for (int i = 0; i < 5; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
}

/* Every case on one client; the HTTP/2 table's cases, and which client takes a URL, run once (on the curl pass).
 * Ends with the upstream freed and the loop's handles closed. */
static void run_cases(int curl)
{
    use_curl = curl;
    fprintf(stderr, "-- on %s\n", curl ? "curl" : "the lean HTTP/1.1 client");
    uv_timer_init(&loop, &ticker);
    uv_timer_start(&ticker, on_tick, 5, 5);
    if (new_upstream(&up) != 0) {
        fprintf(stderr, "sl_upstream_new failed\n");
        exit(1);
    }
    RUN(test_head_and_body_delivered);
    RUN(test_connection_reused);
    RUN(test_large_body_sent_whole);
    RUN(test_pause_then_resume_redelivers);
    RUN(test_abort_mid_transfer);
    RUN(test_abort_from_on_data);
    RUN(test_connect_refused);
    RUN(test_no_body_and_interim_heads);
    RUN(test_how_answers_end);
    RUN(test_stale_pooled_connections);
    if (curl) {
        RUN(test_which_client_takes_a_url);
        RUN(test_tls_origin);
        RUN(test_h2_table);
        RUN(test_plain_http_never_waits);
        RUN(test_http1_answer_makes_origin_unknown);
        RUN(test_known_h2_waits_and_connect_failure_forgets);
    }
    RUN(test_stats_follow_the_pool);
    RUN(test_free_leaves_no_handles);
}

int main(void)
{
    th_watchdog(120);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    uv_loop_init(&loop);
    run_cases(0);
    run_cases(1);
    for (int i = 0; i < 5; i++) /* never DEFAULT: a leaked poll handle would block it */
        uv_run(&loop, UV_RUN_NOWAIT);
    if (uv_loop_close(&loop) != 0) {
        fprintf(stderr, "FAIL: handles left open on the loop\n");
        th_failed++;
    }
    curl_global_cleanup();
    return TEST_SUMMARY();
}
