/*
 * module.c - csub._core, the only file that sees Python and NumPy.
 *
 * Every function here validates its arguments (type, dtype, contiguity,
 * rank, shapes, ranges) and raises TypeError/ValueError naming the argument,
 * so the C kernels never see a bad pointer or size; then it releases the GIL
 * and calls the kernel. Outputs marked "=" are allocated here and returned;
 * gradients that accumulate ("+=") are passed in by the caller and updated in
 * place.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <numpy/arrayobject.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>

#include "../internal.h" /* csub.h and the sparse forward in two steps */

/* ------------------------------------------------------------ validation */

#define MAXDIM 8

/* Render a shape as "(2, 3, 4)". */
static void shape_str(char *buf, size_t len, int nd, const npy_intp *d)
{
    size_t used = 0;
    used += (size_t)snprintf(buf + used, len - used, "(");
    for (int i = 0; i < nd && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, i ? ", %ld" : "%ld", (long)d[i]);
    if (used < len) snprintf(buf + used, len - used, nd == 1 ? ",)" : ")");
}

/* obj must be a C-contiguous ndarray of the given dtype (NPY_FLOAT32 etc.),
 * aligned, writable when `writable`. ndim < 0 accepts any rank, else exact.
 * Returns the array (borrowed) or NULL with an exception set. */
static PyArrayObject *arr_check(PyObject *obj, const char *name, int typenum,
                                int ndim, int writable)
{
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s: expected a numpy.ndarray, got %s",
                     name, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != typenum) {
        PyArray_Descr *want = PyArray_DescrFromType(typenum);
        PyErr_Format(PyExc_TypeError, "%s: expected dtype %S, got %S",
                     name, (PyObject *)want, (PyObject *)PyArray_DESCR(a));
        Py_DECREF(want);
        return NULL;
    }
    if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a)) {
        PyErr_Format(PyExc_ValueError,
                     "%s: expected a C-contiguous, aligned array "
                     "(use numpy.ascontiguousarray)", name);
        return NULL;
    }
    if (writable && !PyArray_ISWRITEABLE(a)) {
        PyErr_Format(PyExc_ValueError, "%s: array is read-only", name);
        return NULL;
    }
    if (ndim >= 0 && PyArray_NDIM(a) != ndim) {
        char s[128];
        shape_str(s, sizeof s, PyArray_NDIM(a), PyArray_DIMS(a));
        PyErr_Format(PyExc_ValueError, "%s: expected a %d-D array, got shape %s",
                     name, ndim, s);
        return NULL;
    }
    return a;
}

/* The shape of a must equal want[0..nd) (entries < 0 are free).
 * `what` describes the expected shape for the message, e.g. "(N, C, H, W)". */
static int shape_check(PyArrayObject *a, const char *name, int nd,
                       const npy_intp *want, const char *what)
{
    int ok = PyArray_NDIM(a) == nd;
    for (int i = 0; ok && i < nd; i++)
        if (want[i] >= 0 && PyArray_DIM(a, i) != want[i]) ok = 0;
    if (ok) return 0;
    char got[128], exp[128];
    shape_str(got, sizeof got, PyArray_NDIM(a), PyArray_DIMS(a));
    npy_intp w[MAXDIM];
    for (int i = 0; i < nd && i < MAXDIM; i++) w[i] = want[i];
    shape_str(exp, sizeof exp, nd, w);
    PyErr_Format(PyExc_ValueError, "%s: expected shape %s = %s (-1: any), got %s",
                 name, what, exp, got);
    return -1;
}

/* Same shape as the reference array. */
static int same_shape(PyArrayObject *a, const char *name, PyArrayObject *ref, const char *refname)
{
    if (PyArray_NDIM(a) == PyArray_NDIM(ref) &&
        memcmp(PyArray_DIMS(a), PyArray_DIMS(ref), sizeof(npy_intp) * PyArray_NDIM(a)) == 0)
        return 0;
    char s1[128], s2[128];
    shape_str(s1, sizeof s1, PyArray_NDIM(a), PyArray_DIMS(a));
    shape_str(s2, sizeof s2, PyArray_NDIM(ref), PyArray_DIMS(ref));
    PyErr_Format(PyExc_ValueError, "%s: expected the shape of %s %s, got %s",
                 name, refname, s2, s1);
    return -1;
}

#define F32(a) ((float *)PyArray_DATA(a))
#define OPT_F32(a) ((a) ? (float *)PyArray_DATA(a) : NULL)

/* Optional float32 array argument: None -> NULL (no error). */
static int opt_arr(PyObject *obj, const char *name, int ndim, int writable, PyArrayObject **out)
{
    *out = NULL;
    if (obj == NULL || obj == Py_None) return 0;
    *out = arr_check(obj, name, NPY_FLOAT32, ndim, writable);
    return *out ? 0 : -1;
}

static PyArrayObject *new_f32(int nd, const npy_intp *dims)
{
    return (PyArrayObject *)PyArray_SimpleNew(nd, (npy_intp *)dims, NPY_FLOAT32);
}

static PyArrayObject *zeros_f32(int nd, const npy_intp *dims)
{
    return (PyArrayObject *)PyArray_ZEROS(nd, (npy_intp *)dims, NPY_FLOAT32, 0);
}

static int positive(long long v, const char *name)
{
    if (v >= 1) return 0;
    PyErr_Format(PyExc_ValueError, "%s: expected an integer >= 1, got %lld", name, v);
    return -1;
}

typedef struct { char s[32]; } numstr;
static numstr fmt_g(double v)
{
    numstr r;
    snprintf(r.s, sizeof r.s, "%g", v);
    return r;
}

static int finite_range(double v, double lo, double hi, const char *name)
{
    if (isfinite(v) && v >= lo && v <= hi) return 0;
    char buf[64];
    snprintf(buf, sizeof buf, "%g", v);
    PyErr_Format(PyExc_ValueError, "%s: expected a number in [%s, %s], got %s",
                 name, fmt_g(lo).s, fmt_g(hi).s, buf);
    return -1;
}

static int eps_check(double eps)
{
    if (isfinite(eps) && eps > 0.0 && eps < 1.0) return 0;
    PyErr_Format(PyExc_ValueError, "eps: expected a number in (0, 1), got %s", fmt_g(eps).s);
    return -1;
}

/* ------------------------------------------------------------ status codes
 *
 * Every CSUB_ERR_* has its own Python exception: invalid arguments and
 * malformed files are ValueErrors (FormatError, UnsupportedError and
 * BudgetError subclass it, so callers can tell them apart), a failed
 * allocation is MemoryError, a file that cannot be read OSError. */
static PyObject *FormatError, *UnsupportedError, *BudgetError;

static PyObject *status_type(int status)
{
    switch (status) {
    case CSUB_ERR_ARG: return PyExc_ValueError;
    case CSUB_ERR_NOMEM: return PyExc_MemoryError;
    case CSUB_ERR_IO: return PyExc_OSError;
    case CSUB_ERR_FORMAT: return FormatError;
    case CSUB_ERR_UNSUPPORTED: return UnsupportedError;
    case CSUB_ERR_BUDGET: return BudgetError;
    default: return PyExc_SystemError;
    }
}

/* Raise the exception of status with the C side's message (or the code's own
 * description when it wrote none), prefixed by where when given; NULL. */
static PyObject *raise_status(int status, const char *where, const char *msg)
{
    if (!msg || !msg[0]) msg = csub_strerror(status);
    if (where) PyErr_Format(status_type(status), "%s: %s", where, msg);
    else PyErr_SetString(status_type(status), msg);
    return NULL;
}

/* 0 for CSUB_OK; otherwise raise for a kernel's status (kernels return
 * CSUB_ERR_NOMEM for their workspace, CSUB_ERR_ARG for sizes) and -1. */
static int status_ok(int status, const char *where)
{
    if (status == CSUB_OK) return 0;
    raise_status(status, where, status == CSUB_ERR_NOMEM ? "out of memory for workspace" : NULL);
    return -1;
}

/* Shape tuple argument, e.g. input_shape=(N, C, H, W). */
static int parse_shape(PyObject *obj, const char *name, int nd, npy_intp *dims)
{
    if (!PySequence_Check(obj) || PySequence_Size(obj) != nd) {
        PyErr_Format(PyExc_ValueError, "%s: expected a sequence of %d integers", name, nd);
        return -1;
    }
    for (int i = 0; i < nd; i++) {
        PyObject *it = PySequence_GetItem(obj, i);
        if (!it) return -1;
        long long v = PyLong_AsLongLong(it);
        Py_DECREF(it);
        if (v == -1 && PyErr_Occurred()) return -1;
        if (v < 1) {
            PyErr_Format(PyExc_ValueError, "%s: entries must be >= 1", name);
            return -1;
        }
        dims[i] = (npy_intp)v;
    }
    return 0;
}

#define KW(...) static char *kwlist[] = {__VA_ARGS__, NULL}

/* After a failed parse, find the argument whose value did not convert and
 * raise an error that names it (CPython's own messages do not, for numbers). */
static void name_bad_argument(PyObject *args, PyObject *kw, const char *fmt, char **kwlist)
{
    if (!PyErr_ExceptionMatches(PyExc_TypeError) && !PyErr_ExceptionMatches(PyExc_OverflowError)) return;
    Py_ssize_t npos = PyTuple_GET_SIZE(args);
    int i = 0;
    for (const char *f = fmt; *f && kwlist[i]; f++) {
        char c = *f;
        if (c == '|' || c == ')') continue;
        if (c == ':' || c == ';') break;
        if (c == '(') { /* a group such as (ddd): one argument, a sequence of numbers */
            while (*f && *f != ')') f++;
            i++;
            continue;
        }
        PyObject *o = i < npos ? PyTuple_GET_ITEM(args, i) : (kw ? PyDict_GetItemString(kw, kwlist[i]) : NULL);
        const char *name = kwlist[i++];
        if (!o) continue;
        if (c == 'i' || c == 'L' || c == 'K') {
            if (!PyIndex_Check(o) || PyBool_Check(o)) {
                PyErr_Format(PyExc_TypeError, "%s: expected an int, got %s", name, Py_TYPE(o)->tp_name);
                return;
            }
            PyObject *t, *v, *tb;
            PyErr_Fetch(&t, &v, &tb);
            int overflow = 0;
            PyObject *n = PyNumber_Index(o);
            if (n) {
                (void)PyLong_AsLongLongAndOverflow(n, &overflow);
                Py_DECREF(n);
            }
            PyErr_Clear();
            PyErr_Restore(t, v, tb);
            if (overflow) {
                PyErr_Format(PyExc_ValueError, "%s: integer out of range", name);
                return;
            }
        } else if (c == 'd') {
            if (!PyFloat_Check(o) && !PyLong_Check(o) && !PyIndex_Check(o) && !PyNumber_Check(o)) {
                PyErr_Format(PyExc_TypeError, "%s: expected a number, got %s", name, Py_TYPE(o)->tp_name);
                return;
            }
            if (PyBool_Check(o) || PyUnicode_Check(o) || PyBytes_Check(o)) {
                PyErr_Format(PyExc_TypeError, "%s: expected a number, got %s", name, Py_TYPE(o)->tp_name);
                return;
            }
        }
    }
}

/* PyArg_ParseTupleAndKeywords that names the offending argument on failure. */
static int parse(PyObject *args, PyObject *kw, const char *fmt, char **kwlist, ...)
{
    va_list va;
    va_start(va, kwlist);
    int ok = PyArg_VaParseTupleAndKeywords(args, kw, fmt, kwlist, va);
    va_end(va);
    if (!ok) name_bad_argument(args, kw, fmt, kwlist);
    return ok;
}

/* ------------------------------------------------------------------ core */

/* At most CSUB_MAX_THREADS (csub.MAX_NUM_THREADS): libgomp starts a team with one
 * start record per thread on the calling thread's stack (alloca), so 100000
 * threads overflowed the 8 MiB stack inside the first parallel region. */
static PyObject *py_set_num_threads(PyObject *self, PyObject *args, PyObject *kw)
{
    long long n;
    KW("n");
    if (!parse(args, kw, "L", kwlist, &n)) return NULL;
    if (PyBool_Check(PyTuple_GET_SIZE(args) ? PyTuple_GET_ITEM(args, 0) : PyDict_GetItemString(kw, "n"))) {
        PyErr_SetString(PyExc_TypeError, "n: expected an int, got bool");
        return NULL;
    }
    if (n < 1 || n > CSUB_MAX_THREADS) {
        PyErr_Format(PyExc_ValueError, "n: expected a thread count in [1, %d], got %lld", CSUB_MAX_THREADS, n);
        return NULL;
    }
    csub_set_num_threads((int)n);
    Py_RETURN_NONE;
}

static PyObject *py_get_num_threads(PyObject *self, PyObject *noargs)
{
    return PyLong_FromLong(csub_get_num_threads());
}

