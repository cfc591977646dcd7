/*
 * arena.c — bump allocation in heap blocks (see arena.h).
 *
 * Blocks are 2 KB, enough for a typical plan (URL, ten headers, names) or
 * an upstream's response head; a request larger than half a block gets a
 * block of its own so that a big header does not waste the rest of one.
 */
#include "arena.h"

#include <stdalign.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK_BYTES 2048

struct sl_arena_block_s {
    sl_arena_block_t *prev;
    size_t used, cap;
    alignas(max_align_t) unsigned char data[];
};

/* A new block of cap bytes, used bytes of it taken. It becomes the current
 * block, or (behind) sits behind the current one, which keeps its free
 * space for the small pieces that follow. NULL when out of memory. */
static sl_arena_block_t *push_block(sl_arena_t *a, size_t cap, size_t used, int behind)
{
    if (cap > SIZE_MAX / 2)
        return NULL;
    sl_arena_block_t *nb = malloc(sizeof *nb + cap);
    if (!nb)
        return NULL;
    nb->cap = cap;
    nb->used = used;
    sl_arena_block_t *b = a->block;
    if (behind && b) {
        nb->prev = b->prev;
        b->prev = nb;
    } else {
        nb->prev = b;
        a->block = nb;
    }
    return nb;
}

/* n bytes at an offset that is a multiple of align (a power of two). */
static void *take(sl_arena_t *a, size_t n, size_t align)
{
    sl_arena_block_t *b = a->block;
    if (b) {
        size_t at = (b->used + align - 1) & ~(align - 1);
        if (at <= b->cap && b->cap - at >= n) {
            b->used = at + n;
            return b->data + at;
        }
    }
    /* a large piece gets a block of its own */
    int alone = n > BLOCK_BYTES / 2;
    sl_arena_block_t *nb = push_block(a, alone ? n : BLOCK_BYTES - sizeof *b, n, alone);
    return nb ? nb->data : NULL;
}

int sl_arena_reserve(sl_arena_t *a, size_t n)
{
    sl_arena_block_t *b = a->block;
    if (b && b->cap - b->used >= n)
        return 0;
    return push_block(a, n ? n : 1, 0, 0) ? 0 : -1;
}

void *sl_arena_alloc(sl_arena_t *a, size_t n)
{
    return take(a, n ? n : 1, alignof(max_align_t));
}

char *sl_arena_strndup(sl_arena_t *a, const char *s, size_t n)
{
    char *p = n < SIZE_MAX ? take(a, n + 1, 1) : NULL;
    if (p) {
        if (n)
            memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

void sl_arena_free(sl_arena_t *a)
{
    sl_arena_block_t *b = a->block;
    while (b) {
        sl_arena_block_t *prev = b->prev;
        free(b);
        b = prev;
    }
    a->block = NULL;
}
