/*
 * metrics.h — process-wide counters, gauges and histograms, rendered as
 * Prometheus text (exposition format 0.0.4) for /_sluice/metrics.
 *
 * Every function may be called from any thread at any time, including before
 * sl_metrics_init(): all state is statically initialised. Counters with
 * labels keep one series per distinct label set; label sets are expected to
 * be few (services, suppliers, statuses, reasons), and past a cap of 1000
 * series per family new label sets are folded into one series whose label
 * values are all "_other", so a misbehaving label (say, a model name taken
 * from the client) cannot grow memory without bound.
 *
 * String arguments are borrowed for the duration of the call; NULL is
 * treated as "". Label values may hold any bytes: they are escaped (\\, \",
 * \n) and invalid UTF-8 is replaced by U+FFFD when rendered.
 */
#ifndef SL_METRICS_H
#define SL_METRICS_H

#include "buf.h"
#include "outcome.h"

typedef enum {
    SL_GAUGE_CONNECTIONS, /* sluice_active_connections: open downstream connections */
    SL_GAUGE_STREAMS,     /* sluice_active_streams: requests in flight */
    SL_GAUGE_REDIS,       /* sluice_redis_connections: worker connections to Redis that are up */
    SL_GAUGE__COUNT
} sl_metric_gauge_t;

/* Idempotent; nothing needs it today, call it once at start-up anyway so a
 * future metric that does need set-up has a place to go. */
void sl_metrics_init(void);

/* sluice_requests_total{service,supplier,status}: one per finished request. */
void sl_metrics_request(const char *service, const char *supplier, int status);
/* sluice_outcomes_total{reason,partial}: how each request ended. */
void sl_metrics_outcome(const char *reason, int partial);
/* sluice_request_duration_seconds: whole request, start to last byte.
 * Negative or non-finite values are ignored. */
void sl_metrics_observe_duration(double seconds);
/* sluice_first_byte_seconds: start to the first byte sent to the client.
 * Negative (no byte sent) or non-finite values are ignored. */
void sl_metrics_observe_ttfb(double seconds);
/* A proxied request ended: requests_total (its names' service, or "none";
 * supplier, or "none"; status), outcomes_total, and the duration and
 * first-byte histograms. */
void sl_metrics_request_outcome(const sl_outcome_t *o);
/* Moves sluice_active_connections / sluice_active_streams by delta. */
void sl_metrics_gauge_add(sl_metric_gauge_t g, int delta);
/* sluice_reloads_total{result="ok"|"failed"}. */
void sl_metrics_reload(int ok);
/* sluice_script_errors_total{hook}: a Lua hook raised or ran over budget. */
void sl_metrics_script_error(const char *hook);
/*
 * Adds one to counter `name` (created on first use), with one label
 * label_k="label_v", or no label when label_k is NULL. `name` must be a valid
 * metric name ([a-zA-Z_:][a-zA-Z0-9_:]*) not used by a built-in metric, and
 * label_k a valid label name; a family keeps the label name it was created
 * with. Calls that break these rules are ignored (at most 64 such families).
 */
void sl_metrics_count(const char *name, const char *label_k, const char *label_v);

/* Appends the exposition text (# HELP / # TYPE, then samples) of every
 * metric to `out`. Returns 0, SL_ENOMEM or SL_ELIMIT (out's limit). */
int sl_metrics_render(sl_buf_t *out);

/* Forgets every series and zeroes everything. Tests only: not safe against
 * concurrent updates. */
void sl_metrics_reset(void);

#endif
