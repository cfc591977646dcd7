/*
 * records.c — the request history in SQLite (see records.h).
 *
 * One table, `requests`, whose columns are described once by the `columns`
 * table below: the schema, the INSERT statement, the SELECT list and the JSON
 * writer are all generated from it, and so is the record of a finished
 * request, built from its outcome (outcome.h): a field added there is
 * filled, stored, read and rendered consistently. Rows are keyed by `seq`
 * (the rowid, i.e. insertion order), which makes "evict the oldest" a cheap
 * rowid range.
 *
 * Writes go through one writer thread with its own connection: submit() only
 * appends to a mutex-protected queue, the writer drains it in transactions.
 * Reads borrow connections from a small pool so admin calls on different
 * threads never share a connection (SQLite connections are not meant to be
 * used by two threads at once) and, thanks to WAL, never wait for the writer.
 * The usage totals are records_usage.c (records_int.h is what they share).
 */
#define _GNU_SOURCE
#include "records.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "error.h"
#include "records_int.h"

#define BATCH_MAX 256
#define BATCH_WAIT_MS 50
#define QUEUE_MAX 65536 /* records waiting for the disk before we shed load */
#define POOL_MAX 4      /* idle read connections kept open */
#define BUSY_TIMEOUT_MS 1000
#define QUERY_LIMIT_DEFAULT 50
#define QUERY_LIMIT_MAX 1000

/* ---- the column table ---------------------------------------------------- */

typedef enum {
    K_TEXT,       /* char *, NULL = null */
    K_REAL,       /* double, non-finite = null */
    K_REAL_OPT,   /* double, < 0 = null (unknown) */
    K_INT,        /* int */
    K_INT64,      /* int64_t */
    K_INT64_OPT,  /* int64_t, < 0 = null (unknown) */
    K_BOOL,       /* int, rendered true/false */
    K_JSON_ARRAY, /* char * JSON text, embedded raw; invalid = null */
    K_JSON_OBJ,   /* char * JSON text, embedded raw; invalid = null */
    K_BODY,       /* char *, only stored with keep_bodies, only shown by get */
} kind_t;

typedef struct {
    const char *col;  /* SQL column name */
    const char *json; /* JSON field name */
    kind_t kind;
    size_t off;      /* offset in sl_record_t */
    int usage;       /* member of the nested "usage" object */
    const char *fmt; /* printf format for K_REAL* */
    size_t from;     /* offset in sl_outcome_t of the field it is copied from, which has
                      * the record field's type (strings are copied); DERIVED: computed
                      * by sl_record_from_outcome */
} column_t;

#define DERIVED ((size_t)-1)
#define F(field) offsetof(sl_record_t, field)
#define O(field) offsetof(sl_outcome_t, field)
static const column_t columns[] = {
    {"id", "id", K_TEXT, F(id), 0, NULL, O(id)},
    {"time", "time", K_REAL, F(time), 0, "%.6f", DERIVED},
    {"client", "client", K_TEXT, F(client), 0, NULL, O(names.client)},
    {"service", "service", K_TEXT, F(service), 0, NULL, O(names.service)},
    {"method", "method", K_TEXT, F(method), 0, NULL, O(method)},
    {"path", "path", K_TEXT, F(path), 0, NULL, O(path)},
    {"route", "route", K_TEXT, F(route), 0, NULL, O(names.route)},
    {"supplier", "supplier", K_TEXT, F(supplier), 0, NULL, O(names.supplier)},
    {"model_in", "model_in", K_TEXT, F(model_in), 0, NULL, O(names.model_in)},
    {"model_out", "model_out", K_TEXT, F(model_out), 0, NULL, O(names.model_out)},
    {"status", "status", K_INT, F(status), 0, NULL, O(status)},
    {"duration_ms", "duration_ms", K_REAL, F(duration_ms), 0, "%.3f", O(duration_ms)},
    {"ttfb_ms", "ttfb_ms", K_REAL_OPT, F(ttfb_ms), 0, "%.3f", O(ttfb_ms)},
    {"bytes_in", "bytes_in", K_INT64, F(bytes_in), 0, NULL, O(bytes_in)},
    {"bytes_out", "bytes_out", K_INT64, F(bytes_out), 0, NULL, O(bytes_out)},
    {"input_tokens", "input_tokens", K_INT64_OPT, F(input_tokens), 1, NULL, O(input_tokens)},
    {"output_tokens", "output_tokens", K_INT64_OPT, F(output_tokens), 1, NULL, O(output_tokens)},
    {"cache_read_tokens", "cache_read_tokens", K_INT64_OPT, F(cache_read_tokens), 1, NULL,
     O(cache_read_tokens)},
    {"cache_write_tokens", "cache_write_tokens", K_INT64_OPT, F(cache_write_tokens), 1, NULL,
     O(cache_write_tokens)},
    {"cost", "cost", K_REAL_OPT, F(cost), 0, "%.6f", O(cost)},
    {"gateway_key", "key", K_TEXT, F(gateway_key), 0, NULL, O(gateway_key)},
    {"reason", "reason", K_TEXT, F(reason), 0, NULL, DERIVED},
    {"partial", "partial", K_BOOL, F(partial), 0, NULL, DERIVED},
    {"expected", "expected", K_BOOL, F(expected), 0, NULL, DERIVED},
    {"error", "error", K_TEXT, F(error), 0, NULL, DERIVED},
    {"attempts", "attempts", K_INT, F(attempts), 0, NULL, O(attempts)},
    {"attempts_json", "attempt_log", K_JSON_ARRAY, F(attempts_json), 0, NULL, DERIVED},
    {"extra_json", "extra", K_JSON_OBJ, F(extra_json), 0, NULL, O(extra_json)},
    /* bodies last: list queries select every column but these two */
    {"request_body", "request_body", K_BODY, F(request_body), 0, NULL, O(request_body)},
    {"response_body", "response_body", K_BODY, F(response_body), 0, NULL, O(response_body)},
};
#undef F
#undef O

