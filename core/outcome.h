/*
 * outcome.h — how one proxied request ended, as one value.
 *
 * The exchange (exchange.h) fills an sl_outcome_t once, when its request is
 * over, and hands it to its owner, which passes it to the modules that
 * report requests: the access log line (log.h), the history record
 * (records.h) and the counters (metrics.h). Each reads the fields it needs;
 * none keeps a pointer into it: every string is a view borrowed for the
 * duration of the call (NULL = absent), and so is the attempt log.
 */
#ifndef SL_OUTCOME_H
#define SL_OUTCOME_H

#include <stddef.h>
#include <stdint.h>

#include "term.h"

/* One upstream attempt, in the order they were made. */
typedef struct {
    const char *supplier; /* "" when the attempt had no plan */
    int status;           /* the upstream's status, 0 if it sent none */
    const char *error;    /* why the attempt did not answer (a termination reason
                           * name); NULL for an attempt whose answer stood */
    double duration_ms;
} sl_attempt_t;

/* Who asked for what, and who answered. */
typedef struct {
    const char *client, *service, *route, *supplier, *model_in, *model_out;
} sl_outcome_names_t;

typedef struct {
    const char *id;   /* x-request-id */
    double end_time;  /* unix seconds when the request ended */
    const char *peer; /* "ip:port" of the client */
    const char *method;
    const char *path; /* as received, secret query parameters redacted */
    /* The request as the history knows it: the last plan's names, completed
     * by what the log hook learned (a request that never got a plan still
     * has a client and service; model_out is the one the answer reported,
     * when the log hook knows it). */
    sl_outcome_names_t names;
    /* The last plan's names only (all NULL when no plan was made). */
    sl_outcome_names_t planned;
    int status;           /* the status the client got; for a client gone before any
                           * head was sent, the upstream's (0 if none) */
    int upstream_status;  /* the last attempt's, 0 if none */
    double duration_ms;   /* start of the request head to the end */
    double ttfb_ms;       /* to the first byte sent to the client; < 0 if none was */
    int64_t bytes_in;     /* the request as received */
    int64_t bytes_out;    /* what this request sent the client */
    sl_term_result_t end; /* reason, expected, partial, detail (term.h) */
    /* From the log hook; -1 = unknown. */
    int64_t input_tokens, output_tokens, cache_read_tokens, cache_write_tokens;
    double cost;               /* USD, from the config's price table; < 0 = no price matched */
    const char *gateway_key;   /* which of `keys` the client used: its id, or "key#2" for a
                                * plain string key; never the key itself */
    const char *extra_json;    /* JSON object text added by the log hook */
    const char *request_body;  /* redacted; only when history.bodies is on */
    const char *response_body; /* likewise */
    int attempts;              /* upstream attempts started */
    const sl_attempt_t *attempt_log; /* one per attempt that ended */
    size_t nattempt_log;
} sl_outcome_t;

#endif
