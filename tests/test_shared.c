/*
 * test_shared.c — sluice.shared as workers and scripts see it: values read
 * back byte for byte, TTLs that really expire, add() electing exactly one
 * winner among racing threads, incr() from many threads summing exactly,
 * eviction that drops expired entries first and then the least recently
 * used, the size limits, and the Lua module driven from several VMs.
 */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "buf.h"
#include "error.h"
#include "shared.h"
#include "test_helpers.h"

#define K(lit) (lit), sizeof(lit) - 1

/* TTLs that must outlive a read right after the write, even on a loaded
 * machine, and a sleep that certainly outlasts them. */
#define SHORT_TTL 0.2
#define PAST_SHORT_TTL_MS 300
#define XSTR(x) STR(x)
#define STR(x) #x

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* 1 if key currently holds exactly want[0..wlen). */
static int holds(const char *key, size_t klen, const char *want, size_t wlen)
{
    sl_buf_t b;
    sl_buf_init(&b, 0);
    int ok = sl_shared_get(key, klen, &b, NULL) == 0 && b.len == wlen &&
             (wlen == 0 || memcmp(b.base, want, wlen) == 0);
    sl_buf_free(&b);
    return ok;
}

/* The get() result code for key, with its TTL left in *left. */
static int get_ttl(const char *key, size_t klen, double *left)
{
    sl_buf_t b;
    sl_buf_init(&b, 0);
    int rc = sl_shared_get(key, klen, &b, left);
    sl_buf_free(&b);
    return rc;
}

static int present(const char *cstr)
{
    sl_buf_t b;
    sl_buf_init(&b, 0);
    int rc = sl_shared_get(cstr, strlen(cstr), &b, NULL);
    sl_buf_free(&b);
    return rc == 0;
}

static void reinit(size_t max_entries, size_t max_bytes)
{
    sl_shared_shutdown();
    CHECK_RC(sl_shared_init(max_entries, max_bytes), 0);
}

/* ---- basics ------------------------------------------------------------------ */

static void test_set_get_delete(void)
{
    reinit(0, 0);
    CHECK_RC(sl_shared_init(1, 1), 0); /* idempotent: the first bounds stay */
    sl_buf_t b;
    sl_buf_init(&b, 0);
    double ttl = -1;
    CHECK_RC(sl_shared_get(K("alpha"), &b, &ttl), SL_ENOTFOUND);
    CHECK_RC(sl_shared_set(K("alpha"), K("one"), 0), 0);
    CHECK_RC(sl_shared_get(K("alpha"), &b, &ttl), 0);
    CHECK(b.len == 3 && memcmp(b.base, "one", 3) == 0);
    CHECK(ttl == 0); /* no expiry */

    /* get appends to what the caller already has */
    CHECK_RC(sl_shared_set(K("alpha"), K("two"), 0), 0);
    sl_buf_reset(&b);
    sl_buf_append_c(&b, "x:");
    CHECK_RC(sl_shared_get(K("alpha"), &b, NULL), 0);
    CHECK(b.len == 5 && memcmp(b.base, "x:two", 5) == 0);
    CHECK(sl_shared_count() == 1);

    CHECK_RC(sl_shared_set(K("empty"), "", 0, 0), 0);
    CHECK(holds(K("empty"), "", 0));
    CHECK(sl_shared_count() == 2);

    CHECK_RC(sl_shared_delete(K("alpha")), 0);
    CHECK_RC(sl_shared_delete(K("alpha")), SL_ENOTFOUND);
    CHECK(!present("alpha"));
    CHECK(sl_shared_count() == 1);
    sl_buf_free(&b);
}

static void test_binary(void)
{
    reinit(0, 0);
    char val[1000];
    for (size_t i = 0; i < sizeof val; i++)
        val[i] = (char)(i * 7 % 256); /* includes NULs and 0xFF */
    CHECK_RC(sl_shared_set(K("k\0a"), val, sizeof val, 0), 0);
    CHECK_RC(sl_shared_set(K("k\0b"), K("other\0value"), 0), 0);
    CHECK(holds(K("k\0a"), val, sizeof val));
    CHECK(holds(K("k\0b"), K("other\0value")));
    CHECK(!present("k")); /* "k" is a prefix of both keys, not equal to them */
    CHECK(sl_shared_count() == 2);
}

