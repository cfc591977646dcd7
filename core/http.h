/*
 * http.h — the HTTP vocabulary both sides of the gateway share: a header
 * field as a pair of views, which fields belong to one hop rather than to
 * the message, and which bytes no field may carry. The downstream server
 * (server.h) and the curl client (upstream.h) both include it, and it
 * includes neither, so neither side depends on the other for its types.
 */
#ifndef SL_HTTP_H
#define SL_HTTP_H

#include <stddef.h>

#include "buf.h"

/* A header field. Whoever hands an array of these over says how long the
 * views stay valid (normally: for the call that received them). */
typedef struct {
    sl_str_t name;
    sl_str_t value;
} sl_header_t;

/* Fields that describe one connection, not the message (RFC 9110 §7.6.1),
 * plus content-length, which whoever sends a head computes for its own
 * framing: a proxy never relays them from one hop to the next. */
static inline int sl_http_is_hop_by_hop(sl_str_t name)
{
    static const char *const names[] = {
        "connection", "keep-alive",     "proxy-connection",   "transfer-encoding",  "te", "trailer",
        "upgrade",    "content-length", "proxy-authenticate", "proxy-authorization"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (sl_str_ieq_c(name, names[i]))
            return 1;
    return 0;
}

/* 1 if s holds CR, LF or NUL: bytes no field may carry (they would split,
 * or end, the head of whoever receives it). */
static inline int sl_http_has_ctl(sl_str_t s)
{
    for (size_t i = 0; i < s.len; i++)
        if (s.base[i] == '\r' || s.base[i] == '\n' || s.base[i] == '\0')
            return 1;
    return 0;
}

/* 1 if every field can be relayed as it is: no name or value has a byte
 * sl_http_has_ctl refuses. */
static inline int sl_http_fields_relayable(const sl_header_t *hv, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (sl_http_has_ctl(hv[i].name) || sl_http_has_ctl(hv[i].value))
            return 0;
    return 1;
}

#endif
