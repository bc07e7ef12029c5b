/* bench_cuda.c - kernel benchmarks of the CUDA backend, printed as one summary table against
 * the targets: dense GEMM vs cuBLAS, lightning prefill at 64K tokens vs bf16 tensor-core peak,
 * lightning decode and paged-KV decode at 32K context in every KV dtype vs measured HBM
 * bandwidth (device-to-device copy), grouped expert SwiGLU vs one cuBLAS call per expert at
 * decode batch sizes. Inputs are zeros or constants: the kernels' speed does not depend on
 * values. Skips without a GPU. */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/backend.h"
#include "core/cuda/mx_cuda.h"

#define BF16_PEAK_TFLOPS 989.0 /* H100/H200 SXM dense bf16 */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int die(const char *what, const mx_error *err)
{
    printf("bench: %s: %s\n0 passed, 1 failed\n", what, err ? err->msg : "");
    return 1;
}

static void row(const char *name, const char *value, const char *target, int met)
{
    printf("| %-44s | %-30s | %-18s | %-6s |\n", name, value, target,
           met < 0 ? "-" : met ? "MET" : "MISSED");
}

/* Device-to-device copy bandwidth (read + write bytes), the HBM yardstick. */
static double hbm_gbps(void)
{
    size_t bytes = (size_t)1 << 30;
    void *a, *b;
    if (cudaMalloc(&a, bytes) || cudaMalloc(&b, bytes))
        return 0;
    cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
    cudaDeviceSynchronize();
    double t0 = now();
    for (int i = 0; i < 10; i++)
        cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
    cudaDeviceSynchronize();
    double t = (now() - t0) / 10;
    cudaFree(a), cudaFree(b);
    return 2.0 * bytes / t / 1e9;
}

static int weight_zero(mx_backend *be, mx_tensor *dst, mx_dtype dt, int64_t r, int64_t c, mx_error *err)
{
    void *h = calloc((size_t)(r * c), mx_dtype_size(dt));
    if (!h)
        return -1;
    mx_tensor host = mx_tensor_2d(h, dt, MX_DEVICE_CPU, r, c);
    int rc = be->upload_weight(be, dst, &host, err);
    free(h);
    return rc;
}

static int act(mx_backend *be, mx_tensor *t, int64_t r, int64_t c, mx_error *err)
{
    int64_t s[2] = {r, c};
    return be->alloc(be, t, MX_DTYPE_F32, 2, s, err);
}

static double time_matmul(mx_backend *be, mx_tensor *y, mx_tensor *x, mx_tensor *w, int iters, mx_error *err)
{
    if (be->matmul(be, y, x, w, err) || be->sync(be, err))
        return -1;
    double t0 = now();
    for (int i = 0; i < iters; i++)
        if (be->matmul(be, y, x, w, err))
            return -1;
    if (be->sync(be, err))
        return -1;
    return (now() - t0) / iters;
}

