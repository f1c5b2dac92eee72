/* conv_direct.c - direct 3x3 convolution (pad 1, stride 1 or 2), float32, forward.
 *
 * For few channels (cPreResNet20: 16 to 64 channels on 32x32 to 8x8 planes)
 * im2col + sgemm spends as long laying out the columns as multiplying them,
 * with a short inner dimension (9 C). This kernel multiplies straight from a
 * zero-padded copy of the input, vectorised over output pixels, in NCHW, so
 * the output needs no transpose and the epilogue (bias, residual, ReLU) runs
 * on finished rows:
 *
 * - The input rows an output band [p0, p1) reads are copied, zero-padded, into
 *   planes of G columns: stride 1, one plane of the padded image (G = W + 2);
 *   stride 2, its four phases (even/odd rows x even/odd columns, G = (W+3)/2).
 *   Output pixel (p, q) then sits at o = (p - p0) G + q of a G-wide grid and
 *   tap (r, s) reads its plane at o + off[r][s]: a 3x3 convolution becomes
 *   nine shifted 1-D multiply-adds over the flat grid (its G - Q extra
 *   columns per row are computed and dropped, 6 % at 32x32, 25 % at 8x8).
 * - Output channels go by groups of 8 (the weight packed once into
 *   wp[ceil(K/8)][C][9][8], zeros past K); a tile of 8 channels x V vectors of
 *   grid pixels stays in registers over all C x 9 taps: per tap V loads and
 *   8 broadcast weights feed 8 V multiply-adds (AVX-512: V = 3, 24 zmm).
 * - Threads split the batch, or at batch < threads the output rows of each
 *   image (csub_row_band), as the im2col path does.
 *
 * Variants by instruction-set level (csub_isa_level, internal.h): AVX-512
 * (16 floats a vector), AVX2 (8), the baseline (4, SSE2 or any other
 * architecture). Each multiply-add is fused, rounded once: AVX2 and AVX-512
 * by contraction (CSUB_FP_CONTRACT_FAST, for this file), the baseline by fmaf on
 * each lane (the FMA instruction where the CPU has one, glibc picks it; a
 * software fma, much slower, on x86-64 CPUs without it). Each output is summed
 * over c, then the taps, in the same order at every level, so every level
 * computes the same bits (the quantized runtime's results must not depend on
 * CSUB_ISA); the im2col path sums in another order and agrees to float32
 * rounding. Where contraction is off (clang builds: internal.h) every level,
 * the baseline too, multiplies and adds unfused, again the same bits.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#include "internal.h"
#include "tile.h"

#if CSUB_X86
#include <immintrin.h>
#endif

CSUB_FP_CONTRACT_FAST

#define OCG 8 /* output channels per packed weight group */
#define GRID_ALIGN 16 /* the flat grid rounded up to whole vectors of the widest level */

int csub_conv3x3_applies(int64_t R, int64_t S, int64_t stride, int64_t pad)
{
    return R == 3 && S == 3 && pad == 1 && (stride == 1 || stride == 2);
}

int64_t csub_conv3x3_packed_len(int64_t K, int64_t C)
{
    return (K + OCG - 1) / OCG * OCG * C * 9;
}

/* w[K,C,3,3] -> wp[ceil(K/8)][C][9][8], zeros for the channels past K */
void csub_conv3x3_pack(const float *w, float *wp, int64_t K, int64_t C)
{
    int64_t ng = (K + OCG - 1) / OCG;
    memset(wp, 0, sizeof(float) * (size_t)(ng * OCG * C * 9));
    for (int64_t k = 0; k < K; k++) { /* w[k] is [C*9] contiguous; its packed values sit OCG apart */
        const float *wk = w + k * C * 9;
        float *d = wp + (k / OCG) * C * 9 * OCG + k % OCG;
        for (int64_t i = 0; i < C * 9; i++) d[i * OCG] = wk[i];
    }
}

/* w[K,C,3,3] -> the packed weight of its flipped transpose wt[C,K,3,3], wt[c][k][r][s] = w[k][c][2-r][2-s]:
 * the input gradient of a stride-1 convolution is this convolution of the output gradient */
void csub_conv3x3_pack_flipped(const float *w, float *wp, int64_t K, int64_t C)
{
    int64_t ng = (C + OCG - 1) / OCG;
    memset(wp, 0, sizeof(float) * (size_t)(ng * OCG * K * 9));
    for (int64_t k = 0; k < K; k++)
        for (int64_t c = 0; c < C; c++) {
            const float *wkc = w + (k * C + c) * 9;
            float *d = wp + ((c / OCG) * K + k) * 9 * OCG + c % OCG;
            for (int t = 0; t < 9; t++) d[t * OCG] = wkc[8 - t];
        }
}

