/* norm.c - batch norm and group norm (instance norm is G = C), forward and backward.
 * Statistics are accumulated in double; the variance is the biased one
 * (divide by the count) for normalisation, as every framework does. */
#include <math.h>
#include <stdlib.h>
#include <omp.h>

#include "internal.h"

#if CSUB_X86
#include <immintrin.h>
#endif

/* The loops over a plane are compiled for AVX-512, AVX2 and the baseline
 * (CSUB_VARIANTS, internal.h). Floating-point contraction is off (internal.h),
 * so every variant computes the same bits. */

/* Sums over a run of floats in double with NL independent partial sums
 * (combined in a fixed order), so that the additions pipeline and vectorise
 * instead of waiting on one another. */
#define NL 8

/* *out = sum x */
static CSUB_ALWAYS_INLINE void lsum_body(const float *x, int64_t n, double *out)
{
    double acc[NL] = {0};
    int64_t i = 0;
    for (; i + NL <= n; i += NL)
        for (int l = 0; l < NL; l++) acc[l] += x[i + l];
    double s = 0.0;
    for (; i < n; i++) s += x[i];
    for (int l = 0; l < NL; l++) s += acc[l];
    *out = s;
}
CSUB_VARIANTS(lsum, (const float *x, int64_t n, double *out), (x, n, out))

/* *out = sum (x - mu)^2 */
static CSUB_ALWAYS_INLINE void lsumsq_body(const float *x, int64_t n, double mu, double *out)
{
    double acc[NL] = {0};
    int64_t i = 0;
    for (; i + NL <= n; i += NL)
        for (int l = 0; l < NL; l++) {
            double d = x[i + l] - mu;
            acc[l] += d * d;
        }
    double s = 0.0;
    for (; i < n; i++) {
        double d = x[i] - mu;
        s += d * d;
    }
    for (int l = 0; l < NL; l++) s += acc[l];
    *out = s;
}
CSUB_VARIANTS(lsumsq, (const float *x, int64_t n, double mu, double *out), (x, n, mu, out))

/* With d = x - mu and e = dy * gm in float: s[0] += sum e, s[1] += sum e * d, s[2] += sum d. */
static CSUB_ALWAYS_INLINE void lsums3_body(const float *x, const float *dy, int64_t n, float mu, float gm,
                                           double s[3])
{
    double a0[NL] = {0}, a1[NL] = {0}, a2[NL] = {0};
    int64_t i = 0;
    for (; i + NL <= n; i += NL)
        for (int l = 0; l < NL; l++) {
            float d = x[i + l] - mu, e = dy[i + l] * gm;
            a0[l] += e;
            a1[l] += (double)e * d;
            a2[l] += d;
        }
    double s0 = 0.0, s1 = 0.0, s2 = 0.0;
    for (; i < n; i++) {
        float d = x[i] - mu, e = dy[i] * gm;
        s0 += e;
        s1 += (double)e * d;
        s2 += d;
    }
    for (int l = 0; l < NL; l++) s0 += a0[l], s1 += a1[l], s2 += a2[l];
    s[0] += s0, s[1] += s1, s[2] += s2;
}
CSUB_VARIANTS(lsums3, (const float *x, const float *dy, int64_t n, float mu, float gm, double s[3]),
              (x, dy, n, mu, gm, s))

/* y[n] = ((x - mh) - ml) a + b (centred first, mu = mh + ml split in float hi +
 * lo: folding mu into the shift cancels when |mu| >> std), then max(y, 0) when
 * relu (NaN propagates). The body is inlined into each variant that uses it. */
static CSUB_ALWAYS_INLINE void affine_body(const float *x, float *y, int64_t n, double mu,
                                                              float a, float b, int relu)
{
    float mh = (float)mu, ml = (float)(mu - (double)mh);
    if (relu)
        for (int64_t i = 0; i < n; i++) {
            float t = ((x[i] - mh) - ml) * a + b;
            y[i] = t <= 0.0f ? 0.0f : t;
        }
    else
        for (int64_t i = 0; i < n; i++) y[i] = ((x[i] - mh) - ml) * a + b;
}

static CSUB_ALWAYS_INLINE void centred_affine_body(const float *x, float *y, int64_t n, double mu, float a, float b,
                                                   int relu)
{
    affine_body(x, y, n, mu, a, b, relu);
}
CSUB_VARIANTS(centred_affine, (const float *x, float *y, int64_t n, double mu, float a, float b, int relu),
              (x, y, n, mu, a, b, relu))

/* Group norm's input gradient over one channel's plane:
 * dx = is (dy gm - k1 - ((x - mu) - df) is k2) */
static CSUB_ALWAYS_INLINE void gn_dx_body(const float *x, const float *dy, float *dx, int64_t n, float mu, float df,
                                          float is, float gm, float k1, float k2)
{
    for (int64_t i = 0; i < n; i++) {
        float xh = ((x[i] - mu) - df) * is;
        dx[i] = is * (dy[i] * gm - k1 - xh * k2);
    }
}
CSUB_VARIANTS(gn_dx, (const float *x, const float *dy, float *dx, int64_t n, float mu, float df, float is, float gm,
                      float k1, float k2), (x, dy, dx, n, mu, df, is, gm, k1, k2))

/* gn_dx in place: d holds dy on entry and dx on return. One pointer, so that
 * the loop vectorises (dy and dx as two pointers that are equal fail the
 * compiler's overlap check and run the scalar loop). */
static CSUB_ALWAYS_INLINE void gn_dx_ip_body(const float *x, float *d, int64_t n, float mu, float df, float is,
                                             float gm, float k1, float k2)
{
    for (int64_t i = 0; i < n; i++) {
        float xh = ((x[i] - mu) - df) * is;
        d[i] = is * (d[i] * gm - k1 - xh * k2);
    }
}
CSUB_VARIANTS(gn_dx_ip, (const float *x, float *d, int64_t n, float mu, float df, float is, float gm, float k1,
                         float k2), (x, d, n, mu, df, is, gm, k1, k2))

