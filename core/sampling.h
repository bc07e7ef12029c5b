/* sampling.h - choosing the next token from a logits row: greedy, temperature, top-k, top-p,
 * min-p, repetition penalty, with a seeded per-request RNG (same seed, same tokens), and the
 * log-probabilities of the chosen token and the top-n alternatives. Host-side, fp32. */
#ifndef MX_SAMPLING_H
#define MX_SAMPLING_H

#include <stdint.h>

#include "error.h"
#include "rng.h"

#define MX_MAX_TOP_LOGPROBS 20

typedef struct mx_sampling_params {
    float temperature;        /* 0 = greedy */
    int top_k;                /* 0 = off */
    float top_p;              /* 1 = off; (0, 1] */
    float min_p;              /* 0 = off; [0, 1] */
    float repetition_penalty; /* 1 = off; > 0 */
    uint64_t seed;
    int top_logprobs;         /* how many alternatives to report, 0..MX_MAX_TOP_LOGPROBS */
} mx_sampling_params;

/* Defaults: greedy, no filters, no penalty, seed 0, no alternatives. */
mx_sampling_params mx_sampling_defaults(void);
/* INVALID_ARGUMENT naming the field for NaN, negative or out-of-range values. */
int mx_sampling_validate(const mx_sampling_params *p, mx_error *err);

typedef struct mx_sample {
    int32_t token;
    float logprob;            /* log-softmax of the raw logits at token */
    int n_top;
    int32_t top_ids[MX_MAX_TOP_LOGPROBS];
    float top_logprobs[MX_MAX_TOP_LOGPROBS];
} mx_sample;

/* Picks a token from logits[vocab]. history: tokens seen so far (prompt + generated) for the
 * repetition penalty. work: caller scratch of 2*vocab floats (NULL: allocated here).
 * Logprobs are those of the model's distribution (log-softmax of the raw logits). */
int mx_sample_token(const float *logits, int vocab, const mx_sampling_params *p, const int32_t *history,
                    int n_history, mx_rng *rng, float *work, mx_sample *out, mx_error *err);

#endif
