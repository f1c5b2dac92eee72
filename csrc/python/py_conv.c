/* py_conv.c - csub._core: linear, conv, activations, pools, residual add, loss
 * (csrc/linear.c, conv.c, act.c, loss.c). */
#include "convert.h"
#include <string.h>

/* --------------------------------------------------------- linear, conv */

static PyObject *py_linear_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyArrayObject *x, *w, *b = NULL;
    KW("x", "w", "b");
    if (!parse(args, kw, "O&O&|O&", kwlist, ARG_F32(x, 2), ARG_F32(w, 2), ARG_OPT_F32(b, 1)))
        return NULL;
    npy_intp N = PyArray_DIM(x, 0), IN = PyArray_DIM(x, 1), O = PyArray_DIM(w, 0);
    npy_intp ws[2] = {O, IN}, bs[1] = {O};
    if (shape_check(w, "w", 2, ws, "(out_features, in_features)")) return NULL;
    if (b && shape_check(b, "b", 1, bs, "(out_features,)")) return NULL;
    npy_intp d[2] = {N, O};
    PyArrayObject *y = new_f32(2, d);
    if (!y) return NULL;
    NOGIL(csub_linear_forward(F32(x), F32(w), OPT_F32(b), F32(y), N, IN, O));
    return (PyObject *)y;
}

static PyObject *py_linear_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyArrayObject *x, *w, *dy, *dw = NULL, *db = NULL;
    int need_dx = 1;
    KW("x", "w", "dy", "dw", "db", "need_dx");
    if (!parse(args, kw, "O&O&O&|O&O&p", kwlist, ARG_F32(x, 2), ARG_F32(w, 2), ARG_F32(dy, 2),
                         ARG_OPT_F32_W(dw, 2), ARG_OPT_F32_W(db, 1), &need_dx))
        return NULL;
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
    NOGIL(csub_linear_backward(F32(x), F32(w), F32(dy), OPT_F32(dx), OPT_F32(dw), OPT_F32(db), N, IN, O));
    if (!dx) Py_RETURN_NONE;
    return (PyObject *)dx;
}

static int conv_check(PyArrayObject *x, PyArrayObject *w, long long stride, long long pad, conv_dims *d)
{
    return conv_check_dims(x, PyArray_DIMS(w), "w", stride, pad, d);
}

static PyObject *py_conv2d_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyArrayObject *x, *w, *b = NULL, *res = NULL;
    long long stride = 1, pad = 0;
    int relu = 0;
    KW("x", "w", "b", "stride", "padding", "residual", "relu");
    if (!parse(args, kw, "O&O&|O&LLO&p", kwlist, ARG_F32(x, 4), ARG_F32(w, 4), ARG_OPT_F32(b, 1), &stride, &pad,
               ARG_OPT_F32_AS(res, "residual", 4), &relu))
        return NULL;
    conv_dims d;
    if (conv_check(x, w, stride, pad, &d)) return NULL;
    npy_intp bs[1] = {d.K};
    if (b && shape_check(b, "b", 1, bs, "(out_channels,)")) return NULL;
    npy_intp ys[4] = {d.N, d.K, d.P, d.Q};
    if (shape_check(res, "residual", 4, ys, "the output's (N, out_channels, P, Q)")) return NULL;
    PyArrayObject *y = new_f32(4, ys);
    if (!y) return NULL;
    int st;
    NOGIL(st = csub_conv2d_forward_fused(F32(x), F32(w), OPT_F32(b), OPT_F32(res), relu, F32(y), d.N, d.C, d.H, d.W,
                                         d.K, d.R, d.S, stride, pad));
    return finish(st, "conv2d_forward", y);
}

