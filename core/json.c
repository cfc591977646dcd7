/*
 * json.c — sluice.json: a lossless, single-pass JSON codec for LuaJIT (see
 * json.h for the value mapping and the Lua API).
 *
 * Decode is a recursive-descent parser that pushes values straight onto the
 * Lua stack. Small containers are built "pending": their first elements sit
 * on the stack and the table is created once with the exact size, which
 * avoids the rehash chain that dominates naive decoders; past PENDING_MAX
 * elements (or when the stack is already deep) the table is created and
 * filled directly. Strings without escapes are pushed straight from the
 * input; 8-byte SWAR scans skip plain ASCII in both directions, since coding
 * agent bodies are mostly long string values.
 *
 * Encode writes into an sl_buf_t with inline capacity checks. Object keys
 * are emitted in sorted order (LuaJIT randomises pairs() order per VM) and
 * their key/value pairs are kept on the Lua stack while sorting so values
 * need no second lookup; objects too large for the C stack budget fall back
 * to looking values up again by key.
 *
 * Nothing here raises a Lua error for bad input: errors come back as
 * messages. Scratch memory lives in a registry-anchored userdata so an
 * out-of-memory longjmp out of a Lua API call cannot leak it.
 */
#define _GNU_SOURCE /* strtod_l, newlocale */

#include "json.h"

#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "error.h"

#define ARRAY_MT_KEY "sluice.json.array_mt"
#define NUMBER_MT_KEY "sluice.json.number_mt"
#define STATE_KEY "sluice.json.state"

/* Containers keep up to this many elements (pairs) on the stack before
 * their table is created. */
#define PENDING_MAX 32
/* Stack slots a C function may use are capped (LUAI_MAXCSTACK = 8000):
 * pending containers and stack-held object pairs stop below this mark so
 * that 1000 levels of plain nesting (a few slots each) always still fit. */
#define STACK_SOFT_LIMIT 4500
/* Scratch buffers larger than this are released after the call so one huge
 * body does not pin memory in every VM. */
#define SCRATCH_KEEP (1u << 20)

#define MAX_SAFE_INT 9007199254740992.0 /* 2^53 */

/* An object key being sorted for encode. String keys point into the Lua
 * string (anchored by the table); number keys are formatted into nb. */
typedef struct {
    const char *s; /* NULL: number key, text in nb */
    size_t len;
    double num;
    int slot; /* stack index of the key (value at slot + 1), 0: look it up again */
    char nb[32];
} jkey_t;

/* Per-VM scratch, owned by a userdata in the registry. */
typedef struct {
    sl_buf_t scratch; /* decode: unescaped strings, number text for strtod */
    sl_buf_t out;     /* encode output of the Lua binding */
    jkey_t *keys;     /* encode: a stack of key ranges, one per open object */
    size_t nkeys, capkeys;
    int busy;
} jstate_t;

/* ---- shared helpers ------------------------------------------------------------------------ */

static locale_t c_locale;
static pthread_once_t c_locale_once = PTHREAD_ONCE_INIT;

static void c_locale_init(void)
{
    c_locale = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
}

/* strtod that ignores setlocale(): JSON always uses '.' as decimal point. */
static double strtod_c(const char *s)
{
    pthread_once(&c_locale_once, c_locale_init);
    return c_locale ? strtod_l(s, NULL, c_locale) : strtod(s, NULL);
}

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

/* Nonzero when any of the 8 bytes in w is '"', '\\', < 0x20 or >= 0x80:
 * the bytes a JSON string scanner must look at one by one. */
static inline uint64_t swar_special(uint64_t w)
{
    uint64_t q = w ^ (ONES * '"'), b = w ^ (ONES * '\\');
    return (((q - ONES) & ~q) | ((b - ONES) & ~b) | (w - ONES * 0x20) | w) & HIGHS;
}

#ifdef __SSE2__
/* The same for 16 bytes at once (SSE2 is part of x86-64): a bit per byte
 * that is '"', '\\', < 0x20 or >= 0x80 (a signed compare below 0x20 takes
 * both). The bytes are also stored at o when o is not NULL. Agents' bodies
 * are mostly long strings, and this is where decoding them spends its time. */
static inline unsigned special16(const unsigned char *p, char *o)
{
    __m128i v = _mm_loadu_si128((const __m128i *)p);
    if (o)
        _mm_storeu_si128((__m128i *)o, v);
    __m128i q = _mm_cmpeq_epi8(v, _mm_set1_epi8('"'));
    __m128i b = _mm_cmpeq_epi8(v, _mm_set1_epi8('\\'));
    __m128i c = _mm_cmplt_epi8(v, _mm_set1_epi8(0x20));
    return (unsigned)_mm_movemask_epi8(_mm_or_si128(_mm_or_si128(q, b), c));
}
#endif

/* Length (2..4) of the valid UTF-8 sequence at p (whose first byte is
 * >= 0x80), or 0 when it is invalid: overlong, surrogate, > U+10FFFF, cut. */
static inline size_t utf8_len(const unsigned char *p, const unsigned char *end)
{
    unsigned c = p[0];
    size_t avail = (size_t)(end - p);
    if (c < 0xC2)
        return 0;
    if (c < 0xE0)
        return avail >= 2 && (p[1] & 0xC0) == 0x80 ? 2 : 0;
    if (c < 0xF0) {
        if (avail < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80)
            return 0;
        if ((c == 0xE0 && p[1] < 0xA0) || (c == 0xED && p[1] >= 0xA0))
            return 0;
        return 3;
    }
    if (c < 0xF5) {
        if (avail < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 ||
            (p[3] & 0xC0) != 0x80)
            return 0;
        if ((c == 0xF0 && p[1] < 0x90) || (c == 0xF4 && p[1] >= 0x90))
            return 0;
        return 4;
    }
    return 0;
}

static inline int is_digit(unsigned c)
{
    return c - '0' < 10;
}

/* Length of the JSON number at the start of s[0..n), or 0 if none. */
static size_t number_span(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    if (p < end && *p == '-')
        p++;
    if (p >= end || !is_digit(*p))
        return 0;
    if (*p == '0')
        p++;
    else
        while (p < end && is_digit(*p))
            p++;
    if (p < end && *p == '.') {
        if (++p >= end || !is_digit(*p))
            return 0;
        while (p < end && is_digit(*p))
            p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (p >= end || !is_digit(*p))
            return 0;
        while (p < end && is_digit(*p))
            p++;
    }
    return (size_t)(p - (const unsigned char *)s);
}

static int is_json_number(const char *s, size_t n)
{
    return n > 0 && number_span(s, n) == n;
}

/* Writes d as the shortest JSON text that reads back as the same double;
 * returns its length, or 0 for NaN/Inf (which JSON cannot express). */