/* Enough keys that every shard's table and expiry heap grow many times:
 * all of them must still be found, with their own values and TTLs. */
static void test_many_keys(void)
{
    reinit(0, 0);
    enum { N = 20000 };
    char key[32], val[32];
    int errors = 0;
    for (int i = 0; i < N; i++) {
        int kl = snprintf(key, sizeof key, "sess:%d", i), vl = snprintf(val, sizeof val, "%d", i);
        errors += sl_shared_set(key, (size_t)kl, val, (size_t)vl, i % 2 ? 1.0 : 0) != 0;
    }
    CHECK(errors == 0);
    CHECK(sl_shared_count() == N);
    int found = 0;
    for (int i = 0; i < N; i++) {
        int kl = snprintf(key, sizeof key, "sess:%d", i), vl = snprintf(val, sizeof val, "%d", i);
        found += holds(key, (size_t)kl, val, (size_t)vl);
    }
    CHECK(found == N);
    sleep_ms(1100);
    CHECK(sl_shared_count() == N / 2); /* the odd ones had a TTL */
    found = 0;
    for (int i = 0; i < N; i += 2) {
        snprintf(key, sizeof key, "sess:%d", i);
        found += present(key);
    }
    CHECK(found == N / 2);
}

static void test_invalid(void)
{
    reinit(0, 0);
    sl_buf_t b;
    sl_buf_init(&b, 0);
    CHECK_RC(sl_shared_set(K("k"), K("v"), -1), SL_EINVAL);
    CHECK_RC(sl_shared_set(K("k"), K("v"), NAN), SL_EINVAL);
    CHECK_RC(sl_shared_add(K("k"), K("v"), -0.5), SL_EINVAL);
    CHECK_RC(sl_shared_incr(K("k"), 1, -1, NULL), SL_EINVAL);
    CHECK_RC(sl_shared_incr(K("k"), INFINITY, 0, NULL), SL_EINVAL);
    CHECK_RC(sl_shared_incr(K("k"), NAN, 0, NULL), SL_EINVAL);
    CHECK_RC(sl_shared_set(NULL, 3, K("v"), 0), SL_EINVAL);
    CHECK_RC(sl_shared_set(K("k"), NULL, 3, 0), SL_EINVAL);
    CHECK_RC(sl_shared_get(K("k"), NULL, NULL), SL_EINVAL);
    CHECK(sl_shared_count() == 0); /* none of the above stored anything */
    sl_buf_free(&b);
}

static void test_size_limits(void)
{
    reinit(0, 8u << 20);
    size_t n = SL_SHARED_MAX_VALUE + 1;
    char *big = malloc(n);
    memset(big, 'k', n);
    CHECK_RC(sl_shared_set(big, SL_SHARED_MAX_KEY, K("v"), 0), 0);
    CHECK_RC(sl_shared_set(big, SL_SHARED_MAX_KEY + 1, K("v"), 0), SL_ELIMIT);
    CHECK_RC(get_ttl(big, SL_SHARED_MAX_KEY + 1, NULL), SL_ELIMIT);
    CHECK_RC(sl_shared_set(K("v"), big, SL_SHARED_MAX_VALUE, 0), 0);
    CHECK_RC(sl_shared_set(K("v2"), big, SL_SHARED_MAX_VALUE + 1, 0), SL_ELIMIT);
    CHECK(!present("v2"));
    CHECK(holds(K("v"), big, SL_SHARED_MAX_VALUE));

    /* A reader whose buffer is capped gets SL_ELIMIT, not a truncated value. */
    sl_buf_t capped;
    sl_buf_init(&capped, 1000);
    CHECK_RC(sl_shared_get(K("v"), &capped, NULL), SL_ELIMIT);
    CHECK(capped.len == 0);
    sl_buf_free(&capped);

    /* An entry larger than the whole byte bound is refused, evicting nothing. */
    reinit(0, 64 * 1024);
    CHECK_RC(sl_shared_set(K("small"), K("s"), 0), 0);
    CHECK_RC(sl_shared_set(K("huge"), big, 70 * 1024, 0), SL_ELIMIT);
    CHECK(present("small") && !present("huge"));
    free(big);
}

