/*
 * log.c — error log and access log (see log.h). Lines are built in a stack
 * or heap buffer and emitted with one write(2) under a mutex so concurrent
 * workers never interleave partial lines. A request's access-log line is
 * built here from its outcome (outcome.h), so the exchange that produced it
 * never formats a log line. A worker's lines go into its batch and out
 * once per loop pass (log.h): with many requests ending per pass, one
 * write and one lock for all of them.
 */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <sys/uio.h>
#include <unistd.h>

#include "error.h"

static sl_log_level_t min_level = SL_LOG_INFO;
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static int access_fd = -1;
static int access_owned = 0;
static __thread int thread_id = 0;
/* The calling thread's waiting access-log lines (out) and the buffer its
 * next line is built in (line, reused); NULL: write each line at once. */
typedef struct {
    sl_buf_t out;
} batch_t;
static __thread batch_t *batch;
#define BATCH_MAX (64 * 1024) /* written out early past this */

static const char *level_names[] = {"debug", "info", "warn", "error"};

void sl_log_set_level(sl_log_level_t level)
{
    min_level = level;
}

int sl_log_level_parse(const char *name, sl_log_level_t *out)
{
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(name, level_names[i]) == 0) {
            *out = (sl_log_level_t)i;
            return 0;
        }
    }
    return SL_EINVAL;
}

void sl_log_set_thread_id(int id)
{
    thread_id = id;
}

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        p += w;
        n -= (size_t)w;
    }
}

void sl_log(sl_log_level_t level, const char *fmt, ...)
{
    if (level < min_level)
        return;
    char line[4096];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ [%s] w%d: ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, level_names[level], thread_id);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2)
        len = sizeof line - 2;
    line[len++] = '\n';
    pthread_mutex_lock(&log_mu);
    write_all(STDERR_FILENO, line, len);
    pthread_mutex_unlock(&log_mu);
}