static size_t fmt_number(double d, char *buf)
{
    if (!isfinite(d))
        return 0;
    if (d >= -MAX_SAFE_INT && d <= MAX_SAFE_INT && d == (double)(int64_t)d) {
        int64_t v = (int64_t)d;
        char tmp[24];
        size_t n = 0, len = 0;
        uint64_t u = v < 0 ? (uint64_t)-v : (uint64_t)v;
        if (v < 0 || (v == 0 && signbit(d)))
            buf[len++] = '-';
        do {
            tmp[n++] = (char)('0' + u % 10);
            u /= 10;
        } while (u);
        while (n)
            buf[len++] = tmp[--n];
        buf[len] = '\0';
        return len;
    }
    /* Up to three decimals (a time in milliseconds, a price in tenths of a
     * cent): printed from the integer k = d * 1000 when k / 1000 reads back
     * as d. Below 1e12, k has at most 15 digits, so this is the text %.15g
     * gives, without printf and strtod (the session store writes two such
     * times per request). */
    double k = d * 1000.0;
    if (k > -1e15 && k < 1e15 && k == (double)(int64_t)k && (double)(int64_t)k / 1000.0 == d) {
        int64_t v = (int64_t)k;
        uint64_t u = v < 0 ? (uint64_t)-v : (uint64_t)v;
        char tmp[24];
        size_t n = 0, len = 0;
        unsigned frac = (unsigned)(u % 1000);
        int fd = 3; /* fractional digits kept: trailing zeros go */
        while (fd > 0 && frac % 10 == 0) {
            frac /= 10;
            fd--;
        }
        for (int i = 0; i < fd; i++) {
            tmp[n++] = (char)('0' + frac % 10);
            frac /= 10;
        }
        tmp[n++] = '.';
        u /= 1000;
        do {
            tmp[n++] = (char)('0' + u % 10);
            u /= 10;
        } while (u);
        if (v < 0)
            buf[len++] = '-';
        while (n)
            buf[len++] = tmp[--n];
        buf[len] = '\0';
        return len;
    }
    int len = 0;
    for (int prec = 15; prec <= 17; prec++) {
        len = snprintf(buf, 32, "%.*g", prec, d);
        for (char *c = buf; *c; c++)
            if (*c == ',') /* a locale's decimal comma */
                *c = '.';
        if (prec == 17 || strtod_c(buf) == d)
            break;
    }
    /* %g writes e.g. 12345678901234568 for a double past 2^53: an integer
     * literal that decode would box. Use exponent form so it reads back as
     * the same Lua number. */
    if (!strpbrk(buf, ".eEn"))
        len = snprintf(buf, 32, "%.*e", (int)strspn(buf + (buf[0] == '-'), "0123456789") - 1, d);
    return (size_t)len;
}

/* ---- per-VM state and metatables ----------------------------------------------------------- */

static int state_gc(lua_State *L)
{
    jstate_t *st = lua_touserdata(L, 1);
    sl_buf_free(&st->scratch);
    sl_buf_free(&st->out);
    free(st->keys);
    st->keys = NULL;
    st->nkeys = st->capkeys = 0;
    return 0;
}

static int number_tostring(lua_State *L)
{
    lua_rawgeti(L, 1, 1);
    if (lua_type(L, -1) != LUA_TSTRING)
        lua_pushliteral(L, "nan");
    return 1;
}

static int number_eq(lua_State *L)
{
    lua_rawgeti(L, 1, 1);
    lua_rawgeti(L, 2, 1);
    lua_pushboolean(L, lua_type(L, -1) == LUA_TSTRING && lua_rawequal(L, -1, -2));
    return 1;
}

/* Pushes array_mt, number_mt and the state userdata, creating them in the
 * registry on first use so that every copy of this code in one VM (the Lua
 * module and the core's C API) shares them. */
static void push_shared(lua_State *L)
{
    luaL_newmetatable(L, ARRAY_MT_KEY);
    if (luaL_newmetatable(L, NUMBER_MT_KEY)) {
        lua_pushcfunction(L, number_tostring);
        lua_setfield(L, -2, "__tostring");
        lua_pushcfunction(L, number_eq);
        lua_setfield(L, -2, "__eq");
    }
    lua_getfield(L, LUA_REGISTRYINDEX, STATE_KEY);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        jstate_t *st = lua_newuserdata(L, sizeof *st);
        memset(st, 0, sizeof *st);
        sl_buf_init(&st->scratch, 0);
        sl_buf_init(&st->out, 0);
        lua_createtable(L, 0, 1);
        lua_pushcfunction(L, state_gc);
        lua_setfield(L, -2, "__gc");
        lua_setmetatable(L, -2);
        lua_pushvalue(L, -1);
        lua_setfield(L, LUA_REGISTRYINDEX, STATE_KEY);
    }
}

/* A GC step inside one of our Lua API calls may run a __gc finalizer that
 * itself calls the codec; such a nested call gets a fresh temporary state
 * instead of clobbering the one in use. (After an out-of-memory longjmp
 * `busy` stays set and later calls take this slower path: still correct.) */
static jstate_t *state_acquire(jstate_t *st, jstate_t *tmp)
{
    if (!st->busy) {
        st->busy = 1;
        return st;
    }
    memset(tmp, 0, sizeof *tmp);
    sl_buf_init(&tmp->scratch, 0);
    sl_buf_init(&tmp->out, 0);
    return tmp;
}

static void state_release(jstate_t *st, jstate_t *used)
{
    if (used == st) {
        st->busy = 0;
        return;
    }
    sl_buf_free(&used->scratch);
    sl_buf_free(&used->out);
    free(used->keys);
}

static void trim_buf(sl_buf_t *b)
{
    if (b->cap > SCRATCH_KEEP)
        sl_buf_free(b);
    b->len = 0;
}

/* ---- decode -------------------------------------------------------------------------------- */

typedef struct {
    lua_State *L;
    const unsigned char *start, *p, *end;
    jstate_t *st;
    int array_mt, number_mt; /* stack indices (may be upvalue pseudo-indices) */
    int depth;
    int skip; /* check the value's syntax only: push nothing (json.members) */
    char *err;
    size_t errlen;
} dec_t;

static int dec_value(dec_t *d);

static int dec_fail(dec_t *d, const unsigned char *at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int dec_fail(dec_t *d, const unsigned char *at, const char *fmt, ...)
{
    char msg[96];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (d->errlen)
        snprintf(d->err, d->errlen, "json: %s at byte %zu", msg, (size_t)(at - d->start) + 1);
    return -1;
}

static int dec_unexpected(dec_t *d, const unsigned char *at)
{
    if (at >= d->end)
        return dec_fail(d, at, "unexpected end of input");
    if (*at >= 0x20 && *at < 0x7f)
        return dec_fail(d, at, "unexpected character '%c'", *at);
    return dec_fail(d, at, "unexpected byte 0x%02x", *at);
}

static inline const unsigned char *skip_ws(const unsigned char *p, const unsigned char *end)
{
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
        p++;
    return p;
}

static int hex4(const unsigned char *p, const unsigned char *end, unsigned *out)
{
    unsigned v = 0;
    if (end - p < 4)
        return -1;
    for (int i = 0; i < 4; i++) {
        unsigned c = p[i], x;
        if (c - '0' < 10)
            x = c - '0';
        else if ((c | 0x20) - 'a' < 6)
            x = (c | 0x20) - 'a' + 10;
        else
            return -1;
        v = v << 4 | x;
    }
    *out = v;
    return 0;
}

/* Writes code point cp as UTF-8 at o; returns the byte after it. */
static inline char *put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) {
        *o++ = (char)cp;
    } else if (cp < 0x800) {
        *o++ = (char)(0xC0 | cp >> 6);
        *o++ = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *o++ = (char)(0xE0 | cp >> 12);
        *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *o++ = (char)(0x80 | (cp & 0x3F));
    } else {
        *o++ = (char)(0xF0 | cp >> 18);
        *o++ = (char)(0x80 | ((cp >> 12) & 0x3F));
        *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *o++ = (char)(0x80 | (cp & 0x3F));
    }
    return o;
}

/* The byte each one-letter escape stands for (0: not one). */
static const char unescape[256] = {['"'] = '"', ['\\'] = '\\', ['/'] = '/', ['b'] = '\b',
                                   ['f'] = '\f', ['n'] = '\n', ['r'] = '\r', ['t'] = '\t'};

/* Decodes the escape whose backslash is at bs, writing its bytes at *o
 * (never more than the escape's own length); returns the input byte after
 * it, or NULL on error. */
static const unsigned char *dec_escape(dec_t *d, const unsigned char *bs, char **o)
{
    const unsigned char *p = bs + 1;
    unsigned cp, lo;
    if (p >= d->end) {
        dec_fail(d, d->end, "unterminated string");
        return NULL;
    }
    if (unescape[*p]) {
        *(*o)++ = unescape[*p];
        return p + 1;
    }
    if (*p != 'u') {
        if (*p >= 0x20 && *p < 0x7f)
            dec_fail(d, bs, "invalid escape '\\%c'", *p);
        else
            dec_fail(d, bs, "invalid escape");
        return NULL;
    }
    if (hex4(p + 1, d->end, &cp)) {
        dec_fail(d, bs, "invalid \\u escape");
        return NULL;
    }
    p += 5;
    if (cp >= 0xDC00 && cp <= 0xDFFF) {
        dec_fail(d, bs, "lone surrogate \\u%04x", cp);
        return NULL;
    }
    if (cp >= 0xD800 && cp <= 0xDBFF) {
        if (d->end - p < 6 || p[0] != '\\' || p[1] != 'u' || hex4(p + 2, d->end, &lo) ||
            lo < 0xDC00 || lo > 0xDFFF) {
            dec_fail(d, bs, "lone surrogate \\u%04x", cp);
            return NULL;
        }
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        p += 6;
    }
    *o = put_utf8(*o, cp);
    return p;
}

