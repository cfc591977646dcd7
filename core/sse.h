/*
 * sse.h — Server-Sent Events: an incremental framer, an encoder, and the
 * terminal-marker check the core runs on every framed event.
 *
 * The framer follows the WHATWG "event stream interpretation" rules: LF, CR
 * and CRLF line ends (a CR that ends one feed and an LF that starts the next
 * are one line end), fields `event`, `data` (several data lines joined with
 * "\n"), `id` and `retry` (ASCII digits only, else ignored), comment lines
 * starting with ':', a field line without ':' meaning "name with an empty
 * value", one space after the colon stripped, one UTF-8 BOM skipped at the
 * very start of the stream, unknown fields ignored. An event is dispatched
 * at a blank line, and only if it had at least one data line (an `event:`
 * name alone is discarded at the blank line). Because events are dispatched
 * only when complete, a callback never sees half a UTF-8 sequence or half a
 * JSON document, however the upstream reads were cut. An unfinished event at
 * end of stream is never dispatched (see sl_sse_parser_has_partial()).
 *
 * The parser is fed every upstream read, so it avoids copying: an event whose
 * lines all lie inside one feed and which has a single data line is handed
 * to the callback as views into the caller's buffer. Only bytes that straddle
 * a feed boundary (or multi-line data) are copied into the parser's own
 * buffers, and those buffers are bounded by max_event_bytes.
 */
#ifndef SL_SSE_H
#define SL_SSE_H

#include <stddef.h>

#include "buf.h"

/*
 * One dispatched event. All views are BORROWED: valid only during the
 * callback that receives them (they point into the caller's feed buffer or
 * into the parser's buffers, which the next line overwrites). Copy what you
 * keep.
 *   event  the `event:` name of this event; empty when none was given (the
 *          WHATWG default type "message").
 *   data   the data lines joined with "\n", without a trailing newline;
 *          may be empty (a bare `data:` line dispatches an empty event).
 *   id     the stream's last event ID as of this event: `id:` persists
 *          across events until another `id:` line changes it (per spec).
 *   retry  the stream's reconnection time in ms as of this event (the last
 *          valid `retry:` seen), or -1 if none has been seen.
 */
typedef struct {
    sl_str_t event;
    sl_str_t data;
    sl_str_t id;
    long retry;
} sl_sse_event_t;

/* Called once per complete event. A non-zero return stops the feed; the
 * value is returned by sl_sse_parser_feed() (use a negative SL_E* or a
 * positive value of your own) and the parser stays stopped. */
typedef int (*sl_sse_event_cb)(void *ud, const sl_sse_event_t *ev);

/*
 * Parser state. The struct is public only so callers can embed it (no
 * separate allocation per request); treat every field as private.
 */
typedef struct sl_sse_parser_s {
    sl_buf_t line;       /* a line cut by a feed boundary, carried to the next */
    sl_buf_t data;       /* data of the pending event when it cannot be a view */
    sl_buf_t event;      /* event name of the pending event when copied */
    sl_buf_t id;         /* last event ID (persists across events) */
    sl_str_t data_view;  /* data as a view into the current feed, if base */
    sl_str_t event_view; /* event name as a view into the current feed */
    size_t data_lines;   /* data lines in the pending event (0: none) */
    size_t block_bytes;  /* wire bytes of the pending event's finished lines */
    size_t max;          /* max_event_bytes, 0 = unbounded */
    long retry;
    int err;               /* sticky: SL_ELIMIT, SL_ENOMEM or a cb's return */
    unsigned char bom;     /* BOM bytes matched so far; 3 = past the start */
    unsigned char skip_lf; /* the previous feed ended with CR */
    size_t boundary;       /* see sl_sse_parser_boundary() */
} sl_sse_parser_t;

