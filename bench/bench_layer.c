/* bench_layer.c - one full-width MiniMax-Text-01 layer (hidden 6144, 64 heads x 128, lightning
 * attention, MoE top-2 of 32 experts of 9216) decoding batch 1 and 16 on the CPU backend,
 * through mx_model_run_layers, in three variants run in turn within each step: all BF16, int8
 * experts (per-row scales), and int8 experts plus int8 attention projections (qkv_proj,
 * output_gate, out_proj). Weights are random BF16 made in memory (never written to disk);
 * experts share NBUF distinct buffers, each larger than the last-level cache, so every expert
 * read still comes from memory. Reports weight bytes read per second vs the read bandwidth
 * measured next to each step. */
#include <stdio.h>

#include "bench_util.h"
#include "core/model.h"
#include "core/model_writer.h"
#include "core/quantize.h"

#define NBUF 4
#define NV 3    /* variants: bf16, int8 experts, int8 experts + int8 attention */
#define STEPS 8 /* timed decode steps per batch size, after one warm-up step */

/* Counts the distinct experts the router picks, then runs them with the model's own. */
typedef struct {
    mx_model *m;
    int n_experts;
    long distinct; /* summed over calls */
    double seconds; /* in the experts (mx_moe_local), summed over calls */
} counting_moe;

static int counting_run(void *ctx, int layer, const mx_tensor *x2, const int32_t *ids,
                        const float *weights, int k, mx_tensor *out, mx_error *err)
{
    counting_moe *c = ctx;
    unsigned char seen[256] = {0};
    for (int64_t i = 0; i < x2->shape[0] * k; i++)
        if (ids[i] >= 0 && ids[i] < c->n_experts && !seen[ids[i]]) {
            seen[ids[i]] = 1;
            c->distinct++;
        }
    double t0 = bench_now();
    int rc = mx_moe_local(c->m, layer, x2, ids, weights, k, out, err);
    c->seconds += bench_now() - t0;
    return rc;
}

static int bf16_random(mx_tensor *t, int64_t rows, int64_t cols, float scale, uint64_t seed)
{
    uint16_t *p = malloc((size_t)(rows * cols) * 2);
    if (!p)
        return -1;
    uint64_t s = seed | 1;
    for (int64_t i = 0; i < rows * cols; i++)
        p[i] = mx_f32_to_bf16(scale * (float)((double)(bench_rng(&s) >> 40) / 8388608.0 - 1.0));
    *t = mx_tensor_2d(p, MX_DTYPE_BF16, MX_DEVICE_CPU, rows, cols);
    return 0;
}

static void die(const char *what, const mx_error *err)
{
    fprintf(stderr, "bench_layer: %s: %s\n", what, err ? err->msg : "out of memory");
    exit(1);
}

