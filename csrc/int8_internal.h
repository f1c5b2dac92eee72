/*
 * int8_internal.h - what the integer inference files share (int8.c has the
 * method): the weight layout's row block, an input's quantization grid, the
 * product's job and the kernels of the instruction-set level in use.
 * Included by csrc/int8*.c only.
 *
 *   int8.c        the convolution and linear drivers: geometry, planes, column terms, threads
 *   int8_quant.c  codes: activations packed into cells (per ISA), weights into row blocks
 *   int8_gemm.c   the product over cells: one microkernel per ISA
 */
#ifndef CSUB_INT8_INTERNAL_H
#define CSUB_INT8_INTERNAL_H

#include "internal.h"

#if CSUB_X86
#include <immintrin.h>
#define T_AVX2 CSUB_TARGET_AVX2
#define T_AVX512 CSUB_TARGET_AVX512
#define T_VNNI CSUB_TARGET_AVX512VNNI
#define INLINE static CSUB_ALWAYS_INLINE
#endif

#define MR 8 /* output channels per microkernel tile (and per weight row block) */

static inline void qrange(int bits, int32_t *qmin, int32_t *qmax)
{
    *qmin = -(int32_t)(1u << (bits - 1));
    *qmax = (int32_t)(1u << (bits - 1)) - 1;
}

/* ------------------------------------------------ codes (int8_quant.c) */

/* One input's grid: u = round(clip(x / scale, lo, hi)) + zu, lo = qmin - zx, hi = qmax - zx. */
typedef struct {
    float scale, inv; /* inv = 1 / scale, used only when fast */
    int fast;         /* 1 / scale is a normal float: the multiply-and-check path applies */
    float lo, hi;
    int32_t zu;       /* zx - qmin */
} xgrid;

static inline xgrid make_xgrid(float scale, int32_t zx, int bits)
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

/* Quantizers: quant4 packs four channels x[j] (rows r < rows of n values
 * taken every `step` floats, row stride xs) into cells, row stride ds:
 *   dst[r*ds + i] = (u(x0) | u(x1) << 8 | u(x2) << 16 | u(x3) << 24) & chmask at [r*xs + i*step];
 * quant_bytes writes dst[i] = u(x[i]). Both return 1 if some x is NaN. */
typedef int (*quant4_fn)(const float *const x[4], int64_t n, int64_t step, int64_t rows, int64_t xs,
                         uint32_t *dst, int64_t ds, const xgrid *g, uint32_t chmask);
typedef int (*quantb_fn)(const float *x, int64_t n, uint8_t *dst, const xgrid *g);

/* ------------------------------------------------ product (int8_gemm.c) */

/* C[k, o] = (A[k] . B[o] + rowc[k] + colc[o]) * alpha[k] + beta[k] for rows
 * k < K, columns o < L, where A[k] . B[o] = sum over g of the 4-byte dot
 * product of the weight cell (k, g) and the activation cell B[off[g] + o];
 * then + res[k, o] (laid out as C) and the ReLU (NaN stays NaN) where asked:
 * the values of adding res to the stored C, then csub_relu_forward. */
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
    const float *res;        /* a residual laid out as C, or NULL */
    int relu;
    const uint16_t *vmask;   /* AVX-512 only: wide rows of Wph columns, the first Q real, stored
                              * straight to C[k * ldc + p * Q + q] (see wide_lanes), or NULL */
    int64_t Wph, Q;
    const char *pf, *pf_end; /* prefetched into L2 during the product (the next image), or NULL */
    int64_t pf_lines;        /* cache lines prefetched per 16 columns of a tile row block */
} job;

/* rows [kb0 * MR, kb1 * MR) (clipped to K) x columns [o0, o1) */
typedef void (*gemm_fn)(const job *jb, int64_t kb0, int64_t kb1, int64_t o0, int64_t o1);

/* The kernels of one instruction-set level. */
typedef struct {
    gemm_fn gemm;
    quant4_fn quant4;
    quantb_fn quantb;
    int wide_out;     /* the product stores wide rows straight to the output (job.vmask) */
} variant;

/* int8_quant.c: the quantizers of the instruction-set level in use */
void csub_int8_quantizers(quant4_fn *quant4, quantb_fn *quantb);
/* int8_gemm.c: the product of the instruction-set level in use; *wide_out: it
 * stores wide rows straight to the output (job.vmask) */
gemm_fn csub_int8_gemm(int *wide_out);
/* int8_quant.c: a weight's codes stored with taps = 1 regrouped for `taps` taps (NULL when out of memory) */
int8_t *csub_int8_regroup(const csub_qweight *qw, int64_t taps);

#endif /* CSUB_INT8_INTERNAL_H */
