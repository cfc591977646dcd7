/*
 * test_metrics.c — /_sluice/metrics as a Prometheus server would see it:
 * every rendering goes through a small exposition-format checker (HELP/TYPE
 * before samples, label syntax and escapes, parseable values, no duplicate
 * series, cumulative histogram buckets ending in +Inf == _count), and the
 * numbers read back must equal exactly what was recorded, also when many
 * threads record at once.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "metrics.h"
#include "test_helpers.h"

/* ---- a tiny exposition-format checker ------------------------------------ */

#define MAXF 64
#define MAXS 4096

typedef struct {
    char name[128];
    char type[32];
    int samples;
    /* histogram state */
    double last_le, last_cum, inf_cum;
    int saw_inf;
} fam_t;

typedef struct {
    fam_t fams[MAXF];
    int nfams;
    char *series[MAXS]; /* "name{labels}" seen, to catch duplicates */
    int nseries;
    char err[256];
} checker_t;

static int fail(checker_t *c, int line, const char *why, const char *text)
{
    snprintf(c->err, sizeof c->err, "line %d: %s: %.80s", line, why, text);
    return 0;
}

static int is_name_char(char ch, int first, int colon)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_' ||
           (colon && ch == ':') || (!first && ch >= '0' && ch <= '9');
}

static const char *scan_name(const char *p, int colon)
{
    if (!is_name_char(*p, 1, colon))
        return NULL;
    while (is_name_char(*p, 0, colon))
        p++;
    return p;
}

static int valid_utf8(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned char ch = p[i];
        size_t len = ch < 0x80                  ? 1
                     : ch >= 0xc2 && ch <= 0xdf ? 2
                     : ch >= 0xe0 && ch <= 0xef ? 3
                     : ch >= 0xf0 && ch <= 0xf4 ? 4
                                                : 0;
        if (!len || i + len > n)
            return 0;
        for (size_t k = 1; k < len; k++)
            if ((p[i + k] & 0xc0) != 0x80)
                return 0;
        i += len;
    }
    return 1;
}

static fam_t *fam_find(checker_t *c, const char *name, size_t n)
{
    for (int i = 0; i < c->nfams; i++)
        if (strlen(c->fams[i].name) == n && strncmp(c->fams[i].name, name, n) == 0)
            return &c->fams[i];
    return NULL;
}

/* The family a sample belongs to, allowing histogram suffixes. */
static fam_t *sample_family(checker_t *c, const char *name, size_t n, const char **suffix)
{
    static const char *sfx[] = {"_bucket", "_sum", "_count"};
    fam_t *f = fam_find(c, name, n);
    *suffix = "";
    if (f && strcmp(f->type, "histogram") != 0)
        return f;
    for (int i = 0; i < 3; i++) {
        size_t k = strlen(sfx[i]);
        if (n > k && strncmp(name + n - k, sfx[i], k) == 0 &&
            (f = fam_find(c, name, n - k)) != NULL && strcmp(f->type, "histogram") == 0) {
            *suffix = sfx[i];
            return f;
        }
    }
    return NULL;
}

/* Parses {a="x",b="y"}; returns the end or NULL. Captures le="..." if present. */
static const char *scan_labels(const char *p, char *le, size_t lesz)
{
    le[0] = '\0';
    if (*p != '{')
        return p;
    p++;
    while (*p != '}') {
        const char *ln = p;
        if (!(p = scan_name(p, 0)))
            return NULL;
        int is_le = p - ln == 2 && strncmp(ln, "le", 2) == 0;
        if (*p++ != '=' || *p++ != '"')
            return NULL;
        const char *v = p;
        for (; *p != '"'; p++) {
            if (*p == '\0' || *p == '\n')
                return NULL;
            if (*p == '\\' && (p[1] == '\\' || p[1] == '"' || p[1] == 'n'))
                p++;
            else if (*p == '\\')
                return NULL;
        }
        if (!valid_utf8((const unsigned char *)v, (size_t)(p - v)))
            return NULL;
        if (is_le)
            snprintf(le, lesz, "%.*s", (int)(p - v), v);
        p++;
        if (*p == ',')
            p++;
        else if (*p != '}')
            return NULL;
    }
    return p + 1;
}

