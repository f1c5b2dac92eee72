/* py_io.c - csub._core: JSON and safetensors to Python values (csrc/json.c, safetensors.c). */
#include "convert.h"

/* ------------------------------------------------------ json, safetensors */

/* Python object for a parsed JSON value (numbers as float); depth <= 64. */
static PyObject *json_to_py(const csub_json *v)
{
    switch (v->type) {
    case CSUB_JSON_NULL:
        Py_RETURN_NONE;
    case CSUB_JSON_BOOL:
        return PyBool_FromLong(v->boolean);
    case CSUB_JSON_NUMBER:
        return PyFloat_FromDouble(v->number);
    case CSUB_JSON_STRING:
        return PyUnicode_FromString(v->string);
    case CSUB_JSON_ARRAY: {
        PyObject *list = PyList_New((Py_ssize_t)v->n);
        for (size_t i = 0; list && i < v->n; i++) {
            PyObject *it = json_to_py(&v->items[i]);
            if (!it) Py_CLEAR(list);
            else PyList_SET_ITEM(list, (Py_ssize_t)i, it);
        }
        return list;
    }
    case CSUB_JSON_OBJECT: {
        PyObject *dict = PyDict_New();
        for (size_t i = 0; dict && i < v->n; i++) {
            PyObject *it = json_to_py(&v->items[i]);
            if (!it || PyDict_SetItemString(dict, v->keys[i], it)) Py_CLEAR(dict);
            Py_XDECREF(it);
        }
        return dict;
    }
    }
    PyErr_SetString(PyExc_SystemError, "json: unknown value type");
    return NULL;
}

/* Raise for a failed parse: the reader's message, as its status says. */
static PyObject *reader_error(int status, const char *msg)
{
    return raise_status(status, NULL, msg[0] ? msg : "parse failed");
}

static PyObject *py_json_parse(PyObject *self, PyObject *args, PyObject *kw)
{
    Py_buffer text;
    KW("text");
    if (!parse(args, kw, "O&", kwlist, ARG_BYTES(text, "text"))) return NULL;
    csub_json *v = NULL;
    char err[256];
    int st;
    NOGIL(st = csub_json_parse(text.buf, (size_t)text.len, &v, err, sizeof err));
    PyBuffer_Release(&text);
    if (st) return reader_error(st, err);
    PyObject *out = json_to_py(v);
    csub_json_free(v);
    return out;
}

static const char *dtype_name(csub_dtype dt)
{
    static const char *names[] = {"F32", "F64", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL",
                                  "U16", "U32", "U64"};
    return (unsigned)dt < sizeof names / sizeof names[0] ? names[dt] : "?";
}

/* (dtype, shape, bytes) for one tensor */
static PyObject *st_tensor_to_py(const csub_st_tensor *t)
{
    PyObject *shape = PyTuple_New(t->ndim);
    for (int d = 0; shape && d < t->ndim; d++) {
        PyObject *n = PyLong_FromLongLong(t->shape[d]);
        if (!n) Py_CLEAR(shape);
        else PyTuple_SET_ITEM(shape, d, n);
    }
    if (!shape) return NULL;
    Py_ssize_t bytes = (Py_ssize_t)(t->numel * (int64_t)csub_dtype_size(t->dtype));
    return Py_BuildValue("(sNy#)", dtype_name(t->dtype), shape, (const char *)t->data, bytes);
}

static PyObject *py_st_parse(PyObject *self, PyObject *args, PyObject *kw)
{
    Py_buffer data;
    KW("data");
    if (!parse(args, kw, "O&", kwlist, ARG_BYTES(data, "data"))) return NULL;
    csub_st_file f;
    char err[512];
    int st;
    NOGIL(st = csub_st_parse(data.buf, (size_t)data.len, &f, err, sizeof err));
    PyBuffer_Release(&data);
    if (st) return reader_error(st, err);

    PyObject *meta = NULL, *tensors = PyDict_New();
    if (!tensors) goto fail;
    if (f.metadata) {
        if (!(meta = json_to_py(f.metadata))) goto fail;
    } else {
        Py_INCREF(Py_None);
        meta = Py_None;
    }
    for (size_t i = 0; i < f.n; i++) {
        PyObject *t = st_tensor_to_py(&f.tensors[i]);
        int bad = !t || PyDict_SetItemString(tensors, f.tensors[i].name, t);
        Py_XDECREF(t);
        if (bad) goto fail;
    }
    csub_st_free(&f);
    return Py_BuildValue("(NN)", meta, tensors);
fail:
    csub_st_free(&f);
    Py_XDECREF(meta);
    Py_XDECREF(tensors);
    return NULL;
}

PyMethodDef csub_py_io_methods[] = {
    M(json_parse, "json_parse(text: bytes) -> the value (strict RFC 8259; numbers as float)"),
    M(st_parse, "st_parse(data: bytes) -> (metadata dict or None, {name: (dtype, shape, bytes)})"),
    {NULL, NULL, 0, NULL},
};
