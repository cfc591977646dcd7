/*
 * test_records.c — the request history: what an operator reading
 * /_sluice/requests would notice. Records go in through the public API and
 * come out as JSON, which is checked with SQLite's own JSON functions
 * (json_valid / json_extract on an in-memory database), so a malformed
 * document or a wrong value fails the test rather than a string compare.
 */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "error.h"
#include "records.h"
#include "records_int.h"
#include "test_helpers.h"

static char tmpdir[] = "/tmp/sluice-test-records-XXXXXX";
static sqlite3 *jdb; /* in-memory, for JSON checks */
static int dbseq;

/* A fresh database path per test, so tests cannot lean on each other. */
static const char *db_path(void)
{
    static char path[256];
    snprintf(path, sizeof path, "%s/h%d.db", tmpdir, ++dbseq);
    return path;
}

/* ---- JSON through SQLite ------------------------------------------------ */

static int json_valid(const char *doc)
{
    sqlite3_stmt *st;
    sqlite3_prepare_v2(jdb, "SELECT json_valid(?1)", -1, &st, NULL);
    sqlite3_bind_text(st, 1, doc, -1, SQLITE_STATIC);
    int ok = sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0) == 1;
    sqlite3_finalize(st);
    return ok;
}

/* json_extract(doc, path) as text ("" for JSON null / missing: see jnull), in
 * a static buffer. */
