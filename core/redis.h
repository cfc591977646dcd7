/*
 * redis.h — the worker's Redis connection: hiredis's async client driven by
 * the worker's libuv loop through glue of our own (hiredis 0.14's stock
 * libuv adapter ignores poll errors, so a refused or reset connection is
 * never reported and callers hang).
 *
 * One connection per worker thread, made on first configuration and kept
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
 * Threads: everything here runs on the calling worker's loop thread, except
 * sl_redis_connected_workers(), which any thread may read.
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

/* Points this worker thread's connection at `o` (on `loop`): the first call
 * connects; a call with other settings reconnects. 0 or SL_ENOMEM. */
int sl_redis_configure(uv_loop_t *loop, const sl_redis_opts_t *o);
/* 1 if this worker thread has a configured connection (up or not). */
int sl_redis_configured(void);
/* Drops this worker thread's connection and frees it (worker shutdown). */
void sl_redis_shutdown_worker(void);

/*
 * Sends `ncmds` commands as one pipeline: command i has argc[i] arguments
 * argv[i][0..] with lengths argvlen[i][0..] (copied before return). With
 * cbs == NULL the replies are ignored (fire and forget) and no deadline is
 * kept. Returns 0 (with *out set when cbs is given), SL_ECLOSED (the
 * connection is down: nothing was sent), SL_EINVAL or SL_ENOMEM.
 */
int sl_redis_exec(int ncmds, const int *argc, const char *const *const *argv,
                  const size_t *const *argvlen, const sl_redis_cbs_t *cbs, void *ud,
                  sl_redis_call_t **out);
/* The caller no longer wants the call's callbacks (its request went away). */
void sl_redis_cancel(sl_redis_call_t *c);

/* 1 if this worker thread's connection is up. */
int sl_redis_worker_up(void);
/* Worker connections currently up, process-wide. */
int sl_redis_connected_workers(void);

#endif