static PyObject *py_conv2d_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyArrayObject *x, *w, *dy, *dw = NULL, *db = NULL;
    long long stride = 1, pad = 0;
    int need_dx = 1;
    KW("x", "w", "dy", "dw", "db", "stride", "padding", "need_dx");
    if (!parse(args, kw, "O&O&O&|O&O&LLp", kwlist, ARG_F32(x, 4), ARG_F32(w, 4), ARG_F32(dy, 4),
                         ARG_OPT_F32_W(dw, 4), ARG_OPT_F32_W(db, 1), &stride, &pad, &need_dx))
        return NULL;
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
    NOGIL(st = csub_conv2d_backward(F32(x), F32(w), F32(dy), OPT_F32(dx), OPT_F32(dw), OPT_F32(db),
                              d.N, d.C, d.H, d.W, d.K, d.R, d.S, stride, pad));
    return finish(st, "conv2d_backward", dx);
}

/* ------------------------------------------- activations, pools, residual */

static PyObject *py_relu_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyArrayObject *x;
    KW("x");
    if (!parse(args, kw, "O&", kwlist, ARG_F32(x, -1)))
        return NULL;
    PyArrayObject *y = new_f32(PyArray_NDIM(x), PyArray_DIMS(x));
    if (!y) return NULL;
    NOGIL(csub_relu_forward(F32(x), F32(y), PyArray_SIZE(x)));
    return (PyObject *)y;
}

static PyObject *py_relu_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyArrayObject *x, *dy;
    KW("x", "dy");
    if (parse_pair(args, kw, kwlist, &x, &dy)) return NULL;
    PyArrayObject *dx = new_f32(PyArray_NDIM(x), PyArray_DIMS(x));
    if (!dx) return NULL;
    NOGIL(csub_relu_backward(F32(x), F32(dy), F32(dx), PyArray_SIZE(x)));
    return (PyObject *)dx;
}

static PyObject *py_add(PyObject *self, PyObject *args, PyObject *kw)
{
    PyArrayObject *a, *b, *y = NULL;
    KW("a", "b", "out");
    if (!parse(args, kw, "O&O&|O&", kwlist, ARG_F32(a, -1), ARG_F32(b, -1), ARG_OUT(y)) ||
        same_shape(b, "b", a, "a") || out_like(&y, a, "a")) /* out may be an input: elementwise */
        return NULL;
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

/* A pool's x[N,C,H,W] (its input_shape in the backward), kernel_size, stride, and y[N,C,P,Q]'s shape. */
typedef struct { PyArrayObject *x; npy_intp xs[4], ys[4]; long long k, s; } pool_args;

/* The forward arguments (x, kernel_size, stride). */
static int pool_forward_args(PyObject *args, PyObject *kw, pool_args *p)
{
    KW("x", "kernel_size", "stride");
    if (!parse(args, kw, "O&LL", kwlist, ARG_F32(p->x, 4), &p->k, &p->s)) return -1;
    memcpy(p->xs, PyArray_DIMS(p->x), sizeof p->xs);
    memcpy(p->ys, p->xs, sizeof p->ys);
    return pool_check(p->k, p->s, p->xs[2], p->xs[3], &p->ys[2], &p->ys[3]);
}

/* After the backward's parse: y's shape from input_shape, dy checked against it. */
static int pool_backward_dims(PyArrayObject *dy, pool_args *p)
{
    memcpy(p->ys, p->xs, sizeof p->ys);
    if (pool_check(p->k, p->s, p->xs[2], p->xs[3], &p->ys[2], &p->ys[3])) return -1;
    return shape_check(dy, "dy", 4, p->ys, "(N, C, P, Q)");
}

static PyObject *py_maxpool2d_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    pool_args p;
    if (pool_forward_args(args, kw, &p)) return NULL;
    PyArrayObject *y = new_f32(4, p.ys), *am = (PyArrayObject *)PyArray_SimpleNew(4, p.ys, NPY_INT32);
    if (!y || !am) { Py_XDECREF(y); Py_XDECREF(am); return NULL; }
    NOGIL(csub_maxpool2d_forward(F32(p.x), F32(y), (int32_t *)PyArray_DATA(am), p.xs[0], p.xs[1], p.xs[2], p.xs[3],
                                 p.k, p.s));
    return Py_BuildValue("NN", y, am);
}

