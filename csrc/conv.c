/* conv.c - 2-D convolution (cross-correlation), forward and backward.
 *
 * Lowered to matmuls per image: col[C*R*S, P*Q] = im2col(x[n]),
 * y[n][K, P*Q] = w[K, C*R*S] . col. A 1x1 convolution with stride 1 and no
 * padding is a plain matmul on x[n][C, H*W] (no im2col). Threads split the
 * batch; each thread owns its column buffer and, in backward, its partial
 * weight gradient, reduced in a fixed order so results do not depend on
 * scheduling.
 */
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#include "internal.h"

int64_t csub_conv_out_size(int64_t H, int64_t R, int64_t stride, int64_t pad)
{
    return (H + 2 * pad - R) / stride + 1;
}

/* x[C,H,W] -> col[C*R*S, (p1 - p0)*Q]: the columns of output rows [p0, p1) */
static void im2col(const float *x, float *col, int64_t C, int64_t H, int64_t W,
                   int64_t R, int64_t S, int64_t stride, int64_t pad, int64_t p0, int64_t p1, int64_t Q)
{
    for (int64_t c = 0; c < C; c++)
        for (int64_t r = 0; r < R; r++)
            for (int64_t s = 0; s < S; s++) {
                float *row = col + ((c * R + r) * S + s) * (p1 - p0) * Q;
                const float *xc = x + c * H * W;
                for (int64_t p = p0; p < p1; p++) {
                    int64_t h = p * stride - pad + r;
                    float *out = row + (p - p0) * Q;
                    if (h < 0 || h >= H) {
                        memset(out, 0, sizeof(float) * Q);
                        continue;
                    }
                    const float *xr = xc + h * W;
                    if (stride == 1) {
                        int64_t q0 = pad - s > 0 ? pad - s : 0;            /* first q with w >= 0 */
                        int64_t q1 = W + pad - s < Q ? W + pad - s : Q;     /* first q with w >= W */
                        if (q1 < q0) q1 = q0;
                        for (int64_t q = 0; q < q0; q++) out[q] = 0.0f;
                        if (q1 > q0) memcpy(out + q0, xr + q0 - pad + s, sizeof(float) * (q1 - q0));
                        for (int64_t q = q1; q < Q; q++) out[q] = 0.0f;
                    } else {
                        for (int64_t q = 0; q < Q; q++) {
                            int64_t w = q * stride - pad + s;
                            out[q] = (w >= 0 && w < W) ? xr[w] : 0.0f;
                        }
                    }
                }
            }
}

/* col[C*R*S, P*Q] -> dx[C,H,W] (+=) */
static void col2im(const float *col, float *dx, int64_t C, int64_t H, int64_t W,
                   int64_t R, int64_t S, int64_t stride, int64_t pad, int64_t P, int64_t Q)
{
    for (int64_t c = 0; c < C; c++)
        for (int64_t r = 0; r < R; r++)
            for (int64_t s = 0; s < S; s++) {
                const float *row = col + ((c * R + r) * S + s) * P * Q;
                float *xc = dx + c * H * W;
                for (int64_t p = 0; p < P; p++) {
                    int64_t h = p * stride - pad + r;
                    if (h < 0 || h >= H) continue;
                    float *xr = xc + h * W;
                    const float *in = row + p * Q;
                    for (int64_t q = 0; q < Q; q++) {
                        int64_t w = q * stride - pad + s;
                        if (w >= 0 && w < W) xr[w] += in[q];
                    }
                }
            }
}

/* The direct 3x3 kernel (conv_direct.c) takes the shape, and packing its weight for one call pays: a
 * small weight, or enough output pixels (N P Q) to spread a large one's packing over (at batch 1,
 * 512 channels on 7x7 pay more to pack than the direct kernel saves over im2col). */
static int direct_pays(int64_t N, int64_t C, int64_t K, int64_t P, int64_t Q, int64_t R, int64_t S, int64_t stride,
                       int64_t pad)
{
    return csub_conv3x3_applies(R, S, stride, pad) && (K * C * 9 <= 65536 || N * P * Q >= 256);
}

static int is_pointwise(int64_t R, int64_t S, int64_t stride, int64_t pad)
{
    return R == 1 && S == 1 && stride == 1 && pad == 0;
}

/* dy[N,K,PQ] -> db[K] (+=): the bias gradient, summed over the batch and the plane */
void csub_conv_bias_backward(const float *dy, float *db, int64_t N, int64_t K, int64_t PQ)
{
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++) {
            const float *d = dy + (n * K + k) * PQ;
            float acc = 0.0f;
            for (int64_t i = 0; i < PQ; i++) acc += d[i];
            db[k] += acc;
        }
}