static PyObject *py_gemm(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *oa, *ob;
    int ta = 0, tb = 0;
    KW("a", "b", "transa", "transb");
    if (!parse(args, kw, "OO|pp", kwlist, &oa, &ob, &ta, &tb)) return NULL;
    PyArrayObject *a = arr_check(oa, "a", NPY_FLOAT32, 2, 0);
    PyArrayObject *b = a ? arr_check(ob, "b", NPY_FLOAT32, 2, 0) : NULL;
    if (!b) return NULL;
    npy_intp M = PyArray_DIM(a, ta ? 1 : 0), K = PyArray_DIM(a, ta ? 0 : 1);
    npy_intp Kb = PyArray_DIM(b, tb ? 1 : 0), N = PyArray_DIM(b, tb ? 0 : 1);
    if (K != Kb) {
        PyErr_Format(PyExc_ValueError, "b: inner dimension %ld does not match a's %ld", (long)Kb, (long)K);
        return NULL;
    }
    npy_intp d[2] = {M, N};
    PyArrayObject *c = zeros_f32(2, d);
    if (!c) return NULL;
    Py_BEGIN_ALLOW_THREADS
    csub_gemm(ta, tb, M, N, K, 1.0f, F32(a), PyArray_DIM(a, 1), F32(b), PyArray_DIM(b, 1),
              0.0f, F32(c), N);
    Py_END_ALLOW_THREADS
    return (PyObject *)c;
}

/* --------------------------------------------------------- linear, conv */

static PyObject *py_linear_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ox, *ow, *ob = Py_None;
    KW("x", "w", "b");
    if (!parse(args, kw, "OO|O", kwlist, &ox, &ow, &ob)) return NULL;
    PyArrayObject *x = arr_check(ox, "x", NPY_FLOAT32, 2, 0);
    PyArrayObject *w = x ? arr_check(ow, "w", NPY_FLOAT32, 2, 0) : NULL, *b;
    if (!w || opt_arr(ob, "b", 1, 0, &b)) return NULL;
    npy_intp N = PyArray_DIM(x, 0), IN = PyArray_DIM(x, 1), O = PyArray_DIM(w, 0);
    npy_intp ws[2] = {O, IN}, bs[1] = {O};
    if (shape_check(w, "w", 2, ws, "(out_features, in_features)")) return NULL;
    if (b && shape_check(b, "b", 1, bs, "(out_features,)")) return NULL;
    npy_intp d[2] = {N, O};
    PyArrayObject *y = new_f32(2, d);
    if (!y) return NULL;
    Py_BEGIN_ALLOW_THREADS
    csub_linear_forward(F32(x), F32(w), OPT_F32(b), F32(y), N, IN, O);
    Py_END_ALLOW_THREADS
    return (PyObject *)y;
}

static PyObject *py_linear_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ox, *ow, *ody, *odw = Py_None, *odb = Py_None;
    int need_dx = 1;
    KW("x", "w", "dy", "dw", "db", "need_dx");
    if (!parse(args, kw, "OOO|OOp", kwlist, &ox, &ow, &ody, &odw, &odb, &need_dx))
        return NULL;
    PyArrayObject *x = arr_check(ox, "x", NPY_FLOAT32, 2, 0);
    PyArrayObject *w = x ? arr_check(ow, "w", NPY_FLOAT32, 2, 0) : NULL;
    PyArrayObject *dy = w ? arr_check(ody, "dy", NPY_FLOAT32, 2, 0) : NULL, *dw, *db;
    if (!dy || opt_arr(odw, "dw", 2, 1, &dw) || opt_arr(odb, "db", 1, 1, &db)) return NULL;
    npy_intp N = PyArray_DIM(x, 0), IN = PyArray_DIM(x, 1), O = PyArray_DIM(w, 0);
    npy_intp ws[2] = {O, IN}, ys[2] = {N, O}, bs[1] = {O};
    if (shape_check(w, "w", 2, ws, "(out_features, in_features)") ||
        shape_check(dy, "dy", 2, ys, "(N, out_features)") ||
        (dw && shape_check(dw, "dw", 2, ws, "(out_features, in_features)")) ||
        (db && shape_check(db, "db", 1, bs, "(out_features,)")))
        return NULL;
    PyArrayObject *dx = NULL;
    if (need_dx) {
        npy_intp d[2] = {N, IN};
        if (!(dx = new_f32(2, d))) return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    csub_linear_backward(F32(x), F32(w), F32(dy), OPT_F32(dx), OPT_F32(dw), OPT_F32(db), N, IN, O);
    Py_END_ALLOW_THREADS
    if (!dx) Py_RETURN_NONE;
    return (PyObject *)dx;
}

/* Shared parsing of conv arguments: x[N,C,H,W], w[K,C,R,S]. */
typedef struct { npy_intp N, C, H, W, K, R, S, P, Q; } conv_dims;
#define CONV_MAX_ARG (1 << 20) /* stride/padding bound: keeps every size computation far from overflow */

/* x[N,C,H,W] against a weight of shape wd = (K, C, R, S) named `wname`. */
static int conv_check_dims(PyArrayObject *x, const npy_intp *wd, const char *wname,
                           long long stride, long long pad, conv_dims *d);

static int conv_check(PyArrayObject *x, PyArrayObject *w, long long stride, long long pad, conv_dims *d)
{
    return conv_check_dims(x, PyArray_DIMS(w), "w", stride, pad, d);
}

static int conv_check_dims(PyArrayObject *x, const npy_intp *wd, const char *wname,
                           long long stride, long long pad, conv_dims *d)
{
    if (positive(stride, "stride")) return -1;
    if (stride > CONV_MAX_ARG) {
        PyErr_Format(PyExc_ValueError, "stride: expected at most %d, got %lld", CONV_MAX_ARG, stride);
        return -1;
    }
    if (pad < 0 || pad > CONV_MAX_ARG) {
        PyErr_Format(PyExc_ValueError, "padding: expected an integer in [0, %d], got %lld", CONV_MAX_ARG, pad);
        return -1;
    }
    d->N = PyArray_DIM(x, 0); d->C = PyArray_DIM(x, 1); d->H = PyArray_DIM(x, 2); d->W = PyArray_DIM(x, 3);
    d->K = wd[0]; d->R = wd[2]; d->S = wd[3];
    if (wd[1] != d->C) {
        PyErr_Format(PyExc_ValueError, "%s: expected %ld input channels (x has shape (N, C, H, W) with C = %ld), got %ld",
                     wname, (long)d->C, (long)d->C, (long)wd[1]);
        return -1;
    }
    if (d->N < 1 || d->C < 1 || d->H < 1 || d->W < 1 || d->K < 1 || d->R < 1 || d->S < 1) {
        PyErr_SetString(PyExc_ValueError, "x, w: every dimension must be >= 1");
        return -1;
    }
    if (d->H + 2 * pad < d->R || d->W + 2 * pad < d->S) {
        PyErr_Format(PyExc_ValueError, "x: spatial size %ldx%ld with padding %lld is smaller than the kernel %ldx%ld",
                     (long)d->H, (long)d->W, pad, (long)d->R, (long)d->S);
        return -1;
    }
    d->P = csub_conv_out_size(d->H, d->R, stride, pad);
    d->Q = csub_conv_out_size(d->W, d->S, stride, pad);
    return 0;
}

static PyObject *py_conv2d_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ox, *ow, *ob = Py_None;
    long long stride = 1, pad = 0;
    KW("x", "w", "b", "stride", "padding");
    if (!parse(args, kw, "OO|OLL", kwlist, &ox, &ow, &ob, &stride, &pad)) return NULL;
    PyArrayObject *x = arr_check(ox, "x", NPY_FLOAT32, 4, 0);
    PyArrayObject *w = x ? arr_check(ow, "w", NPY_FLOAT32, 4, 0) : NULL, *b;
    if (!w || opt_arr(ob, "b", 1, 0, &b)) return NULL;
    conv_dims d;
    if (conv_check(x, w, stride, pad, &d)) return NULL;
    npy_intp bs[1] = {d.K};
    if (b && shape_check(b, "b", 1, bs, "(out_channels,)")) return NULL;
    npy_intp ys[4] = {d.N, d.K, d.P, d.Q};
    PyArrayObject *y = new_f32(4, ys);
    if (!y) return NULL;
    int st;
    Py_BEGIN_ALLOW_THREADS
    st = csub_conv2d_forward(F32(x), F32(w), OPT_F32(b), F32(y), d.N, d.C, d.H, d.W, d.K, d.R, d.S, stride, pad);
    Py_END_ALLOW_THREADS
    if (status_ok(st, "conv2d_forward")) { Py_DECREF(y); return NULL; }
    return (PyObject *)y;
}

static PyObject *py_conv2d_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ox, *ow, *ody, *odw = Py_None, *odb = Py_None;
    long long stride = 1, pad = 0;
    int need_dx = 1;
    KW("x", "w", "dy", "dw", "db", "stride", "padding", "need_dx");
    if (!parse(args, kw, "OOO|OOLLp", kwlist, &ox, &ow, &ody, &odw, &odb,
                                     &stride, &pad, &need_dx))
        return NULL;
    PyArrayObject *x = arr_check(ox, "x", NPY_FLOAT32, 4, 0);
    PyArrayObject *w = x ? arr_check(ow, "w", NPY_FLOAT32, 4, 0) : NULL;
    PyArrayObject *dy = w ? arr_check(ody, "dy", NPY_FLOAT32, 4, 0) : NULL, *dw, *db;
    if (!dy || opt_arr(odw, "dw", 4, 1, &dw) || opt_arr(odb, "db", 1, 1, &db)) return NULL;
    conv_dims d;
    if (conv_check(x, w, stride, pad, &d)) return NULL;
    npy_intp ys[4] = {d.N, d.K, d.P, d.Q}, bs[1] = {d.K};
    if (shape_check(dy, "dy", 4, ys, "(N, out_channels, P, Q)") ||
        (dw && same_shape(dw, "dw", w, "w")) ||
        (db && shape_check(db, "db", 1, bs, "(out_channels,)")))
        return NULL;
    PyArrayObject *dx = NULL;
    if (need_dx && !(dx = new_f32(4, PyArray_DIMS(x)))) return NULL;
    int st;
    Py_BEGIN_ALLOW_THREADS
    st = csub_conv2d_backward(F32(x), F32(w), F32(dy), OPT_F32(dx), OPT_F32(dw), OPT_F32(db),
                              d.N, d.C, d.H, d.W, d.K, d.R, d.S, stride, pad);
    Py_END_ALLOW_THREADS
    if (status_ok(st, "conv2d_backward")) { Py_XDECREF(dx); return NULL; }
    if (!dx) Py_RETURN_NONE;
    return (PyObject *)dx;
}

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
    Py_BEGIN_ALLOW_THREADS
    nnz = csub_csr_count((const uint8_t *)PyArray_DATA(m), K, cols, (int64_t *)PyArray_DATA(rp));
    Py_END_ALLOW_THREADS
    npy_intp ns[1] = {nnz};
    PyArrayObject *ci = (PyArrayObject *)PyArray_SimpleNew(1, ns, NPY_INT32);
    PyArrayObject *va = new_f32(1, ns);
    if (!ci || !va) { Py_DECREF(rp); Py_XDECREF(ci); Py_XDECREF(va); return NULL; }
    Py_BEGIN_ALLOW_THREADS
    csub_csr_fill(F32(w), (const uint8_t *)PyArray_DATA(m), K, cols, (const int64_t *)PyArray_DATA(rp),
                  (int32_t *)PyArray_DATA(ci), F32(va));
    Py_END_ALLOW_THREADS
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
    Py_BEGIN_ALLOW_THREADS
    st = csub_linear_sparse_forward(F32(x), CSR_PTRS(c), OPT_F32(b), F32(y), N, IN, O);
    Py_END_ALLOW_THREADS
    if (status_ok(st, "linear_sparse_forward")) { Py_DECREF(y); return NULL; }
    return (PyObject *)y;
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

/* ---------------------------------------------------------------- norms */

/* x is (N, C, ...) with rank >= 2; returns N, C, and the product of the rest. */
static int nc_rest(PyArrayObject *x, const char *name, npy_intp *N, npy_intp *C, npy_intp *HW)
{
    if (PyArray_NDIM(x) < 2) {
        PyErr_Format(PyExc_ValueError, "%s: expected shape (N, C, ...) of rank >= 2, got rank %d",
                     name, PyArray_NDIM(x));
        return -1;
    }
    *N = PyArray_DIM(x, 0);
    *C = PyArray_DIM(x, 1);
    *HW = 1;
    for (int i = 2; i < PyArray_NDIM(x); i++) *HW *= PyArray_DIM(x, i);
    if (*N < 1 || *C < 1 || *HW < 1) {
        PyErr_Format(PyExc_ValueError, "%s: every dimension must be >= 1", name);
        return -1;
    }
    return 0;
}

