/* plan.c - memory planning for S attention stages and E expert shards (see plan.h): weights,
 * KV cache, lightning state and workspace per stage and shard, sequences that fit, and the
 * smallest stage or shard count that would fit when a layout does not. */
#include "plan.h"

#include <stdlib.h>
#include <string.h>

#include "quantize.h"

static const char *const wnames[MX_WEIGHT_DTYPE_COUNT] = {"bf16", "int8"};

const char *mx_weight_dtype_name(mx_weight_dtype t)
{
    return (unsigned)t < MX_WEIGHT_DTYPE_COUNT ? wnames[t] : "?";
}

int mx_weight_dtype_parse(const char *s, const char *what, mx_weight_dtype *out, mx_error *err)
{
    for (int i = 0; i < MX_WEIGHT_DTYPE_COUNT; i++)
        if (s && strcmp(s, wnames[i]) == 0) {
            *out = (mx_weight_dtype)i;
            return 0;
        }
    return mx_fail(err, MX_EINVAL, "%s: unknown weight dtype \"%s\" (expected bf16 or int8)", what, s ? s : "");
}

uint64_t mx_weight_matrix_bytes(mx_weight_dtype t, int64_t rows, int64_t cols)
{
    /* int8: the loader's own layout arithmetic, so the plan cannot drift from what it allocates */
    return t == MX_WEIGHT_INT8 ? mx_quantized_i8_bytes(rows, cols) : (uint64_t)rows * (uint64_t)cols * 2;
}

mx_plan_options mx_plan_defaults(void)
{
    mx_plan_options o;
    memset(&o, 0, sizeof o);
    o.batch = 1;
    o.kv_dtype = MX_KV_BF16;
    o.attn_dtype = o.expert_dtype = MX_WEIGHT_BF16;
    o.device_bytes = MX_PLAN_DEFAULT_DEVICE_BYTES;
    o.devices_per_pod = 1;
    o.reserve_fraction = MX_PLAN_DEFAULT_RESERVE_FRACTION;
    o.max_step_tokens = MX_PLAN_DEFAULT_STEP_TOKENS;
    o.split = MX_SPLIT_LAYERS;
    return o;
}

void mx_plan_layer_split(int layers, int stages, int s, int *begin, int *end)
{
    *begin = s * layers / stages;
    *end = (s + 1) * layers / stages;
}

/* Attention-side weights of one layer: two norms (bf16), the router gate (fp32) and the
 * attention matrices of its kind. */
static uint64_t layer_weight_bytes(const mx_config *c, mx_weight_dtype t, int l)
{
    int64_t H = c->hidden_size, A = mx_config_attn_width(c), KV = mx_config_kv_width(c);
    uint64_t b = 2 * (uint64_t)H * 2 + (uint64_t)c->num_local_experts * (uint64_t)H * 4;
    if (c->attn_type[l] == MX_ATTN_LIGHTNING)
        b += mx_weight_matrix_bytes(t, 3 * A, H) + mx_weight_matrix_bytes(t, A, H) + (uint64_t)A * 2 +
             mx_weight_matrix_bytes(t, H, A);
    else
        b += mx_weight_matrix_bytes(t, A, H) + 2 * mx_weight_matrix_bytes(t, KV, H) + mx_weight_matrix_bytes(t, H, A);
    return b;
}

/* Per-layer sums the stage arithmetic needs, as prefix sums over layers. */
typedef struct layer_sums {
    uint64_t *weight; /* weight[l] = bytes of layers [0, l) */
    int *softmax;     /* softmax layers in [0, l) */
} layer_sums;