/* The rows [K, L] (row stride PQ) of one image's product, in place: + b[k], + res, then the ReLU */
static void epilogue(float *y, const float *b, const float *res, int relu, int64_t K, int64_t L, int64_t PQ)
{
    if (!b && !res && !relu) return;
    for (int64_t k = 0; k < K; k++) { /* one branch-free loop per case, so that each vectorises */
        float bk = b ? b[k] : 0.0f, *yk = y + k * PQ;
        const float *rk = res ? res + k * PQ : NULL;
        if (rk && relu)
            for (int64_t i = 0; i < L; i++) {
                float v = yk[i] + bk + rk[i];
                yk[i] = v <= 0.0f ? 0.0f : v;
            }
        else if (rk)
            for (int64_t i = 0; i < L; i++) yk[i] = yk[i] + bk + rk[i];
        else if (relu)
            for (int64_t i = 0; i < L; i++) {
                float v = yk[i] + bk;
                yk[i] = v <= 0.0f ? 0.0f : v;
            }
        else
            for (int64_t i = 0; i < L; i++) yk[i] += bk;
    }
}

/* x[N,C,H,W], w[K,C,R,S], b[K] -> y[N,K,P,Q] */
int csub_conv2d_forward(const float *x, const float *w, const float *b, float *y,
                        int64_t N, int64_t C, int64_t H, int64_t W,
                        int64_t K, int64_t R, int64_t S, int64_t stride, int64_t pad)
{
    return csub_conv2d_forward_fused(x, w, b, NULL, 0, y, N, C, H, W, K, R, S, stride, pad);
}

/* y = relu?(conv(x, w) + b + res), the epilogue applied to each image's rows right after their product */
int csub_conv2d_forward_fused(const float *x, const float *w, const float *b, const float *res, int relu, float *y,
                              int64_t N, int64_t C, int64_t H, int64_t W,
                              int64_t K, int64_t R, int64_t S, int64_t stride, int64_t pad)
{
    int64_t P = csub_conv_out_size(H, R, stride, pad), Q = csub_conv_out_size(W, S, stride, pad);
    int64_t CRS = C * R * S, PQ = P * Q;
    int pw = is_pointwise(R, S, stride, pad);
    int nt = csub_get_num_threads();
    float *cols = NULL;
    if (direct_pays(N, C, K, P, Q, R, S, stride, pad)) { /* direct, the weight packed for this call */
        size_t bytes;
        float *wp;
        if (csub_bytes_overflow(csub_conv3x3_packed_len(K, C), sizeof(float), &bytes) || !(wp = malloc(bytes)))
            return CSUB_ERR_NOMEM;
        csub_conv3x3_pack(w, wp, K, C);
        int st = csub_conv3x3_forward(x, wp, b, res, relu, y, N, C, H, W, K, stride);
        free(wp);
        return st;
    }
    if (N < nt && !omp_in_parallel()) {
        /* fewer images than threads (inference at batch 1): each thread lays out and
         * multiplies the output rows of its band (csub_row_band), no barrier; a
         * small product runs on one thread */
        int nomem = 0;
        if (P < nt || (double)K * (double)(PQ * CRS) < CSUB_PAR_MIN_CONV) nt = 1;
        #pragma omp parallel num_threads(nt)
        {
            int t = omp_get_thread_num(), T = omp_get_num_threads();
            int64_t p0, p1;
            csub_row_band(P, t, T, &p0, &p1);
            float *col = pw || p1 <= p0 ? NULL : malloc(sizeof(float) * (size_t)(CRS * (p1 - p0) * Q));
            if (!pw && p1 > p0 && !col) {
                #pragma omp atomic write
                nomem = 1;
            }
            for (int64_t n = 0; n < N && p1 > p0 && (pw || col); n++) {
                const float *xn = x + n * C * H * W;
                float *yb = y + n * K * PQ + p0 * Q;
                int64_t L = (p1 - p0) * Q;
                if (pw) {
                    csub_gemm_serial(0, 0, K, L, C, 1.0f, w, C, xn + p0 * Q, PQ, 0.0f, yb, PQ);
                } else {
                    im2col(xn, col, C, H, W, R, S, stride, pad, p0, p1, Q);
                    csub_gemm_serial(0, 0, K, L, CRS, 1.0f, w, CRS, col, L, 0.0f, yb, PQ);
                }
                epilogue(yb, b, res ? res + (yb - y) : NULL, relu, K, L, PQ);
            }
            free(col);
        }
        return nomem ? CSUB_ERR_NOMEM : CSUB_OK;
    }
    if (nt > N) nt = (int)N;
    if (!pw && !(cols = malloc(sizeof(float) * (size_t)(CRS * PQ) * nt))) return CSUB_ERR_NOMEM;
    #pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float *xn = x + n * C * H * W;
        float *yn = y + n * K * PQ;
        if (pw) {
            csub_gemm_serial(0, 0, K, PQ, C, 1.0f, w, C, xn, PQ, 0.0f, yn, PQ);
        } else {
            float *col = cols + (size_t)omp_get_thread_num() * CRS * PQ;
            im2col(xn, col, C, H, W, R, S, stride, pad, 0, P, Q);
            csub_gemm_serial(0, 0, K, PQ, CRS, 1.0f, w, CRS, col, PQ, 0.0f, yn, PQ);
        }
        epilogue(yn, b, res ? res + n * K * PQ : NULL, relu, K, PQ, PQ);
    }
    free(cols);
    return CSUB_OK;
}

