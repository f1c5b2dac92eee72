/*
 * convert.h - shared by every file of csub._core (csrc/python/), the only C
 * that sees Python and NumPy.
 *
 * A wrapper is parse -> call -> status: parse() with the ARG_* converters
 * below checks each argument on its own (type, dtype, contiguity, rank,
 * shape) and raises TypeError/ValueError naming it; the shared checks that
 * relate arguments to each other (shape_check, same_shape, PER_CHANNEL,
 * conv_check_dims, ...) follow, so the C kernels never see a bad pointer or
 * size; then the wrapper releases the GIL, calls the kernel, and turns its
 * status code into that code's own exception (finish, raise_status). Outputs
 * marked "=" are allocated by the wrapper and returned; gradients that
 * accumulate ("+=") are passed in by the caller and updated in place.
 *
 * NumPy's C API table lives in module.c (which defines CSUB_PY_MODULE and
 * calls import_array); every other file sees it through the unique symbol.
 */
#ifndef CSUB_PY_CONVERT_H
#define CSUB_PY_CONVERT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define PY_ARRAY_UNIQUE_SYMBOL csub_PyArray_API
#ifndef CSUB_PY_MODULE
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>
#include <stdint.h>

#include "../internal.h" /* csub.h and the sparse forward in two steps */

/* ------------------------------------------------------------ validation */

#define MAXDIM 8
#define F32(a) ((float *)PyArray_DATA(a))
#define OPT_F32(a) ((a) ? (float *)PyArray_DATA(a) : NULL)

/* Render a shape as "(2, 3, 4)". */
void shape_str(char *buf, size_t len, int nd, const npy_intp *d);
/* obj must be a C-contiguous ndarray of the given dtype (NPY_FLOAT32 etc.),
 * aligned, writable when `writable`. ndim < 0 accepts any rank, else exact.
 * Returns the array (borrowed) or NULL with an exception set. Wrappers get
 * their arrays through the ARG_* converters below, which call it. */
PyArrayObject *arr_check(PyObject *obj, const char *name, int typenum, int ndim, int writable);
/* The shape of a must equal want[0..nd) (entries < 0 are free); `what`
 * describes the expected shape for the message, e.g. "(N, C, H, W)".
 * An absent optional array (NULL) passes, here and in same_shape. */
int shape_check(PyArrayObject *a, const char *name, int nd, const npy_intp *want, const char *what);
/* Same shape as the reference array. */
int same_shape(PyArrayObject *a, const char *name, PyArrayObject *ref, const char *refname);
/* The per-channel arguments of x[N, C, ...]: each array (NULL: absent) has
 * shape (C,), e.g. PER_CHANNEL(C, {g, "gamma"}, {b, "beta"}). */
typedef struct { PyArrayObject *a; const char *name; } named_arr;
int per_channel(npy_intp C, int n, const named_arr *args);
#define PER_CHANNEL(C, ...) \
    per_channel(C, (int)(sizeof((named_arr[]){__VA_ARGS__}) / sizeof(named_arr)), (named_arr[]){__VA_ARGS__})
/* New float32 outputs (uninitialised, zeros); from 1 MiB their memory comes from the cache of
 * py_alloc.c, which csub_py_alloc_init (module init) sizes: 0, or -1 with ImportError. */
PyArrayObject *new_f32(int nd, const npy_intp *dims);
PyArrayObject *zeros_f32(int nd, const npy_intp *dims);
int csub_py_alloc_init(void);
/* The output of an elementwise op shaped like x: *out when given (checked
 * to have x's shape, then a new reference), else a new array; 0 or -1. */
int out_like(PyArrayObject **out, PyArrayObject *x, const char *xname);
/* Shape tuple argument, e.g. input_shape=(N, C, H, W). */
int parse_shape(PyObject *obj, const char *name, int nd, npy_intp *dims);
/* x is (N, C, ...) with rank >= 2; returns N, C, and the product of the rest. */
int nc_rest(PyArrayObject *x, const char *name, npy_intp *N, npy_intp *C, npy_intp *HW);

/* Shared parsing of conv arguments: x[N,C,H,W], w[K,C,R,S]. */
typedef struct { npy_intp N, C, H, W, K, R, S, P, Q; } conv_dims;
#define CONV_MAX_ARG (1 << 20) /* stride/padding bound: keeps every size computation far from overflow */
/* x[N,C,H,W] against a weight of shape wd = (K, C, R, S) named `wname`. */
int conv_check_dims(PyArrayObject *x, const npy_intp *wd, const char *wname,
                    long long stride, long long pad, conv_dims *d);
/* A 3x3, pad 1 conv's output rows [p0, p1) of an image of `height` rows from a row band x[C, hb, W]
 * (the image's rows [lo, lo + hb)) and the rows above (up) and below (dn) it, each NULL or [C, W]
 * (checked by the caller): checks lo, height, p0 and p1 and that the rows the outputs read are held;
 * *rows, the output width *Q. */
int rows_band(PyArrayObject *x, PyArrayObject *up, PyArrayObject *dn, long long height, long long lo, long long p0,
              long long p1, long long stride, csub_rows *rows, int64_t *Q);

/* ---------------------------------------------------------------- numbers */

typedef struct { char s[32]; } numstr;
numstr fmt_g(double v);
int positive(long long v, const char *name);
int finite_range(double v, double lo, double hi, const char *name);
int eps_check(double eps);

/* ----------------------------------------------------------- status codes */

