/*
 * main.c — the sluice binary: arguments, config check, the worker threads,
 * and signals (TERM/INT drain and exit 0 — or 1 when a worker cannot be
 * stopped in time, see the watchdog; HUP reloads every worker).
 *
 * The main thread owns nothing a request touches. It validates the config
 * once (so `--check` and a bad start-up fail the same way, naming the
 * field), opens the shared pieces (logs, history), starts the workers and
 * then only waits for signals.
 */
#include <curl/curl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "error.h"
#include "log.h"
#include "luahost.h"
#include "metrics.h"
#include "records.h"
#include "reload.h"
#include "shared.h"
#include "worker.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: sluice [-c CONFIG] [--check] [--workers N] [--version]\n"
               "  -c, --config FILE  config file (default $SLUICE_CONFIG or config/sluice.lua)\n"
               "  --check            validate the config and exit (non-zero if it is bad)\n"
               "  --workers N        worker threads (overrides the config)\n"
               "  --version          print the version\n");
}

/* The Lua library: $SLUICE_LUA_DIR, else ../lua next to the binary (the
 * build tree layout), else the source tree this binary was built from. */
static void find_lua_dir(char *out, size_t outlen)
{
    const char *env = getenv("SLUICE_LUA_DIR");
    if (env && *env) {
        snprintf(out, outlen, "%s", env);
        return;
    }
    char exe[PATH_MAX];
    size_t n = sizeof exe;
    if (uv_exepath(exe, &n) == 0) {
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = '\0';
            char probe[PATH_MAX + 32];
            snprintf(probe, sizeof probe, "%s/../lua/sluice/host.lua", exe);
            struct stat st;
            if (stat(probe, &st) == 0 && strlen(exe) + 8 < outlen) {
                memcpy(out, exe, strlen(exe));
                memcpy(out + strlen(exe), "/../lua", 8);
                return;
            }
        }
    }
    snprintf(out, outlen, "%s/lua", SLUICE_SOURCE_DIR);
}

static void mkdirs_for(const char *path)
{
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            mkdir(tmp, 0750);
            *p = '/';
        }
    }
}

static sl_worker_t *workers;
static int nworkers;
static uv_signal_t sig_term, sig_int, sig_hup;
static int stopping;
static sl_app_t app;

/* The shutdown watchdog. Workers drain cooperatively: each stops accepting,
 * lets requests finish for shutdown_timeout, then cuts the rest. A worker
 * stuck where neither its loop nor the script budget gets control (ops code
 * spinning inside a C function such as a pathological string.find) would
 * keep main joining it forever, and SIGTERM would never end the process.
 * So once SIGTERM arrives a thread waits shutdown_timeout plus a grace for
 * the joins; if they have not all returned by then it logs, flushes what
 * the history writer has been given, and _exits 1 — not 0: a forced exit is
 * not a clean drain, and the requests on the stuck worker are lost. */
#define SHUTDOWN_GRACE_MS 2000

static uv_thread_t watchdog_thread;
static uv_mutex_t watchdog_lock;
static uv_cond_t watchdog_cond;
static int watchdog_started, workers_joined;

static void watchdog(void *arg)
{
    uint64_t limit_ms = atomic_load(&app.shutdown_timeout_ms) + SHUTDOWN_GRACE_MS;
    uint64_t deadline = uv_hrtime() + limit_ms * 1000000u;
    uv_mutex_lock(&watchdog_lock);
    while (!workers_joined) {
        uint64_t now = uv_hrtime();
        if (now >= deadline)
            break;
        uv_cond_timedwait(&watchdog_cond, &watchdog_lock, deadline - now);
    }
    int joined = workers_joined;
    uv_mutex_unlock(&watchdog_lock);
    if (joined)
        return;
    sl_log_error("shutdown: worker(s) did not stop within shutdown_timeout + %d ms (stuck outside "
                 "the script budget?); exiting without them",
                 SHUTDOWN_GRACE_MS);
    if (app.records && sl_records_flush(app.records, 1000) != 0)
        sl_log_error("shutdown: the history could not be flushed in time");
    _exit(1);
}

static void start_watchdog(void)
{
    uv_mutex_init(&watchdog_lock);
    uv_cond_init(&watchdog_cond);
    if (uv_thread_create(&watchdog_thread, watchdog, NULL) == 0)
        watchdog_started = 1;
}

static void stop_watchdog(void)
{
    if (!watchdog_started)
        return;
    uv_mutex_lock(&watchdog_lock);
    workers_joined = 1;
    uv_cond_signal(&watchdog_cond);
    uv_mutex_unlock(&watchdog_lock);
    uv_thread_join(&watchdog_thread);
    uv_cond_destroy(&watchdog_cond);
    uv_mutex_destroy(&watchdog_lock);
}