static PyObject *py_batchnorm_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ox, *og, *ob, *orm = Py_None, *orv = Py_None;
    double momentum = 0.1, eps = 1e-5;
    int training = 1;
    KW("x", "gamma", "beta", "running_mean", "running_var", "momentum", "eps", "training");
    if (!parse(args, kw, "OOO|OOddp", kwlist, &ox, &og, &ob, &orm, &orv,
                                     &momentum, &eps, &training))
        return NULL;
    PyArrayObject *x = arr_check(ox, "x", NPY_FLOAT32, -1, 0);
    PyArrayObject *g = x ? arr_check(og, "gamma", NPY_FLOAT32, 1, 0) : NULL;
    PyArrayObject *b = g ? arr_check(ob, "beta", NPY_FLOAT32, 1, 0) : NULL, *rm, *rv;
    if (!b || opt_arr(orm, "running_mean", 1, 1, &rm) || opt_arr(orv, "running_var", 1, 1, &rv)) return NULL;
    npy_intp N, C, HW;
    if (nc_rest(x, "x", &N, &C, &HW)) return NULL;
    npy_intp cs[1] = {C};
    if (shape_check(g, "gamma", 1, cs, "(C,)") || shape_check(b, "beta", 1, cs, "(C,)") ||
        (rm && shape_check(rm, "running_mean", 1, cs, "(C,)")) ||
        (rv && shape_check(rv, "running_var", 1, cs, "(C,)")))
        return NULL;
    if ((rm == NULL) != (rv == NULL)) {
        PyErr_SetString(PyExc_ValueError, "running_mean, running_var: give both or neither");
        return NULL;
    }
    if (!training && !rm) {
        PyErr_SetString(PyExc_ValueError, "running_mean: required when training is False");
        return NULL;
    }
    if (finite_range(momentum, 0.0, 1.0, "momentum") || eps_check(eps)) return NULL;
    if (training && N * HW < 2) {
        PyErr_SetString(PyExc_ValueError, "x: batch norm in training needs more than one value per channel");
        return NULL;
    }
    PyArrayObject *y = new_f32(PyArray_NDIM(x), PyArray_DIMS(x));
    PyArrayObject *mean = new_f32(1, cs), *invstd = new_f32(1, cs);
    if (!y || !mean || !invstd) { Py_XDECREF(y); Py_XDECREF(mean); Py_XDECREF(invstd); return NULL; }
    Py_BEGIN_ALLOW_THREADS
    csub_batchnorm_forward(F32(x), F32(g), F32(b), F32(y), F32(mean), F32(invstd),
                           OPT_F32(rm), OPT_F32(rv), N, C, HW, (float)momentum, (float)eps, training);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("NNN", y, mean, invstd);
}

static PyObject *py_batchnorm_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ox, *og, *ody, *om, *oi, *odg = Py_None, *odb = Py_None;
    int training = 1;
    KW("x", "gamma", "dy", "mean", "invstd", "dgamma", "dbeta", "training");
    if (!parse(args, kw, "OOOOO|OOp", kwlist, &ox, &og, &ody, &om, &oi,
                                     &odg, &odb, &training))
        return NULL;
    PyArrayObject *x = arr_check(ox, "x", NPY_FLOAT32, -1, 0);
    PyArrayObject *g = x ? arr_check(og, "gamma", NPY_FLOAT32, 1, 0) : NULL;
    PyArrayObject *dy = g ? arr_check(ody, "dy", NPY_FLOAT32, -1, 0) : NULL;
    PyArrayObject *m = dy ? arr_check(om, "mean", NPY_FLOAT32, 1, 0) : NULL;
    PyArrayObject *is = m ? arr_check(oi, "invstd", NPY_FLOAT32, 1, 0) : NULL, *dg, *db;
    if (!is || opt_arr(odg, "dgamma", 1, 1, &dg) || opt_arr(odb, "dbeta", 1, 1, &db)) return NULL;
    npy_intp N, C, HW;
    if (nc_rest(x, "x", &N, &C, &HW) || same_shape(dy, "dy", x, "x")) return NULL;
    npy_intp cs[1] = {C};
    if (shape_check(g, "gamma", 1, cs, "(C,)") || shape_check(m, "mean", 1, cs, "(C,)") ||
        shape_check(is, "invstd", 1, cs, "(C,)") ||
        (dg && shape_check(dg, "dgamma", 1, cs, "(C,)")) || (db && shape_check(db, "dbeta", 1, cs, "(C,)")))
        return NULL;
    PyArrayObject *dx = new_f32(PyArray_NDIM(x), PyArray_DIMS(x));
    if (!dx) return NULL;
    Py_BEGIN_ALLOW_THREADS
    csub_batchnorm_backward(F32(x), F32(g), F32(dy), F32(m), F32(is), F32(dx), OPT_F32(dg), OPT_F32(db),
                            N, C, HW, training);
    Py_END_ALLOW_THREADS
    return (PyObject *)dx;
}

/* The arguments of a group norm forward: x[N,C,...], gamma/beta[C], G dividing C, eps. */
static int gn_args(PyObject *ox, PyObject *og, PyObject *ob, long long G, double eps, PyArrayObject **x,
                   PyArrayObject **g, PyArrayObject **b, npy_intp *N, npy_intp *C, npy_intp *HW)
{
    *x = arr_check(ox, "x", NPY_FLOAT32, -1, 0);
    *g = *x ? arr_check(og, "gamma", NPY_FLOAT32, 1, 0) : NULL;
    *b = *g ? arr_check(ob, "beta", NPY_FLOAT32, 1, 0) : NULL;
    if (!*b || nc_rest(*x, "x", N, C, HW)) return -1;
    npy_intp cs[1] = {*C};
    if (shape_check(*g, "gamma", 1, cs, "(C,)") || shape_check(*b, "beta", 1, cs, "(C,)")) return -1;
    if (G < 1 || *C % G) {
        PyErr_Format(PyExc_ValueError, "num_groups: must be >= 1 and divide the %ld channels, got %lld",
                     (long)*C, G);
        return -1;
    }
    return eps_check(eps);
}

static PyObject *py_groupnorm_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ox, *og, *ob;
    long long G;
    double eps = 1e-5;
    KW("x", "gamma", "beta", "num_groups", "eps");
    if (!parse(args, kw, "OOOL|d", kwlist, &ox, &og, &ob, &G, &eps)) return NULL;
    PyArrayObject *x, *g, *b;
    npy_intp N, C, HW;
    if (gn_args(ox, og, ob, G, eps, &x, &g, &b, &N, &C, &HW)) return NULL;
    npy_intp ss[2] = {N, G};
    PyArrayObject *y = new_f32(PyArray_NDIM(x), PyArray_DIMS(x));
    PyArrayObject *mean = new_f32(2, ss), *invstd = new_f32(2, ss);
    if (!y || !mean || !invstd) { Py_XDECREF(y); Py_XDECREF(mean); Py_XDECREF(invstd); return NULL; }
    Py_BEGIN_ALLOW_THREADS
    csub_groupnorm_forward(F32(x), F32(g), F32(b), F32(y), F32(mean), F32(invstd), N, C, HW, G, (float)eps);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("NNN", y, mean, invstd);
}

/* The planes of x[N, C, ...] as H rows of W: an [N, C, H, W] array's own, else one row of hw. */
static void plane_rows(PyArrayObject *x, npy_intp hw, int64_t *H, int64_t *W)
{
    *H = PyArray_NDIM(x) == 4 && PyArray_DIM(x, 2) > 0 ? PyArray_DIM(x, 2) : 1;
    *W = hw / *H;
}

static PyObject *py_groupnorm_infer(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ox, *og, *ob;
    long long G;
    double eps = 1e-5;
    int relu = 0;
    KW("x", "gamma", "beta", "num_groups", "eps", "relu");
    if (!parse(args, kw, "OOOL|dp", kwlist, &ox, &og, &ob, &G, &eps, &relu)) return NULL;
    PyArrayObject *x, *g, *b;
    npy_intp N, C, HW;
    if (gn_args(ox, og, ob, G, eps, &x, &g, &b, &N, &C, &HW)) return NULL;
    PyArrayObject *y = new_f32(PyArray_NDIM(x), PyArray_DIMS(x));
    if (!y) return NULL;
    int64_t H, W;
    plane_rows(x, HW, &H, &W);
    Py_BEGIN_ALLOW_THREADS
    csub_groupnorm_infer(F32(x), F32(g), F32(b), F32(y), N, C, H, W, G, (float)eps, relu);
    Py_END_ALLOW_THREADS
    return (PyObject *)y;
}

static PyObject *py_batchnorm_infer(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ox, *og, *ob, *om, *ov;
    double eps = 1e-5;
    int relu = 0;
    KW("x", "gamma", "beta", "running_mean", "running_var", "eps", "relu");
    if (!parse(args, kw, "OOOOO|dp", kwlist, &ox, &og, &ob, &om, &ov, &eps, &relu)) return NULL;
    PyArrayObject *x = arr_check(ox, "x", NPY_FLOAT32, -1, 0);
    PyArrayObject *g = x ? arr_check(og, "gamma", NPY_FLOAT32, 1, 0) : NULL;
    PyArrayObject *b = g ? arr_check(ob, "beta", NPY_FLOAT32, 1, 0) : NULL;
    PyArrayObject *rm = b ? arr_check(om, "running_mean", NPY_FLOAT32, 1, 0) : NULL;
    PyArrayObject *rv = rm ? arr_check(ov, "running_var", NPY_FLOAT32, 1, 0) : NULL;
    if (!rv) return NULL;
    npy_intp N, C, HW;
    if (nc_rest(x, "x", &N, &C, &HW)) return NULL;
    npy_intp cs[1] = {C};
    if (shape_check(g, "gamma", 1, cs, "(C,)") || shape_check(b, "beta", 1, cs, "(C,)") ||
        shape_check(rm, "running_mean", 1, cs, "(C,)") || shape_check(rv, "running_var", 1, cs, "(C,)"))
        return NULL;
    if (eps_check(eps)) return NULL;
    PyArrayObject *y = new_f32(PyArray_NDIM(x), PyArray_DIMS(x));
    if (!y) return NULL;
    int64_t H, W;
    plane_rows(x, HW, &H, &W);
    Py_BEGIN_ALLOW_THREADS
    csub_batchnorm_infer(F32(x), F32(g), F32(b), F32(rm), F32(rv), F32(y), N, C, H, W, (float)eps, relu);
    Py_END_ALLOW_THREADS
    return (PyObject *)y;
}

static PyObject *py_groupnorm_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ox, *og, *ody, *om, *oi, *odg = Py_None, *odb = Py_None;
    KW("x", "gamma", "dy", "mean", "invstd", "dgamma", "dbeta");
    if (!parse(args, kw, "OOOOO|OO", kwlist, &ox, &og, &ody, &om, &oi, &odg, &odb))
        return NULL;
    PyArrayObject *x = arr_check(ox, "x", NPY_FLOAT32, -1, 0);
    PyArrayObject *g = x ? arr_check(og, "gamma", NPY_FLOAT32, 1, 0) : NULL;
    PyArrayObject *dy = g ? arr_check(ody, "dy", NPY_FLOAT32, -1, 0) : NULL;
    PyArrayObject *m = dy ? arr_check(om, "mean", NPY_FLOAT32, 2, 0) : NULL;
    PyArrayObject *is = m ? arr_check(oi, "invstd", NPY_FLOAT32, 2, 0) : NULL, *dg, *db;
    if (!is || opt_arr(odg, "dgamma", 1, 1, &dg) || opt_arr(odb, "dbeta", 1, 1, &db)) return NULL;
    npy_intp N, C, HW;
    if (nc_rest(x, "x", &N, &C, &HW) || same_shape(dy, "dy", x, "x")) return NULL;
    npy_intp G = PyArray_DIM(m, 1), cs[1] = {C}, ss[2] = {N, G};
    if (G < 1 || C % G) {
        PyErr_Format(PyExc_ValueError, "mean: its %ld groups do not divide the %ld channels", (long)G, (long)C);
        return NULL;
    }
    if (shape_check(g, "gamma", 1, cs, "(C,)") || shape_check(m, "mean", 2, ss, "(N, num_groups)") ||
        shape_check(is, "invstd", 2, ss, "(N, num_groups)") ||
        (dg && shape_check(dg, "dgamma", 1, cs, "(C,)")) || (db && shape_check(db, "dbeta", 1, cs, "(C,)")))
        return NULL;
    PyArrayObject *dx = new_f32(PyArray_NDIM(x), PyArray_DIMS(x));
    if (!dx) return NULL;
    Py_BEGIN_ALLOW_THREADS
    csub_groupnorm_backward(F32(x), F32(g), F32(dy), F32(m), F32(is), F32(dx), OPT_F32(dg), OPT_F32(db),
                            N, C, HW, G);
    Py_END_ALLOW_THREADS
    return (PyObject *)dx;
}

/* ------------------------------------------- activations, pools, residual */