/* Index of the first flagged byte of a swar_special() mask (little-endian
 * load order). */
static inline size_t first_special(uint64_t m)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return (size_t)__builtin_ctzll(m) >> 3;
#else
    (void)m;
    return 0; /* big-endian: fall back to looking at each byte */
#endif
}

/* The length of the run of plain string bytes at p (before limit): up to
 * the first byte special16/swar_special flag, or to where fewer than 8
 * bytes remain (the caller looks at those one by one). With o, the run is
 * copied there too, in whole 16- or 8-byte blocks, so o needs 16 bytes of
 * room past it. */
static inline size_t plain_run(const unsigned char *p, const unsigned char *limit, char *o)
{
    const unsigned char *p0 = p;
    for (;;) {
        size_t done = (size_t)(p - p0);
#ifdef __SSE2__
        if (limit - p >= 16) {
            unsigned m = special16(p, o ? o + done : NULL);
            if (!m) {
                p += 16;
                continue;
            }
            return done + (size_t)__builtin_ctz(m);
        }
#endif
        if (limit - p >= 8) {
            uint64_t w, m;
            memcpy(&w, p, 8);
            if (o)
                memcpy(o + done, &w, 8);
            if (!(m = swar_special(w))) {
                p += 8;
                continue;
            }
            return done + first_special(m);
        }
        return done;
    }
}

/* The rest of a string that contains an escape: s0 is its first byte, p the
 * first backslash. Unescaping never lengthens text, so one reservation of
 * the remaining input covers every write (including 16-byte block copies). */
static int dec_string_escaped(dec_t *d, const unsigned char *s0, const unsigned char *p)
{
    const unsigned char *end = d->end;
    sl_buf_t *b = &d->st->scratch;
    b->len = 0;
    if (sl_buf_reserve(b, (size_t)(end - s0) + 16))
        return dec_fail(d, p, "out of memory");
    char *o = b->base;
    memcpy(o, s0, (size_t)(p - s0));
    o += p - s0;
    for (;;) {
        size_t k = plain_run(p, end, o);
        p += k, o += k;
        if (p >= end)
            return dec_fail(d, s0 - 1, "unterminated string");
        unsigned c = *p;
        if (c == '"')
            break;
        if (c == '\\') {
            if (!(p = dec_escape(d, p, &o)))
                return -1;
        } else if (c >= 0x80) {
            size_t n = utf8_len(p, end);
            if (!n)
                return dec_fail(d, p, "invalid UTF-8 in string");
            while (n--)
                *o++ = (char)*p++;
        } else if (c < 0x20) {
            return dec_fail(d, p, "control character 0x%02x in string", c);
        } else {
            *o++ = (char)*p++;
        }
    }
    if (!d->skip)
        lua_pushlstring(d->L, b->base, (size_t)(o - b->base));
    d->p = p + 1;
    return 0;
}

/* d->p is at the opening quote; pushes the string, straight from the input
 * unless it holds an escape. Skipped, escapes are only checked. */
static int dec_string(dec_t *d)
{
    const unsigned char *s0 = d->p + 1, *p = s0, *end = d->end;
    for (;;) {
        p += plain_run(p, end, NULL);
        if (p >= end)
            return dec_fail(d, d->p, "unterminated string");
        unsigned c = *p;
        if (c == '"')
            break;
        if (c == '\\') {
            if (!d->skip)
                return dec_string_escaped(d, s0, p);
            char unescaped[4], *o = unescaped; /* an escape stands for at most 4 bytes */
            if (!(p = dec_escape(d, p, &o)))
                return -1;
            continue;
        }
        if (c >= 0x80) {
            size_t n = utf8_len(p, end);
            if (!n)
                return dec_fail(d, p, "invalid UTF-8 in string");
            p += n;
        } else if (c < 0x20) {
            return dec_fail(d, p, "control character 0x%02x in string", c);
        } else {
            p++;
        }
    }
    if (!d->skip)
        lua_pushlstring(d->L, (const char *)s0, (size_t)(p - s0));
    d->p = p + 1;
    return 0;
}

static void push_boxed(lua_State *L, const char *s, size_t n, int number_mt)
{
    lua_createtable(L, 1, 0);
    lua_pushlstring(L, s, n);
    lua_rawseti(L, -2, 1);
    lua_pushvalue(L, number_mt);
    lua_setmetatable(L, -2);
}

static const double pow10_exact[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                     1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                     1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* Reads the number at d->p: up to 19 significant digits are gathered into an
 * integer so that exact integers and Clinger's fast path (mantissa <= 2^53,
 * |exp10| <= 22: one correctly rounded multiply/divide) cover nearly every
 * real number without strtod. */
static int dec_number(dec_t *d)
{
    const unsigned char *start = d->p, *p = start, *end = d->end;
    uint64_t m = 0;
    int nd = 0, exp10 = 0, dropped = 0, isint = 1, neg = 0;
    if (*p == '-')
        neg = 1, p++;
    if (p >= end || !is_digit(*p))
        return dec_unexpected(d, p);
    if (*p == '0') {
        if (++p < end && is_digit(*p))
            return dec_fail(d, p - 1, "leading zero in number");
    } else {
        for (; p < end && is_digit(*p); p++) {
            if (nd < 19)
                m = m * 10 + (*p - '0'), nd++;
            else
                exp10++, dropped = 1;
        }
    }
    if (p < end && *p == '.') {
        isint = 0;
        if (++p >= end || !is_digit(*p))
            return dec_unexpected(d, p);
        for (; p < end && is_digit(*p); p++) {
            if (nd < 19) {
                m = m * 10 + (*p - '0');
                nd += m != 0; /* leading zeros of 0.000x cost no precision */
                exp10--;
            } else {
                dropped = 1;
            }
        }
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        int eneg = 0, e = 0;
        isint = 0;
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            eneg = *p++ == '-';
        if (p >= end || !is_digit(*p))
            return dec_unexpected(d, p);
        for (; p < end && is_digit(*p); p++)
            if (e < 100000)
                e = e * 10 + (*p - '0');
        exp10 += eneg ? -e : e;
    }
    d->p = p;
    if (d->skip)
        return 0;
    size_t len = (size_t)(p - start);
    if (isint) {
        if (!dropped && m <= (1ULL << 53))
            lua_pushnumber(d->L, neg ? -(double)m : (double)m);
        else
            push_boxed(d->L, (const char *)start, len, d->number_mt);
        return 0;
    }
    if (!dropped && m <= (1ULL << 53) && exp10 >= -22 && exp10 <= 22) {
        double v = (double)m;
        v = exp10 < 0 ? v / pow10_exact[-exp10] : v * pow10_exact[exp10];
        lua_pushnumber(d->L, neg ? -v : v);
        return 0;
    }
    sl_buf_t *b = &d->st->scratch;
    b->len = 0;
    if (sl_buf_append(b, start, len) || !sl_buf_cstr(b))
        return dec_fail(d, start, "out of memory");
    double v = strtod_c(b->base);
    if (isinf(v)) /* beyond double range: keep the text rather than lose it */
        push_boxed(d->L, (const char *)start, len, d->number_mt);
    else
        lua_pushnumber(d->L, v);
    return 0;
}

static int dec_literal(dec_t *d, const char *word, size_t n)
{
    const unsigned char *p = d->p;
    for (size_t i = 0; i < n; i++)
        if (p + i >= d->end || p[i] != (unsigned char)word[i])
            return dec_unexpected(d, p + i);
    d->p = p + n;
    return 0;
}

