/* py_quant.c - csub._core: fake quantization and the integer kernels (csrc/quant.c, int8.c). */
#include <float.h>
#include "convert.h"

/* ----------------------------------------------------------------- quant */


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
    PyArrayObject *x, *out = NULL;
    double rmin, rmax;
    int bits;
    KW("x", "num_bits", "rmin", "rmax", "out");
    if (!parse(args, kw, "O&idd|O&", kwlist, ARG_F32(x, -1), &bits, &rmin, &rmax, ARG_OUT(out)) ||
        bits_check(bits) || qrange_check(rmin, rmax) || out_like(&out, x, "x"))
        return NULL;
    float scale;
    int32_t zp;
    csub_quant_params((float)rmin, (float)rmax, bits, &scale, &zp);
    int64_t nan;
    NOGIL(nan = csub_fake_quant_forward_count_nan(F32(x), F32(out), PyArray_SIZE(x), scale, zp, bits));
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
    PyArrayObject *x;
    KW("x");
    if (!parse(args, kw, "O&", kwlist, ARG_F32(x, -1)))
        return NULL;
    if (PyArray_SIZE(x) < 1) {
        PyErr_SetString(PyExc_ValueError, "x: expected at least one element");
        return NULL;
    }
    float mn, mx;
    NOGIL(csub_minmax(F32(x), PyArray_SIZE(x), &mn, &mx));
    return Py_BuildValue("(dd)", (double)mn, (double)mx);
}

static PyObject *py_channel_scale(PyObject *self, PyObject *args, PyObject *kw)
{
    PyArrayObject *x, *sc, *out = NULL;
    KW("x", "s", "out");
    if (!parse(args, kw, "O&O&|O&", kwlist, ARG_F32(x, -1), ARG_F32_AS(sc, "s", 1), ARG_OUT(out))) return NULL;
    npy_intp N, C, HW;
    if (nc_rest(x, "x", &N, &C, &HW)) return NULL;
    npy_intp cs[1] = {C};
    if (shape_check(sc, "s", 1, cs, "(C,) with C = x.shape[1]") || out_like(&out, x, "x")) return NULL;
    NOGIL(csub_channel_scale(F32(x), F32(sc), F32(out), N, C, HW));
    return (PyObject *)out;
}

/* ------------------------------------------------------- integer kernels */

/* Arguments shared by the integer layers: the grid (bits, xscale, xzero_point)
 * and the per-output-channel oscale and b, each (K,) or None. */
static int int8_check(int bits, double xscale, long long xzp, PyArrayObject *oscale, PyArrayObject *b, npy_intp K)
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
    if (shape_check(oscale, "oscale", 1, ks, "(out_channels,)") || shape_check(b, "b", 1, ks, "(out_channels,)"))
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
    PyArrayObject *x, *w, *os = NULL, *b = NULL, *res = NULL;
    int bits, relu = 0;
    double xscale;
    long long xzp, stride = 1, pad = 0;
    KW("x", "weight", "bits", "xscale", "xzero_point", "oscale", "b", "stride", "padding", "res", "relu");
    if (!parse(args, kw, "O&O&idL|O&O&LLO&p", kwlist, ARG_F32(x, 4), ARG_F32_AS(w, "weight", 4), &bits, &xscale,
                         &xzp, ARG_OPT_F32_AS(os, "oscale", 1), ARG_OPT_F32(b, 1), &stride, &pad, ARG_OPT_F32(res, 4),
                         &relu))
        return NULL;
    conv_dims d;
    if (conv_check_dims(x, PyArray_DIMS(w), "weight", stride, pad, &d) ||
        int8_check(bits, xscale, xzp, os, b, d.K) || cols_check(d.C * d.R * d.S))
        return NULL;
    npy_intp ys[4] = {d.N, d.K, d.P, d.Q};
    if (res && shape_check(res, "res", 4, ys, "(N, K, P, Q) of the output")) return NULL;
    PyArrayObject *y = new_f32(4, ys);
    if (!y) return NULL;
    int st_w, st = CSUB_OK;
    Py_BEGIN_ALLOW_THREADS
    csub_qweight qw;
    st_w = csub_qweight_init_conv(&qw, F32(w), d.K, d.C, d.R, d.S, bits);
    if (st_w == CSUB_OK) {
        st = csub_conv2d_int8_forward_res(F32(x), (float)xscale, (int32_t)xzp, &qw, OPT_F32(os), OPT_F32(b),
                                          OPT_F32(res), relu, F32(y), d.N, d.C, d.H, d.W, d.R, d.S, stride, pad);
        csub_qweight_free(&qw);
    }
    Py_END_ALLOW_THREADS
    if (int8_status(st_w, st, "conv2d_int8_forward")) { Py_DECREF(y); return NULL; }
    return (PyObject *)y;
}

/* conv2d_int8_forward's 3x3, pad 1 conv for output rows [p0, p1) of an image of `height` rows from a row
 * band x (rows [lo, lo + hb)) and its neighbours' rows up, dn (as conv3x3_forward_rows, py_conv.c) */
