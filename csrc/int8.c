/* int8.c - integer inference: quantized convolution and linear layers.
 *
 * Semantics: csrc/include/csub.h, section "integer kernels (int8.c)".
 *
 * Method. Weight codes qw (signed, b <= 8 bits, zero point zw) and activation
 * codes qx (zero point zx) enter the product as
 *   acc = sum (qw - zw)(qx - zx)
 *       = sum qw u - zu sum qw - zw sum u + cols zw zu,
 * with u = qx - qmin in [0, 2^b - 1] (unsigned, its zero point zu = zx - qmin).
 * The kernels compute the raw sum of qw (int8) times u (uint8) in int32; the
 * three correction terms are a per-row constant (rowsum = sum qw is stored with
 * the weight) and a per-column one, -zw * colsum(u), which only exists when
 * zw != 0 and is computed per image by a cheap box filter (below).
 *
 * Layout: no im2col. The reduction index of the product is grouped into
 * "cells" of four input channels at one kernel tap, so one int32 of
 * activations holds the codes of channels 4c'..4c'+3 at one pixel, exactly the
 * 4-byte groups VPDPBUSD (and the madd_epi16 fallbacks) reduce. Each image is
 * quantized once into planes of such cells (NCHW with channels in quadruples:
 * [C/4][Hp][Wp] cells, padding = the zero point, the missing channels of a
 * last partial quadruple 0 on both sides). For stride st the padded image is
 * split into st x st phase planes xpad[i*st + a][j*st + b], as in csr.c;
 * then kernel tap (r, s) is a plain shift of plane (r % st, s % st) by
 * (r / st, s / st), and the output is computed "wide": P rows of Wph columns
 * (Wph - Q of them discarded), so for a tap the 16 activations of 16
 * consecutive outputs are 64 contiguous bytes at a fixed offset from the
 * output index. The GEMM
 *   C[k, o] = sum over groups g = (c', r, s) of <A[k, g], B[off[g] + o]>
 * reads B straight from the planes through a table of G offsets; a 1x1
 * stride-1 convolution is the planes themselves (no shift, no wide columns).
 * A linear layer is the same product with the batch as the columns.
 *
 * Weights are stored once, per row blocks of MR output channels:
 * q[K/MR][G][MR][4] int8 (rows and channels padded with zero codes), so the
 * microkernel broadcasts the 4 codes of one row and group with one load.
 *
 * Microkernel: MR rows x NV*16 columns of int32 accumulators in registers;
 * per group: NV vector loads of B and MR broadcasts of A. The epilogue adds
 * the corrections, converts to float, multiplies by
 * xscale * wscale * oscale[k], adds b[k] and stores (masked at the edge).
 * Variants, one per instruction-set level (csub_isa_level, internal.h: the
 * CPU's best or the one CSUB_ISA names; never -march=native):
 *   avx512vnni  VPDPBUSD on zmm, 8 x 48 tile
 *   avx512bw    bytes widened to int16 pairs, VPMADDWD, 8 x 32 tile
 *   avx2        the same on ymm, 8 x 8 tile
 *   portable    C loops (any CPU)
 * Every variant computes the same integers, so results are identical.
 *
 * Activation quantization is q = clip(round(x / xscale) + zx, qmin, qmax)
 * with x / xscale a float division rounded to float and round half to even,
 * bit for bit as csub_fake_quant_forward (the weight codes go through the
 * same quantizer). The vector variants use v = x * (1 / xscale) instead (no
 * division) and recompute with a real division any vector in which some v
 * lies within about 2^-13 of a half-integer: |v - fl(x / xscale)| <=
 * 3 * 2^-24 * |v| < 2^-14 for |v| <= 256 (beyond the clip range the rounding
 * does not matter), so everywhere else both round to the same integer (the
 * AVX-512 one reads the code and the test from the bits of v + constant, see
 * tbits16). A NaN input is an error (no code represents it). The planes of a
 * strided convolution are quantized straight from every st-th input.
 *
 * Overflow: |qw - zw| <= 255 and |u - zu| <= 255, so |acc| <= cols * 65025 fits
 * in int32 for cols <= CSUB_INT8_MAX_COLS = 33025; the raw sum (|qw| <= 128,
 * u <= 255) fits too. The corrections are added with wrap-around (two's
 * complement) arithmetic, exact because the final value fits.
 *
 * Threads: whole images per thread, each thread prefetching its next image's
 * input into L2 while it computes the current one. When there are fewer
 * images left than threads and an image is large (SPLIT_MIN multiply-adds),
 * the threads share it: the planes by channel quadruples, then (one barrier)
 * the product by output rows, or by row blocks of the weight when the rows
 * are few. Small images are never shared, and a call under TEAM_MIN
 * multiply-adds runs on one thread: a team costs more than it saves.
 * Integer sums are exact, so the result does not depend on the thread count.
 * Workspace is allocated once per call, never in the loops.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#include "internal.h"

#if CSUB_X86
#include <immintrin.h>
#define T_AVX2 CSUB_TARGET_AVX2
#define T_AVX512 CSUB_TARGET_AVX512
#define T_VNNI CSUB_TARGET_AVX512VNNI
#define INLINE static CSUB_ALWAYS_INLINE
#endif

#define MR 8 /* output channels per microkernel tile (and per weight row block) */

/* 4 bytes of codes read as one int32, wherever they lie */
typedef int32_t i32u __attribute__((may_alias, aligned(1)));

/* ------------------------------------------------------------- dispatch */

/* The variant of each level: avx512 runs avx512bw, the others share the level's name. */
const char *csub_int8_kernel(void)
{
    static const char *const names[CSUB_ISA_COUNT] = {"portable", "avx2", "avx512bw", "avx512vnni"};
    return names[csub_isa_level()];
}

/* ------------------------------------------------------------- grids */

static void qrange(int bits, int32_t *qmin, int32_t *qmax)
{
    *qmin = -(int32_t)(1u << (bits - 1));
    *qmax = (int32_t)(1u << (bits - 1)) - 1;
}

/* -------------------------------------------------- activation codes */

/* One input's grid: u = round(clip(x / scale, lo, hi)) + zu, lo = qmin - zx, hi = qmax - zx. */
typedef struct {
    float scale, inv; /* inv = 1 / scale, used only when fast */
    int fast;         /* 1 / scale is a normal float: the multiply-and-check path applies */
    float lo, hi;
    int32_t zu;       /* zx - qmin */
} xgrid;

static xgrid make_xgrid(float scale, int32_t zx, int bits)
{
    int32_t qmin, qmax;
    qrange(bits, &qmin, &qmax);
    xgrid g;
    g.scale = scale;
    g.inv = 1.0f / scale;
    g.fast = scale > 0x1p-120f && scale < 0x1p120f;
    g.lo = (float)(qmin - zx);
    g.hi = (float)(qmax - zx);
    g.zu = zx - qmin;
    return g;
}

/* The code u of one value (exact division); a NaN sets *nan and gives zu. */
static inline uint32_t ucode(float x, const xgrid *g, int *nan)
{
    float v = x / g->scale;
    if (v != v) {
        *nan = 1;
        v = 0.0f;
    }
    v = v < g->lo ? g->lo : v;
    v = v > g->hi ? g->hi : v;
    return (uint32_t)((int32_t)nearbyintf(v) + g->zu);
}

/* Quantizers: quant4 packs four channels x[j] (rows r < rows of n values
 * taken every `step` floats, row stride xs) into cells, row stride ds:
 *   dst[r*ds + i] = (u(x0) | u(x1) << 8 | u(x2) << 16 | u(x3) << 24) & chmask at [r*xs + i*step];
 * quant_bytes writes dst[i] = u(x[i]). Both return 1 if some x is NaN. */
typedef int (*quant4_fn)(const float *const x[4], int64_t n, int64_t step, int64_t rows, int64_t xs,
                         uint32_t *dst, int64_t ds, const xgrid *g, uint32_t chmask);
typedef int (*quantb_fn)(const float *x, int64_t n, uint8_t *dst, const xgrid *g);

static int quant4_portable(const float *const x[4], int64_t n, int64_t step, int64_t rows, int64_t xs,
                           uint32_t *dst, int64_t ds, const xgrid *g, uint32_t chmask)
{
    int nan = 0;
    for (int64_t r = 0; r < rows; r++) {
        const float *x0 = x[0] + r * xs, *x1 = x[1] + r * xs, *x2 = x[2] + r * xs, *x3 = x[3] + r * xs;
        uint32_t *d = dst + r * ds;
        for (int64_t i = 0; i < n; i++) {
            int64_t e = i * step;
            d[i] = (ucode(x0[e], g, &nan) | ucode(x1[e], g, &nan) << 8 |
                    ucode(x2[e], g, &nan) << 16 | ucode(x3[e], g, &nan) << 24) & chmask;
        }
    }
    return nan;
}

