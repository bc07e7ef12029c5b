/* cmd_plan.c - `mx plan`: how a layout of S attention stages and E expert shards fits device
 * memory at a context length, from a model directory's config.json alone (core/plan.h does
 * the arithmetic); a table by default, JSON with --json. Exit 0 whether or not it fits. */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_util.h"
#include "commands.h"
#include "core/plan.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: mx plan --model DIR --stages S --expert-shards E --context N [--batch B]\n"
            "         [--kv-dtype bf16|f32|fp8_e4m3|int8] [--expert-dtype bf16|int8] [--attn-dtype bf16|int8]\n"
            "         [--device-memory BYTES] [--devices-per-pod G] [--shard-devices G]\n"
            "         [--reserve FRACTION] [--max-step-tokens T] [--split layers|memory] [--json]\n"
            "  DIR needs only config.json. A stage or shard is one pod of G devices (tensor parallel\n"
            "  inside it); --shard-devices defaults to --devices-per-pod. BYTES takes a plain number or\n"
            "  a suffix: GB/TB (10^9, 10^12) or GiB/TiB (2^30, 2^40); default 141GB (an H200).\n"
            "  --split layers (default) cuts equal layer counts as mx cluster does; memory picks the\n"
            "  contiguous cut with the smallest largest stage. --reserve (default 0.05) of each pod\n"
            "  is kept free; --max-step-tokens (default 512, the gateway's) sizes the workspace.\n");
}

/* "141e9", "141GB", "80GiB", "1.5TB" -> bytes. */
static int parse_bytes(const char *flag, const char *text, uint64_t *out)
{
    static const struct {
        const char *suffix;
        double mult;
    } units[] = {{"", 1}, {"B", 1}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
                 {"KiB", 1024.0}, {"MiB", 1048576.0}, {"GiB", 1073741824.0}, {"TiB", 1099511627776.0}};
    char *end;
    double v = strtod(text, &end);
    for (size_t i = 0; end != text && i < sizeof units / sizeof *units; i++)
        if (strcmp(end, units[i].suffix) == 0 && isfinite(v) && v * units[i].mult >= 1 &&
            v * units[i].mult <= 1125899906842624.0) {
            *out = (uint64_t)llround(v * units[i].mult);
            return 0;
        }
    fprintf(stderr, "mx: %s: \"%s\" is not a byte count (e.g. 141000000000, 141GB, 80GiB)\n", flag, text);
    return -1;
}

static double gib(double b)
{
    return b / 1073741824.0;
}

static void fmt_count(char *buf, size_t n, int64_t v)
{
    if (v == INT64_MAX)
        snprintf(buf, n, "unbounded");
    else
        snprintf(buf, n, "%lld", (long long)v);
}

