/*
 * records_usage.c — GET /_sluice/usage: the history's totals over a time
 * range, grouped by key, model, supplier, client, service, day or hour (see
 * records.h for the answer's shape).
 *
 * One pass in C over the rows in range, read from `requests_usage`, an index
 * on time that carries every column the totals need (a covering index: the
 * rows themselves, with their attempt logs and error texts, are never read).
 * Each row is added to its group in a hash table; day and hour are computed
 * from the time here, the way SQLite's strftime(..., 'unixepoch') does;
 * each group's nearest-rank TTFB percentiles are picked at the end by a
 * linear-time selection; the groups come out in the order SQLite's ORDER BY
 * gives (NULL first, then by bytes).
 *
 * Why not SQL: GROUP BY sorted every row into a temporary b-tree, the
 * percentiles needed every TTFB sorted again in a second statement, and
 * strftime() per row cost as much as reading the row — 230 to 330 ms on
 * 100,000 records where this pass takes about 50 (bench/README.md, "usage").
 * The answer is the same, byte for byte: scripts/bench --usage --compare
 * checks it against another build on the same file.
 */
#define _GNU_SOURCE
#include <math.h>
#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "records.h"
#include "records_int.h"

/* The SQL expression behind each group_by name; day and hour have none: they
 * are computed from `time` (fmt is the strftime format they stand for). "key"
 * is the gateway key's tenant id, or its place in `keys` ("key#2") for a
 * plain key, never the key itself. */
static const struct {
    const char *name, *expr, *fmt;
    int hour; /* fmt ends with the hour */
} usage_groups[] = {
    {"key", "gateway_key", NULL, 0},     {"model", "coalesce(model_out, model_in)", NULL, 0},
    {"supplier", "supplier", NULL, 0},   {"client", "client", NULL, 0},
    {"service", "service", NULL, 0},     {"day", NULL, "%Y-%m-%d", 0},
    {"hour", NULL, "%Y-%m-%dT%H:00", 1},
};
#define NUSAGE_GROUPS (sizeof usage_groups / sizeof usage_groups[0])

/* The index the pass reads: time first (the range), then seq (so the
 * request listing's ORDER BY time DESC, seq DESC reads it in order, as it
 * read the plain index on time this one replaces), then every column the
 * statement below uses, so SQLite never visits the table. records.c drops
 * the old index on time, so the writer still maintains two indexes per row.
 * Keep it in step with SCAN_COLUMNS and usage_groups: test_records checks
 * that the usage plan says COVERING INDEX for every group, and that the
 * listing sorts nothing. */
const char *sl__records_usage_index_sql(void)
{
    return "CREATE INDEX IF NOT EXISTS requests_usage ON requests(time, seq, gateway_key, model_out, "
           "model_in, supplier, client, service, status, partial, input_tokens, output_tokens, "
           "cache_read_tokens, cache_write_tokens, cost, ttfb_ms)";
}

/* The statement's leading columns, in this order; the group expressions
 * that have one follow. */
#define SCAN_COLUMNS                                                                               \
    "time, status, partial, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, "  \
    "cost, ttfb_ms"
enum {
    C_TIME,
    C_STATUS,
    C_PARTIAL,
    C_INPUT,
    C_OUTPUT,
    C_CREAD,
    C_CWRITE,
    C_COST,
    C_TTFB,
    C_GROUPS
};

int sl_records_usage_group(const char *name)
{
    for (size_t i = 0; i < NUSAGE_GROUPS; i++)
        if (strcmp(name, usage_groups[i].name) == 0)
            return (int)i;
    return -1;
}

const char *sl_records_usage_groups(void)
{
    return "key, model, supplier, client, service, day, hour";
}

/* ---- groups -------------------------------------------------------------- */

/* One group's value of one group_by: bytes, or SQL NULL (len < 0). */
typedef struct {
    const char *p;
    int len;
} part_t;

