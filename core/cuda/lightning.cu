/* lightning.cu - lightning (decayed linear) attention on the GPU, exact fp32 path.
 * A span of several tokens runs the blocked form of spec 3.5 (block 256, inter-block decay
 * exp(-s(j+1)), fp32 state carried from block to block) from whatever state the sequence has,
 * like the CPU backend (from a zero state this is the reference prefill; later chunks equal the
 * recurrence mathematically). One-token spans run the recurrence S <- exp(-s) S + k^T v,
 * o = q S (spec 3.4), batched over sequences in one launch, each thread keeping its slice of S
 * in registers. Head dim up to 128. With bf16_tensor_cores, multi-token spans go to the
 * tensor-core prefill in lightning_tc.cu instead. */
#include "cuda_internal.cuh"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define LIGHTNING_BLOCK 256
#define MAX_HEAD_DIM 128
#define REC_ROW_GROUPS 8 /* threads along the k dim of S in the recurrence kernel */

/* One sequence advanced by the recurrence: tokens [start, start+len) of qkv, state S. */
struct rec_job {
    float *S;
    int start, len;
};

/* grid (n_jobs * heads, ceil(hd / 32)), block (32, REC_ROW_GROUPS). Thread (tx, ty) owns
 * column j = 32*blockIdx.y + tx of the head's S and rows ty, ty+8, ... (up to 16 values). */
__global__ void lightning_recurrent_kernel(float *o, const float *qkv, const rec_job *jobs,
                                           const float *decay, int heads, int hd)
{
    __shared__ float qs[MAX_HEAD_DIM], ks[MAX_HEAD_DIM], vs[32], part[REC_ROW_GROUPS][32];
    const rec_job job = jobs[blockIdx.x / heads];
    int h = blockIdx.x % heads, tx = threadIdx.x, ty = threadIdx.y, tid = ty * 32 + tx;
    int j = blockIdx.y * 32 + tx;
    bool active = j < hd;
    float lambda = expf(-decay[h]);
    float *S = job.S + (int64_t)h * hd * hd;
    const int per = MAX_HEAD_DIM / REC_ROW_GROUPS;
    float s[per];
#pragma unroll
    for (int r = 0; r < per; r++) {
        int i = ty + REC_ROW_GROUPS * r;
        s[r] = (active && i < hd) ? S[(int64_t)i * hd + j] : 0.0f;
    }
    int64_t row_width = (int64_t)heads * 3 * hd;
    for (int t = 0; t < job.len; t++) {
        int64_t tok = job.start + t;
        const float *row = qkv + tok * row_width + (int64_t)h * 3 * hd;
        for (int c = tid; c < hd; c += 32 * REC_ROW_GROUPS) {
            qs[c] = row[c];
            ks[c] = row[hd + c];
        }
        if (ty == 0)
            vs[tx] = active ? row[2 * hd + j] : 0.0f;
        __syncthreads();
        float vj = vs[tx], acc = 0.0f;
#pragma unroll
        for (int r = 0; r < per; r++) {
            int i = ty + REC_ROW_GROUPS * r;
            if (i < hd) {
                s[r] = lambda * s[r] + ks[i] * vj;
                acc = fmaf(qs[i], s[r], acc);
            }
        }
        part[ty][tx] = acc;
        __syncthreads();
        if (ty == 0 && active) {
            float sum = 0.0f;
#pragma unroll
            for (int g = 0; g < REC_ROW_GROUPS; g++)
                sum += part[g][tx];
            o[tok * heads * hd + (int64_t)h * hd + j] = sum;
        }
        __syncthreads(); /* qs/ks/vs/part are rewritten by the next token */
    }
#pragma unroll
    for (int r = 0; r < per; r++) {
        int i = ty + REC_ROW_GROUPS * r;
        if (active && i < hd)
            S[(int64_t)i * hd + j] = s[r];
    }
}

/* Blocked prefill, outputs of one block of m tokens starting at token `base`.
 * grid (m, heads), block 128: o_j = exp(-s(j+1)) q_j S_prev + sum_{i<=j} exp(-s(j-i)) (q_j.k_i) v_i */
