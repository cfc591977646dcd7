/*
 * luahost.c — the LuaJIT VM of one worker, its budget, and the hook calls
 * (see luahost.h; how the host is split across files: luahost_int.h).
 *
 * Why an instruction budget needs help from the JIT: LuaJIT's count hook is
 * only checked by the interpreter, so a runaway loop that gets compiled
 * never hits it. host.lua therefore loads ops-written code (the config file
 * and its functions, adapters) with jit.off(chunk, true), and the loaders
 * installed here do the same for modules `require`d from outside the
 * library (lua_path) and for chunks from load/loadstring/loadfile/dofile, so
 * that code always runs interpreted and stays under the budget, while the
 * built-in library is compiled as usual. The hook itself is VM-wide in
 * LuaJIT, so it also covers the request coroutines (luahost_task.c); it is
 * taken off after load when the config brings no ops code (sl_luahost_new).
 *
 * Hooks are looked up once, after host.init, by the names in SL__HOOK_MAP:
 * the one list of them the core has. Each call below pushes its arguments
 * (built by luahost_marshal.c), runs the hook under the budget with a
 * traceback handler, and copies the result out before popping it.
 */
#include "luahost.h"

#include <lauxlib.h>
#include <lualib.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "error.h"
#include "json.h"
#include "log.h"
#include "luahost_int.h"
#include "metrics.h"
#include "shared.h"

#define BUDGET_STEP 1000
/* Loading the glue and the config runs before the config's script_budget is
 * known: a bound of its own, generous, that still stops a config that loops. */
#define LOAD_BUDGET 200000000ull

static __thread sl_luahost_t *running; /* the host whose code is executing */

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

void sl__luahost_enter(sl_luahost_t *h)
{
    running = h;
    h->used = 0;
    h->budget_hit = 0;
}

void sl__luahost_leave(void)
{
    running = NULL;
}

sl_luahost_t *sl__luahost_running(void)
{
    return running;
}

/* ---- hooks ---- */

static const char *const hook_names[SL__HOOK_COUNT] = {
#define X(id, name) [SL__HOOK_##id] = name,
    SL__HOOK_MAP(X)
#undef X
};

const char *sl__hook_name(sl__hook_t hook)
{
    return hook_names[hook];
}

/* The hook a caller names by string (sl_lua_events_flush, sl_lua_call_string);
 * -1 if it is none of the glue's. */
static int hook_by_name(const char *name)
{
    for (int i = 0; i < SL__HOOK_COUNT; i++)
        if (strcmp(hook_names[i], name) == 0)
            return i;
    return -1;
}

/* Takes a reference to every hook the glue module (at the top) defines. */
static void resolve_hooks(sl_luahost_t *h)
{
    lua_State *L = h->L;
    for (int i = 0; i < SL__HOOK_COUNT; i++) {
        lua_getfield(L, -1, hook_names[i]);
        if (lua_isfunction(L, -1))
            h->hook_refs[i] = luaL_ref(L, LUA_REGISTRYINDEX);
        else {
            lua_pop(L, 1);
            h->hook_refs[i] = LUA_NOREF;
        }
    }
}

int sl__hook_push(sl_luahost_t *h, sl__hook_t hook)
{
    if (h->hook_refs[hook] == LUA_NOREF)
        return SL_ENOTFOUND;
    lua_rawgeti(h->L, LUA_REGISTRYINDEX, h->hook_refs[hook]);
    return 0;
}

static int traceback(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    luaL_traceback(L, L, msg ? msg : "(error object is not a string)", 1);
    return 1;
}

