/* model_writer.c - random-weight models in the real checkpoint layout: every tensor drawn from
 * its own deterministic stream (seed, tensor name), scaled like the golden fixtures so that
 * activations stay sane, split by size over three shards and written in chunks.
 * It must not depend on the forward pass; no global state (the PRNG lives in the writer). */
#include "model_writer.h"
#include "rng.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "safetensors.h"

#define N_SHARDS 3

typedef struct preset {
    const char *name;
    int hidden, heads, head_dim, kv_heads, rotary, layers, softmax_every, experts, top_k, inter, vocab;
} preset;

/* softmax_every k: layer l is a softmax layer when (l+1) % k == 0; 0 = lightning only. */
static const preset presets[] = {
    {"tiny", 128, 4, 32, 2, 16, 8, 4, 4, 2, 256, 512},
    {"small", 256, 8, 32, 2, 16, 16, 8, 8, 2, 512, 2048},
    {"medium", 1024, 16, 64, 4, 32, 8, 4, 16, 2, 2048, 8192},
    {"layer", 6144, 64, 128, 8, 64, 1, 0, 32, 2, 9216, 1024},
    /* Benchmark models (bench/), made by name but not listed: "long" has the real 7:1 layer
     * pattern and GQA group of 8 at a small width, for long-context prefill and the cluster;
     * "llamacmp" is all softmax attention, the shape of a llama.cpp comparison model;
     * "longnarrow" is "long" at a quarter of its width (2 heads sharing 1 KV head), so that a
     * 1,048,576-token prompt runs through a cluster in under an hour on 2 cores. */
    {"long", 512, 8, 64, 1, 32, 8, 8, 4, 2, 512, 4096},
    {"longnarrow", 128, 2, 64, 1, 32, 8, 8, 4, 2, 256, 4096},
    {"llamacmp", 512, 8, 64, 2, 64, 4, 1, 8, 2, 512, 32000},
};
static const char *const preset_names[] = {"tiny", "small", "medium", "layer", NULL};

const char *const *mx_model_presets(void)
{
    return preset_names;
}

int mx_model_preset_config(const char *name, mx_config *c, mx_error *err)
{
    const preset *p = NULL;
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++)
        if (strcmp(presets[i].name, name) == 0)
            p = &presets[i];
    if (!p)
        return mx_fail(err, MX_ENOTFOUND, "unknown model preset \"%s\" (known: tiny, small, medium, layer)", name);
    memset(c, 0, sizeof *c);
    snprintf(c->architecture, sizeof c->architecture, "MiniMaxText01ForCausalLM");
    snprintf(c->model_type, sizeof c->model_type, "minimax_text_01");
    snprintf(c->hidden_act, sizeof c->hidden_act, "silu");
    c->hidden_size = p->hidden;
    c->intermediate_size = p->inter;
    c->num_hidden_layers = p->layers;
    c->num_attention_heads = p->heads;
    c->num_key_value_heads = p->kv_heads;
    c->head_dim = p->head_dim;
    c->rotary_dim = p->rotary;
    c->rope_theta = 10000000.0;
    for (int l = 0; l < p->layers; l++)
        c->attn_type[l] = p->softmax_every && (l + 1) % p->softmax_every == 0 ? MX_ATTN_SOFTMAX : MX_ATTN_LIGHTNING;
    c->num_local_experts = p->experts;
    c->num_experts_per_tok = p->top_k;
    c->rms_norm_eps = 1e-5;
    c->vocab_size = p->vocab;
    c->postnorm = true;
    /* The released model's alpha for every sublayer (spec section 1). */
    c->alpha_linear = c->alpha_full = c->alpha_mlp = 3.5565588200778455;
    c->beta_linear = c->beta_full = c->beta_mlp = 1.0;
    c->max_position_embeddings = 10240000;
    c->bos_token_id = c->eos_token_id = -1;
    return 0;
}