/* Moves the n values at base+1.. into a new table at base+1. */
static void flush_array(lua_State *L, int base, int n, int hint)
{
    lua_createtable(L, hint, 0);
    lua_insert(L, base + 1);
    for (int i = n; i >= 1; i--)
        lua_rawseti(L, base + 1, i);
}

/* Moves the n key/value pairs at base+1.. into a new table at base+1, in
 * document order so that a duplicate key's last value wins. */
static void flush_object(lua_State *L, int base, int n, int hint)
{
    lua_createtable(L, 0, hint);
    if (n == 0)
        return;
    int t = lua_gettop(L);
    for (int i = 0; i < n; i++) {
        lua_pushvalue(L, base + 1 + 2 * i);
        lua_pushvalue(L, base + 2 + 2 * i);
        lua_rawset(L, t);
    }
    lua_replace(L, base + 1);
    lua_settop(L, base + 1);
}

static int dec_enter(dec_t *d)
{
    if (++d->depth > SL_JSON_MAX_DEPTH)
        return dec_fail(d, d->p, "nesting deeper than %d", SL_JSON_MAX_DEPTH);
    if (!lua_checkstack(d->L, 2 * PENDING_MAX + 8))
        return dec_fail(d, d->p, "Lua stack exhausted");
    d->p = skip_ws(d->p + 1, d->end);
    return 0;
}

static int dec_array(dec_t *d)
{
    lua_State *L = d->L;
    /* skipped: no table, as if it were already made and filled */
    int base = lua_gettop(L), n = 0, tabled = d->skip || base > STACK_SOFT_LIMIT;
    if (dec_enter(d))
        return -1;
    if (tabled && !d->skip)
        lua_createtable(L, 0, 0);
    if (d->p < d->end && *d->p == ']') {
        d->p++;
    } else {
        for (;;) {
            if (dec_value(d))
                return -1;
            n++;
            if (tabled && !d->skip)
                lua_rawseti(L, base + 1, n);
            d->p = skip_ws(d->p, d->end);
            if (d->p < d->end && *d->p == ',') {
                d->p = skip_ws(d->p + 1, d->end);
                if (!tabled && n == PENDING_MAX) {
                    flush_array(L, base, n, 4 * n);
                    tabled = 1;
                }
                continue;
            }
            if (d->p < d->end && *d->p == ']') {
                d->p++;
                break;
            }
            return dec_unexpected(d, d->p);
        }
    }
    if (!tabled)
        flush_array(L, base, n, n);
    if (!d->skip) {
        lua_pushvalue(L, d->array_mt);
        lua_setmetatable(L, -2);
    }
    d->depth--;
    return 0;
}

static int dec_object(dec_t *d)
{
    lua_State *L = d->L;
    int base = lua_gettop(L), n = 0, tabled = d->skip || base > STACK_SOFT_LIMIT;
    if (dec_enter(d))
        return -1;
    if (tabled && !d->skip)
        lua_createtable(L, 0, 0);
    if (d->p < d->end && *d->p == '}') {
        d->p++;
    } else {
        for (;;) {
            if (d->p >= d->end || *d->p != '"')
                return dec_unexpected(d, d->p);
            if (dec_string(d))
                return -1;
            d->p = skip_ws(d->p, d->end);
            if (d->p >= d->end || *d->p != ':')
                return dec_unexpected(d, d->p);
            d->p = skip_ws(d->p + 1, d->end);
            if (dec_value(d))
                return -1;
            n++;
            if (tabled && !d->skip)
                lua_rawset(L, base + 1);
            d->p = skip_ws(d->p, d->end);
            if (d->p < d->end && *d->p == ',') {
                d->p = skip_ws(d->p + 1, d->end);
                if (!tabled && n == PENDING_MAX) {
                    flush_object(L, base, n, 2 * n);
                    tabled = 1;
                }
                continue;
            }
            if (d->p < d->end && *d->p == '}') {
                d->p++;
                break;
            }
            return dec_unexpected(d, d->p);
        }
    }
    if (!tabled)
        flush_object(L, base, n, n);
    d->depth--;
    return 0;
}

/* d->p is at the value's first byte (whitespace already skipped). */
static int dec_value(dec_t *d)
{
    if (d->p >= d->end)
        return dec_unexpected(d, d->p);
    switch (*d->p) {
    case '{':
        return dec_object(d);
    case '[':
        return dec_array(d);
    case '"':
        return dec_string(d);
    case 't':
        if (dec_literal(d, "true", 4))
            return -1;
        if (!d->skip)
            lua_pushboolean(d->L, 1);
        return 0;
    case 'f':
        if (dec_literal(d, "false", 5))
            return -1;
        if (!d->skip)
            lua_pushboolean(d->L, 0);
        return 0;
    case 'n':
        if (dec_literal(d, "null", 4))
            return -1;
        if (!d->skip)
            lua_pushlightuserdata(d->L, NULL);
        return 0;
    case '-':
    case '0': case '1': case '2': case '3': case '4':
    case '5': case '6': case '7': case '8': case '9':
        return dec_number(d);
    default:
        return dec_unexpected(d, d->p);
    }
}

/* The document ends after its value: only whitespace may follow. */
static int dec_end(dec_t *d)
{
    d->p = skip_ws(d->p, d->end);
    if (d->p < d->end)
        return dec_fail(d, d->p, "unexpected data after the document");
    return 0;
}

/* Decodes s and pushes the value; on failure restores the stack. */
static int decode_run(lua_State *L, jstate_t *shared, int array_mt, int number_mt,
                      const char *s, size_t len, char *err, size_t errlen)
{
    jstate_t tmp, *st = state_acquire(shared, &tmp);
    dec_t d = {.L = L,
               .start = (const unsigned char *)s,
               .p = (const unsigned char *)s,
               .end = (const unsigned char *)s + len,
               .st = st,
               .array_mt = array_mt,
               .number_mt = number_mt,
               .err = err,
               .errlen = errlen};
    int top = lua_gettop(L), rc = 0;
    d.p = skip_ws(d.p, d.end);
    if (dec_value(&d) || dec_end(&d))
        rc = SL_EPARSE;
    if (rc)
        lua_settop(L, top);
    trim_buf(&st->scratch);
    state_release(shared, st);
    return rc;
}

int sl_json_decode(lua_State *L, const char *s, size_t len, char *err, size_t errlen)
{
    if (!lua_checkstack(L, 8)) {
        snprintf(err, errlen, "json: Lua stack exhausted");
        return SL_ELIMIT;
    }
    push_shared(L);
    int top = lua_gettop(L);
    jstate_t *st = lua_touserdata(L, top);
    int rc = decode_run(L, st, top - 2, top - 1, s, len, err, errlen);
    if (rc == 0)
        lua_replace(L, top - 2);
    lua_settop(L, top - 3 + (rc == 0));
    return rc;
}

/* ---- encode -------------------------------------------------------------------------------- */

typedef struct {
    lua_State *L;
    sl_buf_t *out;
    jstate_t *st;
    const void *array_mt, *number_mt;
    char *err;
    size_t errlen;
} enc_t;

static int enc_value(enc_t *e, int idx, int depth);

