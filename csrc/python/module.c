/*
 * module.c - csub._core: the module definition. The wrappers live in one
 * file per family (py_<family>.c, mirroring csrc/; py_alloc.c: the memory of large outputs), the
 * checks they share in convert.c; this file adds each family's method table, the exception
 * classes and MAX_NUM_THREADS, and owns NumPy's C API table.
 */
#define CSUB_PY_MODULE /* the one file that calls import_array */
#include "convert.h"
#include <string.h>

static PyMethodDef *const families[] = {
    csub_py_core_methods, csub_py_conv_methods, csub_py_csr_methods, csub_py_norm_methods,
    csub_py_train_methods, csub_py_topk_methods, csub_py_quant_methods, csub_py_runtime_methods,
    csub_py_io_methods, csub_py_alloc_methods,
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_core", "csub's C core: kernels with forward and backward.", -1, NULL,
};

PyMODINIT_FUNC PyInit__core(void)
{
    char err[256];
    if (csub_isa_check(err, sizeof err)) { /* CSUB_ISA names a level this CPU cannot run */
        PyErr_SetString(PyExc_ImportError, err);
        return NULL;
    }
    import_array();
    if (csub_py_alloc_init()) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++)
        if (PyModule_AddFunctions(m, families[i]) < 0) {
            Py_DECREF(m);
            return NULL;
        }
    if (PyModule_AddIntConstant(m, "MAX_NUM_THREADS", CSUB_MAX_THREADS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    static const struct { const char *name, *doc; PyObject **type; } errs[] = {
        {"csub.FormatError", "A model file, header or JSON text is malformed (CSUB_ERR_FORMAT).", &FormatError},
        {"csub.UnsupportedError", "Well formed, but asks for something csub cannot run (CSUB_ERR_UNSUPPORTED).",
         &UnsupportedError},
        {"csub.BudgetError", "No level of the subspace fits the budget (CSUB_ERR_BUDGET).", &BudgetError},
    };
    for (size_t i = 0; i < sizeof errs / sizeof errs[0]; i++) {
        *errs[i].type = PyErr_NewExceptionWithDoc(errs[i].name, errs[i].doc, PyExc_ValueError, NULL);
        if (!*errs[i].type || PyModule_AddObjectRef(m, strchr(errs[i].name, '.') + 1, *errs[i].type) < 0) {
            Py_DECREF(m);
            return NULL;
        }
    }
    return m;
}
