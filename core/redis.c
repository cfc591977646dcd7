/*
 * redis.c — the worker's Redis connection (see redis.h): hiredis async on
 * the worker's libuv loop, with our own event glue, deadlines on every call
 * and reconnection with backoff.
 *
 * The glue: hiredis asks for read/write interest through ev.addRead etc.;
 * we keep one uv_poll_t on the connection's socket with the union of what
 * it asked for. Unlike hiredis 0.14's adapter, a poll error is handed to
 * hiredis as readiness, so hiredis reads or writes, sees the socket error
 * and reports it (connect callback, or pending replies with NULL) — the
 * adapter's silent `return` on error is what made callers hang forever
 * when Redis was down.
 *
 * Lifetimes: a call lives until both its deadline timer is closed and every
 * hiredis callback for its commands has fired (hiredis fires them, with a
 * NULL reply, even when the connection is freed), whatever the caller did
 * meanwhile. The connection context belongs to hiredis: we drop it with
 * redisAsyncFree outside hiredis callbacks only (timer callbacks), after
 * setting r->ac to NULL so our own disconnect callback knows it is stale.
 *
 * Nothing here may block the worker: redisAsyncConnect resolves its host
 * with a blocking getaddrinfo, so a host name is resolved first with
 * uv_getaddrinfo (on libuv's thread pool) and hiredis only ever gets a
 * numeric address. Fire-and-forget sends (no deadline of their own) are
 * bounded: past MAX_SENDS_PENDING unanswered ones the connection counts as
 * down, so a server that stopped reading cannot grow our buffers forever.
 */
#include "redis.h"

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "log.h"
#include "metrics.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000
#define MAX_SENDS_PENDING 4096

typedef struct sl_redis_s sl_redis_t;

struct sl_redis_call_s {
    sl_redis_t *r;
    sl_redis_cbs_t cbs;
    void *ud;
    int ncmds, nreplies;
    int pending;      /* hiredis callbacks still to come */
    int active;       /* the caller still wants callbacks */
    int timer_closed; /* the deadline timer's close callback ran (or no timer) */
    int send;         /* fire-and-forget: counted in r->sends_pending */
    int orphaned;     /* its connection was freed: ends from its timer, SL_ECLOSED */
    uv_timer_t timer;
    sl_redis_call_t *prev, *next; /* active calls of the connection */
};

struct sl_redis_s {
    uv_loop_t *loop;
    char *host, *password;
    int port, db;
    double timeout;
    redisAsyncContext *ac; /* NULL while down */
    uv_poll_t *poll;       /* the glue's watcher, heap: freed in its close callback */
    int events;
    int connected;    /* answered our PING: a TCP handshake alone proves nothing (a
                         stopped server's kernel still accepts) */
    uv_timer_t hello; /* the PING's deadline */
    int open_handles; /* retry + hello: r is freed when both are closed */
    uv_timer_t retry; /* reconnect after backoff; also drops a slow connection */
    int backoff_ms;
    int drop_pending; /* a deadline passed: drop the connection from the timer */
    int closing;      /* being freed: its going down is not logged */
    int sends_pending;         /* fire-and-forget commands not yet answered */
    uv_getaddrinfo_t *resolve; /* resolving r->host before a connect, or NULL */
    sl_redis_call_t *calls;
};

/* The connection of each worker loop. Configured on the thread that builds
 * a worker's VM (the main thread at start, the worker's own on reload) and
 * used on the worker's thread: looked up by loop under a lock. */
#define MAX_LOOPS 256
static struct {
    uv_loop_t *loop;
    sl_redis_t *r;
} by_loop[MAX_LOOPS];
static uv_mutex_t by_loop_lock;
static uv_once_t by_loop_once = UV_ONCE_INIT;

static void by_loop_init(void)
{
    uv_mutex_init(&by_loop_lock);
}

static sl_redis_t *find(uv_loop_t *loop)
{
    sl_redis_t *r = NULL;
    uv_once(&by_loop_once, by_loop_init);
    uv_mutex_lock(&by_loop_lock);
    for (int i = 0; i < MAX_LOOPS; i++)
        if (by_loop[i].loop == loop) {
            r = by_loop[i].r;
            break;
        }
    uv_mutex_unlock(&by_loop_lock);
    return r;
}