int sl__hook_call(sl_luahost_t *h, sl__hook_t hook, int nargs, int nres, char *err, size_t errlen)
{
    lua_State *L = h->L;
    const char *name = hook_names[hook];
    int base = lua_gettop(L) - nargs;
    lua_pushcfunction(L, traceback);
    lua_insert(L, base);
    sl__luahost_enter(h);
    int rc = lua_pcall(L, nargs, nres, base);
    sl__luahost_leave();
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

/* ---- the sluice.core module (used only by the glue and lua/sluice/init.lua) ---- */

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

/* count(name, label_k?, label_v?): one more on a counter of the script's own
 * (sl_metrics_count; names it refuses are ignored). */
static int core_count(lua_State *L)
{
    sl_metrics_count(luaL_checkstring(L, 1), luaL_optstring(L, 2, NULL), luaL_optstring(L, 3, NULL));
    return 0;
}

static int luaopen_sluice_core(lua_State *L)
{
    static const luaL_Reg fns[] = {{"log", core_log},
                                   {"now", core_now},
                                   {"monotonic", core_monotonic},
                                   {"count", core_count},
                                   {NULL, NULL}};
    lua_newtable(L);
    luaL_register(L, NULL, fns);
    sl__redis_register(L);
    sl__task_set_tokens(L);
    sl_luahost_t *h = running;
    lua_pushinteger(L, h ? h->worker_id : 0);
    lua_setfield(L, -2, "worker_id");
    lua_pushstring(L, SLUICE_VERSION);
    lua_setfield(L, -2, "version");
    return 1;
}

/* ---- a fresh VM ---- */

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
    sl_luahost_t *h = sl__luahost_running();
    if (h)
        h->ops_chunks++;
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

static lua_State *open_vm(const char *lua_dir)
{
    lua_State *L = luaL_newstate();
    if (!L)
        return NULL;
    luaL_openlibs(L);
    lua_sethook(L, budget_hook, LUA_MASKCOUNT, BUDGET_STEP);
    seed_random(L);

    /* package.path: the built-in library only; configs add their own dirs. */
    lua_getglobal(L, "package");
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua", lua_dir, lua_dir);
    lua_setfield(L, -2, "path");
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, luaopen_sluice_json);
    lua_setfield(L, -2, "sluice.json");
    lua_pushcfunction(L, luaopen_sluice_shared);
    lua_setfield(L, -2, "sluice.shared");
    lua_pushcfunction(L, luaopen_sluice_core);
    lua_setfield(L, -2, "sluice.core");
    lua_pop(L, 2);
    install_ops_loaders(L, lua_dir);
    return L;
}

/* require("sluice.host"), then init(config_path, worker_id): leaves the
 * glue module and the config view on the stack. A load that fails is
 * SL_ESCRIPT; a config that init refuses is SL_ECONFIG. */
