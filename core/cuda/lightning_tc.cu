/* lightning_tc.cu - the fast lightning prefill (bf16_tensor_cores mode): the blocked form of
 * spec 3.5 with every product on bf16 tensor cores (WMMA 16x16x16, fp32 accumulate) and the
 * state kept in fp32. Blocks are processed chunk-parallel in three launches per group of up to
 * 32 blocks: (1) every block's own state contribution KV_b = sum_i exp(-s(m-1-i)) k_i^T v_i,
 * (2) a scan over blocks in fp32 that turns KV_b into the state before block b (and advances the
 * sequence state), (3) every block's outputs exp(-s(j+1)) q_j S_prev + ((Q K^T) o D) V.
 * Matches the exact path to bf16 rounding only; the exact path stays the golden reference. */
#include "cuda_internal.cuh"

#include <mma.h>

using namespace nvcuda;

#define TC_BLOCK 256      /* lightning block (spec) */
#define TC_ROWS 64        /* query rows / keys per tile */
#define TC_GROUP 32       /* blocks per group (bounds the workspace) */
#define TC_THREADS 256

typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc_frag;

/* Rows [r0, r0+64) of one of q/k/v (part 0/1/2) of head h, fp32 -> bf16 into smem [64][ld],
 * optionally scaled per row; rows at or past `valid` are zero. */
__device__ void load_rows_bf16(__nv_bfloat16 *dst, int ld, const float *qkv, int64_t row_width,
                               int64_t tok0, int part, int h, int D, int r0, int valid, float s,
                               int scale_mode)
{
    for (int idx = threadIdx.x; idx < TC_ROWS * D; idx += blockDim.x) {
        int r = idx / D, c = idx % D, j = r0 + r;
        float x = 0.0f;
        if (j < valid) {
            x = qkv[(tok0 + j) * row_width + (int64_t)h * 3 * D + (int64_t)part * D + c];
            if (scale_mode == 1) /* query of inter term: exp(-s(j+1)) */
                x *= expf(-(s * (float)(j + 1)));
            else if (scale_mode == 2) /* key of state update: exp(-s(m-1-j)), valid == m */
                x *= expf(-(s * (float)(valid - 1 - j)));
        }
        dst[r * ld + c] = __float2bfloat16_rn(x);
    }
}

/* Phase 1. grid (blocks in group, heads). W[b][h] = sum_i exp(-s(m-1-i)) k_i^T v_i  [D x D]. */
__global__ void __launch_bounds__(TC_THREADS)
lightning_tc_kv_kernel(float *W, const float *qkv, const float *decay, int heads, int D,
                       int64_t tok0, int len)
{
    extern __shared__ __align__(128) unsigned char smem[];
    int ld = D + 8;
    __nv_bfloat16 *Ks = (__nv_bfloat16 *)smem, *Vs = Ks + TC_ROWS * ld;
    int b = blockIdx.x, h = blockIdx.y, warp = threadIdx.x / 32;
    int64_t base = tok0 + (int64_t)b * TC_BLOCK;
    int m = min(TC_BLOCK, (int)(len - (int64_t)b * TC_BLOCK));
    int64_t row_width = (int64_t)heads * 3 * D;
    float s = decay[h];
    int nt = D / 16, tiles = nt * nt;
    acc_frag acc[8];
#pragma unroll
    for (int i = 0; i < 8; i++)
        wmma::fill_fragment(acc[i], 0.0f);
    for (int kt = 0; kt < m; kt += TC_ROWS) {
        /* keys kt.. of the block, decayed by exp(-s(m-1-i)) with i the index in the block */
        for (int idx = threadIdx.x; idx < TC_ROWS * D; idx += blockDim.x) {
            int r = idx / D, c = idx % D, i = kt + r;
            float kv = 0.0f, vv = 0.0f;
            if (i < m) {
                const float *row = qkv + (base + i) * row_width + (int64_t)h * 3 * D;
                kv = row[D + c] * expf(-(s * (float)(m - 1 - i)));
                vv = row[2 * D + c];
            }
            Ks[r * ld + c] = __float2bfloat16_rn(kv);
            Vs[r * ld + c] = __float2bfloat16_rn(vv);
        }
        __syncthreads();
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int t = warp + 8 * i;
            if (t >= tiles)
                break;
            int ti = t / nt, tj = t % nt;
            for (int kk = 0; kk < TC_ROWS; kk += 16) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::col_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> bf;
                wmma::load_matrix_sync(a, Ks + kk * ld + ti * 16, ld); /* A = Kd^T [D x 64] */
                wmma::load_matrix_sync(bf, Vs + kk * ld + tj * 16, ld);
                wmma::mma_sync(acc[i], a, bf, acc[i]);
            }
        }
        __syncthreads();
    }
    float *Wb = W + ((int64_t)b * heads + h) * D * D;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        int t = warp + 8 * i;
        if (t >= tiles)
            break;
        int ti = t / nt, tj = t % nt;
        wmma::store_matrix_sync(Wb + ti * 16 * D + tj * 16, acc[i], D, wmma::mem_row_major);
    }
}