static int bench_gemm(mx_backend *be, mx_backend *fast, mx_error *err)
{
    const int M = 4096, N = 6144, K = 6144;
    mx_tensor x = {0}, y = {0}, w = {0}, wf = {0}, x2 = {0}, y2 = {0}, w2 = {0};
    if (act(be, &x, M, K, err) || act(be, &y, M, N, err) || weight_zero(be, &w, MX_DTYPE_BF16, N, K, err) ||
        weight_zero(be, &wf, MX_DTYPE_F32, N, K, err) || act(fast, &x2, M, K, err) ||
        act(fast, &y2, M, N, err) || weight_zero(fast, &w2, MX_DTYPE_BF16, N, K, err))
        return -1;
    double flop = 2.0 * M * N * K;
    double t_exact = time_matmul(be, &y, &x, &w, 5, err);
    double t_sgemm = time_matmul(be, &y, &x, &wf, 5, err);
    double t_tc = time_matmul(fast, &y2, &x2, &w2, 10, err);
    if (t_exact < 0 || t_sgemm < 0 || t_tc < 0)
        return -1;
    char v[64];
    snprintf(v, sizeof v, "%.1f TFLOP/s (%.0f%% of SGEMM)", flop / t_exact / 1e12, 100 * t_sgemm / t_exact);
    row("GEMM 4096x6144x6144 exact fp32 (bf16 w)", v, ">= cuBLAS SGEMM", t_exact <= t_sgemm);
    snprintf(v, sizeof v, "%.1f TFLOP/s", flop / t_sgemm / 1e12);
    row("  cuBLAS SGEMM fp32 (reference)", v, "", -1);
    snprintf(v, sizeof v, "%.1f TFLOP/s (%.0f%% peak)", flop / t_tc / 1e12, 100 * flop / t_tc / 1e12 / BF16_PEAK_TFLOPS);
    row("GEMM bf16 tensor-core mode (cublasGemmEx)", v, "", -1);
    /* decode-sized: weight streaming */
    const int Md = 8;
    mx_tensor xd = {0}, yd = {0};
    if (act(be, &xd, Md, K, err) || act(be, &yd, Md, N, err))
        return -1;
    double t_dec = time_matmul(be, &yd, &xd, &w, 50, err);
    if (t_dec < 0)
        return -1;
    snprintf(v, sizeof v, "%.0f GB/s of weights", (double)N * K * 2 / t_dec / 1e9);
    row("GEMM M=8 (decode) bf16 weights streamed", v, "", -1);
    be->free(be, &x), be->free(be, &y), be->free_weight(be, &w), be->free_weight(be, &wf);
    be->free(be, &xd), be->free(be, &yd);
    fast->free(fast, &x2), fast->free(fast, &y2), fast->free_weight(fast, &w2);
    return 0;
}

/* Seconds for one 64K-token lightning prefill (64 heads x 128) on `be`, or -1. */
static double time_lightning_prefill(mx_backend *be, const float *decay, mx_error *err)
{
    const int H = 64, D = 128, T = 65536;
    mx_tensor qkv = {0}, o = {0};
    mx_lightning_state st = {0};
    double t = -1;
    if (act(be, &qkv, T, (int64_t)H * 3 * D, err) || act(be, &o, T, (int64_t)H * D, err) ||
        be->lightning_state_init(be, &st, H, D, err))
        goto out;
    mx_span sp = {0, T};
    mx_lightning_state *sts[1] = {&st};
    if (be->sync(be, err))
        goto out;
    double t0 = now();
    if (be->lightning(be, &o, &qkv, &sp, 1, sts, decay, H, D, err) || be->sync(be, err))
        goto out;
    t = now() - t0;
out:
    be->lightning_state_free(be, &st);
    be->free(be, &qkv), be->free(be, &o);
    return t;
}

static int bench_lightning(mx_backend *be, mx_backend *fast, double hbm, mx_error *err)
{
    const int H = 64, D = 128, T = 65536;
    float decay[64];
    for (int h = 0; h < H; h++)
        decay[h] = 0.01f * (h + 1);
    /* tensor-core formulation: QK^T, PV (B x B x D each) and QS, K^T V (B x D x D each) per block */
    double flop = (double)T * H * (4.0 * 256 * D + 4.0 * D * D);
    char v[80];
    double t = time_lightning_prefill(be, decay, err);
    if (t < 0)
        return -1;
    snprintf(v, sizeof v, "%.0f tok/s, %.1f%% of bf16 peak", T / t, 100 * flop / t / 1e12 / BF16_PEAK_TFLOPS);
    row("lightning prefill 64K tok, exact fp32", v, "", -1);
    t = time_lightning_prefill(fast, decay, err); /* warm-up run inside: first call sets smem limits */
    if (t < 0 || (t = time_lightning_prefill(fast, decay, err)) < 0)
        return -1;
    snprintf(v, sizeof v, "%.0f tok/s, %.1f%% of bf16 peak", T / t, 100 * flop / t / 1e12 / BF16_PEAK_TFLOPS);
    row("lightning prefill 64K tok, bf16 tensor cores", v, ">= 60% bf16 peak",
        flop / t / 1e12 >= 0.6 * BF16_PEAK_TFLOPS);

    /* decode: 64 sequences, one token each; state read + written once per step */
    const int B = 64;
    mx_lightning_state *ds = calloc(B, sizeof *ds);
    mx_lightning_state **dp = calloc(B, sizeof *dp);
    mx_span *spans = calloc(B, sizeof *spans);
    mx_tensor q1 = {0}, o1 = {0};
    if (!ds || !dp || !spans || act(be, &q1, B, (int64_t)H * 3 * D, err) || act(be, &o1, B, (int64_t)H * D, err))
        return -1;
    for (int i = 0; i < B; i++) {
        if (be->lightning_state_init(be, &ds[i], H, D, err))
            return -1;
        ds[i].started = true;
        dp[i] = &ds[i];
        spans[i] = (mx_span){i, 1};
    }
    if (be->lightning(be, &o1, &q1, spans, B, dp, decay, H, D, err) || be->sync(be, err))
        return -1;
    double t0 = now();
    for (int it = 0; it < 20; it++)
        if (be->lightning(be, &o1, &q1, spans, B, dp, decay, H, D, err))
            return -1;
    if (be->sync(be, err))
        return -1;
    t = (now() - t0) / 20;
    double bytes = 2.0 * B * H * D * D * 4;
    snprintf(v, sizeof v, "%.0f GB/s, %.0f%% of HBM", bytes / t / 1e9, 100 * bytes / t / 1e9 / hbm);
    row("lightning decode, 64 seqs x 64 heads", v, ">= 80% HBM", bytes / t / 1e9 >= 0.8 * hbm);
    for (int i = 0; i < B; i++)
        be->lightning_state_free(be, &ds[i]);
    be->free(be, &q1), be->free(be, &o1);
    free(ds), free(dp), free(spans);
    return 0;
}

