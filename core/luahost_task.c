/*
 * luahost_task.c — the request hook as a coroutine, and what it may wait on.
 *
 * Only the request hook may yield (DESIGN §4). It runs in a Lua thread of
 * its own; the Lua side of sluice.sleep / sluice.http (lua/sluice/init.lua)
 * yields a token — a light userdata whose address only this file hands out —
 * plus its arguments. The driver here recognises the token, does the
 * operation on the worker's loop (a uv timer, or a transfer on the worker's
 * curl multi handle), and resumes the coroutine with the result. Anything
 * else yielded is a script error: a coroutine of the script's own must not
 * suspend the request.
 *
 * A task holds a reference on its host, so a reload cannot close the VM the
 * coroutine lives in. It ends exactly once: with its plan, with an error, or
 * cancelled (the client left); its memory goes in the timer's close callback.
 */
#include <lauxlib.h>
#include <stdlib.h>

#include "error.h"
#include "log.h"
#include "luahost_int.h"
#include "metrics.h"
#include "upstream.h"

/* Distinct addresses used as yield tokens by the Lua API. */
static char token_sleep, token_http, token_redis;

#define HTTP_MAX_ANSWER (8 << 20) /* bytes of a sluice.http answer body */
#define HTTP_TIMEOUT_S 10.0       /* when the request table names none */

struct sl_lua_task_s {
    sl_luahost_t *h;
    lua_State *co;
    int co_ref;
    int ctx;
    sl_lua_task_cb done;
    void *ud;
    uv_timer_t timer; /* sleep, or the sluice.http deadline */
    /* sluice.http in flight: the transfer, what it sends, what came back. */
    sl_transfer_t *xfer;
    sl_arena_t http_arena; /* req_url, req_method, req_headers, xheaders */
    char *req_url, *req_method;
    sl_header_t *req_headers;
    size_t nreq_headers;
    sl_buf_t req_body;
    int xstatus; /* 0: no head yet; -1: answer too large */
    sl_header_t *xheaders;
    size_t nxheaders;
    sl_buf_t xbody;
    sl_redis_call_t *rcall; /* sluice.redis in flight */
    int finished;
};

static void task_resume(sl_lua_task_t *t, int nargs);

void sl__task_set_tokens(lua_State *L)
{
    lua_pushlightuserdata(L, &token_sleep);
    lua_setfield(L, -2, "SLEEP");
    lua_pushlightuserdata(L, &token_http);
    lua_setfield(L, -2, "HTTP");
    lua_pushlightuserdata(L, &token_redis);
    lua_setfield(L, -2, "REDIS");
}

/* ---- ending a task ---- */

static void on_task_closed(uv_handle_t *hd)
{
    sl_lua_task_t *t = hd->data;
    free(t);
}

static void task_free_http(sl_lua_task_t *t)
{
    if (t->xfer) {
        sl_transfer_abort(t->xfer);
        t->xfer = NULL;
    }
    sl_buf_free(&t->xbody);
    sl_arena_free(&t->http_arena);
    t->xheaders = t->req_headers = NULL;
    t->nxheaders = t->nreq_headers = 0;
    t->req_url = t->req_method = NULL;
    sl_buf_free(&t->req_body);
}

static void task_end(sl_lua_task_t *t)
{
    t->finished = 1;
    if (t->rcall) {
        sl_redis_cancel(t->rcall);
        t->rcall = NULL;
    }
    task_free_http(t);
    luaL_unref(t->h->L, LUA_REGISTRYINDEX, t->co_ref);
    sl_luahost_release(t->h);
    uv_close((uv_handle_t *)&t->timer, on_task_closed);
}

static void task_fail(sl_lua_task_t *t, int rc, const char *msg)
{
    sl_lua_task_cb done = t->done;
    void *ud = t->ud;
    task_end(t);
    done(ud, rc, NULL, msg);
}

/* ---- sluice.sleep ---- */

static void on_sleep_done(uv_timer_t *timer)
{
    sl_lua_task_t *t = timer->data;
    task_resume(t, 0);
}

/* ---- sluice.http ---- */

static void on_http_head(void *ud, int status, const sl_header_t *hv, size_t n)
{
    sl_lua_task_t *t = ud;
    t->xstatus = status;
    /* a head of an earlier attempt stays in the arena until the call ends */
    t->xheaders = sl__headers_copy(&t->http_arena, hv, n);
    t->nxheaders = t->xheaders ? n : 0;
}

static int on_http_data(void *ud, const char *p, size_t n)
{
    sl_lua_task_t *t = ud;
    if (sl_buf_append(&t->xbody, p, n) == 0)
        return 0;
    t->xstatus = -1; /* too large: on_http_done reports it */
    return SL_TRANSFER_FAIL;
}