/* The geometry of one band of np output rows: grid width G, the flat output
 * length Lo (rounded up to whole vectors), one input plane's length Lin, the
 * planes per channel nph, and the tap offsets off[9] into a channel's planes. */
typedef struct {
    int64_t G, Lo, Lin, nph, off[9];
} band_geom;

static band_geom geom(int64_t W, int64_t stride, int64_t np)
{
    band_geom b;
    b.G = stride == 1 ? W + 2 : (W + 3) / 2;
    b.Lo = (np * b.G + GRID_ALIGN - 1) / GRID_ALIGN * GRID_ALIGN;
    /* the last vector reads up to Lo - 1 + the largest offset: 2G + 2 (stride 1), G + 1 (a phase) */
    b.Lin = stride == 1 ? b.Lo + 2 * b.G + 2 : b.Lo + b.G + 1;
    b.nph = stride == 1 ? 1 : 4;
    for (int r = 0; r < 3; r++)
        for (int s = 0; s < 3; s++)
            b.off[r * 3 + s] = stride == 1 ? r * b.G + s
                                           : ((r & 1) * 2 + (s & 1)) * b.Lin + (r >> 1) * b.G + (s >> 1);
    return b;
}

/* Floats of work one thread needs for bands of up to np rows: the laid-out input, then the output grid. */
static int64_t band_work(int64_t C, int64_t W, int64_t stride, int64_t np)
{
    band_geom b = geom(W, stride, np);
    return C * b.nph * b.Lin + OCG * b.Lo;
}

/* A row's two column phases at stride 2: d1[j] = xr[2 j] (j < (W + 1) / 2), d0[j] = xr[2 j - 1]
 * (1 <= j <= W / 2) */
static void split_row(const float *xr, float *d0, float *d1, int64_t W)
{
    for (int64_t j = 1; 2 * j - 1 < W; j++) d0[j] = xr[2 * j - 1];
    for (int64_t j = 0; 2 * j < W; j++) d1[j] = xr[2 * j];
}

#if CSUB_X86
/* split_row on AVX-512: each 32 values of the row, two masked loads (nothing read past it), split
 * into their even and odd ones by two permutes (the scalar loops made the stride-2 layout a quarter
 * of cPreResNet20's stride-2 3x3 convs at batch 1) */
CSUB_TARGET_AVX512 static void split_row_avx512(const float *xr, float *d0, float *d1, int64_t W)
{
    const __m512i ev = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i od = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    int64_t n1 = (W + 1) / 2, n0 = W / 2;
    for (int64_t q = 0; q < n1; q += 16) {
        int64_t a = W - 2 * q, bq = W - 2 * q - 16; /* values left from each load's start */
        __mmask16 ml = a >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << a) - 1);
        __mmask16 mh = bq >= 16 ? (__mmask16)0xFFFF : bq <= 0 ? 0 : (__mmask16)((1u << bq) - 1);
        __m512 lo = _mm512_maskz_loadu_ps(ml, xr + 2 * q), hi = _mm512_maskz_loadu_ps(mh, xr + 2 * q + 16);
        int64_t e = n1 - q, o = n0 - q;
        __mmask16 me = e >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << e) - 1);
        __mmask16 mo = o >= 16 ? (__mmask16)0xFFFF : o <= 0 ? 0 : (__mmask16)((1u << o) - 1);
        _mm512_mask_storeu_ps(d1 + q, me, _mm512_permutex2var_ps(lo, ev, hi));
        _mm512_mask_storeu_ps(d0 + q + 1, mo, _mm512_permutex2var_ps(lo, od, hi));
    }
}
#endif

/* x's rows of an image [C,H,W] -> xin[C][nph][Lin]: the zero-padded input rows of output rows
 * [p0, p0 + np) (each row it reads in [0, H) held by x: the caller checks) */