typedef struct {
    uint64_t hash;
    char *key[SL_USAGE_GROUPS_MAX]; /* copies of the parts; NULL for SQL NULL */
    int klen[SL_USAGE_GROUPS_MAX];
    int64_t requests, errors, partials, priced;
    /* total() in SQLite 3.40 is a plain double sum in the order rows are
     * visited; these are too (token counts are exact below 2^53 either way) */
    double input, output, cread, cwrite, cost;
    double *ttfb;
    size_t nttfb, cap;
} group_t;

typedef struct {
    int ngroups;
    group_t *g;
    size_t n, cap;
    uint32_t *slot; /* open addressing: 0 empty, else index + 1 */
    size_t nslot;   /* a power of two, kept at least twice n */
} table_t;

static void table_free(table_t *t)
{
    for (size_t i = 0; i < t->n; i++) {
        for (int k = 0; k < t->ngroups; k++)
            free(t->g[i].key[k]);
        free(t->g[i].ttfb);
    }
    free(t->g);
    free(t->slot);
}

static uint64_t hash_parts(const part_t *p, int n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a, the NULL/length marker included */
    for (int i = 0; i < n; i++) {
        h = (h ^ (uint64_t)(p[i].len + 1)) * 1099511628211ull;
        for (int j = 0; j < p[i].len; j++)
            h = (h ^ (unsigned char)p[i].p[j]) * 1099511628211ull;
    }
    return h;
}

static int same_parts(const group_t *g, const part_t *p, int n)
{
    for (int i = 0; i < n; i++) {
        if (p[i].len < 0 || !g->key[i]) {
            if ((p[i].len < 0) != !g->key[i])
                return 0;
            continue;
        }
        if (g->klen[i] != p[i].len || memcmp(g->key[i], p[i].p, (size_t)p[i].len) != 0)
            return 0;
    }
    return 1;
}

/* The array p of n elements of size elem with room for one more (its
 * capacity doubled when full); NULL when out of memory, p untouched. */
static void *room_for_one_more(void *p, size_t n, size_t *cap, size_t elem)
{
    if (n < *cap)
        return p;
    size_t c = *cap ? 2 * *cap : 16;
    void *np = realloc(p, c * elem);
    if (np)
        *cap = c;
    return np;
}

static int grow_slots(table_t *t)
{
    size_t nslot = t->nslot ? 2 * t->nslot : 64;
    uint32_t *s = calloc(nslot, sizeof *s);
    if (!s)
        return SL_ENOMEM;
    for (size_t i = 0; i < t->n; i++) {
        size_t j = t->g[i].hash & (nslot - 1);
        while (s[j])
            j = (j + 1) & (nslot - 1);
        s[j] = (uint32_t)(i + 1);
    }
    free(t->slot);
    t->slot = s;
    t->nslot = nslot;
    return 0;
}

/* The group of these parts, added when new; NULL when out of memory. */
static group_t *group_of(table_t *t, const part_t *p)
{
    uint64_t h = hash_parts(p, t->ngroups);
    size_t j = t->nslot ? h & (t->nslot - 1) : 0;
    for (; t->nslot && t->slot[j]; j = (j + 1) & (t->nslot - 1)) {
        group_t *g = &t->g[t->slot[j] - 1];
        if (g->hash == h && same_parts(g, p, t->ngroups))
            return g;
    }
    group_t *ng = room_for_one_more(t->g, t->n, &t->cap, sizeof *t->g);
    if (!ng)
        return NULL;
    t->g = ng;
    if (2 * (t->n + 1) > t->nslot) { /* new slots: probe for the empty one again */
        if (grow_slots(t) != 0)
            return NULL;
        for (j = h & (t->nslot - 1); t->slot[j]; j = (j + 1) & (t->nslot - 1))
            ;
    }
    group_t *g = &t->g[t->n];
    memset(g, 0, sizeof *g);
    g->hash = h;
    for (int i = 0; i < t->ngroups; i++) {
        if (p[i].len < 0)
            continue;
        if (!(g->key[i] = malloc((size_t)p[i].len + 1))) {
            while (i--)
                free(g->key[i]);
            return NULL;
        }
        memcpy(g->key[i], p[i].p, (size_t)p[i].len);
        g->key[i][p[i].len] = '\0';
        g->klen[i] = p[i].len;
    }
    t->slot[j] = (uint32_t)(++t->n);
    return g;
}