int sl_access_log_open(const char *where)
{
    sl_access_log_close();
    if (!where || strcmp(where, "off") == 0)
        return 0;
    if (strcmp(where, "stderr") == 0) {
        access_fd = STDERR_FILENO;
        return 0;
    }
    if (strcmp(where, "stdout") == 0) {
        access_fd = STDOUT_FILENO;
        return 0;
    }
    int fd = open(where, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (fd < 0)
        return -errno;
    access_fd = fd;
    access_owned = 1;
    return 0;
}

void sl_access_log_close(void)
{
    if (access_owned && access_fd >= 0)
        close(access_fd);
    access_fd = -1;
    access_owned = 0;
}

int sl_access_log_enabled(void)
{
    return access_fd >= 0;
}

void sl_access_log_batch(int on)
{
    if (on && !batch) {
        if ((batch = malloc(sizeof *batch))) {
            sl_buf_init(&batch->out, 0);
        }
    } else if (!on && batch) {
        sl_access_log_flush();
        sl_buf_free(&batch->out);
        free(batch);
        batch = NULL;
    }
}

void sl_access_log_flush(void)
{
    if (!batch || !batch->out.len)
        return;
    if (access_fd >= 0) {
        pthread_mutex_lock(&log_mu);
        write_all(access_fd, batch->out.base, batch->out.len);
        pthread_mutex_unlock(&log_mu);
    }
    sl_buf_reset(&batch->out);
}

/* Appends the line and its newline to the batch; 0, or -1 (nothing added). */
static int batch_add(const char *line, size_t len)
{
    sl_buf_t *out = &batch->out;
    size_t at = out->len;
    if (sl_buf_append(out, line, len) || sl_buf_append_byte(out, '\n')) {
        out->len = at;
        return -1;
    }
    if (out->len >= BATCH_MAX)
        sl_access_log_flush();
    return 0;
}

void sl_access_log_write(const char *line, size_t len)
{
    if (access_fd < 0)
        return;
    if (batch) {
        if (batch_add(line, len) == 0)
            return;
        sl_access_log_flush(); /* no room (ENOMEM): keep the order, write it alone */
    }
    /* One writev: the line and its newline in a single syscall. */
    struct iovec iov[2] = {{(void *)line, len}, {"\n", 1}};
    pthread_mutex_lock(&log_mu);
    ssize_t w;
    do {
        w = writev(access_fd, iov, 2);
    } while (w < 0 && errno == EINTR);
    if (w >= 0 && (size_t)w <= len) { /* short write: finish the line, then the newline */
        write_all(access_fd, line + w, len - (size_t)w);
        write_all(access_fd, "\n", 1);
    }
    pthread_mutex_unlock(&log_mu);
}

/* ,"key":"value" (escaped), or ,"key":null. */
static void json_field(sl_buf_t *b, const char *key, const char *val)
{
    sl_buf_printf(b, ",\"%s\":", key);
    if (!val) {
        sl_buf_append_c(b, "null");
        return;
    }
    sl_buf_append_byte(b, '"');
    sl_buf_append_json_str(b, val, strlen(val));
    sl_buf_append_byte(b, '"');
}

void sl_access_log_outcome(const sl_outcome_t *o)
{
    if (access_fd < 0)
        return;
    /* A batching thread writes the line straight into its batch. */
    sl_buf_t b, *line = &b;
    if (batch)
        line = &batch->out;
    else
        sl_buf_init(&b, 0);
    size_t at = line->len;
    /* The planned names, not the log hook's: the line says what was routed. */
    const sl_outcome_names_t *n = &o->planned;
    sl_buf_printf(line, "{\"time\":%.3f", o->end_time);
    json_field(line, "id", o->id);
    json_field(line, "peer", o->peer);
    json_field(line, "method", o->method);
    json_field(line, "path", o->path);
    json_field(line, "service", n->service);
    json_field(line, "client", n->client);
    json_field(line, "key", o->gateway_key); /* a tenant's id or "key#N", never the key */
    json_field(line, "supplier", n->supplier);
    json_field(line, "model_in", n->model_in);
    json_field(line, "model_out", n->model_out);
    sl_buf_printf(line, ",\"status\":%d,\"upstream_status\":%d,\"duration_ms\":%.1f", o->status,
                  o->upstream_status, o->duration_ms);
    if (o->ttfb_ms >= 0)
        sl_buf_printf(line, ",\"ttfb_ms\":%.1f", o->ttfb_ms);
    sl_buf_printf(line, ",\"bytes_in\":%lld,\"bytes_out\":%lld", (long long)o->bytes_in,
                  (long long)o->bytes_out);
    json_field(line, "reason", sl_term_reason_name(o->end.reason));
    sl_buf_printf(line, ",\"partial\":%s,\"expected\":%s}", o->end.partial ? "true" : "false",
                  o->end.expected ? "true" : "false");
    if (line == &b) {
        sl_access_log_write(b.base, b.len);
        sl_buf_free(&b);
        return;
    }
    if (sl_buf_append_byte(line, '\n')) {
        line->len = at; /* no room (ENOMEM): the line is dropped, not left half-made */
        return;
    }
    if (line->len >= BATCH_MAX)
        sl_access_log_flush();
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Compares the parameter name as the upstream will read it: percent-decoded
 * (`k%65y` is `key`), case-insensitively. */
static int is_secret_param(const char *name, size_t len)
{
    static const char *names[] = {"key", "api_key", "apikey", "access_token", "token", "secret"};
    char dec[16];
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (n == sizeof dec)
            return 0; /* longer than any secret parameter name */
        int hi, lo;
        if (name[i] == '%' && i + 2 < len && (hi = hexval(name[i + 1])) >= 0 &&
            (lo = hexval(name[i + 2])) >= 0) {
            dec[n++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            dec[n++] = name[i];
        }
    }
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strlen(names[i]) == n && strncasecmp(names[i], dec, n) == 0)
            return 1;
    return 0;
}

int sl_log_redact_query(sl_buf_t *out, sl_str_t url)
{
    const char *q = memchr(url.base, '?', url.len);
    if (!q)
        return sl_buf_append_str(out, url);
    int rc = sl_buf_append(out, url.base, (size_t)(q - url.base) + 1);
    const char *p = q + 1, *end = url.base + url.len;
    while (!rc && p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *pe = amp ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(pe - p));
        if (eq && is_secret_param(p, (size_t)(eq - p))) {
            rc = sl_buf_append(out, p, (size_t)(eq - p) + 1);
            if (!rc)
                rc = sl_buf_append_c(out, "REDACTED");
        } else {
            rc = sl_buf_append(out, p, (size_t)(pe - p));
        }
        if (!rc && amp)
            rc = sl_buf_append_byte(out, '&');
        p = amp ? amp + 1 : end;
    }
    return rc;
}
