/* test_plan.c - the memory planner (core/plan.h) on the released MiniMax-Text-01 config in
 * deploy/models: every expectation is worked out by hand in this file from the model's
 * numbers (KV bytes per token, 160 GiB at 4M tokens, 869.7 GB of bf16 experts, per-stage
 * softmax layer counts, sequences that fit), never taken from the planner's own output. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "core/config.h"
#include "core/plan.h"
#include "core/quantize.h"

#define TEXT01 "deploy/models/MiniMax-Text-01/config.json"
#define GIB 1073741824.0
#define M4 4194304 /* 4M tokens */

/* The released model's numbers (spec section 1) */
enum { H = 6144, I = 9216, L = 80, HEADS = 64, KVH = 8, HD = 128, NE = 32, V = 200064 };
static const int64_t A = HEADS * HD, KVW = KVH * HD; /* 8192, 1024 */

static mx_config load_text01(void)
{
    mx_config c;
    mx_error err = {0};
    if (mx_config_load(TEXT01, &c, &err))
        fail_msg("%s", err.msg);
    return c;
}

static mx_plan *make(const mx_config *c, const mx_plan_options *o)
{
    mx_plan *p = NULL;
    mx_error err = {0};
    if (mx_plan_make(c, o, &p, &err))
        fail_msg("%s", err.msg);
    return p;
}

static mx_plan_options opts(int S, int E, int64_t N)
{
    mx_plan_options o = mx_plan_defaults();
    o.stages = S;
    o.expert_shards = E;
    o.context_tokens = N;
    return o;
}

/* Hand-written bytes of the attention side (bf16 matrices and norms, fp32 router gate). */
static int64_t lightning_layer_bytes(void)
{
    return (3 * A * H + A * H + H * A) * 2 + A * 2 + 2 * H * 2 + NE * H * 4;
}
static int64_t softmax_layer_bytes(void)
{
    return (A * H + 2 * KVW * H + H * A) * 2 + 2 * H * 2 + NE * H * 4;
}

/* The file holds the released values (spec section 1) and 456,089,655,296 parameters. */
static void config_is_the_released_model(void **state)
{
    (void)state;
    mx_config c = load_text01();
    mx_error err = {0};
    assert_int_equal(mx_config_validate(&c, &err), 0);
    assert_string_equal(c.architecture, "MiniMaxText01ForCausalLM");
    assert_string_equal(c.model_type, "minimax_text_01");
    assert_int_equal(c.hidden_size, H);
    assert_int_equal(c.intermediate_size, I);
    assert_int_equal(c.num_hidden_layers, L);
    assert_int_equal(c.num_attention_heads, HEADS);
    assert_int_equal(c.num_key_value_heads, KVH);
    assert_int_equal(c.head_dim, HD);
    assert_int_equal(c.rotary_dim, 64);
    assert_true(c.rope_theta == 1e7);
    assert_int_equal(c.num_local_experts, NE);
    assert_int_equal(c.num_experts_per_tok, 2);
    assert_int_equal(c.vocab_size, V);
    assert_true(c.rms_norm_eps == 1e-5);
    assert_true(c.postnorm);
    assert_false(c.tie_word_embeddings);
    assert_int_equal(c.max_position_embeddings, 10240000);
    assert_true(c.alpha_full == 3.5565588200778455 && c.alpha_linear == 3.5565588200778455 &&
                c.alpha_mlp == 3.5565588200778455);
    assert_true(c.beta_full == 1.0 && c.beta_linear == 1.0 && c.beta_mlp == 1.0);
    for (int l = 0; l < L; l++)
        assert_int_equal(c.attn_type[l], (l + 1) % 8 == 0 ? MX_ATTN_SOFTMAX : MX_ATTN_LIGHTNING);
    assert_int_equal(mx_config_param_count(&c), 456089655296LL);
}

/* bf16 KV: 10 layers x 8 kv heads x 128 x (K, V) x 2 bytes = 40,960 B/token; 4M tokens =
 * 160 GiB. Experts: 80 x 32 x 3 x 6144 x 9216 x 2 = 869,730,877,440 B (869.7 GB). Lightning
 * state: 70 x 64 x 128 x 128 x 4 = 280 MiB, held twice on the stages (the current state and the
 * buffer a step advances into, its undo): 560 MiB. */