static int check_sample(checker_t *c, int ln, const char *line)
{
    char le[64];
    const char *suffix;
    const char *end = scan_name(line, 1);
    if (!end)
        return fail(c, ln, "bad metric name", line);
    fam_t *f = sample_family(c, line, (size_t)(end - line), &suffix);
    if (!f)
        return fail(c, ln, "sample without # TYPE", line);
    const char *p = scan_labels(end, le, sizeof le);
    if (!p || *p != ' ')
        return fail(c, ln, "bad labels", line);
    char *vend;
    double v = strtod(p + 1, &vend);
    if (vend == p + 1 || *vend != '\0')
        return fail(c, ln, "bad value", line);
    for (int i = 0; i < c->nseries; i++)
        if (strncmp(c->series[i], line, (size_t)(p - line)) == 0 && c->series[i][p - line] == '\0')
            return fail(c, ln, "duplicate series", line);
    if (c->nseries < MAXS)
        c->series[c->nseries++] = strndup(line, (size_t)(p - line));
    f->samples++;
    if (strcmp(f->type, "counter") == 0 && (v < 0 || isnan(v)))
        return fail(c, ln, "counter below zero", line);
    if (strcmp(suffix, "_bucket") == 0) {
        if (!le[0])
            return fail(c, ln, "bucket without le", line);
        double b = strcmp(le, "+Inf") == 0 ? INFINITY : strtod(le, NULL);
        if (f->saw_inf || b <= f->last_le || v < f->last_cum)
            return fail(c, ln, "buckets not ascending and cumulative", line);
        f->last_le = b;
        f->last_cum = v;
        if (isinf(b)) {
            f->saw_inf = 1;
            f->inf_cum = v;
        }
    } else if (strcmp(suffix, "_count") == 0) {
        if (!f->saw_inf || v != f->inf_cum)
            return fail(c, ln, "_count differs from the +Inf bucket", line);
    }
    return 1;
}

static int check_comment(checker_t *c, int ln, const char *line)
{
    char name[128], type[32];
    if (strncmp(line, "# HELP ", 7) == 0) {
        const char *end = scan_name(line + 7, 1);
        if (!end || *end != ' ')
            return fail(c, ln, "bad HELP", line);
        for (const char *p = end; *p; p++)
            if (*p == '\\' && p[1] != '\\' && p[1] != 'n')
                return fail(c, ln, "bad escape in HELP", line);
            else if (*p == '\\')
                p++;
        return 1;
    }
    if (strncmp(line, "# TYPE ", 7) == 0) {
        if (sscanf(line + 7, "%127s %31s", name, type) != 2 ||
            (strcmp(type, "counter") && strcmp(type, "gauge") && strcmp(type, "histogram")))
            return fail(c, ln, "bad TYPE", line);
        if (fam_find(c, name, strlen(name)))
            return fail(c, ln, "TYPE declared twice", line);
        if (c->nfams == MAXF)
            return fail(c, ln, "too many families", line);
        fam_t *f = &c->fams[c->nfams++];
        memset(f, 0, sizeof *f);
        snprintf(f->name, sizeof f->name, "%s", name);
        snprintf(f->type, sizeof f->type, "%s", type);
        f->last_le = -INFINITY;
        return 1;
    }
    return 1; /* other comments are allowed */
}

/* 1 when `text` is valid exposition text; c->err says why not. */
static int check_exposition(checker_t *c, const char *text)
{
    memset(c, 0, sizeof *c);
    int ok = 1, ln = 0;
    size_t n = strlen(text);
    if (n && text[n - 1] != '\n')
        return fail(c, 0, "no final newline", "");
    char *copy = strdup(text), *save = NULL;
    for (char *line = strtok_r(copy, "\n", &save); line && ok; line = strtok_r(NULL, "\n", &save)) {
        ln++;
        ok = line[0] == '#' ? check_comment(c, ln, line) : check_sample(c, ln, line);
    }
    for (int i = 0; ok && i < c->nfams; i++)
        if (strcmp(c->fams[i].type, "histogram") == 0 && c->fams[i].samples && !c->fams[i].saw_inf)
            ok = fail(c, 0, "histogram without +Inf bucket", c->fams[i].name);
    for (int i = 0; i < c->nseries; i++)
        free(c->series[i]);
    free(copy);
    return ok;
}

/* ---- reading values back ------------------------------------------------- */