static const char *jget(const char *doc, const char *path)
{
    static char out[4][4096];
    static int slot;
    char *o = out[slot++ % 4];
    sqlite3_stmt *st;
    o[0] = '\0';
    sqlite3_prepare_v2(jdb, "SELECT json_extract(?1, ?2)", -1, &st, NULL);
    sqlite3_bind_text(st, 1, doc, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, path, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
        snprintf(o, 4096, "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    return o;
}

/* The JSON type at path: "null", "integer", "real", "text", "true",
 * "object", ..., or "" when the path does not exist. */
static const char *jtype(const char *doc, const char *path)
{
    static char out[4][32];
    static int slot;
    char *o = out[slot++ % 4];
    sqlite3_stmt *st;
    o[0] = '\0';
    sqlite3_prepare_v2(jdb, "SELECT json_type(?1, ?2)", -1, &st, NULL);
    sqlite3_bind_text(st, 1, doc, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, path, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
        snprintf(o, 32, "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    return o;
}

static long long jint(const char *doc, const char *path)
{
    return atoll(jget(doc, path));
}

/* ---- helpers ------------------------------------------------------------- */

static char *sdup(const char *s)
{
    return s ? strdup(s) : NULL;
}

static sl_record_t *make(const char *id, double time, const char *client, int status,
                         const char *path)
{
    sl_record_t *r = sl_record_new();
    r->id = sdup(id);
    r->time = time;
    r->client = sdup(client);
    r->status = status;
    r->path = sdup(path);
    r->service = sdup("anthropic");
    r->method = sdup("POST");
    r->route = sdup("default");
    r->supplier = sdup("acme");
    r->model_in = sdup("claude-sonnet");
    r->model_out = sdup("acme-large");
    r->reason = sdup("COMPLETE");
    r->duration_ms = 1234.5;
    r->bytes_in = 100;
    r->bytes_out = 2000;
    r->attempts = 1;
    return r;
}

/* Runs a query into a NUL-terminated heap string (caller frees). */
static char *query(sl_records_t *rs, const sl_records_filter_t *f, int *rc)
{
    sl_buf_t b;
    sl_buf_init(&b, 0);
    *rc = sl_records_query(rs, f, &b);
    sl_buf_cstr(&b);
    return b.base;
}

static char *get(sl_records_t *rs, const char *id, int *rc)
{
    sl_buf_t b;
    sl_buf_init(&b, 0);
    *rc = sl_records_get(rs, id, &b);
    sl_buf_cstr(&b);
    return b.base;
}

static int total(sl_records_t *rs, const sl_records_filter_t *f)
{
    int rc;
    char *doc = query(rs, f, &rc);
    int n = rc == 0 ? (int)jint(doc, "$.total") : -1;
    free(doc);
    return n;
}

/* ---- tests --------------------------------------------------------------- */

static void test_roundtrip(void)
{
    sl_records_t *rs;
    int rc;
    CHECK_EQ_INT(sl_records_open(&rs, db_path(), 100, 0), 0);

    sl_record_t *r = make("req-1", 1700000000.25, "claude-code", 200, "/v1/messages");
    r->ttfb_ms = 87.5;
    r->input_tokens = 1200;
    r->output_tokens = 340;
    r->cache_read_tokens = 1000;
    /* cache_write_tokens stays unknown */
    r->partial = 1;
    r->reason = (free(r->reason), sdup("UPSTREAM_EOF_EARLY"));
    r->error = sdup("partial=true; reason=UPSTREAM_EOF_EARLY; upstream closed after 2 events");
    r->attempts = 2;
    r->attempts_json =
        sdup("[{\"supplier\":\"a\",\"status\":503,\"error\":null,\"duration_ms\":12},"
             "{\"supplier\":\"acme\",\"status\":200,\"error\":null,\"duration_ms\":40}]");
    r->extra_json = sdup("{\"tenant\":\"t1\",\"n\":3}");
    r->request_body = sdup("{\"secret\":\"should not be kept\"}");
    CHECK_EQ_INT(sl_records_submit(rs, r), 0);
    CHECK_EQ_INT(sl_records_submit(rs, make("req-2", 1700000001, "codex", 429, "/v1/responses")),
                 0);
    CHECK_EQ_INT(sl_records_submit(rs, make("req-0", 1699999999, "codex", 200, "/v1/chat")), 0);
    CHECK_EQ_INT(sl_records_flush(rs, 5000), 0);

    char *doc = query(rs, NULL, &rc);
    CHECK_EQ_INT(rc, 0);
    CHECK(json_valid(doc));
    CHECK_EQ_INT(jint(doc, "$.total"), 3);
    /* newest first, by request start time (not by submission order) */
    CHECK_EQ_STR(jget(doc, "$.items[0].id"), "req-2");
    CHECK_EQ_STR(jget(doc, "$.items[1].id"), "req-1");
    CHECK_EQ_STR(jget(doc, "$.items[2].id"), "req-0");
    CHECK_EQ_STR(jtype(doc, "$.items[1].request_body"), ""); /* never in lists */
    free(doc);

    doc = get(rs, "req-1", &rc);
    CHECK_EQ_INT(rc, 0);
    CHECK(json_valid(doc));
    CHECK_EQ_STR(jget(doc, "$.client"), "claude-code");
    CHECK_EQ_STR(jget(doc, "$.time"), "1700000000.25");
    CHECK_EQ_STR(jtype(doc, "$.status"), "integer");
    CHECK_EQ_INT(jint(doc, "$.status"), 200);
    CHECK_EQ_STR(jget(doc, "$.duration_ms"), "1234.5");
    CHECK_EQ_STR(jget(doc, "$.ttfb_ms"), "87.5");
    CHECK_EQ_INT(jint(doc, "$.bytes_out"), 2000);
    CHECK_EQ_INT(jint(doc, "$.usage.input_tokens"), 1200);
    CHECK_EQ_INT(jint(doc, "$.usage.output_tokens"), 340);
    CHECK_EQ_INT(jint(doc, "$.usage.cache_read_tokens"), 1000);
    CHECK_EQ_STR(jtype(doc, "$.usage.cache_write_tokens"), "null");
    CHECK_EQ_STR(jget(doc, "$.reason"), "UPSTREAM_EOF_EARLY");
    CHECK_EQ_STR(jtype(doc, "$.partial"), "true");
    CHECK_EQ_STR(jtype(doc, "$.expected"), "false");
    CHECK_EQ_STR(jget(doc, "$.error"),
                 "partial=true; reason=UPSTREAM_EOF_EARLY; upstream closed after 2 events");
    CHECK_EQ_INT(jint(doc, "$.attempts"), 2);
    CHECK_EQ_STR(jget(doc, "$.attempt_log[0].supplier"), "a");
    CHECK_EQ_INT(jint(doc, "$.attempt_log[0].status"), 503);
    CHECK_EQ_STR(jget(doc, "$.extra.tenant"), "t1");
    CHECK_EQ_STR(jtype(doc, "$.request_body"), ""); /* bodies disabled: not stored */
    free(doc);

    /* defaults of sl_record_new(): unknowns are null, not 0 or -1 */
    doc = get(rs, "req-2", &rc);
    CHECK_EQ_STR(jtype(doc, "$.ttfb_ms"), "null");
    CHECK_EQ_STR(jtype(doc, "$.usage.input_tokens"), "null");
    CHECK_EQ_STR(jtype(doc, "$.error"), "null");
    CHECK_EQ_STR(jtype(doc, "$.attempt_log"), "null");
    free(doc);

    CHECK_EQ_INT(sl_records_delete(rs, "req-1"), 0);
    doc = get(rs, "req-1", &rc);
    CHECK_EQ_INT(rc, SL_ENOTFOUND);
    CHECK_EQ_INT(strlen(doc ? doc : ""), 0); /* nothing appended on failure */
    free(doc);
    CHECK_EQ_INT(sl_records_delete(rs, "req-1"), SL_ENOTFOUND);
    CHECK_EQ_INT(total(rs, NULL), 2);
    sl_records_close(rs);
}

/* The record of a finished request, filled from its outcome through the
 * column table: every copied field, every derived one. */
static void test_record_from_outcome(void)
{
    static const sl_attempt_t log[] = {{"a", 503, NULL, 12.5},
                                       {"acme\"q", 0, "UPSTREAM_RESET", 40}};
    sl_outcome_t o = {
        .id = "req-o",
        .end_time = 1700000010.5,
        .peer = "127.0.0.1:5555",
        .method = "POST",
        .path = "/v1/messages?key=REDACTED",
        .names = {"claude-code", "claude", "default", "acme", "claude-x", "acme-large"},
        .planned = {"p-client", "p-service", "p-route", "p-supplier", "p-in", "p-out"},
        .status = 200,
        .upstream_status = 200,
        .duration_ms = 2500,
        .ttfb_ms = 87.5,
        .bytes_in = 100,
        .bytes_out = 2000,
        .end = {SL_TERM_UPSTREAM_EOF_EARLY, false, true, "upstream closed early"},
        .input_tokens = 1200,
        .output_tokens = -1,
        .cache_read_tokens = 5,
        .cache_write_tokens = -1,
        .extra_json = "{\"tenant\":\"t1\"}",
        .request_body = "{\"a\":1}",
        .response_body = NULL,
        .attempts = 2,
        .attempt_log = log,
        .nattempt_log = 2,
    };
    sl_record_t *r = sl_record_from_outcome(&o, 1);
    CHECK(r != NULL);
    if (!r)
        return;
    CHECK_EQ_STR(r->id, "req-o");
    CHECK_EQ_DBL(r->time, 1700000008.0);    /* the start: end - duration */
    CHECK_EQ_STR(r->client, "claude-code"); /* the names, not the planned ones */
    CHECK_EQ_STR(r->service, "claude");
    CHECK_EQ_STR(r->route, "default");
    CHECK_EQ_STR(r->supplier, "acme");
    CHECK_EQ_STR(r->model_in, "claude-x");
    CHECK_EQ_STR(r->model_out, "acme-large");
    CHECK_EQ_STR(r->method, "POST");
    CHECK_EQ_STR(r->path, "/v1/messages?key=REDACTED");
    CHECK_EQ_INT(r->status, 200);
    CHECK_EQ_DBL(r->duration_ms, 2500);
    CHECK_EQ_DBL(r->ttfb_ms, 87.5);
    CHECK_EQ_INT(r->bytes_in, 100);
    CHECK_EQ_INT(r->bytes_out, 2000);
    CHECK_EQ_INT(r->input_tokens, 1200);
    CHECK_EQ_INT(r->output_tokens, -1);
    CHECK_EQ_INT(r->cache_read_tokens, 5);
    CHECK_EQ_INT(r->cache_write_tokens, -1);
    CHECK_EQ_STR(r->reason, "UPSTREAM_EOF_EARLY");
    CHECK_EQ_INT(r->partial, 1);
    CHECK_EQ_INT(r->expected, 0);
    CHECK_EQ_STR(r->error, "partial=true; reason=UPSTREAM_EOF_EARLY; upstream closed early");
    CHECK_EQ_INT(r->attempts, 2);
    CHECK_EQ_STR(r->attempts_json,
                 "[{\"supplier\":\"a\",\"status\":503,\"error\":null,\"duration_ms\":12.5},"
                 "{\"supplier\":\"acme\\\"q\",\"status\":0,\"error\":\"UPSTREAM_RESET\","
                 "\"duration_ms\":40.0}]");
    CHECK(json_valid(r->attempts_json));
    CHECK_EQ_STR(r->extra_json, "{\"tenant\":\"t1\"}");
    CHECK_EQ_STR(r->request_body, "{\"a\":1}");
    CHECK(r->response_body == NULL);
    CHECK(r->id != o.id); /* copies, not views */
    sl_record_free(r);

    /* A whole answer: no error text; no attempts, no attempt log; unknowns stay unknown. */
    sl_outcome_t c = {.id = "req-c",
                      .end = {SL_TERM_COMPLETE, false, false, "complete"},
                      .ttfb_ms = -1,
                      .input_tokens = -1,
                      .output_tokens = -1,
                      .cache_read_tokens = -1,
                      .cache_write_tokens = -1};
    r = sl_record_from_outcome(&c, 1);
    CHECK(r != NULL);
    if (!r)
        return;
    CHECK_EQ_STR(r->reason, "COMPLETE");
    CHECK(r->error == NULL);
    CHECK(r->attempts_json == NULL);
    CHECK(r->client == NULL);
    CHECK_EQ_DBL(r->ttfb_ms, -1);
    sl_record_free(r);
}

static void test_bodies(void)
{
    sl_records_t *rs;
    int rc;
    CHECK_EQ_INT(sl_records_open(&rs, db_path(), 0, 1), 0);
    sl_record_t *r = make("b1", 1, "c", 200, "/v1/messages");
    r->request_body = sdup("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}");
    r->response_body = sdup("event: message_stop\ndata: {}\n\n");
    sl_records_submit(rs, r);
    sl_records_submit(rs, make("b2", 2, "c", 200, "/v1/messages"));
    sl_records_flush(rs, 5000);
    char *doc = get(rs, "b1", &rc);
    CHECK(json_valid(doc));
    CHECK_EQ_STR(jget(doc, "$.request_body"),
                 "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}");
    CHECK_EQ_STR(jget(doc, "$.response_body"), "event: message_stop\ndata: {}\n\n");
    free(doc);
    doc = get(rs, "b2", &rc); /* a record without bodies has no body fields */
    CHECK_EQ_STR(jtype(doc, "$.request_body"), "");
    free(doc);
    doc = query(rs, NULL, &rc);
    CHECK_EQ_STR(jtype(doc, "$.items[1].id"), "text");
    CHECK_EQ_STR(jtype(doc, "$.items[1].request_body"), "");
    free(doc);
    sl_records_close(rs);

    /* A record made from an outcome keeps its strings in one arena: bodies
     * dropped by a history without them must not be freed on their own
     * (ASan would see it), and a kept 300 KB body survives whole. */
    static char big[300 * 1024];
    memset(big, 'x', sizeof big - 1);
    for (int keep = 0; keep <= 1; keep++) {
        CHECK_EQ_INT(sl_records_open(&rs, db_path(), 0, keep), 0);
        sl_outcome_t o = {.id = "ob", .method = "POST", .path = "/v1/messages",
                          .end = {SL_TERM_COMPLETE, false, false, "complete"}, .ttfb_ms = -1,
                          .input_tokens = -1, .output_tokens = -1, .cache_read_tokens = -1,
                          .cache_write_tokens = -1, .request_body = big, .response_body = "ok"};
        CHECK_EQ_INT(sl_records_submit_outcome(rs, &o), 0);
        sl_records_flush(rs, 5000);
        doc = get(rs, "ob", &rc);
        CHECK(json_valid(doc));
        if (keep) {
            sqlite3_stmt *st;
            sqlite3_prepare_v2(jdb, "SELECT length(json_extract(?1, '$.request_body'))", -1, &st,
                               NULL);
            sqlite3_bind_text(st, 1, doc, -1, SQLITE_STATIC);
            CHECK(sqlite3_step(st) == SQLITE_ROW);
            CHECK_EQ_INT(sqlite3_column_int(st, 0), (int)sizeof big - 1);
            sqlite3_finalize(st);
            CHECK_EQ_STR(jget(doc, "$.response_body"), "ok");
        } else {
            CHECK_EQ_STR(jtype(doc, "$.request_body"), "");
        }
        free(doc);
        sl_records_close(rs);
    }
}

static void test_filters(void)
{
    sl_records_t *rs;
    int rc;
    CHECK_EQ_INT(sl_records_open(&rs, db_path(), 0, 0), 0);
    for (int i = 0; i < 30; i++) {
        char id[32];
        snprintf(id, sizeof id, "f-%02d", i);
        sl_record_t *r = make(id, 1000 + i, i % 3 == 0 ? "codex" : "claude-code",
                              i % 5 == 0 ? 502 : 200, "/v1/messages");
        if (i == 7)
            r->model_in = (free(r->model_in), sdup("gpt-5-codex"));
        if (i == 8)
            r->error = sdup("upstream said Overloaded");
        sl_records_submit(rs, r);
    }
    sl_records_flush(rs, 5000);

    sl_records_filter_t f = {0};
    f.client = "codex";
    CHECK_EQ_INT(total(rs, &f), 10);
    f = (sl_records_filter_t){0};
    f.status = 502;
    CHECK_EQ_INT(total(rs, &f), 6);
    f.client = "codex"; /* filters combine: i % 15 == 0 */
    CHECK_EQ_INT(total(rs, &f), 2);
    f = (sl_records_filter_t){0};
    f.status = 5; /* the 5xx class */
    CHECK_EQ_INT(total(rs, &f), 6);
    f.status = 2;
    CHECK_EQ_INT(total(rs, &f), 24);
    f.status = 4;
    CHECK_EQ_INT(total(rs, &f), 0);
    f = (sl_records_filter_t){0};
    f.since = 1025;
    CHECK_EQ_INT(total(rs, &f), 5);
    f = (sl_records_filter_t){0};
    f.search = "CODEX"; /* model_in, case-insensitive; client is not searched */
    CHECK_EQ_INT(total(rs, &f), 1);
    f.search = "overloaded"; /* error text */
    CHECK_EQ_INT(total(rs, &f), 1);
    f.search = "f-1"; /* id substring: f-10..f-19 */
    CHECK_EQ_INT(total(rs, &f), 10);
    f.search = "no such thing";
    CHECK_EQ_INT(total(rs, &f), 0);

    /* paging: total is the full count, items the page, newest first */
    f = (sl_records_filter_t){.limit = 4, .offset = 3};
    char *doc = query(rs, &f, &rc);
    CHECK_EQ_INT(jint(doc, "$.total"), 30);
    CHECK_EQ_STR(jget(doc, "$.items[0].id"), "f-26");
    CHECK_EQ_STR(jget(doc, "$.items[3].id"), "f-23");
    CHECK_EQ_STR(jtype(doc, "$.items[4]"), "");
    free(doc);
    f = (sl_records_filter_t){0}; /* default limit is 50: all 30 */
    doc = query(rs, &f, &rc);
    CHECK_EQ_STR(jget(doc, "$.items[29].id"), "f-00");
    free(doc);
    sl_records_close(rs);
}

static void test_eviction(void)
{
    sl_records_t *rs;
    int rc;
    CHECK_EQ_INT(sl_records_open(&rs, db_path(), 10, 0), 0);
    for (int i = 0; i < 25; i++) {
        char id[32];
        snprintf(id, sizeof id, "e-%02d", i);
        sl_records_submit(rs, make(id, 5000 + i, "c", 200, "/p"));
        if (i % 7 == 0) /* several batches, not one */
            sl_records_flush(rs, 5000);
    }
    sl_records_flush(rs, 5000);
    CHECK_EQ_INT(total(rs, NULL), 10);
    char *doc = query(rs, NULL, &rc);
    CHECK_EQ_STR(jget(doc, "$.items[0].id"), "e-24");
    CHECK_EQ_STR(jget(doc, "$.items[9].id"), "e-15"); /* the oldest went */
    free(doc);

    /* after an admin delete, eviction still keeps exactly max */
    CHECK_EQ_INT(sl_records_delete(rs, "e-20"), 0);
    for (int i = 25; i < 28; i++) {
        char id[32];
        snprintf(id, sizeof id, "e-%02d", i);
        sl_records_submit(rs, make(id, 5000 + i, "c", 200, "/p"));
    }
    sl_records_flush(rs, 5000);
    CHECK_EQ_INT(total(rs, NULL), 10);
    sl_records_close(rs);

    /* the limit survives a restart: the row count is read back on open */
    const char *path = db_path();
    CHECK_EQ_INT(sl_records_open(&rs, path, 0, 0), 0);
    for (int i = 0; i < 20; i++)
        sl_records_submit(rs, make("x", i, "c", 200, "/p"));
    sl_records_close(rs);
    CHECK_EQ_INT(sl_records_open(&rs, path, 5, 0), 0);
    sl_records_submit(rs, make("y", 100, "c", 200, "/p"));
    sl_records_flush(rs, 5000);
    CHECK_EQ_INT(total(rs, NULL), 5);
    sl_records_close(rs);
}

/* ---- concurrency --------------------------------------------------------- */

#define THREADS 8
#define PER_THREAD 200

typedef struct {
    sl_records_t *rs;
    int t;
    int errors;
} worker_t;

static void *submitter(void *arg)
{
    worker_t *w = arg;
    for (int i = 0; i < PER_THREAD; i++) {
        char id[32];
        snprintf(id, sizeof id, "t%d-%d", w->t, i);
        if (sl_records_submit(w->rs, make(id, w->t * 1000 + i, "c", 200, "/p")) != 0)
            w->errors++;
    }
    return NULL;
}

static void *reader(void *arg)
{
    worker_t *w = arg;
    for (int i = 0; i < 50; i++) {
        int rc;
        sl_records_filter_t f = {.limit = 20, .search = "t3-"};
        char *doc = query(w->rs, &f, &rc);
        if (rc != 0 || !json_valid(doc))
            w->errors++;
        free(doc);
    }
    return NULL;
}

static void test_threads(void)
{
    sl_records_t *rs;
    int rc;
    pthread_t th[THREADS + 2];
    worker_t w[THREADS + 2];
    uint64_t dropped = sl_records_dropped();
    CHECK_EQ_INT(sl_records_open(&rs, db_path(), 0, 0), 0);
    for (int i = 0; i < THREADS + 2; i++) {
        w[i] = (worker_t){rs, i, 0};
        pthread_create(&th[i], NULL, i < THREADS ? submitter : reader, &w[i]);
    }
    for (int i = 0; i < THREADS + 2; i++) {
        pthread_join(th[i], NULL);
        CHECK_EQ_INT(w[i].errors, 0);
    }
    CHECK_EQ_INT(sl_records_flush(rs, 10000), 0);
    CHECK_EQ_INT(total(rs, NULL), THREADS * PER_THREAD);
    CHECK_EQ_INT(sl_records_dropped(), dropped);
    /* every thread's every record is there, by id */
    int missing = 0;
    for (int t = 0; t < THREADS; t++)
        for (int i = 0; i < PER_THREAD; i += 13) {
            char id[32];
            snprintf(id, sizeof id, "t%d-%d", t, i);
            char *doc = get(rs, id, &rc);
            missing += rc != 0 || strcmp(jget(doc, "$.id"), id) != 0;
            free(doc);
        }
    CHECK_EQ_INT(missing, 0);
    /* the page size is capped at 1000 */
    sl_records_filter_t f = {.limit = 5000};
    char *doc = query(rs, &f, &rc);
    CHECK_EQ_STR(jtype(doc, "$.items[999]"), "object");
    CHECK_EQ_STR(jtype(doc, "$.items[1000]"), "");
    free(doc);
    sl_records_close(rs);

    /* the same with eviction racing the submitters: exactly max remain */
    CHECK_EQ_INT(sl_records_open(&rs, db_path(), 300, 0), 0);
    for (int i = 0; i < THREADS; i++) {
        w[i] = (worker_t){rs, i, 0};
        pthread_create(&th[i], NULL, submitter, &w[i]);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    sl_records_flush(rs, 10000);
    CHECK_EQ_INT(total(rs, NULL), 300);
    sl_records_close(rs);
}

static void test_close_flushes(void)
{
    sl_records_t *rs;
    const char *path = db_path();
    CHECK_EQ_INT(sl_records_open(&rs, path, 0, 0), 0);
    for (int i = 0; i < 700; i++) {
        char id[32];
        snprintf(id, sizeof id, "c-%d", i);
        sl_records_submit(rs, make(id, i, "c", 200, "/p"));
    }
    sl_records_close(rs); /* no flush: close must write them */
    CHECK_EQ_INT(sl_records_open(&rs, path, 0, 0), 0);
    CHECK_EQ_INT(total(rs, NULL), 700);
    sl_records_close(rs);
}

/* ---- hostile strings ----------------------------------------------------- */

static void test_special_chars(void)
{
    sl_records_t *rs;
    int rc;
    CHECK_EQ_INT(sl_records_open(&rs, db_path(), 0, 1), 0);
    static const char *nasty =
        "quote\" back\\slash\nnew\ttab\x01\x1f ctl </script> \xc3\xa9 \xf0\x9f\x98\x80";
    sl_record_t *r = make("id\"with'quotes", 1, nasty, 200, nasty);
    r->error = sdup(nasty);
    r->model_in = (free(r->model_in), sdup("bad utf8 \xff\xfe\xc3 end"));
    r->response_body = sdup("data: {\"x\":\"\\u0000\"}\n\n\x80");
    r->attempts_json = sdup("[{\"supplier\":\"a\"}"); /* truncated: not JSON */
    r->extra_json = sdup("[1,2]");                    /* JSON, but not an object */
    sl_records_submit(rs, r);
    sl_records_flush(rs, 5000);

    char *doc = get(rs, "id\"with'quotes", &rc);
    CHECK_EQ_INT(rc, 0);
    CHECK(json_valid(doc));
    CHECK_EQ_STR(jget(doc, "$.client"), nasty);
    CHECK_EQ_STR(jget(doc, "$.path"), nasty);
    CHECK_EQ_STR(jget(doc, "$.error"), nasty);
    CHECK_EQ_STR(jget(doc, "$.model_in"), "bad utf8 \xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd end");
    CHECK_EQ_STR(jtype(doc, "$.attempt_log"), "null");
    CHECK_EQ_STR(jtype(doc, "$.extra"), "null");
    free(doc);
    doc = query(rs, NULL, &rc);
    CHECK(json_valid(doc));
    CHECK_EQ_STR(jget(doc, "$.items[0].id"), "id\"with'quotes");
    free(doc);
    sl_records_close(rs);
}

static void test_search_escaping(void)
{
    sl_records_t *rs;
    CHECK_EQ_INT(sl_records_open(&rs, db_path(), 0, 0), 0);
    sl_records_submit(rs, make("s1", 1, "c", 200, "/v1/100%/x"));
    sl_records_submit(rs, make("s2", 2, "c", 200, "/v1/a_b"));
    sl_records_submit(rs, make("s3", 3, "c", 200, "/v1/axb"));
    sl_records_submit(rs, make("s4", 4, "c", 200, "/v1/back\\slash"));
    sl_records_flush(rs, 5000);
    sl_records_filter_t f = {0};
    f.search = "%";
    CHECK_EQ_INT(total(rs, &f), 1);
    f.search = "a_b";
    CHECK_EQ_INT(total(rs, &f), 1); /* not "axb" */
    f.search = "_";
    CHECK_EQ_INT(total(rs, &f), 1);
    f.search = "\\";
    CHECK_EQ_INT(total(rs, &f), 1);
    f.search = "/v1/";
    CHECK_EQ_INT(total(rs, &f), 4);
    f.search = "'; DROP TABLE requests; --";
    CHECK_EQ_INT(total(rs, &f), 0);
    CHECK_EQ_INT(total(rs, NULL), 4);
    sl_records_close(rs);
}

/* ---- failure: the gateway keeps going ----------------------------------- */

static void test_locked_and_missing(void)
{
    sl_records_t *rs;
    const char *path = db_path();
    CHECK_EQ_INT(sl_records_open(&rs, path, 0, 0), 0);
    sqlite3 *other;
    CHECK_EQ_INT(sqlite3_open(path, &other), SQLITE_OK);
    CHECK_EQ_INT(sqlite3_exec(other, "BEGIN EXCLUSIVE", NULL, NULL, NULL), SQLITE_OK);

    uint64_t dropped = sl_records_dropped();
    CHECK_EQ_INT(sl_records_submit(rs, make("l1", 1, "c", 200, "/p")), 0);
    CHECK_EQ_INT(sl_records_submit(rs, make("l2", 2, "c", 200, "/p")), 0);
    CHECK_EQ_INT(sl_records_flush(rs, 10000), 0); /* gives up, does not hang */
    CHECK_EQ_INT(sl_records_dropped() - dropped, 2);

    sqlite3_exec(other, "ROLLBACK", NULL, NULL, NULL);
    sqlite3_close(other);
    CHECK_EQ_INT(sl_records_submit(rs, make("l3", 3, "c", 200, "/p")), 0);
    sl_records_flush(rs, 5000);
    CHECK_EQ_INT(total(rs, NULL), 1); /* recovered once the lock went away */
    sl_records_close(rs);

    char bad[300];
    snprintf(bad, sizeof bad, "%s/no/such/dir/h.db", tmpdir);
    rs = NULL;
    CHECK_EQ_INT(sl_records_open(&rs, bad, 0, 0), SL_EIO);
    CHECK(rs == NULL);
    CHECK_EQ_INT(sl_records_submit(NULL, make("z", 1, "c", 200, "/p")), SL_EINVAL);
    sl_record_t *noid = sl_record_new();
    CHECK_EQ_INT(sl_records_open(&rs, db_path(), 0, 0), 0);
    CHECK_EQ_INT(sl_records_submit(rs, noid), SL_EINVAL);
    sl_records_close(rs);
}

/* A statement's rows as "a|b|c\n" lines, from a fresh connection on path. */
static char *sql_rows(const char *path, const char *sql)
{
    sqlite3 *db;
    sqlite3_stmt *st;
    sl_buf_t b;
    sl_buf_init(&b, 0);
    CHECK_EQ_INT(sqlite3_open(path, &db), SQLITE_OK);
    CHECK_EQ_INT(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW) {
        for (int i = 0; i < sqlite3_column_count(st); i++) {
            const unsigned char *v = sqlite3_column_text(st, i);
            sl_buf_printf(&b, "%s%s", i ? "|" : "", v ? (const char *)v : "NULL");
        }
        sl_buf_append_byte(&b, '\n');
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    sl_buf_cstr(&b);
    return b.base;
}

/* The usage answer's rows as "<group>|<requests>\n" lines, NULL for null. */
static char *usage_rows(sl_records_t *rs, const char *group)
{
    sl_records_usage_t u = {0};
    u.groups[0] = sl_records_usage_group(group);
    u.ngroups = 1;
    sl_buf_t b, lines;
    sl_buf_init(&b, 0);
    sl_buf_init(&lines, 0);
    CHECK_EQ_INT(sl_records_usage(rs, &u, &b), 0);
    sl_buf_cstr(&b);
    /* one json_each pass: asking json_extract per row re-parses the whole
     * answer each time */
    sqlite3_stmt *st;
    char sql[160];
    snprintf(sql, sizeof sql,
             "SELECT coalesce(json_extract(value, '$.%s'), 'NULL'), json_extract(value, "
             "'$.requests') FROM json_each(?1, '$.rows')",
             group);
    CHECK_EQ_INT(sqlite3_prepare_v2(jdb, sql, -1, &st, NULL), SQLITE_OK);
    sqlite3_bind_text(st, 1, b.base, -1, SQLITE_STATIC);
    while (sqlite3_step(st) == SQLITE_ROW)
        sl_buf_printf(&lines, "%s|%lld\n", (const char *)sqlite3_column_text(st, 0),
                      (long long)sqlite3_column_int64(st, 1));
    sqlite3_finalize(st);
    sl_buf_cstr(&lines);
    sl_buf_free(&b);
    return lines.base;
}

/* day and hour are computed in C (records_usage.c) the way SQLite's
 * strftime(..., 'unixepoch') computes them, rounding to the millisecond
 * first; outside 1970..9999 SQLite itself is asked. Both are checked here
 * against SQLite on the same rows, edges included. */
static void test_usage_day_hour_as_sqlite(void)
{
    static const double edges[] = {
        0,
        0.0004,
        0.0005,
        86399.9994,
        86399.9995,
        86399.9996,
        3599.9996,
        951782400,
        951868799.9999,
        1709164800.5,
        1735689599.9995,
        4102444800,
        253402300799.9994,
        253402300799.9996,
        253402300800,
        -1,
        -0.0004,
        -1e12,
        1e13,
        NAN,
    };
    const char *path = db_path();
    sl_records_t *rs;
    CHECK_EQ_INT(sl_records_open(&rs, path, 0, 0), 0);
    int n = 0;
    char id[32];
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++) {
        snprintf(id, sizeof id, "e-%d", n++);
        sl_records_submit(rs, make(id, edges[i], "c", 200, "/p"));
    }
    unsigned s = 14; /* times around millisecond and hour boundaries, 1970..2100 */
    for (int i = 0; i < 3000; i++) {
        s = s * 1103515245u + 12345u;
        double t = (double)(s % 4102444u) * 1000.0 + (i % 3 ? 3599.9995 : 0.00049 * (i % 7));
        snprintf(id, sizeof id, "r-%d", n++);
        sl_records_submit(rs, make(id, t, "c", 200, "/p"));
    }
    CHECK_EQ_INT(sl_records_flush(rs, 5000), 0);
    char *got = usage_rows(rs, "day");
    char *want = sql_rows(path, "SELECT strftime('%Y-%m-%d', time, 'unixepoch'), count(*) "
                                "FROM requests GROUP BY 1 ORDER BY 1");
    CHECK_EQ_STR(got, want);
    free(got);
    free(want);
    got = usage_rows(rs, "hour");
    want = sql_rows(path, "SELECT strftime('%Y-%m-%dT%H:00', time, 'unixepoch'), count(*) "
                          "FROM requests GROUP BY 1 ORDER BY 1");
    CHECK_EQ_STR(got, want);
    CHECK_STR_HAS(got, "NULL|"); /* out of SQLite's range, and the NaN stored as NULL */
    CHECK_STR_HAS(got, "1970-01-02T00:00|");
    free(got);
    free(want);
    sl_records_close(rs);
}

/* The percentiles are picked by selection, not sorting: on many values,
 * repeats included, they equal the nearest rank read from SQLite's sort. */
static void test_usage_percentiles_as_sorting(void)
{
    const char *path = db_path();
    sl_records_t *rs;
    CHECK_EQ_INT(sl_records_open(&rs, path, 0, 0), 0);
    static const char *clients[] = {"a", "b", "c"};
    unsigned s = 7;
    for (int i = 0; i < 3000; i++) {
        char id[16];
        s = s * 1103515245u + 12345u;
        snprintf(id, sizeof id, "p-%d", i);
        sl_record_t *r = make(id, 1000 + i, clients[i % 3], 200, "/p");
        /* c: only 40 distinct values, so most are repeats */
        r->ttfb_ms = i % 3 == 2 ? (double)((s >> 8) % 40) : (double)((s >> 8) % 100000) / 7.0;
        sl_records_submit(rs, r);
    }
    CHECK_EQ_INT(sl_records_flush(rs, 5000), 0);
    sl_records_usage_t u = {0};
    u.groups[0] = sl_records_usage_group("client");
    u.ngroups = 1;
    sl_buf_t b;
    sl_buf_init(&b, 0);
    CHECK_EQ_INT(sl_records_usage(rs, &u, &b), 0);
    sl_buf_cstr(&b);
    for (int g = 0; g < 3; g++) {
        char sql[200], p50[64], p95[64];
        /* 1000 values each: the 500th and the 950th */
        snprintf(sql, sizeof sql,
                 "SELECT printf('%%.3f', ttfb_ms) FROM requests WHERE client = '%s' ORDER BY "
                 "ttfb_ms LIMIT 1 OFFSET 499",
                 clients[g]);
        char *want50 = sql_rows(path, sql);
        snprintf(sql, sizeof sql,
                 "SELECT printf('%%.3f', ttfb_ms) FROM requests WHERE client = '%s' ORDER BY "
                 "ttfb_ms LIMIT 1 OFFSET 949",
                 clients[g]);
        char *want95 = sql_rows(path, sql);
        snprintf(p50, sizeof p50, "$.rows[%d].ttfb_p50_ms", g);
        snprintf(p95, sizeof p95, "$.rows[%d].ttfb_p95_ms", g);
        char got[64];
        snprintf(got, sizeof got, "%.3f\n", atof(jget(b.base, p50)));
        CHECK_EQ_STR(got, want50);
        snprintf(got, sizeof got, "%.3f\n", atof(jget(b.base, p95)));
        CHECK_EQ_STR(got, want95);
        free(want50);
        free(want95);
    }
    sl_buf_free(&b);
    sl_records_close(rs);
}

/* The plan SQLite makes for sql in a fresh history: its steps' details,
 * one per line. */
static void query_plan(const char *sql, sl_buf_t *plan)
{
    const char *path = db_path();
    sl_records_t *rs;
    CHECK_EQ_INT(sl_records_open(&rs, path, 0, 0), 0);
    sl_records_close(rs);
    sqlite3 *db;
    sqlite3_stmt *st;
    sl_buf_t explain;
    sl_buf_init(&explain, 0);
    sl_buf_printf(&explain, "EXPLAIN QUERY PLAN %s", sql);
    sl_buf_cstr(&explain);
    CHECK_EQ_INT(sqlite3_open(path, &db), SQLITE_OK);
    CHECK_EQ_INT(sqlite3_prepare_v2(db, explain.base, -1, &st, NULL), SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW)
        sl_buf_printf(plan, "%s\n", (const char *)sqlite3_column_text(st, 3));
    sl_buf_cstr(plan);
    sqlite3_finalize(st);
    sqlite3_close(db);
    sl_buf_free(&explain);
}

/* The usage pass reads only its index: every column it uses is in it, for
 * every group and bound (a column added to the pass but not to the index
 * would make SQLite read the whole table, about 5x slower, and no answer
 * would show it), and nothing is sorted. */
static void test_usage_reads_only_its_index(void)
{
    for (int g = -1; g < 7; g++) {
        for (int bounds = 0; bounds < 2; bounds++) {
            sl_records_usage_t u = {0};
            if (g >= 0) {
                u.groups[0] = g;
                u.groups[1] = (g + 1) % 7;
                u.ngroups = 2;
            }
            if (bounds)
                u.since = 100, u.until = 200;
            sl_buf_t sql, plan;
            sl_buf_init(&sql, 0);
            sl_buf_init(&plan, 0);
            CHECK_EQ_INT(sl__records_usage_sql(&u, &sql), 0);
            query_plan(sql.base, &plan);
            /* one step: the covering index, no temp b-tree */
            CHECK_STR_HAS(plan.base, "USING COVERING INDEX requests_usage");
            CHECK(strchr(plan.base, '\n') == plan.base + plan.len - 1);
            sl_buf_free(&sql);
            sl_buf_free(&plan);
        }
    }
}

/* The request listing (newest first, any time range or filter) reads the
 * usage index in its order: replacing the plain index on time must not
 * make it sort. */
static void test_listing_sorts_nothing(void)
{
    sl_records_filter_t filters[] = {{0}, {.since = 100}, {.since = 100, .until = 200},
                                     {.service = "chat", .partial = 1}};
    for (size_t i = 0; i < sizeof filters / sizeof filters[0]; i++) {
        sl_buf_t sql, plan;
        sl_buf_init(&sql, 0);
        sl_buf_init(&plan, 0);
        CHECK_EQ_INT(sl__records_list_sql("*", &filters[i], &sql), 0);
        query_plan(sql.base, &plan);
        CHECK_STR_HAS(plan.base, "requests_usage");
        CHECK(strstr(plan.base, "TEMP B-TREE") == NULL);
        sl_buf_free(&sql);
        sl_buf_free(&plan);
    }
}

/* A history made by a build before the usage index (it had a plain index on
 * time) opens: the usage index is built, the old one dropped, and the
 * totals count the old rows. */
static void test_usage_index_added_to_an_old_history(void)
{
    const char *path = db_path();
    sl_records_t *rs;
    CHECK_EQ_INT(sl_records_open(&rs, path, 0, 0), 0);
    for (int i = 0; i < 5; i++) {
        char id[16];
        snprintf(id, sizeof id, "old-%d", i);
        sl_records_submit(rs, make(id, 1000 + i, "c", 200, "/p"));
    }
    sl_records_close(rs);
    sqlite3 *db;
    CHECK_EQ_INT(sqlite3_open(path, &db), SQLITE_OK);
    CHECK_EQ_INT(sqlite3_exec(db,
                              "DROP INDEX requests_usage; "
                              "CREATE INDEX requests_time ON requests(time)",
                              NULL, NULL, NULL),
                 SQLITE_OK);
    sqlite3_close(db);
    char *idx = sql_rows(path, "SELECT name FROM sqlite_master WHERE type = 'index' ORDER BY 1");
    CHECK_EQ_STR(idx, "requests_id\nrequests_time\n");
    free(idx);

    CHECK_EQ_INT(sl_records_open(&rs, path, 0, 0), 0);
    idx = sql_rows(path, "SELECT name FROM sqlite_master WHERE type = 'index' ORDER BY 1");
    CHECK_EQ_STR(idx, "requests_id\nrequests_usage\n");
    free(idx);
    char *rows = usage_rows(rs, "client");
    CHECK_EQ_STR(rows, "c|5\n");
    free(rows);
    sl_records_close(rs);
}

/* GET /_sluice/usage: sums per group, nearest-rank TTFB percentiles per
 * group (a group without any TTFB has null ones), and the time range. */
static char *usage(sl_records_t *rs, const sl_records_usage_t *u, int *rc)
{
    sl_buf_t b;
    sl_buf_init(&b, 0);
    *rc = sl_records_usage(rs, u, &b);
    sl_buf_cstr(&b);
    return b.base;
}

static void test_usage(void)
{
    sl_records_t *rs;
    int rc;
    CHECK_EQ_INT(sl_records_open(&rs, db_path(), 0, 0), 0);
    /* model a: 20 requests with TTFB 1..20 ms; model b: 3 without any TTFB,
     * one of them a 502; model c: none; every a has 100 input, 40 cached */
    for (int i = 0; i < 23; i++) {
        char id[32];
        snprintf(id, sizeof id, "u-%02d", i);
        sl_record_t *r = make(id, 1000 + i, "codex", i == 21 ? 502 : 200, "/v1/responses");
        r->model_out = (free(r->model_out), sdup(i < 20 ? "a" : "b"));
        if (i < 20) {
            r->ttfb_ms = 20 - i; /* inserted out of order */
            r->input_tokens = 100;
            r->cache_read_tokens = 40;
            r->cost = 0.5;
            r->gateway_key = sdup(i % 2 ? "key#2" : "key#1");
        }
        if (i == 22)
            r->partial = 1;
        sl_records_submit(rs, r);
    }
    sl_records_flush(rs, 5000);

    sl_records_usage_t u = {0};
    char *doc = usage(rs, &u, &rc);
    CHECK_EQ_INT(rc, 0);
    CHECK(json_valid(doc));
    CHECK_EQ_INT(jint(doc, "$.rows[0].requests"), 23);
    CHECK_EQ_INT(jint(doc, "$.rows[0].errors"), 1);
    CHECK_EQ_INT(jint(doc, "$.rows[0].partials"), 1);
    CHECK_EQ_INT(jint(doc, "$.rows[0].input_tokens"), 2000);
    CHECK_EQ_STR(jget(doc, "$.rows[0].cache_hit_ratio"), "0.4");
    CHECK_EQ_STR(jget(doc, "$.rows[0].cost"), "10.0");
    CHECK_EQ_STR(jget(doc, "$.rows[0].ttfb_p50_ms"), "10.0"); /* 10th of 20 */
    CHECK_EQ_STR(jget(doc, "$.rows[0].ttfb_p95_ms"), "19.0"); /* 19th of 20, not the 20th */
    free(doc);

    u.groups[0] = sl_records_usage_group("model");
    u.ngroups = 1;
    doc = usage(rs, &u, &rc);
    CHECK_EQ_INT(rc, 0);
    CHECK_EQ_STR(jget(doc, "$.rows[0].model"), "a");
    CHECK_EQ_STR(jget(doc, "$.rows[0].ttfb_p50_ms"), "10.0");
    CHECK_EQ_STR(jget(doc, "$.rows[1].model"), "b");
    CHECK_EQ_INT(jint(doc, "$.rows[1].requests"), 3);
    CHECK_EQ_STR(jtype(doc, "$.rows[1].ttfb_p50_ms"), "null");
    CHECK_EQ_STR(jtype(doc, "$.rows[1].cost"), "null"); /* none of b was priced */
    CHECK_EQ_STR(jtype(doc, "$.rows[1].cache_hit_ratio"), "null");
    CHECK_EQ_STR(jtype(doc, "$.rows[2]"), "");
    free(doc);

    u.groups[0] = sl_records_usage_group("key"); /* b has no key: a null group first */
    doc = usage(rs, &u, &rc);
    CHECK_EQ_STR(jtype(doc, "$.rows[0].key"), "null");
    CHECK_EQ_INT(jint(doc, "$.rows[0].requests"), 3);
    CHECK_EQ_STR(jget(doc, "$.rows[1].key"), "key#1");
    CHECK_EQ_STR(jget(doc, "$.rows[1].ttfb_p50_ms"), "10.0"); /* 20,18,..,2 -> 5th is 10 */
    CHECK_EQ_STR(jget(doc, "$.rows[2].key"), "key#2");
    CHECK_EQ_STR(jget(doc, "$.rows[2].ttfb_p95_ms"), "19.0");
    free(doc);

    u.ngroups = 0; /* [1005, 1010): six..ten */
    u.since = 1005;
    u.until = 1010;
    doc = usage(rs, &u, &rc);
    CHECK_EQ_INT(jint(doc, "$.rows[0].requests"), 5);
    free(doc);
    u.since = 5000; /* nothing: no row at all */
    u.until = 0;
    doc = usage(rs, &u, &rc);
    CHECK_EQ_STR(jtype(doc, "$.rows[0]"), "");
    free(doc);
    CHECK_EQ_INT(sl_records_usage_group("colour"), -1);

    /* the listing's newer filters */
    sl_records_filter_t f = {0};
    f.model = "b";
    CHECK_EQ_INT(total(rs, &f), 3);
    f.partial = 1;
    CHECK_EQ_INT(total(rs, &f), 1);
    f = (sl_records_filter_t){0};
    f.until = 1002;
    CHECK_EQ_INT(total(rs, &f), 2);
    f = (sl_records_filter_t){0};
    f.supplier = "acme";
    f.service = "anthropic";
    CHECK_EQ_INT(total(rs, &f), 23);
    f.supplier = "other";
    CHECK_EQ_INT(total(rs, &f), 0);
    sl_records_close(rs);
}

/* The live feed: a new feed starts after what is stored, then gets each
 * record once, in insertion order. */
typedef struct {
    char ids[8][32];
    int n;
} feed_seen_t;

static void feed_each(void *arg, int64_t seq, const char *json, size_t len)
{
    feed_seen_t *s = arg;
    char doc[4096];
    snprintf(doc, sizeof doc, "%.*s", (int)len, json);
    if (s->n < 8)
        snprintf(s->ids[s->n++], 32, "%s", jget(doc, "$.id"));
}

static void test_feed(void)
{
    sl_records_t *rs;
    CHECK_EQ_INT(sl_records_open(&rs, db_path(), 0, 0), 0);
    sl_records_submit(rs, make("old", 1, "c", 200, "/"));
    sl_records_flush(rs, 5000);
    int64_t after = -1;
    feed_seen_t seen = {0};
    CHECK_EQ_INT(sl_records_feed(rs, &after, 10, feed_each, &seen), 0);
    CHECK_EQ_INT(seen.n, 0);
    CHECK(after >= 1);
    sl_records_submit(rs, make("new-1", 2, "c", 200, "/"));
    sl_records_submit(rs, make("new-2", 3, "c", 200, "/"));
    sl_records_flush(rs, 5000);
    CHECK_EQ_INT(sl_records_feed(rs, &after, 10, feed_each, &seen), 0);
    CHECK_EQ_INT(seen.n, 2);
    CHECK_EQ_STR(seen.ids[0], "new-1");
    CHECK_EQ_STR(seen.ids[1], "new-2");
    CHECK_EQ_INT(sl_records_feed(rs, &after, 10, feed_each, &seen), 0);
    CHECK_EQ_INT(seen.n, 2); /* nothing twice */
    sl_records_close(rs);
}

int main(void)
{
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    sqlite3_open(":memory:", &jdb);
    RUN(test_roundtrip);
    RUN(test_record_from_outcome);
    RUN(test_bodies);
    RUN(test_filters);
    RUN(test_eviction);
    RUN(test_threads);
    RUN(test_close_flushes);
    RUN(test_special_chars);
    RUN(test_search_escaping);
    RUN(test_locked_and_missing);
    RUN(test_usage);
    RUN(test_usage_day_hour_as_sqlite);
    RUN(test_usage_percentiles_as_sorting);
    RUN(test_usage_reads_only_its_index);
    RUN(test_listing_sorts_nothing);
    RUN(test_usage_index_added_to_an_old_history);
    RUN(test_feed);
    sqlite3_close(jdb);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
    return TEST_SUMMARY();
}
