/*
 * term.h — the termination classifier: one pure function that says how a
 * proxied request or stream ended (DESIGN §6).
 *
 * While a request runs, the core writes down what happens to it, in the
 * order it happens, into an sl_term_t (client closed, a timer fired, a limit
 * tripped, a script failed, shutdown, curl finished with code X) together
 * with a few facts (HTTP status, was the protocol's terminal event seen,
 * was anything sent to the client yet). At the end, sl_term_classify()
 * turns that into one reason, whether the end was *expected* (the client
 * left: not a fault), and whether the client got a *partial* answer. It
 * allocates nothing and reads nothing but its argument, so every rule below
 * is a row in tests/test_term.c.
 *
 * The rules, in order:
 *  1. The first real cause wins. A client disconnect noted before curl's
 *     error stays CLIENT_ABORT even though curl then reports a write/abort
 *     error; an upstream failure noted while the client was still there
 *     stays the upstream failure even if the client then leaves.
 *  2. A generic cause never overwrites a specific one: curl's WRITE_ERROR
 *     and ABORTED_BY_CALLBACK (our own callbacks aborting the transfer after
 *     we noted why) and curl codes we do not know are only used when nothing
 *     specific was noted at all (then: INTERNAL).
 *  3. Once the protocol's terminal event has been seen, upstream transport
 *     trouble cannot make the answer incomplete: the upstream had already
 *     said everything. Skipped then: curl's failure codes (early close,
 *     reset, garbage, its own timeouts, and our abort of a transfer we no
 *     longer needed), the connect/first-byte/idle timers, UPSTREAM_INVALID.
 *     Not skipped: client notes, limits, script errors, shutdown, INTERNAL
 *     and TIMER_TOTAL — those mean the client's side was cut.
 *  4. curl finishing OK is not a cause of failure by itself: it is
 *     UPSTREAM_HTTP_ERROR when the status was >= 400, UPSTREAM_EOF_EARLY when
 *     a terminal event was required and not seen, else no failure. With no
 *     failure at all the reason is COMPLETE.
 *  5. partial = committed && reason != COMPLETE — except an upstream HTTP
 *     error answer passed on whole, which was delivered as an error, not cut
 *     short. Before commit nothing is partial: the client gets a proper
 *     error status instead.
 *  6. Once the terminal event has been handed to the client
 *     (terminal_delivered), the client leaving is no longer a cause: it had
 *     the whole answer (Codex closes as soon as it reads
 *     response.completed, before the chunked terminator arrives).
 *  7. A direct answer from sluice itself (LOCAL_ANSWER) with a status >= 400
 *     is LOCAL_ERROR; expected when the status is 4xx (the client's to fix).
 */
#ifndef SL_TERM_H
#define SL_TERM_H

#include <stdbool.h>
#include <stdint.h>

/*
 * Reasons, with what each means to an operator (the README quotes these).
 * XX(name, description)
 */