static PyObject *py_maxpool2d_infer(PyObject *self, PyObject *args, PyObject *kw)
{
    pool_args p;
    if (pool_forward_args(args, kw, &p)) return NULL;
    PyArrayObject *y = new_f32(4, p.ys);
    if (!y) return NULL;
    NOGIL(csub_maxpool2d_infer(F32(p.x), F32(y), p.xs[0], p.xs[1], p.xs[2], p.xs[3], p.k, p.s));
    return (PyObject *)y;
}

static PyObject *py_maxpool2d_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyArrayObject *dy, *am;
    pool_args p;
    KW("dy", "argmax", "input_shape", "kernel_size", "stride");
    if (!parse(args, kw, "O&O&O&LL", kwlist, ARG_F32(dy, 4), ARG_ARR(am, "argmax", NPY_INT32, 4, 0, 0),
               ARG_SHAPE(p.xs, "input_shape", 4), &p.k, &p.s) ||
        pool_backward_dims(dy, &p) || same_shape(am, "argmax", dy, "dy"))
        return NULL;
    /* argmax indexes the H*W plane; out-of-range values would write outside dx */
    const int32_t *ai = (const int32_t *)PyArray_DATA(am);
    for (npy_intp i = 0, n = PyArray_SIZE(am); i < n; i++)
        if (ai[i] < 0 || ai[i] >= p.xs[2] * p.xs[3]) {
            PyErr_SetString(PyExc_ValueError, "argmax: index outside the input plane");
            return NULL;
        }
    PyArrayObject *dx = new_f32(4, p.xs);
    if (!dx) return NULL;
    NOGIL(csub_maxpool2d_backward(F32(dy), ai, F32(dx), p.xs[0], p.xs[1], p.xs[2], p.xs[3], p.k, p.s));
    return (PyObject *)dx;
}

static PyObject *py_avgpool2d_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    pool_args p;
    if (pool_forward_args(args, kw, &p)) return NULL;
    PyArrayObject *y = new_f32(4, p.ys);
    if (!y) return NULL;
    NOGIL(csub_avgpool2d_forward(F32(p.x), F32(y), p.xs[0], p.xs[1], p.xs[2], p.xs[3], p.k, p.s));
    return (PyObject *)y;
}

static PyObject *py_avgpool2d_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyArrayObject *dy;
    pool_args p;
    KW("dy", "input_shape", "kernel_size", "stride");
    if (!parse(args, kw, "O&O&LL", kwlist, ARG_F32(dy, 4), ARG_SHAPE(p.xs, "input_shape", 4), &p.k, &p.s) ||
        pool_backward_dims(dy, &p))
        return NULL;
    PyArrayObject *dx = new_f32(4, p.xs);
    if (!dx) return NULL;
    NOGIL(csub_avgpool2d_backward(F32(dy), F32(dx), p.xs[0], p.xs[1], p.xs[2], p.xs[3], p.k, p.s));
    return (PyObject *)dx;
}

static PyObject *py_gap_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyArrayObject *x;
    KW("x");
    if (!parse(args, kw, "O&", kwlist, ARG_F32(x, 4)))
        return NULL;
    npy_intp N, C, HW;
    if (nc_rest(x, "x", &N, &C, &HW)) return NULL;
    npy_intp ys[2] = {N, C};
    PyArrayObject *y = new_f32(2, ys);
    if (!y) return NULL;
    NOGIL(csub_gap_forward(F32(x), F32(y), N * C, HW));
    return (PyObject *)y;
}