/* Everything about one stage [l0, l1); returns the bytes it needs for `batch` sequences. */
static uint64_t fill_stage(const mx_config *c, const mx_plan_options *o, const layer_sums *ls, int l0, int l1,
                           bool first, bool last, mx_plan_stage *st)
{
    int64_t H = c->hidden_size, A = mx_config_attn_width(c), V = c->vocab_size;
    int64_t T = o->max_step_tokens;
    memset(st, 0, sizeof *st);
    st->layer_begin = l0;
    st->layer_end = l1;
    st->softmax_layers = ls->softmax[l1] - ls->softmax[l0];
    st->lightning_layers = (l1 - l0) - st->softmax_layers;
    st->weight_bytes = ls->weight[l1] - ls->weight[l0];
    /* the embedding and lm_head stay bf16 whatever attn_dtype says (the loader quantizes only
     * the attention projections) */
    if (first)
        st->weight_bytes += mx_weight_matrix_bytes(MX_WEIGHT_BF16, V, H);
    if (last) /* final norm + lm_head; a tied head is the embedding, shared only when one stage has both */
        st->weight_bytes += (uint64_t)H * 2 + (c->tie_word_embeddings && first ? 0 : mx_weight_matrix_bytes(MX_WEIGHT_BF16, V, H));
    uint64_t page = mx_kv_page_bytes(o->kv_dtype, c->num_key_value_heads, c->head_dim);
    st->kv_bytes_per_token = (uint64_t)st->softmax_layers * page / MX_KV_PAGE_TOKENS;
    st->kv_bytes_per_seq = mx_kv_bytes_for_tokens(o->kv_dtype, c->num_key_value_heads, c->head_dim,
                                                  st->softmax_layers, o->context_tokens);
    /* two fp32 states per lightning layer: the current one and the buffer a step advances
     * into, which is the step's undo until the next step (attention-svc's atomic steps) */
    st->state_bytes_per_seq = 2 * (uint64_t)st->lightning_layers * (uint64_t)c->num_attention_heads *
                              (uint64_t)c->head_dim * (uint64_t)c->head_dim * 4;
    /* One step of T tokens in fp32: the incoming and outgoing hidden states, x1, attn, x2 and
     * the MoE output (5 hidden), q|k|v, o and the gate (5 attn_width), router logits. The last
     * stage adds logits plus the sampler's two vocab-sized work rows per sequence. */
    st->workspace_bytes = (uint64_t)T * (uint64_t)(5 * H + 5 * A + c->num_local_experts) * 4;
    if (last)
        st->workspace_bytes += (uint64_t)(o->batch < T ? o->batch : T) * (uint64_t)V * 4 * 3;
    st->pod_bytes = o->device_bytes * (uint64_t)o->devices_per_pod;
    st->reserve_bytes = (uint64_t)((double)st->pod_bytes * o->reserve_fraction);
    st->free_bytes = (int64_t)st->pod_bytes - (int64_t)st->reserve_bytes - (int64_t)st->weight_bytes -
                     (int64_t)st->workspace_bytes;
    uint64_t per_seq = st->kv_bytes_per_seq + st->state_bytes_per_seq;
    if (st->free_bytes < 0)
        st->seqs_fit = 0;
    else
        st->seqs_fit = per_seq ? (int64_t)((uint64_t)st->free_bytes / per_seq) : INT64_MAX;
    st->fits = st->seqs_fit >= o->batch;
    if (st->free_bytes < 0 || (uint64_t)st->free_bytes / (uint64_t)o->batch < st->state_bytes_per_seq) {
        st->max_context_tokens = 0;
    } else {
        uint64_t kv_budget = (uint64_t)st->free_bytes / (uint64_t)o->batch - st->state_bytes_per_seq;
        st->max_context_tokens = mx_kv_tokens_fit(o->kv_dtype, c->num_key_value_heads, c->head_dim,
                                                  st->softmax_layers, kv_budget);
    }
    return st->weight_bytes + st->workspace_bytes + (uint64_t)o->batch * per_seq;
}

/* Layer ranges by equal counts, or (MX_SPLIT_MEMORY) by the contiguous cut that minimises the
 * largest stage's need: dp[s][l] = the best largest need of s stages over layers [0, l). */
static int split_stages(const mx_config *c, const mx_plan_options *o, const layer_sums *ls, int S,
                        mx_plan_stage *st, mx_error *err)
{
    int L = c->num_hidden_layers;
    if (o->split == MX_SPLIT_LAYERS || S == 1) {
        for (int s = 0; s < S; s++) {
            int b, e;
            mx_plan_layer_split(L, S, s, &b, &e);
            fill_stage(c, o, ls, b, e, s == 0, s == S - 1, &st[s]);
        }
        return 0;
    }
    size_t cells = (size_t)(S + 1) * (size_t)(L + 1);
    uint64_t *dp = malloc(cells * sizeof *dp);
    int *from = malloc(cells * sizeof *from);
    if (!dp || !from) {
        free(dp);
        free(from);
        return mx_fail(err, MX_ENOMEM, "out of memory planning a split of %d layers into %d stages", L, S);
    }
    for (size_t i = 0; i < cells; i++)
        dp[i] = UINT64_MAX;
    dp[0] = 0;
    mx_plan_stage tmp;
    for (int s = 1; s <= S; s++)
        for (int l = s; l <= L - (S - s); l++) {
            if (s == S && l != L)
                continue;
            for (int p = s - 1; p < l; p++) {
                uint64_t prev = dp[(size_t)(s - 1) * (L + 1) + p];
                if (prev == UINT64_MAX)
                    continue;
                uint64_t need = fill_stage(c, o, ls, p, l, s == 1, s == S, &tmp);
                uint64_t worst = need > prev ? need : prev;
                if (worst < dp[(size_t)s * (L + 1) + l]) {
                    dp[(size_t)s * (L + 1) + l] = worst;
                    from[(size_t)s * (L + 1) + l] = p;
                }
            }
        }
    int l = L;
    for (int s = S; s >= 1; s--) {
        int p = from[(size_t)s * (L + 1) + l];
        fill_stage(c, o, ls, p, l, s == 1, s == S, &st[s - 1]);
        l = p;
    }
    free(dp);
    free(from);
    return 0;
}