int main(void)
{
    mx_error err = {0};
    mx_weights w = {0};
    if (mx_model_preset_config("layer", &w.cfg, &err))
        die("config", &err);
    const mx_config *c = &w.cfg;
    int H = c->hidden_size, A = mx_config_attn_width(c), I = c->intermediate_size;
    int E = c->num_local_experts;
    mx_layer_weights *L = calloc(1, sizeof *L);
    w.layers = L;
    L->kind = (mx_attn_kind)c->attn_type[0];
    L->has_attention = true;
    if (L->kind != MX_ATTN_LIGHTNING)
        die("the layer preset is expected to be a lightning layer", NULL);
    float *router = malloc(sizeof(float) * (size_t)E * H);
    if (!router)
        die("router", NULL);
    bench_fill_f32(router, (size_t)E * H, 0.02f, 5);
    L->router = mx_tensor_2d(router, MX_DTYPE_F32, MX_DEVICE_CPU, E, H);
    if (bf16_random(&L->input_norm, 1, H, 1.f, 1) || bf16_random(&L->post_norm, 1, H, 1.f, 2) ||
        bf16_random(&L->attn_norm, 1, A, 1.f, 3) || bf16_random(&L->qkv, 3 * A, H, 0.02f, 4) ||
        bf16_random(&L->output_gate, A, H, 0.02f, 6) || bf16_random(&L->out_proj, H, A, 0.02f, 7))
        die("attention weights", NULL);
    L->input_norm.ndim = L->post_norm.ndim = L->attn_norm.ndim = 1;
    L->input_norm.shape[0] = L->post_norm.shape[0] = H;
    L->attn_norm.shape[0] = A;
    mx_expert_weights bufs[NBUF];
    for (int b = 0; b < NBUF; b++)
        if (bf16_random(&bufs[b].w1, I, H, 0.02f, 100 + b) ||
            bf16_random(&bufs[b].w3, I, H, 0.02f, 200 + b) ||
            bf16_random(&bufs[b].w2, H, I, 0.02f, 300 + b))
            die("expert weights", NULL);
    L->experts = calloc((size_t)E, sizeof *L->experts);
    for (int e = 0; e < E; e++) {
        L->experts[e] = bufs[e % NBUF];
        L->experts[e].loaded = true;
    }
    w.plan.layer_begin = 0;
    w.plan.layer_end = 1;
    w.plan.attention = true;
    w.plan.all_experts = true;

    /* The same layer with int8 experts: every expert buffer quantized once (per-row scales),
     * the attention weights shared with the bf16 layer. */
    mx_weights w8 = w;
    mx_layer_weights *L8 = calloc(1, sizeof *L8);
    *L8 = *L;
    w8.layers = L8;
    mx_expert_weights bufs8[NBUF];
    void *qmem[NBUF][3];
    for (int b = 0; b < NBUF; b++) {
        const mx_tensor *src[3] = {&bufs[b].w1, &bufs[b].w3, &bufs[b].w2};
        mx_tensor *dst[3] = {&bufs8[b].w1, &bufs8[b].w3, &bufs8[b].w2};
        for (int i = 0; i < 3; i++) {
            qmem[b][i] = aligned_alloc(64, (size_t)mx_quantized_i8_bytes(src[i]->shape[0], src[i]->shape[1]));
            if (!qmem[b][i] || mx_quantize_i8(src[i], qmem[b][i], 0, dst[i], &err))
                die("quantize experts", &err);
        }
    }
    L8->experts = calloc((size_t)E, sizeof *L8->experts);
    for (int e = 0; e < E; e++) {
        L8->experts[e] = bufs8[e % NBUF];
        L8->experts[e].loaded = true;
    }

    /* And with the attention projections quantized as well (their own copies, so the three
     * variants read three different attention buffers, each larger than the cache). */
    mx_weights wa = w8;
    mx_layer_weights *LA = calloc(1, sizeof *LA);
    *LA = *L8;
    wa.layers = LA;
    mx_tensor *aq[3] = {&LA->qkv, &LA->output_gate, &LA->out_proj};
    void *amem[3];
    for (int i = 0; i < 3; i++) {
        amem[i] = aligned_alloc(64, (size_t)mx_quantized_i8_bytes(aq[i]->shape[0], aq[i]->shape[1]));
        mx_tensor src = *aq[i];
        if (!amem[i] || mx_quantize_i8(&src, amem[i], 0, aq[i], &err))
            die("quantize attention", &err);
    }

    mx_backend *be = NULL;
    mx_model *models[NV] = {NULL, NULL, NULL};
    if (mx_backend_cpu_create(0, &be, &err) || mx_model_create(&w, be, &models[0], &err) ||
        mx_model_create(&w8, be, &models[1], &err) || mx_model_create(&wa, be, &models[2], &err))
        die("model", &err);
    mx_threadpool *pool = NULL;
    bench_reader reader;
    if (mx_threadpool_create(0, &pool, &err))
        die("pool", &err);
    if (bench_reader_init(&reader, (size_t)512 << 20))
        die("bandwidth buffer", NULL);

    /* bytes the attention projections + router read: bf16, or int8 plus one fp32 scale per
     * row (the norms, a few KB, are left out) */
    const double proj_elems = (double)L->qkv.shape[0] * H + (double)A * H + (double)H * A;
    const double proj_scales = 4.0 * ((double)L->qkv.shape[0] + A + H);
    const double attn_b[NV] = {2.0 * proj_elems + 4.0 * E * H, 2.0 * proj_elems + 4.0 * E * H,
                               proj_elems + proj_scales + 4.0 * E * H};
    /* bytes one expert reads: bf16, or int8 plus one fp32 scale per row */
    const double eb16 = 2.0 * 3.0 * I * H, eb8 = 3.0 * I * H + 4.0 * (2.0 * I + H);
    const double expert_bytes[NV] = {eb16, eb8, eb8};
    static const char *const names[NV] = {"bf16", "int8", "int8"};
    static const char *const anames[NV] = {"bf16", "bf16", "int8"};
    printf("One MiniMax-Text-01 layer (lightning + MoE top-%d of %d), CPU backend: all BF16, int8\n"
           "experts, int8 experts + int8 attention projections\n", c->num_experts_per_tok, E);
    printf("Attention+router %.0f MB (bf16) / %.0f MB (int8), each expert %.0f MB (bf16) / %.0f MB\n"
           "(int8). Each step is paired with a read-bandwidth measurement just before it; 'of bw'\n"
           "is the median of the %d pairs' ratios (bytes the variant reads per second / bandwidth).\n"
           "The three variants run in turn in every step; 'vs bf16' is the ratio of the best steps'\n"
           "tokens per second to the bf16 variant's; 'per expert' times the MoE experts alone, per\n"
           "distinct expert of a step (against the highest bandwidth read of the run).\n",
           attn_b[0] / 1e6, attn_b[2] / 1e6, eb16 / 1e6, eb8 / 1e6, STEPS);
    printf("%6s %8s %6s %10s %10s %12s %10s %13s %8s %8s\n", "batch", "experts", "attn", "ms/step",
           "experts", "GB read", "GB/s", "bw GB/s", "of bw", "vs bf16");
    static const int batches[] = {1, 16};
    char moe_line[96];
    for (size_t bi = 0; bi < 2; bi++) {
        int T = batches[bi];
        mx_sequence **seqs[NV];
        mx_span *spans = calloc((size_t)T, sizeof *spans);
        for (int v = 0; v < NV; v++) {
            seqs[v] = calloc((size_t)T, sizeof *seqs[v]);
            for (int i = 0; i < T; i++)
                if (mx_sequence_create(models[v], 0, 1, &seqs[v][i], &err))
                    die("sequence", &err);
        }
        for (int i = 0; i < T; i++)
            spans[i] = (mx_span){i, 1};
        mx_tensor h;
        int64_t shape[2] = {T, H};
        if (be->alloc(be, &h, be->act_dtype, 2, shape, &err))
            die("alloc", &err);
        float *hx = malloc(sizeof(float) * (size_t)T * H);
        double best[NV] = {1e30, 1e30, 1e30}, best_bytes[NV] = {0, 0, 0}, ratios[NV][STEPS];
        double best_moe[NV] = {1e30, 1e30, 1e30};
        double bw_lo[NV] = {1e30, 1e30, 1e30}, bw_hi[NV] = {0, 0, 0};
        for (int it = 0; it <= STEPS; it++) {
            for (int v = 0; v < NV; v++) {
                mx_batch batch = {T, seqs[v], spans, T};
                counting_moe cm = {models[v], E, 0, 0};
                mx_moe_executor ex = {counting_run, &cm};
                bench_fill_f32(hx, (size_t)T * H, 1.f, 77 + (uint64_t)it);
                if (be->from_host_f32(be, &h, hx, &err))
                    die("input", &err);
                double bw = bench_reader_measure(&reader, pool, 2);
                double t0 = bench_now();
                if (mx_model_run_layers(models[v], 0, 1, &batch, &h, &ex, &err) || be->sync(be, &err))
                    die("run_layers", &err);
                double t = bench_now() - t0;
                mx_batch_advance(&batch);
                double bytes = attn_b[v] + expert_bytes[v] * (double)cm.distinct;
                if (it == 0) /* the first step also faults pages in */
                    continue;
                ratios[v][it - 1] = bytes / t / bw;
                bw_lo[v] = bw < bw_lo[v] ? bw : bw_lo[v];
                bw_hi[v] = bw > bw_hi[v] ? bw : bw_hi[v];
                if (t < best[v]) {
                    best[v] = t;
                    best_bytes[v] = bytes;
                }
                double per_expert = cm.seconds / (double)(cm.distinct ? cm.distinct : 1);
                if (per_expert < best_moe[v])
                    best_moe[v] = per_expert;
            }
        }
        for (int v = 0; v < NV; v++) {
            char bw_range[32], speedup[16] = "";
            snprintf(bw_range, sizeof bw_range, "%.1f-%.1f", bw_lo[v] / 1e9, bw_hi[v] / 1e9);
            if (v > 0)
                snprintf(speedup, sizeof speedup, "%.2fx", best[0] / best[v]);
            printf("%6d %8s %6s %10.1f %10.1f %12.2f %10.1f %13s %8.2f %8s\n", T, names[v], anames[v],
                   best[v] * 1e3, (best_bytes[v] - attn_b[v]) / expert_bytes[v], best_bytes[v] / 1e9,
                   best_bytes[v] / best[v] / 1e9, bw_range, bench_median(ratios[v], STEPS), speedup);
        }
        snprintf(moe_line, sizeof moe_line, "%.2f / %.2f ms, %.2fx (%.2f / %.2f of bw)",
                 best_moe[0] * 1e3, best_moe[1] * 1e3, best_moe[0] / best_moe[1],
                 expert_bytes[0] / best_moe[0] / bw_hi[0], expert_bytes[1] / best_moe[1] / bw_hi[1]);
        printf("%6d %8s   per expert (bf16 / int8, best step): %s\n", T, "", moe_line);
        fflush(stdout);
        be->free(be, &h);
        free(hx);
        for (int v = 0; v < NV; v++) {
            for (int i = 0; i < T; i++)
                mx_sequence_free(models[v], seqs[v][i]);
            free(seqs[v]);
        }
        free(spans);
    }
    mx_model_free(models[2]);
    for (int i = 0; i < 3; i++)
        free(amem[i]);
    free(LA);
    mx_model_free(models[1]);
    free(L8->experts);
    free(L8);
    for (int b = 0; b < NBUF; b++)
        for (int i = 0; i < 3; i++)
            free(qmem[b][i]);
    mx_model_free(models[0]);
    be->destroy(be);
    bench_reader_free(&reader);
    mx_threadpool_destroy(pool);
    for (int b = 0; b < NBUF; b++) {
        free(bufs[b].w1.data);
        free(bufs[b].w3.data);
        free(bufs[b].w2.data);
    }
    free(L->experts);
    free(L->input_norm.data);
    free(L->post_norm.data);
    free(L->attn_norm.data);
    free(L->qkv.data);
    free(L->output_gate.data);
    free(L->out_proj.data);
    free(router);
    free(L);
    return 0;
}
