/*
 * redis.h — the worker's Redis connection: hiredis's async client driven by
 * the worker's libuv loop through glue of our own (hiredis 0.14's stock
 * libuv adapter ignores poll errors, so a refused or reset connection is
 * never reported and callers hang).
 *
 * One connection per worker loop, made on first configuration and kept
 * across reloads (a reload that names another server replaces it). When the
 * connection fails it is dropped and re-made with a growing backoff; while
 * it is down, sl_redis_exec fails at once (SL_ECLOSED) so callers fall back
 * to the in-process store instead of waiting. Every call that wants its
 * replies carries a deadline: past it the caller gets SL_ETIMEDOUT and the
 * connection is dropped and re-made (a server that slow is treated as down).
 *
 * Calls are pipelines: several commands written at once, their replies
 * delivered in order, one round trip. Replies are borrowed: valid only
 * during on_reply.
 *
 * Threads: a loop's connection is used on that loop's thread only;
 * sl_redis_configure may run on another thread before the loop runs (the
 * main thread builds each worker's first VM), and
 * sl_redis_connected_workers() may be read anywhere.
 */
#ifndef SL_REDIS_H
#define SL_REDIS_H

#include <stddef.h>
#include <uv.h>

typedef struct redisReply sl_redis_reply_t; /* hiredis's redisReply */
typedef struct sl_redis_call_s sl_redis_call_t;

typedef struct {
    /* Reply i (0-based) of the pipeline. */
    void (*on_reply)(void *ud, int i, const sl_redis_reply_t *reply);
    /* The pipeline ended: 0 (every reply delivered), SL_ETIMEDOUT, or
     * SL_ECLOSED (the connection went away). Called exactly once, and never
     * after sl_redis_cancel. */
    void (*on_done)(void *ud, int rc);
} sl_redis_cbs_t;

typedef struct {
    const char *host;
    int port;
    const char *password; /* NULL: no AUTH */
    int db;
    double timeout; /* seconds, every call's deadline */
} sl_redis_opts_t;

/* Points `loop`'s connection at `o`: the first call connects; a call with
 * other settings reconnects. 0, SL_ENOMEM or SL_ELIMIT (too many loops). */
int sl_redis_configure(uv_loop_t *loop, const sl_redis_opts_t *o);
/* 1 if `loop` has a configured connection (up or not). */
int sl_redis_configured(uv_loop_t *loop);
/* Drops `loop`'s connection and frees it (worker shutdown). */
void sl_redis_shutdown_worker(uv_loop_t *loop);

/*
 * Sends `ncmds` commands as one pipeline: command i has argc[i] arguments
 * argv[i][0..] with lengths argvlen[i][0..] (copied before return). With
 * cbs == NULL the replies are ignored (fire and forget) and no deadline is
 * kept. Returns 0 (with *out set when cbs is given), SL_ECLOSED (the
 * connection is down: nothing was sent), SL_EINVAL or SL_ENOMEM.
 */
int sl_redis_exec(uv_loop_t *loop, int ncmds, const int *argc, const char *const *const *argv,
                  const size_t *const *argvlen, const sl_redis_cbs_t *cbs, void *ud,
                  sl_redis_call_t **out);
/* The caller no longer wants the call's callbacks (its request went away). */
void sl_redis_cancel(sl_redis_call_t *c);

/* 1 if `loop`'s connection is up. */
int sl_redis_worker_up(uv_loop_t *loop);
/* Worker connections currently up, process-wide. */
int sl_redis_connected_workers(void);

#endif
