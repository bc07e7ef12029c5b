/* test_cpu_threadpool.c - the thread pool runs every task of every run exactly once, whether
 * its workers are spinning between runs, asleep after a long gap, or never spin (more threads
 * than cores); the caller waits for slow workers; destroy ends idle and sleeping workers; a
 * pinned pool runs each thread on one CPU of the caller's affinity mask, apart while they fit. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/cpu/threadpool.h"

#define MAX_TASKS 300
#define BIG_TASKS ((1 << 23) + 1000) /* just over one slice of the pool's ticket */

typedef struct {
    atomic_int hits[MAX_TASKS];
    atomic_int calls;
    atomic_int bad; /* calls with an out-of-range index (checked by the caller: cmocka's
                       asserts must not fire on a worker thread) */
    int sleep_task; /* this task sleeps 20 ms (a slow worker), -1 = none */
} counting_job;

static void count_task(void *ctx, int task, int n_tasks)
{
    counting_job *j = ctx;
    if (task < 0 || task >= n_tasks || n_tasks > MAX_TASKS) {
        atomic_fetch_add(&j->bad, 1);
        return;
    }
    atomic_fetch_add(&j->hits[task], 1);
    atomic_fetch_add(&j->calls, 1);
    if (task == j->sleep_task)
        usleep(20000);
}

static void run_and_check(mx_threadpool *pool, int n_tasks, int sleep_task)
{
    counting_job *j = calloc(1, sizeof *j);
    assert_non_null(j);
    j->sleep_task = sleep_task;
    mx_threadpool_run(pool, count_task, j, n_tasks);
    /* run returned: every task ran, once, and nothing runs after it */
    assert_int_equal(atomic_load(&j->bad), 0);
    assert_int_equal(atomic_load(&j->calls), n_tasks > 0 ? n_tasks : 0);
    for (int t = 0; t < MAX_TASKS; t++)
        assert_int_equal(atomic_load(&j->hits[t]), t < n_tasks ? 1 : 0);
    free(j);
}

static void every_task_once(int threads)
{
    mx_error err = {0};
    mx_threadpool *pool = NULL;
    assert_int_equal(mx_threadpool_create(threads, &pool, &err), 0);
    /* back to back (workers still spinning), including 0 and 1 task and more tasks than fit */
    for (int i = 0; i < 2000; i++)
        run_and_check(pool, i % 7 == 0 ? 0 : (i * 37) % MAX_TASKS + 1, -1);
    /* after a gap longer than any spin, so the workers sleep and must be woken */
    for (int i = 0; i < 5; i++) {
        usleep(5000);
        run_and_check(pool, 64, -1);
    }
    /* a slow task keeps a worker busy past the caller's spin: the caller must sleep and wake */
    run_and_check(pool, 8, 7);
    run_and_check(pool, 8, 0);
    mx_threadpool_destroy(pool);
}

static void two_threads(void **state)
{
    (void)state;
    every_task_once(2);
}

static void more_threads_than_cores(void **state)
{
    (void)state;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    every_task_once((int)(cores > 0 ? cores : 1) + 3);
}

static void one_thread_runs_inline(void **state)
{
    (void)state;
    every_task_once(1);
}

static void destroy_idle_and_sleeping(void **state)
{
    (void)state;
    mx_error err = {0};
    for (int i = 0; i < 50; i++) {
        mx_threadpool *pool = NULL;
        assert_int_equal(mx_threadpool_create(3, &pool, &err), 0);
        if (i % 2)
            run_and_check(pool, 5, -1); /* destroyed while its workers spin */
        if (i % 5 == 0)
            usleep(2000); /* ... or sleep */
        mx_threadpool_destroy(pool);
    }
    mx_threadpool_destroy(NULL);
}

/* A run larger than one ticket slice (2^23 - 1 tasks) is handed out in several, with the task
 * indices and the count the caller asked for. */
typedef struct {
    atomic_uchar *hits;
    atomic_int wrong_count;
} big_job;

static void big_task(void *ctx, int task, int n_tasks)
{
    big_job *j = ctx;
    if (n_tasks != BIG_TASKS || task < 0 || task >= BIG_TASKS) {
        atomic_fetch_add(&j->wrong_count, 1);
        return;
    }
    atomic_fetch_add(&j->hits[task], 1);
}

static void more_tasks_than_a_slice(void **state)
{
    (void)state;
    mx_error err = {0};
    mx_threadpool *pool = NULL;
    assert_int_equal(mx_threadpool_create(2, &pool, &err), 0);
    big_job j = {calloc(BIG_TASKS, sizeof *j.hits), 0};
    assert_non_null(j.hits);
    mx_threadpool_run(pool, big_task, &j, BIG_TASKS);
    assert_int_equal(atomic_load(&j.wrong_count), 0);
    int missed = 0, twice = 0;
    for (int t = 0; t < BIG_TASKS; t++) {
        missed += atomic_load(&j.hits[t]) == 0;
        twice += atomic_load(&j.hits[t]) > 1;
    }
    assert_int_equal(missed, 0);
    assert_int_equal(twice, 0);
    free(j.hits);
    mx_threadpool_destroy(pool);
}

