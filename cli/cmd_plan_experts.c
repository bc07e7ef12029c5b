/* cmd_plan_experts.c - `mx plan-experts --stats FILE --shards E --replicas R
 * [--max-experts-per-shard K] [--port-base P] [--json|--config]`: reads measured expert load
 * (the JSON of `mx expert-stats`, or a bare [layer][expert] array of token counts), plans a
 * placement with core/expert_plan.h and prints it as JSON and as a ready-to-paste
 * `experts.shards` libconfig block with each expert-svc's `experts` list, plus the busiest
 * replica's load against the mean, before (contiguous split) and after. */
#include <getopt.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli_util.h"
#include "commands.h"
#include "core/expert_plan.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: mx plan-experts --stats FILE --shards E --replicas R [--max-experts-per-shard K]\n"
               "                       [--port-base P] [--json | --config]\n"
               "FILE: `mx expert-stats` output (its expert_tokens) or a JSON array [layer][expert] of token\n"
               "counts. Load per expert = tokens summed over layers. K (default ceil(experts / E)) slots per\n"
               "shard: slots beyond one copy of every expert hold extra copies of the hottest experts.\n"
               "Prints the plan as JSON, then the `experts` group for the attention stages' config and the\n"
               "`shard_index` / `experts` of each expert-svc (replica addresses 127.0.0.1:P, P+1, ...).\n");
}

/* load[e] = sum over layers (null rows: layers no stage reported) of tokens[l][e]. */
static int read_load(const char *path, double **load, int *n_experts)
{
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) {
        fprintf(stderr, "mx plan-experts: %s:%d: %s\n", path, je.line, je.text);
        return 1;
    }
    json_t *tokens = json_is_array(root) ? root : json_object_get(root, "expert_tokens");
    int rc = 0, E = 0;
    *load = NULL;
    if (!json_is_array(tokens)) {
        fprintf(stderr, "mx plan-experts: %s: expected an expert_tokens array [layer][expert]\n", path);
        rc = 1;
    }
    for (size_t l = 0; !rc && l < json_array_size(tokens); l++) {
        json_t *row = json_array_get(tokens, l);
        if (json_is_null(row))
            continue;
        if (!json_is_array(row) || json_array_size(row) == 0 || (E && (int)json_array_size(row) != E)) {
            fprintf(stderr, "mx plan-experts: %s: layer %zu: expected an array of %s token counts\n", path, l,
                    E ? "the same number of" : "per-expert");
            rc = 1;
            break;
        }
        if (!E) {
            E = (int)json_array_size(row);
            *load = calloc((size_t)E, sizeof **load);
            if (!*load) {
                rc = 1;
                break;
            }
        }
        for (int e = 0; e < E; e++) {
            json_t *v = json_array_get(row, (size_t)e);
            if (!json_is_number(v) || json_number_value(v) < 0) {
                fprintf(stderr, "mx plan-experts: %s: layer %zu expert %d: expected a count >= 0\n", path, l, e);
                rc = 1;
                break;
            }
            (*load)[e] += json_number_value(v);
        }
    }
    if (!rc && !E) {
        fprintf(stderr, "mx plan-experts: %s: no layer has counts\n", path);
        rc = 1;
    }
    json_decref(root);
    *n_experts = E;
    return rc;
}

static json_t *summary(const mx_expert_plan *p)
{
    return json_pack("{s:f, s:f, s:f}", "max_per_replica", p->max_per_replica, "mean_per_replica",
                     p->mean_per_replica, "max_over_mean",
                     p->mean_per_replica > 0 ? p->max_per_replica / p->mean_per_replica : 1.0);
}

static json_t *plan_json(const mx_expert_plan *p, const mx_expert_plan *before, const double *load)
{
    json_t *shards = json_array(), *loads = json_array();
    for (int e = 0; e < p->n_experts; e++)
        json_array_append_new(loads, json_real(load[e]));
    for (int s = 0; s < p->n_shards; s++) {
        json_t *ex = json_array();
        for (int i = 0; i < p->n_held[s]; i++)
            json_array_append_new(ex, json_integer(p->held[(size_t)s * p->slots + i]));
        json_array_append_new(shards, json_pack("{s:i, s:o, s:i, s:f, s:f}", "shard", s, "experts", ex, "replicas",
                                                p->replicas[s], "load", p->shard_load[s], "load_per_replica",
                                                p->shard_load[s] / p->replicas[s]));
    }
    return json_pack("{s:i, s:i, s:i, s:i, s:o, s:o, s:o, s:o}", "experts", p->n_experts, "shards", p->n_shards,
                     "replicas", p->n_replicas, "max_experts_per_shard", p->slots, "load", loads, "plan", shards,
                     "contiguous", summary(before), "planned", summary(p));
}

