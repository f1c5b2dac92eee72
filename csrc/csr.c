/* csr.c - masked sparse convolution and linear layers, forward and backward.
 *
 * The weight w[K, C*R*S] under a fixed top-k mask is compressed to CSR (row
 * pointers, column indices, values). Every product then touches only the kept
 * weights:
 *
 *   forward     y[n][k]  = sum over kept (k, c, r, s) of w * shifted x[n][c]
 *   input grad  dx[n][c] = sum over kept (k, c, r, s) of w * shifted dy[n][k]
 *   weight grad dw[k, c, r, s] += sum_n <dy[n][k], shifted x[n][c]>  (kept only;
 *               the others are zero by the method, so they are not computed)
 *
 * No im2col. Each image is laid out once as "phase planes": for stride st the
 * zero-padded input splits into the st x st sub-grids xpad[c][i*st + a][j*st + b],
 * each a plane of Hph x Wph values. In a plane, the window of kernel tap
 * (r, s) is a plain shift: output (p, q) reads plane (r % st, s % st) at
 * (p + r / st, q + s / st). Output rows are computed "wide", Wph values per
 * row instead of Q (the extra Wph - Q columns are discarded), so a kept weight
 * is one contiguous multiply-add of length P * Wph, in the order the hardware
 * streams best. A 1x1 convolution with stride 1 and no padding uses x itself.
 *
 * Forward and input gradient are gathers: each output row is accumulated in
 * registers over its kept weights (forward: the CSR row; input gradient: the
 * kept weights of one input channel and phase, a transposed index built per
 * call), in tiles of 128 outputs (eight 16-float vectors, one load per
 * multiply-add). The weight gradient is one dot product per kept weight and
 * image. A gather reuses no loaded value, so it runs at the speed of the cache
 * its inputs come from: the forward blocks its loops (fwd_layout) so that
 * they come from L1, output rows in bands, input channels in blocks, each
 * output channel's sum continued from one block to the next in a wide buffer
 * (the same sum, in the same order, as unblocked).
 *
 * Threads split the batch (each owns its planes and a partial weight gradient
 * reduced in thread order); a batch smaller than the thread count splits each
 * image instead: the forward by output rows (csub_row_band: each thread lays
 * out the plane rows of its own band, and the few below it, in a buffer of its
 * own, so that at inference a layer's input is mostly in the cache of the core
 * that wrote it and no plane line moves between cores), or by output
 * channels where the kept weights outweigh the planes (each thread then
 * streams only its own rows of the weight), the backward by rows of the
 * weight. Results depend on the thread count only through that
 * fixed reduction order. At inference the offsets of the kept weights into
 * the planes are computed once per weight (csub_conv2d_sparse_offsets) and
 * the buffers come from the caller (csub_conv2d_sparse_forward_planned).
 *
 * At inference a 3x3 or larger conv may instead run its kept weights as
 * compiled code (sparse_jit.c, csub_conv2d_sparse_forward_jit below): the same
 * planes and wide rows, each output channel's sum in a register.
 *
 * The inner kernels are plain C with GCC vector types, each compiled for
 * AVX-512, AVX2 + FMA and the baseline (CSUB_VARIANTS, internal.h), with
 * floating-point contraction on for this file: the AVX2 and AVX-512 variants
 * fuse each multiply-add, the baseline cannot, so they agree to rounding.
 *
 * Caveat: the discarded wide columns multiply real neighbouring inputs by a
 * zero output gradient, so an infinite input can turn into NaN in the weight
 * gradient where the dense path gives an infinity.
 */
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#include "internal.h"
#include "tile.h"

#if CSUB_X86
#include <immintrin.h>
#endif

CSUB_FP_CONTRACT_FAST /* fused multiply-add where the variant has FMA (internal.h) */

/* 16 and 8 floats; unaligned, may alias float data */
typedef float vf __attribute__((vector_size(64), aligned(4), may_alias));
typedef float vf8 __attribute__((vector_size(32), aligned(4), may_alias));

typedef int32_t vi __attribute__((vector_size(64)));
typedef int32_t vi8 __attribute__((vector_size(32)));

#define vload(p) (*(const vf *)(p))
#define vstore(p, v) (*(vf *)(p) = (v))

/* a's lanes <= 0 cleared when relu (tile.h) */
#define RELU_LANES(VT, VI, a, relu)        \
    do {                                   \
        if (relu) TILE_RELU(VT, VI, a);    \
    } while (0)

/* lanes of a vf summed in order (a macro: vector arguments would change the ABI in the baseline variant) */
#define HSUM(v, out)                                  \
    do {                                              \
        float hs_ = 0.0f;                             \
        for (int l_ = 0; l_ < 16; l_++) hs_ += (v)[l_]; \
        (out) = hs_;                                  \
    } while (0)

/* ------------------------------------------------------------------ CSR */

int64_t csub_csr_count(const uint8_t *mask, int64_t K, int64_t cols, int64_t *rowptr)
{
    rowptr[0] = 0;
    for (int64_t k = 0; k < K; k++) {
        const uint8_t *m = mask + k * cols;
        int64_t c = 0;
        for (int64_t j = 0; j < cols; j++) c += m[j] != 0;
        rowptr[k + 1] = rowptr[k] + c;
    }
    return rowptr[K];
}

void csub_csr_fill(const float *w, const uint8_t *mask, int64_t K, int64_t cols,
                   const int64_t *rowptr, int32_t *colidx, float *values)
{
    #pragma omp parallel for num_threads(csub_get_num_threads()) schedule(static) if (K * cols > CSUB_PAR_MIN)
    for (int64_t k = 0; k < K; k++) {
        const uint8_t *m = mask + k * cols;
        const float *wr = w + k * cols;
        int64_t t = rowptr[k], end = rowptr[k + 1];
        /* branch-free: write every entry at t, advance t only past kept ones
         * (the last row's tail is clipped so nothing is written beyond nnz) */
        int64_t j = 0;
        for (; j < cols && t < end - 1; j++) {
            colidx[t] = (int32_t)j;
            values[t] = wr[j];
            t += m[j] != 0;
        }
        for (; j < cols && t < end; j++)
            if (m[j]) {
                colidx[t] = (int32_t)j;
                values[t++] = wr[j];
            }
    }
}

/* -------------------------------------------------------------- kernels */

/* sp_gather_body over 16 n outputs (n <= 3, a constant where it is inlined) in one pass, then
 * (n = 0) over 8; named accumulators (an array of them is kept on the stack) */
static CSUB_ALWAYS_INLINE void sp_gather_tail(float *out, int n, const float *base, const int64_t *restrict off,
                                              const float *restrict v, int64_t T, float init, const float *r,
                                              int relu)
{
    if (n == 0) {
        vf8 a = (vf8){0} + init;
        if (r) a += *(const vf8 *)r;
        for (int64_t t = 0; t < T; t++) a += v[t] * *(const vf8 *)(base + off[t]);
        RELU_LANES(vf8, vi8, a, relu);
        *(vf8 *)out = a;
        return;
    }
    vf a0 = (vf){0} + init, a1 = a0, a2 = a0;
    if (r) {
        a0 += vload(r);
        if (n > 1) a1 += vload(r + 16);
        if (n > 2) a2 += vload(r + 32);
    }
    for (int64_t t = 0; t < T; t++) {
        const float *s = base + off[t];
        float vt = v[t];
        a0 += vt * vload(s);
        if (n > 1) a1 += vt * vload(s + 16);
        if (n > 2) a2 += vt * vload(s + 32);
    }
    RELU_LANES(vf, vi, a0, relu);
    RELU_LANES(vf, vi, a1, relu);
    RELU_LANES(vf, vi, a2, relu);
    vstore(out, a0);
    if (n > 1) vstore(out + 16, a1);
    if (n > 2) vstore(out + 32, a2);
}

/* out[i] = init (+ r[i] when r) + sum_t v[t] * base[off[t] + i], i in [0, L), the sum in order of t
 * (r may be out itself: with init 0, a sum continued), then the ReLU where relu */
static CSUB_ALWAYS_INLINE void sp_gather_body(float *out, int64_t L, const float *base,
                                              const int64_t *restrict off, const float *restrict v, int64_t T,
                                              float init, const float *r, int relu)
{
    int64_t i0 = 0;
    /* 128 outputs as eight 16-float vectors: one load per multiply-add, the
     * shifted windows unaligned (from L1 a 16-float load that crosses a cache
     * line still moves more per cycle than two 8-float ones) */
    for (; i0 + 128 <= L; i0 += 128) {
        vf a[8];
        for (int j = 0; j < 8; j++) {
            a[j] = (vf){0} + init;
            if (r) a[j] += vload(r + i0 + 16 * j);
        }
        for (int64_t t = 0; t < T; t++) {
            const float *s = base + off[t] + i0;
            float vt = v[t];
            a[0] += vt * vload(s);
            a[1] += vt * vload(s + 16);
            a[2] += vt * vload(s + 32);
            a[3] += vt * vload(s + 48);
            a[4] += vt * vload(s + 64);
            a[5] += vt * vload(s + 80);
            a[6] += vt * vload(s + 96);
            a[7] += vt * vload(s + 112);
        }
        for (int j = 0; j < 8; j++) {
            RELU_LANES(vf, vi, a[j], relu);
            vstore(out + i0 + 16 * j, a[j]);
        }
    }
    /* the rest, under 128 outputs: 64 as four 16-float vectors, then up to three in one pass, one
     * 8-float vector, up to seven single floats (the same sums, lane by lane); named accumulators
     * (an array of them was kept on the stack) */
    if (i0 + 64 <= L) {
        vf a0 = (vf){0} + init, a1 = a0, a2 = a0, a3 = a0;
        if (r) {
            const float *q = r + i0;
            a0 += vload(q), a1 += vload(q + 16), a2 += vload(q + 32), a3 += vload(q + 48);
        }
        for (int64_t t = 0; t < T; t++) {
            const float *s = base + off[t] + i0;
            float vt = v[t];
            a0 += vt * vload(s);
            a1 += vt * vload(s + 16);
            a2 += vt * vload(s + 32);
            a3 += vt * vload(s + 48);
        }
        float *o = out + i0;
        RELU_LANES(vf, vi, a0, relu);
        RELU_LANES(vf, vi, a1, relu);
        RELU_LANES(vf, vi, a2, relu);
        RELU_LANES(vf, vi, a3, relu);
        vstore(o, a0), vstore(o + 16, a1), vstore(o + 32, a2), vstore(o + 48, a3);
        i0 += 64;
    }
    switch ((L - i0) / 16) {
    case 3: sp_gather_tail(out + i0, 3, base + i0, off, v, T, init, r ? r + i0 : NULL, relu), i0 += 48; break;
    case 2: sp_gather_tail(out + i0, 2, base + i0, off, v, T, init, r ? r + i0 : NULL, relu), i0 += 32; break;
    case 1: sp_gather_tail(out + i0, 1, base + i0, off, v, T, init, r ? r + i0 : NULL, relu), i0 += 16; break;
    default: break;
    }
    if (i0 + 8 <= L) {
        sp_gather_tail(out + i0, 0, base + i0, off, v, T, init, r ? r + i0 : NULL, relu);
        i0 += 8;
    }
    int64_t n1 = L - i0;
    if (n1 > 0) {
        float a[7];
        for (int64_t i = 0; i < n1; i++) a[i] = init + (r ? r[i0 + i] : 0.0f);
        for (int64_t t = 0; t < T; t++) {
            const float *s = base + off[t] + i0;
            float vt = v[t];
            for (int64_t i = 0; i < n1; i++) a[i] += vt * s[i];
        }
        for (int64_t i = 0; i < n1; i++) out[i0 + i] = relu && a[i] <= 0.0f ? 0.0f : a[i];
    }
}
CSUB_VARIANTS(sp_gather, (float *out, int64_t L, const float *base, const int64_t *restrict off,
                          const float *restrict v, int64_t T, float init, const float *r, int relu),
              (out, L, base, off, v, T, init, r, relu))