static char *render(void)
{
    sl_buf_t b;
    sl_buf_init(&b, 0);
    if (sl_metrics_render(&b) != 0)
        return NULL;
    sl_buf_cstr(&b);
    return b.base;
}

/* The value of the sample whose "name{labels}" is exactly `series`, or NAN. */
static double value_of(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (strncmp(p, series, n) == 0 && p[n] == ' ')
            return strtod(p + n + 1, NULL);
    return NAN;
}

static int count_lines_with(const char *text, const char *prefix)
{
    int k = 0;
    size_t n = strlen(prefix);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        k += strncmp(p, prefix, n) == 0;
    return k;
}

/* Rendering must always pass the checker; returns the text (caller frees). */
static char *render_checked(void)
{
    checker_t c;
    char *text = render();
    CHECK(text != NULL);
    int ok = text && check_exposition(&c, text);
    if (!ok)
        fprintf(stderr, "exposition rejected: %s\n", c.err);
    CHECK(ok);
    return text;
}

/* ---- tests --------------------------------------------------------------- */

static void test_checker_rejects(void)
{
    /* The checker must be able to fail, or every other test proves nothing. */
    checker_t c;
    CHECK(check_exposition(&c, "# TYPE a counter\na{x=\"1\"} 3\n"));
    CHECK(!check_exposition(&c, "a 1\n"));                              /* no TYPE */
    CHECK(!check_exposition(&c, "# TYPE a counter\na{x=\"\\q\"} 1\n")); /* bad escape */
    CHECK(!check_exposition(&c, "# TYPE a counter\na{x=\"1\"} 1\na{x=\"1\"} 2\n"));
    CHECK(!check_exposition(&c, "# TYPE a counter\na{x=\"1} 1\n"));      /* unterminated */
    CHECK(!check_exposition(&c, "# TYPE a counter\na 1x\n"));            /* bad value */
    CHECK(!check_exposition(&c, "# TYPE a counter\na{x=\"\xff\"} 1\n")); /* not UTF-8 */
    CHECK(!check_exposition(&c, "# TYPE h histogram\nh_bucket{le=\"1\"} 5\n"
                                "h_bucket{le=\"2\"} 4\nh_bucket{le=\"+Inf\"} 5\nh_count 5\n"));
    CHECK(!check_exposition(&c, "# TYPE h histogram\nh_bucket{le=\"1\"} 5\n"
                                "h_bucket{le=\"+Inf\"} 6\nh_count 5\n"));
}

static void test_empty_render(void)
{
    sl_metrics_reset();
    char *text = render_checked();
    /* every family is declared even before anything happened */
    CHECK(strstr(text, "# TYPE sluice_requests_total counter\n") != NULL);
    CHECK(strstr(text, "# TYPE sluice_request_duration_seconds histogram\n") != NULL);
    CHECK(strstr(text, "# TYPE sluice_active_streams gauge\n") != NULL);
    CHECK_EQ_DBL(value_of(text, "sluice_active_connections"), 0);
    CHECK_EQ_DBL(value_of(text, "sluice_first_byte_seconds_count"), 0);
    free(text);
}

