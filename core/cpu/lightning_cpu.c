/* lightning_cpu.c - lightning (decayed linear) attention on the CPU, spec section 3.
 * Per sequence and head: fp32 state S [d_k, d_v]. A one-token span uses the recurrence
 *   S <- exp(-s) S + k^T v ;  o = q S
 * and a longer span runs the blocked form in blocks of 256 from whatever state the sequence
 * has (for a fresh sequence this is the reference prefill; for later chunks it equals the
 * recurrence mathematically, so chunked prefill matches one-shot prefill). A state with a
 * spare (undo mode) is advanced into the spare and left as it was: the one-token step reads S
 * and writes the spare; the blocked form copies the head's S into the spare first (in the
 * task that then updates it, so the copy is parallel and the update finds it in cache). */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "../config.h"
#include "cpu_backend.h"
#include "cpu_features.h"
#include "lightning_cpu.h"

typedef struct {
    float *o;                 /* [T, heads*d] */
    const float *qkv;         /* [T, heads*3d] */
    const mx_span *spans;
    mx_lightning_state *const *states;
    const float *decay;
    int heads, d;
    int failed;               /* set by a task that could not allocate scratch */
    int avx512;               /* one-token steps on the AVX-512 kernel */
    /* blocked form on block products (AVX-512): items (span, head) taken in turn by each
     * thread, with its slot of `scratch` (slot_floats) */
    atomic_int next;
    int n_items;
    float *scratch;
    size_t slot_floats;
} lightning_job;

/* Scratch of one thread for the block products: K^T [d][B], the scores [B][B] and the decay
 * powers exp(-s t), t = 0..B. */
static size_t mm_slot_floats(int d)
{
    size_t B = MX_LIGHTNING_BLOCK;
    return ((size_t)d * B + B * B + B + 1 + 15) & ~(size_t)15;
}

/* lightning_block as products: o = diag(exp(-s (j+1))) q S; P = (q k^T) . D with D[j][i] =
 * exp(-s (j - i)) for i <= j (0 above); o += P v; S = exp(-s m) S + (k . diag(exp(-s (m-1-i))))^T v.
 * The same sums as the scalar form in another order; one expf per distance, not per pair. */
static void lightning_block_mm(const float *q, const float *k, const float *v, size_t qkv_stride, float *o,
                               size_t o_stride, float *S, int m, int d, float s, float *scratch)
{
    const int B = MX_LIGHTNING_BLOCK, ldq = (int)qkv_stride, ldo = (int)o_stride;
    float *kt = scratch, *P = kt + (size_t)d * B, *e = P + (size_t)B * B;
    for (int t = 0; t <= m; t++)
        e[t] = expf(-s * (float)t);
    mx_lightning_mm_avx512(o, ldo, q, ldq, S, d, m, d, d, 0);
    for (int j = 0; j < m; j++) {
        float *oj = o + (size_t)j * o_stride, qd = e[j + 1];
        for (int b = 0; b < d; b++)
            oj[b] *= qd;
    }
    for (int i = 0; i < m; i++)
        for (int a = 0; a < d; a++)
            kt[(size_t)a * B + i] = k[(size_t)i * qkv_stride + a];
    mx_lightning_mm_avx512(P, B, q, ldq, kt, B, m, d, m, 0);
    for (int j = 0; j < m; j++) {
        float *pj = P + (size_t)j * B;
        for (int i = 0; i <= j; i++)
            pj[i] *= e[j - i];
        for (int i = j + 1; i < m; i++)
            pj[i] = 0.f;
    }
    mx_lightning_mm_avx512(o, ldo, P, B, v, ldq, m, m, d, 1);
    float bd = e[m];
    for (size_t x = 0; x < (size_t)d * d; x++)
        S[x] *= bd;
    for (int a = 0; a < d; a++)
        for (int i = 0; i < m; i++)
            kt[(size_t)a * B + i] *= e[m - 1 - i];
    mx_lightning_mm_avx512(S, d, kt, B, v, ldq, d, m, d, 1);
}