static PyObject *py_relu_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ox;
    KW("x");
    if (!parse(args, kw, "O", kwlist, &ox)) return NULL;
    PyArrayObject *x = arr_check(ox, "x", NPY_FLOAT32, -1, 0);
    if (!x) return NULL;
    PyArrayObject *y = new_f32(PyArray_NDIM(x), PyArray_DIMS(x));
    if (!y) return NULL;
    Py_BEGIN_ALLOW_THREADS
    csub_relu_forward(F32(x), F32(y), PyArray_SIZE(x));
    Py_END_ALLOW_THREADS
    return (PyObject *)y;
}

static PyObject *py_relu_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ox, *ody;
    KW("x", "dy");
    if (!parse(args, kw, "OO", kwlist, &ox, &ody)) return NULL;
    PyArrayObject *x = arr_check(ox, "x", NPY_FLOAT32, -1, 0);
    PyArrayObject *dy = x ? arr_check(ody, "dy", NPY_FLOAT32, -1, 0) : NULL;
    if (!dy || same_shape(dy, "dy", x, "x")) return NULL;
    PyArrayObject *dx = new_f32(PyArray_NDIM(x), PyArray_DIMS(x));
    if (!dx) return NULL;
    Py_BEGIN_ALLOW_THREADS
    csub_relu_backward(F32(x), F32(dy), F32(dx), PyArray_SIZE(x));
    Py_END_ALLOW_THREADS
    return (PyObject *)dx;
}

static PyObject *py_add(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *oa, *ob, *oo = Py_None;
    KW("a", "b", "out");
    if (!parse(args, kw, "OO|O", kwlist, &oa, &ob, &oo)) return NULL;
    PyArrayObject *a = arr_check(oa, "a", NPY_FLOAT32, -1, 0);
    PyArrayObject *b = a ? arr_check(ob, "b", NPY_FLOAT32, -1, 0) : NULL, *y;
    if (!b || same_shape(b, "b", a, "a") || opt_arr(oo, "out", -1, 1, &y)) return NULL;
    if (y) { /* may be a or b itself: the sum is elementwise */
        if (same_shape(y, "out", a, "a")) return NULL;
        Py_INCREF(y);
    } else if (!(y = new_f32(PyArray_NDIM(a), PyArray_DIMS(a)))) {
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    if (PyArray_NDIM(a) == 4) /* [N, C, H, W]: by rows of each plane when the batch is smaller than the threads */
        csub_add_nchw(F32(a), F32(b), F32(y), PyArray_DIM(a, 0), PyArray_DIM(a, 1), PyArray_DIM(a, 2), PyArray_DIM(a, 3));
    else
        csub_add(F32(a), F32(b), F32(y), PyArray_SIZE(a));
    Py_END_ALLOW_THREADS
    return (PyObject *)y;
}

static int pool_check(long long k, long long s, npy_intp H, npy_intp W, npy_intp *P, npy_intp *Q)
{
    if (positive(k, "kernel_size") || positive(s, "stride")) return -1;
    if (H < k || W < k) {
        PyErr_Format(PyExc_ValueError, "x: spatial size %ldx%ld is smaller than kernel_size %lld",
                     (long)H, (long)W, k);
        return -1;
    }
    *P = (H - k) / s + 1;
    *Q = (W - k) / s + 1;
    return 0;
}

static PyObject *py_maxpool2d_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ox;
    long long k, s;
    KW("x", "kernel_size", "stride");
    if (!parse(args, kw, "OLL", kwlist, &ox, &k, &s)) return NULL;
    PyArrayObject *x = arr_check(ox, "x", NPY_FLOAT32, 4, 0);
    if (!x) return NULL;
    npy_intp N = PyArray_DIM(x, 0), C = PyArray_DIM(x, 1), H = PyArray_DIM(x, 2), W = PyArray_DIM(x, 3), P, Q;
    if (pool_check(k, s, H, W, &P, &Q)) return NULL;
    npy_intp ys[4] = {N, C, P, Q};
    PyArrayObject *y = new_f32(4, ys);
    PyArrayObject *am = (PyArrayObject *)PyArray_SimpleNew(4, ys, NPY_INT32);
    if (!y || !am) { Py_XDECREF(y); Py_XDECREF(am); return NULL; }
    Py_BEGIN_ALLOW_THREADS
    csub_maxpool2d_forward(F32(x), F32(y), (int32_t *)PyArray_DATA(am), N, C, H, W, k, s);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("NN", y, am);
}

static PyObject *py_maxpool2d_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ody, *oam, *oshape;
    long long k, s;
    KW("dy", "argmax", "input_shape", "kernel_size", "stride");
    if (!parse(args, kw, "OOOLL", kwlist, &ody, &oam, &oshape, &k, &s)) return NULL;
    PyArrayObject *dy = arr_check(ody, "dy", NPY_FLOAT32, 4, 0);
    PyArrayObject *am = dy ? arr_check(oam, "argmax", NPY_INT32, 4, 0) : NULL;
    npy_intp xs[4], P, Q;
    if (!am || parse_shape(oshape, "input_shape", 4, xs) || pool_check(k, s, xs[2], xs[3], &P, &Q)) return NULL;
    npy_intp ys[4] = {xs[0], xs[1], P, Q};
    if (shape_check(dy, "dy", 4, ys, "(N, C, P, Q)") || same_shape(am, "argmax", dy, "dy")) return NULL;
    /* argmax indexes the H*W plane; out-of-range values would write outside dx */
    const int32_t *ai = (const int32_t *)PyArray_DATA(am);
    for (npy_intp i = 0, n = PyArray_SIZE(am); i < n; i++)
        if (ai[i] < 0 || ai[i] >= xs[2] * xs[3]) {
            PyErr_SetString(PyExc_ValueError, "argmax: index outside the input plane");
            return NULL;
        }
    PyArrayObject *dx = new_f32(4, xs);
    if (!dx) return NULL;
    Py_BEGIN_ALLOW_THREADS
    csub_maxpool2d_backward(F32(dy), ai, F32(dx), xs[0], xs[1], xs[2], xs[3], k, s);
    Py_END_ALLOW_THREADS
    return (PyObject *)dx;
}

static PyObject *py_avgpool2d_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ox;
    long long k, s;
    KW("x", "kernel_size", "stride");
    if (!parse(args, kw, "OLL", kwlist, &ox, &k, &s)) return NULL;
    PyArrayObject *x = arr_check(ox, "x", NPY_FLOAT32, 4, 0);
    if (!x) return NULL;
    npy_intp N = PyArray_DIM(x, 0), C = PyArray_DIM(x, 1), H = PyArray_DIM(x, 2), W = PyArray_DIM(x, 3), P, Q;
    if (pool_check(k, s, H, W, &P, &Q)) return NULL;
    npy_intp ys[4] = {N, C, P, Q};
    PyArrayObject *y = new_f32(4, ys);
    if (!y) return NULL;
    Py_BEGIN_ALLOW_THREADS
    csub_avgpool2d_forward(F32(x), F32(y), N, C, H, W, k, s);
    Py_END_ALLOW_THREADS
    return (PyObject *)y;
}

static PyObject *py_avgpool2d_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ody, *oshape;
    long long k, s;
    KW("dy", "input_shape", "kernel_size", "stride");
    if (!parse(args, kw, "OOLL", kwlist, &ody, &oshape, &k, &s)) return NULL;
    PyArrayObject *dy = arr_check(ody, "dy", NPY_FLOAT32, 4, 0);
    npy_intp xs[4], P, Q;
    if (!dy || parse_shape(oshape, "input_shape", 4, xs) || pool_check(k, s, xs[2], xs[3], &P, &Q)) return NULL;
    npy_intp ys[4] = {xs[0], xs[1], P, Q};
    if (shape_check(dy, "dy", 4, ys, "(N, C, P, Q)")) return NULL;
    PyArrayObject *dx = new_f32(4, xs);
    if (!dx) return NULL;
    Py_BEGIN_ALLOW_THREADS
    csub_avgpool2d_backward(F32(dy), F32(dx), xs[0], xs[1], xs[2], xs[3], k, s);
    Py_END_ALLOW_THREADS
    return (PyObject *)dx;
}

static PyObject *py_gap_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ox;
    KW("x");
    if (!parse(args, kw, "O", kwlist, &ox)) return NULL;
    PyArrayObject *x = arr_check(ox, "x", NPY_FLOAT32, 4, 0);
    if (!x) return NULL;
    npy_intp N, C, HW;
    if (nc_rest(x, "x", &N, &C, &HW)) return NULL;
    npy_intp ys[2] = {N, C};
    PyArrayObject *y = new_f32(2, ys);
    if (!y) return NULL;
    Py_BEGIN_ALLOW_THREADS
    csub_gap_forward(F32(x), F32(y), N * C, HW);
    Py_END_ALLOW_THREADS
    return (PyObject *)y;
}

static PyObject *py_gap_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ody, *oshape;
    KW("dy", "input_shape");
    if (!parse(args, kw, "OO", kwlist, &ody, &oshape)) return NULL;
    PyArrayObject *dy = arr_check(ody, "dy", NPY_FLOAT32, 2, 0);
    npy_intp xs[4];
    if (!dy || parse_shape(oshape, "input_shape", 4, xs)) return NULL;
    npy_intp ys[2] = {xs[0], xs[1]};
    if (shape_check(dy, "dy", 2, ys, "(N, C)")) return NULL;
    PyArrayObject *dx = new_f32(4, xs);
    if (!dx) return NULL;
    Py_BEGIN_ALLOW_THREADS
    csub_gap_backward(F32(dy), F32(dx), xs[0] * xs[1], xs[2] * xs[3]);
    Py_END_ALLOW_THREADS
    return (PyObject *)dx;
}

/* -------------------------------------------------------------- loss */

static PyArrayObject *labels_check(PyObject *obj, npy_intp N, npy_intp K)
{
    PyArrayObject *y = arr_check(obj, "labels", NPY_INT64, 1, 0);
    if (!y) return NULL;
    if (PyArray_DIM(y, 0) != N) {
        PyErr_Format(PyExc_ValueError, "labels: expected shape (%ld,) to match logits, got (%ld,)",
                     (long)N, (long)PyArray_DIM(y, 0));
        return NULL;
    }
    const int64_t *l = (const int64_t *)PyArray_DATA(y);
    for (npy_intp i = 0; i < N; i++)
        if (l[i] < 0 || l[i] >= K) {
            PyErr_Format(PyExc_ValueError, "labels: value %lld at index %ld is outside [0, %ld)",
                         (long long)l[i], (long)i, (long)K);
            return NULL;
        }
    return y;
}

static PyObject *py_cross_entropy_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ol, *oy;
    KW("logits", "labels");
    if (!parse(args, kw, "OO", kwlist, &ol, &oy)) return NULL;
    PyArrayObject *lg = arr_check(ol, "logits", NPY_FLOAT32, 2, 0);
    if (!lg) return NULL;
    npy_intp N = PyArray_DIM(lg, 0), K = PyArray_DIM(lg, 1);
    if (N < 1 || K < 1) {
        PyErr_SetString(PyExc_ValueError, "logits: expected shape (N, K) with N, K >= 1");
        return NULL;
    }
    PyArrayObject *y = labels_check(oy, N, K);
    if (!y) return NULL;
    PyArrayObject *prob = new_f32(2, PyArray_DIMS(lg));
    if (!prob) return NULL;
    double loss;
    Py_BEGIN_ALLOW_THREADS
    loss = csub_cross_entropy_forward(F32(lg), (const int64_t *)PyArray_DATA(y), F32(prob), N, K);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("dN", loss, prob);
}

static PyObject *py_cross_entropy_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *op, *oy;
    double scale = 1.0;
    KW("prob", "labels", "scale");
    if (!parse(args, kw, "OO|d", kwlist, &op, &oy, &scale)) return NULL;
    PyArrayObject *p = arr_check(op, "prob", NPY_FLOAT32, 2, 0);
    if (!p) return NULL;
    npy_intp N = PyArray_DIM(p, 0), K = PyArray_DIM(p, 1);
    PyArrayObject *y = labels_check(oy, N, K);
    if (!y) return NULL;
    if (!isfinite(scale)) {
        PyErr_SetString(PyExc_ValueError, "scale: expected a finite number");
        return NULL;
    }
    PyArrayObject *d = new_f32(2, PyArray_DIMS(p));
    if (!d) return NULL;
    Py_BEGIN_ALLOW_THREADS
    csub_cross_entropy_backward(F32(p), (const int64_t *)PyArray_DATA(y), F32(d), N, K, (float)scale);
    Py_END_ALLOW_THREADS
    return (PyObject *)d;
}

/* ----------------------------------------------------------- optimizer */

