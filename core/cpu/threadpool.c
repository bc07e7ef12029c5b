/* threadpool.c - a fork-join pool whose runs hand out task indices through one atomic
 * "ticket" word, so uneven tasks balance themselves and a run ends when its tasks are done,
 * not when every worker has checked in.
 *
 * The ticket packs the run's generation, its task count and the next unclaimed index. A
 * thread claims a task with one fetch_add; the value it gets back says which run the index
 * belongs to and whether it is in range, so a worker that wakes late (after the run it was
 * woken for) either claims a real task of the current run or nothing. A claimed task keeps its
 * run from completing, and the caller writes the next run's fn/ctx only after completion, so
 * a thread that has claimed a task reads that run's fn/ctx. Not waiting for workers matters
 * when pools share cores (the expert shards of a one-machine cluster): a worker that is not
 * scheduled no longer holds up every run of its pool (measured: expert round trip at batch
 * 32, 2 shards x 2 threads on 2 cores, 1.6-3.1 ms over local compute -> 0.5-1.3 ms).
 *
 * Waiting spins briefly before it sleeps: a decode step is a few dozen parallel ops with short
 * serial gaps, and waking a sleeping thread through a condition variable costs 90-100 us per
 * run on this VM (2 threads, empty tasks), a few per cent of a batch-1 layer step. The spin
 * is bounded (spin_ns) and yields after the first microseconds, so an idle pool sleeps and a
 * runnable thread elsewhere gets the core; it is off when the pool has more threads than the
 * process may run on (mx_usable_cpus).
 *
 * Pinned pools (mx_threadpool_pin) keep each thread on its own CPU. Measured on a 2-vCPU VM
 * whose kernel packs woken threads onto busy vCPUs: a one-machine cluster (2 stages, 2 expert
 * shards, 2 threads each) left one vCPU idle for 3-4 ms at a time while a shard's two threads
 * shared the other; pinned, cluster / single-process decode went 0.83-0.89 -> 0.89-1.02
 * (alternating runs), and the single process alone did not change.
 *
 * Sleeping and waking are ordered Dekker-style: a sleeper first counts itself and then
 * re-reads the word it waits on; a waker first changes the word and then reads the count (all
 * seq_cst). At least one of the two sees the other's write, and a sleeper holds the mutex
 * until cond_wait releases it, so no wake-up is lost. */
#include "threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include "../clock.h"
#include "../cpus.h"

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

/* Ticket layout: generation in the top 16 bits (it may wrap: a worker that misses exactly
 * 65536 runs just waits for the next one), task count in the next 24, next index in the low
 * 24. Runs of more tasks go in slices of at most MAX_SLICE. The index can pass the count by
 * at most one per thread per run, so MAX_SLICE leaves room below 2^24. */
#define NEXT_BITS 24
#define COUNT_BITS 24
#define MAX_SLICE ((1 << 23) - 1)

static inline uint64_t ticket_make(uint64_t gen, uint64_t count)
{
    return (gen << (NEXT_BITS + COUNT_BITS)) | (count << NEXT_BITS);
}
static inline uint64_t ticket_gen(uint64_t t) { return t >> (NEXT_BITS + COUNT_BITS); }
static inline int ticket_count(uint64_t t) { return (int)((t >> NEXT_BITS) & ((1u << COUNT_BITS) - 1)); }
static inline int ticket_next(uint64_t t) { return (int)(t & ((1u << NEXT_BITS) - 1)); }

struct mx_threadpool {
    int n_threads;
    long spin_ns; /* 0 = sleep at once */
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t work_cv, done_cv;
    _Atomic uint64_t ticket;
    atomic_int sleepers;
    atomic_int stopping;
    /* the current run, written by the caller before it publishes the ticket */
    mx_task_fn fn;
    void *ctx;
    int base, total; /* this slice's first task and the whole run's count */
    atomic_int tasks_done;
    atomic_int caller_sleeping;
    int *cpus; /* pinned: thread i's CPU; NULL = the kernel places threads */
    void *scratch; /* mx_threadpool_scratch's buffer */
    size_t scratch_bytes;
};

/* A bounded spin: `while (!condition && spin_more(&s))`. Between checks it pauses, and after
 * the first few microseconds also yields, so a runnable thread of this or another process
 * (the cluster's services share cores) gets the core rather than waiting out the spin. */
typedef struct {
    int64_t deadline; /* 0: do not spin */
    unsigned checks;
} spinner;

static spinner spin_start(long spin_ns)
{
    return (spinner){spin_ns > 0 ? mx_now_ns() + spin_ns : 0, 0};
}

static int spin_more(spinner *s)
{
    if (s->deadline == 0)
        return 0;
    s->checks++;
    cpu_relax();
    if (s->checks > 1024)
        sched_yield();
    return (s->checks & 63) != 0 || mx_now_ns() <= s->deadline; /* read the clock now and then */
}

/* Claims and runs tasks of the current slice until none is left; returns the generation of
 * the ticket it last saw. */
