/*
 * arena.h — bump allocation for things that are freed together.
 *
 * A request's plan, a response head and a sluice.http task each own a few
 * dozen small strings (header names and values, the URL, the record's
 * names) that all die at once. Allocated one by one they were a third of
 * the core's heap allocations per request; from an arena they are one
 * block (more only when a block fills) and one free. Modelled on h2o's
 * memory pool, without its shared-entry machinery.
 *
 * A zeroed sl_arena_t is an empty arena. The handle may be copied (the
 * blocks are on the heap); exactly one copy is freed. Memory is aligned for
 * any type and stays where it is until sl_arena_free.
 */
#ifndef SL_ARENA_H
#define SL_ARENA_H

#include <stddef.h>

typedef struct sl_arena_block_s sl_arena_block_t;

typedef struct {
    sl_arena_block_t *block; /* the newest; each links to the one before */
} sl_arena_t;

/* n bytes, or NULL on ENOMEM. */
void *sl_arena_alloc(sl_arena_t *a, size_t n);
/* Makes room for n more bytes in the current block, so that pieces adding
 * up to n (strings: their lengths + 1; aligned pieces: rounded up to the
 * alignment) take no further allocation: an owner that knows its size asks
 * for exactly that instead of a whole block. 0 or -1 (ENOMEM). */
int sl_arena_reserve(sl_arena_t *a, size_t n);
/* A NUL-terminated copy of s[0..n), or NULL on ENOMEM. */
char *sl_arena_strndup(sl_arena_t *a, const char *s, size_t n);
/* Frees every block; the arena is empty again. */
void sl_arena_free(sl_arena_t *a);

#endif
