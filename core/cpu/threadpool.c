/* threadpool.c - workers wait for a generation number; each run hands out task indices
 * through an atomic counter, so uneven tasks balance themselves.
 *
 * Waiting spins briefly before it sleeps: a decode step is a few dozen parallel ops each
 * milliseconds long with short serial gaps, and waking a sleeping thread through a condition
 * variable costs 90-100 us per run on this VM (measured: 2 threads, empty tasks), a few per
 * cent of a batch-1 layer step. A spinning worker picks the next run up in about a
 * microsecond. The spin is bounded (spin_ns), so an idle pool sleeps, and it is off when the
 * pool has more threads than the machine has cores, where a spinner would take a core from a
 * thread with work.
 *
 * Sleeping and waking are ordered Dekker-style: a sleeper first counts itself in `sleepers`
 * and then re-reads `generation`; a runner first bumps `generation` and then reads
 * `sleepers` (all seq_cst). At least one of the two sees the other's write, and a worker
 * counted as a sleeper holds the mutex until cond_wait releases it, so no wake-up is lost.
 * The caller's wait for the workers (`workers_busy`, `caller_sleeping`) works the same way. */
#include "threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void cpu_relax(void) { _mm_pause(); }
#else
static inline void cpu_relax(void) {}
#endif

/* How long a waiting thread spins before it sleeps: longer than the serial gaps between the
 * ops of a decode step, short enough that an idle service costs nothing measurable and that
 * the services of a one-machine cluster do not spin against each other (200 us measured no
 * better in the layer benchmark, and no better or worse in the cluster one). */
#define SPIN_NS 50000L

struct mx_threadpool {
    int n_threads;
    long spin_ns; /* 0 = sleep at once */
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t work_cv, done_cv;
    atomic_ulong generation;
    atomic_int sleepers;
    atomic_int stopping;
    mx_task_fn fn;
    void *ctx;
    int n_tasks;
    atomic_int next_task;
    atomic_int workers_busy;
    atomic_int caller_sleeping;
    void *scratch; /* mx_threadpool_scratch's buffer */
    size_t scratch_bytes;
};

static long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static void run_tasks(mx_threadpool *p)
{
    for (;;) {
        int t = atomic_fetch_add(&p->next_task, 1);
        if (t >= p->n_tasks)
            break;
        p->fn(p->ctx, t, p->n_tasks);
    }
}

/* Between checks a spinner pauses, and after the first few microseconds also yields, so a
 * runnable thread of this or another process (the cluster's services share cores) gets the
 * core rather than waiting out the spin. */
static void spin_pause(unsigned i)
{
    cpu_relax();
    if (i > 1024)
        sched_yield();
}

/* Spins until *word != value or spin_ns pass; returns whether it changed. */
static int spin_until_changed_ulong(atomic_ulong *word, unsigned long value, long spin_ns)
{
    if (spin_ns <= 0)
        return 0;
    long deadline = now_ns() + spin_ns;
    for (unsigned i = 1;; i++) {
        if (atomic_load_explicit(word, memory_order_acquire) != value)
            return 1;
        spin_pause(i);
        if ((i & 63) == 0 && now_ns() > deadline)
            return 0;
    }
}

static void *worker_main(void *arg)
{
    mx_threadpool *p = arg;
    unsigned long seen = 0;
    for (;;) {
        if (!spin_until_changed_ulong(&p->generation, seen, p->spin_ns)) {
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->sleepers, 1);
            while (atomic_load(&p->generation) == seen && !atomic_load(&p->stopping))
                pthread_cond_wait(&p->work_cv, &p->mu);
            atomic_fetch_sub(&p->sleepers, 1);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stopping))
            break;
        seen = atomic_load(&p->generation);
        run_tasks(p);
        if (atomic_fetch_sub(&p->workers_busy, 1) == 1 && atomic_load(&p->caller_sleeping)) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done_cv);
            pthread_mutex_unlock(&p->mu);
        }
    }
    return NULL;
}

