/* cmd_info.c - `mx info --model DIR [--kv-dtype T] [--attn-dtype T] [--expert-dtype T]`: the
 * config and what serving it costs: parameters, weight bytes (total, per layer kind, per
 * expert; bf16 and as loaded in the chosen weight dtypes), KV bytes per token in the chosen KV
 * dtype's page format, lightning state per sequence. Reads only config.json, so a directory
 * without weights (deploy/models/...) works. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli_util.h"
#include "commands.h"
#include "core/config.h"
#include "core/kv_cache.h"
#include "core/plan.h"

static double gib(double bytes)
{
    return bytes / (1024.0 * 1024.0 * 1024.0);
}

int mx_cmd_info(int argc, char **argv)
{
    const char *model_dir = NULL;
    mx_kv_dtype kv_dtype = MX_KV_BF16;
    mx_weight_dtype attn_dt = MX_WEIGHT_BF16, expert_dt = MX_WEIGHT_BF16;
    mx_error err = {0};
    static const struct option opts[] = {{"model", required_argument, 0, 'm'}, {"kv-dtype", required_argument, 0, 'k'},
                                         {"attn-dtype", required_argument, 0, 'a'},
                                         {"expert-dtype", required_argument, 0, 'x'},
                                         {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    static const char usage[] = "usage: mx info --model DIR [--kv-dtype bf16|f32|fp8_e4m3|int8] [--attn-dtype bf16|int8]\n"
                                "               [--expert-dtype bf16|int8]\n";
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'm') {
            model_dir = optarg;
        } else if (c == 'k') {
            if (mx_kv_dtype_parse(optarg, "--kv-dtype", &kv_dtype, &err)) {
                fprintf(stderr, "mx info: %s\n", err.msg);
                return 2;
            }
        } else if (c == 'a' || c == 'x') {
            if (mx_weight_dtype_parse(optarg, c == 'a' ? "--attn-dtype" : "--expert-dtype",
                                      c == 'a' ? &attn_dt : &expert_dt, &err)) {
                fprintf(stderr, "mx info: %s\n", err.msg);
                return 2;
            }
        } else {
            fputs(usage, c == 'h' ? stdout : stderr);
            return c == 'h' ? 0 : 2;
        }
    }
    if (!model_dir || optind != argc) {
        fputs(usage, stderr);
        return 2;
    }
    char path[4096];
    mx_config config;
    snprintf(path, sizeof path, "%s/config.json", model_dir);
    if (mx_config_load(path, &config, &err)) {
        fprintf(stderr, "mx info: %s\n", err.msg);
        return 1;
    }
    const mx_config *cfg = &config;
    int L = cfg->num_hidden_layers, n_soft = 0;
    for (int l = 0; l < L; l++)
        n_soft += cfg->attn_type[l] == MX_ATTN_SOFTMAX;
    double H = cfg->hidden_size, A = mx_config_attn_width(cfg), KV = mx_config_kv_width(cfg),
           I = cfg->intermediate_size, E = cfg->num_local_experts, V = cfg->vocab_size;
    double lightning_params = 3 * A * H + A * H + A + H * A, softmax_params = A * H + 2 * KV * H + H * A;
    double expert_params = 3 * I * H, params = (double)mx_config_param_count(cfg);
    double active = (L - n_soft) * lightning_params + n_soft * softmax_params +
                    L * (2 * H + E * H + cfg->num_experts_per_tok * expert_params);
    printf("architecture        %s (%s)\n", cfg->architecture, cfg->model_type);
    printf("hidden / inner      %d / %d (%d heads x %d, %d kv heads, rotary %d)\n", cfg->hidden_size, (int)A,
           cfg->num_attention_heads, cfg->head_dim, cfg->num_key_value_heads, cfg->rotary_dim);
    printf("layers              %d (%d lightning, %d softmax)\n", L, L - n_soft, n_soft);
    printf("experts             %d x %d wide, top-%d\n", cfg->num_local_experts, cfg->intermediate_size,
           cfg->num_experts_per_tok);
    printf("vocab               %d\n", cfg->vocab_size);
    printf("rope_theta          %.0f, rms_norm_eps %g, postnorm %s\n", cfg->rope_theta, cfg->rms_norm_eps,
           cfg->postnorm ? "true" : "false");
    printf("alpha/beta          linear %g/%g  full %g/%g  mlp %g/%g\n", cfg->alpha_linear, cfg->beta_linear,
           cfg->alpha_full, cfg->beta_full, cfg->alpha_mlp, cfg->beta_mlp);
    printf("parameters          %.0f total, %.0f active per token (without embedding and lm_head)\n", params,
           active);
    printf("weights (bf16)      %.2f GiB total; embedding + lm_head %.2f GiB\n", gib(params * 2 + L * E * H * 2),
           gib(2 * V * H * 2));
    printf("  per lightning layer attention %.3f GiB, per softmax layer attention %.3f GiB\n",
           gib(lightning_params * 2), gib(softmax_params * 2));
    printf("  per expert        %.3f GiB; all experts of one layer %.2f GiB\n", gib(expert_params * 2),
           gib(E * expert_params * 2));
    /* As loaded: attention projections in attn_dtype, experts in expert_dtype (int8: one byte
     * per weight + one fp32 scale per row, the loader's layout); norms bf16, router gates fp32,
     * embedding and lm_head bf16 whatever is chosen. */
    int64_t h = cfg->hidden_size, a = (int64_t)A, kv = (int64_t)KV, ff = cfg->intermediate_size;
    double light_w = (double)(mx_weight_matrix_bytes(attn_dt, 3 * a, h) + mx_weight_matrix_bytes(attn_dt, a, h) +
                              mx_weight_matrix_bytes(attn_dt, h, a)) + A * 2;
    double soft_w = (double)(mx_weight_matrix_bytes(attn_dt, a, h) + 2 * mx_weight_matrix_bytes(attn_dt, kv, h) +
                             mx_weight_matrix_bytes(attn_dt, h, a));
    double expert_w = (double)(2 * mx_weight_matrix_bytes(expert_dt, ff, h) + mx_weight_matrix_bytes(expert_dt, h, ff));
    double embed_w = V * H * 2 * (cfg->tie_word_embeddings ? 1 : 2) + H * 2;
    double loaded = (L - n_soft) * light_w + n_soft * soft_w + L * (2 * H * 2 + E * H * 4 + E * expert_w) + embed_w;
    printf("weights (attn %s, experts %s) %.2f GiB total: per lightning layer attention %.3f GiB, per\n"
           "                    softmax layer attention %.3f GiB, per expert %.3f GiB\n",
           mx_weight_dtype_name(attn_dt), mx_weight_dtype_name(expert_dt), gib(loaded), gib(light_w), gib(soft_w),
           gib(expert_w));
    uint64_t page = mx_kv_page_bytes(kv_dtype, cfg->num_key_value_heads, cfg->head_dim);
    printf("KV cache (%s)%*s%llu bytes per token (%d softmax layers, %d-token pages of %llu bytes per layer);\n"
           "                    %.2f GiB per 1M tokens\n",
           mx_kv_dtype_name(kv_dtype), (int)(9 - strlen(mx_kv_dtype_name(kv_dtype))), "",
           (unsigned long long)(n_soft * page / MX_KV_PAGE_TOKENS), n_soft, MX_KV_PAGE_TOKENS,
           (unsigned long long)page, gib((double)mx_kv_bytes_for_tokens(kv_dtype, cfg->num_key_value_heads,
                                                                       cfg->head_dim, n_soft, 1 << 20)));
    printf("lightning state     %.1f MiB per sequence (fp32, %d layers)\n",
           (L - n_soft) * (double)cfg->num_attention_heads * cfg->head_dim * cfg->head_dim * 4 / 1048576.0, L - n_soft);
    return 0;
}
