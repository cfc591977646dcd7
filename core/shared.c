/*
 * shared.c — the cross-thread dictionary with TTL behind sluice.shared (see
 * shared.h for the contract).
 *
 * Layout: 16 shards, each a chained hash table with its own mutex, its own
 * LRU list and its own min-heap of expiry times, so two workers touching
 * different keys almost never wait for each other. Key hashes are seeded
 * SipHash-1-3: session keys come from clients, and an unseeded hash would let
 * a client pile every key into one chain.
 *
 * The bounds are global (atomic counters), not per shard: per-shard quotas
 * would start evicting at a fraction of the configured size whenever keys
 * hash unevenly, which a user would see as a cache that forgets early.
 * Eviction runs after the write, outside the shard lock, one evictor at a
 * time: it drops expired entries (heap tops) anywhere first, then the entry
 * with the oldest use stamp among the 16 LRU tails — i.e. the global LRU.
 *
 * Locks are held only for pointer work and memcpy: entries are allocated
 * before the lock is taken and freed after it is released; table and heap
 * growth allocate with the lock dropped and install the result under it.
 */
#include "shared.h"

#include <lauxlib.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "error.h"

#define NSHARDS 16
#define SHARD_BITS 4
#define LOAD 2             /* max entries per bucket before a shard's table doubles */
#define INITIAL_BUCKETS 64 /* per shard; tables grow on demand, so idle bounds cost nothing */
#define NUM_CAP 32         /* every value slot holds a formatted number, so incr never allocates */
#define NO_SLOT SIZE_MAX
#define TTL_FOREVER 1e9 /* seconds; longer TTLs mean "never" */

typedef struct entry {
    struct entry *hnext;       /* hash chain (reused as a free list once unlinked) */
    struct entry *prev, *next; /* LRU list: head = most recently used */
    uint64_t hash;
    uint64_t expires; /* CLOCK_MONOTONIC ns; 0 = never */
    uint64_t used;    /* use stamp, comparable across shards */
    size_t hidx;      /* slot in the shard's expiry heap, NO_SLOT if none */
    size_t cost;      /* bytes charged against max_bytes */
    uint32_t klen, vlen, vcap;
    char data[]; /* klen key bytes, then vcap value bytes */
} entry_t;

typedef struct {
    pthread_mutex_t lock;
    entry_t **buckets;
    size_t nbuckets; /* power of two */
    size_t count;
    entry_t *head, *tail;
    entry_t **heap; /* entries with a TTL, ordered by expires */
    size_t heap_len, heap_cap;
} __attribute__((aligned(64))) shard_t;

static struct {
    shard_t shards[NSHARDS];
    size_t max_entries, max_bytes;
    atomic_size_t entries, bytes;
    pthread_mutex_t evict_lock;
    uint64_t seed[2];
} g;

static atomic_int ready;
static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;

/* ---- hashing, time ------------------------------------------------------- */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                   \
    do {                                                                                           \
        v0 += v1;                                                                                  \
        v1 = ROTL(v1, 13);                                                                         \
        v1 ^= v0;                                                                                  \
        v0 = ROTL(v0, 32);                                                                         \
        v2 += v3;                                                                                  \
        v3 = ROTL(v3, 16);                                                                         \
        v3 ^= v2;                                                                                  \
        v0 += v3;                                                                                  \
        v3 = ROTL(v3, 21);                                                                         \
        v3 ^= v0;                                                                                  \
        v2 += v1;                                                                                  \
        v1 = ROTL(v1, 17);                                                                         \
        v1 ^= v2;                                                                                  \
        v2 = ROTL(v2, 32);                                                                         \
    } while (0)