/* dy[N,K,P,Q] -> dx[N,C,H,W] (=), dw[K,C,R,S] (+=), db[K] (+=) */
int csub_conv2d_backward(const float *x, const float *w, const float *dy,
                         float *dx, float *dw, float *db,
                         int64_t N, int64_t C, int64_t H, int64_t W,
                         int64_t K, int64_t R, int64_t S, int64_t stride, int64_t pad)
{
    int64_t P = csub_conv_out_size(H, R, stride, pad), Q = csub_conv_out_size(W, S, stride, pad);
    int64_t CRS = C * R * S, PQ = P * Q;
    int pw = is_pointwise(R, S, stride, pad);
    int nt = csub_get_num_threads();
    if (nt > N) nt = (int)N;
    float *cols = NULL, *dws = NULL;
    if (dx && stride == 1 && direct_pays(N, K, C, H, W, R, S, stride, pad)) {
        /* dx = the flipped transposed weight convolved with dy, by the direct kernel; then dw alone below */
        size_t bytes;
        float *wp;
        if (csub_bytes_overflow(csub_conv3x3_packed_len(C, K), sizeof(float), &bytes) || !(wp = malloc(bytes)))
            return CSUB_ERR_NOMEM;
        csub_conv3x3_pack_flipped(w, wp, K, C);
        int st = csub_conv3x3_forward(dy, wp, NULL, NULL, 0, dx, N, K, P, Q, C, 1);
        free(wp);
        if (st) return st;
        dx = NULL;
    }
    if (!pw && !(cols = malloc(sizeof(float) * (size_t)(CRS * PQ) * nt))) return CSUB_ERR_NOMEM;
    if (dw && !(dws = calloc((size_t)(K * CRS) * nt, sizeof(float)))) {
        free(cols);
        return CSUB_ERR_NOMEM;
    }
    #pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num();
        float *col = pw ? NULL : cols + (size_t)t * CRS * PQ;
        float *dwt = dws ? dws + (size_t)t * K * CRS : NULL;
        #pragma omp for schedule(static)
        for (int64_t n = 0; n < N; n++) {
            const float *xn = x + n * C * H * W, *dyn = dy + n * K * PQ;
            if (dwt) { /* dw[K, CRS] += dy[n][K, PQ] . col^T */
                if (pw) {
                    csub_gemm_serial(0, 1, K, C, PQ, 1.0f, dyn, PQ, xn, PQ, 1.0f, dwt, C);
                } else {
                    im2col(xn, col, C, H, W, R, S, stride, pad, 0, P, Q);
                    csub_gemm_serial(0, 1, K, CRS, PQ, 1.0f, dyn, PQ, col, PQ, 1.0f, dwt, CRS);
                }
            }
            if (dx) { /* col = w^T . dy[n] */
                float *dxn = dx + n * C * H * W;
                if (pw) {
                    csub_gemm_serial(1, 0, C, PQ, K, 1.0f, w, C, dyn, PQ, 0.0f, dxn, PQ);
                } else {
                    csub_gemm_serial(1, 0, CRS, PQ, K, 1.0f, w, CRS, dyn, PQ, 0.0f, col, PQ);
                    memset(dxn, 0, sizeof(float) * C * H * W);
                    col2im(col, dxn, C, H, W, R, S, stride, pad, P, Q);
                }
            }
        }
        if (dwt) { /* reduce the per-thread partials in thread order */
            #pragma omp for schedule(static)
            for (int64_t i = 0; i < K * CRS; i++) {
                float acc = 0.0f;
                for (int u = 0; u < nt; u++) acc += dws[(size_t)u * K * CRS + i];
                dw[i] += acc;
            }
        }
    }
    if (db) csub_conv_bias_backward(dy, db, N, K, PQ);
    free(cols);
    free(dws);
    return CSUB_OK;
}
