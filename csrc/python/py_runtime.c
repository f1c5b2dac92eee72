/* py_runtime.c - csub._core: the model capsule and the runtime calls (csrc/runtime.c). */
#include "convert.h"

/* --------------------------------------------------------------- runtime */

/* A csub_model in a capsule; `busy` refuses a second concurrent call (the
 * GIL is released while the model runs). */
typedef struct { csub_model *m; int busy; } rt_box;

static void rt_destroy(PyObject *cap)
{
    rt_box *b = PyCapsule_GetPointer(cap, "csub.model");
    if (b) { csub_model_free(b->m); PyMem_Free(b); }
}

static rt_box *rt_get(PyObject *obj)
{
    if (!PyCapsule_IsValid(obj, "csub.model")) {
        PyErr_Format(PyExc_TypeError, "model: expected a model from model_load, got %s", Py_TYPE(obj)->tp_name);
        return NULL;
    }
    rt_box *b = PyCapsule_GetPointer(obj, "csub.model");
    if (b->busy) {
        PyErr_SetString(PyExc_RuntimeError, "model: in use by another thread");
        return NULL;
    }
    return b;
}

/* "O&" for the model argument */
typedef struct { rt_box **out; } model_arg;

static int model_check(PyObject *obj, const void *spec)
{
    return (*((const model_arg *)spec)->out = rt_get(obj)) ? 0 : -1;
}

static int model_converter(PyObject *obj, void *arg)
{
    return defer(obj, model_check, arg);
}

#define ARG_MODEL(b) model_converter, &(model_arg){&(b)}

/* One call on the model with the GIL released, the model marked busy meanwhile; its status into st. */
#define RT_RUN(b, st, call) do { (b)->busy = 1; NOGIL(st = call); (b)->busy = 0; } while (0)

/* A model call's result: out (a new reference, or None when NULL) for status
 * 0, else the status's exception with the model's message, out released. */
static PyObject *rt_done(rt_box *b, int st, PyObject *out)
{
    if (st) {
        Py_XDECREF(out);
        return raise_status(st, NULL, csub_model_error(b->m));
    }
    if (!out) Py_RETURN_NONE;
    return out;
}

static PyObject *py_model_load(PyObject *self, PyObject *args, PyObject *kw)
{
    Py_buffer buf;
    KW("data");
    if (!parse(args, kw, "O&", kwlist, ARG_BYTES(buf, "data"))) return NULL;
    char err[256] = "";
    csub_model *m = NULL;
    int st;
    NOGIL(st = csub_model_load_memory(buf.buf, (size_t)buf.len, &m, err, sizeof err));
    PyBuffer_Release(&buf);
    if (st) return raise_status(st, NULL, err);
    rt_box *b = PyMem_Malloc(sizeof *b);
    if (!b) { csub_model_free(m); return PyErr_NoMemory(); }
    b->m = m;
    b->busy = 0;
    PyObject *cap = PyCapsule_New(b, "csub.model", rt_destroy);
    if (!cap) { csub_model_free(m); PyMem_Free(b); }
    return cap;
}

static PyObject *py_model_set_alpha(PyObject *self, PyObject *args, PyObject *kw)
{
    rt_box *b;
    double alpha;
    KW("model", "alpha");
    if (!parse(args, kw, "O&d", kwlist, ARG_MODEL(b), &alpha)) return NULL;
    int st;
    RT_RUN(b, st, csub_model_set_alpha(b->m, alpha));
    return rt_done(b, st, NULL);
}

static PyObject *py_model_set_sparse_crossover(PyObject *self, PyObject *args, PyObject *kw)
{
    rt_box *b;
    PyObject *osplit = Py_None;
    double keep, keep_split;
    KW("model", "keep", "keep_split");
    if (!parse(args, kw, "O&d|O", kwlist, ARG_MODEL(b), &keep, &osplit)) return NULL;
    keep_split = osplit == Py_None ? keep : PyFloat_AsDouble(osplit);
    if ((keep_split == -1.0 && PyErr_Occurred()) || finite_range(keep, 0.0, 1.0, "keep") ||
        finite_range(keep_split, 0.0, 1.0, "keep_split"))
        return NULL;
    int st;
    RT_RUN(b, st, csub_model_set_sparse_crossover(b->m, keep, keep_split));
    return rt_done(b, st, NULL);
}

