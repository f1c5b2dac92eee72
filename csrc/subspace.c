/* subspace.c - line interpolation of a tensor and the endpoint regulariser. */
#include "internal.h"

/* out[n] = (1 - alpha) w0 + alpha w1 */
void csub_line_forward(const float *w0, const float *w1, float alpha, float *out, int64_t n)
{
    float a0 = 1.0f - alpha;
    #pragma omp parallel for num_threads(csub_get_num_threads()) schedule(static) if (n > CSUB_PAR_MIN)
    for (int64_t i = 0; i < n; i++) out[i] = a0 * w0[i] + alpha * w1[i];
}

/* g0 += (1 - alpha) g; g1 += alpha g */
void csub_line_backward(const float *g, float alpha, float *g0, float *g1, int64_t n)
{
    float a0 = 1.0f - alpha;
    #pragma omp parallel for num_threads(csub_get_num_threads()) schedule(static) if (n > CSUB_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        g0[i] += a0 * g[i];
        g1[i] += alpha * g[i];
    }
}

/* s += (w0.w1, |w0|^2, |w1|^2) */
void csub_line_dots(const float *w0, const float *w1, int64_t n, double s[3])
{
    double s01 = 0.0, s00 = 0.0, s11 = 0.0;
    for (int64_t i = 0; i < n; i++) {
        s01 += (double)w0[i] * w1[i];
        s00 += (double)w0[i] * w0[i];
        s11 += (double)w1[i] * w1[i];
    }
    s[0] += s01;
    s[1] += s00;
    s[2] += s11;
}

/* d/dw0 of beta S01^2 / (S00 S11) = beta (2 S01 / (S00 S11) w1 - 2 S01^2 / (S00^2 S11) w0); w1 symmetric.
 * The coefficients scale like 1/|w|^2 and stay in double: as floats they
 * overflow (inf - inf = NaN) for weights of magnitude ~1e-20, and underflow
 * for very large ones, although the gradient itself (~1/|w|) is representable. */
void csub_line_reg_backward(const float *w0, const float *w1, int64_t n,
                            const double s[3], float beta, float *g0, float *g1)
{
    double s01 = s[0], s00 = s[1], s11 = s[2];
    double r = (double)beta * s01 / (s00 * s11);
    double c = 2.0 * r;
    double c0 = c * (s01 / s00);
    double c1 = c * (s01 / s11);
    for (int64_t i = 0; i < n; i++) {
        double a = w0[i], b = w1[i];
        g0[i] += (float)(c * b - c0 * a);
        g1[i] += (float)(c * a - c1 * b);
    }
}
