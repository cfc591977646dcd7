/*
 * tls.h — inbound TLS for the downstream server, on the worker's loop.
 *
 * OpenSSL never touches a socket here: each connection's SSL object reads
 * ciphertext from one memory BIO (what the socket delivered) and writes
 * ciphertext to another (what the server must send). The server stays the
 * only owner of the socket, its buffers and its timers, so TLS adds no
 * blocking call and no second I/O path.
 *
 * A context holds one certificate and key. Connections take their own
 * reference to the context they were accepted with, so a reload can swap a
 * listener's context while older connections finish on the previous one.
 */
#ifndef SL_TLS_H
#define SL_TLS_H

#include <stddef.h>

#include "buf.h"

typedef struct sl_tls_ctx_s sl_tls_ctx_t;
typedef struct sl_tls_s sl_tls_t;

/* Loads a PEM certificate chain and its private key (TLS 1.2 and later,
 * ALPN http/1.1). On failure returns NULL and says why in err, naming the
 * file and OpenSSL's reason. */
sl_tls_ctx_t *sl_tls_ctx_new(const char *cert, const char *key, char *err, size_t errlen);
void sl_tls_ctx_release(sl_tls_ctx_t *ctx);

/* The state of one connection; NULL when out of memory. */
sl_tls_t *sl_tls_new(sl_tls_ctx_t *ctx);
void sl_tls_free(sl_tls_t *t);

enum {
    SL_TLS_OK = 0,          /* progress (maybe no plaintext yet) */
    SL_TLS_CLOSED = 1,      /* the peer sent close_notify */
    SL_TLS_ERROR = -1,      /* handshake or record failure: close the connection */
    SL_TLS_PLAIN_HTTP = -2, /* the peer spoke plain HTTP to this TLS port */
};

/* Hands ciphertext the socket delivered to the connection, and decrypts what
 * it can into `plain` (appended). Handshake records to send back are queued
 * for sl_tls_take_output. */
int sl_tls_feed(sl_tls_t *t, const char *cipher, size_t n, sl_buf_t *plain);

/* Encrypts plaintext the server wants to send; the records are queued for
 * sl_tls_take_output. Returns SL_TLS_OK or SL_TLS_ERROR. */
int sl_tls_write(sl_tls_t *t, const char *plain, size_t n);

/* Moves every queued ciphertext byte into out (appended). */
int sl_tls_take_output(sl_tls_t *t, sl_buf_t *out);

/* Queues a close_notify alert, so a client reading to the end of the stream
 * sees a clean TLS close rather than a truncation. */
void sl_tls_close_notify(sl_tls_t *t);

/* Why the last SL_TLS_ERROR happened, for a debug log line. */
const char *sl_tls_last_error(const sl_tls_t *t);

#endif
