/*
 * metrics.c — counters, gauges and histograms for /_sluice/metrics (see
 * metrics.h).
 *
 * Three shapes, each with the cheapest synchronisation that is still exact:
 * gauges are plain atomics; a histogram is a handful of integers updated
 * together under its own mutex (an observation must move a bucket, the sum
 * and the count as one); a labelled counter family is a small hash table of
 * series under its own mutex, so workers touching different families never
 * contend. Rendering takes each family's lock in turn, which makes each
 * family internally consistent without stopping the world.
 */
#include "metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

#define MAX_LABELS 3
#define MAX_SERIES 1000 /* per family; more label sets fold into "_other" */
#define MAX_DYNAMIC 64  /* families created by sl_metrics_count() */
#define NBUCKETS 64     /* hash chains per family */
#define OTHER "_other"

/* ---- labelled counters --------------------------------------------------- */

typedef struct series_s {
    struct series_s *next;
    uint32_t hash;
    uint64_t value;
    char *values[MAX_LABELS];
} series_t;

typedef struct family_s {
    const char *name, *help;
    int nlabels;
    const char *labels[MAX_LABELS];
    pthread_mutex_t mu;
    series_t *chains[NBUCKETS];
    int nseries;
    struct family_s *next; /* dynamic families only */
} family_t;

#define FAMILY(n, h, ...)                                                                          \
    {                                                                                              \
        .name = n, .help = h, .nlabels = sizeof((const char *[]){__VA_ARGS__}) / sizeof(char *),   \
        .labels = {__VA_ARGS__}, .mu = PTHREAD_MUTEX_INITIALIZER                                   \
    }

static family_t requests_total = FAMILY("sluice_requests_total",
                                        "Requests proxied, by service, supplier and the status "
                                        "sent to the client.",
                                        "service", "supplier", "status");
static family_t outcomes_total = FAMILY("sluice_outcomes_total",
                                        "How requests ended: termination reason and whether the "
                                        "response was partial.",
                                        "reason", "partial");
static family_t reloads_total =
    FAMILY("sluice_reloads_total", "Configuration reloads, by result.", "result");
static family_t script_errors_total =
    FAMILY("sluice_script_errors_total", "Lua hook failures (errors and budget overruns), by hook.",
           "hook");

static family_t *const builtin_families[] = {&requests_total, &outcomes_total, &reloads_total,
                                             &script_errors_total};
#define NBUILTIN (sizeof builtin_families / sizeof builtin_families[0])

static pthread_mutex_t dynamic_mu = PTHREAD_MUTEX_INITIALIZER;
static family_t *dynamic_head; /* newest first; guarded by dynamic_mu */
static int ndynamic;

static uint32_t hash_labels(const char *const *v, int n)
{
    uint32_t h = 2166136261u; /* FNV-1a, with a separator between values */
    for (int i = 0; i < n; i++) {
        for (const unsigned char *p = (const unsigned char *)v[i]; *p; p++)
            h = (h ^ *p) * 16777619u;
        h = (h ^ 0xff) * 16777619u;
    }
    return h;
}

static series_t *find(family_t *f, const char *const *v, uint32_t h)
{
    for (series_t *s = f->chains[h % NBUCKETS]; s; s = s->next) {
        int i = 0;
        if (s->hash != h)
            continue;
        while (i < f->nlabels && strcmp(s->values[i], v[i]) == 0)
            i++;
        if (i == f->nlabels)
            return s;
    }
    return NULL;
}

static series_t *add_series(family_t *f, const char *const *v, uint32_t h)
{
    series_t *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    for (int i = 0; i < f->nlabels; i++) {
        if (!(s->values[i] = strdup(v[i]))) {
            while (i--)
                free(s->values[i]);
            free(s);
            return NULL;
        }
    }
    s->hash = h;
    s->next = f->chains[h % NBUCKETS];
    f->chains[h % NBUCKETS] = s;
    f->nseries++;
    return s;
}

/* Adds n to the series with these label values (NULLs read as ""). */
static void family_add(family_t *f, const char *const *values, uint64_t n)
{
    const char *v[MAX_LABELS];
    for (int i = 0; i < f->nlabels; i++)
        v[i] = values[i] ? values[i] : "";
    uint32_t h = hash_labels(v, f->nlabels);
    pthread_mutex_lock(&f->mu);
    series_t *s = find(f, v, h);
    if (!s && f->nseries >= MAX_SERIES) {
        for (int i = 0; i < f->nlabels; i++)
            v[i] = OTHER;
        h = hash_labels(v, f->nlabels);
        s = find(f, v, h);
    }
    if (!s)
        s = add_series(f, v, h); /* on ENOMEM the increment is lost, not the process */
    if (s)
        s->value += n;
    pthread_mutex_unlock(&f->mu);
}