static void whole_model_numbers(void **state)
{
    (void)state;
    mx_config c = load_text01();
    mx_plan_options o = opts(8, 8, M4);
    mx_plan *p = make(&c, &o);
    assert_int_equal(p->kv_bytes_per_token, 40960);
    assert_int_equal(p->kv_bytes_per_seq, 160ull << 30);
    assert_int_equal(p->expert_weight_bytes, 869730877440ull);
    assert_int_equal(p->state_bytes_per_seq, 2 * (280ull << 20));
    int64_t attn = 70 * lightning_layer_bytes() + 10 * softmax_layer_bytes() + 2LL * V * H * 2 + H * 2;
    assert_int_equal(p->attn_weight_bytes, attn);
    assert_int_equal(p->devices, 16);
    mx_plan_free(p);

    /* fp8 and int8 pages add one fp32 scale per kv head for K and one for V:
     * 2 x 8 x 64 x 128 + 2 x 8 x 4 = 131,136 B per 64 tokens per layer. */
    o.kv_dtype = MX_KV_FP8_E4M3;
    p = make(&c, &o);
    assert_int_equal(p->kv_bytes_per_token, 10 * 131136 / 64);
    mx_plan_free(p);
    o.kv_dtype = MX_KV_F32;
    p = make(&c, &o);
    assert_int_equal(p->kv_bytes_per_token, 81920);
    mx_plan_free(p);

    /* int8 experts: one byte per weight and one fp32 scale per output row (w1, w3: 9216 rows,
     * w2: 6144; every part is already a multiple of 64 bytes). */
    o.kv_dtype = MX_KV_BF16;
    o.expert_dtype = MX_WEIGHT_INT8;
    p = make(&c, &o);
    assert_int_equal(p->expert_weight_bytes, 80ull * 32 * (3ull * H * I + (2ull * I + H) * 4));
    mx_plan_free(p);

    /* int8 attention: the projections take one byte per weight plus one fp32 scale per output
     * row (lightning qkv 3A rows, gate A, out_proj H; softmax q A, k and v KVW each, o H; all
     * multiples of 64 bytes); norms (bf16), router gates (fp32), embedding and lm_head (bf16)
     * stay as they were. */
    o.attn_dtype = MX_WEIGHT_INT8;
    p = make(&c, &o);
    int64_t light8 = (3 * A * H + A * H + H * A) + (3 * A + A + H) * 4 + A * 2 + 2 * H * 2 + NE * H * 4;
    int64_t soft8 = (A * H + 2 * KVW * H + H * A) + (A + 2 * KVW + H) * 4 + 2 * H * 2 + NE * H * 4;
    assert_int_equal(p->attn_weight_bytes, 70 * light8 + 10 * soft8 + 2LL * V * H * 2 + H * 2);
    assert_int_equal(p->expert_weight_bytes, 80ull * 32 * (3ull * H * I + (2ull * I + H) * 4));
    mx_plan_free(p);
}

/* The planner's int8 matrix size is the loader's (mx_quantized_i8_bytes): int8 values and
 * fp32 scales, each part padded to 64 bytes. 3 x 5: 15 -> 64, 12 -> 64; 100 x 7: 700 -> 704,
 * 400 -> 448. */
static void int8_matrix_bytes_match_the_loader(void **state)
{
    (void)state;
    assert_int_equal(mx_weight_matrix_bytes(MX_WEIGHT_INT8, 3, 5), 128);
    assert_int_equal(mx_weight_matrix_bytes(MX_WEIGHT_INT8, 100, 7), 704 + 448);
    assert_int_equal(mx_weight_matrix_bytes(MX_WEIGHT_BF16, 100, 7), 1400);
    assert_int_equal(mx_quantized_i8_bytes(100, 7), 704 + 448);
    assert_int_equal(mx_weight_matrix_bytes(MX_WEIGHT_INT8, H, I), mx_quantized_i8_bytes(H, I));
}

/* 8 stages of 10 layers ([10s, 10s+10), as mx cluster splits them): softmax layers 7, 15, ...
 * 79 fall 1,1,1,2,1,1,1,2 per stage, so a stage holds at most 32 GiB of KV at 4M tokens. */