/* ORDER BY on text: NULL first, then bytes (the BINARY collation). */
static int compare_groups(const void *a, const void *b, void *arg)
{
    const group_t *x = a, *y = b;
    int n = *(const int *)arg;
    for (int i = 0; i < n; i++) {
        if (!x->key[i] || !y->key[i]) {
            if (x->key[i] || y->key[i])
                return x->key[i] ? 1 : -1;
            continue;
        }
        int m = x->klen[i] < y->klen[i] ? x->klen[i] : y->klen[i];
        int c = memcmp(x->key[i], y->key[i], (size_t)m);
        if (c || x->klen[i] != y->klen[i])
            return c ? c : (x->klen[i] < y->klen[i] ? -1 : 1);
    }
    return 0;
}

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Moves the k-th smallest of v[0..n) (k from 0) to v[k], the ones at or
 * below it before, the others after — C++'s nth_element: what a percentile
 * needs, in linear time, where sorting each group's TTFBs was a sixth of the
 * whole call. Hoare partitions around a median of three; a range that does
 * not shrink fast enough (an input built against it) is sorted instead, so
 * the worst case stays n log n. */
static void select_kth(double *v, size_t n, size_t k)
{
    ptrdiff_t lo = 0, hi = (ptrdiff_t)n - 1, want = (ptrdiff_t)k;
    int budget = 64;
    while (hi > lo) {
        if (hi - lo < 16 || budget-- == 0) {
            qsort(v + lo, (size_t)(hi - lo + 1), sizeof *v, compare_doubles);
            return;
        }
        double a = v[lo], b = v[lo + (hi - lo) / 2], c = v[hi];
        double pivot = a < b ? (b < c ? b : (a < c ? c : a)) : (a < c ? a : (b < c ? c : b));
        ptrdiff_t i = lo, j = hi;
        while (i <= j) {
            while (v[i] < pivot)
                i++;
            while (v[j] > pivot)
                j--;
            if (i <= j) {
                double x = v[i];
                v[i++] = v[j];
                v[j--] = x;
            }
        }
        /* v[lo..j] <= pivot <= v[i..hi]; anything between equals the pivot */
        if (want <= j)
            hi = j;
        else if (want >= i)
            lo = i;
        else
            return;
    }
}

/* ---- day and hour -------------------------------------------------------- */

/* Civil date of a day count since 1970-01-01 (proleptic Gregorian, as
 * SQLite's computeYMD), for days >= 0. H. Hinnant's days_from_civil inverse. */
static void civil_from_days(int64_t z, int *y, int *m, int *d)
{
    z += 719468;
    int64_t era = z / 146097, doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = (int)(yoe + era * 400 + (*m <= 2));
}

static char *put_digits(char *s, int v, int width)
{
    for (int i = width - 1; i >= 0; i--, v /= 10)
        s[i] = (char)('0' + v % 10);
    return s + width;
}

#define JD_EPOCH_MS 210866760000000.0 /* 1970-01-01 as SQLite's iJD (Julian day, ms) */
#define MS_YEAR_10000 253402300800000LL

/* strftime(fmt, time, 'unixepoch') for the row's time, into buf (>= 17
 * bytes). SQLite first rounds the time to the millisecond (iJD = time *
 * 1000 + JD_EPOCH_MS + 0.5, truncated) — 86399.9996 is already the next day
 * — and so does this. Times from 1970 to 9999 are done here; anything else
 * (NULL, earlier, later, not a number) is asked of SQLite through `slow`,
 * so that rare case gives SQLite's own answer too. */