/* ---- TTL ---------------------------------------------------------------------- */

static void test_ttl(void)
{
    reinit(0, 0);
    double left = -1;
    CHECK_RC(sl_shared_set(K("t"), K("v"), SHORT_TTL), 0);
    CHECK_RC(sl_shared_set(K("forever"), K("v"), 0), 0);
    CHECK_RC(sl_shared_set(K("was_short"), K("v"), SHORT_TTL), 0);
    CHECK_RC(sl_shared_set(K("was_short"), K("v2"), 0), 0); /* set replaces the TTL too */
    CHECK_RC(get_ttl(K("t"), &left), 0);
    CHECK(left > 0 && left <= SHORT_TTL);
    CHECK(sl_shared_count() == 3);
    sleep_ms(PAST_SHORT_TTL_MS);
    CHECK_RC(get_ttl(K("t"), NULL), SL_ENOTFOUND);
    CHECK_RC(sl_shared_delete(K("t")), SL_ENOTFOUND);
    CHECK(holds(K("was_short"), K("v2")));
    CHECK(present("forever"));
    CHECK(sl_shared_count() == 2);

    /* Many expired entries disappear from the count without being read. */
    char key[32];
    for (int i = 0; i < 100; i++) {
        int n = snprintf(key, sizeof key, "short:%d", i);
        CHECK_RC(sl_shared_set(key, (size_t)n, K("x"), SHORT_TTL + i * 0.0001), 0);
    }
    CHECK(sl_shared_count() == 102);
    sleep_ms(PAST_SHORT_TTL_MS + 20);
    sl_shared_flush_expired();
    CHECK(sl_shared_count() == 2);
}

static void test_add(void)
{
    reinit(0, 0);
    CHECK_RC(sl_shared_add(K("lock"), K("first"), SHORT_TTL), 0);
    CHECK_RC(sl_shared_add(K("lock"), K("second"), SHORT_TTL), SL_EBUSY);
    CHECK(holds(K("lock"), K("first")));
    sleep_ms(PAST_SHORT_TTL_MS);
    /* the holder died without deleting: the lock is free again after its TTL */
    CHECK_RC(sl_shared_add(K("lock"), K("third"), 0), 0);
    CHECK(holds(K("lock"), K("third")));
    CHECK_RC(sl_shared_delete(K("lock")), 0);
    CHECK_RC(sl_shared_add(K("lock"), K("fourth"), 0), 0);
}

/* ---- single flight: racing add() -------------------------------------------- */

#define RACERS 8
#define ROUNDS 200

static pthread_barrier_t race_barrier;
static atomic_int winners[ROUNDS];
static int winner_id[ROUNDS];

static void *racer(void *arg)
{
    int id = (int)(intptr_t)arg;
    char key[32], val[16];
    int vlen = snprintf(val, sizeof val, "%d", id);
    for (int r = 0; r < ROUNDS; r++) {
        int klen = snprintf(key, sizeof key, "flight:%d", r);
        pthread_barrier_wait(&race_barrier);
        int rc = sl_shared_add(key, (size_t)klen, val, (size_t)vlen, 5);
        if (rc == 0) {
            atomic_fetch_add(&winners[r], 1);
            winner_id[r] = id;
        } else if (rc != SL_EBUSY) {
            atomic_fetch_add(&winners[r], 100); /* any other result fails the round */
        }
    }
    return NULL;
}

static void test_single_flight(void)
{
    reinit(0, 0);
    pthread_t t[RACERS];
    pthread_barrier_init(&race_barrier, NULL, RACERS);
    for (int i = 0; i < RACERS; i++)
        pthread_create(&t[i], NULL, racer, (void *)(intptr_t)i);
    for (int i = 0; i < RACERS; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&race_barrier);
    int exact = 0, stored = 0;
    char key[32], val[16];
    for (int r = 0; r < ROUNDS; r++) {
        exact += atomic_load(&winners[r]) == 1;
        int klen = snprintf(key, sizeof key, "flight:%d", r);
        int vlen = snprintf(val, sizeof val, "%d", winner_id[r]);
        stored += holds(key, (size_t)klen, val, (size_t)vlen);
    }
    CHECK(exact == ROUNDS);  /* one winner per round */
    CHECK(stored == ROUNDS); /* and it is the winner's value that stuck */
}