/* sp_gather with kept weight t reading max(0, base[off[t] + i] ka[t] + kb[t]) (csub_pre: a batch norm
 * and its ReLU applied to the input as it is read; the ReLU as the norm's: a NaN stays NaN), in 64- and
 * 16-float vectors, then single floats. PRE_MADD: a += vt * the transformed input vector at s. */
#define PRE_MADD(a, s, t)                          \
    do {                                            \
        vf u_ = vload(s) * ka[t] + kb[t];           \
        TILE_RELU(vf, vi, u_);                      \
        (a) += vt * u_;                             \
    } while (0)
static CSUB_ALWAYS_INLINE void sp_gather_pre_portable_body(float *out, int64_t L, const float *base,
                                                           const int64_t *restrict off, const float *restrict v,
                                                           const float *restrict ka, const float *restrict kb,
                                                           int64_t T, float init, const float *r, int relu)
{
    int64_t i0 = 0;
    for (; i0 + 64 <= L; i0 += 64) {
        vf a0 = (vf){0} + init, a1 = a0, a2 = a0, a3 = a0;
        if (r) {
            const float *q = r + i0;
            a0 += vload(q), a1 += vload(q + 16), a2 += vload(q + 32), a3 += vload(q + 48);
        }
        for (int64_t t = 0; t < T; t++) {
            const float *s = base + off[t] + i0;
            float vt = v[t];
            PRE_MADD(a0, s, t);
            PRE_MADD(a1, s + 16, t);
            PRE_MADD(a2, s + 32, t);
            PRE_MADD(a3, s + 48, t);
        }
        RELU_LANES(vf, vi, a0, relu);
        RELU_LANES(vf, vi, a1, relu);
        RELU_LANES(vf, vi, a2, relu);
        RELU_LANES(vf, vi, a3, relu);
        float *o = out + i0;
        vstore(o, a0), vstore(o + 16, a1), vstore(o + 32, a2), vstore(o + 48, a3);
    }
    for (; i0 + 16 <= L; i0 += 16) {
        vf a0 = (vf){0} + init;
        if (r) a0 += vload(r + i0);
        for (int64_t t = 0; t < T; t++) {
            float vt = v[t];
            PRE_MADD(a0, base + off[t] + i0, t);
        }
        RELU_LANES(vf, vi, a0, relu);
        vstore(out + i0, a0);
    }
    for (; i0 < L; i0++) {
        float a = init + (r ? r[i0] : 0.0f);
        for (int64_t t = 0; t < T; t++) {
            float u = base[off[t] + i0] * ka[t] + kb[t];
            a += v[t] * (u <= 0.0f ? 0.0f : u);
        }
        out[i0] = relu && a <= 0.0f ? 0.0f : a;
    }
}
#undef PRE_MADD
CSUB_VARIANTS(sp_gather_pre_portable, (float *out, int64_t L, const float *base, const int64_t *restrict off,
                                       const float *restrict v, const float *restrict ka, const float *restrict kb,
                                       int64_t T, float init, const float *r, int relu),
              (out, L, base, off, v, ka, kb, T, init, r, relu))

#if CSUB_X86
/* sp_gather_pre_portable_body, AVX-512: per input vector a load, the transform's multiply-add, a max (vmaxps
 * returns its second operand where either is NaN: a NaN stays, as the norm's ReLU keeps it; -0 for -0,
 * where the norm writes +0, the same sums) and the product's multiply-add: three vector operations where
 * the portable form's compare and blend took four or five */
CSUB_TARGET_AVX512 static void sp_gather_pre_avx512(float *out, int64_t L, const float *base,
                                                    const int64_t *restrict off, const float *restrict v,
                                                    const float *restrict ka, const float *restrict kb, int64_t T,
                                                    float init, const float *r, int relu)
{
    const __m512 zero = _mm512_setzero_ps();
#define PRE_MADD512(a, p) \
    (a) = _mm512_fmadd_ps(w, _mm512_max_ps(zero, _mm512_fmadd_ps(_mm512_loadu_ps(p), sa, sb)), (a))
#define PRE_STORE512(p, a)                                                                                    \
    do {                                                                                                      \
        __m512 o_ = (a);                                                                                      \
        if (relu) o_ = _mm512_mask_mov_ps(o_, _mm512_cmp_ps_mask(o_, zero, _CMP_LE_OQ), zero); /* NaN stays */ \
        _mm512_storeu_ps((p), o_);                                                                            \
    } while (0)
    int64_t i0 = 0;
    for (; i0 + 64 <= L; i0 += 64) {
        __m512 a0 = _mm512_set1_ps(init), a1 = a0, a2 = a0, a3 = a0;
        if (r) {
            a0 = _mm512_add_ps(a0, _mm512_loadu_ps(r + i0)), a1 = _mm512_add_ps(a1, _mm512_loadu_ps(r + i0 + 16));
            a2 = _mm512_add_ps(a2, _mm512_loadu_ps(r + i0 + 32)), a3 = _mm512_add_ps(a3, _mm512_loadu_ps(r + i0 + 48));
        }
        for (int64_t t = 0; t < T; t++) {
            const float *p = base + off[t] + i0;
            __m512 sa = _mm512_set1_ps(ka[t]), sb = _mm512_set1_ps(kb[t]), w = _mm512_set1_ps(v[t]);
            PRE_MADD512(a0, p);
            PRE_MADD512(a1, p + 16);
            PRE_MADD512(a2, p + 32);
            PRE_MADD512(a3, p + 48);
        }
        PRE_STORE512(out + i0, a0);
        PRE_STORE512(out + i0 + 16, a1);
        PRE_STORE512(out + i0 + 32, a2);
        PRE_STORE512(out + i0 + 48, a3);
    }
    for (; i0 + 16 <= L; i0 += 16) {
        __m512 a0 = _mm512_set1_ps(init);
        if (r) a0 = _mm512_add_ps(a0, _mm512_loadu_ps(r + i0));
        for (int64_t t = 0; t < T; t++) {
            __m512 sa = _mm512_set1_ps(ka[t]), sb = _mm512_set1_ps(kb[t]), w = _mm512_set1_ps(v[t]);
            PRE_MADD512(a0, base + off[t] + i0);
        }
        PRE_STORE512(out + i0, a0);
    }
    if (i0 < L) { /* the last values, fewer than a vector: masked (a masked load never faults) */
        __mmask16 mk = (__mmask16)((1u << (L - i0)) - 1);
        __m512 a0 = _mm512_set1_ps(init);
        if (r) a0 = _mm512_add_ps(a0, _mm512_maskz_loadu_ps(mk, r + i0));
        for (int64_t t = 0; t < T; t++) {
            __m512 sa = _mm512_set1_ps(ka[t]), sb = _mm512_set1_ps(kb[t]), w = _mm512_set1_ps(v[t]);
            __m512 u = _mm512_max_ps(zero, _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, base + off[t] + i0), sa, sb));
            a0 = _mm512_fmadd_ps(w, u, a0);
        }
        if (relu) a0 = _mm512_mask_mov_ps(a0, _mm512_cmp_ps_mask(a0, zero, _CMP_LE_OQ), zero);
        _mm512_mask_storeu_ps(out + i0, mk, a0);
    }
#undef PRE_MADD512
#undef PRE_STORE512
}
#endif

/* sp_gather_pre_portable_body, or its AVX-512 form */
static void sp_gather_pre(float *out, int64_t L, const float *base, const int64_t *restrict off, const float *restrict v,
                          const float *restrict ka, const float *restrict kb, int64_t T, float init, const float *r,
                          int relu)
{
#if CSUB_X86
    if (csub_isa_level() >= CSUB_ISA_AVX512) {
        sp_gather_pre_avx512(out, L, base, off, v, ka, kb, T, init, r, relu);
        return;
    }
#endif
    sp_gather_pre_portable(out, L, base, off, v, ka, kb, T, init, r, relu);
}

/* s + sum_{i in [i0, L)} a[i] b[i], i0 + 16 > L */
static inline float dot_tail(const float *a, const float *b, int64_t i0, int64_t L, float s)
{
    if (i0 + 8 <= L) {
        vf8 p = *(const vf8 *)(a + i0) * *(const vf8 *)(b + i0);
        for (int l = 0; l < 8; l++) s += p[l];
        i0 += 8;
    }
    for (int64_t i = i0; i < L; i++) s += a[i] * b[i];
    return s;
}

/* dv[t] += <a, base + off[t]> over [0, L), four kept weights at a time sharing the loads of a */
static CSUB_ALWAYS_INLINE void sp_dots_body(float *restrict dv, const float *a, int64_t L, const float *base,
                                            const int64_t *restrict off, int64_t T)
{
    int64_t L16 = L / 16 * 16, t = 0;
    for (; t + 4 <= T; t += 4) {
        const float *b0 = base + off[t], *b1 = base + off[t + 1], *b2 = base + off[t + 2], *b3 = base + off[t + 3];
        vf s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
        for (int64_t i = 0; i < L16; i += 16) {
            vf va = vload(a + i);
            s0 += va * vload(b0 + i);
            s1 += va * vload(b1 + i);
            s2 += va * vload(b2 + i);
            s3 += va * vload(b3 + i);
        }
        float h0, h1, h2, h3;
        HSUM(s0, h0);
        HSUM(s1, h1);
        HSUM(s2, h2);
        HSUM(s3, h3);
        dv[t] += dot_tail(a, b0, L16, L, h0);
        dv[t + 1] += dot_tail(a, b1, L16, L, h1);
        dv[t + 2] += dot_tail(a, b2, L16, L, h2);
        dv[t + 3] += dot_tail(a, b3, L16, L, h3);
    }
    for (; t < T; t++) {
        const float *b0 = base + off[t];
        vf s0 = {0}, s1 = {0};
        int64_t i = 0;
        for (; i + 32 <= L16; i += 32) {
            s0 += vload(a + i) * vload(b0 + i);
            s1 += vload(a + i + 16) * vload(b0 + i + 16);
        }
        for (; i < L16; i += 16) s0 += vload(a + i) * vload(b0 + i);
        float h0;
        s0 += s1;
        HSUM(s0, h0);
        dv[t] += dot_tail(a, b0, L16, L, h0);
    }
}
CSUB_VARIANTS(sp_dots, (float *restrict dv, const float *a, int64_t L, const float *base, const int64_t *restrict off,
                        int64_t T), (dv, a, L, base, off, T))

