/* py_topk.c - csub._core: top-k masks (csrc/topk.c). */
#include "convert.h"

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
    PyArrayObject *w;
    double topk;
    KW("w", "topk");
    if (!parse(args, kw, "O&d", kwlist, ARG_F32(w, -1), &topk))
        return NULL;
    if (topk_arg(topk)) return NULL;
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
    NOGIL(st = csub_topk_mask(d, n, topk, (uint8_t *)PyArray_DATA(mask)));
    return finish(st, "topk_mask", mask);
}

static PyObject *py_apply_mask(PyObject *self, PyObject *args, PyObject *kw)
{
    PyArrayObject *w, *m, *out = NULL;
    KW("w", "mask", "out");
    if (!parse(args, kw, "O&O&|O&", kwlist, ARG_F32(w, -1), ARG_ARR(m, "mask", NPY_UINT8, -1, 0, 0), ARG_OUT(out)) ||
        same_shape(m, "mask", w, "w") || out_like(&out, w, "w"))
        return NULL;
    NOGIL(csub_apply_mask(F32(w), (const uint8_t *)PyArray_DATA(m), F32(out), PyArray_SIZE(w)));
    return (PyObject *)out;
}

PyMethodDef csub_py_topk_methods[] = {
    M(topk_count, "topk_count(n, topk) -> number of kept entries"),
    M(topk_mask, "topk_mask(w, topk) -> uint8 mask of the largest |w|"),
    M(apply_mask, "apply_mask(w, mask, out=None) -> w * mask"),
    {NULL, NULL, 0, NULL},
};