static void family_clear(family_t *f)
{
    pthread_mutex_lock(&f->mu);
    for (int b = 0; b < NBUCKETS; b++) {
        series_t *s = f->chains[b], *next;
        for (; s; s = next) {
            next = s->next;
            for (int i = 0; i < f->nlabels; i++)
                free(s->values[i]);
            free(s);
        }
        f->chains[b] = NULL;
    }
    f->nseries = 0;
    pthread_mutex_unlock(&f->mu);
}

/* ---- histograms ---------------------------------------------------------- */

#define MAX_BOUNDS 16

typedef struct {
    const char *name, *help;
    const double *bounds; /* ascending upper bounds; +Inf is implicit */
    int nbounds;
    pthread_mutex_t mu;
    uint64_t counts[MAX_BOUNDS + 1]; /* per bucket, not cumulative; last = +Inf */
    uint64_t count;
    double sum;
} histogram_t;

/* LLM requests run from a cached 50 ms reply to a ten-minute agent turn. */
static const double duration_bounds[] = {0.05, 0.1, 0.25, 0.5, 1,   2.5, 5,
                                         10,   20,  30,   60,  120, 300, 600};
/* First bytes come sooner: prefill of a long prompt is seconds, not minutes. */
static const double ttfb_bounds[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                     2,    5,     10,   20,  30,   60,  120};

static histogram_t duration_hist = {
    "sluice_request_duration_seconds",
    "Time from request start to the last byte sent to the client.",
    duration_bounds,
    sizeof duration_bounds / sizeof duration_bounds[0],
    PTHREAD_MUTEX_INITIALIZER,
    {0},
    0,
    0,
};
static histogram_t ttfb_hist = {
    "sluice_first_byte_seconds",
    "Time from request start to the first byte sent to the client.",
    ttfb_bounds,
    sizeof ttfb_bounds / sizeof ttfb_bounds[0],
    PTHREAD_MUTEX_INITIALIZER,
    {0},
    0,
    0,
};
static histogram_t *const histograms[] = {&duration_hist, &ttfb_hist};
#define NHIST (sizeof histograms / sizeof histograms[0])

static void histogram_observe(histogram_t *h, double v)
{
    if (!isfinite(v) || v < 0)
        return;
    int b = 0;
    while (b < h->nbounds && v > h->bounds[b]) /* buckets are "le": inclusive */
        b++;
    pthread_mutex_lock(&h->mu);
    h->counts[b]++;
    h->count++;
    h->sum += v;
    pthread_mutex_unlock(&h->mu);
}

/* ---- gauges -------------------------------------------------------------- */

static atomic_llong gauges[SL_GAUGE__COUNT];
static const struct {
    const char *name, *help;
} gauge_info[SL_GAUGE__COUNT] = {
    [SL_GAUGE_CONNECTIONS] = {"sluice_active_connections", "Open downstream connections."},
    [SL_GAUGE_STREAMS] = {"sluice_active_streams", "Requests in flight."},
    [SL_GAUGE_REDIS] = {"sluice_redis_connections",
                        "Worker connections to the session store's Redis that are up."},
};

/* ---- the public recorders ------------------------------------------------ */

void sl_metrics_init(void)
{
}

void sl_metrics_request(const char *service, const char *supplier, int status)
{
    char st[16];
    snprintf(st, sizeof st, "%d", status);
    family_add(&requests_total, (const char *[]){service, supplier, st}, 1);
}

void sl_metrics_outcome(const char *reason, int partial)
{
    family_add(&outcomes_total, (const char *[]){reason, partial ? "true" : "false"}, 1);
}

void sl_metrics_observe_duration(double seconds)
{
    histogram_observe(&duration_hist, seconds);
}

void sl_metrics_observe_ttfb(double seconds)
{
    histogram_observe(&ttfb_hist, seconds);
}

void sl_metrics_request_outcome(const sl_outcome_t *o)
{
    const char *service = o->names.service, *supplier = o->names.supplier;
    sl_metrics_request(service ? service : "none", supplier ? supplier : "none", o->status);
    sl_metrics_outcome(sl_term_reason_name(o->end.reason), o->end.partial);
    sl_metrics_observe_duration(o->duration_ms / 1000.0);
    if (o->ttfb_ms >= 0)
        sl_metrics_observe_ttfb(o->ttfb_ms / 1000.0);
}

