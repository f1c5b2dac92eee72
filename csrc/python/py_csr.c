/* py_csr.c - csub._core: masked sparse matmul in CSR form (csrc/csr.c). */
#include "convert.h"

/* ------------------------------------------------- masked sparse matmul */

static PyObject *py_csr_from_mask(PyObject *self, PyObject *args, PyObject *kw)
{
    PyArrayObject *w, *m;
    KW("w", "mask");
    if (!parse(args, kw, "O&O&", kwlist, ARG_F32(w, -1), ARG_ARR(m, "mask", NPY_UINT8, -1, 0, 0)) ||
        same_shape(m, "mask", w, "w"))
        return NULL;
    if (PyArray_NDIM(w) < 2 || PyArray_SIZE(w) < 1) {
        char sh[128];
        shape_str(sh, sizeof sh, PyArray_NDIM(w), PyArray_DIMS(w));
        PyErr_Format(PyExc_ValueError, "w: expected a non-empty weight of shape (K, ...) of rank >= 2, got %s", sh);
        return NULL;
    }
    npy_intp K = PyArray_DIM(w, 0), cols = PyArray_SIZE(w) / K;
    if (cols > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "w: %ld columns per row exceed the int32 column index", (long)cols);
        return NULL;
    }
    npy_intp rs[1] = {K + 1};
    PyArrayObject *rp = (PyArrayObject *)PyArray_SimpleNew(1, rs, NPY_INT64);
    if (!rp) return NULL;
    int64_t nnz;
    NOGIL(nnz = csub_csr_count((const uint8_t *)PyArray_DATA(m), K, cols, (int64_t *)PyArray_DATA(rp)));
    npy_intp ns[1] = {nnz};
    PyArrayObject *ci = (PyArrayObject *)PyArray_SimpleNew(1, ns, NPY_INT32);
    PyArrayObject *va = new_f32(1, ns);
    if (!ci || !va) { Py_DECREF(rp); Py_XDECREF(ci); Py_XDECREF(va); return NULL; }
    NOGIL(csub_csr_fill(F32(w), (const uint8_t *)PyArray_DATA(m), K, cols, (const int64_t *)PyArray_DATA(rp),
                  (int32_t *)PyArray_DATA(ci), F32(va)));
    return Py_BuildValue("NNN", rp, ci, va);
}

/* A CSR weight of K rows over `cols` columns: rowptr int64[K+1] from 0,
 * non-decreasing, ending at nnz; colidx int32[nnz] strictly increasing within
 * each row and in [0, cols); values float32[nnz]; its weight_shape, e.g.
 * (K, C, R, S), with C*R*S within the int32 column index. */
typedef struct { PyArrayObject *rowptr, *colidx, *values; npy_intp wd[4]; int64_t nnz; } csr_args;

/* "O&" for the rowptr, colidx, values, weight_shape arguments (four in a row) */
#define ARG_CSR(c, nd) ARG_ARR((c).rowptr, "rowptr", NPY_INT64, 1, 0, 0), \
                       ARG_ARR((c).colidx, "colidx", NPY_INT32, 1, 0, 0), \
                       ARG_F32_AS((c).values, "values", 1), ARG_SHAPE((c).wd, "weight_shape", nd)

/* weight_shape (nd entries) with its columns per row within int32 */
static int wshape_check(const csr_args *c, int nd)
{
    npy_intp cols = 1;
    for (int i = 1; i < nd; i++) {
        if (c->wd[i] > INT32_MAX / cols) {
            PyErr_SetString(PyExc_ValueError, "weight_shape: columns per row exceed the int32 column index");
            return -1;
        }
        cols *= c->wd[i];
    }
    return 0;
}

