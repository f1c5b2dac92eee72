/* int8_gemm.c - the product of the integer kernels over activation cells (the
 * method: int8.c), one microkernel per instruction-set level.
 *
 * Microkernel: MR rows x NV*16 columns of int32 accumulators in registers;
 * per group: NV vector loads of B and MR broadcasts of A. The epilogue adds
 * the corrections, converts to float, multiplies by
 * xscale * wscale * oscale[k], adds b[k], then the residual and the ReLU
 * where the job has them, and stores (masked at the edge).
 * Variants, one per instruction-set level (csub_isa_level, internal.h: the
 * CPU's best or the one CSUB_ISA names; never -march=native):
 *   avx512vnni  VPDPBUSD on zmm, 8 x 48 tile
 *   avx512bw    bytes widened to int16 pairs, VPMADDWD, 8 x 32 tile
 *   avx2        the same on ymm, 8 x 8 tile
 *   portable    C loops (any CPU)
 * Every variant computes the same integers, so results are identical.
 */
#include <string.h>

#include "int8_internal.h"

/* 4 bytes of codes read as one int32, wherever they lie */
typedef int32_t i32u __attribute__((may_alias, aligned(1)));

/* ------------------------------------------------------------- dispatch */

/* The variant of each level: avx512 runs avx512bw, the others share the level's name. */
const char *csub_int8_kernel(void)
{
    static const char *const names[CSUB_ISA_COUNT] = {"portable", "avx2", "avx512bw", "avx512vnni"};
    return names[csub_isa_level()];
}

/* the next units * pf_lines cache lines of the prefetch range */
static inline void prefetch_step(const job *jb, const char **cur, int units)
{
    for (int64_t i = 0; i < units * jb->pf_lines && *cur < jb->pf_end; i++, *cur += 64) __builtin_prefetch(*cur, 0, 2);
}

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
                const float *rr = jb->res ? jb->res + k * jb->ldc + o : NULL;
                for (int c = 0; c < nc; c++) {
                    uint32_t v = (uint32_t)acc[m][c] + (uint32_t)jb->rowc[k] + (jb->colc ? (uint32_t)jb->colc[o + c] : 0u);
                    float f = (float)(int32_t)v * jb->alpha[k] + jb->beta[k];
                    if (rr) f = f + rr[c];
                    cr[c] = jb->relu && f <= 0.0f ? 0.0f : f;
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

/* Epilogue of row m (NV vectors of 16): add the corrections, scale, add the
 * residual, the ReLU, store.
 * A multiply then an add, no FMA, as in every variant: identical results.
 * Rows >= mrows are not stored. Plain layout: vector v at column o + 16 v,
 * the last one through the mask `last`. Wide layout (jb->vmask): only the
 * lanes of real columns wm<v>, compressed, at the row offset wo<v>. */
#define EPI512_STORE(v)                                                                  \
    if (NV > v) {                                                                        \
        __mmask16 sm_ = wm##v;                                                           \
        if (jb->vmask) {                                                                 \
            f##v##_ = _mm512_maskz_compress_ps(wm##v, f##v##_);                          \
            sm_ = wn##v;                                                                 \
        }                                                                                \
        if (rr_) f##v##_ = _mm512_add_ps(f##v##_, _mm512_maskz_loadu_ps(sm_, rr_ + wo##v)); \
        if (jb->relu) /* NaN stays NaN */                                                \
            f##v##_ = _mm512_mask_mov_ps(f##v##_, _mm512_cmp_ps_mask(f##v##_, _mm512_setzero_ps(), _CMP_LE_OQ), \
                                         _mm512_setzero_ps());                           \
        _mm512_mask_storeu_ps(cr_ + wo##v, sm_, f##v##_);                                \
    }
#define EPI512_ROW(m)                                                                    \
    if (m < mrows) {                                                                     \
        int64_t k_ = kb * MR + m;                                                        \
        __m512i rc_ = _mm512_set1_epi32(jb->rowc[k_]);                                   \
        __m512 al_ = _mm512_set1_ps(jb->alpha[k_]), be_ = _mm512_set1_ps(jb->beta[k_]);  \
        float *cr_ = jb->C + k_ * jb->ldc;                                               \
        const float *rr_ = jb->res ? jb->res + k_ * jb->ldc : NULL;                      \
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

/* rows [kb0 * MR, kb1 * MR) x columns [o0, o1) by tiles of NVMAX vectors of 16
 * columns, then one tile of as many vectors as the columns left need (the
 * loop of gemm_vnni and gemm_bw; tile is inlined for each NV). */
#define GEMM512(name, target, tile, NVMAX)                                                    \
    target static void name(const job *jb, int64_t kb0, int64_t kb1, int64_t o0, int64_t o1) \
    {                                                                                         \
        const char *pf = jb->pf;                                                              \
        for (int64_t kb = kb0; kb < kb1; kb++) {                                              \
            int mrows = jb->K - kb * MR < MR ? (int)(jb->K - kb * MR) : MR;                   \
            int64_t o = o0;                                                                   \
            for (; o + 16 * NVMAX <= o1; o += 16 * NVMAX) {                                   \
                tile(jb, kb, mrows, o, NVMAX, 0xffff);                                        \
                prefetch_step(jb, &pf, NVMAX);                                                \
            }                                                                                 \
            int64_t rem = o1 - o;                                                             \
            if (rem <= 0) continue;                                                           \
            __mmask16 last = (__mmask16)(rem % 16 ? (1u << (rem % 16)) - 1 : 0xffff);         \
            if (NVMAX > 2 && rem > 32) tile(jb, kb, mrows, o, NVMAX, last);                   \
            else if (rem > 16) tile(jb, kb, mrows, o, 2, last);                               \
            else tile(jb, kb, mrows, o, 1, last);                                             \
        }                                                                                     \
    }
GEMM512(gemm_vnni, T_VNNI, tile_vnni, 3)
GEMM512(gemm_bw, T_AVX512, tile_bw, 2)

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
        if (jb->res) f = _mm256_add_ps(f, _mm256_maskload_ps(jb->res + k * jb->ldc + o, mask));
        if (jb->relu) f = _mm256_blendv_ps(f, _mm256_setzero_ps(), _mm256_cmp_ps(f, _mm256_setzero_ps(), _CMP_LE_OQ));
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

/* The product of the level in use (csub_isa_level). */
gemm_fn csub_int8_gemm(int *wide_out)
{
    *wide_out = 0;
#if CSUB_X86
    switch (csub_isa_level()) {
    case CSUB_ISA_AVX512VNNI: *wide_out = 1; return gemm_vnni;
    case CSUB_ISA_AVX512: *wide_out = 1; return gemm_bw;
    case CSUB_ISA_AVX2: return gemm_avx2;
    default: break;
    }
#endif
    return gemm_portable;
}
