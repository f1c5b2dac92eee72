/* conv_pointwise.c - 1x1 convolution (stride 1, no padding), float32, forward.
 *
 * y[n][k] = relu?(sum_c w[k][c] x[n][c] + b[k] + res[n][k]) on planes of HW
 * pixels: a product w[K, C] . x[n][C, HW] whose right operand is already laid
 * out for it (each input channel a contiguous row of pixels). A BLAS sgemm
 * first copies both operands into its packed formats and leaves the epilogue
 * (bias, residual, ReLU) to a second pass over y; on the small products of
 * cPreResNet20's bottleneck blocks (K, C of 16 to 256 on planes of 64 to 1024
 * pixels) those copies and that pass cost as much as the multiply-adds, and
 * at batch 1 every thread packed the whole weight again. Here a tile of 8
 * output channels x V vectors of pixels stays in registers over all C (per
 * channel: V loads of x, 8 broadcast weights, 8 V multiply-adds), then the
 * epilogue runs on the tile in registers as it is stored (the bias, the
 * residual, the ReLU: as csub_conv_epilogue, conv.c, computes them, in the
 * same order, so the same bits). Nothing is copied: the 8
 * weights of a channel are read from the rows of w (the rows past K repeat
 * row K - 1; their sums are dropped).
 *
 * Threads split the batch, or at batch < threads the pixels of each image
 * (ranges of whole vectors of 16).
 *
 * Variants by instruction-set level (csub_isa_level, internal.h): AVX-512
 * (V = 3 vectors of 16), AVX2 (V = 2 of 8), the baseline (2 of 4); the last
 * pixels of a range (fewer than a vector) one by one. Each output is summed
 * over c in order with one fused multiply-add per term at every level (the
 * baseline and the scalar tail by fmaf), so every level and every split
 * computes the same bits, as the direct 3x3 kernel (conv_direct.c).
 */
#include <math.h>
#include <string.h>
#include <omp.h>

#include "internal.h"
#include "tile.h"

CSUB_FP_CONTRACT_FAST

#define OCG 8     /* output channels per tile */
#define SLICE 192 /* pixels per slice: its rows of x stay in L1 or L2 across the channel groups */

/* The epilogue of one output channel (bias bk, residual row rk or NULL, ReLU), as
 * csub_conv_epilogue computes it: v = y + bk (+ r), then v <= 0 ? 0 : v (NaN stays NaN). */
typedef struct {
    const float *b, *res; /* b[K] or NULL; res: the image's residual [K, ldy] or NULL */
    int relu, any;        /* any: an epilogue at all (else y is the bare sum) */
} epi_t;

/* One tile: y[k0 + j][o .. o + V VW) = epilogue(sum_c w[k0 + j][c] x[c][o ..]), j < nk (the rows
 * past nk computed from row nk - 1 and dropped). Defined per vector type (VT, VW floats; VI: an
 * integer vector of the same lanes); V is a constant at each call and every index of acc is a
 * constant after unrolling, so the 8 x V accumulators live in registers. */