/* Sets (r != NULL) or clears the loop's connection. SL_ELIMIT when full. */
static int remember(uv_loop_t *loop, sl_redis_t *r)
{
    int rc = r ? SL_ELIMIT : 0;
    uv_once(&by_loop_once, by_loop_init);
    uv_mutex_lock(&by_loop_lock);
    for (int i = 0; i < MAX_LOOPS; i++)
        if (by_loop[i].loop == loop) {
            by_loop[i].r = r;
            if (!r)
                by_loop[i].loop = NULL;
            rc = 0;
            r = NULL;
            break;
        }
    for (int i = 0; r && i < MAX_LOOPS; i++)
        if (!by_loop[i].loop) {
            by_loop[i].loop = loop;
            by_loop[i].r = r;
            rc = 0;
            break;
        }
    uv_mutex_unlock(&by_loop_lock);
    return rc;
}
static int connected_workers; /* process-wide, atomic */

int sl_redis_connected_workers(void)
{
    return __atomic_load_n(&connected_workers, __ATOMIC_RELAXED);
}

static void set_connected(sl_redis_t *r, int up)
{
    if (r->connected == up)
        return;
    r->connected = up;
    int before = __atomic_fetch_add(&connected_workers, up ? 1 : -1, __ATOMIC_RELAXED);
    sl_metrics_gauge_add(SL_GAUGE_REDIS, up ? 1 : -1);
    if (r->closing)
        return; /* shutting down, or replaced by a reload: not an outage */
    if (up && before == 0)
        sl_log_info("redis %s:%d is up: sessions and tenant counters use it", r->host, r->port);
    else if (!up && before == 1)
        sl_log_warn("redis %s:%d is down: sessions and tenant counters fall back to the "
                    "in-process store",
                    r->host, r->port);
}

/* ---- the glue: hiredis interest -> one uv_poll_t ---- */

static void on_poll(uv_poll_t *p, int status, int events)
{
    sl_redis_t *r = p->data;
    if (!r || !r->ac)
        return;
    redisAsyncContext *ac = r->ac;
    if (status < 0) /* let hiredis see the socket error itself */
        events = r->events;
    if ((events & UV_READABLE) && r->ac == ac)
        redisAsyncHandleRead(ac);
    if ((events & UV_WRITABLE) && r->ac == ac && r->poll == p)
        redisAsyncHandleWrite(ac);
}

static void glue_update(sl_redis_t *r, int add, int ev)
{
    if (!r->poll)
        return;
    int want = add ? (r->events | ev) : (r->events & ~ev);
    if (want == r->events)
        return;
    r->events = want;
    if (want)
        uv_poll_start(r->poll, want, on_poll);
    else
        uv_poll_stop(r->poll);
}

static void glue_add_read(void *d)
{
    glue_update(d, 1, UV_READABLE);
}
static void glue_del_read(void *d)
{
    glue_update(d, 0, UV_READABLE);
}
static void glue_add_write(void *d)
{
    glue_update(d, 1, UV_WRITABLE);
}
static void glue_del_write(void *d)
{
    glue_update(d, 0, UV_WRITABLE);
}

static void on_poll_closed(uv_handle_t *h)
{
    free(h);
}

/* hiredis frees the context: stop watching its socket before it is closed. */
static void glue_cleanup(void *d)
{
    sl_redis_t *r = d;
    if (r->poll) {
        r->poll->data = NULL;
        uv_close((uv_handle_t *)r->poll, on_poll_closed);
        r->poll = NULL;
    }
    r->events = 0;
}

static int glue_attach(sl_redis_t *r, redisAsyncContext *ac)
{
    uv_poll_t *p = calloc(1, sizeof *p);
    if (!p)
        return SL_ENOMEM;
    if (uv_poll_init(r->loop, p, ac->c.fd) != 0) {
        free(p);
        return SL_EIO;
    }
    p->data = r;
    r->poll = p;
    r->events = 0;
    ac->ev.data = r;
    ac->ev.addRead = glue_add_read;
    ac->ev.delRead = glue_del_read;
    ac->ev.addWrite = glue_add_write;
    ac->ev.delWrite = glue_del_write;
    ac->ev.cleanup = glue_cleanup;
    return 0;
}

