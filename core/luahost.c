/*
 * luahost.c — the LuaJIT VM of one worker (see luahost.h).
 *
 * Why an instruction budget needs help from the JIT: LuaJIT's count hook is
 * only checked by the interpreter, so a runaway loop that gets compiled
 * never hits it. host.lua therefore loads ops-written code (the config file
 * and its functions, adapters) with jit.off(chunk, true), and the loaders
 * installed here do the same for modules `require`d from outside the
 * library (lua_path) and for chunks from load/loadstring/loadfile/dofile, so
 * that code always runs interpreted and stays under the budget, while the
 * built-in library is compiled as usual. The hook itself is VM-wide in
 * LuaJIT, so it also covers the request coroutines.
 *
 * Yields: only the request hook runs in a coroutine. The Lua side of
 * sluice.sleep / sluice.http yields a token (a light userdata) plus
 * arguments; the task driver here recognises the token, performs the
 * operation on the worker's loop, and resumes the coroutine with the result.
 */
#include "luahost.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "error.h"
#include "json.h"
#include "log.h"
#include "shared.h"
#include "metrics.h"
#include "upstream.h"

struct sl_luahost_s {
    lua_State *L;
    int refs;
    int hooks_ref;       /* the host module table */
    sl_config_t cfg;
    uv_loop_t *loop;
    sl_upstream_t *upstream;
    int worker_id;
    uint64_t budget;     /* instructions per call */
    uint64_t used;
    int budget_hit;
    uint64_t script_errors;
    int batch_n;         /* events added to the pending batch */
};

#define BUDGET_STEP 1000

static __thread sl_luahost_t *running; /* the host whose hook is executing */

/* Distinct addresses used as yield tokens by the Lua API. */
static char token_sleep, token_http;

/* ---- budget ---- */

static void budget_hook(lua_State *L, lua_Debug *ar)
{
    sl_luahost_t *h = running;
    if (!h)
        return;
    h->used += BUDGET_STEP;
    if (h->used > h->budget) {
        h->budget_hit = 1;
        luaL_error(L, "script exceeded its instruction budget (%llu instructions)",
                   (unsigned long long)h->budget);
    }
}

static void budget_start(sl_luahost_t *h)
{
    running = h;
    h->used = 0;
    h->budget_hit = 0;
}

/* ---- helpers to read Lua values into C ---- */