static int quantb_portable(const float *x, int64_t n, uint8_t *dst, const xgrid *g)
{
    int nan = 0;
    for (int64_t i = 0; i < n; i++) dst[i] = (uint8_t)ucode(x[i], g, &nan);
    return nan;
}

#if CSUB_X86
/* AVX-512 codes without a division or a rounding instruction. With
 * v = clip(x * (1 / scale), lo, hi) and the constant M = 768.5 + 2^-14 + zu,
 * t = v + M lies in [512, 1024), where the float spacing is 2^-14, so the
 * bits of t are a fixed-point number: bits(t) = 0x44000000 + 2^14 (t - 512)
 * (t rounded to 14 fraction bits). Then
 *   bits(t) >> 14 (low byte)   = floor(v + zu + 1/2 + 2^-14) = the code u,
 *   bits(t) & 0x3ffc == 0       when v + zu is within 2^-13 of a half-integer,
 * the near-tie test of the comment on top (2^-14 for the product's error,
 * 2^-15 for t's rounding), so those vectors are redone with a division. A NaN
 * is carried through the clip and turned into 1/2 (VFIXUPIMMPS), a tie, so
 * that it takes the exact path too, which reports it. */
typedef struct {
    __m512 inv, lo, hi, mag;
    __m512i fix, sel;
} vgrid;

T_AVX512 INLINE vgrid make_vgrid(const xgrid *g)
{
    vgrid v;
    v.inv = _mm512_set1_ps(g->inv);
    v.lo = _mm512_set1_ps(g->lo);
    v.hi = _mm512_set1_ps(g->hi);
    v.mag = _mm512_set1_ps(768.5f + 0x1p-14f + (float)g->zu);
    v.fix = _mm512_set1_epi32(0xbb); /* QNaN, SNaN -> +1/2; everything else kept */
    v.sel = _mm512_set1_epi32(0x3ffc);
    return v;
}

/* the fixed-point bits of t for 16 values; near-ties and NaN set bits of *flag */
T_AVX512 INLINE __m512i tbits16(__m512 x, const vgrid *v, __mmask16 *flag)
{
    __m512 y = _mm512_mul_ps(x, v->inv);
    y = _mm512_min_ps(v->hi, _mm512_max_ps(v->lo, y)); /* these operand orders keep a NaN */
    y = _mm512_fixupimm_ps(y, y, v->fix, 0);
    __m512i b = _mm512_castps_si512(_mm512_add_ps(y, v->mag));
    *flag |= _mm512_testn_epi32_mask(b, v->sel);
    return b;
}

/* 16 codes (int32) the exact way (division, rounding); NaN lanes set *nan */
T_AVX512 INLINE __m512i exact16(__m512 x, const xgrid *g, int *nan)
{
    __m512 y = _mm512_div_ps(x, _mm512_set1_ps(g->scale));
    *nan |= _mm512_cmp_ps_mask(y, y, _CMP_UNORD_Q) != 0;
    y = _mm512_min_ps(_mm512_max_ps(y, _mm512_set1_ps(g->lo)), _mm512_set1_ps(g->hi)); /* NaN -> lo */
    y = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm512_add_epi32(_mm512_cvtps_epi32(y), _mm512_set1_epi32(g->zu));
}

/* 16 values p[0], p[step], ..., p[15 step] for step 1 or 2, the first m (<= 16) only */
T_AVX512 INLINE __m512 load16(const float *p, int m, const int step)
{
    if (step == 1) return _mm512_maskz_loadu_ps(m == 16 ? 0xffff : (__mmask16)((1u << m) - 1), p);
    int f = 2 * m - 1; /* floats spanned */
    __m512 lo = _mm512_maskz_loadu_ps(f >= 16 ? 0xffff : (__mmask16)((1u << f) - 1), p);
    __m512 hi = _mm512_maskz_loadu_ps(f > 16 ? (__mmask16)((1u << (f - 16)) - 1) : 0, p + 16);
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    return _mm512_permutex2var_ps(lo, even, hi);
}

/* One vector of 16 cells (the first m) from x[j][i*step ...] */
T_AVX512 INLINE int cells16(const float *x0, const float *x1, const float *x2, const float *x3, int64_t i,
                            int m, const int step, uint32_t *dst, const xgrid *g, const vgrid *v,
                            const __m512i *bm)
{
    __mmask16 flag = 0;
    int64_t e = i * step;
    __m512 a0 = load16(x0 + e, m, step), a1 = load16(x1 + e, m, step);
    __m512 a2 = load16(x2 + e, m, step), a3 = load16(x3 + e, m, step);
    __m512i b0 = tbits16(a0, v, &flag), b1 = tbits16(a1, v, &flag);
    __m512i b2 = tbits16(a2, v, &flag), b3 = tbits16(a3, v, &flag);
    __m512i c;
    int nan = 0;
    if (!flag) { /* byte j of the cell = bits 14..21 of b_j; ternlog 0xf8: A | (B & C) */
        c = _mm512_and_si512(_mm512_srli_epi32(b0, 14), bm[0]);
        c = _mm512_ternarylogic_epi32(c, _mm512_srli_epi32(b1, 6), bm[1], 0xf8);
        c = _mm512_ternarylogic_epi32(c, _mm512_slli_epi32(b2, 2), bm[2], 0xf8);
        c = _mm512_ternarylogic_epi32(c, _mm512_slli_epi32(b3, 10), bm[3], 0xf8);
    } else {
        c = exact16(a0, g, &nan);
        c = _mm512_or_si512(c, _mm512_slli_epi32(exact16(a1, g, &nan), 8));
        c = _mm512_or_si512(c, _mm512_slli_epi32(exact16(a2, g, &nan), 16));
        c = _mm512_or_si512(c, _mm512_slli_epi32(exact16(a3, g, &nan), 24));
        c = _mm512_and_si512(c, _mm512_or_si512(_mm512_or_si512(bm[0], bm[1]), _mm512_or_si512(bm[2], bm[3])));
    }
    _mm512_mask_storeu_epi32(dst + i, m == 16 ? 0xffff : (__mmask16)((1u << m) - 1), c);
    return nan;
}

/* rows of n cells, step 1 or 2 (a constant once inlined) */
T_AVX512 INLINE int cell_rows(const float *const x[4], int64_t n, const int step, int64_t rows, int64_t xs,
                              uint32_t *dst, int64_t ds, const xgrid *g, const vgrid *v, const __m512i *bm)
{
    int nan = 0;
    for (int64_t r = 0; r < rows; r++) {
        const float *x0 = x[0] + r * xs, *x1 = x[1] + r * xs, *x2 = x[2] + r * xs, *x3 = x[3] + r * xs;
        uint32_t *d = dst + r * ds;
        int64_t i = 0;
        for (; i + 16 <= n; i += 16) nan |= cells16(x0, x1, x2, x3, i, 16, step, d, g, v, bm);
        if (i < n) nan |= cells16(x0, x1, x2, x3, i, (int)(n - i), step, d, g, v, bm);
    }
    return nan;
}

T_AVX512 static int quant4_avx512(const float *const x[4], int64_t n, int64_t step, int64_t rows, int64_t xs,
                                  uint32_t *dst, int64_t ds, const xgrid *g, uint32_t chmask)
{
    if (!g->fast || step > 2) return quant4_portable(x, n, step, rows, xs, dst, ds, g, chmask);
    if (step == 1 && xs == n && ds == n) { /* contiguous rows: one long row */
        n *= rows;
        rows = 1;
    }
    vgrid v = make_vgrid(g);
    __m512i bm[4]; /* byte j of the cell, or nothing for a missing channel */
    for (int j = 0; j < 4; j++) bm[j] = _mm512_set1_epi32((int32_t)((0xffu << (8 * j)) & chmask));
    if (step == 1) return cell_rows(x, n, 1, rows, xs, dst, ds, g, &v, bm);
    return cell_rows(x, n, 2, rows, xs, dst, ds, g, &v, bm);
}

T_AVX512 static int quantb_avx512(const float *x, int64_t n, uint8_t *dst, const xgrid *g)
{
    if (!g->fast) return quantb_portable(x, n, dst, g);
    vgrid v = make_vgrid(g);
    int nan = 0;
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 k = i + 16 <= n ? 0xffff : (__mmask16)((1u << (n - i)) - 1), flag = 0;
        __m512 a = _mm512_maskz_loadu_ps(k, x + i);
        __m512i c = _mm512_srli_epi32(tbits16(a, &v, &flag), 14);
        if (flag) c = exact16(a, g, &nan);
        _mm512_mask_cvtepi32_storeu_epi8(dst + i, k, c); /* the low byte */
    }
    return nan;
}

