/*
 * test_sse.c — the SSE framer, encoder and terminal markers (core/sse.h).
 *
 * The framer is checked three ways: against events written out by hand from
 * the WHATWG rules (tests/fixtures/sse/edge.sse and inline cases), against a
 * deliberately naive reference parser below (whole input, byte at a time,
 * no cleverness) on real-shaped vendor captures, and against itself: the
 * same bytes fed whole, byte by byte, split at every offset (and at every
 * pair of offsets for the short edge file) must give the same events —
 * which is what an upstream's arbitrary read boundaries demand.
 */
#define _GNU_SOURCE /* memmem */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "error.h"
#include "sse.h"

#include "test_helpers.h"

#define FIXTURES "tests/fixtures/sse/"

/* ---- helpers ------------------------------------------------------------ */

static sl_buf_t read_fixture(const char *name)
{
    char path[256];
    sl_buf_t b;
    sl_buf_init(&b, 0);
    snprintf(path, sizeof path, FIXTURES "%s", name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s (run from the source root)\n", path);
        exit(2);
    }
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        sl_buf_append(&b, chunk, n);
    fclose(f);
    return b;
}

/* Events serialised into one canonical string, so lists compare with memcmp. */
static void serialise(sl_buf_t *out, sl_str_t event, sl_str_t data, sl_str_t id, long retry)
{
    sl_buf_printf(out, "event[%zu]=", event.len);
    sl_buf_append_str(out, event);
    sl_buf_printf(out, " data[%zu]=", data.len);
    sl_buf_append_str(out, data);
    sl_buf_printf(out, " id[%zu]=", id.len);
    sl_buf_append_str(out, id);
    sl_buf_printf(out, " retry=%ld\n", retry);
}

typedef struct {
    sl_buf_t out;
    int n;
    int stop_at;                   /* return 7 from the callback on this event (1-based), 0 never */
    const char *feed_lo, *feed_hi; /* the current feed, to see zero-copy */
    int n_views;                   /* events whose data pointed into the feed */
} collect_t;

static int collect_cb(void *ud, const sl_sse_event_t *ev)
{
    collect_t *c = ud;
    c->n++;
    serialise(&c->out, ev->event, ev->data, ev->id, ev->retry);
    if (ev->data.len && ev->data.base >= c->feed_lo && ev->data.base < c->feed_hi)
        c->n_views++;
    return c->stop_at && c->n == c->stop_at ? 7 : 0;
}

typedef struct {
    sl_buf_t out;
    int n, rc, partial, n_views;
} run_t;

/* Feeds s[0..len) cut at the ascending offsets cuts[0..ncuts). */
static run_t run_cuts(const char *s, size_t len, const size_t *cuts, size_t ncuts, size_t max)
{
    sl_sse_parser_t p;
    collect_t c = {.n = 0};
    sl_buf_init(&c.out, 0);
    sl_sse_parser_init(&p, max);
    int rc = 0;
    size_t at = 0;
    for (size_t i = 0; i <= ncuts && rc == 0; i++) {
        size_t to = i < ncuts ? cuts[i] : len;
        /* Copy each feed so a view kept past its feed would read garbage
         * under ASan instead of silently still-valid bytes. */
        char *piece = malloc(to - at + 1);
        memcpy(piece, s + at, to - at);
        c.feed_lo = piece;
        c.feed_hi = piece + (to - at);
        rc = sl_sse_parser_feed(&p, piece, to - at, collect_cb, &c);
        free(piece);
        at = to;
    }
    run_t r = {c.out, c.n, rc, sl_sse_parser_has_partial(&p), c.n_views};
    sl_sse_parser_free(&p);
    return r;
}

static run_t run_whole(const char *s, size_t len, size_t max)
{
    return run_cuts(s, len, NULL, 0, max);
}

static run_t run_bytewise(const char *s, size_t len, size_t max)
{
    size_t *cuts = malloc((len + 1) * sizeof *cuts);
    for (size_t i = 0; i < len; i++)
        cuts[i] = i;
    run_t r = run_cuts(s, len, cuts, len, max);
    free(cuts);
    return r;
}

static int same(const run_t *a, const run_t *b)
{
    return a->rc == b->rc && a->n == b->n && a->partial == b->partial && a->out.len == b->out.len &&
           memcmp(a->out.base, b->out.base, a->out.len) == 0;
}

static int out_is(const run_t *r, const sl_buf_t *expect)
{
    return r->out.len == expect->len && memcmp(r->out.base, expect->base, expect->len) == 0;
}