static int enc_fail(enc_t *e, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int enc_fail(enc_t *e, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (e->errlen)
        vsnprintf(e->err, e->errlen, fmt, ap);
    va_end(ap);
    return rc;
}

static int enc_grow(enc_t *e, size_t n)
{
    int rc = sl_buf_reserve(e->out, n);
    if (rc == SL_ELIMIT)
        return enc_fail(e, rc, "json: output exceeds the buffer limit");
    if (rc)
        return enc_fail(e, rc, "json: out of memory");
    return 0;
}

/* Makes room for n more bytes (the fast path is inline). */
static inline int enc_reserve(enc_t *e, size_t n)
{
    sl_buf_t *b = e->out;
    if (n < b->cap - b->len && (!b->limit || n <= b->limit - b->len))
        return 0;
    return enc_grow(e, n);
}

static inline int enc_put(enc_t *e, const char *s, size_t n)
{
    int rc = enc_reserve(e, n);
    if (rc)
        return rc;
    memcpy(e->out->base + e->out->len, s, n);
    e->out->len += n;
    return 0;
}

static inline int enc_byte(enc_t *e, char c)
{
    int rc = enc_reserve(e, 1);
    if (rc)
        return rc;
    e->out->base[e->out->len++] = c;
    return 0;
}

/* The escape for byte c (a control byte, '"', '\\', or an invalid UTF-8
 * byte, which becomes U+FFFD); returns the byte after it. */
static inline char *put_escape(char *o, unsigned c)
{
    static const char hex[] = "0123456789abcdef";
    static const char letter[128] = {['"'] = '"', ['\\'] = '\\', ['\n'] = 'n', ['\r'] = 'r',
                                     ['\t'] = 't', ['\b'] = 'b', ['\f'] = 'f'};
    *o++ = '\\';
    if (c < 0x80 && letter[c]) {
        *o++ = letter[c];
        return o;
    }
    if (c >= 0x80) {
        memcpy(o, "ufffd", 5);
    } else {
        memcpy(o, "u00", 3);
        o[3] = hex[c >> 4], o[4] = hex[c & 15];
    }
    return o + 5;
}

/* Input bytes per worst-case (6x) reservation in enc_string. */
#define ENC_CHUNK 4096

/* For buffers with a limit close by, where the 6x worst-case reservation
 * would fail although the real output fits: one write at a time. */
static int enc_string_exact(enc_t *e, const unsigned char *p, const unsigned char *end)
{
    char esc[8];
    int rc;
    while (p < end) {
        const unsigned char *run = p;
        for (;;) {
            size_t l = 1;
            if (p >= end || (*p >= 0x80 ? !(l = utf8_len(p, end))
                                        : (*p < 0x20 || *p == '"' || *p == '\\')))
                break;
            p += l;
        }
        if ((rc = enc_put(e, (const char *)run, (size_t)(p - run))))
            return rc;
        if (p < end) {
            if ((rc = enc_put(e, esc, (size_t)(put_escape(esc, *p) - esc))))
                return rc;
            p++;
        }
    }
    return enc_byte(e, '"');
}

/* Writes s as a JSON string: escapes '"', '\\' and control bytes, keeps '/'
 * and valid UTF-8 as is, and turns each invalid UTF-8 byte into \ufffd.
 * Each chunk reserves its worst case up front so the loop writes without
 * bounds checks, copying plain ASCII 16 (or 8) bytes at a time. */
static int enc_string(enc_t *e, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    sl_buf_t *b = e->out;
    int rc;
    if ((rc = enc_byte(e, '"')))
        return rc;
    while (p < end) {
        size_t chunk = (size_t)(end - p) < ENC_CHUNK ? (size_t)(end - p) : ENC_CHUNK;
        size_t need = 6 * chunk + 16;
        if (b->limit && need > b->limit - b->len)
            return enc_string_exact(e, p, end);
        if ((rc = enc_reserve(e, need)))
            return rc;
        const unsigned char *ce = p + chunk;
        char *o = b->base + b->len;
        while (p < ce) {
            size_t k = plain_run(p, ce, o);
            p += k, o += k;
            if (p >= ce)
                break;
            unsigned c = *p;
            if (c >= 0x80) {
                size_t l = utf8_len(p, end); /* may run past ce: covered by the slack */
                if (l) {
                    while (l--)
                        *o++ = (char)*p++;
                    continue;
                }
            } else if (c >= 0x20 && c != '"' && c != '\\') {
                *o++ = (char)*p++;
                continue;
            }
            o = put_escape(o, c);
            p++;
        }
        b->len = (size_t)(o - b->base);
    }
    return enc_byte(e, '"');
}

static int enc_number(enc_t *e, double v)
{
    char buf[32];
    size_t n = fmt_number(v, buf);
    if (!n)
        return enc_fail(e, SL_EINVAL, "json: cannot encode %s", isnan(v) ? "NaN" : "infinity");
    return enc_put(e, buf, n);
}

static int enc_boxed(enc_t *e, int idx)
{
    lua_State *L = e->L;
    size_t n;
    lua_rawgeti(L, idx, 1);
    const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &n) : NULL;
    int rc = s && is_json_number(s, n) ? enc_put(e, s, n)
                                         : enc_fail(e, SL_EINVAL, "json: invalid boxed number");
    lua_pop(L, 1);
    return rc;
}

static int enc_array(enc_t *e, int idx, size_t n, int depth)
{
    lua_State *L = e->L;
    int rc;
    if ((rc = enc_byte(e, '[')))
        return rc;
    for (size_t i = 1; i <= n; i++) {
        if (i > 1 && (rc = enc_byte(e, ',')))
            return rc;
        lua_rawgeti(L, idx, (int)i);
        rc = enc_value(e, lua_gettop(L), depth);
        lua_pop(L, 1);
        if (rc)
            return rc;
    }
    return enc_byte(e, ']');
}

/* True when the keys of the table at idx are exactly 1..n. */
static int is_sequence(lua_State *L, int idx, size_t n)
{
    size_t count = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        double k = lua_type(L, -1) == LUA_TNUMBER ? lua_tonumber(L, -1) : 0;
        if (k < 1 || k > (double)n || k != floor(k)) {
            lua_pop(L, 1);
            return 0;
        }
        count++;
    }
    return count == n;
}

static inline const char *key_text(const jkey_t *k)
{
    return k->s ? k->s : k->nb;
}

