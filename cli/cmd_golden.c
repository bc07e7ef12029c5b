/* cmd_golden.c - `mx golden DIR`: runs every case of a golden fixture directory (format in
 * the fixtures' README) one at a time, then all together as one ragged batch, then the prompts
 * longer than 100 tokens in chunks of 100; compares each logits row with the reference and
 * prints one line per case and mode, ending with "N passed, N failed". */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_util.h"
#include "commands.h"
#include "core/safetensors.h"

typedef struct golden_case {
    char name[64];
    int prompt_len, steps;
    const int32_t *prompt, *greedy;
    const float *logits;   /* expected [steps+1, vocab] */
    float *got;            /* ours [steps+1, vocab] */
} golden_case;

typedef struct tolerance {
    double max_abs, max_rel, min_cosine, min_argmax;
    int argmax_must_match;
    int bf16_tier;
    int int8_tier; /* --tier int8-experts or int8: see INT8_* below */
    int int8_all;  /* --tier int8 (attention projections in int8 too): INT8_ALL_* */
    int kv_tier;   /* --tier kv: see KV_MAX_REL below */
} tolerance;

/* The kv tier (a lossy KV cache dtype, everything else fp32): every greedy token equal (the
 * fixtures keep top-1 minus top-2 above 0.1) and every row's max_rel at most KV_MAX_REL. With
 * bf16 KV (relative rounding <= 2^-8 per element) the measured max_rel is 8e-5 to 3.5e-3 on
 * every case but tiny/p5_s12, whose last row moves by 0.051: there the perturbation crosses a
 * router near-tie (gaps down to 1.5e-4) and one token takes another expert. 0.1 is twice that,
 * and far below what a wrong position, page or scale does (logits off by O(1)). */
#define KV_MAX_REL 0.1

/* The int8-experts tier (weight-only int8 experts with per-row scales, everything else fp32):
 * every row's cosine to the reference >= INT8_MIN_COSINE; at least INT8_MIN_ARGMAX of a
 * case's rows pick the reference's token; and where one does not, the reference ranks our
 * token within INT8_MAX_FLIP_GAP logits of its own. Measured on the fixtures (per case, all
 * modes): min cosine 0.9759 (small/p257_s8) .. 0.99999 (long), argmax agreement >= 8/9, flips
 * at reference gaps of 0.185, 0.247 and 1.16 (tiny/p300_s8). The flips are not near-ties of
 * the logits (1.16 is 2.8x that case's smallest top-2 margin): quantization moves hidden
 * states by ~1e-3, more than the fixtures' 1e-4 router gaps, so some tokens take another
 * expert upstream (as in the fixtures' own bf16 run: cosine 0.90-0.9998, agreement 0.82-1).
 * Per-group scales along K (64, 32) did not remove them either (README). */
#define INT8_MIN_COSINE 0.97
#define INT8_MIN_ARGMAX 0.85
#define INT8_MAX_FLIP_GAP 1.5

/* The int8 tier (int8 experts and int8 attention projections, same per-row scheme, everything
 * else fp32): the same three checks. Measured on the fixtures with f32 KV (per case, all modes
 * equal): min cosine 0.9727 (small/p1030_s4; 0.9933 with int8 experts alone) .. 0.99995 (long),
 * argmax agreement >= 4/5 (tiny/p600_s4, a flip at a reference gap of 0.184, below the
 * int8-experts tier's 0.85 only because that case has five rows), flips at gaps 0.184, 0.247,
 * 0.249 and 1.16 (tiny/p300_s8, the same flip as with int8 experts alone). Mean |error| grows
 * from 0.03-0.44 to 0.04-0.47. Int8 attention alone on tiny: min cosine 0.9854, no new flip. */
#define INT8_ALL_MIN_COSINE 0.96
#define INT8_ALL_MIN_ARGMAX 0.75
#define INT8_ALL_MAX_FLIP_GAP 1.5