/* ------------------------------------------------------------ geometry */

typedef struct {
    int64_t N, C, H, W, K, R, S, st, pad, P, Q;
    int64_t sa, sb;      /* phases used along each axis: min(st, R), min(st, S) */
    int64_t Hph, Wph;    /* plane size: P + (R-1)/st rows, Q + (S-1)/st columns */
    int64_t plane;       /* Hph * Wph */
    int64_t nplanes;     /* C * sa * sb */
    int64_t L;           /* P * Wph: one wide output row */
    int64_t offmax;      /* largest tap shift ((R-1)/st) * Wph + (S-1)/st */
    int64_t Ld;          /* row length of the zero-margined output gradient: offmax + plane */
    int direct_x;        /* the planes are x[n] itself (1x1, stride 1, no padding) */
    int direct_y;        /* wide rows are the real rows (Wph == Q) */
    int direct_dy;       /* dy[n] serves as the margined gradient (no shift, no wide columns) */
    csub_pre pre;        /* the forward's input transform (csub_pre), all NULL for none */
    const csub_rows *rows; /* the input's rows where a forward reads a band of them (the runtime's row bands),
                            * else NULL: the image */
    int64_t yps, yr0;    /* the output's planes: floats apart (P Q), and the first row they hold (0) */
} geom;

static geom make_geom(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S,
                      int64_t st, int64_t pad)
{
    geom g;
    g.N = N, g.C = C, g.H = H, g.W = W, g.K = K, g.R = R, g.S = S, g.st = st, g.pad = pad;
    g.P = csub_conv_out_size(H, R, st, pad);
    g.Q = csub_conv_out_size(W, S, st, pad);
    g.sa = st < R ? st : R;
    g.sb = st < S ? st : S;
    g.Hph = g.P + (R - 1) / st;
    g.Wph = g.Q + (S - 1) / st;
    g.plane = g.Hph * g.Wph;
    g.nplanes = C * g.sa * g.sb;
    g.L = g.P * g.Wph;
    g.offmax = ((R - 1) / st) * g.Wph + (S - 1) / st;
    g.Ld = g.offmax + g.plane;
    g.direct_x = R == 1 && S == 1 && st == 1 && pad == 0;
    g.direct_y = g.Wph == g.Q;
    g.direct_dy = g.offmax == 0 && g.direct_y && g.Hph == g.P;
    g.pre = (csub_pre){NULL, NULL, NULL, NULL};
    g.rows = NULL;
    g.yps = g.P * g.Q;
    g.yr0 = 0;
    return g;
}

/* Input row h (in [0, H)) of channel c: of the image xn, or of g->rows (NULL: not held, read as zeros:
 * a row past those the outputs read) */
static inline const float *input_row(const geom *g, const float *xn, int64_t c, int64_t h)
{
    return g->rows ? csub_rows_at(g->rows, c, h, g->W) : xn + (c * g->H + h) * g->W;
}

/* For every weight column j = (c * R + r) * S + s: tab[2j] = its plane index
 * (c * sa + r % st) * sb + s % st, tab[2j + 1] = its shift (r / st) * Wph + s / st.
 * Built by loops, so that no kept weight pays for divisions. NULL when out of memory. */
static int64_t *tap_table(const geom *g)
{
    int64_t *tab = malloc(sizeof(int64_t) * 2 * (size_t)(g->C * g->R * g->S));
    if (!tab) return NULL;
    int64_t j = 0;
    for (int64_t c = 0; c < g->C; c++)
        for (int64_t r = 0; r < g->R; r++)
            for (int64_t s = 0; s < g->S; s++, j++) {
                tab[2 * j] = (c * g->sa + r % g->st) * g->sb + s % g->st;
                tab[2 * j + 1] = (r / g->st) * g->Wph + s / g->st;
            }
    return tab;
}

/* The columns of column phase b that read x (csub_plane_cols) */
static void valid_cols(const geom *g, int64_t b, int64_t *j0, int64_t *j1)
{
    csub_plane_cols(g->st, b, g->pad, g->W, g->Wph, j0, j1);
}

/* dst[j] = src[2 j], j < n: the stride-2 gather of a plane row (vectorised with permutes) */
static CSUB_ALWAYS_INLINE void copy_even_body(float *restrict dst, const float *restrict src, int64_t n)
{
    for (int64_t j = 0; j < n; j++) dst[j] = src[2 * j];
}
CSUB_VARIANTS(copy_even, (float *restrict dst, const float *restrict src, int64_t n), (dst, src, n))


/* The loop nest of build_planes: ROW(row, xr, j0, j1) lays out plane row `row` from xr (row[j] =
 * xr[j st] for j in [j0, j1), zeros elsewhere), xr NULL for a row of padding (all zeros) */
#define PLANE_ROWS(g, xn, planes, c0, c1, i0, i1, ROW)                                               \
    for (int64_t c = (c0); c < (c1); c++)                                                            \
        for (int64_t a = 0; a < (g)->sa; a++)                                                        \
            for (int64_t b = 0; b < (g)->sb; b++) {                                                  \
                float *pl = (planes) + ((c * (g)->sa + a) * (g)->sb + b) * (g)->plane;               \
                int64_t j0, j1;                                                                      \
                valid_cols((g), b, &j0, &j1);                                                        \
                for (int64_t i = (i0); i < (i1); i++) {                                              \
                    int64_t h = i * (g)->st + a - (g)->pad;                                          \
                    const float *xr = h < 0 || h >= (g)->H ? NULL : input_row((g), (xn), c, h);      \
                    ROW(pl + i * (g)->Wph, xr ? xr + b - (g)->pad : NULL, j0, j1);                   \
                }                                                                                    \
            }

#if CSUB_X86
#define PLANE_STEPS 8 /* 16-column steps of a plane row whose masks build_planes_avx512 keeps: Wph <= 128 */

/* build_planes at stride 1 or 2, AVX-512. Rows of up to PLANE_STEPS vectors: each column phase's
 * masks (csub_plane_row_avx512's, the same for every row) made once, then per row and vector one or two
 * masked loads, a permute at stride 2, one masked store (cPreResNet20's plane rows are one to three
 * vectors, and making the masks for every vector took most of the time: its stride-2 3x3 convs
 * at batch 1, 90 % sparse, ran twice as long as its stride-1 ones of as many multiply-adds).
 * Longer rows by csub_plane_row_avx512. A padding row: zeros, nothing loaded. */
CSUB_TARGET_AVX512 static void build_planes_avx512(const geom *g, const float *xn, float *planes, int64_t c0,
                                                   int64_t c1, int64_t i0, int64_t i1)
{
    int64_t ns = (g->Wph + 15) / 16, st = g->st;
    if (ns > PLANE_STEPS) {
#define ROW_AVX512(row, xr, j0, j1) \
    csub_plane_row_avx512(row, (xr) ? (xr) : (row), g->Wph, (xr) ? (j0) : 0, (xr) ? (j1) : 0, g->st)
        PLANE_ROWS(g, xn, planes, c0, c1, i0, i1, ROW_AVX512)
#undef ROW_AVX512
        return;
    }
    const __m512i ev = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    __mmask16 lo[2][PLANE_STEPS], hi[2][PLANE_STEPS], out[PLANE_STEPS]; /* [column phase b][step] */
    for (int64_t k = 0; k < ns; k++)
        out[k] = g->Wph - 16 * k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (g->Wph - 16 * k)) - 1);
    for (int64_t b = 0; b < g->sb; b++) {
        int64_t j0, j1;
        valid_cols(g, b, &j0, &j1);
        for (int64_t k = 0; k < ns; k++) csub_plane_masks(16 * k, j0, j1, st, &lo[b][k], &hi[b][k]);
    }
    for (int64_t c = c0; c < c1; c++)
        for (int64_t a = 0; a < g->sa; a++)
            for (int64_t b = 0; b < g->sb; b++) {
                float *pl = planes + ((c * g->sa + a) * g->sb + b) * g->plane;
                for (int64_t i = i0; i < i1; i++) {
                    int64_t h = i * st + a - g->pad;
                    float *row = pl + i * g->Wph;
                    const float *xr = h < 0 || h >= g->H ? NULL : input_row(g, xn, c, h);
                    if (!xr) {
                        for (int64_t k = 0; k < ns; k++)
                            _mm512_mask_storeu_ps(row + 16 * k, out[k], _mm512_setzero_ps());
                        continue;
                    }
                    xr += b - g->pad; /* read at the valid columns only */
                    for (int64_t k = 0; k < ns; k++) {
                        __m512 v = st == 1 ? _mm512_maskz_loadu_ps(lo[b][k], xr + 16 * k)
                                           : _mm512_permutex2var_ps(_mm512_maskz_loadu_ps(lo[b][k], xr + 32 * k), ev,
                                                                    _mm512_maskz_loadu_ps(hi[b][k], xr + 32 * k + 16));
                        _mm512_mask_storeu_ps(row + 16 * k, out[k], v);
                    }
                }
            }
}
#endif

/* One plane row, portably: row[j] = xr[j st] for j in [j0, j1), zeros elsewhere; xr NULL: zeros */
static void plane_row(float *row, const float *xr, int64_t Wph, int64_t j0, int64_t j1, int64_t st)
{
    if (!xr) {
        memset(row, 0, sizeof(float) * Wph);
        return;
    }
    for (int64_t j = 0; j < j0; j++) row[j] = 0.0f;
    if (st == 1) {
        if (j1 > j0) memcpy(row + j0, xr + j0, sizeof(float) * (j1 - j0));
    } else if (st == 2) {
        copy_even(row + j0, xr + 2 * j0, j1 - j0);
    } else {
        for (int64_t j = j0; j < j1; j++) row[j] = xr[j * st];
    }
    for (int64_t j = j1; j < Wph; j++) row[j] = 0.0f;
}

