/* clock.h - the monotonic clock every timing in the services and the CPU backend reads
 * (deadlines, per-request latencies, spin limits), and the wall-clock form condition-variable
 * waits take. Header-only. */
#ifndef MX_CLOCK_H
#define MX_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline int64_t mx_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline double mx_now_ms(void)
{
    return (double)mx_now_ns() / 1e6;
}

/* The wall-clock time ms from now, the form pthread_cond_timedwait takes on a condition
 * variable of the default clock (ms <= 0: now). Waits poll with it; deadlines themselves are
 * kept on the monotonic clock above. */
static inline struct timespec mx_wall_after_ms(double ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    long long ns = (long long)ts.tv_nsec + (ms > 0 ? (long long)(ms * 1e6) : 0);
    ts.tv_sec += (time_t)(ns / 1000000000LL);
    ts.tv_nsec = (long)(ns % 1000000000LL);
    return ts;
}

#endif
