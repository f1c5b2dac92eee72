/* conv_stem.c - convolution with few input taps (a network's stem), float32, forward.
 *
 * y[n][k][p][q] = relu?(sum_{c,r,s} w[k][c][r][s] xpad[n][c][p*st + r][q*st + s] + b[k]
 *                       + res[n][k][p][q])
 *
 * for a weight of few taps per output (C R S <= STEM_MAX_TAPS: ResNet18's 3 x 7 x 7 stride-2
 * stem). im2col would lay out C R S rows of every output pixel (147 x 12544 floats an image
 * there) for sgemm, which packs them again and leaves the epilogue to another pass. Here each
 * image is laid out once as phase planes (as the CSR kernels do, csr.c): the zero-padded input
 * split into its st x st sub-grids xph[c][a][b][i][j] = xpad[c][i*st + a][j*st + b], in which
 * tap (r, s) of output (p, q) reads plane (r % st, s % st) at (p + r/st, q + s/st): a plain
 * shift. A register tile of 8 output channels x V vectors of one output row sums over the taps
 * (per tap: V loads of the plane row, 8 broadcast weights, 8 V multiply-adds), then the bias,
 * residual and ReLU are applied in registers as it is stored. The weight is packed per call into
 * groups of 8 channels, tap-major (wg[t][8]), so that a tap's 8 weights are adjacent.
 *
 * Threads split the batch, or at batch < threads the output rows of each image (csub_row_band;
 * each thread lays out the plane rows its band reads).
 *
 * Variants by instruction-set level (csub_isa_level): AVX-512 (V = 3 vectors of 16), AVX2 (2 of
 * 8), the baseline (2 of 4); a row's last pixels (fewer than a vector) in one more vector, of
 * which only they are stored. Each output is summed over the taps in order with one fused
 * multiply-add per term at every level (the baseline by fmaf), so every level and every split
 * computes the same bits (those of OpenBLAS's sgemm on the im2col columns, which sums the same
 * way), as conv_pointwise.c.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#include "internal.h"
#include "tile.h"

CSUB_FP_CONTRACT_FAST

#define OCG 8 /* output channels per tile */

/* The layout of one call: phase planes and the taps' offsets into them */
typedef struct {
    int64_t C, H, W, K, R, S, st, pad, P, Q;
    int64_t sa, sb;     /* phases used along each axis: min(st, R), min(st, S) */
    int64_t Hph, Wph;   /* plane size: P + (R-1)/st rows, Q + (S-1)/st + slack columns */
    int64_t plane;      /* Hph * Wph */
} sgeom;

static sgeom make_sgeom(int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S, int64_t st, int64_t pad)
{
    sgeom g;
    g.C = C, g.H = H, g.W = W, g.K = K, g.R = R, g.S = S, g.st = st, g.pad = pad;
    g.P = csub_conv_out_size(H, R, st, pad);
    g.Q = csub_conv_out_size(W, S, st, pad);
    g.sa = st < R ? st : R;
    g.sb = st < S ? st : S;
    g.Hph = g.P + (R - 1) / st;
    /* a row's last vector is computed whole (its extra lanes dropped): 16 columns of slack, zeros */
    g.Wph = g.Q + (S - 1) / st + 16;
    g.plane = g.Hph * g.Wph;
    return g;
}

/* planes[(c*sa + a)*sb + b][i][j] = xpad[c][i*st + a][j*st + b] (0 outside x), plane rows [i0, i1);
 * at stride 1 or 2 on AVX-512 a row 16 columns at a time (csub_plane_row_avx512: the scalar loop
 * below took 0.1 ms of ResNet18's 1.25 ms stem at batch 1) */
static void lay_out(const sgeom *g, const float *xn, float *planes, int64_t i0, int64_t i1)
{
#if CSUB_X86
    int vec = g->st <= 2 && g->Wph < INT32_MAX - 16 && csub_isa_level() >= CSUB_ISA_AVX512;
#endif
    for (int64_t c = 0; c < g->C; c++)
        for (int64_t a = 0; a < g->sa; a++)
            for (int64_t b = 0; b < g->sb; b++) {
                float *pl = planes + ((c * g->sa + a) * g->sb + b) * g->plane;
                int64_t j0, j1; /* the columns that read x */
                csub_plane_cols(g->st, b, g->pad, g->W, g->Wph, &j0, &j1);
                for (int64_t i = i0; i < i1; i++) {
                    float *row = pl + i * g->Wph;
                    int64_t h = i * g->st + a - g->pad;
                    if (h < 0 || h >= g->H) {
                        memset(row, 0, sizeof(float) * (size_t)g->Wph);
                        continue;
                    }
                    const float *xr = xn + (c * g->H + h) * g->W;
#if CSUB_X86
                    if (vec) {
                        csub_plane_row_avx512(row, xr + b - g->pad, g->Wph, j0, j1, g->st);
                        continue;
                    }
#endif
                    for (int64_t j = 0; j < g->Wph; j++) {
                        int64_t w = j * g->st + b - g->pad;
                        row[j] = w >= 0 && w < g->W ? xr[w] : 0.0f;
                    }
                }
            }
}

