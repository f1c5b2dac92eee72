/*
 * tile.h - what the register-tiled convolution kernels share (conv_direct.c,
 * conv_pointwise.c, conv_stem.c, conv_winograd.c; csr.c its ReLU): GCC vector
 * types, each instruction-set level's multiply-add, and the epilogue of one
 * vector of a tile. Included by those files only, after internal.h, in files
 * compiled with CSUB_FP_CONTRACT_FAST.
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

#endif /* CSUB_TILE_H */
