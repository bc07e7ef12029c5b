/* test_expert_plan.c - the expert placement planner (core/expert_plan.h): small cases worked
 * out by hand (copies of the hottest expert, packing order, replicas by load, the contiguous
 * candidate winning), and invariants over random loads: the busiest replica never worse than
 * the contiguous split's, every expert placed, no expert twice in a shard, replicas sum to R. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/expert_plan.h"

static void assert_shard(const mx_expert_plan *p, int s, const int *want, int n)
{
    assert_int_equal(p->n_held[s], n);
    for (int i = 0; i < n; i++)
        assert_int_equal(p->held[(size_t)s * p->slots + i], want[i]);
}

/* load 190 on expert 0 of 8, 4 shards x 3 slots, 8 replicas; mean 290 / 8 = 36.25. Plain EPLB
 * (every spare slot a copy: expert 0 on all 4 shards, expert 1 twice, 2 replicas each) gets
 * 38.75. Better by hand: expert 0 alone with 5 replicas (38) and the other 100 in three
 * one-replica shards, best packed as {1,6} 32, {3,5} 30, {2,4,7} 38 (any split of 22, 20,
 * 18, 10 x4 into bins of <= 3 has a bin of >= 38): max 38. Contiguous: {0,1} = 212 over 2
 * replicas = 106. */
static void test_hot_expert_alone(void **state)
{
    (void)state;
    const double load[8] = {190, 22, 18, 20, 10, 10, 10, 10};
    mx_expert_plan p = {0}, c = {0};
    mx_error err = {0};
    assert_int_equal(mx_expert_plan_make(load, 8, 4, 8, 3, &p, &err), 0);
    const int s0[] = {0}, s1[] = {1, 6}, s2[] = {3, 5}, s3[] = {2, 4, 7};
    assert_shard(&p, 0, s0, 1);
    assert_shard(&p, 1, s1, 2);
    assert_shard(&p, 2, s2, 2);
    assert_shard(&p, 3, s3, 3);
    assert_int_equal(p.replicas[0], 5);
    for (int s = 1; s < 4; s++)
        assert_int_equal(p.replicas[s], 1);
    assert_true(fabs(p.shard_load[0] - 190) < 1e-9);
    assert_true(fabs(p.shard_load[3] - 38) < 1e-9);
    assert_true(fabs(p.max_per_replica - 38) < 1e-9);
    assert_true(fabs(p.mean_per_replica - 36.25) < 1e-9);
    assert_int_equal(mx_expert_plan_contiguous(load, 8, 4, 8, &c, &err), 0);
    assert_true(fabs(c.max_per_replica - 106) < 1e-9);
    mx_expert_plan_free(&p);
    mx_expert_plan_free(&c);
}

/* Copies pay when replicas are few: load {90, 10, 10, 10, 10, 10}, 3 shards x 3 slots, 3
 * replicas (one each), mean 140 / 3 = 46.7. Without copies expert 0 keeps a replica at 90 or
 * more. With expert 0 on all 3 shards (30 each) two slots per shard are left for 50 of light
 * load in pieces of 10 (or 5 for a light expert held twice): some shard gets 20, so 50 is the
 * best there is, and the plan must reach it. */
static void test_hot_expert_copied(void **state)
{
    (void)state;
    const double load[6] = {90, 10, 10, 10, 10, 10};
    mx_expert_plan p = {0};
    mx_error err = {0};
    assert_int_equal(mx_expert_plan_make(load, 6, 3, 3, 3, &p, &err), 0);
    assert_int_equal(p.copies[0], 3);
    assert_true(fabs(p.max_per_replica - 50) < 1e-9);
    for (int s = 0; s < 3; s++) {
        assert_int_equal(p.replicas[s], 1);
        assert_int_equal(p.held[(size_t)s * p.slots], 0); /* expert 0 first (ascending) */
    }
    mx_expert_plan_free(&p);
}

/* load {60, 20, 10, 10}, 2 shards x 2 slots, 5 replicas. Packing: 60 -> s0, 20 -> s1, 10 -> s1
 * (full), 10 -> s0: {0,3} 70 and {1,2} 30; replicas 3 + 2: max 70/3 = 23.3. The contiguous
 * candidate {0,1} 80, {2,3} 20 with replicas 4 + 1 has max 20, so it is the answer. The even
 * contiguous baseline (3 + 2 replicas) has 80/3. */
static void test_contiguous_candidate_wins(void **state)
{
    (void)state;
    const double load[4] = {60, 20, 10, 10};
    mx_expert_plan p = {0}, c = {0};
    mx_error err = {0};
    assert_int_equal(mx_expert_plan_make(load, 4, 2, 5, 2, &p, &err), 0);
    const int s0[] = {0, 1}, s1[] = {2, 3};
    assert_shard(&p, 0, s0, 2);
    assert_shard(&p, 1, s1, 2);
    assert_int_equal(p.replicas[0], 4);
    assert_int_equal(p.replicas[1], 1);
    assert_true(fabs(p.max_per_replica - 20) < 1e-9);
    assert_int_equal(mx_expert_plan_contiguous(load, 4, 2, 5, &c, &err), 0);
    assert_int_equal(c.replicas[0], 3);
    assert_int_equal(c.replicas[1], 2);
    assert_true(fabs(c.max_per_replica - 80.0 / 3) < 1e-9);
    mx_expert_plan_free(&p);
    mx_expert_plan_free(&c);
}

