/*
 * luahost.h — one LuaJIT VM per worker and the hooks the core calls in it.
 *
 * The VM loads lua/sluice/host.lua (the glue: the only Lua module that knows
 * this C ABI), whose init loads and validates the config. The hooks, as the
 * core calls them (ctx is the request's table; see sl_lua_ctx_new):
 *   init(config_path, worker_id) -> config view | nil, err    (once, by sl_luahost_new)
 *   request(ctx)                 -> plan | direct response  (a coroutine: may
 *                                   yield in sluice.sleep / sluice.http)
 *   response(ctx, status, headers) -> response head | nil   (nil: pass the head through)
 *   events(ctx, batch)           -> bytes for the client    (translated streams,
 *                                   once per upstream read)
 *   observe(ctx, batch)          -> ignored                 (passthrough streams:
 *                                   Lua only reads, e.g. usage)
 *   body(ctx, status, body, headers) -> response            (non-streamed answers
 *                                   that run through Lua)
 *   finish(ctx, outcome)         -> closing bytes | error response | nil
 *   retry(ctx, failure)          -> seconds until the next attempt | nil (give up)
 *   log(ctx)                     -> fields for the history record
 *   cancel(ctx, coroutine)       -> ignored                 (the request coroutine
 *                                   was abandoned: its client left)
 *   config()                     -> the running config as redacted JSON text
 * A response is a table { status, headers, body, error, upstream_invalid };
 * headers are {{name, value}...} or a name -> value map, and headers handed
 * to Lua are a map with lower-case names. A hook the glue does not define is
 * skipped (body is the exception: it must exist when the plan transforms).
 *
 * Every call runs under an instruction budget; errors and budget overruns are
 * returned as SL_ESCRIPT / SL_EBUDGET with the traceback in `err` — they
 * never unwind into C. Only the request hook may yield.
 *
 * A host is reference counted: a reload makes a new host while requests in
 * flight keep the one they started on until they end.
 *
 * Everything returned to C (plans, headers, bodies) is copied out of the VM
 * into C-owned structures, so nothing borrowed from Lua outlives a call.
 * Views passed in (sl_str_t, header arrays) are borrowed for the call only.
 */
#ifndef SL_LUAHOST_H
#define SL_LUAHOST_H

#include <stdint.h>
#include <uv.h>

#include "arena.h"
#include "buf.h"
#include "server.h"
#include "sse.h"

typedef struct sl_luahost_s sl_luahost_t;
typedef struct sl_lua_task_s sl_lua_task_t;
typedef struct sl_upstream_s sl_upstream_t;

/* The parts of the (validated) config the C core reads: config.core_view()
 * (lua/sluice/config.lua) supplies every one of them, defaults included. */
typedef struct {
    char **listen; /* "host:port" strings */
    size_t nlisten;
    char **tls_cert, **tls_key; /* per listener (nlisten each): PEM paths, NULL = plain HTTP */
    int workers; /* 0 = one per core */
    sl_server_limits_t limits;
    uint64_t t_connect, t_first_byte, t_idle, t_total; /* ms; where plans start */
    size_t max_event;                                  /* bytes of one pending SSE event */
    size_t max_response;    /* bytes of a buffered (non-streamed) upstream answer */
    uint64_t script_budget; /* VM instructions per hook call */
    uint64_t shutdown_timeout_ms;
    char *access_log; /* "off", "stderr", "stdout" or a path */
    char *log_level;
    char *admin_token;  /* NULL when none */
    char *history_path; /* NULL when history is off */
    int history_max;
    int history_bodies;
    int watch_usage; /* read passthrough answers' usage even without a history: a gateway
                      * key charges tokens or cost (sluice.tenants) */
    int ops_code;    /* code ops wrote may run after load (on_request, adapters, any function
                      * the config defines): hooks count instructions against script_budget */
} sl_config_t;

void sl_config_free(sl_config_t *c);

typedef struct {
    const char *config_path;
    const char *lua_dir; /* root of the Lua library (contains sluice/) */
    int worker_id;
    uv_loop_t *loop;         /* NULL for a host used only to check a config */
    sl_upstream_t *upstream; /* for sluice.http; NULL when loop is NULL */
} sl_luahost_opts_t;

/* Builds a VM, loads the host glue and the config. On failure returns a
 * negative code and a message naming the problem (e.g. the config field):
 * SL_ECONFIG for a config init refuses or a view missing a setting,
 * SL_ESCRIPT for glue that fails to load. */