/* The epilogue of a tile: bias, residual rows (the image's res[K, PQ]) or NULL, ReLU */
typedef struct {
    const float *b, *res;
    int relu, any;
} sepi;

/* One tile: y[k0 + j][o .. o + (V - 1) VW + last) (the image's y[K, PQ], o = p Q + q) =
 * epilogue(sum_t wg[t][j] src[off[t] + ...]), src the planes at output (p, q); j < nk; the last
 * vector computed whole (the planes' rows have the slack) and `last` of its lanes stored. V is a
 * constant at each call, so the 8 x V accumulators live in registers. */
#define DEFINE_TILE(NAME, VT, VI, VW, MADD)                                                          \
    static CSUB_ALWAYS_INLINE void NAME(const float *src, const int64_t *off, const float *wg, int64_t T,  \
                                        float *y, int64_t PQ, int64_t k0, int nk, int64_t o, const int V,  \
                                        int last, const sepi *e)                                      \
    {                                                                                                 \
        VT acc[OCG][3];                                                                               \
        _Pragma("GCC unroll 8") for (int j = 0; j < OCG; j++)                                        \
            _Pragma("GCC unroll 3") for (int v = 0; v < V; v++) acc[j][v] = (VT){0};                 \
        for (int64_t t = 0; t < T; t++) {                                                             \
            const float *xt = src + off[t];                                                           \
            const float *wt = wg + t * OCG;                                                           \
            VT xv[3];                                                                                 \
            _Pragma("GCC unroll 3") for (int v = 0; v < V; v++) memcpy(&xv[v], xt + v * VW, sizeof(VT)); \
            _Pragma("GCC unroll 8") for (int j = 0; j < OCG; j++) {                                  \
                float wj = wt[j];                                                                     \
                _Pragma("GCC unroll 3") for (int v = 0; v < V; v++) MADD(acc[j][v], xv[v], wj);       \
            }                                                                                         \
        }                                                                                             \
        _Pragma("GCC unroll 8") for (int j = 0; j < OCG; j++) {                                      \
            if (j >= nk) continue;                                                                    \
            int64_t row = (k0 + j) * PQ + o;                                                          \
            float bk = e->b ? e->b[k0 + j] : 0.0f;                                                    \
            _Pragma("GCC unroll 3") for (int v = 0; v < V; v++) {                                    \
                VT a = acc[j][v];                                                                     \
                size_t nb = sizeof(float) * (size_t)(v == V - 1 ? last : VW);                         \
                if (e->any) TILE_EPILOGUE(VT, VI, a, bk, e->res, row + v * VW, nb, e->relu);          \
                memcpy(y + row + v * VW, &a, nb);                                                     \
            }                                                                                         \
        }                                                                                             \
    }

DEFINE_TILE(tile_baseline, f32x4, i32x4, 4, MADD_BASELINE)

/* Output row p of channels [k0, k0 + nk): tiles of VMAX vectors, then of one, then one vector of
 * which the row's last pixels are kept */
#define DEFINE_ROW(NAME, TILE, VW, VMAX, ATTR)                                                       \
    ATTR static void NAME(const sgeom *g, const float *planes, const int64_t *off, const float *wg,  \
                          float *y, int64_t p, int64_t k0, int nk, const sepi *e)                    \
    {                                                                                                 \
        int64_t T = g->C * g->R * g->S, PQ = g->P * g->Q, q = 0;                                     \
        const float *src = planes + p * g->Wph;                                                       \
        for (; q + VMAX * VW <= g->Q; q += VMAX * VW)                                                 \
            TILE(src + q, off, wg, T, y, PQ, k0, nk, p * g->Q + q, VMAX, VW, e);                      \
        for (; q + VW <= g->Q; q += VW) TILE(src + q, off, wg, T, y, PQ, k0, nk, p * g->Q + q, 1, VW, e); \
        if (q < g->Q) TILE(src + q, off, wg, T, y, PQ, k0, nk, p * g->Q + q, 1, (int)(g->Q - q), e);  \
    }
DEFINE_ROW(row_baseline, tile_baseline, 4, 2, )

#if CSUB_X86
DEFINE_TILE(tile_avx2, f32x8, i32x8, 8, MADD_CONTRACT)
DEFINE_TILE(tile_avx512, f32x16, i32x16, 16, MADD_CONTRACT)
DEFINE_ROW(row_avx2, tile_avx2, 8, 2, CSUB_TARGET_AVX2)
DEFINE_ROW(row_avx512, tile_avx512, 16, 3, CSUB_TARGET_AVX512)
#endif

