/*
 * test_exchange.c — one proxied request's state machine (core/exchange.h),
 * driven through its seams: a real server on loopback carries a real
 * client's request, a real Lua host (the library in lua/, with a small
 * config) plans it, and a fake transfer stands in for curl, so each case
 * decides exactly which head, bytes and end the "upstream" delivers, and
 * when. The outcome the exchange hands its owner is checked field by field,
 * and what the client received byte by byte.
 *
 * Cases: a passthrough stream cut in the middle of an event reaches the
 * client on the last event boundary, followed by the protocol's failure
 * tail, and its outcome is partial; a retry before anything was committed
 * throws the first attempt's state away (half an event held, the framer's
 * state, the kept events), so the client gets the second attempt's stream
 * byte for byte and the outcome is that attempt's, with both attempts in
 * the log, and the retried attempt runs its own first-byte clock; a
 * client that leaves after the terminal event was delivered had
 * the whole answer: COMPLETE, and the transfer is aborted; the client has
 * the whole answer, last chunk included, before the outcome is reported
 * (the record and the log do not delay it); a client that
 * leaves during the backoff before a retry ends the exchange on its own
 * timer (no attempt starts).
 *
 * The loop runs on this thread; the client socket is read without
 * blocking between loop turns. A watchdog turns a hang into a failure.
 */
#define _GNU_SOURCE
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "error.h"
#include "exchange.h"
#include "luahost.h"
#include "metrics.h"
#include "server.h"
#include "test_helpers.h"
#include "upstream.h"

static uv_loop_t loop;
static sl_upstream_t *up;
static sl_luahost_t *host;
static sl_server_t *server;
static int port;
static char tmpdir[] = "/tmp/sluice-test-exchange-XXXXXX";

/* ---- the fake transfer ---- */

typedef struct {
    sl_transfer_cbs_t cbs;
    void *ud;
    char url[256];
    int aborted, resumed;
} fake_t;

static fake_t fakes[4];
static int nfakes;

static int fake_start(sl_upstream_t *u, const sl_transfer_req_t *req, const sl_transfer_cbs_t *cbs,
                      void *ud, sl_transfer_t **out)
{
    (void)u;
    if (nfakes == 4)
        return SL_ENOMEM;
    fake_t *f = &fakes[nfakes++];
    memset(f, 0, sizeof *f);
    f->cbs = *cbs;
    f->ud = ud;
    snprintf(f->url, sizeof f->url, "%s", req->url);
    *out = (sl_transfer_t *)f;
    return 0;
}

static void fake_resume(sl_transfer_t *t)
{
    ((fake_t *)t)->resumed++;
}

static void fake_abort(sl_transfer_t *t)
{
    ((fake_t *)t)->aborted++;
}

static int fake_connected(const sl_transfer_t *t)
{
    (void)t;
    return 1;
}

static const sl_transfer_ops_t fake_ops = {fake_start, fake_resume, fake_abort, fake_connected};

static const sl_header_t sse_head[] = {{SL_STR("content-type"), SL_STR("text/event-stream")}};

static void up_head(fake_t *f, int status)
{
    f->cbs.on_head(f->ud, status, sse_head, 1);
}

static void up_data(fake_t *f, const char *s)
{
    CHECK_EQ_INT(f->cbs.on_data(f->ud, s, strlen(s)), 0);
}

static void up_done(fake_t *f, int curl_code)
{
    f->cbs.on_done(f->ud, curl_code, "");
}

/* ---- the outcome, copied out of the owner's callback ---- */

#define RESP_PEEK 4096

static struct {
    int ended;
    sl_term_reason_t reason;
    int partial, expected;
    int status, upstream_status, attempts;
    int64_t input_tokens, output_tokens, bytes_out;
    char supplier[64];
    size_t nlog;
    int log_status[4];
    char log_error[4][64];
    /* what the client's socket already held when the exchange reported its
     * outcome (peek_fd >= 0: the case wants to know) */
    char client_had[RESP_PEEK];
} got;
static int peek_fd = -1;