/* ---- pinning: checked off the main thread, which must not end up pinned itself ---- */

#define PIN_TASKS 16

typedef struct {
    int threads;             /* pool size */
    int only_cpu;            /* >= 0: the pinning thread first restricts itself to this CPU */
    int rc;                  /* mx_threadpool_pin's result */
    int task_cpu[PIN_TASKS]; /* the one CPU the task's thread may run on, -1 = not exactly one */
    int caller_cpu;          /* the same for the thread that called run, after it */
} pin_job;

static int only_cpu_of_this_thread(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0 || CPU_COUNT(&set) != 1)
        return -1;
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, &set))
            return c;
    return -1;
}

static void record_cpu_task(void *ctx, int task, int n_tasks)
{
    (void)n_tasks;
    pin_job *j = ctx;
    j->task_cpu[task] = only_cpu_of_this_thread();
    usleep(2000); /* long enough that every worker takes some of the tasks */
}

static void *pin_and_run(void *arg)
{
    pin_job *j = arg;
    if (j->only_cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(j->only_cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set) != 0) {
            j->rc = -100;
            return NULL;
        }
    }
    mx_error err = {0};
    mx_threadpool *pool = NULL;
    j->rc = mx_threadpool_create(j->threads, &pool, &err);
    if (!j->rc)
        j->rc = mx_threadpool_pin(pool, &err);
    if (!j->rc)
        for (int round = 0; round < 3; round++) /* workers spinning, then asleep */
            mx_threadpool_run(pool, record_cpu_task, j, PIN_TASKS);
    j->caller_cpu = only_cpu_of_this_thread();
    mx_threadpool_destroy(pool);
    return NULL;
}

static void run_pinned(pin_job *j)
{
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, pin_and_run, j), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(j->rc, 0);
}

/* Each thread on its own CPU of the mask, the caller on the first, every CPU used. */
static void pinned_threads_stay_apart(void **state)
{
    (void)state;
    cpu_set_t allowed;
    assert_int_equal(sched_getaffinity(0, sizeof allowed, &allowed), 0);
    int cpus[CPU_SETSIZE], n = 0;
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, &allowed))
            cpus[n++] = c;
    if (n < 2)
        skip();
    pin_job j = {.threads = n < 4 ? n : 4, .only_cpu = -1};
    run_pinned(&j);
    assert_int_equal(j.caller_cpu, cpus[0]);
    int seen[CPU_SETSIZE] = {0}, distinct = 0;
    for (int t = 0; t < PIN_TASKS; t++) {
        assert_in_range(j.task_cpu[t], 0, CPU_SETSIZE - 1); /* exactly one CPU */
        int k = 0;
        while (k < j.threads && cpus[k] != j.task_cpu[t])
            k++;
        assert_true(k < j.threads); /* one of the first `threads` allowed CPUs */
        distinct += !seen[k]++;
    }
    /* the tasks sleep, so every thread takes some: one CPU per thread */
    assert_int_equal(distinct, j.threads);
}

/* The CPUs come from the caller's mask (a container's cpuset): restricted to one CPU, every
 * thread of a 3-thread pool shares it rather than running outside it. */
static void pinned_threads_keep_the_mask(void **state)
{
    (void)state;
    cpu_set_t allowed;
    assert_int_equal(sched_getaffinity(0, sizeof allowed, &allowed), 0);
    int last = -1;
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, &allowed))
            last = c;
    pin_job j = {.threads = 3, .only_cpu = last};
    run_pinned(&j);
    assert_int_equal(j.caller_cpu, last);
    for (int t = 0; t < PIN_TASKS; t++)
        assert_int_equal(j.task_cpu[t], last);
}

static void bad_thread_count(void **state)
{
    (void)state;
    mx_error err = {0};
    mx_threadpool *pool = NULL;
    assert_int_equal(mx_threadpool_create(257, &pool, &err), MX_EINVAL);
    assert_null(pool);
    assert_non_null(strstr(err.msg, "257"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(two_threads),
        cmocka_unit_test(more_threads_than_cores),
        cmocka_unit_test(one_thread_runs_inline),
        cmocka_unit_test(destroy_idle_and_sleeping),
        cmocka_unit_test(more_tasks_than_a_slice),
        cmocka_unit_test(bad_thread_count),
        cmocka_unit_test(pinned_threads_stay_apart),
        cmocka_unit_test(pinned_threads_keep_the_mask),
    };
    return cmocka_run_group_tests_name("cpu_threadpool", tests, NULL, NULL);
}