/* gn_dx_ip plus r[n] (a residual branch's gradient): the bits of gn_dx then an add */
static CSUB_ALWAYS_INLINE void gn_dx_add_ip_body(const float *x, float *d, const float *r, int64_t n, float mu,
                                                 float df, float is, float gm, float k1, float k2)
{
    for (int64_t i = 0; i < n; i++) {
        float xh = ((x[i] - mu) - df) * is;
        float v = is * (d[i] * gm - k1 - xh * k2);
        d[i] = v + r[i];
    }
}
CSUB_VARIANTS(gn_dx_add_ip, (const float *x, float *d, const float *r, int64_t n, float mu, float df, float is,
                             float gm, float k1, float k2), (x, d, r, n, mu, df, is, gm, k1, k2))

/* Batch norm's input gradient over one plane: dx = g (dy - k1 - ((x - mu) - df) is k2) */
static CSUB_ALWAYS_INLINE void bn_dx_body(const float *x, const float *dy, float *dx, int64_t n, float mu, float df,
                                          float is, float g, float k1, float k2)
{
    for (int64_t i = 0; i < n; i++) dx[i] = g * (dy[i] - k1 - ((x[i] - mu) - df) * is * k2);
}
CSUB_VARIANTS(bn_dx, (const float *x, const float *dy, float *dx, int64_t n, float mu, float df, float is, float g,
                      float k1, float k2), (x, dy, dx, n, mu, df, is, g, k1, k2))

/* The ReLU's backward: e[n] = y <= 0 ? 0 : dy (y the ReLU's output, whose sign
 * is its input's; NaN passes), the bits of csub_relu_backward. dy is read
 * unconditionally so that the select vectorises. */
static CSUB_ALWAYS_INLINE void relu_mask_body(const float *y, const float *dy, float *e, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        float d = dy[i];
        e[i] = y[i] <= 0.0f ? 0.0f : d;
    }
}
CSUB_VARIANTS(relu_mask, (const float *y, const float *dy, float *e, int64_t n), (y, dy, e, n))

/* bn_dx in place (d: dy on entry, dx on return; one pointer, as gn_dx_ip), plus r[n] when r */
static CSUB_ALWAYS_INLINE void bn_dx_ip_body(const float *x, float *d, const float *r, int64_t n, float mu, float df,
                                             float is, float g, float k1, float k2)
{
    if (r)
        for (int64_t i = 0; i < n; i++) {
            float v = g * (d[i] - k1 - ((x[i] - mu) - df) * is * k2);
            d[i] = v + r[i];
        }
    else
        for (int64_t i = 0; i < n; i++) d[i] = g * (d[i] - k1 - ((x[i] - mu) - df) * is * k2);
}
CSUB_VARIANTS(bn_dx_ip, (const float *x, float *d, const float *r, int64_t n, float mu, float df, float is, float g,
                         float k1, float k2), (x, d, r, n, mu, df, is, g, k1, k2))

/* Batch norm, forward beside backward; relu != 0 fuses the ReLU that follows
 * (y = max(norm(x), 0), the bits of the two in turn), as for group norm below. */
/* x[N,C,HW], gamma/beta[C] -> y[N,C,HW], mean/invstd[C]; running stats updated in training */
static void bn_forward(const float *x, const float *gamma, const float *beta, float *y, float *mean, float *invstd,
                       float *running_mean, float *running_var, int64_t N, int64_t C, int64_t HW, float momentum,
                       float eps, int training, int relu)
{
    int64_t m = N * HW;
    #pragma omp parallel for num_threads(csub_get_num_threads()) schedule(static)
    for (int64_t c = 0; c < C; c++) {
        double mu, var;
        if (training) {
            double s = 0.0, t;
            for (int64_t n = 0; n < N; n++) lsum(x + (n * C + c) * HW, HW, &t), s += t;
            mu = s / (double)m;
            double v = 0.0;
            for (int64_t n = 0; n < N; n++) lsumsq(x + (n * C + c) * HW, HW, mu, &t), v += t;
            var = v / (double)m;
            if (running_mean) {
                running_mean[c] = (float)((1.0 - momentum) * running_mean[c] + momentum * mu);
                running_var[c] = (float)((1.0 - momentum) * running_var[c] +
                                         momentum * var * (double)m / (double)(m - 1));
            }
        } else {
            mu = running_mean[c];
            var = running_var[c];
        }
        float is = (float)(1.0 / sqrt(var + eps));
        mean[c] = (float)mu;
        invstd[c] = is;
        /* y = (x - mu) * a + beta, centred first: folding mu into the shift
         * (x * a + (beta - mu * a)) cancels catastrophically when |mu| >> std.
         * mu is split into float hi + lo so that x - hi is exact near mu. */
        for (int64_t n = 0; n < N; n++)
            centred_affine(x + (n * C + c) * HW, y + (n * C + c) * HW, HW, mu, gamma[c] * is, beta[c], relu);
    }
}

void csub_batchnorm_forward(const float *x, const float *gamma, const float *beta,
                            float *y, float *mean, float *invstd,
                            float *running_mean, float *running_var,
                            int64_t N, int64_t C, int64_t HW,
                            float momentum, float eps, int training)
{
    bn_forward(x, gamma, beta, y, mean, invstd, running_mean, running_var, N, C, HW, momentum, eps, training, 0);
}