static int key_cmp(const void *a, const void *b)
{
    const jkey_t *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(key_text(x), key_text(y), n);
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

static void sort_keys(jkey_t *k, size_t n)
{
    if (n > 12) {
        qsort(k, n, sizeof *k, key_cmp);
        return;
    }
    for (size_t i = 1; i < n; i++) {
        jkey_t t = k[i];
        size_t j = i;
        for (; j > 0 && key_cmp(&k[j - 1], &t) > 0; j--)
            k[j] = k[j - 1];
        k[j] = t;
    }
}

/* Appends the key at the top of the stack (its value above it) to the key
 * stack; the pair stays on the Lua stack while the stack budget allows. */
static int collect_key(enc_t *e)
{
    lua_State *L = e->L;
    jstate_t *st = e->st;
    if (st->nkeys == st->capkeys) {
        size_t cap = st->capkeys ? 2 * st->capkeys : 64;
        jkey_t *k = realloc(st->keys, cap * sizeof *k);
        if (!k)
            return enc_fail(e, SL_ENOMEM, "json: out of memory");
        st->keys = k, st->capkeys = cap;
    }
    jkey_t *k = &st->keys[st->nkeys];
    int t = lua_type(L, -2);
    if (t == LUA_TSTRING) {
        k->s = lua_tolstring(L, -2, &k->len);
    } else if (t == LUA_TNUMBER) {
        k->s = NULL;
        k->num = lua_tonumber(L, -2);
        if (!(k->len = fmt_number(k->num, k->nb)))
            return enc_fail(e, SL_EINVAL, "json: cannot encode an infinite table key");
    } else {
        return enc_fail(e, SL_EINVAL, "json: cannot encode a %s table key", lua_typename(L, t));
    }
    st->nkeys++;
    if (lua_gettop(L) < STACK_SOFT_LIMIT && lua_checkstack(L, 4)) {
        k->slot = lua_gettop(L) - 1;
        lua_pushvalue(L, -2); /* the key again, for lua_next */
    } else {
        k->slot = 0;
        lua_pop(L, 1);
    }
    return 0;
}

static int enc_object(enc_t *e, int idx, int depth)
{
    lua_State *L = e->L;
    jstate_t *st = e->st;
    size_t k0 = st->nkeys;
    int top = lua_gettop(L), rc = 0;
    lua_pushnil(L);
    while (lua_next(L, idx))
        if ((rc = collect_key(e)))
            goto out;
    size_t nk = st->nkeys - k0;
    sort_keys(st->keys + k0, nk);
    for (size_t i = 1; i < nk; i++)
        if (key_cmp(&st->keys[k0 + i - 1], &st->keys[k0 + i]) == 0) {
            jkey_t *k = &st->keys[k0 + i];
            rc = enc_fail(e, SL_EINVAL, "json: duplicate key \"%.*s\" (number and string keys)",
                          (int)(k->len > 40 ? 40 : k->len), key_text(k));
            goto out;
        }
    if ((rc = enc_byte(e, '{')))
        goto out;
    for (size_t i = 0; i < nk; i++) {
        jkey_t *k = &st->keys[k0 + i]; /* re-fetched: nested objects may realloc */
        if ((i && (rc = enc_byte(e, ','))) || (rc = enc_string(e, key_text(k), k->len)) ||
            (rc = enc_byte(e, ':')))
            goto out;
        if (k->slot) {
            rc = enc_value(e, k->slot + 1, depth);
        } else {
            if (k->s)
                lua_pushlstring(L, k->s, k->len);
            else
                lua_pushnumber(L, k->num);
            lua_rawget(L, idx);
            rc = enc_value(e, lua_gettop(L), depth);
            lua_pop(L, 1);
        }
        if (rc)
            goto out;
    }
    rc = enc_byte(e, '}');
out:
    st->nkeys = k0;
    lua_settop(L, top);
    return rc;
}

static int enc_table(enc_t *e, int idx, int depth)
{
    lua_State *L = e->L;
    if (depth > SL_JSON_MAX_DEPTH)
        return enc_fail(e, SL_EINVAL, "json: nesting deeper than %d (or a cycle)",
                        SL_JSON_MAX_DEPTH);
    if (!lua_checkstack(L, 8))
        return enc_fail(e, SL_ELIMIT, "json: Lua stack exhausted");
    if (lua_getmetatable(L, idx)) {
        const void *mt = lua_topointer(L, -1);
        lua_pop(L, 1);
        if (mt == e->array_mt)
            return enc_array(e, idx, lua_objlen(L, idx), depth);
        if (mt == e->number_mt)
            return enc_boxed(e, idx);
    }
    size_t n = lua_objlen(L, idx);
    if (n > 0 && is_sequence(L, idx, n))
        return enc_array(e, idx, n, depth);
    return enc_object(e, idx, depth);
}

static int enc_value(enc_t *e, int idx, int depth)
{
    lua_State *L = e->L;
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        return enc_put(e, "null", 4);
    case LUA_TBOOLEAN:
        return lua_toboolean(L, idx) ? enc_put(e, "true", 4) : enc_put(e, "false", 5);
    case LUA_TNUMBER:
        return enc_number(e, lua_tonumber(L, idx));
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        return enc_string(e, s, n);
    }
    case LUA_TTABLE:
        return enc_table(e, idx, depth + 1);
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL)
            return enc_put(e, "null", 4);
        return enc_fail(e, SL_EINVAL, "json: cannot encode userdata");
    default:
        return enc_fail(e, SL_EINVAL, "json: cannot encode %s",
                        lua_typename(L, lua_type(L, idx)));
    }
}

static int encode_run(lua_State *L, int idx, sl_buf_t *out, jstate_t *st, const void *array_mt,
                      const void *number_mt, char *err, size_t errlen)
{
    enc_t e = {.L = L,
               .out = out,
               .st = st,
               .array_mt = array_mt,
               .number_mt = number_mt,
               .err = err,
               .errlen = errlen};
    int top = lua_gettop(L);
    int rc = enc_value(&e, idx, 0);
    lua_settop(L, top);
    st->nkeys = 0;
    if (st->capkeys > 4096) {
        free(st->keys);
        st->keys = NULL;
        st->capkeys = 0;
    }
    return rc;
}

int sl_json_encode_value(lua_State *L, int idx, sl_buf_t *out, char *err, size_t errlen)
{
    if (idx < 0 && idx > LUA_REGISTRYINDEX)
        idx = lua_gettop(L) + idx + 1;
    if (!lua_checkstack(L, 8)) {
        snprintf(err, errlen, "json: Lua stack exhausted");
        return SL_ELIMIT;
    }
    push_shared(L);
    int top = lua_gettop(L);
    jstate_t tmp, *shared = lua_touserdata(L, top), *st = state_acquire(shared, &tmp);
    int rc = encode_run(L, idx, out, st, lua_topointer(L, top - 2), lua_topointer(L, top - 1),
                        err, errlen);
    state_release(shared, st);
    lua_settop(L, top - 3);
    return rc;
}

/* ---- Lua bindings (upvalues: array_mt, number_mt, state) ------------------------------------ */

#define UV_ARRAY_MT lua_upvalueindex(1)
#define UV_NUMBER_MT lua_upvalueindex(2)
#define UV_STATE lua_upvalueindex(3)

/* The byte range s[i..j] named by the optional arguments at idx and idx + 1,
 * 1-based and inclusive as string.sub takes them (default: all of s), as a
 * [first, last) offset pair; -1 when it does not lie inside s. */
static int range_arg(lua_State *L, int idx, size_t len, size_t *first, size_t *last)
{
    lua_Integer i = luaL_optinteger(L, idx, 1), j = luaL_optinteger(L, idx + 1, (lua_Integer)len);
    if (i < 1 || j > (lua_Integer)len || i > j + 1)
        return -1;
    *first = (size_t)(i - 1);
    *last = (size_t)j;
    return 0;
}

/* The document argument (1) and the range after it; NULL, with nil and the
 * message pushed, when they are not usable. verb names the call's work. */
static const char *document_args(lua_State *L, const char *verb, size_t *first, size_t *last)
{
    size_t len;
    if (lua_type(L, 1) != LUA_TSTRING) {
        lua_pushnil(L);
        lua_pushfstring(L, "json: cannot %s a %s (expected a string)", verb, luaL_typename(L, 1));
        return NULL;
    }
    const char *s = lua_tolstring(L, 1, &len);
    if (range_arg(L, 2, len, first, last)) {
        lua_pushnil(L);
        lua_pushliteral(L, "json: byte range outside the string");
        return NULL;
    }
    return s;
}

/* json.decode(s [, i [, j]]): the document s, or the one at s[i..j]
 * (a span from json.members; error offsets count from i). */
static int l_decode(lua_State *L)
{
    char err[160];
    size_t first, last;
    const char *s = document_args(L, "decode", &first, &last);
    if (!s)
        return 2;
    lua_settop(L, 1);
    if (decode_run(L, lua_touserdata(L, UV_STATE), UV_ARRAY_MT, UV_NUMBER_MT, s + first,
                   last - first, err, sizeof err)) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    return 1;
}

/* Pushes { first, last }: the byte range of s[v0..v1) as string.sub takes it. */
static void push_span(lua_State *L, const unsigned char *s, const unsigned char *v0,
                      const unsigned char *v1)
{
    lua_createtable(L, 2, 0);
    lua_pushinteger(L, (lua_Integer)(v0 - s) + 1);
    lua_rawseti(L, -2, 1);
    lua_pushinteger(L, (lua_Integer)(v1 - s));
    lua_rawseti(L, -2, 2);
}

/* The members of the object or array at d->p, as spans (see l_members);
 * pushes their table and sets *kind, or pushes nothing for a document that
 * is neither. max > 0 stops after that many members, leaving the rest
 * unread. */