/* Softmax attention prefill of 4K tokens, 64 query heads over 8 KV heads of 128, KV dtype dt. */
static int bench_attention_prefill(mx_backend *be, mx_kv_dtype dt, mx_error *err)
{
    const int H = 64, KV = 8, D = 128, CTX = 4096;
    mx_kv_options kvo = {dt, 0};
    mx_kv_cache c = {0}, *cp = &c;
    mx_tensor q = {0}, k = {0}, v = {0}, o = {0};
    mx_span s = {0, CTX};
    if (be->kv_configure(be, &kvo, err) || act(be, &q, CTX, (int64_t)H * D, err) ||
        act(be, &k, CTX, (int64_t)KV * D, err) || act(be, &v, CTX, (int64_t)KV * D, err) ||
        act(be, &o, CTX, (int64_t)H * D, err))
        return -1;
    double t = 0;
    for (int rep = 0; rep < 2; rep++) { /* the first run allocates pages and sets smem limits */
        if (be->kv_cache_init(be, &c, KV, D, err) || be->sync(be, err))
            return -1;
        double t0 = now();
        if (be->softmax_attention(be, &o, &q, &k, &v, &s, 1, &cp, H, KV, D, 64, 1e7, err) || be->sync(be, err))
            return -1;
        t = now() - t0;
        be->kv_cache_free(be, &c);
    }
    char name[64], val[80];
    snprintf(name, sizeof name, "softmax attention prefill 4K tok, 64/8 (%s KV)", mx_kv_dtype_name(dt));
    snprintf(val, sizeof val, "%.0f tok/s (exact fp32 SIMT)", CTX / t);
    row(name, val, "", -1);
    be->free(be, &q), be->free(be, &k), be->free(be, &v), be->free(be, &o);
    return 0;
}

/* Paged-KV decode at a long context in KV dtype dt: B sequences of CTX tokens, then batched
 * one-token steps with 64 query heads over 8 KV heads of 128 (split-K: B x 64 blocks alone would
 * not fill the GPU). The caches are filled by prefills with one query head per KV head: a cache
 * holds only K and V, so the fill's query heads do not matter and it runs 8x faster. Bytes: every
 * stored K/V element (and 8-bit scale) read once per step, in the dtype's page format. */
