/*
 * test_log.c — the error log, the access log and query redaction
 * (core/log.h).
 *
 * What an operator relies on: credentials in a URL never reach a log line
 * (sl_log_redact_query), the access log is one JSON line per request even
 * when every worker thread writes at once, reopening the file appends
 * instead of truncating, and the error log keeps to one line per call with
 * its level and worker id. The log files are temporary files read back
 * after the writes. A request's line is built from its outcome
 * (outcome.h) and checked whole.
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "buf.h"
#include "error.h"
#include "log.h"
#include "test_helpers.h"

static char tmpdir[] = "/tmp/sluice-test-log-XXXXXX";

/* The whole file as a NUL-terminated heap string (caller frees). */
static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    sl_buf_t b;
    sl_buf_init(&b, 0);
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        sl_buf_append(&b, chunk, n);
    fclose(f);
    if (len)
        *len = b.len;
    sl_buf_cstr(&b);
    return b.base;
}

static void redact_is(const char *url, const char *want)
{
    sl_buf_t b;
    sl_buf_init(&b, 0);
    CHECK_EQ_INT(sl_log_redact_query(&b, sl_str_c(url)), 0);
    CHECK_EQ_MEM(b.base, b.len, want);
    sl_buf_free(&b);
}

/* ---- redaction ---- */

static void test_redact_credential_params(void)
{
    redact_is("/v1beta/models/g:generateContent?key=AIzaSECRET",
              "/v1beta/models/g:generateContent?key=REDACTED");
    redact_is("/x?api_key=sk-1", "/x?api_key=REDACTED");
    redact_is("/x?access_token=ya29.SECRET", "/x?access_token=REDACTED");
    redact_is("/x?token=t0k", "/x?token=REDACTED");
    redact_is("/x?KEY=upper", "/x?KEY=REDACTED");
}

static void test_redact_keeps_other_params(void)
{
    redact_is("/v1beta/models/g:streamGenerateContent?alt=sse&key=SECRET&x=1",
              "/v1beta/models/g:streamGenerateContent?alt=sse&key=REDACTED&x=1");
    /* Names that merely contain a secret name are not secrets. */
    redact_is("/x?monkey=1&keys=2&tokenizer=3", "/x?monkey=1&keys=2&tokenizer=3");
    /* A value that looks like a name is left alone. */
    redact_is("/x?q=key%3Dabc", "/x?q=key%3Dabc");
}

static void test_redact_no_query(void)
{
    redact_is("/v1/messages", "/v1/messages");
    redact_is("/v1/messages?", "/v1/messages?");
    redact_is("", "");
}

static void test_redact_empty_and_bare(void)
{
    redact_is("/x?key=&alt=sse", "/x?key=REDACTED&alt=sse");
    redact_is("/x?key", "/x?key"); /* no value: nothing to hide */
    redact_is("/x?a=1&&b=2", "/x?a=1&&b=2");
}

static void test_redact_repeated(void)
{
    redact_is("/x?key=one&key=two&token=three", "/x?key=REDACTED&key=REDACTED&token=REDACTED");
}

static void test_redact_appends(void)
{
    sl_buf_t b;
    sl_buf_init(&b, 0);
    sl_buf_append_c(&b, "GET ");
    sl_log_redact_query(&b, SL_STR("/x?key=s"));
    CHECK_EQ_MEM(b.base, b.len, "GET /x?key=REDACTED");
    sl_buf_free(&b);
}

static void test_redact_percent_encoded_name(void)
{
    /* Servers decode parameter names, so "k%65y" is the key parameter to
     * the supplier; its value must not reach the log either. */
    sl_buf_t b;
    sl_buf_init(&b, 0);
    sl_log_redact_query(&b, SL_STR("/x?k%65y=AIzaSECRET&alt=sse"));
    sl_buf_cstr(&b);
    CHECK(strstr(b.base, "AIzaSECRET") == NULL);
    CHECK_STR_HAS(b.base, "alt=sse");
    sl_buf_free(&b);
}