static void print_config(const mx_expert_plan *p, const mx_expert_plan *before, int port_base)
{
    printf("# expert placement by mx plan-experts: busiest replica %.4g x the mean load (contiguous split: %.4g x)\n",
           p->mean_per_replica > 0 ? p->max_per_replica / p->mean_per_replica : 1.0,
           before->mean_per_replica > 0 ? before->max_per_replica / before->mean_per_replica : 1.0);
    printf("experts = {\n  shards = (\n");
    int port = port_base;
    for (int s = 0; s < p->n_shards; s++) {
        printf("    { experts = [");
        for (int i = 0; i < p->n_held[s]; i++)
            printf(i ? ", %d" : "%d", p->held[(size_t)s * p->slots + i]);
        printf("];\n      replicas = [");
        for (int r = 0; r < p->replicas[s]; r++)
            printf(r ? ", \"127.0.0.1:%d\"" : "\"127.0.0.1:%d\"", port + r);
        port += p->replicas[s];
        printf("]; }%s  # shard %d: load %.6g, %.6g per replica\n", s + 1 < p->n_shards ? "," : "", s,
               p->shard_load[s], p->shard_load[s] / p->replicas[s]);
    }
    printf("  );\n};\n");
    port = port_base;
    for (int s = 0; s < p->n_shards; s++) {
        printf("# expert-svc of shard %d (ports %d..%d): shard_index = %d; experts = [", s, port,
               port + p->replicas[s] - 1, s);
        for (int i = 0; i < p->n_held[s]; i++)
            printf(i ? ", %d" : "%d", p->held[(size_t)s * p->slots + i]);
        printf("];\n");
        port += p->replicas[s];
    }
}

int mx_cmd_plan_experts(int argc, char **argv)
{
    const char *stats = NULL;
    long shards = 0, replicas = 0, per_shard = 0, port_base = 5001;
    bool only_json = false, only_config = false;
    static const struct option opts[] = {{"stats", required_argument, 0, 'f'},
                                         {"shards", required_argument, 0, 'e'},
                                         {"replicas", required_argument, 0, 'r'},
                                         {"max-experts-per-shard", required_argument, 0, 'k'},
                                         {"port-base", required_argument, 0, 'p'},
                                         {"json", no_argument, 0, 'j'},
                                         {"config", no_argument, 0, 'c'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case 'f': stats = optarg; break;
        case 'e': bad = cli_parse_int("--shards", optarg, 1, 4096, &shards); break;
        case 'r': bad = cli_parse_int("--replicas", optarg, 1, 65536, &replicas); break;
        case 'k': bad = cli_parse_int("--max-experts-per-shard", optarg, 1, 65536, &per_shard); break;
        case 'p': bad = cli_parse_int("--port-base", optarg, 1, 65535, &port_base); break;
        case 'j': only_json = true; break;
        case 'c': only_config = true; break;
        default:
            usage(c == 'h' ? stdout : stderr);
            return c == 'h' ? 0 : 2;
        }
        if (bad)
            return 2;
    }
    if (!stats || !shards || !replicas || optind != argc || (only_json && only_config)) {
        usage(stderr);
        return 2;
    }
    double *load = NULL;
    int E = 0;
    if (read_load(stats, &load, &E)) {
        free(load);
        return 1;
    }
    mx_error err = {0};
    mx_expert_plan plan = {0}, before = {0};
    int rc = mx_expert_plan_contiguous(load, E, (int)shards, (int)replicas, &before, &err);
    if (!rc)
        rc = mx_expert_plan_make(load, E, (int)shards, (int)replicas, (int)per_shard, &plan, &err);
    if (rc)
        fprintf(stderr, "mx plan-experts: %s\n", err.msg);
    else {
        if (!only_config) {
            json_t *j = plan_json(&plan, &before, load);
            char *text = json_dumps(j, JSON_INDENT(2) | JSON_REAL_PRECISION(8));
            printf("%s\n", text ? text : "null");
            free(text);
            json_decref(j);
        }
        if (!only_json) {
            if (!only_config)
                printf("\n");
            print_config(&plan, &before, (int)port_base);
        }
    }
    mx_expert_plan_free(&plan);
    mx_expert_plan_free(&before);
    free(load);
    return rc ? 1 : 0;
}
