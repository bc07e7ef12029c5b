/* rng.c - xoshiro256** (Blackman and Vigna) with splitmix64 seeding. */
#include "rng.h"

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void mx_rng_seed(mx_rng *rng, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        rng->s[i] = splitmix64(&seed);
}

void mx_rng_seed_at(mx_rng *rng, uint64_t seed, uint64_t counter)
{
    /* the counter goes through its own splitmix round first: nearby (seed, step) pairs give
     * unrelated states, and (seed, 0) is not mx_rng_seed(seed) */
    uint64_t c = counter ^ 0xd1b54a32d192ed03ull;
    mx_rng_seed(rng, seed ^ splitmix64(&c));
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t mx_rng_next(mx_rng *rng)
{
    uint64_t *s = rng->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double mx_rng_uniform(mx_rng *rng)
{
    return (double)(mx_rng_next(rng) >> 11) * 0x1.0p-53;
}
