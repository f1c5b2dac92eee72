/* int8_quant.c - the codes of the integer kernels (the method: int8.c):
 * activations packed four channels to a 32-bit cell, one quantizer per
 * instruction-set level, and weights to int8 codes in row blocks.
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
 * Weights are stored once, per row blocks of MR output channels:
 * q[K/MR][G][MR][4] int8 (rows and channels padded with zero codes), so the
 * microkernel broadcasts the 4 codes of one row and group with one load.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "int8_internal.h"

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

/* The quantizers of the level in use (csub_isa_level). */
void csub_int8_quantizers(quant4_fn *quant4, quantb_fn *quantb)
{
    *quant4 = quant4_portable;
    *quantb = quantb_portable;
#if CSUB_X86
    switch (csub_isa_level()) {
    case CSUB_ISA_AVX512VNNI: case CSUB_ISA_AVX512: *quant4 = quant4_avx512; *quantb = quantb_avx512; break;
    case CSUB_ISA_AVX2: *quant4 = quant4_avx2; *quantb = quantb_avx2; break;
    default: break;
    }
#endif
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
        quant4_fn quant4;
        quantb_fn quantb;
        csub_int8_quantizers(&quant4, &quantb);
        (void)quantb(w, K * cols, u, &wg);
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
int8_t *csub_int8_regroup(const csub_qweight *qw, int64_t taps)
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