static void print_table(const mx_config *c, const mx_plan *p)
{
    const mx_plan_options *o = &p->opt;
    int n_soft = 0;
    for (int l = 0; l < c->num_hidden_layers; l++)
        n_soft += c->attn_type[l] == MX_ATTN_SOFTMAX;
    char a[32], b[32];
    printf("model     %s, %d layers (%d lightning, %d softmax), %d experts top-%d, vocab %d\n", c->architecture,
           c->num_hidden_layers, c->num_hidden_layers - n_soft, n_soft, c->num_local_experts, c->num_experts_per_tok,
           c->vocab_size);
    printf("layout    %d stages x %d device%s + %d expert shards x %d device%s = %d devices of %.1f GB (%.2f GiB)\n",
           o->stages, o->devices_per_pod, o->devices_per_pod > 1 ? "s" : "", o->expert_shards, o->shard_devices,
           o->shard_devices > 1 ? "s" : "", p->devices, o->device_bytes / 1e9, gib((double)o->device_bytes));
    printf("options   context %lld tokens, batch %d, KV %s (%d-token pages), attention weights %s, experts %s,\n"
           "          step %d tokens, reserve %.0f%% of each pod, split by %s\n",
           (long long)o->context_tokens, o->batch, mx_kv_dtype_name(o->kv_dtype), MX_KV_PAGE_TOKENS,
           mx_weight_dtype_name(o->attn_dtype), mx_weight_dtype_name(o->expert_dtype), o->max_step_tokens,
           o->reserve_fraction * 100, o->split == MX_SPLIT_LAYERS ? "layers" : "memory");
    printf("model     KV %llu B/token over %d softmax layers = %.2f GiB per sequence; lightning state %.1f MiB per\n"
           "          sequence (two fp32 copies: the current state and a step's undo); attention-side weights\n"
           "          %.2f GiB; experts %.1f GB (%.2f GiB)\n",
           (unsigned long long)p->kv_bytes_per_token, n_soft, gib((double)p->kv_bytes_per_seq),
           p->state_bytes_per_seq / 1048576.0, gib((double)p->attn_weight_bytes), p->expert_weight_bytes / 1e9,
           gib((double)p->expert_weight_bytes));
    if (p->context_over_positions)
        printf("warning   context %lld > max_position_embeddings %lld\n", (long long)o->context_tokens,
               (long long)c->max_position_embeddings);
    printf("\n%-5s %-9s %4s %4s %10s %10s %8s %10s %9s %10s %9s %12s %4s\n", "stage", "layers", "soft", "lin",
           "weight GiB", "work GiB", "KV B/tok", "KV GiB/seq", "state MiB", "room GiB", "seqs fit", "max context",
           "fits");
    for (int s = 0; s < p->n_stages; s++) {
        const mx_plan_stage *st = &p->stages[s];
        char range[24];
        snprintf(range, sizeof range, "%d-%d", st->layer_begin, st->layer_end - 1);
        fmt_count(a, sizeof a, st->seqs_fit);
        fmt_count(b, sizeof b, st->max_context_tokens);
        printf("%-5d %-9s %4d %4d %10.2f %10.2f %8llu %10.2f %9.1f %10.2f %9s %12s %4s\n", s, range,
               st->softmax_layers, st->lightning_layers, gib((double)st->weight_bytes), gib((double)st->workspace_bytes),
               (unsigned long long)st->kv_bytes_per_token, gib((double)st->kv_bytes_per_seq),
               st->state_bytes_per_seq / 1048576.0, gib((double)st->free_bytes), a, b, st->fits ? "yes" : "NO");
    }
    printf("(room = pod - reserve - weights - workspace, for KV and lightning state; max context: the longest\n"
           " sequence when the stage holds `batch` of them)\n");
    printf("\n%-5s %-9s %10s %10s %10s %4s\n", "shard", "experts", "weight GiB", "work GiB", "free GiB", "fits");
    for (int i = 0; i < p->n_shards; i++) {
        const mx_plan_shard *sh = &p->shards[i];
        char range[24];
        snprintf(range, sizeof range, "%d-%d", sh->expert_begin, sh->expert_end - 1);
        printf("%-5d %-9s %10.2f %10.2f %10.2f %4s\n", i, range, gib((double)sh->weight_bytes),
               gib((double)sh->workspace_bytes), gib((double)sh->free_bytes), sh->fits ? "yes" : "NO");
    }
    fmt_count(a, sizeof a, p->seqs_fit);
    fmt_count(b, sizeof b, p->max_context_tokens);
    printf("\n");
    const char *beyond = p->max_context_tokens > c->max_position_embeddings ? " (beyond max_position_embeddings)" : "";
    if (p->fits) {
        printf("fits: %s sequence(s) of %lld tokens at once; longest context at batch %d: %s tokens%s\n", a,
               (long long)o->context_tokens, o->batch, b, beyond);
        return;
    }
    if (!p->stages_fit) {
        printf("does NOT fit: stages hold %s sequence(s) of %lld tokens, batch %d needs up to %.2f GiB more on a "
               "stage; longest context at batch %d: %s tokens; ",
               a, (long long)o->context_tokens, o->batch, gib((double)p->stage_short_bytes), o->batch, b);
        if (p->min_stages)
            printf("%d stages would fit\n", p->min_stages);
        else
            printf("no stage count up to %d fits (more devices per pod, a smaller KV dtype or a shorter context)\n",
                   c->num_hidden_layers);
    }
    if (!p->shards_fit) {
        printf("does NOT fit: an expert shard lacks %.2f GiB; ", gib((double)p->shard_short_bytes));
        if (p->min_shards)
            printf("%d expert shards would fit\n", p->min_shards);
        else
            printf("no shard count up to %d fits (more devices per shard or int8 experts)\n", c->num_local_experts);
    }
}

static json_t *jcount(int64_t v)
{
    return v == INT64_MAX ? json_null() : json_integer(v);
}

