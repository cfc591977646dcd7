/*
 * worker.h — one event-loop thread: its libuv loop, its listening sockets
 * (SO_REUSEPORT), its LuaJIT host, its curl multi handle, and the requests
 * in flight on it. It is the one that tells requests apart: /_sluice/...
 * goes to the admin API (admin.h), everything else becomes an exchange
 * (exchange.h) whose outcome it reports to the access log, the history and
 * the metrics. The main thread creates the workers and talks to them
 * only through sl_worker_post() (a uv_async wake-up), never by touching
 * their state.
 *
 * sl_app_t is what all workers share: read-only paths, the history store
 * (itself thread-safe), the list of workers and the reload rounds.
 */
#ifndef SL_WORKER_H
#define SL_WORKER_H

#include <stdatomic.h>
#include <stdint.h>
#include <uv.h>

#include "luahost.h"
#include "records.h"
#include "server.h"
#include "upstream.h"

typedef struct sl_worker_s sl_worker_t;
typedef struct sl_live_s sl_live_t; /* an exchange in flight (worker.c) */
typedef struct sl_reload_s sl_reload_t;

typedef struct {
    const char *config_path;
    const char *lua_dir;
    sl_records_t *records;      /* NULL when history is off */
    sl_worker_t **workers;
    int nworkers;
    double started;             /* unix time the process started */
    sl_reload_t *reload;        /* reload rounds (reload.h), run by the main thread */
    int workers_override;       /* --workers given: the config's `workers` is not used */
    atomic_int reloads_ok, reloads_failed;
    _Atomic uint64_t shutdown_timeout_ms; /* of the running config: main's shutdown watchdog */
} sl_app_t;

enum {
    SL_WORKER_CMD_RELOAD_PREPARE = 1, /* build and check a new host, keep it aside (reload.h) */
    SL_WORKER_CMD_STOP = 2,
    SL_WORKER_CMD_RELOAD_COMMIT = 4, /* swap the prepared host in */
    SL_WORKER_CMD_RELOAD_ABORT = 8,  /* drop it */
    SL_WORKER_CMD_RELOAD_REPLY = 16, /* answer this worker's reload callers */
};

struct sl_worker_s {
    int id;
    sl_app_t *app;
    uv_loop_t loop;
    uv_thread_t thread;
    uv_async_t async;
    atomic_int cmds;            /* SL_WORKER_CMD_* bits posted by other threads */
    uv_mutex_t post_lock;       /* sl_worker_post vs. closing `async` at the end */
    int async_closed;           /* under post_lock */
    sl_luahost_t *host;         /* current host; exchanges retain the one they use */
    sl_luahost_t *next_host;    /* prepared by a reload round, not yet committed */
    sl_tls_ctx_t **next_tls;    /* its listeners' TLS contexts (nservers; NULL = plain) */
    sl_config_t bound;          /* the config the listeners were bound with */
    sl_upstream_t *upstream;
    sl_upstream_stats_t upstream_stats; /* what it holds, readable from any thread (health) */
    sl_server_t **servers;
    size_t nservers;
    sl_live_t *exchanges; /* in flight, doubly linked */
    size_t nexchanges;
    int stopping;
    uv_timer_t shutdown_timer;  /* polls for "everything drained" while stopping */
    uv_check_t log_flush;       /* writes the access-log lines of each loop pass */
    uv_idle_t log_nudge;        /* active while lines wait: the pass does not block in poll */
    uv_timer_t deadline;        /* shutdown_timeout: then in-flight requests are cut */
    int start_rc;               /* result of starting, for the main thread */
    char start_err[512];
};

/* Creates the worker's loop, host and listeners on the calling thread (so
 * bind errors surface at start-up); sl_worker_run then runs the loop on a
 * new thread. */
int sl_worker_start(sl_worker_t *w, sl_app_t *app, int id, char *err, size_t errlen);
int sl_worker_run(sl_worker_t *w, char *err, size_t errlen);
/* Any thread. A no-op once the worker's loop has closed (it is stopping). */
void sl_worker_post(sl_worker_t *w, int cmd);
void sl_worker_join(sl_worker_t *w);

#endif