static uint64_t siphash13(const unsigned char *in, size_t len)
{
    uint64_t v0 = 0x736f6d6570736575ULL ^ g.seed[0], v1 = 0x646f72616e646f6dULL ^ g.seed[1];
    uint64_t v2 = 0x6c7967656e657261ULL ^ g.seed[0], v3 = 0x7465646279746573ULL ^ g.seed[1];
    uint64_t b = (uint64_t)len << 56, m;
    size_t whole = len - (len % 8);
    for (size_t i = 0; i < whole; i += 8) {
        memcpy(&m, in + i, 8);
        v3 ^= m;
        SIPROUND;
        v0 ^= m;
    }
    for (size_t i = len % 8; i > 0; i--)
        b |= (uint64_t)in[whole + i - 1] << (8 * (i - 1));
    v3 ^= b;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* A use stamp: the clock, forced strictly increasing within a thread so that
 * one thread's uses are ordered even on a coarse clock. */
static uint64_t use_stamp(uint64_t now)
{
    static _Thread_local uint64_t last;
    last = now > last ? now : last + 1;
    return last;
}

static int ttl_to_expiry(double ttl, uint64_t now, uint64_t *expires)
{
    if (isnan(ttl) || ttl < 0)
        return SL_EINVAL;
    if (ttl == 0 || ttl > TTL_FOREVER) {
        *expires = 0;
        return 0;
    }
    uint64_t ns = (uint64_t)ceil(ttl * 1e9);
    *expires = now + (ns ? ns : 1);
    return 0;
}

static int is_live(const entry_t *e, uint64_t now)
{
    return e->expires == 0 || e->expires > now;
}

static shard_t *shard_of(uint64_t hash)
{
    return &g.shards[hash >> (64 - SHARD_BITS)];
}

/* ---- entries --------------------------------------------------------------- */

static size_t entry_cost(size_t klen, size_t vlen)
{
    return sizeof(entry_t) + klen + (vlen > NUM_CAP ? vlen : NUM_CAP);
}

static entry_t *entry_new(uint64_t hash, const char *key, size_t klen, const char *val, size_t vlen,
                          uint64_t expires)
{
    size_t vcap = vlen > NUM_CAP ? vlen : NUM_CAP;
    entry_t *e = malloc(sizeof(entry_t) + klen + vcap);
    if (!e)
        return NULL;
    memset(e, 0, sizeof *e);
    e->hash = hash;
    e->expires = expires;
    e->hidx = NO_SLOT;
    e->cost = sizeof(entry_t) + klen + vcap;
    e->klen = (uint32_t)klen;
    e->vlen = (uint32_t)vlen;
    e->vcap = (uint32_t)vcap;
    if (klen)
        memcpy(e->data, key, klen);
    if (vlen)
        memcpy(e->data + klen, val, vlen);
    return e;
}

static void free_list(entry_t *e)
{
    while (e) {
        entry_t *next = e->hnext;
        free(e);
        e = next;
    }
}

/* ---- the expiry heap (per shard, under its lock) ----------------------------- */

static void heap_place(shard_t *s, size_t i, entry_t *e)
{
    s->heap[i] = e;
    e->hidx = i;
}

static void heap_up(shard_t *s, size_t i)
{
    entry_t *e = s->heap[i];
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (s->heap[p]->expires <= e->expires)
            break;
        heap_place(s, i, s->heap[p]);
        i = p;
    }
    heap_place(s, i, e);
}

static void heap_down(shard_t *s, size_t i)
{
    entry_t *e = s->heap[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= s->heap_len)
            break;
        if (c + 1 < s->heap_len && s->heap[c + 1]->expires < s->heap[c]->expires)
            c++;
        if (e->expires <= s->heap[c]->expires)
            break;
        heap_place(s, i, s->heap[c]);
        i = c;
    }
    heap_place(s, i, e);
}

static void heap_remove(shard_t *s, entry_t *e)
{
    size_t i = e->hidx;
    entry_t *last = s->heap[--s->heap_len];
    e->hidx = NO_SLOT;
    if (last == e)
        return;
    heap_place(s, i, last);
    heap_up(s, i);
    heap_down(s, last->hidx);
}

/* ---- shard structure (under its lock) --------------------------------------- */