#define SL_TERM_REASON_MAP(XX)                                                                     \
    XX(COMPLETE, "The upstream finished normally and the client received the whole answer.")       \
    XX(UPSTREAM_EOF_EARLY,                                                                         \
       "The upstream closed the connection before the answer was complete (no terminal "           \
       "event, short body, or nothing at all). Usually an upstream crash or an overloaded "        \
       "load balancer; the client got a truncated answer with an error at its end.")               \
    XX(UPSTREAM_RESET,                                                                             \
       "The upstream connection failed mid-transfer (reset, send/receive error, HTTP/2 "           \
       "stream error). Network trouble between sluice and the supplier, or the supplier "          \
       "dropping connections.")                                                                    \
    XX(UPSTREAM_CONNECT,                                                                           \
       "sluice could not reach the upstream: the name did not resolve or the connection was "      \
       "refused. Check the supplier's base URL, DNS, and that the supplier is up.")                \
    XX(UPSTREAM_TLS,                                                                               \
       "The TLS handshake with the upstream failed or its certificate did not verify. Check "      \
       "the supplier URL's host name, the CA bundle, and any TLS-intercepting proxy.")             \
    XX(UPSTREAM_HTTP_ERROR,                                                                        \
       "The upstream answered with an HTTP error status (>= 400); the client received that "       \
       "error in its own protocol. See the status and message in the record.")                     \
    XX(UPSTREAM_PROTOCOL,                                                                          \
       "The upstream sent something that is not valid HTTP or not what its protocol allows "       \
       "(bad framing, bad content encoding, redirect loop, undecodable stream). Usually a "        \
       "wrong base URL or a supplier that is not the protocol it is configured as.")               \
    XX(UPSTREAM_TIMEOUT_CONNECT,                                                                   \
       "Connecting to the upstream (TCP and TLS) took longer than the connect timeout.")           \
    XX(UPSTREAM_TIMEOUT_FIRST_BYTE,                                                                \
       "The upstream accepted the request but sent no response within the first-byte "             \
       "timeout. Common with large prompts on a slow or overloaded model.")                        \
    XX(UPSTREAM_TIMEOUT_IDLE,                                                                      \
       "The upstream went silent mid-answer for longer than the idle timeout; sluice cut the "     \
       "stream.")                                                                                  \
    XX(UPSTREAM_TIMEOUT_TOTAL,                                                                     \
       "The whole exchange took longer than the total timeout; sluice cut it.")                    \
    XX(CLIENT_ABORT,                                                                               \
       "The client closed its connection before the answer was finished (user pressed "            \
       "Ctrl-C, tool cancelled the request). Expected, not a fault.")                              \
    XX(CLIENT_WRITE_ERROR,                                                                         \
       "Writing to the client failed (connection reset or broken pipe): the client went "          \
       "away. Expected, not a fault.")                                                             \
    XX(LIMIT_EVENT_SIZE,                                                                           \
       "One SSE event from the upstream was larger than the configured event size limit; "         \
       "sluice stopped the stream rather than buffer without bound.")                              \
    XX(LIMIT_RESPONSE_SIZE,                                                                        \
       "The upstream response grew past the configured response size limit; sluice stopped "       \
       "it.")                                                                                      \
    XX(SCRIPT_ERROR,                                                                               \
       "A Lua hook (router, codec, adapter) raised an error or ran out of its instruction "        \
       "budget while handling this request. The traceback is in the log.")                         \
    XX(LOCAL_ERROR,                                                                                \
       "sluice answered the request itself with an error and sent nothing upstream: malformed "    \
       "JSON, a missing or wrong gateway key, an unknown path or model, a body over the limit, "   \
       "or a supplier whose token endpoint failed. The record's error names the cause; a 4xx "     \
       "is the client's to fix (expected), a 5xx is not.")                                         \
    XX(SHUTDOWN, "sluice was shutting down and the request was still running when the shutdown "   \
                 "timeout expired.")                                                               \
    XX(INTERNAL,                                                                                   \
       "A failure inside sluice itself (out of memory, a bug, or a transfer that ended with "      \
       "no recorded cause). Please report it with the record.")

typedef enum {
#define XX(name, doc) SL_TERM_##name,
    SL_TERM_REASON_MAP(XX)
#undef XX
        SL_TERM__REASON_COUNT
} sl_term_reason_t;

/* "UPSTREAM_EOF_EARLY", ...; "UNKNOWN" for values outside the enum. */
const char *sl_term_reason_name(sl_term_reason_t r);
/* The operator's description above. */
const char *sl_term_reason_doc(sl_term_reason_t r);
/* The reason named `name` (as sl_term_reason_name() spells it), or -1. */
int sl_term_reason_from_name(const char *name);

/*
 * What the core notes as it happens. `code` is per cause:
 *   UPSTREAM_DONE     the CURLcode the transfer ended with (CURLE_OK: completed)
 *   CLIENT_*          the libuv error (UV_EOF, UV_ECONNRESET, UV_EPIPE...) or 0
 *   INTERNAL          an SL_E* code (SL_ENOMEM...) or 0
 *   others            0, or anything useful for the log
 */
