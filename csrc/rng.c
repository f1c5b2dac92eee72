/* rng.c - xoshiro256** generator (seeded by splitmix64) and the alpha samplers. */
#include <math.h>

#include "internal.h"

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void csub_rng_seed(csub_rng *rng, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) rng->s[i] = splitmix64(&x);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t csub_rng_next(csub_rng *rng)
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

/* [0, 1), 53 random bits */
double csub_rng_uniform(csub_rng *rng)
{
    return (double)(csub_rng_next(rng) >> 11) * 0x1.0p-53;
}

/* Box-Muller on pairs; (0, 1] for the logarithm */
void csub_rng_normal(csub_rng *rng, float *out, int64_t n, float mean, float std)
{
    for (int64_t i = 0; i < n; i += 2) {
        double u1 = 1.0 - csub_rng_uniform(rng), u2 = csub_rng_uniform(rng);
        double r = sqrt(-2.0 * log(u1)), th = 6.283185307179586 * u2;
        out[i] = (float)(mean + std * r * cos(th));
        if (i + 1 < n) out[i + 1] = (float)(mean + std * r * sin(th));
    }
}

void csub_rng_uniform_fill(csub_rng *rng, float *out, int64_t n, float lo, float hi)
{
    for (int64_t i = 0; i < n; i++) {
        float v = (float)(lo + (hi - (double)lo) * csub_rng_uniform(rng));
        out[i] = v < hi || lo == hi ? v : lo; /* rounding to float must not reach hi */
    }
}

/* with probability p an endpoint (lo or hi, 1/2 each), otherwise U[lo, hi] */
double csub_sample_alpha_biased(csub_rng *rng, double lo, double hi, double p)
{
    if (csub_rng_uniform(rng) < p) return csub_rng_uniform(rng) < 0.5 ? lo : hi;
    return lo + (hi - lo) * csub_rng_uniform(rng);
}

/* k/K with k uniform in 1..K */
double csub_sample_alpha_discrete(csub_rng *rng, int64_t K)
{
    /* Lemire-free simple rejection keeps it exactly uniform */
    uint64_t range = (uint64_t)K, limit = UINT64_MAX - UINT64_MAX % range, r;
    do r = csub_rng_next(rng); while (r >= limit);
    return (double)(r % range + 1) / (double)K;
}

/* out = [0, 1, U, U, ...] */
void csub_sample_alpha_sandwich(csub_rng *rng, double *out, int64_t n)
{
    out[0] = 0.0;
    out[1] = 1.0;
    for (int64_t i = 2; i < n; i++) out[i] = csub_rng_uniform(rng);
}
