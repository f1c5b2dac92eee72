/* py_core.c - csub._core: threads, gemm, the instruction set (csrc/core.c). */
#include "convert.h"

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
    return finish(csub_set_num_threads((int)n), "set_num_threads", NULL);
}

static PyObject *py_get_num_threads(PyObject *self, PyObject *noargs)
{
    return PyLong_FromLong(csub_get_num_threads());
}

static PyObject *py_gemm(PyObject *self, PyObject *args, PyObject *kw)
{
    PyArrayObject *a, *b;
    int ta = 0, tb = 0;
    KW("a", "b", "transa", "transb");
    if (!parse(args, kw, "O&O&|pp", kwlist, ARG_F32(a, 2), ARG_F32(b, 2), &ta, &tb))
        return NULL;
    npy_intp M = PyArray_DIM(a, ta ? 1 : 0), K = PyArray_DIM(a, ta ? 0 : 1);
    npy_intp Kb = PyArray_DIM(b, tb ? 1 : 0), N = PyArray_DIM(b, tb ? 0 : 1);
    if (K != Kb) {
        PyErr_Format(PyExc_ValueError, "b: inner dimension %ld does not match a's %ld", (long)Kb, (long)K);
        return NULL;
    }
    npy_intp d[2] = {M, N};
    PyArrayObject *c = zeros_f32(2, d);
    if (!c) return NULL;
    NOGIL(csub_gemm(ta, tb, M, N, K, 1.0f, F32(a), PyArray_DIM(a, 1), F32(b), PyArray_DIM(b, 1),
              0.0f, F32(c), N));
    return (PyObject *)c;
}

static PyObject *py_isa(PyObject *self, PyObject *noargs)
{
    return PyUnicode_FromString(csub_isa()); /* never refused here: the import checked it */
}

/* The exception the glue raises for a status code (convert.c's map), for
 * checking the map itself: most codes have no cheap path from Python. */
static PyObject *py__raise_status(PyObject *self, PyObject *args, PyObject *kw)
{
    int status;
    const char *where = NULL, *msg = NULL;
    KW("status", "where", "message");
    if (!parse(args, kw, "i|zz", kwlist, &status, &where, &msg)) return NULL;
    if (status == CSUB_OK) {
        PyErr_SetString(PyExc_ValueError, "status: 0 (CSUB_OK) is not an error");
        return NULL;
    }
    return raise_status(status, where, msg);
}

PyMethodDef csub_py_core_methods[] = {
    M(set_num_threads, "set_num_threads(n): threads used by csub's kernels"),
    {"get_num_threads", (PyCFunction)py_get_num_threads, METH_NOARGS, "get_num_threads() -> int"},
    M(gemm, "gemm(a, b, transa=False, transb=False) -> op(a) @ op(b), float32"),
    {"isa", (PyCFunction)py_isa, METH_NOARGS, "isa() -> the instruction set the SIMD kernels run (CSUB_ISA)"},
    M(_raise_status, "_raise_status(status, where=None, message=None): raise what a C status code raises"),
    {NULL, NULL, 0, NULL},
};