/* The outcome fields the table copies without a cast have the record's types. */
#define SAME_TYPE(field, type) _Generic(((sl_outcome_t *)0)->field, type: 1, default: 0)
_Static_assert(SAME_TYPE(status, int) && SAME_TYPE(attempts, int), "int columns");
_Static_assert(SAME_TYPE(duration_ms, double) && SAME_TYPE(ttfb_ms, double) &&
                   SAME_TYPE(cost, double),
               "real columns");
_Static_assert(SAME_TYPE(bytes_in, int64_t) && SAME_TYPE(bytes_out, int64_t) &&
                   SAME_TYPE(input_tokens, int64_t) && SAME_TYPE(output_tokens, int64_t) &&
                   SAME_TYPE(cache_read_tokens, int64_t) && SAME_TYPE(cache_write_tokens, int64_t),
               "int64 columns");
#undef SAME_TYPE

#define NCOLS ((int)(sizeof columns / sizeof columns[0]))
#define NCOLS_LIST (NCOLS - 2)

#define FIELD(rec, c, type) (*(type *)((char *)(rec) + (c)->off))

/* ---- state --------------------------------------------------------------- */

struct sl_records_s {
    char *path;
    int max_records;
    int keep_bodies;

    /* the queue, guarded by mu */
    pthread_mutex_t mu;
    pthread_cond_t wake; /* writer: work arrived, flush requested, or stop */
    pthread_cond_t done; /* flushers: `completed` advanced */
    sl_record_t **queue; /* ring buffer of QUEUE_MAX */
    size_t qhead, qlen;
    uint64_t submitted, completed; /* completed = committed or dropped */
    int flush_waiters;
    int stopping;
    pthread_t writer;

    /* writer-only */
    sqlite3 *wdb;
    sqlite3_stmt *insert, *evict, *count;
    int64_t rows;       /* rows in the table, as the writer believes */
    atomic_int recount; /* set by delete(): `rows` is stale */
    time_t last_drop_log;

    /* read connections */
    pthread_mutex_t pool_mu;
    sqlite3 *pool[POOL_MAX];
    int npool;
    char *select_list;  /* all columns, comma-separated */
    char *select_items; /* all but the bodies */
};

static atomic_uint_fast64_t dropped_total;

uint64_t sl_records_dropped(void)
{
    return atomic_load(&dropped_total);
}

static int map_sqlite(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_DONE:
    case SQLITE_ROW:
        return 0;
    case SQLITE_NOMEM:
        return SL_ENOMEM;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return SL_EBUSY;
    case SQLITE_MISUSE:
    case SQLITE_RANGE:
        return SL_EINVAL;
    case SQLITE_TOOBIG:
        return SL_ELIMIT;
    default: /* FULL, IOERR, CANTOPEN, READONLY, CORRUPT, NOTADB, ... */
        return SL_EIO;
    }
}

/* ---- records ------------------------------------------------------------- */

sl_record_t *sl_record_new(void)
{
    sl_record_t *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->ttfb_ms = -1;
    r->cost = -1;
    r->input_tokens = r->output_tokens = -1;
    r->cache_read_tokens = r->cache_write_tokens = -1;
    return r;
}

static int is_string_kind(kind_t k)
{
    return k == K_TEXT || k == K_JSON_ARRAY || k == K_JSON_OBJ || k == K_BODY;
}

void sl_record_free(sl_record_t *r)
{
    if (!r)
        return;
    if (r->arena.block)
        sl_arena_free(&r->arena);
    else
        for (int i = 0; i < NCOLS; i++)
            if (is_string_kind(columns[i].kind))
                free(FIELD(r, &columns[i], char *));
    free(r);
}

/* ---- a record from an outcome ------------------------------------------- */

#define FROM(o, c, type) (*(const type *)((const char *)(o) + (c)->from))

/* Appends the JSON array text of the attempt log (nothing when it is empty). */
static void attempts_json(sl_buf_t *b, const sl_outcome_t *o)
{
    for (size_t i = 0; i < o->nattempt_log; i++) {
        const sl_attempt_t *a = &o->attempt_log[i];
        const char *sup = a->supplier ? a->supplier : "";
        sl_buf_append_c(b, i ? ",{\"supplier\":\"" : "[{\"supplier\":\"");
        sl_buf_append_json_str(b, sup, strlen(sup));
        sl_buf_printf(b, "\",\"status\":%d,\"error\":", a->status);
        if (a->error) {
            sl_buf_append_byte(b, '"');
            sl_buf_append_json_str(b, a->error, strlen(a->error));
            sl_buf_append_byte(b, '"');
        } else {
            sl_buf_append_c(b, "null");
        }
        sl_buf_printf(b, ",\"duration_ms\":%.1f}", a->duration_ms);
    }
    if (o->nattempt_log)
        sl_buf_append_byte(b, ']');
}

/* Appends "partial=...; reason=...[; detail]" for an answer that was not
 * COMPLETE (nothing for one that was). */
static void error_text(sl_buf_t *b, const sl_term_result_t *end)
{
    if (end->reason == SL_TERM_COMPLETE)
        return;
    sl_buf_printf(b, "partial=%s; reason=%s", end->partial ? "true" : "false",
                  sl_term_reason_name(end->reason));
    if (end->detail && *end->detail)
        sl_buf_printf(b, "; %s", end->detail);
}

/* The text of a column copied from the outcome (bodies only when kept). */
static const char *copied_text(const sl_outcome_t *o, const column_t *c, int with_bodies)
{
    if (c->from == DERIVED || !is_string_kind(c->kind) || (c->kind == K_BODY && !with_bodies))
        return NULL;
    return FROM(o, c, const char *);
}

/* Every string goes into the record's arena, in one block of exactly their
 * size: two allocations per record (the record and its strings) besides the
 * scratch the derived texts are made in, and a queue of records waiting for
 * the writer holds no more than it must. */