static void eight_stages_at_4m(void **state)
{
    (void)state;
    mx_config c = load_text01();
    mx_plan_options o = opts(8, 8, M4);
    mx_plan *p = make(&c, &o);
    static const int soft[8] = {1, 1, 1, 2, 1, 1, 1, 2};
    double pod = 141e9, reserve = pod * 0.05;
    double work = 512.0 * (5 * H + 5 * A + NE) * 4;
    for (int s = 0; s < 8; s++) {
        const mx_plan_stage *st = &p->stages[s];
        assert_int_equal(st->layer_begin, 10 * s);
        assert_int_equal(st->layer_end, 10 * s + 10);
        assert_int_equal(st->softmax_layers, soft[s]);
        assert_int_equal(st->lightning_layers, 10 - soft[s]);
        assert_int_equal(st->kv_bytes_per_token, soft[s] * 4096);
        assert_int_equal(st->kv_bytes_per_seq, (uint64_t)soft[s] * (16ull << 30));
        assert_int_equal(st->state_bytes_per_seq, 2 * (uint64_t)(10 - soft[s]) * 64 * 128 * 128 * 4);
        double weights = (10 - soft[s]) * (double)lightning_layer_bytes() + soft[s] * (double)softmax_layer_bytes();
        double ws = work;
        if (s == 0)
            weights += (double)V * H * 2;               /* embedding */
        if (s == 7) {
            weights += (double)V * H * 2 + H * 2;       /* lm_head + final norm */
            ws += 1.0 * V * 4 * 3;                      /* logits + sampler rows, batch 1 */
        }
        assert_int_equal(st->weight_bytes, (uint64_t)weights);
        assert_int_equal(st->workspace_bytes, (uint64_t)ws);
        double free_b = pod - (double)(uint64_t)reserve - weights - ws;
        assert_true(st->free_bytes == (int64_t)free_b);
        double per_seq = soft[s] * 16 * GIB + (10 - soft[s]) * 2 * 4194304.0;
        assert_int_equal(st->seqs_fit, (int64_t)(free_b / per_seq));
        /* the longest context: whole 64-token pages of soft x 256 KiB in what is left after
         * the lightning states */
        int64_t pages = (int64_t)((free_b - (10 - soft[s]) * 2 * 4194304.0) / (soft[s] * 262144.0));
        assert_int_equal(st->max_context_tokens, pages * 64);
        assert_true(st->fits);
    }
    /* stage 3 and 7 (two softmax layers, about 120 GiB free) hold 3 sequences of 4M tokens */
    assert_int_equal(p->stages[3].seqs_fit, 3);
    assert_int_equal(p->seqs_fit, 3);
    /* 4 experts per shard: 80 x 4 x 3 x 6144 x 9216 x 2 = 108.7 GB, plus 512 x 2 rows of
     * (4 x 6144 + 2 x 9216) fp32 workspace */
    for (int i = 0; i < 8; i++) {
        const mx_plan_shard *sh = &p->shards[i];
        assert_int_equal(sh->expert_begin, 4 * i);
        assert_int_equal(sh->expert_end, 4 * i + 4);
        assert_int_equal(sh->weight_bytes, 80ull * 4 * 3 * H * I * 2);
        assert_int_equal(sh->workspace_bytes, 1024ull * (4 * H + 2 * I) * 4);
        assert_true(sh->fits);
    }
    assert_true(p->fits && p->stages_fit && p->shards_fit);
    assert_false(p->context_over_positions);
    mx_plan_free(p);

    /* batch 4 does not fit stage 3 (4 x 32 GiB > 120 GiB), but 10 stages of one softmax layer
     * each (16 GiB per sequence) do: 4 x 16 GiB + about 4.5 GiB of weights */
    o.batch = 4;
    p = make(&c, &o);
    assert_false(p->stages_fit);
    assert_false(p->fits);
    assert_true(p->shards_fit);
    assert_int_equal(p->min_stages, 10);
    assert_true(p->stage_short_bytes > 0);
    mx_plan_free(p);
}

/* One stage on one device cannot hold 160 GiB of KV; two stages of 40 layers (5 softmax
 * layers = 80 GiB, about 20 GiB of weights) on 141 GB each can. At 40M tokens one softmax
 * layer alone needs 1.6 TiB: no stage count fits. */
static void smallest_layout_that_fits(void **state)
{
    (void)state;
    mx_config c = load_text01();
    mx_plan_options o = opts(1, 8, M4);
    mx_plan *p = make(&c, &o);
    assert_false(p->stages_fit);
    assert_int_equal(p->stages[0].seqs_fit, 0);
    assert_int_equal(p->min_stages, 2);
    mx_plan_free(p);

    o.context_tokens = 40000000;
    p = make(&c, &o);
    assert_false(p->stages_fit);
    assert_int_equal(p->min_stages, 0);
    /* the single stage lacks at least 10 layers x 40M tokens x 4 KiB less the whole pod */
    assert_true(p->stage_short_bytes > (int64_t)(10.0 * 40000000 * 4096 - 141e9));
    assert_true(p->context_over_positions); /* max_position_embeddings is 10,240,000 */
    mx_plan_free(p);
    o.context_tokens = 10240000;
    p = make(&c, &o);
    assert_false(p->context_over_positions);
    mx_plan_free(p);
    o.context_tokens = 10240001;
    p = make(&c, &o);
    assert_true(p->context_over_positions);
    mx_plan_free(p);

    /* Experts: 27.18 GB each over 80 layers; a 141 GB pod less 5 % holds 4 (108.7 GB), not 5
     * (135.9 GB). 4 shards of 8 and 7 shards of 4-5 fail; 8 shards of 4 is the smallest fit. */
    o = opts(8, 4, M4);
    p = make(&c, &o);
    assert_false(p->shards_fit);
    assert_int_equal(p->min_shards, 8);
    assert_true(p->stages_fit);
    mx_plan_free(p);
    o.expert_shards = 7;
    p = make(&c, &o);
    assert_false(p->shards_fit);
    assert_int_equal(p->min_shards, 8);
    for (int i = 0; i < 7; i++)
        assert_int_equal(p->shards[i].expert_end - p->shards[i].expert_begin, (i + 1) * 32 / 7 - i * 32 / 7);
    mx_plan_free(p);
    /* Two devices per shard hold 8 experts (217 GB of 268 GB) */
    o.expert_shards = 4;
    o.shard_devices = 2;
    p = make(&c, &o);
    assert_true(p->shards_fit);
    assert_int_equal(p->devices, 8 + 4 * 2);
    mx_plan_free(p);
}