static char *dup_lstr(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

static char *field_str(lua_State *L, int idx, const char *key)
{
    char *out = NULL;
    lua_getfield(L, idx, key);
    if (lua_type(L, -1) == LUA_TSTRING) {
        size_t n;
        const char *s = lua_tolstring(L, -1, &n);
        out = dup_lstr(s, n);
    }
    lua_pop(L, 1);
    return out;
}

static double field_num(lua_State *L, int idx, const char *key, double dflt)
{
    lua_getfield(L, idx, key);
    double v = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : dflt;
    lua_pop(L, 1);
    return v;
}

static int field_bool(lua_State *L, int idx, const char *key, int dflt)
{
    lua_getfield(L, idx, key);
    int v = lua_isnil(L, -1) ? dflt : lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

static uint64_t secs_to_ms(double s)
{
    return s <= 0 ? 0 : (uint64_t)(s * 1000.0 + 0.5);
}

static void free_headers(sl_header_t *h, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free((char *)h[i].name.base);
        free((char *)h[i].value.base);
    }
    free(h);
}

static int has_ctl(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0')
            return 1;
    return 0;
}

/* Reads a header list at idx: an array of {name, value} pairs, or a map
 * name -> value. Rejects CR/LF/NUL so Lua cannot split a response. */
static int read_headers(lua_State *L, int idx, sl_header_t **out, size_t *nout, char *err,
                        size_t errlen)
{
    *out = NULL;
    *nout = 0;
    if (lua_isnil(L, idx))
        return 0;
    if (!lua_istable(L, idx)) {
        snprintf(err, errlen, "headers must be a table");
        return SL_ESCRIPT;
    }
    size_t cap = 16, n = 0;
    sl_header_t *hv = malloc(cap * sizeof *hv);
    if (!hv)
        return SL_ENOMEM;
    int array = lua_objlen(L, idx) > 0;
    lua_pushnil(L);
    while (lua_next(L, idx < 0 ? idx - 1 : idx)) {
        const char *name, *value;
        size_t nl, vl;
        if (array) {
            if (!lua_istable(L, -1)) {
                lua_pop(L, 1);
                continue;
            }
            lua_rawgeti(L, -1, 1);
            lua_rawgeti(L, -2, 2);
            name = lua_tolstring(L, -2, &nl);
            value = lua_tolstring(L, -1, &vl);
        } else {
            lua_pushvalue(L, -2);
            lua_pushvalue(L, -2);
            name = lua_tolstring(L, -2, &nl);
            value = lua_tolstring(L, -1, &vl);
        }
        if (!name || !value || nl == 0 || has_ctl(name, nl) || has_ctl(value, vl)) {
            snprintf(err, errlen, "invalid header %s (empty, or contains CR/LF/NUL)",
                     name ? name : "(non-string)");
            lua_pop(L, 4);
            free_headers(hv, n);
            return SL_ESCRIPT;
        }
        if (n == cap) {
            sl_header_t *nh = realloc(hv, cap * 2 * sizeof *hv);
            if (!nh) {
                lua_pop(L, 4);
                free_headers(hv, n);
                return SL_ENOMEM;
            }
            hv = nh;
            cap *= 2;
        }
        hv[n].name = sl_str(dup_lstr(name, nl), nl);
        hv[n].value = sl_str(dup_lstr(value, vl), vl);
        n++;
        lua_pop(L, 3);
    }
    *out = hv;
    *nout = n;
    return 0;
}

static void push_headers(lua_State *L, const sl_header_t *hv, size_t n)
{
    /* name (lower case) -> value; repeated names joined with ", " */
    lua_createtable(L, 0, (int)n);
    char lower[256];
    for (size_t i = 0; i < n; i++) {
        size_t nl = hv[i].name.len < sizeof lower ? hv[i].name.len : sizeof lower - 1;
        for (size_t k = 0; k < nl; k++) {
            char ch = hv[i].name.base[k];
            lower[k] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
        }
        lua_pushlstring(L, lower, nl);
        lua_pushvalue(L, -1);
        lua_rawget(L, -3);
        if (lua_isstring(L, -1)) {
            lua_pushliteral(L, ", ");
            lua_pushlstring(L, hv[i].value.base, hv[i].value.len);
            lua_concat(L, 3);
        } else {
            lua_pop(L, 1);
            lua_pushlstring(L, hv[i].value.base, hv[i].value.len);
        }
        lua_rawset(L, -3);
    }
}

/* ---- calling into Lua ---- */

static int traceback(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    luaL_traceback(L, L, msg ? msg : "(error object is not a string)", 1);
    return 1;
}

/* Pushes host[name]; returns 0 if it is a function. */
static int push_hook(sl_luahost_t *h, const char *name)
{
    lua_rawgeti(h->L, LUA_REGISTRYINDEX, h->hooks_ref);
    lua_getfield(h->L, -1, name);
    lua_remove(h->L, -2);
    if (!lua_isfunction(h->L, -1)) {
        lua_pop(h->L, 1);
        return SL_ENOTFOUND;
    }
    return 0;
}

/* Calls the function below nargs arguments on the stack with a traceback
 * handler and the budget. On error: message in err, stack restored. */
static int call_hook(sl_luahost_t *h, const char *name, int nargs, int nres, char *err,
                     size_t errlen)
{
    lua_State *L = h->L;
    int base = lua_gettop(L) - nargs;
    lua_pushcfunction(L, traceback);
    lua_insert(L, base);
    budget_start(h);
    int rc = lua_pcall(L, nargs, nres, base);
    running = NULL;
    lua_remove(L, base);
    if (rc == 0)
        return 0;
    const char *msg = lua_tostring(L, -1);
    snprintf(err, errlen, "%s hook: %s", name, msg ? msg : "error");
    lua_pop(L, 1);
    h->script_errors++;
    sl_metrics_script_error(name);
    sl_log_error("script error in %s: %s", name, msg ? msg : "?");
    return h->budget_hit ? SL_EBUDGET : SL_ESCRIPT;
}

/* ---- the sluice.core module (used only by host.lua) ---- */

static int core_log(lua_State *L)
{
    const char *level = luaL_checkstring(L, 1);
    const char *msg = luaL_checkstring(L, 2);
    sl_log_level_t lv = SL_LOG_INFO;
    sl_log_level_parse(level, &lv);
    sl_log(lv, "lua: %s", msg);
    return 0;
}

static int core_now(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    lua_pushnumber(L, (double)ts.tv_sec + ts.tv_nsec / 1e9);
    return 1;
}

static int core_monotonic(lua_State *L)
{
    lua_pushnumber(L, (double)uv_hrtime() / 1e9);
    return 1;
}

static int luaopen_sluice_core(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"log", core_log}, {"now", core_now}, {"monotonic", core_monotonic}, {NULL, NULL}};
    lua_newtable(L);
    luaL_register(L, NULL, fns);
    lua_pushlightuserdata(L, &token_sleep);
    lua_setfield(L, -2, "SLEEP");
    lua_pushlightuserdata(L, &token_http);
    lua_setfield(L, -2, "HTTP");
    sl_luahost_t *h = running;
    lua_pushinteger(L, h ? h->worker_id : 0);
    lua_setfield(L, -2, "worker_id");
    lua_pushstring(L, SLUICE_VERSION);
    lua_setfield(L, -2, "version");
    return 1;
}

/* ---- config ---- */

void sl_config_free(sl_config_t *c)
{
    for (size_t i = 0; i < c->nlisten; i++)
        free(c->listen[i]);
    free(c->listen);
    free(c->access_log);
    free(c->log_level);
    free(c->admin_token);
    free(c->history_path);
    memset(c, 0, sizeof *c);
}

