/*
 * records.h — the request history: one row per proxied request, in SQLite.
 *
 * Worker threads fill an sl_record_t when a request ends and hand it to
 * sl_records_submit(), which only queues it: a single writer thread owns the
 * write connection, batches inserts into one transaction (up to 256 records
 * or 50 ms), and evicts the oldest rows so the table never holds more than
 * `max_records`. The event loops therefore never wait on the disk. When the
 * disk is full or the database is locked the batch is dropped, logged to
 * stderr and counted (sl_records_dropped()); the gateway keeps serving.
 *
 * Reads (query/get/delete, for the admin API) may run on any thread at any
 * time: each call borrows a connection from a small mutex-protected pool,
 * and WAL mode lets those readers proceed while the writer commits.
 *
 * Ids are the x-request-id, which a client may choose and reuse: ids are not
 * unique in the table. get() returns the newest record with that id;
 * delete() removes every record with that id.
 */
#ifndef SL_RECORDS_H
#define SL_RECORDS_H

#include <stdint.h>

#include "arena.h"
#include "buf.h"
#include "outcome.h"

/* Every string is owned by the record (NULL = absent): malloc'd one by one,
 * or, in a record made by sl_record_from_outcome, all in its arena. */
typedef struct sl_record_s {
    sl_arena_t arena; /* holds every string when it has a block */
    char *id;    /* x-request-id */
    double time; /* unix seconds, start of request */
    char *client, *service, *method, *path, *route, *supplier, *model_in, *model_out;
    int status;                  /* status sent to the client (0 if none) */
    double duration_ms, ttfb_ms; /* ttfb_ms < 0 if no byte was sent */
    int64_t bytes_in, bytes_out;
    int64_t input_tokens, output_tokens, cache_read_tokens, cache_write_tokens; /* -1 = unknown */
    double cost;       /* USD; < 0 = unknown (no price matched) */
    char *gateway_key; /* a keys entry's id, or "key#N" (its place) for a plain string key; never the key */
    char *reason;      /* termination reason name, e.g. "COMPLETE", "UPSTREAM_EOF_EARLY" */
    int partial, expected;
    char *error;  /* e.g. "partial=true; reason=UPSTREAM_EOF_EARLY; ..." or NULL */
    int attempts; /* upstream attempts made */
    /* JSON array text of {supplier,status,error,duration_ms}, or NULL. Text
     * that is not a valid JSON array is stored as NULL. */
    char *attempts_json;
    /* Only stored when the history was opened with keep_bodies; the caller
     * has already redacted secrets. */
    char *request_body, *response_body;
    /* JSON object text added by Lua's log hook, or NULL. Text that is not a
     * valid JSON object is stored as NULL. */
    char *extra_json;
} sl_record_t;

/* A zeroed record with the token counts and ttfb_ms set to "unknown" (-1),
 * or NULL on ENOMEM. */
sl_record_t *sl_record_new(void);
/* The record of a request that ended so (every string copied, into one
 * arena block of their size: a record is two allocations), or NULL on
 * ENOMEM. The bodies are copied only with_bodies (the history keeps them).
 * Filled from the column table: each column names the outcome field
 * it copies, and the rest (time, reason, partial, expected, the error text
 * "partial=...; reason=...; detail" and the attempt log's JSON) are derived
 * from the outcome here. */
sl_record_t *sl_record_from_outcome(const sl_outcome_t *o, int with_bodies);
/* Frees the record and every string it holds. NULL is a no-op. */
void sl_record_free(sl_record_t *r);

typedef struct sl_records_s sl_records_t;

/*
 * Opens (creating if needed) the database file at `path` — its directory
 * must exist — switches it to WAL, creates the schema and starts the writer
 * thread. max_records <= 0 means unbounded. keep_bodies = 0 discards
 * request_body/response_body on submit. Returns 0, SL_EINVAL, SL_ENOMEM or
 * SL_EIO (cannot open/create; the reason is logged to stderr).
 */
int sl_records_open(sl_records_t **out, const char *path, int max_records, int keep_bodies);
/* sl_records_submit of the record of an outcome, its bodies copied only
 * when this history keeps them (sl_records_open's keep_bodies). */
int sl_records_submit_outcome(sl_records_t *rs, const sl_outcome_t *o);
/* Writes everything submitted so far, stops the writer and closes the
 * database. NULL is a no-op. No other call may be in progress or follow. */
