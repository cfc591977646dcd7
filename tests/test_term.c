/*
 * test_term.c — the termination classifier (core/term.h), one table row per
 * situation: the notes the core would write in the order they happen, the
 * facts, and the verdict an operator should read in the history record.
 * The rows cover every reason, every curl code family, and the priority
 * rules (first real cause wins, generic never overwrites specific, a seen
 * terminal event makes later upstream trouble moot).
 */
#include <curl/curl.h>
#include <stdio.h>
#include <string.h>
#include <uv.h>

#include "error.h"
#include "term.h"

#include "test_helpers.h"

/* Rows leave the facts they do not care about (delivered) zero. */
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

typedef struct {
    sl_term_cause_t cause;
    int code;
    const char *detail;
} note_t;

/* Facts: status, terminal required, terminal seen, committed, connected, upstream bytes,
 * terminal delivered to the client. */
typedef struct {
    int status;
    bool req, seen, committed, connected;
    uint64_t bytes;
    bool delivered;
} facts_t;

typedef struct {
    const char *name;
    facts_t f;
    note_t notes[6];
    unsigned nn;
    sl_term_reason_t reason;
    bool expected, partial;
    const char *detail_has; /* substring the detail must contain, or NULL */
} row_t;

#define NOTES(...) .notes = {__VA_ARGS__}, .nn = sizeof((note_t[]){__VA_ARGS__}) / sizeof(note_t)
#define CURL(c)                                                                                    \
    {                                                                                              \
        SL_TERM_CAUSE_UPSTREAM_DONE, (c), NULL                                                     \
    }
#define N(cause)                                                                                   \
    {                                                                                              \
        SL_TERM_CAUSE_##cause, 0, NULL                                                             \
    }
#define NC(cause, code)                                                                            \
    {                                                                                              \
        SL_TERM_CAUSE_##cause, (code), NULL                                                        \
    }
#define R(r) .reason = SL_TERM_##r

/* Common fact sets. */
#define PLAIN_DONE                                                                                 \
    {                                                                                              \
        200, false, false, true, true, 500                                                         \
    } /* non-streamed, answered */
#define STREAM_DONE                                                                                \
    {                                                                                              \
        200, true, true, true, true, 5000                                                          \
    } /* terminal seen */
#define STREAM_MID                                                                                 \
    {                                                                                              \
        200, true, false, true, true, 3000                                                         \
    } /* cut mid-stream */
#define BEFORE_COMMIT                                                                              \
    {                                                                                              \
        0, true, false, false, true, 0                                                             \
    } /* nothing sent yet */
#define NO_CONNECT                                                                                 \
    {                                                                                              \
        0, true, false, false, false, 0                                                            \
    } /* never connected */