void csub_batchnorm_relu_forward(const float *x, const float *gamma, const float *beta,
                                 float *y, float *mean, float *invstd,
                                 float *running_mean, float *running_var,
                                 int64_t N, int64_t C, int64_t HW,
                                 float momentum, float eps, int training)
{
    bn_forward(x, gamma, beta, y, mean, invstd, running_mean, running_var, N, C, HW, momentum, eps, training, 1);
}

/* dy[N,C,HW] -> dx (=), dgamma/dbeta[C] (+=).
 * The saved mean is the batch mean rounded to float; when |mean| >> std that
 * rounding is a visible fraction of a standard deviation. In training the
 * statistics are the batch's own, so the residual delta = mean(x - mean) is
 * measured here (in double) and xhat = (x - mean - delta) * invstd is exact
 * to float rounding. In evaluation the running mean is used as given.
 * With y (the fused ReLU's output) dy is the gradient of y: the first pass
 * masks it into dx, the second overwrites it there (plus add when not NULL). */
static void bn_backward(const float *x, const float *y, const float *gamma, const float *dy, const float *add,
                        const float *mean, const float *invstd, float *dx, float *dgamma, float *dbeta,
                        int64_t N, int64_t C, int64_t HW, int training)
{
    double m = (double)(N * HW);
    #pragma omp parallel for num_threads(csub_get_num_threads()) schedule(static)
    for (int64_t c = 0; c < C; c++) {
        float mu = mean[c], is = invstd[c];
        /* sum dy, sum dy * (x - mu), sum (x - mu) */
        double sums[3] = {0.0, 0.0, 0.0};
        for (int64_t n = 0; n < N; n++) {
            int64_t o = (n * C + c) * HW;
            if (y) relu_mask(y + o, dy + o, dx + o, HW);
            lsums3(x + o, y ? dx + o : dy + o, HW, mu, 1.0f, sums);
        }
        double sdy = sums[0], sdyd = sums[1], sd = sums[2];
        double delta = training ? sd / m : 0.0;
        double sdyx = (sdyd - delta * sdy) * is; /* sum dy * xhat */
        if (dgamma) dgamma[c] += (float)sdyx;
        if (dbeta) dbeta[c] += (float)sdy;
        float g = gamma[c] * is, df = (float)delta;
        float k1 = training ? (float)(sdy / m) : 0.0f, k2 = training ? (float)(sdyx / m) : 0.0f;
        for (int64_t n = 0; n < N; n++) {
            int64_t o = (n * C + c) * HW;
            if (y)
                bn_dx_ip(x + o, dx + o, add ? add + o : NULL, HW, mu, df, is, g, k1, k2);
            else
                bn_dx(x + o, dy + o, dx + o, HW, mu, df, is, g, k1, k2);
        }
    }
}

void csub_batchnorm_backward(const float *x, const float *gamma, const float *dy,
                             const float *mean, const float *invstd,
                             float *dx, float *dgamma, float *dbeta,
                             int64_t N, int64_t C, int64_t HW, int training)
{
    bn_backward(x, NULL, gamma, dy, NULL, mean, invstd, dx, dgamma, dbeta, N, C, HW, training);
}

/* dy[N,C,HW], the gradient of y = max(batchnorm(x), 0) -> dx (=), plus add[N,C,HW]
 * when not NULL, dgamma/dbeta[C] (+=): the bits of csub_relu_backward(y, dy),
 * then csub_batchnorm_backward, then csub_add(dx, add). */
void csub_batchnorm_relu_backward(const float *x, const float *y, const float *gamma, const float *dy,
                                  const float *add, const float *mean, const float *invstd,
                                  float *dx, float *dgamma, float *dbeta,
                                  int64_t N, int64_t C, int64_t HW, int training)
{
    bn_backward(x, y, gamma, dy, add, mean, invstd, dx, dgamma, dbeta, N, C, HW, training);
}

/* Inference forms. Group norm: one pass for the statistics of each (sample,
 * group) and one that writes y (with the ReLU fused), both vectorised for the
 * CPU at hand (CSUB_VARIANTS: AVX-512, AVX2, baseline). The statistics are
 * sums of x - x0 (x0 the group's first value, so no cancellation when the mean
 * is large) in 32 float lanes over blocks of 2048 values, blocks added in
 * double; they agree with the training kernels' all-double sums to float
 * rounding. */
#define NORM_LANES 32
#define NORM_BLOCK 2048

/* s[0] = sum (x - x0), s[1] = sum (x - x0)^2 over x[n]; each block's lanes are
 * added pairwise in float (a fixed tree), blocks in double */
static CSUB_ALWAYS_INLINE void sums_body(const float *x, int64_t n, float x0, double s[2])
{
    double t1 = 0.0, t2 = 0.0;
    for (int64_t b = 0; b < n; b += NORM_BLOCK) {
        int64_t e = b + NORM_BLOCK < n ? b + NORM_BLOCK : n, i = b;
        float a1[NORM_LANES] = {0}, a2[NORM_LANES] = {0};
        for (; i + NORM_LANES <= e; i += NORM_LANES)
            for (int l = 0; l < NORM_LANES; l++) {
                float d = x[i + l] - x0;
                a1[l] += d;
                a2[l] += d * d;
            }
        /* the fixed tree, step by step (constant trip counts: each step is one vector add) */
        for (int l = 0; l < 16; l++) a1[l] += a1[l + 16], a2[l] += a2[l + 16];
        for (int l = 0; l < 8; l++) a1[l] += a1[l + 8], a2[l] += a2[l + 8];
        for (int l = 0; l < 4; l++) a1[l] += a1[l + 4], a2[l] += a2[l + 4];
        for (int l = 0; l < 2; l++) a1[l] += a1[l + 2], a2[l] += a2[l + 2];
        a1[0] += a1[1], a2[0] += a2[1];
        t1 += a1[0];
        t2 += a2[0];
        for (; i < e; i++) {
            double d = (double)x[i] - x0;
            t1 += d;
            t2 += d * d;
        }
    }
    s[0] = t1;
    s[1] = t2;
}

