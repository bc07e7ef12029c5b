/* cmd_generate.c - `mx generate`: loads a model in this process, prefills the prompt ids and
 * samples up to --max-new-tokens tokens, printing the generated ids on one line. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli_util.h"
#include "commands.h"
#include "core/limits.h"
#include "core/sampling.h"
#include "core/tokenizer/tokenizer.h"

/* Default rows of one prefill forward call (see the prefill loop). */
#define PREFILL_CHUNK 2048

static void usage(FILE *f)
{
    fprintf(f, "usage: mx generate --model DIR (--prompt-ids 1,2,3 | --prompt-ids-file FILE | --prompt-file FILE)\n"
               "         [--kv-dtype bf16|f32|fp8_e4m3|int8] [--prefill-chunk N] [--max-new-tokens N] [--temperature T]\n"
               "         [--top-k K] [--top-p P] [--min-p P] [--repetition-penalty R] [--seed S]\n"
               "         [--logprobs N] [--eos ID] [--backend cpu|cuda] [--threads N]\n"
               "         [--expert-dtype bf16|int8] [--attn-dtype bf16|int8]\n");
}

/* --prompt-file: the text encoded with the model's DIR/tokenizer.json the way the gateway
 * encodes a text prompt (special-token text stays text). Returns the count or -1. */
static int prompt_from_text(const char *model_dir, const char *path, int32_t **out)
{
    char tok_path[MX_PATH_BUF], *text = NULL;
    size_t len = 0;
    snprintf(tok_path, sizeof tok_path, "%s/tokenizer.json", model_dir);
    if (access(tok_path, F_OK) != 0) {
        fprintf(stderr, "mx generate: --prompt-file needs the model's tokenizer, and %s does not exist "
                        "(give ids with --prompt-ids-file)\n", tok_path);
        return -1;
    }
    if (cli_read_file("--prompt-file", path, &text, &len))
        return -1;
    mx_error err = {0};
    mx_tokenizer *t = NULL;
    mx_tok_ids ids = {0};
    int rc = mx_tokenizer_load(tok_path, &t, &err);
    if (!rc)
        rc = mx_tokenizer_encode(t, text, len, 0, &ids, &err);
    if (!rc && ids.len > INT32_MAX)
        rc = mx_fail(&err, MX_ENOMEM, "%zu tokens: too many", ids.len);
    mx_tokenizer_free(t);
    free(text);
    if (rc) {
        fprintf(stderr, "mx generate: --prompt-file %s: %s\n", path, err.msg);
        mx_tok_ids_free(&ids);
        return -1;
    }
    *out = ids.ids;
    return (int)ids.len;
}

