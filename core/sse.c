/*
 * sse.c — the incremental SSE framer, the encoder and marker matching (see
 * sse.h for the contract).
 *
 * The framer works line by line straight out of the caller's buffer. A line
 * wholly inside the current feed is processed as a view; only a line cut by
 * the end of a feed is copied (into p->line) and finished by the next feed.
 * A pending event keeps its data and event name as views into the feed for
 * as long as it can (one data line, same feed) — the common case for every
 * vendor, whose events are one `data:` line — and copies them into its own
 * buffers only when a second data line arrives or the feed ends first.
 *
 * The size limit is on an event's wire size (its lines, line ends excluded),
 * checked as each line is read and while a cut line waits for its end. That
 * quantity only grows within an event and does not depend on where feeds
 * were cut, so a stream fed whole, byte by byte or split anywhere fails at
 * the same event with the same events dispatched before it. It also bounds
 * what the parser holds, which is at most that many bytes.
 */
#define _GNU_SOURCE /* memmem */
#include "sse.h"

#include <limits.h>
#include <string.h>

#include "error.h"

static const unsigned char BOM[3] = {0xEF, 0xBB, 0xBF};

void sl_sse_parser_init(sl_sse_parser_t *p, size_t max_event_bytes)
{
    memset(p, 0, sizeof *p);
    /* The buffers never need their own cap: every append is preceded by a
     * check against max, which also bounds the carried line. */
    sl_buf_init(&p->line, 0);
    sl_buf_init(&p->data, 0);
    sl_buf_init(&p->event, 0);
    sl_buf_init(&p->id, 0);
    p->max = max_event_bytes;
    p->retry = -1;
    p->boundary = SL_SSE_NO_BOUNDARY;
}

void sl_sse_parser_free(sl_sse_parser_t *p)
{
    sl_buf_free(&p->line);
    sl_buf_free(&p->data);
    sl_buf_free(&p->event);
    sl_buf_free(&p->id);
}

static sl_str_t pending_data(const sl_sse_parser_t *p)
{
    return p->data_view.base ? p->data_view : sl_str(p->data.base, p->data.len);
}

static sl_str_t pending_event(const sl_sse_parser_t *p)
{
    return p->event_view.base ? p->event_view : sl_str(p->event.base, p->event.len);
}

/* The event's wire size so far plus the line being read. */
static int over_limit(const sl_sse_parser_t *p, size_t line_len)
{
    return p->max && (line_len > p->max || p->block_bytes > p->max - line_len);
}

static void reset_event(sl_sse_parser_t *p)
{
    p->data_lines = 0;
    p->block_bytes = 0;
    p->data_view = SL_STR_NULL;
    p->event_view = SL_STR_NULL;
    sl_buf_reset(&p->data);
    sl_buf_reset(&p->event);
}

/* A value that lives in the caller's feed may stay a view until the feed
 * ends; one in p->line ("transient") is overwritten by the next line. */
static int add_data(sl_sse_parser_t *p, sl_str_t v, int transient)
{
    int rc;
    if (p->data_lines == 0 && !transient) {
        p->data_view = v;
        p->data_lines = 1;
        return 0;
    }
    if (p->data_view.base) {
        sl_str_t first = p->data_view;
        p->data_view = SL_STR_NULL;
        if ((rc = sl_buf_append_str(&p->data, first)) != 0)
            return rc;
    }
    if (p->data_lines > 0 && (rc = sl_buf_append_byte(&p->data, '\n')) != 0)
        return rc;
    p->data_lines++;
    return sl_buf_append_str(&p->data, v);
}

static int set_event(sl_sse_parser_t *p, sl_str_t v, int transient)
{
    sl_buf_reset(&p->event);
    if (!transient) {
        p->event_view = v;
        return 0;
    }
    p->event_view = SL_STR_NULL;
    return sl_buf_append_str(&p->event, v);
}

static void set_retry(sl_sse_parser_t *p, sl_str_t v)
{
    long ms = 0;
    if (v.len == 0)
        return;
    for (size_t i = 0; i < v.len; i++) {
        unsigned d = (unsigned char)v.base[i] - '0';
        if (d > 9)
            return; /* not all digits: the spec says ignore the field */
        ms = ms > (LONG_MAX - (long)d) / 10 ? LONG_MAX : ms * 10 + (long)d;
    }
    p->retry = ms;
}

