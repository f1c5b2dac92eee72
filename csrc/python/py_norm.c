/* py_norm.c - csub._core: batch and group norm, alone and fused with the ReLU after them (csrc/norm.c). */
#include "convert.h"

/* ---------------------------------------------------------------- norms */

/* The arguments of a norm's backward: x[N,C,...], gamma[C], dy like x, the
 * saved mean and invstd ((C,) for batch norm, (N, G) for group norm), the
 * optional dgamma, dbeta (C,), and the new dx; for the norm + ReLU forms also
 * y (the fused forward's output) and the optional add, both like x. */
typedef struct { PyArrayObject *x, *y, *g, *dy, *m, *is, *dg, *db, *add, *dx; npy_intp N, C, HW, G; } norm_grad;

#define NG_X ARG_F32_AS(a->x, "x", -1)
#define NG_Y ARG_F32_AS(a->y, "y", -1)
#define NG_STATS ARG_F32_AS(a->g, "gamma", 1), ARG_F32_AS(a->dy, "dy", -1), \
    ARG_F32_AS(a->m, "mean", groups ? 2 : 1), ARG_F32_AS(a->is, "invstd", groups ? 2 : 1), \
    ARG_OPT_F32_W_AS(a->dg, "dgamma", 1), ARG_OPT_F32_W_AS(a->db, "dbeta", 1)
#define NG_ADD ARG_OPT_F32_AS(a->add, "add", -1)

/* Parse (x[, y], gamma, dy, mean, invstd, dgamma=None, dbeta=None[, training][, add]),
 * check the shapes and allocate dx; y and add with fused, `training` where fmt has p. */
static int norm_backward_args(PyObject *args, PyObject *kw, char **kwlist, const char *fmt, int groups, int fused,
                              norm_grad *a, int *training)
{
    a->y = a->dg = a->db = a->add = NULL;
    int ok = !fused     ? parse(args, kw, fmt, kwlist, NG_X, NG_STATS, training)
             : training ? parse(args, kw, fmt, kwlist, NG_X, NG_Y, NG_STATS, training, NG_ADD)
                        : parse(args, kw, fmt, kwlist, NG_X, NG_Y, NG_STATS, NG_ADD);
    if (!ok || nc_rest(a->x, "x", &a->N, &a->C, &a->HW) || same_shape(a->dy, "dy", a->x, "x") ||
        (a->y && same_shape(a->y, "y", a->x, "x")) || (a->add && same_shape(a->add, "add", a->x, "x")))
        return -1;
    a->G = groups ? PyArray_DIM(a->m, 1) : 1;
    if (a->G < 1 || a->C % a->G) {
        PyErr_Format(PyExc_ValueError, "mean: its %ld groups do not divide the %ld channels", (long)a->G, (long)a->C);
        return -1;
    }
    npy_intp ss[2] = {a->N, a->G}, *stat = groups ? ss : &a->C;
    const char *what = groups ? "(N, num_groups)" : "(C,)";
    if (PER_CHANNEL(a->C, {a->g, "gamma"}) || shape_check(a->m, "mean", groups ? 2 : 1, stat, what) ||
        shape_check(a->is, "invstd", groups ? 2 : 1, stat, what) ||
        PER_CHANNEL(a->C, {a->dg, "dgamma"}, {a->db, "dbeta"}))
        return -1;
    return (a->dx = new_f32(PyArray_NDIM(a->x), PyArray_DIMS(a->x))) ? 0 : -1;
}