static PyObject *py_sgd_step(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ow, *og, *ov = Py_None;
    double lr, momentum = 0.0, wd = 0.0;
    int nesterov = 0, first = 0;
    KW("w", "grad", "velocity", "lr", "momentum", "weight_decay", "nesterov", "first_step");
    if (!parse(args, kw, "OOOd|ddpp", kwlist, &ow, &og, &ov, &lr, &momentum, &wd,
                                     &nesterov, &first))
        return NULL;
    PyArrayObject *w = arr_check(ow, "w", NPY_FLOAT32, -1, 1);
    PyArrayObject *g = w ? arr_check(og, "grad", NPY_FLOAT32, -1, 0) : NULL, *v;
    if (!g || same_shape(g, "grad", w, "w") || opt_arr(ov, "velocity", -1, 1, &v)) return NULL;
    if (v && same_shape(v, "velocity", w, "w")) return NULL;
    if (!isfinite(lr) || lr < 0) {
        PyErr_Format(PyExc_ValueError, "lr: expected a finite number >= 0, got %s", fmt_g(lr).s);
        return NULL;
    }
    if (finite_range(momentum, 0.0, 1.0, "momentum") || finite_range(wd, 0.0, INFINITY, "weight_decay"))
        return NULL;
    if (momentum > 0 && !v) {
        PyErr_SetString(PyExc_ValueError, "velocity: required when momentum > 0");
        return NULL;
    }
    if (nesterov && momentum <= 0) {
        PyErr_SetString(PyExc_ValueError, "nesterov: requires momentum > 0");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    csub_sgd_step(F32(w), F32(g), OPT_F32(v), PyArray_SIZE(w), (float)lr, (float)momentum, (float)wd,
                  nesterov, first);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------ subspace */

static PyObject *py_line_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *o0, *o1, *oo = Py_None;
    double alpha;
    KW("w0", "w1", "alpha", "out");
    if (!parse(args, kw, "OOd|O", kwlist, &o0, &o1, &alpha, &oo)) return NULL;
    PyArrayObject *w0 = arr_check(o0, "w0", NPY_FLOAT32, -1, 0);
    PyArrayObject *w1 = w0 ? arr_check(o1, "w1", NPY_FLOAT32, -1, 0) : NULL, *out;
    if (!w1 || same_shape(w1, "w1", w0, "w0") || finite_range(alpha, 0.0, 1.0, "alpha") ||
        opt_arr(oo, "out", -1, 1, &out))
        return NULL;
    if (out) {
        if (same_shape(out, "out", w0, "w0")) return NULL;
        Py_INCREF(out);
    } else if (!(out = new_f32(PyArray_NDIM(w0), PyArray_DIMS(w0)))) {
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    csub_line_forward(F32(w0), F32(w1), (float)alpha, F32(out), PyArray_SIZE(w0));
    Py_END_ALLOW_THREADS
    return (PyObject *)out;
}

static PyObject *py_line_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *og, *o0, *o1;
    double alpha;
    KW("g", "alpha", "g0", "g1");
    if (!parse(args, kw, "OdOO", kwlist, &og, &alpha, &o0, &o1)) return NULL;
    PyArrayObject *g = arr_check(og, "g", NPY_FLOAT32, -1, 0);
    PyArrayObject *g0 = g ? arr_check(o0, "g0", NPY_FLOAT32, -1, 1) : NULL;
    PyArrayObject *g1 = g0 ? arr_check(o1, "g1", NPY_FLOAT32, -1, 1) : NULL;
    if (!g1 || same_shape(g0, "g0", g, "g") || same_shape(g1, "g1", g, "g") ||
        finite_range(alpha, 0.0, 1.0, "alpha"))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    csub_line_backward(F32(g), (float)alpha, F32(g0), F32(g1), PyArray_SIZE(g));
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_line_dots(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *o0, *o1;
    KW("w0", "w1");
    if (!parse(args, kw, "OO", kwlist, &o0, &o1)) return NULL;
    PyArrayObject *w0 = arr_check(o0, "w0", NPY_FLOAT32, -1, 0);
    PyArrayObject *w1 = w0 ? arr_check(o1, "w1", NPY_FLOAT32, -1, 0) : NULL;
    if (!w1 || same_shape(w1, "w1", w0, "w0")) return NULL;
    double s[3] = {0, 0, 0};
    Py_BEGIN_ALLOW_THREADS
    csub_line_dots(F32(w0), F32(w1), PyArray_SIZE(w0), s);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("ddd", s[0], s[1], s[2]);
}

static PyObject *py_line_reg_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *o0, *o1, *og0, *og1;
    double s[3], beta;
    KW("w0", "w1", "sums", "beta", "g0", "g1");
    if (!parse(args, kw, "OO(ddd)dOO", kwlist, &o0, &o1, &s[0], &s[1], &s[2], &beta,
                                     &og0, &og1))
        return NULL;
    PyArrayObject *w0 = arr_check(o0, "w0", NPY_FLOAT32, -1, 0);
    PyArrayObject *w1 = w0 ? arr_check(o1, "w1", NPY_FLOAT32, -1, 0) : NULL;
    PyArrayObject *g0 = w1 ? arr_check(og0, "g0", NPY_FLOAT32, -1, 1) : NULL;
    PyArrayObject *g1 = g0 ? arr_check(og1, "g1", NPY_FLOAT32, -1, 1) : NULL;
    if (!g1 || same_shape(w1, "w1", w0, "w0") || same_shape(g0, "g0", w0, "w0") || same_shape(g1, "g1", w0, "w0"))
        return NULL;
    if (!(s[1] > 0) || !(s[2] > 0) || !isfinite(s[0]) || !isfinite(s[1]) || !isfinite(s[2])) {
        PyErr_SetString(PyExc_ValueError, "sums: S00 and S11 must be finite and > 0 (an endpoint is all zero)");
        return NULL;
    }
    if (!isfinite(beta)) {
        PyErr_SetString(PyExc_ValueError, "beta: expected a finite number");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    csub_line_reg_backward(F32(w0), F32(w1), PyArray_SIZE(w0), s, (float)beta, F32(g0), F32(g1));
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------- random */

/* The generator state is a uint64 array of 4 owned by Python (csub.random). */
static csub_rng *rng_arg(PyObject *obj)
{
    PyArrayObject *a = arr_check(obj, "state", NPY_UINT64, 1, 1);
    if (!a) return NULL;
    if (PyArray_DIM(a, 0) != 4) {
        PyErr_SetString(PyExc_ValueError, "state: expected a uint64 array of shape (4,)");
        return NULL;
    }
    const uint64_t *s = (const uint64_t *)PyArray_DATA(a);
    if (!(s[0] | s[1] | s[2] | s[3])) {
        PyErr_SetString(PyExc_ValueError, "state: the all-zero state is invalid");
        return NULL;
    }
    return (csub_rng *)PyArray_DATA(a);
}

static PyObject *py_rng_seed(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *os;
    unsigned long long seed;
    KW("state", "seed");
    if (!parse(args, kw, "OK", kwlist, &os, &seed)) return NULL;
    PyArrayObject *a = arr_check(os, "state", NPY_UINT64, 1, 1);
    if (!a) return NULL;
    if (PyArray_DIM(a, 0) != 4) {
        PyErr_SetString(PyExc_ValueError, "state: expected a uint64 array of shape (4,)");
        return NULL;
    }
    csub_rng_seed((csub_rng *)PyArray_DATA(a), seed);
    Py_RETURN_NONE;
}

static PyObject *py_rng_uniform(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *os;
    KW("state");
    if (!parse(args, kw, "O", kwlist, &os)) return NULL;
    csub_rng *r = rng_arg(os);
    if (!r) return NULL;
    return PyFloat_FromDouble(csub_rng_uniform(r));
}

static PyObject *py_rng_fill(PyObject *self, PyObject *args, PyObject *kw, int normal)
{
    PyObject *os, *oo;
    double a, b;
    static char *kw_normal[] = {"state", "out", "mean", "std", NULL};
    static char *kw_uniform[] = {"state", "out", "low", "high", NULL};
    if (!parse(args, kw, "OOdd", normal ? kw_normal : kw_uniform, &os, &oo, &a, &b))
        return NULL;
    csub_rng *r = rng_arg(os);
    PyArrayObject *out = r ? arr_check(oo, "out", NPY_FLOAT32, -1, 1) : NULL;
    if (!out) return NULL;
    if (!isfinite(a) || !isfinite(b) || (normal ? b < 0 : b < a)) {
        PyErr_SetString(PyExc_ValueError, normal ? "std: expected a finite number >= 0"
                                                 : "high: expected finite bounds with low <= high");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    if (normal) csub_rng_normal(r, F32(out), PyArray_SIZE(out), (float)a, (float)b);
    else csub_rng_uniform_fill(r, F32(out), PyArray_SIZE(out), (float)a, (float)b);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_rng_normal(PyObject *self, PyObject *args, PyObject *kw)
{
    return py_rng_fill(self, args, kw, 1);
}

static PyObject *py_rng_uniform_fill(PyObject *self, PyObject *args, PyObject *kw)
{
    return py_rng_fill(self, args, kw, 0);
}

static PyObject *py_sample_alpha_biased(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *os;
    double lo, hi, p;
    KW("state", "lo", "hi", "p");
    if (!parse(args, kw, "Oddd", kwlist, &os, &lo, &hi, &p)) return NULL;
    csub_rng *r = rng_arg(os);
    if (!r || finite_range(lo, 0.0, 1.0, "lo") || finite_range(hi, lo, 1.0, "hi") ||
        finite_range(p, 0.0, 1.0, "p"))
        return NULL;
    return PyFloat_FromDouble(csub_sample_alpha_biased(r, lo, hi, p));
}

static PyObject *py_sample_alpha_discrete(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *os;
    long long K;
    KW("state", "K");
    if (!parse(args, kw, "OL", kwlist, &os, &K)) return NULL;
    csub_rng *r = rng_arg(os);
    if (!r || positive(K, "K")) return NULL;
    return PyFloat_FromDouble(csub_sample_alpha_discrete(r, K));
}

static PyObject *py_sample_alpha_sandwich(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *os;
    long long n;
    KW("state", "n");
    if (!parse(args, kw, "OL", kwlist, &os, &n)) return NULL;
    csub_rng *r = rng_arg(os);
    if (!r) return NULL;
    if (n < 2 || n > 1024) {
        PyErr_Format(PyExc_ValueError, "n: expected 2 <= n <= 1024 samples, got %lld", n);
        return NULL;
    }
    double buf[1024];
    csub_sample_alpha_sandwich(r, buf, n);
    PyObject *list = PyList_New(n);
    if (!list) return NULL;
    for (long long i = 0; i < n; i++) PyList_SET_ITEM(list, i, PyFloat_FromDouble(buf[i]));
    return list;
}

/* ---------------------------------------------------------------- sparse */

static int topk_arg(double topk)
{
    if (isfinite(topk) && topk > 0.0 && topk <= 1.0) return 0;
    PyErr_Format(PyExc_ValueError, "topk: expected a keep fraction in (0, 1], got %s", fmt_g(topk).s);
    return -1;
}

static PyObject *py_topk_count(PyObject *self, PyObject *args, PyObject *kw)
{
    long long n;
    double topk;
    KW("n", "topk");
    if (!parse(args, kw, "Ld", kwlist, &n, &topk)) return NULL;
    if (positive(n, "n") || topk_arg(topk)) return NULL;
    return PyLong_FromLongLong(csub_topk_count(n, topk));
}

static PyObject *py_topk_mask(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ow;
    double topk;
    KW("w", "topk");
    if (!parse(args, kw, "Od", kwlist, &ow, &topk)) return NULL;
    PyArrayObject *w = arr_check(ow, "w", NPY_FLOAT32, -1, 0);
    if (!w || topk_arg(topk)) return NULL;
    npy_intp n = PyArray_SIZE(w);
    if (n < 1) {
        PyErr_SetString(PyExc_ValueError, "w: expected at least one element");
        return NULL;
    }
    const float *d = F32(w);
    for (npy_intp i = 0; i < n; i++)
        if (isnan(d[i])) {
            PyErr_Format(PyExc_ValueError, "w: NaN at flat index %ld; magnitude top-k is undefined", (long)i);
            return NULL;
        }
    PyArrayObject *mask = (PyArrayObject *)PyArray_SimpleNew(PyArray_NDIM(w), PyArray_DIMS(w), NPY_UINT8);
    if (!mask) return NULL;
    int st;
    Py_BEGIN_ALLOW_THREADS
    st = csub_topk_mask(d, n, topk, (uint8_t *)PyArray_DATA(mask));
    Py_END_ALLOW_THREADS
    if (status_ok(st, "topk_mask")) { Py_DECREF(mask); return NULL; }
    return (PyObject *)mask;
}

static PyObject *py_apply_mask(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ow, *om, *oo = Py_None;
    KW("w", "mask", "out");
    if (!parse(args, kw, "OO|O", kwlist, &ow, &om, &oo)) return NULL;
    PyArrayObject *w = arr_check(ow, "w", NPY_FLOAT32, -1, 0);
    PyArrayObject *m = w ? arr_check(om, "mask", NPY_UINT8, -1, 0) : NULL, *out;
    if (!m || same_shape(m, "mask", w, "w") || opt_arr(oo, "out", -1, 1, &out)) return NULL;
    if (out) {
        if (same_shape(out, "out", w, "w")) return NULL;
        Py_INCREF(out);
    } else if (!(out = new_f32(PyArray_NDIM(w), PyArray_DIMS(w)))) {
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    csub_apply_mask(F32(w), (const uint8_t *)PyArray_DATA(m), F32(out), PyArray_SIZE(w));
    Py_END_ALLOW_THREADS
    return (PyObject *)out;
}

/* ----------------------------------------------------------------- quant */

#include <float.h>

static int bits_check(int bits)
{
    if (bits >= 2 && bits <= 16) return 0;
    PyErr_Format(PyExc_ValueError, "num_bits: expected an int in [2, 16], got %d", bits);
    return -1;
}

/* rmin <= rmax, both finite floats (float32 range). */
static int qrange_check(double rmin, double rmax)
{
    if (finite_range(rmin, -FLT_MAX, FLT_MAX, "rmin") || finite_range(rmax, -FLT_MAX, FLT_MAX, "rmax"))
        return -1;
    if (rmin <= rmax) return 0;
    PyErr_Format(PyExc_ValueError, "rmin: expected rmin <= rmax, got rmin = %s > rmax = %s",
                 fmt_g(rmin).s, fmt_g(rmax).s);
    return -1;
}

static PyObject *py_quant_params(PyObject *self, PyObject *args, PyObject *kw)
{
    double rmin, rmax;
    int bits;
    KW("rmin", "rmax", "num_bits");
    if (!parse(args, kw, "ddi", kwlist, &rmin, &rmax, &bits)) return NULL;
    if (qrange_check(rmin, rmax) || bits_check(bits)) return NULL;
    float scale;
    int32_t zp;
    csub_quant_params((float)rmin, (float)rmax, bits, &scale, &zp);
    return Py_BuildValue("(dl)", (double)scale, (long)zp);
}

static PyObject *py_fake_quantize(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ox, *oo = Py_None;
    double rmin, rmax;
    int bits;
    KW("x", "num_bits", "rmin", "rmax", "out");
    if (!parse(args, kw, "Oidd|O", kwlist, &ox, &bits, &rmin, &rmax, &oo)) return NULL;
    PyArrayObject *x = arr_check(ox, "x", NPY_FLOAT32, -1, 0), *out;
    if (!x || bits_check(bits) || qrange_check(rmin, rmax) || opt_arr(oo, "out", -1, 1, &out))
        return NULL;
    if (out) {
        if (same_shape(out, "out", x, "x")) return NULL;
        Py_INCREF(out);
    } else if (!(out = new_f32(PyArray_NDIM(x), PyArray_DIMS(x)))) {
        return NULL;
    }
    float scale;
    int32_t zp;
    csub_quant_params((float)rmin, (float)rmax, bits, &scale, &zp);
    int64_t nan;
    Py_BEGIN_ALLOW_THREADS
    nan = csub_fake_quant_forward_count_nan(F32(x), F32(out), PyArray_SIZE(x), scale, zp, bits);
    Py_END_ALLOW_THREADS
    if (nan) {
        PyErr_Format(PyExc_ValueError, "x: %lld NaN entries; fake quantization is undefined for NaN",
                     (long long)nan);
        Py_DECREF(out);
        return NULL;
    }
    return (PyObject *)out;
}

static PyObject *py_minmax(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ox;
    KW("x");
    if (!parse(args, kw, "O", kwlist, &ox)) return NULL;
    PyArrayObject *x = arr_check(ox, "x", NPY_FLOAT32, -1, 0);
    if (!x) return NULL;
    if (PyArray_SIZE(x) < 1) {
        PyErr_SetString(PyExc_ValueError, "x: expected at least one element");
        return NULL;
    }
    float mn, mx;
    Py_BEGIN_ALLOW_THREADS
    csub_minmax(F32(x), PyArray_SIZE(x), &mn, &mx);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(dd)", (double)mn, (double)mx);
}

static PyObject *py_channel_scale(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ox, *os, *oo = Py_None;
    KW("x", "s", "out");
    if (!parse(args, kw, "OO|O", kwlist, &ox, &os, &oo)) return NULL;
    PyArrayObject *x = arr_check(ox, "x", NPY_FLOAT32, -1, 0);
    PyArrayObject *sc = x ? arr_check(os, "s", NPY_FLOAT32, 1, 0) : NULL, *out;
    if (!sc) return NULL;
    npy_intp N, C, HW;
    if (nc_rest(x, "x", &N, &C, &HW)) return NULL;
    npy_intp cs[1] = {C};
    if (shape_check(sc, "s", 1, cs, "(C,) with C = x.shape[1]") || opt_arr(oo, "out", -1, 1, &out))
        return NULL;
    if (out) {
        if (same_shape(out, "out", x, "x")) return NULL;
        Py_INCREF(out);
    } else if (!(out = new_f32(PyArray_NDIM(x), PyArray_DIMS(x)))) {
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    csub_channel_scale(F32(x), F32(sc), F32(out), N, C, HW);
    Py_END_ALLOW_THREADS
    return (PyObject *)out;
}

/* --------------------------------------------------------------- runtime */

/* A csub_model in a capsule; `busy` refuses a second concurrent call (the
 * GIL is released while the model runs). */
typedef struct { csub_model *m; int busy; } rt_box;

static void rt_destroy(PyObject *cap)
{
    rt_box *b = PyCapsule_GetPointer(cap, "csub.model");
    if (b) { csub_model_free(b->m); PyMem_Free(b); }
}

static rt_box *rt_get(PyObject *obj)
{
    if (!PyCapsule_IsValid(obj, "csub.model")) {
        PyErr_Format(PyExc_TypeError, "model: expected a model from model_load, got %s", Py_TYPE(obj)->tp_name);
        return NULL;
    }
    rt_box *b = PyCapsule_GetPointer(obj, "csub.model");
    if (b->busy) {
        PyErr_SetString(PyExc_RuntimeError, "model: in use by another thread");
        return NULL;
    }
    return b;
}

static PyObject *rt_error(int st, const char *msg)
{
    return raise_status(st, NULL, msg);
}

static PyObject *py_model_load(PyObject *self, PyObject *args, PyObject *kw)
{
    Py_buffer buf;
    KW("data");
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*", kwlist, &buf)) return NULL;
    char err[256] = "";
    csub_model *m = NULL;
    int st;
    Py_BEGIN_ALLOW_THREADS
    st = csub_model_load_memory(buf.buf, (size_t)buf.len, &m, err, sizeof err);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf);
    if (st) return rt_error(st, err);
    rt_box *b = PyMem_Malloc(sizeof *b);
    if (!b) { csub_model_free(m); return PyErr_NoMemory(); }
    b->m = m;
    b->busy = 0;
    PyObject *cap = PyCapsule_New(b, "csub.model", rt_destroy);
    if (!cap) { csub_model_free(m); PyMem_Free(b); }
    return cap;
}

static PyObject *py_model_set_alpha(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *om;
    double alpha;
    KW("model", "alpha");
    if (!parse(args, kw, "Od", kwlist, &om, &alpha)) return NULL;
    rt_box *b = rt_get(om);
    if (!b) return NULL;
    int st;
    b->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    st = csub_model_set_alpha(b->m, alpha);
    Py_END_ALLOW_THREADS
    b->busy = 0;
    if (st) return rt_error(st, csub_model_error(b->m));
    Py_RETURN_NONE;
}

static PyObject *py_model_set_sparse_crossover(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *om, *osplit = Py_None;
    double keep, keep_split;
    KW("model", "keep", "keep_split");
    if (!parse(args, kw, "Od|O", kwlist, &om, &keep, &osplit)) return NULL;
    keep_split = osplit == Py_None ? keep : PyFloat_AsDouble(osplit);
    if (keep_split == -1.0 && PyErr_Occurred()) return NULL;
    rt_box *b = rt_get(om);
    if (!b || finite_range(keep, 0.0, 1.0, "keep") || finite_range(keep_split, 0.0, 1.0, "keep_split")) return NULL;
    int st;
    b->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    st = csub_model_set_sparse_crossover(b->m, keep, keep_split);
    Py_END_ALLOW_THREADS
    b->busy = 0;
    if (st) return rt_error(st, csub_model_error(b->m));
    Py_RETURN_NONE;
}

/* The model and a batch x of its inputs: (N, C, H, W) or (N, C*H*W), float32, N >= 1. */
static int rt_input(PyObject *om, PyObject *ox, rt_box **b, PyArrayObject **x, csub_model_desc *d, npy_intp *N)
{
    *b = rt_get(om);
    *x = *b ? arr_check(ox, "x", NPY_FLOAT32, -1, 0) : NULL;
    if (!*x) return -1;
    csub_model_info((*b)->m, d);
    npy_intp per = (npy_intp)(d->input_c * d->input_h * d->input_w);
    *N = PyArray_NDIM(*x) ? PyArray_DIM(*x, 0) : 0;
    if (PyArray_NDIM(*x) >= 2 && *N >= 1 && PyArray_SIZE(*x) == *N * per) return 0;
    char sh[128];
    shape_str(sh, sizeof sh, PyArray_NDIM(*x), PyArray_DIMS(*x));
    PyErr_Format(PyExc_ValueError, "x: expected (N, %lld, %lld, %lld) or (N, %lld) with N >= 1, got %s",
                 (long long)d->input_c, (long long)d->input_h, (long long)d->input_w, (long long)per, sh);
    return -1;
}

static PyObject *py_model_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *om, *ox;
    KW("model", "x");
    if (!parse(args, kw, "OO", kwlist, &om, &ox)) return NULL;
    rt_box *b;
    PyArrayObject *x;
    csub_model_desc d;
    npy_intp N;
    if (rt_input(om, ox, &b, &x, &d, &N)) return NULL;
    npy_intp ys[2] = {N, (npy_intp)d.num_classes};
    PyArrayObject *y = new_f32(2, ys);
    if (!y) return NULL;
    int st;
    b->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    st = csub_model_forward(b->m, F32(x), N, F32(y));
    Py_END_ALLOW_THREADS
    b->busy = 0;
    if (st) { Py_DECREF(y); return rt_error(st, csub_model_error(b->m)); }
    return (PyObject *)y;
}

static PyObject *py_model_profile(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *om, *ox;
    KW("model", "x");
    if (!parse(args, kw, "OO", kwlist, &om, &ox)) return NULL;
    rt_box *b;
    PyArrayObject *x;
    csub_model_desc d;
    npy_intp N;
    if (rt_input(om, ox, &b, &x, &d, &N)) return NULL;
    int n = csub_model_num_ops(b->m);
    double *ms = PyMem_Calloc((size_t)n, sizeof(double));
    float *y = PyMem_Malloc(sizeof(float) * (size_t)(N * d.num_classes));
    if (!ms || !y) { PyMem_Free(ms); PyMem_Free(y); return PyErr_NoMemory(); }
    int st;
    b->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    st = csub_model_profile(b->m, F32(x), N, y, ms);
    Py_END_ALLOW_THREADS
    b->busy = 0;
    PyMem_Free(y);
    if (st) { PyMem_Free(ms); return rt_error(st, csub_model_error(b->m)); }
    PyObject *out = PyList_New(n);
    for (int i = 0; out && i < n; i++) {
        PyObject *t = Py_BuildValue("(sd)", csub_model_op_name(b->m, i), ms[i]);
        if (!t) { Py_CLEAR(out); break; }
        PyList_SET_ITEM(out, i, t);
    }
    PyMem_Free(ms);
    return out;
}

static PyObject *py_model_info(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *om;
    KW("model");
    if (!parse(args, kw, "O", kwlist, &om)) return NULL;
    rt_box *b = rt_get(om);
    if (!b) return NULL;
    csub_model_desc d;
    csub_model_info(b->m, &d);
    return Py_BuildValue("{s:s,s:(LLL),s:L,s:d,s:d,s:d,s:i,s:L,s:L,s:L,s:s}", "regime", d.regime, "input_shape",
                         (long long)d.input_c, (long long)d.input_h, (long long)d.input_w, "num_classes",
                         (long long)d.num_classes, "alpha", d.alpha, "keep", d.keep, "width", d.width, "bits", d.bits,
                         "weight_bytes", (long long)d.weight_bytes, "subspace_bytes", (long long)d.subspace_bytes,
                         "flops", (long long)d.flops, "int8_kernel", csub_int8_kernel());
}

static PyObject *py_model_memory(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *om;
    long long batch;
    KW("model", "batch");
    if (!parse(args, kw, "OL", kwlist, &om, &batch)) return NULL;
    rt_box *b = rt_get(om);
    if (!b || positive(batch, "batch")) return NULL;
    int64_t bytes = csub_model_memory(b->m, batch);
    if (bytes < 0) return PyErr_Format(PyExc_ValueError, "batch: expected 1..2^24 images whose memory fits in "
                                                "int64, got %lld", batch);
    return PyLong_FromLongLong((long long)bytes);
}

static PyObject *py_model_calibrate(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *om, *oa;
    long long batch = 1, reps = 5;
    KW("model", "alphas", "batch", "reps");
    if (!parse(args, kw, "OO|LL", kwlist, &om, &oa, &batch, &reps)) return NULL;
    rt_box *b = rt_get(om);
    PyArrayObject *a = b ? arr_check(oa, "alphas", NPY_FLOAT64, 1, 0) : NULL;
    if (!a) return NULL;
    npy_intp n = PyArray_DIM(a, 0);
    if (n < 1 || n > 100000) { PyErr_SetString(PyExc_ValueError, "alphas: expected 1..100000 alphas"); return NULL; }
    if (batch < 1 || batch > 65536) { PyErr_Format(PyExc_ValueError, "batch: expected 1..65536, got %lld", batch); return NULL; }
    if (reps < 1 || reps > 10000) { PyErr_Format(PyExc_ValueError, "reps: expected 1..10000, got %lld", reps); return NULL; }
    csub_level *lv = PyMem_Calloc((size_t)n, sizeof *lv);
    if (!lv) return PyErr_NoMemory();
    int st;
    b->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    st = csub_model_calibrate(b->m, (const double *)PyArray_DATA(a), (int)n, batch, (int)reps, lv);
    Py_END_ALLOW_THREADS
    b->busy = 0;
    if (st) { PyMem_Free(lv); return rt_error(st, csub_model_error(b->m)); }
    PyObject *out = PyList_New(n);
    for (npy_intp i = 0; out && i < n; i++) {
        PyObject *r = Py_BuildValue("{s:d,s:d,s:d,s:L,s:d}", "alpha", lv[i].alpha, "latency_ms", lv[i].latency_ms,
                                    "set_alpha_ms", lv[i].set_alpha_ms, "memory_bytes", (long long)lv[i].memory_bytes,
                                    "accuracy", lv[i].accuracy);
        if (!r) { Py_CLEAR(out); break; }
        PyList_SET_ITEM(out, i, r);
    }
    PyMem_Free(lv);
    return out;
}

static PyObject *py_pick_alpha(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *oa, *ol, *om, *oc;
    double lat = 0.0;
    long long mem = 0;
    KW("alphas", "latency_ms", "memory_bytes", "accuracy", "latency_budget", "memory_budget");
    if (!parse(args, kw, "OOOO|dL", kwlist, &oa, &ol, &om, &oc, &lat, &mem)) return NULL;
    PyArrayObject *a = arr_check(oa, "alphas", NPY_FLOAT64, 1, 0);
    PyArrayObject *l = a ? arr_check(ol, "latency_ms", NPY_FLOAT64, 1, 0) : NULL;
    PyArrayObject *m = l ? arr_check(om, "memory_bytes", NPY_INT64, 1, 0) : NULL;
    PyArrayObject *c = m ? arr_check(oc, "accuracy", NPY_FLOAT64, 1, 0) : NULL;
    if (!c || same_shape(l, "latency_ms", a, "alphas") || same_shape(m, "memory_bytes", a, "alphas") ||
        same_shape(c, "accuracy", a, "alphas"))
        return NULL;
    npy_intp n = PyArray_DIM(a, 0);
    if (n < 1 || n > 100000) { PyErr_SetString(PyExc_ValueError, "alphas: expected 1..100000 levels"); return NULL; }
    csub_level *lv = PyMem_Calloc((size_t)n, sizeof *lv);
    if (!lv) return PyErr_NoMemory();
    for (npy_intp i = 0; i < n; i++) {
        lv[i].alpha = ((double *)PyArray_DATA(a))[i];
        lv[i].latency_ms = ((double *)PyArray_DATA(l))[i];
        lv[i].memory_bytes = ((int64_t *)PyArray_DATA(m))[i];
        lv[i].accuracy = ((double *)PyArray_DATA(c))[i];
    }
    double alpha = 0.0;
    int st = csub_pick_alpha(lv, (int)n, lat, mem, &alpha);
    PyMem_Free(lv);
    if (st == CSUB_ERR_BUDGET) Py_RETURN_NONE;
    if (st) return rt_error(st, csub_strerror(st));
    return PyFloat_FromDouble(alpha);
}

static PyObject *py_bits_for_alpha(PyObject *self, PyObject *args, PyObject *kw)
{
    double alpha;
    int lo, hi;
    KW("alpha", "min_bits", "max_bits");
    if (!parse(args, kw, "dii", kwlist, &alpha, &lo, &hi)) return NULL;
    if (finite_range(alpha, 0.0, 1.0, "alpha")) return NULL;
    if (lo < 2 || hi > 16 || lo > hi) { PyErr_SetString(PyExc_ValueError, "min_bits, max_bits: expected 2 <= min <= max <= 16"); return NULL; }
    return PyLong_FromLong(csub_bits_for_alpha(alpha, lo, hi));
}

/* ------------------------------------------------------ json, safetensors */

/* Python object for a parsed JSON value (numbers as float); depth <= 64. */
static PyObject *json_to_py(const csub_json *v)
{
    switch (v->type) {
    case CSUB_JSON_NULL:
        Py_RETURN_NONE;
    case CSUB_JSON_BOOL:
        return PyBool_FromLong(v->boolean);
    case CSUB_JSON_NUMBER:
        return PyFloat_FromDouble(v->number);
    case CSUB_JSON_STRING:
        return PyUnicode_FromString(v->string);
    case CSUB_JSON_ARRAY: {
        PyObject *list = PyList_New((Py_ssize_t)v->n);
        for (size_t i = 0; list && i < v->n; i++) {
            PyObject *it = json_to_py(&v->items[i]);
            if (!it) Py_CLEAR(list);
            else PyList_SET_ITEM(list, (Py_ssize_t)i, it);
        }
        return list;
    }
    case CSUB_JSON_OBJECT: {
        PyObject *dict = PyDict_New();
        for (size_t i = 0; dict && i < v->n; i++) {
            PyObject *it = json_to_py(&v->items[i]);
            if (!it || PyDict_SetItemString(dict, v->keys[i], it)) Py_CLEAR(dict);
            Py_XDECREF(it);
        }
        return dict;
    }
    }
    PyErr_SetString(PyExc_SystemError, "json: unknown value type");
    return NULL;
}

/* Raise for a failed parse: the reader's message, as its status says. */
static PyObject *reader_error(int status, const char *msg)
{
    return raise_status(status, NULL, msg[0] ? msg : "parse failed");
}

/* A bytes-like argument (bytes, bytearray, memoryview, ...) as a contiguous buffer. */
static int bytes_arg(PyObject *obj, const char *name, Py_buffer *view)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) == 0) return 0;
    PyErr_Format(PyExc_TypeError, "%s: expected a bytes-like object, got %s", name, Py_TYPE(obj)->tp_name);
    return -1;
}

static PyObject *py_json_parse(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *obj;
    Py_buffer text;
    KW("text");
    if (!parse(args, kw, "O", kwlist, &obj) || bytes_arg(obj, "text", &text)) return NULL;
    csub_json *v = NULL;
    char err[256];
    int st;
    Py_BEGIN_ALLOW_THREADS
    st = csub_json_parse(text.buf, (size_t)text.len, &v, err, sizeof err);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&text);
    if (st) return reader_error(st, err);
    PyObject *out = json_to_py(v);
    csub_json_free(v);
    return out;
}

static const char *dtype_name(csub_dtype dt)
{
    static const char *names[] = {"F32", "F64", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL",
                                  "U16", "U32", "U64"};
    return (unsigned)dt < sizeof names / sizeof names[0] ? names[dt] : "?";
}

/* (dtype, shape, bytes) for one tensor */
static PyObject *st_tensor_to_py(const csub_st_tensor *t)
{
    PyObject *shape = PyTuple_New(t->ndim);
    for (int d = 0; shape && d < t->ndim; d++) {
        PyObject *n = PyLong_FromLongLong(t->shape[d]);
        if (!n) Py_CLEAR(shape);
        else PyTuple_SET_ITEM(shape, d, n);
    }
    if (!shape) return NULL;
    Py_ssize_t bytes = (Py_ssize_t)(t->numel * (int64_t)csub_dtype_size(t->dtype));
    return Py_BuildValue("(sNy#)", dtype_name(t->dtype), shape, (const char *)t->data, bytes);
}

static PyObject *py_st_parse(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *obj;
    Py_buffer data;
    KW("data");
    if (!parse(args, kw, "O", kwlist, &obj) || bytes_arg(obj, "data", &data)) return NULL;
    csub_st_file f;
    char err[512];
    int st;
    Py_BEGIN_ALLOW_THREADS
    st = csub_st_parse(data.buf, (size_t)data.len, &f, err, sizeof err);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    if (st) return reader_error(st, err);

    PyObject *meta = NULL, *tensors = PyDict_New();
    if (!tensors) goto fail;
    if (f.metadata) {
        if (!(meta = json_to_py(f.metadata))) goto fail;
    } else {
        Py_INCREF(Py_None);
        meta = Py_None;
    }
    for (size_t i = 0; i < f.n; i++) {
        PyObject *t = st_tensor_to_py(&f.tensors[i]);
        int bad = !t || PyDict_SetItemString(tensors, f.tensors[i].name, t);
        Py_XDECREF(t);
        if (bad) goto fail;
    }
    csub_st_free(&f);
    return Py_BuildValue("(NN)", meta, tensors);
fail:
    csub_st_free(&f);
    Py_XDECREF(meta);
    Py_XDECREF(tensors);
    return NULL;
}

/* ------------------------------------------------------- integer kernels */

/* Arguments shared by the integer layers: the grid (bits, xscale, xzero_point)
 * and the per-output-channel oscale and b, each (K,) or None. */
static int int8_check(int bits, double xscale, long long xzp, PyObject *oos, PyObject *ob, npy_intp K,
                      PyArrayObject **oscale, PyArrayObject **b)
{
    if (bits < 2 || bits > 8) {
        PyErr_Format(PyExc_ValueError, "bits: expected an int in [2, 8], got %d", bits);
        return -1;
    }
    if (!isfinite(xscale) || xscale < 0.0 || xscale > FLT_MAX) {
        PyErr_Format(PyExc_ValueError, "xscale: expected a finite number >= 0, got %s", fmt_g(xscale).s);
        return -1;
    }
    long long qmin = -(1LL << (bits - 1)), qmax = (1LL << (bits - 1)) - 1;
    if (xzp < qmin || xzp > qmax) {
        PyErr_Format(PyExc_ValueError, "xzero_point: expected an int in [%lld, %lld] (the %d-bit grid), got %lld",
                     qmin, qmax, bits, xzp);
        return -1;
    }
    npy_intp ks[1] = {K};
    if (opt_arr(oos, "oscale", 1, 0, oscale) || (*oscale && shape_check(*oscale, "oscale", 1, ks, "(out_channels,)")) ||
        opt_arr(ob, "b", 1, 0, b) || (*b && shape_check(*b, "b", 1, ks, "(out_channels,)")))
        return -1;
    return 0;
}

static int cols_check(npy_intp cols)
{
    if (cols <= CSUB_INT8_MAX_COLS) return 0;
    PyErr_Format(PyExc_ValueError, "weight: %ld inputs per output exceed %d (the 32-bit accumulators could overflow)",
                 (long)cols, CSUB_INT8_MAX_COLS);
    return -1;
}

/* Status of quantizing the weight (st_w) and of the product (st). */
static int int8_status(int st_w, int st, const char *where)
{
    if (st_w == CSUB_ERR_ARG) {
        PyErr_SetString(PyExc_ValueError, "weight: NaN or infinite entries cannot be quantized");
        return -1;
    }
    if (st_w != CSUB_OK) return status_ok(st_w, where);
    if (st == CSUB_ERR_ARG) {
        PyErr_SetString(PyExc_ValueError, "x: NaN entries; integer quantization is undefined for NaN");
        return -1;
    }
    return status_ok(st, where);
}

static PyObject *py_conv2d_int8_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ox, *ow, *oos = Py_None, *ob = Py_None;
    int bits;
    double xscale;
    long long xzp, stride = 1, pad = 0;
    KW("x", "weight", "bits", "xscale", "xzero_point", "oscale", "b", "stride", "padding");
    if (!parse(args, kw, "OOidL|OOLL", kwlist, &ox, &ow, &bits, &xscale, &xzp, &oos, &ob, &stride, &pad))
        return NULL;
    PyArrayObject *x = arr_check(ox, "x", NPY_FLOAT32, 4, 0);
    PyArrayObject *w = x ? arr_check(ow, "weight", NPY_FLOAT32, 4, 0) : NULL, *os, *b;
    if (!w) return NULL;
    conv_dims d;
    if (conv_check_dims(x, PyArray_DIMS(w), "weight", stride, pad, &d) ||
        int8_check(bits, xscale, xzp, oos, ob, d.K, &os, &b) || cols_check(d.C * d.R * d.S))
        return NULL;
    npy_intp ys[4] = {d.N, d.K, d.P, d.Q};
    PyArrayObject *y = new_f32(4, ys);
    if (!y) return NULL;
    int st_w, st = CSUB_OK;
    Py_BEGIN_ALLOW_THREADS
    csub_qweight qw;
    st_w = csub_qweight_init_conv(&qw, F32(w), d.K, d.C, d.R, d.S, bits);
    if (st_w == CSUB_OK) {
        st = csub_conv2d_int8_forward(F32(x), (float)xscale, (int32_t)xzp, &qw, OPT_F32(os), OPT_F32(b), F32(y),
                                      d.N, d.C, d.H, d.W, d.R, d.S, stride, pad);
        csub_qweight_free(&qw);
    }
    Py_END_ALLOW_THREADS
    if (int8_status(st_w, st, "conv2d_int8_forward")) { Py_DECREF(y); return NULL; }
    return (PyObject *)y;
}

