/*
 * records_writer.c — what one history record costs, and whether that cost
 * grows with the table (scripts/bench --writer).
 *
 * A worker hands each finished request to the history as a record made from
 * its outcome (sl_record_from_outcome + sl_records_submit); the writer
 * thread inserts batches into SQLite and evicts the oldest rows past
 * `history.max`. Both run on the proxy's CPU, so both are measured:
 *
 *   worker  CPU of the submitting thread per record (making and queueing it)
 *   writer  the rest of the process's CPU per record (the writer thread:
 *           inserts, index pages, eviction, commits)
 *
 * The table is first filled to --rows records (with history.max = --rows,
 * so the measured records each evict one, as a full history does), then
 * --records more are timed. The records look like a passthrough request's:
 * names, an attempt log, a session in extra_json, no bodies. --ids picks
 * the id shape: "time" (what sluice makes: req_ + ms + random) or "random"
 * (what it made before, and what a client's own ids look like).
 *
 * usage: bench_records_writer --rows N --records M --ids time|random --dir D
 * prints one line: rows ids worker_us writer_us total_us wall_s
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "records.h"

static double cpu_s(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static double process_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static uint64_t rng_state = 0x853c49e6748fea9bULL;
static uint64_t next_random(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* The two id shapes; `ms` advances as a clock would. */
static void make_id(char *out, size_t n, int time_ordered, uint64_t ms)
{
    if (time_ordered)
        snprintf(out, n, "req_%012" PRIx64 "%016" PRIx64 "%04x", ms, next_random(),
                 (unsigned)(next_random() & 0xffff));
    else
        snprintf(out, n, "req_%016" PRIx64 "%016" PRIx64, next_random(), next_random());
}

/* Makes and queues one record, as a worker does at the end of a request. */
static int submit_one(sl_records_t *rs, int time_ordered, uint64_t ms)
{
    char id[64], extra[160];
    make_id(id, sizeof id, time_ordered, ms);
    snprintf(extra, sizeof extra, "{\"session\":\"%016" PRIx64 "%016" PRIx64
             "\",\"binding\":{\"supplier\":\"openai\",\"key_index\":1}}",
             next_random(), next_random());
    sl_attempt_t attempt = {.supplier = "openai", .status = 200, .error = NULL, .duration_ms = 41.5};
    sl_outcome_t o = {
        .id = id,
        .end_time = ms / 1000.0,
        .peer = "127.0.0.1:40000",
        .method = "POST",
        .path = "/v1/chat/completions",
        .names = {.client = "openai-sdk", .service = "chat", .route = "chat", .supplier = "openai",
                  .model_in = "gpt-4.1", .model_out = "gpt-4.1-2025-04-14"},
        .status = 200,
        .upstream_status = 200,
        .duration_ms = 42.0,
        .ttfb_ms = 41.9,
        .bytes_in = 1830,
        .bytes_out = 1699,
        .end = {.reason = SL_TERM_COMPLETE},
        .input_tokens = 1200,
        .output_tokens = 310,
        .cache_read_tokens = 1024,
        .cache_write_tokens = -1,
        .cost = 0.00123,
        .gateway_key = "team-a",
        .extra_json = extra,
        .attempts = 1,
        .attempt_log = &attempt,
        .nattempt_log = 1,
    };
    sl_record_t *r = sl_record_from_outcome(&o, 0);
    return r ? sl_records_submit(rs, r) : -1;
}

/* Submits n records in chunks the queue can hold, waiting for each chunk. */
static int submit(sl_records_t *rs, long n, int time_ordered, uint64_t *ms)
{
    for (long done = 0; done < n;) {
        long chunk = n - done < 2000 ? n - done : 2000;
        for (long i = 0; i < chunk; i++)
            if (submit_one(rs, time_ordered, (*ms)++) != 0)
                return -1;
        if (sl_records_flush(rs, -1) != 0)
            return -1;
        done += chunk;
    }
    return 0;
}

int main(int argc, char **argv)
{
    long rows = 1000, records = 20000;
    int time_ordered = 1;
    const char *dir = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--rows"))
            rows = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--records"))
            records = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--ids"))
            time_ordered = strcmp(argv[i + 1], "random") != 0;
        else if (!strcmp(argv[i], "--dir"))
            dir = argv[i + 1];
    }
    if (!dir || rows < 1 || records < 1) {
        fprintf(stderr, "usage: %s --rows N --records M --ids time|random --dir D\n", argv[0]);
        return 2;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/history-%ld-%s.db", dir, rows, time_ordered ? "time" : "random");
    remove(path);
    sl_records_t *rs = NULL;
    if (sl_records_open(&rs, path, (int)rows, 0) != 0)
        return 1;
    uint64_t ms = 1764000000000ULL;
    if (submit(rs, rows, time_ordered, &ms) != 0)
        return 1;

    double t0 = cpu_s(CLOCK_THREAD_CPUTIME_ID), p0 = process_cpu_s();
    struct timespec w0, w1;
    clock_gettime(CLOCK_MONOTONIC, &w0);
    if (submit(rs, records, time_ordered, &ms) != 0)
        return 1;
    clock_gettime(CLOCK_MONOTONIC, &w1);
    double worker = cpu_s(CLOCK_THREAD_CPUTIME_ID) - t0, total = process_cpu_s() - p0;
    double wall = (w1.tv_sec - w0.tv_sec) + (w1.tv_nsec - w0.tv_nsec) / 1e9;
    printf("%ld %s %.2f %.2f %.2f %.2f\n", rows, time_ordered ? "time" : "random",
           worker / records * 1e6, (total - worker) / records * 1e6, total / records * 1e6, wall);
    sl_records_close(rs);
    remove(path);
    snprintf(path + strlen(path), sizeof path - strlen(path), "-wal");
    remove(path);
    return sl_records_dropped() ? 1 : 0;
}
