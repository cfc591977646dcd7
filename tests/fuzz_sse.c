/*
 * fuzz_sse.c — libFuzzer harness for the SSE framer and encoder (core/sse.h).
 *
 * Input layout: two control bytes, then the stream. The control bytes pick
 * the size limit (or none) and seed the feed boundaries, so the fuzzer
 * explores where reads are cut as well as what the bytes are. Invariants
 * checked on every input (any violation aborts):
 *   - the stream fed whole, fed in seeded random pieces, and (when short)
 *     fed byte by byte gives the same events, the same result code and the
 *     same "unfinished event" state — read boundaries must never matter;
 *   - a dispatched event's name never holds CR or LF, its data never holds
 *     CR (line ends inside data are always "\n");
 *   - no event is larger than the limit allows;
 *   - every dispatched event, re-encoded with sl_sse_encode() and parsed
 *     again, is the same event.
 * ASan/UBSan (the harness is built with them) catch memory errors, including
 * a view kept past its feed: each piece is fed from its own heap copy.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "error.h"
#include "sse.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_sse: invariant failed: %s (line %d)\n", #cond, __LINE__);        \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

typedef struct {
    sl_buf_t out;
    size_t max;
    int n;
} run_t;

static int one_event_cb(void *ud, const sl_sse_event_t *ev)
{
    sl_sse_event_t *want = ud;
    CHECK(sl_str_eq(ev->event, want->event));
    CHECK(sl_str_eq(ev->data, want->data));
    want->retry++; /* counts the events the re-parse saw */
    return 0;
}

static void check_reencode(const sl_sse_event_t *ev)
{
    sl_buf_t wire;
    sl_buf_init(&wire, 0);
    CHECK(sl_sse_encode(&wire, ev->event, ev->data) == 0);
    sl_sse_event_t want = {ev->event, ev->data, SL_STR_NULL, 0};
    sl_sse_parser_t p;
    sl_sse_parser_init(&p, 0);
    CHECK(sl_sse_parser_feed(&p, wire.base, wire.len, one_event_cb, &want) == 0);
    CHECK(want.retry == 1);
    CHECK(!sl_sse_parser_has_partial(&p));
    sl_sse_parser_free(&p);
    sl_buf_free(&wire);
}

static int record_cb(void *ud, const sl_sse_event_t *ev)
{
    run_t *r = ud;
    r->n++;
    CHECK(!ev->event.len || (!memchr(ev->event.base, '\r', ev->event.len) &&
                             !memchr(ev->event.base, '\n', ev->event.len)));
    CHECK(!ev->data.len || !memchr(ev->data.base, '\r', ev->data.len));
    /* "data:x" is the shortest wire form of a data byte: 5 bytes of name and
     * colon per line, so data.len <= max is a loose but sound bound. */
    CHECK(!r->max || ev->data.len + ev->event.len <= r->max);
    sl_buf_printf(&r->out, "%zu:", ev->event.len);
    sl_buf_append_str(&r->out, ev->event);
    sl_buf_printf(&r->out, "|%zu:", ev->data.len);
    sl_buf_append_str(&r->out, ev->data);
    sl_buf_printf(&r->out, "|%zu:", ev->id.len);
    sl_buf_append_str(&r->out, ev->id);
    sl_buf_printf(&r->out, "|%ld\n", ev->retry);
    return 0;
}

/* Feeds s in pieces whose sizes come from a small PRNG (0 = one piece,
 * SIZE_MAX = byte by byte). Returns the result code; events in r->out. */
static int run(const uint8_t *s, size_t len, size_t max, uint32_t seed, run_t *r, int *partial)
{
    sl_sse_parser_t p;
    sl_sse_parser_init(&p, max);
    sl_buf_init(&r->out, 0);
    r->max = max;
    r->n = 0;
    int rc = 0;
    size_t at = 0;
    while (at < len && rc == 0) {
        size_t n = len - at;
        if (seed == 1) {
            n = 1;
        } else if (seed) {
            seed = seed * 1103515245u + 12345u;
            size_t step = (seed >> 16) % 17; /* 0..16: empty feeds happen too */
            n = step < n ? step : n;
        }
        char *piece = malloc(n ? n : 1);
        memcpy(piece, s + at, n);
        rc = sl_sse_parser_feed(&p, piece, n, record_cb, r);
        free(piece);
        at += n;
    }
    *partial = sl_sse_parser_has_partial(&p);
    sl_sse_parser_free(&p);
    return rc;
}

static int reencode_cb(void *ud, const sl_sse_event_t *ev)
{
    check_reencode(ev);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t max = data[0] < 64 ? 0 : (size_t)data[0] * 2; /* 0 = unbounded */
    uint32_t seed = 2u + data[1];
    const uint8_t *s = data + 2;
    size_t len = size - 2;

    run_t whole, split, bytes;
    int pw, ps, pb;
    int rw = run(s, len, max, 0, &whole, &pw);
    int rs = run(s, len, max, seed, &split, &ps);
    CHECK(rw == 0 || rw == SL_ELIMIT);
    CHECK(rw != SL_ELIMIT || max);
    if (getenv("FUZZ_SSE_DEBUG"))
        fprintf(stderr, "rc %d/%d events %d/%d partial %d/%d\n", rw, rs, whole.n, split.n, pw, ps);
    CHECK(rw == rs && whole.n == split.n && pw == ps);
    CHECK(sl_str_eq(sl_str(whole.out.base, whole.out.len), sl_str(split.out.base, split.out.len)));
    if (len <= 512) {
        int rb = run(s, len, max, 1, &bytes, &pb);
        CHECK(rw == rb && whole.n == bytes.n && pw == pb);
        CHECK(sl_str_eq(sl_str(whole.out.base, whole.out.len),
                        sl_str(bytes.out.base, bytes.out.len)));
        sl_buf_free(&bytes.out);
    }

    sl_sse_parser_t p;
    sl_sse_parser_init(&p, max);
    sl_sse_parser_feed(&p, (const char *)s, len, reencode_cb, NULL);
    sl_sse_parser_free(&p);

    sl_buf_free(&whole.out);
    sl_buf_free(&split.out);
    return 0;
}