static CSUB_ALWAYS_INLINE void shifted_sums_body(const float *x, int64_t n, float x0, double s[2])
{
    sums_body(x, n, x0, s);
}
CSUB_VARIANTS(shifted_sums, (const float *x, int64_t n, float x0, double s[2]), (x, n, x0, s))

/* mean and 1 / std of a group from its shifted sums over m values (inv_m = 1 / m) */
static inline void group_stats(const double s[2], float x0, double inv_m, float eps, double *mu, double *is)
{
    double d = s[0] * inv_m, var = s[1] * inv_m - d * d;
    *mu = (double)x0 + d;
    *is = 1.0 / sqrt((var > 0.0 ? var : 0.0) + eps);
}

/* Groups [ng0, ng1) of x[N*G][Cg*HW] whole, GN_CHUNK at a time: the
 * statistics of the chunk's groups, then their y. Short groups (instance norm
 * on 8 x 8 planes: 64 values) are bound by the latency from a group's sums to
 * its scale; computing a chunk's statistics back to back overlaps those
 * chains, and the chunk is still in L1 for the second pass. */
#define GN_CHUNK 32
static CSUB_ALWAYS_INLINE void gn_groups_body(const float *x, const float *gamma, const float *beta, float *y,
                                              int64_t ng0, int64_t ng1, int64_t G, int64_t Cg, int64_t HW, float eps,
                                              int relu)
{
    int64_t m = Cg * HW;
    double mu[GN_CHUNK], is[GN_CHUNK], inv_m = 1.0 / (double)m;
    float xs[GN_CHUNK];
    for (int64_t b = ng0; b < ng1; b += GN_CHUNK) {
        int64_t e = b + GN_CHUNK < ng1 ? b + GN_CHUNK : ng1;
        for (int64_t ng = b; ng < e; ng++) {
            const float *xg = x + ng * m;
            double s[2];
            float x0 = m ? xg[0] : 0.0f;
            sums_body(xg, m, x0, s);
            mu[ng - b] = s[0] * inv_m; /* the shifted mean and mean square, for now */
            is[ng - b] = s[1] * inv_m;
            xs[ng - b] = x0;
        }
        for (int64_t i = 0; i < e - b; i++) { /* as group_stats, a vector of groups at a time */
            double d = mu[i], var = is[i] - d * d;
            mu[i] = (double)xs[i] + d;
            is[i] = 1.0 / sqrt((var > 0.0 ? var : 0.0) + eps);
        }
        for (int64_t ng = b; ng < e; ng++) {
            int64_t c0 = (ng % G) * Cg;
            for (int64_t j = 0; j < Cg; j++)
                affine_body(x + ng * m + j * HW, y + ng * m + j * HW, HW, mu[ng - b],
                            gamma[c0 + j] * (float)is[ng - b], beta[c0 + j], relu);
        }
    }
}
CSUB_VARIANTS(gn_groups, (const float *x, const float *gamma, const float *beta, float *y, int64_t ng0, int64_t ng1,
                          int64_t G, int64_t Cg, int64_t HW, float eps, int relu),
              (x, gamma, beta, y, ng0, ng1, G, Cg, HW, eps, relu))

#if CSUB_X86
#define GN_SMALL_MAX 1024 /* values per group up to which the AVX-512 form pays (measured: 2x at 64 and 256) */
#define GN_SMALL_CHUNK 16

/* gn_groups for short groups of whole 16-float vectors (HW % 16 == 0, Cg * HW a
 * multiple of 32 up to GN_SMALL_MAX), AVX-512, so that a 64-value plane costs a
 * few dozen cycles rather than the generic loops' setup. The same bits as
 * gn_groups: the two accumulators hold sums_body's lanes l and l + 16, the
 * reduction (_mm512_reduce_add_ps: l + 8, l + 4, l + 2, l + 1) is its tree, and
 * the statistics and affine map are its expressions. */
/* The sums of x - x0 over a group's nv vectors (nv even), x0 its first value */
CSUB_TARGET_AVX512 static inline void small_sums(const float *xg, int64_t nv, float *s1, float *s2)
{
    __m512 x0 = _mm512_set1_ps(xg[0]), a1 = _mm512_setzero_ps(), a2 = a1, c1 = a1, c2 = a1;
    for (int64_t k = 0; k < nv; k += 2) {
        __m512 d = _mm512_sub_ps(_mm512_loadu_ps(xg + 16 * k), x0);
        __m512 f = _mm512_sub_ps(_mm512_loadu_ps(xg + 16 * k + 16), x0);
        a1 = _mm512_add_ps(a1, d), a2 = _mm512_add_ps(a2, _mm512_mul_ps(d, d));
        c1 = _mm512_add_ps(c1, f), c2 = _mm512_add_ps(c2, _mm512_mul_ps(f, f));
    }
    *s1 = _mm512_reduce_add_ps(_mm512_add_ps(a1, c1));
    *s2 = _mm512_reduce_add_ps(_mm512_add_ps(a2, c2));
}

/* affine_body on a plane of whole vectors: ((x - mh) - ml) a + b, then the ReLU */
CSUB_TARGET_AVX512 static inline void small_affine(const float *xc, float *yc, int64_t n, double mu, float a, float b,
                                                   int relu)
{
    float mh = (float)mu, ml = (float)(mu - (double)mh);
    __m512 vmh = _mm512_set1_ps(mh), vml = _mm512_set1_ps(ml), zero = _mm512_setzero_ps();
    __m512 va = _mm512_set1_ps(a), vb = _mm512_set1_ps(b);
    for (int64_t k = 0; k < n; k += 16) {
        __m512 t = _mm512_sub_ps(_mm512_sub_ps(_mm512_loadu_ps(xc + k), vmh), vml);
        t = _mm512_add_ps(_mm512_mul_ps(t, va), vb);
        if (relu) /* t <= 0 -> 0 as in affine_body: a NaN stays NaN */
            t = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(t, zero, _CMP_LE_OQ), t, zero);
        _mm512_storeu_ps(yc + k, t);
    }
}

