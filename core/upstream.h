/*
 * upstream.h — outgoing HTTP for one worker, on its libuv loop. Plain
 * http:// goes through sluice's lean HTTP/1.1 client (upstream_h1.c);
 * https://, proxies from the environment, and everything when asked
 * (sl_upstream_use_curl, SLUICE_UPSTREAM_CLIENT=curl) through one libcurl
 * multi handle (curl's socket/timer callbacks mapped to uv_poll and
 * uv_timer handles). Callers cannot tell them apart: the callbacks below
 * mean the same, and on_done gets a CURLcode from either.
 *
 * A transfer streams both ways: the body of the answer is delivered to
 * on_data as it arrives, and on_data can ask for a pause (backpressure from
 * a slow client); sl_transfer_resume() continues it. Connections are pooled
 * per worker (by the lean client, or by curl inside the multi handle), so
 * sequential requests to the same supplier reuse one connection; HTTP/2 is
 * used over TLS when offered.
 * Transfers never queue behind one another: one that finds no free
 * connection opens its own, except that it waits for a connection still
 * being set up when its https origin is known (from an earlier answer on
 * this upstream) to speak HTTP/2 — that wait is one TLS handshake.
 *
 * Ownership: the caller owns a transfer until on_done has been called, or
 * until it calls sl_transfer_abort(), after which no callback fires and the
 * transfer is freed. All callbacks run on the worker's loop thread.
 */
#ifndef SL_UPSTREAM_H
#define SL_UPSTREAM_H

#include <stdatomic.h>
#include <stdint.h>
#include <uv.h>

#include "buf.h"
#include "http.h"

typedef struct sl_upstream_s sl_upstream_t;
typedef struct sl_transfer_s sl_transfer_t;

enum { SL_TRANSFER_PAUSE = 1, SL_TRANSFER_FAIL = -1 };

typedef struct {
    /* The response head arrived. Header views are valid during the call. */
    void (*on_head)(void *ud, int status, const sl_header_t *h, size_t n);
    /* Body bytes, valid during the call. Return 0 to consume them,
     * SL_TRANSFER_PAUSE to pause the transfer (the same bytes are delivered
     * again after sl_transfer_resume), or SL_TRANSFER_FAIL to end it: on_done
     * then follows with a non-zero curl code. */
    int (*on_data)(void *ud, const char *p, size_t n);
    /* The transfer ended: curl_code is a CURLcode (0 = complete). */
    void (*on_done)(void *ud, int curl_code, const char *errbuf);
} sl_transfer_cbs_t;

typedef struct {
    const char *url;
    const char *method;         /* "POST", "GET"... */
    const sl_header_t *headers; /* copied by sl_transfer_start */
    size_t nheaders;
    sl_str_t body;               /* must stay valid until on_done / abort */
    uint64_t connect_timeout_ms; /* 0 = curl default */
    int verify_tls;              /* 1 unless explicitly disabled */
} sl_transfer_req_t;

/*
 * What one worker's upstream side holds right now (GET /_sluice/health):
 * written only by the worker's own loop thread as things change, readable
 * from any thread (relaxed atomics: each figure is exact when written, the
 * set is not a snapshot taken at one instant).
 */
#define SL_UPSTREAM_FIGURES(X)                                                                     \
    X(transfers)      /* in flight (sent, or waiting for an answer or its end) */                  \
    X(paused)         /* of those, paused: the client reads slower than they come */               \
    X(connections)    /* connections open to upstreams: in use, idle or connecting */              \
    X(idle)           /* of those, not in use: kept in curl's cache for the next request to        \
                       * their origin (a paused transfer's connection counts here too) */          \
    X(handles_pooled) /* finished easy handles kept for reuse (at most 64) */                      \
    X(connects_total) /* connection attempts since the worker started (a refused one too) */

typedef struct {
#define SL_UPSTREAM_FIGURE_FIELD(name) atomic_size_t name;
    SL_UPSTREAM_FIGURES(SL_UPSTREAM_FIGURE_FIELD)
#undef SL_UPSTREAM_FIGURE_FIELD
} sl_upstream_stats_t;

int sl_upstream_new(sl_upstream_t **out, uv_loop_t *loop);
/* Where up publishes its figures (the default is a private copy): a zeroed
 * object that outlives up, e.g. in the worker. Call it before the first
 * transfer; the loop's thread only. */
void sl_upstream_set_stats(sl_upstream_t *up, sl_upstream_stats_t *stats);
/* Every transfer through libcurl, plain http:// too (the lean HTTP/1.1
 * client is otherwise used for those: upstream_h1.c). Tests run both. */
void sl_upstream_use_curl(sl_upstream_t *up, int on);
/* Aborts remaining transfers (no callbacks) and closes the handles. */
void sl_upstream_free(sl_upstream_t *up);
size_t sl_upstream_active(const sl_upstream_t *up);

int sl_transfer_start(sl_upstream_t *up, const sl_transfer_req_t *req, const sl_transfer_cbs_t *cbs,
                      void *ud, sl_transfer_t **out);
void sl_transfer_resume(sl_transfer_t *t);
/* Stops the transfer now and closes its connection; no callback follows. */
void sl_transfer_abort(sl_transfer_t *t);
/* 1 once the TCP/TLS connection to the upstream was established. */
int sl_transfer_connected(const sl_transfer_t *t);

#endif
