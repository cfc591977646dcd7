/*
 * admin_feed.h — GET /_sluice/requests/stream, the live feed of finished
 * requests as Server-Sent Events (see admin_feed.c). Called by the admin API
 * once the token is checked.
 */
#ifndef SL_ADMIN_FEED_H
#define SL_ADMIN_FEED_H

#include "records.h"
#include "server.h"

typedef struct sl_worker_s sl_worker_t;

/* Starts the feed on req's connection; it lasts until the client goes or
 * the worker stops. rs must outlive the worker (it is the app's history). */
void sl_admin_feed_start(sl_worker_t *w, sl_request_t *req, sl_records_t *rs);

#endif