static int map_case_tensor(mx_st_file *f, const char *casename, const char *suffix, mx_dtype dtype,
                           int64_t rows, int64_t cols, const void **out, mx_error *err)
{
    char name[128];
    snprintf(name, sizeof name, "%s.%s", casename, suffix);
    const mx_st_entry *e = mx_st_find(f, name);
    if (!e)
        return mx_fail(err, MX_ENOTFOUND, "expected.safetensors has no tensor %s", name);
    int64_t numel = 1;
    for (int i = 0; i < e->ndim; i++)
        numel *= e->shape[i];
    if (e->dtype != dtype || numel != rows * cols)
        return mx_fail(err, MX_EFORMAT, "expected.safetensors: %s has the wrong dtype or size", name);
    mx_tensor t;
    MX_TRY(mx_st_map(f, e, &t, err));
    *out = t.data;
    return 0;
}

static int load_cases(const char *dir, int vocab, mx_st_file **st, golden_case **cases_out, int *n_out,
                      tolerance *tol, mx_error *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/cases.json", dir);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root)
        return mx_fail(err, MX_EFORMAT, "%s: line %d: %s", path, jerr.line, jerr.text);
    int rc = 0;
    json_t *cases = json_object_get(root, "cases");
    json_t *fp32 = json_object_get(json_object_get(root, "tolerances"), "fp32");
    json_t *bf16 = json_object_get(json_object_get(root, "tolerances"), "bf16");
    if (!json_is_array(cases) || !json_is_object(fp32) || !json_is_object(bf16)) {
        json_decref(root);
        return mx_fail(err, MX_EFORMAT, "%s: needs \"cases\" and \"tolerances\".fp32/.bf16", path);
    }
    tol->max_abs = json_number_value(json_object_get(fp32, "max_abs"));
    tol->max_rel = json_number_value(json_object_get(fp32, "max_rel"));
    tol->argmax_must_match = json_is_true(json_object_get(fp32, "argmax_must_match"));
    tol->min_cosine = json_number_value(json_object_get(bf16, "min_cosine"));
    tol->min_argmax = json_number_value(json_object_get(bf16, "min_argmax_agreement"));
    snprintf(path, sizeof path, "%s/expected.safetensors", dir);
    rc = mx_st_open(path, st, err);
    size_t n = json_array_size(cases);
    golden_case *gc = rc ? NULL : calloc(n ? n : 1, sizeof *gc);
    if (!rc && !gc)
        rc = mx_fail(err, MX_ENOMEM, "out of memory");
    for (size_t i = 0; i < n && !rc; i++) {
        json_t *c = json_array_get(cases, i);
        const char *name = json_string_value(json_object_get(c, "name"));
        json_int_t plen = json_integer_value(json_object_get(c, "prompt_len"));
        json_int_t steps = json_integer_value(json_object_get(c, "steps"));
        if (!name || plen < 1 || steps < 0 || strlen(name) >= sizeof gc[i].name) {
            rc = mx_fail(err, MX_EFORMAT, "cases.json: case %zu lacks name/prompt_len/steps", i);
            break;
        }
        strcpy(gc[i].name, name);
        gc[i].prompt_len = (int)plen;
        gc[i].steps = (int)steps;
        const void *p = NULL, *g = NULL, *l = NULL;
        rc = map_case_tensor(*st, name, "prompt_ids", MX_DTYPE_I32, 1, plen, &p, err);
        if (!rc) rc = map_case_tensor(*st, name, "greedy_ids", MX_DTYPE_I32, 1, steps + 1, &g, err);
        if (!rc) rc = map_case_tensor(*st, name, "logits", MX_DTYPE_F32, steps + 1, vocab, &l, err);
        gc[i].prompt = p;
        gc[i].greedy = g;
        gc[i].logits = l;
        if (!rc && !(gc[i].got = calloc((size_t)(steps + 1) * vocab, sizeof(float))))
            rc = mx_fail(err, MX_ENOMEM, "out of memory");
    }
    json_decref(root);
    if (rc) {
        for (size_t i = 0; gc && i < n; i++)
            free(gc[i].got);
        free(gc);
        return rc;
    }
    *cases_out = gc;
    *n_out = (int)n;
    return 0;
}

/* Runs cases together: prompts in chunks of `chunk` tokens (0 = whole prompt in one pass),
 * then decode steps feeding the reference's greedy tokens; fills each case's `got`. */
