/* model.c - the MiniMax-Text-01 model in data order (spec sections 2-6): embedding, per layer
 * RMSNorm -> attention -> alpha/beta residual -> RMSNorm -> MoE -> alpha/beta residual, final
 * norm, lm_head. Only backend ops are called here, so the same code runs on CPU and CUDA. */
#include "model.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct mx_model {
    mx_config cfg;
    const mx_weights *w;
    mx_backend *be;
    mx_layer_weights *layers; /* [L] device copies of what the plan loaded */
    mx_tensor embed, final_norm, lm_head;
    float *decay;             /* [L * heads] lightning decay rates */
    /* the workspace of callers that bring none (mx_model_forward, mx_model_run_layers):
     * grown to the largest step seen, then reused, so a steady decode allocates nothing */
    pthread_mutex_t ws_mu;
    mx_workspace *ws;
};

/* ---------------------------------------------------------------- decay rates (spec 3.3) */

/* ALiBi slopes for n heads, in double as the reference computes them, then rounded to fp32. */
static void alibi_slopes(int n, double *out)
{
    int p = 1;
    while (p * 2 <= n)
        p *= 2;
    double start = pow(2.0, -pow(2.0, -(log2((double)p) - 3.0)));
    for (int i = 0; i < p; i++)
        out[i] = start * pow(start, i);
    if (p == n)
        return;
    /* every other slope of the 2p-head set, the first n - p of them */
    double start2 = pow(2.0, -pow(2.0, -(log2((double)(2 * p)) - 3.0)));
    for (int i = 0; i < n - p; i++)
        out[p + i] = start2 * pow(start2, 2 * i);
}

void mx_lightning_decay(int heads, int layer, int num_layers, float *decay)
{
    double slopes[4096];
    int n = heads < 4096 ? heads : 4096;
    alibi_slopes(n, slopes);
    /* A one-layer model would divide by zero in the released formula; use l/1 there. */
    double denom = num_layers > 1 ? (double)(num_layers - 1) : 1.0;
    float factor = (float)(1.0 - (double)layer / denom + 1e-5);
    for (int h = 0; h < n; h++)
        decay[h] = (float)slopes[h] * factor;
}

/* ---------------------------------------------------------------- construction */

static int upload(mx_backend *be, mx_tensor *dst, const mx_tensor *src, mx_error *err)
{
    if (!src->data) {
        memset(dst, 0, sizeof *dst);
        return 0;
    }
    /* int8 weights (experts, attention projections) carry their scales in the tensor; the CPU
     * and CUDA backends' upload_weight and matmul know them */
    if (src->dtype == MX_DTYPE_I8 && be->device != MX_DEVICE_CPU && be->device != MX_DEVICE_CUDA)
        return mx_fail(err, MX_EUNSUPPORTED, "int8 weights run on the CPU and CUDA backends only, not %s", be->name);
    return be->upload_weight(be, dst, src, err);
}

static void release(mx_backend *be, mx_tensor *t)
{
    if (t->data)
        be->free_weight(be, t);
}

static void free_layer(mx_backend *be, mx_layer_weights *l, int n_experts)
{
    mx_tensor *ts[] = {&l->input_norm, &l->post_norm, &l->qkv,    &l->output_gate, &l->attn_norm,
                       &l->out_proj,   &l->q_proj,    &l->k_proj, &l->v_proj,      &l->o_proj, &l->router};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++)
        release(be, ts[i]);
    if (l->experts) {
        for (int e = 0; e < n_experts; e++) {
            release(be, &l->experts[e].w1);
            release(be, &l->experts[e].w3);
            release(be, &l->experts[e].w2);
        }
        free(l->experts);
    }
}

static int upload_layer(mx_backend *be, mx_layer_weights *dst, const mx_layer_weights *src, int n_experts,
                        mx_error *err)
{
    dst->kind = src->kind;
    dst->has_attention = src->has_attention;
    const mx_tensor *s[] = {&src->input_norm, &src->post_norm, &src->qkv,    &src->output_gate,
                            &src->attn_norm,  &src->out_proj,  &src->q_proj, &src->k_proj,
                            &src->v_proj,     &src->o_proj,    &src->router};
    mx_tensor *d[] = {&dst->input_norm, &dst->post_norm, &dst->qkv,    &dst->output_gate,
                      &dst->attn_norm,  &dst->out_proj,  &dst->q_proj, &dst->k_proj,
                      &dst->v_proj,     &dst->o_proj,    &dst->router};
    for (size_t i = 0; i < sizeof s / sizeof *s; i++)
        MX_TRY(upload(be, d[i], s[i], err));
    if (src->experts) {
        dst->experts = calloc((size_t)n_experts, sizeof *dst->experts);
        if (!dst->experts)
            return mx_fail(err, MX_ENOMEM, "out of memory for expert tables");
        for (int e = 0; e < n_experts; e++) {
            if (!src->experts[e].loaded)
                continue;
            MX_TRY(upload(be, &dst->experts[e].w1, &src->experts[e].w1, err));
            MX_TRY(upload(be, &dst->experts[e].w3, &src->experts[e].w3, err));
            MX_TRY(upload(be, &dst->experts[e].w2, &src->experts[e].w2, err));
            dst->experts[e].loaded = true;
        }
    }
    return 0;
}