/* planes[(c*sa + a)*sb + b][i*Wph + j] = xpad[c][i*st + a][j*st + b] (0 outside x),
 * channels [c0, c1), plane rows [i0, i1) */
/* The input transform (csub_pre) on plane rows [i0, i1) of channels [c0, c1), in place: without padding
 * every value of a plane is one of x */
static CSUB_ALWAYS_INLINE void pre_planes_body(const geom *g, float *planes, int64_t c0, int64_t c1, int64_t i0,
                                               int64_t i1)
{
    int64_t n = (i1 - i0) * g->Wph;
    for (int64_t c = c0; c < c1; c++) {
        float a = g->pre.a[c], b = g->pre.b[c];
        for (int64_t ph = 0; ph < g->sa * g->sb; ph++) {
            float *p = planes + (c * g->sa * g->sb + ph) * g->plane + i0 * g->Wph;
            for (int64_t i = 0; i < n; i++) {
                float u = p[i] * a + b;
                p[i] = u <= 0.0f ? 0.0f : u;
            }
        }
    }
}
CSUB_VARIANTS(pre_planes, (const geom *g, float *planes, int64_t c0, int64_t c1, int64_t i0, int64_t i1),
              (g, planes, c0, c1, i0, i1))

static void build_planes(const geom *g, const float *xn, float *planes, int64_t c0, int64_t c1,
                         int64_t i0, int64_t i1)
{
#if CSUB_X86
    if ((g->st == 1 || g->st == 2) && g->Wph < INT32_MAX - 16 && csub_isa_level() >= CSUB_ISA_AVX512) {
        build_planes_avx512(g, xn, planes, c0, c1, i0, i1);
        if (g->pre.a) pre_planes(g, planes, c0, c1, i0, i1);
        return;
    }
#endif
#define ROW_PORTABLE(row, xr, j0, j1) plane_row(row, xr, g->Wph, j0, j1, g->st)
    PLANE_ROWS(g, xn, planes, c0, c1, i0, i1, ROW_PORTABLE)
#undef ROW_PORTABLE
    if (g->pre.a) pre_planes(g, planes, c0, c1, i0, i1);
}

/* dyz[k][0, Ld) = zeros, then dy[n][k] in wide rows at offmax, wide columns zero; rows [k0, k1) */
static void build_dyz(const geom *g, const float *dyn, float *dyz, int64_t k0, int64_t k1)
{
    int64_t P = g->P, Q = g->Q, Wph = g->Wph, PQ = P * Q;
    for (int64_t k = k0; k < k1; k++) {
        float *d = dyz + k * g->Ld;
        const float *src = dyn + k * PQ;
        memset(d, 0, sizeof(float) * g->offmax);
        d += g->offmax;
        for (int64_t p = 0; p < P; p++) {
            memcpy(d + p * Wph, src + p * Q, sizeof(float) * Q);
            for (int64_t q = Q; q < Wph; q++) d[p * Wph + q] = 0.0f;
        }
        memset(d + P * Wph, 0, sizeof(float) * (g->plane - P * Wph));
    }
}

/* dx[n][c][h][w] = the plane value of padded position (h + pad, w + pad), 0 where no
 * plane covers it (inputs no output reads), channels [c0, c1) */
static void unphase(const geom *g, const float *dxph, float *dxn, int64_t c0, int64_t c1)
{
    int64_t st = g->st, pad = g->pad, H = g->H, W = g->W, Wph = g->Wph;
    if (st > 1 || g->Wph < W + pad || g->Hph < H + pad) /* some inputs are read by no plane */
        memset(dxn + c0 * H * W, 0, sizeof(float) * (size_t)((c1 - c0) * H * W));
    for (int64_t c = c0; c < c1; c++)
        for (int64_t a = 0; a < g->sa; a++)
            for (int64_t b = 0; b < g->sb; b++) {
                const float *pl = dxph + ((c * g->sa + a) * g->sb + b) * g->plane;
                int64_t j0, j1;
                valid_cols(g, b, &j0, &j1);
                for (int64_t i = 0; i < g->Hph; i++) {
                    int64_t h = i * st + a - pad;
                    if (h < 0 || h >= H) continue;
                    const float *row = pl + i * Wph;
                    float *out = dxn + (c * H + h) * W + b - pad; /* column j writes out[j * st] */
                    if (st == 1) {
                        if (j1 > j0) memcpy(out + j0, row + j0, sizeof(float) * (j1 - j0));
                    } else {
                        for (int64_t j = j0; j < j1; j++) out[j * st] = row[j];
                    }
                }
            }
}

/* [lo, hi) of thread t's share of n items split in T contiguous blocks */
static void split(int64_t n, int t, int T, int64_t *lo, int64_t *hi)
{
    *lo = n * t / T;
    *hi = n * (t + 1) / T;
}

/* ------------------------------------------------------------- forward */

/* The forward's blocking. The gather reads each plane value once per kept weight
 * and output channel, with no reuse in registers, so it runs at the speed of the
 * cache the planes come from. The output rows go in bands of B rows, the input
 * channels in blocks of Cb, so that the plane rows one (band, channel block)
 * reads fit in L1 while Kc output channels at a time gather from them, each
 * continuing its sum in a wide buffer (Kc wide rows of Lw floats, L2) from one
 * channel block to the next. The kept weights of a CSR row are sorted by
 * column, so a channel block's are a contiguous run of it, and every output is
 * the same sum in the same order as unblocked. */
typedef struct {
    int64_t B, Cb, ncb, Lw, Kc;
} flay;

#define FWD_MIN_L 128         /* outputs of a band's wide row, at least (one 128-output tile) */
#define FWD_L1_FLOATS 8192    /* plane values of one (band, channel block), at most: 32 KB */
#define FWD_WIDE_FLOATS 16384 /* one thread's wide rows: 64 KB */
#define FWD_MIN_T 16          /* kept weights of a row in a channel block, on average, at least */

/* The blocking of a forward with nnz kept weights (nnz < 0: unknown, the buffers' sizes only). */
static flay fwd_layout(const geom *g, int64_t nnz)
{
    flay f;
    int64_t halo = g->Hph - g->P, ph = g->sa * g->sb;
    f.B = (FWD_MIN_L + g->Wph - 1) / g->Wph; /* rows for a wide band of FWD_MIN_L outputs */
    /* one band where the rows are the real ones (1x1: no rows shared between bands), or where
     * all the planes fit in L2 several times over (few kept weights a row: the sweep costs more) */
    if (f.B > g->P || g->direct_y || g->nplanes * g->plane <= 4 * FWD_L1_FLOATS) f.B = g->P;
    f.Cb = FWD_L1_FLOATS / (ph * (f.B + halo) * g->Wph);
    if (nnz >= 0) { /* blocks of FWD_MIN_T kept weights a row at least, on average */
        int64_t cb_t = (int64_t)((double)FWD_MIN_T * (double)g->C * (double)g->K / (double)(nnz > 0 ? nnz : 1)) + 1;
        if (f.Cb < cb_t) f.Cb = cb_t;
    }
    if (f.Cb < 1) f.Cb = 1;
    if (f.Cb > g->C || g->C * ph * (f.B + halo) * g->Wph <= 2 * FWD_L1_FLOATS) f.Cb = g->C; /* (small: one block) */
    f.ncb = (g->C + f.Cb - 1) / f.Cb;
    f.Cb = (g->C + f.ncb - 1) / f.ncb; /* blocks of even size */
    f.Lw = (f.B * g->Wph + 15) / 16 * 16;
    f.Kc = FWD_WIDE_FLOATS / f.Lw;
    if (f.Kc < 1) f.Kc = 1;
    return f;
}

/* cbp[k * ncb + j] = the first kept weight of CSR row k in channel block j or later, cbp[K * ncb] = nnz
 * (so that row k's weights of block j are [cbp[k * ncb + j], cbp[k * ncb + j + 1]), and one block is
 * rowptr itself; foff: plane offsets, monotone within a row; a channel has ph = sa * sb planes) */
static void fwd_block_ptrs(const geom *g, const flay *f, const int64_t *rowptr, const int64_t *foff, int64_t *cbp)
{
    int64_t blk = f->Cb * g->sa * g->sb * g->plane; /* offsets of one channel block */
    for (int64_t k = 0; k < g->K; k++) {
        int64_t *p = cbp + k * f->ncb, t = rowptr[k], end = rowptr[k + 1];
        for (int64_t j = 0; j < f->ncb; j++) {
            p[j] = t;
            while (t < end && foff[t] < (j + 1) * blk) t++;
        }
    }
    cbp[g->K * f->ncb] = rowptr[g->K];
}

#if CSUB_X86
/* store_rows (below), AVX-512: each output row by vectors of 16, the last masked (the same
 * operations, in the same order: the same bits) */
CSUB_TARGET_AVX512 static void store_rows_avx512(const geom *g, const float *wide, int64_t ld, const float *resn,
                                                 int relu, float *yn, int64_t k0, int64_t k1, int64_t p0, int64_t p1)
{
    int64_t Q = g->Q, Wph = g->Wph, ps = g->yps;
    const __m512 zero = _mm512_setzero_ps();
    for (int64_t k = k0; k < k1; k++) {
        const float *wk = wide + (k - k0) * ld, *r = resn ? resn + k * ps : NULL;
        float *out = yn + k * ps;
        for (int64_t p = p0; p < p1; p++) {
            const float *src = wk + (p - p0) * Wph;
            int64_t o = (p - g->yr0) * Q;
            for (int64_t q = 0; q < Q; q += 16) {
                __mmask16 m = Q - q >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (Q - q)) - 1);
                __m512 v = _mm512_maskz_loadu_ps(m, src + q);
                if (r) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, r + o + q));
                if (relu) v = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, zero, _CMP_LE_OQ), zero); /* NaN stays */
                _mm512_mask_storeu_ps(out + o + q, m, v);
            }
        }
    }
}
#endif

/* y[n][k] rows [p0, p1) = relu?(the wide rows (channel k - k0 at wide + (k - k0) * ld, row p at
 * (p - p0) * Wph) (+ res[n][k])), channels [k0, k1); y's and res's planes g->yps floats apart, holding
 * rows from g->yr0 on */
