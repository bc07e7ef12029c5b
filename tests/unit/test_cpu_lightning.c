/* test_cpu_lightning.c - the CPU lightning attention at the real model's head sizes (head_dim
 * 64 and 128, where prefill runs as block products) against the spec's closed form evaluated
 * here in double: o_t = sum_{p <= t} exp(-s (t - p)) (q_t . k_p) v_p, for one-shot prefill over
 * several 256-token blocks, chunks of odd sizes on top of the state, decode steps after them, and
 * two sequences of different lengths in one call. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/backend.h"

static float frand(uint64_t *s) /* in [-1, 1) */
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return (float)((*s >> 40) * (1.0 / 8388608.0) * 2.0 - 1.0);
}

/* Closed form for every head and token of one sequence: o[t][h][b]. */
static void reference(const float *qkv, int n, int H, int d, const float *decay, double *o)
{
    double *w = malloc(sizeof(double) * (size_t)n);
    assert_non_null(w);
    size_t row = (size_t)H * 3 * d;
    for (int h = 0; h < H; h++)
        for (int t = 0; t < n; t++) {
            const float *q = qkv + (size_t)t * row + (size_t)h * 3 * d;
            for (int p = 0; p <= t; p++) {
                const float *k = qkv + (size_t)p * row + (size_t)h * 3 * d + d;
                double dot = 0;
                for (int a = 0; a < d; a++)
                    dot += (double)q[a] * k[a];
                w[p] = exp(-(double)decay[h] * (t - p)) * dot;
            }
            double *ot = o + ((size_t)t * H + h) * d;
            for (int b = 0; b < d; b++)
                ot[b] = 0;
            for (int p = 0; p <= t; p++) {
                const float *v = qkv + (size_t)p * row + (size_t)h * 3 * d + 2 * d;
                for (int b = 0; b < d; b++)
                    ot[b] += w[p] * v[b];
            }
        }
    free(w);
}

static double max_abs(const double *x, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs(x[i]));
    return m;
}

/* Runs two sequences (lengths n0, n1) through the backend in calls of chunk tokens each (both
 * sequences in every call while they have tokens left) and checks both against the reference. */
static void run_case(int n0, int n1, int H, int d, int chunk)
{
    mx_backend *be = NULL;
    mx_error err = {0};
    assert_int_equal(mx_backend_cpu_create(2, &be, &err), 0);
    int ns[2] = {n0, n1};
    size_t row = (size_t)H * 3 * d, orow = (size_t)H * d;
    float *qkv[2], *out[2];
    double *ref[2];
    float decay[4] = {0.3f, 0.02f, 0.0015f, 0.1f};
    mx_lightning_state st[2];
    mx_lightning_state *states[2] = {&st[0], &st[1]};
    for (int s = 0; s < 2; s++) {
        uint64_t seed = 77 + (uint64_t)s * 1000 + (uint64_t)d;
        qkv[s] = malloc(sizeof(float) * (size_t)ns[s] * row);
        out[s] = malloc(sizeof(float) * (size_t)ns[s] * orow);
        ref[s] = malloc(sizeof(double) * (size_t)ns[s] * orow);
        assert_true(qkv[s] && out[s] && ref[s]);
        for (size_t i = 0; i < (size_t)ns[s] * row; i++)
            qkv[s][i] = frand(&seed) * 0.25f;
        reference(qkv[s], ns[s], H, d, decay, ref[s]);
        assert_int_equal(be->lightning_state_init(be, &st[s], H, d, &err), 0);
        memset(st[s].S.data, 0, sizeof(float) * (size_t)H * d * d);
    }
    float *bq = malloc(sizeof(float) * (size_t)2 * chunk * row), *bo = malloc(sizeof(float) * (size_t)2 * chunk * orow);
    assert_true(bq && bo);
    int done[2] = {0, 0};
    while (done[0] < ns[0] || done[1] < ns[1]) {
        mx_span spans[2];
        mx_lightning_state *sts[2];
        int n_spans = 0, rows = 0;
        for (int s = 0; s < 2; s++) {
            int len = ns[s] - done[s] < chunk ? ns[s] - done[s] : chunk;
            if (len <= 0)
                continue;
            memcpy(bq + (size_t)rows * row, qkv[s] + (size_t)done[s] * row, sizeof(float) * (size_t)len * row);
            spans[n_spans] = (mx_span){rows, len};
            sts[n_spans++] = states[s];
            rows += len;
        }
        mx_tensor tq = mx_tensor_2d(bq, MX_DTYPE_F32, MX_DEVICE_CPU, rows, (int64_t)row);
        mx_tensor to = mx_tensor_2d(bo, MX_DTYPE_F32, MX_DEVICE_CPU, rows, (int64_t)orow);
        if (be->lightning(be, &to, &tq, spans, n_spans, sts, decay, H, d, &err))
            fail_msg("lightning: %s", err.msg);
        for (int s = 0, i = 0; s < 2; s++) {
            int len = ns[s] - done[s] < chunk ? ns[s] - done[s] : chunk;
            if (len <= 0)
                continue;
            memcpy(out[s] + (size_t)done[s] * orow, bo + (size_t)spans[i].start * orow,
                   sizeof(float) * (size_t)len * orow);
            done[s] += len;
            i++;
        }
    }
    for (int s = 0; s < 2; s++) {
        double worst = 0, scale = max_abs(ref[s], (size_t)ns[s] * orow);
        for (size_t i = 0; i < (size_t)ns[s] * orow; i++)
            worst = fmax(worst, fabs(out[s][i] - ref[s][i]));
        if (!(worst <= 1e-5 * scale))
            fail_msg("n %d d %d chunk %d seq %d: max error %g of scale %g", ns[s], d, chunk, s, worst, scale);
        be->lightning_state_free(be, &st[s]);
        free(qkv[s]);
        free(out[s]);
        free(ref[s]);
    }
    free(bq);
    free(bo);
    be->destroy(be);
}

static void test_prefill_d128(void **state)
{
    (void)state;
    run_case(700, 300, 2, 128, 700); /* one shot: blocks 256 + 256 + 188 and 256 + 44 */
}

static void test_chunks_d64(void **state)
{
    (void)state;
    run_case(600, 257, 4, 64, 100);
    run_case(300, 70, 3, 64, 37);
}

static void test_decode_after_prefill(void **state)
{
    (void)state;
    run_case(40, 5, 2, 128, 1); /* one token per call: the recurrence */
    run_case(520, 260, 2, 48, 257);
    run_case(30, 3, 2, 48, 1); /* the step with a column tail */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prefill_d128),
        cmocka_unit_test(test_chunks_d64),
        cmocka_unit_test(test_decode_after_prefill),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