#define DEFINE_TILE(NAME, VT, VI, VW, MADD)                                                          \
    static CSUB_ALWAYS_INLINE void NAME(const float *x, int64_t ldx, const float *w, int64_t C,      \
                                        float *y, int64_t ldy, int64_t k0, int nk, int64_t o,        \
                                        const int V, const epi_t *e)                                  \
    {                                                                                                 \
        VT acc[OCG][3];                                                                               \
        const float *wr[OCG];                                                                         \
        _Pragma("GCC unroll 8") for (int j = 0; j < OCG; j++) {                                      \
            wr[j] = w + (k0 + (j < nk ? j : nk - 1)) * C;                                            \
            _Pragma("GCC unroll 3") for (int v = 0; v < V; v++) acc[j][v] = (VT){0};                 \
        }                                                                                             \
        for (int64_t c = 0; c < C; c++) {                                                             \
            const float *xc = x + c * ldx + o;                                                        \
            VT xv[3];                                                                                 \
            _Pragma("GCC unroll 3") for (int v = 0; v < V; v++) memcpy(&xv[v], xc + v * VW, sizeof(VT)); \
            _Pragma("GCC unroll 8") for (int j = 0; j < OCG; j++) {                                  \
                float wj = wr[j][c];                                                                  \
                _Pragma("GCC unroll 3") for (int v = 0; v < V; v++) MADD(acc[j][v], xv[v], wj);       \
            }                                                                                         \
        }                                                                                             \
        _Pragma("GCC unroll 8") for (int j = 0; j < OCG; j++) {                                      \
            if (j >= nk) continue;                                                                    \
            int64_t row = (k0 + j) * ldy + o;                                                         \
            float bk = e->b ? e->b[k0 + j] : 0.0f;                                                    \
            _Pragma("GCC unroll 3") for (int v = 0; v < V; v++) {                                    \
                VT a = acc[j][v];                                                                     \
                if (e->any) TILE_EPILOGUE(VT, VI, a, bk, e->res, row + v * VW, sizeof(VT), e->relu);  \
                memcpy(y + row + v * VW, &a, sizeof(VT));                                             \
            }                                                                                         \
        }                                                                                             \
    }

#if defined(__clang__) /* the tail: unfused under clang, as the baseline (tile.h) */
#define MADD_SCALAR(acc, x, w) ((acc) += (x) * (w))
#else
#define MADD_SCALAR(acc, x, w) ((acc) = fmaf((x), (w), (acc)))
#endif
DEFINE_TILE(tile_baseline, f32x4, i32x4, 4, MADD_BASELINE)

/* The last n pixels at o (fewer than a vector), one by one, the same sums and epilogue */
static void tail(const float *x, int64_t ldx, const float *w, int64_t C, float *y, int64_t ldy, int64_t k0, int nk,
                 int64_t o, int64_t n, const epi_t *e)
{
    for (int j = 0; j < nk; j++) {
        const float *wk = w + (k0 + j) * C;
        float bk = e->b ? e->b[k0 + j] : 0.0f;
        for (int64_t i = o; i < o + n; i++) {
            float acc = 0.0f;
            for (int64_t c = 0; c < C; c++) MADD_SCALAR(acc, x[c * ldx + i], wk[c]);
            if (e->any) {
                acc = acc + bk;
                if (e->res) acc = acc + e->res[(k0 + j) * ldy + i];
                if (e->relu) acc = acc <= 0.0f ? 0.0f : acc;
            }
            y[(k0 + j) * ldy + i] = acc;
        }
    }
}

/* Rows [k0, k0 + nk), nk <= 8, pixels [i0, i1): tiles of VMAX vectors, then of one, then the last
 * pixels (fewer than a vector) as one vector shifted back to end at i1, where it stays at or past lo
 * (the first pixel this thread writes) and y is not the residual: its first pixels are computed
 * again, the same sums, the same bits. Else one by one (the tail: at 14 x 14 its strided loads made
 * ResNet18's 128 -> 256 downsampling conv 2.5x slower). */
#define DEFINE_ROWS(NAME, TILE, VW, VMAX, ATTR)                                                      \
    ATTR static void NAME(const float *x, int64_t ldx, const float *w, int64_t C, float *y,         \
                          int64_t ldy, int64_t k0, int nk, int64_t lo, int64_t i0, int64_t i1,       \
                          const epi_t *e)                                                            \
    {                                                                                                 \
        int64_t o = i0;                                                                               \
        for (; o + VMAX * VW <= i1; o += VMAX * VW) TILE(x, ldx, w, C, y, ldy, k0, nk, o, VMAX, e);  \
        for (; o + VW <= i1; o += VW) TILE(x, ldx, w, C, y, ldy, k0, nk, o, 1, e);                   \
        if (o < i1 && i1 - VW >= lo && e->res != y) TILE(x, ldx, w, C, y, ldy, k0, nk, i1 - VW, 1, e); \
        else if (o < i1) tail(x, ldx, w, C, y, ldy, k0, nk, o, i1 - o, e);                            \
    }
