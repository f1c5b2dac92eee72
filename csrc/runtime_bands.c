/* runtime_bands.c - one image on several threads as row bands (the overview: runtime.c).
 *
 * Split layer by layer, each layer's halves of one image would be read by the other core in the
 * next layer (too slow for small layers: RT_SPLIT_MIN_FLOPS). A forward of one image on nt threads
 * runs instead, where the graph allows, as nt bands of rows (at most one a processor: band_threads): thread t holds rows [H t / nt, H (t + 1) / nt) of every
 * value of H rows (csub_row_band), in buffers of its own (its workspace), and runs every layer up
 * to the global average pool on its rows alone. Only three things cross between the cores:
 *   - before a 3x3 conv, the rows next to a band: each thread copies its first and last row of the
 *     conv's input to a buffer of its own (band_buf, one place per conv, never reused within the
 *     forward), all threads meet at a barrier, and the conv reads the row above its band and the
 *     row below from its neighbours' copies (csub_rows);
 *   - before a group norm, each band's sums per group (in double, about the band's own first value
 *     of the group: csub_groupnorm_band_sums), the same way; each thread then adds every band's
 *     and normalises its rows;
 *   - at the pool, each band's per-channel sums: the threads meet, and thread 0 adds them and runs
 *     the layers after the pool (the classifier) alone.
 * A 1x1 conv, a batch norm, a ReLU and an add read only the thread's own rows: a stride-2 1x1 conv
 * needs its input band to start at twice its output band's first row, as a 32-row value split
 * in halves does. A sparse 1x1 conv runs its band as an image of its own rows, with the offsets of
 * its kept weights for that height (op->band_foff, at the plan; a batch norm it applies as it reads,
 * csub_pre, as on the whole image); a sparse 3x3 conv keeps the whole image's plane geometry (its
 * offsets and compiled code are made for it) and lays out only its band's plane rows, from the
 * band's rows and its neighbours' (csub_conv2d_sparse_forward_rows, _jit_rows).
 *
 * An integer (8-bit) conv runs on its band on the activation grid recorded in training: a 1x1 one
 * as an image of the band's rows, a 3x3 one laying out the codes of its band's rows and of the
 * neighbours' edge rows (csub_conv2d_int8_forward_rows), the residual and the ReLU applied as its
 * tiles are stored. A grid never recorded (each batch's own range) needs the whole image: no bands.
 *
 * The plan (band_plan) checks every layer before the pool is one of those: a 3x3 pad-1 conv, dense
 * on the direct or Winograd kernels, sparse or integer, a 1x1 conv, a batch or group norm, a ReLU,
 * an add; one global average pool, then only layers on its output; every band at least 16 values a
 * plane (narrower planes go through the kernels' one-value-at-a-time tails). Any other graph (other
 * pools and kernel sizes, fake-quantized layers of more than 8 bits) runs as before. CSUB_BANDS=0
 * in the environment at set_alpha turns the bands off.
 *
 * A Winograd conv runs on a band's plane with the tile size csub_winograd_pays picks for it (F(2x2)
 * where a band has at most 2 tiles of F(4x4), as cPreResNet20's 8 x 8 stage halved): its weight is
 * transformed a second time where that differs from the whole image's (op->wwb, at the plan).
 *
 * Results: the direct and integer kernels compute the same bits as on the whole image; Winograd
 * tiles start at the band's first row, and the group norms and the pool add the bands' sums: a few
 * float32 roundings (which, before an integer layer, can cross a quantization step)
 * (tests/test_bands.py).
 */
#include <string.h>

#include <omp.h>

#include "runtime_internal.h"

/* op i's conv kernel on bands: 3 (3x3, pad 1: dense on the direct or Winograd kernel, sparse, or
 * integer), 1 (1x1, no padding: dense, integer, or sparse on the gather, a batch norm it reads through
 * applied), 0 (none) */
