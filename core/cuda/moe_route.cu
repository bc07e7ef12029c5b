/* moe_route.cu - the MoE router on the GPU: logits = x . gate^T in exact fp32 (the spec keeps
 * the gate in fp32: rounding it moves logits by up to 16%), then per token softmax over all
 * experts, top-k (largest first, ties to the lower id) and renormalisation. Results go to
 * host arrays, so this op waits for the GPU. */
#include "gemm_kernels.cuh"

#include <limits.h>

#define ROUTE_MAX_K 16

/* One thread per token: softmax, k selection passes, renormalise. */
__global__ void route_kernel(int32_t *ids, float *weights, const float *logits, int T, int E, int k)
{
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= T)
        return;
    const float *l = logits + (int64_t)t * E;
    float mx = -INFINITY;
    for (int e = 0; e < E; e++)
        mx = fmaxf(mx, l[e]);
    float sum = 0.0f;
    for (int e = 0; e < E; e++)
        sum += expf(l[e] - mx);
    int chosen[ROUTE_MAX_K];
    float p[ROUTE_MAX_K], psum = 0.0f;
    for (int j = 0; j < k; j++) {
        int best = -1;
        float bv = -INFINITY;
        for (int e = 0; e < E; e++) {
            bool taken = false;
            for (int c = 0; c < j; c++)
                taken = taken || chosen[c] == e;
            if (!taken && (best < 0 || l[e] > bv)) {
                best = e;
                bv = l[e];
            }
        }
        chosen[j] = best;
        p[j] = expf(bv - mx) / sum;
        psum += p[j];
    }
    for (int j = 0; j < k; j++) {
        ids[(int64_t)t * k + j] = chosen[j];
        weights[(int64_t)t * k + j] = p[j] / psum;
    }
}

int cuda_moe_route(mx_backend *be, int32_t *ids, float *weights, const mx_tensor *x,
                   const mx_tensor *gate, int k, mx_error *err)
{
    TRY(cuda_check_act(x, "moe_route x", err));
    TRY(cuda_check_weight(gate, "moe gate", err));
    if (gate->ndim != 2 || gate->shape[1] != x->shape[1])
        return mx_fail(err, MX_EINVAL, "moe_route: gate must be [experts, %lld]",
                       (long long)x->shape[1]);
    if (gate->shape[0] > 4096 || x->shape[0] > INT_MAX || x->shape[1] > INT_MAX)
        return mx_fail(err, MX_ERANGE, "moe_route: dimensions too large");
    int T = (int)x->shape[0], E = (int)gate->shape[0], K = (int)x->shape[1];
    if (k < 1 || k > E || k > ROUTE_MAX_K)
        return mx_fail(err, MX_EINVAL, "moe_route: top-k %d outside 1..min(%d experts, %d)", k, E,
                       ROUTE_MAX_K);
    if (T == 0)
        return 0;
    if (!ids || !weights)
        return mx_fail(err, MX_EINVAL, "moe_route: missing output arrays");
    TRY(cuda_enter(be, err));
    cuda_impl *im = impl_of(be);
    size_t logit_bytes = ((size_t)T * E * 4 + 255) & ~(size_t)255;
    size_t out_bytes = (size_t)T * k * 4;
    char *buf;
    TRY(cuda_scratch(be, logit_bytes + 2 * out_bytes, (void **)&buf, err));
    float *logits = (float *)buf;
    int32_t *dids = (int32_t *)(buf + logit_bytes);
    float *dw = (float *)(buf + logit_bytes + out_bytes);
    const float *xd = (const float *)x->data;
    if (gate->dtype == MX_DTYPE_F32) {
        const float one = 1.0f, zero = 0.0f;
        CUBLAS_TRY(cublasSgemm(im->cublas, CUBLAS_OP_T, CUBLAS_OP_N, E, T, K, &one,
                               (const float *)gate->data, K, xd, K, &zero, logits, E));
    } else {
        TRY(launch_tiled_gemm(im->stream, logits, xd, gate->data, 1, T, E, K, err));
    }
    route_kernel<<<(unsigned)((T + 127) / 128), 128, 0, im->stream>>>(dids, dw, logits, T, E, k);
    LAUNCH_CHECK();
    CU_TRY(cudaMemcpyAsync(ids, dids, out_bytes, cudaMemcpyDeviceToHost, im->stream));
    CU_TRY(cudaMemcpyAsync(weights, dw, out_bytes, cudaMemcpyDeviceToHost, im->stream));
    CU_TRY(cudaStreamSynchronize(im->stream));
    return 0;
}
