/* py_train.c - csub._core: optimizer, subspace line, random numbers (csrc/optim.c, subspace.c, rng.c). */
#include "convert.h"

/* ----------------------------------------------------------- optimizer */

static PyObject *py_sgd_step(PyObject *self, PyObject *args, PyObject *kw)
{
    PyArrayObject *w, *g, *v = NULL;
    double lr, momentum = 0.0, wd = 0.0;
    int nesterov = 0, first = 0;
    KW("w", "grad", "velocity", "lr", "momentum", "weight_decay", "nesterov", "first_step");
    if (!parse(args, kw, "O&O&O&d|ddpp", kwlist, ARG_F32_W(w, -1), ARG_F32_AS(g, "grad", -1),
                         ARG_OPT_F32_W_AS(v, "velocity", -1), &lr, &momentum, &wd, &nesterov, &first))
        return NULL;
    if (same_shape(g, "grad", w, "w") || same_shape(v, "velocity", w, "w")) return NULL;
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
    NOGIL(csub_sgd_step(F32(w), F32(g), OPT_F32(v), PyArray_SIZE(w), (float)lr, (float)momentum, (float)wd,
                  nesterov, first));
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------ subspace */

static PyObject *py_line_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyArrayObject *w0, *w1, *out = NULL;
    double alpha;
    KW("w0", "w1", "alpha", "out");
    if (!parse(args, kw, "O&O&d|O&", kwlist, ARG_F32(w0, -1), ARG_F32(w1, -1), &alpha, ARG_OUT(out)) ||
        same_shape(w1, "w1", w0, "w0") || finite_range(alpha, 0.0, 1.0, "alpha") || out_like(&out, w0, "w0"))
        return NULL;
    NOGIL(csub_line_forward(F32(w0), F32(w1), (float)alpha, F32(out), PyArray_SIZE(w0)));
    return (PyObject *)out;
}

static PyObject *py_line_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyArrayObject *g, *g0, *g1;
    double alpha;
    KW("g", "alpha", "g0", "g1");
    if (!parse(args, kw, "O&dO&O&", kwlist, ARG_F32(g, -1), &alpha, ARG_F32_W(g0, -1), ARG_F32_W(g1, -1)))
        return NULL;
    if (same_shape(g0, "g0", g, "g") || same_shape(g1, "g1", g, "g") ||
        finite_range(alpha, 0.0, 1.0, "alpha"))
        return NULL;
    NOGIL(csub_line_backward(F32(g), (float)alpha, F32(g0), F32(g1), PyArray_SIZE(g)));
    Py_RETURN_NONE;
}

static PyObject *py_line_dots(PyObject *self, PyObject *args, PyObject *kw)
{
    PyArrayObject *w0, *w1;
    KW("w0", "w1");
    if (parse_pair(args, kw, kwlist, &w0, &w1)) return NULL;
    double s[3] = {0, 0, 0};
    NOGIL(csub_line_dots(F32(w0), F32(w1), PyArray_SIZE(w0), s));
    return Py_BuildValue("ddd", s[0], s[1], s[2]);
}

static PyObject *py_line_reg_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    PyArrayObject *w0, *w1, *g0, *g1;
    double s[3], beta;
    KW("w0", "w1", "sums", "beta", "g0", "g1");
    if (!parse(args, kw, "O&O&(ddd)dO&O&", kwlist, ARG_F32(w0, -1), ARG_F32(w1, -1), &s[0], &s[1], &s[2], &beta,
               ARG_F32_W(g0, -1), ARG_F32_W(g1, -1)))
        return NULL;
    if (same_shape(w1, "w1", w0, "w0") || same_shape(g0, "g0", w0, "w0") || same_shape(g1, "g1", w0, "w0"))
        return NULL;
    if (!(s[1] > 0) || !(s[2] > 0) || !isfinite(s[0]) || !isfinite(s[1]) || !isfinite(s[2])) {
        PyErr_SetString(PyExc_ValueError, "sums: S00 and S11 must be finite and > 0 (an endpoint is all zero)");
        return NULL;
    }
    if (!isfinite(beta)) {
        PyErr_SetString(PyExc_ValueError, "beta: expected a finite number");
        return NULL;
    }
    NOGIL(csub_line_reg_backward(F32(w0), F32(w1), PyArray_SIZE(w0), s, (float)beta, F32(g0), F32(g1)));
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------- random */