static void on_end(void *owner, sl_exchange_t *ex, const sl_outcome_t *o)
{
    (void)owner;
    (void)ex;
    got.ended++;
    got.reason = o->end.reason;
    got.partial = o->end.partial;
    got.expected = o->end.expected;
    got.status = o->status;
    got.upstream_status = o->upstream_status;
    got.attempts = o->attempts;
    got.input_tokens = o->input_tokens;
    got.output_tokens = o->output_tokens;
    got.bytes_out = o->bytes_out;
    snprintf(got.supplier, sizeof got.supplier, "%s", o->names.supplier ? o->names.supplier : "");
    got.nlog = o->nattempt_log;
    for (size_t i = 0; i < o->nattempt_log && i < 4; i++) {
        got.log_status[i] = o->attempt_log[i].status;
        snprintf(got.log_error[i], sizeof got.log_error[i], "%s",
                 o->attempt_log[i].error ? o->attempt_log[i].error : "(none)");
    }
    if (peek_fd >= 0) {
        ssize_t r = recv(peek_fd, got.client_had, sizeof got.client_had - 1, MSG_PEEK | MSG_DONTWAIT);
        got.client_had[r > 0 ? r : 0] = '\0';
    }
}

/* What the worker does for a proxied request, with the fake upstream. */
static void on_request(sl_request_t *req, void *arg)
{
    (void)arg;
    sl_exchange_env_t env = {
        .loop = &loop,
        .host = host,
        .upstream = up,
        .transfer = &fake_ops,
        .watch_usage = 1,
        .on_end = on_end,
    };
    sl_exchange_t *ex = sl_exchange_new(&env, req);
    if (!ex) {
        sl_conn_close(req->conn, 0);
        return;
    }
    sl_exchange_run(ex);
}

/* ---- driving the loop and the client ---- */