static PyObject *py_linear_int8_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyObject *ox, *ow, *oos = Py_None, *ob = Py_None;
    int bits;
    double xscale;
    long long xzp;
    KW("x", "weight", "bits", "xscale", "xzero_point", "oscale", "b");
    if (!parse(args, kw, "OOidL|OO", kwlist, &ox, &ow, &bits, &xscale, &xzp, &oos, &ob)) return NULL;
    PyArrayObject *x = arr_check(ox, "x", NPY_FLOAT32, 2, 0);
    PyArrayObject *w = x ? arr_check(ow, "weight", NPY_FLOAT32, 2, 0) : NULL, *os, *b;
    if (!w) return NULL;
    npy_intp N = PyArray_DIM(x, 0), IN = PyArray_DIM(x, 1), O = PyArray_DIM(w, 0);
    npy_intp ws[2] = {O, IN};
    if (shape_check(w, "weight", 2, ws, "(out_features, in_features)")) return NULL;
    if (O < 1 || IN < 1) {
        PyErr_SetString(PyExc_ValueError, "weight: expected out_features >= 1 and in_features >= 1");
        return NULL;
    }
    if (int8_check(bits, xscale, xzp, oos, ob, O, &os, &b) || cols_check(IN)) return NULL;
    npy_intp d[2] = {N, O};
    PyArrayObject *y = new_f32(2, d);
    if (!y) return NULL;
    int st_w, st = CSUB_OK;
    Py_BEGIN_ALLOW_THREADS
    csub_qweight qw;
    st_w = csub_qweight_init(&qw, F32(w), O, IN, bits);
    if (st_w == CSUB_OK) {
        st = csub_linear_int8_forward(F32(x), (float)xscale, (int32_t)xzp, &qw, OPT_F32(os), OPT_F32(b), F32(y), N);
        csub_qweight_free(&qw);
    }
    Py_END_ALLOW_THREADS
    if (int8_status(st_w, st, "linear_int8_forward")) { Py_DECREF(y); return NULL; }
    return (PyObject *)y;
}

