/* loss.c - softmax cross-entropy, mean over the batch. */
#include <math.h>

#include "internal.h"

/* logits[N,K], labels[N] -> loss; prob[N,K] = softmax(logits) */
double csub_cross_entropy_forward(const float *logits, const int64_t *labels,
                                  float *prob, int64_t N, int64_t K)
{
    double total = 0.0;
    for (int64_t n = 0; n < N; n++) {
        const float *z = logits + n * K;
        float *p = prob + n * K;
        float mx = z[0];
        for (int64_t k = 1; k < K; k++) mx = z[k] > mx ? z[k] : mx;
        double s = 0.0;
        for (int64_t k = 0; k < K; k++) s += exp((double)z[k] - mx);
        double lse = mx + log(s);
        for (int64_t k = 0; k < K; k++) p[k] = (float)exp((double)z[k] - lse);
        total += lse - z[labels[n]];
    }
    return total / (double)N;
}

/* dlogits[N,K] = (prob - onehot(labels)) * scale / N */
void csub_cross_entropy_backward(const float *prob, const int64_t *labels,
                                 float *dlogits, int64_t N, int64_t K, float scale)
{
    float f = scale / (float)N;
    for (int64_t n = 0; n < N; n++) {
        for (int64_t k = 0; k < K; k++) dlogits[n * K + k] = prob[n * K + k] * f;
        dlogits[n * K + labels[n]] -= f;
    }
}