static int time_part(sqlite3_stmt *st, sqlite3_stmt *slow, int group, char *buf, part_t *out)
{
    int hour = usage_groups[group].hour;
    int type = sqlite3_column_type(st, C_TIME);
    if (type == SQLITE_INTEGER || type == SQLITE_FLOAT) {
        double r = sqlite3_column_double(st, C_TIME) * 1000.0 + JD_EPOCH_MS;
        if (r >= JD_EPOCH_MS && r < JD_EPOCH_MS + (double)MS_YEAR_10000) {
            int64_t ms = (int64_t)(r + 0.5) - (int64_t)JD_EPOCH_MS;
            if (ms < MS_YEAR_10000) {
                int y, m, d;
                civil_from_days(ms / 86400000, &y, &m, &d);
                char *s = put_digits(buf, y, 4);
                *s++ = '-';
                s = put_digits(s, m, 2);
                *s++ = '-';
                s = put_digits(s, d, 2);
                if (hour) {
                    *s++ = 'T';
                    s = put_digits(s, (int)(ms % 86400000 / 3600000), 2);
                    memcpy(s, ":00", 3);
                    s += 3;
                }
                out->p = buf;
                out->len = (int)(s - buf);
                return 0;
            }
        }
    }
    if (type == SQLITE_NULL) {
        out->len = -1;
        return 0;
    }
    sqlite3_reset(slow);
    sqlite3_bind_text(slow, 1, usage_groups[group].fmt, -1, SQLITE_STATIC);
    sqlite3_bind_value(slow, 2, sqlite3_column_value(st, C_TIME));
    int rc = sqlite3_step(slow);
    if (rc != SQLITE_ROW)
        return sl__records_map_sqlite(rc ? rc : SQLITE_ERROR);
    if (sqlite3_column_type(slow, 0) == SQLITE_NULL) {
        out->len = -1;
        return 0;
    }
    int n = sqlite3_column_bytes(slow, 0);
    if (n > 63)
        n = 63; /* strftime of a date is far shorter */
    memcpy(buf, sqlite3_column_text(slow, 0), (size_t)n);
    out->p = buf;
    out->len = n;
    return 0;
}

/* ---- the pass ------------------------------------------------------------ */

/* SELECT <scan columns>, <group expressions> FROM requests [range], through
 * the usage index (INDEXED BY: a plan that reads the table instead would be
 * a silent 5x; an index gone missing is an error instead). A bound appears
 * only when given, as before: `since` 0 is no bound at all, not 1970. */
int sl__records_usage_sql(const sl_records_usage_t *u, sl_buf_t *sql)
{
    int rc = sl_buf_append_c(sql, "SELECT " SCAN_COLUMNS);
    for (int i = 0; i < u->ngroups; i++)
        if (usage_groups[u->groups[i]].expr)
            rc |= sl_buf_printf(sql, ", %s", usage_groups[u->groups[i]].expr);
    rc |= sl_buf_append_c(sql, " FROM requests INDEXED BY requests_usage WHERE 1");
    if (u->since > 0)
        rc |= sl_buf_append_c(sql, " AND time >= :since");
    if (u->until > 0)
        rc |= sl_buf_append_c(sql, " AND time < :until");
    return rc || !sl_buf_cstr(sql) ? SL_ENOMEM : 0;
}

static int add_ttfb(group_t *g, double v)
{
    double *nv = room_for_one_more(g->ttfb, g->nttfb, &g->cap, sizeof *g->ttfb);
    if (!nv)
        return SL_ENOMEM;
    g->ttfb = nv;
    g->ttfb[g->nttfb++] = v;
    return 0;
}