static PyObject *py_int8_kernel(PyObject *self, PyObject *noargs)
{
    return PyUnicode_FromString(csub_int8_kernel());
}

static PyObject *py_isa(PyObject *self, PyObject *noargs)
{
    return PyUnicode_FromString(csub_isa()); /* never refused here: the import checked it */
}

/* ---------------------------------------------------------------- module */

#define M(name, doc) {#name, (PyCFunction)(void (*)(void))py_##name, METH_VARARGS | METH_KEYWORDS, doc}

static PyMethodDef methods[] = {
    M(set_num_threads, "set_num_threads(n): threads used by csub's kernels"),
    {"get_num_threads", (PyCFunction)py_get_num_threads, METH_NOARGS, "get_num_threads() -> int"},
    M(gemm, "gemm(a, b, transa=False, transb=False) -> op(a) @ op(b), float32"),
    M(linear_forward, "linear_forward(x[N,I], w[O,I], b[O]=None) -> y[N,O]"),
    M(linear_backward, "linear_backward(x, w, dy[N,O], dw=None, db=None, need_dx=True) -> dx; dw, db +="),
    M(conv2d_forward, "conv2d_forward(x[N,C,H,W], w[K,C,R,S], b=None, stride=1, padding=0) -> y[N,K,P,Q]"),
    M(conv2d_backward, "conv2d_backward(x, w, dy, dw=None, db=None, stride=1, padding=0, need_dx=True) -> dx; dw, db +="),
    M(csr_from_mask, "csr_from_mask(w[K,...], mask uint8) -> (rowptr int64[K+1], colidx int32[nnz], values float32[nnz])"),
    M(conv2d_sparse_forward, "conv2d_sparse_forward(x, rowptr, colidx, values, weight_shape, b=None, stride=1, padding=0, "
                             "residual=None) -> y (+ residual)"),
    M(conv2d_sparse_backward, "conv2d_sparse_backward(x, rowptr, colidx, values, weight_shape, dy, dw=None, db=None, "
                              "stride=1, padding=0, need_dx=True) -> dx; dw (weight's shape or (nnz,)), db +="),
    M(linear_sparse_forward, "linear_sparse_forward(x[N,I], rowptr, colidx, values, weight_shape, b=None) -> y[N,O]"),
    M(linear_sparse_backward, "linear_sparse_backward(x, rowptr, colidx, values, weight_shape, dy, dw=None, db=None, "
                              "need_dx=True) -> dx; dw, db +="),
    M(batchnorm_forward, "batchnorm_forward(x[N,C,...], gamma, beta, running_mean=None, running_var=None, "
                         "momentum=0.1, eps=1e-5, training=True) -> (y, mean[C], invstd[C])"),
    M(batchnorm_backward, "batchnorm_backward(x, gamma, dy, mean, invstd, dgamma=None, dbeta=None, training=True) -> dx"),
    M(groupnorm_forward, "groupnorm_forward(x[N,C,...], gamma, beta, num_groups, eps=1e-5) -> (y, mean[N,G], invstd[N,G])"),
    M(groupnorm_infer, "groupnorm_infer(x, gamma, beta, num_groups, eps=1e-5, relu=False) -> y (inference, ReLU fused)"),
    M(batchnorm_infer, "batchnorm_infer(x, gamma, beta, running_mean, running_var, eps=1e-5, relu=False) -> y"),
    M(groupnorm_backward, "groupnorm_backward(x, gamma, dy, mean, invstd, dgamma=None, dbeta=None) -> dx"),
    M(relu_forward, "relu_forward(x) -> y"),
    M(relu_backward, "relu_backward(x, dy) -> dx"),
    M(add, "add(a, b, out=None) -> a + b (out may be a or b)"),
    M(maxpool2d_forward, "maxpool2d_forward(x, kernel_size, stride) -> (y, argmax int32)"),
    M(maxpool2d_backward, "maxpool2d_backward(dy, argmax, input_shape, kernel_size, stride) -> dx"),
    M(avgpool2d_forward, "avgpool2d_forward(x, kernel_size, stride) -> y"),
    M(avgpool2d_backward, "avgpool2d_backward(dy, input_shape, kernel_size, stride) -> dx"),
    M(gap_forward, "gap_forward(x[N,C,H,W]) -> y[N,C]"),
    M(gap_backward, "gap_backward(dy[N,C], input_shape) -> dx"),
    M(cross_entropy_forward, "cross_entropy_forward(logits[N,K], labels int64[N]) -> (loss, prob)"),
    M(cross_entropy_backward, "cross_entropy_backward(prob, labels, scale=1.0) -> dlogits"),
    M(sgd_step, "sgd_step(w, grad, velocity, lr, momentum=0, weight_decay=0, nesterov=False, first_step=False)"),
    M(line_forward, "line_forward(w0, w1, alpha, out=None) -> (1 - alpha) w0 + alpha w1"),
    M(line_backward, "line_backward(g, alpha, g0, g1): g0 += (1 - alpha) g, g1 += alpha g"),
    M(line_dots, "line_dots(w0, w1) -> (w0.w1, |w0|^2, |w1|^2)"),
    M(line_reg_backward, "line_reg_backward(w0, w1, sums, beta, g0, g1): gradient of beta S01^2/(S00 S11)"),
    M(rng_seed, "rng_seed(state uint64[4], seed)"),
    M(rng_uniform, "rng_uniform(state) -> float in [0, 1)"),
    M(rng_normal, "rng_normal(state, out, mean, std): fill out ~ N(mean, std^2)"),
    M(rng_uniform_fill, "rng_uniform_fill(state, out, low, high): fill out ~ U[low, high)"),
    M(sample_alpha_biased, "sample_alpha_biased(state, lo, hi, p) -> alpha"),
    M(sample_alpha_discrete, "sample_alpha_discrete(state, K) -> k/K"),
    M(sample_alpha_sandwich, "sample_alpha_sandwich(state, n) -> [0, 1, U, ...]"),
    M(topk_count, "topk_count(n, topk) -> number of kept entries"),
    M(topk_mask, "topk_mask(w, topk) -> uint8 mask of the largest |w|"),
    M(apply_mask, "apply_mask(w, mask, out=None) -> w * mask"),
    M(quant_params, "quant_params(rmin, rmax, num_bits) -> (scale, zero_point), range widened to include 0"),
    M(fake_quantize, "fake_quantize(x, num_bits, rmin, rmax, out=None) -> y on the num_bits grid of [rmin, rmax]"),
    M(minmax, "minmax(x) -> (min, max) as floats; NaN if x has a NaN"),
    M(channel_scale, "channel_scale(x[N,C,...], s[C], out=None) -> y = x * s[c] per channel"),
    M(model_load, "model_load(data: bytes) -> model (an exported csub model file, at alpha 1)"),
    M(model_set_alpha, "model_set_alpha(model, alpha): materialise the compressed network at alpha"),
    M(model_forward, "model_forward(model, x[N, C, H, W]) -> logits[N, classes]"),
    M(model_set_sparse_crossover, "model_set_sparse_crossover(model, keep, keep_split=keep): CSR kernels at keep "
                                  "fractions <= keep (whole images per thread), <= keep_split (an image split across threads)"),
    M(model_profile, "model_profile(model, x) -> [(op name, ms), ...] one timed forward"),
    M(model_info, "model_info(model) -> dict (regime, level, sizes, flops)"),
    M(model_memory, "model_memory(model, batch) -> bytes to run a batch at the current alpha"),
    M(model_calibrate, "model_calibrate(model, alphas float64[n], batch=1, reps=5) -> list of dicts"),
    M(pick_alpha, "pick_alpha(alphas, latency_ms, memory_bytes int64, accuracy, latency_budget=0, "
                  "memory_budget=0) -> alpha or None"),
    M(bits_for_alpha, "bits_for_alpha(alpha, min_bits, max_bits) -> int"),
    M(json_parse, "json_parse(text: bytes) -> the value (strict RFC 8259; numbers as float)"),
    M(st_parse, "st_parse(data: bytes) -> (metadata dict or None, {name: (dtype, shape, bytes)})"),
    M(conv2d_int8_forward, "conv2d_int8_forward(x[N,C,H,W], weight[K,C,R,S], bits, xscale, xzero_point, oscale=None, "
                           "b=None, stride=1, padding=0) -> y[N,K,P,Q], integer product of the quantized weight and input"),
    M(linear_int8_forward, "linear_int8_forward(x[N,I], weight[O,I], bits, xscale, xzero_point, oscale=None, b=None) "
                           "-> y[N,O], integer product"),
    {"int8_kernel", (PyCFunction)py_int8_kernel, METH_NOARGS, "int8_kernel() -> name of the integer kernel this CPU runs"},
    {"isa", (PyCFunction)py_isa, METH_NOARGS, "isa() -> the instruction set the SIMD kernels run (CSUB_ISA)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_core", "csub's C core: kernels with forward and backward.", -1, methods,
};

PyMODINIT_FUNC PyInit__core(void)
{
    char err[256];
    if (csub_isa_check(err, sizeof err)) { /* CSUB_ISA names a level this CPU cannot run */
        PyErr_SetString(PyExc_ImportError, err);
        return NULL;
    }
    import_array();
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    if (PyModule_AddIntConstant(m, "MAX_NUM_THREADS", CSUB_MAX_THREADS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    static const struct { const char *name, *doc; PyObject **type; } errs[] = {
        {"csub.FormatError", "A model file, header or JSON text is malformed (CSUB_ERR_FORMAT).", &FormatError},
        {"csub.UnsupportedError", "Well formed, but asks for something csub cannot run (CSUB_ERR_UNSUPPORTED).",
         &UnsupportedError},
        {"csub.BudgetError", "No level of the subspace fits the budget (CSUB_ERR_BUDGET).", &BudgetError},
    };
    for (size_t i = 0; i < sizeof errs / sizeof errs[0]; i++) {
        *errs[i].type = PyErr_NewExceptionWithDoc(errs[i].name, errs[i].doc, PyExc_ValueError, NULL);
        if (!*errs[i].type || PyModule_AddObjectRef(m, strchr(errs[i].name, '.') + 1, *errs[i].type) < 0) {
            Py_DECREF(m);
            return NULL;
        }
    }
    return m;
}