/* ---- incr ---------------------------------------------------------------------- */

#define INCR_THREADS 8
#define INCR_EACH 20000

static void *incrementer(void *arg)
{
    double step = (double)(intptr_t)arg;
    for (int i = 0; i < INCR_EACH; i++)
        if (sl_shared_incr(K("ctr"), step, 0, NULL) != 0)
            return (void *)1;
    return NULL;
}

static void test_incr(void)
{
    reinit(0, 0);
    double v = 0;
    CHECK_RC(sl_shared_incr(K("n"), 5, 0, &v), 0);
    CHECK(v == 5 && holds(K("n"), K("5")));
    CHECK_RC(sl_shared_incr(K("n"), 2.5, 0, &v), 0);
    CHECK(v == 7.5 && holds(K("n"), K("7.5")));
    CHECK_RC(sl_shared_incr(K("n"), -10, 0, &v), 0);
    CHECK(v == -2.5 && holds(K("n"), K("-2.5")));
    CHECK_RC(sl_shared_incr(K("n"), 0.1, 0, &v), 0);
    CHECK(v == -2.5 + 0.1 && holds(K("n"), K("-2.4")));

    CHECK_RC(sl_shared_set(K("num"), K("41"), 0), 0);
    CHECK_RC(sl_shared_incr(K("num"), 1, 0, &v), 0);
    CHECK(v == 42 && holds(K("num"), K("42")));

    CHECK_RC(sl_shared_set(K("word"), K("hello"), 0), 0);
    CHECK_RC(sl_shared_incr(K("word"), 1, 0, &v), SL_EINVAL);
    CHECK(holds(K("word"), K("hello")));
    CHECK_RC(sl_shared_set(K("huge"), K("1e308"), 0), 0);
    CHECK_RC(sl_shared_incr(K("huge"), 1e308, 0, &v), SL_EINVAL); /* would be inf */
    CHECK(holds(K("huge"), K("1e308")));

    /* the TTL applies when incr creates the key; later incrs keep it */
    double left = -1;
    CHECK_RC(sl_shared_incr(K("rate"), 1, SHORT_TTL, &v), 0);
    CHECK_RC(sl_shared_incr(K("rate"), 1, 10, &v), 0);
    CHECK(v == 2);
    CHECK_RC(get_ttl(K("rate"), &left), 0);
    CHECK(left > 0 && left <= SHORT_TTL);
    sleep_ms(PAST_SHORT_TTL_MS);
    CHECK_RC(sl_shared_incr(K("rate"), 1, 0, &v), 0);
    CHECK(v == 1); /* window expired: counting starts again */

    pthread_t t[INCR_THREADS];
    for (int i = 0; i < INCR_THREADS; i++)
        pthread_create(&t[i], NULL, incrementer, (void *)(intptr_t)(i % 2 ? 2 : 1));
    int errors = 0;
    for (int i = 0; i < INCR_THREADS; i++) {
        void *r;
        pthread_join(t[i], &r);
        errors += r != NULL;
    }
    CHECK(errors == 0);
    CHECK_RC(sl_shared_incr(K("ctr"), 0, 0, &v), 0);
    CHECK(v == (double)INCR_EACH * (INCR_THREADS / 2) * 3); /* half add 1, half add 2 */
}

/* ---- eviction ------------------------------------------------------------------ */

static void set_c(const char *k, const char *v, double ttl)
{
    CHECK_RC(sl_shared_set(k, strlen(k), v, strlen(v), ttl), 0);
}

