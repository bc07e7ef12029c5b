/* cpus.h - how many CPUs this process may run on: its affinity mask (a container's cpuset,
 * taskset), else the online count. What "0 = one thread per core" means everywhere (the CPU
 * backend's pool, quantization, `mx cluster`'s defaults), so that a process restricted to
 * fewer CPUs does not start more threads than it can run, and pinning (mx_threadpool_pin)
 * has one CPU per thread. Header-only. */
#ifndef MX_CPUS_H
#define MX_CPUS_H

#include <sched.h>
#include <unistd.h>

static inline int mx_usable_cpus(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        return CPU_COUNT(&set);
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    return online > 0 ? (int)online : 1;
}

#endif