#define SL_TERM_CAUSE_MAP(XX)                                                                      \
    XX(CLIENT_CLOSED)      /* the client's connection closed (read EOF/error) */                   \
    XX(CLIENT_WRITE_ERROR) /* a write to the client failed */                                      \
    XX(TIMER_CONNECT)      /* our connect timer fired */                                           \
    XX(TIMER_FIRST_BYTE)   /* no response head/byte in time */                                     \
    XX(TIMER_IDLE)         /* no upstream bytes for the idle timeout */                            \
    XX(TIMER_TOTAL)        /* the total timer fired */                                             \
    XX(LIMIT_EVENT)        /* the SSE framer returned SL_ELIMIT */                                 \
    XX(LIMIT_RESPONSE)     /* the response byte limit tripped */                                   \
    XX(SCRIPT_ERROR)       /* a hook failed or exceeded its budget */                              \
    XX(SHUTDOWN)           /* the shutdown timeout cut the request */                              \
    XX(UPSTREAM_INVALID)   /* we found the upstream's answer malformed */                          \
    XX(UPSTREAM_UNUSABLE)  /* its whole answer said nothing usable; the client got a whole error */ \
    XX(LOCAL_ANSWER)       /* sluice answered itself; code = the status it sent */                 \
    XX(INTERNAL)           /* our own failure (ENOMEM, bug) */                                     \
    XX(UPSTREAM_DONE)      /* curl finished the transfer; code = CURLcode */

typedef enum {
#define XX(name) SL_TERM_CAUSE_##name,
    SL_TERM_CAUSE_MAP(XX)
#undef XX
        SL_TERM__CAUSE_COUNT
} sl_term_cause_t;

const char *sl_term_cause_name(sl_term_cause_t c);

#define SL_TERM_MAX_NOTES 8

typedef struct {
    sl_term_cause_t cause;
    int code;
    const char *detail; /* borrowed; see sl_term_note() */
} sl_term_note_t;

/*
 * The accumulator. Embed it in the request, sl_term_init() it, set the facts
 * as they become true and call sl_term_note() as things happen. Fixed size:
 * the first SL_TERM_MAX_NOTES distinct notes are kept (a repeat of an
 * already-noted cause+code is ignored), later ones are only counted — the
 * first real cause wins, so early notes are the ones that matter.
 */
typedef struct {
    sl_term_note_t notes[SL_TERM_MAX_NOTES];
    unsigned n_notes;
    unsigned n_dropped;
    int http_status;         /* upstream status, 0 if none yet */
    bool terminal_required;  /* a stream whose protocol has a terminal event */
    bool terminal_seen;      /* that event was framed */
    bool terminal_delivered; /* ... and handed to the client: the answer is whole */
    bool committed;          /* status/headers/bytes already sent to the client */
    bool connected;          /* upstream TCP (+TLS) connect completed */
    uint64_t upstream_bytes; /* response body bytes received from upstream */
} sl_term_t;

void sl_term_init(sl_term_t *t);

/* Records that `cause` happened now. detail is short text for the record
 * and log (e.g. curl's error buffer); it is borrowed, so it must outlive the
 * classification: a static string or memory owned by the request. */
void sl_term_note(sl_term_t *t, sl_term_cause_t cause, int code, const char *detail);

/*
 * A retry or fallback to another upstream (before anything was committed):
 * forgets what belonged to the abandoned attempt — its UPSTREAM_DONE,
 * connect/first-byte/idle timers, limits and invalid answers, and the
 * upstream facts — and keeps what spans the whole request (client notes,
 * TIMER_TOTAL, script errors, shutdown, internal errors).
 */
void sl_term_new_attempt(sl_term_t *t);

typedef struct {
    sl_term_reason_t reason;
    bool expected;      /* the client left (CLIENT_*): not a fault */
    bool partial;       /* the client received an incomplete answer */
    const char *detail; /* the deciding note's detail, or a static text; never NULL */
} sl_term_result_t;

/* Pure: same input, same answer. */
sl_term_result_t sl_term_classify(const sl_term_t *t);

#endif