/* 8 codes of x; NaN lanes are or-ed into *nan (a movemask) */
T_AVX2 INLINE __m256i ucode8(__m256 x, const xgrid *g, int *nan)
{
    const __m256 lo = _mm256_set1_ps(g->lo), hi = _mm256_set1_ps(g->hi);
    *nan |= _mm256_movemask_ps(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
    __m256 v = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(x, _mm256_set1_ps(g->inv)), lo), hi);
    __m256 r = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 d = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), _mm256_sub_ps(v, r));
    if (_mm256_movemask_ps(_mm256_cmp_ps(d, _mm256_set1_ps(0.5f - 0x1p-14f), _CMP_GE_OQ))) {
        v = _mm256_min_ps(_mm256_max_ps(_mm256_div_ps(x, _mm256_set1_ps(g->scale)), lo), hi);
        r = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    }
    return _mm256_add_epi32(_mm256_cvtps_epi32(r), _mm256_set1_epi32(g->zu));
}

T_AVX2 static int quant4_avx2(const float *const x[4], int64_t n, int64_t step, int64_t rows, int64_t xs,
                              uint32_t *dst, int64_t ds, const xgrid *g, uint32_t chmask)
{
    if (!g->fast || step != 1) return quant4_portable(x, n, step, rows, xs, dst, ds, g, chmask);
    int nan = 0;
    const __m256i m = _mm256_set1_epi32((int32_t)chmask);
    for (int64_t r = 0; r < rows; r++) {
        const float *x0 = x[0] + r * xs, *x1 = x[1] + r * xs, *x2 = x[2] + r * xs, *x3 = x[3] + r * xs;
        uint32_t *d = dst + r * ds;
        int64_t i = 0;
        for (; i + 8 <= n; i += 8) {
            __m256i c = ucode8(_mm256_loadu_ps(x0 + i), g, &nan);
            c = _mm256_or_si256(c, _mm256_slli_epi32(ucode8(_mm256_loadu_ps(x1 + i), g, &nan), 8));
            c = _mm256_or_si256(c, _mm256_slli_epi32(ucode8(_mm256_loadu_ps(x2 + i), g, &nan), 16));
            c = _mm256_or_si256(c, _mm256_slli_epi32(ucode8(_mm256_loadu_ps(x3 + i), g, &nan), 24));
            _mm256_storeu_si256((__m256i *)(d + i), _mm256_and_si256(c, m));
        }
        const float *const xt[4] = {x0 + i, x1 + i, x2 + i, x3 + i};
        nan |= quant4_portable(xt, n - i, 1, 1, 0, d + i, 0, g, chmask);
    }
    return nan != 0;
}

T_AVX2 static int quantb_avx2(const float *x, int64_t n, uint8_t *dst, const xgrid *g)
{
    if (!g->fast) return quantb_portable(x, n, dst, g);
    int nan = 0;
    int64_t i = 0;
    const __m256i pick = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                          0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    for (; i + 8 <= n; i += 8) {
        __m256i c = _mm256_shuffle_epi8(ucode8(_mm256_loadu_ps(x + i), g, &nan), pick);
        int32_t a = _mm256_extract_epi32(c, 0), b = _mm256_extract_epi32(c, 4);
        memcpy(dst + i, &a, 4);
        memcpy(dst + i + 4, &b, 4);
    }
    return (nan != 0) | quantb_portable(x + i, n - i, dst + i, g);
}
#endif

/* ------------------------------------------------------------- product */

/* C[k, o] = (A[k] . B[o] + rowc[k] + colc[o]) * alpha[k] + beta[k] for rows
 * k < K, columns o < L, where A[k] . B[o] = sum over g of the 4-byte dot
 * product of the weight cell (k, g) and the activation cell B[off[g] + o]. */
typedef struct {
    const int8_t *A;         /* [Kpad/MR][G][MR][4] */
    int64_t G, K;
    const uint32_t *B;       /* activation cells */
    const int64_t *off;      /* [G] cell offset of each group */
    const int32_t *rowc;     /* [Kpad] */
    const int32_t *colc;     /* [L + 64] or NULL (no column term) */
    const float *alpha, *beta; /* [Kpad] */
    float *C;
    int64_t ldc;
    const uint16_t *vmask;   /* AVX-512 only: wide rows of Wph columns, the first Q real, stored
                              * straight to C[k * ldc + p * Q + q] (see wide_lanes), or NULL */
    int64_t Wph, Q;
    const char *pf, *pf_end; /* prefetched into L2 during the product (the next image), or NULL */
    int64_t pf_lines;        /* cache lines prefetched per 16 columns of a tile row block */
} job;

/* the next units * pf_lines cache lines of the prefetch range */
static inline void prefetch_step(const job *jb, const char **cur, int units)
{
    for (int64_t i = 0; i < units * jb->pf_lines && *cur < jb->pf_end; i++, *cur += 64) __builtin_prefetch(*cur, 0, 2);
}

/* rows [kb0 * MR, kb1 * MR) (clipped to K) x columns [o0, o1) */
typedef void (*gemm_fn)(const job *jb, int64_t kb0, int64_t kb1, int64_t o0, int64_t o1);

static void gemm_portable(const job *jb, int64_t kb0, int64_t kb1, int64_t o0, int64_t o1)
{
    const char *pf = jb->pf;
    for (int64_t kb = kb0; kb < kb1; kb++) {
        const int8_t *Ab = jb->A + kb * jb->G * MR * 4;
        int64_t mrows = jb->K - kb * MR < MR ? jb->K - kb * MR : MR;
        for (int64_t o = o0; o < o1; o += 16) {
            int nc = o1 - o < 16 ? (int)(o1 - o) : 16;
            int32_t acc[MR][16];
            memset(acc, 0, sizeof acc);
            for (int64_t g = 0; g < jb->G; g++) {
                const uint32_t *b = jb->B + jb->off[g] + o;
                const int8_t *a = Ab + g * MR * 4;
                for (int m = 0; m < MR; m++)
                    for (int j = 0; j < 4; j++) {
                        int32_t w = a[m * 4 + j];
                        for (int c = 0; c < nc; c++) acc[m][c] += w * (int32_t)((b[c] >> (8 * j)) & 0xff);
                    }
            }
            for (int m = 0; m < mrows; m++) {
                int64_t k = kb * MR + m;
                float *cr = jb->C + k * jb->ldc + o;
                for (int c = 0; c < nc; c++) {
                    uint32_t v = (uint32_t)acc[m][c] + (uint32_t)jb->rowc[k] + (jb->colc ? (uint32_t)jb->colc[o + c] : 0u);
                    cr[c] = (float)(int32_t)v * jb->alpha[k] + jb->beta[k];
                }
            }
            prefetch_step(jb, &pf, 1);
        }
    }
}

#if CSUB_X86
/* The tiles keep their accumulators in named variables a<row><vector>
 * (GCC keeps an array of vectors in memory); NV is a constant once inlined,
 * so the unused vectors and their branches disappear. */
#define ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)

/* The vector of wide columns [o, o + 16) (lanes *m, on entry the tile's edge
 * mask): its lanes of real columns (q < Q) in *m, as many low lanes in *n, and
 * the output offset of the first, *off. vmask[q0] holds the real lanes of a
 * vector starting at column q0 of a wide row; the real columns that follow
 * are consecutive in the output. */
T_AVX512 INLINE void wide_lanes(const job *jb, int64_t o, __mmask16 *m, __mmask16 *n, int64_t *off)
{
    int64_t p = o / jb->Wph, q = o - p * jb->Wph;
    *m &= jb->vmask[q];
    *n = (__mmask16)((1u << __builtin_popcount(*m)) - 1);
    *off = p * jb->Q + (q < jb->Q ? q : jb->Q);
}

/* Epilogue of row m (NV vectors of 16): add the corrections, scale, store.
 * A multiply then an add, no FMA, as in every variant: identical results.
 * Rows >= mrows are not stored. Plain layout: vector v at column o + 16 v,
 * the last one through the mask `last`. Wide layout (jb->vmask): only the
 * lanes of real columns wm<v>, compressed, at the row offset wo<v>. */
