/* quant.c - fake quantization (affine, per tensor), min/max, per-channel scaling.
 *
 * Semantics: csrc/include/csub.h, section "quant" (LCS-SPEC section 3).
 */
#include <float.h>
#include <math.h>

#include "internal.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define BLOCK 8192    /* elements per work item of the parallel loops */

/* Signed range of a b-bit integer. */
static void qrange(int bits, int32_t *qmin, int32_t *qmax)
{
    *qmin = -(int32_t)(1u << (bits - 1));
    *qmax = (int32_t)(1u << (bits - 1)) - 1;
}

void csub_quant_params(float rmin, float rmax, int bits, float *scale, int32_t *zero_point)
{
    int32_t qmin, qmax;
    qrange(bits, &qmin, &qmax);
    /* In double: rmax - rmin cannot overflow, and the quotient rounds to float once. */
    double lo = rmin < 0.0f ? (double)rmin : 0.0;
    double hi = rmax > 0.0f ? (double)rmax : 0.0;
    float s = (float)((hi - lo) / (double)(qmax - qmin));
    if (!(s > 0.0f)) { /* empty range, or one so small that its scale underflows (or NaN) */
        *scale = 0.0f;
        *zero_point = 0;
        return;
    }
    /* zero_point = round(qmin - rmin / scale) with the exact scale, that is
     * qmin - rmin (qmax - qmin) / (rmax - rmin). For float inputs the product
     * is exact in double and so is the difference (unless the exponents are
     * more than ~28 apart), so the quotient is the exact value rounded once.
     * An exact tie (every symmetric range gives qmin + (2^b - 1) / 2) thus
     * rounds half to even as the formula says, not to whichever side the
     * float scale's own rounding error pushes it. Whatever the zero point,
     * x = 0 maps to q = zero_point and back to exactly 0. */
    double z = nearbyint((double)qmin - lo * (double)(qmax - qmin) / (hi - lo));
    if (!(z >= qmin)) z = qmin;
    if (z > qmax) z = qmax;
    *scale = s;
    *zero_point = (int32_t)z;
}

/* Round to the nearest integer, ties to even, for |v| <= 2^22: adding 1.5 * 2^23
 * leaves no fraction bits, so the addition itself rounds (half to even under
 * the default rounding mode; 1.5 * 2^23 is even) and the subtraction is exact.
 * Same result as nearbyintf, but it vectorises without SSE4.1. Needs float
 * expressions evaluated in float (FLT_EVAL_METHOD 0: x86-64, AArch64). */
#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD == 0
static inline float round_half_even(float v)
{
    const float magic = 12582912.0f; /* 1.5 * 2^23 */
    return (v + magic) - magic;
}
#else
static inline float round_half_even(float v) { return nearbyintf(v); }
#endif

/* y = (clip(round(x / scale) + zp, qmin, qmax) - zp) * scale
 *   = round(clip(x / scale, qmin - zp, qmax - zp)) * scale,
 * because zp, qmin - zp and qmax - zp are integers and rounding is monotone.
 * Clipping first keeps |v| <= 2^16 for round_half_even and sends +-inf to the
 * end points; NaN fails both comparisons and comes out as NaN. */
static int32_t fq_run(const float *x, float *y, int32_t n,
                      float scale, float lo, float hi)
{
    int32_t nan = 0; /* 32-bit: keeps the vectorised count cheap; n <= BLOCK */
    for (int32_t i = 0; i < n; i++) {
        float v = x[i] / scale;
        nan += x[i] != x[i];
        v = v < lo ? lo : v;
        v = v > hi ? hi : v;
        y[i] = round_half_even(v) * scale;
    }
    return nan;
}

static int32_t zero_run(const float *x, float *y, int32_t n)
{
    int32_t nan = 0;
    for (int32_t i = 0; i < n; i++) {
        nan += x[i] != x[i];
        y[i] = 0.0f;
    }
    return nan;
}

int64_t csub_fake_quant_forward_count_nan(const float *x, float *y, int64_t n,
                                          float scale, int32_t zero_point, int bits)
{
    int32_t qmin, qmax;
    qrange(bits, &qmin, &qmax);
    float lo = (float)(qmin - zero_point), hi = (float)(qmax - zero_point);
    int use_scale = scale > 0.0f && isfinite(scale);
    int64_t nan = 0, nblocks = (n + BLOCK - 1) / BLOCK;
    #pragma omp parallel for num_threads(csub_get_num_threads()) schedule(static) \
        reduction(+:nan) if (n > CSUB_PAR_MIN)
    for (int64_t k = 0; k < nblocks; k++) {
        int64_t b = k * BLOCK;
        int32_t m = (int32_t)(n - b < BLOCK ? n - b : BLOCK);
        nan += use_scale ? fq_run(x + b, y + b, m, scale, lo, hi) : zero_run(x + b, y + b, m);
    }
    return nan;
}

