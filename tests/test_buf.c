/*
 * test_buf.c — byte views and growable buffers (core/buf.h).
 *
 * Everything the core buffers goes through sl_buf_t, and its `limit` is how
 * sluice bounds request heads, bodies and upstream answers; so the cases
 * check that growth keeps every byte, that a refused append (SL_ELIMIT)
 * leaves the buffer exactly as it was, and that sl_buf_append_json_str —
 * used for every string sluice writes into a JSON log line, error body or
 * history record — produces valid JSON for any input bytes. Validity is
 * judged by a small strict validator written here, not by the code under
 * test.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "error.h"
#include "test_helpers.h"

/* ---- an independent strict checker for the inside of a JSON string ---- */

/* Length of the well-formed UTF-8 sequence at s (RFC 3629 table), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    if (s[0] < 0x80)
        return 1;
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF; /* bounds of the second byte */
    if (s[0] >= 0xC2 && s[0] <= 0xDF)
        len = 2;
    else if (s[0] == 0xE0)
        len = 3, lo = 0xA0;
    else if (s[0] == 0xED)
        len = 3, hi = 0x9F; /* no surrogates */
    else if (s[0] >= 0xE1 && s[0] <= 0xEF)
        len = 3;
    else if (s[0] == 0xF0)
        len = 4, lo = 0x90;
    else if (s[0] == 0xF4)
        len = 4, hi = 0x8F;
    else if (s[0] >= 0xF1 && s[0] <= 0xF3)
        len = 4;
    else
        return 0;
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    return len;
}