/* ---- the reference: the spec's algorithm, written as plainly as possible -- */

static sl_buf_t reference_parse(const char *s, size_t len, int *n_events)
{
    sl_buf_t out, data, event, id;
    sl_buf_init(&out, 0);
    sl_buf_init(&data, 0);
    sl_buf_init(&event, 0);
    sl_buf_init(&id, 0);
    long retry = -1;
    int has_data = 0;
    *n_events = 0;
    size_t i = 0;
    if (len >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0)
        i = 3;
    while (i < len) {
        size_t j = i;
        while (j < len && s[j] != '\r' && s[j] != '\n')
            j++;
        if (j == len)
            break; /* unterminated last line: never processed */
        const char *l = s + i;
        size_t ll = j - i;
        i = j + 1;
        if (s[j] == '\r' && i < len && s[i] == '\n')
            i++;
        if (ll == 0) {
            if (has_data) {
                serialise(&out, sl_str(event.base, event.len),
                          sl_str(data.base, data.len ? data.len - 1 : 0), sl_str(id.base, id.len),
                          retry);
                (*n_events)++;
            }
            has_data = 0;
            sl_buf_reset(&data);
            sl_buf_reset(&event);
            continue;
        }
        if (l[0] == ':')
            continue;
        size_t k = 0;
        while (k < ll && l[k] != ':')
            k++;
        sl_str_t name = sl_str(l, k);
        sl_str_t val = sl_str(l + ll, 0);
        if (k < ll) {
            size_t v = k + 1;
            if (v < ll && l[v] == ' ')
                v++;
            val = sl_str(l + v, ll - v);
        }
        if (sl_str_eq(name, SL_STR("data"))) {
            sl_buf_append_str(&data, val);
            sl_buf_append_byte(&data, '\n');
            has_data = 1;
        } else if (sl_str_eq(name, SL_STR("event"))) {
            sl_buf_reset(&event);
            sl_buf_append_str(&event, val);
        } else if (sl_str_eq(name, SL_STR("id"))) {
            if (!memchr(val.base, 0, val.len)) {
                sl_buf_reset(&id);
                sl_buf_append_str(&id, val);
            }
        } else if (sl_str_eq(name, SL_STR("retry"))) {
            int digits = val.len > 0;
            for (size_t q = 0; q < val.len; q++)
                digits &= val.base[q] >= '0' && val.base[q] <= '9';
            if (digits) {
                char tmp[64];
                snprintf(tmp, sizeof tmp, "%.*s", (int)(val.len < 63 ? val.len : 63), val.base);
                retry = val.len > 18 ? LONG_MAX : strtol(tmp, NULL, 10);
            }
        }
    }
    sl_buf_free(&data);
    sl_buf_free(&event);
    sl_buf_free(&id);
    return out;
}

static void free_run(run_t *r)
{
    sl_buf_free(&r->out);
}

/* Whole == reference == byte by byte == every single split. */
static void check_fixture_splits(const char *name, int expect_events)
{
    sl_buf_t in = read_fixture(name);
    int ref_n;
    sl_buf_t ref = reference_parse(in.base, in.len, &ref_n);
    run_t whole = run_whole(in.base, in.len, 1 << 20);
    CHECK(whole.rc == 0);
    CHECK(whole.n == expect_events);
    CHECK(ref_n == expect_events);
    CHECK(out_is(&whole, &ref));
    run_t bytes = run_bytewise(in.base, in.len, 1 << 20);
    CHECK(same(&whole, &bytes));
    free_run(&bytes);
    int split_ok = 1;
    for (size_t cut = 1; cut < in.len; cut++) {
        run_t r = run_cuts(in.base, in.len, &cut, 1, 1 << 20);
        if (!same(&whole, &r)) {
            fprintf(stderr, "  %s: split at %zu differs\n", name, cut);
            split_ok = 0;
        }
        free_run(&r);
    }
    CHECK(split_ok);
    free_run(&whole);
    sl_buf_free(&ref);
    sl_buf_free(&in);
}

/* ---- captures ----------------------------------------------------------- */

typedef struct {
    sl_buf_t names; /* event names, ' '-separated */
    sl_buf_t data_last;
    int n;
    const sl_sse_marker_t *marks;
    size_t n_marks;
    int first_mark; /* 1-based index of the first event a marker matched */
    int n_mark;
    int type_mismatch; /* events whose data lacks "type":"<event name>" */
} facts_t;