void csub_fake_quant_forward(const float *x, float *y, int64_t n, float scale,
                             int32_t zero_point, int bits)
{
    (void)csub_fake_quant_forward_count_nan(x, y, n, scale, zero_point, bits);
}

/* Min and max of one block (n >= 1); NaN wins. */
#if defined(__SSE2__)
/* _mm_min_ps(v, m) is v < m ? v : m, so a NaN v leaves m as it was; NaN is
 * tracked apart (cmpunord) and wins at the end. 16 floats per step in four
 * independent accumulators each. */
static void minmax_run(const float *x, int64_t n, float *mn, float *mx)
{
    int64_t i = 0;
    float a = x[0], b = x[0];
    int nan = x[0] != x[0];
    if (n >= 16) {
        __m128 m0 = _mm_set1_ps(a), m1 = m0, m2 = m0, m3 = m0;
        __m128 M0 = m0, M1 = m0, M2 = m0, M3 = m0;
        __m128 u = _mm_setzero_ps();
        for (; i + 16 <= n; i += 16) {
            __m128 v0 = _mm_loadu_ps(x + i), v1 = _mm_loadu_ps(x + i + 4);
            __m128 v2 = _mm_loadu_ps(x + i + 8), v3 = _mm_loadu_ps(x + i + 12);
            m0 = _mm_min_ps(v0, m0); M0 = _mm_max_ps(v0, M0);
            m1 = _mm_min_ps(v1, m1); M1 = _mm_max_ps(v1, M1);
            m2 = _mm_min_ps(v2, m2); M2 = _mm_max_ps(v2, M2);
            m3 = _mm_min_ps(v3, m3); M3 = _mm_max_ps(v3, M3);
            u = _mm_or_ps(u, _mm_or_ps(_mm_or_ps(_mm_cmpunord_ps(v0, v0), _mm_cmpunord_ps(v1, v1)),
                                       _mm_or_ps(_mm_cmpunord_ps(v2, v2), _mm_cmpunord_ps(v3, v3))));
        }
        m0 = _mm_min_ps(_mm_min_ps(m0, m1), _mm_min_ps(m2, m3));
        M0 = _mm_max_ps(_mm_max_ps(M0, M1), _mm_max_ps(M2, M3));
        float t[4], T[4];
        _mm_storeu_ps(t, m0);
        _mm_storeu_ps(T, M0);
        for (int j = 0; j < 4; j++) {
            a = t[j] < a ? t[j] : a;
            b = T[j] > b ? T[j] : b;
        }
        nan |= _mm_movemask_ps(u) != 0;
    }
    for (; i < n; i++) {
        float v = x[i];
        a = v < a ? v : a;
        b = v > b ? v : b;
        nan |= v != v;
    }
    *mn = nan ? NAN : a;
    *mx = nan ? NAN : b;
}
#else
static void minmax_run(const float *x, int64_t n, float *mn, float *mx)
{
    float a = x[0], b = x[0];
    int nan = 0;
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        a = v < a ? v : a;
        b = v > b ? v : b;
        nan |= v != v;
    }
    *mn = nan ? NAN : a;
    *mx = nan ? NAN : b;
}
#endif

/* min/max of two partial results; NaN wins */
static inline float min_nan(float a, float b) { return a != a ? a : (b != b || b < a) ? b : a; }
static inline float max_nan(float a, float b) { return a != a ? a : (b != b || b > a) ? b : a; }

void csub_minmax(const float *x, int64_t n, float *mn, float *mx)
{
    if (n <= 0) {
        *mn = INFINITY;
        *mx = -INFINITY;
        return;
    }
    int64_t nblocks = (n + BLOCK - 1) / BLOCK;
    float a0, b0;
    minmax_run(x, n < BLOCK ? n : BLOCK, &a0, &b0);
    float a = a0, b = b0;
    #pragma omp parallel num_threads(csub_get_num_threads()) if (n > CSUB_PAR_MIN)
    {
        float ta = a0, tb = b0;
        #pragma omp for schedule(static) nowait
        for (int64_t k = 1; k < nblocks; k++) {
            int64_t s = k * BLOCK, m = n - s < BLOCK ? n - s : BLOCK;
            float ba, bb;
            minmax_run(x + s, m, &ba, &bb);
            ta = min_nan(ta, ba);
            tb = max_nan(tb, bb);
        }
        #pragma omp critical(csub_minmax)
        {
            a = min_nan(a, ta);
            b = max_nan(b, tb);
        }
    }
    *mn = a;
    *mx = b;
}

void csub_channel_scale(const float *x, const float *s, float *y,
                        int64_t N, int64_t C, int64_t HW)
{
    int64_t rows = N * C;
    #pragma omp parallel for num_threads(csub_get_num_threads()) schedule(static) \
        if (rows * HW > CSUB_PAR_MIN && rows > 1)
    for (int64_t r = 0; r < rows; r++) {
        float sc = s[r % C];
        const float *xr = x + r * HW;
        float *yr = y + r * HW;
        for (int64_t i = 0; i < HW; i++) yr[i] = xr[i] * sc;
    }
}