/* One block of m tokens for one head. q/k/v rows are strided by qkv_stride; S is [d, d]. */
static void lightning_block(const float *q, const float *k, const float *v, size_t qkv_stride, float *o,
                            size_t o_stride, float *S, int m, int d, float s, float *scores)
{
    /* inter-block: o_j = exp(-s (j+1)) * (q_j . S_prev) */
    for (int j = 0; j < m; j++) {
        const float *qj = q + j * qkv_stride;
        float *oj = o + j * o_stride;
        float qd = expf(-s * (float)(j + 1));
        for (int b = 0; b < d; b++)
            oj[b] = 0.f;
        for (int a = 0; a < d; a++) {
            float qa = qj[a] * qd;
            const float *Sa = S + (size_t)a * d;
            for (int b = 0; b < d; b++)
                oj[b] += qa * Sa[b];
        }
    }
    /* intra-block: o_j += sum_{i<=j} exp(-s (j-i)) (q_j . k_i) v_i */
    for (int j = 0; j < m; j++) {
        const float *qj = q + j * qkv_stride;
        for (int i = 0; i <= j; i++) {
            const float *ki = k + i * qkv_stride;
            float dot = 0.f;
            for (int a = 0; a < d; a++)
                dot += qj[a] * ki[a];
            scores[i] = dot * expf(-s * (float)(j - i));
        }
        float *oj = o + j * o_stride;
        for (int i = 0; i <= j; i++) {
            const float *vi = v + i * qkv_stride;
            float w = scores[i];
            for (int b = 0; b < d; b++)
                oj[b] += w * vi[b];
        }
    }
    /* state: S = exp(-s m) S + sum_i exp(-s (m-1-i)) k_i^T v_i */
    float bd = expf(-s * (float)m);
    for (size_t x = 0; x < (size_t)d * d; x++)
        S[x] *= bd;
    for (int i = 0; i < m; i++) {
        const float *ki = k + i * qkv_stride, *vi = v + i * qkv_stride;
        float kd = expf(-s * (float)(m - 1 - i));
        for (int a = 0; a < d; a++) {
            float ka = ki[a] * kd;
            float *Sa = S + (size_t)a * d;
            for (int b = 0; b < d; b++)
                Sa[b] += ka * vi[b];
        }
    }
}

/* One token: S_out = lam S_in + k^T v ; o = q S_out (S_out may be S_in). */
static void lightning_step(const float *q, const float *k, const float *v, float *o, const float *S_in,
                           float *S_out, int d, float lam)
{
    for (int b = 0; b < d; b++)
        o[b] = 0.f;
    for (int a = 0; a < d; a++) {
        const float *Si = S_in + (size_t)a * d;
        float *So = S_out + (size_t)a * d;
        float ka = k[a], qa = q[a];
        for (int b = 0; b < d; b++) {
            So[b] = lam * Si[b] + ka * v[b];
            o[b] += qa * So[b];
        }
    }
}

static void lightning_item(lightning_job *j, int task, float *scratch)
{
    int span = task / j->heads, h = task % j->heads, d = j->d;
    const mx_span *sp = &j->spans[span];
    mx_lightning_state *st = j->states[span];
    float *S_in = (float *)st->S.data + (size_t)h * d * d;
    float *S = st->spare.data ? (float *)st->spare.data + (size_t)h * d * d : S_in;
    size_t qkv_stride = (size_t)j->heads * 3 * d, o_stride = (size_t)j->heads * d;
    const float *q = j->qkv + (size_t)sp->start * qkv_stride + (size_t)h * 3 * d;
    float *o = j->o + (size_t)sp->start * o_stride + (size_t)h * d;
    float s = j->decay[h];
    if (sp->len == 1) {
        if (j->avx512)
            mx_lightning_step_avx512(q, q + d, q + 2 * d, o, S_in, S, d, expf(-s));
        else
            lightning_step(q, q + d, q + 2 * d, o, S_in, S, d, expf(-s));
        return;
    }
    if (S != S_in)
        memcpy(S, S_in, (size_t)d * d * sizeof *S);
    float scores[MX_LIGHTNING_BLOCK];
    for (int b0 = 0; b0 < sp->len; b0 += MX_LIGHTNING_BLOCK) {
        int m = sp->len - b0 < MX_LIGHTNING_BLOCK ? sp->len - b0 : MX_LIGHTNING_BLOCK;
        const float *qb = q + (size_t)b0 * qkv_stride;
        if (scratch)
            lightning_block_mm(qb, qb + d, qb + 2 * d, qkv_stride, o + (size_t)b0 * o_stride, o_stride, S, m, d, s,
                               scratch);
        else
            lightning_block(qb, qb + d, qb + 2 * d, qkv_stride, o + (size_t)b0 * o_stride, o_stride, S, m, d, s,
                            scores);
    }
}

