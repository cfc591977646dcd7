/*
 * admin_feed.c — GET /_sluice/requests/stream: an SSE feed of the requests
 * that finish from now on, one `event: record` per history record (the JSON
 * of a /_sluice/requests item), `id:` its place in the history so a client
 * that reconnects with Last-Event-ID misses none.
 *
 * Records reach the history through its writer thread, on no worker's loop,
 * so the feed follows the table rather than the workers: every FEED_POLL_MS
 * it asks, on libuv's thread pool (SQLite never runs on a worker loop),
 * for the rows after the last one it sent. A subscriber therefore costs
 * nothing while no request finishes but one indexed rowid range, and needs
 * no hook in the request path. The response head waits for the first poll,
 * which fixes where the feed starts (after a flush of the history's queue),
 * so a request made once the client has the head is always in the feed. A client that does not read
 * is not fed (its write queue above the high watermark); a comment every FEED_HEARTBEAT_MS shows a
 * gone client and keeps idle proxies open. When the worker stops, the feed ends so the shutdown
 * need not wait for it.
 */
#include "admin_feed.h"

#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "records.h"
#include "worker.h"

#define FEED_POLL_MS 250
#define FEED_HEARTBEAT_MS 15000
#define FEED_BATCH 200

typedef struct {
    uv_timer_t timer;
    uv_work_t work;
    sl_worker_t *w;
    sl_records_t *rs;
    sl_conn_t *conn;   /* NULL once the client has gone or the feed ended */
    int64_t after_seq; /* the last record sent; < 0 until the first poll */
    int working;       /* a poll is on the thread pool */
    int timer_open;    /* the timer handle is not closed yet */
    int head_sent;     /* after the first poll: the feed's start is fixed then */
    sl_buf_t out;      /* the poll's SSE text, written on the loop */
    int rc;
    uint64_t last_write; /* uv_now() of the last bytes sent */
} feed_t;

static void maybe_free(feed_t *f)
{
    if (f->working || f->timer_open)
        return;
    sl_buf_free(&f->out);
    free(f);
}

static void on_timer_closed(uv_handle_t *h)
{
    feed_t *f = h->data;
    f->timer_open = 0;
    maybe_free(f);
}

/* Stops polling; the feed is freed once a poll in flight is back. */
static void feed_end(feed_t *f)
{
    if (f->conn) {
        sl_conn_set_handler(f->conn, NULL, NULL);
        if (f->head_sent)
            sl_conn_finish(f->conn);
        else /* stopping before the feed began */
            sl_conn_respond(f->conn, 503, NULL, 0, SL_STR("sluice is shutting down\n"));
        f->conn = NULL;
    }
    if (f->timer_open && !uv_is_closing((uv_handle_t *)&f->timer))
        uv_close((uv_handle_t *)&f->timer, on_timer_closed);
}

static void on_client_gone(void *data, int err)
{
    feed_t *f = data;
    (void)err;
    f->conn = NULL;
    feed_end(f);
}

static const sl_conn_handler_t feed_conn_handler = {on_client_gone, NULL};

static void append_event(void *arg, int64_t seq, const char *json, size_t len)
{
    sl_buf_t *b = arg;
    sl_buf_printf(b, "id: %lld\nevent: record\ndata: ", (long long)seq);
    sl_buf_append(b, json, len); /* one line: the records module writes compact JSON */
    sl_buf_append_c(b, "\n\n");
}

static void poll_work(uv_work_t *wk)
{
    feed_t *f = wk->data;
    if (f->after_seq < 0) /* "from now on" includes what finished before the feed opened */
        sl_records_flush(f->rs, 1000);
    f->rc = sl_records_feed(f->rs, &f->after_seq, FEED_BATCH, append_event, &f->out);
}

/* The head goes out once the first poll has fixed where the feed starts:
 * a request the client makes after seeing it is then always in the feed. */
static int send_head(feed_t *f)
{
    static const sl_header_t head[] = {
        {SL_STR("content-type"), SL_STR("text/event-stream")},
        {SL_STR("cache-control"), SL_STR("no-cache")},
    };
    f->head_sent = 1;
    f->last_write = uv_now(&f->w->loop);
    return sl_conn_send_head(f->conn, 200, head, 2, -1) != 0 ||
           sl_conn_send_body(f->conn, ": sluice request feed\n\n", 23) != 0;
}

static void poll_done(uv_work_t *wk, int status)
{
    feed_t *f = wk->data;
    f->working = 0;
    if (f->conn && !f->head_sent && send_head(f) != 0) {
        feed_end(f);
    } else if (f->conn && status == 0 && f->rc == 0 && f->out.len) {
        sl_conn_send_body(f->conn, f->out.base, f->out.len);
        f->last_write = uv_now(&f->w->loop);
    }
    sl_buf_reset(&f->out);
    maybe_free(f);
}

static void on_tick(uv_timer_t *t)
{
    feed_t *f = t->data;
    if (!f->conn || f->w->stopping) {
        feed_end(f);
        return;
    }
    uint64_t now = uv_now(&f->w->loop);
    if (f->head_sent && now - f->last_write >= FEED_HEARTBEAT_MS) {
        sl_conn_send_body(f->conn, ": keep-alive\n\n", 14);
        f->last_write = now;
        if (!f->conn)
            return; /* the write failed and the client is gone */
    }
    if (f->working || sl_conn_write_queue(f->conn) > SL_CONN_HIGH_WATER)
        return;
    f->working = 1;
    f->work.data = f;
    if (uv_queue_work(&f->w->loop, &f->work, poll_work, poll_done) != 0)
        f->working = 0;
}

void sl_admin_feed_start(sl_worker_t *w, sl_request_t *req, sl_records_t *rs)
{
    feed_t *f = calloc(1, sizeof *f);
    if (!f) {
        sl_conn_respond(req->conn, 500, NULL, 0, SL_STR("out of memory\n"));
        return;
    }
    f->w = w;
    f->rs = rs;
    f->conn = req->conn;
    f->after_seq = -1;
    sl_buf_init(&f->out, 0);
    for (size_t i = 0; i < req->nheaders; i++) {
        sl_header_t *h = &req->headers[i];
        if (sl_str_ieq_c(h->name, "last-event-id") && h->value.len && h->value.len < 24) {
            char num[24];
            memcpy(num, h->value.base, h->value.len);
            num[h->value.len] = '\0';
            f->after_seq = strtoll(num, NULL, 10);
        }
    }
    uv_timer_init(&w->loop, &f->timer);
    f->timer.data = f;
    f->timer_open = 1;
    sl_conn_set_handler(f->conn, &feed_conn_handler, f);
    uv_timer_start(&f->timer, on_tick, 0, FEED_POLL_MS); /* the first poll sends the head */
}