static int bench_paged_decode(mx_backend *be, mx_kv_dtype dt, double hbm, mx_error *err)
{
    const int H = 64, KV = 8, D = 128, B = 8, CTX = 32768;
    mx_kv_options kvo = {dt, 0};
    mx_kv_cache *c = calloc(B, sizeof *c);
    mx_kv_cache **cp = calloc(B, sizeof *cp);
    mx_span *sp = calloc(B, sizeof *sp);
    if (!c || !cp || !sp || be->kv_configure(be, &kvo, err))
        return -1;
    for (int i = 0; i < B; i++) {
        if (be->kv_cache_init(be, &c[i], KV, D, err))
            return -1;
        cp[i] = &c[i];
    }
    mx_tensor q = {0}, k = {0}, v = {0}, o = {0};
    if (act(be, &q, CTX, (int64_t)KV * D, err) || act(be, &k, CTX, (int64_t)KV * D, err) ||
        act(be, &v, CTX, (int64_t)KV * D, err) || act(be, &o, CTX, (int64_t)KV * D, err))
        return -1;
    for (int i = 0; i < B; i++) {
        mx_span s = {0, CTX};
        if (be->softmax_attention(be, &o, &q, &k, &v, &s, 1, &cp[i], KV, KV, D, 64, 1e7, err))
            return -1;
    }
    if (be->sync(be, err))
        return -1;
    for (int i = 0; i < B; i++)
        sp[i] = (mx_span){i, 1};
    mx_tensor q1 = {0}, k1 = {0}, v1 = {0}, o1 = {0};
    if (act(be, &q1, B, (int64_t)H * D, err) || act(be, &k1, B, (int64_t)KV * D, err) ||
        act(be, &v1, B, (int64_t)KV * D, err) || act(be, &o1, B, (int64_t)H * D, err))
        return -1;
    if (be->softmax_attention(be, &o1, &q1, &k1, &v1, sp, B, cp, H, KV, D, 64, 1e7, err) || be->sync(be, err))
        return -1;
    const int iters = 20;
    double t0 = now();
    for (int it = 0; it < iters; it++)
        if (be->softmax_attention(be, &o1, &q1, &k1, &v1, sp, B, cp, H, KV, D, 64, 1e7, err))
            return -1;
    if (be->sync(be, err))
        return -1;
    double t = (now() - t0) / iters;
    double per_token = (double)mx_kv_page_bytes(dt, KV, D) / MX_KV_PAGE_TOKENS;
    double bytes = (double)B * (CTX + 1 + iters / 2) * per_token;
    char name[64], val[80];
    snprintf(name, sizeof name, "paged-KV decode, 8 seqs x 32K ctx (%s KV)", mx_kv_dtype_name(dt));
    snprintf(val, sizeof val, "%.0f GB/s, %.0f%% of HBM, %.0f us", bytes / t / 1e9, 100 * bytes / t / 1e9 / hbm,
             t * 1e6);
    row(name, val, ">= 80% HBM", bytes / t / 1e9 >= 0.8 * hbm);
    for (int i = 0; i < B; i++)
        be->kv_cache_free(be, &c[i]);
    be->free(be, &q), be->free(be, &k), be->free(be, &v), be->free(be, &o);
    be->free(be, &q1), be->free(be, &k1), be->free(be, &v1), be->free(be, &o1);
    free(c), free(cp), free(sp);
    return 0;
}