static void test_counters(void)
{
    sl_metrics_reset();
    sl_metrics_request("anthropic", "acme", 200);
    sl_metrics_request("anthropic", "acme", 200);
    sl_metrics_request("anthropic", "acme", 502);
    sl_metrics_request("openai", NULL, 0);
    sl_metrics_outcome("COMPLETE", 0);
    sl_metrics_outcome("UPSTREAM_EOF_EARLY", 1);
    sl_metrics_reload(1);
    sl_metrics_reload(0);
    sl_metrics_reload(0);
    sl_metrics_script_error("access");
    sl_metrics_gauge_add(SL_GAUGE_CONNECTIONS, 3);
    sl_metrics_gauge_add(SL_GAUGE_CONNECTIONS, -1);
    sl_metrics_gauge_add(SL_GAUGE_STREAMS, 1);
    char *text = render_checked();
    CHECK_EQ_DBL(
        value_of(text,
                 "sluice_requests_total{service=\"anthropic\",supplier=\"acme\",status=\"200\"}"),
        2);
    CHECK_EQ_DBL(
        value_of(text,
                 "sluice_requests_total{service=\"anthropic\",supplier=\"acme\",status=\"502\"}"),
        1);
    CHECK_EQ_DBL(
        value_of(text, "sluice_requests_total{service=\"openai\",supplier=\"\",status=\"0\"}"), 1);
    CHECK_EQ_DBL(value_of(text, "sluice_outcomes_total{reason=\"COMPLETE\",partial=\"false\"}"), 1);
    CHECK_EQ_DBL(
        value_of(text, "sluice_outcomes_total{reason=\"UPSTREAM_EOF_EARLY\",partial=\"true\"}"), 1);
    CHECK_EQ_DBL(value_of(text, "sluice_reloads_total{result=\"ok\"}"), 1);
    CHECK_EQ_DBL(value_of(text, "sluice_reloads_total{result=\"failed\"}"), 2);
    CHECK_EQ_DBL(value_of(text, "sluice_script_errors_total{hook=\"access\"}"), 1);
    CHECK_EQ_DBL(value_of(text, "sluice_active_connections"), 2);
    CHECK_EQ_DBL(value_of(text, "sluice_active_streams"), 1);
    free(text);

    sl_metrics_reset();
    text = render_checked();
    CHECK_EQ_DBL(count_lines_with(text, "sluice_requests_total{"), 0);
    CHECK_EQ_DBL(value_of(text, "sluice_active_connections"), 0);
    free(text);
}

static void test_histograms(void)
{
    sl_metrics_reset();
    sl_metrics_observe_duration(0.05); /* on a bound: "le" is inclusive */
    sl_metrics_observe_duration(0.07);
    sl_metrics_observe_duration(3);
    sl_metrics_observe_duration(5000); /* past every bound: +Inf only */
    sl_metrics_observe_duration(-1);   /* ignored */
    sl_metrics_observe_duration(NAN);  /* ignored */
    sl_metrics_observe_ttfb(0.3);
    sl_metrics_observe_ttfb(-1); /* no byte sent: ignored */
    char *text = render_checked();
    const char *d = "sluice_request_duration_seconds";
    char s[128];
#define D(le) (snprintf(s, sizeof s, "%s_bucket{le=\"%s\"}", d, le), value_of(text, s))
    CHECK_EQ_DBL(D("0.05"), 1);
    CHECK_EQ_DBL(D("0.1"), 2);
    CHECK_EQ_DBL(D("2.5"), 2);
    CHECK_EQ_DBL(D("5"), 3);
    CHECK_EQ_DBL(D("600"), 3);
    CHECK_EQ_DBL(D("+Inf"), 4);
#undef D
    CHECK_EQ_DBL(value_of(text, "sluice_request_duration_seconds_count"), 4);
    CHECK(fabs(value_of(text, "sluice_request_duration_seconds_sum") - 5003.12) < 1e-9);
    CHECK_EQ_DBL(value_of(text, "sluice_first_byte_seconds_bucket{le=\"0.25\"}"), 0);
    CHECK_EQ_DBL(value_of(text, "sluice_first_byte_seconds_bucket{le=\"0.5\"}"), 1);
    CHECK_EQ_DBL(value_of(text, "sluice_first_byte_seconds_count"), 1);
    free(text);
}

/* A finished request, from its outcome: one request, one outcome, one
 * duration, a first byte only when one was sent; a request without a
 * service or supplier counts as "none". */
static void test_request_outcome(void)
{
    sl_metrics_reset();
    sl_outcome_t o = {.names = {.service = "claude", .supplier = "acme"},
                      .planned = {.service = "ignored"},
                      .status = 200,
                      .duration_ms = 1500,
                      .ttfb_ms = 300,
                      .end = {SL_TERM_UPSTREAM_EOF_EARLY, false, true, ""}};
    sl_metrics_request_outcome(&o);
    sl_outcome_t local = {.status = 404,
                          .duration_ms = 2,
                          .ttfb_ms = -1,
                          .end = {SL_TERM_LOCAL_ERROR, true, false, ""}};
    sl_metrics_request_outcome(&local);
    char *text = render_checked();
    CHECK_EQ_DBL(
        value_of(text,
                 "sluice_requests_total{service=\"claude\",supplier=\"acme\",status=\"200\"}"),
        1);
    CHECK_EQ_DBL(
        value_of(text, "sluice_requests_total{service=\"none\",supplier=\"none\",status=\"404\"}"),
        1);
    CHECK_EQ_DBL(count_lines_with(text, "service=\"ignored\""), 0);
    CHECK_EQ_DBL(
        value_of(text, "sluice_outcomes_total{reason=\"UPSTREAM_EOF_EARLY\",partial=\"true\"}"), 1);
    CHECK_EQ_DBL(value_of(text, "sluice_outcomes_total{reason=\"LOCAL_ERROR\",partial=\"false\"}"),
                 1);
    CHECK_EQ_DBL(value_of(text, "sluice_request_duration_seconds_count"), 2);
    CHECK_EQ_DBL(value_of(text, "sluice_request_duration_seconds_bucket{le=\"2.5\"}"), 2);
    CHECK_EQ_DBL(value_of(text, "sluice_first_byte_seconds_count"), 1);
    CHECK_EQ_DBL(value_of(text, "sluice_first_byte_seconds_bucket{le=\"0.5\"}"), 1);
    free(text);
}