int mx_model_create(const mx_weights *w, mx_backend *be, mx_model **out, mx_error *err)
{
    mx_model *m = calloc(1, sizeof *m);
    if (!m)
        return mx_fail(err, MX_ENOMEM, "out of memory creating the model");
    pthread_mutex_init(&m->ws_mu, NULL);
    m->cfg = w->cfg;
    m->w = w;
    m->be = be;
    int L = m->cfg.num_hidden_layers, H = m->cfg.num_attention_heads;
    m->layers = calloc((size_t)L, sizeof *m->layers);
    m->decay = malloc((size_t)L * H * sizeof *m->decay);
    if (!m->layers || !m->decay) {
        mx_model_free(m);
        return mx_fail(err, MX_ENOMEM, "out of memory creating the model");
    }
    for (int l = 0; l < L; l++)
        mx_lightning_decay(H, l, L, m->decay + (size_t)l * H);
    int rc = upload(be, &m->embed, &w->embed, err);
    if (!rc)
        rc = upload(be, &m->final_norm, &w->final_norm, err);
    if (!rc)
        rc = upload(be, &m->lm_head, &w->lm_head, err);
    for (int l = 0; l < L && !rc; l++)
        rc = upload_layer(be, &m->layers[l], &w->layers[l], m->cfg.num_local_experts, err);
    if (rc) {
        mx_model_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

void mx_model_free(mx_model *m)
{
    if (!m)
        return;
    mx_workspace_free(m, m->ws);
    pthread_mutex_destroy(&m->ws_mu);
    if (m->layers) {
        for (int l = 0; l < m->cfg.num_hidden_layers; l++)
            free_layer(m->be, &m->layers[l], m->cfg.num_local_experts);
        free(m->layers);
    }
    release(m->be, &m->embed);
    release(m->be, &m->final_norm);
    release(m->be, &m->lm_head);
    free(m->decay);
    free(m);
}

const mx_config *mx_model_config(const mx_model *m)
{
    return &m->cfg;
}

mx_backend *mx_model_backend(const mx_model *m)
{
    return m->be;
}

const mx_expert_weights *mx_model_expert(const mx_model *m, int layer, int expert)
{
    if (layer < 0 || layer >= m->cfg.num_hidden_layers || expert < 0 || expert >= m->cfg.num_local_experts)
        return NULL;
    const mx_layer_weights *l = &m->layers[layer];
    return l->experts && l->experts[expert].loaded ? &l->experts[expert] : NULL;
}

/* ---------------------------------------------------------------- sequences */

int mx_sequence_create(mx_model *m, int layer_begin, int layer_end, mx_sequence **out, mx_error *err)
{
    const mx_config *c = &m->cfg;
    if (layer_begin < 0 || layer_end > c->num_hidden_layers || layer_begin > layer_end)
        return mx_fail(err, MX_EINVAL, "sequence layer range [%d, %d) outside the model's %d layers", layer_begin,
                       layer_end, c->num_hidden_layers);
    mx_sequence *s = calloc(1, sizeof *s);
    if (!s)
        return mx_fail(err, MX_ENOMEM, "out of memory creating a sequence");
    s->layer_begin = layer_begin;
    s->layer_end = layer_end;
    s->lightning = calloc((size_t)c->num_hidden_layers, sizeof *s->lightning);
    s->kv = calloc((size_t)c->num_hidden_layers, sizeof *s->kv);
    if (!s->lightning || !s->kv) {
        mx_sequence_free(m, s);
        return mx_fail(err, MX_ENOMEM, "out of memory creating a sequence");
    }
    for (int l = layer_begin; l < layer_end; l++) {
        int rc = c->attn_type[l] == MX_ATTN_LIGHTNING
                     ? m->be->lightning_state_init(m->be, &s->lightning[l], c->num_attention_heads, c->head_dim, err)
                     : m->be->kv_cache_init(m->be, &s->kv[l], c->num_key_value_heads, c->head_dim, err);
        if (rc) {
            mx_sequence_free(m, s);
            return rc;
        }
    }
    *out = s;
    return 0;
}

void mx_sequence_free(mx_model *m, mx_sequence *s)
{
    if (!s)
        return;
    for (int l = s->layer_begin; l < s->layer_end && s->lightning && s->kv; l++) {
        if (s->lightning[l].spare.data) /* mx_sequence_keep_undo's */
            m->be->free(m->be, &s->lightning[l].spare);
        if (s->lightning[l].S.data)
            m->be->lightning_state_free(m->be, &s->lightning[l]);
        if (s->kv[l].impl)
            m->be->kv_cache_free(m->be, &s->kv[l]);
    }
    free(s->lightning);
    free(s->kv);
    free(s);
}

uint64_t mx_sequence_bytes(const mx_sequence *s)
{
    uint64_t bytes = 0;
    for (int l = s->layer_begin; l < s->layer_end; l++) {
        if (s->lightning[l].S.data)
            bytes += mx_tensor_nbytes(&s->lightning[l].S);
        if (s->lightning[l].spare.data)
            bytes += mx_tensor_nbytes(&s->lightning[l].spare);
        if (s->kv[l].impl)
            bytes += (uint64_t)mx_kv_pages_for_tokens(s->kv[l].capacity) *
                     mx_kv_page_bytes(s->kv[l].dtype, s->kv[l].kv_heads, s->kv[l].head_dim);
    }
    return bytes;
}

int mx_sequence_keep_undo(mx_model *m, mx_sequence *s, mx_error *err)
{
    for (int l = s->layer_begin; l < s->layer_end; l++) {
        mx_lightning_state *st = &s->lightning[l];
        if (!st->S.data || st->spare.data)
            continue;
        MX_TRY(m->be->alloc(m->be, &st->spare, MX_DTYPE_F32, st->S.ndim, st->S.shape, err));
        st->spare_is_undo = false;
    }
    return 0;
}

size_t mx_sequence_undo_floats(const mx_model *m, const mx_sequence *s)
{
    (void)m;
    size_t n = 0;
    for (int l = s->layer_begin; l < s->layer_end; l++)
        if (s->lightning[l].S.data && !s->lightning[l].spare.data)
            n += (size_t)mx_tensor_numel(&s->lightning[l].S);
    return n;
}

int mx_sequence_save(mx_model *m, mx_sequence *s, float *undo, mx_error *err)
{
    for (int l = s->layer_begin; l < s->layer_end; l++) {
        mx_lightning_state *st = &s->lightning[l];
        if (st->spare.data) {
            st->spare_is_undo = false; /* the layer has not advanced in this step yet */
        } else if (st->S.data) {
            MX_TRY(m->be->to_host_f32(m->be, undo, &st->S, err));
            undo += mx_tensor_numel(&st->S);
        }
    }
    return 0;
}

static void swap_tensors(mx_tensor *a, mx_tensor *b)
{
    mx_tensor t = *a;
    *a = *b;
    *b = t;
}

int mx_sequence_rollback(mx_model *m, mx_sequence *s, int64_t length, const float *undo, mx_error *err)
{
    for (int l = s->layer_begin; l < s->layer_end; l++) {
        mx_lightning_state *st = &s->lightning[l];
        if (st->spare.data) {
            if (st->spare_is_undo) /* advanced in the step: the state from before is the spare */
                swap_tensors(&st->S, &st->spare);
            st->spare_is_undo = false;
        } else if (st->S.data) {
            MX_TRY(m->be->from_host_f32(m->be, &st->S, undo, err));
            undo += mx_tensor_numel(&st->S);
        }
        st->started = length > 0;
        if (s->kv[l].impl)
            m->be->kv_cache_truncate(m->be, &s->kv[l], length);
    }
    s->length = length;
    return 0;
}

void mx_batch_advance(const mx_batch *b)
{
    for (int i = 0; i < b->n_seqs; i++)
        b->seqs[i]->length += b->spans[i].len;
}

/* ---------------------------------------------------------------- workspace */

/* Every buffer a step needs, sized once for max_tokens rows and max_seqs sequences, so a
 * forward step allocates nothing (a step larger than the workspace grows it once). */
struct mx_workspace {
    int max_tokens, max_seqs;
    mx_tensor x1, attn, x2, moe;  /* [T, hidden] */
    mx_tensor wide;               /* [T, 3 * attn_width]: qkv, or q|k|v */
    mx_tensor o, gate;            /* [T, attn_width] */
    mx_tensor xe, ye;             /* [T, hidden]: local experts' gathered rows and outputs */
    mx_tensor eg, eu;             /* [T, intermediate]: SwiGLU halves of a local expert */
    mx_tensor h;                  /* [T, hidden]: mx_model_forward's hidden states */
    mx_tensor last, logits;       /* [S, hidden], [S, vocab]: the head (when loaded) */
    int32_t *ids;                 /* [T * k] router choices */
    float *weights;               /* [T * k] */
    int32_t *rows;                /* [T] grouped rows of one local expert, or head rows */
    float *scale;                 /* [T] */
    float *zeros;                 /* [T * hidden] host zeros: clears moe through from_host_f32 */
    void **ptrs;                  /* [S] per-sequence state pointers of one layer */
    mx_span *spans;               /* [S] spans of a sub-batch (mx_batch_split) */
};

static int alloc2(mx_backend *be, mx_tensor *t, int64_t rows, int64_t cols, mx_error *err)
{
    int64_t shape[2] = {rows, cols};
    return be->alloc(be, t, be->act_dtype, 2, shape, err);
}

static void ws_release(mx_backend *be, mx_workspace *ws)
{
    mx_tensor *ts[] = {&ws->x1, &ws->attn, &ws->x2, &ws->moe, &ws->wide, &ws->o,    &ws->gate,
                       &ws->xe, &ws->ye,   &ws->eg, &ws->eu,  &ws->h,    &ws->last, &ws->logits};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++)
        if (ts[i]->data)
            be->free(be, ts[i]);
    free(ws->ids);
    free(ws->weights);
    free(ws->rows);
    free(ws->scale);
    free(ws->zeros);
    free(ws->ptrs);
    free(ws->spans);
    memset(ws, 0, sizeof *ws);
}

/* Whether any expert of the model is held here (local MoE needs the expert buffers). */
static bool has_experts(const mx_model *m)
{
    for (int l = 0; l < m->cfg.num_hidden_layers; l++)
        if (m->layers[l].experts)
            return true;
    return false;
}

static int ws_size(mx_model *m, mx_workspace *ws, int T, int S, mx_error *err)
{
    const mx_config *c = &m->cfg;
    mx_backend *be = m->be;
    int64_t H = c->hidden_size, A = mx_config_attn_width(c), I = c->intermediate_size;
    int k = c->num_experts_per_tok;
    ws_release(be, ws);
    int rc = alloc2(be, &ws->x1, T, H, err);
    if (!rc) rc = alloc2(be, &ws->attn, T, H, err);
    if (!rc) rc = alloc2(be, &ws->x2, T, H, err);
    if (!rc) rc = alloc2(be, &ws->moe, T, H, err);
    if (!rc) rc = alloc2(be, &ws->wide, T, 3 * A, err);
    if (!rc) rc = alloc2(be, &ws->o, T, A, err);
    if (!rc) rc = alloc2(be, &ws->gate, T, A, err);
    if (!rc) rc = alloc2(be, &ws->h, T, H, err);
    if (!rc && has_experts(m)) {
        rc = alloc2(be, &ws->xe, T, H, err);
        if (!rc) rc = alloc2(be, &ws->ye, T, H, err);
        if (!rc) rc = alloc2(be, &ws->eg, T, I, err);
        if (!rc) rc = alloc2(be, &ws->eu, T, I, err);
    }
    if (!rc && m->lm_head.data) {
        rc = alloc2(be, &ws->last, S, H, err);
        if (!rc) rc = alloc2(be, &ws->logits, S, c->vocab_size, err);
    }
    if (!rc) {
        ws->ids = malloc((size_t)T * k * sizeof *ws->ids);
        ws->weights = malloc((size_t)T * k * sizeof *ws->weights);
        ws->rows = malloc((size_t)(T > S ? T : S) * sizeof *ws->rows);
        ws->scale = malloc((size_t)T * sizeof *ws->scale);
        ws->zeros = calloc((size_t)T * H, sizeof *ws->zeros);
        ws->ptrs = malloc((size_t)S * sizeof *ws->ptrs);
        ws->spans = malloc((size_t)S * sizeof *ws->spans);
        if (!ws->ids || !ws->weights || !ws->rows || !ws->scale || !ws->zeros || !ws->ptrs || !ws->spans)
            rc = mx_fail(err, MX_ENOMEM, "out of memory for a workspace of %d tokens", T);
    }
    if (rc) {
        ws_release(be, ws);
        return rc;
    }
    ws->max_tokens = T;
    ws->max_seqs = S;
    return 0;
}

int mx_workspace_create(mx_model *m, int max_tokens, int max_seqs, mx_workspace **out, mx_error *err)
{
    *out = NULL;
    if (max_tokens < 1 || max_seqs < 1)
        return mx_fail(err, MX_EINVAL, "workspace for %d tokens and %d sequences", max_tokens, max_seqs);
    mx_workspace *ws = calloc(1, sizeof *ws);
    if (!ws)
        return mx_fail(err, MX_ENOMEM, "out of memory for a workspace");
    int rc = ws_size(m, ws, max_tokens, max_seqs, err);
    if (rc) {
        free(ws);
        return rc;
    }
    *out = ws;
    return 0;
}

void mx_workspace_free(mx_model *m, mx_workspace *ws)
{
    if (!ws)
        return;
    ws_release(m->be, ws);
    free(ws);
}

int mx_workspace_reserve(mx_model *m, mx_workspace *ws, int tokens, int seqs, mx_error *err)
{
    if (tokens <= ws->max_tokens && seqs <= ws->max_seqs)
        return 0;
    /* grows in steps, so a crowd that builds up slowly reallocates a few times, not per step */
    int T = ws->max_tokens, S = ws->max_seqs;
    while (T < tokens)
        T = T > (1 << 23) ? tokens : 2 * T;
    while (S < seqs)
        S = S > (1 << 23) ? seqs : 2 * S;
    return ws_size(m, ws, T, S, err);
}

int mx_workspace_max_tokens(const mx_workspace *ws)
{
    return ws->max_tokens;
}

mx_tensor mx_workspace_hidden(mx_workspace *ws, int rows)
{
    return mx_tensor_rows(&ws->h, 0, rows);
}

mx_span *mx_workspace_spans(mx_workspace *ws)
{
    return ws->spans;
}

/* A [rows, cols] view that starts `offset` elements into t's data. */
static mx_tensor view2(const mx_tensor *t, size_t offset, int64_t rows, int64_t cols)
{
    return mx_tensor_2d((char *)t->data + offset * mx_dtype_size(t->dtype), t->dtype, t->device, rows, cols);
}

/* ---------------------------------------------------------------- attention blocks */

/* Spec 3.2: qkv = silu(x1 Wqkv^T); decayed linear attention per head; RMSNorm (eps 1e-6) over
 * all heads; times sigmoid(x1 Wgate^T); out_proj. */
static int lightning_attention(mx_model *m, int l, const mx_batch *b, mx_workspace *s, mx_error *err)
{
    const mx_config *c = &m->cfg;
    const mx_layer_weights *lw = &m->layers[l];
    mx_backend *be = m->be;
    int T = b->n_tokens, A = mx_config_attn_width(c);
    mx_tensor x1 = view2(&s->x1, 0, T, c->hidden_size), attn = view2(&s->attn, 0, T, c->hidden_size);
    mx_tensor qkv = view2(&s->wide, 0, T, 3 * (int64_t)A), o = view2(&s->o, 0, T, A),
              gate = view2(&s->gate, 0, T, A);
    mx_lightning_state **states = (mx_lightning_state **)s->ptrs;
    for (int i = 0; i < b->n_seqs; i++)
        states[i] = &b->seqs[i]->lightning[l];
    MX_TRY(be->matmul(be, &qkv, &x1, &lw->qkv, err));
    MX_TRY(be->silu(be, &qkv, err));
    MX_TRY(be->lightning(be, &o, &qkv, b->spans, b->n_seqs, states, m->decay + (size_t)l * c->num_attention_heads,
                         c->num_attention_heads, c->head_dim, err));
    /* undo mode: the advanced state is in the spare; it becomes S, the old one the undo */
    for (int i = 0; i < b->n_seqs; i++)
        if (states[i]->spare.data) {
            swap_tensors(&states[i]->S, &states[i]->spare);
            states[i]->spare_is_undo = true;
        }
    MX_TRY(be->rmsnorm(be, &o, &o, &lw->attn_norm, MX_LIGHTNING_NORM_EPS, err));
    MX_TRY(be->matmul(be, &gate, &x1, &lw->output_gate, err));
    MX_TRY(be->sigmoid_mul(be, &o, &gate, &o, err));
    return be->matmul(be, &attn, &o, &lw->out_proj, err);
}

/* Spec 4: q/k/v projections, partial NeoX RoPE, KV cache, causal GQA softmax, o_proj. */
static int softmax_attention(mx_model *m, int l, const mx_batch *b, mx_workspace *s, mx_error *err)
{
    const mx_config *c = &m->cfg;
    const mx_layer_weights *lw = &m->layers[l];
    mx_backend *be = m->be;
    int T = b->n_tokens, A = mx_config_attn_width(c), KV = mx_config_kv_width(c);
    mx_tensor x1 = view2(&s->x1, 0, T, c->hidden_size), attn = view2(&s->attn, 0, T, c->hidden_size);
    mx_tensor q = view2(&s->wide, 0, T, A), k = view2(&s->wide, (size_t)T * A, T, KV),
              v = view2(&s->wide, (size_t)T * (A + KV), T, KV), o = view2(&s->o, 0, T, A);
    mx_kv_cache **caches = (mx_kv_cache **)s->ptrs;
    for (int i = 0; i < b->n_seqs; i++)
        caches[i] = &b->seqs[i]->kv[l];
    MX_TRY(be->matmul(be, &q, &x1, &lw->q_proj, err));
    MX_TRY(be->matmul(be, &k, &x1, &lw->k_proj, err));
    MX_TRY(be->matmul(be, &v, &x1, &lw->v_proj, err));
    MX_TRY(be->softmax_attention(be, &o, &q, &k, &v, b->spans, b->n_seqs, caches, c->num_attention_heads,
                                 c->num_key_value_heads, c->head_dim, c->rotary_dim, c->rope_theta, err));
    return be->matmul(be, &attn, &o, &lw->o_proj, err);
}

/* ---------------------------------------------------------------- MoE (spec 5) */

int mx_moe_route(mx_model *m, int layer, const mx_tensor *x2, int32_t *ids, float *weights, mx_error *err)
{
    const mx_layer_weights *lw = &m->layers[layer];
    if (!lw->router.data)
        return mx_fail(err, MX_ENOTFOUND, "router gate of layer %d is not loaded", layer);
    return m->be->moe_route(m->be, ids, weights, x2, &lw->router, m->cfg.num_experts_per_tok, err);
}

/* SwiGLU with the caller's [n, intermediate] scratch g and u. */
static int expert_swiglu(mx_backend *be, const mx_expert_weights *ew, const mx_tensor *x, mx_tensor *y, mx_tensor *g,
                         mx_tensor *u, mx_error *err)
{
    MX_TRY(be->matmul(be, g, x, &ew->w1, err));
    MX_TRY(be->matmul(be, u, x, &ew->w3, err));
    MX_TRY(be->swiglu(be, g, g, u, err));
    return be->matmul(be, y, g, &ew->w2, err);
}

int mx_expert_forward(mx_backend *be, const mx_expert_weights *ew, const mx_tensor *x, mx_tensor *y,
                      mx_error *err)
{
    int64_t n = x->shape[0], I = ew->w1.shape[0];
    mx_tensor g = {0}, u = {0};
    int rc = alloc2(be, &g, n, I, err);
    if (!rc) rc = alloc2(be, &u, n, I, err);
    if (!rc) rc = expert_swiglu(be, ew, x, y, &g, &u, err);
    if (g.data) be->free(be, &g);
    if (u.data) be->free(be, &u);
    return rc;
}

int mx_moe_local_ws(mx_model *m, mx_workspace *ws, int layer, const mx_tensor *x2, const int32_t *ids,
                    const float *weights, int k, mx_tensor *out, mx_error *err)
{
    mx_backend *be = m->be;
    int T = (int)x2->shape[0], E = m->cfg.num_local_experts;
    /* no growth here: x2 and out may be views into this workspace (the layer's own) */
    if (T > ws->max_tokens)
        return mx_fail(err, MX_EINVAL, "layer %d: %d tokens for a workspace of %d", layer, T, ws->max_tokens);
    if (!ws->xe.data)
        return mx_fail(err, MX_ENOTFOUND, "layer %d: no expert is loaded on this model part", layer);
    int32_t *rows = ws->rows;
    float *scale = ws->scale;
    int64_t I = ws->eg.shape[1];
    for (int e = 0; e < E; e++) {
        int n = 0;
        for (int t = 0; t < T; t++)
            for (int j = 0; j < k; j++)
                if (ids[t * k + j] == e) {
                    rows[n] = t;
                    scale[n++] = weights[t * k + j];
                }
        if (!n)
            continue;
        const mx_expert_weights *ew = mx_model_expert(m, layer, e);
        if (!ew)
            return mx_fail(err, MX_ENOTFOUND, "expert %d of layer %d is not loaded", e, layer);
        mx_tensor xg = mx_tensor_rows(&ws->xe, 0, n), yg = mx_tensor_rows(&ws->ye, 0, n);
        mx_tensor g = view2(&ws->eg, 0, n, I), u = view2(&ws->eu, 0, n, I);
        MX_TRY(be->gather_rows(be, &xg, x2, rows, n, err));
        MX_TRY(expert_swiglu(be, ew, &xg, &yg, &g, &u, err));
        MX_TRY(be->scatter_add_rows(be, out, &yg, rows, scale, n, err));
    }
    return 0;
}

/* The model's own workspace for callers that bring none: taken when free; a concurrent
 * caller (or one nested inside a step that holds it) gets a temporary one. */
static mx_workspace *ws_take(mx_model *m, int T, int S, mx_workspace *tmp, bool *own, mx_error *err)
{
    *own = false;
    if (pthread_mutex_trylock(&m->ws_mu) == 0) {
        if (!m->ws && mx_workspace_create(m, T, S, &m->ws, err)) {
            pthread_mutex_unlock(&m->ws_mu);
            return NULL;
        }
        if (mx_workspace_reserve(m, m->ws, T, S, err)) {
            pthread_mutex_unlock(&m->ws_mu);
            return NULL;
        }
        *own = true;
        return m->ws;
    }
    memset(tmp, 0, sizeof *tmp);
    return ws_size(m, tmp, T, S, err) ? NULL : tmp;
}

static void ws_give(mx_model *m, mx_workspace *ws, bool own)
{
    if (own)
        pthread_mutex_unlock(&m->ws_mu);
    else if (ws)
        ws_release(m->be, ws);
}

int mx_moe_local(mx_model *m, int layer, const mx_tensor *x2, const int32_t *ids, const float *weights, int k,
                 mx_tensor *out, mx_error *err)
{
    mx_workspace tmp, *ws;
    bool own;
    if (!(ws = ws_take(m, (int)(x2->shape[0] ? x2->shape[0] : 1), 1, &tmp, &own, err)))
        return err ? err->code : MX_ENOMEM;
    int rc = mx_moe_local_ws(m, ws, layer, x2, ids, weights, k, out, err);
    ws_give(m, ws, own);
    return rc;
}

typedef struct local_ctx {
    mx_model *m;
    mx_workspace *ws;
} local_ctx;

static int local_moe_run(void *ctx, int layer, const mx_tensor *x2, const int32_t *ids, const float *weights,
                         int k, mx_tensor *out, mx_error *err)
{
    local_ctx *lc = ctx;
    return mx_moe_local_ws(lc->m, lc->ws, layer, x2, ids, weights, k, out, err);
}

/* ---------------------------------------------------------------- layers */

static int check_batch_layer(const mx_model *m, int l, const mx_batch *b, mx_error *err)
{
    if (!m->layers[l].has_attention)
        return mx_fail(err, MX_ENOTFOUND, "attention weights of layer %d are not loaded", l);
    for (int i = 0; i < b->n_seqs; i++)
        if (l < b->seqs[i]->layer_begin || l >= b->seqs[i]->layer_end)
            return mx_fail(err, MX_EINVAL, "sequence %d holds no state for layer %d", i, l);
    return 0;
}

int mx_model_layer_begin(mx_model *m, mx_workspace *ws, int l, const mx_batch *b, mx_tensor *h, mx_moe_input *in,
                         mx_error *err)
{
    const mx_config *c = &m->cfg;
    const mx_layer_weights *lw = &m->layers[l];
    mx_backend *be = m->be;
    float eps = (float)c->rms_norm_eps;
    int T = b->n_tokens;
    int64_t H = c->hidden_size;
    MX_TRY(check_batch_layer(m, l, b, err));
    MX_TRY(mx_workspace_reserve(m, ws, T, b->n_seqs, err));
    mx_tensor x1 = view2(&ws->x1, 0, T, H), attn = view2(&ws->attn, 0, T, H);
    in->x2 = view2(&ws->x2, 0, T, H);
    in->out = view2(&ws->moe, 0, T, H);
    in->ids = ws->ids;
    in->weights = ws->weights;
    in->k = c->num_experts_per_tok;
    MX_TRY(be->rmsnorm(be, &x1, h, &lw->input_norm, eps, err));
    MX_TRY(c->attn_type[l] == MX_ATTN_LIGHTNING ? lightning_attention(m, l, b, ws, err)
                                                : softmax_attention(m, l, b, ws, err));
    /* postnorm: the residual is the normalised input x1, not h */
    MX_TRY(be->residual(be, h, c->postnorm ? &x1 : h, (float)mx_config_alpha(c, l), &attn,
                        (float)mx_config_beta(c, l), err));
    MX_TRY(be->rmsnorm(be, &in->x2, h, &lw->post_norm, eps, err));
    MX_TRY(mx_moe_route(m, l, &in->x2, in->ids, in->weights, err));
    /* residual with alpha = beta = 0 would keep NaN; from_host keeps it backend-neutral */
    return be->from_host_f32(be, &in->out, ws->zeros, err);
}

int mx_model_layer_end(mx_model *m, int l, mx_tensor *h, const mx_moe_input *in, mx_error *err)
{
    const mx_config *c = &m->cfg;
    (void)l;
    return m->be->residual(m->be, h, c->postnorm ? &in->x2 : h, (float)c->alpha_mlp, &in->out, (float)c->beta_mlp,
                           err);
}

int mx_batch_check(const mx_model *m, int l0, int l1, const mx_batch *b, const mx_tensor *h, mx_error *err)
{
    if (l0 < 0 || l1 > m->cfg.num_hidden_layers || l0 > l1)
        return mx_fail(err, MX_EINVAL, "layer range [%d, %d) outside the model", l0, l1);
    if (b->n_tokens < 1 || h->shape[0] != b->n_tokens || h->shape[1] != m->cfg.hidden_size)
        return mx_fail(err, MX_EINVAL, "hidden states [%lld, %lld] do not match a batch of %d tokens",
                       (long long)h->shape[0], (long long)h->shape[1], b->n_tokens);
    int covered = 0;
    for (int i = 0; i < b->n_seqs; i++) {
        if (b->spans[i].start != covered || b->spans[i].len < 1)
            return mx_fail(err, MX_EINVAL, "batch span %d is not contiguous after the previous one", i);
        covered += b->spans[i].len;
    }
    if (covered != b->n_tokens)
        return mx_fail(err, MX_EINVAL, "batch spans cover %d tokens, batch has %d", covered, b->n_tokens);
    return 0;
}

int mx_model_run_layers_ws(mx_model *m, mx_workspace *ws, int l0, int l1, const mx_batch *b, mx_tensor *h,
                           const mx_moe_executor *moe, mx_error *err)
{
    MX_TRY(mx_batch_check(m, l0, l1, b, h, err));
    local_ctx lc = {m, ws};
    mx_moe_executor local = {local_moe_run, &lc};
    if (!moe)
        moe = &local;
    for (int l = l0; l < l1; l++) {
        mx_moe_input in;
        int rc = mx_model_layer_begin(m, ws, l, b, h, &in, err);
        if (!rc) rc = moe->run(moe->ctx, l, &in.x2, in.ids, in.weights, in.k, &in.out, err);
        if (!rc) rc = mx_model_layer_end(m, l, h, &in, err);
        if (rc) {
            mx_error_prefix(err, "layer %d", l);
            return rc;
        }
    }
    return 0;
}

int mx_model_run_layers(mx_model *m, int l0, int l1, const mx_batch *b, mx_tensor *h,
                        const mx_moe_executor *moe, mx_error *err)
{
    MX_TRY(mx_batch_check(m, l0, l1, b, h, err));
    mx_workspace tmp, *ws;
    bool own;
    if (!(ws = ws_take(m, b->n_tokens, b->n_seqs, &tmp, &own, err)))
        return err ? err->code : MX_ENOMEM;
    int rc = mx_model_run_layers_ws(m, ws, l0, l1, b, h, moe, err);
    ws_give(m, ws, own);
    return rc;
}

/* ---------------------------------------------------------------- embedding and head */

int mx_model_embed(mx_model *m, const int32_t *ids, int n, mx_tensor *h, mx_error *err)
{
    if (!m->embed.data)
        return mx_fail(err, MX_ENOTFOUND, "the embedding is not loaded on this model part");
    return m->be->embed(m->be, h, ids, n, &m->embed, err);
}

int mx_model_head_ws(mx_model *m, mx_workspace *ws, const mx_tensor *h, const int32_t *rows, int n, float *logits,
                     mx_error *err)
{
    if (!m->lm_head.data || !m->final_norm.data)
        return mx_fail(err, MX_ENOTFOUND, "the final norm and lm_head are not loaded on this model part");
    mx_backend *be = m->be;
    MX_TRY(mx_workspace_reserve(m, ws, 1, n, err));
    mx_tensor last = view2(&ws->last, 0, n, m->cfg.hidden_size), out = view2(&ws->logits, 0, n, m->cfg.vocab_size);
    MX_TRY(be->gather_rows(be, &last, h, rows, n, err));
    MX_TRY(be->rmsnorm(be, &last, &last, &m->final_norm, (float)m->cfg.rms_norm_eps, err));
    MX_TRY(be->matmul(be, &out, &last, &m->lm_head, err));
    return be->to_host_f32(be, logits, &out, err);
}

int mx_model_head(mx_model *m, const mx_tensor *h, const int32_t *rows, int n, float *logits, mx_error *err)
{
    if (!m->lm_head.data || !m->final_norm.data)
        return mx_fail(err, MX_ENOTFOUND, "the final norm and lm_head are not loaded on this model part");
    mx_workspace tmp, *ws;
    bool own;
    if (!(ws = ws_take(m, 1, n, &tmp, &own, err)))
        return err ? err->code : MX_ENOMEM;
    int rc = mx_model_head_ws(m, ws, h, rows, n, logits, err);
    ws_give(m, ws, own);
    return rc;
}

int mx_model_forward(mx_model *m, const mx_batch *b, const int32_t *tokens, float *logits, mx_error *err)
{
    if (b->n_tokens < 1)
        return mx_fail(err, MX_EINVAL, "empty batch");
    mx_workspace tmp, *ws;
    bool own;
    if (!(ws = ws_take(m, b->n_tokens, b->n_seqs, &tmp, &own, err)))
        return err ? err->code : MX_ENOMEM;
    mx_tensor h = view2(&ws->h, 0, b->n_tokens, m->cfg.hidden_size);
    int32_t *rows = ws->rows;
    int rc = mx_model_embed(m, tokens, b->n_tokens, &h, err);
    if (!rc) rc = mx_model_run_layers_ws(m, ws, 0, m->cfg.num_hidden_layers, b, &h, NULL, err);
    if (!rc) {
        /* the head's rows share room with the local MoE's groups, so they are set after */
        for (int i = 0; i < b->n_seqs; i++)
            rows[i] = b->spans[i].start + b->spans[i].len - 1;
        rc = mx_model_head_ws(m, ws, &h, rows, b->n_seqs, logits, err);
    }
    if (!rc) mx_batch_advance(b);
    ws_give(m, ws, own);
    return rc;
}