CSUB_TARGET_AVX512 static void gn_groups_small(const float *x, const float *gamma, const float *beta, float *y,
                                               int64_t ng0, int64_t ng1, int64_t G, int64_t Cg, int64_t HW, float eps,
                                               int relu)
{
    int64_t m = Cg * HW, nv = m / 16;
    double inv_m = 1.0 / (double)m;
    for (int64_t b = ng0; b < ng1; b += GN_SMALL_CHUNK) {
        int64_t e = b + GN_SMALL_CHUNK < ng1 ? b + GN_SMALL_CHUNK : ng1;
        float s1[GN_SMALL_CHUNK], s2[GN_SMALL_CHUNK];
        double mu[GN_SMALL_CHUNK], is[GN_SMALL_CHUNK];
        for (int64_t ng = b; ng < e; ng++) /* sums of x - x0, x0 the group's first value */
            small_sums(x + ng * m, nv, &s1[ng - b], &s2[ng - b]);
        for (int64_t i = 0; i < e - b; i++) { /* as group_stats */
            double d = s1[i] * inv_m, var = s2[i] * inv_m - d * d;
            mu[i] = (double)x[(b + i) * m] + d;
            is[i] = 1.0 / sqrt((var > 0.0 ? var : 0.0) + eps);
        }
        for (int64_t ng = b; ng < e; ng++) {
            int64_t c0 = (ng % G) * Cg;
            for (int64_t j = 0; j < Cg; j++)
                small_affine(x + ng * m + j * HW, y + ng * m + j * HW, HW, mu[ng - b],
                             gamma[c0 + j] * (float)is[ng - b], beta[c0 + j], relu);
        }
    }
}

/* The row bands' group norm (csub_groupnorm_band_sums, _apply) in this form, where it applies */
CSUB_TARGET_AVX512 static void gn_band_sums_small(const float *x, int64_t C, int64_t G, int64_t n, double *s)
{
    int64_t m = C / G * n;
    for (int64_t g = 0; g < G; g++) {
        float s1, s2;
        small_sums(x + g * m, m / 16, &s1, &s2);
        s[3 * g] = (double)x[g * m];
        s[3 * g + 1] = s1;
        s[3 * g + 2] = s2;
    }
}

CSUB_TARGET_AVX512 static void gn_band_affine_small(const float *x, const float *gamma, const float *beta, float *y,
                                                    int64_t c0, int64_t c1, int64_t n, double mu, float is, int relu)
{
    for (int64_t c = c0; c < c1; c++) small_affine(x + c * n, y + c * n, n, mu, gamma[c] * is, beta[c], relu);
}

/* The AVX-512 form applies: a level with AVX-512 (csub_isa_level) and groups of whole 32-value blocks. */
static int gn_small_ok(int64_t Cg, int64_t HW)
{
    return HW > 0 && HW % 16 == 0 && Cg * HW % 32 == 0 && Cg * HW <= GN_SMALL_MAX &&
           csub_isa_level() >= CSUB_ISA_AVX512;
}
#else
#define gn_groups_small gn_groups
#define gn_band_sums_small gn_band_sums
#define gn_band_affine_small gn_band_affine
static int gn_small_ok(int64_t Cg, int64_t HW) { return 0; }
#endif

/* Groups [ng0, ng1) by the form that suits their length and the CPU. */
static void gn_range(const float *x, const float *gamma, const float *beta, float *y, int64_t ng0, int64_t ng1,
                     int64_t G, int64_t Cg, int64_t HW, float eps, int relu)
{
    if (gn_small_ok(Cg, HW))
        gn_groups_small(x, gamma, beta, y, ng0, ng1, G, Cg, HW, eps, relu);
    else
        gn_groups(x, gamma, beta, y, ng0, ng1, G, Cg, HW, eps, relu);
}

void csub_groupnorm_infer(const float *x, const float *gamma, const float *beta, float *y,
                          int64_t N, int64_t C, int64_t H, int64_t W, int64_t G, float eps, int relu)
{
    int64_t Cg = C / G, HW = H * W, m = Cg * HW;
    int nt = N * C * HW < CSUB_PAR_MIN_SPLIT ? 1 : csub_get_num_threads();
    /* fewer images than threads: each thread sums and writes the rows of its band
     * (csub_row_band) of every plane; the bands' sums are added in thread order */
    double *part = N < nt && H >= nt && W > 0 && !omp_in_parallel() ? malloc(sizeof(double) * 2 * (size_t)(N * G * nt)) : NULL;
    if (part) {
        #pragma omp parallel num_threads(nt)
        {
            int t = omp_get_thread_num(), T = omp_get_num_threads();
            int64_t h0, h1;
            csub_row_band(H, t, T, &h0, &h1);
            int64_t lo = h0 * W, n = (h1 - h0) * W;
            for (int64_t ng = 0; ng < N * G; ng++) {
                const float *xg = x + ng * m;
                double s[2], acc[2] = {0.0, 0.0};
                for (int64_t j = 0; j < Cg; j++) {
                    shifted_sums(xg + j * HW + lo, n, xg[0], s);
                    acc[0] += s[0];
                    acc[1] += s[1];
                }
                part[2 * (t * N * G + ng)] = acc[0]; /* thread-major: no line shared between threads */
                part[2 * (t * N * G + ng) + 1] = acc[1];
            }
            #pragma omp barrier
            for (int64_t ng = 0; ng < N * G && n > 0; ng++) {
                const float *xg = x + ng * m;
                double st[2] = {0.0, 0.0}, mu, is;
                for (int u = 0; u < T; u++) st[0] += part[2 * (u * N * G + ng)], st[1] += part[2 * (u * N * G + ng) + 1];
                group_stats(st, xg[0], 1.0 / (double)m, eps, &mu, &is);
                int64_t c0 = (ng % G) * Cg;
                for (int64_t j = 0; j < Cg; j++)
                    centred_affine(xg + j * HW + lo, y + ng * m + j * HW + lo, n, mu, gamma[c0 + j] * (float)is,
                                   beta[c0 + j], relu);
            }
        }
        free(part);
        return;
    }
    if (nt == 1 || omp_in_parallel()) {
        gn_range(x, gamma, beta, y, 0, N * G, G, Cg, HW, eps, relu);
        return;
    }
    #pragma omp parallel num_threads(nt)
    {
        int64_t lo, hi;
        csub_row_band(N * G, omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);
        gn_range(x, gamma, beta, y, lo, hi, G, Cg, HW, eps, relu);
    }
}

