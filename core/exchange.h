/*
 * exchange.h — the life of one proxied request (DESIGN §4): the request
 * hook's plan, the upstream attempts (retries and fallbacks before anything
 * reached the client), the response head, the body (passed through, framed
 * into SSE events for the events hook, or buffered for the body hook), the
 * termination classifier and the finish hook, ending in one outcome value
 * (outcome.h) that the owner reports.
 *
 * The exchange knows its request, its Lua host and its upstream; it does
 * not know the worker that owns it. The owner (worker.c) creates it, keeps
 * it in its list of requests in flight, and learns its end through on_end.
 * The exchange keeps the Lua host it started on (a reload does not disturb
 * it) and frees itself once its timers have closed, after on_end.
 */
#ifndef SL_EXCHANGE_H
#define SL_EXCHANGE_H

#include <uv.h>

#include "luahost.h"
#include "outcome.h"
#include "server.h"
#include "upstream.h"

typedef struct sl_exchange_s sl_exchange_t;

/* How the exchange reaches the upstream: upstream.h's transfer calls, behind
 * pointers so that a test can stand in for curl (tests/test_exchange.c).
 * The contract is upstream.h's. */
typedef struct {
    int (*start)(sl_upstream_t *up, const sl_transfer_req_t *req, const sl_transfer_cbs_t *cbs,
                 void *ud, sl_transfer_t **out);
    void (*resume)(sl_transfer_t *t);
    void (*abort)(sl_transfer_t *t);
    int (*connected)(const sl_transfer_t *t);
} sl_transfer_ops_t;

/* The request is over: `o` (borrowed for the call) says how. Called exactly
 * once per exchange; afterwards the owner must not use `ex` again. */
typedef void (*sl_exchange_end_cb)(void *owner, sl_exchange_t *ex, const sl_outcome_t *o);

typedef struct {
    uv_loop_t *loop;
    sl_luahost_t *host;                /* retained by the exchange for its whole life */
    sl_upstream_t *upstream;           /* handed to transfer->start */
    const sl_transfer_ops_t *transfer; /* NULL: upstream.h's (curl) */
    int watch_usage;                   /* passthrough answers are watched for their usage (a
                                        * history is kept, or a gateway key charges tokens) */
    sl_exchange_end_cb on_end;
    void *owner; /* passed back to on_end */
} sl_exchange_env_t;

/* Creates the exchange for `req` (env is copied) and takes over the
 * connection's handler; nothing runs yet. NULL on ENOMEM: the caller then
 * still owns the connection. */
sl_exchange_t *sl_exchange_new(const sl_exchange_env_t *env, sl_request_t *req);
/* Starts it: runs the request hook. on_end may be called before this
 * returns (a direct answer, a script error). */
void sl_exchange_run(sl_exchange_t *ex);
/* Ends an exchange in flight with a SHUTDOWN outcome (drain timeout). */
void sl_exchange_shutdown(sl_exchange_t *ex);

#endif