/* ---- access log ---- */

static void test_access_log_lines(void)
{
    char path[256];
    snprintf(path, sizeof path, "%s/access1.log", tmpdir);
    CHECK_EQ_INT(sl_access_log_open(path), 0);
    CHECK(sl_access_log_enabled());
    sl_access_log_write("{\"a\":1}", 7);
    sl_access_log_write("{\"b\":2}", 7);
    sl_access_log_close();
    CHECK(!sl_access_log_enabled());
    sl_access_log_write("{\"lost\":1}", 10); /* closed: goes nowhere */
    char *s = slurp(path, NULL);
    CHECK(s && strcmp(s, "{\"a\":1}\n{\"b\":2}\n") == 0);
    free(s);

    /* Reopening (a restart or reload) appends; it never truncates. */
    CHECK_EQ_INT(sl_access_log_open(path), 0);
    sl_access_log_write("{\"c\":3}", 7);
    sl_access_log_close();
    s = slurp(path, NULL);
    CHECK(s && strcmp(s, "{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n") == 0);
    free(s);
}

/* A worker's lines wait for the end of its loop pass: nothing reaches the
 * file before sl_access_log_flush, then every line, whole and in order;
 * 64 KB waiting are written early, and turning batching off writes the
 * rest. Outcome lines batch the same way. */
static void test_access_log_batch(void)
{
    char path[256];
    snprintf(path, sizeof path, "%s/access-batch.log", tmpdir);
    CHECK_EQ_INT(sl_access_log_open(path), 0);
    sl_access_log_batch(1);
    sl_access_log_write("{\"a\":1}", 7);
    sl_access_log_write("{\"b\":2}", 7);
    size_t n = 1;
    char *s = slurp(path, &n);
    CHECK(s && n == 0); /* still waiting */
    free(s);
    sl_access_log_flush();
    s = slurp(path, NULL);
    CHECK(s && strcmp(s, "{\"a\":1}\n{\"b\":2}\n") == 0);
    free(s);

    char line[1000];
    memset(line, 'x', sizeof line);
    for (int i = 0; i < 70; i++) /* 70,070 bytes: past 64 KB before the 70th */
        sl_access_log_write(line, sizeof line);
    s = slurp(path, &n);
    CHECK(n >= 64 * 1024 && n < 16 + 70 * 1001);
    CHECK(n >= 16 && (n - 16) % 1001 == 0); /* only whole lines */
    free(s);
    sl_outcome_t o = {.id = "req-batch", .method = "POST", .path = "/v1/messages", .ttfb_ms = -1,
                      .end = {SL_TERM_COMPLETE, false, false, "complete"}};
    sl_access_log_outcome(&o);
    sl_access_log_batch(0);
    s = slurp(path, &n);
    CHECK(n == 16 + 70 * 1001 + strlen(strstr(s, "{\"time\"")));
    CHECK_STR_HAS(s, "\"id\":\"req-batch\"");
    free(s);
    sl_access_log_close();
}

/* A request's line, from its outcome: the planned names (not what the log
 * hook learned), escaped strings, null for what is absent, ttfb_ms only
 * when a byte was sent. */