/* The CSR arrays against K rows of `cols` columns; O(nnz). */
static int csr_check(csr_args *c, npy_intp K, npy_intp cols)
{
    npy_intp rs[1] = {K + 1};
    if (shape_check(c->rowptr, "rowptr", 1, rs, "(K + 1,) with K the weight's rows")) return -1;
    const int64_t *rp = (const int64_t *)PyArray_DATA(c->rowptr);
    const int32_t *ci = (const int32_t *)PyArray_DATA(c->colidx);
    npy_intp nnz = PyArray_DIM(c->colidx, 0);
    if (PyArray_DIM(c->values, 0) != nnz) {
        PyErr_Format(PyExc_ValueError, "values: expected the length of colidx (%ld,), got (%ld,)",
                     (long)nnz, (long)PyArray_DIM(c->values, 0));
        return -1;
    }
    if (rp[0] != 0 || rp[K] != nnz) {
        PyErr_Format(PyExc_ValueError, "rowptr: expected rowptr[0] = 0 and rowptr[K] = len(colidx) = %ld, got %lld and %lld",
                     (long)nnz, (long long)rp[0], (long long)rp[K]);
        return -1;
    }
    for (npy_intp k = 0; k < K; k++) {
        if (rp[k + 1] < rp[k]) {
            PyErr_Format(PyExc_ValueError, "rowptr: decreasing at index %ld", (long)(k + 1));
            return -1;
        }
        for (int64_t t = rp[k]; t < rp[k + 1]; t++)
            if (ci[t] < 0 || ci[t] >= cols || (t > rp[k] && ci[t] <= ci[t - 1])) {
                PyErr_Format(PyExc_ValueError, "colidx: entry %lld (row %ld) is %ld; expected columns in [0, %ld), "
                             "strictly increasing within a row", (long long)t, (long)k, (long)ci[t], (long)cols);
                return -1;
            }
    }
    c->nnz = nnz;
    return 0;
}

#define CSR_PTRS(c) (const int64_t *)PyArray_DATA((c).rowptr), (const int32_t *)PyArray_DATA((c).colidx), F32((c).values)

/* After the parse of a sparse conv: weight_shape, x[N,C,H,W] against it, the CSR arrays. */
static int conv_sparse_check(PyArrayObject *x, csr_args *c, long long stride, long long pad, conv_dims *d)
{
    if (wshape_check(c, 4) || conv_check_dims(x, c->wd, "weight_shape", stride, pad, d)) return -1;
    return csr_check(c, d->K, d->C * d->R * d->S);
}

/* After the parse of a sparse linear: weight_shape (O, I), x[N, I] with N >= 1, the CSR arrays. */
static int linear_sparse_check(PyArrayObject *x, csr_args *c, npy_intp *N, npy_intp *IN, npy_intp *O)
{
    npy_intp xs[2] = {-1, c->wd[1]};
    *N = PyArray_DIM(x, 0), *IN = PyArray_DIM(x, 1), *O = c->wd[0];
    if (wshape_check(c, 2) || shape_check(x, "x", 2, xs, "(N, in_features)") || csr_check(c, *O, *IN)) return -1;
    if (*N >= 1) return 0;
    PyErr_SetString(PyExc_ValueError, "x: expected at least one sample");
    return -1;
}

/* The weight gradient of a sparse backward: None, the values' gradient
 * (nnz,), or a full weight gradient of the weight's shape (+= at the kept
 * positions only). dv is the (nnz,) buffer the kernel adds into; full the
 * array it is scattered to afterwards (or NULL), through tmp. */
typedef struct { float *dv, *tmp; PyArrayObject *full; } sparse_dw;

static int sparse_dw_check(PyArrayObject *dw, int nd, const csr_args *c, sparse_dw *g)
{
    g->dv = g->tmp = NULL;
    g->full = NULL;
    if (!dw) return 0;
    if (PyArray_NDIM(dw) == 1 && PyArray_DIM(dw, 0) == c->nnz) {
        g->dv = F32(dw);
        return 0;
    }
    if (PyArray_NDIM(dw) == nd && memcmp(PyArray_DIMS(dw), c->wd, sizeof(npy_intp) * nd) == 0) {
        g->full = dw;
        if (!(g->tmp = PyMem_Calloc(c->nnz > 0 ? (size_t)c->nnz : 1, sizeof(float)))) {
            PyErr_NoMemory();
            return -1;
        }
        g->dv = g->tmp;
        return 0;
    }
    char got[128], want[128];
    shape_str(got, sizeof got, PyArray_NDIM(dw), PyArray_DIMS(dw));
    shape_str(want, sizeof want, nd, c->wd);
    PyErr_Format(PyExc_ValueError, "dw: expected the weight's shape %s or the values' shape (%lld,), got %s",
                 want, (long long)c->nnz, got);
    return -1;
}

