/* test_sampling.c - the sampler against distributions worked out by hand: greedy is argmax,
 * logprobs equal log-softmax of the raw logits, the HF repetition-penalty rule, top-k / top-p /
 * min-p cut-offs, sampled frequencies match the softmax (chi-square), and seeds reproduce. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <string.h>

#include "core/sampling.h"

static mx_sample draw(const float *logits, int n, mx_sampling_params p, const int32_t *hist, int nh, mx_rng *rng)
{
    mx_sample s;
    mx_error err = {0};
    if (mx_sample_token(logits, n, &p, hist, nh, rng, NULL, &s, &err))
        fail_msg("%s", err.msg);
    return s;
}

static void greedy_and_logprobs(void **state)
{
    (void)state;
    /* logits 0, ln 3: probabilities 1/4 and 3/4 */
    float logits[2] = {0.f, logf(3.f)};
    mx_rng rng;
    mx_rng_seed(&rng, 1);
    mx_sampling_params p = mx_sampling_defaults();
    p.top_logprobs = 2;
    mx_sample s = draw(logits, 2, p, NULL, 0, &rng);
    assert_int_equal(s.token, 1);
    assert_float_equal(s.logprob, logf(0.75f), 1e-6);
    assert_int_equal(s.n_top, 2);
    assert_int_equal(s.top_ids[0], 1);
    assert_int_equal(s.top_ids[1], 0);
    assert_float_equal(s.top_logprobs[1], logf(0.25f), 1e-6);
}

static void greedy_ties_take_lowest_id(void **state)
{
    (void)state;
    float logits[4] = {1.f, 5.f, 5.f, 2.f};
    mx_rng rng;
    mx_rng_seed(&rng, 1);
    assert_int_equal(draw(logits, 4, mx_sampling_defaults(), NULL, 0, &rng).token, 1);
}

static void repetition_penalty_rule(void **state)
{
    (void)state;
    /* HF rule: a seen token's positive logit is divided by the penalty, a negative one is
     * multiplied. With penalty 2: token 0 (3.0 -> 1.5) loses to token 1 (2.0); token 2
     * (-1 -> -2) stays last. Seen twice still counts once. */
    float logits[3] = {3.f, 2.f, -1.f};
    int32_t hist[3] = {0, 0, 2};
    mx_rng rng;
    mx_rng_seed(&rng, 1);
    mx_sampling_params p = mx_sampling_defaults();
    p.repetition_penalty = 2.f;
    assert_int_equal(draw(logits, 3, p, hist, 3, &rng).token, 1);
    p.repetition_penalty = 1.4f; /* 3/1.4 = 2.14 > 2: token 0 still wins */
    assert_int_equal(draw(logits, 3, p, hist, 3, &rng).token, 0);
}

static void filters_reduce_to_greedy(void **state)
{
    (void)state;
    float logits[5] = {0.1f, 2.f, 1.9f, -3.f, 0.5f};
    mx_sampling_params p = mx_sampling_defaults();
    p.temperature = 1.f;
    for (int trial = 0; trial < 200; trial++) {
        mx_rng rng;
        mx_rng_seed(&rng, (uint64_t)trial);
        mx_sampling_params k1 = p, tp = p, mp = p;
        k1.top_k = 1;
        tp.top_p = 1e-5f;
        mp.min_p = 1.f;
        assert_int_equal(draw(logits, 5, k1, NULL, 0, &rng).token, 1);
        assert_int_equal(draw(logits, 5, tp, NULL, 0, &rng).token, 1);
        assert_int_equal(draw(logits, 5, mp, NULL, 0, &rng).token, 1);
        mx_sampling_params k2 = p;
        k2.top_k = 2;
        int t = draw(logits, 5, k2, NULL, 0, &rng).token;
        assert_true(t == 1 || t == 2);
    }
}

static void frequencies_follow_softmax(void **state)
{
    (void)state;
    /* logits ln 1..ln 4: probabilities 0.1, 0.2, 0.3, 0.4 */
    float logits[4] = {0.f, logf(2.f), logf(3.f), logf(4.f)};
    int counts[4] = {0};
    mx_rng rng;
    mx_rng_seed(&rng, 42);
    mx_sampling_params p = mx_sampling_defaults();
    p.temperature = 1.f;
    const int N = 40000;
    for (int i = 0; i < N; i++)
        counts[draw(logits, 4, p, NULL, 0, &rng).token]++;
    double chi2 = 0;
    for (int i = 0; i < 4; i++) {
        double expect = N * (i + 1) / 10.0;
        chi2 += (counts[i] - expect) * (counts[i] - expect) / expect;
    }
    assert_true(chi2 < 16.27); /* 3 degrees of freedom, p = 0.001 */
    /* temperature 0.5 squares the odds: 1, 4, 9, 16 over 30 */
    p.temperature = 0.5f;
    int top = 0;
    for (int i = 0; i < N; i++)
        top += draw(logits, 4, p, NULL, 0, &rng).token == 3;
    assert_true(fabs((double)top / N - 16.0 / 30.0) < 0.015);
}

static void same_seed_same_tokens(void **state)
{
    (void)state;
    float logits[64];
    for (int i = 0; i < 64; i++)
        logits[i] = sinf((float)i);
    mx_sampling_params p = mx_sampling_defaults();
    p.temperature = 1.f;
    p.top_p = 0.9f;
    int a[32], b[32], c[32];
    mx_rng r1, r2, r3;
    mx_rng_seed(&r1, 7);
    mx_rng_seed(&r2, 7);
    mx_rng_seed(&r3, 8);
    int differs = 0;
    for (int i = 0; i < 32; i++) {
        a[i] = draw(logits, 64, p, NULL, 0, &r1).token;
        b[i] = draw(logits, 64, p, NULL, 0, &r2).token;
        c[i] = draw(logits, 64, p, NULL, 0, &r3).token;
        assert_int_equal(a[i], b[i]);
        differs |= a[i] != c[i];
    }
    assert_true(differs);
}

static void bad_parameters_named(void **state)
{
    (void)state;
    mx_error err = {0};
    mx_sampling_params p = mx_sampling_defaults();
    p.temperature = NAN;
    assert_int_equal(mx_sampling_validate(&p, &err), MX_EINVAL);
    assert_non_null(strstr(err.msg, "temperature"));
    p = mx_sampling_defaults();
    p.top_p = 0.f;
    assert_int_equal(mx_sampling_validate(&p, &err), MX_EINVAL);
    assert_non_null(strstr(err.msg, "top_p"));
    p = mx_sampling_defaults();
    p.min_p = -0.5f;
    assert_int_equal(mx_sampling_validate(&p, &err), MX_EINVAL);
    assert_non_null(strstr(err.msg, "min_p"));
    p = mx_sampling_defaults();
    p.repetition_penalty = 0.f;
    assert_int_equal(mx_sampling_validate(&p, &err), MX_EINVAL);
    assert_non_null(strstr(err.msg, "repetition_penalty"));
    p = mx_sampling_defaults();
    p.top_k = -1;
    assert_int_equal(mx_sampling_validate(&p, &err), MX_EINVAL);
    assert_non_null(strstr(err.msg, "top_k"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(greedy_and_logprobs),     cmocka_unit_test(greedy_ties_take_lowest_id),
        cmocka_unit_test(repetition_penalty_rule), cmocka_unit_test(filters_reduce_to_greedy),
        cmocka_unit_test(frequencies_follow_softmax), cmocka_unit_test(same_seed_same_tokens),
        cmocka_unit_test(bad_parameters_named),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