#define EPI512_STORE(v)                                                                  \
    if (NV > v) {                                                                        \
        if (jb->vmask)                                                                   \
            _mm512_mask_storeu_ps(cr_ + wo##v, wn##v, _mm512_maskz_compress_ps(wm##v, f##v##_)); \
        else                                                                             \
            _mm512_mask_storeu_ps(cr_ + wo##v, wm##v, f##v##_);                          \
    }
#define EPI512_ROW(m)                                                                    \
    if (m < mrows) {                                                                     \
        int64_t k_ = kb * MR + m;                                                        \
        __m512i rc_ = _mm512_set1_epi32(jb->rowc[k_]);                                   \
        __m512 al_ = _mm512_set1_ps(jb->alpha[k_]), be_ = _mm512_set1_ps(jb->beta[k_]);  \
        float *cr_ = jb->C + k_ * jb->ldc;                                               \
        __m512 f0_ = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_add_epi32(a##m##0, rc_), cc0)), al_), be_); \
        __m512 f1_ = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_add_epi32(a##m##1, rc_), cc1)), al_), be_); \
        __m512 f2_ = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_add_epi32(a##m##2, rc_), cc2)), al_), be_); \
        EPI512_STORE(0)                                                                  \
        EPI512_STORE(1)                                                                  \
        EPI512_STORE(2)                                                                  \
    }

/* Per column vector: the column terms, the lanes stored and where. */
#define EPI512_COLS                                                                      \
    __m512i cc0 = _mm512_setzero_si512(), cc1 = cc0, cc2 = cc0;                          \
    if (jb->colc) {                                                                      \
        cc0 = _mm512_loadu_si512(jb->colc + o);                                          \
        if (NV > 1) cc1 = _mm512_loadu_si512(jb->colc + o + 16);                         \
        if (NV > 2) cc2 = _mm512_loadu_si512(jb->colc + o + 32);                         \
    }                                                                                    \
    __mmask16 wm0 = NV == 1 ? last : 0xffff, wm1 = NV == 2 ? last : 0xffff, wm2 = last;  \
    __mmask16 wn0 = 0, wn1 = 0, wn2 = 0;                                                 \
    int64_t wo0 = o, wo1 = o + 16, wo2 = o + 32;                                         \
    if (jb->vmask) {                                                                     \
        wide_lanes(jb, o, &wm0, &wn0, &wo0);                                             \
        if (NV > 1) wide_lanes(jb, o + 16, &wm1, &wn1, &wo1);                            \
        if (NV > 2) wide_lanes(jb, o + 32, &wm2, &wn2, &wo2);                            \
    }

#define ACC_ZERO(m) __m512i a##m##0 = _mm512_setzero_si512(), a##m##1 = a##m##0, a##m##2 = a##m##0;

/* One MR x 16*NV tile (NV <= 3) with VPDPBUSD: acc += u8(B) x s8(A), 4 products per lane. */
#define VNNI_ROW(m)                                                   \
    {                                                                 \
        __m512i w_ = _mm512_set1_epi32(a[m]);                         \
        a##m##0 = _mm512_dpbusd_epi32(a##m##0, b0, w_);               \
        if (NV > 1) a##m##1 = _mm512_dpbusd_epi32(a##m##1, b1, w_);   \
        if (NV > 2) a##m##2 = _mm512_dpbusd_epi32(a##m##2, b2, w_);   \
    }
T_VNNI INLINE void tile_vnni(const job *jb, int64_t kb, int mrows, int64_t o, const int NV, __mmask16 last)
{
    const int8_t *Ab = jb->A + kb * jb->G * MR * 4;
    const uint32_t *B = jb->B + o;
    const int64_t *off = jb->off;
    ROWS(ACC_ZERO)
    for (int64_t g = 0; g < jb->G; g++) {
        const uint32_t *b = B + off[g];
        const i32u *a = (const i32u *)(Ab + g * MR * 4);
        __m512i b0 = _mm512_loadu_si512(b), b1 = b0, b2 = b0;
        if (NV > 1) b1 = _mm512_loadu_si512(b + 16);
        if (NV > 2) b2 = _mm512_loadu_si512(b + 32);
        ROWS(VNNI_ROW)
    }
    EPI512_COLS
    ROWS(EPI512_ROW)
}

T_VNNI static void gemm_vnni(const job *jb, int64_t kb0, int64_t kb1, int64_t o0, int64_t o1)
{
    const char *pf = jb->pf;
    for (int64_t kb = kb0; kb < kb1; kb++) {
        int mrows = jb->K - kb * MR < MR ? (int)(jb->K - kb * MR) : MR;
        int64_t o = o0;
        for (; o + 48 <= o1; o += 48) {
            tile_vnni(jb, kb, mrows, o, 3, 0xffff);
            prefetch_step(jb, &pf, 3);
        }
        int64_t rem = o1 - o;
        if (rem <= 0) continue;
        __mmask16 last = (__mmask16)(rem % 16 ? (1u << (rem % 16)) - 1 : 0xffff);
        if (rem > 32) tile_vnni(jb, kb, mrows, o, 3, last);
        else if (rem > 16) tile_vnni(jb, kb, mrows, o, 2, last);
        else tile_vnni(jb, kb, mrows, o, 1, last);
    }
}

/* One MR x 16*NV tile (NV <= 2) without VNNI: the bytes of each cell split
 * into two int16 pairs (channels 0, 2 and 1, 3), VPMADDWD with the
 * sign-extended weight pairs; no saturation (|product pair| <= 2 * 255 * 128). */
#define BW_ROW(m)                                                                               \
    {                                                                                           \
        __m512i w_ = _mm512_set1_epi32(a[m]);                                                   \
        __m512i we_ = _mm512_srai_epi16(_mm512_slli_epi16(w_, 8), 8), wo_ = _mm512_srai_epi16(w_, 8); \
        a##m##0 = _mm512_add_epi32(a##m##0, _mm512_add_epi32(_mm512_madd_epi16(be0, we_),        \
                                                             _mm512_madd_epi16(bo0, wo_)));      \
        if (NV > 1)                                                                             \
            a##m##1 = _mm512_add_epi32(a##m##1, _mm512_add_epi32(_mm512_madd_epi16(be1, we_),    \
                                                                 _mm512_madd_epi16(bo1, wo_)));  \
    }
T_AVX512 INLINE void tile_bw(const job *jb, int64_t kb, int mrows, int64_t o, const int NV, __mmask16 last)
{
    const int8_t *Ab = jb->A + kb * jb->G * MR * 4;
    const uint32_t *B = jb->B + o;
    const int64_t *off = jb->off;
    const __m512i lowb = _mm512_set1_epi32(0x00ff00ff);
    ROWS(ACC_ZERO)
    for (int64_t g = 0; g < jb->G; g++) {
        const uint32_t *b = B + off[g];
        const i32u *a = (const i32u *)(Ab + g * MR * 4);
        __m512i x0 = _mm512_loadu_si512(b), x1 = x0;
        if (NV > 1) x1 = _mm512_loadu_si512(b + 16);
        __m512i be0 = _mm512_and_si512(x0, lowb), bo0 = _mm512_srli_epi16(x0, 8);
        __m512i be1 = _mm512_and_si512(x1, lowb), bo1 = _mm512_srli_epi16(x1, 8);
        ROWS(BW_ROW)
    }
    EPI512_COLS
    ROWS(EPI512_ROW)
}

T_AVX512 static void gemm_bw(const job *jb, int64_t kb0, int64_t kb1, int64_t o0, int64_t o1)
{
    const char *pf = jb->pf;
    for (int64_t kb = kb0; kb < kb1; kb++) {
        int mrows = jb->K - kb * MR < MR ? (int)(jb->K - kb * MR) : MR;
        int64_t o = o0;
        for (; o + 32 <= o1; o += 32) {
            tile_bw(jb, kb, mrows, o, 2, 0xffff);
            prefetch_step(jb, &pf, 2);
        }
        int64_t rem = o1 - o;
        if (rem <= 0) continue;
        __mmask16 last = (__mmask16)(rem % 16 ? (1u << (rem % 16)) - 1 : 0xffff);
        if (rem > 16) tile_bw(jb, kb, mrows, o, 2, last);
        else tile_bw(jb, kb, mrows, o, 1, last);
    }
}

/* One MR x 8 tile on ymm, as tile_bw; ncols < 8 stores through a mask. */
T_AVX2 INLINE void tile_avx2(const job *jb, int64_t kb, int mrows, int64_t o, int ncols)
{
    const int8_t *Ab = jb->A + kb * jb->G * MR * 4;
    const uint32_t *B = jb->B + o;
    const __m256i lowb = _mm256_set1_epi32(0x00ff00ff);
    __m256i acc[MR];
    #pragma GCC unroll 8
    for (int m = 0; m < MR; m++) acc[m] = _mm256_setzero_si256();
    for (int64_t g = 0; g < jb->G; g++) {
        __m256i x = _mm256_loadu_si256((const __m256i *)(B + jb->off[g]));
        __m256i be = _mm256_and_si256(x, lowb), bo = _mm256_srli_epi16(x, 8);
        const i32u *a = (const i32u *)(Ab + g * MR * 4);
        #pragma GCC unroll 8
        for (int m = 0; m < MR; m++) {
            __m256i w = _mm256_set1_epi32(a[m]);
            __m256i we = _mm256_srai_epi16(_mm256_slli_epi16(w, 8), 8), wo = _mm256_srai_epi16(w, 8);
            acc[m] = _mm256_add_epi32(acc[m], _mm256_add_epi32(_mm256_madd_epi16(be, we),
                                                               _mm256_madd_epi16(bo, wo)));
        }
    }
    __m256i cc = jb->colc ? _mm256_loadu_si256((const __m256i *)(jb->colc + o)) : _mm256_setzero_si256();
    __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(ncols), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (int m = 0; m < mrows; m++) {
        int64_t k = kb * MR + m;
        __m256i s = _mm256_add_epi32(_mm256_add_epi32(acc[m], _mm256_set1_epi32(jb->rowc[k])), cc);
        __m256 f = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(jb->alpha[k])),
                                 _mm256_set1_ps(jb->beta[k]));
        float *cr = jb->C + k * jb->ldc + o;
        if (ncols == 8) _mm256_storeu_ps(cr, f);
        else _mm256_maskstore_ps(cr, mask, f);
    }
}

