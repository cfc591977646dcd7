/*
 * test_helpers.h — the tiny harness shared by the C unit tests (every
 * tests/test_<module>.c; in the manner of libuv's test/task.h).
 *
 * A test file defines one function per case and runs them with RUN(); a
 * failed CHECK prints the file, line and expression (and for the _EQ forms
 * both values) and marks the current case failed without stopping it, so
 * one run shows every broken expectation. TEST_SUMMARY() prints the
 * "N passed, M failed" line and yields the process exit code.
 *
 * It also holds the loopback socket helpers the network tests share: a free
 * port, a blocking client with a receive timeout, and "read until".
 */
#ifndef SL_TEST_HELPERS_H
#define SL_TEST_HELPERS_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static int th_passed, th_failed, th_cur_failed;
static const char *volatile th_current = "(setup)";

/* Marks the current case failed and says where: "  file:line: " then fmt
 * (a string literal) with its arguments. */
#define TH_FAIL(fmt, ...)                                                                          \
    do {                                                                                           \
        th_cur_failed = 1;                                                                         \
        fprintf(stderr, "  %s:%d: " fmt, __FILE__, __LINE__, __VA_ARGS__);                         \
    } while (0)

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            TH_FAIL("CHECK(%s) failed\n", #cond);                                                  \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                                         \
    do {                                                                                           \
        long long th_a = (long long)(a), th_b = (long long)(b);                                    \
        if (th_a != th_b)                                                                          \
            TH_FAIL("%s == %s failed: %lld != %lld\n", #a, #b, th_a, th_b);                        \
    } while (0)

/* Compares a (base, len) byte range with a C string. */
#define CHECK_EQ_MEM(base, len, cstr)                                                              \
    do {                                                                                           \
        const char *th_p = (const char *)(base);                                                   \
        size_t th_n = (size_t)(len);                                                               \
        const char *th_s = (cstr);                                                                 \
        if (th_n != strlen(th_s) || (th_n && memcmp(th_p, th_s, th_n) != 0))                       \
            TH_FAIL("%s == %s failed: \"%.*s\" != \"%s\"\n", #base, #cstr,                         \
                    (int)(th_n > 400 ? 400 : th_n), th_p ? th_p : "", th_s);                       \
    } while (0)

/* Compares two C strings (NULL is never equal). */
#define CHECK_EQ_STR(a, b)                                                                         \
    do {                                                                                           \
        const char *th_a = (a), *th_b = (b);                                                       \
        if (!th_a || !th_b || strcmp(th_a, th_b) != 0)                                             \
            TH_FAIL("%s == %s failed: \"%.400s\" != \"%.400s\"\n", #a, #b, th_a ? th_a : "(null)", \
                    th_b ? th_b : "(null)");                                                       \
    } while (0)

/* Exact equality of two doubles (counts read back from text, sums of
 * exactly representable values). */
#define CHECK_EQ_DBL(a, b)                                                                         \
    do {                                                                                           \
        double th_a = (a), th_b = (b);                                                             \
        if (th_a != th_b)                                                                          \
            TH_FAIL("%s == %s failed: %.17g != %.17g\n", #a, #b, th_a, th_b);                      \
    } while (0)

/* Compares two SL_E* codes and prints their names (the test includes error.h). */
#define CHECK_RC(expr, want)                                                                       \
    do {                                                                                           \
        int th_rc = (expr), th_want = (want);                                                      \
        if (th_rc != th_want)                                                                      \
            TH_FAIL("%s == %s failed: %s != %s\n", #expr, #want, sl_err_name(th_rc),               \
                    sl_err_name(th_want));                                                         \
    } while (0)

#define CHECK_STR_HAS(hay, needle)                                                                 \
    do {                                                                                           \
        const char *th_h = (hay);                                                                  \
        if (!th_h || !strstr(th_h, (needle)))                                                      \
            TH_FAIL("\"%s\" not found in %s = \"%.400s\"\n", (needle), #hay,                       \
                    th_h ? th_h : "(null)");                                                       \
    } while (0)

#define RUN(fn)                                                                                    \
    do {                                                                                           \
        th_cur_failed = 0;                                                                         \
        th_current = #fn;                                                                          \
        fn();                                                                                      \
        if (th_cur_failed) {                                                                       \
            th_failed++;                                                                           \
            fprintf(stderr, "FAIL %s\n", #fn);                                                     \
        } else {                                                                                   \
            th_passed++;                                                                           \
        }                                                                                          \
    } while (0)

#define TEST_SUMMARY() (printf("%d passed, %d failed\n", th_passed, th_failed), th_failed ? 1 : 0)

/* A hang (a budget that never fires, a response that never comes) must
 * fail the run with the name of the case, not stall ctest. */
static inline void th_on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "FAIL (watchdog: no progress) in ";
    if (write(STDERR_FILENO, msg, sizeof msg - 1) < 0 ||
        write(STDERR_FILENO, th_current, strlen(th_current)) < 0 ||
        write(STDERR_FILENO, "\n", 1) < 0)
        _exit(2);
    _exit(2);
}

static inline void th_watchdog(unsigned seconds)
{
    signal(SIGALRM, th_on_alarm);
    alarm(seconds);
}

/* ---- loopback sockets ---- */

/* A port that was free a moment ago: bind port 0, read it back, close. */
static inline int th_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    int port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
        port = ntohs(sa.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

/* A blocking client socket connected to 127.0.0.1:port whose reads give up
 * after timeout_ms (so a test that expects bytes never hangs), or -1. */
static inline int th_connect(int port, int timeout_ms)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (fd < 0)
        return -1;
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static inline int th_send_all(int fd, const void *p, size_t n)
{
    const char *s = p;
    while (n > 0) {
        ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads into buf (NUL-terminated) until `until` appears, EOF, the receive
 * timeout, or the buffer is full. Returns the bytes read; *eof is set to 1
 * when the peer closed (0 bytes read or a reset). */
static inline size_t th_recv_until(int fd, char *buf, size_t cap, const char *until, int *eof)
{
    size_t n = 0;
    if (eof)
        *eof = 0;
    buf[0] = '\0';
    while (n + 1 < cap) {
        if (until && strstr(buf, until))
            break;
        ssize_t r = recv(fd, buf + n, cap - 1 - n, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
            if (eof)
                *eof = 1;
            break;
        }
        if (r < 0)
            break; /* timed out */
        n += (size_t)r;
        buf[n] = '\0';
    }
    return n;
}

/* Counts non-overlapping occurrences of needle in hay. */
static inline int th_count(const char *hay, const char *needle)
{
    int k = 0;
    size_t nl = strlen(needle);
    for (const char *p = hay; (p = strstr(p, needle)); p += nl)
        k++;
    return k;
}

#endif