static int band_conv(const csub_model *m, const op_t *op)
{
    if (op->kind != OP_CONV) return 0;
    if (op->path == PATH_INT8) { /* on the layer's own activation grid (a dynamic one is the whole image's) */
        if (op->act_dynamic || op->pre >= 0) return 0;
        if (op->k == 1 && op->pad == 0) return 1;
        return op->k == 3 && op->pad == 1 && (op->stride == 1 || op->stride == 2) ? 3 : 0;
    }
    if (op->path == PATH_SPARSE) {
        if (op->k == 1 && op->pad == 0 && !op->spj) return 1;
        return op->k == 3 && op->pad == 1 && op->pre < 0 && (op->stride == 1 || op->stride == 2) ? 3 : 0;
    }
    if (op->path != PATH_DENSE || op->pre >= 0) return 0;
    if (op->ww || op->wd) return 3;
    return op->k == 1 && op->pad == 0 && !op->oscale && m->fold ? 1 : 0;
}

/* Whether the graph runs as nt row bands (the file's comment lists what it takes); sets the pool's
 * op *gap, each 3x3 conv's place for its halo rows halo[op] (halo may be NULL), where the band's
 * sums go (*sums) and the floats of a thread's part of band_buf (*part) */
static int band_check(const csub_model *m, int nt, int64_t *halo, int *gap, int64_t *sums, int64_t *part)
{
    int g = -1;
    int64_t off = 0;
    for (int i = 0; i < m->nops; i++) {
        const op_t *op = &m->ops[i];
        shape3 s = m->vshape[op->x], o = m->vshape[op->y];
        if (halo) halo[i] = -1;
        if (g >= 0) { /* after the pool: layers on its output only */
            if (s.h != 1 || s.w != 1 || op->kind == OP_GAP || op->x2 >= 0) return 0;
            continue;
        }
        int xv = op->pre >= 0 ? m->ops[op->pre].x : op->x; /* the value it reads */
        /* every band at least a vector of values a plane (the kernels take narrower planes one value
         * at a time: a 2 x 4 band's 1x1 convs took 1 ms) */
        if (s.h / nt * s.w < 16 || (op->kind != OP_GAP && o.h / nt * o.w < 16)) return 0;
        /* the input is read whole, by a 3x3 conv only; a residual or a second addend is a band */
        if ((op->kind != OP_CONV && m->vslot[xv] < 0) || (op->x2 >= 0 && m->vslot[op->x2] < 0)) return 0;
        switch (op->kind) {
        case OP_CONV: {
            int k = band_conv(m, op);
            if (!k || (k == 1 && m->vslot[op->x] < 0)) return 0; /* a 1x1 conv reads its rows of a band buffer */
            for (int t = 0; t < nt; t++) {
                int64_t a0, a1, p0, p1;
                csub_row_band(s.h, t, nt, &a0, &a1);
                csub_row_band(o.h, t, nt, &p0, &p1);
                if (k == 1 && (a0 != p0 * op->stride || csub_conv_out_size(a1 - a0, 1, op->stride, 0) != p1 - p0))
                    return 0;
                csub_rows r = {NULL, NULL, NULL, a0, a1, 0};
                r.up = t > 0 ? (const float *)m : NULL; /* held: the neighbours' rows (any non-NULL) */
                r.dn = t < nt - 1 ? (const float *)m : NULL;
                if (k == 3 && m->vslot[op->x] >= 0 && !csub_rows_cover(&r, s.h, 3, op->stride, 1, p0, p1)) return 0;
            }
            if (k == 3 && m->vslot[op->x] >= 0) {
                if (halo) halo[i] = off;
                off += 2 * s.c * s.w;
            }
            break;
        }
        case OP_NORM:
            if (!op->bn) { /* a group norm: each band's sums (doubles) */
                if (op->agroups < 1 || m->vc[op->x] % op->agroups) return 0;
                off = (off + 1) / 2 * 2;
                if (halo) halo[i] = off;
                off += 6 * op->agroups;
            }
            break; /* one its readers apply (pre_fused): each reader is checked as itself */
        case OP_GAP:
            g = i;
            *sums = off; /* the band's sums */
            off += s.c;
            break;
        case OP_RELU: case OP_ADD: case OP_ALIAS: case OP_FLATTEN:
            break;
        default:
            return 0;
        }
    }
    if (g < 0) return 0;
    *gap = g;
    *part = (off + 1023) / 1024 * 1024; /* each thread's part on pages of its own */
    return 1;
}

/* The tile size of a Winograd conv's Winograd on nt threads' bands where it differs from the whole
 * image's (csub_winograd_pays of the tallest band), else 0 */