/* batch norm's training forward, followed by a ReLU in the same pass with relu */
static PyObject *bn_forward(PyObject *args, PyObject *kw, int relu)
{
    PyArrayObject *x, *g, *b, *rm = NULL, *rv = NULL;
    double momentum = 0.1, eps = 1e-5;
    int training = 1;
    KW("x", "gamma", "beta", "running_mean", "running_var", "momentum", "eps", "training");
    if (!parse(args, kw, "O&O&O&|O&O&ddp", kwlist, ARG_F32(x, -1), ARG_F32_AS(g, "gamma", 1),
                         ARG_F32_AS(b, "beta", 1), ARG_OPT_F32_W_AS(rm, "running_mean", 1),
                         ARG_OPT_F32_W_AS(rv, "running_var", 1), &momentum, &eps, &training))
        return NULL;
    npy_intp N, C, HW;
    if (nc_rest(x, "x", &N, &C, &HW)) return NULL;
    if (PER_CHANNEL(C, {g, "gamma"}, {b, "beta"}, {rm, "running_mean"}, {rv, "running_var"})) return NULL;
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
    npy_intp cs[1] = {C};
    PyArrayObject *mean = new_f32(1, cs), *invstd = new_f32(1, cs);
    if (!y || !mean || !invstd) { Py_XDECREF(y); Py_XDECREF(mean); Py_XDECREF(invstd); return NULL; }
    if (relu)
        NOGIL(csub_batchnorm_relu_forward(F32(x), F32(g), F32(b), F32(y), F32(mean), F32(invstd), OPT_F32(rm),
                                          OPT_F32(rv), N, C, HW, (float)momentum, (float)eps, training));
    else
        NOGIL(csub_batchnorm_forward(F32(x), F32(g), F32(b), F32(y), F32(mean), F32(invstd), OPT_F32(rm),
                                     OPT_F32(rv), N, C, HW, (float)momentum, (float)eps, training));
    return Py_BuildValue("NNN", y, mean, invstd);
}

static PyObject *py_batchnorm_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    return bn_forward(args, kw, 0);
}

static PyObject *py_batchnorm_relu_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    return bn_forward(args, kw, 1);
}

static PyObject *py_batchnorm_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    norm_grad a;
    int training = 1;
    KW("x", "gamma", "dy", "mean", "invstd", "dgamma", "dbeta", "training");
    if (norm_backward_args(args, kw, kwlist, "O&O&O&O&O&|O&O&p", 0, 0, &a, &training)) return NULL;
    NOGIL(csub_batchnorm_backward(F32(a.x), F32(a.g), F32(a.dy), F32(a.m), F32(a.is), F32(a.dx), OPT_F32(a.dg),
                                  OPT_F32(a.db), a.N, a.C, a.HW, training));
    return (PyObject *)a.dx;
}

static PyObject *py_batchnorm_relu_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    norm_grad a;
    int training = 1;
    KW("x", "y", "gamma", "dy", "mean", "invstd", "dgamma", "dbeta", "training", "add");
    if (norm_backward_args(args, kw, kwlist, "O&O&O&O&O&O&|O&O&pO&", 0, 1, &a, &training)) return NULL;
    NOGIL(csub_batchnorm_relu_backward(F32(a.x), F32(a.y), F32(a.g), F32(a.dy), OPT_F32(a.add), F32(a.m), F32(a.is),
                                       F32(a.dx), OPT_F32(a.dg), OPT_F32(a.db), a.N, a.C, a.HW, training));
    return (PyObject *)a.dx;
}

/* The checks of a group norm forward after its parse: x[N,C,...], gamma/beta[C], G dividing C, eps. */
static int gn_check(PyArrayObject *x, PyArrayObject *g, PyArrayObject *b, long long G, double eps,
                    npy_intp *N, npy_intp *C, npy_intp *HW)
{
    if (nc_rest(x, "x", N, C, HW) || PER_CHANNEL(*C, {g, "gamma"}, {b, "beta"})) return -1;
    if (G < 1 || *C % G) {
        PyErr_Format(PyExc_ValueError, "num_groups: must be >= 1 and divide the %ld channels, got %lld",
                     (long)*C, G);
        return -1;
    }
    return eps_check(eps);
}