static int run_together(mx_model *m, golden_case **cs, int n, int chunk, mx_error *err)
{
    const mx_config *cfg = mx_model_config(m);
    int vocab = cfg->vocab_size, rc = 0, total = 0;
    for (int i = 0; i < n; i++)
        total += cs[i]->prompt_len;
    mx_sequence **seqs = calloc((size_t)n, sizeof *seqs);
    mx_sequence **bseqs = calloc((size_t)n, sizeof *bseqs);
    mx_span *spans = calloc((size_t)n, sizeof *spans);
    int *done = calloc((size_t)n, sizeof *done), *owner = calloc((size_t)n, sizeof *owner);
    int32_t *tokens = malloc((size_t)total * sizeof *tokens);
    float *logits = malloc((size_t)n * vocab * sizeof *logits);
    if (!seqs || !bseqs || !spans || !done || !owner || !tokens || !logits)
        rc = mx_fail(err, MX_ENOMEM, "out of memory");
    for (int i = 0; i < n && !rc; i++)
        rc = mx_sequence_create(m, 0, cfg->num_hidden_layers, &seqs[i], err);
    /* prefill */
    for (int pending = n; pending > 0 && !rc;) {
        mx_batch b = {.seqs = bseqs, .spans = spans};
        for (int i = 0; i < n; i++) {
            if (done[i] >= cs[i]->prompt_len)
                continue;
            int len = cs[i]->prompt_len - done[i];
            if (chunk > 0 && len > chunk)
                len = chunk;
            memcpy(tokens + b.n_tokens, cs[i]->prompt + done[i], (size_t)len * sizeof *tokens);
            spans[b.n_seqs] = (mx_span){b.n_tokens, len};
            bseqs[b.n_seqs] = seqs[i];
            owner[b.n_seqs++] = i;
            b.n_tokens += len;
            done[i] += len;
        }
        rc = mx_model_forward(m, &b, tokens, logits, err);
        for (int s = 0; s < b.n_seqs && !rc; s++) {
            int i = owner[s];
            if (done[i] == cs[i]->prompt_len) {
                memcpy(cs[i]->got, logits + (size_t)s * vocab, (size_t)vocab * sizeof *logits);
                pending--;
            }
        }
    }
    /* decode */
    for (int step = 1; !rc; step++) {
        mx_batch b = {.seqs = bseqs, .spans = spans};
        for (int i = 0; i < n; i++) {
            if (step > cs[i]->steps)
                continue;
            tokens[b.n_seqs] = cs[i]->greedy[step - 1];
            spans[b.n_seqs] = (mx_span){b.n_seqs, 1};
            bseqs[b.n_seqs] = seqs[i];
            owner[b.n_seqs++] = i;
        }
        if (!b.n_seqs)
            break;
        b.n_tokens = b.n_seqs;
        rc = mx_model_forward(m, &b, tokens, logits, err);
        for (int s = 0; s < b.n_seqs && !rc; s++)
            memcpy(cs[owner[s]]->got + (size_t)step * vocab, logits + (size_t)s * vocab, (size_t)vocab * sizeof *logits);
    }
    for (int i = 0; seqs && i < n; i++)
        mx_sequence_free(m, seqs[i]);
    free(seqs);
    free(bseqs);
    free(spans);
    free(done);
    free(owner);
    free(tokens);
    free(logits);
    return rc;
}