static entry_t *find(shard_t *s, uint64_t hash, const char *key, size_t klen)
{
    for (entry_t *e = s->buckets[hash & (s->nbuckets - 1)]; e; e = e->hnext)
        if (e->hash == hash && e->klen == klen && memcmp(e->data, key, klen) == 0)
            return e;
    return NULL;
}

static void lru_front(shard_t *s, entry_t *e)
{
    e->prev = NULL;
    e->next = s->head;
    if (s->head)
        s->head->prev = e;
    s->head = e;
    if (!s->tail)
        s->tail = e;
}

static void lru_unlink(shard_t *s, entry_t *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        s->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        s->tail = e->prev;
}

static void touch(shard_t *s, entry_t *e, uint64_t stamp)
{
    e->used = stamp;
    if (s->head != e) {
        lru_unlink(s, e);
        lru_front(s, e);
    }
}

/* Needs room in the heap if e has a TTL (checked by the caller). */
static void link_entry(shard_t *s, entry_t *e)
{
    entry_t **b = &s->buckets[e->hash & (s->nbuckets - 1)];
    e->hnext = *b;
    *b = e;
    lru_front(s, e);
    if (e->expires) {
        s->heap[s->heap_len] = e;
        e->hidx = s->heap_len++;
        heap_up(s, e->hidx);
    }
    s->count++;
    atomic_fetch_add_explicit(&g.entries, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&g.bytes, e->cost, memory_order_relaxed);
}

static void unlink_entry(shard_t *s, entry_t *e)
{
    entry_t **p = &s->buckets[e->hash & (s->nbuckets - 1)];
    while (*p != e)
        p = &(*p)->hnext;
    *p = e->hnext;
    e->hnext = NULL;
    lru_unlink(s, e);
    if (e->hidx != NO_SLOT)
        heap_remove(s, e);
    s->count--;
    atomic_fetch_sub_explicit(&g.entries, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&g.bytes, e->cost, memory_order_relaxed);
}

/* Unlinks every expired entry of s and pushes it on `dead`. */
static entry_t *drop_expired(shard_t *s, uint64_t now, entry_t *dead)
{
    while (s->heap_len && s->heap[0]->expires <= now) {
        entry_t *e = s->heap[0];
        unlink_entry(s, e);
        e->hnext = dead;
        dead = e;
    }
    return dead;
}

static int needs_room(const shard_t *s, const entry_t *e)
{
    return (e->expires && s->heap_len == s->heap_cap) || s->count >= s->nbuckets * LOAD;
}

/* Grows s's table and/or heap: sizes are decided under the lock, memory is
 * allocated without it, and installed only if nobody grew them meanwhile. */
static int shard_grow(shard_t *s)
{
    pthread_mutex_lock(&s->lock);
    size_t nb = s->count >= s->nbuckets * LOAD ? s->nbuckets * 2 : 0;
    size_t hc = s->heap_len == s->heap_cap ? (s->heap_cap ? s->heap_cap * 2 : 16) : 0;
    pthread_mutex_unlock(&s->lock);

    entry_t **buckets = nb ? calloc(nb, sizeof *buckets) : NULL;
    entry_t **heap = hc ? malloc(hc * sizeof *heap) : NULL;
    if ((nb && !buckets) || (hc && !heap)) {
        free(buckets);
        free(heap);
        return SL_ENOMEM;
    }
    pthread_mutex_lock(&s->lock);
    if (buckets && nb > s->nbuckets) {
        for (size_t i = 0; i < s->nbuckets; i++) {
            entry_t *e = s->buckets[i];
            while (e) {
                entry_t *next = e->hnext;
                entry_t **b = &buckets[e->hash & (nb - 1)];
                e->hnext = *b;
                *b = e;
                e = next;
            }
        }
        entry_t **old = s->buckets;
        s->buckets = buckets;
        s->nbuckets = nb;
        buckets = old;
    }
    if (heap && hc > s->heap_cap) {
        if (s->heap_len)
            memcpy(heap, s->heap, s->heap_len * sizeof *heap);
        entry_t **old = s->heap;
        s->heap = heap;
        s->heap_cap = hc;
        heap = old;
    }
    pthread_mutex_unlock(&s->lock);
    free(buckets);
    free(heap);
    return 0;
}