/* Adds the statement's current row to its group. */
static int add_row(table_t *t, sqlite3_stmt *st, sqlite3_stmt *slow, const sl_records_usage_t *u)
{
    part_t p[SL_USAGE_GROUPS_MAX];
    char tbuf[SL_USAGE_GROUPS_MAX][64];
    int col = C_GROUPS, rc;
    for (int i = 0; i < u->ngroups; i++) {
        if (!usage_groups[u->groups[i]].expr) {
            if ((rc = time_part(st, slow, u->groups[i], tbuf[i], &p[i])) != 0)
                return rc;
        } else if (sqlite3_column_type(st, col) == SQLITE_NULL) {
            p[i].len = -1;
            col++;
        } else {
            p[i].p = (const char *)sqlite3_column_text(st, col);
            p[i].len = sqlite3_column_bytes(st, col);
            if (!p[i].p)
                return SL_ENOMEM;
            col++;
        }
    }
    group_t *g = group_of(t, p);
    if (!g)
        return SL_ENOMEM;
    g->requests++;
    if (sqlite3_column_type(st, C_STATUS) != SQLITE_NULL) {
        int64_t s = sqlite3_column_int64(st, C_STATUS);
        g->errors += s >= 400 || s == 0;
    }
    g->partials += sqlite3_column_int64(st, C_PARTIAL); /* NULL reads as 0 */
    /* total() skips NULLs; a NULL read as a double is 0.0, which adds nothing */
    g->input += sqlite3_column_double(st, C_INPUT);
    g->output += sqlite3_column_double(st, C_OUTPUT);
    g->cread += sqlite3_column_double(st, C_CREAD);
    g->cwrite += sqlite3_column_double(st, C_CWRITE);
    if (sqlite3_column_type(st, C_COST) != SQLITE_NULL) {
        g->cost += sqlite3_column_double(st, C_COST);
        g->priced++;
    }
    if (sqlite3_column_type(st, C_TTFB) != SQLITE_NULL)
        return add_ttfb(g, sqlite3_column_double(st, C_TTFB));
    return 0;
}

/* ---- the answer ---------------------------------------------------------- */

/* Nearest rank: the smallest value with at least p of the n values at or
 * below it, i.e. the k-th smallest, k = ceil(p * n) (from 1). The epsilon
 * keeps 0.95 * 20 from rounding up to 20.0...01. */
static size_t nearest_rank(size_t n, double p)
{
    size_t k = (size_t)ceil(p * (double)n - 1e-9);
    return (k ? k : 1) - 1;
}

static int emit_row(sl_buf_t *out, group_t *g, const sl_records_usage_t *u)
{
    int rc = sl_buf_append_byte(out, '{');
    for (int i = 0; i < u->ngroups; i++) {
        rc |= sl_buf_printf(out, "\"%s\":", usage_groups[u->groups[i]].name);
        if (!g->key[i]) {
            rc |= sl_buf_append_c(out, "null,");
            continue;
        }
        rc |= sl_buf_append_byte(out, '"');
        rc |= sl_buf_append_json_str(out, g->key[i], (size_t)g->klen[i]);
        rc |= sl_buf_append_c(out, "\",");
    }
    rc |= sl_buf_printf(out,
                        "\"requests\":%lld,\"errors\":%lld,\"partials\":%lld,\"input_tokens\":%.0f,"
                        "\"output_tokens\":%.0f,\"cache_read_tokens\":%.0f,"
                        "\"cache_write_tokens\":%.0f,\"cache_hit_ratio\":",
                        (long long)g->requests, (long long)g->errors, (long long)g->partials,
                        g->input, g->output, g->cread, g->cwrite);
    /* input_tokens already includes the cache reads and writes (the IR's rule) */
    rc |= g->input > 0 ? sl_buf_printf(out, "%.4f", g->cread / g->input)
                       : sl_buf_append_c(out, "null");
    rc |= g->priced > 0 ? sl_buf_printf(out, ",\"cost\":%.6f", g->cost)
                        : sl_buf_append_c(out, ",\"cost\":null");
    if (g->nttfb) {
        /* the 95th first: then the 50th is among the values before it */
        size_t k95 = nearest_rank(g->nttfb, 0.95), k50 = nearest_rank(g->nttfb, 0.50);
        select_kth(g->ttfb, g->nttfb, k95);
        if (k50 < k95)
            select_kth(g->ttfb, k95, k50);
        rc |= sl_buf_printf(out, ",\"ttfb_p50_ms\":%.3f,\"ttfb_p95_ms\":%.3f}", g->ttfb[k50],
                            g->ttfb[k95]);
    } else {
        rc |= sl_buf_append_c(out, ",\"ttfb_p50_ms\":null,\"ttfb_p95_ms\":null}");
    }
    return rc ? SL_ENOMEM : 0;
}

