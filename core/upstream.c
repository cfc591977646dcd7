/*
 * upstream.c — the upstream API (upstream.h): each transfer is handed to
 * the lean HTTP/1.1 client when its URL allows (upstream_h1.c), else run on
 * libcurl's multi interface on libuv, which the rest of this file is.
 *
 * The classic multi_socket integration: curl tells us which sockets to watch
 * (socket_cb → uv_poll) and when to wake it (timer_cb → uv_timer); we tell
 * curl what happened (curl_multi_socket_action) and then collect finished
 * transfers (curl_multi_info_read).
 *
 * curl forbids removing an easy handle from inside its own callbacks, and
 * the application may want to abort from inside on_head/on_data (the client
 * left, a limit was hit). So an abort during a callback only marks the
 * transfer; the write callback then fails it, and it is reaped silently when
 * curl reports it done.
 *
 * Requests to one supplier must never wait on each other, so a transfer asks
 * curl to wait for multiplexing (CURLOPT_PIPEWAIT) only when its origin is
 * known to speak HTTP/2 — see "which origins speak HTTP/2" below.
 *
 * Per-request work is kept off the hot path (issue 13's profile):
 * - Easy handles are pooled: a finished one is reset (curl_easy_reset keeps
 *   its caches) and reused, so a request does not allocate and free curl's
 *   handle state and download buffer each time.
 * - A socket keeps one uv_poll for its whole life. curl says CURL_POLL_REMOVE
 *   whenever a connection goes idle in its cache; stopping the watcher then
 *   and starting it on reuse costs nothing like closing and re-creating it
 *   (init, epoll_ctl ADD/DEL per request). The watcher is closed only when
 *   curl closes the socket (CURLOPT_CLOSESOCKETFUNCTION), found by fd in a
 *   per-worker table since curl forgets its own socket pointer on REMOVE.
 *
 * The worker publishes what its side holds (sl_upstream_stats_t: transfers,
 * connections, idle ones, pooled handles) for /_sluice/health. Connections
 * are counted where curl opens and closes them (CURLOPT_OPENSOCKETFUNCTION
 * and CLOSESOCKETFUNCTION, called for connection sockets only — not for the
 * resolver's wake-up socketpair, which curl closes on its own); a connection
 * is idle from curl's CURL_POLL_REMOVE until it is watched again or closed.
 * Every figure is updated on this loop's thread where it changes, as a
 * relaxed atomic store: the health call on another worker only loads them.
 */
#include "upstream.h"
#include "upstream_int.h"

#include <curl/curl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include "error.h"
#include "log.h"

struct sockctx_s {
    uv_poll_t poll;
    curl_socket_t fd;
    sl_upstream_t *up;
    int conn; /* a connection curl opened through opensocket_cb (counted) */
    int idle; /* a counted connection curl is not watching (CURL_POLL_REMOVE) */
};

static void check_done(sl_upstream_t *up);

/* ---- pooled easy handles ---- */

static CURL *easy_get(sl_upstream_t *up)
{
    if (!up->npool)
        return curl_easy_init();
    STAT_ADD(up, handles_pooled, -1);
    return up->pool[--up->npool];
}

/* The handle must be out of the multi. Its options go back to curl's
 * defaults; its connection, DNS and TLS session caches stay. */
static void easy_put(sl_upstream_t *up, CURL *e)
{
    if (up->npool == EASY_POOL) {
        curl_easy_cleanup(e);
        return;
    }
    curl_easy_reset(e);
    up->pool[up->npool++] = e;
    STAT_ADD(up, handles_pooled, 1);
}

static void transfer_free(sl_transfer_t *t)
{
    curl_multi_remove_handle(t->up->multi, t->easy);
    /* A handle given up mid-answer (or paused) may still hold bytes curl
     * buffered for it, which curl_easy_reset keeps: reusing it could hand
     * them to the next transfer. Only a handle whose transfer ran to its
     * end goes back to the pool. */
    if (t->aborted || t->paused)
        curl_easy_cleanup(t->easy);
    else
        easy_put(t->up, t->easy);
    curl_slist_free_all(t->headers);
    sl_buf_free(&t->head);
    free(t->origin);
    STAT_ADD(t->up, transfers, -1);
    if (t->paused)
        STAT_ADD(t->up, paused, -1);
    free(t);
}

