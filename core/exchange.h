/*
 * exchange.h — the life of one proxied request (DESIGN §4): the request
 * hook's plan, the upstream transfer, the response head, the body (passed
 * through, framed into SSE events for the events hook, or buffered for the
 * body hook), the termination classifier, the finish hook, and the record.
 *
 * An exchange is owned by its worker and freed after its timers close. It
 * keeps the Lua host it started on (a reload does not disturb it).
 */
#ifndef SL_EXCHANGE_H
#define SL_EXCHANGE_H

#include "server.h"
#include "worker.h"

/* The server's request callback for proxied and admin requests. */
void sl_exchange_start(sl_request_t *req, void *worker);
/* Ends an in-flight exchange with a SHUTDOWN outcome (drain timeout). */
void sl_exchange_shutdown(sl_exchange_t *ex);
sl_exchange_t *sl_exchange_next(sl_exchange_t *ex);

#endif