/* Prepares p. max_event_bytes bounds one event's size on the wire: the sum
 * of its lines (field names, values, comments; line ends not counted), so
 * it also bounds the memory the parser holds. A single over-long line, even
 * a comment, trips it too. 0 means unbounded — never use 0 on upstream data.
 * Cannot fail: nothing is allocated until bytes arrive. */
void sl_sse_parser_init(sl_sse_parser_t *p, size_t max_event_bytes);
/* Releases the parser's buffers. p may be re-initialised afterwards. */
void sl_sse_parser_free(sl_sse_parser_t *p);

/*
 * Frames buf[0..len) and calls cb for every event it completes, in order.
 * buf is only borrowed for the duration of the call. Returns:
 *   0           all bytes consumed (an unfinished event is kept for later);
 *   SL_ELIMIT   the pending event grew past max_event_bytes — the stream
 *               must be ended with a LIMIT_EVENT_SIZE termination;
 *   SL_ENOMEM   allocation failed;
 *   the callback's non-zero return, which stopped the feed mid-buffer.
 * Any non-zero result is sticky: later feeds return it without parsing.
 * Events dispatched before an error were complete and are valid.
 */
int sl_sse_parser_feed(sl_sse_parser_t *p, const char *buf, size_t len, sl_sse_event_cb cb,
                       void *ud);

/* Where the last feed can be cut so that the bytes before the cut hold
 * only whole events: the offset just past the last line end in that feed
 * at which no event was pending (after a dispatching blank line, or after a
 * comment between events), or SL_SSE_NO_BOUNDARY if the whole feed belongs
 * to an unfinished event. A passthrough forwards up to here and holds the
 * rest, so anything it must append later starts on an event boundary. */
#define SL_SSE_NO_BOUNDARY ((size_t)-1)
size_t sl_sse_parser_boundary(const sl_sse_parser_t *p);

/* 1 if the parser holds the start of an event that no blank line has ended
 * yet (at end of stream that event is lost: a truncated stream). Comments
 * and a trailing unterminated empty line do not count. Always 1 once a feed
 * has returned non-zero: the rest of the stream was never framed. */
int sl_sse_parser_has_partial(const sl_sse_parser_t *p);

/*
 * Appends one event to out: `event: <name>\n` when event is non-empty, one
 * `data: <line>\n` per line of data (data's \r\n, \r and \n all split lines,
 * so a parser gives back data with \n line ends), then the blank line.
 * Empty data still produces one `data: ` line, so the event is dispatched.
 * Returns 0, SL_EINVAL if event contains CR or LF (it cannot be framed), or
 * SL_ENOMEM / SL_ELIMIT from out; on error out is left as it was — never
 * half a record.
 */
int sl_sse_encode(sl_buf_t *out, sl_str_t event, sl_str_t data);

/*
 * Terminal markers: how C recognises a protocol's last event in passthrough
 * mode without Lua. The plan names them, e.g. Anthropic {EVENT
 * "message_stop"}, OpenAI chat {DATA "[DONE]"}, Responses {EVENT
 * "response.completed"}, {EVENT "response.failed"}, {EVENT
 * "response.incomplete"}, Gemini {DATA_HAS "\"finishReason\":"}.
 * DATA_HAS is a plain substring test on the raw JSON text: prefer a needle
 * that can only occur as a key — with its colon, as above — because any
 * quote inside a JSON string value is escaped, while a bare "\"finishReason\""
 * also matches a text part that is exactly the word finishReason.
 */
typedef enum {
    SL_SSE_MARK_EVENT,    /* the event name equals value */
    SL_SSE_MARK_DATA,     /* the data equals value */
    SL_SSE_MARK_DATA_HAS, /* the data contains value (empty value: always) */
} sl_sse_mark_kind_t;

typedef struct {
    sl_sse_mark_kind_t kind;
    sl_str_t value;
} sl_sse_marker_t;

/* 1 if any of the n markers matches ev, else 0. */
int sl_sse_marker_match(const sl_sse_marker_t *m, size_t n, const sl_sse_event_t *ev);

#endif
