/*
 * reload.c — reload rounds (see reload.h).
 *
 * Why a round and not "every worker reloads on its own": workers that load
 * the same files mostly agree, but not always (a file rewritten between two
 * loads, an environment variable, a failure in one VM), and a reload that
 * half the workers took would serve two configs behind one address while
 * the counters say whatever the worker that happened to count saw. So the
 * main thread asks every worker to prepare, decides once, and tells every
 * worker the same thing.
 *
 * State lives behind one mutex. Workers report with sl_reload_worker_done,
 * which wakes the main loop when the last one is in; the main loop moves
 * the round on. Callers' results go back through each caller's worker
 * (SL_WORKER_CMD_RELOAD_REPLY), since only that thread may touch its
 * connection.
 */
#include "reload.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "log.h"
#include "metrics.h"

typedef struct waiter_s {
    struct waiter_s *next;
    sl_worker_t *w;
    sl_reload_done_cb done;
    void *data;
    int rc;
    char err[1024];
} waiter_t;

enum { IDLE, PREPARE, FINISH };

struct sl_reload_s {
    uv_mutex_t lock;
    uv_async_t wake; /* on the main loop */
    sl_app_t *app;
    int closed;
    int requested;    /* a round is wanted (after the current one, if any) */
    int phase;        /* IDLE, PREPARE or FINISH */
    int pending;      /* workers yet to report in this phase */
    int failed;       /* a worker's prepare failed: the round aborts */
    char err[1024];   /* the first failure */
    waiter_t *queued; /* asked since the current round began */
    waiter_t *round;  /* waiting for the current round */
    waiter_t *ready;  /* results handed to their workers, not yet delivered */
};

static void post_all(sl_reload_t *r, int cmd)
{
    for (int i = 0; i < r->app->nworkers; i++)
        sl_worker_post(r->app->workers[i], cmd);
}

/* Hands the waiters of `list` their result, via their workers. Lock held. */
static void answer(sl_reload_t *r, waiter_t *list, int rc, const char *err)
{
    while (list) {
        waiter_t *wt = list;
        list = wt->next;
        wt->rc = rc;
        snprintf(wt->err, sizeof wt->err, "%s", err ? err : "");
        wt->next = r->ready;
        r->ready = wt;
        sl_worker_post(wt->w, SL_WORKER_CMD_RELOAD_REPLY);
    }
}

static void round_finished(sl_reload_t *r)
{
    int ok = !r->failed;
    sl_metrics_reload(ok);
    atomic_fetch_add(ok ? &r->app->reloads_ok : &r->app->reloads_failed, 1);
    if (ok)
        sl_log_info("reloaded %s (%d worker(s))", r->app->config_path, r->app->nworkers);
    else
        sl_log_error("reload failed, keeping the running config: %s", r->err);
    answer(r, r->round, ok ? 0 : SL_ECONFIG, ok ? NULL : r->err);
    r->round = NULL;
    r->phase = IDLE;
}

static void on_wake(uv_async_t *a)
{
    sl_reload_t *r = a->data;
    uv_mutex_lock(&r->lock);
    if (!r->closed && r->phase != IDLE && r->pending == 0) {
        if (r->phase == PREPARE) {
            r->phase = FINISH;
            r->pending = r->app->nworkers;
            post_all(r, r->failed ? SL_WORKER_CMD_RELOAD_ABORT : SL_WORKER_CMD_RELOAD_COMMIT);
        } else {
            round_finished(r);
        }
    }
    if (!r->closed && r->phase == IDLE && r->requested) {
        r->requested = 0;
        r->phase = PREPARE;
        r->pending = r->app->nworkers;
        r->failed = 0;
        r->err[0] = '\0';
        r->round = r->queued;
        r->queued = NULL;
        post_all(r, SL_WORKER_CMD_RELOAD_PREPARE);
    }
    uv_mutex_unlock(&r->lock);
}

int sl_reload_new(sl_reload_t **out, uv_loop_t *main_loop, sl_app_t *app)
{
    sl_reload_t *r = calloc(1, sizeof *r);
    if (!r)
        return SL_ENOMEM;
    r->app = app;
    uv_mutex_init(&r->lock);
    uv_async_init(main_loop, &r->wake, on_wake);
    r->wake.data = r;
    *out = r;
    return 0;
}

int sl_reload_request(sl_reload_t *r, sl_worker_t *w, sl_reload_done_cb done, void *data)
{
    waiter_t *wt = NULL;
    if (done) {
        if (!(wt = calloc(1, sizeof *wt)))
            return SL_ENOMEM;
        wt->w = w;
        wt->done = done;
        wt->data = data;
    }
    uv_mutex_lock(&r->lock);
    if (r->closed) {
        uv_mutex_unlock(&r->lock);
        free(wt);
        return SL_ECLOSED;
    }
    if (wt) {
        wt->next = r->queued;
        r->queued = wt;
    }
    r->requested = 1;
    uv_async_send(&r->wake);
    uv_mutex_unlock(&r->lock);
    return 0;
}

void sl_reload_worker_done(sl_reload_t *r, int rc, const char *err)
{
    uv_mutex_lock(&r->lock);
    if (!r->closed && r->phase != IDLE && r->pending > 0) {
        if (rc && !r->failed) {
            r->failed = 1;
            snprintf(r->err, sizeof r->err, "%s", err && *err ? err : sl_strerror(rc));
        }
        if (--r->pending == 0)
            uv_async_send(&r->wake);
    }
    uv_mutex_unlock(&r->lock);
}

void sl_reload_deliver(sl_reload_t *r, sl_worker_t *w)
{
    waiter_t *mine = NULL;
    uv_mutex_lock(&r->lock);
    for (waiter_t **p = &r->ready; *p;) {
        waiter_t *wt = *p;
        if (wt->w == w) {
            *p = wt->next;
            wt->next = mine;
            mine = wt;
        } else {
            p = &wt->next;
        }
    }
    uv_mutex_unlock(&r->lock);
    while (mine) {
        waiter_t *wt = mine;
        mine = wt->next;
        wt->done(wt->data, wt->rc, wt->rc ? wt->err : NULL);
        free(wt);
    }
}

void sl_reload_close(sl_reload_t *r)
{
    uv_mutex_lock(&r->lock);
    r->closed = 1;
    answer(r, r->round, SL_ECLOSED, "sluice is shutting down");
    answer(r, r->queued, SL_ECLOSED, "sluice is shutting down");
    r->round = r->queued = NULL;
    uv_mutex_unlock(&r->lock);
    uv_close((uv_handle_t *)&r->wake, NULL);
}

void sl_reload_free(sl_reload_t *r)
{
    if (!r)
        return;
    waiter_t *lists[] = {r->ready, r->round, r->queued};
    for (size_t i = 0; i < sizeof lists / sizeof *lists; i++) {
        while (lists[i]) {
            waiter_t *wt = lists[i];
            lists[i] = wt->next;
            wt->done(wt->data, SL_ECLOSED, NULL);
            free(wt);
        }
    }
    uv_mutex_destroy(&r->lock);
    free(r);
}
