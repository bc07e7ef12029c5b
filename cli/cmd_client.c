/* cmd_client.c - `mx client`: calls a gateway's Generate with prompt ids and prints the
 * generated ids as they stream in (one line), then the finish reason, token counts and
 * timings on stderr. A thin tool for trying a cluster; it holds no model. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_util.h"
#include "commands.h"
#include "core/rpc/client.h"
#include "core/rpc/pb.h"
#include "mx/v1/generation.pb-c.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: mx client --addr HOST:PORT --prompt-ids 1,2,3 [--max-new-tokens N] [--temperature T]\n"
               "         [--top-k K] [--top-p P] [--min-p P] [--repetition-penalty R] [--seed S]\n"
               "         [--stop-ids 1,2] [--ignore-eos] [--logprobs N] [--timeout-ms MS]\n");
}

static const char *finish_name(Mx__V1__FinishReason r)
{
    const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(&mx__v1__finish_reason__descriptor, (int)r);
    return v ? v->name : "?";
}

int mx_cmd_client(int argc, char **argv)
{
    const char *addr = NULL, *ids_text = NULL, *stop_text = NULL;
    long v, timeout_ms = -1, logprobs = -1;
    double f;
    Mx__V1__SamplingParams sp = MX__V1__SAMPLING_PARAMS__INIT;
    sp.max_new_tokens = 16;
    static const struct option opts[] = {
        {"addr", required_argument, 0, 'a'},          {"prompt-ids", required_argument, 0, 'p'},
        {"max-new-tokens", required_argument, 0, 'n'}, {"temperature", required_argument, 0, 'T'},
        {"top-k", required_argument, 0, 'k'},          {"top-p", required_argument, 0, 'P'},
        {"min-p", required_argument, 0, 'M'},          {"repetition-penalty", required_argument, 0, 'r'},
        {"seed", required_argument, 0, 's'},           {"stop-ids", required_argument, 0, 'S'},
        {"ignore-eos", no_argument, 0, 'i'},           {"logprobs", required_argument, 0, 'l'},
        {"timeout-ms", required_argument, 0, 'o'},     {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    int c, bad = 0;
    optind = 1;
    while (!bad && (c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'a': addr = optarg; break;
        case 'p': ids_text = optarg; break;
        case 'S': stop_text = optarg; break;
        case 'i': sp.ignore_eos = 1; break;
        case 'n': bad = cli_parse_int("--max-new-tokens", optarg, 0, UINT32_MAX, &v); sp.max_new_tokens = (uint32_t)v; break;
        case 'k': bad = cli_parse_int("--top-k", optarg, 0, UINT32_MAX, &v); sp.top_k = (uint32_t)v; break;
        case 's': bad = cli_parse_int("--seed", optarg, 0, INT64_MAX, &v); sp.seed = (uint64_t)v; break;
        case 'l': bad = cli_parse_int("--logprobs", optarg, 0, 20, &logprobs); break;
        case 'o': bad = cli_parse_int("--timeout-ms", optarg, 1, INT32_MAX, &timeout_ms); break;
        case 'T': bad = cli_parse_float("--temperature", optarg, &f); sp.temperature = (float)f; break;
        case 'P': bad = cli_parse_float("--top-p", optarg, &f); sp.top_p = (float)f; break;
        case 'M': bad = cli_parse_float("--min-p", optarg, &f); sp.min_p = (float)f; break;
        case 'r': bad = cli_parse_float("--repetition-penalty", optarg, &f); sp.repetition_penalty = (float)f; break;
        case 'h': usage(stdout); return 0;
        default: bad = 1;
        }
    }
    if (bad || !addr || !ids_text || optind != argc) {
        usage(stderr);
        return 2;
    }
    int32_t *prompt = NULL, *stops = NULL;
    int n_prompt = cli_parse_ids("--prompt-ids", ids_text, &prompt);
    int n_stops = stop_text ? cli_parse_ids("--stop-ids", stop_text, &stops) : 0;
    if (n_prompt < 0 || n_stops < 0) {
        free(prompt);
        free(stops);
        return 2;
    }
    Mx__V1__GenerateRequest rq = MX__V1__GENERATE_REQUEST__INIT;
    Mx__V1__LogprobsParams lp = MX__V1__LOGPROBS_PARAMS__INIT;
    rq.prompt_ids = (uint32_t *)prompt;  /* ids were parsed as non-negative */
    rq.n_prompt_ids = (size_t)n_prompt;
    sp.stop_token_ids = (uint32_t *)stops;
    sp.n_stop_token_ids = (size_t)n_stops;
    rq.sampling = &sp;
    if (logprobs >= 0) {
        lp.enabled = 1;
        lp.top_n = (uint32_t)logprobs;
        rq.logprobs = &lp;
    }
    mx_error err = {0};
    mx_rpc_channel *ch = NULL;
    mx_rpc_stream *st = NULL;
    mx_rpc_payload pl;
    int rc = mx_rpc_channel_create(addr, NULL, &ch, &err);
    if (!rc)
        rc = mx_rpc_pb_pack(&rq.base, &pl, &err);
    if (!rc)
        rc = mx_rpc_stream_open(ch, "/mx.v1.Generation/Generate", pl, timeout_ms, &st, &err);
    int printed = 0;
    mx_rpc_bytes msg = {0};
    while (!rc && mx_rpc_stream_read(st, &msg) == 1) {
        ProtobufCMessage *m;
        rc = mx_rpc_pb_unpack(&mx__v1__generate_response__descriptor, msg.data, msg.len, &m, &err);
        mx_rpc_bytes_free(&msg);
        if (rc)
            break;
        const Mx__V1__GenerateResponse *r = (const Mx__V1__GenerateResponse *)m;
        for (size_t i = 0; i < r->n_token_ids; i++)
            printf(printed++ ? " %u" : "%u", r->token_ids[i]);
        fflush(stdout);
        for (size_t i = 0; i < r->n_logprobs; i++) {
            const Mx__V1__PositionLogprobs *p = r->logprobs[i];
            fprintf(stderr, "token %u logprob %.6f top:", p->chosen ? p->chosen->token_id : 0,
                    p->chosen ? p->chosen->logprob : 0);
            for (size_t j = 0; j < p->n_top; j++)
                fprintf(stderr, " %u:%.6f", p->top[j]->token_id, p->top[j]->logprob);
            fprintf(stderr, "\n");
        }
        if (r->finish_reason != MX__V1__FINISH_REASON__FINISH_REASON_UNSPECIFIED) {
            fprintf(stderr, "finish %s, prompt %u tokens, completion %u tokens", finish_name(r->finish_reason),
                    r->usage ? r->usage->prompt_tokens : 0, r->usage ? r->usage->completion_tokens : 0);
            if (r->timings)
                fprintf(stderr, ", ttft %.1f ms, total %.1f ms", r->timings->time_to_first_token_ms,
                        r->timings->total_ms);
            fprintf(stderr, "%s%s\n", r->error_message[0] ? ": " : "", r->error_message);
        }
        protobuf_c_message_free_unpacked(m, NULL);
    }
    printf("\n");
    if (!rc && st)
        rc = mx_rpc_status_to_error(mx_rpc_stream_status(st), "Generate", &err);
    if (rc)
        fprintf(stderr, "mx client: %s\n", err.msg);
    mx_rpc_stream_close(st);
    mx_rpc_channel_destroy(ch);
    free(prompt);
    free(stops);
    return rc ? 1 : 0;
}
