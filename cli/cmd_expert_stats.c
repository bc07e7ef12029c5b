/* cmd_expert_stats.c - `mx expert-stats --stage ADDR [--stage ADDR ...] [--shard ADDR ...]`:
 * asks attention stages (AttentionStage.Info, its expert_load) and optionally expert shards
 * (ExpertShard.Info) for their load counters and prints one JSON snapshot: routed tokens per
 * layer and expert (the input of `mx plan-experts`), calls and rows per shard and replica. */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "core/protocol.h"
#include "core/rpc/client.h"
#include "mx/internal/v1/attention_stage.pb-c.h"
#include "mx/internal/v1/expert_shard.pb-c.h"

#define MAX_PEERS 64
#define INFO_TIMEOUT_MS 5000

static void usage(FILE *f)
{
    fprintf(f, "usage: mx expert-stats --stage HOST:PORT [--stage HOST:PORT ...] [--shard HOST:PORT ...]\n"
               "Prints a JSON snapshot of the expert load counted since the services started:\n"
               "  expert_tokens[layer][expert]  tokens each stage's router sent to each expert (top-k slots)\n"
               "  shards[]                      calls and rows the stages sent per shard and replica\n"
               "  expert_shards[]               with --shard: what each expert-svc served (calls, rows,\n"
               "                                rows per layer and expert, calls in flight)\n"
               "Feed the file to `mx plan-experts --stats FILE`.\n");
}

/* One Info call; *msg is the unpacked answer (free with protobuf_c_message_free_unpacked). */
static int call_info(const char *addr, const char *method, const ProtobufCMessage *req,
                     const ProtobufCMessageDescriptor *desc, ProtobufCMessage **msg)
{
    mx_error err = {0};
    mx_rpc_channel *ch = NULL;
    if (mx_rpc_channel_create(addr, NULL, &ch, &err)) {
        fprintf(stderr, "mx expert-stats: %s: %s\n", addr, err.msg);
        return 1;
    }
    uint8_t buf[16];
    size_t n = protobuf_c_message_pack(req, buf);
    mx_rpc_result res = {0};
    int rc = mx_rpc_unary(ch, method, mx_rpc_payload_copy(buf, n), INFO_TIMEOUT_MS, &res);
    if (rc)
        fprintf(stderr, "mx expert-stats: %s: %s: %s\n", addr, method, res.status.message);
    else {
        *msg = protobuf_c_message_unpack(desc, NULL, res.response.len, res.response.data);
        if (!*msg) {
            fprintf(stderr, "mx expert-stats: %s: malformed Info answer (%zu bytes)\n", addr, res.response.len);
            rc = 1;
        }
    }
    mx_rpc_result_free(&res);
    mx_rpc_channel_destroy(ch);
    return rc ? 1 : 0;
}

/* Grows the [layers][experts] matrix to hold layer l (new rows are null until a stage fills them). */
static json_t *layer_row(json_t *tokens, int l)
{
    while ((int)json_array_size(tokens) <= l)
        json_array_append_new(tokens, json_null());
    return json_array_get(tokens, (size_t)l);
}

/* obj[key] += v (stages share the expert tier: their counts add up). */
static void add_to(json_t *obj, const char *key, uint64_t v)
{
    json_object_set_new(obj, key, json_integer(json_integer_value(json_object_get(obj, key)) + (json_int_t)v));
}

/* Adds a stage's counters: its layers into tokens, its shards into the cluster-wide shards list
 * (stages share the expert tier, so calls from every stage add up per shard and replica). */
static int add_stage(const char *addr, const Mx__Internal__V1__StageInfoResponse *info, json_t *tokens,
                     json_t *shards, json_t *stages, int *num_experts)
{
    const Mx__Internal__V1__ExpertLoad *ld = info->expert_load;
    json_t *st = json_pack("{s:s, s:i, s:i, s:i}", "address", addr, "stage", (int)info->stage_index, "first_layer",
                           (int)info->first_layer, "end_layer", (int)info->end_layer);
    json_array_append_new(stages, st);
    if (!ld) { /* experts local to the stage: nothing routed */
        json_object_set_new(st, "expert_load", json_false());
        return 0;
    }
    if (*num_experts && *num_experts != (int)ld->num_experts) {
        fprintf(stderr, "mx expert-stats: %s reports %u experts, another stage %d\n", addr, ld->num_experts,
                *num_experts);
        return 1;
    }
    *num_experts = (int)ld->num_experts;
    for (size_t i = 0; i < ld->n_layers; i++) {
        const Mx__Internal__V1__LayerTokens *lt = ld->layers[i];
        json_t *row = layer_row(tokens, (int)lt->layer);
        if (json_is_null(row)) {
            row = json_array();
            for (size_t e = 0; e < lt->n_tokens; e++)
                json_array_append_new(row, json_integer(0));
            json_array_set_new(tokens, lt->layer, row);
        }
        for (size_t e = 0; e < lt->n_tokens && e < json_array_size(row); e++)
            json_array_set_new(row, e,
                               json_integer(json_integer_value(json_array_get(row, e)) + (json_int_t)lt->tokens[e]));
    }
    for (size_t i = 0; i < ld->n_shards; i++) {
        const Mx__Internal__V1__ShardLoad *sl = ld->shards[i];
        while (json_array_size(shards) <= sl->shard)
            json_array_append_new(shards, json_pack("{s:i, s:I, s:I, s:[]}", "shard", (int)json_array_size(shards),
                                                    "calls", (json_int_t)0, "rows", (json_int_t)0, "replicas"));
        json_t *sh = json_array_get(shards, sl->shard), *reps = json_object_get(sh, "replicas");
        add_to(sh, "calls", sl->calls);
        add_to(sh, "rows", sl->rows);
        for (size_t r = 0; r < sl->n_replicas; r++) {
            const Mx__Internal__V1__ReplicaLoad *rl = sl->replicas[r];
            json_t *rep = NULL;
            for (size_t k = 0; k < json_array_size(reps) && !rep; k++)
                if (!strcmp(json_string_value(json_object_get(json_array_get(reps, k), "address")), rl->address))
                    rep = json_array_get(reps, k);
            if (!rep) {
                rep = json_pack("{s:s, s:I, s:I, s:I}", "address", rl->address, "calls", (json_int_t)0, "rows",
                                (json_int_t)0, "in_flight", (json_int_t)0);
                json_array_append_new(reps, rep);
            }
            add_to(rep, "calls", rl->calls);
            add_to(rep, "rows", rl->rows);
            add_to(rep, "in_flight", rl->in_flight);
        }
    }
    return 0;
}