static void test_lru(void)
{
    reinit(8, 1u << 20);
    char key[8];
    for (int i = 0; i < 8; i++) {
        snprintf(key, sizeof key, "k%d", i);
        set_c(key, "v", 0);
    }
    CHECK(present("k0"));  /* k0 is now the most recently used */
    set_c("k8", "v", 0);   /* full: the LRU entry, k1, goes */
    set_c("k9", "v", 0);   /* then k2 */
    CHECK(sl_shared_count() == 8);
    CHECK(!present("k1"));
    CHECK(!present("k2"));
    CHECK(present("k0") && present("k3") && present("k7") && present("k8") && present("k9"));

    /* Replacing an existing key in a full dictionary evicts nothing. */
    set_c("k5", "new", 0);
    CHECK(sl_shared_count() == 8 && present("k3"));

    /* With several keys per shard: read the even keys, then add as many new
     * keys as there are odd ones; exactly the odd (unread) keys are gone. */
    reinit(64, 1u << 20);
    for (int i = 0; i < 64; i++) {
        snprintf(key, sizeof key, "m%d", i);
        set_c(key, "v", 0);
    }
    for (int i = 0; i < 64; i += 2) {
        snprintf(key, sizeof key, "m%d", i);
        CHECK(present(key));
    }
    for (int i = 0; i < 32; i++) {
        snprintf(key, sizeof key, "new%d", i);
        set_c(key, "v", 0);
    }
    int even_kept = 0, odd_kept = 0;
    for (int i = 0; i < 64; i++) {
        snprintf(key, sizeof key, "m%d", i);
        if (present(key))
            *(i % 2 ? &odd_kept : &even_kept) += 1;
    }
    CHECK(even_kept == 32);
    CHECK(odd_kept == 0);
    CHECK(sl_shared_count() == 64);

    /* Expired entries go before live ones, even recently used ones. */
    reinit(4, 1u << 20);
    set_c("a", "v", 0);
    set_c("b", "v", 0);
    set_c("c", "v", 0);
    set_c("d", "v", 0.03); /* most recent, but short-lived */
    sleep_ms(80);
    set_c("e", "v", 0);
    CHECK(present("a") && present("b") && present("c") && present("e"));
    CHECK(!present("d"));

    /* The byte bound evicts the oldest entries too. */
    reinit(1000, 64 * 1024);
    char val[10 * 1024];
    memset(val, 'x', sizeof val);
    for (int i = 0; i < 10; i++) {
        snprintf(key, sizeof key, "b%d", i);
        CHECK_RC(sl_shared_set(key, strlen(key), val, sizeof val, 0), 0);
    }
    size_t n = sl_shared_count();
    CHECK(n >= 5 && n <= 6); /* 6 x 10 KiB + overhead fit in 64 KiB */
    CHECK(present("b9") && present("b5"));
    CHECK(!present("b0") && !present("b3"));
}

/* Writers, readers and deleters at once on a small dictionary, so eviction
 * runs concurrently with everything else. Each value names its key, so a
 * torn or misplaced value would show. */
#define STRESS_THREADS 8
#define STRESS_OPS 30000
#define STRESS_KEYS 1000
#define STRESS_MAX 200

static void *stresser(void *arg)
{
    unsigned seed = (unsigned)(intptr_t)arg * 7919u + 1;
    char key[32], val[64];
    sl_buf_t b;
    sl_buf_init(&b, 0);
    intptr_t bad = 0;
    for (int i = 0; i < STRESS_OPS; i++) {
        int k = rand_r(&seed) % STRESS_KEYS, op = rand_r(&seed) % 10;
        int klen = snprintf(key, sizeof key, "s:%d", k);
        int vlen = snprintf(val, sizeof val, "value-of-%s-%d", key, rand_r(&seed) % 1000);
        int rc;
        if (op < 4) {
            rc = sl_shared_set(key, (size_t)klen, val, (size_t)vlen, op == 0 ? 0.001 : 0);
            bad += rc != 0;
        } else if (op < 5) {
            rc = sl_shared_add(key, (size_t)klen, val, (size_t)vlen, 0);
            bad += rc != 0 && rc != SL_EBUSY;
        } else if (op < 6) {
            rc = sl_shared_delete(key, (size_t)klen);
            bad += rc != 0 && rc != SL_ENOTFOUND;
        } else {
            sl_buf_reset(&b);
            rc = sl_shared_get(key, (size_t)klen, &b, NULL);
            if (rc == 0) {
                size_t pre = (size_t)snprintf(val, sizeof val, "value-of-%s-", key);
                bad += b.len <= pre || memcmp(b.base, val, pre) != 0;
            } else {
                bad += rc != SL_ENOTFOUND;
            }
        }
    }
    sl_buf_free(&b);
    return (void *)bad;
}