static uint64_t run_tasks(mx_threadpool *p)
{
    for (;;) {
        uint64_t t = atomic_fetch_add(&p->ticket, 1);
        int i = ticket_next(t);
        if (i >= ticket_count(t))
            return ticket_gen(t);
        p->fn(p->ctx, p->base + i, p->total);
        if (atomic_fetch_add(&p->tasks_done, 1) + 1 == ticket_count(t) &&
            atomic_load(&p->caller_sleeping)) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done_cv);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

/* Waits until the ticket's generation differs from seen (or the pool stops). */
static void wait_for_run(mx_threadpool *p, uint64_t seen)
{
    spinner s = spin_start(p->spin_ns);
    while (ticket_gen(atomic_load_explicit(&p->ticket, memory_order_acquire)) == seen &&
           spin_more(&s)) {
    }
    if (ticket_gen(atomic_load(&p->ticket)) != seen)
        return;
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add(&p->sleepers, 1);
    while (ticket_gen(atomic_load(&p->ticket)) == seen && !atomic_load(&p->stopping))
        pthread_cond_wait(&p->work_cv, &p->mu);
    atomic_fetch_sub(&p->sleepers, 1);
    pthread_mutex_unlock(&p->mu);
}

static void *worker_main(void *arg)
{
    mx_threadpool *p = arg;
    pthread_setname_np(pthread_self(), "mx-compute");
    uint64_t seen = ticket_gen(atomic_load(&p->ticket));
    for (;;) {
        wait_for_run(p, seen);
        if (atomic_load(&p->stopping))
            break;
        seen = run_tasks(p);
    }
    return NULL;
}

int mx_threadpool_create(int n_threads, mx_threadpool **out, mx_error *err)
{
    int cores = mx_usable_cpus();
    if (n_threads <= 0)
        n_threads = cores;
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

/* Restricts thread t to one CPU. */
static int pin_thread(pthread_t t, int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(t, sizeof set, &set);
}

int mx_threadpool_pin(mx_threadpool *p, mx_error *err)
{
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0)
        return mx_fail(err, MX_EINVAL, "cannot read this process's CPU affinity to pin its threads");
    int *cpus = malloc((size_t)p->n_threads * sizeof *cpus);
    if (!cpus)
        return mx_fail(err, MX_ENOMEM, "out of memory pinning a thread pool");
    int n_allowed = 0;
    for (int c = 0; c < CPU_SETSIZE && n_allowed < p->n_threads; c++)
        if (CPU_ISSET(c, &allowed))
            cpus[n_allowed++] = c;
    for (int i = n_allowed; i < p->n_threads; i++) /* more threads than CPUs: wrap around */
        cpus[i] = cpus[i % n_allowed];
    for (int i = 1; i < p->n_threads; i++)
        if (pin_thread(p->threads[i], cpus[i]) != 0) {
            int cpu = cpus[i];
            free(cpus);
            return mx_fail(err, MX_EINVAL, "cannot pin thread pool worker %d to CPU %d", i, cpu);
        }
    free(p->cpus);
    p->cpus = cpus;
    return 0;
}

/* The CPU this thread was last pinned to by a pinned pool's run (-1: never). Remembered per
 * thread so that run pins a calling thread once, not with a system call every run; a thread
 * moved elsewhere by other code would not be noticed (nothing in mx does that). */
static _Thread_local int caller_cpu = -1;

static void pin_caller(const mx_threadpool *p)
{
    if (caller_cpu == p->cpus[0])
        return;
    if (pin_thread(pthread_self(), p->cpus[0]) == 0)
        caller_cpu = p->cpus[0];
}

void mx_threadpool_destroy(mx_threadpool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stopping, 1);
    /* a new generation with no tasks ends the spinners' wait too */
    uint64_t gen = ticket_gen(atomic_load(&p->ticket)) + 1;
    atomic_store(&p->ticket, ticket_make(gen & 0xFFFF, 0));
    pthread_cond_broadcast(&p->work_cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads; i++)
        pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->work_cv);
    pthread_cond_destroy(&p->done_cv);
    free(p->scratch);
    free(p->cpus);
    free(p->threads);
    free(p);
}

int mx_threadpool_size(const mx_threadpool *p)
{
    return p ? p->n_threads : 1;
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

/* Waits until all `count` tasks of the current slice are done: spins, then sleeps. */
static void wait_for_tasks(mx_threadpool *p, int count)
{
    spinner s = spin_start(p->spin_ns);
    while (atomic_load_explicit(&p->tasks_done, memory_order_acquire) < count && spin_more(&s)) {
    }
    if (atomic_load(&p->tasks_done) >= count)
        return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->caller_sleeping, 1);
    while (atomic_load(&p->tasks_done) < count)
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
    if (p->cpus)
        pin_caller(p);
    for (int base = 0; base < n_tasks; base += MAX_SLICE) {
        int count = n_tasks - base < MAX_SLICE ? n_tasks - base : MAX_SLICE;
        /* Every task of the previous slice is done, so no thread reads these now. */
        p->fn = fn;
        p->ctx = ctx;
        p->base = base;
        p->total = n_tasks;
        atomic_store(&p->tasks_done, 0);
        uint64_t gen = (ticket_gen(atomic_load(&p->ticket)) + 1) & 0xFFFF;
        atomic_store(&p->ticket, ticket_make(gen, (uint64_t)count));
        if (atomic_load(&p->sleepers) > 0) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_broadcast(&p->work_cv);
            pthread_mutex_unlock(&p->mu);
        }
        run_tasks(p);
        wait_for_tasks(p, count);
    }
}