/* ---- eviction ----------------------------------------------------------------- */

static int over_bounds(void)
{
    return atomic_load_explicit(&g.entries, memory_order_relaxed) > g.max_entries ||
           atomic_load_explicit(&g.bytes, memory_order_relaxed) > g.max_bytes;
}

/* Picks and unlinks one round of victims: every expired entry of the first
 * shard that has any, else the global LRU entry. NULL if nothing is left. */
static entry_t *evict_round(void)
{
    uint64_t now = now_ns(), oldest_used = UINT64_MAX;
    shard_t *oldest = NULL;
    for (int i = 0; i < NSHARDS; i++) {
        shard_t *s = &g.shards[i];
        pthread_mutex_lock(&s->lock);
        entry_t *dead = drop_expired(s, now, NULL);
        if (!dead && s->tail && s->tail->used < oldest_used) {
            oldest_used = s->tail->used;
            oldest = s;
        }
        pthread_mutex_unlock(&s->lock);
        if (dead)
            return dead;
    }
    if (!oldest)
        return NULL;
    /* The tail may have been used since we looked; its successor is then
     * the shard's LRU entry, which is as good a victim. */
    pthread_mutex_lock(&oldest->lock);
    entry_t *e = oldest->tail;
    if (e)
        unlink_entry(oldest, e);
    pthread_mutex_unlock(&oldest->lock);
    return e;
}

/* One evictor at a time: concurrent writers that all see the bound crossed
 * would otherwise each evict, dropping more than needed. */
static void evict_over(void)
{
    if (!over_bounds())
        return;
    pthread_mutex_lock(&g.evict_lock);
    while (over_bounds()) {
        entry_t *dead = evict_round();
        if (!dead)
            break;
        free_list(dead);
    }
    pthread_mutex_unlock(&g.evict_lock);
}

/* ---- life cycle ------------------------------------------------------------------ */

static void shard_free(shard_t *s)
{
    entry_t *e = s->head;
    while (e) {
        entry_t *next = e->next;
        free(e);
        e = next;
    }
    free(s->buckets);
    free(s->heap);
    pthread_mutex_destroy(&s->lock);
    memset(s, 0, sizeof *s);
}

int sl_shared_init(size_t max_entries, size_t max_bytes)
{
    pthread_mutex_lock(&init_lock);
    if (atomic_load(&ready)) {
        pthread_mutex_unlock(&init_lock);
        return 0;
    }
    g.max_entries = max_entries ? max_entries : SL_SHARED_DEFAULT_ENTRIES;
    g.max_bytes = max_bytes ? max_bytes : SL_SHARED_DEFAULT_BYTES;
    atomic_store(&g.entries, 0);
    atomic_store(&g.bytes, 0);
    if (getrandom(g.seed, sizeof g.seed, 0) != (ssize_t)sizeof g.seed) {
        /* No entropy source: a weaker seed still beats none. */
        g.seed[0] = now_ns() ^ (uint64_t)(uintptr_t)&g;
        g.seed[1] = g.seed[0] * 0x9E3779B97F4A7C15ULL;
    }
    size_t nb = INITIAL_BUCKETS;
    for (int i = 0; i < NSHARDS; i++) {
        shard_t *s = &g.shards[i];
        memset(s, 0, sizeof *s);
        pthread_mutex_init(&s->lock, NULL);
        s->nbuckets = nb;
        s->buckets = calloc(nb, sizeof *s->buckets);
        if (!s->buckets) {
            for (int j = 0; j <= i; j++)
                shard_free(&g.shards[j]);
            pthread_mutex_unlock(&init_lock);
            return SL_ENOMEM;
        }
    }
    pthread_mutex_init(&g.evict_lock, NULL);
    atomic_store_explicit(&ready, 1, memory_order_release);
    pthread_mutex_unlock(&init_lock);
    return 0;
}