/* Grouped SwiGLU vs cuBLAS per expert: 8 experts of 6144 x 9216, tokens x top-2 spread evenly. */
static int bench_grouped(mx_backend *be, mx_error *err)
{
    enum { E = 8, HID = 6144, INTER = 9216 };
    mx_tensor w1[E], w3[E], w2[E];
    for (int e = 0; e < E; e++)
        if (weight_zero(be, &w1[e], MX_DTYPE_BF16, INTER, HID, err) ||
            weight_zero(be, &w3[e], MX_DTYPE_BF16, INTER, HID, err) ||
            weight_zero(be, &w2[e], MX_DTYPE_BF16, HID, INTER, err))
            return -1;
    cublasHandle_t h;
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS)
        return -1;
    void *xb, *hb, *hb3, *yb;
    size_t maxr = 256;
    if (cudaMalloc(&xb, maxr * HID * 2) || cudaMalloc(&hb, maxr * INTER * 4) || cudaMalloc(&hb3, maxr * INTER * 4) ||
        cudaMalloc(&yb, maxr * HID * 4))
        return -1;
    const int batches[] = {8, 32, 64, 128};
    for (size_t bi = 0; bi < sizeof batches / sizeof batches[0]; bi++) {
        int rows = batches[bi] * 2, per = rows / E;
        mx_tensor x = {0}, out = {0};
        if (act(be, &x, rows, HID, err) || act(be, &out, rows, HID, err))
            return -1;
        mx_cuda_expert_group g[E];
        for (int e = 0; e < E; e++)
            g[e] = (mx_cuda_expert_group){e * per, per, &w1[e], &w3[e], &w2[e]};
        if (mx_cuda_grouped_swiglu(be, &out, &x, g, E, err) || be->sync(be, err))
            return -1;
        double t0 = now();
        for (int it = 0; it < 20; it++)
            if (mx_cuda_grouped_swiglu(be, &out, &x, g, E, err))
                return -1;
        if (be->sync(be, err))
            return -1;
        double tg = (now() - t0) / 20;
        const float one = 1.0f, zero = 0.0f;
        cudaDeviceSynchronize();
        t0 = now();
        for (int it = 0; it < 20; it++)
            for (int e = 0; e < E; e++) { /* bf16 x, fp32 out: gate, up, down per expert */
                cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, INTER, per, HID, &one, w1[e].data, CUDA_R_16BF, HID,
                             (char *)xb + (size_t)e * per * HID * 2, CUDA_R_16BF, HID, &zero, hb, CUDA_R_32F,
                             INTER, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
                cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, INTER, per, HID, &one, w3[e].data, CUDA_R_16BF, HID,
                             (char *)xb + (size_t)e * per * HID * 2, CUDA_R_16BF, HID, &zero, hb3, CUDA_R_32F,
                             INTER, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
                cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, HID, per, INTER, &one, w2[e].data, CUDA_R_16BF, INTER,
                             hb, CUDA_R_16BF, INTER, &zero, yb, CUDA_R_32F, HID, CUBLAS_COMPUTE_32F,
                             CUBLAS_GEMM_DEFAULT);
            }
        cudaDeviceSynchronize();
        double tc = (now() - t0) / 20;
        char name[64], v[80];
        snprintf(name, sizeof name, "grouped SwiGLU, %d tok x top-2 over 8 experts", batches[bi]);
        snprintf(v, sizeof v, "%.2fx cuBLAS/expert (%.0f vs %.0f us)", tc / tg, tg * 1e6, tc * 1e6);
        row(name, v, ">= 1.2x", tc / tg >= 1.2);
        be->free(be, &x), be->free(be, &out);
    }
    cublasDestroy(h);
    cudaFree(xb), cudaFree(hb), cudaFree(hb3), cudaFree(yb);
    for (int e = 0; e < E; e++)
        be->free_weight(be, &w1[e]), be->free_weight(be, &w3[e]), be->free_weight(be, &w2[e]);
    return 0;
}

int main(void)
{
    mx_error err = {0};
    mx_backend *be = NULL, *fast = NULL;
    if (mx_backend_cuda_create(0, &be, &err)) {
        printf("SKIP: CUDA backend unavailable: %s\n0 passed, 0 failed, 1 skipped\n", err.msg);
        return 0;
    }
    mx_cuda_options opt = {0, 1, 0};
    if (mx_backend_cuda_create_ex(&opt, &fast, &err))
        return die("bf16 backend", &err);
    struct cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, 0);
    double hbm = hbm_gbps();
    printf("device: %s, %d SMs; measured D2D bandwidth %.0f GB/s\n", prop.name, prop.multiProcessorCount, hbm);
    printf("| %-44s | %-30s | %-18s | %-6s |\n", "benchmark", "result", "target", "");
    int rc = 0;
    if (!rc && bench_gemm(be, fast, &err))
        rc = die("gemm", &err);
    if (!rc && bench_lightning(be, fast, hbm, &err))
        rc = die("lightning", &err);
    if (!rc && bench_attention_prefill(be, MX_KV_BF16, &err))
        rc = die("attention prefill", &err);
    const mx_kv_dtype kv_dts[4] = {MX_KV_BF16, MX_KV_F32, MX_KV_FP8_E4M3, MX_KV_INT8};
    for (int i = 0; i < 4 && !rc; i++)
        if (bench_paged_decode(be, kv_dts[i], hbm, &err))
            rc = die("paged decode", &err);
    if (!rc && bench_grouped(be, &err))
        rc = die("grouped swiglu", &err);
    fast->destroy(fast);
    be->destroy(be);
    if (!rc)
        printf("1 passed, 0 failed\n");
    return rc;
}