static void lay_out(const csub_rows *x, float *xin, const band_geom *b, int64_t C, int64_t H, int64_t W,
                    int64_t stride, int64_t p0, int64_t np)
{
    int64_t G = b->G, Lin = b->Lin;
#if CSUB_X86
    int avx512 = csub_isa_level() >= CSUB_ISA_AVX512;
#endif
    for (int64_t c = 0; c < C; c++) {
        if (stride == 1) { /* padded rows p0 .. p0 + np + 1, i.e. input rows p0 - 1 .. p0 + np */
            float *d = xin + c * Lin;
            memset(d, 0, sizeof(float) * (size_t)Lin);
            for (int64_t i = 0; i < np + 2; i++) {
                int64_t h = p0 + i - 1;
                if (h >= 0 && h < H) memcpy(d + i * G + 1, csub_rows_at(x, c, h, W), sizeof(float) * (size_t)W);
            }
            continue;
        }
        /* phase (a, e) holds padded rows 2 (p0 + i) + a and padded columns 2 j + e: input column
         * 2 j - 1 (e = 0, j >= 1) or 2 j (e = 1) */
        float *ph = xin + c * 4 * Lin;
        memset(ph, 0, sizeof(float) * (size_t)(4 * Lin));
        for (int a = 0; a < 2; a++)
            for (int64_t i = 0; i < np + 1 - a; i++) {
                int64_t h = 2 * (p0 + i) + a - 1;
                if (h < 0 || h >= H) continue;
                const float *xr = csub_rows_at(x, c, h, W);
                float *d0 = ph + (a * 2) * Lin + i * G, *d1 = ph + (a * 2 + 1) * Lin + i * G;
#if CSUB_X86
                if (avx512) {
                    split_row_avx512(xr, d0, d1, W);
                    continue;
                }
#endif
                split_row(xr, d0, d1, W);
            }
    }
}

/* One tile: out[j][o .. o + V VW) = sum over c, t of wg[c][t][j] * xin[c][off[t] + o ..], j < 8.
 * Defined per vector type (VT, VW floats); V is a constant at each call, so the 8 x V
 * accumulators live in registers. */
#define DEFINE_TILE(NAME, VT, VW, MADD)                                                             \
    static CSUB_ALWAYS_INLINE void NAME(const float *xin, const int64_t *off, const float *wg,       \
                                        int64_t C, int64_t CS, float *out, int64_t Lo, int64_t o,    \
                                        const int V)                                                 \
    {                                                                                                \
        VT acc[OCG][3];                                                                              \
        _Pragma("GCC unroll 8") for (int j = 0; j < OCG; j++)                                       \
        _Pragma("GCC unroll 3") for (int v = 0; v < V; v++) acc[j][v] = (VT){0};                    \
        const int64_t o0 = off[0], o1 = off[1], o2 = off[2], o3 = off[3], o4 = off[4], o5 = off[5], \
                      o6 = off[6], o7 = off[7], o8 = off[8];                                        \
        for (int64_t c = 0; c < C; c++) {                                                            \
            const float *xc = xin + c * CS + o, *wc = wg + c * 9 * OCG;                             \
            const int64_t ot[9] = {o0, o1, o2, o3, o4, o5, o6, o7, o8};                              \
            _Pragma("GCC unroll 9") for (int t = 0; t < 9; t++) {                                   \
                VT xv[3];                                                                            \
                _Pragma("GCC unroll 3") for (int v = 0; v < V; v++)                                 \
                    memcpy(&xv[v], xc + ot[t] + v * VW, sizeof(VT));                                 \
                _Pragma("GCC unroll 8") for (int j = 0; j < OCG; j++) {                             \
                    float wj = wc[t * OCG + j];                                                      \
                    _Pragma("GCC unroll 3") for (int v = 0; v < V; v++) MADD(acc[j][v], xv[v], wj);  \
                }                                                                                    \
            }                                                                                        \
        }                                                                                            \
        _Pragma("GCC unroll 8") for (int j = 0; j < OCG; j++)                                       \
        _Pragma("GCC unroll 3") for (int v = 0; v < V; v++)                                         \
            memcpy(out + j * Lo + o + v * VW, &acc[j][v], sizeof(VT));                               \
    }

DEFINE_TILE(tile_baseline, f32x4, 4, MADD_BASELINE)

/* The whole grid of one channel group, out[8][Lo], by the baseline's 4-float vectors */
static void grid_baseline(const float *xin, const int64_t *off, const float *wg, int64_t C, int64_t CS,
                          float *out, int64_t Lo)
{
    for (int64_t o = 0; o < Lo; o += 8) tile_baseline(xin, off, wg, C, CS, out, Lo, o, 2);
}

#if CSUB_X86
DEFINE_TILE(tile_avx2, f32x8, 8, MADD_CONTRACT)
DEFINE_TILE(tile_avx512, f32x16, 16, MADD_CONTRACT)