void sl_shared_shutdown(void)
{
    pthread_mutex_lock(&init_lock);
    if (atomic_load(&ready)) {
        for (int i = 0; i < NSHARDS; i++)
            shard_free(&g.shards[i]);
        pthread_mutex_destroy(&g.evict_lock);
        atomic_store(&g.entries, 0);
        atomic_store(&g.bytes, 0);
        atomic_store(&ready, 0);
    }
    pthread_mutex_unlock(&init_lock);
}

/* First use without sl_shared_init (a spec, a tool) gets the defaults. */
static int ensure_init(void)
{
    if (atomic_load_explicit(&ready, memory_order_acquire))
        return 0;
    return sl_shared_init(0, 0);
}

static int check_key(const char *key, size_t klen)
{
    if (!key && klen)
        return SL_EINVAL;
    if (klen > SL_SHARED_MAX_KEY)
        return SL_ELIMIT;
    return ensure_init();
}

/* ---- operations ------------------------------------------------------------------ */

enum { STORE_SET, STORE_ADD };

/* Links e (fresh, unlinked) in place of any previous entry for its key;
 * with STORE_ADD, a live previous entry wins and e is freed (SL_EBUSY). */
static int store(entry_t *e, int mode, uint64_t now)
{
    shard_t *s = shard_of(e->hash);
    const char *key = e->data;
    pthread_mutex_lock(&s->lock);
    while (needs_room(s, e)) {
        pthread_mutex_unlock(&s->lock);
        int rc = shard_grow(s);
        if (rc) {
            free(e);
            return rc;
        }
        pthread_mutex_lock(&s->lock);
    }
    entry_t *old = find(s, e->hash, key, e->klen);
    if (old) {
        if (mode == STORE_ADD && is_live(old, now)) {
            pthread_mutex_unlock(&s->lock);
            free(e);
            return SL_EBUSY;
        }
        unlink_entry(s, old);
    }
    e->used = use_stamp(now);
    link_entry(s, e);
    pthread_mutex_unlock(&s->lock);
    free(old);
    evict_over();
    return 0;
}

static int put(const char *key, size_t klen, const char *val, size_t vlen, double ttl, int mode)
{
    int rc = check_key(key, klen);
    if (rc)
        return rc;
    if (!val && vlen)
        return SL_EINVAL;
    if (vlen > SL_SHARED_MAX_VALUE || entry_cost(klen, vlen) > g.max_bytes)
        return SL_ELIMIT;
    uint64_t now = now_ns(), expires;
    if ((rc = ttl_to_expiry(ttl, now, &expires)) != 0)
        return rc;
    entry_t *e =
        entry_new(siphash13((const unsigned char *)key, klen), key, klen, val, vlen, expires);
    if (!e)
        return SL_ENOMEM;
    return store(e, mode, now);
}

int sl_shared_set(const char *key, size_t klen, const char *val, size_t vlen, double ttl)
{
    return put(key, klen, val, vlen, ttl, STORE_SET);
}

int sl_shared_add(const char *key, size_t klen, const char *val, size_t vlen, double ttl)
{
    return put(key, klen, val, vlen, ttl, STORE_ADD);
}