static int facts_cb(void *ud, const sl_sse_event_t *ev)
{
    facts_t *f = ud;
    f->n++;
    if (f->n > 1)
        sl_buf_append_byte(&f->names, ' ');
    sl_buf_append_str(&f->names, ev->event);
    sl_buf_reset(&f->data_last);
    sl_buf_append_str(&f->data_last, ev->data);
    if (sl_sse_marker_match(f->marks, f->n_marks, ev)) {
        f->n_mark++;
        if (!f->first_mark)
            f->first_mark = f->n;
    }
    if (ev->event.len) {
        sl_buf_t want;
        sl_buf_init(&want, 0);
        sl_buf_printf(&want, "\"type\":\"%.*s\"", (int)ev->event.len, ev->event.base);
        if (!memmem(ev->data.base, ev->data.len, want.base, want.len))
            f->type_mismatch++;
        sl_buf_free(&want);
    }
    if (memchr(ev->data.base, '\r', ev->data.len) || memchr(ev->data.base, '\n', ev->data.len))
        f->type_mismatch++; /* one-line JSON records never carry a line end */
    return 0;
}

static facts_t facts_of(const char *name, const sl_sse_marker_t *marks, size_t n_marks)
{
    facts_t f = {.marks = marks, .n_marks = n_marks};
    sl_buf_init(&f.names, 0);
    sl_buf_init(&f.data_last, 0);
    sl_buf_t in = read_fixture(name);
    sl_sse_parser_t p;
    sl_sse_parser_init(&p, 1 << 20);
    CHECK(sl_sse_parser_feed(&p, in.base, in.len, facts_cb, &f) == 0);
    CHECK(!sl_sse_parser_has_partial(&p));
    sl_sse_parser_free(&p);
    sl_buf_free(&in);
    return f;
}

static void free_facts(facts_t *f)
{
    sl_buf_free(&f->names);
    sl_buf_free(&f->data_last);
}

static int buf_eq_c(const sl_buf_t *b, const char *s)
{
    return sl_str_eq(sl_str(b->base, b->len), sl_str_c(s));
}

static void test_anthropic_capture(void)
{
    check_fixture_splits("anthropic.sse", 18);
    const sl_sse_marker_t stop[] = {{SL_SSE_MARK_EVENT, SL_STR("message_stop")}};
    facts_t f = facts_of("anthropic.sse", stop, 1);
    CHECK(buf_eq_c(&f.names, "message_start ping content_block_start content_block_delta "
                             "content_block_delta content_block_stop content_block_start "
                             "content_block_delta content_block_delta content_block_stop ping "
                             "content_block_start content_block_delta content_block_delta "
                             "content_block_delta content_block_stop message_delta message_stop"));
    CHECK(f.type_mismatch == 0);
    CHECK(f.n_mark == 1 && f.first_mark == 18);
    free_facts(&f);
}

static void test_line_end_variants(void)
{
    /* The same stream with CRLF and with bare CR must frame identically. */
    sl_buf_t lf = read_fixture("anthropic.sse");
    run_t base = run_whole(lf.base, lf.len, 1 << 20);
    const char *variants[] = {"anthropic_crlf.sse", "anthropic_cr.sse"};
    for (size_t i = 0; i < 2; i++) {
        check_fixture_splits(variants[i], 18);
        sl_buf_t in = read_fixture(variants[i]);
        run_t r = run_whole(in.base, in.len, 1 << 20);
        CHECK(same(&base, &r));
        run_t b = run_bytewise(in.base, in.len, 1 << 20);
        CHECK(same(&base, &b));
        free_run(&r);
        free_run(&b);
        sl_buf_free(&in);
    }
    free_run(&base);
    sl_buf_free(&lf);
}

static void test_openai_chat_capture(void)
{
    check_fixture_splits("openai_chat.sse", 11);
    const sl_sse_marker_t done[] = {{SL_SSE_MARK_DATA, SL_STR("[DONE]")}};
    facts_t f = facts_of("openai_chat.sse", done, 1);
    CHECK(f.n == 11);
    CHECK(buf_eq_c(&f.names, "          ")); /* 11 unnamed events */
    CHECK(buf_eq_c(&f.data_last, "[DONE]"));
    CHECK(f.n_mark == 1 && f.first_mark == 11);
    free_facts(&f);
}

static void test_responses_capture(void)
{
    check_fixture_splits("responses.sse", 15);
    const sl_sse_marker_t term[] = {{SL_SSE_MARK_EVENT, SL_STR("response.completed")},
                                    {SL_SSE_MARK_EVENT, SL_STR("response.failed")},
                                    {SL_SSE_MARK_EVENT, SL_STR("response.incomplete")}};
    facts_t f = facts_of("responses.sse", term, 3);
    CHECK(f.type_mismatch == 0);
    CHECK(f.n_mark == 1 && f.first_mark == 15);
    CHECK(sl_str_has_prefix(sl_str(f.names.base, f.names.len), "response.created "));
    free_facts(&f);
}