static const row_t rows[] = {
    /* Normal ends. */
    {"plain answer", PLAIN_DONE, NOTES(CURL(CURLE_OK)), R(COMPLETE), 0, 0, "complete"},
    {"stream with terminal event", STREAM_DONE, NOTES(CURL(CURLE_OK)), R(COMPLETE), 0, 0, NULL},
    {"direct answer from Lua, no upstream",
     {200, false, false, true, false, 0},
     .nn = 0,
     R(COMPLETE),
     0,
     0,
     NULL},

    /* curl OK is only complete when the facts agree. */
    {"stream ended OK without terminal", STREAM_MID, NOTES(CURL(CURLE_OK)), R(UPSTREAM_EOF_EARLY),
     0, 1, "before its terminal event"},
    {"empty stream, nothing committed",
     {200, true, false, false, true, 0},
     NOTES(CURL(CURLE_OK)),
     R(UPSTREAM_EOF_EARLY),
     0,
     0,
     "without sending anything"},
    {"upstream 500 passed on",
     {500, false, false, true, true, 120},
     NOTES(CURL(CURLE_OK)),
     R(UPSTREAM_HTTP_ERROR),
     0,
     0,
     "HTTP error status"},
    {"upstream 429 on a stream request",
     {429, true, false, true, true, 80},
     NOTES(CURL(CURLE_OK)),
     R(UPSTREAM_HTTP_ERROR),
     0,
     0,
     NULL},
    {"curl FAILONERROR code",
     {503, false, false, false, true, 0},
     NOTES(CURL(CURLE_HTTP_RETURNED_ERROR)),
     R(UPSTREAM_HTTP_ERROR),
     0,
     0,
     NULL},

    /* curl code families. */
    {"partial file mid-stream", STREAM_MID, NOTES(CURL(CURLE_PARTIAL_FILE)), R(UPSTREAM_EOF_EARLY),
     0, 1, NULL},
    {"got nothing before commit", BEFORE_COMMIT, NOTES(CURL(CURLE_GOT_NOTHING)),
     R(UPSTREAM_EOF_EARLY), 0, 0, NULL},
    {"recv error mid-stream", STREAM_MID, NOTES(CURL(CURLE_RECV_ERROR)), R(UPSTREAM_RESET), 0, 1,
     NULL},
    {"send error", BEFORE_COMMIT, NOTES(CURL(CURLE_SEND_ERROR)), R(UPSTREAM_RESET), 0, 0, NULL},
    {"http2 framing", STREAM_MID, NOTES(CURL(CURLE_HTTP2)), R(UPSTREAM_RESET), 0, 1, NULL},
    {"http2 stream reset", STREAM_MID, NOTES(CURL(CURLE_HTTP2_STREAM)), R(UPSTREAM_RESET), 0, 1,
     NULL},
    {"connection refused", NO_CONNECT, NOTES(CURL(CURLE_COULDNT_CONNECT)), R(UPSTREAM_CONNECT), 0,
     0, NULL},
    {"unresolvable host", NO_CONNECT, NOTES(CURL(CURLE_COULDNT_RESOLVE_HOST)), R(UPSTREAM_CONNECT),
     0, 0, NULL},
    {"unresolvable proxy", NO_CONNECT, NOTES(CURL(CURLE_COULDNT_RESOLVE_PROXY)),
     R(UPSTREAM_CONNECT), 0, 0, NULL},
    {"TLS handshake", NO_CONNECT, NOTES(CURL(CURLE_SSL_CONNECT_ERROR)), R(UPSTREAM_TLS), 0, 0,
     NULL},
    {"certificate not verified", NO_CONNECT, NOTES(CURL(CURLE_PEER_FAILED_VERIFICATION)),
     R(UPSTREAM_TLS), 0, 0, NULL},
    {"bad CA file", NO_CONNECT, NOTES(CURL(CURLE_SSL_CACERT_BADFILE)), R(UPSTREAM_TLS), 0, 0, NULL},
    {"curl timeout before connect", NO_CONNECT, NOTES(CURL(CURLE_OPERATION_TIMEDOUT)),
     R(UPSTREAM_TIMEOUT_CONNECT), 0, 0, NULL},
    {"curl timeout after connect", STREAM_MID, NOTES(CURL(CURLE_OPERATION_TIMEDOUT)),
     R(UPSTREAM_TIMEOUT_TOTAL), 0, 1, NULL},
    {"weird server reply", BEFORE_COMMIT, NOTES(CURL(CURLE_WEIRD_SERVER_REPLY)),
     R(UPSTREAM_PROTOCOL), 0, 0, NULL},
    {"bad content encoding", STREAM_MID, NOTES(CURL(CURLE_BAD_CONTENT_ENCODING)),
     R(UPSTREAM_PROTOCOL), 0, 1, NULL},
    {"redirect loop", BEFORE_COMMIT, NOTES(CURL(CURLE_TOO_MANY_REDIRECTS)), R(UPSTREAM_PROTOCOL), 0,
     0, NULL},
    {"curl max file size", STREAM_MID, NOTES(CURL(CURLE_FILESIZE_EXCEEDED)), R(LIMIT_RESPONSE_SIZE),
     0, 1, NULL},
    {"malformed URL from the plan", BEFORE_COMMIT, NOTES(CURL(CURLE_URL_MALFORMAT)), R(INTERNAL), 0,
     0, NULL},

    /* Gateway timers and limits: specific, and our own abort after them is generic. */
    {"connect timer", NO_CONNECT, NOTES(N(TIMER_CONNECT), CURL(CURLE_ABORTED_BY_CALLBACK)),
     R(UPSTREAM_TIMEOUT_CONNECT), 0, 0, NULL},
    {"first-byte timer", BEFORE_COMMIT, NOTES(N(TIMER_FIRST_BYTE), CURL(CURLE_ABORTED_BY_CALLBACK)),
     R(UPSTREAM_TIMEOUT_FIRST_BYTE), 0, 0, "first-byte"},
    {"idle timer then curl ABORTED", STREAM_MID,
     NOTES(N(TIMER_IDLE), CURL(CURLE_ABORTED_BY_CALLBACK)), R(UPSTREAM_TIMEOUT_IDLE), 0, 1, NULL},
    {"total timer", STREAM_MID, NOTES(N(TIMER_TOTAL), CURL(CURLE_ABORTED_BY_CALLBACK)),
     R(UPSTREAM_TIMEOUT_TOTAL), 0, 1, NULL},
    {"event too big", STREAM_MID, NOTES(N(LIMIT_EVENT), CURL(CURLE_WRITE_ERROR)),
     R(LIMIT_EVENT_SIZE), 0, 1, NULL},
    {"response too big", STREAM_MID, NOTES(N(LIMIT_RESPONSE), CURL(CURLE_WRITE_ERROR)),
     R(LIMIT_RESPONSE_SIZE), 0, 1, NULL},
    {"script error mid-stream", STREAM_MID, NOTES(N(SCRIPT_ERROR), CURL(CURLE_ABORTED_BY_CALLBACK)),
     R(SCRIPT_ERROR), 0, 1, NULL},
    {"script error before commit, client then leaves", BEFORE_COMMIT,
     NOTES(N(SCRIPT_ERROR), N(CLIENT_CLOSED)), R(SCRIPT_ERROR), 0, 0, NULL},
    {"shutdown cut", STREAM_MID, NOTES(N(SHUTDOWN), CURL(CURLE_ABORTED_BY_CALLBACK)), R(SHUTDOWN),
     0, 1, NULL},
    {"upstream garbage found by us", STREAM_MID,
     NOTES(N(UPSTREAM_INVALID), CURL(CURLE_ABORTED_BY_CALLBACK)), R(UPSTREAM_PROTOCOL), 0, 1, NULL},
    {"out of memory", STREAM_MID, NOTES(NC(INTERNAL, SL_ENOMEM), CURL(CURLE_WRITE_ERROR)),
     R(INTERNAL), 0, 1, "out of memory"},

    /* The client side. */
    {"client closed, then curl write error", STREAM_MID,
     NOTES(NC(CLIENT_CLOSED, UV_EOF), CURL(CURLE_WRITE_ERROR)), R(CLIENT_ABORT), 1, 1, NULL},
    {"client closed before commit", BEFORE_COMMIT,
     NOTES(N(CLIENT_CLOSED), CURL(CURLE_ABORTED_BY_CALLBACK)), R(CLIENT_ABORT), 1, 0,
     "client closed"},
    {"client write EPIPE", STREAM_MID,
     NOTES(NC(CLIENT_WRITE_ERROR, UV_EPIPE), CURL(CURLE_ABORTED_BY_CALLBACK)),
     R(CLIENT_WRITE_ERROR), 1, 1, "broken pipe"},
    {"upstream reset, then client leaves", STREAM_MID,
     NOTES(CURL(CURLE_RECV_ERROR), N(CLIENT_CLOSED)), R(UPSTREAM_RESET), 0, 1, NULL},
    {"upstream done OK, client left before the flush", STREAM_DONE,
     NOTES(CURL(CURLE_OK), NC(CLIENT_WRITE_ERROR, UV_ECONNRESET)), R(CLIENT_WRITE_ERROR), 1, 1,
     NULL},
    {"client left after early EOF", STREAM_MID, NOTES(CURL(CURLE_PARTIAL_FILE), N(CLIENT_CLOSED)),
     R(UPSTREAM_EOF_EARLY), 0, 1, NULL},

    /* Generic never overwrites specific, whichever comes first. */
    {"generic curl write error, then client close", STREAM_MID,
     NOTES(CURL(CURLE_WRITE_ERROR), N(CLIENT_CLOSED)), R(CLIENT_ABORT), 1, 1, NULL},
    {"unknown curl code, then idle timer", STREAM_MID,
     NOTES(CURL(CURLE_REMOTE_DISK_FULL), N(TIMER_IDLE)), R(UPSTREAM_TIMEOUT_IDLE), 0, 1, NULL},
    {"our abort with no cause noted", STREAM_MID, NOTES(CURL(CURLE_ABORTED_BY_CALLBACK)),
     R(INTERNAL), 0, 1, "aborted"},
    {"unknown curl code alone", BEFORE_COMMIT, NOTES(CURL(CURLE_REMOTE_DISK_FULL)), R(INTERNAL), 0,
     0, NULL},

    /* A seen terminal event makes later upstream transport trouble moot. */
    {"terminal seen, then reset", STREAM_DONE, NOTES(CURL(CURLE_RECV_ERROR)), R(COMPLETE), 0, 0,
     NULL},
    {"terminal seen, we stopped reading", STREAM_DONE, NOTES(CURL(CURLE_ABORTED_BY_CALLBACK)),
     R(COMPLETE), 0, 0, NULL},
    {"terminal seen, upstream then idles", STREAM_DONE,
     NOTES(N(TIMER_IDLE), CURL(CURLE_ABORTED_BY_CALLBACK)), R(COMPLETE), 0, 0, NULL},
    {"terminal seen, client left before the flush", STREAM_DONE,
     NOTES(N(CLIENT_CLOSED), CURL(CURLE_ABORTED_BY_CALLBACK)), R(CLIENT_ABORT), 1, 1, NULL},
    {"terminal seen, total timer cut the client", STREAM_DONE,
     NOTES(N(TIMER_TOTAL), CURL(CURLE_ABORTED_BY_CALLBACK)), R(UPSTREAM_TIMEOUT_TOTAL), 0, 1, NULL},
    {"terminal seen, then a script error", STREAM_DONE, NOTES(N(SCRIPT_ERROR), CURL(CURLE_OK)),
     R(SCRIPT_ERROR), 0, 1, NULL},

    /* A core that forgot to note anything on a stream is told so. */
    {"stream with no notes", STREAM_MID, .nn = 0, R(INTERNAL), 0, 1, "no recorded cause"},
    {"error status with no notes",
     {502, false, false, true, true, 40},
     .nn = 0,
     R(UPSTREAM_HTTP_ERROR),
     0,
     0,
     NULL},

    /* Rule 6: a client that leaves once it has the terminal event had it all
     * (Codex closes on response.completed); before that it is an abort, and
     * a write error still counts (the terminal may never have arrived). */
    {"client closes after the terminal was delivered",
     {200, true, true, true, true, 5000, true},
     NOTES(NC(CLIENT_CLOSED, UV_EOF), CURL(CURLE_WRITE_ERROR)),
     R(COMPLETE),
     0,
     0,
     NULL},
    {"client closes after the terminal was seen, not delivered", STREAM_DONE,
     NOTES(NC(CLIENT_CLOSED, UV_EOF)), R(CLIENT_ABORT), 1, 1, NULL},
    {"write error after the terminal was delivered",
     {200, true, true, true, true, 5000, true},
     NOTES(NC(CLIENT_WRITE_ERROR, UV_EPIPE)),
     R(CLIENT_WRITE_ERROR),
     1,
     1,
     NULL},

    /* A whole answer that said nothing usable (HTML in a 200) reached the
     * client as a whole 502: not partial. */
    {"unusable whole answer", PLAIN_DONE, NOTES(N(UPSTREAM_UNUSABLE), CURL(CURLE_OK)),
     R(UPSTREAM_PROTOCOL), 0, 0, NULL},

    /* Rule 7: sluice's own answers. */
    {"local 404", {0, false, false, true, false, 0}, NOTES(NC(LOCAL_ANSWER, 404)), R(LOCAL_ERROR),
     1, 0, NULL},
    {"local 502 (token endpoint down)", {0, false, false, true, false, 0},
     NOTES(NC(LOCAL_ANSWER, 502)), R(LOCAL_ERROR), 0, 0, NULL},
    {"local 200 (model list)", {0, false, false, true, false, 0}, NOTES(NC(LOCAL_ANSWER, 200)),
     R(COMPLETE), 0, 0, NULL},

    /* The deciding note's own detail wins over the generic text. */
    {"curl error buffer as detail", STREAM_MID,
     NOTES(
         {SL_TERM_CAUSE_UPSTREAM_DONE, CURLE_RECV_ERROR, "Recv failure: Connection reset by peer"}),
     R(UPSTREAM_RESET), 0, 1, "Recv failure: Connection reset by peer"},
};