static void lightning_task(void *ctx, int task, int n_tasks)
{
    (void)n_tasks;
    lightning_item(ctx, task, NULL);
}

/* Block products: thread `task` takes items in turn, with its own scratch slot. */
static void lightning_mm_task(void *ctx, int task, int n_tasks)
{
    (void)n_tasks;
    lightning_job *j = ctx;
    float *scratch = j->scratch + (size_t)task * j->slot_floats;
    for (;;) {
        int i = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (i >= j->n_items)
            break;
        lightning_item(j, i, scratch);
    }
}

int mx_cpu_lightning(mx_backend *be, mx_tensor *o, const mx_tensor *qkv, const mx_span *spans, int n_spans,
                     mx_lightning_state *const *states, const float *decay, int heads, int head_dim,
                     mx_error *err)
{
    MX_TRY(mx_cpu_check_act(qkv, "lightning qkv", (int64_t)heads * 3 * head_dim, err));
    MX_TRY(mx_cpu_check_act(o, "lightning output", (int64_t)heads * head_dim, err));
    for (int i = 0; i < n_spans; i++) {
        if (spans[i].len < 1 || spans[i].start < 0 || spans[i].start + spans[i].len > qkv->shape[0])
            return mx_fail(err, MX_EINVAL, "lightning: span %d [%d, +%d) outside the batch", i, spans[i].start,
                           spans[i].len);
        if (!states[i] || mx_tensor_numel(&states[i]->S) != (int64_t)heads * head_dim * head_dim)
            return mx_fail(err, MX_EINVAL, "lightning: state %d has the wrong size", i);
        if (states[i]->spare.data && mx_tensor_numel(&states[i]->spare) != mx_tensor_numel(&states[i]->S))
            return mx_fail(err, MX_EINVAL, "lightning: the spare of state %d has the wrong size", i);
    }
    lightning_job j = {o->data, qkv->data, spans, states, decay, heads, head_dim, 0,
                       mx_cpu_isa_supported(MX_CPU_ISA_AVX512), 0, n_spans * heads, NULL, 0};
    mx_threadpool *pool = mx_cpu_pool(be);
    int longest = 0;
    for (int i = 0; i < n_spans; i++)
        longest = spans[i].len > longest ? spans[i].len : longest;
    /* Prefill spans on AVX-512: the blocked form as block products (scratch the pool keeps) */
    if (longest > 1 && mx_cpu_isa_supported(MX_CPU_ISA_AVX512)) {
        int threads = mx_threadpool_size(pool);
        j.slot_floats = mm_slot_floats(head_dim);
        j.scratch = mx_threadpool_scratch(pool, (size_t)threads * j.slot_floats * sizeof(float));
        if (!j.scratch)
            return mx_fail(err, MX_ENOMEM, "lightning: out of memory for block scratch");
        atomic_init(&j.next, 0);
        int n_tasks = threads < j.n_items ? threads : j.n_items;
        if (n_tasks > 1)
            mx_threadpool_run(pool, lightning_mm_task, &j, n_tasks);
        else
            lightning_mm_task(&j, 0, 1);
    } else {
        mx_threadpool_run(pool, lightning_task, &j, n_spans * heads);
    }
    for (int i = 0; i < n_spans; i++)
        states[i]->started = true;
    return 0;
}

int mx_cpu_lightning_state_init(mx_backend *be, mx_lightning_state *st, int heads, int head_dim, mx_error *err)
{
    int64_t shape[3] = {heads, head_dim, head_dim};
    memset(st, 0, sizeof *st);
    return be->alloc(be, &st->S, MX_DTYPE_F32, 3, shape, err);
}

void mx_cpu_lightning_state_free(mx_backend *be, mx_lightning_state *st)
{
    if (st)
        be->free(be, &st->S);
}
