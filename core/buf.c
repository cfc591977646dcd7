/*
 * buf.c — growable byte buffers and view helpers (see buf.h). Growth is
 * geometric so appends are amortised O(1); a buffer's `limit` turns runaway
 * growth into SL_ELIMIT, which callers map to a LIMIT_* termination.
 */
#include "buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

#include "error.h"

int sl_str_eq(sl_str_t a, sl_str_t b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.base, b.base, a.len) == 0);
}

int sl_str_ieq(sl_str_t a, sl_str_t b)
{
    return a.len == b.len && (a.len == 0 || strncasecmp(a.base, b.base, a.len) == 0);
}

int sl_str_ieq_c(sl_str_t a, const char *cstr)
{
    return sl_str_ieq(a, sl_str_c(cstr));
}

int sl_str_has_prefix(sl_str_t s, const char *prefix)
{
    size_t n = strlen(prefix);
    return s.len >= n && memcmp(s.base, prefix, n) == 0;
}

void sl_buf_init(sl_buf_t *b, size_t limit)
{
    b->base = NULL;
    b->len = b->cap = 0;
    b->limit = limit;
}

void sl_buf_free(sl_buf_t *b)
{
    free(b->base);
    b->base = NULL;
    b->len = b->cap = 0;
}

void sl_buf_reset(sl_buf_t *b)
{
    b->len = 0;
}

int sl_buf_reserve(sl_buf_t *b, size_t extra)
{
    size_t need = b->len + extra + 1; /* +1 keeps room for sl_buf_cstr() */
    if (need < b->len)
        return SL_ENOMEM;
    if (b->limit && b->len + extra > b->limit)
        return SL_ELIMIT;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap *= 2;
    char *p = realloc(b->base, cap);
    if (!p)
        return SL_ENOMEM;
    b->base = p;
    b->cap = cap;
    return 0;
}

int sl_buf_append(sl_buf_t *b, const void *p, size_t n)
{
    int rc;
    if (n == 0)
        return 0;
    if ((rc = sl_buf_reserve(b, n)) != 0)
        return rc;
    memcpy(b->base + b->len, p, n);
    b->len += n;
    return 0;
}

int sl_buf_append_str(sl_buf_t *b, sl_str_t s)
{
    return sl_buf_append(b, s.base, s.len);
}

int sl_buf_append_c(sl_buf_t *b, const char *cstr)
{
    return sl_buf_append(b, cstr, strlen(cstr));
}

int sl_buf_append_byte(sl_buf_t *b, char c)
{
    return sl_buf_append(b, &c, 1);
}

int sl_buf_printf(sl_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    char small[256];
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0)
        return SL_EINVAL;
    if ((size_t)n < sizeof small)
        return sl_buf_append(b, small, (size_t)n);
    int rc = sl_buf_reserve(b, (size_t)n);
    if (rc)
        return rc;
    va_start(ap, fmt);
    vsnprintf(b->base + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void sl_buf_consume(sl_buf_t *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->base, b->base + n, b->len - n);
    b->len -= n;
}

const char *sl_buf_cstr(sl_buf_t *b)
{
    if (sl_buf_reserve(b, 0) != 0)
        return NULL;
    b->base[b->len] = '\0';
    return b->base;
}

/* Length of the valid UTF-8 sequence at s (1..4), or 0 if invalid. */
static size_t utf8_seq_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    if (c < 0x80)
        return 1;
    size_t len;
    unsigned cp;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
        (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
        return 0;
    return len;
}

int sl_buf_append_json_str(sl_buf_t *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    size_t start = b->len; /* on failure the buffer is left as it was */
    int rc;
    if (!b->limit || b->len + n <= b->limit)
        (void)sl_buf_reserve(b, n); /* a hint: escapes may need more */
    size_t run = 0; /* start of the current run of bytes that need no escape */
    for (size_t i = 0; i < n;) {
        unsigned char c = p[i];
        const char *esc = NULL;
        char ubuf[6];
        size_t esclen = 0;
        if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0x80) {
            size_t l = utf8_seq_len(p + i, n - i);
            if (l) {
                i += l;
                continue;
            }
            esc = "\\ufffd";
            esclen = 6;
        } else if (c == '"') {
            esc = "\\\"", esclen = 2;
        } else if (c == '\\') {
            esc = "\\\\", esclen = 2;
        } else if (c == '\n') {
            esc = "\\n", esclen = 2;
        } else if (c == '\r') {
            esc = "\\r", esclen = 2;
        } else if (c == '\t') {
            esc = "\\t", esclen = 2;
        } else {
            ubuf[0] = '\\', ubuf[1] = 'u', ubuf[2] = '0', ubuf[3] = '0';
            ubuf[4] = hex[c >> 4], ubuf[5] = hex[c & 15];
            esc = ubuf, esclen = 6;
        }
        if ((rc = sl_buf_append(b, s + run, i - run)) || (rc = sl_buf_append(b, esc, esclen))) {
            b->len = start;
            return rc;
        }
        i++;
        run = i;
    }
    if ((rc = sl_buf_append(b, s + run, n - run)) != 0)
        b->len = start;
    return rc;
}