static int is_hex(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* 1 if p[0..n) is a valid JSON string body (what goes between the quotes). */
static int json_string_body_valid(const char *p, size_t n)
{
    const unsigned char *s = (const unsigned char *)p;
    for (size_t i = 0; i < n;) {
        if (s[i] < 0x20 || s[i] == '"')
            return 0;
        if (s[i] == '\\') {
            if (i + 1 >= n)
                return 0;
            unsigned char e = s[i + 1];
            if (e == 'u') {
                if (i + 6 > n || !is_hex(s[i + 2]) || !is_hex(s[i + 3]) || !is_hex(s[i + 4]) ||
                    !is_hex(s[i + 5]))
                    return 0;
                i += 6;
            } else if (strchr("\"\\/bfnrt", e) && e) {
                i += 2;
            } else {
                return 0;
            }
            continue;
        }
        size_t l = utf8_len(s + i, n - i);
        if (!l)
            return 0;
        i += l;
    }
    return 1;
}

/* Escapes `in` into a fresh buffer and checks the result is valid JSON. */
static int escape(const char *in, size_t n, sl_buf_t *out)
{
    sl_buf_init(out, 0);
    int rc = sl_buf_append_json_str(out, in, n);
    CHECK_EQ_INT(rc, 0);
    CHECK(json_string_body_valid(out->base ? out->base : "", out->len));
    return rc;
}

/* ---- growth, limits, consume, printf ---- */

static void test_growth_keeps_every_byte(void)
{
    sl_buf_t b;
    sl_buf_init(&b, 0);
    for (int i = 0; i < 100000; i++)
        CHECK_EQ_INT(sl_buf_append_byte(&b, (char)('a' + i % 26)), 0);
    CHECK_EQ_INT(b.len, 100000);
    CHECK(b.cap > b.len);
    int ok = 1;
    for (int i = 0; i < 100000; i++)
        ok &= b.base[i] == (char)('a' + i % 26);
    CHECK(ok);
    /* A big append after many small ones. */
    char big[70000];
    memset(big, 'z', sizeof big);
    CHECK_EQ_INT(sl_buf_append(&b, big, sizeof big), 0);
    CHECK_EQ_INT(b.len, 170000);
    CHECK(b.base[99999] == (char)('a' + 99999 % 26) && b.base[169999] == 'z');
    sl_buf_free(&b);
    CHECK(b.base == NULL && b.len == 0);
}

static void test_reset_keeps_memory(void)
{
    sl_buf_t b;
    sl_buf_init(&b, 0);
    sl_buf_append_c(&b, "hello world");
    size_t cap = b.cap;
    sl_buf_reset(&b);
    CHECK_EQ_INT(b.len, 0);
    CHECK_EQ_INT(b.cap, cap);
    sl_buf_append_c(&b, "again");
    CHECK_EQ_MEM(b.base, b.len, "again");
    sl_buf_free(&b);
}

static void test_limit_refuses_and_leaves_buffer_unchanged(void)
{
    sl_buf_t b;
    sl_buf_init(&b, 10);
    CHECK_EQ_INT(sl_buf_append_c(&b, "12345678"), 0);
    CHECK_EQ_INT(sl_buf_append_c(&b, "abc"), SL_ELIMIT);
    CHECK_EQ_MEM(b.base, b.len, "12345678");
    CHECK_EQ_INT(sl_buf_append_byte(&b, '9'), 0);
    CHECK_EQ_INT(sl_buf_append_byte(&b, '0'), 0); /* exactly at the limit is allowed */
    CHECK_EQ_INT(sl_buf_append_byte(&b, 'x'), SL_ELIMIT);
    CHECK_EQ_INT(sl_buf_printf(&b, "%d", 7), SL_ELIMIT);
    CHECK_EQ_MEM(b.base, b.len, "1234567890");
    /* consume makes room again */
    sl_buf_consume(&b, 4);
    CHECK_EQ_INT(sl_buf_append_c(&b, "abcd"), 0);
    CHECK_EQ_MEM(b.base, b.len, "567890abcd");
    sl_buf_free(&b);
}

static void test_limit_long_printf(void)
{
    /* Longer than printf's small stack buffer: the second path must honour
     * the limit too. */
    sl_buf_t b;
    sl_buf_init(&b, 300);
    char s[400];
    memset(s, 'q', sizeof s - 1);
    s[sizeof s - 1] = '\0';
    CHECK_EQ_INT(sl_buf_append_c(&b, "head:"), 0);
    CHECK_EQ_INT(sl_buf_printf(&b, "%s", s), SL_ELIMIT);
    CHECK_EQ_MEM(b.base, b.len, "head:");
    sl_buf_free(&b);
}

static void test_limit_json_str_fits_exactly(void)
{
    /* An escaped string that fits in the room left must be accepted, even
     * when the room is smaller than the input plus some slack. */
    sl_buf_t b;
    sl_buf_init(&b, 8);
    CHECK_EQ_INT(sl_buf_append_c(&b, "{\""), 0);
    CHECK_EQ_INT(sl_buf_append_json_str(&b, "abc", 3), 0);
    CHECK_EQ_MEM(b.base, b.len, "{\"abc");
    sl_buf_free(&b);
}

static void test_limit_json_str_unchanged_on_overflow(void)
{
    /* Ten control bytes grow to sixty escaped bytes: the append fails and
     * must not leave half an escape sequence behind (a caller that then
     * closes the JSON document would write invalid JSON). */
    sl_buf_t b;
    sl_buf_init(&b, 30);
    CHECK_EQ_INT(sl_buf_append_c(&b, "x"), 0);
    const char ctl[] = "\x01\x02\x03\x04\x05\x06\x07\x08\x0b\x0c";
    CHECK_EQ_INT(sl_buf_append_json_str(&b, ctl, sizeof ctl - 1), SL_ELIMIT);
    CHECK_EQ_MEM(b.base, b.len, "x");
    sl_buf_free(&b);
}

static void test_consume(void)
{
    sl_buf_t b;
    sl_buf_init(&b, 0);
    sl_buf_append_c(&b, "abcdef");
    sl_buf_consume(&b, 0);
    CHECK_EQ_MEM(b.base, b.len, "abcdef");
    sl_buf_consume(&b, 2);
    CHECK_EQ_MEM(b.base, b.len, "cdef");
    sl_buf_consume(&b, 4);
    CHECK_EQ_INT(b.len, 0);
    sl_buf_append_c(&b, "xy");
    sl_buf_consume(&b, 10); /* more than there is: empties */
    CHECK_EQ_INT(b.len, 0);
    sl_buf_append_c(&b, "z");
    CHECK_EQ_MEM(b.base, b.len, "z");
    sl_buf_free(&b);
}

static void test_printf_short_and_long(void)
{
    sl_buf_t b;
    sl_buf_init(&b, 0);
    CHECK_EQ_INT(sl_buf_printf(&b, "%d-%s", 42, "x"), 0);
    CHECK_EQ_MEM(b.base, b.len, "42-x");
    /* Around and far past the 256-byte stack buffer. */
    for (size_t n = 250; n < 262; n++) {
        char *s = malloc(n + 1);
        memset(s, 'k', n);
        s[n] = '\0';
        sl_buf_reset(&b);
        CHECK_EQ_INT(sl_buf_printf(&b, "<%s>", s), 0);
        CHECK_EQ_INT(b.len, n + 2);
        CHECK(b.base[0] == '<' && b.base[n + 1] == '>' && memcmp(b.base + 1, s, n) == 0);
        free(s);
    }
    size_t n = 100000;
    char *s = malloc(n + 1);
    for (size_t i = 0; i < n; i++)
        s[i] = (char)('0' + i % 10);
    s[n] = '\0';
    sl_buf_reset(&b);
    sl_buf_append_c(&b, "pre:");
    CHECK_EQ_INT(sl_buf_printf(&b, "%s|%zu", s, n), 0);
    CHECK_EQ_INT(b.len, 4 + n + 1 + 6);
    CHECK(memcmp(b.base + 4, s, n) == 0);
    CHECK_EQ_MEM(b.base + 4 + n, 7, "|100000");
    free(s);
    sl_buf_free(&b);
}

static void test_cstr(void)
{
    sl_buf_t b;
    sl_buf_init(&b, 0);
    const char *s = sl_buf_cstr(&b);
    CHECK(s && s[0] == '\0');
    CHECK_EQ_INT(b.len, 0);
    sl_buf_append_c(&b, "abc");
    s = sl_buf_cstr(&b);
    CHECK(s && strcmp(s, "abc") == 0);
    CHECK_EQ_INT(b.len, 3);
    sl_buf_free(&b);
    /* A buffer full to its limit still gets its terminator. */
    sl_buf_init(&b, 3);
    sl_buf_append_c(&b, "xyz");
    s = sl_buf_cstr(&b);
    CHECK(s && strcmp(s, "xyz") == 0);
    sl_buf_free(&b);
}

/* ---- JSON string escaping ---- */

static void test_json_escapes_specials(void)
{
    sl_buf_t b;
    const char in[] = "say \"hi\" \\ back\nline\ttab\rcr";
    escape(in, sizeof in - 1, &b);
    CHECK_EQ_MEM(b.base, b.len, "say \\\"hi\\\" \\\\ back\\nline\\ttab\\rcr");
    sl_buf_free(&b);
}

static void test_json_escapes_control_bytes(void)
{
    sl_buf_t b;
    const char in[] = "a\x01"
                      "b\x1f"
                      "c\x00"
                      "d\x7f";
    escape(in, sizeof in - 1, &b);
    /* DEL (0x7f) is legal in JSON strings and stays as it is. */
    CHECK_EQ_MEM(b.base, b.len, "a\\u0001b\\u001fc\\u0000d\x7f");
    sl_buf_free(&b);
}

static void test_json_keeps_valid_multibyte(void)
{
    sl_buf_t b;
    const char in[] = "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf";
    escape(in, sizeof in - 1, &b);
    CHECK_EQ_MEM(b.base, b.len, in);
    sl_buf_free(&b);
}

static void test_json_replaces_invalid_utf8(void)
{
    static const struct {
        const char *in;
        size_t n;
        const char *want;
    } rows[] = {
        {"a\x80"
         "b",
         3, "a\\ufffdb"},                                        /* lone continuation */
        {"\xc0\xaf", 2, "\\ufffd\\ufffd"},                       /* overlong '/' */
        {"\xed\xa0\x80", 3, "\\ufffd\\ufffd\\ufffd"},            /* UTF-16 surrogate */
        {"\xf4\x90\x80\x80", 4, "\\ufffd\\ufffd\\ufffd\\ufffd"}, /* > U+10FFFF */
        {"x\xe2\x82", 3, "x\\ufffd\\ufffd"},                     /* cut at the end */
        {"\xff", 1, "\\ufffd"},
        {"\xe2\x28\xa1", 3, "\\ufffd(\\ufffd"}, /* bad second byte */
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        sl_buf_t b;
        escape(rows[i].in, rows[i].n, &b);
        CHECK_EQ_MEM(b.base, b.len, rows[i].want);
        sl_buf_free(&b);
    }
}

static void test_json_appends_after_existing(void)
{
    sl_buf_t b;
    sl_buf_init(&b, 0);
    sl_buf_append_c(&b, "{\"k\":\"");
    sl_buf_append_json_str(&b, "v\"", 2);
    sl_buf_append_c(&b, "\"}");
    CHECK_EQ_MEM(b.base, b.len, "{\"k\":\"v\\\"\"}");
    sl_buf_free(&b);
}

static void test_json_random_bytes_always_valid(void)
{
    /* Random byte strings, biased towards the interesting bytes. */
    static const unsigned char pool[] = {'a',  '"',  '\\', '\n', 0x00, 0x1f, 0x7f, 0x80,
                                         0xbf, 0xc2, 0xc0, 0xe0, 0xed, 0xef, 0xf0, 0xf4,
                                         0xf5, 0xff, 0xa0, 0x9f, 0x90, 0x8f};
    uint32_t seed = 12345;
    int bad = 0;
    for (int iter = 0; iter < 20000 && !bad; iter++) {
        unsigned char in[24];
        size_t n = (size_t)(iter % 24);
        for (size_t i = 0; i < n; i++) {
            seed = seed * 1103515245u + 12345u;
            in[i] =
                (seed >> 16) & 1 ? pool[(seed >> 17) % sizeof pool] : (unsigned char)(seed >> 8);
        }
        sl_buf_t b;
        sl_buf_init(&b, 0);
        if (sl_buf_append_json_str(&b, (const char *)in, n) != 0 ||
            !json_string_body_valid(b.base ? b.base : "", b.len)) {
            bad = 1;
            fprintf(stderr, "  invalid JSON for input of %zu bytes (iteration %d)\n", n, iter);
        }
        sl_buf_free(&b);
    }
    CHECK(!bad);
}

static void test_validator_rejects_bad_output(void)
{
    /* The validator itself must be able to fail, or the tests above prove
     * nothing. */
    CHECK(!json_string_body_valid("a\"b", 3));
    CHECK(!json_string_body_valid("a\nb", 3));
    CHECK(!json_string_body_valid("\\x", 2));
    CHECK(!json_string_body_valid("\\u12", 4));
    CHECK(!json_string_body_valid("\xed\xa0\x80", 3));
    CHECK(!json_string_body_valid("\xc3", 1));
    CHECK(json_string_body_valid("\\u00e9\xc3\xa9", 8));
}

/* ---- views ---- */

static void test_str_helpers(void)
{
    CHECK(sl_str_eq(SL_STR("abc"), sl_str_c("abc")));
    CHECK(!sl_str_eq(SL_STR("abc"), SL_STR("abd")));
    CHECK(!sl_str_eq(SL_STR("abc"), SL_STR("ab")));
    CHECK(sl_str_eq(SL_STR_NULL, SL_STR("")));
    CHECK(sl_str_ieq(SL_STR("Content-Type"), SL_STR("content-type")));
    CHECK(!sl_str_ieq(SL_STR("Content-Type"), SL_STR("content-typ")));
    CHECK(sl_str_ieq_c(SL_STR("X-API-KEY"), "x-api-key"));
    CHECK(!sl_str_ieq_c(SL_STR("x-api-key2"), "x-api-key"));
    CHECK(sl_str_has_prefix(SL_STR("/_sluice/health"), "/_sluice/"));
    CHECK(!sl_str_has_prefix(SL_STR("/_sluice"), "/_sluice/"));
    CHECK(sl_str_has_prefix(SL_STR("abc"), ""));
    sl_str_t v = sl_str_c(NULL);
    CHECK(v.base == NULL && v.len == 0);
    v = sl_str("hello", 4);
    CHECK_EQ_MEM(v.base, v.len, "hell");
}

int main(void)
{
    RUN(test_growth_keeps_every_byte);
    RUN(test_reset_keeps_memory);
    RUN(test_limit_refuses_and_leaves_buffer_unchanged);
    RUN(test_limit_long_printf);
    RUN(test_limit_json_str_fits_exactly);
    RUN(test_limit_json_str_unchanged_on_overflow);
    RUN(test_consume);
    RUN(test_printf_short_and_long);
    RUN(test_cstr);
    RUN(test_json_escapes_specials);
    RUN(test_json_escapes_control_bytes);
    RUN(test_json_keeps_valid_multibyte);
    RUN(test_json_replaces_invalid_utf8);
    RUN(test_json_appends_after_existing);
    RUN(test_json_random_bytes_always_valid);
    RUN(test_validator_rejects_bad_output);
    RUN(test_str_helpers);
    return TEST_SUMMARY();
}
