/* threadpool.h - a fixed set of worker threads that run one parallel-for at a time.
 * The CPU backend owns one pool; kernels split their work into tasks and call run. */
#ifndef MX_THREADPOOL_H
#define MX_THREADPOOL_H

#include <stddef.h>

#include "../error.h"

typedef struct mx_threadpool mx_threadpool;

/* fn(ctx, task, n_tasks) is called once for every task in [0, n_tasks). */
typedef void (*mx_task_fn)(void *ctx, int task, int n_tasks);

/* n_threads counts the calling thread too (1 = run everything inline). 0 = the CPUs this process
 * may use (mx_usable_cpus). */
int mx_threadpool_create(int n_threads, mx_threadpool **out, mx_error *err);
void mx_threadpool_destroy(mx_threadpool *pool);
int mx_threadpool_size(const mx_threadpool *pool);
/* Keeps the pool's threads on distinct CPUs: thread i runs only on the i-th CPU this process
 * may use (its affinity mask, e.g. a container's cpuset), and a thread that calls run is
 * moved to the first. For a process whose pool spans every CPU it may use next to other such
 * processes (the services of a one-machine cluster): left alone, the kernel may place a woken
 * worker on its waker's busy CPU and leave the other idle until the next balancing tick,
 * milliseconds later. Not for pools smaller than the CPU set: pools of several processes would
 * pile onto the same first CPUs. The CPUs are those of the calling thread's affinity mask, read
 * now. Call once, before the first run. A thread that calls run stays on that CPU afterwards
 * (it is moved once, not at every run). MX_EINVAL when the affinity cannot be read or set. */
int mx_threadpool_pin(mx_threadpool *pool, mx_error *err);
/* Runs all tasks, the caller taking part, and returns when every task is done. */
void mx_threadpool_run(mx_threadpool *pool, mx_task_fn fn, void *ctx, int n_tasks);
/* A 64-byte aligned buffer of at least `bytes` that the pool owns and keeps between calls, so
 * kernels that need a scratch area per run do not map and fault in fresh pages each time
 * (large blocks bypass malloc's free lists). Valid until the next call or destroy; only the
 * thread that calls run may use it to hand out. NULL if out of memory. */
void *mx_threadpool_scratch(mx_threadpool *pool, size_t bytes);

#endif