static void test_access_log_outcome_line(void)
{
    char path[256];
    snprintf(path, sizeof path, "%s/access-outcome.log", tmpdir);
    sl_outcome_t o = {
        .id = "req-\"1",
        .end_time = 1700000000.25,
        .peer = "127.0.0.1:4000",
        .method = "POST",
        .path = "/v1/messages?key=REDACTED",
        .names = {"logged-client", "logged-service", NULL, "acme", "m-in", "logged-out"},
        .planned = {"claude-code", "claude", "r", "acme", "claude-x", NULL},
        .status = 200,
        .upstream_status = 200,
        .duration_ms = 12.34,
        .ttfb_ms = 5.06,
        .bytes_in = 10,
        .bytes_out = 20,
        .end = {SL_TERM_UPSTREAM_EOF_EARLY, false, true, "cut"},
        .gateway_key = "alice",
    };
    sl_outcome_t none = {.id = "req-2",
                         .method = "GET",
                         .path = "/x",
                         .status = 404,
                         .duration_ms = 1,
                         .ttfb_ms = -1,
                         .end = {SL_TERM_LOCAL_ERROR, true, false, ""}};
    sl_access_log_outcome(&o); /* off: nothing, and no crash */
    CHECK_EQ_INT(sl_access_log_open(path), 0);
    sl_access_log_outcome(&o);
    sl_access_log_outcome(&none);
    sl_access_log_close();
    char *s = slurp(path, NULL);
    CHECK_EQ_STR(s, "{\"time\":1700000000.250,\"id\":\"req-\\\"1\",\"peer\":\"127.0.0.1:4000\","
                    "\"method\":\"POST\",\"path\":\"/v1/messages?key=REDACTED\","
                    "\"service\":\"claude\",\"client\":\"claude-code\",\"key\":\"alice\","
                    "\"supplier\":\"acme\","
                    "\"model_in\":\"claude-x\",\"model_out\":null,\"status\":200,"
                    "\"upstream_status\":200,\"duration_ms\":12.3,\"ttfb_ms\":5.1,\"bytes_in\":10,"
                    "\"bytes_out\":20,\"reason\":\"UPSTREAM_EOF_EARLY\",\"partial\":true,"
                    "\"expected\":false}\n"
                    "{\"time\":0.000,\"id\":\"req-2\",\"peer\":null,\"method\":\"GET\","
                    "\"path\":\"/x\",\"service\":null,\"client\":null,\"key\":null,\"supplier\":null,"
                    "\"model_in\":null,\"model_out\":null,\"status\":404,\"upstream_status\":0,"
                    "\"duration_ms\":1.0,\"bytes_in\":0,\"bytes_out\":0,\"reason\":\"LOCAL_ERROR\","
                    "\"partial\":false,\"expected\":true}\n");
    free(s);
}

static void test_access_log_off_and_bad_path(void)
{
    CHECK_EQ_INT(sl_access_log_open("off"), 0);
    CHECK(!sl_access_log_enabled());
    CHECK_EQ_INT(sl_access_log_open(NULL), 0);
    CHECK(!sl_access_log_enabled());
    char path[256];
    snprintf(path, sizeof path, "%s/no/such/dir/access.log", tmpdir);
    int rc = sl_access_log_open(path);
    CHECK(rc < 0);
    CHECK(!sl_access_log_enabled());
}

#define WRITERS 8
#define LINES_PER_WRITER 2000

static void *writer_main(void *arg)
{
    int id = (int)(intptr_t)arg;
    char line[9000];
    for (int i = 0; i < LINES_PER_WRITER; i++) {
        /* Lengths vary up to twice a pipe buffer, so a line cannot rely on
         * the kernel's atomic small writes. */
        size_t pad = (size_t)((i * 37 + id * 101) % 8192);
        int n = snprintf(line, sizeof line, "{\"w\":%d,\"i\":%d,\"pad\":\"", id, i);
        memset(line + n, 'a' + id, pad);
        n += (int)pad;
        n += snprintf(line + n, sizeof line - (size_t)n, "\"}");
        sl_access_log_write(line, (size_t)n);
    }
    return NULL;
}