/* Compares one case; prints its line; returns 1 if it passes. */
static int judge(const char *fixture, const char *mode, const golden_case *c, int vocab, const tolerance *tol)
{
    int rows = c->steps + 1, agree = 0, first_bad = -1;
    double max_abs = 0, max_rel = 0, min_cos = 1, sum_abs = 0, worst_gap = 0;
    const double min_cos8 = tol->int8_all ? INT8_ALL_MIN_COSINE : INT8_MIN_COSINE;
    const double min_argmax8 = tol->int8_all ? INT8_ALL_MIN_ARGMAX : INT8_MIN_ARGMAX;
    const double max_gap8 = tol->int8_all ? INT8_ALL_MAX_FLIP_GAP : INT8_MAX_FLIP_GAP;
    for (int r = 0; r < rows; r++) {
        const float *e = c->logits + (size_t)r * vocab, *g = c->got + (size_t)r * vocab;
        double row_abs = 0, ref_max = 0, dot = 0, ne = 0, ng = 0;
        int am = 0;
        for (int v = 0; v < vocab; v++) {
            double d = fabs((double)g[v] - e[v]);
            sum_abs += d;
            if (!(d <= row_abs))
                row_abs = d; /* NaN counts as a failure */
            ref_max = fmax(ref_max, fabs((double)e[v]));
            dot += (double)g[v] * e[v];
            ne += (double)e[v] * e[v];
            ng += (double)g[v] * g[v];
            if (g[v] > g[am])
                am = v;
        }
        double rel = ref_max > 0 ? row_abs / ref_max : row_abs, cos = dot / sqrt(ne * ng);
        if (!(cos >= min_cos))
            min_cos = cos;
        if (!(row_abs <= max_abs))
            max_abs = row_abs;
        if (!(rel <= max_rel))
            max_rel = rel;
        agree += am == c->greedy[r];
        double gap = (double)e[c->greedy[r]] - e[am]; /* how far the reference ranks ours below */
        if (!(gap <= worst_gap))
            worst_gap = gap;
        if (tol->int8_tier && !(cos >= min_cos8 && gap <= max_gap8) && first_bad < 0)
            first_bad = r;
        if (tol->kv_tier && (am != c->greedy[r] || !(rel <= KV_MAX_REL)) && first_bad < 0)
            first_bad = r;
        int bad = tol->bf16_tier || tol->int8_tier || tol->kv_tier ? 0
                                 : !(row_abs <= tol->max_abs) || !(rel <= tol->max_rel) ||
                                       (tol->argmax_must_match && am != c->greedy[r]);
        if (bad && first_bad < 0)
            first_bad = r;
    }
    double agreement = (double)agree / rows;
    int pass = tol->bf16_tier ? (min_cos >= tol->min_cosine && agreement >= tol->min_argmax) : first_bad < 0;
    char where[96] = "";
    if (first_bad >= 0)
        snprintf(where, sizeof where, " first_bad_row=%d", first_bad);
    if (tol->int8_tier) {
        pass = first_bad < 0 && agreement >= min_argmax8;
        snprintf(where + strlen(where), sizeof where - strlen(where), " mean_abs=%.3g flip_gap=%.3g",
                 sum_abs / ((double)rows * vocab), worst_gap);
    }
    printf("%s %s/%s [%s] max_abs=%.3g max_rel=%.3g min_cosine=%.7f argmax=%d/%d%s\n", pass ? "PASS" : "FAIL",
           fixture, c->name, mode, max_abs, max_rel, min_cos, agree, rows, where);
    return pass;
}