static void out_row(const sgeom *g, const float *planes, const int64_t *off, const float *wg, float *y, int64_t p,
                    int64_t k0, int nk, const sepi *e)
{
#if CSUB_X86
    int isa = csub_isa_level();
    if (isa >= CSUB_ISA_AVX512) { row_avx512(g, planes, off, wg, y, p, k0, nk, e); return; }
    if (isa >= CSUB_ISA_AVX2) { row_avx2(g, planes, off, wg, y, p, k0, nk, e); return; }
#endif
    row_baseline(g, planes, off, wg, y, p, k0, nk, e);
}

/* Output rows [p0, p1) of one image: its planes laid out for them, then each group of 8 channels
 * row by row (the group's packed weight stays in L1, the band's plane rows in L2) */
static void image_rows(const sgeom *g, const float *xn, const float *wpk, const int64_t *off, const sepi *e,
                       float *yn, float *planes, int64_t p0, int64_t p1)
{
    int64_t T = g->C * g->R * g->S;
    lay_out(g, xn, planes, p0, p1 + (g->R - 1) / g->st < g->Hph ? p1 + (g->R - 1) / g->st : g->Hph);
    for (int64_t k0 = 0; k0 < g->K; k0 += OCG) {
        int nk = g->K - k0 < OCG ? (int)(g->K - k0) : OCG;
        for (int64_t p = p0; p < p1; p++) out_row(g, planes, off, wpk + k0 * T, yn, p, k0, nk, e);
    }
}

/* Where it was measured against im2col and sgemm (1 thread, batch 2; the same bits): 7x7 stride 2
 * on 3 x 224 x 224 (ResNet18's stem) 1.53-1.55x, 5x5 on 3 x 96 x 96 2.1x, 5x5 stride 2 on 3 x 64 x 64
 * 1.8x, 7x7 stride 2 on 1 x 64 x 64 2.5x; on 28-wide rows (a vector and a part of one) it lost, 0.70-
 * 0.87x with 25 to 50 taps. */
int csub_conv_stem_applies(int64_t C, int64_t R, int64_t S, int64_t Q)
{
    return C * R * S <= STEM_MAX_TAPS && R * S > 1 && Q >= 32;
}

int csub_conv_stem_forward(const float *x, const float *w, const float *b, const float *res, int relu, float *y,
                           int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S,
                           int64_t stride, int64_t pad)
{
    sgeom g = make_sgeom(C, H, W, K, R, S, stride, pad);
    int64_t T = C * R * S, Kp = (K + OCG - 1) / OCG * OCG, PQ = g.P * g.Q;
    int64_t pf = g.sa * g.sb * C * g.plane; /* one image's planes */
    int nt = omp_in_parallel() ? 1 : csub_get_num_threads();
    int split = N < nt;
    if (split && (g.P < nt || (double)K * (double)PQ * (double)T < CSUB_PAR_MIN_CONV)) nt = 1, split = 0;
    if (!split && nt > N) nt = (int)N;
    float *wpk = malloc(sizeof(float) * (size_t)(Kp * T)), *planes = malloc(sizeof(float) * (size_t)(pf * nt));
    int64_t *off = malloc(sizeof(int64_t) * (size_t)T);
    if (!wpk || !planes || !off) {
        free(wpk), free(planes), free(off);
        return CSUB_ERR_NOMEM;
    }
    /* wpk[group][t][j] = w[group * 8 + j][t] (rows past K repeat row K - 1; their sums are dropped) */
    for (int64_t k0 = 0; k0 < Kp; k0 += OCG)
        for (int64_t t = 0; t < T; t++)
            for (int j = 0; j < OCG; j++) {
                int64_t k = k0 + j < K ? k0 + j : K - 1;
                wpk[k0 * T + t * OCG + j] = w[k * T + t];
            }
    for (int64_t c = 0, t = 0; c < C; c++) /* tap (c, r, s): its plane, shifted */
        for (int64_t r = 0; r < R; r++)
            for (int64_t s = 0; s < S; s++, t++)
                off[t] = ((c * g.sa + r % stride) * g.sb + s % stride) * g.plane + (r / stride) * g.Wph + s / stride;
    #pragma omp parallel num_threads(nt)
    {
        int th = omp_get_thread_num(), TH = omp_get_num_threads();
        float *pl = planes + pf * th;
        int64_t lo, hi;
        csub_row_band(split ? g.P : N, th, TH, &lo, &hi);
        for (int64_t n = split ? 0 : lo; n < (split ? N : hi); n++) {
            sepi e = {b, res ? res + n * K * PQ : NULL, relu, b || res || relu};
            image_rows(&g, x + n * C * H * W, wpk, off, &e, y + n * K * PQ, pl, split ? lo : 0, split ? hi : g.P);
        }
    }
    free(wpk), free(planes), free(off);
    return CSUB_OK;
}