/* Set by the module init: ValueError subclasses for CSUB_ERR_FORMAT,
 * CSUB_ERR_UNSUPPORTED and CSUB_ERR_BUDGET. */
extern PyObject *FormatError, *UnsupportedError, *BudgetError;
/* Raise the exception of status with the C side's message (or the code's own
 * description when it wrote none), prefixed by where when given; NULL.
 * ARG ValueError, NOMEM MemoryError, IO OSError, FORMAT FormatError,
 * UNSUPPORTED UnsupportedError, BUDGET BudgetError, any other SystemError
 * (tests/test_glue_status.py). pick_alpha alone answers BUDGET with None,
 * as its API says ("None if nothing fits"). */
PyObject *raise_status(int status, const char *where, const char *msg);
/* 0 for CSUB_OK; otherwise raise for a kernel's status and -1. */
int status_ok(int status, const char *where);
/* A wrapper's result after its kernel returned status: out (None when out is
 * NULL) for CSUB_OK, else the status's exception with out released. */
PyObject *finish(int status, const char *where, PyArrayObject *out);

/* One kernel call (a statement) with the GIL released. */
#define NOGIL(...) do { Py_BEGIN_ALLOW_THREADS __VA_ARGS__; Py_END_ALLOW_THREADS } while (0)

/* --------------------------------------------------------------- parsing */

#define KW(...) static char *kwlist[] = {__VA_ARGS__, NULL}
/* PyArg_ParseTupleAndKeywords that names the offending argument on failure. */
int parse(PyObject *args, PyObject *kw, const char *fmt, char **kwlist, ...);

/* "O&" converters for parse(), in the manner of NumPy's PyArray_*Converter,
 * e.g. parse(args, kw, "O&|O&", kwlist, ARG_F32(x, 4), ARG_OPT_F32(b, 1)).
 * A converter only records its argument (defer); parse checks the recorded
 * ones after every other argument converted, in order, so a missing or
 * mistyped number is reported first. A check returns 0, or -1 with an
 * exception set. */
typedef int (*deferred_check)(PyObject *obj, const void *spec);
int defer(PyObject *obj, deferred_check check, const void *spec);

/* An array argument checked as by arr_check and stored (borrowed) in *out.
 * An optional array is NULL when None or absent (initialise it to NULL). */
typedef struct { const char *name; int typenum, ndim, writable, optional; PyArrayObject **out; } arr_arg;
int arr_converter(PyObject *obj, void *arg);
#define ARG_ARR(v, name, typenum, nd, writable, optional) \
    arr_converter, &(arr_arg){name, typenum, nd, writable, optional, &(v)}
/* float32 arguments named `name` (the _AS forms) or as the variable v */
#define ARG_F32_AS(v, name, nd) ARG_ARR(v, name, NPY_FLOAT32, nd, 0, 0)         /* read */
#define ARG_F32_W_AS(v, name, nd) ARG_ARR(v, name, NPY_FLOAT32, nd, 1, 0)       /* written */
#define ARG_OPT_F32_AS(v, name, nd) ARG_ARR(v, name, NPY_FLOAT32, nd, 0, 1)     /* read, or None */
#define ARG_OPT_F32_W_AS(v, name, nd) ARG_ARR(v, name, NPY_FLOAT32, nd, 1, 1)   /* written (+=), or None */
#define ARG_F32(v, nd) ARG_F32_AS(v, #v, nd)
#define ARG_F32_W(v, nd) ARG_F32_W_AS(v, #v, nd)
#define ARG_OPT_F32(v, nd) ARG_OPT_F32_AS(v, #v, nd)
#define ARG_OPT_F32_W(v, nd) ARG_OPT_F32_W_AS(v, #v, nd)
/* The optional output of an elementwise op, float32, any rank, written */
#define ARG_OUT(v) ARG_OPT_F32_W_AS(v, "out", -1)

/* A bytes-like argument (bytes, bytearray, memoryview, ...) as a contiguous
 * buffer in *view, which the wrapper releases (PyBuffer_Release) once parse
 * succeeded; the last deferred argument, so that nothing fails after it. */
typedef struct { const char *name; Py_buffer *view; } bytes_arg;
int bytes_converter(PyObject *obj, void *arg);
#define ARG_BYTES(view, name) bytes_converter, &(bytes_arg){name, &(view)}

/* A shape argument of nd integers >= 1 into dims[nd], as by parse_shape. */
typedef struct { const char *name; int nd; npy_intp *dims; } shape_arg;
int shape_converter(PyObject *obj, void *arg);
#define ARG_SHAPE(dims, name, nd) shape_converter, &(shape_arg){name, nd, dims}

/* Two float32 arrays of any rank and the same shape, named kwlist[0] and
 * kwlist[1] (e.g. the x and dy of an elementwise backward); 0 or -1. */
int parse_pair(PyObject *args, PyObject *kw, char **kwlist, PyArrayObject **a, PyArrayObject **b);

/* A method-table entry for py_<name>(self, args, kw). */
#define M(name, doc) {#name, (PyCFunction)(void (*)(void))py_##name, METH_VARARGS | METH_KEYWORDS, doc}

/* The method table of each family, each ended by a {NULL} sentinel. */
extern PyMethodDef csub_py_core_methods[], csub_py_conv_methods[], csub_py_csr_methods[],
    csub_py_norm_methods[], csub_py_topk_methods[], csub_py_quant_methods[],
    csub_py_runtime_methods[], csub_py_io_methods[], csub_py_train_methods[], csub_py_alloc_methods[];

#endif