/* The generator state: a writable uint64 array of 4 owned by Python
 * (csub.random); `seeded` refuses the all-zero state, which never leaves 0. */
typedef struct { csub_rng **out; int seeded; } rng_arg;

static int rng_check(PyObject *obj, const void *spec)
{
    const rng_arg *r = spec;
    PyArrayObject *a = arr_check(obj, "state", NPY_UINT64, 1, 1);
    if (!a) return -1;
    if (PyArray_DIM(a, 0) != 4) {
        PyErr_SetString(PyExc_ValueError, "state: expected a uint64 array of shape (4,)");
        return -1;
    }
    const uint64_t *s = (const uint64_t *)PyArray_DATA(a);
    if (r->seeded && !(s[0] | s[1] | s[2] | s[3])) {
        PyErr_SetString(PyExc_ValueError, "state: the all-zero state is invalid");
        return -1;
    }
    *r->out = (csub_rng *)PyArray_DATA(a);
    return 0;
}

static int rng_converter(PyObject *obj, void *arg)
{
    return defer(obj, rng_check, arg);
}

/* "O&" for a seeded state (ARG_STATE) or one about to be seeded (ARG_STATE_ANY) */
#define ARG_STATE(r) rng_converter, &(rng_arg){&(r), 1}
#define ARG_STATE_ANY(r) rng_converter, &(rng_arg){&(r), 0}

static PyObject *py_rng_seed(PyObject *self, PyObject *args, PyObject *kw)
{
    csub_rng *r;
    unsigned long long seed;
    KW("state", "seed");
    if (!parse(args, kw, "O&K", kwlist, ARG_STATE_ANY(r), &seed)) return NULL;
    csub_rng_seed(r, seed);
    Py_RETURN_NONE;
}

static PyObject *py_rng_uniform(PyObject *self, PyObject *args, PyObject *kw)
{
    csub_rng *r;
    KW("state");
    if (!parse(args, kw, "O&", kwlist, ARG_STATE(r))) return NULL;
    return PyFloat_FromDouble(csub_rng_uniform(r));
}

static PyObject *py_rng_fill(PyObject *self, PyObject *args, PyObject *kw, int normal)
{
    csub_rng *r;
    PyArrayObject *out;
    double a, b;
    static char *kw_normal[] = {"state", "out", "mean", "std", NULL};
    static char *kw_uniform[] = {"state", "out", "low", "high", NULL};
    if (!parse(args, kw, "O&O&dd", normal ? kw_normal : kw_uniform, ARG_STATE(r), ARG_F32_W(out, -1), &a, &b))
        return NULL;
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
    csub_rng *r;
    double lo, hi, p;
    KW("state", "lo", "hi", "p");
    if (!parse(args, kw, "O&ddd", kwlist, ARG_STATE(r), &lo, &hi, &p) || finite_range(lo, 0.0, 1.0, "lo") ||
        finite_range(hi, lo, 1.0, "hi") || finite_range(p, 0.0, 1.0, "p"))
        return NULL;
    return PyFloat_FromDouble(csub_sample_alpha_biased(r, lo, hi, p));
}

static PyObject *py_sample_alpha_discrete(PyObject *self, PyObject *args, PyObject *kw)
{
    csub_rng *r;
    long long K;
    KW("state", "K");
    if (!parse(args, kw, "O&L", kwlist, ARG_STATE(r), &K) || positive(K, "K")) return NULL;
    return PyFloat_FromDouble(csub_sample_alpha_discrete(r, K));
}

static PyObject *py_sample_alpha_sandwich(PyObject *self, PyObject *args, PyObject *kw)
{
    csub_rng *r;
    long long n;
    KW("state", "n");
    if (!parse(args, kw, "O&L", kwlist, ARG_STATE(r), &n)) return NULL;
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

PyMethodDef csub_py_train_methods[] = {
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
    {NULL, NULL, 0, NULL},
};