/* After the kernel (GIL released): dw[k, colidx[t]] += dv[t] into the full gradient, if any. */
static void sparse_dw_scatter(int st, const sparse_dw *g, const csr_args *c, npy_intp K, npy_intp cols)
{
    if (st != CSUB_OK || !g->full) return;
    const int64_t *rp = (const int64_t *)PyArray_DATA(c->rowptr);
    const int32_t *ci = (const int32_t *)PyArray_DATA(c->colidx);
    float *dw = F32(g->full);
    for (npy_intp k = 0; k < K; k++)
        for (int64_t t = rp[k]; t < rp[k + 1]; t++) dw[k * cols + ci[t]] += g->dv[t];
}

/* A sparse backward's result: dx (None when not asked for) or the status's exception. */
static PyObject *sparse_backward_done(int st, const char *where, sparse_dw *g, PyArrayObject *dx)
{
    PyMem_Free(g->tmp);
    return finish(st, where, dx);
}

static PyObject *py_conv2d_sparse_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyArrayObject *x, *b = NULL, *res = NULL, *pa = NULL, *pb = NULL;
    csr_args c;
    long long stride = 1, pad = 0;
    conv_dims d;
    int relu = 0, jit = 0;
    KW("x", "rowptr", "colidx", "values", "weight_shape", "b", "stride", "padding", "residual", "relu", "jit",
       "pre_scale", "pre_shift");
    if (!parse(args, kw, "O&O&O&O&O&|O&LLO&ppO&O&", kwlist, ARG_F32(x, 4), ARG_CSR(c, 4), ARG_OPT_F32(b, 1), &stride,
               &pad, ARG_OPT_F32_AS(res, "residual", 4), &relu, &jit, ARG_OPT_F32_AS(pa, "pre_scale", 1),
               ARG_OPT_F32_AS(pb, "pre_shift", 1)) ||
        conv_sparse_check(x, &c, stride, pad, &d))
        return NULL;
    npy_intp bs[1] = {d.K}, cs[1] = {d.C};
    npy_intp ys[4] = {d.N, d.K, d.P, d.Q};
    if (shape_check(b, "b", 1, bs, "(out_channels,)") ||
        shape_check(res, "residual", 4, ys, "the output's (N, out_channels, P, Q)") ||
        shape_check(pa, "pre_scale", 1, cs, "(in_channels,)") || shape_check(pb, "pre_shift", 1, cs, "(in_channels,)"))
        return NULL;
    if (!pa != !pb) {
        PyErr_SetString(PyExc_ValueError, "pre_scale, pre_shift: give both or neither");
        return NULL;
    }
    if (pa && pad) {
        PyErr_SetString(PyExc_ValueError, "pre_scale: the input transform takes padding=0 only");
        return NULL;
    }
    PyArrayObject *y = new_f32(4, ys);
    if (!y) return NULL;
    int st;
    Py_BEGIN_ALLOW_THREADS
    if (res || relu || jit || pa) { /* the runtime's two-step form, the residual and the ReLU applied as y is written */
        int64_t *foff = malloc(sizeof(int64_t) * (size_t)(c.nnz > 0 ? c.nnz : 1));
        float *kab = pa ? malloc(sizeof(float) * 2 * (size_t)(c.nnz > 0 ? c.nnz : 1)) : NULL;
        st = foff && (kab || !pa) ? csub_conv2d_sparse_offsets(PyArray_DATA(c.colidx), c.nnz, d.C, d.H, d.W, d.R, d.S,
                                                              stride, pad, foff)
                                  : CSUB_ERR_NOMEM;
        csub_pre pre = {pa ? F32(pa) : NULL, pb ? F32(pb) : NULL, kab, kab ? kab + c.nnz : NULL};
        if (!st && kab)
            csub_pre_per_weight(PyArray_DATA(c.colidx), c.nnz, d.R * d.S, F32(pa), F32(pb), kab, kab + c.nnz);
        csub_spjit *code = !st && jit ? csub_conv2d_sparse_jit(PyArray_DATA(c.rowptr), foff, F32(c.values), d.C, d.H,
                                                               d.W, d.K, d.R, d.S, stride, pad) : NULL;
        if (!st && code)
            st = csub_conv2d_sparse_forward_jit(F32(x), code, OPT_F32(b), F32(y), d.N, d.C, d.H, d.W, d.K, d.R, d.S,
                                                stride, pad, OPT_F32(res), relu, pa ? &pre : NULL, NULL, 0);
        else if (!st)
            st = csub_conv2d_sparse_forward_planned(F32(x), PyArray_DATA(c.rowptr), foff, F32(c.values), OPT_F32(b),
                                                    F32(y), d.N, d.C, d.H, d.W, d.K, d.R, d.S, stride, pad,
                                                    OPT_F32(res), relu, pa ? &pre : NULL, NULL, 0);
        csub_spjit_free(code);
        free(foff);
        free(kab);
    } else {
        st = csub_conv2d_sparse_forward(F32(x), CSR_PTRS(c), OPT_F32(b), F32(y),
                                        d.N, d.C, d.H, d.W, d.K, d.R, d.S, stride, pad);
    }
    Py_END_ALLOW_THREADS
    return finish(st, "conv2d_sparse_forward", y);
}