static int set_id(sl_sse_parser_t *p, sl_str_t v)
{
    if (memchr(v.base, '\0', v.len))
        return 0; /* an id with NUL is ignored (spec) */
    sl_buf_reset(&p->id);
    return sl_buf_append_str(&p->id, v);
}

static int dispatch(sl_sse_parser_t *p, sl_sse_event_cb cb, void *ud)
{
    if (p->data_lines == 0) {
        reset_event(p); /* no data: nothing to dispatch, but the name resets */
        return 0;
    }
    sl_sse_event_t ev = {
        .event = pending_event(p),
        .data = pending_data(p),
        .id = sl_str(p->id.base, p->id.len),
        .retry = p->retry,
    };
    int rc = cb(ud, &ev);
    reset_event(p);
    return rc;
}

/* One complete line, without its terminator. */
static int process_line(sl_sse_parser_t *p, sl_str_t l, int transient, sl_sse_event_cb cb, void *ud)
{
    if (over_limit(p, l.len))
        return SL_ELIMIT;
    if (l.len == 0)
        return dispatch(p, cb, ud);
    p->block_bytes += l.len;
    if (l.base[0] == ':')
        return 0; /* comment */

    const char *colon = memchr(l.base, ':', l.len);
    sl_str_t name = l, value = sl_str(l.base + l.len, 0);
    if (colon) {
        name.len = (size_t)(colon - l.base);
        value = sl_str(colon + 1, l.len - name.len - 1);
        if (value.len && value.base[0] == ' ') {
            value.base++;
            value.len--;
        }
    }
    switch (name.len) {
    case 4:
        if (memcmp(name.base, "data", 4) == 0)
            return add_data(p, value, transient);
        break;
    case 5:
        if (memcmp(name.base, "event", 5) == 0)
            return set_event(p, value, transient);
        if (memcmp(name.base, "retry", 5) == 0)
            set_retry(p, value);
        break;
    case 2:
        if (memcmp(name.base, "id", 2) == 0)
            return set_id(p, value);
        break;
    }
    return 0; /* unknown field: ignored */
}

/* Where the line starting at s ends: the first CR or LF, or NULL. Two
 * memchr passes beat a byte loop: lines are long JSON, CRs are rare. */
static const char *find_eol(const char *s, const char *end)
{
    const char *lf = memchr(s, '\n', (size_t)(end - s));
    const char *cr = memchr(s, '\r', (size_t)((lf ? lf : end) - s));
    return cr ? cr : lf;
}

/* The feed's views must not outlive the feed: copy them in. */
static int materialise(sl_sse_parser_t *p)
{
    int rc;
    if (p->data_view.base) {
        sl_str_t v = p->data_view;
        p->data_view = SL_STR_NULL;
        if ((rc = sl_buf_append_str(&p->data, v)) != 0)
            return rc;
    }
    if (p->event_view.base) {
        sl_str_t v = p->event_view;
        p->event_view = SL_STR_NULL;
        if ((rc = sl_buf_append_str(&p->event, v)) != 0)
            return rc;
    }
    return 0;
}

/* Skips a BOM at the very start of the stream, even one cut across feeds.
 * Bytes that began like a BOM but were not one are ordinary line bytes. */
static int skip_bom(sl_sse_parser_t *p, const char **s, const char *end)
{
    while (p->bom < 3 && *s < end) {
        if ((unsigned char)**s == BOM[p->bom]) {
            p->bom++;
            (*s)++;
            continue;
        }
        int rc = sl_buf_append(&p->line, BOM, p->bom);
        p->bom = 3;
        return rc;
    }
    return 0;
}

/* After a whole line: may the stream be cut here without halving an event? */
static void note_boundary(sl_sse_parser_t *p, const char *base, const char *s)
{
    if (p->data_lines == 0 && pending_event(p).len == 0)
        p->boundary = (size_t)(s - base);
}

