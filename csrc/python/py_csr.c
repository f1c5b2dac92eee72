/* py_csr.c - csub._core: masked sparse matmul in CSR form (csrc/csr.c). */
#include "convert.h"

/* ------------------------------------------------- masked sparse matmul */

static PyObject *py_csr_from_mask(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ow, *om;
    KW("w", "mask");
    if (!parse(args, kw, "OO", kwlist, &ow, &om)) return NULL;
    PyArrayObject *w = arr_check(ow, "w", NPY_FLOAT32, -1, 0);
    PyArrayObject *m = w ? arr_check(om, "mask", NPY_UINT8, -1, 0) : NULL;
    if (!m || same_shape(m, "mask", w, "w")) return NULL;
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
 * each row and in [0, cols); values float32[nnz]. O(nnz) to check. */
typedef struct { PyArrayObject *rowptr, *colidx, *values; int64_t nnz; } csr_args;

static int csr_check(PyObject *orp, PyObject *oci, PyObject *ova, npy_intp K, npy_intp cols, csr_args *c)
{
    c->rowptr = arr_check(orp, "rowptr", NPY_INT64, 1, 0);
    c->colidx = c->rowptr ? arr_check(oci, "colidx", NPY_INT32, 1, 0) : NULL;
    c->values = c->colidx ? arr_check(ova, "values", NPY_FLOAT32, 1, 0) : NULL;
    if (!c->values) return -1;
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

/* The weight gradient argument of the sparse backward: None, the values'
 * gradient (nnz,), or a full weight gradient of the weight's shape (+= at the
 * kept positions only). Sets *dv to the (nnz,) buffer the kernel adds into and
 * *full to the full array to scatter it to afterwards (or NULL). */
static int sparse_dw_arg(PyObject *odw, int nd, const npy_intp *wshape, const csr_args *c,
                         float **dv, PyArrayObject **full, float **tmp)
{
    *dv = NULL, *full = NULL, *tmp = NULL;
    if (odw == Py_None) return 0;
    PyArrayObject *dw = arr_check(odw, "dw", NPY_FLOAT32, -1, 1);
    if (!dw) return -1;
    if (PyArray_NDIM(dw) == 1 && PyArray_DIM(dw, 0) == c->nnz) {
        *dv = F32(dw);
        return 0;
    }
    if (PyArray_NDIM(dw) == nd && memcmp(PyArray_DIMS(dw), wshape, sizeof(npy_intp) * nd) == 0) {
        *full = dw;
        if (!(*tmp = PyMem_Calloc(c->nnz > 0 ? (size_t)c->nnz : 1, sizeof(float)))) {
            PyErr_NoMemory();
            return -1;
        }
        *dv = *tmp;
        return 0;
    }
    char got[128], want[128];
    shape_str(got, sizeof got, PyArray_NDIM(dw), PyArray_DIMS(dw));
    shape_str(want, sizeof want, nd, wshape);
    PyErr_Format(PyExc_ValueError, "dw: expected the weight's shape %s or the values' shape (%lld,), got %s",
                 want, (long long)c->nnz, got);
    return -1;
}

/* dw[k, colidx[t]] += dv[t] */
static void scatter_dw(PyArrayObject *full, const csr_args *c, const float *dv, npy_intp K, npy_intp cols)
{
    const int64_t *rp = (const int64_t *)PyArray_DATA(c->rowptr);
    const int32_t *ci = (const int32_t *)PyArray_DATA(c->colidx);
    float *dw = F32(full);
    for (npy_intp k = 0; k < K; k++)
        for (int64_t t = rp[k]; t < rp[k + 1]; t++) dw[k * cols + ci[t]] += dv[t];
}

/* weight_shape (K, C, R, S) with C*R*S within int32 */
static int sparse_wshape(PyObject *o, int nd, npy_intp *wd)
{
    if (parse_shape(o, "weight_shape", nd, wd)) return -1;
    npy_intp cols = 1;
    for (int i = 1; i < nd; i++) {
        if (wd[i] > INT32_MAX / cols) {
            PyErr_SetString(PyExc_ValueError, "weight_shape: columns per row exceed the int32 column index");
            return -1;
        }
        cols *= wd[i];
    }
    return 0;
}

static PyObject *py_conv2d_sparse_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ox, *orp, *oci, *ova, *ows, *ob = Py_None, *ores = Py_None;
    long long stride = 1, pad = 0;
    KW("x", "rowptr", "colidx", "values", "weight_shape", "b", "stride", "padding", "residual");
    if (!parse(args, kw, "OOOOO|OLLO", kwlist, &ox, &orp, &oci, &ova, &ows, &ob, &stride, &pad, &ores)) return NULL;
    PyArrayObject *x = arr_check(ox, "x", NPY_FLOAT32, 4, 0), *b, *res;
    npy_intp wd[4];
    conv_dims d;
    csr_args c;
    if (!x || sparse_wshape(ows, 4, wd) || conv_check_dims(x, wd, "weight_shape", stride, pad, &d) ||
        csr_check(orp, oci, ova, d.K, d.C * d.R * d.S, &c) || opt_arr(ob, "b", 1, 0, &b) ||
        opt_arr(ores, "residual", 4, 0, &res))
        return NULL;
    npy_intp bs[1] = {d.K};
    npy_intp ys[4] = {d.N, d.K, d.P, d.Q};
    if (b && shape_check(b, "b", 1, bs, "(out_channels,)")) return NULL;
    if (res && shape_check(res, "residual", 4, ys, "the output's (N, out_channels, P, Q)")) return NULL;
    PyArrayObject *y = new_f32(4, ys);
    if (!y) return NULL;
    int st;
    Py_BEGIN_ALLOW_THREADS
    if (res) { /* the two-step form the runtime uses, with the residual added as y is written */
        int64_t nnz = ((const int64_t *)PyArray_DATA(c.rowptr))[d.K];
        int64_t *foff = malloc(sizeof(int64_t) * (size_t)(nnz > 0 ? nnz : 1));
        st = foff ? csub_conv2d_sparse_offsets(PyArray_DATA(c.colidx), nnz, d.C, d.H, d.W, d.R, d.S, stride, pad, foff)
                  : CSUB_ERR_NOMEM;
        if (!st)
            st = csub_conv2d_sparse_forward_planned(F32(x), PyArray_DATA(c.rowptr), foff, F32(c.values), OPT_F32(b),
                                                    F32(y), d.N, d.C, d.H, d.W, d.K, d.R, d.S, stride, pad, F32(res),
                                                    NULL, 0);
        free(foff);
    } else {
        st = csub_conv2d_sparse_forward(F32(x), CSR_PTRS(c), OPT_F32(b), F32(y),
                                        d.N, d.C, d.H, d.W, d.K, d.R, d.S, stride, pad);
    }
    Py_END_ALLOW_THREADS
    if (status_ok(st, "conv2d_sparse_forward")) { Py_DECREF(y); return NULL; }
    return (PyObject *)y;
}

static PyObject *py_conv2d_sparse_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ox, *orp, *oci, *ova, *ows, *ody, *odw = Py_None, *odb = Py_None;
    long long stride = 1, pad = 0;
    int need_dx = 1;
    KW("x", "rowptr", "colidx", "values", "weight_shape", "dy", "dw", "db", "stride", "padding", "need_dx");
    if (!parse(args, kw, "OOOOOO|OOLLp", kwlist, &ox, &orp, &oci, &ova, &ows, &ody, &odw, &odb,
               &stride, &pad, &need_dx))
        return NULL;
    PyArrayObject *x = arr_check(ox, "x", NPY_FLOAT32, 4, 0), *dy, *db;
    npy_intp wd[4];
    conv_dims d;
    csr_args c;
    if (!x || sparse_wshape(ows, 4, wd) || conv_check_dims(x, wd, "weight_shape", stride, pad, &d) ||
        csr_check(orp, oci, ova, d.K, d.C * d.R * d.S, &c) ||
        !(dy = arr_check(ody, "dy", NPY_FLOAT32, 4, 0)) || opt_arr(odb, "db", 1, 1, &db))
        return NULL;
    npy_intp ys[4] = {d.N, d.K, d.P, d.Q}, bs[1] = {d.K};
    if (shape_check(dy, "dy", 4, ys, "(N, out_channels, P, Q)") ||
        (db && shape_check(db, "db", 1, bs, "(out_channels,)")))
        return NULL;
    float *dv, *tmp;
    PyArrayObject *full;
    if (sparse_dw_arg(odw, 4, wd, &c, &dv, &full, &tmp)) return NULL;
    PyArrayObject *dx = NULL;
    if (need_dx && !(dx = new_f32(4, PyArray_DIMS(x)))) { PyMem_Free(tmp); return NULL; }
    int st;
    Py_BEGIN_ALLOW_THREADS
    st = csub_conv2d_sparse_backward(F32(x), CSR_PTRS(c), F32(dy), OPT_F32(dx), dv, OPT_F32(db),
                                     d.N, d.C, d.H, d.W, d.K, d.R, d.S, stride, pad);
    if (st == CSUB_OK && full) scatter_dw(full, &c, dv, d.K, d.C * d.R * d.S);
    Py_END_ALLOW_THREADS
    PyMem_Free(tmp);
    if (status_ok(st, "conv2d_sparse_backward")) { Py_XDECREF(dx); return NULL; }
    if (!dx) Py_RETURN_NONE;
    return (PyObject *)dx;
}