static void store_rows(const geom *g, const float *wide, int64_t ld, const float *resn, int relu, float *yn,
                       int64_t k0, int64_t k1, int64_t p0, int64_t p1)
{
#if CSUB_X86
    if (csub_isa_level() >= CSUB_ISA_AVX512) {
        store_rows_avx512(g, wide, ld, resn, relu, yn, k0, k1, p0, p1);
        return;
    }
#endif
    int64_t Q = g->Q, Wph = g->Wph, ps = g->yps;
    for (int64_t k = k0; k < k1; k++) {
        const float *wk = wide + (k - k0) * ld, *rk = resn ? resn + k * ps : NULL;
        float *out = yn + k * ps;
        for (int64_t p = p0; p < p1; p++) {
            const float *src = wk + (p - p0) * Wph, *r = rk ? rk + (p - g->yr0) * Q : NULL;
            float *o = out + (p - g->yr0) * Q;
            if (r && relu) /* one branch-free loop per case, so that each vectorises */
                for (int64_t q = 0; q < Q; q++) {
                    float v = src[q] + r[q];
                    o[q] = v <= 0.0f ? 0.0f : v;
                }
            else if (r)
                for (int64_t q = 0; q < Q; q++) o[q] = src[q] + r[q];
            else if (relu)
                for (int64_t q = 0; q < Q; q++) o[q] = src[q] <= 0.0f ? 0.0f : src[q];
            else
                memcpy(o, src, sizeof(float) * Q);
        }
    }
}

/* One image's output rows [p0, p1) of output channels [k0, k1), k1 - k0 <= Kc:
 * y[n][k] = relu?(b[k] + sum over row k of w * shifted planes (+ res[n][k])).
 * Where the wide rows are the real ones (direct_y), y itself holds the sums, the residual
 * first, the ReLU on each row once its last block is summed (still in L1); else the wide
 * buffer (Kc * Lw floats) does, the residual and the ReLU applied as y is written; either
 * way the same order for every thread count. round: the wide rows may be computed up to a
 * multiple of 16 floats (the planes have slack past their end). */
static void fwd_block(const geom *g, const flay *f, const int64_t *cbp, const int64_t *foff,
                      const float *values, const float *b, const float *planes, const float *resn, int relu,
                      float *yn, float *wide, int round, int64_t k0, int64_t k1, int64_t p0, int64_t p1)
{
    int64_t PQ = g->P * g->Q, Q = g->Q, Wph = g->Wph, nb = f->ncb;
    int64_t L = (p1 - p0) * Wph;
    if (round && !g->direct_y) L = (L + 15) / 16 * 16;
    const float *base = planes + p0 * Wph;
    for (int64_t j = 0; j < f->ncb; j++)
        for (int64_t k = k0; k < k1; k++) {
            int64_t t0 = cbp[k * nb + j], T = cbp[k * nb + j + 1] - t0;
            float *wk = g->direct_y ? yn + k * PQ + p0 * Q : wide + (k - k0) * f->Lw;
            const float *r = g->direct_y && resn ? resn + k * PQ + p0 * Q : NULL;
            int last = relu && g->direct_y && j == f->ncb - 1; /* the ReLU as the row's last block is stored */
            if (g->pre.ka) { /* the input read in place (direct_x) through the transform */
                if (j == 0)
                    sp_gather_pre(wk, L, base, foff + t0, values + t0, g->pre.ka + t0, g->pre.kb + t0, T,
                                  b ? b[k] : 0.0f, r, last);
                else if (T || last)
                    sp_gather_pre(wk, L, base, foff + t0, values + t0, g->pre.ka + t0, g->pre.kb + t0, T, 0.0f, wk,
                                  last);
            } else if (j == 0)
                sp_gather(wk, L, base, foff + t0, values + t0, T, b ? b[k] : 0.0f, r, last);
            else if (T || last)
                sp_gather(wk, L, base, foff + t0, values + t0, T, 0.0f, wk, last);
        }
    if (!g->direct_y) store_rows(g, wide, f->Lw, resn, relu, yn, k0, k1, p0, p1);
}

/* fwd_block over rows [p0, p1) in bands of B, output channels [k0, k1) in chunks of Kc */
static void fwd_rows(const geom *g, const flay *f, const int64_t *cbp, const int64_t *foff, const float *values,
                     const float *b, const float *planes, const float *resn, int relu, float *yn, float *wide,
                     int round, int64_t k0, int64_t k1, int64_t p0, int64_t p1)
{
    for (int64_t q0 = p0; q0 < p1; q0 += f->B)
        for (int64_t c0 = k0; c0 < k1; c0 += f->Kc)
            fwd_block(g, f, cbp, foff, values, b, planes, resn, relu, yn, wide, round, c0,
                      c0 + f->Kc < k1 ? c0 + f->Kc : k1, q0, q0 + f->B < p1 ? q0 + f->B : p1);
}

int csub_conv2d_sparse_offsets(const int32_t *colidx, int64_t nnz, int64_t C, int64_t H, int64_t W,
                               int64_t R, int64_t S, int64_t stride, int64_t pad, int64_t *foff)
{
    geom g = make_geom(1, C, H, W, 1, R, S, stride, pad);
    int64_t *tab = tap_table(&g);
    if (!tab) return CSUB_ERR_NOMEM;
    for (int64_t t = 0; t < nnz; t++) foff[t] = tab[2 * colidx[t]] * g.plane + tab[2 * colidx[t] + 1];
    free(tab);
    return CSUB_OK;
}


/* Threads the forward uses: one inside a caller's parallel region. */
static int fwd_threads(void)
{
    return omp_in_parallel() ? 1 : csub_get_num_threads();
}

/* Floats of planes (one image, with the slack the rounded wide rows read past the last
 * plane) and of one thread's wide rows. */
static void fwd_sizes(const geom *g, const flay *f, int64_t *plane_floats, int64_t *wide_floats)
{
    *plane_floats = g->direct_x ? 0 : g->nplanes * g->plane + g->Wph + 16;
    *wide_floats = g->direct_y ? 0 : f->Kc * f->Lw;
}

int64_t csub_conv2d_sparse_work(int64_t N, int64_t C, int64_t H, int64_t W, int64_t R, int64_t S,
                                int64_t stride, int64_t pad, int nthreads)
{
    geom g = make_geom(N, C, H, W, 1, R, S, stride, pad);
    flay f = fwd_layout(&g, -1);
    int64_t pf, wf;
    fwd_sizes(&g, &f, &pf, &wf);
    if (nthreads < 1) nthreads = 1;
    return (pf + wf) * nthreads;
}

/* *work: the caller's buffer of work_len floats, or where it is too small one of `need` (*own, to be
 * freed; else NULL). CSUB_ERR_NOMEM when that cannot be had. */
static int work_buffer(float **work, int64_t work_len, int64_t need, float **own)
{
    *own = NULL;
    if (work_len >= need) return CSUB_OK;
    if (!(*own = malloc(sizeof(float) * (size_t)(need > 0 ? need : 1)))) return CSUB_ERR_NOMEM;
    *work = *own;
    return CSUB_OK;
}

/* Zeros in the slack past the planes (read by the last rounded vectors, never used) of `copies`
 * plane buffers pf floats apart */
static void zero_slack(const geom *g, float *work, int64_t pf, int copies)
{
    for (int u = 0; u < copies && pf; u++)
        memset(work + pf * u + g->nplanes * g->plane, 0, sizeof(float) * (size_t)(pf - g->nplanes * g->plane));
}

void csub_pre_per_weight(const int32_t *colidx, int64_t nnz, int64_t RS, const float *a, const float *b, float *ka,
                         float *kb)
{
    for (int64_t t = 0; t < nnz; t++) {
        int64_t c = colidx[t] / RS;
        ka[t] = a[c], kb[t] = b[c];
    }
}

/* Images [n0, n1) whole on one thread: their planes laid out in pl (NULL: x read in place), then the rows */
static void fwd_images(const geom *g, const flay *f, const int64_t *bp, const int64_t *foff, const float *values,
                       const float *b, const float *x, const float *res, int relu, float *y, float *pl, float *wt,
                       int round, int64_t n0, int64_t n1)
{
    int64_t PQ = g->P * g->Q;
    for (int64_t n = n0; n < n1; n++) {
        const float *xn = x + n * g->C * g->H * g->W;
        if (pl) build_planes(g, xn, pl, 0, g->C, 0, g->Hph);
        fwd_rows(g, f, bp, foff, values, b, pl ? pl : xn, res ? res + n * g->K * PQ : NULL, relu, y + n * g->K * PQ, wt,
                 round, 0, g->K, 0, g->P);
    }
}

int csub_conv2d_sparse_forward_planned(const float *x, const int64_t *rowptr, const int64_t *foff,
                                       const float *values, const float *b, float *y,
                                       int64_t N, int64_t C, int64_t H, int64_t W,
                                       int64_t K, int64_t R, int64_t S, int64_t stride, int64_t pad,
                                       const float *res, int relu, const csub_pre *pre, float *work,
                                       int64_t work_len)
{
    geom g = make_geom(N, C, H, W, K, R, S, stride, pad);
    if (pre && (pad || !pre->a || !pre->b || (g.direct_x && (!pre->ka || !pre->kb)))) return CSUB_ERR_ARG;
    if (pre) { /* in place (direct_x): per kept weight; else on the planes, per channel */
        g.pre.a = pre->a, g.pre.b = pre->b;
        if (g.direct_x) g.pre.ka = pre->ka, g.pre.kb = pre->kb;
    }
    flay f = fwd_layout(&g, rowptr[K]);
    int64_t PQ = g.P * g.Q, pf, wf;
    int nt = fwd_threads();
    if (N < nt && (double)rowptr[K] * (double)g.L < CSUB_PAR_MIN_SPARSE) nt = 1; /* one image, little work */
    fwd_sizes(&g, &f, &pf, &wf);
    int outer = N >= nt;            /* threads split the batch, else each image: */
    /* by output rows (csub_row_band), or by output channels where the kept weights (a value and an
     * offset each) outweigh the planes: every thread streams all the weights for its rows, but only
     * its own channels' weights and the shared planes in the other split */
    int bands = !outer && g.P >= nt && (double)rowptr[K] * 12.0 <= (double)(g.nplanes * g.plane) * 4.0;
    int round = !g.direct_x;        /* the planes have slack: whole 16-float vectors */
    int64_t need = (pf + wf) * nt;
    float *own;
    int64_t *cbp = NULL; /* channel block pointers of the CSR rows, or rowptr itself for one block */
    if (work_buffer(&work, work_len, need, &own)) return CSUB_ERR_NOMEM;
    if (f.ncb > 1) {
        if (!(cbp = malloc(sizeof(int64_t) * (size_t)(K * f.ncb + 1)))) {
            free(own);
            return CSUB_ERR_NOMEM;
        }
        fwd_block_ptrs(&g, &f, rowptr, foff, cbp);
    }
    const int64_t *bp = cbp ? cbp : rowptr; /* one block: row k's are [rowptr[k], rowptr[k + 1]) */
    float *wides = work + pf * nt;
    zero_slack(&g, work, pf, outer || bands ? nt : 1);
    if (nt == 1) { /* no parallel region: one costs 0.2-0.3 us, a layer of a compressed network at batch 1
                    * a few us (and the runtime calls it once per image or two: runtime_internal.h, RT_CHUNK) */
        fwd_images(&g, &f, bp, foff, values, b, x, res, relu, y, pf ? work : NULL, wides, round, 0, N);
        free(own);
        free(cbp);
        return CSUB_OK;
    }
    #pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), T = omp_get_num_threads();
        float *wt = wides + wf * t;
        if (outer) {
            int64_t n0, n1;
            split(N, t, T, &n0, &n1);
            fwd_images(&g, &f, bp, foff, values, b, x, res, relu, y, pf ? work + pf * t : NULL, wt, round, n0, n1);
        } else {
            int64_t lo, hi, p0, p1;
            csub_row_band(g.P, t, T, &p0, &p1);
            int64_t i1 = p1 + (R - 1) / stride + 1 < g.Hph ? p1 + (R - 1) / stride + 1 : g.Hph;
            for (int64_t n = 0; n < N; n++) {
                const float *xn = x + n * C * H * W, *rn = res ? res + n * K * PQ : NULL;
                if (bands) { /* the plane rows its output rows read (and the next, which the last vectors
                              * read past them, their lanes unused), in its own buffer: nothing shared
                              * (csub_conv2d_sparse_forward_jit, measured there) */
                    if (pf) build_planes(&g, xn, work + pf * t, 0, C, p0, i1);
                    fwd_rows(&g, &f, bp, foff, values, b, pf ? work + pf * t : xn, rn, relu, y + n * K * PQ, wt,
                             round, 0, K, p0, p1);
                    continue;
                }
                if (pf) { /* a share of the channels' planes, read by every thread */
                    split(C, t, T, &lo, &hi), build_planes(&g, xn, work, lo, hi, 0, g.Hph);
                    #pragma omp barrier
                }
                split(K, t, T, &lo, &hi);
                fwd_rows(&g, &f, bp, foff, values, b, pf ? work : xn, rn, relu, y + n * K * PQ, wt, round, lo, hi, 0,
                         g.P);
                #pragma omp barrier
            }
        }
    }
    free(own);
    free(cbp);
    return CSUB_OK;
}

