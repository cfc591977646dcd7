/*
 * buf.h — byte views and growable byte buffers, the currency of the core.
 *
 * sl_str_t is a borrowed view {base, len}: it does not own its bytes and is
 * valid only as long as whoever lent it says (normally: for the duration of
 * the call that received it). sl_buf_t owns a heap block that grows
 * geometrically; it is not NUL-terminated unless sl_buf_cstr() is called.
 * Appends return 0 or SL_ENOMEM, and a buffer may carry a hard cap
 * (`limit`, 0 = none) past which appends fail with SL_ELIMIT instead of
 * growing — that is how the core bounds everything it buffers.
 */
#ifndef SL_BUF_H
#define SL_BUF_H

#include <stddef.h>
#include <string.h>

typedef struct {
    const char *base;
    size_t len;
} sl_str_t;

#define SL_STR(lit) ((sl_str_t){(lit), sizeof(lit) - 1})
#define SL_STR_NULL ((sl_str_t){NULL, 0})

static inline sl_str_t sl_str(const char *base, size_t len)
{
    return (sl_str_t){base, len};
}
static inline sl_str_t sl_str_c(const char *cstr)
{
    return (sl_str_t){cstr, cstr ? strlen(cstr) : 0};
}
int sl_str_eq(sl_str_t a, sl_str_t b);
int sl_str_ieq(sl_str_t a, sl_str_t b);              /* ASCII case-insensitive */
int sl_str_ieq_c(sl_str_t a, const char *cstr);
int sl_str_has_prefix(sl_str_t s, const char *prefix);

typedef struct {
    char *base;
    size_t len;
    size_t cap;
    size_t limit; /* 0 = unbounded */
} sl_buf_t;

void sl_buf_init(sl_buf_t *b, size_t limit);
void sl_buf_free(sl_buf_t *b);
void sl_buf_reset(sl_buf_t *b);                       /* len = 0, keeps memory */
int sl_buf_reserve(sl_buf_t *b, size_t extra);
int sl_buf_append(sl_buf_t *b, const void *p, size_t n);
int sl_buf_append_str(sl_buf_t *b, sl_str_t s);
int sl_buf_append_c(sl_buf_t *b, const char *cstr);
int sl_buf_append_byte(sl_buf_t *b, char c);
int sl_buf_printf(sl_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Removes the first n bytes (n <= len). */
void sl_buf_consume(sl_buf_t *b, size_t n);
/* NUL-terminates (not counted in len) and returns base, or NULL on ENOMEM. */
const char *sl_buf_cstr(sl_buf_t *b);
/* Appends s as the inside of a JSON string: escapes ", \, control bytes,
 * and replaces invalid UTF-8 with U+FFFD so the output is always valid JSON. */
int sl_buf_append_json_str(sl_buf_t *b, const char *s, size_t n);

#endif