static void test_escaping(void)
{
    sl_metrics_reset();
    sl_metrics_request("quo\"te", "back\\slash", 200);
    sl_metrics_script_error("new\nline");
    sl_metrics_outcome("bad\xff"
                       "utf8",
                       0);
    sl_metrics_outcome("caf\xc3\xa9 \xf0\x9f\x98\x80", 0); /* valid UTF-8 passes through */
    char *text = render_checked();
    CHECK_EQ_DBL(value_of(text,
                          "sluice_requests_total{service=\"quo\\\"te\",supplier=\"back\\\\slash"
                          "\",status=\"200\"}"),
                 1);
    CHECK_EQ_DBL(value_of(text, "sluice_script_errors_total{hook=\"new\\nline\"}"), 1);
    CHECK_EQ_DBL(
        value_of(text, "sluice_outcomes_total{reason=\"bad\xef\xbf\xbdutf8\",partial=\"false\"}"),
        1);
    CHECK_EQ_DBL(value_of(text, "sluice_outcomes_total{reason=\"caf\xc3\xa9 \xf0\x9f\x98\x80\","
                                "partial=\"false\"}"),
                 1);
    free(text);
}

static void test_dynamic(void)
{
    sl_metrics_reset();
    sl_metrics_count("sluice_session_fallbacks_total", "store", "memory");
    sl_metrics_count("sluice_session_fallbacks_total", "store", "memory");
    sl_metrics_count("sluice_session_fallbacks_total", "store", "redis");
    sl_metrics_count("sluice_session_fallbacks_total", "other_key", "x"); /* label name fixed */
    sl_metrics_count("sluice_session_fallbacks_total", NULL, NULL);
    sl_metrics_count("sluice_token_refreshes_total", NULL, NULL);
    sl_metrics_count("sluice_token_refreshes_total", NULL, NULL);
    sl_metrics_count("bad-name", NULL, NULL);                      /* invalid: ignored */
    sl_metrics_count("9lives", NULL, NULL);                        /* invalid: ignored */
    sl_metrics_count("ok_name", "bad-label", "v");                 /* invalid: ignored */
    sl_metrics_count("sluice_requests_total", NULL, NULL);         /* built-in: ignored */
    sl_metrics_count("sluice_first_byte_seconds_sum", NULL, NULL); /* collides: ignored */
    char *text = render_checked(); /* the checker also rejects a second TYPE line */
    CHECK_EQ_DBL(value_of(text, "sluice_session_fallbacks_total{store=\"memory\"}"), 2);
    CHECK_EQ_DBL(value_of(text, "sluice_session_fallbacks_total{store=\"redis\"}"), 1);
    CHECK_EQ_DBL(count_lines_with(text, "sluice_session_fallbacks_total"), 2);
    CHECK_EQ_DBL(value_of(text, "sluice_token_refreshes_total"), 2);
    CHECK(strstr(text, "bad-name") == NULL && strstr(text, "9lives") == NULL);
    CHECK(strstr(text, "ok_name") == NULL);
    CHECK(strstr(text, "# TYPE sluice_token_refreshes_total counter\n") != NULL);
    free(text);
}

