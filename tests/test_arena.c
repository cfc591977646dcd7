/*
 * test_arena.c — bump allocation (core/arena.h).
 *
 * A plan's, a response head's and a record's strings live in an arena, so
 * the cases check what those rely on: every piece stays intact while later
 * ones fill and overflow blocks, memory from sl_arena_alloc is aligned for
 * any type, a large piece gets a block of its own without wasting the
 * current one, copies are NUL-terminated, and a zeroed arena is empty and
 * can be freed (and reused) at any time, a reserved size holds exactly
 * that, and absurd sizes are refused rather than wrapped. ASan checks the
 * frees.
 */
#include <stdalign.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "arena.h"
#include "test_helpers.h"

static void test_empty_arena_frees(void)
{
    sl_arena_t a = {0};
    sl_arena_free(&a);
    CHECK(a.block == NULL);
    CHECK(sl_arena_strndup(&a, "x", 1) != NULL);
    sl_arena_free(&a);
    CHECK(a.block == NULL);
}

static void test_pieces_stay_intact(void)
{
    sl_arena_t a = {0};
    char *pieces[500];
    char want[32];
    for (int i = 0; i < 500; i++) {
        int n = snprintf(want, sizeof want, "header-%d-value", i);
        pieces[i] = sl_arena_strndup(&a, want, (size_t)n);
        CHECK(pieces[i] != NULL);
    }
    for (int i = 0; i < 500; i++) {
        snprintf(want, sizeof want, "header-%d-value", i);
        CHECK_EQ_STR(pieces[i], want);
    }
    sl_arena_free(&a);
}

static void test_alignment(void)
{
    sl_arena_t a = {0};
    for (int i = 0; i < 200; i++) {
        sl_arena_strndup(&a, "abcdefg", (size_t)(i % 7)); /* leave odd offsets behind */
        void *p = sl_arena_alloc(&a, (size_t)(i % 50) + 1);
        CHECK(p != NULL && (uintptr_t)p % alignof(max_align_t) == 0);
    }
    sl_arena_free(&a);
}

static void test_large_piece_keeps_the_block(void)
{
    sl_arena_t a = {0};
    char *small = sl_arena_strndup(&a, "first", 5);
    char *big = sl_arena_alloc(&a, 100000);
    CHECK(big != NULL);
    memset(big, 'b', 100000);
    char *after = sl_arena_strndup(&a, "second", 6);
    /* the small pieces share the first block; the big one is elsewhere */
    CHECK(after > small && after - small < 2048);
    CHECK(big < small || big > small + 2048);
    CHECK_EQ_STR(small, "first");
    CHECK_EQ_STR(after, "second");
    CHECK(big[0] == 'b' && big[99999] == 'b');
    sl_arena_free(&a);
}

static void test_strndup_terminates(void)
{
    sl_arena_t a = {0};
    const char src[] = "abcdef";
    char *p = sl_arena_strndup(&a, src, 3);
    CHECK_EQ_STR(p, "abc");
    char *e = sl_arena_strndup(&a, NULL, 0);
    CHECK(e != NULL && e[0] == '\0');
    sl_arena_free(&a);
}

/* An owner that knows its size reserves it: its pieces lie back to back in
 * that one block, and the next piece after them needs another. */
static void test_reserve_fits_exactly(void)
{
    sl_arena_t a = {0};
    CHECK_EQ_INT(sl_arena_reserve(&a, 5 + 7), 0);
    char *x = sl_arena_strndup(&a, "abcd", 4);
    char *y = sl_arena_strndup(&a, "efghij", 6);
    CHECK(x && y && y == x + 5);
    char *z = sl_arena_strndup(&a, "k", 1);
    CHECK(z && z != y + 7);
    CHECK_EQ_STR(x, "abcd");
    CHECK_EQ_STR(y, "efghij");
    sl_arena_free(&a);
    CHECK_EQ_INT(sl_arena_reserve(&a, (size_t)-1), -1); /* refused, not wrapped */
    CHECK(sl_arena_alloc(&a, (size_t)-1 / 2 + 1) == NULL);
}

int main(void)
{
    RUN(test_empty_arena_frees);
    RUN(test_pieces_stay_intact);
    RUN(test_alignment);
    RUN(test_large_piece_keeps_the_block);
    RUN(test_strndup_terminates);
    RUN(test_reserve_fits_exactly);
    return TEST_SUMMARY();
}
