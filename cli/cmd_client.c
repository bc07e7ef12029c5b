/* cmd_client.c - `mx client`: calls a gateway's Generate with prompt ids, prompt text or chat
 * messages and prints what streams in (ids for an id prompt, text for a text or chat prompt),
 * then the finish reason, token counts and timings on stderr. A thin tool for trying a
 * cluster; it holds no model and no tokenizer (the gateway tokenizes). */
#include <getopt.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_util.h"
#include "commands.h"
#include "core/protocol.h"
#include "core/rpc/client.h"
#include "core/rpc/pb.h"
#include "mx/v1/generation.pb-c.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: mx client --addr HOST:PORT (--prompt-ids 1,2,3 | --prompt-ids-file FILE | --prompt TEXT |\n"
               "         --prompt-file FILE | --messages JSON)\n"
               "         [--tools JSON] [--stop STRING]... [--max-new-tokens N] [--temperature T]\n"
               "         [--top-k K] [--top-p P] [--min-p P] [--repetition-penalty R] [--seed S]\n"
               "         [--stop-ids 1,2] [--ignore-eos] [--logprobs N] [--timeout-ms MS]\n"
               "  --messages takes a JSON array of {\"role\", \"content\", [\"name\"]} (content: a string or\n"
               "  a list of {\"type\": \"text\", \"text\": ...}); the assistant turn header is appended.\n"
               "  Text prompts print the streamed text, id prompts the streamed ids. FILE may be - (stdin):\n"
               "  --prompt-ids-file holds ids separated by commas and/or whitespace, --prompt-file text the\n"
               "  gateway tokenizes.\n");
}

static const char *finish_name(Mx__V1__FinishReason r)
{
    const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(&mx__v1__finish_reason__descriptor, (int)r);
    return v ? v->name : "?";
}

/* The parsed --messages: ChatMessage structs pointing into the JSON (kept alive in `root`). */
typedef struct chat_input {
    json_t *root;
    Mx__V1__ChatMessage *msgs, **ptrs;
    Mx__V1__ContentParts *parts;
    Mx__V1__ContentPart *part, **part_ptrs;
    size_t n;
} chat_input;

static void chat_free(chat_input *c)
{
    json_decref(c->root);
    free(c->msgs);
    free(c->ptrs);
    free(c->parts);
    free(c->part);
    free(c->part_ptrs);
}

static int parse_messages(const char *text, chat_input *c)
{
    json_error_t je;
    memset(c, 0, sizeof *c);
    c->root = json_loads(text, 0, &je);
    if (!json_is_array(c->root)) {
        fprintf(stderr, "mx client: --messages: %s\n", c->root ? "must be a JSON array" : je.text);
        return -1;
    }
    size_t n = json_array_size(c->root), n_parts = 0, i, k;
    json_t *m, *p;
    json_array_foreach(c->root, i, m) n_parts += json_array_size(json_object_get(m, "content"));
    c->n = n;
    c->msgs = calloc(n + 1, sizeof *c->msgs);
    c->ptrs = calloc(n + 1, sizeof *c->ptrs);
    c->parts = calloc(n + 1, sizeof *c->parts);
    c->part = calloc(n_parts + 1, sizeof *c->part);
    c->part_ptrs = calloc(n_parts + 1, sizeof *c->part_ptrs);
    if (!c->msgs || !c->ptrs || !c->parts || !c->part || !c->part_ptrs) {
        fprintf(stderr, "mx client: out of memory\n");
        return -1;
    }
    size_t used = 0;
    json_array_foreach(c->root, i, m) {
        Mx__V1__ChatMessage *cm = &c->msgs[i];
        mx__v1__chat_message__init(cm);
        const char *role = json_string_value(json_object_get(m, "role"));
        const char *name = json_string_value(json_object_get(m, "name"));
        json_t *content = json_object_get(m, "content");
        if (!role || !(json_is_string(content) || json_is_array(content))) {
            fprintf(stderr, "mx client: --messages[%zu]: needs a string \"role\" and a string or list \"content\"\n", i);
            return -1;
        }
        cm->role = (char *)role;
        cm->name = (char *)(name ? name : "");
        if (json_is_string(content)) {
            cm->content_case = MX__V1__CHAT_MESSAGE__CONTENT_TEXT;
            cm->text = (char *)json_string_value(content);
        } else {
            Mx__V1__ContentParts *ps = &c->parts[i];
            mx__v1__content_parts__init(ps);
            ps->parts = &c->part_ptrs[used];
            json_array_foreach(content, k, p) {
                Mx__V1__ContentPart *cp = &c->part[used];
                mx__v1__content_part__init(cp);
                const char *type = json_string_value(json_object_get(p, "type"));
                const char *t = json_string_value(json_object_get(p, "text"));
                cp->type = (char *)(type ? type : "text");
                cp->text = (char *)(t ? t : "");
                c->part_ptrs[used++] = cp;
                ps->n_parts++;
            }
            cm->content_case = MX__V1__CHAT_MESSAGE__CONTENT_PARTS;
            cm->parts = ps;
        }
        c->ptrs[i] = cm;
    }
    return 0;
}

