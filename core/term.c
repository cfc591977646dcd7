/*
 * term.c — the termination classifier (see term.h for the rules).
 *
 * Each note is first judged on its own (judge()): which reason it would
 * give, whether it is specific or merely generic, and whether it is upstream
 * transport trouble that a seen terminal event makes irrelevant. The
 * classifier then takes the first specific verdict in arrival order; the
 * first generic one is the fallback. Keeping the per-note judgement apart
 * from the ordering rule is what keeps each rule a single readable line.
 */
#include "term.h"

#include <curl/curl.h>
#include <string.h>

#include "error.h"

static const char *const reason_names[] = {
#define XX(name, doc) #name,
    SL_TERM_REASON_MAP(XX)
#undef XX
};

static const char *const reason_docs[] = {
#define XX(name, doc) doc,
    SL_TERM_REASON_MAP(XX)
#undef XX
};

static const char *const cause_names[] = {
#define XX(name) #name,
    SL_TERM_CAUSE_MAP(XX)
#undef XX
};

const char *sl_term_reason_name(sl_term_reason_t r)
{
    return (unsigned)r < SL_TERM__REASON_COUNT ? reason_names[r] : "UNKNOWN";
}

const char *sl_term_reason_doc(sl_term_reason_t r)
{
    return (unsigned)r < SL_TERM__REASON_COUNT ? reason_docs[r] : "unknown reason";
}

int sl_term_reason_from_name(const char *name)
{
    for (int i = 0; name && i < SL_TERM__REASON_COUNT; i++)
        if (strcmp(reason_names[i], name) == 0)
            return i;
    return -1;
}

const char *sl_term_cause_name(sl_term_cause_t c)
{
    return (unsigned)c < SL_TERM__CAUSE_COUNT ? cause_names[c] : "UNKNOWN";
}

void sl_term_init(sl_term_t *t)
{
    memset(t, 0, sizeof *t);
}

void sl_term_note(sl_term_t *t, sl_term_cause_t cause, int code, const char *detail)
{
    for (unsigned i = 0; i < t->n_notes; i++)
        if (t->notes[i].cause == cause && t->notes[i].code == code)
            return; /* a repeat adds nothing: its first time set the order */
    if (t->n_notes == SL_TERM_MAX_NOTES) {
        t->n_dropped++;
        return;
    }
    t->notes[t->n_notes++] = (sl_term_note_t){cause, code, detail};
}

static bool spans_request(sl_term_cause_t c)
{
    switch (c) {
    case SL_TERM_CAUSE_CLIENT_CLOSED:
    case SL_TERM_CAUSE_CLIENT_WRITE_ERROR:
    case SL_TERM_CAUSE_TIMER_TOTAL:
    case SL_TERM_CAUSE_SCRIPT_ERROR:
    case SL_TERM_CAUSE_SHUTDOWN:
    case SL_TERM_CAUSE_INTERNAL:
        return true;
    default:
        return false;
    }
}

void sl_term_new_attempt(sl_term_t *t)
{
    unsigned kept = 0;
    for (unsigned i = 0; i < t->n_notes; i++)
        if (spans_request(t->notes[i].cause))
            t->notes[kept++] = t->notes[i];
    t->n_notes = kept;
    t->http_status = 0;
    t->terminal_seen = false;
    t->terminal_delivered = false;
    t->connected = false;
    t->upstream_bytes = 0;
}

/* ---- judging one note --------------------------------------------------- */

typedef enum {
    V_NONE,     /* not a failure (curl OK on a finished answer) */
    V_GENERIC,  /* a failure, but says nothing about why */
    V_SPECIFIC, /* a failure with a known cause */
} vkind_t;

typedef struct {
    vkind_t kind;
    sl_term_reason_t reason;
    bool transport; /* upstream transport trouble: moot once the terminal was seen */
    bool whole;     /* the answer was delivered whole (an upstream error, as an error) */
    const char *detail;
    int status; /* LOCAL_ERROR: the status sluice answered with */
} verdict_t;

static verdict_t v(vkind_t kind, sl_term_reason_t reason, bool transport, const char *detail)
{
    return (verdict_t){kind, reason, transport, false, detail, 0};
}

/* curl finished OK: whether that was a complete answer depends on facts. */
static verdict_t judge_curl_ok(const sl_term_t *t)
{
    if (t->http_status >= 400) {
        verdict_t r = v(V_SPECIFIC, SL_TERM_UPSTREAM_HTTP_ERROR, false,
                        "upstream answered with an HTTP error status");
        r.whole = true;
        return r;
    }
    if (t->terminal_required && !t->terminal_seen)
        return v(V_SPECIFIC, SL_TERM_UPSTREAM_EOF_EARLY, true,
                 t->upstream_bytes ? "upstream ended the stream before its terminal event"
                                   : "upstream ended the stream without sending anything");
    return v(V_NONE, SL_TERM_COMPLETE, false, NULL);
}