/* The first plane row past those output rows [p0, p1) read, with the next one, which the last vectors
 * of a band read past them (their lanes unused) */
static int64_t plane_rows_end(const geom *g, int64_t p1)
{
    int64_t i1 = p1 + (g->R - 1) / g->st + 1;
    return i1 < g->Hph ? i1 : g->Hph;
}

/* A forward of rows [p0, p1) from a band of rows (csub_conv2d_sparse_forward_rows, _jit_rows): the
 * geometry of the whole image, its input read through x, its output held as the band's rows;
 * CSUB_ERR_ARG where x does not hold the rows they read, or where the sums would go to y itself
 * (direct_y: a 1x1 conv, which runs a band as an image of its own) */
static int rows_geom(geom *g, const csub_rows *x, int64_t p0, int64_t p1)
{
    if (g->direct_y || p0 < 0 || p1 > g->P || !csub_rows_cover(x, g->H, g->R, g->st, g->pad, p0, p1))
        return CSUB_ERR_ARG;
    g->rows = x;
    g->yps = (p1 - p0) * g->Q;
    g->yr0 = p0;
    return CSUB_OK;
}

int csub_conv2d_sparse_forward_rows(const csub_rows *x, const int64_t *rowptr, const int64_t *foff,
                                    const float *values, const float *b, float *y, int64_t C, int64_t H, int64_t W,
                                    int64_t K, int64_t R, int64_t S, int64_t stride, int64_t pad, int64_t p0,
                                    int64_t p1, const float *res, int relu, float *work, int64_t work_len)
{
    geom g = make_geom(1, C, H, W, K, R, S, stride, pad);
    if (rows_geom(&g, x, p0, p1)) return CSUB_ERR_ARG;
    if (p1 <= p0 || K <= 0) return CSUB_OK;
    flay f = fwd_layout(&g, rowptr[K]);
    int64_t pf, wf, *cbp = NULL;
    fwd_sizes(&g, &f, &pf, &wf);
    float *own;
    if (work_buffer(&work, work_len, pf + wf, &own)) return CSUB_ERR_NOMEM;
    if (f.ncb > 1) {
        if (!(cbp = malloc(sizeof(int64_t) * (size_t)(K * f.ncb + 1)))) {
            free(own);
            return CSUB_ERR_NOMEM;
        }
        fwd_block_ptrs(&g, &f, rowptr, foff, cbp);
    }
    zero_slack(&g, work, pf, 1);
    build_planes(&g, NULL, work, 0, C, p0, plane_rows_end(&g, p1));
    fwd_rows(&g, &f, cbp ? cbp : rowptr, foff, values, b, work, res, relu, y, work + pf, 1, 0, K, p0, p1);
    free(own);
    free(cbp);
    return CSUB_OK;
}

int csub_conv2d_sparse_forward(const float *x, const int64_t *rowptr, const int32_t *colidx,
                               const float *values, const float *b, float *y,
                               int64_t N, int64_t C, int64_t H, int64_t W,
                               int64_t K, int64_t R, int64_t S, int64_t stride, int64_t pad)
{
    int64_t nnz = rowptr[K];
    int64_t *foff = malloc(sizeof(int64_t) * (size_t)(nnz > 0 ? nnz : 1));
    int st = foff ? csub_conv2d_sparse_offsets(colidx, nnz, C, H, W, R, S, stride, pad, foff) : CSUB_ERR_NOMEM;
    if (!st) st = csub_conv2d_sparse_forward_planned(x, rowptr, foff, values, b, y, N, C, H, W, K, R, S, stride, pad,
                                                     NULL, 0, NULL, NULL, 0);
    free(foff);
    return st;
}

/* ---------------------------------------------------- forward by code */

/* The forward with the kept weights as code (sparse_jit.c) instead of the gather: the same
 * planes, output rows in bands of B whose wide rows (ld = B * Wph rounded up to whole
 * vectors) the code fills 16 outputs at a time, chunk by chunk, then store_rows writes y. */
#define JIT_BAND_L 256 /* outputs of a band's wide row, about */

static void jit_band(const geom *g, int64_t *B, int64_t *ld)
{
    int64_t b = (JIT_BAND_L + g->Wph - 1) / g->Wph;
    if (b > g->P) b = g->P;
    if (b < 1) b = 1;
    *B = b;
    *ld = (b * g->Wph + 15 + 15) / 16 * 16; /* a band starts at the aligned position before its first row */
}

/* Floats of planes (with the slack the last vectors read: see csub_conv2d_sparse_work) and of
 * one thread's wide band */
static void jit_sizes(const geom *g, int64_t ld, int64_t *plane_floats, int64_t *wide_floats)
{
    *plane_floats = (g->nplanes * g->plane + g->Wph + 32 + 15) / 16 * 16; /* the code reads whole blocks */
    *wide_floats = g->K * ld;
}

csub_spjit *csub_conv2d_sparse_jit(const int64_t *rowptr, const int64_t *foff, const float *values, int64_t C,
                                   int64_t H, int64_t W, int64_t K, int64_t R, int64_t S, int64_t stride, int64_t pad)
{
    geom g = make_geom(1, C, H, W, K, R, S, stride, pad);
    int64_t B, ld;
    if (g.P < 1 || g.Q < 1) return NULL;
    jit_band(&g, &B, &ld);
    return csub_spjit_build(rowptr, foff, values, K, ld);
}

/* Images a thread runs the code over at once where threads split the batch (nt threads, N >= nt):
 * each piece of the code (sparse_jit.c) then runs over all their vectors before the next, read
 * and decoded once for them (ResNet18's 7 x 7 layers have 4 vectors an image). Measured on
 * ResNet18 90 % sparse at batch 16, whose runtime passes 2 images a call: 1.014-1.018x. */
#define JIT_GROUP 4
static int64_t jit_group(int64_t N, int nt)
{
    int64_t per = N >= nt ? (N + nt - 1) / nt : 1;
    return per < JIT_GROUP ? per : JIT_GROUP;
}

int64_t csub_conv2d_sparse_jit_work(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S,
                                    int64_t stride, int64_t pad, int nthreads)
{
    geom g = make_geom(N, C, H, W, K, R, S, stride, pad);
    int64_t B, ld, pf, wf;
    jit_band(&g, &B, &ld);
    jit_sizes(&g, ld, &pf, &wf);
    if (nthreads < 1) nthreads = 1;
    return (pf + wf) * nthreads * jit_group(N, nthreads) + 16; /* + the floats to align it to 64 bytes */
}

/* Rows [p0, p1) of ni images in bands of B: every chunk of the code over the band's vectors of
 * each image, then y. A band's vectors start at the 64-byte aligned position at or before its
 * first (the code reads aligned blocks; the lanes before the band are computed, never stored).
 * Image n: planes + n ps, wide + n ws, resn, yn + n ys. */
static void jit_rows(const geom *g, const csub_spjit *j, const float *b, const float *planes, const float *resn,
                     int relu, float *yn, float *wide, int64_t B, int64_t ld, int c0, int c1, int64_t p0, int64_t p1,
                     int64_t ni, int64_t ps, int64_t ws, int64_t ys)
{
    int64_t k0 = csub_spjit_chunk_k0(j, c0), k1 = csub_spjit_chunk_k0(j, c1);
    for (int64_t q0 = p0; q0 < p1; q0 += B) {
        int64_t q1 = q0 + B < p1 ? q0 + B : p1, s0 = q0 * g->Wph, sh = s0 % 16;
        int64_t nv = ((q1 - q0) * g->Wph + sh + 15) / 16;
        const float *base = planes + s0 - sh;
        for (int c = c0; c < c1; c++) /* a chunk's code over the band, then the next (measured: 1.2x
                                         * the other order on ResNet18 at batch 1) */
            csub_spjit_run(j, c, base, wide, b, nv, ni, ps, ws);
        for (int64_t n = 0; n < ni; n++)
            store_rows(g, wide + n * ws + sh + k0 * ld, ld, resn ? resn + n * ys : NULL, relu, yn + n * ys, k0, k1,
                       q0, q1);
    }
}

/* The vectors jit_rows runs each chunk's code over for rows [p0, p1) (bands of B, each from the
 * aligned position at or before it) */
static int64_t band_vectors(const geom *g, int64_t B, int64_t p0, int64_t p1)
{
    int64_t v = 0;
    for (int64_t q0 = p0; q0 < p1; q0 += B) v += ((q0 + B < p1 ? B : p1 - q0) * g->Wph + q0 * g->Wph % 16 + 15) / 16;
    return v;
}

