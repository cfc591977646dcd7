/*
 * shared.h — sluice.shared, the process-wide dictionary every worker sees.
 *
 * Each worker thread has its own LuaJIT VM, so anything that must outlive a
 * request *and* be seen by all workers lives here: cached upstream tokens
 * (managed auth), the in-process session store when there is no Redis, and
 * single-flight locks (sl_shared_add with a TTL). Keys and values are byte
 * strings (binary-safe, NULs allowed); each entry may carry a TTL measured on
 * CLOCK_MONOTONIC, so wall-clock jumps neither expire nor resurrect entries.
 *
 * The dictionary is bounded by entry count and by bytes (key + value + a
 * fixed per-entry overhead). When a write pushes it past either bound,
 * expired entries are dropped first, then the least recently used (a get
 * or a write counts as a use). Keys are limited to SL_SHARED_MAX_KEY bytes
 * and values to SL_SHARED_MAX_VALUE bytes; larger ones fail with SL_ELIMIT,
 * as does an entry that alone exceeds the byte bound.
 *
 * Threads: every function except init/shutdown may be called from any
 * thread at any time. Keys and values passed in are borrowed for the call
 * only; values read out are copied into the caller's buffer, so nothing
 * returned points into the dictionary.
 *
 * TTLs are in seconds (fractions allowed); 0 means "never expires".
 * Negative or NaN TTLs are SL_EINVAL; TTLs above 1e9 s count as "never".
 */
#ifndef SL_SHARED_H
#define SL_SHARED_H

#include <stddef.h>

#include <lua.h>

#include "buf.h"

#define SL_SHARED_MAX_KEY (64u * 1024u)
#define SL_SHARED_MAX_VALUE (1024u * 1024u)

/* Bounds used when 0 is passed to sl_shared_init, or when the dictionary is
 * first used without an explicit init (e.g. a Lua spec). */
#define SL_SHARED_DEFAULT_ENTRIES 100000u
#define SL_SHARED_DEFAULT_BYTES (64u * 1024u * 1024u)

/*
 * Creates the singleton. Call once from main before workers start; later
 * calls return 0 and change nothing (the first bounds win). 0 for either
 * bound selects its default. Returns 0 or SL_ENOMEM.
 */
int sl_shared_init(size_t max_entries, size_t max_bytes);
/* Frees every entry. Only when no other thread can touch the dictionary
 * (after the workers have been joined); a later use re-creates it. */
void sl_shared_shutdown(void);

/*
 * Appends the value of `key` to `out` (the caller owns out; its limit is
 * honoured) and, if ttl_left is not NULL, stores the seconds left before it
 * expires (0 = never). Returns 0, SL_ENOTFOUND (absent or expired),
 * SL_ELIMIT/SL_ENOMEM (out could not hold the value), SL_EINVAL.
 */
int sl_shared_get(const char *key, size_t klen, sl_buf_t *out, double *ttl_left);
/* Stores key -> val, replacing any previous value and TTL.
 * Returns 0, SL_ELIMIT, SL_ENOMEM or SL_EINVAL. */
int sl_shared_set(const char *key, size_t klen, const char *val, size_t vlen, double ttl);
/* Like set, but only if the key is absent or expired; SL_EBUSY (and nothing
 * changes) if a live entry exists. Exactly one of many racing callers wins,
 * which makes add + TTL + delete a single-flight lock. */
int sl_shared_add(const char *key, size_t klen, const char *val, size_t vlen, double ttl);
/* Removes key. Returns 0, or SL_ENOTFOUND if it was absent or expired. */
int sl_shared_delete(const char *key, size_t klen);
/*
 * Atomically adds delta to the number stored as text under key and stores
 * the sum in *out (if not NULL). An absent or expired key starts at 0 and
 * gets `ttl`; an existing key keeps its TTL. Returns 0, SL_EINVAL (the value
 * is not a number, or delta/result not finite), SL_ELIMIT, SL_ENOMEM.
 */
int sl_shared_incr(const char *key, size_t klen, double delta, double ttl, double *out);
/* Live entries (expired ones are dropped first). */
size_t sl_shared_count(void);
/* Drops every expired entry now (they are otherwise dropped lazily). */
void sl_shared_flush_expired(void);

/*
 * Lua entry point (module "sluice.shared"); register it in package.preload.
 *   get(key) -> value, ttl_left | nil
 *   set(key, value, ttl?) -> true | nil, err
 *   add(key, value, ttl?) -> true | false, "exists" | nil, err
 *   delete(key) -> true (removed) | false (absent)
 *   incr(key, delta?, ttl?) -> number | nil, err     (delta defaults to 1)
 *   count() -> number
 *   keys(prefix, max?) -> { key... }  (live keys starting with prefix, at most max (1000))
 * Keys and values are strings; numbers are converted as tostring() does.
 * Any other type, or a negative TTL, raises an error (a programming
 * mistake); runtime failures (too large, not a number) return nil, err.
 */
int luaopen_sluice_shared(lua_State *L);

#endif