CSUB_TARGET_AVX2 static void grid_avx2(const float *xin, const int64_t *off, const float *wg, int64_t C, int64_t CS,
                                       float *out, int64_t Lo)
{
    for (int64_t o = 0; o < Lo; o += 8) tile_avx2(xin, off, wg, C, CS, out, Lo, o, 1);
}

CSUB_TARGET_AVX512 static void grid_avx512(const float *xin, const int64_t *off, const float *wg, int64_t C,
                                           int64_t CS, float *out, int64_t Lo)
{
    int64_t o = 0;
    for (; o + 48 <= Lo; o += 48) tile_avx512(xin, off, wg, C, CS, out, Lo, o, 3);
    if (Lo - o == 32) tile_avx512(xin, off, wg, C, CS, out, Lo, o, 2);
    else if (Lo - o == 16) tile_avx512(xin, off, wg, C, CS, out, Lo, o, 1);
}
#endif

static void grid(const float *xin, const int64_t *off, const float *wg, int64_t C, int64_t CS, float *out, int64_t Lo)
{
#if CSUB_X86
    int isa = csub_isa_level();
    if (isa >= CSUB_ISA_AVX512) { grid_avx512(xin, off, wg, C, CS, out, Lo); return; }
    if (isa >= CSUB_ISA_AVX2) { grid_avx2(xin, off, wg, C, CS, out, Lo); return; }
#endif
    grid_baseline(xin, off, wg, C, CS, out, Lo);
}

/* The epilogue of a group's grid, as the im2col path's: y[k][p][0, Q) = relu?(out[k - k0][(p - p0) G ..]
 * + b[k] + res[k][p]) for channels [k0, k0 + nk), rows [p0, p1); y and res hold rows from yr0 on, planes
 * ys floats apart. Compiled for each level (it ran 4-float vectors, a few percent of cPreResNet20's dense
 * forward at batch 1). */
static CSUB_ALWAYS_INLINE void band_epilogue_body(const float *out, int64_t Lo, int64_t G, const float *b,
                                                  const float *res, int relu, float *y, int64_t k0, int64_t nk,
                                                  int64_t ys, int64_t yr0, int64_t Q, int64_t p0, int64_t p1)
{
    for (int64_t j = 0; j < nk; j++) {
        int64_t k = k0 + j;
        float bk = b ? b[k] : 0.0f;
        for (int64_t p = p0; p < p1; p++) {
            const float *src = out + j * Lo + (p - p0) * G;
            float *yr = y + k * ys + (p - yr0) * Q;
            const float *rr = res ? res + k * ys + (p - yr0) * Q : NULL;
            if (rr && relu)
                for (int64_t q = 0; q < Q; q++) {
                    float v = src[q] + bk + rr[q];
                    yr[q] = v <= 0.0f ? 0.0f : v;
                }
            else if (rr)
                for (int64_t q = 0; q < Q; q++) yr[q] = src[q] + bk + rr[q];
            else if (relu)
                for (int64_t q = 0; q < Q; q++) {
                    float v = src[q] + bk;
                    yr[q] = v <= 0.0f ? 0.0f : v;
                }
            else
                for (int64_t q = 0; q < Q; q++) yr[q] = src[q] + bk;
        }
    }
}
CSUB_VARIANTS(band_epilogue, (const float *out, int64_t Lo, int64_t G, const float *b, const float *res, int relu,
                              float *y, int64_t k0, int64_t nk, int64_t ys, int64_t yr0, int64_t Q, int64_t p0,
                              int64_t p1),
              (out, Lo, G, b, res, relu, y, k0, nk, ys, yr0, Q, p0, p1))

/* Output rows [p0, p1) of one image from x's rows -> y[K,P,Q] = relu?(conv + b + res), y and res holding
 * rows from yr0 on, planes ys floats apart; work: band_work floats */
static void conv_band(const csub_rows *x, const float *wp, const float *b, const float *res, int relu, float *y,
                      int64_t ys, int64_t yr0, int64_t C, int64_t H, int64_t W, int64_t K, int64_t stride, int64_t Q,
                      int64_t p0, int64_t p1, float *work)
{
    int64_t np = p1 - p0;
    if (np <= 0) return;
    band_geom bg = geom(W, stride, np);
    int64_t CS = bg.nph * bg.Lin, G = bg.G;
    float *xin = work, *out = work + C * CS;
    lay_out(x, xin, &bg, C, H, W, stride, p0, np);
    for (int64_t g = 0; g * OCG < K; g++) {
        grid(xin, bg.off, wp + g * C * 9 * OCG, C, CS, out, bg.Lo);
        int64_t k0 = g * OCG;
        band_epilogue(out, bg.Lo, G, b, res, relu, y, k0, K - k0 < OCG ? K - k0 : OCG, ys, yr0, Q, p0, p1);
    }
}

