/* test_cpu_threadpool.c - the thread pool runs every task of every run exactly once, whether
 * its workers are spinning between runs, asleep after a long gap, or never spin (more threads
 * than cores); the caller waits for slow workers; destroy ends idle and sleeping workers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

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
    };
    return cmocka_run_group_tests_name("cpu_threadpool", tests, NULL, NULL);
}