static PyObject *py_sparse_jit_available(PyObject *self, PyObject *args, PyObject *kw)
{
    KW(NULL);
    if (!parse(args, kw, "", kwlist)) return NULL;
    return PyBool_FromLong(csub_spjit_available());
}

static PyObject *py_conv2d_sparse_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyArrayObject *x, *dy, *dw = NULL, *db = NULL, *dx = NULL;
    csr_args c;
    long long stride = 1, pad = 0;
    int need_dx = 1;
    conv_dims d;
    sparse_dw g;
    KW("x", "rowptr", "colidx", "values", "weight_shape", "dy", "dw", "db", "stride", "padding", "need_dx");
    if (!parse(args, kw, "O&O&O&O&O&O&|O&O&LLp", kwlist, ARG_F32(x, 4), ARG_CSR(c, 4), ARG_F32(dy, 4),
               ARG_OPT_F32_W_AS(dw, "dw", -1), ARG_OPT_F32_W(db, 1), &stride, &pad, &need_dx) ||
        conv_sparse_check(x, &c, stride, pad, &d))
        return NULL;
    npy_intp ys[4] = {d.N, d.K, d.P, d.Q}, bs[1] = {d.K};
    if (shape_check(dy, "dy", 4, ys, "(N, out_channels, P, Q)") || shape_check(db, "db", 1, bs, "(out_channels,)") ||
        (need_dx && !(dx = new_f32(4, PyArray_DIMS(x)))))
        return NULL;
    if (sparse_dw_check(dw, 4, &c, &g)) { Py_XDECREF(dx); return NULL; }
    int st;
    NOGIL(st = csub_conv2d_sparse_backward(F32(x), CSR_PTRS(c), F32(dy), OPT_F32(dx), g.dv, OPT_F32(db),
                                           d.N, d.C, d.H, d.W, d.K, d.R, d.S, stride, pad);
          sparse_dw_scatter(st, &g, &c, d.K, d.C * d.R * d.S));
    return sparse_backward_done(st, "conv2d_sparse_backward", &g, dx);
}