static void test_gemini_capture(void)
{
    check_fixture_splits("gemini.sse", 5);
    const sl_sse_marker_t fin[] = {{SL_SSE_MARK_DATA_HAS, SL_STR("\"finishReason\":")}};
    facts_t f = facts_of("gemini.sse", fin, 1);
    CHECK(f.type_mismatch == 0); /* CRLF never leaks into data */
    CHECK(f.n_mark == 1 && f.first_mark == 5);
    free_facts(&f);
}

/* ---- the spec's corner cases ---------------------------------------------- */

static void test_edge_fixture(void)
{
    sl_buf_t in = read_fixture("edge.sse");
    sl_buf_t expect;
    sl_buf_init(&expect, 0);
    /* Written out by hand from edge.sse and the WHATWG rules. */
    serialise(&expect, SL_STR("first"), SL_STR("line one\nline two\n"), SL_STR("7"), 3000);
    serialise(&expect, SL_STR(""), SL_STR(" two spaces"), SL_STR("7"), 3000);
    serialise(&expect, SL_STR(""), SL_STR("{\"a\":\"\xC3\xA9\"}"), SL_STR(""), 3000);
    serialise(&expect, SL_STR("last"), SL_STR("x"), SL_STR(""), 3000);

    run_t whole = run_whole(in.base, in.len, 4096);
    CHECK(whole.rc == 0 && whole.n == 4);
    CHECK(out_is(&whole, &expect));
    CHECK(whole.partial); /* the trailing "data: truncated" record */
    int ref_n;
    sl_buf_t ref = reference_parse(in.base, in.len, &ref_n);
    CHECK(ref_n == 4 && out_is(&whole, &ref));
    sl_buf_free(&ref);

    int pairs_ok = 1;
    for (size_t a = 1; a < in.len && pairs_ok; a++) {
        for (size_t b = a; b < in.len && pairs_ok; b++) {
            size_t cuts[2] = {a, b};
            run_t r = run_cuts(in.base, in.len, cuts, 2, 4096);
            if (!same(&whole, &r)) {
                fprintf(stderr, "  edge.sse: cuts %zu,%zu differ\n", a, b);
                pairs_ok = 0;
            }
            free_run(&r);
        }
    }
    CHECK(pairs_ok);
    free_run(&whole);
    sl_buf_free(&expect);
    sl_buf_free(&in);
}

/* Parses a literal fed as the given pieces; returns the serialised events. */
static run_t run_pieces(const char *const *pieces, size_t n, size_t max)
{
    sl_buf_t all;
    sl_buf_init(&all, 0);
    size_t cuts[16];
    for (size_t i = 0; i < n; i++) {
        sl_buf_append_c(&all, pieces[i]);
        cuts[i] = all.len;
    }
    run_t r = run_cuts(all.base, all.len, cuts, n ? n - 1 : 0, max);
    sl_buf_free(&all);
    return r;
}

static void test_cr_lf_across_feeds(void)
{
    /* "a\r" | "\n..." is one line end; were the LF a second one, it would be
     * a blank line and dispatch "a" alone. */
    const char *pieces[] = {"data: a\r", "\ndata: b\r\n\r\n"};
    run_t r = run_pieces(pieces, 2, 0);
    sl_buf_t expect;
    sl_buf_init(&expect, 0);
    serialise(&expect, SL_STR(""), SL_STR("a\nb"), SL_STR(""), -1);
    CHECK(r.rc == 0 && r.n == 1 && out_is(&r, &expect));
    free_run(&r);

    /* A lone CR at a feed end followed by another CR: two line ends. */
    const char *pieces2[] = {"data: a\r", "\r", "data: b\n\n"};
    r = run_pieces(pieces2, 3, 0);
    CHECK(r.rc == 0 && r.n == 2);
    free_run(&r);
    sl_buf_free(&expect);
}