T_AVX2 static void gemm_avx2(const job *jb, int64_t kb0, int64_t kb1, int64_t o0, int64_t o1)
{
    const char *pf = jb->pf;
    for (int64_t kb = kb0; kb < kb1; kb++) {
        int mrows = jb->K - kb * MR < MR ? (int)(jb->K - kb * MR) : MR;
        for (int64_t o = o0; o < o1; o += 8) {
            tile_avx2(jb, kb, mrows, o, o1 - o < 8 ? (int)(o1 - o) : 8);
            prefetch_step(jb, &pf, 1);
        }
    }
}
#endif

typedef struct {
    gemm_fn gemm;
    quant4_fn quant4;
    quantb_fn quantb;
    int wide_out;     /* the product stores wide rows straight to the output (job.vmask) */
} variant;

static variant get_variant(void)
{
    variant v = {gemm_portable, quant4_portable, quantb_portable, 0};
#if CSUB_X86
    switch (csub_isa_level()) {
    case CSUB_ISA_AVX512VNNI: v = (variant){gemm_vnni, quant4_avx512, quantb_avx512, 1}; break;
    case CSUB_ISA_AVX512: v = (variant){gemm_bw, quant4_avx512, quantb_avx512, 1}; break;
    case CSUB_ISA_AVX2: v = (variant){gemm_avx2, quant4_avx2, quantb_avx2, 0}; break;
    default: break;
    }
#endif
    return v;
}

/* ------------------------------------------------------------ weights */

/* w[K, C, taps] -> qw: codes grouped (c / 4, tap) with the 4 channels inner,
 * q[Kpad/MR][G][MR][4], G = ceil(C/4) * taps. */
static int qweight_make(csub_qweight *qw, const float *w, int64_t K, int64_t C, int64_t taps, int bits)
{
    memset(qw, 0, sizeof *qw);
    if (K < 1 || C < 1 || taps < 1 || bits < 2 || bits > 8 || C > CSUB_INT8_MAX_COLS ||
        taps > CSUB_INT8_MAX_COLS || C * taps > CSUB_INT8_MAX_COLS || K > ((int64_t)1 << 40))
        return CSUB_ERR_ARG;
    int64_t cols = C * taps;
    float mn, mx;
    csub_minmax(w, K * cols, &mn, &mx);
    if (!isfinite(mn) || !isfinite(mx)) return CSUB_ERR_ARG; /* NaN or infinite weights */
    float scale;
    int32_t zp, qmin, qmax;
    csub_quant_params(mn, mx, bits, &scale, &zp);
    qrange(bits, &qmin, &qmax);
    int64_t Kpad = (K + MR - 1) / MR * MR, Cg = (C + 3) / 4, G = Cg * taps;
    int8_t *q = calloc((size_t)(Kpad * G * 4), 1);
    int32_t *rowsum = malloc(sizeof(int32_t) * (size_t)K);
    uint8_t *u = malloc((size_t)(K * cols));
    if (!q || !rowsum || !u) {
        free(q);
        free(rowsum);
        free(u);
        return CSUB_ERR_NOMEM;
    }
    /* u = code - qmin, the activation quantizer on the weight's grid (the same
     * formula); scale 0: every weight is 0, zero point 0 */
    if (scale > 0.0f) {
        xgrid wg = make_xgrid(scale, zp, bits);
        (void)get_variant().quantb(w, K * cols, u, &wg);
    } else {
        memset(u, -qmin, (size_t)(K * cols));
    }
    for (int64_t k = 0; k < K; k++) {
        const uint8_t *uk = u + k * cols;
        int8_t *qk = q + (k / MR) * G * MR * 4 + (k % MR) * 4;
        uint32_t sum = 0;
        for (int64_t i = 0; i < cols; i++) sum += uk[i];
        rowsum[k] = (int32_t)sum + (int32_t)cols * qmin;
        for (int64_t cg = 0; cg < Cg; cg++) {
            int64_t nch = C - 4 * cg < 4 ? C - 4 * cg : 4;
            for (int64_t t = 0; t < taps; t++) {
                int8_t *d = qk + (cg * taps + t) * MR * 4;
                const uint8_t *s = uk + 4 * cg * taps + t;
                for (int64_t j = 0; j < nch; j++) d[j] = (int8_t)(s[j * taps] + qmin);
            }
        }
    }
    free(u);
    qw->K = K;
    qw->cols = cols;
    qw->cols_pad = G * 4;
    qw->taps = taps;
    qw->bits = bits;
    qw->scale = scale;
    qw->zero_point = zp;
    qw->q = q;
    qw->rowsum = rowsum;
    return CSUB_OK;
}

int csub_qweight_init(csub_qweight *qw, const float *w, int64_t K, int64_t cols, int bits)
{
    return qweight_make(qw, w, K, cols, 1, bits);
}

int csub_qweight_init_conv(csub_qweight *qw, const float *w, int64_t K, int64_t C,
                           int64_t R, int64_t S, int bits)
{
    if (R < 1 || S < 1 || R > CSUB_INT8_MAX_COLS || S > CSUB_INT8_MAX_COLS) {
        memset(qw, 0, sizeof *qw);
        return CSUB_ERR_ARG;
    }
    return qweight_make(qw, w, K, C, R * S, bits);
}

void csub_qweight_free(csub_qweight *qw)
{
    free(qw->q);
    free(qw->rowsum);
    memset(qw, 0, sizeof *qw);
}

int64_t csub_qweight_bytes(const csub_qweight *qw)
{
    int64_t Kpad = (qw->K + MR - 1) / MR * MR;
    return Kpad * qw->cols_pad + (int64_t)sizeof(int32_t) * qw->K;
}

/* The codes of a weight stored with taps = 1 (cols = C * taps, in (c, tap)
 * order) regrouped for `taps` taps into q[Kpad/MR][ceil(C/4) * taps][MR][4]. */
static int8_t *regroup(const csub_qweight *qw, int64_t taps)
{
    int64_t K = qw->K, C = qw->cols / taps, G0 = qw->cols_pad / 4, G = (C + 3) / 4 * taps;
    int64_t Kpad = (K + MR - 1) / MR * MR;
    int8_t *q = calloc((size_t)(Kpad * G * 4), 1);
    if (!q) return NULL;
    for (int64_t k = 0; k < K; k++) {
        const int8_t *src = qw->q + (k / MR) * G0 * MR * 4 + (k % MR) * 4;
        int8_t *dst = q + (k / MR) * G * MR * 4 + (k % MR) * 4;
        for (int64_t c = 0; c < C; c++)
            for (int64_t t = 0; t < taps; t++) {
                int64_t j = c * taps + t;
                dst[((c / 4) * taps + t) * MR * 4 + c % 4] = src[(j / 4) * MR * 4 + j % 4];
            }
    }
    return q;
}

/* ------------------------------------------------------------ geometry */

