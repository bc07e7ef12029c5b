/* rng.h - the one pseudo-random generator of mx: xoshiro256** seeded through splitmix64.
 * Used per request by the sampler (same seed, same tokens) and per tensor by the model
 * writer; callers own their state, there is no global generator. */
#ifndef MX_RNG_H
#define MX_RNG_H

#include <stdint.h>

typedef struct mx_rng {
    uint64_t s[4];
} mx_rng;

void mx_rng_seed(mx_rng *rng, uint64_t seed);
/* Counter-based use: the generator of draw `counter` (e.g. a sampling step) of stream `seed`,
 * a function of (seed, counter) alone, so a replayed step draws the same numbers. */
void mx_rng_seed_at(mx_rng *rng, uint64_t seed, uint64_t counter);
uint64_t mx_rng_next(mx_rng *rng);
double mx_rng_uniform(mx_rng *rng); /* [0, 1) */

#endif