static void spin(int ms)
{
    for (int i = 0; i < ms; i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
}

static int drive_until(int (*cond)(void), int timeout_ms)
{
    for (int i = 0; i < timeout_ms && !cond(); i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        if (!cond())
            usleep(1000);
    }
    return cond();
}

static int one_fake(void)
{
    return nfakes >= 1;
}

static int two_fakes(void)
{
    return nfakes >= 2;
}

static int ended(void)
{
    return got.ended > 0;
}

/* Reads what the client was sent, turning the loop in between, until
 * `until` appears, the server closes, or timeout_ms pass. */
static size_t client_read(int fd, char *buf, size_t cap, const char *until, int timeout_ms)
{
    size_t n = 0;
    buf[0] = '\0';
    for (int i = 0; i < timeout_ms && n + 1 < cap; i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        ssize_t r = recv(fd, buf + n, cap - 1 - n, MSG_DONTWAIT);
        if (r == 0)
            break;
        if (r > 0) {
            n += (size_t)r;
            buf[n] = '\0';
            if (until && strstr(buf, until))
                break;
            continue;
        }
        usleep(1000);
    }
    return n;
}

/* The body of a chunked response, decoded into out (NUL-terminated). */
static void dechunk(const char *resp, char *out, size_t cap)
{
    size_t n = 0;
    const char *p = strstr(resp, "\r\n\r\n");
    out[0] = '\0';
    if (!p)
        return;
    p += 4;
    for (;;) {
        char *end;
        unsigned long len = strtoul(p, &end, 16);
        if (end == p || strncmp(end, "\r\n", 2) != 0 || len == 0)
            break;
        p = end + 2;
        if (strlen(p) < len + 2 || n + len >= cap)
            break;
        memcpy(out + n, p, len);
        n += len;
        p += len + 2;
    }
    out[n] = '\0';
}

static const char request_body[] = "{\"model\":\"claude-test\",\"max_tokens\":16,\"stream\":true,"
                                   "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";

/* A client that sent an Anthropic streaming request; -1 on failure. */
static int client_send(void)
{
    int fd = th_connect(port, 2000);
    if (fd < 0)
        return -1;
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     "content-type: application/json\r\nanthropic-version: 2023-06-01\r\n"
                     "x-api-key: sk-client\r\ncontent-length: %zu\r\n\r\n%s",
                     sizeof request_body - 1, request_body);
    if (th_send_all(fd, req, (size_t)n) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

#define RESP_MAX 16384

/* Reads the client's response until its chunked body ended (or 3 s pass),
 * closes the client, and decodes the body: the response in resp, the body
 * in body, each RESP_MAX bytes. */
static void client_finish(int fd, char *resp, char *body)
{
    client_read(fd, resp, RESP_MAX, "\r\n0\r\n\r\n", 3000);
    close(fd);
    dechunk(resp, body, RESP_MAX);
}

/* sluice_active_streams, read back from the metrics text. */
static int active_streams(void)
{
    sl_buf_t b;
    sl_buf_init(&b, 0);
    sl_metrics_render(&b);
    const char *p = sl_buf_cstr(&b) ? strstr(b.base, "\nsluice_active_streams ") : NULL;
    int n = p ? atoi(p + strlen("\nsluice_active_streams ")) : -1;
    sl_buf_free(&b);
    return n;
}

static void reset_case(void)
{
    memset(&got, 0, sizeof got);
    memset(fakes, 0, sizeof fakes);
    nfakes = 0;
}

/* A new case: a client that sent its request, and the exchange's first
 * transfer started. The client's socket, or -1 (the case has failed). */
static int begin_case(void)
{
    reset_case();
    int fd = client_send();
    if (fd >= 0 && drive_until(one_fake, 3000))
        return fd;
    CHECK(!"the exchange started no transfer");
    if (fd >= 0)
        close(fd);
    return -1;
}

/* The first attempt gets a head and half an event — held, not sent, so
 * nothing is committed — then its connection resets: a retry follows. */
static void first_attempt_resets(void)
{
    up_head(&fakes[0], 200);
    up_data(&fakes[0], "event: message_start\ndata: {\"type\":\"mess");
    up_done(&fakes[0], CURLE_RECV_ERROR);
    CHECK_EQ_INT(got.ended, 0);
}

/* ---- the stream pieces ---- */

#define EV_START                                                                                   \
    "event: message_start\n"                                                                       \
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\","        \
    "\"role\":\"assistant\",\"model\":\"claude-test\",\"content\":[],\"stop_reason\":null,"        \
    "\"usage\":{\"input_tokens\":11,\"output_tokens\":1}}}\n\n"
#define EV_BLOCK_START                                                                             \
    "event: content_block_start\n"                                                                 \
    "data: {\"type\":\"content_block_start\",\"index\":0,"                                         \
    "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n"
#define EV_DELTA                                                                                   \
    "event: content_block_delta\n"                                                                 \
    "data: {\"type\":\"content_block_delta\",\"index\":0,"                                         \
    "\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n"
#define EV_REST                                                                                    \
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n"           \
    "event: message_delta\n"                                                                       \
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},"                  \
    "\"usage\":{\"output_tokens\":7}}\n\n"                                                         \
    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
#define WHOLE_STREAM EV_START EV_BLOCK_START EV_DELTA EV_REST

/* ---- cases ---- */

static void test_stream_cut_mid_event_ends_with_the_tail(void)
{
    int fd = begin_case();
    if (fd < 0)
        return;
    CHECK_STR_HAS(fakes[0].url, "/v1/messages");
    up_head(&fakes[0], 200);
    /* Two whole events, then the upstream dies inside the third. */
    up_data(&fakes[0], EV_START EV_BLOCK_START "event: content_block_delta\n"
                                               "data: {\"type\":\"content_block_delta\",\"ind");
    up_done(&fakes[0], CURLE_OK); /* closed early: no message_stop */
    CHECK(ended());

    char resp[RESP_MAX], body[RESP_MAX];
    client_finish(fd, resp, body);
    CHECK_STR_HAS(resp, "HTTP/1.1 200");
    /* The client got the whole events, never the half one, then the tail. */
    CHECK(strncmp(body, EV_START EV_BLOCK_START, strlen(EV_START EV_BLOCK_START)) == 0);
    const char *tail = body + strlen(EV_START EV_BLOCK_START);
    CHECK_STR_HAS(tail, "event: error");
    CHECK_STR_HAS(tail, "event: message_stop");
    CHECK(strstr(tail, "event: content_block_delta") == NULL);

    CHECK_EQ_INT(got.ended, 1);
    CHECK_EQ_INT(got.reason, SL_TERM_UPSTREAM_EOF_EARLY);
    CHECK_EQ_INT(got.partial, 1);
    CHECK_EQ_INT(got.expected, 0);
    CHECK_EQ_INT(got.status, 200);
    CHECK_EQ_INT(got.upstream_status, 200);
    CHECK_EQ_INT(got.attempts, 1);
    CHECK_EQ_INT(got.nlog, 1);
    CHECK_EQ_INT(got.log_status[0], 200);
    CHECK_EQ_MEM(got.log_error[0], strlen(got.log_error[0]), "UPSTREAM_EOF_EARLY");
    CHECK_EQ_MEM(got.supplier, strlen(got.supplier), "an");
    CHECK_EQ_INT(got.input_tokens, 11); /* from the kept message_start */
    CHECK_EQ_INT(fakes[0].aborted, 0);  /* it ended by itself */
    CHECK_EQ_INT(active_streams(), 0);
}

static void test_retry_before_commit_starts_clean(void)
{
    int fd = begin_case();
    if (fd < 0)
        return;
    first_attempt_resets();
    /* The retry waits on its own timer, then plans and starts again. */
    if (!drive_until(two_fakes, 3000)) {
        CHECK(!"no second attempt");
        close(fd);
        spin(50);
        return;
    }
    up_head(&fakes[1], 200);
    up_data(&fakes[1], WHOLE_STREAM);
    up_done(&fakes[1], CURLE_OK);
    CHECK(ended());

    char resp[RESP_MAX], body[RESP_MAX];
    client_finish(fd, resp, body);
    CHECK_STR_HAS(resp, "HTTP/1.1 200");
    /* Byte for byte the second attempt's stream: nothing of the first. */
    CHECK_EQ_MEM(body, strlen(body), WHOLE_STREAM);

    CHECK_EQ_INT(got.reason, SL_TERM_COMPLETE);
    CHECK_EQ_INT(got.partial, 0);
    CHECK_EQ_INT(got.status, 200);
    CHECK_EQ_INT(got.upstream_status, 200);
    CHECK_EQ_INT(got.attempts, 2);
    CHECK_EQ_INT(got.nlog, 2);
    CHECK_EQ_INT(got.log_status[0], 0); /* a transport failure: no status */
    CHECK_EQ_MEM(got.log_error[0], strlen(got.log_error[0]), "UPSTREAM_RESET");
    CHECK_EQ_INT(got.log_status[1], 200);
    CHECK_EQ_MEM(got.log_error[1], strlen(got.log_error[1]), "(none)");
    /* Usage from the second attempt's events only. */
    CHECK_EQ_INT(got.input_tokens, 11);
    CHECK_EQ_INT(got.output_tokens, 7);
    /* The abandoned attempt's stream was counted out when it was dropped. */
    CHECK_EQ_INT(active_streams(), 0);
}

/* The second attempt starts with its own first-byte clock: the first one
 * had its first byte, the second sends nothing and times out as a first
 * byte timeout (504), not as an idle upstream. */
static void test_retry_resets_the_first_byte_clock(void)
{
    int fd = begin_case();
    if (fd < 0)
        return;
    first_attempt_resets();
    CHECK(drive_until(two_fakes, 3000));
    CHECK(drive_until(ended, 5000)); /* first_byte is 0.5 s */
    char resp[4096];
    client_read(fd, resp, sizeof resp, "}}", 3000);
    close(fd);
    CHECK_STR_HAS(resp, "HTTP/1.1 504");
    CHECK_EQ_INT(got.reason, SL_TERM_UPSTREAM_TIMEOUT_FIRST_BYTE);
    CHECK_EQ_INT(got.status, 504);
    CHECK_EQ_INT(got.attempts, 2);
    CHECK_EQ_INT(fakes[1].aborted, 1);
    CHECK_EQ_INT(active_streams(), 0);
}

static void test_client_gone_after_terminal_is_complete(void)
{
    int fd = begin_case();
    if (fd < 0)
        return;
    up_head(&fakes[0], 200);
    up_data(&fakes[0], WHOLE_STREAM); /* delivered, terminal event included */
    char resp[16384];
    client_read(fd, resp, sizeof resp, "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
                3000);
    CHECK_STR_HAS(resp, "event: message_stop");
    /* The client has what it needs and leaves before the upstream ends. */
    close(fd);
    CHECK(drive_until(ended, 3000));
    CHECK_EQ_INT(got.reason, SL_TERM_COMPLETE);
    CHECK_EQ_INT(got.partial, 0);
    CHECK_EQ_INT(got.status, 200);
    CHECK(got.bytes_out > (int64_t)strlen(WHOLE_STREAM));
    CHECK_EQ_INT(fakes[0].aborted, 1); /* the transfer no one reads is stopped */
    CHECK_EQ_INT(active_streams(), 0);
}

/* The record and the log are made after the client has its answer, not
 * before: when the exchange reports its outcome, the client's socket
 * already holds every event and the chunked body's last chunk. */
static void test_client_has_the_answer_before_the_report(void)
{
    int fd = begin_case();
    if (fd < 0)
        return;
    peek_fd = fd;
    up_head(&fakes[0], 200);
    up_data(&fakes[0], WHOLE_STREAM); /* in one turn of the loop, with the end */
    up_done(&fakes[0], CURLE_OK);
    peek_fd = -1;
    CHECK_EQ_INT(got.ended, 1);
    CHECK_EQ_INT(got.reason, SL_TERM_COMPLETE);
    CHECK_STR_HAS(got.client_had, "HTTP/1.1 200");
    CHECK_STR_HAS(got.client_had, "event: message_stop\ndata: {\"type\":\"message_stop\"}");
    CHECK_STR_HAS(got.client_had, "\r\n0\r\n\r\n");
    char resp[RESP_MAX], body[RESP_MAX];
    client_finish(fd, resp, body);
    CHECK_EQ_STR(body, WHOLE_STREAM);
}

static void test_client_gone_before_terminal_is_client_abort(void)
{
    int fd = begin_case();
    if (fd < 0)
        return;
    up_head(&fakes[0], 200);
    up_data(&fakes[0], EV_START EV_BLOCK_START);
    char resp[16384];
    client_read(fd, resp, sizeof resp, "event: content_block_start", 3000);
    close(fd);
    CHECK(drive_until(ended, 3000));
    CHECK_EQ_INT(got.reason, SL_TERM_CLIENT_ABORT);
    CHECK_EQ_INT(got.partial, 1);
    CHECK_EQ_INT(got.expected, 1);
    CHECK_EQ_INT(fakes[0].aborted, 1);
}

static void test_client_gone_during_backoff(void)
{
    int fd = begin_case();
    if (fd < 0)
        return;
    /* 429 with Retry-After: 1 s of backoff, during which the client leaves. */
    static const sl_header_t h429[] = {{SL_STR("content-type"), SL_STR("application/json")},
                                       {SL_STR("retry-after"), SL_STR("1")}};
    fakes[0].cbs.on_head(fakes[0].ud, 429, h429, 2);
    CHECK_EQ_INT(got.ended, 0);
    close(fd);
    CHECK(drive_until(ended, 3000));
    CHECK_EQ_INT(nfakes, 1); /* the backoff timer was stopped: no second attempt */
    spin(1200);
    CHECK_EQ_INT(nfakes, 1);
    CHECK_EQ_INT(got.reason, SL_TERM_CLIENT_ABORT);
    CHECK_EQ_INT(got.attempts, 1);
    CHECK_EQ_INT(got.log_status[0], 429);
}

/* ---- set-up ---- */

/* The config names a history (so the log hook reports usage) that nothing
 * opens: records are the owner's business, not the exchange's. */
static const char config_text[] =
    "return {\n"
    "  listen = { \"127.0.0.1:7070\" },\n"
    "  workers = 1,\n"
    "  history = { path = \"/nonexistent/history.db\" },\n"
    "  log = { access = \"off\" },\n"
    "  retry = { attempts = 2, base = 0, max = 2 },\n"
    "  timeouts = { connect = 10, first_byte = 0.5, idle = 300, total = 3600 },\n"
    "  suppliers = {\n"
    "    an = { protocol = \"anthropic\", base_url = \"http://127.0.0.1:9\",\n"
    "           auth = { type = \"passthrough\" } },\n"
    "  },\n"
    "  routes = { claude = { { match = \"*\", supplier = \"an\" } } },\n"
    "}\n";

static int setup(void)
{
    if (!mkdtemp(tmpdir))
        return -1;
    char path[256], err[2048];
    snprintf(path, sizeof path, "%s/sluice.lua", tmpdir);
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fputs(config_text, f);
    fclose(f);
    uv_loop_init(&loop);
    if (sl_upstream_new(&up, &loop) != 0)
        return -1;
    sl_luahost_opts_t o = {path, SLUICE_SOURCE_DIR "/lua", 1, &loop, up};
    if (sl_luahost_new(&host, &o, err, sizeof err) != 0) {
        fprintf(stderr, "host: %s\n", err);
        return -1;
    }
    sl_server_limits_t limits = {
        .max_header = 64 * 1024, .max_headers_count = 100, .max_body = 1 << 20};
    for (int i = 0; i < 20; i++) {
        port = th_free_port();
        if (sl_server_start(&server, &loop, "127.0.0.1", port, &limits, NULL, on_request, NULL) == 0)
            return 0;
    }
    return -1;
}

static int stopped;

static void on_stopped(void *arg)
{
    (void)arg;
    stopped = 1;
}

static int is_stopped(void)
{
    return stopped;
}

static void teardown(void)
{
    sl_server_stop(server, on_stopped, NULL);
    drive_until(is_stopped, 3000);
    sl_luahost_release(host);
    sl_upstream_free(up);
    uv_run(&loop, UV_RUN_DEFAULT); /* the handles still closing */
    uv_loop_close(&loop);
    char path[256];
    snprintf(path, sizeof path, "%s/sluice.lua", tmpdir);
    unlink(path);
    rmdir(tmpdir);
}

int main(void)
{
    th_watchdog(60);
    signal(SIGPIPE, SIG_IGN);
    if (setup() != 0) {
        fprintf(stderr, "set-up failed\n");
        return 1;
    }
    RUN(test_stream_cut_mid_event_ends_with_the_tail);
    RUN(test_retry_before_commit_starts_clean);
    RUN(test_retry_resets_the_first_byte_clock);
    RUN(test_client_gone_after_terminal_is_complete);
    RUN(test_client_has_the_answer_before_the_report);
    RUN(test_client_gone_before_terminal_is_client_abort);
    RUN(test_client_gone_during_backoff);
    teardown();
    return TEST_SUMMARY();
}