sl_record_t *sl_record_from_outcome(const sl_outcome_t *o, int with_bodies)
{
    sl_record_t *r = sl_record_new();
    if (!r)
        return NULL;
    /* the derived texts, in one scratch buffer: error, then attempt log */
    sl_buf_t derived;
    sl_buf_init(&derived, 0);
    error_text(&derived, &o->end);
    size_t error_len = derived.len;
    attempts_json(&derived, o);
    const char *reason = sl_term_reason_name(o->end.reason);
    size_t need = strlen(reason) + 1 + (error_len ? error_len + 1 : 0) +
                  (derived.len > error_len ? derived.len - error_len + 1 : 0);
    size_t len[NCOLS]; /* each text measured once (a kept body can be large) */
    for (int i = 0; i < NCOLS; i++) {
        const char *s = copied_text(o, &columns[i], with_bodies);
        len[i] = s ? strlen(s) : 0;
        need += s ? len[i] + 1 : 0;
    }
    sl_arena_reserve(&r->arena, need); /* on ENOMEM the copies below fail one by one */
    for (int i = 0; i < NCOLS; i++) {
        const column_t *c = &columns[i];
        if (c->from == DERIVED)
            continue;
        switch (c->kind) {
        case K_TEXT:
        case K_JSON_ARRAY:
        case K_JSON_OBJ:
        case K_BODY: {
            const char *s = copied_text(o, c, with_bodies);
            FIELD(r, c, char *) = s ? sl_arena_strndup(&r->arena, s, len[i]) : NULL;
            break;
        }
        case K_REAL:
        case K_REAL_OPT:
            FIELD(r, c, double) = FROM(o, c, double);
            break;
        case K_INT:
        case K_BOOL:
            FIELD(r, c, int) = FROM(o, c, int);
            break;
        case K_INT64:
        case K_INT64_OPT:
            FIELD(r, c, int64_t) = FROM(o, c, int64_t);
            break;
        }
    }
    r->time = o->end_time - o->duration_ms / 1000.0;
    r->reason = sl_arena_strndup(&r->arena, reason, strlen(reason));
    r->partial = o->end.partial;
    r->expected = o->end.expected;
    if (error_len)
        r->error = sl_arena_strndup(&r->arena, derived.base, error_len);
    if (derived.len > error_len)
        r->attempts_json =
            sl_arena_strndup(&r->arena, derived.base + error_len, derived.len - error_len);
    sl_buf_free(&derived);
    return r;
}

/* ---- connections and schema ---------------------------------------------- */

static int open_db(const char *path, int create, sqlite3 **out)
{
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | (create ? SQLITE_OPEN_CREATE : 0);
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(path, &db, flags, NULL);
    if (rc != SQLITE_OK) {
        fprintf(stderr, "sluice: records: cannot open %s: %s\n", path,
                db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close(db);
        return rc == SQLITE_NOMEM ? SL_ENOMEM : SL_EIO;
    }
    sqlite3_busy_timeout(db, BUSY_TIMEOUT_MS);
    *out = db;
    return 0;
}

static int exec(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        fprintf(stderr, "sluice: records: %s: %s\n", sql, msg ? msg : sqlite3_errstr(rc));
        sqlite3_free(msg);
    }
    return map_sqlite(rc);
}

static const char *sql_type(kind_t k)
{
    switch (k) {
    case K_REAL:
    case K_REAL_OPT:
        return "REAL";
    case K_INT:
    case K_INT64:
    case K_INT64_OPT:
    case K_BOOL:
        return "INTEGER";
    default:
        return "TEXT";
    }
}

/* CREATE TABLE, INSERT and the two SELECT lists, generated from `columns`. */
static int build_sql(sl_records_t *rs, sl_buf_t *create, sl_buf_t *insert)
{
    sl_buf_t list, items;
    int rc = 0;
    sl_buf_init(&list, 0);
    sl_buf_init(&items, 0);
    rc |= sl_buf_append_c(create, "CREATE TABLE IF NOT EXISTS requests(seq INTEGER PRIMARY KEY");
    rc |= sl_buf_append_c(insert, "INSERT INTO requests(");
    for (int i = 0; i < NCOLS; i++) {
        const column_t *c = &columns[i];
        rc |= sl_buf_printf(create, ", %s %s%s", c->col, sql_type(c->kind),
                            i == 0 ? " NOT NULL" : "");
        rc |= sl_buf_printf(insert, "%s%s", i ? ", " : "", c->col);
        rc |= sl_buf_printf(&list, "%s%s", i ? ", " : "", c->col);
        if (i < NCOLS_LIST)
            rc |= sl_buf_printf(&items, "%s%s", i ? ", " : "", c->col);
    }
    rc |= sl_buf_append_c(create, ")");
    rc |= sl_buf_append_c(insert, ") VALUES(");
    for (int i = 0; i < NCOLS; i++) {
        int n = i + 1;
        const char *sep = i ? ", " : "";
        /* Raw JSON is embedded verbatim in responses, so only well-formed
         * text of the right shape is kept. CASE is evaluated lazily, which
         * keeps json_type() from raising on malformed input. */
        if (columns[i].kind == K_JSON_ARRAY || columns[i].kind == K_JSON_OBJ)
            rc |= sl_buf_printf(insert,
                                "%sCASE WHEN json_valid(?%d) THEN CASE WHEN json_type(?%d)='%s' "
                                "THEN ?%d END END",
                                sep, n, n, columns[i].kind == K_JSON_ARRAY ? "array" : "object", n);
        else
            rc |= sl_buf_printf(insert, "%s?%d", sep, n);
    }
    rc |= sl_buf_append_c(insert, ")");
    if (rc == 0 && (!sl_buf_cstr(create) || !sl_buf_cstr(insert) || !sl_buf_cstr(&list) ||
                    !sl_buf_cstr(&items)))
        rc = SL_ENOMEM;
    if (rc) {
        sl_buf_free(&list);
        sl_buf_free(&items);
        return SL_ENOMEM;
    }
    rs->select_list = list.base;
    rs->select_items = items.base;
    return 0;
}