/* Every line is exactly one writer's line: well-formed, in order per writer. */
static void test_access_log_concurrent_writers_never_interleave(void)
{
    char path[256];
    snprintf(path, sizeof path, "%s/access-mt.log", tmpdir);
    CHECK_EQ_INT(sl_access_log_open(path), 0);
    pthread_t th[WRITERS];
    for (int i = 0; i < WRITERS; i++)
        pthread_create(&th[i], NULL, writer_main, (void *)(intptr_t)i);
    for (int i = 0; i < WRITERS; i++)
        pthread_join(th[i], NULL);
    sl_access_log_close();

    char *s = slurp(path, NULL);
    CHECK(s != NULL);
    if (!s)
        return;
    int next[WRITERS] = {0};
    int lines = 0, bad = 0;
    for (char *p = s, *nl; *p && (nl = strchr(p, '\n')); p = nl + 1, lines++) {
        *nl = '\0';
        int w = -1, i = -1, off = 0;
        if (sscanf(p, "{\"w\":%d,\"i\":%d,\"pad\":\"%n", &w, &i, &off) != 2 || w < 0 ||
            w >= WRITERS || i != next[w]) {
            bad++;
            continue;
        }
        next[w]++;
        size_t pad = (size_t)((i * 37 + w * 101) % 8192);
        const char *q = p + off;
        size_t k = 0;
        while (k < pad && q[k] == 'a' + w)
            k++;
        if (k != pad || strcmp(q + pad, "\"}") != 0)
            bad++;
    }
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(lines, WRITERS * LINES_PER_WRITER);
    for (int w = 0; w < WRITERS; w++)
        CHECK_EQ_INT(next[w], LINES_PER_WRITER);
    free(s);
}

/* ---- error log ---- */

static void test_log_level_parse(void)
{
    sl_log_level_t lv = SL_LOG_DEBUG;
    CHECK_EQ_INT(sl_log_level_parse("warn", &lv), 0);
    CHECK_EQ_INT(lv, SL_LOG_WARN);
    CHECK_EQ_INT(sl_log_level_parse("ERROR", &lv), 0);
    CHECK_EQ_INT(lv, SL_LOG_ERROR);
    CHECK_EQ_INT(sl_log_level_parse("verbose", &lv), SL_EINVAL);
    CHECK_EQ_INT(lv, SL_LOG_ERROR); /* untouched on failure */
}

/* Runs fn with stderr redirected into a file; returns what it printed. */
static char *capture_stderr(void (*fn)(void))
{
    char path[256];
    snprintf(path, sizeof path, "%s/stderr.txt", tmpdir);
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(fd, STDERR_FILENO);
    close(fd);
    fn();
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    return slurp(path, NULL);
}

static void emit_levels(void)
{
    sl_log_set_level(SL_LOG_WARN);
    sl_log_set_thread_id(3);
    sl_log_info("quiet %d", 1);
    sl_log_warn("loud %d", 2);
    sl_log_error("louder %s", "three");
    char big[10000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    sl_log_error("%s", big);
    sl_log_set_thread_id(0);
    sl_log_set_level(SL_LOG_INFO);
}

static void test_error_log_lines(void)
{
    char *s = capture_stderr(emit_levels);
    CHECK(s != NULL);
    if (!s)
        return;
    CHECK(strstr(s, "quiet") == NULL); /* below the level */
    CHECK_STR_HAS(s, "[warn] w3: loud 2\n");
    CHECK_STR_HAS(s, "[error] w3: louder three\n");
    /* The oversized message is cut but still one whole line. */
    CHECK_EQ_INT(th_count(s, "\n"), 3);
    size_t len = strlen(s);
    CHECK(len > 0 && s[len - 1] == '\n');
    free(s);
}

int main(void)
{
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_redact_credential_params);
    RUN(test_redact_keeps_other_params);
    RUN(test_redact_no_query);
    RUN(test_redact_empty_and_bare);
    RUN(test_redact_repeated);
    RUN(test_redact_appends);
    RUN(test_redact_percent_encoded_name);
    RUN(test_access_log_lines);
    RUN(test_access_log_outcome_line);
    RUN(test_access_log_batch);
    RUN(test_access_log_off_and_bad_path);
    RUN(test_access_log_concurrent_writers_never_interleave);
    RUN(test_log_level_parse);
    RUN(test_error_log_lines);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
    return TEST_SUMMARY();
}
