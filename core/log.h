/*
 * log.h — the error log and the access log.
 *
 * The error log is human-oriented text on stderr, one line per call, with a
 * timestamp, level and worker id. The access log is one JSON object per
 * request, written to a file, stderr, or nowhere. Both are safe to call from
 * any worker thread: each line is formatted into a private buffer first and
 * written with a single write(2) under a mutex, so lines never interleave.
 * A worker batches its access-log lines instead (sl_access_log_batch) and
 * writes them once per pass of its event loop (sl_access_log_flush): one
 * write for every request that ended in that pass.
 *
 * Nothing secret may be passed to either: callers redact first
 * (sl_log_redact_query() removes `key=` query parameters).
 */
#ifndef SL_LOG_H
#define SL_LOG_H

#include <stddef.h>

#include "buf.h"
#include "outcome.h"

typedef enum { SL_LOG_DEBUG, SL_LOG_INFO, SL_LOG_WARN, SL_LOG_ERROR } sl_log_level_t;

void sl_log_set_level(sl_log_level_t level);
int sl_log_level_parse(const char *name, sl_log_level_t *out);
/* The id printed with each line of the calling thread (0 = main). */
void sl_log_set_thread_id(int id);

void sl_log(sl_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define sl_log_debug(...) sl_log(SL_LOG_DEBUG, __VA_ARGS__)
#define sl_log_info(...) sl_log(SL_LOG_INFO, __VA_ARGS__)
#define sl_log_warn(...) sl_log(SL_LOG_WARN, __VA_ARGS__)
#define sl_log_error(...) sl_log(SL_LOG_ERROR, __VA_ARGS__)

/* Access log destination: NULL or "off" disables, "stderr", or a file path
 * (opened for append). Returns 0 or a negative error. */
int sl_access_log_open(const char *where);
void sl_access_log_close(void);
int sl_access_log_enabled(void);
/* Writes one line (a newline is appended), or adds it to the thread's batch. */
void sl_access_log_write(const char *line, size_t len);
/* on = 1: the calling thread's lines wait in a batch until
 * sl_access_log_flush (or until 64 KB wait); on = 0 writes what waits and
 * stops batching. */
void sl_access_log_batch(int on);
/* Writes the calling thread's batched lines, whole, with one write. */
void sl_access_log_flush(void);
/* Writes a request's line, when the access log is on: a JSON object with
 * time, id, peer, method, path, the planned names (service, client,
 * supplier, model_in, model_out), status, upstream_status, duration_ms,
 * ttfb_ms (only when a byte was sent), bytes_in, bytes_out, reason, partial
 * and expected. */
void sl_access_log_outcome(const sl_outcome_t *o);

/* Appends `url` to `out` with the values of credential-bearing query
 * parameters (key, api_key, access_token, token) replaced by "REDACTED". */
int sl_log_redact_query(sl_buf_t *out, sl_str_t url);

#endif