static void test_series_cap(void)
{
    sl_metrics_reset();
    for (int i = 0; i < 1100; i++) {
        char sup[32];
        snprintf(sup, sizeof sup, "s%d", i);
        sl_metrics_request("svc", sup, 200);
    }
    sl_metrics_request("svc", "s5", 200); /* an existing series still counts as itself */
    char *text = render_checked();
    int lines = count_lines_with(text, "sluice_requests_total{");
    CHECK_EQ_DBL(lines, 1001); /* 1000 series + the fold-over */
    CHECK_EQ_DBL(
        value_of(text,
                 "sluice_requests_total{service=\"_other\",supplier=\"_other\",status=\"_other\"}"),
        100);
    CHECK_EQ_DBL(
        value_of(text, "sluice_requests_total{service=\"svc\",supplier=\"s5\",status=\"200\"}"), 2);
    free(text);
}

/* ---- threads ------------------------------------------------------------- */

#define THREADS 8
#define ITER 20000

static void *hammer(void *arg)
{
    int t = (int)(long)arg;
    char sup[16];
    snprintf(sup, sizeof sup, "sup%d", t);
    for (int i = 0; i < ITER; i++) {
        sl_metrics_request("anthropic", "shared", 200);
        sl_metrics_request("anthropic", sup, 500);
        sl_metrics_gauge_add(SL_GAUGE_STREAMS, 1);
        sl_metrics_observe_duration((i % 4) * 0.5); /* 0, 0.5, 1, 1.5 */
        sl_metrics_gauge_add(SL_GAUGE_STREAMS, -1);
        if (i % 100 == 0)
            sl_metrics_count("sluice_test_dyn_total", "t", sup);
    }
    sl_metrics_gauge_add(SL_GAUGE_CONNECTIONS, 1);
    return NULL;
}

static void *renderer(void *arg)
{
    int *bad = arg;
    for (int i = 0; i < 50; i++) {
        checker_t c;
        char *text = render();
        if (!text || !check_exposition(&c, text))
            (*bad)++;
        free(text);
    }
    return NULL;
}

static void test_threads(void)
{
    pthread_t th[THREADS], rth;
    int bad = 0;
    sl_metrics_reset();
    pthread_create(&rth, NULL, renderer, &bad);
    for (long t = 0; t < THREADS; t++)
        pthread_create(&th[t], NULL, hammer, (void *)t);
    for (int t = 0; t < THREADS; t++)
        pthread_join(th[t], NULL);
    pthread_join(rth, NULL);
    CHECK_EQ_DBL(bad, 0); /* renders during the storm were valid too */

    char *text = render_checked();
    CHECK_EQ_DBL(
        value_of(text,
                 "sluice_requests_total{service=\"anthropic\",supplier=\"shared\",status=\"200\"}"),
        THREADS * ITER);
    for (int t = 0; t < THREADS; t++) {
        char s[160];
        snprintf(s, sizeof s,
                 "sluice_requests_total{service=\"anthropic\",supplier=\"sup%d\",status=\"500\"}",
                 t);
        CHECK_EQ_DBL(value_of(text, s), ITER);
        snprintf(s, sizeof s, "sluice_test_dyn_total{t=\"sup%d\"}", t);
        CHECK_EQ_DBL(value_of(text, s), ITER / 100);
    }
    CHECK_EQ_DBL(value_of(text, "sluice_active_streams"), 0);
    CHECK_EQ_DBL(value_of(text, "sluice_active_connections"), THREADS);
    CHECK_EQ_DBL(value_of(text, "sluice_request_duration_seconds_count"), THREADS * ITER);
    CHECK_EQ_DBL(value_of(text, "sluice_request_duration_seconds_bucket{le=\"0.5\"}"),
                 THREADS * ITER / 2);
    CHECK_EQ_DBL(value_of(text, "sluice_request_duration_seconds_bucket{le=\"1\"}"),
                 THREADS * ITER * 3 / 4);
    CHECK_EQ_DBL(value_of(text, "sluice_request_duration_seconds_sum"), THREADS * ITER / 4 * 3.0);
    free(text);
}

int main(void)
{
    sl_metrics_init();
    RUN(test_checker_rejects);
    RUN(test_empty_render);
    RUN(test_counters);
    RUN(test_histograms);
    RUN(test_request_outcome);
    RUN(test_escaping);
    RUN(test_dynamic);
    RUN(test_series_cap);
    RUN(test_threads);
    sl_metrics_reset();
    return TEST_SUMMARY();
}