static int prepare(sqlite3 *db, const char *sql, sqlite3_stmt **st)
{
    int rc = sqlite3_prepare_v2(db, sql, -1, st, NULL);
    if (rc != SQLITE_OK)
        fprintf(stderr, "sluice: records: prepare: %s\n", sqlite3_errmsg(db));
    return map_sqlite(rc);
}

/* A history written by an older sluice lacks the columns added since: add
 * them (NULL in the old rows) so the INSERT built from `columns` works. */
static int add_missing_columns(sqlite3 *db)
{
    for (int i = 0; i < NCOLS; i++) {
        sqlite3_stmt *st = NULL;
        int rc = map_sqlite(sqlite3_prepare_v2(
            db, "SELECT 1 FROM pragma_table_info('requests') WHERE name = ?1", -1, &st, NULL));
        if (rc)
            return rc;
        sqlite3_bind_text(st, 1, columns[i].col, -1, SQLITE_STATIC);
        int src = sqlite3_step(st);
        sqlite3_finalize(st);
        if (src == SQLITE_ROW)
            continue;
        if (src != SQLITE_DONE)
            return map_sqlite(src);
        char sql[160];
        snprintf(sql, sizeof sql, "ALTER TABLE requests ADD COLUMN %s %s", columns[i].col,
                 sql_type(columns[i].kind));
        if ((rc = exec(db, sql)) != 0)
            return rc;
    }
    return 0;
}

/* The index GET /_sluice/usage reads (records_usage.c says which columns
 * and why). It starts with (time, seq), so it also serves the listing's
 * ranges and order, and replaces the plain index on time that earlier builds
 * made: dropping that one keeps the writer at two index updates per row. A
 * history from an earlier build gets it here, once (about 0.3 s per
 * 100,000 records), so say so. (An earlier build opening the file again just
 * recreates its own index on time.) */
static int add_usage_index(sqlite3 *db)
{
    sqlite3_stmt *st = NULL;
    int rc = map_sqlite(sqlite3_prepare_v2(
        db,
        "SELECT (SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = "
        "'requests_usage'), (SELECT max(seq) FROM requests)",
        -1, &st, NULL));
    if (rc)
        return rc;
    int src = sqlite3_step(st);
    if (src == SQLITE_ROW && sqlite3_column_int(st, 0) == 0 && sqlite3_column_int64(st, 1) > 0)
        fprintf(stderr, "sluice: records: indexing the history for usage totals (once)\n");
    sqlite3_finalize(st);
    if (src != SQLITE_ROW)
        return map_sqlite(src);
    if ((rc = exec(db, sl__records_usage_index_sql())) != 0)
        return rc;
    return exec(db, "DROP INDEX IF EXISTS requests_time");
}

static int count_rows(sl_records_t *rs, int64_t *out)
{
    int rc = sqlite3_step(rs->count);
    if (rc == SQLITE_ROW)
        *out = sqlite3_column_int64(rs->count, 0);
    sqlite3_reset(rs->count);
    return rc == SQLITE_ROW ? 0 : map_sqlite(rc);
}

static int setup_writer(sl_records_t *rs)
{
    sl_buf_t create, insert;
    int rc;
    sl_buf_init(&create, 0);
    sl_buf_init(&insert, 0);
    if ((rc = open_db(rs->path, 1, &rs->wdb)) != 0)
        goto out;
    if ((rc = build_sql(rs, &create, &insert)) != 0)
        goto out;
    /* History is a log, not a ledger: after a power cut losing the last
     * batch is acceptable, an fsync per commit is not. */
    if ((rc = exec(rs->wdb, "PRAGMA journal_mode=WAL")) != 0 ||
        (rc = exec(rs->wdb, "PRAGMA synchronous=NORMAL")) != 0 ||
        (rc = exec(rs->wdb, create.base)) != 0 || (rc = add_missing_columns(rs->wdb)) != 0 ||
        (rc = exec(rs->wdb, "CREATE INDEX IF NOT EXISTS requests_id ON requests(id)")) != 0 ||
        (rc = add_usage_index(rs->wdb)) != 0)
        goto out;
    if ((rc = prepare(rs->wdb, insert.base, &rs->insert)) != 0 ||
        (rc = prepare(rs->wdb,
                      "DELETE FROM requests WHERE seq IN "
                      "(SELECT seq FROM requests ORDER BY seq LIMIT ?1)",
                      &rs->evict)) != 0 ||
        (rc = prepare(rs->wdb, "SELECT count(*) FROM requests", &rs->count)) != 0)
        goto out;
    rc = count_rows(rs, &rs->rows);
out:
    sl_buf_free(&create);
    sl_buf_free(&insert);
    return rc;
}

/* ---- the writer ---------------------------------------------------------- */

static void log_drop(sl_records_t *rs, size_t n, const char *why)
{
    atomic_fetch_add(&dropped_total, n);
    time_t now = time(NULL);
    if (now != rs->last_drop_log) { /* a full disk must not flood the log */
        rs->last_drop_log = now;
        fprintf(stderr, "sluice: records: dropped %zu record(s): %s (%llu dropped so far)\n", n,
                why, (unsigned long long)sl_records_dropped());
    }
}

