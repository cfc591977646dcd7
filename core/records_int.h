/*
 * records_int.h — what the history's two files share with each other, and
 * with nothing else (only core/records*.c include it).
 *
 *   records.c        the table, its writer thread, the read-connection pool,
 *                    the listing, one record, the live feed;
 *   records_usage.c  GET /_sluice/usage: totals over a time range, grouped,
 *                    computed in one pass over the usage index.
 *
 * Names shared across these files start with sl__ (STYLE).
 */
#ifndef SL_RECORDS_INT_H
#define SL_RECORDS_INT_H

#include <sqlite3.h>

#include "records.h"

/* A read connection from the pool (opened when the pool is empty), for the
 * calling thread alone until it is given back. 0 or SL_EIO/SL_ENOMEM. */
int sl__records_reader_acquire(sl_records_t *rs, sqlite3 **db);
void sl__records_reader_release(sl_records_t *rs, sqlite3 *db);

/* CREATE INDEX IF NOT EXISTS of the index the usage pass reads; the writer
 * runs it when it opens the history. */
const char *sl__records_usage_index_sql(void);

/* The statement the usage pass steps through, for these groups and bounds
 * (:since and :until named parameters, present only when set); appended to
 * sql. 0 or SL_ENOMEM. test_records reads its query plan. */
int sl__records_usage_sql(const sl_records_usage_t *u, sl_buf_t *sql);

/* The request listing's statement: select_items of the records that match
 * f, newest first, with :limit and :offset (and f's named parameters);
 * appended to sql. 0 or SL_ENOMEM. test_records reads its query plan. */
int sl__records_list_sql(const char *select_items, const sl_records_filter_t *f, sl_buf_t *sql);

/* An SQLite result code as an SL_E* (0 for OK, ROW and DONE). */
int sl__records_map_sqlite(int rc);

#endif