/* Output rows [p0, p1) of image n of x[N,C,H,W] -> y[N,K,P,Q] (res likewise) */
static void conv_image(const float *x, int64_t n, const float *wp, const float *b, const float *res, int relu,
                       float *y, int64_t C, int64_t H, int64_t W, int64_t K, int64_t stride, int64_t P, int64_t Q,
                       int64_t p0, int64_t p1, float *work)
{
    int64_t KPQ = K * P * Q;
    csub_rows xr = {x + n * C * H * W, NULL, NULL, 0, H, H * W};
    conv_band(&xr, wp, b, res ? res + n * KPQ : NULL, relu, y + n * KPQ, P * Q, 0, C, H, W, K, stride, Q, p0, p1, work);
}

/* x[N,C,H,W], wp (csub_conv3x3_pack of w[K,C,3,3]), b[K] or NULL, res[N,K,P,Q] or NULL -> y[N,K,P,Q] */
int csub_conv3x3_forward(const float *x, const float *wp, const float *b, const float *res, int relu, float *y,
                         int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t stride)
{
    int64_t P = csub_conv_out_size(H, 3, stride, 1), Q = csub_conv_out_size(W, 3, stride, 1);
    if (N <= 0 || K <= 0 || P <= 0 || Q <= 0) return CSUB_OK;
    int nt = omp_in_parallel() ? 1 : csub_get_num_threads();
    int split = N < nt;
    if (split && (P < nt || (double)K * (double)(P * Q) * (double)(C * 9) < CSUB_PAR_MIN_CONV)) nt = 1, split = 0;
    if (!split && nt > N) nt = (int)N;
    int64_t per = band_work(C, W, stride, P); /* enough for any band */
    per = (per + 15) / 16 * 16; /* each thread's part on its own cache lines */
    size_t bytes;
    if (csub_bytes_overflow(per * nt, sizeof(float), &bytes)) return CSUB_ERR_NOMEM;
    float *work = malloc(bytes);
    if (!work) return CSUB_ERR_NOMEM;
    if (nt == 1) { /* no parallel region (csub_conv2d_sparse_forward_planned) */
        for (int64_t n = 0; n < N; n++) conv_image(x, n, wp, b, res, relu, y, C, H, W, K, stride, P, Q, 0, P, work);
        free(work);
        return CSUB_OK;
    }
    #pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num();
        float *wk = work + (size_t)t * (size_t)per;
        if (split) {
            int64_t p0, p1;
            csub_row_band(P, t, omp_get_num_threads(), &p0, &p1);
            for (int64_t n = 0; n < N; n++) conv_image(x, n, wp, b, res, relu, y, C, H, W, K, stride, P, Q, p0, p1, wk);
        } else {
            #pragma omp for schedule(static)
            for (int64_t n = 0; n < N; n++) conv_image(x, n, wp, b, res, relu, y, C, H, W, K, stride, P, Q, 0, P, wk);
        }
    }
    free(work);
    return CSUB_OK;
}

int csub_conv3x3_forward_rows(const csub_rows *x, const float *wp, const float *b, const float *res, int relu,
                              float *y, int64_t C, int64_t H, int64_t W, int64_t K, int64_t stride, int64_t p0,
                              int64_t p1)
{
    int64_t P = csub_conv_out_size(H, 3, stride, 1), Q = csub_conv_out_size(W, 3, stride, 1);
    if (p0 < 0 || p1 > P || (stride != 1 && stride != 2) || !csub_rows_cover(x, H, 3, stride, 1, p0, p1)) return CSUB_ERR_ARG;
    if (p1 <= p0 || K <= 0 || Q <= 0) return CSUB_OK;
    size_t bytes;
    float *work;
    if (csub_bytes_overflow(band_work(C, W, stride, p1 - p0), sizeof(float), &bytes) || !(work = malloc(bytes)))
        return CSUB_ERR_NOMEM;
    conv_band(x, wp, b, res, relu, y, (p1 - p0) * Q, p0, C, H, W, K, stride, Q, p0, p1, work);
    free(work);
    return CSUB_OK;
}