__global__ void lightning_block_out_kernel(float *o, const float *qkv, const float *S_all,
                                           const float *decay, int heads, int hd, int64_t base)
{
    __shared__ float q[MAX_HEAD_DIM], sc[LIGHTNING_BLOCK];
    int j = blockIdx.x, h = blockIdx.y, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    float s = decay[h];
    int64_t row_width = (int64_t)heads * 3 * hd;
    const float *head0 = qkv + base * row_width + (int64_t)h * 3 * hd; /* token 0 of the block */
    for (int c = tid; c < hd; c += blockDim.x)
        q[c] = head0[j * row_width + c];
    __syncthreads();
    for (int i = warp; i <= j; i += blockDim.x / 32) {
        const float *k = head0 + i * row_width + hd;
        float d = 0.0f;
        for (int c = lane; c < hd; c += 32)
            d = fmaf(q[c], k[c], d);
        for (int off = 16; off > 0; off >>= 1)
            d += __shfl_xor_sync(0xffffffffu, d, off);
        if (lane == 0)
            sc[i] = expf(-(s * (float)(j - i))) * d;
    }
    __syncthreads();
    const float *S = S_all + (int64_t)h * hd * hd;
    for (int c = tid; c < hd; c += blockDim.x) {
        float inter = 0.0f;
        for (int a = 0; a < hd; a++)
            inter = fmaf(q[a], S[(int64_t)a * hd + c], inter);
        float intra = 0.0f;
        for (int i = 0; i <= j; i++)
            intra = fmaf(sc[i], head0[i * row_width + 2 * hd + c], intra);
        o[(base + j) * heads * hd + (int64_t)h * hd + c] = expf(-(s * (float)(j + 1))) * inter + intra;
    }
}

/* Blocked prefill, state update after a block of m tokens. grid (hd, heads), block 128:
 * S[a][c] = exp(-s m) S[a][c] + sum_i exp(-s(m-1-i)) k_i[a] v_i[c] */
__global__ void lightning_block_state_kernel(float *S_all, const float *qkv, const float *decay,
                                             int heads, int hd, int64_t base, int m)
{
    __shared__ float kd[LIGHTNING_BLOCK];
    int a = blockIdx.x, h = blockIdx.y, tid = threadIdx.x;
    float s = decay[h];
    int64_t row_width = (int64_t)heads * 3 * hd;
    const float *head0 = qkv + base * row_width + (int64_t)h * 3 * hd;
    for (int i = tid; i < m; i += blockDim.x)
        kd[i] = expf(-(s * (float)(m - 1 - i))) * head0[i * row_width + hd + a];
    __syncthreads();
    float *S = S_all + (int64_t)h * hd * hd + (int64_t)a * hd;
    float block_decay = expf(-(s * (float)m));
    for (int c = tid; c < hd; c += blockDim.x) {
        float acc = 0.0f;
        for (int i = 0; i < m; i++)
            acc = fmaf(kd[i], head0[i * row_width + 2 * hd + c], acc);
        S[c] = block_decay * S[c] + acc;
    }
}

static int check_state(const mx_lightning_state *st, int heads, int hd, int i, mx_error *err)
{
    if (!st || !st->S.data || st->S.device != MX_DEVICE_CUDA || st->S.dtype != MX_DTYPE_F32 ||
        mx_tensor_numel(&st->S) != (int64_t)heads * hd * hd)
        return mx_fail(err, MX_EINVAL, "lightning: state %d is not a CUDA F32 [%d, %d, %d] state", i,
                       heads, hd, hd);
    if (st->spare.data && (st->spare.device != MX_DEVICE_CUDA || st->spare.dtype != MX_DTYPE_F32 ||
                           mx_tensor_numel(&st->spare) != (int64_t)heads * hd * hd))
        return mx_fail(err, MX_EINVAL, "lightning: the spare of state %d is not a CUDA F32 [%d, %d, %d] "
                       "buffer", i, heads, hd, hd);
    return 0;
}

/* The buffer span i's state advances in: S itself, or in undo mode the spare, which first gets
 * a copy of S (device to device, on the backend's stream, before the kernels that update it),
 * so S keeps the state from before the step. */
static float *advanced_state(mx_lightning_state *st)
{
    return (float *)(st->spare.data ? st->spare.data : st->S.data);
}

