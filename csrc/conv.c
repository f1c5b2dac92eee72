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
#include "tile.h"

int64_t csub_conv_out_size(int64_t H, int64_t R, int64_t stride, int64_t pad)
{
    return (H + 2 * pad - R) / stride + 1;
}

/* x[C,H,W] -> col[C*R*S, (p1 - p0)*Q]: the columns of output rows [p0, p1). Each (c, r, s, p)
 * row is a zero head, a copy and a zero tail, the bounds computed once per s (no test per
 * element). Stride > 1 with phase (W + stride floats, or NULL): each input row is split once
 * into its stride phases, phase[f][i] = row[i * stride + f], and every s copies a contiguous
 * run of one phase (the stride-2 7x7 stem: one strided pass a row instead of seven) */
static void im2col(const float *x, float *col, float *phase, int64_t C, int64_t H, int64_t W,
                   int64_t R, int64_t S, int64_t stride, int64_t pad, int64_t p0, int64_t p1, int64_t Q)
{
    int64_t L = (p1 - p0) * Q, Wph = (W + stride - 1) / stride; /* floats per phase */
    for (int64_t c = 0; c < C; c++)
        for (int64_t r = 0; r < R; r++)
            for (int64_t p = p0; p < p1; p++) {
                int64_t h = p * stride - pad + r;
                float *out0 = col + (c * R + r) * S * L + (p - p0) * Q; /* (c, r, s = 0, p) */
                if (h < 0 || h >= H) {
                    for (int64_t s = 0; s < S; s++) memset(out0 + s * L, 0, sizeof(float) * Q);
                    continue;
                }
                const float *xr = x + (c * H + h) * W;
                if (stride > 1 && phase)
                    for (int64_t f = 0; f < stride; f++)
                        for (int64_t i = 0; i * stride + f < W; i++) phase[f * Wph + i] = xr[i * stride + f];
                for (int64_t s = 0; s < S; s++) {
                    float *out = out0 + s * L;
                    /* q in [q0, q1) reads column q * stride + j of [0, W), j = s - pad */
                    int64_t j = s - pad;
                    int64_t q0 = j < 0 ? (-j + stride - 1) / stride : 0;
                    int64_t q1 = W - j > 0 ? (W - j + stride - 1) / stride : 0;
                    if (q1 > Q) q1 = Q;
                    if (q1 < q0) q1 = q0;
                    for (int64_t q = 0; q < q0; q++) out[q] = 0.0f;
                    if (q1 > q0) {
                        if (stride == 1) {
                            memcpy(out + q0, xr + q0 + j, sizeof(float) * (q1 - q0));
                        } else if (phase) { /* column q * stride + j = phase f = j mod stride, index q + (j - f) / stride */
                            int64_t f = ((j % stride) + stride) % stride;
                            memcpy(out + q0, phase + f * Wph + q0 + (j - f) / stride, sizeof(float) * (q1 - q0));
                        } else {
                            for (int64_t q = q0; q < q1; q++) out[q] = xr[q * stride + j];
                        }
                    }
                    for (int64_t q = q1; q < Q; q++) out[q] = 0.0f;
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

/* The largest weight (K C floats) of a 1x1 conv that conv_pointwise.c multiplies: up to 256 x 128 it
 * beat sgemm (which copies both operands, then a pass for the epilogue) by 1.05-1.8x on
 * cPreResNet20's shapes at batch 1 and 64; on 256 x 256 at 14x14 it took 2x longer (the weight
 * leaves L1 for every slice of pixels; sgemm packs it once) */
#define POINTWISE_MAX_WEIGHT 32768

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
void csub_conv_epilogue(float *y, const float *b, const float *res, int relu, int64_t K, int64_t L, int64_t PQ)
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

/* Output rows per im2col band: the band's columns (C R S x rows x Q floats) stay within
 * COL_BAND_FLOATS, so they are multiplied from L2 right after they are written (a whole 224x224
 * image's 7x7 columns are 7 MB: laid out in one piece they went to memory and back, and the
 * ResNet18 stem ran at a third of the sgemm rate) */
#define COL_BAND_FLOATS (96 * 1024)

static int64_t band_rows(int64_t CRS, int64_t Q)
{
    int64_t rows = COL_BAND_FLOATS / (CRS * Q);
    return rows < 1 ? 1 : rows;
}

/* Output rows [p0, p1) of one image xn[C,H,W] -> yn[K,P*Q], band by band: im2col into col
 * (CRS x band_rows x Q floats, then W + stride for the phases; unused for a pointwise conv), the product, the epilogue */
static void conv_rows(const float *xn, const float *w, const float *b, const float *resn, int relu, float *yn,
                      float *col, int pw, int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S,
                      int64_t stride, int64_t pad, int64_t P, int64_t Q, int64_t p0, int64_t p1)
{
    int64_t CRS = C * R * S, PQ = P * Q, step = pw ? p1 - p0 : band_rows(CRS, Q);
    for (int64_t a = p0; a < p1; a += step) {
        int64_t e = a + step < p1 ? a + step : p1, L = (e - a) * Q;
        float *yb = yn + a * Q;
        if (pw) {
            csub_gemm_serial(0, 0, K, L, C, 1.0f, w, C, xn + a * Q, PQ, 0.0f, yb, PQ);
        } else {
            im2col(xn, col, col + CRS * (e - a) * Q, C, H, W, R, S, stride, pad, a, e, Q);
            csub_gemm_serial(0, 0, K, L, CRS, 1.0f, w, CRS, col, L, 0.0f, yb, PQ);
        }
        csub_conv_epilogue(yb, b, resn ? resn + a * Q : NULL, relu, K, L, PQ);
    }
}

/* xs[c][p][q] = x[c][p st][q st], c < NC (p < P, q < Q): the input of a strided 1x1 conv. At stride 2
 * on AVX-512 a row by csub_plane_row_avx512 (tile.h: 16 values the even ones of two vectors, one
 * permute); the scalar loop's strided reads made cPreResNet20's two downsampling 1x1 convs 1.3-1.5x
 * slower than the stride-1 ones of the same size. */
static void subsample(const float *x, float *xs, int64_t NC, int64_t H, int64_t W, int64_t P, int64_t Q, int64_t st)
{
#if CSUB_X86
    int vec = st == 2 && csub_isa_level() >= CSUB_ISA_AVX512;
#endif
    for (int64_t c = 0; c < NC; c++)
        for (int64_t p = 0; p < P; p++) {
            const float *xr = x + (c * H + p * st) * W;
            float *d = xs + (c * P + p) * Q;
#if CSUB_X86
            if (vec) {
                csub_plane_row_avx512(d, xr, Q, 0, Q, 2);
                continue;
            }
#endif
            for (int64_t q = 0; q < Q; q++) d[q] = xr[q * st];
        }
}

/* y = relu?(conv(x, w) + b + res), the epilogue applied to each band's rows right after their product */
int csub_conv2d_forward_fused(const float *x, const float *w, const float *b, const float *res, int relu, float *y,
                              int64_t N, int64_t C, int64_t H, int64_t W,
                              int64_t K, int64_t R, int64_t S, int64_t stride, int64_t pad)
{
    int64_t P = csub_conv_out_size(H, R, stride, pad), Q = csub_conv_out_size(W, S, stride, pad);
    int64_t CRS = C * R * S, PQ = P * Q;
    int pw = is_pointwise(R, S, stride, pad);
    int nt = csub_get_num_threads(), nomem = 0;
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
    if (csub_conv_stem_applies(C, R, S, Q)) /* few taps (a stem): on phase planes, conv_stem.c */
        return csub_conv_stem_forward(x, w, b, res, relu, y, N, C, H, W, K, R, S, stride, pad);
    if (R == 1 && S == 1 && pad == 0 && K * C <= POINTWISE_MAX_WEIGHT) {
        /* 1x1: the product and the epilogue tile by tile (conv_pointwise.c); strided, on the
         * input's every stride-th row and column, gathered first */
        if (stride == 1) {
            csub_conv1x1_forward(x, w, b, res, relu, y, N, C, PQ, K);
            return CSUB_OK;
        }
        size_t bytes;
        float *xs;
        if (csub_bytes_overflow(N * C * PQ, sizeof(float), &bytes) || !(xs = malloc(bytes))) return CSUB_ERR_NOMEM;
        #pragma omp parallel num_threads(N * C * PQ > CSUB_PAR_MIN && !omp_in_parallel() ? nt : 1)
        {
            int64_t lo, hi;
            csub_row_band(N * C, omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);
            subsample(x + lo * H * W, xs + lo * PQ, hi - lo, H, W, P, Q, stride);
        }
        csub_conv1x1_forward(xs, w, b, res, relu, y, N, C, PQ, K);
        free(xs);
        return CSUB_OK;
    }
    /* fewer images than threads (inference at batch 1): each thread takes the output rows of
     * its band (csub_row_band) of every image, no barrier, and a small product runs on one
     * thread; else threads take whole images */
    int split = N < nt && !omp_in_parallel();
    if (split && (P < nt || (double)K * (double)(PQ * CRS) < CSUB_PAR_MIN_CONV)) nt = 1;
    if (!split && nt > N) nt = (int)N;
    int64_t band = split ? (P + nt - 1) / nt : P, rows = band < band_rows(CRS, Q) ? band : band_rows(CRS, Q);
    #pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), T = omp_get_num_threads();
        float *col = pw ? NULL : malloc(sizeof(float) * (size_t)(CRS * rows * Q + W + stride));
        if (!pw && !col) {
            #pragma omp atomic write
            nomem = 1;
        } else if (split) {
            int64_t p0, p1;
            csub_row_band(P, t, T, &p0, &p1);
            for (int64_t n = 0; n < N && p1 > p0; n++)
                conv_rows(x + n * C * H * W, w, b, res ? res + n * K * PQ : NULL, relu, y + n * K * PQ, col, pw,
                          C, H, W, K, R, S, stride, pad, P, Q, p0, p1);
        } else {
            int64_t n0, n1;
            csub_row_band(N, t, T, &n0, &n1);
            for (int64_t n = n0; n < n1; n++)
                conv_rows(x + n * C * H * W, w, b, res ? res + n * K * PQ : NULL, relu, y + n * K * PQ, col, pw,
                          C, H, W, K, R, S, stride, pad, P, Q, 0, P);
        }
        free(col);
    }
    return nomem ? CSUB_ERR_NOMEM : CSUB_OK;
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
                    im2col(xn, col, NULL, C, H, W, R, S, stride, pad, 0, P, Q);
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