static void bind_record(sl_records_t *rs, const sl_record_t *r)
{
    sqlite3_stmt *st = rs->insert;
    for (int i = 0; i < NCOLS; i++) {
        const column_t *c = &columns[i];
        int n = i + 1;
        double d;
        int64_t v;
        switch (c->kind) {
        case K_TEXT:
        case K_JSON_ARRAY:
        case K_JSON_OBJ:
        case K_BODY: {
            const char *s = FIELD(r, c, char *);
            if (s && (c->kind != K_BODY || rs->keep_bodies))
                sqlite3_bind_text(st, n, s, -1, SQLITE_STATIC);
            else
                sqlite3_bind_null(st, n);
            break;
        }
        case K_REAL:
        case K_REAL_OPT:
            d = FIELD(r, c, double);
            if (!isfinite(d) || (c->kind == K_REAL_OPT && d < 0))
                sqlite3_bind_null(st, n);
            else
                sqlite3_bind_double(st, n, d);
            break;
        case K_INT:
            sqlite3_bind_int(st, n, FIELD(r, c, int));
            break;
        case K_BOOL:
            sqlite3_bind_int(st, n, FIELD(r, c, int) != 0);
            break;
        case K_INT64:
        case K_INT64_OPT:
            v = FIELD(r, c, int64_t);
            if (c->kind == K_INT64_OPT && v < 0)
                sqlite3_bind_null(st, n);
            else
                sqlite3_bind_int64(st, n, v);
            break;
        }
    }
}

/* Deletes the oldest rows past max_records, inside the open transaction. */
static int evict(sl_records_t *rs)
{
    int rc;
    if (rs->max_records <= 0)
        return 0;
    if (atomic_exchange(&rs->recount, 0) && (rc = count_rows(rs, &rs->rows)) != 0)
        return rc;
    if (rs->rows <= rs->max_records)
        return 0;
    sqlite3_bind_int64(rs->evict, 1, rs->rows - rs->max_records);
    rc = sqlite3_step(rs->evict);
    sqlite3_reset(rs->evict);
    if (rc != SQLITE_DONE)
        return map_sqlite(rc);
    rs->rows -= sqlite3_changes(rs->wdb);
    return 0;
}

/* Writes one batch in one transaction and frees the records. Failures drop
 * the batch: retrying would let a full disk grow the queue without bound. */