/* group norm's training forward, followed by a ReLU in the same pass with relu */
static PyObject *gn_forward(PyObject *args, PyObject *kw, int relu)
{
    PyArrayObject *x, *g, *b;
    long long G;
    double eps = 1e-5;
    npy_intp N, C, HW;
    KW("x", "gamma", "beta", "num_groups", "eps");
    if (!parse(args, kw, "O&O&O&L|d", kwlist, ARG_F32(x, -1), ARG_F32_AS(g, "gamma", 1), ARG_F32_AS(b, "beta", 1),
               &G, &eps) ||
        gn_check(x, g, b, G, eps, &N, &C, &HW))
        return NULL;
    npy_intp ss[2] = {N, G};
    PyArrayObject *y = new_f32(PyArray_NDIM(x), PyArray_DIMS(x));
    PyArrayObject *mean = new_f32(2, ss), *invstd = new_f32(2, ss);
    if (!y || !mean || !invstd) { Py_XDECREF(y); Py_XDECREF(mean); Py_XDECREF(invstd); return NULL; }
    if (relu)
        NOGIL(csub_groupnorm_relu_forward(F32(x), F32(g), F32(b), F32(y), F32(mean), F32(invstd), N, C, HW, G,
                                          (float)eps));
    else
        NOGIL(csub_groupnorm_forward(F32(x), F32(g), F32(b), F32(y), F32(mean), F32(invstd), N, C, HW, G, (float)eps));
    return Py_BuildValue("NNN", y, mean, invstd);
}

static PyObject *py_groupnorm_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    return gn_forward(args, kw, 0);
}

static PyObject *py_groupnorm_relu_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    return gn_forward(args, kw, 1);
}

/* The planes of x[N, C, ...] as H rows of W: an [N, C, H, W] array's own, else one row of hw. */
static void plane_rows(PyArrayObject *x, npy_intp hw, int64_t *H, int64_t *W)
{
    *H = PyArray_NDIM(x) == 4 && PyArray_DIM(x, 2) > 0 ? PyArray_DIM(x, 2) : 1;
    *W = hw / *H;
}

static PyObject *py_groupnorm_infer(PyObject *self, PyObject *args, PyObject *kw)
{
    PyArrayObject *x, *g, *b;
    long long G;
    double eps = 1e-5;
    int relu = 0;
    npy_intp N, C, HW;
    KW("x", "gamma", "beta", "num_groups", "eps", "relu");
    if (!parse(args, kw, "O&O&O&L|dp", kwlist, ARG_F32(x, -1), ARG_F32_AS(g, "gamma", 1), ARG_F32_AS(b, "beta", 1),
               &G, &eps, &relu) ||
        gn_check(x, g, b, G, eps, &N, &C, &HW))
        return NULL;
    PyArrayObject *y = new_f32(PyArray_NDIM(x), PyArray_DIMS(x));
    if (!y) return NULL;
    int64_t H, W;
    plane_rows(x, HW, &H, &W);
    NOGIL(csub_groupnorm_infer(F32(x), F32(g), F32(b), F32(y), N, C, H, W, G, (float)eps, relu));
    return (PyObject *)y;
}

static PyObject *py_batchnorm_infer(PyObject *self, PyObject *args, PyObject *kw)
{
    PyArrayObject *x, *g, *b, *rm, *rv;
    double eps = 1e-5;
    int relu = 0;
    KW("x", "gamma", "beta", "running_mean", "running_var", "eps", "relu");
    if (!parse(args, kw, "O&O&O&O&O&|dp", kwlist, ARG_F32(x, -1), ARG_F32_AS(g, "gamma", 1),
                         ARG_F32_AS(b, "beta", 1), ARG_F32_AS(rm, "running_mean", 1),
                         ARG_F32_AS(rv, "running_var", 1), &eps, &relu))
        return NULL;
    npy_intp N, C, HW;
    if (nc_rest(x, "x", &N, &C, &HW)) return NULL;
    if (PER_CHANNEL(C, {g, "gamma"}, {b, "beta"}, {rm, "running_mean"}, {rv, "running_var"}) || eps_check(eps))
        return NULL;
    PyArrayObject *y = new_f32(PyArray_NDIM(x), PyArray_DIMS(x));
    if (!y) return NULL;
    int64_t H, W;
    plane_rows(x, HW, &H, &W);
    NOGIL(csub_batchnorm_infer(F32(x), F32(g), F32(b), F32(rm), F32(rv), F32(y), N, C, H, W, (float)eps, relu));
    return (PyObject *)y;
}