#define SLACK 128             /* cells past the last plane: reads of discarded columns stay in the buffer */
#define SPLIT_MIN (1L << 23)  /* multiply-adds below which an image is not shared by threads */
#define TEAM_MIN (1L << 20)   /* multiply-adds below which a call runs on one thread */

typedef struct {
    int64_t C, H, W, K, R, S, st, pad, P, Q;
    int64_t Cg;          /* channel quadruples ceil(C / 4) */
    int64_t sa, sb;      /* phases used along each axis: min(st, R), min(st, S) */
    int64_t nph;         /* sa * sb */
    int64_t Hph, Wph;    /* plane size: P + (R-1)/st rows, Q + (S-1)/st columns */
    int64_t plane;       /* Hph * Wph cells */
    int64_t L;           /* P * Wph wide outputs */
    int64_t G;           /* Cg * R * S groups */
    int64_t offmax;      /* largest tap shift ((R-1)/st) * Wph + (S-1)/st */
    int64_t cells;       /* Cg * nph * plane + SLACK + Wph: the planes and their slack */
    int64_t sums;        /* nph * plane + SLACK + Wph: the code sums of one phase plane set */
    int direct_y;        /* wide rows are the real rows (Wph == Q) */
} geom;

static geom make_geom(int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S, int64_t st, int64_t pad)
{
    geom g;
    g.C = C, g.H = H, g.W = W, g.K = K, g.R = R, g.S = S, g.st = st, g.pad = pad;
    g.P = csub_conv_out_size(H, R, st, pad);
    g.Q = csub_conv_out_size(W, S, st, pad);
    g.Cg = (C + 3) / 4;
    g.sa = st < R ? st : R;
    g.sb = st < S ? st : S;
    g.nph = g.sa * g.sb;
    g.Hph = g.P + (R - 1) / st;
    g.Wph = g.Q + (S - 1) / st;
    g.plane = g.Hph * g.Wph;
    g.L = g.P * g.Wph;
    g.G = g.Cg * R * S;
    g.offmax = ((R - 1) / st) * g.Wph + (S - 1) / st;
    g.cells = g.Cg * g.nph * g.plane + SLACK + g.Wph;
    g.sums = g.nph * g.plane + SLACK + g.Wph;
    g.direct_y = g.Wph == g.Q;
    return g;
}

/* cell offset of each group g = (c', r, s), in the order of the weight codes */
static void make_offsets(const geom *g, int64_t *off)
{
    int64_t i = 0;
    for (int64_t cg = 0; cg < g->Cg; cg++)
        for (int64_t r = 0; r < g->R; r++)
            for (int64_t s = 0; s < g->S; s++)
                off[i++] = ((cg * g->sa + r % g->st) * g->sb + s % g->st) * g->plane +
                           (r / g->st) * g->Wph + s / g->st;
}

/* The j in [0, n) with lo <= j * st < hi: [*j0, *j1) (empty: *j0 = *j1). */
static void valid_range(int64_t lo, int64_t hi, int64_t st, int64_t n, int64_t *j0, int64_t *j1)
{
    *j0 = lo > 0 ? (lo + st - 1) / st : 0;
    *j1 = hi > 0 ? (hi + st - 1) / st : 0;
    if (*j0 > n) *j0 = n;
    if (*j1 > n) *j1 = n;
    if (*j1 < *j0) *j1 = *j0;
}

static void fill_cells(uint32_t *d, int64_t n, uint32_t v)
{
    for (int64_t i = 0; i < n; i++) d[i] = v;
}

/* planes[(c'*sa + a)*sb + b][i*Wph + j] = cell of xpad[4c'..4c'+3][i*st + a][j*st + b]
 * for quadruples [cg0, cg1); padding holds the zero point. x[C,H,W].
 * Returns 1 if x has a NaN there. */
static int build_planes(const geom *g, const variant *vr, const xgrid *xg, const float *xn,
                        uint32_t *planes, int64_t cg0, int64_t cg1)
{
    int64_t st = g->st, pad = g->pad, H = g->H, W = g->W, Wph = g->Wph, Hph = g->Hph, HW = H * W;
    int nan = 0;
    for (int64_t cg = cg0; cg < cg1; cg++) {
        int64_t nch = g->C - 4 * cg < 4 ? g->C - 4 * cg : 4;
        uint32_t chmask = nch == 4 ? 0xffffffffu : (1u << (8 * nch)) - 1;
        uint32_t padv = (uint32_t)xg->zu * 0x01010101u & chmask;
        const float *xc = xn + 4 * cg * HW;
        for (int64_t a = 0; a < g->sa; a++) {
            /* plane rows [i0, i1) read x rows h = i * st + a - pad in [0, H) */
            int64_t i0, i1;
            valid_range(pad - a, H + pad - a, st, Hph, &i0, &i1);
            for (int64_t b = 0; b < g->sb; b++) {
                uint32_t *pl = planes + (cg * g->nph + a * g->sb + b) * g->plane;
                int64_t j0, j1;
                valid_range(pad - b, W + pad - b, st, Wph, &j0, &j1);
                fill_cells(pl, i0 * Wph, padv);
                fill_cells(pl + i1 * Wph, (Hph - i1) * Wph, padv);
                if (i1 > i0 && j1 > j0) {
                    const float *xr[4];
                    int64_t e = (i0 * st + a - pad) * W + j0 * st + b - pad;
                    for (int j = 0; j < 4; j++) xr[j] = xc + (j < nch ? j : 0) * HW + e;
                    nan |= vr->quant4(xr, j1 - j0, st, i1 - i0, st * W, pl + i0 * Wph + j0, Wph, xg, chmask);
                }
                for (int64_t i = i0; i < i1; i++) {
                    fill_cells(pl + i * Wph, j0, padv);
                    fill_cells(pl + i * Wph + j1, Wph - j1, padv);
                }
            }
        }
    }
    return nan;
}

/* csum[ph * plane + p] = sum over quadruples of the 4 codes of cell (c', ph, p), for p in [p0, p1) */
static CSUB_ALWAYS_INLINE void csum_build_body(const uint32_t *planes, int32_t *csum, int64_t Cg, int64_t nph,
                                               int64_t plane, int64_t p0, int64_t p1)
{
    for (int64_t ph = 0; ph < nph; ph++) {
        int32_t *cs = csum + ph * plane;
        for (int64_t p = p0; p < p1; p++) cs[p] = 0;
        for (int64_t cg = 0; cg < Cg; cg++) {
            const uint32_t *pl = planes + (cg * nph + ph) * plane;
            for (int64_t p = p0; p < p1; p++) {
                uint32_t v = pl[p];
                cs[p] += (int32_t)((v & 0xff) + ((v >> 8) & 0xff) + ((v >> 16) & 0xff) + (v >> 24));
            }
        }
    }
}
CSUB_VARIANTS(csum_build, (const uint32_t *planes, int32_t *csum, int64_t Cg, int64_t nph, int64_t plane, int64_t p0,
                           int64_t p1), (planes, csum, Cg, nph, plane, p0, p1))

/* colc[o] = -zw * sum over taps of csum[phase of the tap][o + shift of the tap], o in [o0, o1) */
static CSUB_ALWAYS_INLINE void colc_build_body(const geom *g, const int32_t *csum, int32_t zw, int32_t *colc,
                                               int64_t o0, int64_t o1)
{
    for (int64_t o = o0; o < o1; o++) colc[o] = 0;
    for (int64_t r = 0; r < g->R; r++)
        for (int64_t s = 0; s < g->S; s++) {
            const int32_t *cs = csum + ((r % g->st) * g->sb + s % g->st) * g->plane + (r / g->st) * g->Wph + s / g->st;
            for (int64_t o = o0; o < o1; o++) colc[o] += cs[o];
        }
    for (int64_t o = o0; o < o1; o++) colc[o] = (int32_t)(0u - (uint32_t)zw * (uint32_t)colc[o]);
}
CSUB_VARIANTS(colc_build, (const geom *g, const int32_t *csum, int32_t zw, int32_t *colc, int64_t o0, int64_t o1),
              (g, csum, zw, colc, o0, o1))

/* [lo, hi) of n items for thread t of T, in blocks of `align` */
static void split(int64_t n, int64_t align, int t, int T, int64_t *lo, int64_t *hi)
{
    int64_t blocks = (n + align - 1) / align, per = blocks / T, extra = blocks % T;
    int64_t b0 = t * per + (t < extra ? t : extra), b1 = b0 + per + (t < extra);
    *lo = b0 * align < n ? b0 * align : n;
    *hi = b1 * align < n ? b1 * align : n;
}

/* A product over columns [0, L) shared by T threads: column panels when
 * there are enough columns, else row blocks. */