int sl_shared_get(const char *key, size_t klen, sl_buf_t *out, double *ttl_left)
{
    int rc = check_key(key, klen);
    if (rc)
        return rc;
    if (!out)
        return SL_EINVAL;
    uint64_t hash = siphash13((const unsigned char *)key, klen);
    shard_t *s = shard_of(hash);
    for (;;) {
        uint64_t now = now_ns();
        pthread_mutex_lock(&s->lock);
        entry_t *e = find(s, hash, key, klen);
        if (e && !is_live(e, now)) {
            unlink_entry(s, e);
            pthread_mutex_unlock(&s->lock);
            free(e);
            return SL_ENOTFOUND;
        }
        if (!e) {
            pthread_mutex_unlock(&s->lock);
            return SL_ENOTFOUND;
        }
        if (e->vlen && out->cap < out->len + e->vlen + 1) {
            /* Grow the caller's buffer without holding the lock, then look
             * again: the value may have changed meanwhile. */
            size_t need = e->vlen;
            pthread_mutex_unlock(&s->lock);
            if ((rc = sl_buf_reserve(out, need)) != 0)
                return rc;
            continue;
        }
        rc = sl_buf_append(out, e->data + e->klen, e->vlen); /* no realloc: room checked */
        if (rc == 0) {
            touch(s, e, use_stamp(now));
            if (ttl_left)
                *ttl_left = e->expires ? (double)(e->expires - now) / 1e9 : 0;
        }
        pthread_mutex_unlock(&s->lock);
        return rc;
    }
}

int sl_shared_delete(const char *key, size_t klen)
{
    int rc = check_key(key, klen);
    if (rc)
        return rc;
    uint64_t hash = siphash13((const unsigned char *)key, klen), now = now_ns();
    shard_t *s = shard_of(hash);
    pthread_mutex_lock(&s->lock);
    entry_t *e = find(s, hash, key, klen);
    if (e)
        unlink_entry(s, e);
    pthread_mutex_unlock(&s->lock);
    if (!e)
        return SL_ENOTFOUND;
    rc = is_live(e, now) ? 0 : SL_ENOTFOUND;
    free(e);
    return rc;
}

/* Numbers are stored as the shortest of %.15g/%.16g/%.17g that reads back
 * exactly (integers up to 2^53 without a fraction), so "5" stays "5". At
 * most 24 bytes, which always fits a value slot (NUM_CAP). */
static size_t format_number(double x, char *out, size_t size)
{
    if (x == 0)
        x = 0; /* no "-0" */
    if (x == floor(x) && fabs(x) <= 9007199254740992.0)
        return (size_t)snprintf(out, size, "%.0f", x);
    int n = 0;
    for (int prec = 15; prec <= 17; prec++) {
        n = snprintf(out, size, "%.*g", prec, x);
        if (strtod(out, NULL) == x)
            break;
    }
    return (size_t)n;
}

static int parse_number(const char *s, size_t len, double *out)
{
    char tmp[64];
    if (len == 0 || len >= sizeof tmp)
        return SL_EINVAL;
    memcpy(tmp, s, len);
    tmp[len] = '\0';
    char *end;
    *out = strtod(tmp, &end);
    return end == tmp + len && isfinite(*out) ? 0 : SL_EINVAL;
}

