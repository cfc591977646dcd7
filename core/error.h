/*
 * error.h — the one error vocabulary of the C core.
 *
 * Every fallible core function returns an int: 0 on success or a negative
 * SL_E* code. The codes are defined once, by the X-macro below, so that the
 * enum and sl_strerror() can never drift apart. Codes from libuv, libcurl,
 * hiredis and SQLite are mapped to these at the edge of the module that
 * calls them (libuv's own UV_E* values are passed through unchanged where
 * they are already negative errno values, so sl_strerror() falls back to
 * uv_strerror() for anything it does not know).
 */
#ifndef SL_ERROR_H
#define SL_ERROR_H

#define SL_ERRNO_MAP(XX)                                                   \
    XX(NOMEM, -10001, "out of memory")                                      \
    XX(INVAL, -10002, "invalid argument")                                   \
    XX(LIMIT, -10003, "limit exceeded")                                     \
    XX(PARSE, -10004, "malformed input")                                    \
    XX(CONFIG, -10005, "bad configuration")                                 \
    XX(SCRIPT, -10006, "script error")                                      \
    XX(BUDGET, -10007, "script exceeded its instruction budget")            \
    XX(UPSTREAM, -10008, "upstream error")                                  \
    XX(TIMEDOUT, -10009, "timed out")                                       \
    XX(CLOSED, -10010, "connection closed")                                 \
    XX(NOTFOUND, -10011, "not found")                                       \
    XX(IO, -10012, "i/o error")                                             \
    XX(BUSY, -10013, "busy")                                                \
    XX(TLS, -10014, "TLS error")

typedef enum {
#define XX(name, val, msg) SL_E##name = (val),
    SL_ERRNO_MAP(XX)
#undef XX
} sl_errno_t;

/* A static, human-readable message for any SL_E* or UV_E* code. */
const char *sl_strerror(int err);
/* The symbolic name ("SL_ELIMIT", "ECONNRESET"...) for logs. */
const char *sl_err_name(int err);

#endif
