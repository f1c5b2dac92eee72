/* py_fused.c - csub._core: layers fused with the activation that follows them
 * (batch norm + ReLU and group norm + ReLU in training, csrc/norm.c). */
#include "convert.h"

/* x[N,C,...], gamma/beta[C], num_groups G dividing C, eps. */
static int gn_relu_args(PyArrayObject *x, PyArrayObject *g, PyArrayObject *b, long long G, double eps,
                        npy_intp *N, npy_intp *C, npy_intp *HW)
{
    if (nc_rest(x, "x", N, C, HW)) return -1;
    npy_intp cs[1] = {*C};
    if (shape_check(g, "gamma", 1, cs, "(C,)") || shape_check(b, "beta", 1, cs, "(C,)")) return -1;
    if (G < 1 || *C % G) {
        PyErr_Format(PyExc_ValueError, "num_groups: must be >= 1 and divide the %ld channels, got %lld",
                     (long)*C, G);
        return -1;
    }
    return eps_check(eps);
}

static PyObject *py_groupnorm_relu_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyArrayObject *x, *g, *b;
    long long G;
    double eps = 1e-5;
    KW("x", "gamma", "beta", "num_groups", "eps");
    if (!parse(args, kw, "O&O&O&L|d", kwlist, ARG_F32(x, -1), ARG_F32_AS(g, "gamma", 1),
               ARG_F32_AS(b, "beta", 1), &G, &eps))
        return NULL;
    npy_intp N, C, HW;
    if (gn_relu_args(x, g, b, G, eps, &N, &C, &HW)) return NULL;
    npy_intp ss[2] = {N, G};
    PyArrayObject *y = new_f32(PyArray_NDIM(x), PyArray_DIMS(x));
    PyArrayObject *mean = new_f32(2, ss), *invstd = new_f32(2, ss);
    if (!y || !mean || !invstd) { Py_XDECREF(y); Py_XDECREF(mean); Py_XDECREF(invstd); return NULL; }
    NOGIL(csub_groupnorm_relu_forward(F32(x), F32(g), F32(b), F32(y), F32(mean), F32(invstd), N, C, HW, G,
                                      (float)eps));
    return Py_BuildValue("NNN", y, mean, invstd);
}

static PyObject *py_groupnorm_relu_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyArrayObject *x, *y, *g, *dy, *m, *is, *dg = NULL, *db = NULL, *add = NULL;
    KW("x", "y", "gamma", "dy", "mean", "invstd", "dgamma", "dbeta", "add");
    if (!parse(args, kw, "O&O&O&O&O&O&|O&O&O&", kwlist, ARG_F32(x, -1), ARG_F32(y, -1), ARG_F32_AS(g, "gamma", 1),
               ARG_F32(dy, -1), ARG_F32_AS(m, "mean", 2), ARG_F32_AS(is, "invstd", 2),
               ARG_OPT_F32_W_AS(dg, "dgamma", 1), ARG_OPT_F32_W_AS(db, "dbeta", 1), ARG_OPT_F32(add, -1)))
        return NULL;
    npy_intp N, C, HW;
    if (nc_rest(x, "x", &N, &C, &HW) || same_shape(y, "y", x, "x") || same_shape(dy, "dy", x, "x") ||
        (add && same_shape(add, "add", x, "x")))
        return NULL;
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
    int st;
    NOGIL(st = csub_groupnorm_relu_backward(F32(x), F32(y), F32(g), F32(dy), OPT_F32(add), F32(m), F32(is), F32(dx),
                                            OPT_F32(dg), OPT_F32(db), N, C, HW, G));
    return finish(st, "groupnorm_relu_backward", dx);
}

static PyObject *py_batchnorm_relu_forward(PyObject *self, PyObject *args, PyObject *kw)
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
    NOGIL(csub_batchnorm_relu_forward(F32(x), F32(g), F32(b), F32(y), F32(mean), F32(invstd), OPT_F32(rm),
                                      OPT_F32(rv), N, C, HW, (float)momentum, (float)eps, training));
    return Py_BuildValue("NNN", y, mean, invstd);
}

static PyObject *py_batchnorm_relu_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyArrayObject *x, *y, *g, *dy, *m, *is, *dg = NULL, *db = NULL, *add = NULL;
    int training = 1;
    KW("x", "y", "gamma", "dy", "mean", "invstd", "dgamma", "dbeta", "training", "add");
    if (!parse(args, kw, "O&O&O&O&O&O&|O&O&pO&", kwlist, ARG_F32(x, -1), ARG_F32(y, -1), ARG_F32_AS(g, "gamma", 1),
               ARG_F32(dy, -1), ARG_F32_AS(m, "mean", 1), ARG_F32_AS(is, "invstd", 1),
               ARG_OPT_F32_W_AS(dg, "dgamma", 1), ARG_OPT_F32_W_AS(db, "dbeta", 1), &training, ARG_OPT_F32(add, -1)))
        return NULL;
    npy_intp N, C, HW;
    if (nc_rest(x, "x", &N, &C, &HW) || same_shape(y, "y", x, "x") || same_shape(dy, "dy", x, "x") ||
        (add && same_shape(add, "add", x, "x")))
        return NULL;
    npy_intp cs[1] = {C};
    if (shape_check(g, "gamma", 1, cs, "(C,)") || shape_check(m, "mean", 1, cs, "(C,)") ||
        shape_check(is, "invstd", 1, cs, "(C,)") ||
        (dg && shape_check(dg, "dgamma", 1, cs, "(C,)")) || (db && shape_check(db, "dbeta", 1, cs, "(C,)")))
        return NULL;
    PyArrayObject *dx = new_f32(PyArray_NDIM(x), PyArray_DIMS(x));
    if (!dx) return NULL;
    NOGIL(csub_batchnorm_relu_backward(F32(x), F32(y), F32(g), F32(dy), OPT_F32(add), F32(m), F32(is), F32(dx),
                                       OPT_F32(dg), OPT_F32(db), N, C, HW, training));
    return (PyObject *)dx;
}

PyMethodDef csub_py_fused_methods[] = {
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