static PyObject *py_groupnorm_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    norm_grad a;
    KW("x", "gamma", "dy", "mean", "invstd", "dgamma", "dbeta");
    if (norm_backward_args(args, kw, kwlist, "O&O&O&O&O&|O&O&", 1, 0, &a, NULL)) return NULL;
    NOGIL(csub_groupnorm_backward(F32(a.x), F32(a.g), F32(a.dy), F32(a.m), F32(a.is), F32(a.dx), OPT_F32(a.dg),
                                  OPT_F32(a.db), a.N, a.C, a.HW, a.G));
    return (PyObject *)a.dx;
}

static PyObject *py_groupnorm_relu_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    norm_grad a;
    KW("x", "y", "gamma", "dy", "mean", "invstd", "dgamma", "dbeta", "add");
    if (norm_backward_args(args, kw, kwlist, "O&O&O&O&O&O&|O&O&O&", 1, 1, &a, NULL)) return NULL;
    int st;
    NOGIL(st = csub_groupnorm_relu_backward(F32(a.x), F32(a.y), F32(a.g), F32(a.dy), OPT_F32(a.add), F32(a.m),
                                            F32(a.is), F32(a.dx), OPT_F32(a.dg), OPT_F32(a.db), a.N, a.C, a.HW, a.G));
    return finish(st, "groupnorm_relu_backward", a.dx);
}

PyMethodDef csub_py_norm_methods[] = {
    M(batchnorm_forward, "batchnorm_forward(x[N,C,...], gamma, beta, running_mean=None, running_var=None, "
                         "momentum=0.1, eps=1e-5, training=True) -> (y, mean[C], invstd[C])"),
    M(batchnorm_backward, "batchnorm_backward(x, gamma, dy, mean, invstd, dgamma=None, dbeta=None, training=True) -> dx"),
    M(groupnorm_forward, "groupnorm_forward(x[N,C,...], gamma, beta, num_groups, eps=1e-5) -> (y, mean[N,G], invstd[N,G])"),
    M(groupnorm_infer, "groupnorm_infer(x, gamma, beta, num_groups, eps=1e-5, relu=False) -> y (inference, ReLU fused)"),
    M(batchnorm_infer, "batchnorm_infer(x, gamma, beta, running_mean, running_var, eps=1e-5, relu=False) -> y"),
    M(groupnorm_backward, "groupnorm_backward(x, gamma, dy, mean, invstd, dgamma=None, dbeta=None) -> dx"),
    M(groupnorm_relu_forward, "groupnorm_relu_forward(x[N,C,...], gamma, beta, num_groups, eps=1e-5) -> "
                              "(y = max(groupnorm(x), 0), mean[N,G], invstd[N,G])"),
    M(groupnorm_relu_backward, "groupnorm_relu_backward(x, y, gamma, dy, mean, invstd, dgamma=None, dbeta=None, add=None) "
                               "-> dx (dy: the gradient of y = max(groupnorm(x), 0); plus add when given)"),
    M(batchnorm_relu_forward, "batchnorm_relu_forward(x[N,C,...], gamma, beta, running_mean=None, running_var=None, "
                              "momentum=0.1, eps=1e-5, training=True) -> (y = max(batchnorm(x), 0), mean[C], invstd[C])"),
    M(batchnorm_relu_backward, "batchnorm_relu_backward(x, y, gamma, dy, mean, invstd, dgamma=None, dbeta=None, "
                               "training=True, add=None) -> dx (dy: the gradient of y = max(batchnorm(x), 0))"),
    {NULL, NULL, 0, NULL},
};