/* ---- deterministic random numbers: splitmix64 seeds a xoshiro256** stream per tensor ---- */

static void rng_seed(mx_rng *r, uint64_t seed, const char *name)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a of the name, so each tensor has its own stream */
    for (const char *p = name; *p; p++)
        h = (h ^ (unsigned char)*p) * 0x100000001b3ull;
    mx_rng_seed(r, seed ^ h);
}

/* Approximately standard normal: the sum of four 16-bit uniforms (Irwin-Hall), rescaled to unit
 * variance. One generator call per number keeps multi-GB models quick to write. */
static float rng_normal(mx_rng *r)
{
    uint64_t x = mx_rng_next(r);
    float s = 0;
    for (int i = 0; i < 4; i++)
        s += ((float)((x >> (16 * i)) & 0xffff) + 0.5f) * (1.0f / 65536.0f);
    return (s - 2.0f) * 1.7320508f;
}

/* ---- the tensor list ---- */

typedef struct spec {
    char name[112];
    mx_dtype dtype;
    int ndim;
    int64_t shape[2];
    float mean, std; /* value = mean + std * normal */
    int shard;
    int64_t hot_rows; /* rows [0, hot_rows) multiplied by hot_scale (the skewed router gate) */
    float hot_scale;
} spec;

typedef struct spec_list {
    spec *s;
    int n, cap;
} spec_list;

static int add(spec_list *l, const char *name, mx_dtype dt, int64_t rows, int64_t cols, float mean, float std)
{
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 256;
        spec *s = realloc(l->s, (size_t)cap * sizeof *s);
        if (!s)
            return MX_ENOMEM;
        l->s = s;
        l->cap = cap;
    }
    spec *s = &l->s[l->n++];
    snprintf(s->name, sizeof s->name, "%s", name);
    s->dtype = dt;
    s->ndim = cols ? 2 : 1;
    s->shape[0] = rows;
    s->shape[1] = cols;
    s->mean = mean;
    s->std = std;
    s->shard = 0;
    s->hot_rows = 0;
    s->hot_scale = 1;
    return 0;
}

/* Scales: linear weights N(0, 1/fan_in) keep a unit-RMS input at unit RMS, so each branch ends up
 * near a quarter of the alpha-scaled residual (alpha ~3.56), as in the golden fixtures; norm
 * weights are close to 1. */
static int build_specs(const mx_config *c, double gate_skew, int hot_experts, spec_list *l)
{
    const int64_t h = c->hidden_size, inner = mx_config_attn_width(c), kv = mx_config_kv_width(c);
    const int64_t ff = c->intermediate_size, v = c->vocab_size;
    const float sh = 1.0f / sqrtf((float)h), si = 1.0f / sqrtf((float)inner), sf = 1.0f / sqrtf((float)ff);
    const mx_dtype B = MX_DTYPE_BF16;
    char n[112];
    int rc = add(l, "model.embed_tokens.weight", B, v, h, 0, 1);
    for (int i = 0; i < c->num_hidden_layers && !rc; i++) {
#define ADD(suffix, dt, r, cols, mean, std)                                   \
    do {                                                                      \
        snprintf(n, sizeof n, "model.layers.%d.%s", i, suffix);               \
        if (!rc)                                                              \
            rc = add(l, n, dt, r, cols, mean, std);                           \
    } while (0)
        ADD("input_layernorm.weight", B, h, 0, 1, 0.02f);
        if (c->attn_type[i] == MX_ATTN_LIGHTNING) {
            ADD("self_attn.qkv_proj.weight", B, 3 * inner, h, 0, sh);
            ADD("self_attn.output_gate.weight", B, inner, h, 0, sh);
            ADD("self_attn.norm.weight", B, inner, 0, 1, 0.02f);
            ADD("self_attn.out_proj.weight", B, h, inner, 0, si);
        } else {
            ADD("self_attn.q_proj.weight", B, inner, h, 0, sh);
            ADD("self_attn.k_proj.weight", B, kv, h, 0, sh);
            ADD("self_attn.v_proj.weight", B, kv, h, 0, sh);
            ADD("self_attn.o_proj.weight", B, h, inner, 0, si);
        }
        ADD("post_attention_layernorm.weight", B, h, 0, 1, 0.02f);
        ADD("block_sparse_moe.gate.weight", MX_DTYPE_F32, c->num_local_experts, h, 0, sh);
        if (!rc && gate_skew != 1) { /* the same draws, hot experts' rows scaled after */
            l->s[l->n - 1].hot_rows = hot_experts;
            l->s[l->n - 1].hot_scale = (float)gate_skew;
        }
        for (int e = 0; e < c->num_local_experts; e++) {
            char ex[64];
            snprintf(ex, sizeof ex, "block_sparse_moe.experts.%d.w1.weight", e);
            ADD(ex, B, ff, h, 0, sh);
            snprintf(ex, sizeof ex, "block_sparse_moe.experts.%d.w2.weight", e);
            ADD(ex, B, h, ff, 0, sf);
            snprintf(ex, sizeof ex, "block_sparse_moe.experts.%d.w3.weight", e);
            ADD(ex, B, ff, h, 0, sh);
        }
#undef ADD
    }
    rc = rc ? rc : add(l, "model.norm.weight", B, h, 0, 1, 0.02f);
    rc = rc ? rc : add(l, "lm_head.weight", B, v, h, 0, sh);
    return rc;
}