static void test_bom(void)
{
    const char *split[] = {"\xEF", "\xBB", "\xBF", "data: x\n\n"};
    run_t r = run_pieces(split, 4, 0);
    CHECK(r.rc == 0 && r.n == 1);
    free_run(&r);

    /* Only the first BOM is skipped: the second makes an unknown field. */
    const char *two[] = {"\xEF\xBB\xBF\xEF\xBB\xBF"
                         "data: x\n\n",
                         "data: y\n\n"};
    r = run_pieces(two, 2, 0);
    sl_buf_t expect;
    sl_buf_init(&expect, 0);
    serialise(&expect, SL_STR(""), SL_STR("y"), SL_STR(""), -1);
    CHECK(r.n == 1 && out_is(&r, &expect));
    free_run(&r);

    /* Bytes that start like a BOM but are not one stay in the line. */
    const char *fake[] = {"\xEF\xBB", "data: x\n\ndata: y\n\n"};
    r = run_pieces(fake, 2, 0);
    CHECK(r.n == 1 && out_is(&r, &expect));
    free_run(&r);

    /* A BOM later in the stream is data, not skipped. */
    const char *late[] = {"data: \xEF\xBB\xBFz\n\n"};
    r = run_pieces(late, 1, 0);
    sl_buf_reset(&expect);
    serialise(&expect, SL_STR(""), SL_STR("\xEF\xBB\xBFz"), SL_STR(""), -1);
    CHECK(r.n == 1 && out_is(&r, &expect));
    free_run(&r);
    sl_buf_free(&expect);
}

static void test_id_and_retry(void)
{
    static const char s[] =
        "id: 1\ndata: a\n\ndata: b\n\nid: 2\0x\nretry: 99999999999999999999999\n"
        "data: c\n\nid\nretry: -5\ndata: d\n\n";
    run_t r = run_whole(s, sizeof s - 1, 0);
    sl_buf_t expect;
    sl_buf_init(&expect, 0);
    serialise(&expect, SL_STR(""), SL_STR("a"), SL_STR("1"), -1);
    serialise(&expect, SL_STR(""), SL_STR("b"), SL_STR("1"), -1);       /* id persists */
    serialise(&expect, SL_STR(""), SL_STR("c"), SL_STR("1"), LONG_MAX); /* NUL id ignored */
    serialise(&expect, SL_STR(""), SL_STR("d"), SL_STR(""), LONG_MAX);  /* "-5" ignored */
    CHECK(r.n == 4 && out_is(&r, &expect));
    free_run(&r);
    sl_buf_free(&expect);
}

static void test_has_partial(void)
{
    struct {
        const char *in;
        int partial;
    } rows[] = {
        {"data: x\n", 1},    {"event: y\n", 1}, {"da", 1}, {": keep-alive", 0},  {"data: x\n\n", 0},
        {"event: y\n\n", 0}, {"id: 3\n", 0},    {"", 0},   {"data: x\n\n\r", 0},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        run_t r = run_whole(rows[i].in, strlen(rows[i].in), 0);
        if (r.partial != rows[i].partial)
            fprintf(stderr, "  has_partial(\"%s\") = %d\n", rows[i].in, r.partial);
        CHECK(r.partial == rows[i].partial);
        free_run(&r);
    }
}

/* Passthrough forwards each feed up to sl_sse_parser_boundary() and holds
 * the rest. Whatever the split, what was forwarded must end on an event
 * boundary (so a tail appended after it is never glued onto half an event)
 * and, once the stream ends cleanly, everything was forwarded. */
static int noop_cb(void *ud, const sl_sse_event_t *ev)
{
    (void)ud;
    (void)ev;
    return 0;
}

static void forward_split(const char *in, size_t len, size_t cut, sl_buf_t *sent)
{
    sl_sse_parser_t p;
    sl_sse_parser_init(&p, 0);
    sl_buf_t held;
    sl_buf_init(&held, 0);
    sl_buf_reset(sent);
    size_t pieces[2][2] = {{0, cut}, {cut, len}};
    for (int k = 0; k < 2; k++) {
        const char *b = in + pieces[k][0];
        size_t n = pieces[k][1] - pieces[k][0];
        sl_sse_parser_feed(&p, b, n, noop_cb, NULL);
        size_t at = sl_sse_parser_boundary(&p);
        if (at == SL_SSE_NO_BOUNDARY) {
            sl_buf_append(&held, b, n);
            continue;
        }
        sl_buf_append(sent, held.base, held.len);
        sl_buf_append(sent, b, at);
        sl_buf_reset(&held);
        sl_buf_append(&held, b + at, n - at);
    }
    sl_buf_free(&held);
    sl_sse_parser_free(&p);
}