static sl_term_t build(const row_t *r)
{
    sl_term_t t;
    sl_term_init(&t);
    t.http_status = r->f.status;
    t.terminal_required = r->f.req;
    t.terminal_seen = r->f.seen;
    t.committed = r->f.committed;
    t.connected = r->f.connected;
    t.upstream_bytes = r->f.bytes;
    t.terminal_delivered = r->f.delivered;
    for (unsigned i = 0; i < r->nn; i++)
        sl_term_note(&t, r->notes[i].cause, r->notes[i].code, r->notes[i].detail);
    return t;
}

/* Each row counts as one test. */
static void test_table(void)
{
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        const row_t *r = &rows[i];
        sl_term_t t = build(r);
        sl_term_result_t got = sl_term_classify(&t);
        int ok = got.reason == r->reason && got.expected == r->expected &&
                 got.partial == r->partial && got.detail != NULL &&
                 (!r->detail_has || strstr(got.detail, r->detail_has));
        if (!ok)
            fprintf(stderr,
                    "  row \"%s\": got %s expected=%d partial=%d detail=\"%s\"; want %s %d %d\n",
                    r->name, sl_term_reason_name(got.reason), got.expected, got.partial,
                    got.detail ? got.detail : "(null)", sl_term_reason_name(r->reason), r->expected,
                    r->partial);
        if (ok)
            th_passed++;
        else
            th_failed++;
    }
}

