/*
 * tls.c — inbound TLS over memory BIOs (see tls.h).
 *
 * Why memory BIOs and not SSL_set_fd: the socket belongs to libuv, and an
 * SSL object that reads and writes the fd itself would block, or fight
 * libuv over readiness. Here OpenSSL only ever transforms bytes: the server
 * feeds it what arrived and sends what it produced, through the same write
 * queue (and the same backpressure) as plain HTTP.
 *
 * Memory: SSL_MODE_RELEASE_BUFFERS drops a connection's record buffers while
 * it is idle, and both BIOs are drained on every call, so a connection holds
 * at most one read's worth of ciphertext beyond OpenSSL's own state.
 */
#include "tls.h"

#include <limits.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

struct sl_tls_s {
    SSL *ssl;
    BIO *in;  /* ciphertext from the socket; OpenSSL reads it */
    BIO *out; /* ciphertext for the socket; OpenSSL writes it */
    char err[160];
};

/* The context is OpenSSL's own SSL_CTX: it is already reference counted, and
 * every SSL made from it holds a reference, which is what lets a reload drop
 * the listener's old context while its connections live on. */
static SSL_CTX *ctx_of(sl_tls_ctx_t *c)
{
    return (SSL_CTX *)c;
}

static void openssl_reason(char *out, size_t outlen)
{
    unsigned long e = ERR_get_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    snprintf(out, outlen, "%s", r ? r : "unknown error");
    ERR_clear_error();
}

/* sluice speaks HTTP/1.1 only: a client offering ALPN gets http/1.1 or, when
 * it did not offer it, no ALPN answer at all (it then decides), as nginx
 * does. */
static int select_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    static const unsigned char ours[] = "\x08http/1.1";
    unsigned char *chosen;
    if (SSL_select_next_proto(&chosen, outlen, ours, sizeof ours - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = chosen;
    return SSL_TLSEXT_ERR_OK;
}

static int no_passphrase(char *buf, int size, int rwflag, void *userdata)
{
    return 0;
}

sl_tls_ctx_t *sl_tls_ctx_new(const char *cert, const char *key, char *err, size_t errlen)
{
    char why[128];
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        openssl_reason(why, sizeof why);
        snprintf(err, errlen, "TLS context: %s", why);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* Renegotiation is a client-driven CPU sink with no use for HTTP/1.1. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_alpn_select_cb(ctx, select_alpn, NULL);
    /* An encrypted key would make OpenSSL prompt on the terminal, blocking
     * the worker that loads it on reload: refuse it instead. */
    SSL_CTX_set_default_passwd_cb(ctx, no_passphrase);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        openssl_reason(why, sizeof why);
        snprintf(err, errlen, "cert %s: %s", cert, why);
    } else if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        openssl_reason(why, sizeof why);
        snprintf(err, errlen, "key %s: %s", key, why);
    } else if (SSL_CTX_check_private_key(ctx) != 1) {
        openssl_reason(why, sizeof why);
        snprintf(err, errlen, "key %s does not match cert %s: %s", key, cert, why);
    } else {
        return (sl_tls_ctx_t *)ctx;
    }
    SSL_CTX_free(ctx);
    return NULL;
}

void sl_tls_ctx_release(sl_tls_ctx_t *ctx)
{
    if (ctx)
        SSL_CTX_free(ctx_of(ctx));
}

sl_tls_t *sl_tls_new(sl_tls_ctx_t *ctx)
{
    sl_tls_t *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->ssl = SSL_new(ctx_of(ctx));
    t->in = BIO_new(BIO_s_mem());
    t->out = BIO_new(BIO_s_mem());
    if (!t->ssl || !t->in || !t->out) {
        BIO_free(t->in);
        BIO_free(t->out);
        SSL_free(t->ssl);
        free(t);
        return NULL;
    }
    /* An empty memory BIO means "wait for more", not end of file. */
    BIO_set_mem_eof_return(t->in, -1);
    SSL_set_bio(t->ssl, t->in, t->out); /* the SSL owns both from here */
    SSL_set_accept_state(t->ssl);
    return t;
}

void sl_tls_free(sl_tls_t *t)
{
    if (!t)
        return;
    SSL_free(t->ssl);
    free(t);
}

/* Classifies a failed SSL_* call. */
static int failure(sl_tls_t *t, int ret)
{
    int e = SSL_get_error(t->ssl, ret);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return SL_TLS_OK;
    if (e == SSL_ERROR_ZERO_RETURN)
        return SL_TLS_CLOSED;
    unsigned long code = ERR_peek_error();
    int plain = ERR_GET_LIB(code) == ERR_LIB_SSL && ERR_GET_REASON(code) == SSL_R_HTTP_REQUEST;
    openssl_reason(t->err, sizeof t->err);
    return plain ? SL_TLS_PLAIN_HTTP : SL_TLS_ERROR;
}

/* Every entry point starts with an empty error queue: OpenSSL 3's
 * SSL_get_error reports SSL_ERROR_SSL whenever the thread's queue holds an
 * error, and curl's OpenSSL use on this same worker thread (an upstream
 * certificate failure) can leave one behind — a healthy client would then
 * be dropped on its next WANT_READ. */
int sl_tls_feed(sl_tls_t *t, const char *cipher, size_t n, sl_buf_t *plain)
{
    ERR_clear_error();
    if (n > INT_MAX || BIO_write(t->in, cipher, (int)n) != (int)n) {
        snprintf(t->err, sizeof t->err, "cannot buffer %zu bytes of TLS input", n);
        return SL_TLS_ERROR;
    }
    if (!SSL_is_init_finished(t->ssl)) {
        int ret = SSL_do_handshake(t->ssl);
        if (ret != 1)
            return failure(t, ret);
    }
    for (;;) {
        if (sl_buf_reserve(plain, 16 * 1024))
            return SL_TLS_ERROR;
        int cap = (int)(plain->cap - plain->len);
        int got = SSL_read(t->ssl, plain->base + plain->len, cap);
        if (got <= 0)
            return failure(t, got);
        plain->len += (size_t)got;
    }
}

int sl_tls_write(sl_tls_t *t, const char *plain, size_t n)
{
    ERR_clear_error();
    while (n) {
        int chunk = n > INT_MAX ? INT_MAX : (int)n;
        int put = SSL_write(t->ssl, plain, chunk);
        if (put <= 0) {
            failure(t, put);
            return SL_TLS_ERROR;
        }
        plain += put;
        n -= (size_t)put;
    }
    return SL_TLS_OK;
}

int sl_tls_take_output(sl_tls_t *t, sl_buf_t *out)
{
    size_t pending = BIO_ctrl_pending(t->out);
    if (!pending)
        return 0;
    int rc = sl_buf_reserve(out, pending);
    if (rc)
        return rc;
    int got = BIO_read(t->out, out->base + out->len, (int)pending);
    if (got > 0)
        out->len += (size_t)got;
    return 0;
}

void sl_tls_close_notify(sl_tls_t *t)
{
    if (SSL_is_init_finished(t->ssl))
        SSL_shutdown(t->ssl); /* one-way: the socket closes after it is sent */
    ERR_clear_error();
}

const char *sl_tls_last_error(const sl_tls_t *t)
{
    return t->err[0] ? t->err : "TLS error";
}
