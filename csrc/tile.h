/*
 * tile.h - what the register-tiled convolution kernels share (conv_direct.c,
 * conv_pointwise.c, conv_stem.c, conv_winograd.c; csr.c its ReLU): GCC vector
 * types, each instruction-set level's multiply-add, the epilogue of one
 * vector of a tile, and (csr.c, conv_stem.c, conv.c's strided 1x1 input) a
 * row of a zero-padded input plane. Included by those files only, after
 * internal.h; all but conv.c (which takes the plane row only) are compiled
 * with CSUB_FP_CONTRACT_FAST.
 */
#ifndef CSUB_TILE_H
#define CSUB_TILE_H

#include <math.h>
#include <string.h>

#include "internal.h"

/* GCC lowers the wider ones to what the compiling level has (the baseline variants, other CPUs) */
typedef float f32x4 __attribute__((vector_size(16)));
typedef float f32x8 __attribute__((vector_size(32)));
typedef float f32x16 __attribute__((vector_size(64)));
typedef int32_t i32x4 __attribute__((vector_size(16)));
typedef int32_t i32x8 __attribute__((vector_size(32)));
typedef int32_t i32x16 __attribute__((vector_size(64)));

/* acc += x * w, fused (contracted) where the level has FMA; the baseline by fmaf on each lane, so
 * that every level computes the same bits (GCC). Under clang nothing is contracted (internal.h):
 * the baseline unfused too. */
#define MADD_CONTRACT(acc, x, w) ((acc) += (x) * (w))
#if defined(__clang__)
#define MADD_BASELINE MADD_CONTRACT
#else
#define MADD_BASELINE(acc, x, w)                                                                \
    do {                                                                                        \
        for (int l_ = 0; l_ < 4; l_++) (acc)[l_] = fmaf((x)[l_], (w), (acc)[l_]);               \
    } while (0)
#endif

/* The lanes <= 0 of a vector a (type VT, VI the integer vector of its lanes) cleared, in place (NaN
 * kept, -0 becomes +0: csub_relu_forward's values) */
#define TILE_RELU(VT, VI, a)                                                                    \
    do {                                                                                        \
        VI m_ = (VI)((a) <= (VT){0}), b_;                                                       \
        memcpy(&b_, &(a), sizeof(VT));                                                          \
        b_ &= ~m_;                                                                              \
        memcpy(&(a), &b_, sizeof(VT));                                                          \
    } while (0)

/* One vector a (type VT, VI the integer vector of its lanes) of a tile's output channel, in place:
 * a + bk, + the first nb bytes at res + at (res NULL: none; the other lanes 0), then lanes <= 0
 * cleared when relu (NaN kept, -0 becomes +0): csub_conv_epilogue's operations in its order
 * (conv.c), so the same bits. */
#define TILE_EPILOGUE(VT, VI, a, bk, res, at, nb, relu)                                         \
    do {                                                                                        \
        (a) = (a) + (bk);                                                                       \
        if (res) {                                                                              \
            VT r_ = (VT){0};                                                                    \
            memcpy(&r_, (res) + (at), (nb));                                                    \
            (a) = (a) + r_;                                                                     \
        }                                                                                       \
        if (relu) TILE_RELU(VT, VI, a);                                                         \
    } while (0)

/* The columns j of a plane row (at stride st, column phase b, padding pad, W input columns) that
 * read the input: [*j0, *j1), the first j with j st + b - pad >= 0 and the first with j st + b -
 * pad >= W, within [0, Wph] */
static inline void csub_plane_cols(int64_t st, int64_t b, int64_t pad, int64_t W, int64_t Wph, int64_t *j0,
                                   int64_t *j1)
{
    int64_t lo = pad - b, hi = W + pad - b;
    *j0 = lo > 0 ? (lo + st - 1) / st : 0;
    *j1 = hi > 0 ? (hi + st - 1) / st : 0;
    if (*j0 > Wph) *j0 = Wph;
    if (*j1 > Wph) *j1 = Wph;
    if (*j1 < *j0) *j1 = *j0;
}

#if CSUB_X86
#include <immintrin.h>

/* The load masks of the 16 columns from j of a plane row (csub_plane_row_avx512): the columns in
 * [j0, j1) at stride 1 (*hi = 0), at stride 2 their even lanes of the two vectors they read */
CSUB_TARGET_AVX512 static inline void csub_plane_masks(int64_t j, int64_t j0, int64_t j1, int64_t st, __mmask16 *lo,
                                                       __mmask16 *hi)
{
    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    __m512i col = _mm512_add_epi32(lane, _mm512_set1_epi32((int)j));
    __mmask16 in = _mm512_cmpge_epi32_mask(col, _mm512_set1_epi32((int)j0)) &
                   _mm512_cmplt_epi32_mask(col, _mm512_set1_epi32((int)j1));
    *lo = st == 1 ? in : (__mmask16)_pdep_u32(in & 0xFF, 0x5555);
    *hi = st == 1 ? 0 : (__mmask16)_pdep_u32(in >> 8, 0x5555);
}

/* One row of a plane of the zero-padded input (csr.c's planes, conv_stem.c's) at stride 1 or 2,
 * AVX-512: row[j] = xr[j st] for j in [j0, j1), 0 for the rest of [0, Wph), 16 columns a store,
 * the values outside [j0, j1) never loaded (masked loads do not fault; xr may point before the
 * input row). Per row of ResNet18's and cPreResNet20's planes, memcpy and memset calls and the
 * stride-2 loop cost more than the copy (measured: cPreResNet20's planes 22 % of its 90 % sparse
 * forward). */
CSUB_TARGET_AVX512 static inline void csub_plane_row_avx512(float *row, const float *xr, int64_t Wph, int64_t j0,
                                                            int64_t j1, int64_t st)
{
    const __m512i ev = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    for (int64_t j = 0; j < Wph; j += 16) {
        __mmask16 lo, hi, out = Wph - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (Wph - j)) - 1);
        csub_plane_masks(j, j0, j1, st, &lo, &hi);
        __m512 v = st == 1 ? _mm512_maskz_loadu_ps(lo, xr + j) /* stride 2: columns j .. j + 15 read */
                           : _mm512_permutex2var_ps(_mm512_maskz_loadu_ps(lo, xr + 2 * j), ev, /* xr[2 j .. 2 j + 30] */
                                                    _mm512_maskz_loadu_ps(hi, xr + 2 * j + 16));
        _mm512_mask_storeu_ps(row + j, out, v);
    }
}
#endif

#endif /* CSUB_TILE_H */
