/* weights.c - binds the tensors a load plan asks for, by their checkpoint names, with shapes
 * derived from the config. First every wanted tensor is listed (so the total is known for
 * progress), then each is mapped. It converts nothing, except that a plan may ask for int8
 * experts or attention projections: those are quantized once here into one block the weights own. */
#include "weights.h"

#include <stdarg.h>
#include <sys/mman.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


typedef struct request {
    char name[128];
    unsigned dtypes;
    int ndim;
    int64_t shape[2];
    mx_tensor *dst;
} request;

typedef struct request_list {
    request *r;
    int n, cap;
} request_list;

static int want(request_list *l, mx_tensor *dst, unsigned dtypes, int64_t rows, int64_t cols,
                mx_error *err, const char *fmt, ...) __attribute__((format(printf, 7, 8)));

/* cols == 0 means a 1-D tensor [rows]. */
static int want(request_list *l, mx_tensor *dst, unsigned dtypes, int64_t rows, int64_t cols,
                mx_error *err, const char *fmt, ...)
{
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 64;
        request *r = realloc(l->r, (size_t)cap * sizeof *r);
        if (!r)
            return mx_fail(err, MX_ENOMEM, "out of memory planning the weights");
        l->r = r;
        l->cap = cap;
    }
    request *q = &l->r[l->n++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(q->name, sizeof q->name, fmt, ap);
    va_end(ap);
    q->dtypes = dtypes;
    q->ndim = cols ? 2 : 1;
    q->shape[0] = rows;
    q->shape[1] = cols;
    q->dst = dst;
    return 0;
}

mx_load_plan mx_load_plan_full(const mx_config *cfg)
{
    return (mx_load_plan){.layer_begin = 0, .layer_end = cfg->num_hidden_layers, .attention = true,
                          .embed = true, .head = true, .all_experts = true};
}

static int plan_layer(const mx_config *c, const mx_load_plan *p, int l, mx_layer_weights *lw,
                      request_list *rl, mx_error *err)
{
    const int64_t h = c->hidden_size, inner = mx_config_attn_width(c), kv = mx_config_kv_width(c);
    const int64_t ff = c->intermediate_size, ne = c->num_local_experts;
    const char *pre = "model.layers";
    int rc = 0;
    lw->kind = (mx_attn_kind)c->attn_type[l];
    if (p->attention) {
        lw->has_attention = true;
        rc = want(rl, &lw->input_norm, MX_DTYPES_FLOAT, h, 0, err, "%s.%d.input_layernorm.weight", pre, l);
        rc = rc ? rc : want(rl, &lw->post_norm, MX_DTYPES_FLOAT, h, 0, err, "%s.%d.post_attention_layernorm.weight", pre, l);
        if (lw->kind == MX_ATTN_LIGHTNING) {
            rc = rc ? rc : want(rl, &lw->qkv, MX_DTYPES_FLOAT, 3 * inner, h, err, "%s.%d.self_attn.qkv_proj.weight", pre, l);
            rc = rc ? rc : want(rl, &lw->output_gate, MX_DTYPES_FLOAT, inner, h, err, "%s.%d.self_attn.output_gate.weight", pre, l);
            rc = rc ? rc : want(rl, &lw->attn_norm, MX_DTYPES_FLOAT, inner, 0, err, "%s.%d.self_attn.norm.weight", pre, l);
            rc = rc ? rc : want(rl, &lw->out_proj, MX_DTYPES_FLOAT, h, inner, err, "%s.%d.self_attn.out_proj.weight", pre, l);
        } else {
            rc = rc ? rc : want(rl, &lw->q_proj, MX_DTYPES_FLOAT, inner, h, err, "%s.%d.self_attn.q_proj.weight", pre, l);
            rc = rc ? rc : want(rl, &lw->k_proj, MX_DTYPES_FLOAT, kv, h, err, "%s.%d.self_attn.k_proj.weight", pre, l);
            rc = rc ? rc : want(rl, &lw->v_proj, MX_DTYPES_FLOAT, kv, h, err, "%s.%d.self_attn.v_proj.weight", pre, l);
            rc = rc ? rc : want(rl, &lw->o_proj, MX_DTYPES_FLOAT, h, inner, err, "%s.%d.self_attn.o_proj.weight", pre, l);
        }
        rc = rc ? rc : want(rl, &lw->router, MX_DTYPES_FLOAT, ne, h, err, "%s.%d.block_sparse_moe.gate.weight", pre, l);
    }
    for (int e = 0; e < ne && !rc; e++) {
        bool load = p->all_experts || (p->expert_mask && p->expert_mask[(size_t)l * (size_t)ne + (size_t)e]);
        if (!load)
            continue;
        if (!lw->experts && !(lw->experts = calloc((size_t)ne, sizeof *lw->experts)))
            return mx_fail(err, MX_ENOMEM, "out of memory");
        mx_expert_weights *x = &lw->experts[e];
        x->loaded = true;
        const char *ex = "block_sparse_moe.experts";
        rc = want(rl, &x->w1, MX_DTYPES_FLOAT, ff, h, err, "%s.%d.%s.%d.w1.weight", pre, l, ex, e);
        rc = rc ? rc : want(rl, &x->w3, MX_DTYPES_FLOAT, ff, h, err, "%s.%d.%s.%d.w3.weight", pre, l, ex, e);
        rc = rc ? rc : want(rl, &x->w2, MX_DTYPES_FLOAT, h, ff, err, "%s.%d.%s.%d.w2.weight", pre, l, ex, e);
    }
    return rc;
}