static PyObject *py_gap_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyArrayObject *dy;
    npy_intp xs[4];
    KW("dy", "input_shape");
    if (!parse(args, kw, "O&O&", kwlist, ARG_F32(dy, 2), ARG_SHAPE(xs, "input_shape", 4))) return NULL;
    npy_intp ys[2] = {xs[0], xs[1]};
    if (shape_check(dy, "dy", 2, ys, "(N, C)")) return NULL;
    PyArrayObject *dx = new_f32(4, xs);
    if (!dx) return NULL;
    NOGIL(csub_gap_backward(F32(dy), F32(dx), xs[0] * xs[1], xs[2] * xs[3]));
    return (PyObject *)dx;
}

/* -------------------------------------------------------------- loss */

/* The labels int64[N] of N rows of K classes, each in [0, K). */
#define ARG_LABELS(y) ARG_ARR(y, "labels", NPY_INT64, 1, 0, 0)

static int labels_check(PyArrayObject *y, npy_intp N, npy_intp K)
{
    if (PyArray_DIM(y, 0) != N) {
        PyErr_Format(PyExc_ValueError, "labels: expected shape (%ld,) to match logits, got (%ld,)",
                     (long)N, (long)PyArray_DIM(y, 0));
        return -1;
    }
    const int64_t *l = (const int64_t *)PyArray_DATA(y);
    for (npy_intp i = 0; i < N; i++)
        if (l[i] < 0 || l[i] >= K) {
            PyErr_Format(PyExc_ValueError, "labels: value %lld at index %ld is outside [0, %ld)",
                         (long long)l[i], (long)i, (long)K);
            return -1;
        }
    return 0;
}

static PyObject *py_cross_entropy_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyArrayObject *lg, *y;
    KW("logits", "labels");
    if (!parse(args, kw, "O&O&", kwlist, ARG_F32_AS(lg, "logits", 2), ARG_LABELS(y)))
        return NULL;
    npy_intp N = PyArray_DIM(lg, 0), K = PyArray_DIM(lg, 1);
    if (N < 1 || K < 1) {
        PyErr_SetString(PyExc_ValueError, "logits: expected shape (N, K) with N, K >= 1");
        return NULL;
    }
    if (labels_check(y, N, K)) return NULL;
    PyArrayObject *prob = new_f32(2, PyArray_DIMS(lg));
    if (!prob) return NULL;
    double loss;
    NOGIL(loss = csub_cross_entropy_forward(F32(lg), (const int64_t *)PyArray_DATA(y), F32(prob), N, K));
    return Py_BuildValue("dN", loss, prob);
}

static PyObject *py_cross_entropy_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyArrayObject *p, *y;
    double scale = 1.0;
    KW("prob", "labels", "scale");
    if (!parse(args, kw, "O&O&|d", kwlist, ARG_F32_AS(p, "prob", 2), ARG_LABELS(y), &scale))
        return NULL;
    npy_intp N = PyArray_DIM(p, 0), K = PyArray_DIM(p, 1);
    if (labels_check(y, N, K)) return NULL;
    if (!isfinite(scale)) {
        PyErr_SetString(PyExc_ValueError, "scale: expected a finite number");
        return NULL;
    }
    PyArrayObject *d = new_f32(2, PyArray_DIMS(p));
    if (!d) return NULL;
    NOGIL(csub_cross_entropy_backward(F32(p), (const int64_t *)PyArray_DATA(y), F32(d), N, K, (float)scale));
    return (PyObject *)d;
}


/* ------------------------------------- 3x3 kernels with a packed weight (direct, Winograd) */

/* The weight w[K,C,3,3] (named "w") of a 3x3 kernel on x[N,C,H,W] (stride, pad 1) */
static int conv3x3_check(PyArrayObject *x, PyArrayObject *w, long long stride, conv_dims *d)
{
    if (conv_check(x, w, stride, 1, d)) return -1;
    if (d->R != 3 || d->S != 3) {
        PyErr_Format(PyExc_ValueError, "w: expected a 3x3 kernel (K, C, 3, 3), got %lldx%lld",
                     (long long)d->R, (long long)d->S);
        return -1;
    }
    return 0;
}

