/* py_norm.c - csub._core: batch and group norm (csrc/norm.c). */
#include "convert.h"

/* ---------------------------------------------------------------- norms */


static PyObject *py_batchnorm_forward(PyObject *self, PyObject *args, PyObject *kw)
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
    NOGIL(csub_batchnorm_forward(F32(x), F32(g), F32(b), F32(y), F32(mean), F32(invstd),
                           OPT_F32(rm), OPT_F32(rv), N, C, HW, (float)momentum, (float)eps, training));
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
    NOGIL(csub_batchnorm_backward(F32(x), F32(g), F32(dy), F32(m), F32(is), F32(dx), OPT_F32(dg), OPT_F32(db),
                            N, C, HW, training));
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
    NOGIL(csub_groupnorm_forward(F32(x), F32(g), F32(b), F32(y), F32(mean), F32(invstd), N, C, HW, G, (float)eps));
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
    npy_intp cs[1] = {C};
    if (shape_check(g, "gamma", 1, cs, "(C,)") || shape_check(b, "beta", 1, cs, "(C,)") ||
        shape_check(rm, "running_mean", 1, cs, "(C,)") || shape_check(rv, "running_var", 1, cs, "(C,)"))
        return NULL;
    if (eps_check(eps)) return NULL;
    PyArrayObject *y = new_f32(PyArray_NDIM(x), PyArray_DIMS(x));
    if (!y) return NULL;
    int64_t H, W;
    plane_rows(x, HW, &H, &W);
    NOGIL(csub_batchnorm_infer(F32(x), F32(g), F32(b), F32(rm), F32(rv), F32(y), N, C, H, W, (float)eps, relu));
    return (PyObject *)y;
}

static PyObject *py_groupnorm_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyArrayObject *x, *g, *dy, *m, *is, *dg = NULL, *db = NULL;
    KW("x", "gamma", "dy", "mean", "invstd", "dgamma", "dbeta");
    if (!parse(args, kw, "O&O&O&O&O&|O&O&", kwlist, ARG_F32(x, -1), ARG_F32_AS(g, "gamma", 1),
                         ARG_F32(dy, -1), ARG_F32_AS(m, "mean", 2), ARG_F32_AS(is, "invstd", 2),
                         ARG_OPT_F32_W_AS(dg, "dgamma", 1), ARG_OPT_F32_W_AS(db, "dbeta", 1)))
        return NULL;
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
    NOGIL(csub_groupnorm_backward(F32(x), F32(g), F32(dy), F32(m), F32(is), F32(dx), OPT_F32(dg), OPT_F32(db),
                            N, C, HW, G));
    return (PyObject *)dx;
}

PyMethodDef csub_py_norm_methods[] = {
    M(batchnorm_forward, "batchnorm_forward(x[N,C,...], gamma, beta, running_mean=None, running_var=None, "
                         "momentum=0.1, eps=1e-5, training=True) -> (y, mean[C], invstd[C])"),
    M(batchnorm_backward, "batchnorm_backward(x, gamma, dy, mean, invstd, dgamma=None, dbeta=None, training=True) -> dx"),
    M(groupnorm_forward, "groupnorm_forward(x[N,C,...], gamma, beta, num_groups, eps=1e-5) -> (y, mean[N,G], invstd[N,G])"),
    M(groupnorm_infer, "groupnorm_infer(x, gamma, beta, num_groups, eps=1e-5, relu=False) -> y (inference, ReLU fused)"),
    M(batchnorm_infer, "batchnorm_infer(x, gamma, beta, running_mean, running_var, eps=1e-5, relu=False) -> y"),
    M(groupnorm_backward, "groupnorm_backward(x, gamma, dy, mean, invstd, dgamma=None, dbeta=None) -> dx"),
    {NULL, NULL, 0, NULL},
};