static int feed_lines(sl_sse_parser_t *p, const char *base, const char *s, const char *end,
                      sl_sse_event_cb cb, void *ud)
{
    int rc;
    if (p->skip_lf && s < end) {
        p->skip_lf = 0;
        if (*s == '\n') {
            s++;
            note_boundary(p, base, s);
        }
    }
    while (s < end) {
        const char *eol = find_eol(s, end);
        if (!eol) {
            size_t n = (size_t)(end - s);
            if (over_limit(p, p->line.len + n))
                return SL_ELIMIT;
            return sl_buf_append(&p->line, s, n);
        }
        if (p->line.len) {
            size_t n = (size_t)(eol - s);
            if (over_limit(p, p->line.len + n))
                return SL_ELIMIT;
            if ((rc = sl_buf_append(&p->line, s, n)) != 0)
                return rc;
            rc = process_line(p, sl_str(p->line.base, p->line.len), 1, cb, ud);
            sl_buf_reset(&p->line);
        } else {
            rc = process_line(p, sl_str(s, (size_t)(eol - s)), 0, cb, ud);
        }
        if (rc)
            return rc;
        s = eol + 1;
        if (*eol == '\r') {
            if (s == end)
                p->skip_lf = 1; /* the LF, if any, is in the next feed */
            else if (*s == '\n')
                s++;
        }
        note_boundary(p, base, s);
    }
    return 0;
}

int sl_sse_parser_feed(sl_sse_parser_t *p, const char *buf, size_t len, sl_sse_event_cb cb,
                       void *ud)
{
    p->boundary = SL_SSE_NO_BOUNDARY;
    if (p->err || len == 0)
        return p->err;
    const char *s = buf, *end = buf + len;
    int rc = skip_bom(p, &s, end);
    if (rc == 0)
        rc = feed_lines(p, buf, s, end, cb, ud);
    if (rc == 0)
        rc = materialise(p);
    p->err = rc;
    return rc;
}

size_t sl_sse_parser_boundary(const sl_sse_parser_t *p)
{
    return p->boundary;
}

int sl_sse_parser_has_partial(const sl_sse_parser_t *p)
{
    if (p->err)
        return 1; /* stopped: the rest of the stream was never framed */
    if (p->data_lines || pending_event(p).len)
        return 1;
    return p->line.len > 0 && p->line.base[0] != ':';
}

static int encode_lines(sl_buf_t *out, sl_str_t event, sl_str_t data)
{
    int rc;
    if (event.len) {
        if ((rc = sl_buf_append(out, "event: ", 7)) != 0 ||
            (rc = sl_buf_append_str(out, event)) != 0 || (rc = sl_buf_append_byte(out, '\n')) != 0)
            return rc;
    }
    const char *s = data.base, *end = data.base + data.len;
    for (;;) {
        const char *eol = data.len ? find_eol(s, end) : NULL;
        const char *stop = eol ? eol : end;
        if ((rc = sl_buf_append(out, "data: ", 6)) != 0 ||
            (rc = sl_buf_append(out, s, (size_t)(stop - s))) != 0 ||
            (rc = sl_buf_append_byte(out, '\n')) != 0)
            return rc;
        if (!eol)
            break;
        s = eol + 1;
        if (*eol == '\r' && s < end && *s == '\n')
            s++;
    }
    return sl_buf_append_byte(out, '\n');
}

int sl_sse_encode(sl_buf_t *out, sl_str_t event, sl_str_t data)
{
    if (event.len && (memchr(event.base, '\r', event.len) || memchr(event.base, '\n', event.len)))
        return SL_EINVAL;
    size_t mark = out->len;
    int rc = sl_buf_reserve(out, event.len + data.len + 16);
    if (rc == 0)
        rc = encode_lines(out, event, data);
    if (rc)
        out->len = mark; /* never leave half a record */
    return rc;
}

int sl_sse_marker_match(const sl_sse_marker_t *m, size_t n, const sl_sse_event_t *ev)
{
    for (size_t i = 0; i < n; i++) {
        switch (m[i].kind) {
        case SL_SSE_MARK_EVENT:
            if (sl_str_eq(ev->event, m[i].value))
                return 1;
            break;
        case SL_SSE_MARK_DATA:
            if (sl_str_eq(ev->data, m[i].value))
                return 1;
            break;
        case SL_SSE_MARK_DATA_HAS:
            if (m[i].value.len == 0 || (ev->data.len && memmem(ev->data.base, ev->data.len,
                                                               m[i].value.base, m[i].value.len)))
                return 1;
            break;
        }
    }
    return 0;
}