/* Resumes with status, headers, body — or nil, err. */
static void on_http_done(void *ud, int curl_code, const char *errbuf)
{
    sl_lua_task_t *t = ud;
    t->xfer = NULL;
    uv_timer_stop(&t->timer);
    lua_State *co = t->co;
    if (curl_code != 0 || t->xstatus <= 0) {
        lua_pushnil(co);
        lua_pushfstring(co, "http request failed: %s",
                        t->xstatus < 0 ? "response too large"
                                       : (errbuf && *errbuf ? errbuf : "transfer error"));
        task_resume(t, 2);
        return;
    }
    lua_pushinteger(co, t->xstatus);
    sl__headers_push(co, t->xheaders, t->nxheaders);
    lua_pushlstring(co, t->xbody.base ? t->xbody.base : "", t->xbody.len);
    task_free_http(t);
    task_resume(t, 3);
}

static void on_http_timeout(uv_timer_t *timer)
{
    sl_lua_task_t *t = timer->data;
    if (t->xfer) {
        sl_transfer_abort(t->xfer);
        t->xfer = NULL;
    }
    task_free_http(t);
    lua_pushnil(t->co);
    lua_pushstring(t->co, "http request failed: timed out");
    task_resume(t, 2);
}

/* The request table at index 2 of the coroutine: { url, method?, headers?,
 * body?, timeout? }. Copies it, starts the transfer and its deadline. */
static int http_start(sl_lua_task_t *t, char *err, size_t errlen)
{
    lua_State *co = t->co;
    task_free_http(t); /* what an earlier failed call left behind */
    if (!t->h->upstream) {
        snprintf(err, errlen, "sluice.http is not available here");
        return SL_ESCRIPT;
    }
    t->req_url = sl__lua_field_str(co, 2, "url", &t->http_arena);
    t->req_method = sl__lua_field_str(co, 2, "method", &t->http_arena);
    double timeout = sl__lua_field_num(co, 2, "timeout", HTTP_TIMEOUT_S);
    lua_getfield(co, 2, "headers");
    int rc = sl__headers_read(co, -1, &t->http_arena, &t->req_headers, &t->nreq_headers, err,
                              errlen);
    lua_pop(co, 1);
    if (rc)
        return rc;
    sl_buf_init(&t->req_body, 0);
    sl_buf_init(&t->xbody, HTTP_MAX_ANSWER);
    int has;
    sl__lua_read_body(co, 2, &t->req_body, &has);
    lua_settop(co, 0);
    if (!t->req_url) {
        snprintf(err, errlen, "sluice.http: url is required");
        return SL_ESCRIPT;
    }
    sl_transfer_req_t rq = {
        .url = t->req_url,
        .method = t->req_method ? t->req_method : (has ? "POST" : "GET"),
        .headers = t->req_headers,
        .nheaders = t->nreq_headers,
        .body = sl_str(t->req_body.base, t->req_body.len),
        .connect_timeout_ms = sl__secs_to_ms(timeout),
        .verify_tls = 1,
    };
    static const sl_transfer_cbs_t cbs = {on_http_head, on_http_data, on_http_done};
    t->xstatus = 0;
    if ((rc = sl_transfer_start(t->h->upstream, &rq, &cbs, t, &t->xfer)) != 0) {
        snprintf(err, errlen, "sluice.http: %s", sl_strerror(rc));
        return rc;
    }
    uv_timer_start(&t->timer, on_http_timeout, sl__secs_to_ms(timeout), 0);
    return 0;
}

/* ---- sluice.redis ---- */

/* Each reply goes into the result table at index 1 of the coroutine. */
static void on_redis_reply(void *ud, int i, const sl_redis_reply_t *reply)
{
    sl_lua_task_t *t = ud;
    sl__redis_push_reply(t->co, reply);
    lua_rawseti(t->co, 1, i + 1);
}

/* Resumes with the replies, or nil, err. */
static void on_redis_done(void *ud, int rc)
{
    sl_lua_task_t *t = ud;
    t->rcall = NULL;
    if (rc) {
        lua_settop(t->co, 0);
        lua_pushnil(t->co);
        lua_pushstring(t->co, rc == SL_ETIMEDOUT ? "redis timed out" : "redis connection lost");
        task_resume(t, 2);
        return;
    }
    task_resume(t, 1);
}

/* The pipeline table at index 2: sends it; the coroutine waits for the
 * replies (bounded by the connection's timeout). A connection that is down
 * resumes it at once with nil, "redis is down", from the loop's next turn. */
static void on_redis_down(uv_timer_t *timer)
{
    sl_lua_task_t *t = timer->data;
    lua_settop(t->co, 0);
    lua_pushnil(t->co);
    lua_pushstring(t->co, "redis is down");
    task_resume(t, 2);
}

