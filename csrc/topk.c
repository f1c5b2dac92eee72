/* topk.c - exact magnitude top-k masks in O(n) by radix selection.
 *
 * For non-negative floats the IEEE-754 bit pattern orders like the value, so
 * |w| is ranked by (bits & 0x7fffffff). Three histogram passes (11, 11 and 9
 * bits) find the bit pattern of the keep-th largest magnitude exactly, with
 * no sort and no copy of the weights.
 */
#include <stdlib.h>
#include <string.h>
#include <math.h>

#include "internal.h"

/* Exactly n - floor((1 - topk) n) in double, as the method defines it. For a
 * keep fraction of at most 2^-54, 1 - topk rounds to 1 and nothing is kept. */
int64_t csub_topk_count(int64_t n, double topk)
{
    int64_t zeros = (int64_t)floor((1.0 - topk) * (double)n);
    int64_t keep = n - zeros;
    return keep < 0 ? 0 : (keep > n ? n : keep);
}

static inline uint32_t mag_bits(float v)
{
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return u & 0x7fffffffu;
}

int csub_topk_mask(const float *w, int64_t n, double topk, uint8_t *mask)
{
    int64_t keep = csub_topk_count(n, topk);
    if (keep >= n || keep <= 0) {
        memset(mask, keep > 0, (size_t)n);
        return CSUB_OK;
    }
    /* passes over bits [20,31), [9,20), [0,9) of the 31-bit magnitude */
    static const int shift[3] = {20, 9, 0}, width[3] = {11, 11, 9};
    int64_t *hist = malloc(sizeof(int64_t) * 2048);
    if (!hist) return CSUB_ERR_NOMEM;
    uint32_t prefix = 0, prefix_mask = 0;
    int64_t rank = keep; /* we look for the rank-th largest among those matching the prefix */
    int64_t greater = 0; /* entries known to be strictly larger than the threshold */
    for (int pass = 0; pass < 3; pass++) {
        int nb = 1 << width[pass];
        memset(hist, 0, sizeof(int64_t) * nb);
        for (int64_t i = 0; i < n; i++) {
            uint32_t u = mag_bits(w[i]);
            if ((u & prefix_mask) == prefix) hist[(u >> shift[pass]) & (uint32_t)(nb - 1)]++;
        }
        int b = nb - 1;
        while (b > 0 && hist[b] < rank) {
            rank -= hist[b];
            greater += hist[b];
            b--;
        }
        prefix |= (uint32_t)b << shift[pass];
        prefix_mask |= (uint32_t)(nb - 1) << shift[pass];
    }
    uint32_t thr = prefix;          /* bit pattern of the keep-th largest |w| */
    int64_t ties = keep - greater;  /* how many entries equal to thr are kept */
    for (int64_t i = 0; i < n; i++) {
        uint32_t u = mag_bits(w[i]);
        uint8_t k = u > thr;
        if (u == thr && ties > 0) { k = 1; ties--; }
        mask[i] = k;
    }
    free(hist);
    return CSUB_OK;
}

/* out = w * mask */
void csub_apply_mask(const float *w, const uint8_t *mask, float *out, int64_t n)
{
    #pragma omp parallel for num_threads(csub_get_num_threads()) schedule(static) if (n > CSUB_PAR_MIN)
    for (int64_t i = 0; i < n; i++) out[i] = mask[i] ? w[i] : 0.0f;
}
