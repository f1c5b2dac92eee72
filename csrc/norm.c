/* norm.c - batch norm and group norm (instance norm is G = C), forward and backward.
 * Statistics are accumulated in double; the variance is the biased one
 * (divide by the count) for normalisation, as every framework does. */
#include <math.h>
#include <stdlib.h>

#include "csub.h"

/* x[N,C,HW], gamma/beta[C] -> y[N,C,HW], mean/invstd[C]; running stats updated in training */
void csub_batchnorm_forward(const float *x, const float *gamma, const float *beta,
                            float *y, float *mean, float *invstd,
                            float *running_mean, float *running_var,
                            int64_t N, int64_t C, int64_t HW,
                            float momentum, float eps, int training)
{
    int64_t m = N * HW;
    #pragma omp parallel for num_threads(csub_get_num_threads()) schedule(static)
    for (int64_t c = 0; c < C; c++) {
        double mu, var;
        if (training) {
            double s = 0.0;
            for (int64_t n = 0; n < N; n++) {
                const float *xc = x + (n * C + c) * HW;
                for (int64_t i = 0; i < HW; i++) s += xc[i];
            }
            mu = s / (double)m;
            double v = 0.0;
            for (int64_t n = 0; n < N; n++) {
                const float *xc = x + (n * C + c) * HW;
                for (int64_t i = 0; i < HW; i++) { double d = xc[i] - mu; v += d * d; }
            }
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
        float mh = (float)mu, ml = (float)(mu - (double)mh);
        float a = gamma[c] * is, b = beta[c];
        for (int64_t n = 0; n < N; n++) {
            const float *xc = x + (n * C + c) * HW;
            float *yc = y + (n * C + c) * HW;
            for (int64_t i = 0; i < HW; i++) yc[i] = ((xc[i] - mh) - ml) * a + b;
        }
    }
}

/* dy[N,C,HW] -> dx (=), dgamma/dbeta[C] (+=).
 * The saved mean is the batch mean rounded to float; when |mean| >> std that
 * rounding is a visible fraction of a standard deviation. In training the
 * statistics are the batch's own, so the residual delta = mean(x - mean) is
 * measured here (in double) and xhat = (x - mean - delta) * invstd is exact
 * to float rounding. In evaluation the running mean is used as given. */
void csub_batchnorm_backward(const float *x, const float *gamma, const float *dy,
                             const float *mean, const float *invstd,
                             float *dx, float *dgamma, float *dbeta,
                             int64_t N, int64_t C, int64_t HW, int training)
{
    double m = (double)(N * HW);
    #pragma omp parallel for num_threads(csub_get_num_threads()) schedule(static)
    for (int64_t c = 0; c < C; c++) {
        float mu = mean[c], is = invstd[c];
        /* sum dy, sum dy * (x - mu), sum (x - mu) */
        double sdy = 0.0, sdyd = 0.0, sd = 0.0;
        for (int64_t n = 0; n < N; n++) {
            const float *xc = x + (n * C + c) * HW, *dc = dy + (n * C + c) * HW;
            for (int64_t i = 0; i < HW; i++) {
                float d = xc[i] - mu;
                sdy += dc[i];
                sdyd += (double)dc[i] * d;
                sd += d;
            }
        }
        double delta = training ? sd / m : 0.0;
        double sdyx = (sdyd - delta * sdy) * is; /* sum dy * xhat */
        if (dgamma) dgamma[c] += (float)sdyx;
        if (dbeta) dbeta[c] += (float)sdy;
        float g = gamma[c] * is, df = (float)delta;
        float k1 = training ? (float)(sdy / m) : 0.0f, k2 = training ? (float)(sdyx / m) : 0.0f;
        for (int64_t n = 0; n < N; n++) {
            const float *xc = x + (n * C + c) * HW, *dc = dy + (n * C + c) * HW;
            float *dxc = dx + (n * C + c) * HW;
            for (int64_t i = 0; i < HW; i++)
                dxc[i] = g * (dc[i] - k1 - ((xc[i] - mu) - df) * is * k2);
        }
    }
}

/* x[N,C,HW] in G groups of C/G channels -> y, mean/invstd[N,G] */
void csub_groupnorm_forward(const float *x, const float *gamma, const float *beta,
                            float *y, float *mean, float *invstd,
                            int64_t N, int64_t C, int64_t HW, int64_t G, float eps)
{
    int64_t Cg = C / G, m = Cg * HW;
    #pragma omp parallel for num_threads(csub_get_num_threads()) schedule(static)
    for (int64_t ng = 0; ng < N * G; ng++) {
        const float *xg = x + ng * m; /* the group's channels are contiguous */
        float *yg = y + ng * m;
        double s = 0.0, v = 0.0;
        for (int64_t i = 0; i < m; i++) s += xg[i];
        double mu = s / (double)m;
        for (int64_t i = 0; i < m; i++) { double d = xg[i] - mu; v += d * d; }
        float is = (float)(1.0 / sqrt(v / (double)m + eps));
        mean[ng] = (float)mu;
        invstd[ng] = is;
        int64_t c0 = (ng % G) * Cg;
        float mh = (float)mu, ml = (float)(mu - (double)mh); /* centred, as in batch norm */
        for (int64_t j = 0; j < Cg; j++) {
            float a = gamma[c0 + j] * is, b = beta[c0 + j];
            const float *xc = xg + j * HW;
            float *yc = yg + j * HW;
            for (int64_t i = 0; i < HW; i++) yc[i] = ((xc[i] - mh) - ml) * a + b;
        }
    }
}

/* dy[N,C,HW] -> dx (=), dgamma/dbeta[C] (+=). As in batch norm, the
 * residual delta = mean(x - mean) of each (sample, group) corrects the float
 * rounding of the saved mean (the statistics are always the data's own). */
void csub_groupnorm_backward(const float *x, const float *gamma, const float *dy,
                             const float *mean, const float *invstd,
                             float *dx, float *dgamma, float *dbeta,
                             int64_t N, int64_t C, int64_t HW, int64_t G)
{
    int64_t Cg = C / G, m = Cg * HW;
    int nt = csub_get_num_threads();
    /* per (sample, group) residual, for the dgamma pass; without the
     * workspace the correction is left out (delta = 0) */
    float *deltas = (dgamma || dbeta) ? malloc(sizeof(float) * (size_t)(N * G)) : NULL;
    #pragma omp parallel num_threads(nt)
    {
        #pragma omp for schedule(static)
        for (int64_t ng = 0; ng < N * G; ng++) {
            const float *xg = x + ng * m, *dg = dy + ng * m;
            float *dxg = dx + ng * m;
            float mu = mean[ng], is = invstd[ng];
            int64_t c0 = (ng % G) * Cg;
            double s1 = 0.0, s2d = 0.0, sd = 0.0; /* sum dxhat, sum dxhat * (x - mu), sum (x - mu) */
            for (int64_t j = 0; j < Cg; j++) {
                float gm = gamma[c0 + j];
                for (int64_t i = 0; i < HW; i++) {
                    float d = xg[j * HW + i] - mu;
                    float dxh = dg[j * HW + i] * gm;
                    s1 += dxh;
                    s2d += (double)dxh * d;
                    sd += d;
                }
            }
            double delta = sd / (double)m;
            float df = (float)delta;
            if (deltas) deltas[ng] = df;
            float k1 = (float)(s1 / (double)m), k2 = (float)((s2d - delta * s1) * is / (double)m);
            for (int64_t j = 0; j < Cg; j++) {
                float gm = gamma[c0 + j];
                for (int64_t i = 0; i < HW; i++) {
                    float xh = ((xg[j * HW + i] - mu) - df) * is;
                    dxg[j * HW + i] = is * (dg[j * HW + i] * gm - k1 - xh * k2);
                }
            }
        }
        if (dgamma || dbeta) {
            #pragma omp for schedule(static)
            for (int64_t c = 0; c < C; c++) {
                int64_t g = c / Cg;
                double sg = 0.0, sb = 0.0;
                for (int64_t n = 0; n < N; n++) {
                    const float *xc = x + (n * C + c) * HW, *dc = dy + (n * C + c) * HW;
                    float mu = mean[n * G + g], is = invstd[n * G + g];
                    float df = deltas ? deltas[n * G + g] : 0.0f;
                    double sgn = 0.0;
                    for (int64_t i = 0; i < HW; i++) {
                        sb += dc[i];
                        sgn += (double)dc[i] * ((xc[i] - mu) - df);
                    }
                    sg += sgn * is;
                }
                if (dgamma) dgamma[c] += (float)sg;
                if (dbeta) dbeta[c] += (float)sb;
            }
        }
    }
    free(deltas);
}
