/* main.c - the `mx` command: dispatches to a subcommand (see `mx help`). */
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "mx_version.h" /* generated: MX_VERSION, from git describe or VERSION */

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} command;

static const command commands[] = {
    {"client", mx_cmd_client, "call a gateway's Generate with prompt ids and print the streamed ids"},
    {"cluster", mx_cmd_cluster, "start gateway, stages and expert shards on loopback"},
    {"expert-stats", mx_cmd_expert_stats, "expert load counted by running stages (and shards), as JSON"},
    {"generate", mx_cmd_generate, "run a model on prompt ids and print the generated ids"},
    {"golden", mx_cmd_golden, "check the engine against a golden fixture directory"},
    {"info", mx_cmd_info, "print a model's config and its parameter/memory budget"},
    {"plan", mx_cmd_plan, "size a layout of stages and expert shards against device memory at a context"},
    {"plan-experts", mx_cmd_plan_experts, "place experts on shards and replicas from measured load (EPLB-like)"},
    {"make-model", mx_cmd_make_model, "write a random-weight model in the real checkpoint layout"},
    {"tokenize", mx_cmd_tokenize, "text on stdin -> token ids on one line (tokenizer.json)"},
    {"detokenize", mx_cmd_detokenize, "token ids on stdin -> text"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: mx COMMAND [options]   (mx COMMAND --help for its options; mx --version)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].summary);
}

int main(int argc, char **argv)
{
    if (argc == 2 && (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0)) {
        printf("mx %s\n", MX_VERSION);
        return 0;
    }
    if (argc < 2 || strcmp(argv[1], "help") == 0 || strcmp(argv[1], "--help") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        if (strcmp(argv[1], commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "mx: unknown command \"%s\"\n", argv[1]);
    usage(stderr);
    return 2;
}