static uint64_t spec_bytes(const spec *s)
{
    uint64_t n = mx_dtype_size(s->dtype);
    for (int d = 0; d < s->ndim; d++)
        n *= (uint64_t)s->shape[d];
    return n;
}

/* ---- streaming fill ---- */

typedef struct fill_ctx {
    const spec *const *order; /* the shard's specs in write order */
    uint64_t seed;
    int item;
    mx_rng r;
} fill_ctx;

static int fill(void *vctx, int item, size_t offset, void *buf, size_t len, mx_error *err)
{
    fill_ctx *fc = vctx;
    const spec *s = fc->order[item];
    (void)err;
    if (offset == 0 || item != fc->item) { /* chunks come in order, so one stream per tensor */
        rng_seed(&fc->r, fc->seed, s->name);
        fc->item = item;
    }
    size_t n = len / mx_dtype_size(s->dtype);
    if (s->dtype == MX_DTYPE_F32) {
        float *f = buf;
        size_t first = offset / sizeof(float), hot_end = (size_t)(s->hot_rows * s->shape[1]);
        for (size_t i = 0; i < n; i++) {
            f[i] = s->mean + s->std * rng_normal(&fc->r);
            if (first + i < hot_end)
                f[i] *= s->hot_scale;
        }
    } else {
        uint16_t *b = buf;
        for (size_t i = 0; i < n; i++)
            b[i] = mx_f32_to_bf16(s->mean + s->std * rng_normal(&fc->r));
    }
    return 0;
}

static void shard_name(char *buf, size_t cap, int k)
{
    snprintf(buf, cap, "model-%05d-of-%05d.safetensors", k, N_SHARDS);
}

static int write_shard(const char *dir, int k, const spec_list *l, uint64_t seed, mx_error *err)
{
    const spec **order = malloc((size_t)l->n * sizeof *order);
    mx_st_write_item *items = calloc((size_t)l->n, sizeof *items);
    if (!order || !items) {
        free(order);
        free(items);
        return mx_fail(err, MX_ENOMEM, "out of memory");
    }
    int n = 0;
    for (int i = 0; i < l->n; i++) {
        if (l->s[i].shard != k)
            continue;
        order[n] = &l->s[i];
        items[n] = (mx_st_write_item){.name = l->s[i].name, .dtype = l->s[i].dtype, .ndim = l->s[i].ndim};
        memcpy(items[n].shape, l->s[i].shape, sizeof l->s[i].shape);
        n++;
    }
    char name[64], path[4096];
    shard_name(name, sizeof name, k);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    fill_ctx fc = {.order = order, .seed = seed, .item = -1};
    int rc = mx_st_write_stream(path, items, n, fill, &fc, err);
    free(order);
    free(items);
    return rc;
}