/* Equal loads: nothing to gain; 2 experts per shard, 1 replica each, max = mean = 2. */
static void test_uniform(void **state)
{
    (void)state;
    const double load[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    mx_expert_plan p = {0};
    mx_error err = {0};
    assert_int_equal(mx_expert_plan_make(load, 8, 4, 4, 0, &p, &err), 0);
    assert_int_equal(p.slots, 2);
    for (int s = 0; s < 4; s++) {
        assert_int_equal(p.n_held[s], 2);
        assert_int_equal(p.replicas[s], 1);
    }
    assert_true(fabs(p.max_per_replica - 2) < 1e-9);
    assert_true(fabs(p.mean_per_replica - 2) < 1e-9);
    mx_expert_plan_free(&p);
}

static void test_errors(void **state)
{
    (void)state;
    const double load[4] = {1, 2, 3, 4}, bad[4] = {1, -2, 3, 4};
    mx_expert_plan p = {0};
    mx_error err = {0};
    assert_int_equal(mx_expert_plan_make(load, 4, 2, 1, 0, &p, &err), MX_EINVAL);
    assert_non_null(strstr(err.msg, "every shard needs one"));
    assert_int_equal(mx_expert_plan_make(load, 4, 5, 5, 0, &p, &err), MX_EINVAL);
    assert_int_equal(mx_expert_plan_make(load, 4, 2, 2, 1, &p, &err), MX_EINVAL);
    assert_non_null(strstr(err.msg, "outside [2, 4]"));
    assert_int_equal(mx_expert_plan_make(load, 4, 2, 2, 5, &p, &err), MX_EINVAL);
    assert_int_equal(mx_expert_plan_make(bad, 4, 2, 2, 0, &p, &err), MX_EINVAL);
    assert_non_null(strstr(err.msg, "expert 1"));
    mx_expert_plan_free(&p);
}

/* Invariants over 300 random skewed loads and layouts (up to 3 spare slots per shard). */
static void test_random_invariants(void **state)
{
    (void)state;
    srand(12345);
    for (int it = 0; it < 300; it++) {
        int N = 2 + rand() % 40, S = 1 + rand() % N, R = S + rand() % (2 * S + 1);
        int kmin = (N + S - 1) / S, K = kmin + rand() % (N - kmin < 3 ? N - kmin + 1 : 4);
        double load[64], total = 0;
        for (int e = 0; e < N; e++) {
            /* a few hot experts over a noisy floor, some idle ones */
            load[e] = rand() % 7 == 0 ? 0 : (rand() % 100) * (e < 3 ? 1 + rand() % 20 : 1);
            total += load[e];
        }
        mx_expert_plan p = {0}, c = {0};
        mx_error err = {0};
        assert_int_equal(mx_expert_plan_make(load, N, S, R, it % 3 ? K : 0, &p, &err), 0);
        assert_int_equal(mx_expert_plan_contiguous(load, N, S, R, &c, &err), 0);
        assert_true(p.max_per_replica <= c.max_per_replica + 1e-9 * (1 + c.max_per_replica));
        int reps = 0;
        double sum = 0;
        for (int s = 0; s < S; s++) {
            assert_true(p.replicas[s] >= 1);
            assert_true(p.n_held[s] >= 1 && p.n_held[s] <= p.slots);
            reps += p.replicas[s];
            sum += p.shard_load[s];
            for (int i = 0; i < p.n_held[s]; i++) {
                int e = p.held[(size_t)s * p.slots + i];
                assert_true(e >= 0 && e < N);
                if (i)
                    assert_true(e > p.held[(size_t)s * p.slots + i - 1]); /* ascending, no twice */
            }
        }
        assert_int_equal(reps, R);
        assert_true(fabs(sum - total) <= 1e-9 * (1 + total));
        for (int e = 0; e < N; e++) {
            int found = 0;
            for (int s = 0; s < S; s++)
                for (int i = 0; i < p.n_held[s]; i++)
                    found += p.held[(size_t)s * p.slots + i] == e;
            assert_int_equal(found, p.copies[e]);
            assert_true(found >= 1);
        }
        /* the busiest replica is at least the mean, and its figure is what the shards say */
        double mx = 0;
        for (int s = 0; s < S; s++)
            mx = fmax(mx, p.shard_load[s] / p.replicas[s]);
        assert_true(fabs(mx - p.max_per_replica) <= 1e-9 * (1 + mx));
        assert_true(p.max_per_replica >= p.mean_per_replica - 1e-9 * (1 + mx));
        mx_expert_plan_free(&p);
        mx_expert_plan_free(&c);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hot_expert_alone),
        cmocka_unit_test(test_hot_expert_copied),
        cmocka_unit_test(test_contiguous_candidate_wins),
        cmocka_unit_test(test_uniform),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_random_invariants),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
