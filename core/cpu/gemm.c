/* gemm.c - portable reference path of mx_cpu_gemm (to be replaced by SIMD kernels with
 * run-time dispatch). Splits N across the pool's threads. */
#include "gemm.h"

typedef struct {
    float *y;
    int ldy;
    const float *x;
    int ldx, M, K, N;
    const void *w;
    mx_dtype wdtype;
} gemm_job;

static void gemm_task(void *ctx, int task, int n_tasks)
{
    const gemm_job *j = ctx;
    int n0 = (int)((long)j->N * task / n_tasks), n1 = (int)((long)j->N * (task + 1) / n_tasks);
    for (int n = n0; n < n1; n++) {
        for (int m = 0; m < j->M; m++) {
            const float *xr = j->x + (size_t)m * j->ldx;
            float acc = 0.f;
            for (int k = 0; k < j->K; k++)
                acc += xr[k] * mx_load_as_f32(j->w, j->wdtype, (int64_t)n * j->K + k);
            j->y[(size_t)m * j->ldy + n] = acc;
        }
    }
}

int mx_cpu_gemm(mx_threadpool *pool, float *y, int ldy, const float *x, int ldx, int M, int K,
                const void *w, mx_dtype wdtype, int N, mx_error *err)
{
    if (M < 0 || K <= 0 || N <= 0 || ldx < K || ldy < N)
        return mx_fail(err, MX_EINVAL, "gemm: bad shape M=%d K=%d N=%d", M, K, N);
    if (wdtype != MX_DTYPE_BF16 && wdtype != MX_DTYPE_F16 && wdtype != MX_DTYPE_F32)
        return mx_fail(err, MX_EUNSUPPORTED, "gemm: weight dtype %s", mx_dtype_name(wdtype));
    gemm_job j = {y, ldy, x, ldx, M, K, N, w, wdtype};
    int tasks = mx_threadpool_size(pool) * 4;
    if (tasks > N)
        tasks = N;
    mx_threadpool_run(pool, gemm_task, &j, tasks);
    return 0;
}

const char *mx_cpu_gemm_isa(void)
{
    return "scalar";
}