static int load_glue(sl_luahost_t *h, const sl_luahost_opts_t *o, char *err, size_t errlen)
{
    lua_State *L = h->L;
    sl__luahost_enter(h);
    lua_pushcfunction(L, traceback);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "sluice.host");
    int rc = lua_pcall(L, 1, 1, 1);
    if (rc == 0) {
        lua_getfield(L, -1, hook_names[SL__HOOK_INIT]);
        lua_pushstring(L, o->config_path);
        lua_pushinteger(L, o->worker_id);
        rc = lua_pcall(L, 2, 2, 1);
    }
    sl__luahost_leave();
    if (rc != 0) {
        snprintf(err, errlen, "%s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "load failed");
        return SL_ESCRIPT;
    }
    if (lua_isnil(L, -2)) {
        snprintf(err, errlen, "%s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "bad config");
        return SL_ECONFIG;
    }
    lua_pop(L, 1);    /* module, view */
    lua_remove(L, 1); /* the traceback handler */
    return 0;
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
    h->budget = LOAD_BUDGET;
    if (!(h->L = open_vm(o->lua_dir))) {
        free(h);
        return SL_ENOMEM;
    }
    int rc = load_glue(h, o, err, errlen);
    if (rc == 0)
        rc = sl__config_read(h->L, -1, &h->cfg, err, errlen);
    if (rc != 0) {
        lua_close(h->L);
        free(h);
        return rc;
    }
    lua_pop(h->L, 1); /* the view */
    resolve_hooks(h);
    lua_settop(h->L, 0);
    h->budget = h->cfg.script_budget;
    /* The count hook makes LuaJIT step every instruction through it, which
     * cost the built-in library half again its time per request. It stays
     * where ops code may run: the config says so (config.lua's
     * runs_ops_code), or loading it marked a chunk besides the config file
     * itself (one it ran with dofile, load or require from lua_path). With
     * no ops code, hooks run the library alone, which is bounded by design
     * and mostly compiled, where the count never reached anyway. */
    if (!h->cfg.ops_code && h->ops_chunks <= 1)
        lua_sethook(h->L, NULL, 0, 0);
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

uint64_t sl_luahost_script_errors(const sl_luahost_t *h)
{
    return h->script_errors;
}

/* ---- the hooks called outside the request coroutine ---- */

int sl_lua_response(sl_luahost_t *h, int ctx, int status, const sl_header_t *hv, size_t n,
                    sl_lua_resp_t *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    sl_buf_init(&out->body, 0);
    if (sl__hook_push(h, SL__HOOK_RESPONSE))
        return 0;
    lua_rawgeti(h->L, LUA_REGISTRYINDEX, ctx);
    lua_pushinteger(h->L, status);
    sl__headers_push(h->L, hv, n);
    int rc = sl__hook_call(h, SL__HOOK_RESPONSE, 3, 1, err, errlen);
    if (rc)
        return rc;
    if (lua_istable(h->L, -1))
        rc = sl__resp_read(h->L, lua_gettop(h->L), out, err, errlen);
    lua_pop(h->L, 1);
    return rc;
}

int sl_lua_events_flush(sl_luahost_t *h, int ctx, const char *hook, sl_buf_t *out, char *err,
                        size_t errlen)
{
    lua_State *L = h->L;
    int id = hook_by_name(hook);
    if (h->batch_n == 0 || id < 0 || sl__hook_push(h, (sl__hook_t)id)) {
        lua_pop(L, 1); /* the batch */
        return 0;
    }
    lua_insert(L, -2); /* fn, batch */
    lua_rawgeti(L, LUA_REGISTRYINDEX, ctx);
    lua_insert(L, -2); /* fn, ctx, batch */
    int rc = sl__hook_call(h, (sl__hook_t)id, 2, 1, err, errlen);
    if (rc)
        return rc;
    rc = out ? sl__lua_append_string(L, -1, out, NULL) : 0;
    lua_pop(L, 1);
    return rc;
}

int sl_lua_body(sl_luahost_t *h, int ctx, int status, const sl_header_t *hv, size_t n,
                sl_str_t body, sl_lua_resp_t *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    sl_buf_init(&out->body, 0);
    if (sl__hook_push(h, SL__HOOK_BODY)) {
        snprintf(err, errlen, "no body hook");
        return SL_ESCRIPT;
    }
    lua_rawgeti(h->L, LUA_REGISTRYINDEX, ctx);
    lua_pushinteger(h->L, status);
    lua_pushlstring(h->L, body.base, body.len);
    sl__headers_push(h->L, hv, n);
    int rc = sl__hook_call(h, SL__HOOK_BODY, 4, 1, err, errlen);
    if (rc)
        return rc;
    if (lua_istable(h->L, -1))
        rc = sl__resp_read(h->L, lua_gettop(h->L), out, err, errlen);
    else {
        snprintf(err, errlen, "body hook must return a response table");
        rc = SL_ESCRIPT;
    }
    lua_pop(h->L, 1);
    return rc;
}

int sl_lua_finish(sl_luahost_t *h, int ctx, const sl_lua_outcome_t *o, sl_buf_t *bytes, int *ended,
                  sl_lua_resp_t *resp, char *err, size_t errlen)
{
    lua_State *L = h->L;
    *ended = 0;
    memset(resp, 0, sizeof *resp);
    sl_buf_init(&resp->body, 0);
    if (sl__hook_push(h, SL__HOOK_FINISH))
        return 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ctx);
    sl__outcome_push(L, o);
    int rc = sl__hook_call(h, SL__HOOK_FINISH, 2, 1, err, errlen);
    if (rc)
        return rc;
    if (lua_type(L, -1) == LUA_TSTRING)
        rc = sl__lua_append_string(L, -1, bytes, ended);
    else if (lua_istable(L, -1))
        rc = sl__resp_read(L, lua_gettop(L), resp, err, errlen);
    lua_pop(L, 1);
    return rc;
}

int sl_lua_retry(sl_luahost_t *h, int ctx, const sl_lua_failure_t *f, double *delay_s, char *err,
                 size_t errlen)
{
    lua_State *L = h->L;
    *delay_s = -1;
    if (sl__hook_push(h, SL__HOOK_RETRY))
        return 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ctx);
    sl__failure_push(L, f);
    int rc = sl__hook_call(h, SL__HOOK_RETRY, 2, 1, err, errlen);
    if (rc)
        return rc;
    if (lua_isnumber(L, -1))
        *delay_s = lua_tonumber(L, -1);
    lua_pop(L, 1);
    return 0;
}

int sl_lua_log(sl_luahost_t *h, int ctx, sl_lua_logfields_t *out, char *err, size_t errlen)
{
    lua_State *L = h->L;
    sl__logfields_init(out);
    if (sl__hook_push(h, SL__HOOK_LOG))
        return 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ctx);
    int rc = sl__hook_call(h, SL__HOOK_LOG, 1, 1, err, errlen);
    if (rc)
        return rc;
    if (lua_istable(L, -1))
        sl__logfields_read(L, lua_gettop(L), out);
    lua_pop(L, 1);
    return 0;
}

int sl_lua_call_string(sl_luahost_t *h, const char *hook, sl_buf_t *out, char *err, size_t errlen)
{
    int id = hook_by_name(hook);
    if (id < 0 || sl__hook_push(h, (sl__hook_t)id))
        return SL_ENOTFOUND;
    int rc = sl__hook_call(h, (sl__hook_t)id, 0, 1, err, errlen);
    if (rc)
        return rc;
    rc = sl__lua_append_string(h->L, -1, out, NULL);
    lua_pop(h->L, 1);
    return rc;
}
