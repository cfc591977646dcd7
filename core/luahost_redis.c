/*
 * luahost_redis.c — sluice.redis for Lua: the pieces of the core table that
 * reach the worker's Redis connection (core/redis.c), and the conversions
 * between Lua tables and Redis commands/replies that the request
 * coroutine's REDIS yield (luahost_task.c) uses.
 *
 *   core.redis_configure(host, port, password|nil, db, timeout) -- this worker's connection
 *   core.redis_configure(nil)  -- none (a reload to the in-process store closes it)
 *   core.redis_send(cmds) -> true | nil, err   -- fire and forget (any hook: never waits)
 *   core.redis_up() -> number of worker connections up, process-wide
 * cmds is a pipeline: { { "SET", key, value, "PX", 5000 }, { "GET", key } }.
 * Replies: strings and statuses are strings, integers numbers, nil is
 * false, an error reply { err = "..." }, arrays tables.
 */
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "error.h"
#include "luahost_int.h"
#include "redis.h"

#define MAX_CMDS 64
#define MAX_ARGS 64
#define MAX_DEPTH 8

void sl__redis_args_free(sl__redis_args_t *a)
{
    free(a->argc);
    free(a->argv);
    free(a->argvlen);
    free(a->ptrs);
    free(a->lens);
    memset(a, 0, sizeof *a);
}

/* The pipeline table at idx -> argument arrays borrowing the Lua strings
 * (valid while the table is on the stack; hiredis copies them at once). */
int sl__redis_args_read(lua_State *L, int idx, sl__redis_args_t *a, char *err, size_t errlen)
{
    memset(a, 0, sizeof *a);
    if (!lua_istable(L, idx)) {
        snprintf(err, errlen, "sluice.redis: expected a list of commands");
        return SL_EINVAL;
    }
    int n = (int)lua_objlen(L, idx), total = 0;
    if (n < 1 || n > MAX_CMDS) {
        snprintf(err, errlen, "sluice.redis: expected 1..%d commands", MAX_CMDS);
        return SL_EINVAL;
    }
    a->argc = calloc((size_t)n, sizeof *a->argc);
    a->argv = calloc((size_t)n, sizeof *a->argv);
    a->argvlen = calloc((size_t)n, sizeof *a->argvlen);
    a->ptrs = calloc((size_t)n * MAX_ARGS, sizeof *a->ptrs);
    a->lens = calloc((size_t)n * MAX_ARGS, sizeof *a->lens);
    if (!a->argc || !a->argv || !a->argvlen || !a->ptrs || !a->lens) {
        sl__redis_args_free(a);
        return SL_ENOMEM;
    }
    a->n = n;
    for (int i = 0; i < n; i++) {
        lua_rawgeti(L, idx, i + 1);
        int m = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : 0;
        if (m < 1 || m > MAX_ARGS) {
            lua_pop(L, 1);
            snprintf(err, errlen, "sluice.redis: command %d: expected 1..%d arguments", i + 1,
                     MAX_ARGS);
            sl__redis_args_free(a);
            return SL_EINVAL;
        }
        a->argc[i] = m;
        a->argv[i] = a->ptrs + total;
        a->argvlen[i] = a->lens + total;
        for (int j = 0; j < m; j++) {
            lua_rawgeti(L, -1, j + 1);
            if (lua_type(L, -1) == LUA_TNUMBER) {
                /* lua_tolstring converts only this stack copy, which is
                 * popped below: store the string back in the command table,
                 * which the caller keeps alive until the call is sent. */
                lua_tolstring(L, -1, NULL);
                lua_rawseti(L, -2, j + 1);
                lua_rawgeti(L, -1, j + 1);
            }
            size_t len;
            const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
            if (!s) {
                lua_pop(L, 2);
                snprintf(err, errlen, "sluice.redis: command %d argument %d is not a string", i + 1,
                         j + 1);
                sl__redis_args_free(a);
                return SL_EINVAL;
            }
            a->ptrs[total + j] = s;
            a->lens[total + j] = len;
            lua_pop(L, 1);
        }
        total += m;
        lua_pop(L, 1);
    }
    return 0;
}

static void push_reply(lua_State *L, const redisReply *r, int depth)
{
    switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
        lua_pushlstring(L, r->str, r->len);
        break;
    case REDIS_REPLY_INTEGER:
        lua_pushnumber(L, (lua_Number)r->integer);
        break;
    case REDIS_REPLY_ERROR:
        lua_createtable(L, 0, 1);
        lua_pushlstring(L, r->str, r->len);
        lua_setfield(L, -2, "err");
        break;
    case REDIS_REPLY_ARRAY:
        lua_createtable(L, (int)r->elements, 0);
        for (size_t i = 0; i < r->elements && depth < MAX_DEPTH; i++) {
            push_reply(L, r->element[i], depth + 1);
            lua_rawseti(L, -2, (int)i + 1);
        }
        break;
    default: /* REDIS_REPLY_NIL */
        lua_pushboolean(L, 0);
    }
}

void sl__redis_push_reply(lua_State *L, const sl_redis_reply_t *r)
{
    push_reply(L, (const redisReply *)r, 0);
}

static int core_redis_configure(lua_State *L)
{
    sl_luahost_t *h = sl__luahost_running();
    if (!h || !h->loop) { /* --check, or a VM without a loop */
        lua_pushboolean(L, 0);
        return 1;
    }
    if (lua_isnoneornil(L, 1)) {
        sl_redis_shutdown_worker(h->loop);
        lua_pushboolean(L, 1);
        return 1;
    }
    sl_redis_opts_t o = {
        .host = luaL_checkstring(L, 1),
        .port = (int)luaL_checkinteger(L, 2),
        .password = lua_isstring(L, 3) ? lua_tostring(L, 3) : NULL,
        .db = (int)luaL_optinteger(L, 4, 0),
        .timeout = luaL_optnumber(L, 5, 0.2),
    };
    int rc = sl_redis_configure(h->loop, &o);
    if (rc) {
        lua_pushnil(L);
        lua_pushstring(L, sl_strerror(rc));
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int core_redis_send(lua_State *L)
{
    sl_luahost_t *h = sl__luahost_running();
    char err[160];
    sl__redis_args_t a;
    int rc = sl__redis_args_read(L, 1, &a, err, sizeof err);
    if (rc == SL_EINVAL)
        return luaL_error(L, "%s", err);
    if (rc == 0) {
        rc = !h || !h->loop
                 ? SL_ECLOSED
                 : sl_redis_exec(h->loop, a.n, a.argc, (const char *const *const *)a.argv,
                                 (const size_t *const *)a.argvlen, NULL, NULL, NULL);
        sl__redis_args_free(&a);
    }
    if (rc) {
        lua_pushnil(L);
        lua_pushstring(L, rc == SL_ECLOSED ? "redis is down" : sl_strerror(rc));
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int core_redis_up(lua_State *L)
{
    lua_pushinteger(L, sl_redis_connected_workers());
    return 1;
}

void sl__redis_register(lua_State *L)
{
    static const luaL_Reg fns[] = {{"redis_configure", core_redis_configure},
                                   {"redis_send", core_redis_send},
                                   {"redis_up", core_redis_up},
                                   {NULL, NULL}};
    luaL_register(L, NULL, fns);
}