static void test_concurrent_eviction(void)
{
    reinit(STRESS_MAX, 1u << 20);
    pthread_t t[STRESS_THREADS];
    for (int i = 0; i < STRESS_THREADS; i++)
        pthread_create(&t[i], NULL, stresser, (void *)(intptr_t)i);
    intptr_t bad = 0;
    for (int i = 0; i < STRESS_THREADS; i++) {
        void *r;
        pthread_join(t[i], &r);
        bad += (intptr_t)r;
    }
    CHECK(bad == 0);
    size_t n = sl_shared_count();
    CHECK(n > 0 && n <= STRESS_MAX);
}

/* ---- the Lua module ------------------------------------------------------------ */

static lua_State *new_vm(void)
{
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, luaopen_sluice_shared);
    lua_setfield(L, -2, "sluice.shared");
    lua_pop(L, 2);
    return L;
}

/* Runs a chunk (with `s` = the module) that must return true. */
static int lua_true(lua_State *L, const char *body)
{
    char code[2048];
    snprintf(code, sizeof code, "local s = require('sluice.shared')\n%s", body);
    int ok = luaL_loadstring(L, code) == 0 && lua_pcall(L, 0, 1, 0) == 0;
    if (ok && lua_toboolean(L, -1) && lua_type(L, -1) == LUA_TBOOLEAN) {
        lua_pop(L, 1);
        return 1;
    }
    fprintf(stderr, "lua chunk failed (%s):\n%s\n",
            ok ? "did not return true" : lua_tostring(L, -1), body);
    lua_pop(L, 1);
    return 0;
}

#define LUA_OK_(L, body) CHECK(lua_true(L, body))

static void test_lua_api(void)
{
    reinit(0, 0);
    lua_State *L = new_vm(), *L2 = new_vm();
    LUA_OK_(L, "assert(s.set('lk', 'lv') == true)\n"
               "local v, ttl = s.get('lk')\n"
               "return v == 'lv' and ttl == 0");
    LUA_OK_(L, "return s.get('nope') == nil and select('#', s.get('nope')) == 1");
    LUA_OK_(L, "assert(s.set('num', 12) and s.set(1.5, 2.25))\n"
               "return s.get('num') == '12' and s.get('1.5') == '2.25' and s.get(1.5) == '2.25'");
    LUA_OK_(L, "local v = 'a\\0b\\255'\n"
               "assert(s.set('bin', v))\n"
               "return s.get('bin') == v and #s.get('bin') == 4");
    LUA_OK_(L, "assert(s.add('la', '1', 10) == true)\n"
               "local ok, err = s.add('la', '2')\n"
               "return ok == false and err == 'exists' and s.get('la') == '1'");
    LUA_OK_(L, "return s.delete('la') == true and s.delete('la') == false and s.get('la') == nil");
    LUA_OK_(L, "s.set('kp:a', '1'); s.set('kp:b', '2'); s.set('kq:c', '3'); s.set('kp:gone', '4', 0.001)\n"
               "local t0 = os.clock(); while os.clock() - t0 < 0.01 do end\n"
               "local ks = s.keys('kp:'); table.sort(ks)\n"
               "return #ks == 2 and ks[1] == 'kp:a' and ks[2] == 'kp:b' and #s.keys('kp:', 1) == 1\n"
               "  and #s.keys('nothing:') == 0");
    LUA_OK_(L,
            "s.delete('li')\n"
            "return s.incr('li') == 1 and s.incr('li', 41) == 42 and s.incr('li', -0.5) == 41.5\n"
            "  and s.get('li') == '41.5'");
    LUA_OK_(L, "s.set('ls', 'x')\n"
               "local v, err = s.incr('ls', 1)\n"
               "return v == nil and err == 'not a number' and s.get('ls') == 'x'");
    LUA_OK_(L, "local ok, err = s.set('big', string.rep('x', 1024 * 1024 + 1))\n"
               "return ok == nil and err == 'limit exceeded' and s.get('big') == nil");
    LUA_OK_(L, "local n = s.count()\n"
               "s.set('cnew', '1')\n"
               "return s.count() == n + 1");

    /* A VM sees what another VM and C wrote, and C sees what Lua wrote. */
    CHECK(holds(K("lk"), K("lv")));
    CHECK(holds(K("bin"), K("a\0b\xff")));
    CHECK_RC(sl_shared_set(K("from_c"), K("c\0v"), 0), 0);
    LUA_OK_(L2, "return s.get('lk') == 'lv' and s.get('from_c') == 'c\\0v'");

    /* a value bigger than the VM's kept read buffer, read twice */
    LUA_OK_(L, "local v = string.rep('0123456789', 20000)\n"
               "assert(s.set('large', v))\n"
               "return s.get('large') == v and s.get('large') == v");

    LUA_OK_(L, "assert(s.set('lt', 'v', " XSTR(
                   SHORT_TTL) "))\n"
                              "local v, ttl = s.get('lt')\n"
                              "return v == 'v' and ttl > 0 and ttl <= " XSTR(SHORT_TTL));
    sleep_ms(PAST_SHORT_TTL_MS);
    LUA_OK_(L2, "return s.get('lt') == nil");
    lua_close(L);
    lua_close(L2);
}

