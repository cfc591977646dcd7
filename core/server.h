/*
 * server.h — the downstream HTTP/1.1 side: listening, accepting, parsing
 * requests with llhttp (strict mode), enforcing limits, keep-alive, and
 * writing responses (fixed-length or chunked) with backpressure.
 *
 * The server knows nothing about LLM protocols. It hands each complete
 * request (headers and whole body, bounded by max_body) to the application
 * callback and then waits for that request's response to end before parsing
 * the next one on the connection, so pipelined requests are answered in
 * order. It keeps reading while a response is in flight so that a client
 * that goes away is noticed at once (on_gone). It stops parsing, and reading,
 * while the connection's write queue is above SL_CONN_HIGH_WATER (a client
 * that pipelines but does not read its answers) and resumes below
 * SL_CONN_LOW_WATER. A response to HEAD gets its head only: body bytes the
 * application sends for it are dropped.
 *
 * Ownership: the server owns connections; a connection is freed only in its
 * close callback. The application keeps a sl_conn_t pointer only until it
 * receives on_gone or calls sl_conn_finish()/sl_conn_close().
 */
#ifndef SL_SERVER_H
#define SL_SERVER_H

#include <stdint.h>
#include <uv.h>

#include "buf.h"
#include "http.h"
#include "tls.h"

typedef struct sl_conn_s sl_conn_t;
typedef struct sl_server_s sl_server_t;

/* Every timeout is in ms; 0 means none. */
typedef struct {
    size_t max_header;              /* bytes of request line + headers */
    size_t max_headers_count;       /* number of header fields */
    size_t max_body;                /* request body bytes */
    uint64_t header_timeout_ms;     /* time to receive a complete request head (slowloris) */
    uint64_t body_timeout_ms;       /* longest gap between two reads of a request body */
    uint64_t body_total_timeout_ms; /* time to receive a whole request body */
    uint64_t keepalive_timeout_ms;  /* idle time between requests; also the longest a client
                                     * may leave pipelined answers unread */
    size_t max_connections;         /* per worker; 0 = unlimited. When full, the connection that has
                                     * waited longest for a next request is closed to make room */
} sl_server_limits_t;

/* A parsed request. Views are valid until the response to it ends. */
typedef struct {
    sl_conn_t *conn;
    const char *method; /* static, upper case */
    sl_str_t url;       /* origin-form target: path plus optional ?query */
    sl_str_t path;      /* url without the query */
    sl_str_t query;     /* after '?', empty if none */
    sl_header_t *headers;
    size_t nheaders;
    sl_str_t body;
    int keep_alive;
    int error_status;  /* 0, or 413 when the body exceeded max_body (body is then empty) */
    const char *peer;  /* "ip:port" of the client */
    uint64_t start_ns; /* uv_hrtime() when the request head began */
    uint64_t bytes_in; /* bytes of this request as received */
} sl_request_t;

/* Callbacks into the application for one connection's current request. */
typedef struct {
    /* The client went away (EOF, reset, write error) while a response was in
     * flight. After this call the conn pointer must not be used. */
    void (*on_gone)(void *data, int err);
    /* The write queue drained below the low watermark (resume producers). */
    void (*on_drain)(void *data);
} sl_conn_handler_t;

typedef void (*sl_request_cb)(sl_request_t *req, void *app);

/* `tls` (NULL for plain HTTP) is a context from sl_tls_ctx_new; on success
 * the server owns that reference. */
int sl_server_start(sl_server_t **out, uv_loop_t *loop, const char *addr, int port,
                    const sl_server_limits_t *limits, sl_tls_ctx_t *tls, sl_request_cb cb,
                    void *app);
/* Stops accepting, closes idle connections; busy ones close after their
 * current response. `done` runs when the listener and all connections are
 * closed, and the server is freed right after it. */
void sl_server_stop(sl_server_t *s, void (*done)(void *), void *arg);
/* Connections currently open (busy or idle). */
size_t sl_server_connections(const sl_server_t *s);
void sl_server_set_limits(sl_server_t *s, const sl_server_limits_t *limits);
/* Serves new connections with `tls` (owned from here); connections already
 * open keep the context they were accepted with. */
void sl_server_set_tls(sl_server_t *s, sl_tls_ctx_t *tls);

void sl_conn_set_handler(sl_conn_t *c, const sl_conn_handler_t *h, void *data);
/* Response head. content_length < 0 means chunked transfer encoding.
 * Adds Date-free minimal framing headers (Content-Length or
 * Transfer-Encoding, Connection). Header values must not contain CR/LF:
 * returns SL_EINVAL if one does. */
int sl_conn_send_head(sl_conn_t *c, int status, const sl_header_t *h, size_t n,
                      int64_t content_length);
/* Response body bytes (chunk-encoded when the head said chunked). Copies. */
int sl_conn_send_body(sl_conn_t *c, const char *p, size_t n);
/* a then b as one piece of the body (one chunk), for bytes kept in two
 * places: the client reads the body two sl_conn_send_body calls would
 * give, with one chunk header instead of two. Copies. */
int sl_conn_send_body2(sl_conn_t *c, sl_str_t a, sl_str_t b);
/* Ends the response: the connection then reads the next request or closes.
 * What is queued goes to the kernel now, not at the end of the loop pass:
 * the owner may have work left (the record, the log) that the client need
 * not wait for. */
int sl_conn_finish(sl_conn_t *c);
/* A complete small response in one call. */
int sl_conn_respond(sl_conn_t *c, int status, const sl_header_t *h, size_t n, sl_str_t body);
/* Bytes queued for the client but not yet written. */
size_t sl_conn_write_queue(const sl_conn_t *c);
/* True once the head has been sent (the response is committed). */
int sl_conn_committed(const sl_conn_t *c);
uint64_t sl_conn_bytes_out(const sl_conn_t *c);
/* Closes at once (after queued writes are flushed if `graceful`). */
void sl_conn_close(sl_conn_t *c, int graceful);

/* Write queue watermarks used for backpressure. */
#define SL_CONN_HIGH_WATER (256 * 1024)
#define SL_CONN_LOW_WATER (64 * 1024)

const char *sl_http_reason(int status);

#endif