/* Phase 2. grid (ceil(D*D/256), heads). In fp32, block by block: W[b] <- state before block b,
 * state <- exp(-s m_b) state + KV_b. */
__global__ void lightning_tc_scan_kernel(float *W, float *S, const float *decay, int heads, int D,
                                         int nb, int len)
{
    int h = blockIdx.y;
    int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (e >= (int64_t)D * D)
        return;
    float s = decay[h];
    float *Sh = S + (int64_t)h * D * D;
    float st = Sh[e];
    for (int b = 0; b < nb; b++) {
        int m = min(TC_BLOCK, len - b * TC_BLOCK);
        float *w = W + ((int64_t)b * heads + h) * D * D + e;
        float kv = *w;
        *w = st;
        st = expf(-(s * (float)m)) * st + kv;
    }
    Sh[e] = st;
}

/* Phase 3. grid (blocks in group * 4 query tiles, heads). Rows j of the tile:
 * o_j = (exp(-s(j+1)) q_j) S_prev + sum_{i<=j} exp(-s(j-i)) (q_j . k_i) v_i. */
__global__ void __launch_bounds__(TC_THREADS)
lightning_tc_out_kernel(float *o, const float *W, const float *qkv, const float *decay, int heads,
                        int D, int64_t tok0, int len)
{
    extern __shared__ __align__(128) unsigned char smem[];
    int ld = D + 8;
    const int lds = TC_ROWS + 4, ldp = TC_ROWS + 8;
    __nv_bfloat16 *Qs = (__nv_bfloat16 *)smem;
    __nv_bfloat16 *Qd = Qs + TC_ROWS * ld;
    __nv_bfloat16 *Ks = Qd + TC_ROWS * ld;          /* Ks, Vs; also S_prev [D][ld], out stage */
    __nv_bfloat16 *Vs = Ks + TC_ROWS * ld;
    float *Sf = (float *)(Vs + TC_ROWS * ld);       /* scores [64][lds] */
    __nv_bfloat16 *Pb = (__nv_bfloat16 *)(Sf + TC_ROWS * lds); /* decayed scores [64][ldp] */
    int b = blockIdx.x / (TC_BLOCK / TC_ROWS), qt = blockIdx.x % (TC_BLOCK / TC_ROWS);
    int h = blockIdx.y, warp = threadIdx.x / 32;
    int64_t base = tok0 + (int64_t)b * TC_BLOCK;
    int m = min(TC_BLOCK, (int)(len - (int64_t)b * TC_BLOCK));
    int q0 = qt * TC_ROWS;
    if (q0 >= m)
        return; /* whole CTA: uniform */
    int64_t row_width = (int64_t)heads * 3 * D;
    float s = decay[h];
    int nt = D / 16, tiles = 4 * nt;

    load_rows_bf16(Qs, ld, qkv, row_width, base, 0, h, D, q0, m, s, 0);
    load_rows_bf16(Qd, ld, qkv, row_width, base, 0, h, D, q0, m, s, 1);
    const float *Wb = W + ((int64_t)b * heads + h) * D * D;
    __nv_bfloat16 *Sp = Ks; /* S_prev as bf16 [D][ld] */
    for (int idx = threadIdx.x; idx < D * D; idx += blockDim.x)
        Sp[(idx / D) * ld + idx % D] = __float2bfloat16_rn(Wb[idx]);
    __syncthreads();

    acc_frag acc[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        wmma::fill_fragment(acc[i], 0.0f);
        int t = warp + 8 * i;
        if (t >= tiles)
            break;
        int rt = t / nt, ct = t % nt;
        for (int kk = 0; kk < D; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> bf;
            wmma::load_matrix_sync(a, Qd + rt * 16 * ld + kk, ld);
            wmma::load_matrix_sync(bf, Sp + kk * ld + ct * 16, ld);
            wmma::mma_sync(acc[i], a, bf, acc[i]);
        }
    }
    __syncthreads(); /* S_prev region is reused for keys */

    for (int kt = 0; kt <= qt; kt++) {
        int k0 = kt * TC_ROWS;
        load_rows_bf16(Ks, ld, qkv, row_width, base, 1, h, D, k0, m, s, 0);
        load_rows_bf16(Vs, ld, qkv, row_width, base, 2, h, D, k0, m, s, 0);
        __syncthreads();
        for (int t = warp; t < 16; t += 8) { /* scores Q K^T, 4 x 4 tiles of 16 */
            int sr = t / 4, sc = t % 4;
            acc_frag sacc;
            wmma::fill_fragment(sacc, 0.0f);
            for (int kk = 0; kk < D; kk += 16) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> bf;
                wmma::load_matrix_sync(a, Qs + sr * 16 * ld + kk, ld);
                wmma::load_matrix_sync(bf, Ks + sc * 16 * ld + kk, ld); /* B = K^T */
                wmma::mma_sync(sacc, a, bf, sacc);
            }
            wmma::store_matrix_sync(Sf + sr * 16 * lds + sc * 16, sacc, lds, wmma::mem_row_major);
        }
        __syncthreads();
        for (int idx = threadIdx.x; idx < TC_ROWS * TC_ROWS; idx += blockDim.x) {
            int r = idx / TC_ROWS, c = idx % TC_ROWS, j = q0 + r, i = k0 + c;
            float p = (i <= j && j < m) ? expf(-(s * (float)(j - i))) * Sf[r * lds + c] : 0.0f;
            Pb[r * ldp + c] = __float2bfloat16_rn(p);
        }
        __syncthreads();
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int t = warp + 8 * i;
            if (t >= tiles)
                break;
            int rt = t / nt, ct = t % nt;
            for (int kk = 0; kk < TC_ROWS; kk += 16) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> bf;
                wmma::load_matrix_sync(a, Pb + rt * 16 * ldp + kk, ldp);
                wmma::load_matrix_sync(bf, Vs + kk * ld + ct * 16, ld);
                wmma::mma_sync(acc[i], a, bf, acc[i]);
            }
        }
        __syncthreads();
    }
    /* stage the 64 x D tile in fp32 (over Ks/Vs), then write the valid rows */
    float *stage = (float *)Ks;
    const int ldo = D + 4;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int t = warp + 8 * i;
        if (t >= tiles)
            break;
        int rt = t / nt, ct = t % nt;
        wmma::store_matrix_sync(stage + rt * 16 * ldo + ct * 16, acc[i], ldo, wmma::mem_row_major);
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < TC_ROWS * D; idx += blockDim.x) {
        int r = idx / D, c = idx % D;
        if (q0 + r < m)
            o[(base + q0 + r) * (int64_t)heads * D + (int64_t)h * D + c] = stage[r * ldo + c];
    }
}

