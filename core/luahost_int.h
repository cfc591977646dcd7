/*
 * luahost_int.h — what the luahost files share with each other, and with
 * nothing else (only core/luahost*.c include it).
 *
 * The host is four files, one concern each:
 *   luahost.c          the VM: creation, the instruction budget, ops code kept
 *                      interpreted, the sluice.core module, and every hook
 *                      call (the one table of hook names is here);
 *   luahost_config.c   reading the config view that host.init returns into
 *                      sl_config_t — every value comes from Lua, none is
 *                      defaulted in C;
 *   luahost_marshal.c  C values to Lua tables and back: ctx, headers, event
 *                      batches, plans, responses, outcomes, failures, log
 *                      fields;
 *   luahost_task.c     the request coroutine and what it may wait on
 *                      (sluice.sleep, sluice.http) on the worker's loop.
 *
 * Names shared across these files start with sl__ (STYLE). Every helper that
 * reads a Lua value copies it into C-owned memory.
 */
#ifndef SL_LUAHOST_INT_H
#define SL_LUAHOST_INT_H

#include <lua.h>

#include "luahost.h"

/* ---- the hooks of the host glue (lua/sluice/host.lua) ----
 *
 * The only list of hook names the core has; luahost.h documents each one's
 * arguments and results. A hook the glue does not define is skipped where
 * that is harmless (see each call in luahost.c). */
#define SL__HOOK_MAP(X)                                                                            \
    X(INIT, "init")                                                                                \
    X(REQUEST, "request")                                                                          \
    X(RESPONSE, "response")                                                                        \
    X(EVENTS, "events")                                                                            \
    X(OBSERVE, "observe")                                                                          \
    X(BODY, "body")                                                                                \
    X(FINISH, "finish")                                                                            \
    X(RETRY, "retry")                                                                              \
    X(LOG, "log")                                                                                  \
    X(CANCEL, "cancel")                                                                            \
    X(CONFIG, "config")                                                                            \
    X(SESSIONS, "sessions")                                                                        \
    X(KEYS, "keys")

typedef enum {
#define X(id, name) SL__HOOK_##id,
    SL__HOOK_MAP(X)
#undef X
        SL__HOOK_COUNT
} sl__hook_t;

struct sl_luahost_s {
    lua_State *L;
    int refs;
    int hook_refs[SL__HOOK_COUNT]; /* registry refs; LUA_NOREF: the glue lacks it */
    sl_config_t cfg;
    uv_loop_t *loop;
    sl_upstream_t *upstream;
    int worker_id;
    uint64_t budget; /* instructions per call */
    uint64_t used;
    int ops_chunks; /* chunks of ops code loaded (marked to run interpreted) */
    int budget_hit;
    uint64_t script_errors;
    int batch_n; /* events added to the pending batch */
};

/* ---- luahost.c: running code under the budget ---- */

/* The host whose code runs now on this thread: enter before any call or
 * resume into its VM (this restarts the budget), leave after it. */
void sl__luahost_enter(sl_luahost_t *h);
void sl__luahost_leave(void);
sl_luahost_t *sl__luahost_running(void);

const char *sl__hook_name(sl__hook_t hook);
/* Pushes the hook's function; SL_ENOTFOUND (nothing pushed) if absent. */
int sl__hook_push(sl_luahost_t *h, sl__hook_t hook);
/* Calls the function below nargs arguments with a traceback handler, under
 * the budget. On error: "<hook> hook: <traceback>" in err, the error counted
 * and logged, the stack as before the function was pushed, and SL_EBUDGET or
 * SL_ESCRIPT returned. */
int sl__hook_call(sl_luahost_t *h, sl__hook_t hook, int nargs, int nres, char *err, size_t errlen);

/* ---- luahost_config.c ---- */

/* Reads the core view at idx into c. A field that is missing or of the
 * wrong type is an error naming it: C has no default to fall back on. */
int sl__config_read(lua_State *L, int idx, sl_config_t *c, char *err, size_t errlen);

/* ---- luahost_marshal.c ---- */

char *sl__lua_dup(const char *s, size_t n);                      /* NUL-terminated copy */
/* A copy of t[key] in the arena, or NULL unless it is a string. */
char *sl__lua_field_str(lua_State *L, int idx, const char *key, sl_arena_t *a);
double sl__lua_field_num(lua_State *L, int idx, const char *key, double dflt);
int sl__lua_field_bool(lua_State *L, int idx, const char *key, int dflt); /* nil: dflt */
uint64_t sl__secs_to_ms(double s);
/* Appends the string at idx (if it is one) to out; 1 in *has if it was. */
int sl__lua_append_string(lua_State *L, int idx, sl_buf_t *out, int *has);
/* Appends t.body (if a string) to out; 1 in *has if there was one. */
int sl__lua_read_body(lua_State *L, int idx, sl_buf_t *out, int *has);

/* Headers to Lua: name (lower case) -> value, repeats joined with ", ". */
void sl__headers_push(lua_State *L, const sl_header_t *hv, size_t n);
/* Headers from Lua: {{name, value}...} or name -> value; nil gives none.
 * A name or value with CR/LF/NUL, or an empty name, is SL_ESCRIPT. The
 * list and its strings are allocated in `a`, and freed with it. */
int sl__headers_read(lua_State *L, int idx, sl_arena_t *a, sl_header_t **out, size_t *nout,
                     char *err, size_t errlen);
/* A copy of hv in `a` (NULL on ENOMEM). */
sl_header_t *sl__headers_copy(sl_arena_t *a, const sl_header_t *hv, size_t n);

/* The plan (or direct response) the request hook returned, at idx; the
 * config supplies the timeouts the plan does not set. */
int sl__plan_read(lua_State *L, int idx, sl_plan_t *p, const sl_config_t *cfg, char *err,
                  size_t errlen);
/* A response table {status, headers, body, error, upstream_invalid} at idx. */
int sl__resp_read(lua_State *L, int idx, sl_lua_resp_t *r, char *err, size_t errlen);
void sl__outcome_push(lua_State *L, const sl_lua_outcome_t *o);
void sl__failure_push(lua_State *L, const sl_lua_failure_t *f);
void sl__logfields_init(sl_lua_logfields_t *f); /* everything unknown */
void sl__logfields_read(lua_State *L, int idx, sl_lua_logfields_t *f);

/* ---- luahost_task.c ---- */

/* Sets SLEEP and HTTP, the yield tokens of sluice.sleep / sluice.http, on
 * the table at the top of the stack (the sluice.core module). */
void sl__task_set_tokens(lua_State *L);

/* ---- luahost_redis.c: sluice.redis ---- */

#include "redis.h"

/* A pipeline read from Lua: n commands, command i with argc[i] arguments. */
typedef struct {
    int n;
    int *argc;
    const char ***argv;
    size_t **argvlen;
    const char **ptrs; /* backing store of argv / argvlen */
    size_t *lens;
} sl__redis_args_t;
int sl__redis_args_read(lua_State *L, int idx, sl__redis_args_t *a, char *err, size_t errlen);
void sl__redis_args_free(sl__redis_args_t *a);
void sl__redis_push_reply(lua_State *L, const sl_redis_reply_t *r);
/* Adds redis_configure, redis_send, redis_up to the table on top. */
void sl__redis_register(lua_State *L);

#endif
