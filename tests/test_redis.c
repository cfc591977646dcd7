/*
 * test_redis.c — core/redis.c against a real redis-server on a free
 * loopback port: a pipeline answers in order; a server that goes away is
 * noticed (calls fail at once, nothing hangs) and reconnected when it is
 * back; a server that stops answering costs a call no more than its
 * timeout; fire-and-forget sends are bounded; a reconfigure ends waiting
 * calls from the loop and resolves a host name off it; shutdown frees
 * everything (the ASan build checks for leaks).
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "error.h"
#include "redis.h"
#include "test_helpers.h"

static uv_loop_t loop;
static int port;
static pid_t server;

static void start_server(void)
{
    char p[16];
    snprintf(p, sizeof p, "%d", port);
    server = fork();
    if (server == 0) {
        int devnull = open("/dev/null", 1);
        dup2(devnull, 1);
        dup2(devnull, 2);
        execlp("redis-server", "redis-server", "--port", p, "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", (char *)NULL);
        _exit(127);
    }
}

static void stop_server(void)
{
    kill(server, SIGKILL);
    waitpid(server, NULL, 0);
}

/* Runs the loop until cond() holds, in 20 ms steps (the watchdog bounds it). */
static void on_tick(uv_timer_t *t)
{
    (void)t;
}
static void run_until(int (*cond)(void))
{
    uv_timer_t tick;
    uv_timer_init(&loop, &tick);
    uv_timer_start(&tick, on_tick, 20, 20);
    while (!cond())
        uv_run(&loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
}

static int is_up(void)
{
    return sl_redis_worker_up(&loop);
}
static int is_down(void)
{
    return !sl_redis_worker_up(&loop);
}

/* ---- a call's results ---- */

static struct {
    int done, rc, n;
    char replies[4][64];
} got;

static void on_reply(void *ud, int i, const sl_redis_reply_t *r)
{
    const redisReply *rp = (const redisReply *)r;
    if (i < 4) {
        if (rp->type == REDIS_REPLY_STRING || rp->type == REDIS_REPLY_STATUS)
            snprintf(got.replies[i], sizeof got.replies[i], "%.*s", (int)rp->len, rp->str);
        else if (rp->type == REDIS_REPLY_INTEGER)
            snprintf(got.replies[i], sizeof got.replies[i], "%lld", (long long)rp->integer);
        else
            snprintf(got.replies[i], sizeof got.replies[i], "(type %d)", rp->type);
    }
    got.n++;
}

static void on_done(void *ud, int rc)
{
    got.done = 1;
    got.rc = rc;
}

static int call_done(void)
{
    return got.done;
}

static const sl_redis_cbs_t cbs = {on_reply, on_done};

/* SET k v ; GET k ; INCR n as one pipeline. */
static int send_pipeline(void)
{
    static const char *set[] = {"SET", "k", "v"}, *get[] = {"GET", "k"}, *incr[] = {"INCR", "n"};
    static const size_t setl[] = {3, 1, 1}, getl[] = {3, 1}, incrl[] = {4, 1};
    const char *const *argv[] = {set, get, incr};
    const size_t *const argvlen[] = {setl, getl, incrl};
    const int argc[] = {3, 2, 2};
    memset(&got, 0, sizeof got);
    sl_redis_call_t *c;
    return sl_redis_exec(&loop, 3, argc, argv, argvlen, &cbs, NULL, &c);
}

static void test_pipeline(void)
{
    run_until(is_up);
    CHECK_RC(send_pipeline(), 0);
    run_until(call_done);
    CHECK_EQ_INT(got.rc, 0);
    CHECK_EQ_INT(got.n, 3);
    CHECK_EQ_STR(got.replies[0], "OK");
    CHECK_EQ_STR(got.replies[1], "v");
    CHECK_EQ_STR(got.replies[2], "1");
    CHECK_EQ_INT(sl_redis_connected_workers(), 1);
}

static void test_server_gone_and_back(void)
{
    stop_server();
    run_until(is_down);
    /* nothing waits on a connection that is down */
    CHECK_RC(send_pipeline(), SL_ECLOSED);
    CHECK_EQ_INT(sl_redis_connected_workers(), 0);
    start_server();
    run_until(is_up); /* reconnected by the backoff timer */
    CHECK_RC(send_pipeline(), 0);
    run_until(call_done);
    CHECK_EQ_INT(got.rc, 0);
    CHECK_EQ_STR(got.replies[2], "1"); /* a fresh server: nothing persisted */
}

static void test_server_stops_answering(void)
{
    kill(server, SIGSTOP);
    CHECK_RC(send_pipeline(), 0);
    uint64_t t0 = uv_now(&loop);
    run_until(call_done);
    CHECK_EQ_INT(got.rc, SL_ETIMEDOUT);
    CHECK(uv_now(&loop) - t0 >= 250); /* it did wait for the answer, up to the timeout */
    run_until(is_down);               /* and a server that slow is treated as down */
    CHECK_RC(send_pipeline(), SL_ECLOSED);
    kill(server, SIGCONT);
    run_until(is_up);
}

/* A server that stops reading cannot make fire-and-forget sends pile up:
 * past the bound they are refused and the connection counts as down. */
static void test_sends_are_bounded(void)
{
    static const char *ping[] = {"PING"};
    static const size_t pingl[] = {4};
    const char *const *argv[] = {ping};
    const size_t *const argvlen[] = {pingl};
    const int argc[] = {1};
    kill(server, SIGSTOP);
    int rc = 0, sent = 0;
    while (sent < 100000 && (rc = sl_redis_exec(&loop, 1, argc, argv, argvlen, NULL, NULL, NULL)) == 0)
        sent++;
    CHECK_EQ_INT(rc, SL_EBUSY);
    CHECK_EQ_INT(sent, 4096);
    run_until(is_down);
    kill(server, SIGCONT);
    run_until(is_up);
}

/* Reconfiguring (a reload) frees the connection from inside a Lua call: a
 * call still waiting must end from the loop, not from within that call. A
 * host name is resolved off the loop, then connected to. */
static void test_reconfigure_ends_waiting_calls_from_the_loop(void)
{
    kill(server, SIGSTOP);
    CHECK_RC(send_pipeline(), 0);
    sl_redis_opts_t o = {.host = "localhost", .port = port, .timeout = 0.3};
    CHECK_RC(sl_redis_configure(&loop, &o), 0);
    CHECK_EQ_INT(got.done, 0); /* not ended synchronously */
    run_until(call_done);
    CHECK_EQ_INT(got.rc, SL_ECLOSED);
    kill(server, SIGCONT);
    run_until(is_up); /* through "localhost" */
    CHECK_RC(send_pipeline(), 0);
    run_until(call_done);
    CHECK_EQ_INT(got.rc, 0);
    CHECK_EQ_STR(got.replies[1], "v");
}

static void test_cancel_then_shutdown(void)
{
    CHECK_RC(send_pipeline(), 0);
    /* find the call through a second one: cancel it before its replies come */
    sl_redis_call_t *c;
    static const char *ping[] = {"PING"};
    static const size_t pingl[] = {4};
    const char *const *argv[] = {ping};
    const size_t *const argvlen[] = {pingl};
    const int argc[] = {1};
    got.done = 0;
    CHECK_RC(sl_redis_exec(&loop, 1, argc, argv, argvlen, &cbs, NULL, &c), 0);
    sl_redis_cancel(c);
    /* fire and forget */
    CHECK_RC(sl_redis_exec(&loop, 1, argc, argv, argvlen, NULL, NULL, NULL), 0);
    run_until(call_done); /* the first pipeline's end */
    int seen = got.n;
    for (int i = 0; i < 5; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    CHECK_EQ_INT(got.n, seen); /* nothing of the cancelled call */
    sl_redis_shutdown_worker(&loop);
    CHECK(!sl_redis_configured(&loop));
    uv_run(&loop, UV_RUN_DEFAULT); /* every handle closed: the loop ends */
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

int main(void)
{
    th_watchdog(60);
    signal(SIGPIPE, SIG_IGN);
    port = th_free_port();
    start_server();
    uv_loop_init(&loop);
    sl_redis_opts_t o = {.host = "127.0.0.1", .port = port, .timeout = 0.3};
    CHECK_RC(sl_redis_configure(&loop, &o), 0);
    CHECK(sl_redis_configured(&loop));
    RUN(test_pipeline);
    RUN(test_server_gone_and_back);
    RUN(test_server_stops_answering);
    RUN(test_sends_are_bounded);
    RUN(test_reconfigure_ends_waiting_calls_from_the_loop);
    RUN(test_cancel_then_shutdown);
    stop_server();
    return TEST_SUMMARY();
}
