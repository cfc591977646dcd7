/*
 * reload.h — one reload, every worker, one result.
 *
 * A reload (SIGHUP or POST /_sluice/reload) is a round the main thread runs
 * over all workers in two phases:
 *   prepare  every worker builds a new Lua host from the current files and
 *            checks it against what only a restart can change (the listen
 *            addresses it has bound, the number of workers); it keeps the
 *            new host aside and reports ok or the error;
 *   finish   when all have reported, the round succeeded only if every
 *            prepare did: then every worker swaps its new host in (commit),
 *            else every worker drops it (abort) and the old config keeps
 *            serving everywhere. Workers acknowledge.
 * After the acknowledgements the round is logged and counted once in
 * sluice_reloads_total{result}, whatever the number of workers, and every
 * admin request that asked for it is answered on its own worker's thread.
 * Requests that arrive while a round runs are served by the next round (the
 * files may have changed after this one read them); several coalesce.
 *
 * Threads: sl_reload_new/close/free run on the main thread (whose loop runs
 * the rounds); sl_reload_request on any thread; sl_reload_worker_done and
 * sl_reload_deliver on worker threads.
 */
#ifndef SL_RELOAD_H
#define SL_RELOAD_H

#include <uv.h>

#include "worker.h"

/* The result of a round for one caller. Called exactly once: on the
 * caller's worker thread (rc 0; or < 0 with err saying why, including
 * "shutting down"), or — if that worker was gone before the result could
 * be delivered — from sl_reload_free on the main thread with SL_ECLOSED and
 * err NULL, when only `data` may be freed (its connection is closed). */
typedef void (*sl_reload_done_cb)(void *data, int rc, const char *err);

int sl_reload_new(sl_reload_t **out, uv_loop_t *main_loop, sl_app_t *app);
/* Asks for a reload round. `w`/`done`/`data` may be NULL (SIGHUP: nobody
 * waits); otherwise done(data, ...) runs on w's thread with the result.
 * Returns 0, SL_ENOMEM, or SL_ECLOSED when sluice is shutting down (done is
 * then not called). */
int sl_reload_request(sl_reload_t *r, sl_worker_t *w, sl_reload_done_cb done, void *data);
/* A worker finished its part of the current phase: prepare (rc, err), or
 * commit/abort (rc 0). Worker thread. */
void sl_reload_worker_done(sl_reload_t *r, int rc, const char *err);
/* Runs the done callbacks of the callers waiting on worker w. Worker thread. */
void sl_reload_deliver(sl_reload_t *r, sl_worker_t *w);
/* Shutting down: no more rounds; callers still waiting are answered
 * "shutting down". Closes the main-loop handle (main thread). */
void sl_reload_close(sl_reload_t *r);
/* After every worker is joined (main thread). */
void sl_reload_free(sl_reload_t *r);

#endif