/* csub_groupnorm_band_sums: a group's planes are adjacent in the band, x[C][n], so its Cg n values
 * are summed as one run, as gn_groups_body sums a whole image's group */
static CSUB_ALWAYS_INLINE void gn_band_sums_body(const float *x, int64_t C, int64_t G, int64_t n, double *s)
{
    int64_t m = C / G * n;
    for (int64_t g = 0; g < G; g++) {
        const float *xg = x + g * m;
        sums_body(xg, m, xg[0], s + 3 * g + 1);
        s[3 * g] = (double)xg[0];
    }
}
CSUB_VARIANTS(gn_band_sums, (const float *x, int64_t C, int64_t G, int64_t n, double *s), (x, C, G, n, s))

void csub_groupnorm_band_sums(const float *x, int64_t C, int64_t G, int64_t n, double *s)
{
    if (gn_small_ok(C / G, n)) gn_band_sums_small(x, C, G, n, s);
    else gn_band_sums(x, C, G, n, s);
}

/* Channels [c0, c1) of csub_groupnorm_band_apply, their group's mean mu and 1 / std is */
static CSUB_ALWAYS_INLINE void gn_band_affine_body(const float *x, const float *gamma, const float *beta, float *y,
                                                   int64_t c0, int64_t c1, int64_t n, double mu, float is, int relu)
{
    for (int64_t c = c0; c < c1; c++) affine_body(x + c * n, y + c * n, n, mu, gamma[c] * is, beta[c], relu);
}
CSUB_VARIANTS(gn_band_affine, (const float *x, const float *gamma, const float *beta, float *y, int64_t c0, int64_t c1,
                               int64_t n, double mu, float is, int relu),
              (x, gamma, beta, y, c0, c1, n, mu, is, relu))

int csub_groupnorm_band_apply(const float *x, const float *gamma, const float *beta, float *y, int64_t C, int64_t G,
                              int64_t n, const double *parts, int T, int64_t stride, int64_t H, int64_t W, float eps,
                              int relu)
{
    int64_t Cg = C / G;
    double *st = malloc(sizeof(double) * (size_t)(2 * G + T)), *mu = st, *is = st + G, *nv = st + 2 * G;
    if (!st) return CSUB_ERR_NOMEM;
    for (int t = 0; t < T; t++) { /* values a group in band t */
        int64_t h0, h1;
        csub_row_band(H, t, T, &h0, &h1);
        nv[t] = (double)(Cg * (h1 - h0) * W);
    }
    double inv_m = 1.0 / (double)(Cg * H * W);
    for (int64_t g = 0; g < G; g++) {
        /* the bands' sums, each about its own first value, moved to the first band's: with
         * d = x0_t - x0, sum (x - x0) = s1_t + n_t d and sum (x - x0)^2 = s2_t + 2 d s1_t + n_t d^2 */
        double x0 = parts[3 * g], s1 = 0.0, s2 = 0.0;
        for (int t = 0; t < T; t++) {
            const double *p = parts + t * stride + 3 * g;
            double d = p[0] - x0;
            s1 += p[1] + nv[t] * d;
            s2 += p[2] + 2.0 * d * p[1] + nv[t] * d * d;
        }
        double dm = s1 * inv_m, var = s2 * inv_m - dm * dm; /* as group_stats */
        mu[g] = x0 + dm;
        is[g] = 1.0 / sqrt((var > 0.0 ? var : 0.0) + eps);
    }
    int small = gn_small_ok(Cg, n);
    for (int64_t g = 0; g < G; g++) {
        if (small) gn_band_affine_small(x, gamma, beta, y, g * Cg, (g + 1) * Cg, n, mu[g], (float)is[g], relu);
        else gn_band_affine(x, gamma, beta, y, g * Cg, (g + 1) * Cg, n, mu[g], (float)is[g], relu);
    }
    free(st);
    return CSUB_OK;
}

#if CSUB_X86
/* Planes [nc0, nc1) of csub_batchnorm_infer, AVX-512: affine_body's operations (its mu a float
 * here, so ml = 0, whose subtraction changes no value) 16 values at a time, the last ones masked,
 * with no set-up per plane: cPreResNet20's 8 x 8 planes are 4 vectors, and the generic loop's
 * alignment and overlap checks took about as long. */