/* ---- calls ---- */

static void call_maybe_free(sl_redis_call_t *c)
{
    if (c->timer_closed && c->pending == 0)
        free(c);
}

static void on_call_timer_closed(uv_handle_t *h)
{
    sl_redis_call_t *c = h->data;
    c->timer_closed = 1;
    call_maybe_free(c);
}

static void call_unlink(sl_redis_call_t *c)
{
    sl_redis_t *r = c->r;
    if (c->prev)
        c->prev->next = c->next;
    else if (r && r->calls == c)
        r->calls = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

/* Ends an active call: no callback after this one. */
static void call_finish(sl_redis_call_t *c, int rc)
{
    if (!c->active)
        return;
    c->active = 0;
    call_unlink(c);
    uv_close((uv_handle_t *)&c->timer, on_call_timer_closed);
    c->cbs.on_done(c->ud, rc);
}

static void schedule_drop(sl_redis_t *r);

static void on_call_deadline(uv_timer_t *t)
{
    sl_redis_call_t *c = t->data;
    if (c->orphaned) {
        call_finish(c, SL_ECLOSED);
        return;
    }
    call_finish(c, SL_ETIMEDOUT);
    schedule_drop(c->r); /* slower than the timeout: treated as down */
}

static void on_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    sl_redis_call_t *c = priv;
    c->pending--;
    if (c->send)
        c->r->sends_pending--; /* r outlives its context's callbacks (redis_free) */
    if (c->active && !c->orphaned) {
        if (!reply) {
            call_finish(c, SL_ECLOSED);
        } else {
            c->cbs.on_reply(c->ud, c->nreplies++, reply);
            if (c->nreplies == c->ncmds)
                call_finish(c, 0);
        }
    }
    call_maybe_free(c);
}

void sl_redis_cancel(sl_redis_call_t *c)
{
    if (!c || !c->active)
        return;
    c->active = 0;
    call_unlink(c);
    uv_close((uv_handle_t *)&c->timer, on_call_timer_closed);
}

/* ---- the connection ---- */

static void connect_now(sl_redis_t *r);
static void schedule_reconnect(sl_redis_t *r);

static void on_retry_timer(uv_timer_t *t)
{
    sl_redis_t *r = t->data;
    if (r->drop_pending) {
        r->drop_pending = 0;
        redisAsyncContext *ac = r->ac;
        uv_timer_stop(&r->hello);
        if (ac) {
            r->ac = NULL;
            set_connected(r, 0);
            redisAsyncFree(ac); /* pending replies fire with NULL: SL_ECLOSED */
        }
        schedule_reconnect(r);
        return;
    }
    if (!r->ac && !r->resolve)
        connect_now(r);
}

static void schedule_reconnect(sl_redis_t *r)
{
    uv_timer_start(&r->retry, on_retry_timer, (uint64_t)r->backoff_ms, 0);
    r->backoff_ms = r->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : r->backoff_ms * 2;
}

/* Drop the connection from a timer callback (never inside hiredis). */
static void schedule_drop(sl_redis_t *r)
{
    if (!r->ac || r->drop_pending)
        return;
    r->drop_pending = 1;
    uv_timer_start(&r->retry, on_retry_timer, 0, 0);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    sl_redis_t *r = ac->data;
    if (!r || r->ac != ac)
        return;
    if (status != REDIS_OK) {
        /* hiredis frees the context after this callback */
        uv_timer_stop(&r->hello);
        r->ac = NULL;
        set_connected(r, 0);
        schedule_reconnect(r);
    }
}

/* The PING queued at connect time answered: the server is up. */
static void on_hello(redisAsyncContext *ac, void *reply, void *priv)
{
    sl_redis_t *r = ac->data;
    if (!r || r->ac != ac || !reply)
        return;
    uv_timer_stop(&r->hello);
    r->backoff_ms = BACKOFF_MIN_MS;
    set_connected(r, 1);
}