/* b[K], res[N,K,P,Q] and a packed weight of `len` floats, each when given */
static int epilogue_check(PyArrayObject *b, PyArrayObject *res, PyArrayObject *packed, const conv_dims *d, int64_t len)
{
    npy_intp bs[1] = {d->K}, rs[4] = {d->N, d->K, d->P, d->Q};
    if (shape_check(b, "b", 1, bs, "(out_channels,)") || shape_check(res, "res", 4, rs, "(N, K, P, Q)")) return -1;
    if (packed && PyArray_SIZE(packed) != len) {
        PyErr_Format(PyExc_ValueError, "packed: expected %lld floats for this weight, got %lld", (long long)len,
                     (long long)PyArray_SIZE(packed));
        return -1;
    }
    return 0;
}

static int winograd_m(int m)
{
    if (m == 2 || m == 4) return 0;
    PyErr_Format(PyExc_ValueError, "m: expected 2 or 4 (the output tile F(m x m, 3x3)), got %d", m);
    return -1;
}

static PyObject *py_conv3x3_pack(PyObject *self, PyObject *args, PyObject *kw)
{
    PyArrayObject *w;
    int m = 0;
    KW("w", "winograd");
    if (!parse(args, kw, "O&|i", kwlist, ARG_F32(w, 4), &m)) return NULL;
    npy_intp K = PyArray_DIM(w, 0), C = PyArray_DIM(w, 1);
    if (PyArray_DIM(w, 2) != 3 || PyArray_DIM(w, 3) != 3) {
        PyErr_SetString(PyExc_ValueError, "w: expected a 3x3 kernel (K, C, 3, 3)");
        return NULL;
    }
    if (m && winograd_m(m)) return NULL;
    npy_intp d[1] = {m ? csub_winograd_packed_len(K, C, m) : csub_conv3x3_packed_len(K, C)};
    PyArrayObject *u = new_f32(1, d);
    if (!u) return NULL;
    if (m) NOGIL(csub_winograd_pack(F32(w), F32(u), K, C, m));
    else NOGIL(csub_conv3x3_pack(F32(w), F32(u), K, C));
    return (PyObject *)u;
}

/* The direct (winograd=0) or Winograd (winograd=m) 3x3 forward with the runtime's fused epilogue */
static PyObject *py_conv3x3_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyArrayObject *x, *w, *b = NULL, *res = NULL, *packed = NULL;
    long long stride = 1, tb = 0;
    int relu = 0, m = 0;
    KW("x", "w", "b", "res", "relu", "stride", "winograd", "packed", "tiles_per_block");
    if (!parse(args, kw, "O&O&|O&O&pLiO&L", kwlist, ARG_F32(x, 4), ARG_F32(w, 4), ARG_OPT_F32(b, 1),
               ARG_OPT_F32(res, 4), &relu, &stride, &m, ARG_OPT_F32(packed, 1), &tb))
        return NULL;
    conv_dims d;
    if (conv3x3_check(x, w, stride, &d)) return NULL;
    if (m && (winograd_m(m) || (stride != 1 && (PyErr_SetString(PyExc_ValueError,
                                                                "stride: Winograd takes stride 1 only"), 1))))
        return NULL;
    if (!m && stride != 1 && stride != 2) {
        PyErr_SetString(PyExc_ValueError, "stride: the direct kernel takes 1 or 2");
        return NULL;
    }
    if (tb < 0 || tb > 4096) {
        PyErr_SetString(PyExc_ValueError, "tiles_per_block: expected 0 (automatic) to 4096");
        return NULL;
    }
    int64_t len = m ? csub_winograd_packed_len(d.K, d.C, m) : csub_conv3x3_packed_len(d.K, d.C);
    if (epilogue_check(b, res, packed, &d, len)) return NULL;
    npy_intp ys[4] = {d.N, d.K, d.P, d.Q};
    PyArrayObject *y = new_f32(4, ys);
    if (!y) return NULL;
    float *u = packed ? F32(packed) : malloc(sizeof(float) * (size_t)(len > 0 ? len : 1));
    if (!u) {
        Py_DECREF(y);
        return PyErr_NoMemory();
    }
    int st;
    NOGIL(if (!packed) { if (m) csub_winograd_pack(F32(w), u, d.K, d.C, m); else csub_conv3x3_pack(F32(w), u, d.K, d.C); }
          st = m ? csub_winograd_forward(F32(x), u, OPT_F32(b), OPT_F32(res), relu, F32(y), d.N, d.C, d.H, d.W, d.K, m, tb)
                 : csub_conv3x3_forward(F32(x), u, OPT_F32(b), OPT_F32(res), relu, F32(y), d.N, d.C, d.H, d.W, d.K,
                                        stride));
    if (!packed) free(u);
    return finish(st, "conv3x3_forward", y);
}