void sl_metrics_gauge_add(sl_metric_gauge_t g, int delta)
{
    if ((unsigned)g < SL_GAUGE__COUNT)
        atomic_fetch_add(&gauges[g], delta);
}

void sl_metrics_reload(int ok)
{
    family_add(&reloads_total, (const char *[]){ok ? "ok" : "failed"}, 1);
}

void sl_metrics_script_error(const char *hook)
{
    family_add(&script_errors_total, (const char *[]){hook}, 1);
}

/* ---- dynamic counters ---------------------------------------------------- */

static int valid_name(const char *s, int colons)
{
    if (!s || !*s || (*s >= '0' && *s <= '9'))
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || (colons && *s == ':')))
            return 0;
    return 1;
}

/* Would `name` collide with a sample name a built-in metric renders? */
static int reserved_name(const char *name)
{
    for (size_t i = 0; i < NBUILTIN; i++)
        if (strcmp(name, builtin_families[i]->name) == 0)
            return 1;
    for (size_t i = 0; i < NHIST; i++) {
        size_t n = strlen(histograms[i]->name);
        if (strncmp(name, histograms[i]->name, n) == 0 && (name[n] == '\0' || name[n] == '_'))
            return 1;
    }
    for (int i = 0; i < SL_GAUGE__COUNT; i++)
        if (strcmp(name, gauge_info[i].name) == 0)
            return 1;
    return 0;
}

static family_t *dynamic_new(const char *name, const char *label_k)
{
    family_t *f = calloc(1, sizeof *f);
    char *n = strdup(name), *k = label_k ? strdup(label_k) : NULL;
    if (!f || !n || (label_k && !k)) {
        free(f);
        free(n);
        free(k);
        return NULL;
    }
    pthread_mutex_init(&f->mu, NULL);
    f->name = n;
    f->help = "Counter created at run time by sluice.";
    f->nlabels = label_k ? 1 : 0;
    f->labels[0] = k;
    return f;
}

static family_t *dynamic_get(const char *name, const char *label_k)
{
    family_t *f;
    pthread_mutex_lock(&dynamic_mu);
    for (f = dynamic_head; f; f = f->next)
        if (strcmp(f->name, name) == 0)
            break;
    if (!f && ndynamic < MAX_DYNAMIC && (f = dynamic_new(name, label_k)) != NULL) {
        f->next = dynamic_head;
        dynamic_head = f;
        ndynamic++;
    }
    pthread_mutex_unlock(&dynamic_mu);
    /* a family's label name is fixed by its first use */
    if (f && (f->nlabels ? !label_k || strcmp(f->labels[0], label_k) != 0 : label_k != NULL))
        return NULL;
    return f;
}

void sl_metrics_count(const char *name, const char *label_k, const char *label_v)
{
    if (!valid_name(name, 1) || reserved_name(name))
        return;
    if (label_k && (!valid_name(label_k, 0) || strncmp(label_k, "__", 2) == 0))
        return;
    family_t *f = dynamic_get(name, label_k);
    if (f)
        family_add(f, (const char *[]){label_v}, 1);
}

/* ---- rendering ----------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at p (n bytes left), or 0. */
static size_t utf8_len(const unsigned char *p, size_t n)
{
    unsigned char c = p[0];
    size_t len;
    unsigned char lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        len = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        lo = c == 0xe0 ? 0xa0 : 0x80; /* no overlongs */
        hi = c == 0xed ? 0x9f : 0xbf; /* no surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        lo = c == 0xf0 ? 0x90 : 0x80;
        hi = c == 0xf4 ? 0x8f : 0xbf;
    } else
        return 0;
    if (n < len || p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if ((p[i] & 0xc0) != 0x80)
            return 0;
    return len;
}

/* Escapes a label value (quote = 1) or HELP text (quote = 0). */
static int append_escaped(sl_buf_t *out, const char *s, int quote)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0;) {
        size_t len = utf8_len(p + i, n - i);
        if (p[i] == '\\')
            rc = sl_buf_append(out, "\\\\", 2);
        else if (p[i] == '\n')
            rc = sl_buf_append(out, "\\n", 2);
        else if (quote && p[i] == '"')
            rc = sl_buf_append(out, "\\\"", 2);
        else if (len == 0)
            rc = sl_buf_append(out, "\xef\xbf\xbd", 3); /* U+FFFD */
        else
            rc = sl_buf_append(out, p + i, len);
        i += len ? len : 1;
    }
    return rc;
}