static void fill_shard(const mx_config *c, const mx_plan_options *o, int E, int i, mx_plan_shard *sh)
{
    int64_t H = c->hidden_size, I = c->intermediate_size, NE = c->num_local_experts;
    memset(sh, 0, sizeof *sh);
    sh->expert_begin = (int)(i * NE / E);
    sh->expert_end = (int)((i + 1) * NE / E);
    int64_t n = sh->expert_end - sh->expert_begin;
    uint64_t per_expert = 2 * mx_weight_matrix_bytes(o->expert_dtype, I, H) + mx_weight_matrix_bytes(o->expert_dtype, H, I);
    sh->weight_bytes = (uint64_t)c->num_hidden_layers * (uint64_t)n * per_expert;
    /* Worst case every token of a step routes min(top-k, n) of its rows here: per row the
     * received x, gate, up, the output and the response buffer in fp32. */
    int64_t rows = (int64_t)o->max_step_tokens * (c->num_experts_per_tok < n ? c->num_experts_per_tok : n);
    sh->workspace_bytes = (uint64_t)rows * (uint64_t)(4 * H + 2 * I) * 4;
    sh->pod_bytes = o->device_bytes * (uint64_t)o->shard_devices;
    sh->reserve_bytes = (uint64_t)((double)sh->pod_bytes * o->reserve_fraction);
    sh->free_bytes = (int64_t)sh->pod_bytes - (int64_t)sh->reserve_bytes - (int64_t)sh->weight_bytes -
                     (int64_t)sh->workspace_bytes;
    sh->fits = sh->free_bytes >= 0;
}

static int validate(const mx_config *c, const mx_plan_options *o, mx_error *err)
{
    int L = c->num_hidden_layers, NE = c->num_local_experts;
    if (o->stages < 1 || o->stages > L)
        return mx_fail(err, MX_EINVAL, "stages: %d is not in [1, %d] (a stage owns at least one of the model's %d layers)",
                       o->stages, L, L);
    if (o->expert_shards < 1 || o->expert_shards > NE)
        return mx_fail(err, MX_EINVAL,
                       "expert shards: %d is not in [1, %d] (a shard owns at least one of the model's %d experts)",
                       o->expert_shards, NE, NE);
    if (o->context_tokens < 1)
        return mx_fail(err, MX_EINVAL, "context: %lld tokens; must be at least 1", (long long)o->context_tokens);
    if (o->batch < 1)
        return mx_fail(err, MX_EINVAL, "batch: %d; must be at least 1", o->batch);
    if (o->devices_per_pod < 1 || o->devices_per_pod > 4096 || o->shard_devices < 0 || o->shard_devices > 4096)
        return mx_fail(err, MX_EINVAL, "devices per pod: %d / %d; must be in [1, 4096]", o->devices_per_pod,
                       o->shard_devices);
    if (o->device_bytes == 0 || o->device_bytes > (1ull << 50))
        return mx_fail(err, MX_EINVAL, "device memory: %llu bytes; must be in [1, 2^50]",
                       (unsigned long long)o->device_bytes);
    if (!(o->reserve_fraction >= 0 && o->reserve_fraction < 1))
        return mx_fail(err, MX_EINVAL, "reserve: %g of each pod; must be in [0, 1)", o->reserve_fraction);
    if (o->max_step_tokens < 1)
        return mx_fail(err, MX_EINVAL, "max step tokens: %d; must be at least 1", o->max_step_tokens);
    if ((unsigned)o->kv_dtype >= MX_KV_DTYPE_COUNT || (unsigned)o->attn_dtype >= MX_WEIGHT_DTYPE_COUNT ||
        (unsigned)o->expert_dtype >= MX_WEIGHT_DTYPE_COUNT || (unsigned)o->split > MX_SPLIT_MEMORY)
        return mx_fail(err, MX_EINVAL, "plan options: unknown dtype or split");
    return 0;
}

static bool all_fit(const mx_plan_stage *st, int S)
{
    for (int s = 0; s < S; s++)
        if (!st[s].fits)
            return false;
    return true;
}