/* No answer to the PING in time: drop the connection and try again later. */
static void on_hello_deadline(uv_timer_t *t)
{
    sl_redis_t *r = t->data;
    schedule_drop(r);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    sl_redis_t *r = ac->data;
    if (!r || r->ac != ac)
        return; /* a context we dropped ourselves */
    r->ac = NULL;
    set_connected(r, 0);
    schedule_reconnect(r);
}

static void on_setup_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    redisReply *rp = reply;
    if (rp && rp->type == REDIS_REPLY_ERROR)
        sl_log_error("redis %s: %.*s", (const char *)priv, (int)rp->len, rp->str);
}

static void connect_to(sl_redis_t *r, const char *ip);

static int is_ip_literal(const char *host)
{
    unsigned char addr[16];
    return uv_inet_pton(AF_INET, host, addr) == 0 || uv_inet_pton(AF_INET6, host, addr) == 0;
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    sl_redis_t *r = req->data; /* NULL: the connection was freed meanwhile */
    char ip[64] = "";
    if (r && status == 0 && res) {
        if (res->ai_family == AF_INET)
            uv_ip4_name((const struct sockaddr_in *)res->ai_addr, ip, sizeof ip);
        else if (res->ai_family == AF_INET6)
            uv_ip6_name((const struct sockaddr_in6 *)res->ai_addr, ip, sizeof ip);
    }
    uv_freeaddrinfo(res);
    free(req);
    if (!r)
        return;
    r->resolve = NULL;
    if (!*ip) {
        schedule_reconnect(r);
        return;
    }
    connect_to(r, ip);
}

static void connect_now(sl_redis_t *r)
{
    if (is_ip_literal(r->host)) {
        connect_to(r, r->host);
        return;
    }
    uv_getaddrinfo_t *req = malloc(sizeof *req);
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    if (!req) {
        schedule_reconnect(r);
        return;
    }
    req->data = r;
    if (uv_getaddrinfo(r->loop, req, on_resolved, r->host, NULL, &hints) != 0) {
        free(req);
        schedule_reconnect(r);
        return;
    }
    r->resolve = req;
}

static void connect_to(sl_redis_t *r, const char *ip)
{
    redisAsyncContext *ac = redisAsyncConnect(ip, r->port);
    if (!ac) {
        schedule_reconnect(r);
        return;
    }
    if (ac->err || glue_attach(r, ac) != 0) {
        redisAsyncFree(ac);
        schedule_reconnect(r);
        return;
    }
    ac->data = r;
    r->ac = ac;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    /* queued before any caller's command, sent once connected */
    if (r->password)
        redisAsyncCommand(ac, on_setup_reply, "AUTH", "AUTH %s", r->password);
    if (r->db)
        redisAsyncCommand(ac, on_setup_reply, "SELECT", "SELECT %d", r->db);
    redisAsyncCommand(ac, on_hello, NULL, "PING");
    double ms = r->timeout * 1000.0;
    uv_timer_start(&r->hello, on_hello_deadline, ms < 100 ? 100 : (uint64_t)ms, 0);
}

static void on_handle_closed(uv_handle_t *h)
{
    sl_redis_t *r = h->data;
    if (--r->open_handles > 0)
        return;
    free(r->host);
    free(r->password);
    free(r);
}

static void redis_free(sl_redis_t *r)
{
    r->closing = 1;
    if (r->resolve) { /* its callback frees the request and sees no connection */
        r->resolve->data = NULL;
        uv_cancel((uv_req_t *)r->resolve);
        r->resolve = NULL;
    }
    /* Calls still waiting end with SL_ECLOSED from their own timer, on the
     * next loop pass — never from here: redis_free runs inside a Lua call
     * (a reload's new VM configuring Redis), and a caller's on_done resumes
     * another coroutine, which must not run nested in that call. */
    for (sl_redis_call_t *c = r->calls, *next; c; c = next) {
        next = c->next;
        c->prev = c->next = NULL;
        c->r = NULL; /* r is freed before the timer fires */
        c->orphaned = 1;
        uv_timer_start(&c->timer, on_call_deadline, 0, 0);
    }
    r->calls = NULL;
    redisAsyncContext *ac = r->ac;
    if (ac) {
        r->ac = NULL;
        set_connected(r, 0);
        redisAsyncFree(ac);
    }
    uv_close((uv_handle_t *)&r->retry, on_handle_closed);
    uv_close((uv_handle_t *)&r->hello, on_handle_closed);
}

