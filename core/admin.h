/*
 * admin.h — the /_sluice/... API, answered by the worker that received it:
 * health, metrics (Prometheus text), request history (list, get, delete),
 * reload, and the running config with secrets redacted. Requires
 * `Authorization: Bearer <admin.token>` whenever a token is configured
 * (config validation insists on one for non-loopback listeners).
 */
#ifndef SL_ADMIN_H
#define SL_ADMIN_H

#include "server.h"

typedef struct sl_worker_s sl_worker_t;

/* Answers `req` (its path starts with /_sluice/) for worker w (worker.h). */
void sl_admin_handle(sl_worker_t *w, sl_request_t *req);

#endif