static void gemm_share(const variant *vr, const job *jb, int64_t L, int t, int T)
{
    int64_t nkb = (jb->K + MR - 1) / MR, lo, hi;
    if (L >= 48 * T || nkb < T) {
        split(L, 16, t, T, &lo, &hi);
        if (lo < hi) vr->gemm(jb, 0, nkb, lo, hi);
    } else {
        split(nkb, 1, t, T, &lo, &hi);
        if (lo < hi) vr->gemm(jb, lo, hi, 0, L);
    }
}

/* Buffers of one image (planes, wide output rows) and of one thread (column sums). */
typedef struct {
    uint32_t *planes; /* [cells] */
    float *wide;      /* [K * L] (!direct_y) */
} img_buf;
typedef struct {
    int32_t *csum;    /* [sums] (zw != 0) */
    int32_t *colc;    /* [L + 64] (zw != 0) */
} thr_buf;

/* Shared, read-only inputs of one convolution call. */
typedef struct {
    geom g;
    variant vr;
    xgrid xg;
    job jb;      /* A, G, K, off, rowc, alpha, beta; B, colc, C, ldc per image */
    int32_t zw;
    const uint16_t *vmask; /* [Wph]: real lanes of a vector from each column of a wide row */
} conv_ctx;

/* The product for output rows [kb0, kb1) (blocks) x wide columns [o0, o1) of
 * one image whose planes are built: column terms, product, wide rows -> y. */
static void conv_part(const conv_ctx *cx, const img_buf *ib, const thr_buf *tb, float *yn,
                      int64_t kb0, int64_t kb1, int64_t o0, int64_t o1, const float *next)
{
    const geom *g = &cx->g;
    job jb = cx->jb;
    jb.B = ib->planes;
    jb.colc = NULL;
    if (next) { /* the next image's input, spread over the tiles, comes in while this one computes */
        int64_t bytes = g->C * g->H * g->W * (int64_t)sizeof(float);
        int64_t tiles = (kb1 - kb0) * ((o1 - o0 + 15) / 16);
        jb.pf = (const char *)next;
        jb.pf_end = jb.pf + bytes;
        jb.pf_lines = (bytes / 64 + tiles - 1) / tiles + 1;
    }
    if (cx->zw) { /* the sums for [o0, o1) read the planes up to o1 + offmax */
        int64_t p1 = o1 + g->offmax < g->plane ? o1 + g->offmax : g->plane;
        csum_build(ib->planes, tb->csum, g->Cg, g->nph, g->plane, o0, p1);
        colc_build(g, tb->csum, cx->zw, tb->colc, o0, o1);
        jb.colc = tb->colc;
    }
    int compact = !g->direct_y && !cx->vr.wide_out; /* wide rows through a buffer */
    jb.C = compact ? ib->wide : yn;
    jb.ldc = compact ? g->L : g->P * g->Q;
    if (!g->direct_y && cx->vr.wide_out) {
        jb.vmask = cx->vmask;
        jb.Wph = g->Wph;
        jb.Q = g->Q;
    }
    cx->vr.gemm(&jb, kb0, kb1, o0, o1);
    if (compact) { /* the real columns of the wide rows [o0, o1) (whole rows) */
        int64_t k1 = kb1 * MR < g->K ? kb1 * MR : g->K;
        for (int64_t k = kb0 * MR; k < k1; k++)
            for (int64_t p = o0 / g->Wph; p < o1 / g->Wph; p++)
                memcpy(yn + (k * g->P + p) * g->Q, ib->wide + k * g->L + p * g->Wph, sizeof(float) * (size_t)g->Q);
    }
}

/* One image x[C,H,W] -> y[K,P,Q] by thread t of T sharing the image buffers
 * (T = 1: alone). The planes are built by channel quadruples, then the
 * product is split by output rows (or by row blocks of the weight when the
 * rows are few), each thread with its own column terms. Returns 1 if x has a NaN. */
static int conv_image(const conv_ctx *cx, const float *xn, float *yn, const img_buf *ib, const thr_buf *tb,
                      int t, int T, const float *next)
{
    const geom *g = &cx->g;
    int64_t lo, hi, nkb = (g->K + MR - 1) / MR;
    split(g->Cg, 1, t, T, &lo, &hi);
    int nan = build_planes(g, &cx->vr, &cx->xg, xn, ib->planes, lo, hi);
    if (T > 1) {
        #pragma omp barrier
    }
    if (T == 1) {
        conv_part(cx, ib, tb, yn, 0, nkb, 0, g->L, next);
    } else if (g->P >= 2 * T || nkb < T) {
        split(g->P, 1, t, T, &lo, &hi);
        if (lo < hi) conv_part(cx, ib, tb, yn, 0, nkb, lo * g->Wph, hi * g->Wph, NULL);
    } else {
        split(nkb, 1, t, T, &lo, &hi);
        if (lo < hi) conv_part(cx, ib, tb, yn, lo, hi, 0, g->L, NULL);
    }
    return nan;
}

/* y[N, K, PQ] = b[k] (or 0): the output of an all-zero quantized input */
static void fill_bias(float *y, const float *b, int64_t N, int64_t K, int64_t PQ)
{
    #pragma omp parallel for num_threads(csub_get_num_threads()) schedule(static) if (N * K * PQ > CSUB_PAR_MIN)
    for (int64_t i = 0; i < N * K; i++) {
        float v = b ? b[i % K] : 0.0f;
        for (int64_t j = 0; j < PQ; j++) y[i * PQ + j] = v;
    }
}

/* Per-row terms of the epilogue, Kpad entries (rows >= K zero):
 * rowc = -zu * rowsum + cols * zw * zu (mod 2^32), alpha = xscale * wscale * oscale, beta = b. */
static int row_terms(const csub_qweight *qw, const xgrid *xg, float xscale, const float *oscale,
                     const float *b, int32_t **rowc, float **alpha, float **beta)
{
    int64_t Kpad = (qw->K + MR - 1) / MR * MR;
    *rowc = calloc((size_t)Kpad, sizeof(int32_t));
    *alpha = calloc((size_t)Kpad, sizeof(float));
    *beta = calloc((size_t)Kpad, sizeof(float));
    if (!*rowc || !*alpha || !*beta) return CSUB_ERR_NOMEM;
    uint32_t zu = (uint32_t)xg->zu, zw = (uint32_t)qw->zero_point, cols = (uint32_t)qw->cols;
    float s = xscale * qw->scale;
    for (int64_t k = 0; k < qw->K; k++) {
        (*rowc)[k] = (int32_t)(cols * zw * zu - zu * (uint32_t)qw->rowsum[k]);
        (*alpha)[k] = oscale ? s * oscale[k] : s;
        (*beta)[k] = b ? b[k] : 0.0f;
    }
    return CSUB_OK;
}

static int grid_ok(const csub_qweight *qw, int32_t xzero_point)
{
    int32_t qmin, qmax;
    if (!qw || !qw->q || !qw->rowsum || qw->bits < 2 || qw->bits > 8) return 0;
    qrange(qw->bits, &qmin, &qmax);
    return xzero_point >= qmin && xzero_point <= qmax;
}