int cuda_lightning(mx_backend *be, mx_tensor *o, const mx_tensor *qkv, const mx_span *spans,
                   int n_spans, mx_lightning_state *const *states, const float *decay, int heads,
                   int head_dim, mx_error *err)
{
    TRY(cuda_check_act(o, "lightning o", err));
    TRY(cuda_check_act(qkv, "lightning qkv", err));
    if (heads < 1 || head_dim < 1 || head_dim > MAX_HEAD_DIM)
        return mx_fail(err, heads < 1 || head_dim < 1 ? MX_EINVAL : MX_EUNSUPPORTED,
                       "lightning: %d heads of dim %d (head dim 1..%d supported)", heads, head_dim,
                       MAX_HEAD_DIM);
    int64_t T = qkv->shape[0];
    if (qkv->shape[1] != (int64_t)heads * 3 * head_dim || o->shape[0] != T ||
        o->shape[1] != (int64_t)heads * head_dim)
        return mx_fail(err, MX_EINVAL, "lightning: qkv [%lld, %lld] / o [%lld, %lld] do not match "
                       "%d heads x %d", (long long)T, (long long)qkv->shape[1],
                       (long long)o->shape[0], (long long)o->shape[1], heads, head_dim);
    if (o->data == qkv->data && T > 0)
        return mx_fail(err, MX_EINVAL, "lightning: o must not alias qkv");
    TRY(cuda_check_spans(spans, n_spans, T, err));
    if (n_spans > 0 && (!states || !decay))
        return mx_fail(err, MX_EINVAL, "lightning: missing states or decay");
    for (int h = 0; h < heads; h++)
        if (!(decay[h] >= 0.0f) || isinf(decay[h]))
            return mx_fail(err, MX_EINVAL, "lightning: decay[%d] = %g is not a finite rate >= 0", h,
                           (double)decay[h]);
    for (int i = 0; i < n_spans; i++) {
        TRY(check_state(states[i], heads, head_dim, i, err));
        for (int j = 0; j < i; j++)
            if (states[j] == states[i])
                return mx_fail(err, MX_EINVAL, "lightning: spans %d and %d share one state", j, i);
    }
    if (n_spans == 0)
        return 0;
    TRY(cuda_enter(be, err));
    cuda_impl *im = impl_of(be);
    for (int i = 0; i < n_spans; i++)
        if (states[i]->spare.data)
            CU_TRY(cudaMemcpyAsync(states[i]->spare.data, states[i]->S.data, mx_tensor_nbytes(&states[i]->S),
                                   cudaMemcpyDeviceToDevice, im->stream));
    rec_job *jobs = (rec_job *)malloc((size_t)(unsigned)n_spans * sizeof *jobs);
    if (!jobs)
        return mx_fail(err, MX_ENOMEM, "lightning: out of memory");
    int n_rec = 0;
    for (int i = 0; i < n_spans; i++)
        if (spans[i].len == 1)
            jobs[n_rec++] = {advanced_state(states[i]), spans[i].start, spans[i].len};
    void *ddecay = NULL, *djobs = NULL;
    int rc = cuda_params_reset(be, (size_t)heads * 4 + (size_t)n_rec * sizeof *jobs, err);
    if (!rc)
        rc = cuda_params_push(be, decay, (size_t)heads * 4, &ddecay, err);
    if (!rc && n_rec)
        rc = cuda_params_push(be, jobs, (size_t)n_rec * sizeof *jobs, &djobs, err);
    free(jobs);
    TRY(rc);
    float *od = (float *)o->data;
    const float *qd = (const float *)qkv->data;
    if (n_rec) {
        if ((int64_t)n_rec * heads > 0x7fffffff)
            return mx_fail(err, MX_ERANGE, "lightning: too many sequences x heads");
        dim3 grid((unsigned)(n_rec * heads), (unsigned)((head_dim + 31) / 32));
        lightning_recurrent_kernel<<<grid, dim3(32, REC_ROW_GROUPS), 0, im->stream>>>(
            od, qd, (const rec_job *)djobs, (const float *)ddecay, heads, head_dim);
        LAUNCH_CHECK();
    }
    for (int i = 0; i < n_spans; i++) {
        if (spans[i].len == 1)
            continue;
        float *S = advanced_state(states[i]);
        if (im->opt.bf16_tensor_cores && lightning_tc_supported(head_dim)) {
            TRY(lightning_prefill_tc(be, od, qd, S, (const float *)ddecay, heads, head_dim,
                                     spans[i].start, spans[i].len, err));
            continue;
        }
        for (int b0 = 0; b0 < spans[i].len; b0 += LIGHTNING_BLOCK) {
            int m = spans[i].len - b0 < LIGHTNING_BLOCK ? spans[i].len - b0 : LIGHTNING_BLOCK;
            int64_t base = (int64_t)spans[i].start + b0;
            lightning_block_out_kernel<<<dim3((unsigned)m, (unsigned)heads), 128, 0, im->stream>>>(
                od, qd, S, (const float *)ddecay, heads, head_dim, base);
            LAUNCH_CHECK();
            lightning_block_state_kernel<<<dim3((unsigned)head_dim, (unsigned)heads), 128, 0,
                                           im->stream>>>(S, qd, (const float *)ddecay, heads,
                                                         head_dim, base, m);
            LAUNCH_CHECK();
        }
    }
    for (int i = 0; i < n_spans; i++)
        states[i]->started = true;
    return 0;
}

int cuda_lightning_state_init(mx_backend *be, mx_lightning_state *st, int heads, int head_dim,
                              mx_error *err)
{
    if (!st || heads < 1 || head_dim < 1)
        return mx_fail(err, MX_EINVAL, "lightning_state_init: %d heads of dim %d", heads, head_dim);
    int64_t shape[3] = {heads, head_dim, head_dim};
    memset(st, 0, sizeof *st);
    return be->alloc(be, &st->S, MX_DTYPE_F32, 3, shape, err);
}

void cuda_lightning_state_free(mx_backend *be, mx_lightning_state *st)
{
    if (st)
        be->free(be, &st->S);
}