static int redis_start(sl_lua_task_t *t, char *err, size_t errlen)
{
    lua_State *co = t->co;
    sl__redis_args_t a;
    int rc = sl__redis_args_read(co, 2, &a, err, errlen);
    if (rc)
        return rc == SL_EINVAL ? SL_ESCRIPT : rc;
    static const sl_redis_cbs_t cbs = {on_redis_reply, on_redis_done};
    /* Each call is one wait on Redis, however many commands it pipelines:
     * what the one-round-trip-per-request rule (DESIGN §8) is checked by. */
    sl_metrics_count("sluice_redis_round_trips_total", NULL, NULL);
    int n = a.n;
    rc = sl_redis_exec(t->h->loop, a.n, a.argc, (const char *const *const *)a.argv,
                       (const size_t *const *)a.argvlen, &cbs, t, &t->rcall);
    sl__redis_args_free(&a);
    lua_settop(co, 0);
    if (rc == SL_ECLOSED) {
        uv_timer_start(&t->timer, on_redis_down, 0, 0);
        return 0;
    }
    if (rc) {
        snprintf(err, errlen, "sluice.redis: %s", sl_strerror(rc));
        return rc;
    }
    lua_createtable(co, n, 0); /* the replies go here */
    return 0;
}

/* ---- the driver ---- */

/* The coroutine yielded (SLEEP, seconds) or (HTTP, request table). */
static int task_handle_yield(sl_lua_task_t *t, char *err, size_t errlen)
{
    lua_State *co = t->co;
    int n = lua_gettop(co);
    void *tok = n >= 1 ? lua_touserdata(co, 1) : NULL;
    if (tok == &token_sleep) {
        double s = lua_tonumber(co, 2);
        lua_settop(co, 0);
        uv_timer_start(&t->timer, on_sleep_done, sl__secs_to_ms(s), 0);
        return 0;
    }
    if (tok == &token_http && lua_istable(co, 2))
        return http_start(t, err, errlen);
    if (tok == &token_redis)
        return redis_start(t, err, errlen);
    snprintf(err, errlen, "request hook yielded outside sluice.sleep/sluice.http/sluice.redis");
    return SL_ESCRIPT;
}

static void task_resume(sl_lua_task_t *t, int nargs)
{
    sl_luahost_t *h = t->h;
    char err[1024];
    sl__luahost_enter(h);
    int st = lua_resume(t->co, nargs);
    sl__luahost_leave();
    if (st == LUA_YIELD) {
        int rc = task_handle_yield(t, err, sizeof err);
        if (rc) {
            h->script_errors++;
            task_fail(t, rc, err);
        }
        return;
    }
    if (st != 0) {
        const char *msg = lua_tostring(t->co, -1);
        luaL_traceback(h->L, t->co, msg ? msg : "error", 0);
        snprintf(err, sizeof err, "%s hook: %s", sl__hook_name(SL__HOOK_REQUEST),
                 lua_tostring(h->L, -1));
        lua_pop(h->L, 1);
        h->script_errors++;
        sl_metrics_script_error(sl__hook_name(SL__HOOK_REQUEST));
        sl_log_error("script error in %s: %s", sl__hook_name(SL__HOOK_REQUEST), err);
        task_fail(t, h->budget_hit ? SL_EBUDGET : SL_ESCRIPT, err);
        return;
    }
    sl_plan_t plan;
    int rc = sl__plan_read(t->co, 1, &plan, &h->cfg, err, sizeof err);
    lua_settop(t->co, 0);
    if (rc) {
        sl_plan_free(&plan);
        h->script_errors++;
        sl_log_error("script error in %s: %s", sl__hook_name(SL__HOOK_REQUEST), err);
        task_fail(t, rc, err);
        return;
    }
    sl_lua_task_cb done = t->done;
    void *ud = t->ud;
    task_end(t);
    done(ud, 0, &plan, NULL);
}

int sl_lua_request(sl_luahost_t *h, int ctx, sl_lua_task_cb done, void *ud, sl_lua_task_t **out)
{
    sl_lua_task_t *t = calloc(1, sizeof *t);
    if (!t)
        return SL_ENOMEM;
    t->h = h;
    t->ctx = ctx;
    t->done = done;
    t->ud = ud;
    sl_buf_init(&t->xbody, 0);
    sl_buf_init(&t->req_body, 0);
    sl_luahost_retain(h);
    uv_timer_init(h->loop, &t->timer);
    t->timer.data = t;
    t->co = lua_newthread(h->L);
    t->co_ref = luaL_ref(h->L, LUA_REGISTRYINDEX);
    if (sl__hook_push(h, SL__HOOK_REQUEST) != 0)
        lua_pushnil(h->L); /* resuming it fails as a script error */
    lua_xmove(h->L, t->co, 1);
    lua_rawgeti(t->co, LUA_REGISTRYINDEX, ctx);
    *out = t;
    task_resume(t, 1);
    return 0;
}

void sl_lua_task_cancel(sl_lua_task_t *t)
{
    if (t->finished)
        return;
    uv_timer_stop(&t->timer);
    /* cancel(ctx, coroutine): let Lua give up what the abandoned coroutine
     * held (a token-fetch lock), since it will never run again. */
    sl_luahost_t *h = t->h;
    if (sl__hook_push(h, SL__HOOK_CANCEL) == 0) {
        char err[256];
        lua_rawgeti(h->L, LUA_REGISTRYINDEX, t->ctx);
        lua_rawgeti(h->L, LUA_REGISTRYINDEX, t->co_ref);
        sl__hook_call(h, SL__HOOK_CANCEL, 2, 0, err, sizeof err);
    }
    task_end(t);
}