static void test_lua_types(void)
{
    reinit(0, 0);
    lua_State *L = new_vm();
    static const char *bad_calls[] = {
        "s.set('k', {})",       "s.set('k', true)",    "s.set('k', nil)",
        "s.set({}, 'v')",       "s.get(nil)",          "s.get(print)",
        "s.add('k', {})",       "s.delete(false)",     "s.incr({}, 1)",
        "s.incr('k', 'abc')",   "s.set('k', 'v', -1)", "s.set('k', 'v', 'soon')",
        "s.add('k', 'v', 0/0)", "s.incr('k', 1/0)",
    };
    for (size_t i = 0; i < sizeof bad_calls / sizeof *bad_calls; i++) {
        char body[256];
        snprintf(body, sizeof body,
                 "local ok, err = pcall(function() return %s end)\n"
                 "return not ok and type(err) == 'string' and err:find('bad argument') ~= nil",
                 bad_calls[i]);
        int ok = lua_true(L, body);
        if (!ok)
            fprintf(stderr, "  (call: %s)\n", bad_calls[i]);
        CHECK(ok);
    }
    LUA_OK_(L, "local ok, err = pcall(s.set, 'k', {})\n"
               "return err:find('string expected, got table') ~= nil");
    CHECK(sl_shared_count() == 0); /* nothing half-stored */
    lua_close(L);
}

/* Several VMs on their own threads, as workers run them. */
#define LUA_THREADS 4
#define LUA_EACH 5000

static void *lua_worker(void *arg)
{
    lua_State *L = new_vm();
    char body[128];
    snprintf(body, sizeof body, "for i = 1, %d do assert(s.incr('lua_ctr', 1)) end return true",
             LUA_EACH);
    intptr_t ok = lua_true(L, body);
    lua_close(L);
    return (void *)ok;
}

static void test_lua_threads(void)
{
    reinit(0, 0);
    pthread_t t[LUA_THREADS];
    for (int i = 0; i < LUA_THREADS; i++)
        pthread_create(&t[i], NULL, lua_worker, NULL);
    int ok = 0;
    for (int i = 0; i < LUA_THREADS; i++) {
        void *r;
        pthread_join(t[i], &r);
        ok += r != NULL;
    }
    CHECK(ok == LUA_THREADS);
    char want[32];
    int n = snprintf(want, sizeof want, "%d", LUA_THREADS * LUA_EACH);
    CHECK(holds(K("lua_ctr"), want, (size_t)n));
}

int main(void)
{
    RUN(test_set_get_delete);
    RUN(test_binary);
    RUN(test_many_keys);
    RUN(test_invalid);
    RUN(test_size_limits);
    RUN(test_ttl);
    RUN(test_add);
    RUN(test_single_flight);
    RUN(test_incr);
    RUN(test_lru);
    RUN(test_concurrent_eviction);
    RUN(test_lua_api);
    RUN(test_lua_types);
    RUN(test_lua_threads);
    sl_shared_shutdown();
    return TEST_SUMMARY();
}