static void test_boundary(void)
{
    const char *whole = "event: a\ndata: {\"x\":1}\n\n: ping\n\nevent: b\r\ndata: 2\r\n\r\n";
    const char *cut = "event: a\ndata: {\"x\":1}\n\n: ping\n\nevent: b\r\ndata: {\"index\": ";
    sl_buf_t sent;
    sl_buf_init(&sent, 0);
    for (size_t at = 0; at <= strlen(whole); at++) {
        forward_split(whole, strlen(whole), at, &sent);
        CHECK_EQ_MEM(sent.base, sent.len, whole);
    }
    const char *expect_cut = "event: a\ndata: {\"x\":1}\n\n: ping\n\n";
    for (size_t at = 0; at <= strlen(cut); at++) {
        forward_split(cut, strlen(cut), at, &sent);
        /* Everything up to the half event, and never a byte of it. */
        CHECK_EQ_MEM(sent.base, sent.len, expect_cut);
    }
    sl_buf_free(&sent);
}

/* ---- limits, stopping, zero copy ----------------------------------------- */

static void fill(sl_buf_t *b, const char *prefix, size_t n, const char *suffix)
{
    sl_buf_append_c(b, prefix);
    for (size_t i = 0; i < n; i++)
        sl_buf_append_byte(b, 'a' + (char)(i % 26));
    sl_buf_append_c(b, suffix);
}

static void test_limit(void)
{
    sl_buf_t s;
    sl_buf_init(&s, 0);
    /* Sizes are wire sizes: every line, line ends excluded. */
    fill(&s, "data: ", 58, "\n\n"); /* 64: exactly the limit, fine */
    fill(&s, "data: ", 26, "\n");   /* 32 + 32 = 64: fine */
    fill(&s, "data: ", 26, "\n\n");
    fill(&s, "event: ", 10, "\n"); /* 17 + 48 = 65: too big */
    fill(&s, "data: ", 42, "\n\n");
    fill(&s, "data: ", 3, "\n\n"); /* never reached */
    run_t whole = run_whole(s.base, s.len, 64);
    CHECK(whole.rc == SL_ELIMIT);
    CHECK(whole.n == 2);
    run_t bytes = run_bytewise(s.base, s.len, 64);
    CHECK(same(&whole, &bytes));
    int splits_ok = 1;
    for (size_t cut = 1; cut < s.len; cut++) {
        run_t r = run_cuts(s.base, s.len, &cut, 1, 64);
        splits_ok &= same(&whole, &r);
        free_run(&r);
    }
    CHECK(splits_ok);
    free_run(&whole);
    free_run(&bytes);

    /* Lines of one event add up, comments included: 30 + 5 + 30 = 65. */
    sl_buf_reset(&s);
    fill(&s, "data: ", 24, "\n");
    fill(&s, ": ", 3, "\n");
    fill(&s, "data: ", 24, "\n\n");
    whole = run_whole(s.base, s.len, 64);
    CHECK(whole.rc == SL_ELIMIT && whole.n == 0);
    free_run(&whole);

    /* A line that never ends (even a comment) is bounded too. */
    sl_buf_reset(&s);
    fill(&s, ": ", 200, "");
    whole = run_whole(s.base, s.len, 64);
    bytes = run_bytewise(s.base, s.len, 64);
    CHECK(whole.rc == SL_ELIMIT && bytes.rc == SL_ELIMIT);
    free_run(&whole);
    free_run(&bytes);

    /* Many small events never add up: the limit is per event. */
    sl_buf_reset(&s);
    for (int i = 0; i < 1000; i++)
        fill(&s, "event: e\ndata: ", 40, "\n\n");
    whole = run_whole(s.base, s.len, 64);
    CHECK(whole.rc == 0 && whole.n == 1000);
    free_run(&whole);

    /* Sticky: a parser that hit the limit refuses further input. */
    sl_sse_parser_t p;
    collect_t c = {.n = 0};
    sl_buf_init(&c.out, 0);
    sl_sse_parser_init(&p, 8);
    CHECK(sl_sse_parser_feed(&p, "data: 123456789\n\n", 17, collect_cb, &c) == SL_ELIMIT);
    CHECK(sl_sse_parser_feed(&p, "data: 1\n\n", 9, collect_cb, &c) == SL_ELIMIT);
    CHECK(c.n == 0);
    CHECK(sl_sse_parser_has_partial(&p));
    sl_sse_parser_free(&p);
    sl_buf_free(&c.out);
    sl_buf_free(&s);
}