/* Adds delta to a live entry in place; SL_ENOTFOUND if there is none. */
static int incr_existing(uint64_t hash, const char *key, size_t klen, double delta, double *sum)
{
    shard_t *s = shard_of(hash);
    uint64_t now = now_ns();
    pthread_mutex_lock(&s->lock);
    entry_t *e = find(s, hash, key, klen);
    int rc = SL_ENOTFOUND;
    if (e && is_live(e, now)) {
        double cur;
        rc = parse_number(e->data + klen, e->vlen, &cur);
        if (rc == 0 && !isfinite(*sum = cur + delta))
            rc = SL_EINVAL;
        if (rc == 0) {
            char txt[NUM_CAP];
            e->vlen = (uint32_t)format_number(*sum, txt, sizeof txt);
            memcpy(e->data + klen, txt, e->vlen);
            touch(s, e, use_stamp(now));
        }
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

int sl_shared_incr(const char *key, size_t klen, double delta, double ttl, double *out)
{
    int rc = check_key(key, klen);
    if (rc)
        return rc;
    if (!isfinite(delta))
        return SL_EINVAL;
    if (isnan(ttl) || ttl < 0)
        return SL_EINVAL;
    uint64_t hash = siphash13((const unsigned char *)key, klen);
    double sum = 0;
    for (;;) {
        rc = incr_existing(hash, key, klen, delta, &sum);
        if (rc != SL_ENOTFOUND)
            break;
        /* Absent: create it with add, so a racing incr that created it
         * first makes us go round and add to its value instead. */
        char txt[NUM_CAP];
        sum = delta;
        size_t n = format_number(sum, txt, sizeof txt);
        rc = sl_shared_add(key, klen, txt, n, ttl);
        if (rc != SL_EBUSY)
            break;
    }
    if (rc == 0 && out)
        *out = sum;
    return rc;
}

void sl_shared_flush_expired(void)
{
    if (!atomic_load_explicit(&ready, memory_order_acquire))
        return;
    uint64_t now = now_ns();
    for (int i = 0; i < NSHARDS; i++) {
        shard_t *s = &g.shards[i];
        pthread_mutex_lock(&s->lock);
        entry_t *dead = drop_expired(s, now, NULL);
        pthread_mutex_unlock(&s->lock);
        free_list(dead);
    }
}

size_t sl_shared_count(void)
{
    if (!atomic_load_explicit(&ready, memory_order_acquire))
        return 0;
    sl_shared_flush_expired();
    return atomic_load_explicit(&g.entries, memory_order_relaxed);
}

/* ---- Lua binding ------------------------------------------------------------------- */

#define GET_BUF_KEEP (64 * 1024) /* a VM keeps its read buffer up to this size */

static const char *arg_string(lua_State *L, int idx, size_t *len)
{
    int t = lua_type(L, idx);
    if (t != LUA_TSTRING && t != LUA_TNUMBER)
        luaL_argerror(L, idx, lua_pushfstring(L, "string expected, got %s", luaL_typename(L, idx)));
    return lua_tolstring(L, idx, len); /* numbers: the same text as tostring() */
}

static double arg_ttl(lua_State *L, int idx)
{
    if (lua_isnoneornil(L, idx))
        return 0;
    double ttl = luaL_checknumber(L, idx);
    luaL_argcheck(L, ttl >= 0, idx, "ttl must be a number of seconds >= 0");
    return ttl;
}

static int push_error(lua_State *L, int rc)
{
    lua_pushnil(L);
    lua_pushstring(L, sl_strerror(rc));
    return 2;
}

/* get reads into a buffer owned by the VM (upvalue 1), so a hit costs no
 * malloc; VMs are single-threaded, so one buffer per VM is enough. */
static int l_get(lua_State *L)
{
    size_t klen;
    const char *key = arg_string(L, 1, &klen);
    sl_buf_t *buf = lua_touserdata(L, lua_upvalueindex(1));
    double ttl_left = 0;
    buf->len = 0;
    int rc = sl_shared_get(key, klen, buf, &ttl_left);
    if (rc == 0) {
        lua_pushlstring(L, buf->base ? buf->base : "", buf->len);
        lua_pushnumber(L, ttl_left);
    }
    if (buf->cap > GET_BUF_KEEP)
        sl_buf_free(buf);
    if (rc == 0)
        return 2;
    if (rc == SL_ENOTFOUND) {
        lua_pushnil(L);
        return 1;
    }
    return push_error(L, rc);
}

static int l_put(lua_State *L, int mode)
{
    size_t klen, vlen;
    const char *key = arg_string(L, 1, &klen);
    const char *val = arg_string(L, 2, &vlen);
    double ttl = arg_ttl(L, 3);
    int rc = mode == STORE_ADD ? sl_shared_add(key, klen, val, vlen, ttl)
                               : sl_shared_set(key, klen, val, vlen, ttl);
    if (rc == 0) {
        lua_pushboolean(L, 1);
        return 1;
    }
    if (rc == SL_EBUSY) {
        lua_pushboolean(L, 0);
        lua_pushliteral(L, "exists");
        return 2;
    }
    return push_error(L, rc);
}

static int l_set(lua_State *L)
{
    return l_put(L, STORE_SET);
}

static int l_add(lua_State *L)
{
    return l_put(L, STORE_ADD);
}

static int l_delete(lua_State *L)
{
    size_t klen;
    const char *key = arg_string(L, 1, &klen);
    int rc = sl_shared_delete(key, klen);
    if (rc != 0 && rc != SL_ENOTFOUND)
        return push_error(L, rc);
    lua_pushboolean(L, rc == 0);
    return 1;
}

/* keys(prefix, max) -> { key... }: up to max live keys that start with
 * prefix, most recently used first within each shard (an admin listing,
 * not a hot path: it walks every shard under its lock). */
static int l_keys(lua_State *L)
{
    size_t plen;
    const char *prefix = luaL_checklstring(L, 1, &plen);
    lua_Integer max = luaL_optinteger(L, 2, 1000);
    int rc = ensure_init();
    if (rc)
        return push_error(L, rc);
    uint64_t now = now_ns();
    /* copied out under each shard's lock (as 4-byte length + bytes), pushed to
     * Lua after it: a Lua allocation failure must not leave a lock held */
    sl_buf_t found;
    sl_buf_init(&found, 0);
    lua_Integer n = 0;
    for (int i = 0; i < NSHARDS && n < max && rc == 0; i++) {
        shard_t *s = &g.shards[i];
        pthread_mutex_lock(&s->lock);
        for (entry_t *e = s->head; e && n < max && rc == 0; e = e->next)
            if (is_live(e, now) && e->klen >= plen && memcmp(e->data, prefix, plen) == 0) {
                uint32_t len = e->klen;
                rc = sl_buf_append(&found, (const char *)&len, sizeof len);
                rc = rc ? rc : sl_buf_append(&found, e->data, len);
                n++;
            }
        pthread_mutex_unlock(&s->lock);
    }
    if (rc) {
        sl_buf_free(&found);
        return push_error(L, rc);
    }
    lua_createtable(L, (int)n, 0);
    size_t at = 0;
    for (int k = 1; at < found.len; k++) {
        uint32_t len;
        memcpy(&len, found.base + at, sizeof len);
        lua_pushlstring(L, found.base + at + sizeof len, len);
        lua_rawseti(L, -2, k);
        at += sizeof len + len;
    }
    sl_buf_free(&found);
    return 1;
}

static int l_incr(lua_State *L)
{
    size_t klen;
    const char *key = arg_string(L, 1, &klen);
    double delta = luaL_optnumber(L, 2, 1);
    luaL_argcheck(L, isfinite(delta), 2, "delta must be a finite number");
    double ttl = arg_ttl(L, 3), sum;
    int rc = sl_shared_incr(key, klen, delta, ttl, &sum);
    if (rc == 0) {
        lua_pushnumber(L, sum);
        return 1;
    }
    if (rc == SL_EINVAL) {
        lua_pushnil(L);
        lua_pushliteral(L, "not a number");
        return 2;
    }
    return push_error(L, rc);
}

static int l_count(lua_State *L)
{
    lua_pushnumber(L, (lua_Number)sl_shared_count());
    return 1;
}

static int l_buf_gc(lua_State *L)
{
    sl_buf_free(lua_touserdata(L, 1));
    return 0;
}

int luaopen_sluice_shared(lua_State *L)
{
    static const luaL_Reg fns[] = {{"set", l_set},   {"add", l_add},     {"delete", l_delete},
                                   {"incr", l_incr}, {"count", l_count}, {"keys", l_keys},
                                   {NULL, NULL}};
    int rc = ensure_init();
    if (rc)
        return luaL_error(L, "sluice.shared: %s", sl_strerror(rc));
    lua_createtable(L, 0, 6);
    for (const luaL_Reg *f = fns; f->name; f++) {
        lua_pushcfunction(L, f->func);
        lua_setfield(L, -2, f->name);
    }
    sl_buf_t *buf = lua_newuserdata(L, sizeof *buf);
    sl_buf_init(buf, 0);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, l_buf_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_pushcclosure(L, l_get, 1);
    lua_setfield(L, -2, "get");
    return 1;
}