static json_t *shard_json(const char *addr, const Mx__Internal__V1__ShardInfoResponse *info)
{
    json_t *rows = json_object();
    for (size_t i = 0; i < info->n_expert_rows; i++) {
        const Mx__Internal__V1__ExpertRows *x = info->expert_rows[i];
        char l[16], e[16];
        snprintf(l, sizeof l, "%u", x->layer);
        snprintf(e, sizeof e, "%u", x->expert_id);
        json_t *per = json_object_get(rows, l);
        if (!per) {
            per = json_object();
            json_object_set_new(rows, l, per);
        }
        json_object_set_new(per, e, json_integer((json_int_t)x->rows));
    }
    return json_pack("{s:s, s:i, s:I, s:I, s:i, s:o}", "address", addr, "shard_index", (int)info->shard_index,
                     "calls_total", (json_int_t)info->calls_total, "rows_total", (json_int_t)info->rows_total,
                     "in_flight", (int)info->in_flight, "expert_rows", rows);
}

int mx_cmd_expert_stats(int argc, char **argv)
{
    const char *stage_addr[MAX_PEERS], *shard_addr[MAX_PEERS];
    int n_stage = 0, n_shard = 0;
    static const struct option opts[] = {{"stage", required_argument, 0, 's'},
                                         {"shard", required_argument, 0, 'e'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 's' && n_stage < MAX_PEERS)
            stage_addr[n_stage++] = optarg;
        else if (c == 'e' && n_shard < MAX_PEERS)
            shard_addr[n_shard++] = optarg;
        else {
            usage(c == 'h' ? stdout : stderr);
            return c == 'h' ? 0 : 2;
        }
    }
    if (n_stage == 0 || optind != argc) {
        usage(stderr);
        return 2;
    }
    json_t *tokens = json_array(), *shards = json_array(), *stages = json_array(), *eshards = json_array();
    int num_experts = 0, rc = 0;
    for (int i = 0; i < n_stage && !rc; i++) {
        Mx__Internal__V1__StageInfoRequest rq = MX__INTERNAL__V1__STAGE_INFO_REQUEST__INIT;
        ProtobufCMessage *m = NULL;
        rc = call_info(stage_addr[i], MX_STAGE_INFO_METHOD, &rq.base,
                       &mx__internal__v1__stage_info_response__descriptor, &m);
        if (!rc)
            rc = add_stage(stage_addr[i], (const Mx__Internal__V1__StageInfoResponse *)m, tokens, shards, stages,
                           &num_experts);
        if (m)
            protobuf_c_message_free_unpacked(m, NULL);
    }
    for (int i = 0; i < n_shard && !rc; i++) {
        Mx__Internal__V1__ShardInfoRequest rq = MX__INTERNAL__V1__SHARD_INFO_REQUEST__INIT;
        ProtobufCMessage *m = NULL;
        rc = call_info(shard_addr[i], MX_EXPERT_INFO_METHOD, &rq.base,
                       &mx__internal__v1__shard_info_response__descriptor, &m);
        if (!rc)
            json_array_append_new(eshards, shard_json(shard_addr[i], (const Mx__Internal__V1__ShardInfoResponse *)m));
        if (m)
            protobuf_c_message_free_unpacked(m, NULL);
    }
    if (!rc) {
        json_t *root = json_pack("{s:i, s:i, s:O, s:O, s:O}", "num_layers", (int)json_array_size(tokens), "num_experts",
                                 num_experts, "expert_tokens", tokens, "shards", shards, "stages", stages);
        if (n_shard)
            json_object_set(root, "expert_shards", eshards);
        char *text = json_dumps(root, JSON_COMPACT);
        if (text)
            printf("%s\n", text);
        free(text);
        json_decref(root);
    }
    json_decref(tokens);
    json_decref(shards);
    json_decref(stages);
    json_decref(eshards);
    return rc;
}
