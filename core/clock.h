/* clock.h - the monotonic clock every timing in the services and the CPU backend reads
 * (deadlines, per-request latencies, spin limits). Header-only: two inline reads. */
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

#endif