static int band_wm(const csub_model *m, const op_t *op, int nt)
{
    if (!op->ww) return 0;
    shape3 s = m->vshape[op->x];
    int wm = csub_winograd_pays(op->ain, op->aout, (s.h + nt - 1) / nt, s.w);
    return wm && wm != op->wm ? wm : 0;
}

/* The plan for nt threads, made once per set_alpha and thread count: whether the graph runs as row
 * bands, band_buf, and the Winograd weights the bands' planes take. CSUB_OK or CSUB_ERR_NOMEM. */
static int band_plan(csub_model *m, int nt)
{
    if (m->band_nt == nt) return CSUB_OK;
    free(m->band_buf);
    m->band_buf = NULL;
    m->band_ok = 0;
    for (int i = 0; i < m->nops; i++) {
        free(m->ops[i].wwb);
        free(m->ops[i].band_foff);
        m->ops[i].wwb = NULL;
        m->ops[i].band_foff = NULL;
    }
    if (!m->band_halo && !(m->band_halo = xcalloc((size_t)m->nops, sizeof(int64_t)))) return CSUB_ERR_NOMEM;
    if (band_check(m, nt, m->band_halo, &m->band_gap, &m->band_sums, &m->band_part)) {
        if (!(m->band_buf = falloc(m->band_part * nt))) return CSUB_ERR_NOMEM;
        for (int i = 0; i < m->nops; i++) {
            op_t *op = &m->ops[i];
            if (op->path == PATH_SPARSE && band_conv(m, op) == 1) { /* the offsets of each band's rows */
                shape3 s = m->vshape[op->x];
                if (!(op->band_foff = malloc(sizeof(int64_t) * (size_t)(nt * (op->nnz > 0 ? op->nnz : 1)))))
                    return CSUB_ERR_NOMEM;
                for (int t = 0; t < nt; t++) {
                    int64_t a0, a1;
                    csub_row_band(s.h, t, nt, &a0, &a1);
                    if (csub_conv2d_sparse_offsets(op->colidx, op->nnz, op->cin, a1 - a0, s.w, 1, 1, op->stride, 0,
                                                   op->band_foff + t * op->nnz))
                        return CSUB_ERR_NOMEM;
                }
            }
            if (!(op->wmb = band_wm(m, op, nt))) continue;
            if (!(op->wwb = falloc(csub_winograd_packed_len(op->aout, op->ain, op->wmb)))) return CSUB_ERR_NOMEM;
            csub_winograd_pack(op->wa, op->wwb, op->aout, op->ain, op->wmb);
        }
        m->band_ok = 1;
    }
    m->band_nt = nt;
    return CSUB_OK;
}

/* The bands for nt threads: one a processor at most (more would wait at every barrier for a thread
 * the system has not run: on 2 processors, 4 threads ran the 90 % sparse group-norm network 2x
 * slower than one thread) */
static int band_threads(int nt)
{
    int np = omp_get_num_procs();
    return nt < np ? nt : np;
}

int64_t csub_rt_bands_floats(const csub_model *m, int64_t batch, int nt, int *bands)
{
    int g;
    int64_t sums, part;
    *bands = nt = band_threads(nt);
    if (!m->bands || batch != 1 || nt < 2 || !band_check(m, nt, NULL, &g, &sums, &part)) return 0;
    int64_t n = part * nt;
    for (int i = 0; i < m->nops; i++) {
        const op_t *op = &m->ops[i];
        int wm = band_wm(m, op, nt);
        if (wm) n += csub_winograd_packed_len(op->aout, op->ain, wm);
        if (op->path == PATH_SPARSE && band_conv(m, op) == 1) n += 2 * nt * op->nnz; /* band_foff */
    }
    return n;
}

int csub_rt_bands_apply(csub_model *m, int64_t batch, int nt)
{
    nt = band_threads(nt);
    if (!m->bands || batch != 1 || nt < 2) return 0;
    if (csub_rt_ws_reserve(m, nt) || band_plan(m, nt)) return 0; /* out of memory for the plan: run as before */
    return m->band_ok ? nt : 0;
}