int csub_conv2d_int8_forward(const float *x, float xscale, int32_t xzero_point,
                             const csub_qweight *qw, const float *oscale, const float *b, float *y,
                             int64_t N, int64_t C, int64_t H, int64_t W,
                             int64_t R, int64_t S, int64_t stride, int64_t pad)
{
    if (!grid_ok(qw, xzero_point) || N < 0 || C < 1 || H < 1 || W < 1 || R < 1 || S < 1 ||
        stride < 1 || pad < 0 || H + 2 * pad < R || W + 2 * pad < S || C * R * S != qw->cols ||
        (qw->taps != R * S && qw->taps != 1))
        return CSUB_ERR_ARG;
    int64_t K = qw->K;
    geom g = make_geom(C, H, W, K, R, S, stride, pad);
    if (N == 0) return CSUB_OK;
    if (!(xscale > 0.0f) || !isfinite(xscale)) { /* every activation code is the zero point */
        fill_bias(y, b, N, K, g.P * g.Q);
        return CSUB_OK;
    }
    conv_ctx cx;
    cx.g = g;
    cx.vr = get_variant();
    cx.xg = make_xgrid(xscale, xzero_point, qw->bits);
    cx.zw = qw->zero_point;
    int zw = cx.zw != 0;

    /* Threads: whole images, or (large images, fewer left than threads) shared images. */
    int nt = csub_get_num_threads();
    double macs = (double)K * (double)g.G * 4.0 * (double)g.L; /* per image */
    if (macs * (double)N < (double)TEAM_MIN) nt = 1;
    int shared = nt > 1 && macs >= (double)SPLIT_MIN;
    int64_t Nper = shared ? N - N % nt : N; /* images done whole, one per thread */
    if (!shared && nt > N) nt = (int)N;
    int nimg = N < nt ? (int)N : nt;         /* image buffers: one per thread, or one shared */
    int wide_buf = !g.direct_y && !cx.vr.wide_out;
    size_t img_f = (size_t)g.cells + (wide_buf ? (size_t)(K * g.L) : 0);
    size_t thr_f = zw ? (size_t)g.sums + (size_t)(g.L + 64) : 1;

    int8_t *A = qw->taps == R * S ? NULL : regroup(qw, R * S);
    int64_t *off = malloc(sizeof(int64_t) * (size_t)g.G);
    uint16_t *vmask = malloc(sizeof(uint16_t) * (size_t)g.Wph);
    cx.vmask = vmask;
    float *ws = malloc(sizeof(float) * (img_f * (size_t)nimg + thr_f * (size_t)nt));
    int32_t *rowc = NULL;
    float *alpha = NULL, *beta = NULL;
    int st = (!off || !ws || !vmask || (qw->taps != R * S && !A)) ? CSUB_ERR_NOMEM
                                                         : row_terms(qw, &cx.xg, xscale, oscale, b, &rowc, &alpha, &beta);
    if (st == CSUB_OK) {
        make_offsets(&g, off);
        /* lane l of vmask[q0]: column (q0 + l) % Wph is a real one (< Q); no division */
        unsigned m = 0;
        for (int l = 15, j = 15 % (int)g.Wph; l >= 0; l--, j = j ? j - 1 : (int)g.Wph - 1)
            m = m << 1 | (j < g.Q);
        for (int64_t q0 = 0, j = 16 % g.Wph; q0 < g.Wph; q0++, j = j + 1 < g.Wph ? j + 1 : 0) {
            vmask[q0] = (uint16_t)m;
            m = m >> 1 | (unsigned)(j < g.Q) << 15; /* slide: drop column q0, take q0 + 16 */
        }
        cx.jb = (job){.A = A ? A : qw->q, .G = g.G, .K = K, .off = off, .rowc = rowc,
                      .alpha = alpha, .beta = beta};
        /* the slack cells past the planes and the sums are read only for
         * discarded columns; they are zero so that every read is defined */
        for (int i = 0; i < nimg; i++)
            memset(ws + img_f * (size_t)i + g.Cg * g.nph * g.plane, 0, sizeof(uint32_t) * (size_t)(SLACK + g.Wph));
        for (int i = 0; i < nt && zw; i++)
            memset(ws + img_f * (size_t)nimg + thr_f * (size_t)i + g.nph * g.plane, 0,
                   sizeof(int32_t) * (size_t)(SLACK + g.Wph));
        int64_t C_HW = C * H * W, KPQ = K * g.P * g.Q;
        int nan = 0;
        #pragma omp parallel num_threads(nt) reduction(|:nan)
        {
            int t = omp_get_thread_num(), T = omp_get_num_threads();
            float *tw = ws + img_f * (size_t)nimg + thr_f * (size_t)t;
            thr_buf tb = {zw ? (int32_t *)tw : NULL, zw ? (int32_t *)(tw + g.sums) : NULL};
            img_buf own = {(uint32_t *)(ws + img_f * (size_t)(t < nimg ? t : 0)), NULL};
            own.wide = wide_buf ? (float *)own.planes + g.cells : NULL;
            if (Nper == N) { /* whole images only: no barrier before the end of the region */
                #pragma omp for schedule(static) nowait
                for (int64_t n = 0; n < N; n++)
                    nan |= conv_image(&cx, x + n * C_HW, y + n * KPQ, &own, &tb, 0, 1,
                                      n + 1 < N ? x + (n + 1) * C_HW : NULL);
            } else {
                #pragma omp for schedule(static)
                for (int64_t n = 0; n < Nper; n++)
                    nan |= conv_image(&cx, x + n * C_HW, y + n * KPQ, &own, &tb, 0, 1,
                                      n + 1 < Nper ? x + (n + 1) * C_HW : NULL);
            }
            /* the rest: every thread on each image, in the first image buffers */
            img_buf sh = {(uint32_t *)ws, wide_buf ? ws + g.cells : NULL};
            for (int64_t n = Nper; n < N; n++) {
                if (n > Nper) {
                    #pragma omp barrier
                }
                nan |= conv_image(&cx, x + n * C_HW, y + n * KPQ, &sh, &tb, t, T, NULL);
            }
        }
        if (nan) st = CSUB_ERR_ARG;
    }
    free(A);
    free(off);
    free(vmask);
    free(ws);
    free(rowc);
    free(alpha);
    free(beta);
    return st;
}

/* x[N, IN] -> y[N, O]: the product with the batch as columns, B[c'][n] the
 * cell of x[n][4c'..4c'+3], into yt[O][N], then transposed. */
int csub_linear_int8_forward(const float *x, float xscale, int32_t xzero_point,
                             const csub_qweight *qw, const float *oscale, const float *b, float *y,
                             int64_t N)
{
    if (!grid_ok(qw, xzero_point) || qw->taps != 1 || N < 0) return CSUB_ERR_ARG;
    int64_t IN = qw->cols, O = qw->K, Cg = (IN + 3) / 4;
    if (N == 0) return CSUB_OK;
    if (!(xscale > 0.0f) || !isfinite(xscale)) {
        fill_bias(y, b, N, O, 1);
        return CSUB_OK;
    }
    variant vr = get_variant();
    xgrid xg = make_xgrid(xscale, xzero_point, qw->bits);
    int32_t zw = qw->zero_point;
    int nt = csub_get_num_threads();
    if ((double)O * (double)Cg * 4.0 * (double)N < (double)TEAM_MIN) nt = 1;
    int64_t *off = malloc(sizeof(int64_t) * (size_t)Cg);
    uint32_t *cells = malloc(sizeof(uint32_t) * (size_t)(Cg * N + SLACK));
    int32_t *colc = zw ? calloc((size_t)(N + 64), sizeof(int32_t)) : NULL;
    float *yt = malloc(sizeof(float) * (size_t)(O * N));
    uint8_t *tmp = malloc((size_t)(4 * Cg) * (size_t)nt);
    int32_t *rowc = NULL;
    float *alpha = NULL, *beta = NULL;
    int st = (!off || !cells || (zw && !colc) || !yt || !tmp) ? CSUB_ERR_NOMEM
             : row_terms(qw, &xg, xscale, oscale, b, &rowc, &alpha, &beta);
    if (st == CSUB_OK) {
        for (int64_t g = 0; g < Cg; g++) off[g] = g * N;
        memset(cells + Cg * N, 0, sizeof(uint32_t) * SLACK);
        job jb = {.A = qw->q, .G = Cg, .K = O, .B = cells, .off = off, .rowc = rowc, .colc = colc,
                  .alpha = alpha, .beta = beta, .C = yt, .ldc = N};
        int nan = 0;
        #pragma omp parallel num_threads(nt) reduction(|:nan)
        {
            int t = omp_get_thread_num(), T = omp_get_num_threads();
            uint8_t *u = tmp + (size_t)t * 4 * Cg;
            memset(u, 0, (size_t)(4 * Cg)); /* the missing channels of the last quadruple: code 0 */
            #pragma omp for schedule(static)
            for (int64_t n = 0; n < N; n++) {
                nan |= vr.quantb(x + n * IN, IN, u, &xg);
                uint32_t sum = 0;
                for (int64_t g = 0; g < Cg; g++)
                    cells[g * N + n] = (uint32_t)u[4 * g] | (uint32_t)u[4 * g + 1] << 8 |
                                       (uint32_t)u[4 * g + 2] << 16 | (uint32_t)u[4 * g + 3] << 24;
                if (colc) {
                    for (int64_t i = 0; i < IN; i++) sum += u[i];
                    colc[n] = (int32_t)(0u - (uint32_t)zw * sum);
                }
            }
            gemm_share(&vr, &jb, N, t, T);
            #pragma omp barrier
            #pragma omp for schedule(static)
            for (int64_t n = 0; n < N; n++)
                for (int64_t o = 0; o < O; o++) y[n * O + o] = yt[o * N + n];
        }
        if (nan) st = CSUB_ERR_ARG;
    }
    free(off);
    free(cells);
    free(colc);
    free(yt);
    free(tmp);
    free(rowc);
    free(alpha);
    free(beta);
    return st;
}