/* ---- which origins speak HTTP/2 ----
 *
 * With CURLOPT_PIPEWAIT a new transfer, rather than open its own connection,
 * waits while a connection to the same host has not yet shown whether it can
 * multiplex. Over TLS curl knows at the end of the handshake (ALPN) and
 * wakes the waiters then. Over plain HTTP it only knows from the first
 * response, and (curl 7.88) a waiter parked behind an HTTP/1.1 connection is
 * woken only when some transfer *ends*: with PIPEWAIT on every transfer, a
 * request waited seconds behind another's slow first byte, and a burst on a
 * fresh process waited for the whole first stream.
 *
 * So a transfer waits only when its origin is known to speak h2 here: this
 * worker got an answer from it over HTTP/2 (CURLINFO_HTTP_VERSION), and
 * since then no HTTP/1.x answer and no failure to connect. Then the waiting
 * lasts one TLS handshake and buys one shared connection instead of one per
 * request — what matters when a burst starts after the supplier closed the
 * idle connection.
 *
 * - Plain http:// never waits (curl speaks h2 only over TLS here).
 * - The first requests to a TLS origin not yet known do not wait either: a
 *   cold burst opens one connection per request (some handshakes more, once).
 *   A request that starts after a connection to the origin is up still joins
 *   it when ALPN chose h2: curl reuses an established multiplexed connection
 *   without being asked to wait.
 * - A transfer that never got a connection (refused, timed out, TLS failed)
 *   makes its origin unknown again, so while a supplier is down new requests
 *   do not queue behind one another's connect attempts. Transfers already
 *   waiting then still try one after another; the exchange's first-byte
 *   timer bounds that.
 *
 * CURLMOPT_MAX_HOST_CONNECTIONS stays unset (unlimited) for the same reason:
 * a cap would make HTTP/1.1 requests queue for a free connection.
 *
 * The table is per worker (like the connection pool it describes), small and
 * searched linearly. */

/* "host:port" (lower case, default port filled in) for an https:// URL,
 * NULL for anything else or on error. The caller frees it. */
static char *tls_origin(const char *url)
{
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *port = NULL, *out = NULL;
    if (u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
        strcasecmp(scheme, "https") == 0 &&
        curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK) {
        size_t n = strlen(host) + 1 + strlen(port) + 1;
        out = malloc(n);
        if (out) {
            snprintf(out, n, "%s:%s", host, port);
            for (char *c = out; *c; c++)
                if (*c >= 'A' && *c <= 'Z')
                    *c = (char)(*c - 'A' + 'a');
        }
    }
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_url_cleanup(u);
    return out;
}

static ssize_t h2_find(const sl_upstream_t *up, const char *origin)
{
    for (size_t i = 0; i < up->nh2; i++)
        if (strcmp(up->h2[i], origin) == 0)
            return (ssize_t)i;
    return -1;
}

static int h2_known(const sl_upstream_t *up, const char *origin)
{
    return origin && h2_find(up, origin) >= 0;
}

static void h2_forget(sl_upstream_t *up, const char *origin)
{
    ssize_t i = h2_find(up, origin);
    if (i < 0)
        return;
    free(up->h2[i]);
    memmove(&up->h2[i], &up->h2[i + 1], (up->nh2 - (size_t)i - 1) * sizeof up->h2[0]);
    up->nh2--;
}

static void h2_remember(sl_upstream_t *up, const char *origin)
{
    if (h2_find(up, origin) >= 0)
        return;
    char *copy = strdup(origin);
    if (!copy)
        return; /* only loses the wait */
    if (up->nh2 == H2_ORIGINS)
        h2_forget(up, up->h2[0]);
    up->h2[up->nh2++] = copy;
}