static void print_json(const mx_config *c, const mx_plan *p)
{
    const mx_plan_options *o = &p->opt;
    json_t *r = json_object(), *opts = json_object(), *stages = json_array(), *shards = json_array();
    json_object_set_new(r, "architecture", json_string(c->architecture));
    json_object_set_new(opts, "stages", json_integer(o->stages));
    json_object_set_new(opts, "expert_shards", json_integer(o->expert_shards));
    json_object_set_new(opts, "context_tokens", json_integer(o->context_tokens));
    json_object_set_new(opts, "batch_sequences", json_integer(o->batch));
    json_object_set_new(opts, "kv_dtype", json_string(mx_kv_dtype_name(o->kv_dtype)));
    json_object_set_new(opts, "kv_page_tokens", json_integer(MX_KV_PAGE_TOKENS));
    json_object_set_new(opts, "attn_dtype", json_string(mx_weight_dtype_name(o->attn_dtype)));
    json_object_set_new(opts, "expert_dtype", json_string(mx_weight_dtype_name(o->expert_dtype)));
    json_object_set_new(opts, "device_memory_bytes", json_integer((json_int_t)o->device_bytes));
    json_object_set_new(opts, "devices_per_pod", json_integer(o->devices_per_pod));
    json_object_set_new(opts, "shard_devices", json_integer(o->shard_devices));
    json_object_set_new(opts, "reserve_fraction", json_real(o->reserve_fraction));
    json_object_set_new(opts, "max_step_tokens", json_integer(o->max_step_tokens));
    json_object_set_new(opts, "split", json_string(o->split == MX_SPLIT_LAYERS ? "layers" : "memory"));
    json_object_set_new(r, "options", opts);
    json_object_set_new(r, "devices", json_integer(p->devices));
    json_object_set_new(r, "kv_bytes_per_token", json_integer((json_int_t)p->kv_bytes_per_token));
    json_object_set_new(r, "kv_bytes_per_seq", json_integer((json_int_t)p->kv_bytes_per_seq));
    json_object_set_new(r, "state_bytes_per_seq", json_integer((json_int_t)p->state_bytes_per_seq));
    json_object_set_new(r, "attn_weight_bytes", json_integer((json_int_t)p->attn_weight_bytes));
    json_object_set_new(r, "expert_weight_bytes", json_integer((json_int_t)p->expert_weight_bytes));
    for (int s = 0; s < p->n_stages; s++) {
        const mx_plan_stage *st = &p->stages[s];
        json_t *j = json_object();
        json_object_set_new(j, "layer_begin", json_integer(st->layer_begin));
        json_object_set_new(j, "layer_end", json_integer(st->layer_end));
        json_object_set_new(j, "softmax_layers", json_integer(st->softmax_layers));
        json_object_set_new(j, "lightning_layers", json_integer(st->lightning_layers));
        json_object_set_new(j, "weight_bytes", json_integer((json_int_t)st->weight_bytes));
        json_object_set_new(j, "workspace_bytes", json_integer((json_int_t)st->workspace_bytes));
        json_object_set_new(j, "kv_bytes_per_token", json_integer((json_int_t)st->kv_bytes_per_token));
        json_object_set_new(j, "kv_bytes_per_seq", json_integer((json_int_t)st->kv_bytes_per_seq));
        json_object_set_new(j, "state_bytes_per_seq", json_integer((json_int_t)st->state_bytes_per_seq));
        json_object_set_new(j, "pod_bytes", json_integer((json_int_t)st->pod_bytes));
        json_object_set_new(j, "reserve_bytes", json_integer((json_int_t)st->reserve_bytes));
        json_object_set_new(j, "free_bytes", json_integer(st->free_bytes));
        json_object_set_new(j, "seqs_fit", jcount(st->seqs_fit));
        json_object_set_new(j, "max_context_tokens", jcount(st->max_context_tokens));
        json_object_set_new(j, "fits", json_boolean(st->fits));
        json_array_append_new(stages, j);
    }
    for (int i = 0; i < p->n_shards; i++) {
        const mx_plan_shard *sh = &p->shards[i];
        json_t *j = json_object();
        json_object_set_new(j, "expert_begin", json_integer(sh->expert_begin));
        json_object_set_new(j, "expert_end", json_integer(sh->expert_end));
        json_object_set_new(j, "weight_bytes", json_integer((json_int_t)sh->weight_bytes));
        json_object_set_new(j, "workspace_bytes", json_integer((json_int_t)sh->workspace_bytes));
        json_object_set_new(j, "pod_bytes", json_integer((json_int_t)sh->pod_bytes));
        json_object_set_new(j, "reserve_bytes", json_integer((json_int_t)sh->reserve_bytes));
        json_object_set_new(j, "free_bytes", json_integer(sh->free_bytes));
        json_object_set_new(j, "fits", json_boolean(sh->fits));
        json_array_append_new(shards, j);
    }
    json_object_set_new(r, "stages", stages);
    json_object_set_new(r, "shards", shards);
    json_object_set_new(r, "seqs_fit", jcount(p->seqs_fit));
    json_object_set_new(r, "max_context_tokens", jcount(p->max_context_tokens));
    json_object_set_new(r, "context_over_max_positions", json_boolean(p->context_over_positions));
    json_object_set_new(r, "stages_fit", json_boolean(p->stages_fit));
    json_object_set_new(r, "shards_fit", json_boolean(p->shards_fit));
    json_object_set_new(r, "fits", json_boolean(p->fits));
    json_object_set_new(r, "min_stages_to_fit", p->stages_fit ? json_null() : json_integer(p->min_stages));
    json_object_set_new(r, "min_shards_to_fit", p->shards_fit ? json_null() : json_integer(p->min_shards));
    json_object_set_new(r, "stage_short_bytes", json_integer(p->stage_short_bytes));
    json_object_set_new(r, "shard_short_bytes", json_integer(p->shard_short_bytes));
    char *text = json_dumps(r, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (text)
        puts(text);
    free(text);
    json_decref(r);
}

int mx_cmd_plan(int argc, char **argv)
{
    const char *model_dir = NULL;
    mx_plan_options o = mx_plan_defaults();
    int json = 0, bad = 0, c;
    long v;
    double f;
    mx_error err = {0};
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},          {"stages", required_argument, 0, 's'},
        {"expert-shards", required_argument, 0, 'e'},  {"context", required_argument, 0, 'n'},
        {"kv-dtype", required_argument, 0, 'k'},       {"expert-dtype", required_argument, 0, 'x'},
        {"attn-dtype", required_argument, 0, 'a'},     {"device-memory", required_argument, 0, 'd'},
        {"devices-per-pod", required_argument, 0, 'g'}, {"shard-devices", required_argument, 0, 'G'},
        {"batch", required_argument, 0, 'b'},          {"reserve", required_argument, 0, 'r'},
        {"max-step-tokens", required_argument, 0, 't'}, {"split", required_argument, 0, 'S'},
        {"json", no_argument, 0, 'j'},                 {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    optind = 1;
    while (!bad && (c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_dir = optarg; break;
        case 's': bad = cli_parse_int("--stages", optarg, 1, MX_MAX_LAYERS, &v); o.stages = (int)v; break;
        case 'e': bad = cli_parse_int("--expert-shards", optarg, 1, 1 << 20, &v); o.expert_shards = (int)v; break;
        case 'n': bad = cli_parse_int("--context", optarg, 1, 1L << 40, &v); o.context_tokens = v; break;
        case 'b': bad = cli_parse_int("--batch", optarg, 1, 1 << 20, &v); o.batch = (int)v; break;
        case 'g': bad = cli_parse_int("--devices-per-pod", optarg, 1, 4096, &v); o.devices_per_pod = (int)v; break;
        case 'G': bad = cli_parse_int("--shard-devices", optarg, 1, 4096, &v); o.shard_devices = (int)v; break;
        case 't': bad = cli_parse_int("--max-step-tokens", optarg, 1, 1 << 24, &v); o.max_step_tokens = (int)v; break;
        case 'd': bad = parse_bytes("--device-memory", optarg, &o.device_bytes); break;
        case 'r':
            bad = cli_parse_float("--reserve", optarg, &f);
            if (!bad && !(f >= 0 && f < 1)) {
                fprintf(stderr, "mx: --reserve: %s is not a fraction in [0, 1)\n", optarg);
                bad = 1;
            }
            o.reserve_fraction = f;
            break;
        case 'k': bad = mx_kv_dtype_parse(optarg, "--kv-dtype", &o.kv_dtype, &err) != 0; break;
        case 'x': bad = mx_weight_dtype_parse(optarg, "--expert-dtype", &o.expert_dtype, &err) != 0; break;
        case 'a': bad = mx_weight_dtype_parse(optarg, "--attn-dtype", &o.attn_dtype, &err) != 0; break;
        case 'S':
            if (strcmp(optarg, "layers") == 0)
                o.split = MX_SPLIT_LAYERS;
            else if (strcmp(optarg, "memory") == 0)
                o.split = MX_SPLIT_MEMORY;
            else {
                mx_fail(&err, MX_EINVAL, "--split: \"%s\" is not layers or memory", optarg);
                bad = 1;
            }
            break;
        case 'j': json = 1; break;
        case 'h': usage(stdout); return 0;
        default: bad = 1;
        }
    }
    if (bad && err.msg[0]) {
        fprintf(stderr, "mx plan: %s\n", err.msg);
        return 2;
    }
    if (bad || !model_dir || !o.stages || !o.expert_shards || !o.context_tokens || optind != argc) {
        if (!bad)
            fprintf(stderr, "mx plan: --model, --stages, --expert-shards and --context are required\n");
        usage(stderr);
        return 2;
    }
    char path[4096];
    mx_config cfg;
    snprintf(path, sizeof path, "%s/config.json", model_dir);
    if (mx_config_load(path, &cfg, &err)) {
        fprintf(stderr, "mx plan: --model %s: %s\n", model_dir, err.msg);
        return 1;
    }
    mx_plan *p = NULL;
    if (mx_plan_make(&cfg, &o, &p, &err)) {
        fprintf(stderr, "mx plan: %s\n", err.msg);
        return 2;
    }
    if (json)
        print_json(&cfg, p);
    else
        print_table(&cfg, p);
    mx_plan_free(p);
    return 0;
}