DEFINE_ROWS(rows_baseline, tile_baseline, 4, 2, )

#if CSUB_X86
DEFINE_TILE(tile_avx2, f32x8, i32x8, 8, MADD_CONTRACT)
DEFINE_TILE(tile_avx512, f32x16, i32x16, 16, MADD_CONTRACT)
DEFINE_ROWS(rows_avx2, tile_avx2, 8, 2, CSUB_TARGET_AVX2)
DEFINE_ROWS(rows_avx512, tile_avx512, 16, 3, CSUB_TARGET_AVX512)
#endif

static void rows(const float *x, int64_t ldx, const float *w, int64_t C, float *y, int64_t ldy, int64_t k0, int nk,
                 int64_t lo, int64_t i0, int64_t i1, const epi_t *e)
{
#if CSUB_X86
    int isa = csub_isa_level();
    if (isa >= CSUB_ISA_AVX512) { rows_avx512(x, ldx, w, C, y, ldy, k0, nk, lo, i0, i1, e); return; }
    if (isa >= CSUB_ISA_AVX2) { rows_avx2(x, ldx, w, C, y, ldy, k0, nk, lo, i0, i1, e); return; }
#endif
    rows_baseline(x, ldx, w, C, y, ldy, k0, nk, lo, i0, i1, e);
}

/* Pixels [i0, i1) of one image x[C, HW] -> y[K, HW], slice by slice, each tile's epilogue as it is stored */
static void image(const float *x, const float *w, const float *b, const float *res, int relu, float *y, int64_t C,
                  int64_t K, int64_t HW, int64_t i0, int64_t i1)
{
    epi_t e = {b, res, relu, b || res || relu};
    for (int64_t a = i0; a < i1; a += SLICE) {
        int64_t end = a + SLICE < i1 ? a + SLICE : i1;
        for (int64_t k0 = 0; k0 < K; k0 += OCG)
            rows(x, HW, w, C, y, HW, k0, K - k0 < OCG ? (int)(K - k0) : OCG, i0, a, end, &e);
    }
}

/* x[N,C,HW], w[K,C], b[K] or NULL, res[N,K,HW] or NULL -> y[N,K,HW] = relu?(w . x + b + res) */
void csub_conv1x1_forward(const float *x, const float *w, const float *b, const float *res, int relu, float *y,
                          int64_t N, int64_t C, int64_t HW, int64_t K)
{
    if (N <= 0 || K <= 0 || HW <= 0) return;
    int nt = omp_in_parallel() ? 1 : csub_get_num_threads();
    int split = N < nt;
    if (split && (HW < 16 * nt || (double)K * (double)HW * (double)C < CSUB_PAR_MIN_CONV)) nt = 1, split = 0;
    if (!split && nt > N) nt = (int)N;
    int64_t KHW = K * HW, CHW = C * HW;
    if (nt == 1) { /* no parallel region (csub_conv2d_sparse_forward_planned) */
        for (int64_t n = 0; n < N; n++)
            image(x + n * CHW, w, b, res ? res + n * KHW : NULL, relu, y + n * KHW, C, K, HW, 0, HW);
        return;
    }
    #pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), T = omp_get_num_threads();
        if (split) { /* pixel ranges of whole vectors of 16 */
            int64_t v0, v1, nv = (HW + 15) / 16;
            csub_row_band(nv, t, T, &v0, &v1);
            int64_t i0 = 16 * v0, i1 = 16 * v1 < HW ? 16 * v1 : HW;
            for (int64_t n = 0; n < N && i1 > i0; n++)
                image(x + n * CHW, w, b, res ? res + n * KHW : NULL, relu, y + n * KHW, C, K, HW, i0, i1);
        } else {
            int64_t n0, n1;
            csub_row_band(N, t, T, &n0, &n1);
            for (int64_t n = n0; n < n1; n++)
                image(x + n * CHW, w, b, res ? res + n * KHW : NULL, relu, y + n * KHW, C, K, HW, 0, HW);
        }
    }
}