int sl_luahost_new(sl_luahost_t **out, const sl_luahost_opts_t *o, char *err, size_t errlen);
void sl_luahost_retain(sl_luahost_t *h);
void sl_luahost_release(sl_luahost_t *h);
const sl_config_t *sl_luahost_config(const sl_luahost_t *h);
/* A fresh copy of the config (caller frees with sl_config_free). */
int sl_luahost_config_copy(const sl_luahost_t *h, sl_config_t *out);

/* ---- per-request context ---- */

/* Creates the request's ctx table: { id, method, path, query, headers, body,
 * peer, reject_status? }; the request is copied. Returns a handle > 0. */
int sl_lua_ctx_new(sl_luahost_t *h, const sl_request_t *req, const char *request_id);
void sl_lua_ctx_free(sl_luahost_t *h, int ctx);
/* Sets ctx[key] = value (string) — used for facts C learns later
 * ("answer", "stream_last_event"). */
void sl_lua_ctx_set(sl_luahost_t *h, int ctx, const char *key, sl_str_t value);

/* ---- the plan returned by the request hook ----
 *
 * Lua's plan: { url, method?, headers?, body?, stream?, transform?,
 * terminal?, usage_events?, timeouts? = { connect?, first_byte?, idle?,
 * total? }, verify_tls?, service?, client?, route?, supplier?, model_in?,
 * model_out? }, or a direct response with `status` (and `error`, what the
 * record says went wrong). Markers are { event = s } | { data = s } |
 * { data_has = s }. */

#define SL_PLAN_MAX_MARKERS 8

typedef struct {
    int direct; /* 1: answer with status/headers/body, no upstream */
    int status;
    sl_arena_t arena;     /* holds the header list and every string below */
    sl_header_t *headers;
    size_t nheaders;
    sl_buf_t body;
    int body_original; /* 1: send the client's body unchanged */
    char *url, *method;
    int stream;    /* upstream answers SSE: frame it */
    int transform; /* run events/body hooks; else pass bytes through */
    /* Markers beyond SL_PLAN_MAX_MARKERS are ignored. */
    sl_sse_marker_t markers[SL_PLAN_MAX_MARKERS]; /* the protocol's terminal event */
    size_t nmarkers;
    sl_sse_marker_t usage_markers[SL_PLAN_MAX_MARKERS]; /* events that carry usage */
    size_t nusage_markers;
    uint64_t t_connect, t_first_byte, t_idle, t_total; /* ms; the config's unless set */
    int verify_tls;
    /* For the record and the access log. */
    char *service, *client, *route, *supplier, *model_in, *model_out;
    char *error; /* a direct error answer: what went wrong, for the record */
} sl_plan_t;

void sl_plan_free(sl_plan_t *p);

/* A response computed by Lua (hook-adjusted head, body hook answer, or the
 * error response of finish). */
typedef struct {
    int status;
    sl_arena_t arena; /* holds the header list and the error text */
    sl_header_t *headers;
    size_t nheaders;
    sl_buf_t body;
    char *error;          /* an error answer: what went wrong, for the record */
    int upstream_invalid; /* the upstream's answer was unusable: an UPSTREAM_PROTOCOL end */
} sl_lua_resp_t;

void sl_lua_resp_free(sl_lua_resp_t *r);
/* Frees r and makes it the head status + hv (copied): the upstream's head
 * as the client would get it. SL_ENOMEM leaves it without headers. */
int sl_lua_resp_set_head(sl_lua_resp_t *r, int status, const sl_header_t *hv, size_t n);

/* ---- hooks ---- */

/* Runs request(ctx) as a coroutine. `done` is called exactly once (maybe
 * before this returns) with rc 0 and a filled plan (the callback takes it
 * over and frees it with sl_plan_free), or rc < 0 and err (valid during
 * the call).
 * The task holds a reference on the host until it ends.
 * sl_lua_task_cancel() stops a task waiting on sleep/http and calls the
 * cancel hook; done is then not called. After done, the task is gone. */
typedef void (*sl_lua_task_cb)(void *ud, int rc, sl_plan_t *plan, const char *err);
int sl_lua_request(sl_luahost_t *h, int ctx, sl_lua_task_cb done, void *ud, sl_lua_task_t **out);
void sl_lua_task_cancel(sl_lua_task_t *t);

/* response(ctx, status, headers) for the upstream's head; out->status == 0
 * means "pass it through" (the hook returned nil, or is absent). */
int sl_lua_response(sl_luahost_t *h, int ctx, int status, const sl_header_t *hv, size_t n,
                    sl_lua_resp_t *out, char *err, size_t errlen);

