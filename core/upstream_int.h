/*
 * upstream_int.h — what the two upstream clients share inside core/: the
 * worker's upstream side and the transfer object the exchange holds.
 *
 * A transfer to a plain http:// origin runs on the lean HTTP/1.1 client
 * (upstream_h1.c); anything else (https, a proxy from the environment, or
 * every URL when the curl client is asked for) on libcurl's multi interface
 * (upstream.c). Both fill the same sl_transfer_t and call the owner's
 * callbacks with the same meaning, and both end a transfer with a CURLcode,
 * so the termination classifier (term.c) reads one vocabulary.
 */
#ifndef SL_UPSTREAM_INT_H
#define SL_UPSTREAM_INT_H

#include <curl/curl.h>
#include <llhttp.h>

#include "upstream.h"

/* How many TLS origins a worker remembers as speaking HTTP/2; beyond that
 * the oldest is forgotten (a forgotten origin only loses PIPEWAIT). */
#define H2_ORIGINS 64

/* Idle easy handles a worker keeps for reuse; more are cleaned up. */
#define EASY_POOL 64

typedef struct sockctx_s sockctx_t;
typedef struct sl_h1_conn_s sl_h1_conn_t;

/* Adds d to a published figure. Only the owning loop's thread writes, so a
 * load and a store (no locked read-modify-write) are enough. */
#define STAT_ADD(up, field, d)                                                                     \
    atomic_store_explicit(&(up)->stats->field,                                                     \
                          atomic_load_explicit(&(up)->stats->field, memory_order_relaxed) + (d),   \
                          memory_order_relaxed)

struct sl_upstream_s {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer;
    char *h2[H2_ORIGINS]; /* "host:port" of TLS origins known to speak h2, oldest first */
    size_t nh2;
    CURL *pool[EASY_POOL]; /* reset easy handles, ready for the next transfer */
    size_t npool;
    sockctx_t **socks; /* fd -> its watcher, for every socket curl has open */
    size_t nsocks;
    sl_upstream_stats_t *stats; /* where the figures are published: own_stats or the worker's */
    sl_upstream_stats_t own_stats;
    /* The lean client's side (upstream_h1.c). */
    int curl_only;           /* every URL goes to curl (sl_upstream_use_curl) */
    int proxy_env;           /* a proxy is set in the environment: curl must honour it */
    sl_h1_conn_t *idle_head; /* idle keep-alive connections, oldest first */
    sl_h1_conn_t *idle_tail;
    size_t nidle;
    char *rbuf; /* one read buffer for every connection: reads are handled whole */
};

struct sl_transfer_s {
    sl_upstream_t *up;
    sl_transfer_cbs_t cbs;
    void *ud;
    sl_buf_t head; /* raw header lines (curl), or the received head's names and values (lean) */
    int head_sent;
    const char *bad_head; /* why the upstream's head was unusable (static text), or NULL */
    int paused;
    int aborted; /* the owner gave it up: reap without callbacks */
    int in_callback;
    int connected;
    char errbuf[CURL_ERROR_SIZE];
    /* curl's side */
    CURL *easy;
    struct curl_slist *headers;
    char *origin; /* "host:port" for https:// URLs, else NULL */
    int pipewait; /* started with CURLOPT_PIPEWAIT (origin known to speak h2) */
    int learnt;   /* the answer's HTTP version was noted for origin */
    /* the lean client's side (upstream_h1.c); lean is 1 for its transfers */
    int lean;
    struct {
        sl_h1_conn_t *conn; /* the connection carrying it, NULL before one is made */
        char *origin;       /* "host:port" (lower case), as connections are pooled by it */
        int port;
        sl_buf_t out;       /* the request head, built once */
        sl_str_t body;      /* the caller's body (valid until on_done) */
        uint64_t connect_timeout_ms;
        sl_buf_t pending;   /* body bytes on_data paused on, delivered again on resume */
        int got_bytes;      /* any byte of the answer arrived */
        int reused;         /* sent on a pooled connection */
        int resent;         /* already sent again after a pooled connection had gone stale */
        int complete;       /* the answer's end was parsed */
        int fail;           /* a CURLcode decided inside a parser callback, or 0 */
        size_t nhv;         /* header views in hv_off */
        uint32_t hv_off[64][4]; /* name offset, name length, value offset, value length in head */
        int in_value;       /* the parser's last header span was a value */
    } h1;
};

/* Headers that frame the message (length, host, connection...): the
 * client sets them, a caller's are dropped. */
int sl_upstream_framing_header(sl_str_t name);

/* The lean client (upstream_h1.c). sl_h1_start takes t (zeroed, with
 * up/cbs/ud set) when its URL is the lean client's — plain http://, no
 * proxy from the environment, not sl_upstream_use_curl — and returns 0 or
 * an SL_E* error; for any other URL it returns SL_H1_DECLINED and leaves t
 * alone for curl. */
#define SL_H1_DECLINED 1
int sl_h1_start(sl_transfer_t *t, const sl_transfer_req_t *req);
void sl_h1_resume(sl_transfer_t *t);
void sl_h1_abort(sl_transfer_t *t);
/* Reads the environment (proxies, SLUICE_UPSTREAM_CLIENT) and makes the read buffer. */
int sl_h1_init(sl_upstream_t *up);
void sl_h1_free(sl_upstream_t *up);

#endif