static int members_run(dec_t *d, lua_Integer max, const char **kind)
{
    lua_State *L = d->L;
    d->p = skip_ws(d->p, d->end);
    if (d->p >= d->end || (*d->p != '{' && *d->p != '[')) {
        d->skip = 1;
        if (dec_value(d))
            return -1;
    } else {
        int object = *d->p == '{';
        *kind = object ? "object" : "array";
        unsigned char close = object ? '}' : ']';
        lua_Integer n = 0;
        if (dec_enter(d))
            return -1;
        lua_createtable(L, object ? 0 : 8, object ? 8 : 0);
        int t = lua_gettop(L);
        if (d->p < d->end && *d->p == close) {
            d->p++;
        } else {
            for (;;) {
                if (object) {
                    if (d->p >= d->end || *d->p != '"')
                        return dec_unexpected(d, d->p);
                    d->skip = 0;
                    if (dec_string(d)) /* the key, decoded */
                        return -1;
                    d->p = skip_ws(d->p, d->end);
                    if (d->p >= d->end || *d->p != ':')
                        return dec_unexpected(d, d->p);
                    d->p = skip_ws(d->p + 1, d->end);
                }
                const unsigned char *v0 = d->p;
                d->skip = 1;
                if (dec_value(d))
                    return -1;
                push_span(L, d->start, v0, d->p);
                n++;
                if (object)
                    lua_rawset(L, t); /* a duplicate key's last value wins, as in decode */
                else
                    lua_rawseti(L, t, (int)n);
                if (max > 0 && n >= max)
                    return 0;
                d->p = skip_ws(d->p, d->end);
                if (d->p < d->end && *d->p == ',') {
                    d->p = skip_ws(d->p + 1, d->end);
                    continue;
                }
                if (d->p < d->end && *d->p == close) {
                    d->p++;
                    break;
                }
                return dec_unexpected(d, d->p);
            }
        }
        d->depth--;
    }
    return dec_end(d);
}

/* json.members(s [, i [, j [, max]]]) -> spans, kind | nil, err
 * The members of the object or array at s[i..j] without decoding them: an
 * object gives { [key] = { first, last } }, an array { { first, last }, ... },
 * the byte range of each member's value in s as string.sub takes it, to be
 * decoded with json.decode(s, first, last) when needed; kind is "object" or
 * "array". Keys are decoded. The whole document is checked as decode checks
 * it (same errors), unless max stops the read after that many members. A
 * valid document that is neither an object nor an array gives nil and no
 * error. */