static void on_signal(uv_signal_t *s, int signum)
{
    if (signum == SIGHUP) {
        sl_log_info("SIGHUP: reloading %d worker(s)", nworkers);
        sl_reload_request(app.reload, NULL, NULL, NULL);
        return;
    }
    if (stopping)
        return;
    stopping = 1;
    sl_log_info("%s: draining in-flight requests", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    start_watchdog();
    sl_reload_close(app.reload);
    for (int i = 0; i < nworkers; i++)
        sl_worker_post(&workers[i], SL_WORKER_CMD_STOP);
    uv_close((uv_handle_t *)&sig_term, NULL);
    uv_close((uv_handle_t *)&sig_int, NULL);
    uv_close((uv_handle_t *)&sig_hup, NULL);
}

int main(int argc, char **argv)
{
    const char *config = getenv("SLUICE_CONFIG");
    int check = 0, workers_override = 0;
    if (!config || !*config)
        config = "config/sluice.lua";
    for (int i = 1; i < argc; i++) {
        if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) && i + 1 < argc) {
            config = argv[++i];
        } else if (!strcmp(argv[i], "--check")) {
            check = 1;
        } else if (!strcmp(argv[i], "--workers") && i + 1 < argc) {
            workers_override = atoi(argv[++i]);
            if (workers_override < 1 || workers_override > 256) {
                fprintf(stderr, "sluice: --workers must be between 1 and 256\n");
                return 2;
            }
        } else if (!strcmp(argv[i], "--version")) {
            printf("sluice %s\n", SLUICE_VERSION);
            return 0;
        } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "sluice: unknown argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }

    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    char lua_dir[PATH_MAX];
    find_lua_dir(lua_dir, sizeof lua_dir);

    /* Validate once on this thread: the same path --check takes. */
    char err[2048];
    sl_luahost_t *probe;
    sl_luahost_opts_t po = {config, lua_dir, 0, NULL, NULL};
    if (sl_luahost_new(&probe, &po, err, sizeof err) != 0) {
        fprintf(stderr, "sluice: %s: %s\n", config, err);
        return 1;
    }
    if (check) {
        printf("sluice: %s: config ok\n", config);
        sl_luahost_release(probe);
        return 0;
    }
    /* Every string of a loaded config is set (the reader has no defaults,
     * a missing one fails the load), so only the copy itself can fail. */
    sl_config_t cfg;
    int rc = sl_luahost_config_copy(probe, &cfg);
    sl_luahost_release(probe);
    if (rc) {
        fprintf(stderr, "sluice: %s\n", sl_strerror(rc));
        return 1;
    }

    sl_log_level_t level;
    if (sl_log_level_parse(cfg.log_level, &level) == 0)
        sl_log_set_level(level);
    rc = sl_access_log_open(cfg.access_log);
    if (rc) {
        fprintf(stderr, "sluice: log.access %s: %s\n", cfg.access_log, sl_strerror(rc));
        return 1;
    }
    sl_metrics_init();
    sl_shared_init(0, 0); /* the cross-worker dict: cached tokens, sessions */

    app.config_path = config;
    app.lua_dir = lua_dir;
    app.started = (double)time(NULL);
    atomic_store(&app.shutdown_timeout_ms, cfg.shutdown_timeout_ms);
    if (cfg.history_path) {
        mkdirs_for(cfg.history_path);
        rc = sl_records_open(&app.records, cfg.history_path, cfg.history_max, cfg.history_bodies);
        if (rc) {
            fprintf(stderr, "sluice: history.path %s: %s\n", cfg.history_path, sl_strerror(rc));
            return 1;
        }
    }

    /* Handlers first: a SIGHUP that arrives while workers start is a reload
     * (delivered once uv_run begins), never the default action (exit). */
    uv_loop_t *loop = uv_default_loop();
    if (sl_reload_new(&app.reload, loop, &app) != 0) {
        fprintf(stderr, "sluice: %s\n", sl_strerror(SL_ENOMEM));
        return 1;
    }
    uv_signal_init(loop, &sig_term);
    uv_signal_init(loop, &sig_int);
    uv_signal_init(loop, &sig_hup);
    uv_signal_start(&sig_term, on_signal, SIGTERM);
    uv_signal_start(&sig_int, on_signal, SIGINT);
    uv_signal_start(&sig_hup, on_signal, SIGHUP);

    nworkers = workers_override ? workers_override : cfg.workers;
    if (nworkers <= 0)
        nworkers = (int)uv_available_parallelism();
    workers = calloc((size_t)nworkers, sizeof *workers);
    app.workers = calloc((size_t)nworkers, sizeof *app.workers);
    app.nworkers = nworkers;
    app.workers_override = workers_override != 0;
    for (int i = 0; i < nworkers; i++)
        app.workers[i] = &workers[i];
    /* Every worker is built before any loop runs (see worker.c). */
    for (int i = 0; i < nworkers; i++) {
        if (sl_worker_start(&workers[i], &app, i + 1, err, sizeof err) != 0) {
            fprintf(stderr, "sluice: %s\n", err);
            return 1;
        }
    }
    for (int i = 0; i < nworkers; i++) {
        if (sl_worker_run(&workers[i], err, sizeof err) != 0) {
            fprintf(stderr, "sluice: %s\n", err);
            return 1;
        }
    }
    for (size_t i = 0; i < cfg.nlisten; i++)
        sl_log_info("sluice %s listening on %s (%d workers)", SLUICE_VERSION, cfg.listen[i],
                    nworkers);

    uv_run(loop, UV_RUN_DEFAULT);

    for (int i = 0; i < nworkers; i++)
        sl_worker_join(&workers[i]);
    stop_watchdog();
    sl_reload_free(app.reload);
    if (app.records)
        sl_records_close(app.records);
    sl_shared_shutdown();
    sl_access_log_close();
    sl_config_free(&cfg);
    free(workers);
    free(app.workers);
    uv_loop_close(loop);
    curl_global_cleanup();
    sl_log_info("sluice stopped");
    return 0;
}