/* Where the share of thread t (of T) starts, splitting an image by chunks of the code: the
 * chunk-major run of the chunks' work (kept weights x vectors) cut at t / T of the total, at the
 * nearest chunk boundary, or inside a chunk at the nearest row (the chunk's rows then split
 * between two threads) where that costs fewer vectors than the boundary leaves unbalanced.
 * Whole chunks alone split 9 chunks 4 + 5 (ResNet18's 14 x 14 layers: one thread waited 20 % of
 * the other's time); on its 7 x 7 layers, 18 chunks, a cut chunk ran 5 vectors instead of 4. */
static void chunk_cut(const geom *g, const csub_spjit *j, int64_t B, int t, int T, int *c, int64_t *r)
{
    int nc = csub_spjit_chunks(j);
    int64_t P = g->P, VP = band_vectors(g, B, 0, P), target = csub_spjit_nnz(j) * VP * t / T;
    *r = 0;
    for (*c = 0; *c < nc; (*c)++) {
        int64_t w0 = csub_spjit_chunk_w0(j, *c), w = csub_spjit_chunk_w0(j, *c + 1) - w0;
        if (target >= (w0 + w) * VP) continue;
        if (target <= w0 * VP) return; /* a boundary (t = 0, or empty chunks before) */
        int64_t in = target - w0 * VP, rr = (in * P * 2 + w * VP) / (2 * w * VP); /* rows, rounded */
        int64_t dev = in < w * VP - in ? in : w * VP - in; /* to the nearer boundary */
        int64_t extra = w * (band_vectors(g, B, 0, rr) + band_vectors(g, B, rr, P) - VP);
        if (rr > 0 && rr < P && extra < dev) *r = rr;
        else if (in * 2 >= w * VP) (*c)++;
        return;
    }
}

/* Thread t's share of an image by chunks of the code (chunk_cut): a chunk's last rows, whole
 * chunks, a chunk's first rows */
static void jit_chunk_share(const geom *g, const csub_spjit *j, const float *b, const float *planes,
                            const float *resn, int relu, float *yn, float *wide, int64_t B, int64_t ld, int t, int T)
{
    int c0, c1, nc = csub_spjit_chunks(j);
    int64_t r0, r1;
    chunk_cut(g, j, B, t, T, &c0, &r0);
    chunk_cut(g, j, B, t + 1, T, &c1, &r1);
    if (c0 == c1) { /* within one chunk */
        if (r0 < r1) jit_rows(g, j, b, planes, resn, relu, yn, wide, B, ld, c0, c0 + 1, r0, r1, 1, 0, 0, 0);
        return;
    }
    if (r0 > 0) jit_rows(g, j, b, planes, resn, relu, yn, wide, B, ld, c0, c0 + 1, r0, g->P, 1, 0, 0, 0), c0++;
    if (c0 < c1) jit_rows(g, j, b, planes, resn, relu, yn, wide, B, ld, c0, c1, 0, g->P, 1, 0, 0, 0);
    if (c1 < nc && r1 > 0) jit_rows(g, j, b, planes, resn, relu, yn, wide, B, ld, c1, c1 + 1, 0, r1, 1, 0, 0, 0);
}

/* Images [n0, n1) whole on one thread, G at a time: their planes laid out in pl (pf floats apart), then the
 * code over their rows (wide rows in wg, wf floats apart) */
static void jit_images(const geom *g, const csub_spjit *j, const float *b, const float *x, const float *res, int relu,
                       float *y, float *pl, float *wg, int64_t B, int64_t ld, int64_t pf, int64_t wf, int64_t G,
                       int64_t n0, int64_t n1)
{
    int64_t PQ = g->P * g->Q, CHW = g->C * g->H * g->W;
    for (int64_t n = n0; n < n1; n += G) {
        int64_t ni = n1 - n < G ? n1 - n : G;
        for (int64_t i = 0; i < ni; i++) build_planes(g, x + (n + i) * CHW, pl + pf * i, 0, g->C, 0, g->Hph);
        jit_rows(g, j, b, pl, res ? res + n * g->K * PQ : NULL, relu, y + n * g->K * PQ, wg, B, ld, 0,
                 csub_spjit_chunks(j), 0, g->P, ni, pf, wf, g->K * PQ);
    }
}

int csub_conv2d_sparse_forward_jit(const float *x, const csub_spjit *j, const float *b, float *y, int64_t N,
                                   int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S, int64_t stride,
                                   int64_t pad, const float *res, int relu, const csub_pre *pre, float *work,
                                   int64_t work_len)
{
    geom g = make_geom(N, C, H, W, K, R, S, stride, pad);
    if (pre && (pad || !pre->a || !pre->b)) return CSUB_ERR_ARG;
    if (pre) g.pre.a = pre->a, g.pre.b = pre->b; /* on the planes (the code always reads planes) */
    int64_t B, ld, pf, wf, PQ = g.P * g.Q;
    jit_band(&g, &B, &ld);
    if (csub_spjit_ld(j) != ld || csub_spjit_rows(j) != K) return CSUB_ERR_ARG; /* made for another shape */
    jit_sizes(&g, ld, &pf, &wf);
    int nt = fwd_threads();
    if (N < nt && (double)csub_spjit_nnz(j) * (double)g.L < CSUB_PAR_MIN_SPARSE) nt = 1; /* one image, little work */
    int outer = N >= nt, nc = csub_spjit_chunks(j);
    int64_t nb = (g.P + B - 1) / B;
    /* fewer images than threads: each image split by bands of rows, or by chunks of output channels
     * where the bands are too few or the code outweighs the planes (the gather's rule: each thread
     * then runs only its own chunks' code over the shared planes) */
    int bands = !outer && nb >= nt && (double)csub_spjit_nnz(j) * 12.0 <= (double)(g.nplanes * g.plane) * 4.0;
    if (!outer && !bands && nc < nt) nt = 1, outer = 1;
    int64_t G = outer ? jit_group(N, nt) : 1, need = (pf + wf) * nt * G; /* G images a thread at once */
    float *own;
    /* 16 floats more, to start the buffers on 64 bytes: the code reads the planes in aligned blocks */
    if (work_buffer(&work, work_len, need + 16, &own)) return CSUB_ERR_NOMEM;
    work = (float *)(((uintptr_t)work + 63) & ~(uintptr_t)63);
    float *wides = work + pf * nt * G;
    zero_slack(&g, work, pf, outer || bands ? (int)(nt * G) : 1);
    if (nt == 1) { /* no parallel region (csub_conv2d_sparse_forward_planned) */
        jit_images(&g, j, b, x, res, relu, y, work, wides, B, ld, pf, wf, G, 0, N);
        free(own);
        return CSUB_OK;
    }
    #pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), T = omp_get_num_threads();
        float *wt = wides + wf * t;
        if (outer) {
            int64_t n0, n1;
            split(N, t, T, &n0, &n1);
            jit_images(&g, j, b, x, res, relu, y, work + pf * G * t, wides + wf * G * t, B, ld, pf, wf, G, n0, n1);
        } else {
            int64_t p0, p1, c0, c1;
            csub_row_band(g.P, t, T, &p0, &p1); /* even shares of the rows, each in bands of B: 28 rows in
                                                 * whole bands of 9 went 18 + 10 (ResNet18's 28 x 28 layers,
                                                 * the second thread idle 40 % of the first's time) */
            split(C, t, T, &c0, &c1);  /* input channels whose planes this thread lays out */
            /* bands: the plane rows its output rows read (and the next, which the last vector of a
             * band reads past them, its lanes unused), in its own buffer: laid out in a shared one,
             * the rows went from core to core at every layer (measured: ResNet18's stride-2 layer
             * on 55 x 55 built its planes no faster on two threads than on one) */
            int64_t i1 = p1 + (R - 1) / stride + 1 < g.Hph ? p1 + (R - 1) / stride + 1 : g.Hph;
            for (int64_t n = 0; n < N; n++) {
                const float *xn = x + n * C * H * W, *rn = res ? res + n * K * PQ : NULL;
                if (bands) {
                    build_planes(&g, xn, work + pf * t, 0, C, p0, i1);
                    jit_rows(&g, j, b, work + pf * t, rn, relu, y + n * K * PQ, wt, B, ld, 0, nc, p0, p1, 1, 0, 0, 0);
                    continue; /* nothing shared: no barrier */
                }
                build_planes(&g, xn, work, c0, c1, 0, g.Hph); /* chunks: a share of the channels */
                #pragma omp barrier
                jit_chunk_share(&g, j, b, work, rn, relu, y + n * K * PQ, wt, B, ld, t, T);
                #pragma omp barrier
            }
        }
    }
    free(own);
    return CSUB_OK;
}

int csub_conv2d_sparse_forward_jit_rows(const csub_rows *x, const csub_spjit *j, const float *b, float *y, int64_t C,
                                        int64_t H, int64_t W, int64_t K, int64_t R, int64_t S, int64_t stride,
                                        int64_t pad, int64_t p0, int64_t p1, const float *res, int relu, float *work,
                                        int64_t work_len)
{
    geom g = make_geom(1, C, H, W, K, R, S, stride, pad);
    int64_t B, ld, pf, wf;
    jit_band(&g, &B, &ld);
    if (csub_spjit_ld(j) != ld || csub_spjit_rows(j) != K || rows_geom(&g, x, p0, p1)) return CSUB_ERR_ARG;
    if (p1 <= p0) return CSUB_OK;
    jit_sizes(&g, ld, &pf, &wf);
    float *own;
    if (work_buffer(&work, work_len, pf + wf + 16, &own)) return CSUB_ERR_NOMEM;
    work = (float *)(((uintptr_t)work + 63) & ~(uintptr_t)63); /* the code reads the planes in aligned blocks */
    zero_slack(&g, work, pf, 1);
    build_planes(&g, NULL, work, 0, C, p0, plane_rows_end(&g, p1));
    jit_rows(&g, j, b, work, res, relu, y, work + pf, B, ld, 0, csub_spjit_chunks(j), p0, p1, 1, 0, 0, 0);
    free(own);
    return CSUB_OK;
}

/* ------------------------------------------------------------ backward */

/* The kept weights grouped by the input plane they read (the transpose of the
 * CSR), each with its source offset into the margined output gradient. */
typedef struct {
    int64_t *ptr;  /* [nplanes + 1] */
    int64_t *off;  /* [nnz]: k * Ld + offmax - shift */
    float *val;    /* [nnz] */
} tplan;