static int l_members(lua_State *L)
{
    char err[160];
    size_t first, last;
    lua_Integer max = luaL_optinteger(L, 4, 0);
    const char *s = document_args(L, "read", &first, &last);
    if (!s)
        return 2;
    lua_settop(L, 1);
    jstate_t tmp, *shared = lua_touserdata(L, UV_STATE), *st = state_acquire(shared, &tmp);
    dec_t d = {.L = L,
               .start = (const unsigned char *)s,
               .p = (const unsigned char *)s + first,
               .end = (const unsigned char *)s + last,
               .st = st,
               .array_mt = UV_ARRAY_MT,
               .number_mt = UV_NUMBER_MT,
               .err = err,
               .errlen = sizeof err};
    const char *kind = NULL;
    int rc = members_run(&d, max, &kind);
    trim_buf(&st->scratch);
    state_release(shared, st);
    if (rc) {
        lua_settop(L, 1);
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    if (!kind)
        return 0;
    lua_pushstring(L, kind);
    return 2;
}

/* ---- select: the named fields of a document, nothing else built ---------------------------
 *
 * Stream decoders read a few fields of every upstream event (a chat chunk's
 * delta text, its finish reason) and the rest of the event is noise; decoding
 * it whole made tables and strings for every key of every event. A selector,
 * compiled once from dotted paths ("choices.1.delta.content": digits are a
 * 1-based array index, anything else an object key), walks the document once:
 * values on a path's end are decoded as decode would (tables, json.null);
 * everything else is only checked, so a malformed document fails just as
 * decode fails it. A key met twice: the last one wins, as in decode. */

#define SELECT_NODES 48

typedef struct {
    const char *key; /* object key (into the selector's text), or NULL for an index */
    size_t klen;
    lua_Integer index; /* 1-based array index when key is NULL */
    int slot;          /* result position of a path's end, -1 for an inner node */
    int first, next;   /* first child, next sibling: node numbers, -1 for none */
} sel_node_t;

typedef struct {
    int nnodes, nslots;
    sel_node_t n[SELECT_NODES];
    char text[]; /* the paths, their dots turned into NULs */
} selector_t;

#define SELECTOR_MT "sluice.json.selector"

/* json.selector({ path, ... }) -> selector (raises on a bad path: it is code). */
static int l_selector(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    int np = (int)lua_objlen(L, 1);
    size_t total = 0;
    for (int i = 1; i <= np; i++) {
        lua_rawgeti(L, 1, i);
        size_t len;
        if (!lua_tolstring(L, -1, &len) || len == 0)
            return luaL_error(L, "json.selector: path %d is not a non-empty string", i);
        total += len + 1;
        lua_pop(L, 1);
    }
    selector_t *sel = lua_newuserdata(L, sizeof *sel + total);
    memset(sel, 0, sizeof *sel);
    sel->n[0] = (sel_node_t){.slot = -1, .first = -1, .next = -1};
    sel->nnodes = 1;
    sel->nslots = np;
    char *o = sel->text;
    for (int i = 1; i <= np; i++) {
        lua_rawgeti(L, 1, i);
        size_t len;
        const char *path = lua_tolstring(L, -1, &len);
        memcpy(o, path, len + 1);
        lua_pop(L, 1);
        int node = 0;
        for (char *seg = o; seg;) {
            char *dot = strchr(seg, '.');
            if (dot)
                *dot = '\0';
            size_t sl = strlen(seg);
            if (sl == 0 || sel->n[node].slot >= 0)
                return luaL_error(L, "json.selector: path %d (%s) is empty or runs through another",
                                  i, path);
            lua_Integer index = 0;
            if (strspn(seg, "0123456789") == sl && (index = strtoll(seg, NULL, 10)) < 1)
                return luaL_error(L, "json.selector: index 0 in path %d (indices start at 1)", i);
            int ch = sel->n[node].first;
            for (; ch >= 0; ch = sel->n[ch].next)
                if (index ? sel->n[ch].index == index
                          : (sel->n[ch].key && sel->n[ch].klen == sl && memcmp(sel->n[ch].key, seg, sl) == 0))
                    break;
            if (ch < 0) {
                if (sel->nnodes == SELECT_NODES)
                    return luaL_error(L, "json.selector: more than %d path segments", SELECT_NODES);
                ch = sel->nnodes++;
                sel->n[ch] = (sel_node_t){.key = index ? NULL : seg, .klen = sl, .index = index,
                                          .slot = -1, .first = -1, .next = sel->n[node].first};
                sel->n[node].first = ch;
            }
            node = ch;
            seg = dot ? dot + 1 : NULL;
        }
        if (sel->n[node].slot >= 0 || sel->n[node].first >= 0)
            return luaL_error(L, "json.selector: path %d (%s) repeats or contains another", i, path);
        sel->n[node].slot = i - 1;
        o += len + 1;
    }
    luaL_getmetatable(L, SELECTOR_MT);
    lua_setmetatable(L, -2);
    return 1;
}

static int sel_value(dec_t *d, const selector_t *s, int node, int base, unsigned char *seen);

/* Forgets what node's paths found so far (its key came again). */
static void sel_reset(lua_State *L, const selector_t *s, int node, int base)
{
    for (int ch = s->n[node].first; ch >= 0; ch = s->n[ch].next) {
        if (s->n[ch].slot >= 0) {
            lua_pushnil(L);
            lua_replace(L, base + s->n[ch].slot);
        } else {
            sel_reset(L, s, ch, base);
        }
    }
}

/* The member or element at d->p for child `ch` of a container, or skipped. */
static int sel_member(dec_t *d, const selector_t *s, int ch, int base, unsigned char *seen)
{
    if (ch >= 0)
        return sel_value(d, s, ch, base, seen);
    d->skip = 1;
    return dec_value(d);
}

/* Past a container's opening (d->p at it): 1 when a member follows, 0 when
 * the container is empty (d->p past its end), -1 on error. */
static int sel_open(dec_t *d, unsigned char close)
{
    if (dec_enter(d))
        return -1;
    if (d->p < d->end && *d->p == close) {
        d->p++;
        d->depth--;
        return 0;
    }
    return 1;
}

/* After a member: 1 when another follows (d->p at it), 0 when the
 * container ends (d->p past it), -1 on anything else. */
static int sel_next(dec_t *d, unsigned char close)
{
    d->p = skip_ws(d->p, d->end);
    if (d->p < d->end && *d->p == ',') {
        d->p = skip_ws(d->p + 1, d->end);
        return 1;
    }
    if (d->p < d->end && *d->p == close) {
        d->p++;
        d->depth--;
        return 0;
    }
    return dec_unexpected(d, d->p);
}

static int sel_object(dec_t *d, const selector_t *s, int node, int base, unsigned char *seen)
{
    int more = sel_open(d, '}');
    while (more > 0) {
        if (d->p >= d->end || *d->p != '"')
            return dec_unexpected(d, d->p);
        const unsigned char *k0 = d->p;
        d->skip = 1;
        if (dec_string(d))
            return -1;
        const char *key = (const char *)k0 + 1;
        size_t klen = (size_t)(d->p - k0) - 2;
        int pushed = 0;
        if (memchr(key, '\\', klen)) { /* an escaped key: compare its decoded text */
            const unsigned char *after = d->p;
            d->p = k0;
            d->skip = 0;
            if (dec_string(d))
                return -1;
            key = lua_tolstring(d->L, -1, &klen);
            d->p = after;
            pushed = 1;
        }
        int ch = s->n[node].first;
        for (; ch >= 0; ch = s->n[ch].next)
            if (s->n[ch].key && s->n[ch].klen == klen && memcmp(s->n[ch].key, key, klen) == 0)
                break;
        if (pushed)
            lua_pop(d->L, 1);
        d->p = skip_ws(d->p, d->end);
        if (d->p >= d->end || *d->p != ':')
            return dec_unexpected(d, d->p);
        d->p = skip_ws(d->p + 1, d->end);
        if (sel_member(d, s, ch, base, seen))
            return -1;
        more = sel_next(d, '}');
    }
    return more;
}

static int sel_array(dec_t *d, const selector_t *s, int node, int base, unsigned char *seen)
{
    int more = sel_open(d, ']');
    for (lua_Integer i = 1; more > 0; i++) {
        int ch = s->n[node].first;
        for (; ch >= 0; ch = s->n[ch].next)
            if (!s->n[ch].key && s->n[ch].index == i)
                break;
        if (sel_member(d, s, ch, base, seen))
            return -1;
        more = sel_next(d, ']');
    }
    return more;
}

static int sel_value(dec_t *d, const selector_t *s, int node, int base, unsigned char *seen)
{
    const sel_node_t *nd = &s->n[node];
    if (nd->slot >= 0) { /* a path's end: the value itself */
        d->skip = 0;
        if (dec_value(d))
            return -1;
        lua_replace(d->L, base + nd->slot);
        return 0;
    }
    if (seen[node])
        sel_reset(d->L, s, node, base);
    seen[node] = 1;
    if (d->p < d->end && *d->p == '{')
        return sel_object(d, s, node, base, seen);
    if (d->p < d->end && *d->p == '[')
        return sel_array(d, s, node, base, seen);
    d->skip = 1; /* not a container: no path goes on through it */
    return dec_value(d);
}

/* json.select(selector, s) -> true, v1, ..., vn | false, err
 * The values at the selector's paths, in its order (nil where a path is
 * absent). false when s is not JSON (err says why, as decode would) or is
 * JSON but neither an object nor an array (err is nil). */
static int l_select(lua_State *L)
{
    const selector_t *sel = luaL_checkudata(L, 1, SELECTOR_MT);
    size_t len;
    const char *str = luaL_checklstring(L, 2, &len);
    char err[160];
    lua_settop(L, 2);
    if (!lua_checkstack(L, sel->nslots + 8))
        return luaL_error(L, "json.select: Lua stack exhausted");
    lua_pushboolean(L, 1);
    for (int i = 0; i < sel->nslots; i++)
        lua_pushnil(L);
    jstate_t tmp, *shared = lua_touserdata(L, UV_STATE), *st = state_acquire(shared, &tmp);
    dec_t d = {.L = L,
               .start = (const unsigned char *)str,
               .p = (const unsigned char *)str,
               .end = (const unsigned char *)str + len,
               .st = st,
               .array_mt = UV_ARRAY_MT,
               .number_mt = UV_NUMBER_MT,
               .err = err,
               .errlen = sizeof err};
    unsigned char seen[SELECT_NODES] = {0};
    d.p = skip_ws(d.p, d.end);
    int container = d.p < d.end && (*d.p == '{' || *d.p == '[');
    int rc = sel_value(&d, sel, 0, 4, seen);
    if (rc == 0)
        rc = dec_end(&d);
    trim_buf(&st->scratch);
    state_release(shared, st);
    if (rc || !container) {
        lua_settop(L, 2);
        lua_pushboolean(L, 0);
        if (rc)
            lua_pushstring(L, err);
        else
            lua_pushnil(L);
        return 2;
    }
    return sel->nslots + 1;
}

static int l_encode(lua_State *L)
{
    char err[160];
    jstate_t tmp, *shared = lua_touserdata(L, UV_STATE), *st = state_acquire(shared, &tmp);
    lua_settop(L, 1);
    st->out.len = 0;
    int rc = encode_run(L, 1, &st->out, st, lua_topointer(L, UV_ARRAY_MT),
                        lua_topointer(L, UV_NUMBER_MT), err, sizeof err);
    if (rc) {
        lua_pushnil(L);
        lua_pushstring(L, err);
    } else {
        lua_pushlstring(L, st->out.base ? st->out.base : "", st->out.len);
    }
    trim_buf(&st->out);
    state_release(shared, st);
    return rc ? 2 : 1;
}

static int l_array(lua_State *L)
{
    if (lua_isnoneornil(L, 1)) {
        lua_settop(L, 0);
        lua_createtable(L, 0, 0);
    } else {
        luaL_checktype(L, 1, LUA_TTABLE);
        lua_settop(L, 1);
    }
    lua_pushvalue(L, UV_ARRAY_MT);
    lua_setmetatable(L, 1);
    return 1;
}

static int l_is_array(lua_State *L)
{
    int yes = lua_type(L, 1) == LUA_TTABLE && lua_getmetatable(L, 1) &&
              lua_rawequal(L, -1, UV_ARRAY_MT);
    lua_pushboolean(L, yes);
    return 1;
}

static int l_number(lua_State *L)
{
    char buf[32];
    size_t n = 0;
    const char *s = NULL;
    if (lua_type(L, 1) == LUA_TNUMBER) {
        n = fmt_number(lua_tonumber(L, 1), buf);
        s = n ? buf : NULL;
    } else if (lua_type(L, 1) == LUA_TSTRING) {
        s = lua_tolstring(L, 1, &n);
        if (!is_json_number(s, n))
            s = NULL;
    }
    if (!s) {
        lua_pushnil(L);
        lua_pushfstring(L, "json: not a JSON number: %s", luaL_typename(L, 1));
        if (lua_type(L, 1) == LUA_TSTRING) {
            lua_pop(L, 1);
            lua_pushfstring(L, "json: not a JSON number: \"%s\"", lua_tostring(L, 1));
        }
        return 2;
    }
    push_boxed(L, s, n, UV_NUMBER_MT);
    return 1;
}

int luaopen_sluice_json(lua_State *L)
{
    static const luaL_Reg fns[] = {{"decode", l_decode}, {"encode", l_encode}, {"members", l_members},
                                   {"array", l_array},   {"is_array", l_is_array},
                                   {"number", l_number}, {"selector", l_selector},
                                   {"select", l_select}, {NULL, NULL}};
    luaL_newmetatable(L, SELECTOR_MT);
    lua_pop(L, 1);
    lua_createtable(L, 0, 10);
    int mod = lua_gettop(L);
    push_shared(L);
    for (const luaL_Reg *f = fns; f->name; f++) {
        lua_pushvalue(L, mod + 1);
        lua_pushvalue(L, mod + 2);
        lua_pushvalue(L, mod + 3);
        lua_pushcclosure(L, f->func, 3);
        lua_setfield(L, mod, f->name);
    }
    lua_pushvalue(L, mod + 1);
    lua_setfield(L, mod, "array_mt");
    lua_pushvalue(L, mod + 2);
    lua_setfield(L, mod, "number_mt");
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, mod, "null");
    lua_settop(L, mod);
    return 1;
}