/* The memory split keeps ranges contiguous and covering, and its largest stage never needs
 * more than the equal-layer split's. */
static void memory_split(void **state)
{
    (void)state;
    mx_config c = load_text01();
    for (int S = 2; S <= 12; S++) {
        mx_plan_options o = opts(S, 8, M4);
        double worst[2] = {0, 0};
        for (int m = 0; m < 2; m++) {
            o.split = m ? MX_SPLIT_MEMORY : MX_SPLIT_LAYERS;
            mx_plan *p = make(&c, &o);
            int next = 0, soft = 0;
            for (int s = 0; s < S; s++) {
                const mx_plan_stage *st = &p->stages[s];
                assert_int_equal(st->layer_begin, next);
                assert_true(st->layer_end > st->layer_begin);
                next = st->layer_end;
                soft += st->softmax_layers;
                double need = (double)st->weight_bytes + (double)st->workspace_bytes +
                              (double)st->kv_bytes_per_seq + (double)st->state_bytes_per_seq;
                if (need > worst[m])
                    worst[m] = need;
            }
            assert_int_equal(next, L);
            assert_int_equal(soft, 10);
            mx_plan_free(p);
        }
        assert_true(worst[1] <= worst[0]);
    }
}

/* A tied head is the embedding: one stage stores it once, two stages each keep a copy. */
static void tied_embeddings(void **state)
{
    (void)state;
    mx_config c = load_text01();
    c.tie_word_embeddings = true;
    mx_plan_options o = opts(1, 1, 1024);
    mx_plan *p = make(&c, &o);
    int64_t layers = 70 * lightning_layer_bytes() + 10 * softmax_layer_bytes();
    assert_int_equal(p->stages[0].weight_bytes, layers + (int64_t)V * H * 2 + H * 2);
    mx_plan_free(p);
    o.stages = 2;
    p = make(&c, &o);
    assert_int_equal(p->attn_weight_bytes, layers + 2LL * V * H * 2 + H * 2);
    mx_plan_free(p);
}

static void bad_options(void **state)
{
    (void)state;
    mx_config c = load_text01();
    struct {
        mx_plan_options o;
        const char *needle;
    } cases[] = {
        {opts(0, 8, 100), "stages: 0 is not in [1, 80]"},
        {opts(81, 8, 100), "stages: 81 is not in [1, 80]"},
        {opts(8, 0, 100), "expert shards: 0 is not in [1, 32]"},
        {opts(8, 33, 100), "expert shards: 33 is not in [1, 32]"},
        {opts(8, 8, 0), "context: 0 tokens"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        mx_plan *p = (mx_plan *)1;
        mx_error err = {0};
        assert_int_equal(mx_plan_make(&c, &cases[i].o, &p, &err), MX_EINVAL);
        assert_null(p);
        if (!strstr(err.msg, cases[i].needle))
            fail_msg("case %zu: \"%s\" lacks \"%s\"", i, err.msg, cases[i].needle);
    }
    mx_plan_options o = opts(8, 8, 100);
    o.batch = 0;
    mx_plan *p = NULL;
    mx_error err = {0};
    assert_int_equal(mx_plan_make(&c, &o, &p, &err), MX_EINVAL);
    o = opts(8, 8, 100);
    o.reserve_fraction = 1.0;
    assert_int_equal(mx_plan_make(&c, &o, &p, &err), MX_EINVAL);
    mx_weight_dtype t;
    assert_int_equal(mx_weight_dtype_parse("int8", "x", &t, &err), 0);
    assert_int_equal(t, MX_WEIGHT_INT8);
    assert_int_equal(mx_weight_dtype_parse("fp4", "--expert-dtype", &t, &err), MX_EINVAL);
    assert_non_null(strstr(err.msg, "--expert-dtype: unknown weight dtype \"fp4\""));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(config_is_the_released_model),
        cmocka_unit_test(whole_model_numbers),
        cmocka_unit_test(int8_matrix_bytes_match_the_loader),
        cmocka_unit_test(eight_stages_at_4m),
        cmocka_unit_test(smallest_layout_that_fits),
        cmocka_unit_test(memory_split),
        cmocka_unit_test(tied_embeddings),
        cmocka_unit_test(bad_options),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