static PyObject *py_conv2d_int8_forward_rows(PyObject *self, PyObject *args, PyObject *kw)
{
    PyArrayObject *x, *w, *up = NULL, *dn = NULL, *os = NULL, *b = NULL, *res = NULL;
    int bits, relu = 0;
    double xscale;
    long long xzp, height, lo, p0, p1, stride = 1;
    KW("x", "weight", "bits", "xscale", "xzero_point", "height", "lo", "p0", "p1", "up", "dn", "oscale", "b",
       "stride", "res", "relu");
    if (!parse(args, kw, "O&O&idLLLLL|O&O&O&O&LO&p", kwlist, ARG_F32(x, 3), ARG_F32_AS(w, "weight", 4), &bits,
               &xscale, &xzp, &height, &lo, &p0, &p1, ARG_OPT_F32(up, 2), ARG_OPT_F32(dn, 2),
               ARG_OPT_F32_AS(os, "oscale", 1), ARG_OPT_F32(b, 1), &stride, ARG_OPT_F32(res, 3), &relu))
        return NULL;
    npy_intp C = PyArray_DIM(x, 0), W = PyArray_DIM(x, 2), K = PyArray_DIM(w, 0);
    npy_intp ws[4] = {K, C, 3, 3}, rs[2] = {C, W};
    if (shape_check(w, "weight", 4, ws, "(K, C, 3, 3), C of x") ||
        (up && shape_check(up, "up", 2, rs, "(C, W) of x")) || (dn && shape_check(dn, "dn", 2, rs, "(C, W) of x")) ||
        K < 1 || int8_check(bits, xscale, xzp, os, b, K) || cols_check(C * 9))
        return NULL;
    if (stride != 1 && stride != 2) {
        PyErr_Format(PyExc_ValueError, "stride: expected 1 or 2, got %lld", stride);
        return NULL;
    }
    csub_rows rows;
    int64_t Q;
    if (rows_band(x, up, dn, height, lo, p0, p1, stride, &rows, &Q)) return NULL;
    npy_intp ys[3] = {K, p1 - p0, Q};
    if (res && shape_check(res, "res", 3, ys, "(K, p1 - p0, Q)")) return NULL;
    PyArrayObject *y = new_f32(3, ys);
    if (!y) return NULL;
    int st_w, st = CSUB_OK;
    Py_BEGIN_ALLOW_THREADS
    csub_qweight qw;
    st_w = csub_qweight_init_conv(&qw, F32(w), K, C, 3, 3, bits);
    if (st_w == CSUB_OK) {
        st = csub_conv2d_int8_forward_rows(&rows, (float)xscale, (int32_t)xzp, &qw, OPT_F32(os), OPT_F32(b),
                                           OPT_F32(res), relu, F32(y), C, height, W, 3, 3, stride, 1, p0, p1);
        csub_qweight_free(&qw);
    }
    Py_END_ALLOW_THREADS
    if (int8_status(st_w, st, "conv2d_int8_forward_rows")) { Py_DECREF(y); return NULL; }
    return (PyObject *)y;
}

static PyObject *py_linear_int8_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyArrayObject *x, *w, *os = NULL, *b = NULL;
    int bits;
    double xscale;
    long long xzp;
    KW("x", "weight", "bits", "xscale", "xzero_point", "oscale", "b");
    if (!parse(args, kw, "O&O&idL|O&O&", kwlist, ARG_F32(x, 2), ARG_F32_AS(w, "weight", 2), &bits, &xscale,
                         &xzp, ARG_OPT_F32_AS(os, "oscale", 1), ARG_OPT_F32(b, 1)))
        return NULL;
    npy_intp N = PyArray_DIM(x, 0), IN = PyArray_DIM(x, 1), O = PyArray_DIM(w, 0);
    npy_intp ws[2] = {O, IN};
    if (shape_check(w, "weight", 2, ws, "(out_features, in_features)")) return NULL;
    if (O < 1 || IN < 1) {
        PyErr_SetString(PyExc_ValueError, "weight: expected out_features >= 1 and in_features >= 1");
        return NULL;
    }
    if (int8_check(bits, xscale, xzp, os, b, O) || cols_check(IN)) return NULL;
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

PyMethodDef csub_py_quant_methods[] = {
    M(quant_params, "quant_params(rmin, rmax, num_bits) -> (scale, zero_point), range widened to include 0"),
    M(fake_quantize, "fake_quantize(x, num_bits, rmin, rmax, out=None) -> y on the num_bits grid of [rmin, rmax]"),
    M(minmax, "minmax(x) -> (min, max) as floats; NaN if x has a NaN"),
    M(channel_scale, "channel_scale(x[N,C,...], s[C], out=None) -> y = x * s[c] per channel"),
    M(conv2d_int8_forward, "conv2d_int8_forward(x[N,C,H,W], weight[K,C,R,S], bits, xscale, xzero_point, oscale=None, "
                           "b=None, stride=1, padding=0, res=None, relu=False) -> y[N,K,P,Q], integer product of the "
                           "quantized weight and input (+ res[N,K,P,Q], then the ReLU)"),
    M(conv2d_int8_forward_rows, "conv2d_int8_forward_rows(x[C,hb,W], weight[K,C,3,3], bits, xscale, xzero_point, "
                                "height, lo, p0, p1, up=None, dn=None, oscale=None, b=None, stride=1, res=None, "
                                "relu=False) -> y[K,p1-p0,Q]: conv2d_int8_forward's (padding 1) output rows [p0, p1) "
                                "from the rows [lo, lo + hb) of an image of `height` rows and the rows above (up) and "
                                "below (dn) them"),
    M(linear_int8_forward, "linear_int8_forward(x[N,I], weight[O,I], bits, xscale, xzero_point, oscale=None, b=None) "
                           "-> y[N,O], integer product"),
    {"int8_kernel", (PyCFunction)py_int8_kernel, METH_NOARGS, "int8_kernel() -> name of the integer kernel this CPU runs"},
    {NULL, NULL, 0, NULL},
};