int mx_threadpool_create(int n_threads, mx_threadpool **out, mx_error *err)
{
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (cores <= 0)
        cores = 1;
    if (n_threads <= 0)
        n_threads = (int)cores;
    if (n_threads > 256)
        return mx_fail(err, MX_EINVAL, "thread count %d is over the limit of 256", n_threads);
    mx_threadpool *p = calloc(1, sizeof *p);
    if (!p)
        return mx_fail(err, MX_ENOMEM, "out of memory creating a thread pool");
    p->n_threads = n_threads;
    p->spin_ns = n_threads <= cores ? SPIN_NS : 0;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->work_cv, NULL);
    pthread_cond_init(&p->done_cv, NULL);
    p->threads = calloc((size_t)n_threads, sizeof *p->threads);
    if (!p->threads) {
        free(p);
        return mx_fail(err, MX_ENOMEM, "out of memory creating a thread pool");
    }
    for (int i = 1; i < n_threads; i++) {
        if (pthread_create(&p->threads[i], NULL, worker_main, p) != 0) {
            p->n_threads = i;
            mx_threadpool_destroy(p);
            return mx_fail(err, MX_ENOMEM, "could not start worker thread %d", i);
        }
    }
    *out = p;
    return 0;
}

void mx_threadpool_destroy(mx_threadpool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stopping, 1);
    atomic_fetch_add(&p->generation, 1); /* ends the spinners' wait too */
    pthread_cond_broadcast(&p->work_cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads; i++)
        pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->work_cv);
    pthread_cond_destroy(&p->done_cv);
    free(p->scratch);
    free(p->threads);
    free(p);
}

void *mx_threadpool_scratch(mx_threadpool *p, size_t bytes)
{
    if (p->scratch_bytes >= bytes)
        return p->scratch;
    size_t rounded = (bytes + 63) / 64 * 64;
    void *buf = aligned_alloc(64, rounded);
    if (!buf)
        return NULL;
    free(p->scratch);
    p->scratch = buf;
    p->scratch_bytes = rounded;
    return buf;
}

int mx_threadpool_size(const mx_threadpool *p)
{
    return p ? p->n_threads : 1;
}

/* Waits until every worker has finished this run's tasks: spins, then sleeps. */
static void wait_for_workers(mx_threadpool *p)
{
    long deadline = p->spin_ns > 0 ? now_ns() + p->spin_ns : 0;
    for (unsigned i = 1; atomic_load_explicit(&p->workers_busy, memory_order_acquire) > 0; i++) {
        spin_pause(i);
        if ((i & 63) == 0 && now_ns() > deadline)
            break;
    }
    if (atomic_load(&p->workers_busy) == 0)
        return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->caller_sleeping, 1);
    while (atomic_load(&p->workers_busy) > 0)
        pthread_cond_wait(&p->done_cv, &p->mu);
    atomic_store(&p->caller_sleeping, 0);
    pthread_mutex_unlock(&p->mu);
}

void mx_threadpool_run(mx_threadpool *p, mx_task_fn fn, void *ctx, int n_tasks)
{
    if (n_tasks <= 0)
        return;
    if (!p || p->n_threads == 1 || n_tasks == 1) {
        for (int t = 0; t < n_tasks; t++)
            fn(ctx, t, n_tasks);
        return;
    }
    /* Every worker has left the previous run (wait_for_workers), so these plain writes are
     * published by the generation bump below. */
    p->fn = fn;
    p->ctx = ctx;
    p->n_tasks = n_tasks;
    atomic_store(&p->next_task, 0);
    atomic_store(&p->workers_busy, p->n_threads - 1);
    atomic_fetch_add(&p->generation, 1);
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->work_cv);
        pthread_mutex_unlock(&p->mu);
    }
    run_tasks(p);
    wait_for_workers(p);
}