CSUB_TARGET_AVX512 static void bn_planes_avx512(const float *x, float *y, int64_t nc0, int64_t nc1, int64_t C,
                                                int64_t HW, const float *gamma, const float *beta,
                                                const float *mean, const float *var, float eps, int relu)
{
    const __m512 zero = _mm512_setzero_ps();
    __mmask16 last = HW % 16 ? (__mmask16)((1u << (HW % 16)) - 1) : (__mmask16)0xFFFF;
    for (int64_t nc = nc0; nc < nc1; nc++) {
        int64_t c = nc % C;
        float is = (float)(1.0 / sqrt((double)var[c] + eps));
        __m512 vm = _mm512_set1_ps(mean[c]), va = _mm512_set1_ps(gamma[c] * is), vb = _mm512_set1_ps(beta[c]);
        const float *xp = x + nc * HW;
        float *yp = y + nc * HW;
        for (int64_t i = 0; i < HW; i += 16) {
            __mmask16 m = HW - i >= 16 ? (__mmask16)0xFFFF : last;
            __m512 t = _mm512_add_ps(_mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, xp + i), vm), va), vb);
            if (relu) t = _mm512_mask_mov_ps(t, _mm512_cmp_ps_mask(t, zero, _CMP_LE_OQ), zero); /* NaN stays */
            _mm512_mask_storeu_ps(yp + i, m, t);
        }
    }
}
#endif

/* Batch norm with running statistics: a per-channel affine map. */
void csub_batchnorm_infer(const float *x, const float *gamma, const float *beta,
                          const float *running_mean, const float *running_var, float *y,
                          int64_t N, int64_t C, int64_t H, int64_t W, float eps, int relu)
{
    int64_t HW = H * W;
    int nt = N * C * HW < CSUB_PAR_MIN_SPLIT ? 1 : csub_get_num_threads();
    if (N < nt && H >= nt) { /* the rows of each thread's band (csub_row_band) */
        #pragma omp parallel num_threads(nt)
        {
            int64_t h0, h1;
            csub_row_band(H, omp_get_thread_num(), omp_get_num_threads(), &h0, &h1);
            for (int64_t nc = 0; nc < N * C && h1 > h0; nc++) {
                int64_t c = nc % C;
                float is = (float)(1.0 / sqrt((double)running_var[c] + eps));
                centred_affine(x + nc * HW + h0 * W, y + nc * HW + h0 * W, (h1 - h0) * W, running_mean[c],
                               gamma[c] * is, beta[c], relu);
            }
        }
        return;
    }
#if CSUB_X86
    if (csub_isa_level() >= CSUB_ISA_AVX512) {
        if (nt == 1 || omp_in_parallel()) {
            bn_planes_avx512(x, y, 0, N * C, C, HW, gamma, beta, running_mean, running_var, eps, relu);
            return;
        }
        #pragma omp parallel num_threads(nt)
        {
            int64_t lo, hi;
            csub_row_band(N * C, omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);
            bn_planes_avx512(x, y, lo, hi, C, HW, gamma, beta, running_mean, running_var, eps, relu);
        }
        return;
    }
#endif
    #pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t nc = 0; nc < N * C; nc++) {
        int64_t c = nc % C;
        float is = (float)(1.0 / sqrt((double)running_var[c] + eps));
        centred_affine(x + nc * HW, y + nc * HW, HW, running_mean[c], gamma[c] * is, beta[c], relu);
    }
}

/* Group norm in training, forward beside backward. relu != 0 fuses the ReLU
 * that follows: y = max(norm(x), 0) (NaN propagates), the bits of
 * csub_groupnorm_forward then csub_relu_forward, in one pass that writes y. */
static void gn_forward(const float *x, const float *gamma, const float *beta, float *y, float *mean,
                       float *invstd, int64_t N, int64_t C, int64_t HW, int64_t G, float eps, int relu)
{
    int64_t Cg = C / G, m = Cg * HW;
    #pragma omp parallel for num_threads(csub_get_num_threads()) schedule(static)
    for (int64_t ng = 0; ng < N * G; ng++) {
        const float *xg = x + ng * m; /* the group's channels are contiguous */
        float *yg = y + ng * m;
        double mu, v;
        lsum(xg, m, &mu);
        mu /= (double)m;
        lsumsq(xg, m, mu, &v);
        float is = (float)(1.0 / sqrt(v / (double)m + eps));
        mean[ng] = (float)mu;
        invstd[ng] = is;
        int64_t c0 = (ng % G) * Cg;
        for (int64_t j = 0; j < Cg; j++) /* centred, as in batch norm */
            centred_affine(xg + j * HW, yg + j * HW, HW, mu, gamma[c0 + j] * is, beta[c0 + j], relu);
    }
}

/* x[N,C,HW] in G groups of C/G channels -> y, mean/invstd[N,G] */
void csub_groupnorm_forward(const float *x, const float *gamma, const float *beta,
                            float *y, float *mean, float *invstd,
                            int64_t N, int64_t C, int64_t HW, int64_t G, float eps)
{
    gn_forward(x, gamma, beta, y, mean, invstd, N, C, HW, G, eps, 0);
}

/* x[N,C,HW] -> y = max(groupnorm(x), 0), mean/invstd[N,G] */
void csub_groupnorm_relu_forward(const float *x, const float *gamma, const float *beta,
                                 float *y, float *mean, float *invstd,
                                 int64_t N, int64_t C, int64_t HW, int64_t G, float eps)
{
    gn_forward(x, gamma, beta, y, mean, invstd, N, C, HW, G, eps, 1);
}