static PyObject *py_linear_sparse_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ox, *orp, *oci, *ova, *ows, *ob = Py_None;
    KW("x", "rowptr", "colidx", "values", "weight_shape", "b");
    if (!parse(args, kw, "OOOOO|O", kwlist, &ox, &orp, &oci, &ova, &ows, &ob)) return NULL;
    PyArrayObject *x = arr_check(ox, "x", NPY_FLOAT32, 2, 0), *b;
    npy_intp wd[2];
    csr_args c;
    if (!x || sparse_wshape(ows, 2, wd)) return NULL;
    npy_intp N = PyArray_DIM(x, 0), IN = PyArray_DIM(x, 1), O = wd[0];
    npy_intp xs[2] = {-1, wd[1]}, bs[1] = {O};
    if (shape_check(x, "x", 2, xs, "(N, in_features)") || csr_check(orp, oci, ova, O, IN, &c) ||
        opt_arr(ob, "b", 1, 0, &b) || (b && shape_check(b, "b", 1, bs, "(out_features,)")))
        return NULL;
    if (N < 1) {
        PyErr_SetString(PyExc_ValueError, "x: expected at least one sample");
        return NULL;
    }
    npy_intp ys[2] = {N, O};
    PyArrayObject *y = new_f32(2, ys);
    if (!y) return NULL;
    int st;
    NOGIL(st = csub_linear_sparse_forward(F32(x), CSR_PTRS(c), OPT_F32(b), F32(y), N, IN, O));
    return finish(st, "linear_sparse_forward", y);
}

