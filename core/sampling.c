/* sampling.c - the sampler: repetition penalty, temperature, top-k, top-p, min-p, then a draw
 * from the filtered distribution with the request's RNG. Greedy picks the lowest id among
 * equal maxima, as argmax does in the reference. */
#include "sampling.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

mx_sampling_params mx_sampling_defaults(void)
{
    mx_sampling_params p = {.temperature = 0.f, .top_k = 0, .top_p = 1.f, .min_p = 0.f,
                            .repetition_penalty = 1.f, .seed = 0, .top_logprobs = 0};
    return p;
}

int mx_sampling_validate(const mx_sampling_params *p, mx_error *err)
{
    if (!isfinite(p->temperature) || p->temperature < 0)
        return mx_fail(err, MX_EINVAL, "temperature must be a finite number >= 0, got %g", p->temperature);
    if (p->top_k < 0)
        return mx_fail(err, MX_EINVAL, "top_k must be >= 0, got %d", p->top_k);
    if (!isfinite(p->top_p) || p->top_p <= 0 || p->top_p > 1)
        return mx_fail(err, MX_EINVAL, "top_p must be in (0, 1], got %g", p->top_p);
    if (!isfinite(p->min_p) || p->min_p < 0 || p->min_p > 1)
        return mx_fail(err, MX_EINVAL, "min_p must be in [0, 1], got %g", p->min_p);
    if (!isfinite(p->repetition_penalty) || p->repetition_penalty <= 0)
        return mx_fail(err, MX_EINVAL, "repetition_penalty must be > 0, got %g", p->repetition_penalty);
    if (p->top_logprobs < 0 || p->top_logprobs > MX_MAX_TOP_LOGPROBS)
        return mx_fail(err, MX_EINVAL, "top_logprobs must be in [0, %d], got %d", MX_MAX_TOP_LOGPROBS,
                       p->top_logprobs);
    return 0;
}

static int argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

/* log-softmax normaliser of raw logits: max + log(sum exp(x - max)) in double. */
static double log_normaliser(const float *logits, int vocab)
{
    float mx = logits[argmax(logits, vocab)];
    double sum = 0;
    for (int i = 0; i < vocab; i++)
        sum += exp((double)logits[i] - mx);
    return mx + log(sum);
}

static void fill_logprobs(const float *logits, int vocab, int top_n, mx_sample *out)
{
    double lz = log_normaliser(logits, vocab);
    out->logprob = (float)(logits[out->token] - lz);
    out->n_top = top_n < vocab ? top_n : vocab;
    for (int j = 0; j < out->n_top; j++) { /* partial selection: top_n is small */
        int best = -1;
        for (int i = 0; i < vocab; i++) {
            int taken = 0;
            for (int q = 0; q < j && !taken; q++)
                taken = out->top_ids[q] == i;
            if (!taken && (best < 0 || logits[i] > logits[best]))
                best = i;
        }
        out->top_ids[j] = best;
        out->top_logprobs[j] = (float)(logits[best] - lz);
    }
}

typedef struct {
    float p;
    int id;
} prob_id;

static int by_prob_desc(const void *a, const void *b)
{
    const prob_id *x = a, *y = b;
    if (x->p != y->p)
        return x->p < y->p ? 1 : -1;
    return x->id - y->id;
}

int mx_sample_token(const float *logits, int vocab, const mx_sampling_params *p, const int32_t *history,
                    int n_history, mx_rng *rng, float *work, mx_sample *out, mx_error *err)
{
    if (vocab < 1)
        return mx_fail(err, MX_EINVAL, "sampling over an empty vocabulary");
    MX_TRY(mx_sampling_validate(p, err));
    float *own = NULL;
    if (!work && !(work = own = malloc((size_t)vocab * 2 * sizeof(float))))
        return mx_fail(err, MX_ENOMEM, "out of memory for sampling");
    float *x = work;
    memcpy(x, logits, (size_t)vocab * sizeof(float));
    if (p->repetition_penalty != 1.f) {
        /* HF/vLLM rule: divide positive logits, multiply negative ones, once per distinct token */
        for (int i = 0; i < n_history; i++) {
            int t = history[i];
            if (t < 0 || t >= vocab || x[t] != logits[t])
                continue;
            x[t] = x[t] > 0 ? x[t] / p->repetition_penalty : x[t] * p->repetition_penalty;
        }
    }
    memset(out, 0, sizeof *out);
    if (p->temperature == 0.f) {
        out->token = argmax(x, vocab);
    } else {
        prob_id *cand = malloc((size_t)vocab * sizeof *cand);
        if (!cand) {
            free(own);
            return mx_fail(err, MX_ENOMEM, "out of memory for sampling");
        }
        float mx = x[argmax(x, vocab)];
        double sum = 0;
        for (int i = 0; i < vocab; i++) {
            cand[i].id = i;
            cand[i].p = (float)exp(((double)x[i] - mx) / p->temperature);
            sum += cand[i].p;
        }
        for (int i = 0; i < vocab; i++)
            cand[i].p = (float)(cand[i].p / sum);
        qsort(cand, (size_t)vocab, sizeof *cand, by_prob_desc);
        int n = vocab;
        if (p->top_k > 0 && p->top_k < n)
            n = p->top_k;
        if (p->min_p > 0) {
            float floor_p = p->min_p * cand[0].p;
            int keep = 1;
            while (keep < n && cand[keep].p >= floor_p)
                keep++;
            n = keep;
        }
        if (p->top_p < 1) {
            double acc = 0;
            int keep = 0;
            while (keep < n) {
                acc += cand[keep++].p;
                if (acc >= p->top_p)
                    break;
            }
            n = keep;
        }
        double total = 0;
        for (int i = 0; i < n; i++)
            total += cand[i].p;
        double r = mx_rng_uniform(rng) * total, acc = 0;
        out->token = cand[n - 1].id;
        for (int i = 0; i < n; i++) {
            acc += cand[i].p;
            if (r < acc) {
                out->token = cand[i].id;
                break;
            }
        }
        free(cand);
    }
    fill_logprobs(logits, vocab, p->top_logprobs, out);
    free(own);
    return 0;
}
