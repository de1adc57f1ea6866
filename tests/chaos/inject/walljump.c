/*
 * walljump: an LD_PRELOAD shim that shifts a process's wall clock, and only its wall clock.
 *
 * The chaos suite compiles it at test time (cc -shared -fPIC -o walljump.so walljump.c -ldl)
 * and runs the daemon with LD_PRELOAD=walljump.so WALLJUMP_FILE=PATH. Every read of the wall
 * clock (clock_gettime on a REALTIME clock, gettimeofday, time) adds the number of seconds
 * written in PATH, re-read on every call so the test can jump the clock at run time. The
 * monotonic clocks, sleeps, timed waits and condition variables are not touched at all.
 *
 * Why not libfaketime (Debian's faketime 0.9.10)? With FAKETIME_DONT_FAKE_MONOTONIC=1 it
 * still intercepts pthread_cond_timedwait and clock_nanosleep: CPython's GIL (a condition
 * variable on CLOCK_MONOTONIC) then spins, so the daemon livelocks about every other start,
 * and time.sleep() fails with EINVAL.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static double offset_s(void) {
    const char *path = getenv("WALLJUMP_FILE");
    char buf[64];
    ssize_t n;
    int fd;
    if (path == NULL || (fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return 0.0;
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0.0;
    buf[n] = '\0';
    return strtod(buf, NULL);
}

static void shift(struct timespec *ts) {
    double off = offset_s();
    long long ns = (long long)(off * 1e9);
    long long total = (long long)ts->tv_nsec + ns % 1000000000LL;
    ts->tv_sec += (time_t)(ns / 1000000000LL);
    if (total < 0) {
        total += 1000000000LL;
        ts->tv_sec -= 1;
    } else if (total >= 1000000000LL) {
        total -= 1000000000LL;
        ts->tv_sec += 1;
    }
    ts->tv_nsec = (long)total;
}

int clock_gettime(clockid_t clk, struct timespec *ts) {
    static int (*real)(clockid_t, struct timespec *);
    int rc;
    if (real == NULL)
        real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    rc = real(clk, ts);
    if (rc == 0 && (clk == CLOCK_REALTIME || clk == CLOCK_REALTIME_COARSE))
        shift(ts);
    return rc;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
    struct timespec ts;
    (void)tz;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return -1;
    {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return 0;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out != NULL)
        *out = ts.tv_sec;
    return ts.tv_sec;
}