static PyObject *py_linear_sparse_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ox, *orp, *oci, *ova, *ows, *ody, *odw = Py_None, *odb = Py_None;
    int need_dx = 1;
    KW("x", "rowptr", "colidx", "values", "weight_shape", "dy", "dw", "db", "need_dx");
    if (!parse(args, kw, "OOOOOO|OOp", kwlist, &ox, &orp, &oci, &ova, &ows, &ody, &odw, &odb, &need_dx))
        return NULL;
    PyArrayObject *x = arr_check(ox, "x", NPY_FLOAT32, 2, 0), *dy, *db;
    npy_intp wd[2];
    csr_args c;
    if (!x || sparse_wshape(ows, 2, wd)) return NULL;
    npy_intp N = PyArray_DIM(x, 0), IN = PyArray_DIM(x, 1), O = wd[0];
    npy_intp xs[2] = {-1, wd[1]}, ys[2] = {N, O}, bs[1] = {O};
    if (shape_check(x, "x", 2, xs, "(N, in_features)") || csr_check(orp, oci, ova, O, IN, &c) ||
        !(dy = arr_check(ody, "dy", NPY_FLOAT32, 2, 0)) || shape_check(dy, "dy", 2, ys, "(N, out_features)") ||
        opt_arr(odb, "db", 1, 1, &db) || (db && shape_check(db, "db", 1, bs, "(out_features,)")))
        return NULL;
    if (N < 1) {
        PyErr_SetString(PyExc_ValueError, "x: expected at least one sample");
        return NULL;
    }
    float *dv, *tmp;
    PyArrayObject *full;
    if (sparse_dw_arg(odw, 2, wd, &c, &dv, &full, &tmp)) return NULL;
    PyArrayObject *dx = NULL;
    if (need_dx && !(dx = new_f32(2, PyArray_DIMS(x)))) { PyMem_Free(tmp); return NULL; }
    int st;
    Py_BEGIN_ALLOW_THREADS
    st = csub_linear_sparse_backward(F32(x), CSR_PTRS(c), F32(dy), OPT_F32(dx), dv, OPT_F32(db), N, IN, O);
    if (st == CSUB_OK && full) scatter_dw(full, &c, dv, O, IN);
    Py_END_ALLOW_THREADS
    PyMem_Free(tmp);
    if (status_ok(st, "linear_sparse_backward")) { Py_XDECREF(dx); return NULL; }
    if (!dx) Py_RETURN_NONE;
    return (PyObject *)dx;
}

PyMethodDef csub_py_csr_methods[] = {
    M(csr_from_mask, "csr_from_mask(w[K,...], mask uint8) -> (rowptr int64[K+1], colidx int32[nnz], values float32[nnz])"),
    M(conv2d_sparse_forward, "conv2d_sparse_forward(x, rowptr, colidx, values, weight_shape, b=None, stride=1, padding=0, "
                             "residual=None) -> y (+ residual)"),
    M(conv2d_sparse_backward, "conv2d_sparse_backward(x, rowptr, colidx, values, weight_shape, dy, dw=None, db=None, "
                              "stride=1, padding=0, need_dx=True) -> dx; dw (weight's shape or (nnz,)), db +="),
    M(linear_sparse_forward, "linear_sparse_forward(x[N,I], rowptr, colidx, values, weight_shape, b=None) -> y[N,O]"),
    M(linear_sparse_backward, "linear_sparse_backward(x, rowptr, colidx, values, weight_shape, dy, dw=None, db=None, "
                              "need_dx=True) -> dx; dw, db +="),
    {NULL, NULL, 0, NULL},
};