static void test_callback_stops_feed(void)
{
    const char *s = "data: 1\n\ndata: 2\n\ndata: 3\n\n";
    sl_sse_parser_t p;
    collect_t c = {.stop_at = 2};
    sl_buf_init(&c.out, 0);
    sl_sse_parser_init(&p, 0);
    CHECK(sl_sse_parser_feed(&p, s, strlen(s), collect_cb, &c) == 7);
    CHECK(c.n == 2);
    CHECK(sl_sse_parser_feed(&p, "data: 4\n\n", 9, collect_cb, &c) == 7);
    CHECK(c.n == 2);
    sl_sse_parser_free(&p);
    sl_buf_free(&c.out);
}

static void test_zero_copy(void)
{
    /* Whole one-line events are handed out as views into the feed; events
     * that straddle feeds or have several data lines are copied. */
    sl_buf_t in = read_fixture("openai_chat.sse");
    run_t r = run_whole(in.base, in.len, 1 << 20);
    CHECK(r.n == 11 && r.n_views == 11);
    free_run(&r);
    run_t b = run_bytewise(in.base, in.len, 1 << 20);
    CHECK(b.n == 11 && b.n_views == 0);
    free_run(&b);
    const char *multi = "data: a\ndata: b\n\n";
    r = run_whole(multi, strlen(multi), 0);
    CHECK(r.n == 1 && r.n_views == 0);
    free_run(&r);
    sl_buf_free(&in);
}

/* ---- encoder ---------------------------------------------------------------- */