static void test_every_reason_reachable(void)
{
    bool seen[SL_TERM__REASON_COUNT] = {0};
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        sl_term_t t = build(&rows[i]);
        seen[sl_term_classify(&t).reason] = true;
    }
    for (int r = 0; r < SL_TERM__REASON_COUNT; r++) {
        if (!seen[r])
            fprintf(stderr, "  no row reaches %s\n", sl_term_reason_name(r));
        CHECK(seen[r]);
    }
}

static void test_names(void)
{
    CHECK(strcmp(sl_term_reason_name(SL_TERM_UPSTREAM_EOF_EARLY), "UPSTREAM_EOF_EARLY") == 0);
    CHECK(strcmp(sl_term_reason_name(SL_TERM_COMPLETE), "COMPLETE") == 0);
    CHECK(strcmp(sl_term_reason_name((sl_term_reason_t)999), "UNKNOWN") == 0);
    CHECK(strcmp(sl_term_cause_name(SL_TERM_CAUSE_TIMER_IDLE), "TIMER_IDLE") == 0);
    for (int r = 0; r < SL_TERM__REASON_COUNT; r++) {
        CHECK(sl_term_reason_from_name(sl_term_reason_name(r)) == r);
        CHECK(strlen(sl_term_reason_doc(r)) > 20);
    }
    CHECK(sl_term_reason_from_name("NOPE") == -1);
    CHECK(sl_term_reason_from_name(NULL) == -1);
}