static int emit(sl_buf_t *out, table_t *t, const sl_records_usage_t *u)
{
    int rc = sl_buf_printf(out, "{\"since\":%.3f,\"until\":", u->since);
    rc |= u->until > 0 ? sl_buf_printf(out, "%.3f", u->until) : sl_buf_append_c(out, "null");
    rc |= sl_buf_append_c(out, ",\"group_by\":[");
    for (int i = 0; i < u->ngroups; i++)
        rc |= sl_buf_printf(out, "%s\"%s\"", i ? "," : "", usage_groups[u->groups[i]].name);
    rc |= sl_buf_append_c(out, "],\"rows\":[");
    if (rc)
        return SL_ENOMEM;
    if (t->n) /* no group: t->g is NULL, which qsort_r may not be given */
        qsort_r(t->g, t->n, sizeof *t->g, compare_groups, &t->ngroups);
    for (size_t i = 0; i < t->n; i++)
        if ((i && sl_buf_append_byte(out, ',')) || (rc = emit_row(out, &t->g[i], u)) != 0)
            return rc ? rc : SL_ENOMEM;
    return sl_buf_append_c(out, "]}") ? SL_ENOMEM : 0;
}

static void bind_range(sqlite3_stmt *st, const sl_records_usage_t *u)
{
    int i;
    if ((i = sqlite3_bind_parameter_index(st, ":since")) > 0)
        sqlite3_bind_double(st, i, u->since);
    if ((i = sqlite3_bind_parameter_index(st, ":until")) > 0)
        sqlite3_bind_double(st, i, u->until);
}

int sl_records_usage(sl_records_t *rs, const sl_records_usage_t *u, sl_buf_t *out)
{
    if (!rs || !u || !out || u->ngroups < 0 || u->ngroups > SL_USAGE_GROUPS_MAX)
        return SL_EINVAL;
    for (int i = 0; i < u->ngroups; i++)
        if (u->groups[i] < 0 || u->groups[i] >= (int)NUSAGE_GROUPS)
            return SL_EINVAL;
    sqlite3 *db;
    int rc = sl__records_reader_acquire(rs, &db);
    if (rc)
        return rc;
    sqlite3_stmt *st = NULL, *slow = NULL;
    table_t t = {.ngroups = u->ngroups};
    sl_buf_t sql;
    sl_buf_init(&sql, 0);
    size_t mark = out->len;
    if ((rc = sl__records_usage_sql(u, &sql)) == 0 &&
        (rc = sl__records_map_sqlite(sqlite3_prepare_v2(db, sql.base, -1, &st, NULL))) == 0 &&
        (rc = sl__records_map_sqlite(sqlite3_prepare_v2(db, "SELECT strftime(?1, ?2, 'unixepoch')",
                                                        -1, &slow, NULL))) == 0) {
        bind_range(st, u);
        int src;
        while ((src = sqlite3_step(st)) == SQLITE_ROW && (rc = add_row(&t, st, slow, u)) == 0)
            ;
        if (rc == 0 && src != SQLITE_DONE)
            rc = sl__records_map_sqlite(src);
        /* no row in range: no group, so no row in the answer — also for the
         * ungrouped total, as before */
        if (rc == 0)
            rc = emit(out, &t, u);
    }
    if (rc)
        out->len = mark;
    sqlite3_finalize(st);
    sqlite3_finalize(slow);
    table_free(&t);
    sl_buf_free(&sql);
    sl__records_reader_release(rs, db);
    return rc;
}