static void test_encode_exact(void)
{
    sl_buf_t out;
    sl_buf_init(&out, 0);
    CHECK(sl_sse_encode(&out, SL_STR("message_stop"), SL_STR("{\"type\":\"message_stop\"}")) == 0);
    CHECK(buf_eq_c(&out, "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
    sl_buf_reset(&out);
    CHECK(sl_sse_encode(&out, SL_STR_NULL, SL_STR("a\r\nb\rc\nd")) == 0);
    CHECK(buf_eq_c(&out, "data: a\ndata: b\ndata: c\ndata: d\n\n"));
    sl_buf_reset(&out);
    CHECK(sl_sse_encode(&out, SL_STR_NULL, SL_STR_NULL) == 0);
    CHECK(buf_eq_c(&out, "data: \n\n"));

    /* Failures leave the buffer as it was. */
    sl_buf_reset(&out);
    sl_buf_append_c(&out, "keep");
    CHECK(sl_sse_encode(&out, SL_STR("bad\nname"), SL_STR("x")) == SL_EINVAL);
    CHECK(buf_eq_c(&out, "keep"));
    sl_buf_t small;
    sl_buf_init(&small, 20);
    sl_buf_append_c(&small, "keep");
    CHECK(sl_sse_encode(&small, SL_STR("e"), SL_STR("0123456789abcdef")) == SL_ELIMIT);
    CHECK(buf_eq_c(&small, "keep"));
    sl_buf_free(&small);
    sl_buf_free(&out);
}

static void test_encode_round_trip(void)
{
    struct {
        const char *event, *data, *parsed;
    } rows[] = {
        {"", "plain", "plain"},
        {"message_delta", "{\"x\":1}", "{\"x\":1}"},
        {"", "", ""},
        {"e", "\n", "\n"},
        {"e", "a\n\nb", "a\n\nb"},
        {"e", "a\r\nb", "a\nb"},
        {"e", "a\rb\r", "a\nb\n"},
        {" spaced", "  two leading spaces", "  two leading spaces"},
        {"colon:name", ": looks like a comment", ": looks like a comment"},
        {"e", "data: nested\n\nevent: x", "data: nested\n\nevent: x"},
        {"utf8", "\xE2\x98\x80\xEF\xB8\x8F \xE6\x9D\xB1\xE4\xBA\xAC",
         "\xE2\x98\x80\xEF\xB8\x8F \xE6\x9D\xB1\xE4\xBA\xAC"},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        sl_buf_t wire, expect;
        sl_buf_init(&wire, 0);
        sl_buf_init(&expect, 0);
        CHECK(sl_sse_encode(&wire, sl_str_c(rows[i].event), sl_str_c(rows[i].data)) == 0);
        serialise(&expect, sl_str_c(rows[i].event), sl_str_c(rows[i].parsed), SL_STR_NULL, -1);
        run_t r = run_bytewise(wire.base, wire.len, 0);
        if (!(r.n == 1 && out_is(&r, &expect)))
            fprintf(stderr, "  round trip row %zu: %.*s", i, (int)r.out.len, r.out.base);
        CHECK(r.n == 1 && out_is(&r, &expect));
        free_run(&r);
        sl_buf_free(&wire);
        sl_buf_free(&expect);
    }
}

typedef struct {
    sl_buf_t wire;
} reencode_t;

static int reencode_cb(void *ud, const sl_sse_event_t *ev)
{
    reencode_t *re = ud;
    return sl_sse_encode(&re->wire, ev->event, ev->data);
}

static void test_capture_reencode(void)
{
    /* Every capture, parsed and re-encoded, parses to the same events. */
    const char *names[] = {"anthropic.sse", "anthropic_cr.sse", "openai_chat.sse", "responses.sse",
                           "gemini.sse"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        sl_buf_t in = read_fixture(names[i]);
        reencode_t re;
        sl_buf_init(&re.wire, 0);
        sl_sse_parser_t p;
        sl_sse_parser_init(&p, 1 << 20);
        CHECK(sl_sse_parser_feed(&p, in.base, in.len, reencode_cb, &re) == 0);
        sl_sse_parser_free(&p);
        run_t a = run_whole(in.base, in.len, 1 << 20);
        run_t b = run_whole(re.wire.base, re.wire.len, 1 << 20);
        CHECK(a.n > 0 && same(&a, &b));
        free_run(&a);
        free_run(&b);
        sl_buf_free(&re.wire);
        sl_buf_free(&in);
    }
}

/* ---- markers ---------------------------------------------------------------- */

static void test_markers(void)
{
    const sl_sse_marker_t anthropic[] = {{SL_SSE_MARK_EVENT, SL_STR("message_stop")}};
    const sl_sse_marker_t chat[] = {{SL_SSE_MARK_DATA, SL_STR("[DONE]")}};
    const sl_sse_marker_t gemini[] = {{SL_SSE_MARK_DATA_HAS, SL_STR("\"finishReason\"")}};
    const sl_sse_marker_t gemini_key[] = {{SL_SSE_MARK_DATA_HAS, SL_STR("\"finishReason\":")}};
    const sl_sse_marker_t any[] = {{SL_SSE_MARK_DATA_HAS, SL_STR_NULL}};
    struct {
        const sl_sse_marker_t *m;
        size_t n;
        const char *event, *data;
        int match;
    } rows[] = {
        {anthropic, 1, "message_stop", "{\"type\":\"message_stop\"}", 1},
        {anthropic, 1, "message_stopped", "{}", 0},
        {anthropic, 1, "message_sto", "{}", 0},
        {anthropic, 1, "", "{\"type\":\"message_stop\"}", 0}, /* name, not data */
        {chat, 1, "", "[DONE]", 1},
        {chat, 1, "", "[DONE] ", 0},
        {chat, 1, "", "{\"content\":\"[DONE]\"}", 0},
        {gemini, 1, "", "{\"candidates\":[{\"finishReason\":\"STOP\"}]}", 1},
        {gemini, 1, "", "{\"candidates\":[{\"text\":\"a \\\"finishReason\\\" b\"}]}", 0},
        /* A bare substring test has a blind spot: a text part that is exactly
         * "finishReason". The key form with its colon has none. */
        {gemini, 1, "", "{\"candidates\":[{\"text\":\"finishReason\"}]}", 1},
        {gemini_key, 1, "", "{\"candidates\":[{\"text\":\"finishReason\"}]}", 0},
        {gemini_key, 1, "", "{\"candidates\":[{\"finishReason\":\"STOP\"}]}", 1},
        {gemini, 1, "", "", 0},
        {any, 1, "", "", 1},
        {anthropic, 0, "message_stop", "", 0}, /* no markers: nothing matches */
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        sl_sse_event_t ev = {sl_str_c(rows[i].event), sl_str_c(rows[i].data), SL_STR_NULL, -1};
        if (sl_sse_marker_match(rows[i].m, rows[i].n, &ev) != rows[i].match)
            fprintf(stderr, "  marker row %zu\n", i);
        CHECK(sl_sse_marker_match(rows[i].m, rows[i].n, &ev) == rows[i].match);
    }
}

int main(void)
{
    RUN(test_anthropic_capture);
    RUN(test_line_end_variants);
    RUN(test_openai_chat_capture);
    RUN(test_responses_capture);
    RUN(test_gemini_capture);
    RUN(test_edge_fixture);
    RUN(test_cr_lf_across_feeds);
    RUN(test_bom);
    RUN(test_id_and_retry);
    RUN(test_has_partial);
    RUN(test_boundary);
    RUN(test_limit);
    RUN(test_callback_stops_feed);
    RUN(test_zero_copy);
    RUN(test_encode_exact);
    RUN(test_encode_round_trip);
    RUN(test_capture_reencode);
    RUN(test_markers);
    return TEST_SUMMARY();
}