static void test_pure(void)
{
    /* Classifying reads only its argument and always answers the same. */
    const row_t *r = &rows[sizeof rows / sizeof rows[0] - 1];
    sl_term_t t = build(r), copy = t;
    sl_term_result_t a = sl_term_classify(&t), b = sl_term_classify(&t);
    CHECK(memcmp(&t, &copy, sizeof t) == 0);
    CHECK(a.reason == b.reason && a.expected == b.expected && a.partial == b.partial &&
          a.detail == b.detail);
}

static void test_note_storage(void)
{
    sl_term_t t;
    sl_term_init(&t);
    /* Repeats do not use slots: a burst of write errors is one note. */
    for (int i = 0; i < 50; i++)
        sl_term_note(&t, SL_TERM_CAUSE_CLIENT_WRITE_ERROR, UV_EPIPE, NULL);
    CHECK(t.n_notes == 1 && t.n_dropped == 0);
    /* Past capacity, later notes are counted, and the first still decides. */
    for (int i = 0; i < 12; i++)
        sl_term_note(&t, SL_TERM_CAUSE_UPSTREAM_DONE, CURLE_RECV_ERROR + i, NULL);
    CHECK(t.n_notes == SL_TERM_MAX_NOTES);
    CHECK(t.n_dropped == 12 - (SL_TERM_MAX_NOTES - 1));
    t.committed = true;
    sl_term_result_t r = sl_term_classify(&t);
    CHECK(r.reason == SL_TERM_CLIENT_WRITE_ERROR && r.expected && r.partial);
}