int mx_cmd_client(int argc, char **argv)
{
    const char *addr = NULL, *ids_text = NULL, *stop_text = NULL, *prompt_text = NULL, *messages_text = NULL;
    const char *tools_text = NULL, *ids_file = NULL, *prompt_file = NULL;
    char *stop_strs[16];
    size_t n_stop_strs = 0;
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
        {"prompt", required_argument, 0, 'x'},         {"messages", required_argument, 0, 'm'},
        {"tools", required_argument, 0, 't'},          {"stop", required_argument, 0, 'z'},
        {"prompt-ids-file", required_argument, 0, 'I'}, {"prompt-file", required_argument, 0, 'F'},
        {0, 0, 0, 0}};
    int c, bad = 0;
    optind = 1;
    while (!bad && (c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'a': addr = optarg; break;
        case 'p': ids_text = optarg; break;
        case 'S': stop_text = optarg; break;
        case 'x': prompt_text = optarg; break;
        case 'I': ids_file = optarg; break;
        case 'F': prompt_file = optarg; break;
        case 'm': messages_text = optarg; break;
        case 't': tools_text = optarg; break;
        case 'z':
            if (n_stop_strs == sizeof stop_strs / sizeof *stop_strs) {
                fprintf(stderr, "mx client: at most 16 --stop strings\n");
                bad = 1;
            } else {
                stop_strs[n_stop_strs++] = optarg;
            }
            break;
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
    if (bad || !addr || (!!ids_text + !!ids_file + !!prompt_text + !!prompt_file + !!messages_text) != 1 ||
        optind != argc) {
        usage(stderr);
        return 2;
    }
    int32_t *prompt = NULL, *stops = NULL;
    char *file_text = NULL; /* --prompt-file's contents, sent as the text prompt */
    size_t file_len = 0;
    chat_input chat = {0};
    int n_prompt = ids_text ? cli_parse_ids("--prompt-ids", ids_text, &prompt)
                 : ids_file ? cli_parse_ids_file("--prompt-ids-file", ids_file, &prompt) : 0;
    int n_stops = stop_text ? cli_parse_ids("--stop-ids", stop_text, &stops) : 0;
    if (n_prompt < 0 || n_stops < 0 || (messages_text && parse_messages(messages_text, &chat)) ||
        (prompt_file && cli_read_file("--prompt-file", prompt_file, &file_text, &file_len))) {
        free(prompt);
        free(stops);
        chat_free(&chat);
        return 2;
    }
    if (prompt_file && strlen(file_text) != file_len) {
        fprintf(stderr, "mx client: --prompt-file %s: holds a NUL byte at offset %zu (text prompts are UTF-8 text)\n",
                prompt_file, strlen(file_text));
        free(prompt);
        free(stops);
        free(file_text);
        chat_free(&chat);
        return 2;
    }
    if (prompt_file)
        prompt_text = file_text;
    bool show_text = !ids_text && !ids_file;
    Mx__V1__GenerateRequest rq = MX__V1__GENERATE_REQUEST__INIT;
    Mx__V1__LogprobsParams lp = MX__V1__LOGPROBS_PARAMS__INIT;
    rq.prompt_ids = (uint32_t *)prompt;  /* ids were parsed as non-negative */
    rq.n_prompt_ids = (size_t)n_prompt;
    if (prompt_text)
        rq.prompt = (char *)prompt_text;
    if (messages_text) {
        rq.messages = chat.ptrs;
        rq.n_messages = chat.n;
        rq.add_generation_prompt = 1;
    }
    if (tools_text)
        rq.tools_json = (char *)tools_text;
    sp.stop = stop_strs;
    sp.n_stop = n_stop_strs;
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
        rc = mx_rpc_stream_open(ch, MX_GENERATION_GENERATE_METHOD, pl, timeout_ms, &st, &err);
    int printed = 0;
    mx_rpc_bytes msg = {0};
    while (!rc && mx_rpc_stream_read(st, &msg) == 1) {
        ProtobufCMessage *m;
        rc = mx_rpc_pb_unpack(&mx__v1__generate_response__descriptor, msg.data, msg.len, &m, &err);
        mx_rpc_bytes_free(&msg);
        if (rc)
            break;
        const Mx__V1__GenerateResponse *r = (const Mx__V1__GenerateResponse *)m;
        if (show_text)
            fputs(r->text, stdout);
        for (size_t i = 0; !show_text && i < r->n_token_ids; i++)
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
            if (r->matched_stop[0])
                fprintf(stderr, ", matched stop \"%s\"", r->matched_stop);
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
    free(file_text);
    chat_free(&chat);
    return rc ? 1 : 0;
}