int mx_cmd_golden(int argc, char **argv)
{
    const char *backend = "cpu", *tier = NULL, *kv_dtype = NULL;
    int no_chunked = 0;
    long threads = 0;
    cli_load_options lo = {MX_WEIGHTS_AS_STORED, MX_WEIGHTS_AS_STORED};
    static const struct option opts[] = {{"backend", required_argument, 0, 'b'},
                                         {"threads", required_argument, 0, 't'},
                                         {"tier", required_argument, 0, 'T'},
                                         {"expert-dtype", required_argument, 0, 'x'},
                                         {"attn-dtype", required_argument, 0, 'a'},
                                         {"kv-dtype", required_argument, 0, 'k'},
                                         {"no-chunked", no_argument, 0, 'C'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'b')
            backend = optarg;
        else if (c == 't' && cli_parse_int("--threads", optarg, 0, 256, &threads) == 0)
            continue;
        else if (c == 'T')
            tier = optarg;
        else if (c == 'k')
            kv_dtype = optarg;
        else if (c == 'C')
            no_chunked = 1;
        else if (c == 'x' && mx_weight_format_from_name(optarg, &lo.expert_format) == 0)
            continue;
        else if (c == 'a' && mx_weight_format_from_name(optarg, &lo.attn_format) == 0)
            continue;
        else {
            fprintf(c == 'h' ? stdout : stderr,
                    "usage: mx golden DIR [--backend cpu|cuda] [--threads N] [--tier fp32|bf16|int8-experts|int8|kv]\n"
                    "                     [--expert-dtype bf16|int8] [--attn-dtype bf16|int8] [--kv-dtype bf16|f32|fp8_e4m3|int8] [--no-chunked]\n");
            return c == 'h' ? 0 : 2;
        }
    }
    if (optind != argc - 1 ||
        (tier && strcmp(tier, "fp32") && strcmp(tier, "bf16") && strcmp(tier, "int8-experts") && strcmp(tier, "int8") &&
         strcmp(tier, "kv"))) {
        fprintf(stderr, "usage: mx golden DIR [--backend cpu|cuda] [--threads N] [--tier fp32|bf16|int8-experts|int8|kv]\n"
                    "                     [--expert-dtype bf16|int8] [--attn-dtype bf16|int8] [--kv-dtype bf16|f32|fp8_e4m3|int8] [--no-chunked]\n");
        return 2;
    }
    const char *dir = argv[optind];
    const char *fixture = strrchr(dir, '/') && strrchr(dir, '/')[1] ? strrchr(dir, '/') + 1 : dir;
    cli_model cm;
    if (cli_load(dir, backend, (int)threads, &lo, &cm))
        return 1;
    int vocab = mx_model_config(cm.m)->vocab_size;
    mx_error err = {0};
    if (kv_dtype) { /* before any sequence exists, as kv_configure requires */
        mx_kv_options kvo = {0};
        if (mx_kv_dtype_parse(kv_dtype, "--kv-dtype", &kvo.dtype, &err) ||
            cm.be->kv_configure(cm.be, &kvo, &err)) {
            fprintf(stderr, "mx golden: %s\n", err.msg);
            cli_unload(&cm);
            return 2;
        }
    }
    mx_st_file *st = NULL;
    golden_case *cases = NULL;
    int n = 0;
    tolerance tol = {0};
    if (load_cases(dir, vocab, &st, &cases, &n, &tol, &err)) {
        fprintf(stderr, "mx golden: %s\n", err.msg);
        mx_st_close(st);
        cli_unload(&cm);
        return 1;
    }
    tol.bf16_tier = tier ? strcmp(tier, "bf16") == 0 : cm.be->act_dtype != MX_DTYPE_F32;
    /* int8 weights are not held to the fp32 tier: they get their own unless one is named */
    int any_int8 = lo.expert_format == MX_WEIGHTS_INT8 || lo.attn_format == MX_WEIGHTS_INT8;
    tol.int8_tier = tier ? strcmp(tier, "int8-experts") == 0 || strcmp(tier, "int8") == 0 : any_int8 && !tol.bf16_tier;
    tol.int8_all = tier ? strcmp(tier, "int8") == 0 : lo.attn_format == MX_WEIGHTS_INT8;
    tol.kv_tier = tier && strcmp(tier, "kv") == 0;
    int passed = 0, failed = 0;
    golden_case **group = calloc((size_t)n, sizeof *group);
    static const struct { const char *name; int together, chunk, min_prompt; } modes[] = {
        {"single", 0, 0, 0}, {"batch", 1, 0, 0}, {"chunked-100", 0, 100, 101}};
    for (size_t md = 0; md < sizeof modes / sizeof *modes && group; md++) {
        int ng = 0;
        for (int i = 0; i < n && !(no_chunked && modes[md].chunk); i++)
            if (cases[i].prompt_len >= modes[md].min_prompt)
                group[ng++] = &cases[i];
        for (int start = 0; start < ng; start += modes[md].together ? ng : 1) {
            int count = modes[md].together ? ng : 1;
            int rc = run_together(cm.m, group + start, count, modes[md].chunk, &err);
            for (int i = start; i < start + count; i++) {
                if (rc) {
                    printf("FAIL %s/%s [%s] error: %s\n", fixture, group[i]->name, modes[md].name, err.msg);
                    failed++;
                } else if (judge(fixture, modes[md].name, group[i], vocab, &tol)) {
                    passed++;
                } else {
                    failed++;
                }
            }
        }
    }
    for (int i = 0; i < n; i++)
        free(cases[i].got);
    free(cases);
    free(group);
    mx_st_close(st);
    cli_unload(&cm);
    printf("%d passed, %d failed\n", passed, failed);
    return failed || !passed ? 1 : 0;
}