static verdict_t judge_curl(const sl_term_t *t, int code)
{
    const char *msg = curl_easy_strerror((CURLcode)code);
    switch ((CURLcode)code) {
    case CURLE_OK:
        return judge_curl_ok(t);
    case CURLE_PARTIAL_FILE:
    case CURLE_GOT_NOTHING:
        return v(V_SPECIFIC, SL_TERM_UPSTREAM_EOF_EARLY, true, msg);
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_HTTP3:
        return v(V_SPECIFIC, SL_TERM_UPSTREAM_RESET, true, msg);
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_QUIC_CONNECT_ERROR:
    case CURLE_PROXY:
    case CURLE_NO_CONNECTION_AVAILABLE:
        return v(V_SPECIFIC, SL_TERM_UPSTREAM_CONNECT, true, msg);
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CLIENTCERT:
    case CURLE_USE_SSL_FAILED:
        return v(V_SPECIFIC, SL_TERM_UPSTREAM_TLS, true, msg);
    case CURLE_OPERATION_TIMEDOUT:
        /* curl's own timers: the connect timeout before a connection, the
         * overall timeout after. */
        return v(V_SPECIFIC,
                 t->connected ? SL_TERM_UPSTREAM_TIMEOUT_TOTAL : SL_TERM_UPSTREAM_TIMEOUT_CONNECT,
                 true, msg);
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_UNSUPPORTED_PROTOCOL: /* "Received HTTP/0.9": our URLs are http(s) by config */
    case CURLE_BAD_CONTENT_ENCODING:
    case CURLE_TOO_MANY_REDIRECTS:
        return v(V_SPECIFIC, SL_TERM_UPSTREAM_PROTOCOL, true, msg);
    case CURLE_HTTP_RETURNED_ERROR:
        return v(V_SPECIFIC, SL_TERM_UPSTREAM_HTTP_ERROR, false, msg);
    case CURLE_FILESIZE_EXCEEDED:
        return v(V_SPECIFIC, SL_TERM_LIMIT_RESPONSE_SIZE, false, msg);
    case CURLE_OUT_OF_MEMORY:
    case CURLE_FAILED_INIT:
    case CURLE_URL_MALFORMAT:
    case CURLE_BAD_FUNCTION_ARGUMENT:
    case CURLE_UNKNOWN_OPTION:
    case CURLE_RECURSIVE_API_CALL:
    case CURLE_UNRECOVERABLE_POLL:
    case CURLE_READ_ERROR:
    case CURLE_SEND_FAIL_REWIND:
        /* Our own setup or callbacks failed, not the upstream. */
        return v(V_SPECIFIC, SL_TERM_INTERNAL, false, msg);
    default:
        /* WRITE_ERROR and ABORTED_BY_CALLBACK mean "our callback said stop":
         * the why is in another note — or the terminal event was seen and we
         * simply stopped reading (hence transport). Unknown codes say
         * nothing either. */
        return v(V_GENERIC, SL_TERM_INTERNAL, true, msg);
    }
}