/* Notes the HTTP version of t's answer for its origin, once per transfer. */
static void learn_version(sl_transfer_t *t)
{
    long v = 0;
    if (!t->origin || t->learnt ||
        curl_easy_getinfo(t->easy, CURLINFO_HTTP_VERSION, &v) != CURLE_OK || v == 0)
        return;
    t->learnt = 1;
    if (v == CURL_HTTP_VERSION_2_0)
        h2_remember(t->up, t->origin);
    else
        h2_forget(t->up, t->origin);
}

/* ---- curl → libuv ---- */

static void on_poll(uv_poll_t *p, int status, int events)
{
    sockctx_t *s = p->data;
    sl_upstream_t *up = s->up;
    int flags = 0, running;
    if (status < 0)
        flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    curl_multi_socket_action(up->multi, s->fd, flags, &running);
    check_done(up);
}

static void on_poll_closed(uv_handle_t *h)
{
    free(h->data);
}

static sockctx_t *sock_find(const sl_upstream_t *up, curl_socket_t fd)
{
    return fd >= 0 && (size_t)fd < up->nsocks ? up->socks[fd] : NULL;
}

/* A watcher for fd, made once for the socket's life. */
static sockctx_t *sock_open(sl_upstream_t *up, curl_socket_t fd)
{
    if (fd < 0)
        return NULL;
    if ((size_t)fd >= up->nsocks) {
        size_t n = up->nsocks ? up->nsocks : 64;
        while (n <= (size_t)fd)
            n *= 2;
        sockctx_t **grown = realloc(up->socks, n * sizeof *grown);
        if (!grown)
            return NULL;
        memset(grown + up->nsocks, 0, (n - up->nsocks) * sizeof *grown);
        up->socks = grown;
        up->nsocks = n;
    }
    sockctx_t *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->fd = fd;
    s->up = up;
    if (uv_poll_init_socket(up->loop, &s->poll, fd) < 0) {
        free(s);
        return NULL;
    }
    s->poll.data = s;
    up->socks[fd] = s;
    return s;
}

static void set_idle(sockctx_t *s, int idle)
{
    if (!s->conn || s->idle == idle)
        return;
    s->idle = idle;
    STAT_ADD(s->up, idle, idle ? 1 : -1);
}

/* A socket's watcher goes (uv_close takes the fd out of epoll at once, so
 * closing the fd right after is safe), and its connection leaves the figures. */
static void sock_close(sl_upstream_t *up, sockctx_t *s)
{
    set_idle(s, 0);
    if (s->conn)
        STAT_ADD(up, connections, -1);
    up->socks[s->fd] = NULL;
    uv_poll_stop(&s->poll);
    uv_close((uv_handle_t *)&s->poll, on_poll_closed);
}

/* curl opens a connection's socket: its watcher is made now, so the
 * connection is counted from its first moment. An entry already in the
 * table for this fd is a socket curl closed without our callback (the
 * resolver's socketpair): the number was reused, the watcher is reused too. */
static curl_socket_t opensocket_cb(void *userp, curlsocktype purpose, struct curl_sockaddr *a)
{
    sl_upstream_t *up = userp;
    (void)purpose;
    curl_socket_t fd = socket(a->family, a->socktype, a->protocol);
    if (fd == CURL_SOCKET_BAD)
        return fd;
    sockctx_t *s = sock_find(up, fd);
    if (!s && !(s = sock_open(up, fd))) {
        close(fd);
        return CURL_SOCKET_BAD;
    }
    set_idle(s, 0);
    if (!s->conn)
        STAT_ADD(up, connections, 1);
    s->conn = 1;
    STAT_ADD(up, connects_total, 1);
    return fd;
}

/* curl closes a socket: its watcher goes first (sock_close). */
static int closesocket_cb(void *userp, curl_socket_t fd)
{
    sl_upstream_t *up = userp;
    sockctx_t *s = sock_find(up, fd);
    if (s)
        sock_close(up, s);
    return close(fd);
}

static int socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    sl_upstream_t *up = userp;
    sockctx_t *s = socketp ? socketp : sock_find(up, fd);
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            uv_poll_stop(&s->poll); /* idle in curl's cache, or about to close */
            set_idle(s, 1);
        }
        return 0;
    }
    if (!s && !(s = sock_open(up, fd)))
        return -1;
    set_idle(s, 0);
    if (!socketp)
        curl_multi_assign(up->multi, fd, s);
    int events = 0;
    if (what & CURL_POLL_IN)
        events |= UV_READABLE;
    if (what & CURL_POLL_OUT)
        events |= UV_WRITABLE;
    uv_poll_start(&s->poll, events, on_poll);
    return 0;
}