static int make_tplan(const geom *g, const int64_t *rowptr, const int32_t *colidx, const float *values,
                      const int64_t *tab, tplan *tp)
{
    int64_t nnz = rowptr[g->K], np = g->nplanes;
    tp->ptr = calloc((size_t)np + 1, sizeof(int64_t));
    tp->off = malloc(sizeof(int64_t) * (size_t)(nnz > 0 ? nnz : 1));
    tp->val = malloc(sizeof(float) * (size_t)(nnz > 0 ? nnz : 1));
    if (!tp->ptr || !tp->off || !tp->val) {
        free(tp->ptr), free(tp->off), free(tp->val);
        tp->ptr = NULL, tp->off = NULL, tp->val = NULL;
        return CSUB_ERR_NOMEM;
    }
    for (int64_t t = 0; t < nnz; t++) tp->ptr[tab[2 * colidx[t]] + 1]++;
    for (int64_t i = 0; i < np; i++) tp->ptr[i + 1] += tp->ptr[i];
    /* stable counting sort: within a plane, rows k ascending */
    for (int64_t k = 0; k < g->K; k++)
        for (int64_t t = rowptr[k]; t < rowptr[k + 1]; t++) {
            const int64_t *e = tab + 2 * colidx[t];
            int64_t dst = tp->ptr[e[0]]++;
            tp->off[dst] = k * g->Ld + g->offmax - e[1];
            tp->val[dst] = values[t];
        }
    for (int64_t i = np; i > 0; i--) tp->ptr[i] = tp->ptr[i - 1];
    tp->ptr[0] = 0;
    return CSUB_OK;
}

/* weight gradient of one image, CSR rows [k0, k1), into dv (+=) */
static void dw_rows(const geom *g, const int64_t *rowptr, const int64_t *foff, const float *planes,
                    const float *dyz, float *dv, int64_t k0, int64_t k1)
{
    for (int64_t k = k0; k < k1; k++) {
        int64_t t0 = rowptr[k], T = rowptr[k + 1] - t0;
        if (T) sp_dots(dv + t0, dyz + k * g->Ld + g->offmax, g->L, planes, foff + t0, T);
    }
}

/* input gradient planes [p0, p1) of one image */
static void dx_planes(const geom *g, const tplan *tp, const float *dyz, float *dxph, int64_t p0, int64_t p1)
{
    for (int64_t i = p0; i < p1; i++) {
        int64_t t0 = tp->ptr[i];
        sp_gather(dxph + i * g->plane, g->plane, dyz, tp->off + t0, tp->val + t0, tp->ptr[i + 1] - t0, 0.0f, NULL, 0);
    }
}

int csub_conv2d_sparse_backward(const float *x, const int64_t *rowptr, const int32_t *colidx,
                                const float *values, const float *dy,
                                float *dx, float *dvalues, float *db,
                                int64_t N, int64_t C, int64_t H, int64_t W,
                                int64_t K, int64_t R, int64_t S, int64_t stride, int64_t pad)
{
    geom g = make_geom(N, C, H, W, K, R, S, stride, pad);
    int64_t nnz = rowptr[K], PQ = g.P * g.Q, CHW = C * H * W;
    int nt = csub_get_num_threads();
    int outer = N >= nt;
    int nbuf = outer ? nt : 1;
    int need_planes = dvalues && nnz > 0 && !g.direct_x;
    int need_dxph = dx && !g.direct_x;
    size_t plane_floats = (size_t)(g.nplanes * g.plane + g.Wph);
    size_t dyz_floats = g.direct_dy ? 0 : (size_t)(K * g.Ld);
    size_t dxph_floats = (size_t)(g.nplanes * g.plane);
    int64_t *foff = NULL, *tab = tap_table(&g);
    float *planes = NULL, *dyzs = NULL, *dxphs = NULL, *dvs = NULL;
    tplan tp = {NULL, NULL, NULL};
    int st = tab ? CSUB_OK : CSUB_ERR_NOMEM;
    if (st == CSUB_OK && dvalues && nnz > 0) {
        if (!(foff = malloc(sizeof(int64_t) * (size_t)nnz)) ||
            !(dvs = calloc((size_t)nnz * nbuf, sizeof(float))) ||
            (need_planes && !(planes = calloc(plane_floats * nbuf, sizeof(float))))) st = CSUB_ERR_NOMEM;
        else
            for (int64_t t = 0; t < nnz; t++) foff[t] = tab[2 * colidx[t]] * g.plane + tab[2 * colidx[t] + 1];
    }
    if (st == CSUB_OK && dyz_floats && (dx || (dvalues && nnz > 0)) &&
        !(dyzs = malloc(sizeof(float) * dyz_floats * nbuf))) st = CSUB_ERR_NOMEM;
    if (st == CSUB_OK && need_dxph && !(dxphs = malloc(sizeof(float) * dxph_floats * nbuf))) st = CSUB_ERR_NOMEM;
    if (st == CSUB_OK && dx) st = make_tplan(&g, rowptr, colidx, values, tab, &tp);
    free(tab);
    if (st != CSUB_OK) {
        free(foff), free(planes), free(dyzs), free(dxphs), free(dvs);
        return st;
    }
    int do_dw = dvalues && nnz > 0;
    #pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), T = omp_get_num_threads();
        if (outer) {
            int64_t n0, n1;
            split(N, t, T, &n0, &n1);
            float *pl = planes ? planes + (size_t)t * plane_floats : NULL;
            float *dz = dyzs ? dyzs + (size_t)t * dyz_floats : NULL;
            float *dph = dxphs ? dxphs + (size_t)t * dxph_floats : NULL;
            float *dv = dvs ? dvs + (size_t)t * nnz : NULL;
            for (int64_t n = n0; n < n1; n++) {
                const float *xn = x + n * CHW, *dyn = dy + n * K * PQ;
                if (dz) build_dyz(&g, dyn, dz, 0, K);
                const float *d = dz ? dz : dyn;
                if (do_dw) {
                    if (pl) build_planes(&g, xn, pl, 0, C, 0, g.Hph);
                    dw_rows(&g, rowptr, foff, pl ? pl : xn, d, dv, 0, K);
                }
                if (dx) {
                    float *dxn = dx + n * CHW;
                    dx_planes(&g, &tp, d, dph ? dph : dxn, 0, g.nplanes);
                    if (dph) unphase(&g, dph, dxn, 0, C);
                }
            }
        } else {
            for (int64_t n = 0; n < N; n++) {
                const float *xn = x + n * CHW, *dyn = dy + n * K * PQ;
                int64_t lo, hi;
                if (dyzs) {
                    split(K, t, T, &lo, &hi);
                    build_dyz(&g, dyn, dyzs, lo, hi);
                }
                if (do_dw && planes) {
                    split(C, t, T, &lo, &hi);
                    build_planes(&g, xn, planes, lo, hi, 0, g.Hph);
                }
                #pragma omp barrier
                const float *d = dyzs ? dyzs : dyn;
                if (do_dw) { /* each thread owns whole CSR rows of dvs[0] */
                    split(K, t, T, &lo, &hi);
                    dw_rows(&g, rowptr, foff, planes ? planes : xn, d, dvs, lo, hi);
                }
                if (dx) {
                    float *dxn = dx + n * CHW;
                    split(g.nplanes, t, T, &lo, &hi);
                    dx_planes(&g, &tp, d, dxphs ? dxphs : dxn, lo, hi);
                    if (dxphs) {
                        #pragma omp barrier
                        split(C, t, T, &lo, &hi);
                        unphase(&g, dxphs, dxn, lo, hi);
                    }
                }
                #pragma omp barrier
            }
        }
    }
    if (do_dw) /* reduce the per-thread partials in thread order (small: nnz each) */
        for (int64_t i = 0; i < nnz; i++) {
            float acc = 0.0f;
            for (int u = 0; u < nbuf; u++) acc += dvs[(size_t)u * nnz + i];
            dvalues[i] += acc;
        }
    if (db) csub_conv_bias_backward(dy, db, N, K, PQ);
    free(foff), free(planes), free(dyzs), free(dxphs), free(dvs);
    free(tp.ptr), free(tp.off), free(tp.val);
    return CSUB_OK;
}

/* --------------------------------------------------------------- linear */

/* a[R, C] -> t[C, R]: eight rows at a time, so that the reads are eight
 * sequential streams and each write is eight consecutive floats */
static void transpose(const float *a, float *t, int64_t R, int64_t C)
{
    int64_t R8 = R / 8 * 8;
    #pragma omp parallel for num_threads(csub_get_num_threads()) schedule(static) if (R * C > CSUB_PAR_MIN)
    for (int64_t r0 = 0; r0 < R8; r0 += 8) {
        const float *a0 = a + r0 * C;
        for (int64_t c = 0; c < C; c++) {
            float *o = t + c * R + r0;
            for (int l = 0; l < 8; l++) o[l] = a0[l * C + c];
        }
    }
    for (int64_t r = R8; r < R; r++)
        for (int64_t c = 0; c < C; c++) t[c * R + r] = a[r * C + c];
}

/* A linear layer is a 1x1 convolution of one image with C = IN channels of
 * H x W = 1 x N pixels: x^T[IN, N] -> y^T[O, N]. */
int csub_linear_sparse_forward(const float *x, const int64_t *rowptr, const int32_t *colidx,
                               const float *values, const float *b, float *y,
                               int64_t N, int64_t IN, int64_t O)
{
    float *xt = malloc(sizeof(float) * (size_t)(N * IN)), *yt = malloc(sizeof(float) * (size_t)(N * O));
    int st = CSUB_ERR_NOMEM;
    if (xt && yt) {
        transpose(x, xt, N, IN);
        st = csub_conv2d_sparse_forward(xt, rowptr, colidx, values, b, yt, 1, IN, 1, N, O, 1, 1, 1, 0);
        if (st == CSUB_OK) transpose(yt, y, O, N);
    }
    free(xt);
    free(yt);
    return st;
}

int csub_linear_sparse_backward(const float *x, const int64_t *rowptr, const int32_t *colidx,
                                const float *values, const float *dy,
                                float *dx, float *dvalues, float *db,
                                int64_t N, int64_t IN, int64_t O)
{
    float *xt = dvalues ? malloc(sizeof(float) * (size_t)(N * IN)) : NULL;
    float *dyt = malloc(sizeof(float) * (size_t)(N * O));
    float *dxt = dx ? malloc(sizeof(float) * (size_t)(N * IN)) : NULL;
    int st = CSUB_ERR_NOMEM;
    if (dyt && (!dvalues || xt) && (!dx || dxt)) {
        if (xt) transpose(x, xt, N, IN);
        transpose(dy, dyt, N, O);
        st = csub_conv2d_sparse_backward(xt ? xt : x, rowptr, colidx, values, dyt, dxt, dvalues, NULL,
                                         1, IN, 1, N, O, 1, 1, 1, 0);
        if (st == CSUB_OK && dx) transpose(dxt, dx, IN, N);
    }
    if (st == CSUB_OK && db)
        for (int64_t n = 0; n < N; n++)
            for (int64_t o = 0; o < O; o++) db[o] += dy[n * O + o];
    free(xt);
    free(dyt);
    free(dxt);
    return st;
}
