/* cmd_make_model.c - `mx make-model --preset NAME --out DIR [--seed S] [--gate-skew S]`:
 * writes a random-weight model in the real checkpoint layout (config.json, index, shards)
 * with a small byte-level BPE tokenizer.json and tokenizer_config.json (MiniMax chat
 * template) sized to its vocabulary; --gate-skew makes a few experts take most tokens. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli_util.h"
#include "commands.h"
#include "core/model_writer.h"
#include "core/tokenizer/tokenizer.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: mx make-model --preset NAME --out DIR [--seed S] [--gate-skew S [--hot-experts K]]\n"
               "--gate-skew S: the router gate rows of experts 0..K-1 (K default: top-k) are scaled by S in\n"
               "every layer, so those experts take most tokens (to measure expert placement)\npresets:");
    for (const char *const *p = mx_model_presets(); *p; p++)
        fprintf(f, " %s", *p);
    fprintf(f, "\n");
}

int mx_cmd_make_model(int argc, char **argv)
{
    const char *preset = NULL, *out = NULL;
    long seed = 1, hot = -1;
    double skew = 1;
    static const struct option opts[] = {{"preset", required_argument, 0, 'p'}, {"out", required_argument, 0, 'o'},
                                         {"seed", required_argument, 0, 's'},   {"help", no_argument, 0, 'h'},
                                         {"gate-skew", required_argument, 0, 'g'},
                                         {"hot-experts", required_argument, 0, 'k'},
                                         {0, 0, 0, 0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'p')
            preset = optarg;
        else if (c == 'o')
            out = optarg;
        else if (c == 's' && cli_parse_int("--seed", optarg, 0, INT64_MAX, &seed) == 0)
            continue;
        else if (c == 'g' && cli_parse_float("--gate-skew", optarg, &skew) == 0)
            continue;
        else if (c == 'k' && cli_parse_int("--hot-experts", optarg, 0, 1 << 20, &hot) == 0)
            continue;
        else {
            usage(c == 'h' ? stdout : stderr);
            return c == 'h' ? 0 : 2;
        }
    }
    if (!preset || !out || optind != argc) {
        usage(stderr);
        return 2;
    }
    mx_error err = {0};
    mx_config cfg;
    /* the model, then a matching small byte-level BPE tokenizer.json + chat template */
    if (mx_model_preset_config(preset, &cfg, &err) ||
        mx_make_model_skewed(&cfg, out, (uint64_t)seed, skew, hot < 0 ? cfg.num_experts_per_tok : (int)hot, &err) ||
        mx_tokenizer_write_small(out, cfg.vocab_size, &err)) {
        fprintf(stderr, "mx make-model: %s\n", err.msg);
        return 1;
    }
    printf("wrote %s model to %s\n", preset, out);
    return 0;
}