/* The (model, x) arguments of model_forward and model_profile: x a batch of
 * the model's inputs, (N, C, H, W) or (N, C*H*W), float32, N >= 1. */
typedef struct { rt_box *b; PyArrayObject *x; csub_model_desc d; npy_intp N; } rt_batch;

static int rt_model_x(PyObject *args, PyObject *kw, rt_batch *r)
{
    KW("model", "x");
    if (!parse(args, kw, "O&O&", kwlist, ARG_MODEL(r->b), ARG_F32_AS(r->x, "x", -1))) return -1;
    const csub_model_desc *d = &r->d;
    csub_model_info(r->b->m, &r->d);
    npy_intp per = (npy_intp)(d->input_c * d->input_h * d->input_w);
    r->N = PyArray_NDIM(r->x) ? PyArray_DIM(r->x, 0) : 0;
    if (PyArray_NDIM(r->x) >= 2 && r->N >= 1 && PyArray_SIZE(r->x) == r->N * per) return 0;
    char sh[128];
    shape_str(sh, sizeof sh, PyArray_NDIM(r->x), PyArray_DIMS(r->x));
    PyErr_Format(PyExc_ValueError, "x: expected (N, %lld, %lld, %lld) or (N, %lld) with N >= 1, got %s",
                 (long long)d->input_c, (long long)d->input_h, (long long)d->input_w, (long long)per, sh);
    return -1;
}

static PyObject *py_model_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    rt_batch r;
    if (rt_model_x(args, kw, &r)) return NULL;
    npy_intp ys[2] = {r.N, (npy_intp)r.d.num_classes};
    PyArrayObject *y = new_f32(2, ys);
    if (!y) return NULL;
    int st;
    RT_RUN(r.b, st, csub_model_forward(r.b->m, F32(r.x), r.N, F32(y)));
    return rt_done(r.b, st, (PyObject *)y);
}

static PyObject *py_model_profile(PyObject *self, PyObject *args, PyObject *kw)
{
    rt_batch r;
    if (rt_model_x(args, kw, &r)) return NULL;
    int n = csub_model_num_ops(r.b->m);
    double *ms = PyMem_Calloc((size_t)n, sizeof(double));
    float *y = PyMem_Malloc(sizeof(float) * (size_t)(r.N * r.d.num_classes));
    if (!ms || !y) { PyMem_Free(ms); PyMem_Free(y); return PyErr_NoMemory(); }
    int st;
    RT_RUN(r.b, st, csub_model_profile(r.b->m, F32(r.x), r.N, y, ms));
    PyMem_Free(y);
    if (st) { PyMem_Free(ms); return rt_done(r.b, st, NULL); }
    PyObject *out = PyList_New(n);
    for (int i = 0; out && i < n; i++) {
        PyObject *t = Py_BuildValue("(sd)", csub_model_op_name(r.b->m, i), ms[i]);
        if (!t) { Py_CLEAR(out); break; }
        PyList_SET_ITEM(out, i, t);
    }
    PyMem_Free(ms);
    return out;
}

static PyObject *py_model_info(PyObject *self, PyObject *args, PyObject *kw)
{
    rt_box *b;
    KW("model");
    if (!parse(args, kw, "O&", kwlist, ARG_MODEL(b))) return NULL;
    csub_model_desc d;
    csub_model_info(b->m, &d);
    return Py_BuildValue("{s:s,s:(LLL),s:L,s:d,s:d,s:d,s:i,s:L,s:L,s:L,s:s}", "regime", d.regime, "input_shape",
                         (long long)d.input_c, (long long)d.input_h, (long long)d.input_w, "num_classes",
                         (long long)d.num_classes, "alpha", d.alpha, "keep", d.keep, "width", d.width, "bits", d.bits,
                         "weight_bytes", (long long)d.weight_bytes, "subspace_bytes", (long long)d.subspace_bytes,
                         "flops", (long long)d.flops, "int8_kernel", csub_int8_kernel());
}

