/* test_model_configs.c - configs unlike the released model must work too (issue: head counts
 * that are not powers of two, any attn_type_list, any q/kv grouping, attention width not equal
 * to hidden). For random-weight models of such shapes, the forward pass must give the same
 * logits however the work is cut: one-shot prefill, chunks of 7, token by token, and the
 * sequences batched together versus alone. These are properties of the math, not values
 * computed by our code. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/model.h"
#include "core/model_writer.h"

typedef struct shape {
    const char *what;
    int hidden, heads, head_dim, kv_heads, rotary, layers, experts, top_k, inter;
    const char *types; /* attn_type_list as a string of 0/1 */
} shape;

static const shape shapes[] = {
    {"6 heads, 3 kv heads, softmax first", 96, 6, 16, 3, 8, 4, 5, 2, 64, "1010"},
    {"5 heads, 1 kv head, full rotary, all softmax", 80, 5, 16, 1, 16, 2, 3, 1, 48, "11"},
    {"7 heads, 7 kv heads, all lightning, top-3", 64, 7, 8, 7, 4, 3, 6, 3, 32, "000"},
};

static void make_config(const shape *s, mx_config *cfg)
{
    mx_error err = {0};
    assert_int_equal(mx_model_preset_config("tiny", cfg, &err), 0);
    cfg->hidden_size = s->hidden;
    cfg->num_attention_heads = s->heads;
    cfg->head_dim = s->head_dim;
    cfg->num_key_value_heads = s->kv_heads;
    cfg->rotary_dim = s->rotary;
    cfg->num_hidden_layers = s->layers;
    cfg->num_local_experts = s->experts;
    cfg->num_experts_per_tok = s->top_k;
    cfg->intermediate_size = s->inter;
    cfg->vocab_size = 300;
    for (int l = 0; l < s->layers; l++)
        cfg->attn_type[l] = (unsigned char)(s->types[l] - '0');
    if (mx_config_validate(cfg, &err))
        fail_msg("%s: %s", s->what, err.msg);
}

/* Feeds `prompt` to a fresh sequence in pieces of `chunk` (0 = all at once) and returns the
 * logits after the last token. */
static void run_chunked(mx_model *m, const int32_t *prompt, int n, int chunk, float *logits)
{
    mx_error err = {0};
    mx_sequence *seq;
    assert_int_equal(mx_sequence_create(m, 0, mx_model_config(m)->num_hidden_layers, &seq, &err), 0);
    for (int t = 0; t < n;) {
        int len = chunk && n - t > chunk ? chunk : n - t;
        mx_span span = {0, len};
        mx_batch b = {1, &seq, &span, len};
        if (mx_model_forward(m, &b, prompt + t, logits, &err))
            fail_msg("%s", err.msg);
        t += len;
    }
    mx_sequence_free(m, seq);
}

static double rel_diff(const float *a, const float *b, int n)
{
    double d = 0, s = 0;
    for (int i = 0; i < n; i++) {
        d = fmax(d, fabs((double)a[i] - b[i]));
        s = fmax(s, fabs((double)b[i]));
    }
    return d / (s > 0 ? s : 1);
}

static void cuts_agree(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        const shape *s = &shapes[i];
        mx_config cfg;
        make_config(s, &cfg);
        char dir[] = "/tmp/mx-model-XXXXXX";
        assert_non_null(mkdtemp(dir));
        mx_error err = {0};
        if (mx_make_model_config(&cfg, dir, 11 + i, &err))
            fail_msg("%s: %s", s->what, err.msg);
        mx_load_plan plan = mx_load_plan_full(&cfg);
        mx_weights *w;
        mx_backend *be;
        mx_model *m;
        if (mx_weights_load(dir, &plan, &w, &err) || mx_backend_cpu_create(2, &be, &err) ||
            mx_model_create(w, be, &m, &err))
            fail_msg("%s: %s", s->what, err.msg);

        enum { N = 300, V = 300 };
        int32_t prompts[3][N];
        for (int p = 0; p < 3; p++)
            for (int t = 0; t < N; t++)
                prompts[p][t] = (int32_t)((t * 37 + p * 101 + 7) % V);
        static float one_shot[3][V], got[V];
        for (int p = 0; p < 3; p++)
            run_chunked(m, prompts[p], N - p * 50, 0, one_shot[p]);
        run_chunked(m, prompts[0], N, 7, got);
        if (rel_diff(got, one_shot[0], V) > 1e-5)
            fail_msg("%s: chunks of 7 differ from one-shot prefill by %g", s->what, rel_diff(got, one_shot[0], V));
        run_chunked(m, prompts[0], N, 1, got);
        if (rel_diff(got, one_shot[0], V) > 1e-5)
            fail_msg("%s: token-by-token differs from one-shot prefill by %g", s->what, rel_diff(got, one_shot[0], V));

        /* the three prompts (300, 250, 200 tokens) as one ragged batch */
        mx_sequence *seqs[3];
        mx_span spans[3];
        static int32_t packed[3 * N];
        static float batch_logits[3][V];
        int rows = 0;
        for (int p = 0; p < 3; p++) {
            assert_int_equal(mx_sequence_create(m, 0, cfg.num_hidden_layers, &seqs[p], &err), 0);
            spans[p] = (mx_span){rows, N - p * 50};
            memcpy(packed + rows, prompts[p], sizeof(int32_t) * (size_t)(N - p * 50));
            rows += N - p * 50;
        }
        mx_batch b = {3, seqs, spans, rows};
        if (mx_model_forward(m, &b, packed, &batch_logits[0][0], &err))
            fail_msg("%s: %s", s->what, err.msg);
        for (int p = 0; p < 3; p++) {
            if (rel_diff(batch_logits[p], one_shot[p], V) > 1e-5)
                fail_msg("%s: sequence %d batched differs from alone by %g", s->what, p,
                         rel_diff(batch_logits[p], one_shot[p], V));
            mx_sequence_free(m, seqs[p]);
        }
        mx_model_free(m);
        be->destroy(be);
        mx_weights_free(w);
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
        assert_int_equal(system(cmd), 0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(cuts_agree)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
