/* conv_winograd.c - Winograd convolution F(m x m, 3x3), m = 4 or 2, for a 3x3, pad 1, stride 1
 * float32 convolution in NCHW, forward (the runtime's dense 3x3 layers).
 *
 * Each output tile of m x m pixels is computed from an A x A input patch (A = m + 2) as
 * Y = A^T [ sum_c (G g_kc G^T) .* (B^T d_c B) ] A: A^2 products per channel pair and tile
 * instead of 9 m^2 (F(4x4): 36 instead of 144, F(2x2): 16 instead of 36). The matrices are
 * Lavin & Gray's (tests/test_winograd.py has the float64 twin with the same ones):
 *
 *   F(4x4,3x3)  B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1]
 *               G   = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1]
 *               A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]
 *   F(2x2,3x3)  B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]
 *               G   = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]
 *               A^T = [1 1 1 0; 0 1 -1 -1]
 *
 * Layout: channels go by blocks of 16 (one AVX-512 vector; C and K rounded up with zeros to
 * Cp, Kp), so every transform runs on vectors of 16 channels:
 * - the weight, once (csub_winograd_pack): u[A^2][Kp/16][Cp][16] = G g G^T, in float64 then
 *   rounded;
 * - the input, per image: transposed into a zero-bordered xt[Hp][Wp][Cp] (Hp = m th + 2,
 *   Wp = m tw + 2 for th x tw tiles; 16 x 16 blocks transposed in registers), then per tile
 *   v[A^2][tile][Cp] = B^T d B;
 * - the products, per position: mm[xi][tile][Kp] = sum_c v[xi][tile][c] u[xi][c][k], a
 *   register-blocked kernel (AVX-512: 12 tiles x 32 output channels in 24 registers, a
 *   broadcast input value and two weight vectors per channel);
 * - the output, per tile and 16 output channels: A^T M A into a channels-last strip of the
 *   tile row; a finished strip goes to y by 16 x 16 blocks transposed in registers, + bias[k]
 *   + res and the ReLU applied to whole vectors of an output row (y and res in order).
 * Tiles are numbered over (image, tile row, tile column) and run in blocks of up to `tb`
 * (the positions' products reuse each weight tb times); threads take whole images
 * (N >= threads), or at N < threads runs of the tiles, or where the tiles are fewer than the
 * output channels (small planes, many channels) ranges of the output channels, so that each
 * thread reads only its part of the transformed weight.
 *
 * Rounding: F(4x4) scales the input by up to 4 x 5 and the output transform by up to 8 x 9
 * before they cancel, so the result carries a few more float32 roundings than the direct
 * kernel (measured: tests/test_winograd.py); F(2x2) about as few as the direct one. The
 * runtime uses it for its float32 dense layers only, never for the quantized paths whose
 * bits must not depend on the instruction set; CSUB_WINOGRAD=0 turns it off
 * (runtime_alpha.c). Contraction is on for this file (internal.h): the AVX2 and AVX-512
 * variants fuse multiply-adds, the baseline's vectors may not.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#include "internal.h"
#include "tile.h"

CSUB_FP_CONTRACT_FAST

#define LB 16 /* channels per block */
/* The products prefetch each block's transformed weight WPF channels (lines) ahead: at batch 1 the
 * weight is read once per call, from memory, and the hardware's prefetch alone left ResNet18's
 * forward waiting on it (measured with benchmarks/bench_runtime_ab.py: 1.11-1.16x at batch 1,
 * 1.02-1.09x at 16; 16 lines ahead gained less, 64 and 128 as much) */
#define WPF 32

static int64_t round16(int64_t n) { return (n + LB - 1) / LB * LB; }

int64_t csub_winograd_packed_len(int64_t K, int64_t C, int m)
{
    int64_t A = m + 2;
    return A * A * round16(K) * round16(C);
}

/* o = G (x0, x1, x2) for F(m x m, 3x3): the matrices of the file comment, in float64 */
static void gmul(int m, double x0, double x1, double x2, double *o)
{
    if (m == 4) {
        double p = x0 + x2, q = x0 + 4.0 * x2;
        o[0] = 0.25 * x0;
        o[1] = -(p + x1) / 6.0;
        o[2] = -(p - x1) / 6.0;
        o[3] = (q + 2.0 * x1) / 24.0;
        o[4] = (q - 2.0 * x1) / 24.0;
        o[5] = x2;
    } else {
        o[0] = x0;
        o[1] = 0.5 * (x0 + x1 + x2);
        o[2] = 0.5 * (x0 - x1 + x2);
        o[3] = x2;
    }
}

/* w[K,C,3,3] -> u[A^2][Kp/16][Cp][16] = G w[k][c] G^T, zeros past K and C: 16 output x 16 input
 * channels at a time into a local block, then one contiguous run per position (the positions lie
 * Kp Cp floats apart, a multiple of 4 KB: written one value at a time they would share one cache
 * set). Blocks split across threads; each value computed alone, the same bits on any thread count. */