static PyObject *py_model_memory(PyObject *self, PyObject *args, PyObject *kw)
{
    rt_box *b;
    long long batch;
    KW("model", "batch");
    if (!parse(args, kw, "O&L", kwlist, ARG_MODEL(b), &batch) || positive(batch, "batch")) return NULL;
    int64_t bytes = csub_model_memory(b->m, batch);
    if (bytes < 0) return PyErr_Format(PyExc_ValueError, "batch: expected 1..2^24 images whose memory fits in "
                                                "int64, got %lld", batch);
    return PyLong_FromLongLong((long long)bytes);
}

static PyObject *py_model_plan(PyObject *self, PyObject *args, PyObject *kw)
{
    rt_box *b;
    long long batch;
    KW("model", "batch");
    if (!parse(args, kw, "O&L", kwlist, ARG_MODEL(b), &batch) || positive(batch, "batch")) return NULL;
    if (batch > ((long long)1 << 24)) return PyErr_Format(PyExc_ValueError, "batch: expected 1..2^24, got %lld", batch);
    return PyUnicode_FromString(csub_model_plan(b->m, batch));
}

static PyObject *py_model_calibrate(PyObject *self, PyObject *args, PyObject *kw)
{
    rt_box *b;
    PyArrayObject *a;
    long long batch = 1, reps = 5;
    KW("model", "alphas", "batch", "reps");
    if (!parse(args, kw, "O&O&|LL", kwlist, ARG_MODEL(b), ARG_ARR(a, "alphas", NPY_FLOAT64, 1, 0, 0), &batch, &reps))
        return NULL;
    npy_intp n = PyArray_DIM(a, 0);
    if (n < 1 || n > 100000) { PyErr_SetString(PyExc_ValueError, "alphas: expected 1..100000 alphas"); return NULL; }
    if (batch < 1 || batch > 65536) { PyErr_Format(PyExc_ValueError, "batch: expected 1..65536, got %lld", batch); return NULL; }
    if (reps < 1 || reps > 10000) { PyErr_Format(PyExc_ValueError, "reps: expected 1..10000, got %lld", reps); return NULL; }
    csub_level *lv = PyMem_Calloc((size_t)n, sizeof *lv);
    if (!lv) return PyErr_NoMemory();
    int st;
    RT_RUN(b, st, csub_model_calibrate(b->m, (const double *)PyArray_DATA(a), (int)n, batch, (int)reps, lv));
    if (st) { PyMem_Free(lv); return rt_done(b, st, NULL); }
    PyObject *out = PyList_New(n);
    for (npy_intp i = 0; out && i < n; i++) {
        PyObject *r = Py_BuildValue("{s:d,s:d,s:d,s:L,s:d}", "alpha", lv[i].alpha, "latency_ms", lv[i].latency_ms,
                                    "set_alpha_ms", lv[i].set_alpha_ms, "memory_bytes", (long long)lv[i].memory_bytes,
                                    "accuracy", lv[i].accuracy);
        if (!r) { Py_CLEAR(out); break; }
        PyList_SET_ITEM(out, i, r);
    }
    PyMem_Free(lv);
    return out;
}