static void on_timeout(uv_timer_t *timer)
{
    sl_upstream_t *up = timer->data;
    int running;
    curl_multi_socket_action(up->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(up);
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    sl_upstream_t *up = userp;
    if (timeout_ms < 0)
        uv_timer_stop(&up->timer);
    else
        uv_timer_start(&up->timer, on_timeout, (uint64_t)timeout_ms, 0);
    return 0;
}

static void check_done(sl_upstream_t *up)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(up->multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        sl_transfer_t *t = NULL;
        CURLcode code = msg->data.result;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&t);
        if (!t)
            continue;
        curl_multi_remove_handle(up->multi, t->easy);
        if (code == CURLE_OK)
            learn_version(t);
        else if (!t->connected && t->origin)
            h2_forget(up, t->origin); /* down or changed: let nobody wait on it */
        if (!t->aborted) {
            /* curl 7.88 ends an exchange cut inside the response head with
             * CURLE_OK, and fails an oversized head as our write error:
             * both are the upstream's protocol errors. */
            if (code == CURLE_OK && !t->head_sent && t->head.len)
                t->bad_head = "upstream closed the connection inside its response head";
            if (t->bad_head) {
                code = CURLE_WEIRD_SERVER_REPLY;
                snprintf(t->errbuf, sizeof t->errbuf, "%s", t->bad_head);
            }
            if (!t->head_sent && code == CURLE_OK && t->cbs.on_head) {
                /* A response with no body: the head has not been reported yet. */
                long status = 0;
                curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
                t->head_sent = 1;
                t->in_callback++; /* an abort from on_head must not free t under us */
                t->cbs.on_head(t->ud, (int)status, NULL, 0);
                t->in_callback--;
            }
            if (!t->aborted)
                t->cbs.on_done(t->ud, (int)code, t->errbuf);
        }
        transfer_free(t);
    }
}

/* ---- per-transfer curl callbacks ---- */

static void report_head(sl_transfer_t *t)
{
    long status = 0;
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
    learn_version(t); /* as early as possible: later transfers may wait on it */
    /* Split the collected lines into name/value views. */
    size_t cap = 64, n = 0;
    sl_header_t hv[64];
    char *p = t->head.base, *end = t->head.base + t->head.len;
    while (p && p < end && n < cap) {
        char *eol = memchr(p, '\n', (size_t)(end - p));
        char *le = eol ? eol : end;
        size_t len = (size_t)(le - p);
        if (len && p[len - 1] == '\r')
            len--;
        char *colon = memchr(p, ':', len);
        if (colon && colon != p && memcmp(p, "HTTP/", 5) != 0) {
            char *v = colon + 1, *ve = p + len;
            while (v < ve && (*v == ' ' || *v == '\t'))
                v++;
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            hv[n].name = sl_str(p, (size_t)(colon - p));
            hv[n].value = sl_str(v, (size_t)(ve - v));
            n++;
        }
        p = eol ? eol + 1 : NULL;
    }
    t->head_sent = 1;
    t->in_callback++;
    t->cbs.on_head(t->ud, (int)status, hv, n);
    t->in_callback--;
}

static size_t header_cb(char *buf, size_t size, size_t nitems, void *userp)
{
    sl_transfer_t *t = userp;
    size_t n = size * nitems;
    if (t->aborted)
        return 0;
    if (n >= 5 && memcmp(buf, "HTTP/", 5) == 0)
        sl_buf_reset(&t->head); /* a new response block (after 1xx) */
    if (n <= 2 && (buf[0] == '\r' || buf[0] == '\n')) {
        long status = 0;
        curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
        if (status >= 200 && !t->head_sent)
            report_head(t);
        return t->aborted ? 0 : n;
    }
    if (sl_buf_append(&t->head, buf, n)) {
        t->bad_head = "upstream response head exceeds 256 KiB";
        return 0; /* fail the transfer */
    }
    return n;
}