static void write_batch(sl_records_t *rs, sl_record_t **batch, size_t n)
{
    int64_t rows_before = rs->rows;
    size_t bad = 0;
    int rc = sqlite3_exec(rs->wdb, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    for (size_t i = 0; rc == SQLITE_OK && i < n; i++) {
        bind_record(rs, batch[i]);
        rc = sqlite3_step(rs->insert);
        sqlite3_reset(rs->insert);
        sqlite3_clear_bindings(rs->insert);
        if (rc == SQLITE_DONE) {
            rs->rows++;
            rc = SQLITE_OK;
        } else if (rc == SQLITE_TOOBIG || rc == SQLITE_CONSTRAINT) {
            bad++; /* this record alone cannot be stored; the rest can */
            rc = SQLITE_OK;
        }
    }
    if (rc == SQLITE_OK && evict(rs) != 0 && (rc = sqlite3_errcode(rs->wdb)) == SQLITE_OK)
        rc = SQLITE_ERROR;
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(rs->wdb, "COMMIT", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        const char *why = sqlite3_errmsg(rs->wdb);
        char msg[256];
        snprintf(msg, sizeof msg, "%s", why ? why : sqlite3_errstr(rc));
        if (!sqlite3_get_autocommit(rs->wdb))
            sqlite3_exec(rs->wdb, "ROLLBACK", NULL, NULL, NULL);
        rs->rows = rows_before;
        log_drop(rs, n, msg);
    } else if (bad) {
        log_drop(rs, bad, "record too big or invalid");
    }
    for (size_t i = 0; i < n; i++)
        sl_record_free(batch[i]);
}

static void deadline_after(struct timespec *ts, int ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static void *writer_main(void *arg)
{
    sl_records_t *rs = arg;
    sl_record_t *batch[BATCH_MAX];
    pthread_mutex_lock(&rs->mu);
    for (;;) {
        while (rs->qlen == 0 && !rs->stopping)
            pthread_cond_wait(&rs->wake, &rs->mu);
        if (rs->qlen == 0)
            break; /* stopping and drained */
        /* Let a batch build up: one transaction per record would make the
         * fsync-free WAL commit, not the insert, the bottleneck. */
        struct timespec deadline;
        deadline_after(&deadline, BATCH_WAIT_MS);
        while (rs->qlen < BATCH_MAX && !rs->stopping && rs->flush_waiters == 0)
            if (pthread_cond_timedwait(&rs->wake, &rs->mu, &deadline) == ETIMEDOUT)
                break;
        size_t n = 0;
        while (rs->qlen && n < BATCH_MAX) {
            batch[n++] = rs->queue[rs->qhead];
            rs->qhead = (rs->qhead + 1) % QUEUE_MAX;
            rs->qlen--;
        }
        pthread_mutex_unlock(&rs->mu);
        write_batch(rs, batch, n);
        pthread_mutex_lock(&rs->mu);
        rs->completed += n;
        pthread_cond_broadcast(&rs->done);
    }
    pthread_mutex_unlock(&rs->mu);
    return NULL;
}

/* ---- open / close / submit / flush --------------------------------------- */

static void destroy(sl_records_t *rs)
{
    sqlite3_finalize(rs->insert);
    sqlite3_finalize(rs->evict);
    sqlite3_finalize(rs->count);
    sqlite3_close(rs->wdb);
    for (int i = 0; i < rs->npool; i++)
        sqlite3_close(rs->pool[i]);
    pthread_mutex_destroy(&rs->mu);
    pthread_mutex_destroy(&rs->pool_mu);
    pthread_cond_destroy(&rs->wake);
    pthread_cond_destroy(&rs->done);
    free(rs->select_list);
    free(rs->select_items);
    free(rs->queue);
    free(rs->path);
    free(rs);
}

int sl_records_open(sl_records_t **out, const char *path, int max_records, int keep_bodies)
{
    if (!out || !path || !*path)
        return SL_EINVAL;
    sl_records_t *rs = calloc(1, sizeof *rs);
    if (!rs)
        return SL_ENOMEM;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&rs->mu, NULL);
    pthread_mutex_init(&rs->pool_mu, NULL);
    pthread_cond_init(&rs->wake, &ca);
    pthread_cond_init(&rs->done, &ca);
    pthread_condattr_destroy(&ca);
    rs->max_records = max_records;
    rs->keep_bodies = keep_bodies;
    rs->path = strdup(path);
    rs->queue = malloc(QUEUE_MAX * sizeof *rs->queue);
    int rc = (!rs->path || !rs->queue) ? SL_ENOMEM : setup_writer(rs);
    if (rc == 0 && pthread_create(&rs->writer, NULL, writer_main, rs) != 0)
        rc = SL_ENOMEM;
    if (rc) {
        destroy(rs);
        return rc;
    }
    *out = rs;
    return 0;
}

void sl_records_close(sl_records_t *rs)
{
    if (!rs)
        return;
    pthread_mutex_lock(&rs->mu);
    rs->stopping = 1;
    pthread_cond_signal(&rs->wake);
    pthread_mutex_unlock(&rs->mu);
    pthread_join(rs->writer, NULL);
    destroy(rs);
}


int sl_records_submit(sl_records_t *rs, sl_record_t *rec)
{
    if (!rs || !rec || !rec->id) {
        sl_record_free(rec);
        return SL_EINVAL;
    }
    if (!rs->keep_bodies && !rec->arena.block) { /* do not queue bodies for nothing (a
                                                   * record from an outcome has none) */
        free(rec->request_body);
        free(rec->response_body);
        rec->request_body = rec->response_body = NULL;
    }
    pthread_mutex_lock(&rs->mu);
    if (rs->qlen == QUEUE_MAX) {
        pthread_mutex_unlock(&rs->mu);
        sl_record_free(rec);
        atomic_fetch_add(&dropped_total, 1);
        return SL_ELIMIT;
    }
    rs->queue[(rs->qhead + rs->qlen) % QUEUE_MAX] = rec;
    rs->qlen++;
    rs->submitted++;
    /* Wake the writer only when it can act: it is idle (first record) or a
     * full batch is ready. Signalling per record would cost a futex call
     * per request under load. */
    if (rs->qlen == 1 || rs->qlen == BATCH_MAX)
        pthread_cond_signal(&rs->wake);
    pthread_mutex_unlock(&rs->mu);
    return 0;
}

int sl_records_submit_outcome(sl_records_t *rs, const sl_outcome_t *o)
{
    return sl_records_submit(rs, sl_record_from_outcome(o, rs && rs->keep_bodies));
}

int sl_records_flush(sl_records_t *rs, int timeout_ms)
{
    if (!rs)
        return SL_EINVAL;
    struct timespec deadline;
    if (timeout_ms >= 0)
        deadline_after(&deadline, timeout_ms);
    int rc = 0;
    pthread_mutex_lock(&rs->mu);
    uint64_t target = rs->submitted;
    rs->flush_waiters++;
    pthread_cond_signal(&rs->wake);
    while (rs->completed < target && rc == 0) {
        if (timeout_ms < 0)
            pthread_cond_wait(&rs->done, &rs->mu);
        else if (pthread_cond_timedwait(&rs->done, &rs->mu, &deadline) == ETIMEDOUT)
            rc = rs->completed < target ? SL_ETIMEDOUT : 0;
    }
    rs->flush_waiters--;
    pthread_mutex_unlock(&rs->mu);
    return rc;
}

/* ---- readers ------------------------------------------------------------- */

static int reader_acquire(sl_records_t *rs, sqlite3 **db)
{
    pthread_mutex_lock(&rs->pool_mu);
    *db = rs->npool ? rs->pool[--rs->npool] : NULL;
    pthread_mutex_unlock(&rs->pool_mu);
    return *db ? 0 : open_db(rs->path, 0, db);
}

static void reader_release(sl_records_t *rs, sqlite3 *db)
{
    pthread_mutex_lock(&rs->pool_mu);
    if (rs->npool < POOL_MAX) {
        rs->pool[rs->npool++] = db;
        db = NULL;
    }
    pthread_mutex_unlock(&rs->pool_mu);
    sqlite3_close(db); /* NULL is a no-op */
}

/* What records_usage.c borrows (records_int.h). */
int sl__records_reader_acquire(sl_records_t *rs, sqlite3 **db)
{
    return reader_acquire(rs, db);
}

void sl__records_reader_release(sl_records_t *rs, sqlite3 *db)
{
    reader_release(rs, db);
}

int sl__records_map_sqlite(int rc)
{
    return map_sqlite(rc);
}

#define CHECK(expr)                                                                                \
    do {                                                                                           \
        int rc_ = (expr);                                                                          \
        if (rc_ != 0)                                                                              \
            return rc_;                                                                            \
    } while (0)

static int emit_value(sl_buf_t *out, sqlite3_stmt *st, int i)
{
    const column_t *c = &columns[i];
    if (sqlite3_column_type(st, i) == SQLITE_NULL)
        return sl_buf_append_c(out, "null");
    switch (c->kind) {
    case K_REAL:
    case K_REAL_OPT:
        return sl_buf_printf(out, c->fmt, sqlite3_column_double(st, i));
    case K_INT:
    case K_INT64:
    case K_INT64_OPT:
        return sl_buf_printf(out, "%lld", (long long)sqlite3_column_int64(st, i));
    case K_BOOL:
        return sl_buf_append_c(out, sqlite3_column_int(st, i) ? "true" : "false");
    case K_JSON_ARRAY:
    default:
        break;
    }
    /* text: column_text() must run before column_bytes() (SQLite's rule) */
    const char *s = (const char *)sqlite3_column_text(st, i);
    size_t n = (size_t)sqlite3_column_bytes(st, i);
    if (c->kind == K_JSON_ARRAY || c->kind == K_JSON_OBJ)
        return sl_buf_append(out, s, n); /* validated on insert */
    CHECK(sl_buf_append_byte(out, '"'));
    CHECK(sl_buf_append_json_str(out, s, n));
    return sl_buf_append_byte(out, '"');
}

/* One row as a JSON object; the first `ncols` columns of `columns`. */
static int emit_record(sl_buf_t *out, sqlite3_stmt *st, int ncols)
{
    int in_usage = 0, first = 1;
    CHECK(sl_buf_append_byte(out, '{'));
    for (int i = 0; i < ncols; i++) {
        const column_t *c = &columns[i];
        if (c->kind == K_BODY && sqlite3_column_type(st, i) == SQLITE_NULL)
            continue; /* bodies appear only when stored */
        if (c->usage != in_usage) {
            CHECK(sl_buf_append_c(out, in_usage ? "}" : ",\"usage\":{"));
            if (!in_usage)
                first = 1;
            in_usage = c->usage;
        }
        CHECK(sl_buf_printf(out, "%s\"%s\":", first ? "" : ",", c->json));
        CHECK(emit_value(out, st, i));
        first = 0;
    }
    if (in_usage)
        CHECK(sl_buf_append_byte(out, '}'));
    return sl_buf_append_byte(out, '}');
}

/* `s` as a LIKE pattern matching it as a substring, with \ as escape. */
static char *like_pattern(const char *s)
{
    size_t n = strlen(s);
    char *p = malloc(2 * n + 3), *w = p;
    if (!p)
        return NULL;
    *w++ = '%';
    for (; *s; s++) {
        if (*s == '%' || *s == '_' || *s == '\\')
            *w++ = '\\';
        *w++ = *s;
    }
    *w++ = '%';
    *w = '\0';
    return p;
}

static void bind_named_text(sqlite3_stmt *st, const char *name, const char *v)
{
    int i = sqlite3_bind_parameter_index(st, name);
    if (i > 0)
        sqlite3_bind_text(st, i, v, -1, SQLITE_TRANSIENT);
}

static void bind_filter(sqlite3_stmt *st, const sl_records_filter_t *f, const char *pattern)
{
    int i;
    bind_named_text(st, ":client", f->client);
    bind_named_text(st, ":search", pattern);
    bind_named_text(st, ":session", f->session);
    bind_named_text(st, ":service", f->service);
    bind_named_text(st, ":supplier", f->supplier);
    bind_named_text(st, ":model", f->model);
    if ((i = sqlite3_bind_parameter_index(st, ":until")) > 0)
        sqlite3_bind_double(st, i, f->until);
    if ((i = sqlite3_bind_parameter_index(st, ":status")) > 0)
        sqlite3_bind_int(st, i, f->status);
    if ((i = sqlite3_bind_parameter_index(st, ":since")) > 0)
        sqlite3_bind_double(st, i, f->since);
}

static int build_where(sl_buf_t *w, const sl_records_filter_t *f)
{
    int rc = sl_buf_append_c(w, " WHERE 1");
    if (f->client)
        rc |= sl_buf_append_c(w, " AND client = :client");
    if (f->status >= 100)
        rc |= sl_buf_append_c(w, " AND status = :status");
    else if (f->status > 0) /* a class: 5 means 5xx, so "status=5xx" parsed by atoi works */
        rc |= sl_buf_append_c(w, " AND status >= :status * 100 AND status < :status * 100 + 100");
    if (f->since > 0)
        rc |= sl_buf_append_c(w, " AND time >= :since");
    /* extra_json is only ever JSON text written by the log hook (or NULL) */
    if (f->session)
        rc |= sl_buf_append_c(w, " AND json_extract(extra_json, '$.session') = :session");
    if (f->until > 0)
        rc |= sl_buf_append_c(w, " AND time < :until");
    if (f->service)
        rc |= sl_buf_append_c(w, " AND service = :service");
    if (f->supplier)
        rc |= sl_buf_append_c(w, " AND supplier = :supplier");
    if (f->model)
        rc |= sl_buf_append_c(w, " AND (model_in = :model OR model_out = :model)");
    if (f->partial)
        rc |= sl_buf_append_c(w, " AND partial = 1");
    if (f->search && *f->search) {
        static const char *fields[] = {"id", "path", "model_in", "model_out", "supplier", "error"};
        rc |= sl_buf_append_c(w, " AND (");
        for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
            rc |= sl_buf_printf(w, "%s%s LIKE :search ESCAPE '\\'", i ? " OR " : "", fields[i]);
        rc |= sl_buf_append_c(w, ")");
    }
    return rc ? SL_ENOMEM : 0;
}

int sl__records_list_sql(const char *select_items, const sl_records_filter_t *f, sl_buf_t *sql)
{
    int rc = sl_buf_printf(sql, "SELECT %s FROM requests", select_items);
    rc = rc ? rc : build_where(sql, f);
    rc = rc ? rc : sl_buf_append_c(sql, " ORDER BY time DESC, seq DESC LIMIT :limit OFFSET :offset");
    return rc ? rc : (sl_buf_cstr(sql) ? 0 : SL_ENOMEM);
}

static int run_query(sqlite3 *db, const char *select_items, const sl_records_filter_t *f,
                     sl_buf_t *out)
{
    sl_buf_t sql;
    sqlite3_stmt *st = NULL;
    char *pattern = NULL;
    int rc, src;
    int limit = f->limit <= 0 ? QUERY_LIMIT_DEFAULT : f->limit;
    if (limit > QUERY_LIMIT_MAX)
        limit = QUERY_LIMIT_MAX;
    sl_buf_init(&sql, 0);
    if (f->search && *f->search && !(pattern = like_pattern(f->search)))
        return SL_ENOMEM;
    rc = sl_buf_append_c(&sql, "SELECT count(*) FROM requests");
    rc = rc ? rc : build_where(&sql, f);
    rc = rc ? rc : (sl_buf_cstr(&sql) ? 0 : SL_ENOMEM);
    if (rc || (rc = map_sqlite(sqlite3_prepare_v2(db, sql.base, -1, &st, NULL))) != 0)
        goto out;
    bind_filter(st, f, pattern);
    if ((src = sqlite3_step(st)) != SQLITE_ROW) {
        rc = map_sqlite(src);
        goto out;
    }
    rc = sl_buf_printf(out, "{\"total\":%lld,\"items\":[", (long long)sqlite3_column_int64(st, 0));
    sqlite3_finalize(st);
    st = NULL;
    sl_buf_reset(&sql);
    rc = rc ? rc : sl__records_list_sql(select_items, f, &sql);
    if (rc || (rc = map_sqlite(sqlite3_prepare_v2(db, sql.base, -1, &st, NULL))) != 0)
        goto out;
    bind_filter(st, f, pattern);
    sqlite3_bind_int(st, sqlite3_bind_parameter_index(st, ":limit"), limit);
    sqlite3_bind_int(st, sqlite3_bind_parameter_index(st, ":offset"),
                     f->offset > 0 ? f->offset : 0);
    for (int n = 0; (src = sqlite3_step(st)) == SQLITE_ROW; n++) {
        if ((n && (rc = sl_buf_append_byte(out, ',')) != 0) ||
            (rc = emit_record(out, st, NCOLS_LIST)) != 0)
            goto out;
    }
    rc = src == SQLITE_DONE ? sl_buf_append_c(out, "]}") : map_sqlite(src);
out:
    sqlite3_finalize(st);
    sl_buf_free(&sql);
    free(pattern);
    return rc;
}

int sl_records_query(sl_records_t *rs, const sl_records_filter_t *f, sl_buf_t *out)
{
    static const sl_records_filter_t none;
    sqlite3 *db;
    if (!rs || !out)
        return SL_EINVAL;
    CHECK(reader_acquire(rs, &db));
    size_t mark = out->len;
    /* One read transaction, so total and items describe the same snapshot. */
    int rc = map_sqlite(sqlite3_exec(db, "BEGIN", NULL, NULL, NULL));
    if (rc == 0) {
        rc = run_query(db, rs->select_items, f ? f : &none, out);
        sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    }
    if (rc)
        out->len = mark; /* never leave half a document behind */
    reader_release(rs, db);
    return rc;
}

int sl_records_get(sl_records_t *rs, const char *id, sl_buf_t *out)
{
    sqlite3 *db;
    sqlite3_stmt *st = NULL;
    sl_buf_t sql;
    if (!rs || !id || !out)
        return SL_EINVAL;
    CHECK(reader_acquire(rs, &db));
    sl_buf_init(&sql, 0);
    size_t mark = out->len;
    int rc = sl_buf_printf(&sql, "SELECT %s FROM requests WHERE id = ?1 ORDER BY seq DESC LIMIT 1",
                           rs->select_list);
    rc = rc ? rc : (sl_buf_cstr(&sql) ? 0 : SL_ENOMEM);
    if (rc == 0 && (rc = map_sqlite(sqlite3_prepare_v2(db, sql.base, -1, &st, NULL))) == 0) {
        sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
        int src = sqlite3_step(st);
        if (src == SQLITE_ROW)
            rc = emit_record(out, st, NCOLS);
        else
            rc = src == SQLITE_DONE ? SL_ENOTFOUND : map_sqlite(src);
    }
    if (rc)
        out->len = mark;
    sqlite3_finalize(st);
    sl_buf_free(&sql);
    reader_release(rs, db);
    return rc;
}

int sl_records_delete(sl_records_t *rs, const char *id)
{
    sqlite3 *db;
    sqlite3_stmt *st = NULL;
    if (!rs || !id)
        return SL_EINVAL;
    CHECK(reader_acquire(rs, &db));
    int rc =
        map_sqlite(sqlite3_prepare_v2(db, "DELETE FROM requests WHERE id = ?1", -1, &st, NULL));
    if (rc == 0) {
        sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
        int src = sqlite3_step(st);
        if (src != SQLITE_DONE)
            rc = map_sqlite(src);
        else if (sqlite3_changes(db) == 0)
            rc = SL_ENOTFOUND;
        else
            atomic_store(&rs->recount, 1); /* the writer's row count is now high */
    }
    sqlite3_finalize(st);
    reader_release(rs, db);
    return rc;
}

/* ---- the live feed ------------------------------------------------------- */

int sl_records_feed(sl_records_t *rs, int64_t *after_seq, int limit, sl_records_each_cb each,
                    void *arg)
{
    sqlite3 *db;
    sqlite3_stmt *st = NULL;
    sl_buf_t sql, rec;
    if (!rs || !after_seq || !each)
        return SL_EINVAL;
    CHECK(reader_acquire(rs, &db));
    sl_buf_init(&sql, 0);
    sl_buf_init(&rec, 0);
    int rc, src;
    if (*after_seq < 0) { /* a new feed starts after what is already stored */
        rc = map_sqlite(
            sqlite3_prepare_v2(db, "SELECT coalesce(max(seq), 0) FROM requests", -1, &st, NULL));
        if (rc == 0 && (src = sqlite3_step(st)) == SQLITE_ROW)
            *after_seq = sqlite3_column_int64(st, 0);
        else if (rc == 0)
            rc = map_sqlite(src);
        goto out;
    }
    rc = sl_buf_printf(&sql, "SELECT %s, seq FROM requests WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                       rs->select_items);
    rc = rc ? rc : (sl_buf_cstr(&sql) ? 0 : SL_ENOMEM);
    if (rc || (rc = map_sqlite(sqlite3_prepare_v2(db, sql.base, -1, &st, NULL))) != 0)
        goto out;
    sqlite3_bind_int64(st, 1, *after_seq);
    sqlite3_bind_int(st, 2, limit > 0 ? limit : QUERY_LIMIT_DEFAULT);
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        sl_buf_reset(&rec);
        if ((rc = emit_record(&rec, st, NCOLS_LIST)) != 0)
            goto out;
        *after_seq = sqlite3_column_int64(st, NCOLS_LIST);
        each(arg, *after_seq, rec.base, rec.len);
    }
    rc = src == SQLITE_DONE ? 0 : map_sqlite(src);
out:
    sqlite3_finalize(st);
    sl_buf_free(&sql);
    sl_buf_free(&rec);
    reader_release(rs, db);
    return rc;
}