static verdict_t judge(const sl_term_t *t, const sl_term_note_t *n)
{
    /* Only negative codes are SL_E* or UV_E* values; libuv would allocate a
     * message for anything else. */
    const char *uv =
        n->code < 0 && n->cause != SL_TERM_CAUSE_UPSTREAM_DONE ? sl_strerror(n->code) : NULL;
    switch (n->cause) {
    case SL_TERM_CAUSE_CLIENT_CLOSED:
        return v(V_SPECIFIC, SL_TERM_CLIENT_ABORT, false, uv ? uv : "client closed the connection");
    case SL_TERM_CAUSE_CLIENT_WRITE_ERROR:
        return v(V_SPECIFIC, SL_TERM_CLIENT_WRITE_ERROR, false, uv ? uv : "write to client failed");
    case SL_TERM_CAUSE_TIMER_CONNECT:
        return v(V_SPECIFIC, SL_TERM_UPSTREAM_TIMEOUT_CONNECT, true, "upstream connect timed out");
    case SL_TERM_CAUSE_TIMER_FIRST_BYTE:
        return v(V_SPECIFIC, SL_TERM_UPSTREAM_TIMEOUT_FIRST_BYTE, true,
                 "no response from upstream within the first-byte timeout");
    case SL_TERM_CAUSE_TIMER_IDLE:
        return v(V_SPECIFIC, SL_TERM_UPSTREAM_TIMEOUT_IDLE, true,
                 "upstream sent nothing within the idle timeout");
    case SL_TERM_CAUSE_TIMER_TOTAL:
        /* Not transport: sluice cut the exchange, wherever its bytes were. */
        return v(V_SPECIFIC, SL_TERM_UPSTREAM_TIMEOUT_TOTAL, false, "total timeout reached");
    case SL_TERM_CAUSE_LIMIT_EVENT:
        return v(V_SPECIFIC, SL_TERM_LIMIT_EVENT_SIZE, false,
                 "an SSE event exceeded the size limit");
    case SL_TERM_CAUSE_LIMIT_RESPONSE:
        return v(V_SPECIFIC, SL_TERM_LIMIT_RESPONSE_SIZE, false,
                 "response exceeded the size limit");
    case SL_TERM_CAUSE_SCRIPT_ERROR:
        return v(V_SPECIFIC, SL_TERM_SCRIPT_ERROR, false, "script error");
    case SL_TERM_CAUSE_SHUTDOWN:
        return v(V_SPECIFIC, SL_TERM_SHUTDOWN, false, "cut by shutdown");
    case SL_TERM_CAUSE_UPSTREAM_INVALID:
        return v(V_SPECIFIC, SL_TERM_UPSTREAM_PROTOCOL, true, "malformed answer from upstream");
    case SL_TERM_CAUSE_UPSTREAM_UNUSABLE: {
        /* Not transport, and delivered whole: the client got a proper error. */
        verdict_t r =
            v(V_SPECIFIC, SL_TERM_UPSTREAM_PROTOCOL, false, "unusable answer from upstream");
        r.whole = true;
        return r;
    }
    case SL_TERM_CAUSE_INTERNAL:
        return v(V_SPECIFIC, SL_TERM_INTERNAL, false, uv ? uv : "internal error");
    case SL_TERM_CAUSE_LOCAL_ANSWER: {
        if (n->code < 400)
            return v(V_NONE, SL_TERM_COMPLETE, false, NULL);
        verdict_t r = v(V_SPECIFIC, SL_TERM_LOCAL_ERROR, false, "sluice answered with an error");
        r.whole = true;
        r.status = n->code;
        return r;
    }
    case SL_TERM_CAUSE_UPSTREAM_DONE:
        return judge_curl(t, n->code);
    default:
        return v(V_GENERIC, SL_TERM_INTERNAL, false, "unknown termination cause");
    }
}

/* ---- the ordering rule -------------------------------------------------- */

static sl_term_result_t result(const sl_term_t *t, verdict_t vd, const char *note_detail)
{
    sl_term_result_t r;
    r.reason = vd.reason;
    r.expected = vd.reason == SL_TERM_CLIENT_ABORT || vd.reason == SL_TERM_CLIENT_WRITE_ERROR ||
                 (vd.reason == SL_TERM_LOCAL_ERROR && vd.status < 500);
    r.partial = t->committed && vd.reason != SL_TERM_COMPLETE && !vd.whole;
    r.detail = note_detail ? note_detail : vd.detail ? vd.detail : "";
    return r;
}

sl_term_result_t sl_term_classify(const sl_term_t *t)
{
    const sl_term_note_t *fallback = NULL;
    verdict_t fallback_v = {0};
    bool upstream_done = false;

    for (unsigned i = 0; i < t->n_notes; i++) {
        const sl_term_note_t *n = &t->notes[i];
        verdict_t vd = judge(t, n);
        upstream_done |= n->cause == SL_TERM_CAUSE_UPSTREAM_DONE;
        if (vd.kind == V_NONE || (vd.transport && t->terminal_seen))
            continue;
        if (n->cause == SL_TERM_CAUSE_CLIENT_CLOSED && t->terminal_delivered)
            continue; /* rule 6: it left with the whole answer */
        if (vd.kind == V_SPECIFIC)
            return result(t, vd, n->detail);
        if (!fallback) {
            fallback = n;
            fallback_v = vd;
        }
    }
    if (fallback) {
        fallback_v.detail =
            fallback_v.detail ? fallback_v.detail : "transfer aborted with no recorded cause";
        return result(t, fallback_v, fallback->detail);
    }
    if (!upstream_done) {
        /* No transfer result: a direct answer, or a core that forgot to note. */
        if (t->http_status >= 400)
            return result(t, judge_curl_ok(t), NULL);
        if (t->terminal_required && !t->terminal_seen)
            return result(
                t, v(V_SPECIFIC, SL_TERM_INTERNAL, false, "stream ended with no recorded cause"),
                NULL);
    }
    return result(t, v(V_NONE, SL_TERM_COMPLETE, false, "complete"), NULL);
}