void csub_winograd_pack(const float *w, float *u, int64_t K, int64_t C, int m)
{
    const int A = m + 2;
    int64_t Kp = round16(K), Cp = round16(C), xs = Kp * Cp; /* floats from one position to the next */
    memset(u, 0, sizeof(float) * (size_t)(A * A * xs));
    #pragma omp parallel for num_threads(csub_get_num_threads()) schedule(static) if (K * C >= 4096)
    for (int64_t kb = 0; kb < Kp; kb += LB)
        for (int64_t c0 = 0; c0 < C; c0 += LB) {
            float blk[36][LB][LB]; /* [position][c - c0][k - kb] */
            int64_t nc = C - c0 < LB ? C - c0 : LB;
            memset(blk, 0, sizeof blk);
            for (int64_t c = c0; c < c0 + nc; c++)
                for (int64_t k = kb; k < kb + LB && k < K; k++) {
                    const float *g = w + (k * C + c) * 9;
                    double t[3][6], r[6];
                    for (int q = 0; q < 3; q++) gmul(m, g[q], g[3 + q], g[6 + q], t[q]); /* t[q][i] = (G g)[i][q] */
                    for (int i = 0; i < A; i++) { /* row i of (G g) G^T */
                        gmul(m, t[0][i], t[1][i], t[2][i], r);
                        for (int j = 0; j < A; j++) blk[i * A + j][c - c0][k - kb] = (float)r[j];
                    }
                }
            for (int xi = 0; xi < A * A; xi++)
                memcpy(u + xi * xs + ((kb / LB) * Cp + c0) * LB, blk[xi], sizeof(float) * (size_t)(nc * LB));
        }
}

/* ------------------------------------------------------------ 16 x 16 transpose
 * r[i][j] -> r[j][i] in four stages; stage `bit` swaps that bit of the row and the column index. */
