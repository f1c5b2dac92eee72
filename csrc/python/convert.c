/*
 * convert.c - the argument-conversion layer of csub._core: array, shape and
 * number checks that raise TypeError/ValueError naming the argument, the
 * status-code-to-exception map, and a keyword parser that names the argument
 * that did not convert.
 */
#include "convert.h"
#include <math.h>
#include <stdarg.h>
#include <string.h>

PyObject *FormatError, *UnsupportedError, *BudgetError;

/* ------------------------------------------------------------ validation */

/* Render a shape as "(2, 3, 4)". */
void shape_str(char *buf, size_t len, int nd, const npy_intp *d)
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
PyArrayObject *arr_check(PyObject *obj, const char *name, int typenum,
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
 * `what` describes the expected shape for the message, e.g. "(N, C, H, W)".
 * An absent optional array (NULL) passes. */
int shape_check(PyArrayObject *a, const char *name, int nd,
                       const npy_intp *want, const char *what)
{
    if (!a) return 0;
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

/* Same shape as the reference array (or a NULL, absent array). */
int same_shape(PyArrayObject *a, const char *name, PyArrayObject *ref, const char *refname)
{
    if (!a) return 0;
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

/* Each given array (a NULL one is absent) has shape (C,). */
int per_channel(npy_intp C, int n, const named_arr *args)
{
    npy_intp cs[1] = {C};
    for (int i = 0; i < n; i++)
        if (shape_check(args[i].a, args[i].name, 1, cs, "(C,)")) return -1;
    return 0;
}

int positive(long long v, const char *name)
{
    if (v >= 1) return 0;
    PyErr_Format(PyExc_ValueError, "%s: expected an integer >= 1, got %lld", name, v);
    return -1;
}

numstr fmt_g(double v)
{
    numstr r;
    snprintf(r.s, sizeof r.s, "%g", v);
    return r;
}

int finite_range(double v, double lo, double hi, const char *name)
{
    if (isfinite(v) && v >= lo && v <= hi) return 0;
    char buf[64];
    snprintf(buf, sizeof buf, "%g", v);
    PyErr_Format(PyExc_ValueError, "%s: expected a number in [%s, %s], got %s",
                 name, fmt_g(lo).s, fmt_g(hi).s, buf);
    return -1;
}

int eps_check(double eps)
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
PyObject *raise_status(int status, const char *where, const char *msg)
{
    if (!msg || !msg[0]) msg = csub_strerror(status);
    if (where) PyErr_Format(status_type(status), "%s: %s", where, msg);
    else PyErr_SetString(status_type(status), msg);
    return NULL;
}

/* 0 for CSUB_OK; otherwise raise for a kernel's status (kernels return
 * CSUB_ERR_NOMEM for their workspace, CSUB_ERR_ARG for sizes) and -1. */
int status_ok(int status, const char *where)
{
    if (status == CSUB_OK) return 0;
    raise_status(status, where, status == CSUB_ERR_NOMEM ? "out of memory for workspace" : NULL);
    return -1;
}

PyObject *finish(int status, const char *where, PyArrayObject *out)
{
    if (status_ok(status, where)) { Py_XDECREF(out); return NULL; }
    if (!out) Py_RETURN_NONE;
    return (PyObject *)out;
}

int out_like(PyArrayObject **out, PyArrayObject *x, const char *xname)
{
    if (*out) {
        if (same_shape(*out, "out", x, xname)) return -1;
        Py_INCREF(*out);
        return 0;
    }
    *out = new_f32(PyArray_NDIM(x), PyArray_DIMS(x));
    return *out ? 0 : -1;
}

/* Shape tuple argument, e.g. input_shape=(N, C, H, W). */
int parse_shape(PyObject *obj, const char *name, int nd, npy_intp *dims)
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

/* After a failed parse, find the argument whose value did not convert and
 * raise an error that names it (CPython's own messages do not, for numbers). */
static void name_bad_argument(PyObject *args, PyObject *kw, const char *fmt, char **kwlist)
{
    if (!PyErr_ExceptionMatches(PyExc_TypeError) && !PyErr_ExceptionMatches(PyExc_OverflowError)) return;
    Py_ssize_t npos = PyTuple_GET_SIZE(args);
    int i = 0;
    for (const char *f = fmt; *f && kwlist[i]; f++) {
        char c = *f;
        if (c == '|' || c == ')' || c == '&') continue; /* O& is one argument */
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

/* The arguments the deferred converters saw during one parse(), checked in
 * order once every other argument converted. A conversion can run Python
 * code (__index__, __float__, a sequence's __getitem__) that calls csub
 * again, or lets another thread do so: each parse() has its own list, and
 * `current` (per thread) names the innermost one running. */
#define MAX_DEFERRED 16
typedef struct {
    struct { deferred_check check; const void *spec; PyObject *obj; } item[MAX_DEFERRED];
    int n;
} deferred_list;
static _Thread_local deferred_list *current;

int defer(PyObject *obj, deferred_check check, const void *spec)
{
    if (!current || current->n == MAX_DEFERRED) {
        PyErr_SetString(PyExc_SystemError, "parse: a deferred converter outside parse(), or too many arguments");
        return 0;
    }
    current->item[current->n].check = check;
    current->item[current->n].spec = spec;
    current->item[current->n++].obj = obj;
    return 1;
}

static int arr_finish(PyObject *obj, const void *spec)
{
    const arr_arg *a = spec;
    *a->out = NULL;
    if (a->optional && obj == Py_None) return 0;
    return (*a->out = arr_check(obj, a->name, a->typenum, a->ndim, a->writable)) ? 0 : -1;
}

int arr_converter(PyObject *obj, void *arg)
{
    return defer(obj, arr_finish, arg);
}

static int shape_finish(PyObject *obj, const void *spec)
{
    const shape_arg *a = spec;
    return parse_shape(obj, a->name, a->nd, a->dims);
}

int shape_converter(PyObject *obj, void *arg)
{
    return defer(obj, shape_finish, arg);
}

static int bytes_finish(PyObject *obj, const void *spec)
{
    const bytes_arg *a = spec;
    if (PyObject_GetBuffer(obj, a->view, PyBUF_SIMPLE) == 0) return 0;
    PyErr_Format(PyExc_TypeError, "%s: expected a bytes-like object, got %s", a->name, Py_TYPE(obj)->tp_name);
    return -1;
}

int bytes_converter(PyObject *obj, void *arg)
{
    return defer(obj, bytes_finish, arg);
}

/* PyArg_ParseTupleAndKeywords that names the offending argument on failure. */
int parse(PyObject *args, PyObject *kw, const char *fmt, char **kwlist, ...)
{
    va_list va;
    deferred_list list, *outer = current;
    list.n = 0;
    current = &list;
    va_start(va, kwlist);
    int ok = PyArg_VaParseTupleAndKeywords(args, kw, fmt, kwlist, va);
    va_end(va);
    current = outer;
    if (!ok) {
        name_bad_argument(args, kw, fmt, kwlist);
        return 0;
    }
    for (int i = 0; i < list.n; i++) /* the arrays and others, after the numbers, in order */
        if (list.item[i].check(list.item[i].obj, list.item[i].spec)) return 0;
    return 1;
}


/* Two float32 arrays of any rank and the same shape, named kwlist[0] and kwlist[1]. */
int parse_pair(PyObject *args, PyObject *kw, char **kwlist, PyArrayObject **a, PyArrayObject **b)
{
    if (!parse(args, kw, "O&O&", kwlist, ARG_F32_AS(*a, kwlist[0], -1), ARG_F32_AS(*b, kwlist[1], -1))) return -1;
    return same_shape(*b, kwlist[1], *a, kwlist[0]);
}

/* Shared parsing of conv arguments: x[N,C,H,W], w[K,C,R,S]. */

int conv_check_dims(PyArrayObject *x, const npy_intp *wd, const char *wname,
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

int rows_band(PyArrayObject *x, PyArrayObject *up, PyArrayObject *dn, long long height, long long lo, long long p0,
              long long p1, long long stride, csub_rows *rows, int64_t *Q)
{
    npy_intp hb = PyArray_DIM(x, 1), W = PyArray_DIM(x, 2);
    if (lo < 0 || height < lo + hb || height > ((int64_t)1 << 24) || W < 1 || hb < 1) {
        PyErr_Format(PyExc_ValueError, "lo, height: rows [%lld, %lld) of x are not in an image of %lld rows", lo,
                     lo + (long long)hb, height);
        return -1;
    }
    int64_t P = csub_conv_out_size(height, 3, stride, 1);
    *Q = csub_conv_out_size(W, 3, stride, 1);
    if (p0 < 0 || p1 < p0 || p1 > P) {
        PyErr_Format(PyExc_ValueError, "p0, p1: expected 0 <= p0 <= p1 <= %lld output rows, got %lld, %lld",
                     (long long)P, p0, p1);
        return -1;
    }
    *rows = (csub_rows){(const float *)PyArray_DATA(x), up && lo > 0 ? (const float *)PyArray_DATA(up) : NULL,
                        dn && lo + hb < height ? (const float *)PyArray_DATA(dn) : NULL, lo, lo + hb, hb * W};
    if (!csub_rows_cover(rows, height, 3, stride, 1, p0, p1)) {
        PyErr_Format(PyExc_ValueError, "x, up, dn: output rows [%lld, %lld) read input rows these do not hold", p0, p1);
        return -1;
    }
    return 0;
}

/* x is (N, C, ...) with rank >= 2; returns N, C, and the product of the rest. */
int nc_rest(PyArrayObject *x, const char *name, npy_intp *N, npy_intp *C, npy_intp *HW)
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