static PyObject *py_linear_sparse_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyArrayObject *x, *b = NULL;
    csr_args c;
    npy_intp N, IN, O;
    KW("x", "rowptr", "colidx", "values", "weight_shape", "b");
    if (!parse(args, kw, "O&O&O&O&O&|O&", kwlist, ARG_F32(x, 2), ARG_CSR(c, 2), ARG_OPT_F32(b, 1)) ||
        linear_sparse_check(x, &c, &N, &IN, &O))
        return NULL;
    npy_intp bs[1] = {O}, ys[2] = {N, O};
    if (shape_check(b, "b", 1, bs, "(out_features,)")) return NULL;
    PyArrayObject *y = new_f32(2, ys);
    if (!y) return NULL;
    int st;
    NOGIL(st = csub_linear_sparse_forward(F32(x), CSR_PTRS(c), OPT_F32(b), F32(y), N, IN, O));
    return finish(st, "linear_sparse_forward", y);
}

static PyObject *py_linear_sparse_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyArrayObject *x, *dy, *dw = NULL, *db = NULL, *dx = NULL;
    csr_args c;
    int need_dx = 1;
    npy_intp N, IN, O;
    sparse_dw g;
    KW("x", "rowptr", "colidx", "values", "weight_shape", "dy", "dw", "db", "need_dx");
    if (!parse(args, kw, "O&O&O&O&O&O&|O&O&p", kwlist, ARG_F32(x, 2), ARG_CSR(c, 2), ARG_F32(dy, 2),
               ARG_OPT_F32_W_AS(dw, "dw", -1), ARG_OPT_F32_W(db, 1), &need_dx) ||
        linear_sparse_check(x, &c, &N, &IN, &O))
        return NULL;
    npy_intp ys[2] = {N, O}, bs[1] = {O};
    if (shape_check(dy, "dy", 2, ys, "(N, out_features)") || shape_check(db, "db", 1, bs, "(out_features,)") ||
        (need_dx && !(dx = new_f32(2, PyArray_DIMS(x)))))
        return NULL;
    if (sparse_dw_check(dw, 2, &c, &g)) { Py_XDECREF(dx); return NULL; }
    int st;
    NOGIL(st = csub_linear_sparse_backward(F32(x), CSR_PTRS(c), F32(dy), OPT_F32(dx), g.dv, OPT_F32(db), N, IN, O);
          sparse_dw_scatter(st, &g, &c, O, IN));
    return sparse_backward_done(st, "linear_sparse_backward", &g, dx);
}

PyMethodDef csub_py_csr_methods[] = {
    M(csr_from_mask, "csr_from_mask(w[K,...], mask uint8) -> (rowptr int64[K+1], colidx int32[nnz], values float32[nnz])"),
    M(conv2d_sparse_forward, "conv2d_sparse_forward(x, rowptr, colidx, values, weight_shape, b=None, stride=1, padding=0, "
                             "residual=None, relu=False, jit=False, pre_scale=None, pre_shift=None) -> y (+ residual, "
                             "then the ReLU when relu; jit: the kept weights compiled to code where "
                             "sparse_jit_available(); pre_scale, pre_shift [in_channels]: the layer reads "
                             "max(0, x * pre_scale[c] + pre_shift[c]), padding=0 only)"),
    M(sparse_jit_available, "sparse_jit_available() -> bool: sparse convolutions can run as compiled code here "
                            "(x86-64 with AVX-512, at the instruction set level in use)"),
    M(conv2d_sparse_backward, "conv2d_sparse_backward(x, rowptr, colidx, values, weight_shape, dy, dw=None, db=None, "
                              "stride=1, padding=0, need_dx=True) -> dx; dw (weight's shape or (nnz,)), db +="),
    M(linear_sparse_forward, "linear_sparse_forward(x[N,I], rowptr, colidx, values, weight_shape, b=None) -> y[N,O]"),
    M(linear_sparse_backward, "linear_sparse_backward(x, rowptr, colidx, values, weight_shape, dy, dw=None, db=None, "
                              "need_dx=True) -> dx; dw, db +="),
    {NULL, NULL, 0, NULL},
};