static PyObject *py_pick_alpha(PyObject *self, PyObject *args, PyObject *kw)
{
    PyArrayObject *a, *l, *m, *c;
    double lat = 0.0;
    long long mem = 0;
    KW("alphas", "latency_ms", "memory_bytes", "accuracy", "latency_budget", "memory_budget");
    if (!parse(args, kw, "O&O&O&O&|dL", kwlist, ARG_ARR(a, "alphas", NPY_FLOAT64, 1, 0, 0),
                         ARG_ARR(l, "latency_ms", NPY_FLOAT64, 1, 0, 0),
                         ARG_ARR(m, "memory_bytes", NPY_INT64, 1, 0, 0),
                         ARG_ARR(c, "accuracy", NPY_FLOAT64, 1, 0, 0), &lat, &mem))
        return NULL;
    if (same_shape(l, "latency_ms", a, "alphas") || same_shape(m, "memory_bytes", a, "alphas") ||
        same_shape(c, "accuracy", a, "alphas"))
        return NULL;
    npy_intp n = PyArray_DIM(a, 0);
    if (n < 1 || n > 100000) { PyErr_SetString(PyExc_ValueError, "alphas: expected 1..100000 levels"); return NULL; }
    csub_level *lv = PyMem_Calloc((size_t)n, sizeof *lv);
    if (!lv) return PyErr_NoMemory();
    for (npy_intp i = 0; i < n; i++) {
        lv[i].alpha = ((double *)PyArray_DATA(a))[i];
        lv[i].latency_ms = ((double *)PyArray_DATA(l))[i];
        lv[i].memory_bytes = ((int64_t *)PyArray_DATA(m))[i];
        lv[i].accuracy = ((double *)PyArray_DATA(c))[i];
    }
    double alpha = 0.0;
    int st = csub_pick_alpha(lv, (int)n, lat, mem, &alpha);
    PyMem_Free(lv);
    if (st == CSUB_ERR_BUDGET) Py_RETURN_NONE;
    if (st) return raise_status(st, NULL, NULL);
    return PyFloat_FromDouble(alpha);
}

static PyObject *py_bits_for_alpha(PyObject *self, PyObject *args, PyObject *kw)
{
    double alpha;
    int lo, hi;
    KW("alpha", "min_bits", "max_bits");
    if (!parse(args, kw, "dii", kwlist, &alpha, &lo, &hi)) return NULL;
    if (finite_range(alpha, 0.0, 1.0, "alpha")) return NULL;
    if (lo < 2 || hi > 16 || lo > hi) { PyErr_SetString(PyExc_ValueError, "min_bits, max_bits: expected 2 <= min <= max <= 16"); return NULL; }
    return PyLong_FromLong(csub_bits_for_alpha(alpha, lo, hi));
}

PyMethodDef csub_py_runtime_methods[] = {
    M(model_load, "model_load(data: bytes) -> model (an exported csub model file, at alpha 1)"),
    M(model_set_alpha, "model_set_alpha(model, alpha): materialise the compressed network at alpha"),
    M(model_forward, "model_forward(model, x[N, C, H, W]) -> logits[N, classes]"),
    M(model_set_sparse_crossover, "model_set_sparse_crossover(model, keep, keep_split=keep): CSR kernels at keep "
                                  "fractions <= keep (whole images per thread), <= keep_split (an image split across threads)"),
    M(model_profile, "model_profile(model, x) -> [(op name, ms), ...] one timed forward"),
    M(model_info, "model_info(model) -> dict (regime, level, sizes, flops)"),
    M(model_memory, "model_memory(model, batch) -> bytes to run a batch at the current alpha"),
    M(model_plan, "model_plan(model, batch) -> how a forward of batch images runs here: 'images', 'layers', "
                  "'bands' or 'serial'"),
    M(model_calibrate, "model_calibrate(model, alphas float64[n], batch=1, reps=5) -> list of dicts"),
    M(pick_alpha, "pick_alpha(alphas, latency_ms, memory_bytes int64, accuracy, latency_budget=0, "
                  "memory_budget=0) -> alpha or None"),
    M(bits_for_alpha, "bits_for_alpha(alpha, min_bits, max_bits) -> int"),
    {NULL, NULL, 0, NULL},
};