/* dy[N,C,HW] -> dx (=), dgamma/dbeta[C] (+=). As in batch norm, the
 * residual delta = mean(x - mean) of each (sample, group) corrects the float
 * rounding of the saved mean (the statistics are always the data's own).
 * One pass over x and dy gathers, per (sample, channel), A = sum dy,
 * B = sum dy (x - mean) and D = sum (x - mean); the group sums for dx and the
 * parameter gradients dgamma = sum_n invstd (B - delta A), dbeta = sum_n A
 * follow from them, so a second pass only writes dx.
 * With y (the fused ReLU's output) dy is the gradient of y: the first pass
 * masks it into dx, the second reads it back from there and overwrites it;
 * with add[N,C,HW] the second pass writes dx + add.
 * CSUB_ERR_NOMEM (nothing written) when y and the workspace cannot be had. */
static int gn_backward(const float *x, const float *y, const float *gamma, const float *dy, const float *add,
                       const float *mean, const float *invstd, float *dx, float *dgamma, float *dbeta,
                       int64_t N, int64_t C, int64_t HW, int64_t G)
{
    int64_t Cg = C / G, m = Cg * HW;
    int nt = csub_get_num_threads();
    /* per (sample, channel) A and B, per (sample, group) delta, for the parameter
     * gradients; without the workspace they are computed without the correction */
    int params = dgamma || dbeta;
    double *ab = params ? malloc(sizeof(double) * 2 * (size_t)(N * C)) : NULL;
    float *deltas = params ? malloc(sizeof(float) * (size_t)(N * G)) : NULL;
    if (params && (!ab || !deltas)) {
        free(ab), free(deltas);
        if (y) return CSUB_ERR_NOMEM; /* the recomputation below reads an unmasked dy */
        ab = NULL, deltas = NULL;
    }
    #pragma omp parallel num_threads(nt)
    {
        #pragma omp for schedule(static)
        for (int64_t ng = 0; ng < N * G; ng++) {
            const float *xg = x + ng * m, *dg = y ? dx + ng * m : dy + ng * m;
            float *dxg = dx + ng * m;
            float mu = mean[ng], is = invstd[ng];
            int64_t c0 = (ng % G) * Cg;
            double s1 = 0.0, s2d = 0.0, sd = 0.0; /* sum dxhat, sum dxhat * (x - mu), sum (x - mu) */
            for (int64_t j = 0; j < Cg; j++) {
                double sums[3] = {0.0, 0.0, 0.0};
                if (y) /* the plane's masked gradient, read back at once from the cache */
                    relu_mask(y + ng * m + j * HW, dy + ng * m + j * HW, dxg + j * HW, HW);
                lsums3(xg + j * HW, dg + j * HW, HW, mu, 1.0f, sums);
                double gm = gamma[c0 + j];
                s1 += gm * sums[0];
                s2d += gm * sums[1];
                sd += sums[2];
                if (ab) {
                    ab[2 * (ng * Cg + j)] = sums[0];
                    ab[2 * (ng * Cg + j) + 1] = sums[1];
                }
            }
            double delta = sd / (double)m;
            float df = (float)delta;
            if (deltas) deltas[ng] = df;
            float k1 = (float)(s1 / (double)m), k2 = (float)((s2d - delta * s1) * is / (double)m);
            for (int64_t j = 0; j < Cg; j++) /* in place when y: dg is dx */
                if (!y)
                    gn_dx(xg + j * HW, dg + j * HW, dxg + j * HW, HW, mu, df, is, gamma[c0 + j], k1, k2);
                else if (add)
                    gn_dx_add_ip(xg + j * HW, dxg + j * HW, add + ng * m + j * HW, HW, mu, df, is, gamma[c0 + j],
                                 k1, k2);
                else
                    gn_dx_ip(xg + j * HW, dxg + j * HW, HW, mu, df, is, gamma[c0 + j], k1, k2);
        }
        if (params) {
            #pragma omp for schedule(static)
            for (int64_t c = 0; c < C; c++) {
                int64_t g = c / Cg;
                double sg = 0.0, sb = 0.0;
                for (int64_t n = 0; n < N; n++) {
                    int64_t ng = n * G + g;
                    double A, B;
                    if (ab) {
                        A = ab[2 * (n * C + c)], B = ab[2 * (n * C + c) + 1];
                    } else { /* no workspace: recompute, without the delta correction */
                        double sums[3] = {0.0, 0.0, 0.0};
                        lsums3(x + (n * C + c) * HW, dy + (n * C + c) * HW, HW, mean[ng], 1.0f, sums);
                        A = sums[0], B = sums[1];
                    }
                    double df = deltas ? deltas[ng] : 0.0;
                    sb += A;
                    sg += (B - df * A) * invstd[ng];
                }
                if (dgamma) dgamma[c] += (float)sg;
                if (dbeta) dbeta[c] += (float)sb;
            }
        }
    }
    free(ab);
    free(deltas);
    return CSUB_OK;
}

void csub_groupnorm_backward(const float *x, const float *gamma, const float *dy,
                             const float *mean, const float *invstd,
                             float *dx, float *dgamma, float *dbeta,
                             int64_t N, int64_t C, int64_t HW, int64_t G)
{
    gn_backward(x, NULL, gamma, dy, NULL, mean, invstd, dx, dgamma, dbeta, N, C, HW, G);
}

/* dy[N,C,HW], the gradient of y = max(groupnorm(x), 0) -> dx (=), plus add[N,C,HW] when
 * not NULL, dgamma/dbeta[C] (+=): the bits of csub_relu_backward(y, dy), then
 * csub_groupnorm_backward, then csub_add(dx, add), in two passes. */
int csub_groupnorm_relu_backward(const float *x, const float *y, const float *gamma, const float *dy,
                                 const float *add, const float *mean, const float *invstd,
                                 float *dx, float *dgamma, float *dbeta,
                                 int64_t N, int64_t C, int64_t HW, int64_t G)
{
    return gn_backward(x, y, gamma, dy, add, mean, invstd, dx, dgamma, dbeta, N, C, HW, G);
}