/* Reads the core view that host.init() returns (already validated in Lua). */
static void read_config(lua_State *L, int idx, sl_config_t *c)
{
    memset(c, 0, sizeof *c);
    lua_getfield(L, idx, "listen");
    size_t n = lua_objlen(L, -1);
    c->listen = calloc(n ? n : 1, sizeof *c->listen);
    for (size_t i = 1; i <= n && c->listen; i++) {
        lua_rawgeti(L, -1, (int)i);
        c->listen[c->nlisten++] = strdup(lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    c->workers = (int)field_num(L, idx, "workers", 0);
    c->limits.max_body = (size_t)field_num(L, idx, "max_body", 32 << 20);
    c->limits.max_header = (size_t)field_num(L, idx, "max_header", 64 << 10);
    c->limits.max_headers_count = (size_t)field_num(L, idx, "max_headers", 100);
    c->limits.header_timeout_ms = secs_to_ms(field_num(L, idx, "header_timeout", 10));
    c->limits.body_timeout_ms = secs_to_ms(field_num(L, idx, "body_timeout", 60));
    c->limits.body_total_timeout_ms = secs_to_ms(field_num(L, idx, "body_total_timeout", 300));
    c->limits.keepalive_timeout_ms = secs_to_ms(field_num(L, idx, "keepalive_timeout", 60));
    c->limits.max_connections = (size_t)field_num(L, idx, "max_connections", 4096);
    c->t_connect = secs_to_ms(field_num(L, idx, "connect_timeout", 10));
    c->t_first_byte = secs_to_ms(field_num(L, idx, "first_byte_timeout", 120));
    c->t_idle = secs_to_ms(field_num(L, idx, "idle_timeout", 300));
    c->t_total = secs_to_ms(field_num(L, idx, "total_timeout", 3600));
    c->max_event = (size_t)field_num(L, idx, "max_event", 4 << 20);
    c->max_response = (size_t)field_num(L, idx, "max_response", 64 << 20);
    c->script_budget = (uint64_t)field_num(L, idx, "script_budget", 50e6);
    c->shutdown_timeout_ms = secs_to_ms(field_num(L, idx, "shutdown_timeout", 30));
    c->access_log = field_str(L, idx, "access_log");
    c->log_level = field_str(L, idx, "log_level");
    c->admin_token = field_str(L, idx, "admin_token");
    c->history_path = field_str(L, idx, "history_path");
    c->history_max = (int)field_num(L, idx, "history_max", 1000);
    c->history_bodies = field_bool(L, idx, "history_bodies", 0);
}

static char *xstrdup(const char *s)
{
    return s ? strdup(s) : NULL;
}

int sl_luahost_config_copy(const sl_luahost_t *h, sl_config_t *out)
{
    const sl_config_t *c = &h->cfg;
    *out = *c;
    out->listen = calloc(c->nlisten ? c->nlisten : 1, sizeof *out->listen);
    if (!out->listen)
        return SL_ENOMEM;
    for (size_t i = 0; i < c->nlisten; i++)
        out->listen[i] = strdup(c->listen[i]);
    out->access_log = xstrdup(c->access_log);
    out->log_level = xstrdup(c->log_level);
    out->admin_token = xstrdup(c->admin_token);
    out->history_path = xstrdup(c->history_path);
    return 0;
}

/* ---- host lifecycle ---- */

/* Every VM starts math.random from the OS's entropy: ids made in Lua
 * (msg_..., resp_..., call_...) must not repeat across workers or restarts. */
static void seed_random(lua_State *L)
{
    uint32_t seed;
    if (uv_random(NULL, NULL, &seed, sizeof seed, 0, NULL) != 0)
        seed = (uint32_t)uv_hrtime();
    lua_getglobal(L, "math");
    lua_getfield(L, -1, "randomseed");
    lua_pushnumber(L, (double)seed);
    lua_call(L, 1, 0);
    lua_pop(L, 1);
}

/* ---- ops code runs interpreted ----
 *
 * The budget's count hook only fires in the interpreter, so every chunk ops
 * wrote must run with the JIT off (jit.off(chunk, true): the chunk and every
 * function defined in it), or a loop in it compiles, never sees the budget,
 * wedges the worker and keeps SIGTERM from draining it. The config and
 * adapters are loaded that way by their Lua loaders; what else ops code can
 * load is covered here, before any Lua runs:
 *   - `require` of a module outside the built-in library (lua_path, or any
 *     directory a config adds to package.path): package.loaders[2] is
 *     replaced by the same search over package.path that marks what it
 *     loads unless the file is under the library's own directory;
 *   - chunks made at run time: load, loadstring, loadfile and dofile are
 *     replaced by versions that mark the chunk before handing it over.
 * The built-in library stays compiled: it is ours, bounded and hot. */

static char key_jit_off; /* registry key of jit.off (absent without a JIT) */

static void mark_interpreted(lua_State *L, int idx)
{
    if (lua_type(L, idx) != LUA_TFUNCTION || lua_iscfunction(L, idx))
        return;
    idx = idx < 0 ? lua_gettop(L) + idx + 1 : idx;
    lua_pushlightuserdata(L, &key_jit_off);
    lua_rawget(L, LUA_REGISTRYINDEX);
    if (!lua_isfunction(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    lua_pushvalue(L, idx);
    lua_pushboolean(L, 1);
    lua_call(L, 2, 0);
}

/* load / loadstring / loadfile: the original (upvalue 1), then the chunk
 * it returns is marked. */
static int ops_load(lua_State *L)
{
    int n = lua_gettop(L);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, n, LUA_MULTRET);
    mark_interpreted(L, 1);
    return lua_gettop(L);
}

static int ops_dofile(lua_State *L)
{
    const char *path = luaL_optstring(L, 1, NULL);
    lua_settop(L, 1);
    if (luaL_loadfile(L, path) != 0)
        return lua_error(L);
    mark_interpreted(L, 2);
    lua_call(L, 0, LUA_MULTRET);
    return lua_gettop(L) - 1;
}

/* Under the library directory (upvalue 1) and not climbing out of it. */
static int is_builtin(const char *dir, const char *path)
{
    size_t n = strlen(dir);
    return strncmp(path, dir, n) == 0 && path[n] == '/' && !strstr(path + n, "..");
}

/* package.loaders[2]: what the stock Lua-file searcher does, plus the mark. */
static int ops_searcher(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "searchpath");
    lua_pushstring(L, name);
    lua_getfield(L, -3, "path");
    lua_call(L, 2, 2);
    if (lua_isnil(L, -2))
        return 1; /* where it looked, for require's message */
    const char *path = lua_tostring(L, -2);
    if (luaL_loadfile(L, path) != 0)
        return luaL_error(L, "error loading module '%s' from file '%s':\n\t%s", name, path,
                          lua_tostring(L, -1));
    if (!is_builtin(lua_tostring(L, lua_upvalueindex(1)), path))
        mark_interpreted(L, -1);
    return 1;
}

static void install_ops_loaders(lua_State *L, const char *lua_dir)
{
    lua_pushlightuserdata(L, &key_jit_off);
    lua_getglobal(L, "jit");
    if (lua_istable(L, -1))
        lua_getfield(L, -1, "off");
    else
        lua_pushnil(L);
    lua_remove(L, -2);
    lua_rawset(L, LUA_REGISTRYINDEX);

    lua_getglobal(L, "package");
    lua_getfield(L, -1, "loaders");
    lua_pushstring(L, lua_dir);
    lua_pushcclosure(L, ops_searcher, 1);
    lua_rawseti(L, -2, 2);
    lua_pop(L, 2);

    static const char *const loaders[] = {"load", "loadstring", "loadfile"};
    for (size_t i = 0; i < sizeof loaders / sizeof *loaders; i++) {
        lua_getglobal(L, loaders[i]);
        lua_pushcclosure(L, ops_load, 1);
        lua_setglobal(L, loaders[i]);
    }
    lua_pushcfunction(L, ops_dofile);
    lua_setglobal(L, "dofile");
}

int sl_luahost_new(sl_luahost_t **out, const sl_luahost_opts_t *o, char *err, size_t errlen)
{
    sl_luahost_t *h = calloc(1, sizeof *h);
    if (!h)
        return SL_ENOMEM;
    h->refs = 1;
    h->loop = o->loop;
    h->upstream = o->upstream;
    h->worker_id = o->worker_id;
    h->budget = 200e6; /* generous while loading; the config sets the real one */
    lua_State *L = h->L = luaL_newstate();
    if (!L) {
        free(h);
        return SL_ENOMEM;
    }
    luaL_openlibs(L);
    lua_sethook(L, budget_hook, LUA_MASKCOUNT, BUDGET_STEP);
    seed_random(L);

    /* package.path: the built-in library only; configs add their own dirs. */
    lua_getglobal(L, "package");
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua", o->lua_dir, o->lua_dir);
    lua_setfield(L, -2, "path");
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, luaopen_sluice_json);
    lua_setfield(L, -2, "sluice.json");
    lua_pushcfunction(L, luaopen_sluice_shared);
    lua_setfield(L, -2, "sluice.shared");
    lua_pushcfunction(L, luaopen_sluice_core);
    lua_setfield(L, -2, "sluice.core");
    lua_pop(L, 2);
    install_ops_loaders(L, o->lua_dir);

    budget_start(h);
    lua_pushcfunction(L, traceback);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "sluice.host");
    int rc = lua_pcall(L, 1, 1, -3);
    if (rc == 0) {
        lua_pushvalue(L, -1);
        h->hooks_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        lua_getfield(L, -1, "init");
        lua_pushstring(L, o->config_path);
        lua_pushinteger(L, o->worker_id);
        rc = lua_pcall(L, 2, 2, -5);
        if (rc == 0 && lua_isnil(L, -2)) {
            snprintf(err, errlen, "%s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "bad config");
            running = NULL;
            lua_close(L);
            free(h);
            return SL_ECONFIG;
        }
    }
    running = NULL;
    if (rc != 0) {
        snprintf(err, errlen, "%s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "load failed");
        lua_close(L);
        free(h);
        return SL_ESCRIPT;
    }
    lua_pop(L, 1);
    read_config(L, lua_gettop(L), &h->cfg);
    lua_settop(L, 0);
    h->budget = h->cfg.script_budget ? h->cfg.script_budget : 50e6;
    *out = h;
    return 0;
}

void sl_luahost_retain(sl_luahost_t *h)
{
    h->refs++;
}

void sl_luahost_release(sl_luahost_t *h)
{
    if (!h || --h->refs > 0)
        return;
    lua_close(h->L);
    sl_config_free(&h->cfg);
    free(h);
}

const sl_config_t *sl_luahost_config(const sl_luahost_t *h)
{
    return &h->cfg;
}

uint64_t sl_luahost_script_errors(const sl_luahost_t *h)
{
    return h->script_errors;
}

/* ---- ctx ---- */

int sl_lua_ctx_new(sl_luahost_t *h, const sl_request_t *req, const char *request_id)
{
    lua_State *L = h->L;
    lua_createtable(L, 0, 12);
    lua_pushstring(L, request_id);
    lua_setfield(L, -2, "id");
    lua_pushstring(L, req->method);
    lua_setfield(L, -2, "method");
    lua_pushlstring(L, req->path.base, req->path.len);
    lua_setfield(L, -2, "path");
    lua_pushlstring(L, req->query.base, req->query.len);
    lua_setfield(L, -2, "query");
    push_headers(L, req->headers, req->nheaders);
    lua_setfield(L, -2, "headers");
    lua_pushlstring(L, req->body.base, req->body.len);
    lua_setfield(L, -2, "body");
    lua_pushstring(L, req->peer);
    lua_setfield(L, -2, "peer");
    if (req->error_status) {
        lua_pushinteger(L, req->error_status);
        lua_setfield(L, -2, "reject_status");
    }
    return luaL_ref(L, LUA_REGISTRYINDEX);
}

void sl_lua_ctx_free(sl_luahost_t *h, int ctx)
{
    luaL_unref(h->L, LUA_REGISTRYINDEX, ctx);
}

void sl_lua_ctx_set(sl_luahost_t *h, int ctx, const char *key, sl_str_t value)
{
    lua_rawgeti(h->L, LUA_REGISTRYINDEX, ctx);
    lua_pushlstring(h->L, value.base, value.len);
    lua_setfield(h->L, -2, key);
    lua_pop(h->L, 1);
}

/* ---- plans and responses ---- */

void sl_plan_free(sl_plan_t *p)
{
    free_headers(p->headers, p->nheaders);
    sl_buf_free(&p->body);
    free(p->url);
    free(p->method);
    for (size_t i = 0; i < p->nmarkers; i++)
        free((char *)p->markers[i].value.base);
    for (size_t i = 0; i < p->nusage_markers; i++)
        free((char *)p->usage_markers[i].value.base);
    free(p->service);
    free(p->client);
    free(p->route);
    free(p->supplier);
    free(p->model_in);
    free(p->model_out);
    free(p->error);
    memset(p, 0, sizeof *p);
}

void sl_lua_resp_free(sl_lua_resp_t *r)
{
    free_headers(r->headers, r->nheaders);
    sl_buf_free(&r->body);
    free(r->error);
    memset(r, 0, sizeof *r);
}

/* Appends the string at idx (if it is one) to out; 1 in *has if it was. */
static int append_string_at(lua_State *L, int idx, sl_buf_t *out, int *has)
{
    if (has)
        *has = 0;
    if (lua_type(L, idx) != LUA_TSTRING)
        return 0;
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    if (has)
        *has = 1;
    return sl_buf_append(out, s, n);
}

static int read_body_field(lua_State *L, int idx, sl_buf_t *out, int *has)
{
    lua_getfield(L, idx, "body");
    int rc = append_string_at(L, -1, out, has);
    lua_pop(L, 1);
    return rc;
}

/* A direct/error response table {status, headers, body} at idx. */
static int read_resp(lua_State *L, int idx, sl_lua_resp_t *r, char *err, size_t errlen)
{
    memset(r, 0, sizeof *r);
    sl_buf_init(&r->body, 0);
    r->status = (int)field_num(L, idx, "status", 0);
    if (r->status && (r->status < 100 || r->status > 599)) {
        snprintf(err, errlen, "invalid status %d", r->status);
        return SL_ESCRIPT;
    }
    r->error = field_str(L, idx, "error");
    r->upstream_invalid = field_bool(L, idx, "upstream_invalid", 0);
    lua_getfield(L, idx, "headers");
    int rc = read_headers(L, -1, &r->headers, &r->nheaders, err, errlen);
    lua_pop(L, 1);
    if (!rc)
        rc = read_body_field(L, idx, &r->body, NULL);
    return rc;
}

/* plan[field] = { { event = s } | { data = s } | { data_has = s }... } */
static void read_markers(lua_State *L, int idx, const char *field, sl_sse_marker_t *markers,
                         size_t *count)
{
    lua_getfield(L, idx, field);
    if (lua_istable(L, -1)) {
        size_t n = lua_objlen(L, -1);
        for (size_t i = 1; i <= n && *count < SL_PLAN_MAX_MARKERS; i++) {
            lua_rawgeti(L, -1, (int)i);
            static const struct {
                const char *key;
                sl_sse_mark_kind_t kind;
            } kinds[] = {{"event", SL_SSE_MARK_EVENT},
                         {"data", SL_SSE_MARK_DATA},
                         {"data_has", SL_SSE_MARK_DATA_HAS}};
            for (size_t k = 0; k < 3 && lua_istable(L, -1); k++) {
                char *v = field_str(L, -1, kinds[k].key);
                if (v) {
                    markers[*count].kind = kinds[k].kind;
                    markers[*count].value = sl_str_c(v);
                    (*count)++;
                    break;
                }
            }
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
}

static int read_plan(lua_State *L, int idx, sl_plan_t *p, const sl_config_t *cfg, char *err,
                     size_t errlen)
{
    memset(p, 0, sizeof *p);
    sl_buf_init(&p->body, 0);
    if (!lua_istable(L, idx)) {
        snprintf(err, errlen, "request hook returned %s, expected a table",
                 luaL_typename(L, idx));
        return SL_ESCRIPT;
    }
    p->service = field_str(L, idx, "service");
    p->client = field_str(L, idx, "client");
    p->route = field_str(L, idx, "route");
    p->supplier = field_str(L, idx, "supplier");
    p->model_in = field_str(L, idx, "model_in");
    p->model_out = field_str(L, idx, "model_out");
    p->status = (int)field_num(L, idx, "status", 0);
    lua_getfield(L, idx, "headers");
    int rc = read_headers(L, -1, &p->headers, &p->nheaders, err, errlen);
    lua_pop(L, 1);
    if (rc)
        return rc;
    int has_body;
    if ((rc = read_body_field(L, idx, &p->body, &has_body)))
        return rc;
    if (p->status) { /* a direct response */
        if (p->status < 100 || p->status > 599) {
            snprintf(err, errlen, "invalid status %d", p->status);
            return SL_ESCRIPT;
        }
        p->direct = 1;
        p->error = field_str(L, idx, "error");
        return 0;
    }
    p->url = field_str(L, idx, "url");
    if (!p->url) {
        snprintf(err, errlen, "plan has neither `status` nor `url`");
        return SL_ESCRIPT;
    }
    p->method = field_str(L, idx, "method");
    if (!p->method)
        p->method = strdup("POST");
    p->body_original = !has_body;
    p->stream = field_bool(L, idx, "stream", 0);
    p->transform = field_bool(L, idx, "transform", 0);
    p->verify_tls = field_bool(L, idx, "verify_tls", 1);
    read_markers(L, idx, "terminal", p->markers, &p->nmarkers);
    read_markers(L, idx, "usage_events", p->usage_markers, &p->nusage_markers);
    p->t_connect = cfg->t_connect;
    p->t_first_byte = cfg->t_first_byte;
    p->t_idle = cfg->t_idle;
    p->t_total = cfg->t_total;
    lua_getfield(L, idx, "timeouts");
    if (lua_istable(L, -1)) {
        int t = lua_gettop(L);
        p->t_connect = secs_to_ms(field_num(L, t, "connect", p->t_connect / 1000.0));
        p->t_first_byte = secs_to_ms(field_num(L, t, "first_byte", p->t_first_byte / 1000.0));
        p->t_idle = secs_to_ms(field_num(L, t, "idle", p->t_idle / 1000.0));
        p->t_total = secs_to_ms(field_num(L, t, "total", p->t_total / 1000.0));
    }
    lua_pop(L, 1);
    return 0;
}

/* ---- the request task (coroutine) ---- */

struct sl_lua_task_s {
    sl_luahost_t *h;
    lua_State *co;
    int co_ref;
    int ctx;
    sl_lua_task_cb done;
    void *ud;
    uv_timer_t timer;
    sl_transfer_t *xfer;
    sl_buf_t xbody;
    int xstatus;
    sl_header_t *xheaders;
    size_t nxheaders;
    sl_header_t *req_headers;
    size_t nreq_headers;
    char *req_url, *req_method;
    sl_buf_t req_body;
    int finished;
};

static void task_resume(sl_lua_task_t *t, int nargs);

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
    free_headers(t->xheaders, t->nxheaders);
    t->xheaders = NULL;
    t->nxheaders = 0;
    free_headers(t->req_headers, t->nreq_headers);
    t->req_headers = NULL;
    t->nreq_headers = 0;
    free(t->req_url);
    free(t->req_method);
    t->req_url = t->req_method = NULL;
    sl_buf_free(&t->req_body);
}

static void task_end(sl_lua_task_t *t)
{
    t->finished = 1;
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

static void on_sleep_done(uv_timer_t *timer)
{
    sl_lua_task_t *t = timer->data;
    task_resume(t, 0);
}

static void on_http_head(void *ud, int status, const sl_header_t *hv, size_t n)
{
    sl_lua_task_t *t = ud;
    t->xstatus = status;
    free_headers(t->xheaders, t->nxheaders);
    t->xheaders = calloc(n ? n : 1, sizeof *t->xheaders);
    t->nxheaders = 0;
    for (size_t i = 0; i < n && t->xheaders; i++) {
        t->xheaders[i].name = sl_str(dup_lstr(hv[i].name.base, hv[i].name.len), hv[i].name.len);
        t->xheaders[i].value =
            sl_str(dup_lstr(hv[i].value.base, hv[i].value.len), hv[i].value.len);
        t->nxheaders++;
    }
}

static int on_http_data(void *ud, const char *p, size_t n)
{
    sl_lua_task_t *t = ud;
    if (sl_buf_append(&t->xbody, p, n) == 0)
        return 0;
    t->xstatus = -1; /* too large: on_http_done reports it */
    return SL_TRANSFER_FAIL;
}

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
    push_headers(co, t->xheaders, t->nxheaders);
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

/* The coroutine yielded (SLEEP, seconds) or (HTTP, request table). */
static int task_handle_yield(sl_lua_task_t *t, char *err, size_t errlen)
{
    lua_State *co = t->co;
    int n = lua_gettop(co);
    void *tok = n >= 1 ? lua_touserdata(co, 1) : NULL;
    if (tok == &token_sleep) {
        double s = lua_tonumber(co, 2);
        lua_settop(co, 0);
        uv_timer_start(&t->timer, on_sleep_done, secs_to_ms(s), 0);
        return 0;
    }
    if (tok == &token_http && lua_istable(co, 2)) {
        task_free_http(t); /* what an earlier failed call left behind */
        if (!t->h->upstream) {
            snprintf(err, errlen, "sluice.http is not available here");
            return SL_ESCRIPT;
        }
        t->req_url = field_str(co, 2, "url");
        t->req_method = field_str(co, 2, "method");
        double timeout = field_num(co, 2, "timeout", 10);
        lua_getfield(co, 2, "headers");
        int rc = read_headers(co, -1, &t->req_headers, &t->nreq_headers, err, errlen);
        lua_pop(co, 1);
        if (rc)
            return rc;
        sl_buf_init(&t->req_body, 0);
        sl_buf_init(&t->xbody, 8 << 20);
        int has;
        read_body_field(co, 2, &t->req_body, &has);
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
            .connect_timeout_ms = secs_to_ms(timeout),
            .verify_tls = 1,
        };
        static const sl_transfer_cbs_t cbs = {on_http_head, on_http_data, on_http_done};
        t->xstatus = 0;
        if ((rc = sl_transfer_start(t->h->upstream, &rq, &cbs, t, &t->xfer)) != 0) {
            snprintf(err, errlen, "sluice.http: %s", sl_strerror(rc));
            return rc;
        }
        uv_timer_start(&t->timer, on_http_timeout, secs_to_ms(timeout), 0);
        return 0;
    }
    snprintf(err, errlen, "request hook yielded outside sluice.sleep/sluice.http");
    return SL_ESCRIPT;
}

static void task_resume(sl_lua_task_t *t, int nargs)
{
    sl_luahost_t *h = t->h;
    char err[1024];
    budget_start(h);
    int st = lua_resume(t->co, nargs);
    running = NULL;
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
        snprintf(err, sizeof err, "request hook: %s", lua_tostring(h->L, -1));
        lua_pop(h->L, 1);
        h->script_errors++;
        sl_metrics_script_error("request");
        sl_log_error("script error in request: %s", err);
        task_fail(t, h->budget_hit ? SL_EBUDGET : SL_ESCRIPT, err);
        return;
    }
    sl_plan_t plan;
    int rc = read_plan(t->co, 1, &plan, &h->cfg, err, sizeof err);
    lua_settop(t->co, 0);
    if (rc) {
        sl_plan_free(&plan);
        h->script_errors++;
        sl_log_error("script error in request: %s", err);
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
    lua_rawgeti(h->L, LUA_REGISTRYINDEX, h->hooks_ref);
    lua_getfield(h->L, -1, "request");
    lua_remove(h->L, -2);
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
    if (push_hook(h, "cancel") == 0) {
        char err[256];
        lua_rawgeti(h->L, LUA_REGISTRYINDEX, t->ctx);
        lua_rawgeti(h->L, LUA_REGISTRYINDEX, t->co_ref);
        call_hook(h, "cancel", 2, 0, err, sizeof err);
    }
    task_end(t);
}

/* ---- the other hooks ---- */

int sl_lua_response(sl_luahost_t *h, int ctx, int status, const sl_header_t *hv, size_t n,
                    sl_lua_resp_t *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    sl_buf_init(&out->body, 0);
    if (push_hook(h, "response"))
        return 0;
    lua_rawgeti(h->L, LUA_REGISTRYINDEX, ctx);
    lua_pushinteger(h->L, status);
    push_headers(h->L, hv, n);
    int rc = call_hook(h, "response", 3, 1, err, errlen);
    if (rc)
        return rc;
    if (lua_istable(h->L, -1))
        rc = read_resp(h->L, lua_gettop(h->L), out, err, errlen);
    lua_pop(h->L, 1);
    return rc;
}

int sl_lua_events_begin(sl_luahost_t *h)
{
    lua_createtable(h->L, 8, 0);
    h->batch_n = 0;
    return 0;
}

int sl_lua_events_add(sl_luahost_t *h, const sl_sse_event_t *ev)
{
    lua_State *L = h->L;
    lua_createtable(L, 0, 2);
    if (ev->event.len) {
        lua_pushlstring(L, ev->event.base, ev->event.len);
        lua_setfield(L, -2, "event");
    }
    lua_pushlstring(L, ev->data.base, ev->data.len);
    lua_setfield(L, -2, "data");
    lua_rawseti(L, -2, ++h->batch_n);
    return 0;
}

int sl_lua_events_flush(sl_luahost_t *h, int ctx, const char *hook, sl_buf_t *out, char *err,
                        size_t errlen)
{
    lua_State *L = h->L;
    if (h->batch_n == 0) {
        lua_pop(L, 1);
        return 0;
    }
    if (push_hook(h, hook)) {
        lua_pop(L, 1);
        return 0;
    }
    lua_insert(L, -2);                          /* fn, batch */
    lua_rawgeti(L, LUA_REGISTRYINDEX, ctx);
    lua_insert(L, -2);                          /* fn, ctx, batch */
    int rc = call_hook(h, hook, 2, 1, err, errlen);
    if (rc)
        return rc;
    rc = out ? append_string_at(L, -1, out, NULL) : 0;
    lua_pop(L, 1);
    return rc;
}

int sl_lua_body(sl_luahost_t *h, int ctx, int status, const sl_header_t *hv, size_t n,
                sl_str_t body, sl_lua_resp_t *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    sl_buf_init(&out->body, 0);
    if (push_hook(h, "body")) {
        snprintf(err, errlen, "no body hook");
        return SL_ESCRIPT;
    }
    lua_rawgeti(h->L, LUA_REGISTRYINDEX, ctx);
    lua_pushinteger(h->L, status);
    lua_pushlstring(h->L, body.base, body.len);
    push_headers(h->L, hv, n);
    int rc = call_hook(h, "body", 4, 1, err, errlen);
    if (rc)
        return rc;
    if (lua_istable(h->L, -1))
        rc = read_resp(h->L, lua_gettop(h->L), out, err, errlen);
    else {
        snprintf(err, errlen, "body hook must return a response table");
        rc = SL_ESCRIPT;
    }
    lua_pop(h->L, 1);
    return rc;
}

int sl_lua_finish(sl_luahost_t *h, int ctx, const sl_lua_outcome_t *o, sl_buf_t *bytes,
                  int *ended, sl_lua_resp_t *resp, char *err, size_t errlen)
{
    lua_State *L = h->L;
    *ended = 0;
    memset(resp, 0, sizeof *resp);
    sl_buf_init(&resp->body, 0);
    if (push_hook(h, "finish"))
        return 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ctx);
    lua_createtable(L, 0, 6);
    lua_pushstring(L, o->reason);
    lua_setfield(L, -2, "reason");
    lua_pushboolean(L, o->expected);
    lua_setfield(L, -2, "expected");
    lua_pushboolean(L, o->partial);
    lua_setfield(L, -2, "partial");
    lua_pushboolean(L, o->committed);
    lua_setfield(L, -2, "committed");
    lua_pushinteger(L, o->upstream_status);
    lua_setfield(L, -2, "status");
    lua_pushstring(L, o->detail ? o->detail : "");
    lua_setfield(L, -2, "detail");
    lua_pushboolean(L, o->sse);
    lua_setfield(L, -2, "sse");
    lua_pushnumber(L, (lua_Number)o->events);
    lua_setfield(L, -2, "events");
    int rc = call_hook(h, "finish", 2, 1, err, errlen);
    if (rc)
        return rc;
    if (lua_type(L, -1) == LUA_TSTRING) {
        rc = append_string_at(L, -1, bytes, ended);
    } else if (lua_istable(L, -1)) {
        rc = read_resp(L, lua_gettop(L), resp, err, errlen);
    }
    lua_pop(L, 1);
    return rc;
}

int sl_lua_call_string(sl_luahost_t *h, const char *hook, sl_buf_t *out, char *err, size_t errlen)
{
    if (push_hook(h, hook))
        return SL_ENOTFOUND;
    int rc = call_hook(h, hook, 0, 1, err, errlen);
    if (rc)
        return rc;
    rc = append_string_at(h->L, -1, out, NULL);
    lua_pop(h->L, 1);
    return rc;
}

int sl_lua_retry(sl_luahost_t *h, int ctx, const sl_lua_failure_t *f, double *delay_s, char *err,
                 size_t errlen)
{
    lua_State *L = h->L;
    *delay_s = -1;
    if (push_hook(h, "retry"))
        return 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ctx);
    lua_createtable(L, 0, 5);
    lua_pushstring(L, f->kind);
    lua_setfield(L, -2, "kind");
    lua_pushinteger(L, f->status);
    lua_setfield(L, -2, "status");
    push_headers(L, f->headers, f->nheaders);
    lua_setfield(L, -2, "headers");
    if (f->reason) {
        lua_pushstring(L, f->reason);
        lua_setfield(L, -2, "reason");
    }
    if (f->detail) {
        lua_pushstring(L, f->detail);
        lua_setfield(L, -2, "detail");
    }
    int rc = call_hook(h, "retry", 2, 1, err, errlen);
    if (rc)
        return rc;
    if (lua_isnumber(L, -1))
        *delay_s = lua_tonumber(L, -1);
    lua_pop(L, 1);
    return 0;
}

void sl_lua_logfields_free(sl_lua_logfields_t *f)
{
    free(f->model_out);
    free(f->extra_json);
    free(f->request_body);
    free(f->response_body);
    free(f->service);
    free(f->client);
    free(f->model_in);
    memset(f, 0, sizeof *f);
}

static int64_t field_int_or(lua_State *L, int idx, const char *key)
{
    lua_getfield(L, idx, key);
    int64_t v = lua_isnumber(L, -1) ? (int64_t)lua_tonumber(L, -1) : -1;
    lua_pop(L, 1);
    return v;
}

int sl_lua_log(sl_luahost_t *h, int ctx, sl_lua_logfields_t *out, char *err, size_t errlen)
{
    lua_State *L = h->L;
    memset(out, 0, sizeof *out);
    out->input_tokens = out->output_tokens = -1;
    out->cache_read_tokens = out->cache_write_tokens = -1;
    if (push_hook(h, "log"))
        return 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ctx);
    int rc = call_hook(h, "log", 1, 1, err, errlen);
    if (rc)
        return rc;
    if (lua_istable(L, -1)) {
        int t = lua_gettop(L);
        out->input_tokens = field_int_or(L, t, "input_tokens");
        out->output_tokens = field_int_or(L, t, "output_tokens");
        out->cache_read_tokens = field_int_or(L, t, "cache_read_tokens");
        out->cache_write_tokens = field_int_or(L, t, "cache_write_tokens");
        out->model_out = field_str(L, t, "model_out");
        out->extra_json = field_str(L, t, "extra_json");
        out->request_body = field_str(L, t, "request_body");
        out->response_body = field_str(L, t, "response_body");
        out->service = field_str(L, t, "service");
        out->client = field_str(L, t, "client");
        out->model_in = field_str(L, t, "model_in");
    }
    lua_pop(L, 1);
    return 0;
}