/* Batching interface for the per-read stream hooks: begin, add events, then
 * flush once per upstream read into `hook` — "events" (translation: the
 * bytes it returns are appended to out) or "observe" (passthrough: Lua only
 * reads the events, e.g. for usage; out may be NULL). Each event reaches Lua
 * as { event = name (absent when empty), data = data }. An empty batch calls
 * nothing. The batch is built on the VM's stack: other calls may come
 * between begin and flush, but batches do not nest. */
void sl_lua_events_begin(sl_luahost_t *h);
void sl_lua_events_add(sl_luahost_t *h, const sl_sse_event_t *ev);
int sl_lua_events_flush(sl_luahost_t *h, int ctx, const char *hook, sl_buf_t *out, char *err,
                        size_t errlen);

/* body(ctx, status, body, headers) for non-streamed transformed answers;
 * headers are the upstream's (hop-by-hop fields removed). The hook must
 * return a response table; anything else is SL_ESCRIPT. */
int sl_lua_body(sl_luahost_t *h, int ctx, int status, const sl_header_t *hv, size_t n,
                sl_str_t body, sl_lua_resp_t *out, char *err, size_t errlen);

/* What finish is told; Lua sees { reason, expected, partial, committed,
 * status (= upstream_status), detail ("" when NULL), sse, events }. */
typedef struct {
    const char *reason; /* the termination reason's name (term.h) */
    int expected, partial, committed;
    int upstream_status;
    const char *detail;
    int sse;         /* the upstream's answer was an SSE stream (decides the tail) */
    uint64_t events; /* whole SSE events the client was sent on passthrough */
} sl_lua_outcome_t;

/* finish(ctx, outcome): when committed, closing bytes go to `bytes` and
 * *ended says whether the hook ended the client's answer (it returned a
 * string, maybe empty: the stream was already closed its protocol's way);
 * when not committed, an error response goes to `resp` (resp->status 0 if
 * none). */
int sl_lua_finish(sl_luahost_t *h, int ctx, const sl_lua_outcome_t *o, sl_buf_t *bytes, int *ended,
                  sl_lua_resp_t *resp, char *err, size_t errlen);

/* A failure before anything reached the client: may the request be tried
 * again? kind is "status" (the upstream answered `status`, headers given),
 * or "error" (the transfer failed; reason is the termination reason name).
 * Lua sees { kind, status, headers (a map), reason?, detail? }. */
typedef struct {
    const char *kind;
    int status;
    const sl_header_t *headers;
    size_t nheaders;
    const char *reason;
    const char *detail;
} sl_lua_failure_t;

/* retry(ctx, failure): *delay_s >= 0 means "run the request hook again after
 * that many seconds"; < 0 means give up (the failure goes to the client). */
int sl_lua_retry(sl_luahost_t *h, int ctx, const sl_lua_failure_t *f, double *delay_s, char *err,
                 size_t errlen);

/* log(ctx): what the glue adds to the history record and the metrics.
 * Every field may be absent (NULL, or -1 for the counts). */
typedef struct {
    int64_t input_tokens, output_tokens, cache_read_tokens, cache_write_tokens; /* -1 unknown */
    double cost;                        /* USD from the price table; < 0 unknown */
    sl_arena_t arena;                   /* holds the strings below */
    char *model_out;                    /* the model asked of the supplier */
    char *extra_json;                   /* JSON object text, or NULL */
    char *request_body, *response_body; /* redacted, only when history.bodies is on */
    char *service, *client, *model_in;  /* what Lua learned, for requests that never got a plan */
    char *gateway_key; /* which of `keys` the client used: its id, or "key#2" for a plain
                        * string key; never the key */
} sl_lua_logfields_t;

int sl_lua_log(sl_luahost_t *h, int ctx, sl_lua_logfields_t *out, char *err, size_t errlen);
void sl_lua_logfields_free(sl_lua_logfields_t *f);

/* Calls a no-argument hook that returns a string ("config": the running
 * config as redacted JSON; "sessions": the live sessions; "keys": the gateway
 * keys by id with their use against each limit) and appends it to out.
 * SL_ENOTFOUND if absent. */
int sl_lua_call_string(sl_luahost_t *h, const char *hook, sl_buf_t *out, char *err, size_t errlen);

/* Budget/script errors since the host was created (metrics count them by
 * hook on their own; this is the host's tally, for tests and diagnostics). */
uint64_t sl_luahost_script_errors(const sl_luahost_t *h);

#endif