/* Op i (before the pool) on thread t's rows: its kernel on the band, for a 3x3 conv with the rows
 * its neighbours pushed */
static int band_op(const csub_model *m, const workspace *w, const float *input, int i, int t, int nt)
{
    const op_t *op = &m->ops[i];
    shape3 s = m->vshape[op->x], o = m->vshape[op->y];
    int64_t C = m->vc[op->x], a0, a1, p0, p1;
    csub_row_band(s.h, t, nt, &a0, &a1);
    csub_row_band(o.h, t, nt, &p0, &p1);
    int64_t n = (a1 - a0) * s.w; /* values per channel of the band */
    const float *x = csub_rt_value(m, w, input, op->pre >= 0 ? m->ops[op->pre].x : op->x);
    float *y = csub_rt_value(m, w, input, op->y);
    switch (op->kind) {
    case OP_CONV: {
        const float *b = op->bias ? op->ba : NULL, *res = op->x2 >= 0 ? csub_rt_value(m, w, input, op->x2) : NULL;
        int sparse = op->path == PATH_SPARSE, k = band_conv(m, op);
        csub_rows r = {x, NULL, NULL, 0, s.h, s.h * s.w}; /* a 3x3 conv's input image: every row */
        if (k == 3 && m->vslot[op->x] >= 0) { /* a band, with its neighbours' rows */
            const float *hb = m->band_buf + m->band_halo[i];
            r = (csub_rows){x, t > 0 ? hb + (t - 1) * m->band_part + C * s.w : NULL,
                            t < nt - 1 ? hb + (t + 1) * m->band_part : NULL, a0, a1, n};
        }
        if (op->path == PATH_INT8) /* the integer product (the same sums as on the whole image) */
            return k == 1 ? csub_conv2d_int8_forward_res(x, op->xscale, op->xzp, &op->qw, op->oscale, op->ba, res,
                                                         op->relu, y, 1, C, a1 - a0, s.w, 1, 1, op->stride, 0)
                          : csub_conv2d_int8_forward_rows(&r, op->xscale, op->xzp, &op->qw, op->oscale, op->ba, res,
                                                          op->relu, y, C, s.h, s.w, 3, 3, op->stride, 1, p0, p1);
        if (k == 1 && sparse) { /* the band as an image of its own, with its offsets */
            const op_t *nm = op->pre >= 0 ? &m->ops[op->pre] : NULL;
            csub_pre pre = {nm ? nm->pre_ab : NULL, nm ? nm->pre_ab + nm->c : NULL, op->pre_k,
                            op->pre_k ? op->pre_k + op->nnz : NULL};
            return csub_conv2d_sparse_forward_planned(x, op->rowptr, op->band_foff + t * op->nnz, op->vals, b, y, 1, C,
                                                      a1 - a0, s.w, op->aout, 1, 1, op->stride, 0, res, op->relu,
                                                      nm ? &pre : NULL, w->spwork, w->spwork_len);
        }
        if (k == 1)
            return csub_conv2d_forward_fused(x, op->wa, b, res, op->relu, y, 1, C, a1 - a0, s.w, op->aout, 1, 1,
                                             op->stride, 0);
        if (sparse && op->spj)
            return csub_conv2d_sparse_forward_jit_rows(&r, op->spj, b, y, C, s.h, s.w, op->aout, 3, 3, op->stride, 1,
                                                       p0, p1, res, op->relu, w->spwork, w->spwork_len);
        if (sparse)
            return csub_conv2d_sparse_forward_rows(&r, op->rowptr, op->foff, op->vals, b, y, C, s.h, s.w, op->aout, 3,
                                                   3, op->stride, 1, p0, p1, res, op->relu, w->spwork,
                                                   w->spwork_len);
        if (op->wwb)
            return csub_winograd_forward_rows(&r, op->wwb, b, res, op->relu, y, C, s.h, s.w, op->aout, op->wmb, p0, p1);
        if (op->ww)
            return csub_winograd_forward_rows(&r, op->ww, b, res, op->relu, y, C, s.h, s.w, op->aout, op->wm, p0, p1);
        return csub_conv3x3_forward_rows(&r, op->wd, b, res, op->relu, y, C, s.h, s.w, op->aout, op->stride, p0, p1);
    }
    case OP_NORM:
        if (!op->bn) /* every band's sums are in (csub_rt_bands_forward) */
            return csub_groupnorm_band_apply(x, op->ga, op->ba, y, C, op->agroups, n,
                                             (const double *)(m->band_buf + m->band_halo[i]), nt, m->band_part / 2,
                                             s.h, s.w, op->eps, op->relu);
        if (!op->pre_fused)
            csub_batchnorm_infer(x, op->ga, op->ba, op->rmean, op->rvar, y, 1, C, a1 - a0, s.w, op->eps, op->relu);
        break;
    case OP_RELU:
        csub_relu_forward(x, y, C * n);
        break;
    case OP_ADD:
        csub_add_nchw(x, csub_rt_value(m, w, input, op->x2), y, 1, C, a1 - a0, s.w);
        break;
    case OP_GAP: { /* this band's sums */
        const op_t *nm = op->pre >= 0 ? &m->ops[op->pre] : NULL;
        csub_gap_sum(x, nm ? nm->pre_ab : NULL, nm ? nm->pre_ab + C : NULL, m->band_buf + t * m->band_part + m->band_sums,
                     C, n, n);
        break;
    }
    default: /* alias, flatten: the same buffer */
        break;
    }
    return CSUB_OK;
}