int mx_cmd_generate(int argc, char **argv)
{
    const char *model_dir = NULL, *ids_text = NULL, *backend = "cpu";
    const char *ids_file = NULL, *text_file = NULL, *kv_name = NULL; /* FILE may be "-" (stdin) */
    long max_new = 16, threads = 0, eos = -1, v, chunk = PREFILL_CHUNK;
    cli_load_options lo = {MX_WEIGHTS_AS_STORED, MX_WEIGHTS_AS_STORED};
    double f;
    mx_sampling_params sp = mx_sampling_defaults();
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},         {"prompt-ids", required_argument, 0, 'p'},
        {"max-new-tokens", required_argument, 0, 'n'}, {"temperature", required_argument, 0, 'T'},
        {"top-k", required_argument, 0, 'k'},          {"top-p", required_argument, 0, 'P'},
        {"min-p", required_argument, 0, 'M'},          {"repetition-penalty", required_argument, 0, 'r'},
        {"seed", required_argument, 0, 's'},           {"logprobs", required_argument, 0, 'l'},
        {"eos", required_argument, 0, 'e'},            {"backend", required_argument, 0, 'b'},
        {"threads", required_argument, 0, 't'},        {"help", no_argument, 0, 'h'},
        {"prompt-ids-file", required_argument, 0, 'i'}, {"prompt-file", required_argument, 0, 'f'},
        {"kv-dtype", required_argument, 0, 'v'},         {"prefill-chunk", required_argument, 0, 'C'},
        {"expert-dtype", required_argument, 0, 'x'},     {"attn-dtype", required_argument, 0, 'a'},
        {0, 0, 0, 0}};
    int c, bad = 0;
    optind = 1;
    while (!bad && (c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_dir = optarg; break;
        case 'p': ids_text = optarg; break;
        case 'i': ids_file = optarg; break;
        case 'f': text_file = optarg; break;
        case 'v': kv_name = optarg; break;
        case 'C': bad = cli_parse_int("--prefill-chunk", optarg, 1, 1 << 24, &chunk); break;
        case 'b': backend = optarg; break;
        case 'x':
            if ((bad = mx_weight_format_from_name(optarg, &lo.expert_format) != 0))
                fprintf(stderr, "mx generate: --expert-dtype: \"%s\" is not bf16 or int8\n", optarg);
            break;
        case 'a':
            if ((bad = mx_weight_format_from_name(optarg, &lo.attn_format) != 0))
                fprintf(stderr, "mx generate: --attn-dtype: \"%s\" is not bf16 or int8\n", optarg);
            break;
        case 'n': bad = cli_parse_int("--max-new-tokens", optarg, 0, 1 << 24, &max_new); break;
        case 't': bad = cli_parse_int("--threads", optarg, 0, 256, &threads); break;
        case 'e': bad = cli_parse_int("--eos", optarg, -1, INT32_MAX, &eos); break;
        case 'k': bad = cli_parse_int("--top-k", optarg, 0, INT32_MAX, &v); sp.top_k = (int)v; break;
        case 'l': bad = cli_parse_int("--logprobs", optarg, 0, MX_MAX_TOP_LOGPROBS, &v); sp.top_logprobs = (int)v; break;
        case 's': bad = cli_parse_int("--seed", optarg, 0, INT64_MAX, &v); sp.seed = (uint64_t)v; break;
        case 'T': bad = cli_parse_float("--temperature", optarg, &f); sp.temperature = (float)f; break;
        case 'P': bad = cli_parse_float("--top-p", optarg, &f); sp.top_p = (float)f; break;
        case 'M': bad = cli_parse_float("--min-p", optarg, &f); sp.min_p = (float)f; break;
        case 'r': bad = cli_parse_float("--repetition-penalty", optarg, &f); sp.repetition_penalty = (float)f; break;
        case 'h': usage(stdout); return 0;
        default: bad = 1;
        }
    }
    mx_error err = {0};
    if (bad || !model_dir || (!!ids_text + !!ids_file + !!text_file) != 1 || optind != argc) {
        usage(stderr);
        return 2;
    }
    mx_kv_options kv_opt = {MX_KV_BF16, 0};
    if (mx_sampling_validate(&sp, &err) || (kv_name && mx_kv_dtype_parse(kv_name, "--kv-dtype", &kv_opt.dtype, &err))) {
        fprintf(stderr, "mx generate: %s\n", err.msg);
        return 2;
    }
    int32_t *prompt = NULL;
    const char *prompt_flag = ids_text ? "--prompt-ids" : ids_file ? "--prompt-ids-file" : "--prompt-file";
    int n_prompt = ids_text ? cli_parse_ids("--prompt-ids", ids_text, &prompt)
                 : ids_file ? cli_parse_ids_file("--prompt-ids-file", ids_file, &prompt)
                            : prompt_from_text(model_dir, text_file, &prompt);
    if (n_prompt < 1) {
        if (n_prompt == 0)
            fprintf(stderr, "mx generate: %s gives an empty prompt\n", prompt_flag);
        free(prompt);
        return 2;
    }
    fprintf(stderr, "prompt: %d tokens\n", n_prompt);
    cli_model cm;
    if (cli_load(model_dir, backend, (int)threads, &lo, &cm)) {
        free(prompt);
        return 1;
    }
    const mx_config *cfg = mx_model_config(cm.m);
    int vocab = cfg->vocab_size, rc = 0;
    int32_t *history = malloc((size_t)(n_prompt + max_new + 1) * sizeof *history);
    float *logits = malloc((size_t)vocab * sizeof *logits), *work = malloc((size_t)vocab * 2 * sizeof *work);
    mx_sequence *seq = NULL;
    if (!history || !logits || !work)
        rc = mx_fail(&err, MX_ENOMEM, "out of memory");
    if (!rc && kv_name) /* before the sequence: the KV dtype is fixed once a cache exists */
        rc = cm.be->kv_configure(cm.be, &kv_opt, &err);
    if (!rc)
        rc = mx_sequence_create(cm.m, 0, cfg->num_hidden_layers, &seq, &err);
    for (int i = 0; i < n_prompt && !rc; i++)
        if (prompt[i] >= vocab)
            rc = mx_fail(&err, MX_EINVAL, "prompt token %d is id %d, outside the vocabulary of %d", i, prompt[i], vocab);
    mx_rng rng;
    int n_hist = n_prompt;
    if (!rc)
        memcpy(history, prompt, (size_t)n_prompt * sizeof *history);
    const int32_t *feed = prompt;
    int n_feed = n_prompt;
    /* Long prompts go in chunks, so the activation workspace stays at `chunk` rows whatever
     * the prompt length (chunked prefill gives the one-shot logits); the last chunk is the
     * first step below. */
    while (!rc && max_new > 0 && n_feed > chunk) {
        mx_span span = {0, (int)chunk};
        mx_batch b = {1, &seq, &span, (int)chunk};
        rc = mx_model_forward(cm.m, &b, feed, logits, &err);
        feed += chunk;
        n_feed -= (int)chunk;
    }
    for (long step = 0; step < max_new && !rc; step++) {
        mx_span span = {0, n_feed};
        mx_batch b = {1, &seq, &span, n_feed};
        rc = mx_model_forward(cm.m, &b, feed, logits, &err);
        mx_sample s;
        /* counter-based like the stages: the draw of step n depends on (seed, n) only, so a
         * seeded run here samples what the cluster samples */
        mx_rng_seed_at(&rng, sp.seed, (uint64_t)step);
        if (!rc)
            rc = mx_sample_token(logits, vocab, &sp, history, n_hist, &rng, work, &s, &err);
        if (rc)
            break;
        history[n_hist++] = s.token;
        printf(step ? " %d" : "%d", s.token);
        if (sp.top_logprobs > 0) {
            fprintf(stderr, "token %d logprob %.6f top:", s.token, s.logprob);
            for (int j = 0; j < s.n_top; j++)
                fprintf(stderr, " %d:%.6f", s.top_ids[j], s.top_logprobs[j]);
            fprintf(stderr, "\n");
        }
        fflush(stdout);
        if (s.token == eos)
            break;
        feed = &history[n_hist - 1];
        n_feed = 1;
    }
    printf("\n");
    if (rc)
        fprintf(stderr, "mx generate: %s\n", err.msg);
    mx_sequence_free(cm.m, seq);
    cli_unload(&cm);
    free(history);
    free(logits);
    free(work);
    free(prompt);
    return rc ? 1 : 0;
}