#define SHUF(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
static CSUB_ALWAYS_INLINE void transpose16(f32x16 *r)
{
    f32x16 a, b;
    for (int i = 0; i < 16; i++) if (!(i & 8)) {
        a = r[i], b = r[i | 8];
        r[i] = SHUF(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
        r[i | 8] = SHUF(a, b, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    }
    for (int i = 0; i < 16; i++) if (!(i & 4)) {
        a = r[i], b = r[i | 4];
        r[i] = SHUF(a, b, 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27);
        r[i | 4] = SHUF(a, b, 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
    }
    for (int i = 0; i < 16; i++) if (!(i & 2)) {
        a = r[i], b = r[i | 2];
        r[i] = SHUF(a, b, 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29);
        r[i | 2] = SHUF(a, b, 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
    }
    for (int i = 0; i < 16; i++) if (!(i & 1)) {
        a = r[i], b = r[i | 1];
        r[i] = SHUF(a, b, 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30);
        r[i | 1] = SHUF(a, b, 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
    }
}

#define LOAD16(v, p) memcpy(&(v), (p), sizeof(f32x16))
#define STORE16(p, v) memcpy((p), &(v), sizeof(f32x16))

/* ------------------------------------------------------------ input: transpose
 * x's rows of an image [C,H,W] -> xt[Hp][Wp][Cp]: xt[h - h0 + 1][w + 1][c] = x[c][h][w], zeros elsewhere
 * (the tiles' output rows start at row h0); rows [r0, r1) of xt */
static CSUB_ALWAYS_INLINE void transpose_in_body(const csub_rows *x, float *xt, int64_t C, int64_t H, int64_t W,
                                                 int64_t Wp, int64_t Cp, int64_t h0, int64_t r0, int64_t r1)
{
    for (int64_t r = r0; r < r1; r++) {
        float *row = xt + r * Wp * Cp;
        int64_t h = h0 + r - 1;
        /* the top row, the rows past H, and rows of a band's last tile past those its outputs read */
        if (h < 0 || h >= H || !csub_rows_at(x, 0, h, W)) {
            memset(row, 0, sizeof(float) * (size_t)(Wp * Cp));
            continue;
        }
        memset(row, 0, sizeof(float) * (size_t)Cp);
        memset(row + (W + 1) * Cp, 0, sizeof(float) * (size_t)((Wp - W - 1) * Cp));
        for (int64_t cb = 0; cb < Cp; cb += LB) {
            int64_t nc = C - cb < LB ? C - cb : LB;
            for (int64_t wn = 0; wn < W; wn += 16) {
                /* whole vectors; past 16 columns the last block shifted back to end at W (the same
                 * values stored twice), narrower planes and channel blocks through a buffer */
                int64_t w0 = W >= 16 && wn + 16 > W ? W - 16 : wn, nw = W - w0 < 16 ? W - w0 : 16;
                f32x16 r[16];
                if (nc == LB && nw == 16) {
                    for (int c = 0; c < 16; c++) LOAD16(r[c], csub_rows_at(x, cb + c, h, W) + w0);
                } else {
                    float buf[16][16];
                    memset(buf, 0, sizeof buf);
                    for (int64_t c = 0; c < nc; c++)
                        memcpy(buf[c], csub_rows_at(x, cb + c, h, W) + w0, sizeof(float) * (size_t)nw);
                    for (int c = 0; c < 16; c++) LOAD16(r[c], buf[c]);
                }
                transpose16(r);
                for (int64_t j = 0; j < nw; j++) STORE16(row + (w0 + 1 + j) * Cp + cb, r[j]);
            }
        }
    }
}
CSUB_VARIANTS(transpose_in, (const csub_rows *x, float *xt, int64_t C, int64_t H, int64_t W, int64_t Wp, int64_t Cp,
                             int64_t h0, int64_t r0, int64_t r1), (x, xt, C, H, W, Wp, Cp, h0, r0, r1))

/* ------------------------------------------------------------ input: transform
 * The patch at xt[m ty + r][m tx + s] (r, s < A) of one tile -> v[(r A + s) vs + c] = B^T d B, every c < Cp */
static CSUB_ALWAYS_INLINE void bt6(const f32x16 *d, f32x16 *o)
{
    f32x16 d1m = d[3] - d[1], d42 = d[4] - d[2];
    o[0] = 4.0f * d[0] - 5.0f * d[2] + d[4];
    o[1] = (d[3] + d[4]) - 4.0f * (d[1] + d[2]);
    o[2] = (d[4] - d[3]) + 4.0f * (d[1] - d[2]);
    o[3] = d42 + 2.0f * d1m;
    o[4] = d42 - 2.0f * d1m;
    o[5] = 4.0f * d[1] - 5.0f * d[3] + d[5];
}

static CSUB_ALWAYS_INLINE void bt4(const f32x16 *d, f32x16 *o)
{
    o[0] = d[0] - d[2];
    o[1] = d[1] + d[2];
    o[2] = d[2] - d[1];
    o[3] = d[1] - d[3];
}

static CSUB_ALWAYS_INLINE void in_tile_body(const float *xt, int64_t Wp, int64_t Cp, float *v, int64_t vs, int m)
{
    const int A = m + 2;
    for (int64_t cb = 0; cb < Cp; cb += LB) {
        f32x16 t[6][6], d[6], o[6];
        for (int s = 0; s < A; s++) { /* columns: t[.][s] = B^T d[.][s] */
            for (int r = 0; r < A; r++) LOAD16(d[r], xt + (r * Wp + s) * Cp + cb);
            if (m == 4) bt6(d, o); else bt4(d, o);
            for (int i = 0; i < A; i++) t[i][s] = o[i];
        }
        for (int i = 0; i < A; i++) { /* rows: v[i][.] = t[i][.] B */
            if (m == 4) bt6(t[i], o); else bt4(t[i], o);
            for (int j = 0; j < A; j++) STORE16(v + (i * A + j) * vs + cb, o[j]);
        }
    }
}
static CSUB_ALWAYS_INLINE void in_tile4_body(const float *xt, int64_t Wp, int64_t Cp, float *v, int64_t vs)
{
    in_tile_body(xt, Wp, Cp, v, vs, 4);
}
static CSUB_ALWAYS_INLINE void in_tile2_body(const float *xt, int64_t Wp, int64_t Cp, float *v, int64_t vs)
{
    in_tile_body(xt, Wp, Cp, v, vs, 2);
}
CSUB_VARIANTS(in_tile4, (const float *xt, int64_t Wp, int64_t Cp, float *v, int64_t vs), (xt, Wp, Cp, v, vs))
CSUB_VARIANTS(in_tile2, (const float *xt, int64_t Wp, int64_t Cp, float *v, int64_t vs), (xt, Wp, Cp, v, vs))

/* ------------------------------------------------------------ products per position
 * mm[t][k] = sum_{c < C} v[t][c] u[k / 16][c][k % 16] for TT tiles (rows Cp apart) and NB blocks
 * of 16 output channels (us apart), the TT x NB 16 sums in registers of VW floats. */
#define DEFINE_GEMM(NAME, VT, VW)                                                                          \
    static CSUB_ALWAYS_INLINE void NAME(const float *v, int64_t Cp, const float *u, int64_t us, float *mm,   \
                                        int64_t Kp, int64_t C, const int NB, const int TT)                  \
    {                                                                                                       \
        enum { NV = LB / VW };                                                                              \
        VT acc[12][2 * NV];                                                                                 \
        _Pragma("GCC unroll 12") for (int t = 0; t < TT; t++)                                              \
        _Pragma("GCC unroll 8") for (int q = 0; q < NB * NV; q++) acc[t][q] = (VT){0};                     \
        for (int64_t c = 0; c < C; c++) {                                                                   \
            VT uv[2 * NV];                                                                                  \
            _Pragma("GCC unroll 2") for (int q = 0; q < NB; q++) /* past the end: a prefetch never faults */ \
                __builtin_prefetch(u + q * us + (c + WPF) * LB);                                            \
            _Pragma("GCC unroll 8") for (int q = 0; q < NB * NV; q++)                                      \
                memcpy(&uv[q], u + (q / NV) * us + c * LB + (q % NV) * VW, sizeof(VT));                     \
            _Pragma("GCC unroll 12") for (int t = 0; t < TT; t++) {                                        \
                float s = v[t * Cp + c];                                                                    \
                _Pragma("GCC unroll 8") for (int q = 0; q < NB * NV; q++) acc[t][q] += uv[q] * s;          \
            }                                                                                               \
        }                                                                                                   \
        _Pragma("GCC unroll 12") for (int t = 0; t < TT; t++)                                              \
        _Pragma("GCC unroll 8") for (int q = 0; q < NB * NV; q++)                                          \
            memcpy(mm + t * Kp + (q / NV) * LB + (q % NV) * VW, &acc[t][q], sizeof(VT));                    \
    }

/* One position: mm[nt][16 nkb] (rows Kp apart) = v[nt][Cp] . u[nkb][Cp][16], by TTMAX tiles and NBMAX
 * channel blocks */
#define CASE_TT(KERN, T)                                                                                    \
    case T:                                                                                                 \
        if (nb == 2) KERN(vt, Cp, ub, us, mt, Kp, C, 2, T);                                                \
        else KERN(vt, Cp, ub, us, mt, Kp, C, 1, T);                                                        \
        break;
#define DEFINE_POSITION(NAME, KERN, NBMAX, TTMAX, ATTR, CASES)                                              \
    ATTR static void NAME(const float *v, const float *u, float *mm, int64_t nt, int64_t C, int64_t Cp,    \
                          int64_t nkb, int64_t Kp)                                                          \
    {                                                                                                       \
        int64_t us = Cp * LB, ng = (nt + TTMAX - 1) / TTMAX, per = ng ? (nt + ng - 1) / ng : 0;             \
        for (int64_t t0 = 0; t0 < nt; t0 += per) { /* groups of even size: 16 tiles as 8 + 8, not 12 + 4 */ \
            int tt = nt - t0 < per ? (int)(nt - t0) : (int)per;                                             \
            const float *vt = v + t0 * Cp;                                                                  \
            float *mt0 = mm + t0 * Kp;                                                                      \
            for (int64_t kb = 0; kb < nkb; kb += NBMAX) {                                                   \
                int nb = nkb - kb < NBMAX ? (int)(nkb - kb) : NBMAX;                                        \
                const float *ub = u + kb * us;                                                              \
                float *mt = mt0 + kb * LB;                                                                  \
                switch (tt) { CASES }                                                                       \
            }                                                                                               \
        }                                                                                                   \
    }

DEFINE_GEMM(gemm_baseline, f32x4, 4)
DEFINE_POSITION(position_baseline, gemm_baseline, 1, 3, ,
                CASE_TT(gemm_baseline, 1) CASE_TT(gemm_baseline, 2) CASE_TT(gemm_baseline, 3))
#if CSUB_X86
DEFINE_GEMM(gemm_avx2, f32x8, 8)
DEFINE_GEMM(gemm_avx512, f32x16, 16)
DEFINE_POSITION(position_avx2, gemm_avx2, 1, 6, CSUB_TARGET_AVX2,
                CASE_TT(gemm_avx2, 1) CASE_TT(gemm_avx2, 2) CASE_TT(gemm_avx2, 3) CASE_TT(gemm_avx2, 4)
                CASE_TT(gemm_avx2, 5) CASE_TT(gemm_avx2, 6))
DEFINE_POSITION(position_avx512, gemm_avx512, 2, 12, CSUB_TARGET_AVX512,
                CASE_TT(gemm_avx512, 1) CASE_TT(gemm_avx512, 2) CASE_TT(gemm_avx512, 3) CASE_TT(gemm_avx512, 4)
                CASE_TT(gemm_avx512, 5) CASE_TT(gemm_avx512, 6) CASE_TT(gemm_avx512, 7) CASE_TT(gemm_avx512, 8)
                CASE_TT(gemm_avx512, 9) CASE_TT(gemm_avx512, 10) CASE_TT(gemm_avx512, 11) CASE_TT(gemm_avx512, 12))
#endif

static void position(const float *v, const float *u, float *mm, int64_t nt, int64_t C, int64_t Cp, int64_t nkb,
                     int64_t Kp)
{
#if CSUB_X86
    int isa = csub_isa_level();
    if (isa >= CSUB_ISA_AVX512) { position_avx512(v, u, mm, nt, C, Cp, nkb, Kp); return; }
    if (isa >= CSUB_ISA_AVX2) { position_avx2(v, u, mm, nt, C, Cp, nkb, Kp); return; }
#endif
    position_baseline(v, u, mm, nt, C, Cp, nkb, Kp);
}

/* ------------------------------------------------------------ output: transform and epilogue */
static CSUB_ALWAYS_INLINE void at6(const f32x16 *a, f32x16 *o)
{
    f32x16 p12 = a[1] + a[2], m12 = a[1] - a[2], p34 = a[3] + a[4], m34 = a[3] - a[4];
    o[0] = a[0] + p12 + p34;
    o[1] = m12 + 2.0f * m34;
    o[2] = p12 + 4.0f * p34;
    o[3] = m12 + 8.0f * m34 + a[5];
}

static CSUB_ALWAYS_INLINE void at4(const f32x16 *a, f32x16 *o)
{
    o[0] = a[0] + a[1] + a[2];
    o[1] = a[1] - a[2] - a[3];
}

/* One tile's mm (position xi at mm + xi ms, channels contiguous) -> its m x m pixels of channels
 * [k0, k1) in the strip of its tile row: st[i][q][Kp] for row i, column q = m tx + j (channels
 * contiguous, as mm: whole vectors, no transpose here) */
static CSUB_ALWAYS_INLINE void out_tile_body(const float *mm, int64_t ms, float *st, int64_t srow, int64_t Kp,
                                             int64_t k0, int64_t k1, int64_t tx, int m)
{
    const int A = m + 2;
    for (int64_t kb = k0; kb < k1; kb += LB) {
        f32x16 t[4][6], a[6], o[4];
        for (int j = 0; j < A; j++) { /* columns: t[.][j] = A^T mm[.][j] */
            for (int i = 0; i < A; i++) LOAD16(a[i], mm + (i * A + j) * ms + kb);
            if (m == 4) at6(a, o); else at4(a, o);
            for (int i = 0; i < m; i++) t[i][j] = o[i];
        }
        for (int i = 0; i < m; i++) { /* rows: pixel (i, j) = t[i][.] A */
            if (m == 4) at6(t[i], o); else at4(t[i], o);
            for (int j = 0; j < m; j++) STORE16(st + i * srow + (tx * m + j) * Kp + kb, o[j]);
        }
    }
}
static CSUB_ALWAYS_INLINE void out_tile4_body(const float *mm, int64_t ms, float *st, int64_t srow, int64_t Kp,
                                              int64_t k0, int64_t k1, int64_t tx)
{
    out_tile_body(mm, ms, st, srow, Kp, k0, k1, tx, 4);
}
static CSUB_ALWAYS_INLINE void out_tile2_body(const float *mm, int64_t ms, float *st, int64_t srow, int64_t Kp,
                                              int64_t k0, int64_t k1, int64_t tx)
{
    out_tile_body(mm, ms, st, srow, Kp, k0, k1, tx, 2);
}
CSUB_VARIANTS(out_tile4, (const float *mm, int64_t ms, float *st, int64_t srow, int64_t Kp, int64_t k0, int64_t k1,
                          int64_t tx), (mm, ms, st, srow, Kp, k0, k1, tx))
CSUB_VARIANTS(out_tile2, (const float *mm, int64_t ms, float *st, int64_t srow, int64_t Kp, int64_t k0, int64_t k1,
                          int64_t tx), (mm, ms, st, srow, Kp, k0, k1, tx))

/* A finished strip -> y[k][p0 + i][q] = relu?(st[i][q][k] + b[k] + res[k][p0 + i][q]) for rows i < np,
 * columns [q0, q1), channels [k0, k1) (y's and res's planes ys floats apart): 16 x 16 blocks transposed in registers, so that the bias,
 * residual and ReLU run on whole rows of the output (y and res read and written in order). A row
 * of 16 or more columns goes by whole vectors, the last one shifted back to end at q1 (its first
 * columns computed twice, the same values); a narrower one by single values. */
static CSUB_ALWAYS_INLINE void flush_strip_body(const float *st, int64_t srow, int64_t Kp, const float *b,
                                                const float *res, int relu, float *y, int64_t k0, int64_t k1,
                                                int64_t ys, int64_t Q, int64_t p0, int64_t np, int64_t q0, int64_t q1)
{
    int64_t wide = q1 - q0 >= 16;
    for (int64_t kb = k0; kb < k1; kb += LB) {
        int64_t nk = k1 - kb < LB ? k1 - kb : LB;
        for (int64_t i = 0; i < np; i++)
            for (int64_t qn = q0; qn < q1; qn += 16) {
                int64_t qc = wide && qn + 16 > q1 ? q1 - 16 : qn, nq = wide ? 16 : q1 - qc;
                f32x16 r[16];
                for (int j = 0; j < 16; j++) LOAD16(r[j], st + i * srow + (qc + j) * Kp + kb);
                transpose16(r); /* r[kk]: columns qc .. qc + 15 of channel kb + kk */
                for (int64_t kk = 0; kk < nk; kk++) {
                    int64_t off = (kb + kk) * ys + (p0 + i) * Q + qc;
                    float bk = b ? b[kb + kk] : 0.0f;
                    if (nq == 16) {
                        f32x16 z = r[kk] + bk, rz;
                        if (res) {
                            __builtin_prefetch(res + off + Q); /* the next row's (a prefetch never faults) */
                            LOAD16(rz, res + off);
                            z += rz;
                        }
                        if (relu) z = (f32x16)((i32x16)z & ~(z <= 0.0f)); /* NaN stays NaN */
                        STORE16(y + off, z);
                    } else {
                        float zz[16];
                        STORE16(zz, r[kk]);
                        for (int64_t j = 0; j < nq; j++) {
                            float v = zz[j] + bk;
                            if (res) v += res[off + j];
                            y[off + j] = relu && v <= 0.0f ? 0.0f : v;
                        }
                    }
                }
            }
    }
}
CSUB_VARIANTS(flush_strip, (const float *st, int64_t srow, int64_t Kp, const float *b, const float *res, int relu,
                            float *y, int64_t k0, int64_t k1, int64_t ys, int64_t Q, int64_t p0, int64_t np, int64_t q0,
                            int64_t q1),
              (st, srow, Kp, b, res, relu, y, k0, k1, ys, Q, p0, np, q0, q1))

/* ------------------------------------------------------------ the forward */

typedef struct {
    int64_t m, A2, th, tw, tpi, Hp, Wp, Cp, Kp, tb, cap;
    int64_t vs, ms; /* floats from one position's v (mm) to the next */
    int64_t srow;   /* floats per row of the output strip */
} wgeom;

/* The geometry for output planes of H rows (a row band's) and W columns */
static wgeom wino_geom(int64_t C, int64_t H, int64_t W, int64_t K, int m, int64_t tb)
{
    wgeom g;
    g.m = m;
    g.A2 = (m + 2) * (m + 2);
    g.th = (H + m - 1) / m;
    g.tw = (W + m - 1) / m;
    g.tpi = g.th * g.tw;
    g.Hp = g.th * m + 2;
    g.Wp = g.tw * m + 2;
    g.Cp = round16(C);
    g.Kp = round16(K);
    g.tb = tb;
    g.cap = (tb + g.tpi - 1) / g.tpi + 1; /* the images one block of tb tiles can touch */
    /* one cache line more than the block: at tb Cp floats apart (a multiple of 4 KB for many
     * sizes), the 36 positions a tile's transform writes would share one or two L1 sets */
    g.vs = tb * g.Cp + LB;
    g.ms = tb * g.Kp + LB;
    g.srow = (g.tw * m + 16) * g.Kp; /* the flush reads up to 15 columns past the last */
    return g;
}

/* Floats of work one thread needs: `cap` transposed images, the block's v and mm */
static int64_t thread_work(const wgeom *g)
{
    return g->cap * g->Hp * g->Wp * g->Cp + g->A2 * (g->vs + g->ms) + g->m * g->srow;
}

/* Tiles [g0, g1) (numbered over images, tile rows, tile columns) of the output rows [h0, h0 + H')
 * (g->th tile rows) of each image of x (image n: x's rows, its planes xn floats further on), from
 * an input of H rows -> output channels [16 kb0, min(K, 16 kb1)) of y (image n at y + n yn, planes
 * ys apart, holding rows from h0 on, as res) */
static void run_tiles(const csub_rows *x, int64_t xn, const float *u, const float *b, const float *res, int relu,
                      float *y, int64_t ys, int64_t yn, int64_t C, int64_t H, int64_t W, int64_t K, int64_t h0,
                      int64_t h1, const wgeom *g, int64_t g0, int64_t g1, int64_t kb0, int64_t kb1, float *work)
{
    int64_t img = g->Hp * g->Wp * g->Cp, m = g->m;
    int64_t k0 = kb0 * LB, k1 = kb1 * LB < K ? kb1 * LB : K, q0 = 0;
    float *xt = work, *v = xt + g->cap * img, *mm = v + g->A2 * g->vs, *st = mm + g->A2 * g->ms;
    memset(st, 0, sizeof(float) * (size_t)(m * g->srow)); /* the columns past the plane are read, never stored */
    int64_t vs = g->vs, ms = g->ms, next = g0 / g->tpi; /* the first image not yet transposed */
    for (int64_t t0 = g0; t0 < g1; t0 += g->tb) {
        int64_t nt = g1 - t0 < g->tb ? g1 - t0 : g->tb, last = (t0 + nt - 1) / g->tpi;
        for (; next <= last; next++) { /* the rows its tiles in [g0, g1) read (a share of them: a thread's) */
            int64_t a = g0 > next * g->tpi ? g0 - next * g->tpi : 0;
            int64_t e = g1 < (next + 1) * g->tpi ? g1 - next * g->tpi : g->tpi;
            int64_t r0 = a / g->tw * m, r1 = (e - 1) / g->tw * m + m + 2;
            csub_rows xi = *x;
            xi.x += next * xn;
            transpose_in(&xi, xt + (next % g->cap) * img, C, H, W, g->Wp, g->Cp, h0, r0, r1 < g->Hp ? r1 : g->Hp);
        }
        for (int64_t i = 0; i < nt; i++) {
            int64_t t = t0 + i, n = t / g->tpi, ty = t % g->tpi / g->tw, tx = t % g->tw;
            const float *patch = xt + (n % g->cap) * img + (ty * m * g->Wp + tx * m) * g->Cp;
            if (m == 4) in_tile4(patch, g->Wp, g->Cp, v + i * g->Cp, vs);
            else in_tile2(patch, g->Wp, g->Cp, v + i * g->Cp, vs);
        }
        for (int64_t xi = 0; xi < g->A2; xi++)
            position(v + xi * vs, u + (xi * g->Kp + kb0 * LB) * g->Cp, mm + xi * ms + kb0 * LB, nt, C, g->Cp,
                     kb1 - kb0, g->Kp);
        for (int64_t i = 0; i < nt; i++) { /* each tile into its row's strip; a finished strip into y */
            int64_t t = t0 + i, n = t / g->tpi, ty = t % g->tpi / g->tw, tx = t % g->tw;
            if (tx == 0 || t == g0) q0 = tx * m; /* a strip starts */
            if (m == 4) out_tile4(mm + i * g->Kp, ms, st, g->srow, g->Kp, k0, k1, tx);
            else out_tile2(mm + i * g->Kp, ms, st, g->srow, g->Kp, k0, k1, tx);
            if (tx == g->tw - 1 || t == g1 - 1) {
                int64_t p0 = ty * m, q1 = (tx + 1) * m < W ? (tx + 1) * m : W, np = h1 - h0 - p0 < m ? h1 - h0 - p0 : m;
                flush_strip(st, g->srow, g->Kp, b, res ? res + n * yn : NULL, relu, y + n * yn, k0, k1, ys, W, p0, np,
                            q0, q1);
            }
        }
    }
}

/* Measured with benchmarks/bench_winograd.py (AVX-512, 1 and 2 threads, batch 1, 2 and 16 or 64;
 * the machine shared with other work, so each ratio was read in several runs):
 * - 16 channels (cPreResNet20's 32 x 32 stage): the transforms, which grow with C + K per tile while
 *   the products grow with C K, cost about what the products save: F(4x4) 0.83-1.25x the direct
 *   kernel's speed (below 1 at batch 1 and 64), F(2x2) 0.29-0.90x. Direct.
 * - 32 to 256 channels (ResNet18's 55 x 55 to 14 x 14, cPreResNet20's 16 x 16 and 8 x 8): F(4x4)
 *   1.26-2.29x, F(2x2) slower on each shape.
 * - 512 channels on 7 x 7 (4 tiles an image): the transformed weight, 36 C K floats (38 MB), is read
 *   once per call for very few tiles: at batch 1 F(4x4) read 0.82-1.68x (it depends on the memory
 *   traffic of the other work), F(2x2) (16 C K floats) 1.25-2.06x; at batch 2 F(4x4) 1.19-2.12x,
 *   F(2x2) 1.40-1.72x. F(2x2) where a plane has at most 4 tiles and the F(4x4) weight is larger
 *   than an L2 cache (2 MB): never slower than the direct kernel.
 * - Planes of at most 2 F(4x4) tiles (cPreResNet20's 8 x 8 stage as the 4 x 8 row band of one of
 *   two threads, or at 16 x 16 inputs its 4 x 4 stage), one image, one thread, microseconds per call
 *   (direct, F(2x2), F(4x4)): 32 channels on 4 x 8 6.4, 5.6, 6.5; 64 on 4 x 8 16.5, 8.3, 12.9; 128 on
 *   4 x 8 60.9, 26.8, 58.5; 64 on 4 x 4 12.3, 7.0, 8.2; 256 on 4 x 4 167.5, 135.6, 290.2 (64 on 8 x 8,
 *   4 tiles: 27.3, 17.9, 13.7). F(2x2).
 * Returns the tile size m, or 0 for the direct kernel. */
int csub_winograd_pays(int64_t C, int64_t K, int64_t H, int64_t W)
{
    if (C < 32 || K < 32) return 0;
    int64_t tiles = ((H + 3) / 4) * ((W + 3) / 4);
    return tiles <= 2 || (tiles <= 4 && 36.0 * (double)C * (double)K * 4.0 > 2097152.0) ? 2 : 4;
}

/* Tiles per block by default: three groups of the AVX-512 products' 12. Measured on ResNet18's
 * shapes at two images (_core.conv3x3_forward's tiles_per_block, 8 to 48): 36 was as fast as any
 * within the noise, 8 to 12 up to 15 % slower on 128 and 256 channels (each block of the transformed
 * weight reused by too few tiles). */
#define TILES_PER_BLOCK 36

/* x[N,C,H,W], u (csub_winograd_pack of w[K,C,3,3] with the same m), b[K] or NULL, res[N,K,H,W] or NULL
 * -> y[N,K,H,W] = relu?(conv(x, w, pad 1) + b + res); tb: tiles per block (0: TILES_PER_BLOCK) */
int csub_winograd_forward(const float *x, const float *u, const float *b, const float *res, int relu, float *y,
                          int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int m, int64_t tb)
{
    if (m != 2 && m != 4) return CSUB_ERR_ARG;
    if (N <= 0 || K <= 0 || H <= 0 || W <= 0) return CSUB_OK;
    if (tb <= 0) tb = TILES_PER_BLOCK;
    wgeom g = wino_geom(C, H, W, K, m, tb);
    int64_t T = N * g.tpi, nkb = g.Kp / LB, HW = H * W, CHW = C * HW;
    csub_rows xr = {x, NULL, NULL, 0, H, HW};
    int nt = omp_in_parallel() ? 1 : csub_get_num_threads();
    /* fewer images than threads: each thread a run of the tiles, or where the tiles are fewer than
     * the output channels (the transformed weight, read once per block, outweighs the inputs) and
     * too few for two groups of 12 (the products' register block) on each thread, a range of the
     * output channels, all tiles: every thread then reads its part of u only. (ResNet18's 28 x 28
     * layer, 49 tiles and 128 channels, ran 1.1x faster by tiles; its 14 x 14 and 7 x 7 ones, 16
     * tiles, by channels.) */
    int split = N < nt ? (T < g.Kp && T < 24 * (int64_t)nt && nkb >= 2 * (int64_t)nt ? 2 : 1) : 0;
    if (split && ((split == 1 ? T : nkb) < 2 * (int64_t)nt ||
                  (double)K * (double)(H * W) * (double)(C * 9) * (double)N < CSUB_PAR_MIN_CONV))
        nt = 1, split = 0;
    if (!split && nt > N) nt = (int)N;
    int64_t per = (thread_work(&g) + 15) / 16 * 16; /* each thread's part on its own cache lines */
    size_t bytes;
    if (csub_bytes_overflow(per * nt, sizeof(float), &bytes)) return CSUB_ERR_NOMEM;
    float *work = malloc(bytes);
    if (!work) return CSUB_ERR_NOMEM;
    if (nt == 1) { /* every tile and channel, no parallel region (csub_conv2d_sparse_forward_planned) */
        run_tiles(&xr, CHW, u, b, res, relu, y, HW, K * HW, C, H, W, K, 0, H, &g, 0, T, 0, nkb, work);
        free(work);
        return CSUB_OK;
    }
    #pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), T_ = omp_get_num_threads();
        int64_t lo = 0, hi = T, kb0 = 0, kb1 = nkb;
        if (split == 1) {
            lo = T * t / T_;
            hi = T * (t + 1) / T_;
        } else if (split == 2) { /* pairs of channel blocks: the AVX-512 products take 32 channels at once */
            int64_t np = (nkb + 1) / 2;
            kb0 = 2 * (np * t / T_);
            kb1 = 2 * (np * (t + 1) / T_) < nkb ? 2 * (np * (t + 1) / T_) : nkb;
        } else {
            lo = N * t / T_ * g.tpi;
            hi = N * (t + 1) / T_ * g.tpi;
        }
        if (lo < hi && kb0 < kb1)
            run_tiles(&xr, CHW, u, b, res, relu, y, HW, K * HW, C, H, W, K, 0, H, &g, lo, hi, kb0, kb1,
                      work + (size_t)t * (size_t)per);
    }
    free(work);
    return CSUB_OK;
}

int csub_winograd_forward_rows(const csub_rows *x, const float *u, const float *b, const float *res, int relu,
                               float *y, int64_t C, int64_t H, int64_t W, int64_t K, int m, int64_t p0, int64_t p1)
{
    if ((m != 2 && m != 4) || p0 < 0 || p1 > H || !csub_rows_cover(x, H, 3, 1, 1, p0, p1)) return CSUB_ERR_ARG;
    if (p1 <= p0 || K <= 0 || W <= 0) return CSUB_OK;
    wgeom g = wino_geom(C, p1 - p0, W, K, m, TILES_PER_BLOCK);
    size_t bytes;
    float *work;
    if (csub_bytes_overflow(thread_work(&g), sizeof(float), &bytes) || !(work = malloc(bytes))) return CSUB_ERR_NOMEM;
    run_tiles(x, 0, u, b, res, relu, y, (p1 - p0) * W, 0, C, H, W, K, p0, p1, &g, 0, g.tpi, 0, g.Kp / LB, work);
    free(work);
    return CSUB_OK;
}