static int plan_all(mx_weights *w, const mx_load_plan *p, request_list *rl, mx_error *err)
{
    const mx_config *c = &w->cfg;
    const int64_t h = c->hidden_size, v = c->vocab_size;
    int rc = 0;
    if (p->embed)
        rc = want(rl, &w->embed, MX_DTYPES_FLOAT, v, h, err, "model.embed_tokens.weight");
    for (int l = p->layer_begin; l < p->layer_end && !rc; l++)
        rc = plan_layer(c, p, l, &w->layers[l], rl, err);
    if (p->head && !rc) {
        rc = want(rl, &w->final_norm, MX_DTYPES_FLOAT, h, 0, err, "model.norm.weight");
        rc = rc ? rc : want(rl, &w->lm_head, MX_DTYPES_FLOAT, v, h, err,
                            c->tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight");
    }
    return rc;
}

static int map_all(mx_weights *w, const request_list *rl, const mx_load_plan *p, mx_error *err)
{
    uint64_t total = 0;
    for (int i = 0; i < rl->n; i++) {
        const mx_st_entry *e;
        int rc = mx_checkpoint_entry(w->ckpt, rl->r[i].name, &e, NULL, err);
        if (rc)
            return rc;
        total += e->end - e->begin;
    }
    for (int i = 0; i < rl->n; i++) {
        const request *q = &rl->r[i];
        int rc = mx_checkpoint_get(w->ckpt, q->name, q->dtypes, q->ndim, q->shape, q->dst, err);
        if (rc)
            return rc;
        w->bytes_mapped += mx_tensor_nbytes(q->dst);
        if (p->progress)
            p->progress(p->progress_ctx, q->name, w->bytes_mapped, total);
    }
    return 0;
}

/* Pass 0 counts the bytes of t's int8 copy; pass 1 writes the copy at *mem and hands the bf16
 * pages it was made from back to the kernel (the mapping stays valid and would fault them in
 * again), so memory holds the int8 copy, not both. */
static int quantize_one(mx_tensor *t, int pass, int threads, char **mem, uint64_t *total, mx_error *err)
{
    uint64_t bytes = mx_quantized_i8_bytes(t->shape[0], t->shape[1]);
    if (pass == 0) {
        *total += bytes;
        return 0;
    }
    mx_tensor q;
    MX_TRY(mx_quantize_i8(t, *mem, threads, &q, err));
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t b = ((uintptr_t)t->data + (uintptr_t)page - 1) / (uintptr_t)page * (uintptr_t)page;
    uintptr_t end = ((uintptr_t)t->data + mx_tensor_nbytes(t)) / (uintptr_t)page * (uintptr_t)page;
    if (end > b)
        (void)madvise((void *)b, end - b, MADV_DONTNEED); /* advice only */
    *t = q;
    *mem += bytes;
    return 0;
}

/* Replaces every loaded expert matrix (expert_format int8) and attention projection
 * (attn_format int8) by an int8 copy, all in one owned block. */
static int quantize_weights(mx_weights *w, const mx_load_plan *p, mx_error *err)
{
    const int E = w->cfg.num_local_experts, th = p->quantize_threads;
    uint64_t total = 0;
    for (int pass = 0; pass < 2; pass++) {
        char *mem = w->quantized;
        for (int l = p->layer_begin; l < p->layer_end; l++) {
            mx_layer_weights *lw = &w->layers[l];
            if (p->attn_format == MX_WEIGHTS_INT8 && lw->has_attention) {
                mx_tensor *ts[] = {&lw->qkv, &lw->output_gate, &lw->out_proj, &lw->q_proj,
                                   &lw->k_proj, &lw->v_proj, &lw->o_proj};
                for (size_t i = 0; i < sizeof ts / sizeof *ts; i++)
                    if (ts[i]->data)
                        MX_TRY(quantize_one(ts[i], pass, th, &mem, &total, err));
            }
            mx_expert_weights *ex = lw->experts;
            for (int e = 0; p->expert_format == MX_WEIGHTS_INT8 && ex && e < E; e++) {
                if (!ex[e].loaded)
                    continue;
                MX_TRY(quantize_one(&ex[e].w1, pass, th, &mem, &total, err));
                MX_TRY(quantize_one(&ex[e].w3, pass, th, &mem, &total, err));
                MX_TRY(quantize_one(&ex[e].w2, pass, th, &mem, &total, err));
            }
        }
        if (pass == 0) {
            if (!total)
                return 0;
            if (!(w->quantized = aligned_alloc(64, (size_t)total)))
                return mx_fail(err, MX_ENOMEM, "out of memory for %.1f MiB of int8 weights",
                               (double)total / (1 << 20));
            w->bytes_quantized = total;
        }
    }
    return 0;
}

int mx_weights_load(const char *dir, const mx_load_plan *plan, mx_weights **out, mx_error *err)
{
    *out = NULL;
    mx_weights *w = calloc(1, sizeof *w);
    if (!w)
        return mx_fail(err, MX_ENOMEM, "out of memory");
    int rc = mx_checkpoint_open(dir, &w->ckpt, err);
    request_list rl = {0};
    if (rc)
        goto fail;
    w->cfg = *mx_checkpoint_config(w->ckpt);
    w->plan = *plan;
    w->plan.expert_mask = NULL;
    if (plan->layer_begin < 0 || plan->layer_begin > plan->layer_end ||
        plan->layer_end > w->cfg.num_hidden_layers) {
        rc = mx_fail(err, MX_ERANGE, "load plan: layer range [%d, %d) is outside the model's %d layers",
                     plan->layer_begin, plan->layer_end, w->cfg.num_hidden_layers);
        goto fail;
    }
    if (!(w->layers = calloc((size_t)w->cfg.num_hidden_layers, sizeof *w->layers))) {
        rc = mx_fail(err, MX_ENOMEM, "out of memory");
        goto fail;
    }
    for (int l = 0; l < w->cfg.num_hidden_layers; l++)
        w->layers[l].kind = (mx_attn_kind)w->cfg.attn_type[l];
    if ((rc = plan_all(w, plan, &rl, err)) || (rc = map_all(w, &rl, plan, err)))
        goto fail;
    if ((plan->expert_format == MX_WEIGHTS_INT8 || plan->attn_format == MX_WEIGHTS_INT8) &&
        (rc = quantize_weights(w, plan, err)))
        goto fail;
    free(rl.r);
    *out = w;
    return 0;
fail:
    free(rl.r);
    mx_weights_free(w);
    return rc;
}

void mx_weights_free(mx_weights *w)
{
    if (!w)
        return;
    if (w->layers)
        for (int l = 0; l < w->cfg.num_hidden_layers; l++)
            free(w->layers[l].experts);
    free(w->layers);
    free(w->quantized);
    mx_checkpoint_close(w->ckpt);
    free(w);
}