/* Output rows [p0, p1) of the direct or Winograd 3x3 kernel from a band of an image's rows (the
 * runtime's row bands): x[C, hb, W] holds rows [lo, lo + hb) of an image of `height` rows, up[C, W]
 * and dn[C, W] the rows just above and below when given */
static PyObject *py_conv3x3_forward_rows(PyObject *self, PyObject *args, PyObject *kw)
{
    PyArrayObject *x, *w, *up = NULL, *dn = NULL, *b = NULL, *res = NULL;
    long long height, lo, p0, p1, stride = 1;
    int relu = 0, m = 0;
    KW("x", "w", "height", "lo", "p0", "p1", "up", "dn", "b", "res", "relu", "stride", "winograd");
    if (!parse(args, kw, "O&O&LLLL|O&O&O&O&pLi", kwlist, ARG_F32(x, 3), ARG_F32(w, 4), &height, &lo, &p0, &p1,
               ARG_OPT_F32(up, 2), ARG_OPT_F32(dn, 2), ARG_OPT_F32(b, 1), ARG_OPT_F32(res, 3), &relu, &stride, &m))
        return NULL;
    npy_intp C = PyArray_DIM(x, 0), W = PyArray_DIM(x, 2), K = PyArray_DIM(w, 0);
    npy_intp ws[4] = {K, C, 3, 3}, rs[2] = {C, W};
    if (shape_check(w, "w", 4, ws, "(K, C, 3, 3), C of x") || (up && shape_check(up, "up", 2, rs, "(C, W) of x")) ||
        (dn && shape_check(dn, "dn", 2, rs, "(C, W) of x")))
        return NULL;
    if (m && (winograd_m(m) || (stride != 1 && (PyErr_SetString(PyExc_ValueError,
                                                                "stride: Winograd takes stride 1 only"), 1))))
        return NULL;
    if (stride != 1 && stride != 2) {
        PyErr_SetString(PyExc_ValueError, "stride: the direct kernel takes 1 or 2");
        return NULL;
    }
    csub_rows rows;
    int64_t Q;
    if (rows_band(x, up, dn, height, lo, p0, p1, stride, &rows, &Q)) return NULL;
    npy_intp bs[1] = {K}, ys[3] = {K, p1 - p0, Q};
    if ((b && shape_check(b, "b", 1, bs, "(K,)")) || (res && shape_check(res, "res", 3, ys, "(K, p1 - p0, Q)")))
        return NULL;
    PyArrayObject *y = new_f32(3, ys);
    if (!y) return NULL;
    int64_t len = m ? csub_winograd_packed_len(K, C, m) : csub_conv3x3_packed_len(K, C);
    float *u = malloc(sizeof(float) * (size_t)(len > 0 ? len : 1));
    if (!u) {
        Py_DECREF(y);
        return PyErr_NoMemory();
    }
    int st;
    NOGIL(if (m) csub_winograd_pack(F32(w), u, K, C, m); else csub_conv3x3_pack(F32(w), u, K, C);
          st = m ? csub_winograd_forward_rows(&rows, u, OPT_F32(b), OPT_F32(res), relu, F32(y), C, height, W, K, m, p0, p1)
                 : csub_conv3x3_forward_rows(&rows, u, OPT_F32(b), OPT_F32(res), relu, F32(y), C, height, W, K, stride,
                                             p0, p1));
    free(u);
    return finish(st, "conv3x3_forward_rows", y);
}