static void test_new_attempt(void)
{
    /* Attempt 1 timed out before its first byte and was retried; attempt 2
     * streamed to the end. The first attempt's trouble is not the outcome. */
    sl_term_t t;
    sl_term_init(&t);
    t.terminal_required = true;
    t.connected = true;
    t.http_status = 200;
    sl_term_note(&t, SL_TERM_CAUSE_TIMER_FIRST_BYTE, 0, NULL);
    sl_term_note(&t, SL_TERM_CAUSE_UPSTREAM_DONE, CURLE_ABORTED_BY_CALLBACK, NULL);
    CHECK(sl_term_classify(&t).reason == SL_TERM_UPSTREAM_TIMEOUT_FIRST_BYTE);
    sl_term_new_attempt(&t);
    CHECK(t.n_notes == 0 && t.http_status == 0 && !t.connected);
    CHECK(t.terminal_required);
    t.connected = true;
    t.http_status = 200;
    t.committed = true;
    t.terminal_seen = true;
    sl_term_note(&t, SL_TERM_CAUSE_UPSTREAM_DONE, CURLE_OK, NULL);
    sl_term_result_t r = sl_term_classify(&t);
    CHECK(r.reason == SL_TERM_COMPLETE && !r.partial);

    /* A client that left during the backoff stays gone. */
    sl_term_init(&t);
    sl_term_note(&t, SL_TERM_CAUSE_UPSTREAM_DONE, CURLE_COULDNT_CONNECT, NULL);
    sl_term_note(&t, SL_TERM_CAUSE_CLIENT_CLOSED, UV_EOF, NULL);
    sl_term_note(&t, SL_TERM_CAUSE_TIMER_TOTAL, 0, NULL);
    sl_term_new_attempt(&t);
    CHECK(t.n_notes == 2);
    sl_term_note(&t, SL_TERM_CAUSE_UPSTREAM_DONE, CURLE_ABORTED_BY_CALLBACK, NULL);
    r = sl_term_classify(&t);
    CHECK(r.reason == SL_TERM_CLIENT_ABORT && r.expected && !r.partial);
}

int main(void)
{
    test_table();
    RUN(test_every_reason_reachable);
    RUN(test_names);
    RUN(test_pure);
    RUN(test_note_storage);
    RUN(test_new_attempt);
    return TEST_SUMMARY();
}