void sl_records_close(sl_records_t *rs);

/*
 * Queues `rec` for writing and takes ownership of it (also on failure, when
 * it is freed). Never touches the disk; thread-safe. Returns 0, SL_EINVAL
 * (rs or rec NULL, or no id), or SL_ELIMIT when the queue is full because
 * the disk cannot keep up (the record is dropped and counted).
 */
int sl_records_submit(sl_records_t *rs, sl_record_t *rec);
/* Waits until every record submitted before the call is committed (or was
 * dropped). timeout_ms < 0 waits forever. Returns 0 or SL_ETIMEDOUT. */
int sl_records_flush(sl_records_t *rs, int timeout_ms);

/* Records lost since the process started (queue full, disk full, locked
 * database...), over every open history. */
uint64_t sl_records_dropped(void);

typedef struct {
    int limit;                      /* <= 0: 50; capped at 1000 */
    int offset;                     /* < 0: 0 */
    const char *client;             /* exact match, NULL = any */
    int status;                     /* exact match; 1..9 = that class (5 = 5xx); 0 = any */
    double since;                   /* time >= since (unix seconds), 0 = any */
    const char *search;             /* substring (case-insensitive ASCII) of id, path, model_in,
                                       model_out, supplier or error; NULL/"" = any */
    double until;                   /* time < until, 0 = any */
    const char *service, *supplier; /* exact match, NULL = any */
    const char *model;              /* exact match of model_in or model_out, NULL = any */
    int partial;                    /* 1 = partial answers only */
    const char *session;            /* exact match of the record's extra.session (the hashed
                                       session key, sluice.sticky), NULL = any */
} sl_records_filter_t;

/*
 * Appends {"total":N,"items":[...]} to `out`: total counts every match,
 * items are the requested page, newest (by request start time) first. Items
 * carry every field except the bodies. f may be NULL (no filter).
 * Returns 0, SL_EBUSY, SL_EIO, SL_ENOMEM or SL_ELIMIT (out's limit).
 */
int sl_records_query(sl_records_t *rs, const sl_records_filter_t *f, sl_buf_t *out);
/* Appends the full JSON of the newest record with this id (bodies included
 * when stored). Returns 0, SL_ENOTFOUND or an error as for query. */
int sl_records_get(sl_records_t *rs, const char *id, sl_buf_t *out);
/* Deletes every record with this id: 0, SL_ENOTFOUND, SL_EBUSY or SL_EIO. */
int sl_records_delete(sl_records_t *rs, const char *id);

/* The live feed (GET /_sluice/requests/stream): calls each() with every
 * record stored after *after_seq (insertion order, at most `limit`, as the
 * JSON of a listing item) and advances *after_seq past them. *after_seq < 0
 * starts a feed: it is set to the newest stored record and nothing is sent.
 * Runs SQLite: call it off the event loops. Returns 0 or an error as query. */
typedef void (*sl_records_each_cb)(void *arg, int64_t seq, const char *json, size_t len);
int sl_records_feed(sl_records_t *rs, int64_t *after_seq, int limit, sl_records_each_cb each,
                    void *arg);

/* GET /_sluice/usage: totals over [since, until), grouped. */
#define SL_USAGE_GROUPS_MAX 4
typedef struct {
    double since, until;             /* unix seconds; until <= 0: no end */
    int groups[SL_USAGE_GROUPS_MAX]; /* from sl_records_usage_group() */
    int ngroups;
} sl_records_usage_t;

/* The index of a group_by name (key, model, supplier, client, service, day,
 * hour), or -1; sl_records_usage_groups() lists them for an error message. */
int sl_records_usage_group(const char *name);
const char *sl_records_usage_groups(void);
/*
 * Appends {"since","until","group_by":[...],"rows":[{<group fields>,
 * requests, errors (status >= 400 or none), partials, input_tokens,
 * output_tokens, cache_read_tokens, cache_write_tokens, cache_hit_ratio
 * (cache reads / all input, null without input), cost (null when no record
 * of the row was priced), ttfb_p50_ms, ttfb_p95_ms}]}, rows ordered by group.
 * Computed in one pass over an index of the history on a pooled read
 * connection (records_usage.c): call it off the event loops. Returns 0, SL_EINVAL, SL_EBUSY, SL_EIO or SL_ENOMEM.
 */
int sl_records_usage(sl_records_t *rs, const sl_records_usage_t *u, sl_buf_t *out);

#endif