static size_t out_smem_bytes(int D)
{
    size_t ld = (size_t)D + 8;
    return 4 * TC_ROWS * ld * 2 + (size_t)TC_ROWS * (TC_ROWS + 4) * 4 + (size_t)TC_ROWS * (TC_ROWS + 8) * 2;
}

bool lightning_tc_supported(int head_dim)
{
    return head_dim % 16 == 0 && head_dim >= 16 && head_dim <= 128;
}

/* One span [start, start+len) of qkv, state S (fp32 [heads, D, D]), decay on the device. */
int lightning_prefill_tc(mx_backend *be, float *o, const float *qkv, float *S, const float *ddecay,
                         int heads, int D, int64_t start, int len, mx_error *err)
{
    cuda_impl *im = impl_of(be);
    int n_blocks = (len + TC_BLOCK - 1) / TC_BLOCK;
    int group = n_blocks < TC_GROUP ? n_blocks : TC_GROUP;
    float *W;
    TRY(cuda_scratch(be, (size_t)group * heads * D * D * sizeof(float), (void **)&W, err));
    size_t kv_smem = 2 * (size_t)TC_ROWS * (D + 8) * 2, out_smem = out_smem_bytes(D);
    CU_TRY(cudaFuncSetAttribute(lightning_tc_kv_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                (int)kv_smem));
    CU_TRY(cudaFuncSetAttribute(lightning_tc_out_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                (int)out_smem));
    for (int b0 = 0; b0 < n_blocks; b0 += group) {
        int nb = n_blocks - b0 < group ? n_blocks - b0 : group;
        int64_t tok0 = start + (int64_t)b0 * TC_BLOCK;
        int glen = len - b0 * TC_BLOCK; /* tokens from this group's start to the span end */
        lightning_tc_kv_kernel<<<dim3((unsigned)nb, (unsigned)heads), TC_THREADS, kv_smem, im->stream>>>(
            W, qkv, ddecay, heads, D, tok0, glen);
        LAUNCH_CHECK();
        lightning_tc_scan_kernel<<<dim3((unsigned)((D * D + 255) / 256), (unsigned)heads), 256, 0,
                                   im->stream>>>(W, S, ddecay, heads, D, nb, glen);
        LAUNCH_CHECK();
        lightning_tc_out_kernel<<<dim3((unsigned)nb * (TC_BLOCK / TC_ROWS), (unsigned)heads), TC_THREADS,
                                  out_smem, im->stream>>>(o, W, qkv, ddecay, heads, D, tok0, glen);
        LAUNCH_CHECK();
    }
    return 0;
}