PyMethodDef csub_py_conv_methods[] = {
    M(linear_forward, "linear_forward(x[N,I], w[O,I], b[O]=None) -> y[N,O]"),
    M(linear_backward, "linear_backward(x, w, dy[N,O], dw=None, db=None, need_dx=True) -> dx; dw, db +="),
    M(conv2d_forward, "conv2d_forward(x[N,C,H,W], w[K,C,R,S], b=None, stride=1, padding=0, residual=None, relu=False) "
                      "-> y[N,K,P,Q] (+ residual[N,K,P,Q], then the ReLU when relu: the runtime's fused epilogue)"),
    M(conv2d_backward, "conv2d_backward(x, w, dy, dw=None, db=None, stride=1, padding=0, need_dx=True) -> dx; dw, db +="),
    M(conv3x3_pack, "conv3x3_pack(w[K,C,3,3], winograd=0) -> the weight packed for conv3x3_forward (winograd=m: "
                    "transformed for F(m x m, 3x3), m = 2 or 4)"),
    M(conv3x3_forward, "conv3x3_forward(x[N,C,H,W], w[K,C,3,3], b=None, res=None, relu=False, stride=1, winograd=0, "
                       "packed=None, tiles_per_block=0) -> y = relu?(conv(x, w, pad 1) + b + res): the runtime's direct "
                       "3x3 kernel, or Winograd F(m x m, 3x3) for winograd=m (stride 1); packed: conv3x3_pack(w, winograd)"),
    M(conv3x3_forward_rows, "conv3x3_forward_rows(x[C,hb,W], w[K,C,3,3], height, lo, p0, p1, up=None, dn=None, "
                            "b=None, res=None, relu=False, stride=1, winograd=0) -> y[K,p1-p0,Q]: conv3x3_forward's "
                            "output rows [p0, p1) from rows [lo, lo + hb) of an image of `height` rows, up[C,W] and "
                            "dn[C,W] the rows above and below them (the runtime's row bands)"),
    M(relu_forward, "relu_forward(x) -> y"),
    M(relu_backward, "relu_backward(x, dy) -> dx"),
    M(add, "add(a, b, out=None) -> a + b (out may be a or b)"),
    M(maxpool2d_forward, "maxpool2d_forward(x, kernel_size, stride) -> (y, argmax int32)"),
    M(maxpool2d_infer, "maxpool2d_infer(x, kernel_size, stride) -> y (maxpool2d_forward's y, no argmax)"),
    M(maxpool2d_backward, "maxpool2d_backward(dy, argmax, input_shape, kernel_size, stride) -> dx"),
    M(avgpool2d_forward, "avgpool2d_forward(x, kernel_size, stride) -> y"),
    M(avgpool2d_backward, "avgpool2d_backward(dy, input_shape, kernel_size, stride) -> dx"),
    M(gap_forward, "gap_forward(x[N,C,H,W]) -> y[N,C]"),
    M(gap_backward, "gap_backward(dy[N,C], input_shape) -> dx"),
    M(cross_entropy_forward, "cross_entropy_forward(logits[N,K], labels int64[N]) -> (loss, prob)"),
    M(cross_entropy_backward, "cross_entropy_backward(prob, labels, scale=1.0) -> dlogits"),
    {NULL, NULL, 0, NULL},
};
