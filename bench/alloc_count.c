/*
 * alloc_count.c — counts a process's heap allocations, for scripts/bench's
 * "allocations per request" (loaded with LD_PRELOAD into a proxy).
 *
 * Every malloc, calloc, realloc and aligned allocation adds one to a counter
 * in the file named by BENCH_ALLOC_COUNT, mapped shared, so that the bench
 * can read it from outside while the proxy runs, and so that forked
 * processes (nginx's workers) add to the same counter. The calls go on to
 * glibc's own allocator (__libc_malloc and friends), so what is counted is
 * exactly what the proxy would have asked of it. LuaJIT's own GC heap does
 * not go through malloc and is not counted; neither are frees.
 *
 * Built by scripts/bench with the system compiler; never part of sluice.
 */
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t n);
extern void *__libc_memalign(size_t align, size_t n);

static _Atomic unsigned long *counter;

__attribute__((constructor)) static void open_counter(void)
{
    const char *path = getenv("BENCH_ALLOC_COUNT");
    if (!path)
        return;
    int fd = open(path, O_RDWR);
    if (fd < 0)
        return;
    void *m = mmap(NULL, sizeof *counter, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (m != MAP_FAILED)
        counter = m;
}

static void count(void)
{
    if (counter)
        atomic_fetch_add_explicit(counter, 1, memory_order_relaxed);
}

void *malloc(size_t n)
{
    count();
    return __libc_malloc(n);
}

void *calloc(size_t n, size_t size)
{
    count();
    return __libc_calloc(n, size);
}

void *realloc(void *p, size_t n)
{
    count();
    return __libc_realloc(p, n);
}

void *memalign(size_t align, size_t n)
{
    count();
    return __libc_memalign(align, n);
}

void *aligned_alloc(size_t align, size_t n)
{
    count();
    return __libc_memalign(align, n);
}

int posix_memalign(void **out, size_t align, size_t n)
{
    count();
    void *p = __libc_memalign(align, n);
    if (!p)
        return 12; /* ENOMEM */
    *out = p;
    return 0;
}