/* What thread t's band gives the others before op i: a 3x3 conv's first and last row of its input,
 * for its neighbours; a group norm's sums */
static void share(const csub_model *m, const workspace *w, const float *input, int i, int t, int nt)
{
    const op_t *op = &m->ops[i];
    shape3 s = m->vshape[op->x];
    int64_t C = m->vc[op->x], a0, a1;
    csub_row_band(s.h, t, nt, &a0, &a1);
    const float *x = csub_rt_value(m, w, input, op->x);
    float *first = m->band_buf + t * m->band_part + m->band_halo[i], *last = first + C * s.w;
    if (op->kind == OP_NORM) {
        csub_groupnorm_band_sums(x, C, op->agroups, (a1 - a0) * s.w, (double *)first);
        return;
    }
    for (int64_t c = 0; c < C; c++) {
        const float *xc = x + c * (a1 - a0) * s.w;
        memcpy(first + c * s.w, xc, sizeof(float) * (size_t)s.w);
        memcpy(last + c * s.w, xc + (a1 - a0 - 1) * s.w, sizeof(float) * (size_t)s.w);
    }
}

int csub_rt_bands_forward(const csub_model *m, const float *input, float *output, int nt, int *failed)
{
    int st = CSUB_OK, bad = -1, g = m->band_gap;
    #pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), cap = csub_threads_cap(1); /* the kernels inside: no region of their own */
        const workspace *w = &m->ws[t];
        for (int i = 0; i <= g; i++) { /* every thread meets every barrier, failed or not */
            int s2;
            #pragma omp atomic read
            s2 = st;
            if (m->band_halo[i] >= 0) { /* a 3x3 conv's rows, a group norm's sums: every band's first */
                if (!s2) share(m, w, input, i, t, nt);
                #pragma omp barrier
            }
            if (s2 || (s2 = band_op(m, w, input, i, t, nt)) == CSUB_OK) continue;
            #pragma omp critical(csub_runtime_error)
            if (!st) { st = s2; bad = i; }
        }
        #pragma omp barrier
        if (t == 0 && !st) { /* the pool from the bands' sums, then the layers after it */
            const op_t *op = &m->ops[g];
            shape3 s = m->vshape[op->x];
            int64_t C = m->vc[op->x];
            float *y = csub_rt_value(m, w, input, op->y);
            const float *part = m->band_buf + m->band_sums;
            for (int64_t c = 0; c < C; c++) {
                float sum = part[c];
                for (int u = 1; u < nt; u++) sum += part[u * m->band_part + c];
                y[c] = sum / (float)(s.h * s.w);
            }
            for (int i = g + 1; i < m->nops && !st; i++)
                if ((st = csub_rt_run_op(m, w, input, 1, 0, i))) bad = i;
            if (!st) memcpy(output, csub_rt_value(m, w, input, m->out_val), sizeof(float) * (size_t)m->classes);
        }
        csub_threads_cap(cap);
    }
    *failed = bad;
    return st;
}
