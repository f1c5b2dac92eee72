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
 * csub_conv2d_int8_forward_rows computes some output rows of one image on the
 * calling thread (a row band of the runtime, runtime_bands.c), from the rows
 * a csub_rows holds: the planes' rows start at the band's first output row,
 * and the same sums give the same bits as the whole image's.
 * Workspace is allocated once per call, never in the loops.
 *
 * Files: int8.c (this one) the drivers, int8_quant.c the activation and
 * weight codes, int8_gemm.c the product's microkernels.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#include "int8_internal.h"

/* The kernels of the instruction-set level in use (csub_isa_level). */
static variant get_variant(void)
{
    variant v;
    csub_int8_quantizers(&v.quant4, &v.quantb);
    v.gemm = csub_int8_gemm(&v.wide_out);
    return v;
}

/* ------------------------------------------------------------ geometry */

#define SLACK 128             /* cells past the last plane: reads of discarded columns stay in the buffer */
#define SPLIT_MIN (1L << 23)  /* multiply-adds below which an image is not shared by threads */
#define TEAM_MIN (1L << 20)   /* multiply-adds below which a call runs on one thread */

typedef struct {
    int64_t C, H, W, K, R, S, st, pad, P, Q;
    int64_t hoff;        /* padded row of the first output row's taps (a row band's: its first row times st) */
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

/* The geometry of output rows [p0, p1) (p1 < 0: every row) of a conv on images of H x W */
static geom make_geom(int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S, int64_t st, int64_t pad,
                      int64_t p0, int64_t p1)
{
    geom g;
    g.C = C, g.H = H, g.W = W, g.K = K, g.R = R, g.S = S, g.st = st, g.pad = pad;
    g.P = p1 < 0 ? csub_conv_out_size(H, R, st, pad) : p1 - p0;
    g.hoff = p0 * st;
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

/* planes[(c'*sa + a)*sb + b][i*Wph + j] = cell of xpad[4c'..4c'+3][hoff + i*st + a][j*st + b]
 * for quadruples [cg0, cg1); padding holds the zero point. x: the rows of x[C,H,W] (internal.h:
 * a whole image, or a row band with its neighbours' rows), every row the planes read.
 * Returns 1 if x has a NaN there. */
static int build_planes(const geom *g, const variant *vr, const xgrid *xg, const csub_rows *x,
                        uint32_t *planes, int64_t cg0, int64_t cg1)
{
    int64_t st = g->st, pad = g->pad, H = g->H, W = g->W, Wph = g->Wph, Hph = g->Hph;
    int nan = 0;
    for (int64_t cg = cg0; cg < cg1; cg++) {
        int64_t nch = g->C - 4 * cg < 4 ? g->C - 4 * cg : 4;
        uint32_t chmask = nch == 4 ? 0xffffffffu : (1u << (8 * nch)) - 1;
        uint32_t padv = (uint32_t)xg->zu * 0x01010101u & chmask;
        for (int64_t a = 0; a < g->sa; a++) {
            /* plane rows [i0, i1) read x rows h = hoff + i * st + a - pad in [0, H) */
            int64_t i0, i1, h0 = g->hoff + a - pad;
            valid_range(-h0, H - h0, st, Hph, &i0, &i1);
            for (int64_t b = 0; b < g->sb; b++) {
                uint32_t *pl = planes + (cg * g->nph + a * g->sb + b) * g->plane;
                int64_t j0, j1;
                valid_range(pad - b, W + pad - b, st, Wph, &j0, &j1);
                fill_cells(pl, i0 * Wph, padv);
                fill_cells(pl + i1 * Wph, (Hph - i1) * Wph, padv);
                /* runs of rows x holds evenly spaced: its own rows in one, a neighbour's row alone; a
                 * row past those (a band's plane row that only discarded columns read) holds padding */
                for (int64_t i = i0, n; i < i1 && j1 > j0; i += n) {
                    int64_t h = h0 + i * st;
                    n = h >= x->lo && h < x->hi ? (x->hi - 1 - h) / st + 1 : 1;
                    if (n > i1 - i) n = i1 - i;
                    if (!csub_rows_at(x, 0, h, W)) {
                        fill_cells(pl + i * Wph + j0, j1 - j0, padv);
                        continue;
                    }
                    const float *xr[4];
                    for (int j = 0; j < 4; j++)
                        xr[j] = csub_rows_at(x, 4 * cg + (j < nch ? j : 0), h, W) + j0 * st + b - pad;
                    nan |= vr->quant4(xr, j1 - j0, st, n, st * W, pl + i * Wph + j0, Wph, xg, chmask);
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
    int relu;              /* the ReLU after the residual */
    const uint16_t *vmask; /* [Wph]: real lanes of a vector from each column of a wide row */
} conv_ctx;

/* The product for output rows [kb0, kb1) (blocks) x wide columns [o0, o1) of
 * one image whose planes are built: column terms, product, wide rows -> y. */
static void conv_part(const conv_ctx *cx, const img_buf *ib, const thr_buf *tb, float *yn, const float *rn,
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
    jb.res = compact ? NULL : rn; /* else added as the real columns are copied out */
    jb.relu = compact ? 0 : cx->relu;
    if (!g->direct_y && cx->vr.wide_out) {
        jb.vmask = cx->vmask;
        jb.Wph = g->Wph;
        jb.Q = g->Q;
    }
    cx->vr.gemm(&jb, kb0, kb1, o0, o1);
    if (compact) { /* the real columns of the wide rows [o0, o1) (whole rows), + res, the ReLU */
        int64_t k1 = kb1 * MR < g->K ? kb1 * MR : g->K;
        for (int64_t k = kb0 * MR; k < k1; k++)
            for (int64_t p = o0 / g->Wph; p < o1 / g->Wph; p++) {
                float *yr = yn + (k * g->P + p) * g->Q;
                const float *wr = ib->wide + k * g->L + p * g->Wph, *rr = rn ? rn + (k * g->P + p) * g->Q : NULL;
                if (!rr && !cx->relu) {
                    memcpy(yr, wr, sizeof(float) * (size_t)g->Q);
                    continue;
                }
                for (int64_t q = 0; q < g->Q; q++) {
                    float v = rr ? wr[q] + rr[q] : wr[q];
                    yr[q] = cx->relu && v <= 0.0f ? 0.0f : v;
                }
            }
    }
}

/* One image x[C,H,W] -> y[K,P,Q] by thread t of T sharing the image buffers
 * (T = 1: alone). The planes are built by channel quadruples, then the
 * product is split by output rows (or by row blocks of the weight when the
 * rows are few), each thread with its own column terms. Returns 1 if x has a NaN. */
static int conv_image(const conv_ctx *cx, const csub_rows *xn, float *yn, const float *rn, const img_buf *ib,
                      const thr_buf *tb, int t, int T, const float *next)
{
    const geom *g = &cx->g;
    int64_t lo, hi, nkb = (g->K + MR - 1) / MR;
    split(g->Cg, 1, t, T, &lo, &hi);
    int nan = build_planes(g, &cx->vr, &cx->xg, xn, ib->planes, lo, hi);
    if (T > 1) {
        #pragma omp barrier
    }
    if (T == 1) {
        conv_part(cx, ib, tb, yn, rn, 0, nkb, 0, g->L, next);
    } else if (g->P >= 2 * T || nkb < T) {
        split(g->P, 1, t, T, &lo, &hi);
        if (lo < hi) conv_part(cx, ib, tb, yn, rn, 0, nkb, lo * g->Wph, hi * g->Wph, NULL);
    } else {
        split(nkb, 1, t, T, &lo, &hi);
        if (lo < hi) conv_part(cx, ib, tb, yn, rn, lo, hi, 0, g->L, NULL);
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
static void row_terms(const csub_qweight *qw, const xgrid *xg, float xscale, const float *oscale,
                      const float *b, int32_t *rowc, float *alpha, float *beta)
{
    int64_t Kpad = (qw->K + MR - 1) / MR * MR;
    memset(rowc, 0, sizeof(int32_t) * (size_t)Kpad);
    memset(alpha, 0, sizeof(float) * (size_t)Kpad);
    memset(beta, 0, sizeof(float) * (size_t)Kpad);
    uint32_t zu = (uint32_t)xg->zu, zw = (uint32_t)qw->zero_point, cols = (uint32_t)qw->cols;
    float s = xscale * qw->scale;
    for (int64_t k = 0; k < qw->K; k++) {
        rowc[k] = (int32_t)(cols * zw * zu - zu * (uint32_t)qw->rowsum[k]);
        alpha[k] = oscale ? s * oscale[k] : s;
        beta[k] = b ? b[k] : 0.0f;
    }
}

/* Bytes n rounded up to whole cache lines: the parts of one allocation */
static size_t lines(size_t n) { return (n + 63) / 64 * 64; }

static int grid_ok(const csub_qweight *qw, int32_t xzero_point)
{
    int32_t qmin, qmax;
    if (!qw || !qw->q || !qw->rowsum || qw->bits < 2 || qw->bits > 8) return 0;
    qrange(qw->bits, &qmin, &qmax);
    return xzero_point >= qmin && xzero_point <= qmax;
}

/* The forward of csub_conv2d_int8_forward, or with rows (N = 1) that of output rows [p0, p1) of the
 * image whose rows `rows` holds, on the calling thread (csub_conv2d_int8_forward_rows) */
static int conv_forward(const float *x, const csub_rows *rows, int64_t p0, int64_t p1, float xscale,
                        int32_t xzero_point, const csub_qweight *qw, const float *oscale, const float *b,
                        const float *res, int relu, float *y, int64_t N, int64_t C, int64_t H, int64_t W, int64_t R,
                        int64_t S, int64_t stride, int64_t pad)
{
    if (!grid_ok(qw, xzero_point) || N < 0 || C < 1 || H < 1 || W < 1 || R < 1 || S < 1 ||
        stride < 1 || pad < 0 || H + 2 * pad < R || W + 2 * pad < S || C * R * S != qw->cols ||
        (qw->taps != R * S && qw->taps != 1))
        return CSUB_ERR_ARG;
    int64_t K = qw->K;
    geom g = make_geom(C, H, W, K, R, S, stride, pad, rows ? p0 : 0, rows ? p1 : -1);
    if (N == 0 || g.P <= 0) return CSUB_OK;
    if (!(xscale > 0.0f) || !isfinite(xscale)) { /* every activation code is the zero point */
        fill_bias(y, b, N, K, g.P * g.Q);
        for (int64_t i = 0; (res || relu) && i < N * K * g.P * g.Q; i++) {
            float v = res ? y[i] + res[i] : y[i];
            y[i] = relu && v <= 0.0f ? 0.0f : v;
        }
        return CSUB_OK;
    }
    conv_ctx cx;
    cx.g = g;
    cx.vr = get_variant();
    cx.xg = make_xgrid(xscale, xzero_point, qw->bits);
    cx.zw = qw->zero_point;
    cx.relu = relu;
    int zw = cx.zw != 0;

    /* Threads: whole images, or (large images, fewer left than threads) shared images. */
    int nt = rows ? 1 : csub_get_num_threads();
    double macs = (double)K * (double)g.G * 4.0 * (double)g.L; /* per image */
    if (macs * (double)N < (double)TEAM_MIN) nt = 1;
    int shared = nt > 1 && macs >= (double)SPLIT_MIN;
    int64_t Nper = shared ? N - N % nt : N; /* images done whole, one per thread */
    if (!shared && nt > N) nt = (int)N;
    int nimg = N < nt ? (int)N : nt;         /* image buffers: one per thread, or one shared */
    int wide_buf = !g.direct_y && !cx.vr.wide_out;
    size_t img_f = (size_t)g.cells + (wide_buf ? (size_t)(K * g.L) : 0);
    size_t thr_f = zw ? (size_t)g.sums + (size_t)(g.L + 64) : 1;

    int8_t *A = qw->taps == R * S ? NULL : csub_int8_regroup(qw, R * S);
    /* one allocation: the work space, the groups' offsets, the row terms, the lanes of each column */
    size_t kpad = (size_t)((K + MR - 1) / MR * MR);
    size_t b_ws = lines(sizeof(float) * (img_f * (size_t)nimg + thr_f * (size_t)nt));
    size_t b_off = lines(sizeof(int64_t) * (size_t)g.G), b_row = lines(sizeof(float) * kpad);
    char *mem = malloc(b_ws + b_off + 3 * b_row + lines(sizeof(uint16_t) * (size_t)g.Wph));
    float *ws = (float *)mem;
    int64_t *off = mem ? (int64_t *)(mem + b_ws) : NULL;
    int32_t *rowc = mem ? (int32_t *)(mem + b_ws + b_off) : NULL;
    float *alpha = mem ? (float *)(mem + b_ws + b_off + b_row) : NULL;
    float *beta = mem ? (float *)(mem + b_ws + b_off + 2 * b_row) : NULL;
    uint16_t *vmask = mem ? (uint16_t *)(mem + b_ws + b_off + 3 * b_row) : NULL;
    cx.vmask = vmask;
    int st = (!mem || (qw->taps != R * S && !A)) ? CSUB_ERR_NOMEM : CSUB_OK;
    if (st == CSUB_OK) {
        row_terms(qw, &cx.xg, xscale, oscale, b, rowc, alpha, beta);
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
            if (rows) { /* a row band, this thread alone */
                nan |= conv_image(&cx, rows, y, res, &own, &tb, 0, 1, NULL);
            } else if (Nper == N) { /* whole images only: no barrier before the end of the region */
                #pragma omp for schedule(static) nowait
                for (int64_t n = 0; n < N; n++)
                    nan |= conv_image(&cx, &(csub_rows){x + n * C_HW, NULL, NULL, 0, H, H * W}, y + n * KPQ,
                                      res ? res + n * KPQ : NULL, &own, &tb, 0, 1,
                                      n + 1 < N ? x + (n + 1) * C_HW : NULL);
            } else {
                #pragma omp for schedule(static)
                for (int64_t n = 0; n < Nper; n++)
                    nan |= conv_image(&cx, &(csub_rows){x + n * C_HW, NULL, NULL, 0, H, H * W}, y + n * KPQ,
                                      res ? res + n * KPQ : NULL, &own, &tb, 0, 1,
                                      n + 1 < Nper ? x + (n + 1) * C_HW : NULL);
            }
            /* the rest: every thread on each image, in the first image buffers */
            img_buf sh = {(uint32_t *)ws, wide_buf ? ws + g.cells : NULL};
            for (int64_t n = Nper; n < N && !rows; n++) {
                if (n > Nper) {
                    #pragma omp barrier
                }
                nan |= conv_image(&cx, &(csub_rows){x + n * C_HW, NULL, NULL, 0, H, H * W}, y + n * KPQ,
                                  res ? res + n * KPQ : NULL, &sh, &tb, t, T, NULL);
            }
        }
        if (nan) st = CSUB_ERR_ARG;
    }
    free(A);
    free(mem);
    return st;
}

int csub_conv2d_int8_forward(const float *x, float xscale, int32_t xzero_point,
                             const csub_qweight *qw, const float *oscale, const float *b, float *y,
                             int64_t N, int64_t C, int64_t H, int64_t W,
                             int64_t R, int64_t S, int64_t stride, int64_t pad)
{
    return conv_forward(x, NULL, 0, -1, xscale, xzero_point, qw, oscale, b, NULL, 0, y, N, C, H, W, R, S, stride,
                        pad);
}

int csub_conv2d_int8_forward_res(const float *x, float xscale, int32_t xzero_point, const csub_qweight *qw,
                                 const float *oscale, const float *b, const float *res, int relu, float *y, int64_t N,
                                 int64_t C, int64_t H, int64_t W, int64_t R, int64_t S, int64_t stride, int64_t pad)
{
    return conv_forward(x, NULL, 0, -1, xscale, xzero_point, qw, oscale, b, res, relu, y, N, C, H, W, R, S, stride,
                        pad);
}

int csub_conv2d_int8_forward_rows(const csub_rows *x, float xscale, int32_t xzero_point, const csub_qweight *qw,
                                  const float *oscale, const float *b, const float *res, int relu, float *y, int64_t C,
                                  int64_t H, int64_t W, int64_t R, int64_t S, int64_t stride, int64_t pad, int64_t p0,
                                  int64_t p1)
{
    if (!x || p0 < 0 || p1 > csub_conv_out_size(H, R, stride, pad) || p1 < p0 ||
        !csub_rows_cover(x, H, R, stride, pad, p0, p1))
        return CSUB_ERR_ARG;
    return conv_forward(NULL, x, p0, p1, xscale, xzero_point, qw, oscale, b, res, relu, y, 1, C, H, W, R, S, stride,
                        pad);
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
    size_t kpad = (size_t)((O + MR - 1) / MR * MR);
    int32_t *rowc = malloc(sizeof(int32_t) * kpad);
    float *alpha = malloc(sizeof(float) * kpad), *beta = malloc(sizeof(float) * kpad);
    int st = (!off || !cells || (zw && !colc) || !yt || !tmp || !rowc || !alpha || !beta) ? CSUB_ERR_NOMEM : CSUB_OK;
    if (st == CSUB_OK) {
        row_terms(qw, &xg, xscale, oscale, b, rowc, alpha, beta);
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