static int same_text(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

int sl_redis_configure(uv_loop_t *loop, const sl_redis_opts_t *o)
{
    sl_redis_t *r = find(loop);
    if (r && r->loop == loop && r->port == o->port && r->db == o->db &&
        same_text(r->host, o->host) && same_text(r->password, o->password)) {
        r->timeout = o->timeout;
        return 0;
    }
    if (r) {
        remember(loop, NULL);
        redis_free(r);
    }
    r = calloc(1, sizeof *r);
    if (!r)
        return SL_ENOMEM;
    r->loop = loop;
    r->host = strdup(o->host);
    r->password = o->password ? strdup(o->password) : NULL;
    if (!r->host || (o->password && !r->password)) {
        free(r->host);
        free(r->password);
        free(r);
        return SL_ENOMEM;
    }
    r->port = o->port;
    r->db = o->db;
    r->timeout = o->timeout;
    r->backoff_ms = BACKOFF_MIN_MS;
    uv_timer_init(loop, &r->retry);
    uv_timer_init(loop, &r->hello);
    r->retry.data = r->hello.data = r;
    r->open_handles = 2;
    if (remember(loop, r) != 0) {
        uv_close((uv_handle_t *)&r->retry, on_handle_closed);
        uv_close((uv_handle_t *)&r->hello, on_handle_closed);
        return SL_ELIMIT;
    }
    connect_now(r);
    return 0;
}

int sl_redis_worker_up(uv_loop_t *loop)
{
    sl_redis_t *r = find(loop);
    return r && r->connected;
}

int sl_redis_configured(uv_loop_t *loop)
{
    return find(loop) != NULL;
}

void sl_redis_shutdown_worker(uv_loop_t *loop)
{
    sl_redis_t *r = find(loop);
    if (!r)
        return;
    remember(loop, NULL);
    redis_free(r);
}

int sl_redis_exec(uv_loop_t *loop, int ncmds, const int *argc, const char *const *const *argv,
                  const size_t *const *argvlen, const sl_redis_cbs_t *cbs, void *ud,
                  sl_redis_call_t **out)
{
    sl_redis_t *r = find(loop);
    if (ncmds <= 0)
        return SL_EINVAL;
    if (!r || !r->ac || !r->connected || r->drop_pending)
        return SL_ECLOSED;
    if (!cbs && r->sends_pending >= MAX_SENDS_PENDING) {
        schedule_drop(r); /* the server stopped answering: treated as down */
        return SL_EBUSY;
    }
    sl_redis_call_t *c = calloc(1, sizeof *c);
    if (!c)
        return SL_ENOMEM;
    c->r = r;
    c->ncmds = ncmds;
    c->ud = ud;
    c->timer_closed = 1; /* no timer yet */
    c->send = cbs == NULL;
    if (cbs) {
        c->cbs = *cbs;
        c->active = 1;
        c->timer_closed = 0;
        uv_timer_init(r->loop, &c->timer);
        c->timer.data = c;
        double ms = r->timeout * 1000.0;
        uv_timer_start(&c->timer, on_call_deadline, ms < 1 ? 1 : (uint64_t)ms, 0);
        c->next = r->calls;
        if (r->calls)
            r->calls->prev = c;
        r->calls = c;
    }
    for (int i = 0; i < ncmds; i++) {
        c->pending++;
        if (redisAsyncCommandArgv(r->ac, on_reply, c, argc[i], (const char **)argv[i],
                                  argvlen[i]) != REDIS_OK) {
            c->pending--;
            /* the context is disconnecting: the commands already queued
             * fire with NULL; this call is over */
            if (c->active)
                sl_redis_cancel(c);
            call_maybe_free(c);
            return SL_ECLOSED;
        }
        if (c->send)
            r->sends_pending++;
    }
    if (out)
        *out = cbs ? c : NULL;
    return 0;
}