static int render_header(sl_buf_t *out, const char *name, const char *help, const char *type)
{
    int rc = sl_buf_printf(out, "# HELP %s ", name);
    rc = rc ? rc : append_escaped(out, help, 0);
    return rc ? rc : sl_buf_printf(out, "\n# TYPE %s %s\n", name, type);
}

static int render_series(sl_buf_t *out, const family_t *f, const series_t *s)
{
    int rc = sl_buf_append_c(out, f->name);
    for (int i = 0; i < f->nlabels && rc == 0; i++) {
        rc = sl_buf_printf(out, "%s%s=\"", i ? "," : "{", f->labels[i]);
        rc = rc ? rc : append_escaped(out, s->values[i], 1);
        rc = rc ? rc : sl_buf_append_byte(out, '"');
    }
    if (rc == 0 && f->nlabels)
        rc = sl_buf_append_byte(out, '}');
    return rc ? rc : sl_buf_printf(out, " %llu\n", (unsigned long long)s->value);
}

static int render_family(sl_buf_t *out, family_t *f)
{
    int rc = render_header(out, f->name, f->help, "counter");
    pthread_mutex_lock(&f->mu);
    for (int b = 0; b < NBUCKETS && rc == 0; b++)
        for (series_t *s = f->chains[b]; s && rc == 0; s = s->next)
            rc = render_series(out, f, s);
    pthread_mutex_unlock(&f->mu);
    return rc;
}

static int render_histogram(sl_buf_t *out, histogram_t *h)
{
    uint64_t counts[MAX_BOUNDS + 1], count, cum = 0;
    double sum;
    pthread_mutex_lock(&h->mu); /* copy out, format unlocked */
    memcpy(counts, h->counts, sizeof counts);
    count = h->count;
    sum = h->sum;
    pthread_mutex_unlock(&h->mu);

    int rc = render_header(out, h->name, h->help, "histogram");
    for (int b = 0; b < h->nbounds && rc == 0; b++) {
        cum += counts[b];
        rc = sl_buf_printf(out, "%s_bucket{le=\"%g\"} %llu\n", h->name, h->bounds[b],
                           (unsigned long long)cum);
    }
    if (rc == 0)
        rc = sl_buf_printf(out, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.17g\n%s_count %llu\n",
                           h->name, (unsigned long long)count, h->name, sum, h->name,
                           (unsigned long long)count);
    return rc;
}

int sl_metrics_render(sl_buf_t *out)
{
    int rc = 0;
    size_t mark = out->len;
    for (size_t i = 0; i < NBUILTIN && rc == 0; i++)
        rc = render_family(out, builtin_families[i]);
    for (size_t i = 0; i < NHIST && rc == 0; i++)
        rc = render_histogram(out, histograms[i]);
    for (int g = 0; g < SL_GAUGE__COUNT && rc == 0; g++) {
        rc = render_header(out, gauge_info[g].name, gauge_info[g].help, "gauge");
        rc = rc ? rc : sl_buf_printf(out, "%s %lld\n", gauge_info[g].name, atomic_load(&gauges[g]));
    }
    pthread_mutex_lock(&dynamic_mu); /* families are never freed while listed */
    for (family_t *f = dynamic_head; f && rc == 0; f = f->next)
        rc = render_family(out, f);
    pthread_mutex_unlock(&dynamic_mu);
    if (rc)
        out->len = mark; /* no half-written exposition */
    return rc;
}

void sl_metrics_reset(void)
{
    for (size_t i = 0; i < NBUILTIN; i++)
        family_clear(builtin_families[i]);
    for (size_t i = 0; i < NHIST; i++) {
        histogram_t *h = histograms[i];
        pthread_mutex_lock(&h->mu);
        memset(h->counts, 0, sizeof h->counts);
        h->count = 0;
        h->sum = 0;
        pthread_mutex_unlock(&h->mu);
    }
    for (int g = 0; g < SL_GAUGE__COUNT; g++)
        atomic_store(&gauges[g], 0);
    pthread_mutex_lock(&dynamic_mu);
    while (dynamic_head) {
        family_t *f = dynamic_head;
        dynamic_head = f->next;
        family_clear(f);
        pthread_mutex_destroy(&f->mu);
        free((char *)f->name);
        free((char *)f->labels[0]);
        free(f);
    }
    ndynamic = 0;
    pthread_mutex_unlock(&dynamic_mu);
}