int mx_plan_make(const mx_config *c, const mx_plan_options *opt, mx_plan **out, mx_error *err)
{
    *out = NULL;
    MX_TRY(validate(c, opt, err));
    int L = c->num_hidden_layers, NE = c->num_local_experts;
    mx_plan *p = calloc(1, sizeof *p);
    layer_sums ls = {calloc((size_t)L + 1, sizeof *ls.weight), calloc((size_t)L + 1, sizeof *ls.softmax)};
    mx_plan_stage *scratch = calloc((size_t)L, sizeof *scratch);
    int rc = 0;
    if (!p || !ls.weight || !ls.softmax || !scratch ||
        !(p->stages = calloc((size_t)opt->stages, sizeof *p->stages)) ||
        !(p->shards = calloc((size_t)opt->expert_shards, sizeof *p->shards))) {
        rc = mx_fail(err, MX_ENOMEM, "out of memory for a plan");
        goto out;
    }
    p->opt = *opt;
    if (!p->opt.shard_devices)
        p->opt.shard_devices = p->opt.devices_per_pod;
    const mx_plan_options *o = &p->opt;
    for (int l = 0; l < L; l++) {
        ls.weight[l + 1] = ls.weight[l] + layer_weight_bytes(c, o->attn_dtype, l);
        ls.softmax[l + 1] = ls.softmax[l] + (c->attn_type[l] == MX_ATTN_SOFTMAX);
    }
    p->n_stages = o->stages;
    p->n_shards = o->expert_shards;
    if ((rc = split_stages(c, o, &ls, o->stages, p->stages, err)))
        goto out;
    for (int i = 0; i < o->expert_shards; i++)
        fill_shard(c, o, o->expert_shards, i, &p->shards[i]);

    int n_soft = ls.softmax[L];
    p->kv_bytes_per_token = (uint64_t)n_soft * mx_kv_page_bytes(o->kv_dtype, c->num_key_value_heads, c->head_dim) /
                            MX_KV_PAGE_TOKENS;
    p->kv_bytes_per_seq = mx_kv_bytes_for_tokens(o->kv_dtype, c->num_key_value_heads, c->head_dim, n_soft,
                                                 o->context_tokens);
    p->seqs_fit = INT64_MAX;
    p->max_context_tokens = INT64_MAX;
    p->stages_fit = true;
    for (int s = 0; s < p->n_stages; s++) {
        const mx_plan_stage *st = &p->stages[s];
        p->state_bytes_per_seq += st->state_bytes_per_seq;
        p->attn_weight_bytes += st->weight_bytes;
        if (st->seqs_fit < p->seqs_fit)
            p->seqs_fit = st->seqs_fit;
        if (st->max_context_tokens < p->max_context_tokens)
            p->max_context_tokens = st->max_context_tokens;
        p->stages_fit &= st->fits;
        int64_t need = (int64_t)(st->kv_bytes_per_seq + st->state_bytes_per_seq) * o->batch;
        if (!st->fits && need - st->free_bytes > p->stage_short_bytes)
            p->stage_short_bytes = need - st->free_bytes;
    }
    p->shards_fit = true;
    for (int i = 0; i < p->n_shards; i++) {
        p->expert_weight_bytes += p->shards[i].weight_bytes;
        p->shards_fit &= p->shards[i].fits;
        if (-p->shards[i].free_bytes > p->shard_short_bytes)
            p->shard_short_bytes = -p->shards[i].free_bytes;
    }
    p->devices = o->stages * o->devices_per_pod + o->expert_shards * o->shard_devices;
    p->context_over_positions = o->context_tokens > c->max_position_embeddings;
    p->fits = p->stages_fit && p->shards_fit;
    for (int S = o->stages + 1; !p->stages_fit && !p->min_stages && S <= L; S++) {
        if ((rc = split_stages(c, o, &ls, S, scratch, err)))
            goto out;
        if (all_fit(scratch, S))
            p->min_stages = S;
    }
    mx_plan_shard sh;
    for (int E = o->expert_shards + 1; !p->shards_fit && !p->min_shards && E <= NE; E++) {
        bool ok = true;
        for (int i = 0; i < E && ok; i++) {
            fill_shard(c, o, E, i, &sh);
            ok = sh.fits;
        }
        if (ok)
            p->min_shards = E;
    }
out:
    free(ls.weight);
    free(ls.softmax);
    free(scratch);
    if (rc)
        mx_plan_free(p);
    else
        *out = p;
    return rc;
}

void mx_plan_free(mx_plan *p)
{
    if (!p)
        return;
    free(p->stages);
    free(p->shards);
    free(p);
}