static int write_text(const char *path, const char *text, mx_error *err)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return mx_fail(err, MX_EIO, "%s: cannot create: %s", path, strerror(errno));
    int ok = fputs(text, f) >= 0 && fputc('\n', f) != EOF;
    if (fclose(f) != 0 || !ok)
        return mx_fail(err, MX_EIO, "%s: write failed", path);
    return 0;
}

static int write_index(const char *dir, const spec_list *l, uint64_t total, mx_error *err)
{
    json_t *root = json_object(), *meta = json_object(), *map = json_object();
    json_object_set_new(meta, "total_size", json_integer((json_int_t)total));
    json_object_set_new(root, "metadata", meta);
    for (int i = 0; i < l->n; i++) {
        char name[64];
        shard_name(name, sizeof name, l->s[i].shard);
        json_object_set_new(map, l->s[i].name, json_string(name));
    }
    json_object_set_new(root, "weight_map", map);
    char *text = json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(root);
    if (!text)
        return mx_fail(err, MX_ENOMEM, "out of memory");
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    int rc = write_text(path, text, err);
    free(text);
    return rc;
}

int mx_make_model_config(const mx_config *cfg, const char *dir, uint64_t seed, mx_error *err)
{
    return mx_make_model_skewed(cfg, dir, seed, 1.0, 0, err);
}

int mx_make_model_skewed(const mx_config *cfg, const char *dir, uint64_t seed, double gate_skew, int hot_experts,
                         mx_error *err)
{
    int rc = mx_config_validate(cfg, err);
    if (rc)
        return rc;
    if (!(gate_skew > 0 && gate_skew <= 1000) || hot_experts < 0 || hot_experts > cfg->num_local_experts)
        return mx_fail(err, MX_EINVAL, "gate skew %g with %d hot experts: need 0 < skew <= 1000, 0 <= hot <= %d",
                       gate_skew, hot_experts, cfg->num_local_experts);
    if (strlen(dir) > 3000)
        return mx_fail(err, MX_EINVAL, "output directory name is too long");
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return mx_fail(err, MX_EIO, "%s: cannot create directory: %s", dir, strerror(errno));
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    char *text = mx_config_to_json(cfg);
    if (!text)
        return mx_fail(err, MX_ENOMEM, "out of memory");
    rc = write_text(path, text, err);
    free(text);
    if (rc)
        return rc;
    spec_list l = {0};
    if (build_specs(cfg, gate_skew, hot_experts, &l)) {
        free(l.s);
        return mx_fail(err, MX_ENOMEM, "out of memory");
    }
    /* Split by size: a tensor goes to the shard its first byte falls in, so expert lists of some
     * layers span two shards, as in the real checkpoint. */
    uint64_t total = 0, start = 0;
    for (int i = 0; i < l.n; i++)
        total += spec_bytes(&l.s[i]);
    for (int i = 0; i < l.n; i++) {
        int k = (int)((start * N_SHARDS) / total);
        l.s[i].shard = k < N_SHARDS ? k : N_SHARDS - 1;
        start += spec_bytes(&l.s[i]);
    }
    rc = write_index(dir, &l, total, err);
    for (int k = 0; k < N_SHARDS && !rc; k++)
        rc = write_shard(dir, k, &l, seed, err);
    free(l.s);
    return rc;
}

int mx_make_model(const char *preset_name, const char *out_dir, uint64_t seed, mx_error *err)
{
    mx_config cfg;
    int rc = mx_model_preset_config(preset_name, &cfg, err);
    return rc ? rc : mx_make_model_config(&cfg, out_dir, seed, err);
}