static size_t write_cb(char *buf, size_t size, size_t nitems, void *userp)
{
    sl_transfer_t *t = userp;
    size_t n = size * nitems;
    if (t->aborted)
        return 0;
    if (!t->head_sent)
        report_head(t);
    if (t->aborted)
        return 0;
    t->in_callback++;
    int pause = t->cbs.on_data(t->ud, buf, n);
    t->in_callback--;
    if (t->aborted || pause == SL_TRANSFER_FAIL)
        return 0; /* curl ends the transfer with CURLE_WRITE_ERROR */
    if (pause == SL_TRANSFER_PAUSE) {
        t->paused = 1;
        STAT_ADD(t->up, paused, 1);
        return CURL_WRITEFUNC_PAUSE;
    }
    return n;
}

static int prereq_cb(void *userp, char *conn_primary_ip, char *conn_local_ip, int primary,
                     int local)
{
    ((sl_transfer_t *)userp)->connected = 1;
    return CURL_PREREQFUNC_OK;
}

/* ---- public API ---- */

int sl_upstream_new(sl_upstream_t **out, uv_loop_t *loop)
{
    sl_upstream_t *up = calloc(1, sizeof *up);
    if (!up)
        return SL_ENOMEM;
    up->loop = loop;
    up->multi = curl_multi_init();
    if (!up->multi) {
        free(up);
        return SL_ENOMEM;
    }
    up->stats = &up->own_stats;
    if (sl_h1_init(up) != 0) {
        curl_multi_cleanup(up->multi);
        free(up);
        return SL_ENOMEM;
    }
    uv_timer_init(loop, &up->timer);
    up->timer.data = up;
    curl_multi_setopt(up->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(up->multi, CURLMOPT_SOCKETDATA, up);
    curl_multi_setopt(up->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(up->multi, CURLMOPT_TIMERDATA, up);
    curl_multi_setopt(up->multi, CURLMOPT_MAXCONNECTS, 256L);
    curl_multi_setopt(up->multi, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
    *out = up;
    return 0;
}

static void on_upstream_timer_closed(uv_handle_t *h)
{
    free(h->data);
}

void sl_upstream_free(sl_upstream_t *up)
{
    if (!up)
        return;
    /* Called once every exchange has ended, so no transfer is registered.
     * Cleaning up the multi closes the cached connections, and with them
     * (closesocket_cb) their watchers. */
    curl_multi_cleanup(up->multi);
    sl_h1_free(up);
    for (size_t i = 0; i < up->npool; i++)
        curl_easy_cleanup(up->pool[i]);
    atomic_store_explicit(&up->stats->handles_pooled, 0, memory_order_relaxed);
    for (size_t i = 0; i < up->nsocks; i++) /* a socket curl did not close through us */
        if (up->socks[i])
            sock_close(up, up->socks[i]);
    free(up->socks);
    for (size_t i = 0; i < up->nh2; i++)
        free(up->h2[i]);
    uv_timer_stop(&up->timer);
    uv_close((uv_handle_t *)&up->timer, on_upstream_timer_closed);
}

size_t sl_upstream_active(const sl_upstream_t *up)
{
    return atomic_load_explicit(&up->stats->transfers, memory_order_relaxed);
}

void sl_upstream_set_stats(sl_upstream_t *up, sl_upstream_stats_t *stats)
{
    up->stats = stats;
}

void sl_upstream_use_curl(sl_upstream_t *up, int on)
{
    up->curl_only = on;
}

static int splits_head(sl_str_t s)
{
    return s.len && (memchr(s.base, '\r', s.len) || memchr(s.base, '\n', s.len) ||
                     memchr(s.base, '\0', s.len));
}

int sl_upstream_framing_header(sl_str_t name)
{
    return sl_str_ieq_c(name, "content-length") || sl_str_ieq_c(name, "host") ||
           sl_str_ieq_c(name, "transfer-encoding") || sl_str_ieq_c(name, "connection") ||
           sl_str_ieq_c(name, "expect");
}

int sl_transfer_start(sl_upstream_t *up, const sl_transfer_req_t *req, const sl_transfer_cbs_t *cbs,
                      void *ud, sl_transfer_t **out)
{
    for (size_t i = 0; i < req->nheaders; i++)
        if (!req->headers[i].name.len || splits_head(req->headers[i].name) ||
            splits_head(req->headers[i].value))
            return SL_EINVAL; /* never let a value end its line: no header is injected */
    sl_transfer_t *t = calloc(1, sizeof *t);
    if (!t)
        return SL_ENOMEM;
    t->up = up;
    t->cbs = *cbs;
    t->ud = ud;
    int rc = sl_h1_start(t, req);
    if (rc != SL_H1_DECLINED) {
        if (rc)
            free(t);
        else
            *out = t;
        return rc;
    }
    sl_buf_init(&t->head, 256 * 1024);
    t->easy = easy_get(up);
    if (!t->easy) {
        free(t);
        return SL_ENOMEM;
    }
    sl_buf_t line;
    sl_buf_init(&line, 0);
    for (size_t i = 0; i < req->nheaders; i++) {
        if (sl_upstream_framing_header(req->headers[i].name))
            continue;
        sl_buf_reset(&line);
        sl_buf_append_str(&line, req->headers[i].name);
        if (req->headers[i].value.len) {
            sl_buf_append(&line, ": ", 2);
            sl_buf_append_str(&line, req->headers[i].value);
        } else {
            sl_buf_append_byte(&line, ';'); /* curl's way to send an empty header */
        }
        struct curl_slist *n = curl_slist_append(t->headers, sl_buf_cstr(&line));
        if (n)
            t->headers = n;
    }
    sl_buf_free(&line);
    t->headers = curl_slist_append(t->headers, "Expect:");

    CURL *e = t->easy;
    curl_easy_setopt(e, CURLOPT_URL, req->url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, t);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, t->headers);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    /* Wait for a connection that is coming up only where it will multiplex. */
    t->origin = tls_origin(req->url);
    t->pipewait = h2_known(up, t->origin);
    curl_easy_setopt(e, CURLOPT_PIPEWAIT, (long)t->pipewait);
    curl_easy_setopt(e, CURLOPT_NOPROXY, "localhost,127.0.0.1,::1");
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, t);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
    curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, prereq_cb);
    curl_easy_setopt(e, CURLOPT_PREREQDATA, t);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, opensocket_cb);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, up);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, closesocket_cb);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, up);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->errbuf);
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 16L * 1024);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, req->verify_tls ? 1L : 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, req->verify_tls ? 2L : 0L);
    if (req->connect_timeout_ms)
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)req->connect_timeout_ms);
    if (strcasecmp(req->method, "GET") == 0) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else {
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, req->body.base ? req->body.base : "");
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body.len);
        if (strcasecmp(req->method, "POST") != 0)
            curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, req->method);
    }
    CURLMcode mc = curl_multi_add_handle(up->multi, e);
    if (mc != CURLM_OK) {
        easy_put(up, e);
        curl_slist_free_all(t->headers);
        sl_buf_free(&t->head);
        free(t->origin);
        free(t);
        return SL_EUPSTREAM;
    }
    STAT_ADD(up, transfers, 1);
    *out = t;
    return 0;
}

void sl_transfer_resume(sl_transfer_t *t)
{
    if (t->lean) {
        sl_h1_resume(t);
        return;
    }
    if (!t->paused || t->aborted)
        return;
    t->paused = 0;
    STAT_ADD(t->up, paused, -1);
    /* May deliver buffered data synchronously through write_cb. */
    curl_easy_pause(t->easy, CURLPAUSE_CONT);
}

void sl_transfer_abort(sl_transfer_t *t)
{
    if (t->lean) {
        sl_h1_abort(t);
        return;
    }
    if (t->aborted)
        return;
    t->aborted = 1;
    if (t->in_callback)
        return; /* reaped by check_done once curl fails the write */
    /* Removing a handle mid-transfer makes curl close that connection: the
     * upstream sees the abort at once. */
    transfer_free(t);
}

int sl_transfer_connected(const sl_transfer_t *t)
{
    return t->connected;
}
