/*
 * py_alloc.c - the memory of csub's large float32 outputs, reused.
 *
 * A training step allocates the same activations and gradients, of the same
 * sizes, every step; NumPy takes each large one (a cPreResNet20 activation at
 * batch 128 is 34 MB) from fresh pages that the kernel faults in and zeroes
 * (8 % of the dense step and 13 % of the sparse one went there). So the
 * outputs that new_f32 and zeros_f32 make from CACHE_MIN bytes up own a
 * 64-byte aligned block through a capsule (the array's base): when the last
 * view of the array goes, the block joins a cache, and the next output of the
 * same byte size takes it back. The cache holds at most CACHE_SLOTS blocks and
 * CSUB_ARRAY_CACHE_MB MiB (default 2048; 0 turns it off), read once; the
 * oldest blocks go first when it is full. csub.empty_cache() frees them all.
 * Outputs of other sizes, and arrays NumPy makes, are unaffected.
 */
#include "convert.h"
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define CACHE_MIN ((size_t)1 << 20) /* bytes: smaller outputs come from NumPy's own allocator */
#define CACHE_SLOTS 128
#define CACHE_DEFAULT_MB 2048
#define CAPSULE_NAME "csub.block"

typedef struct {
    void *p;
    size_t bytes;
} block;

/* The cache, oldest first; guarded by `busy` (a wrapper holds the GIL, but a block may be
 * returned from any thread that drops the last reference) */
static block cache[CACHE_SLOTS];
static int ncached;
static size_t cached_bytes, cap_bytes;
static atomic_flag busy = ATOMIC_FLAG_INIT;

static void lock(void)
{
    while (atomic_flag_test_and_set_explicit(&busy, memory_order_acquire)) {
    }
}

static void unlock(void)
{
    atomic_flag_clear_explicit(&busy, memory_order_release);
}

int csub_py_alloc_init(void)
{
    const char *env = getenv("CSUB_ARRAY_CACHE_MB");
    long long mb = CACHE_DEFAULT_MB;
    if (env && *env) {
        char *end;
        errno = 0;
        mb = strtoll(env, &end, 10);
        if (errno || *end || mb < 0 || mb > ((long long)1 << 40)) {
            PyErr_Format(PyExc_ImportError,
                         "CSUB_ARRAY_CACHE_MB: expected a whole number of MiB >= 0 (0 turns the cache off), got %R",
                         PyUnicode_DecodeFSDefault(env));
            return -1;
        }
    }
    cap_bytes = (size_t)mb << 20;
    return 0;
}

/* A block of exactly `bytes` from the cache (the newest), else a new one; NULL when out of memory */
static void *block_get(size_t bytes)
{
    lock();
    for (int i = ncached - 1; i >= 0; i--)
        if (cache[i].bytes == bytes) {
            void *p = cache[i].p;
            memmove(cache + i, cache + i + 1, sizeof(block) * (size_t)(ncached - 1 - i));
            ncached--;
            cached_bytes -= bytes;
            unlock();
            return p;
        }
    unlock();
    void *p = NULL;
    return posix_memalign(&p, 64, bytes) ? NULL : p;
}

/* Keep the block for a later output, making room by freeing the oldest, or free it */
static void block_put(void *p, size_t bytes)
{
    block evicted[CACHE_SLOTS];
    int nev = 0;
    if (bytes > cap_bytes) {
        free(p);
        return;
    }
    lock();
    while (ncached > 0 && (ncached == CACHE_SLOTS || cached_bytes + bytes > cap_bytes)) {
        evicted[nev++] = cache[0];
        cached_bytes -= cache[0].bytes;
        memmove(cache, cache + 1, sizeof(block) * (size_t)(--ncached));
    }
    cache[ncached++] = (block){p, bytes};
    cached_bytes += bytes;
    unlock();
    for (int i = 0; i < nev; i++) free(evicted[i].p);
}

static void block_release(PyObject *capsule)
{
    void *p = PyCapsule_GetPointer(capsule, CAPSULE_NAME);
    block_put(p, (size_t)(uintptr_t)PyCapsule_GetContext(capsule));
}

/* A new float32 array of shape dims, its memory from the cache when large; zero: filled with zeros */
static PyArrayObject *cached_f32(int nd, const npy_intp *dims, int zero)
{
    size_t bytes = sizeof(float);
    for (int i = 0; i < nd; i++) bytes *= (size_t)dims[i];
    if (cap_bytes == 0 || bytes < CACHE_MIN)
        return (PyArrayObject *)(zero ? PyArray_ZEROS(nd, (npy_intp *)dims, NPY_FLOAT32, 0)
                                      : PyArray_SimpleNew(nd, (npy_intp *)dims, NPY_FLOAT32));
    void *p = block_get(bytes);
    if (!p) return (PyArrayObject *)PyErr_NoMemory();
    PyObject *capsule = PyCapsule_New(p, CAPSULE_NAME, NULL);
    if (!capsule || PyCapsule_SetContext(capsule, (void *)(uintptr_t)bytes) ||
        PyCapsule_SetDestructor(capsule, block_release)) {
        Py_XDECREF(capsule);
        free(p);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)PyArray_SimpleNewFromData(nd, (npy_intp *)dims, NPY_FLOAT32, p);
    if (!a || PyArray_SetBaseObject(a, capsule) < 0) { /* SetBaseObject steals capsule, even when it fails */
        if (!a) Py_DECREF(capsule);
        Py_XDECREF(a);
        return NULL;
    }
    if (zero) memset(p, 0, bytes);
    return a;
}

PyArrayObject *new_f32(int nd, const npy_intp *dims)
{
    return cached_f32(nd, dims, 0);
}

PyArrayObject *zeros_f32(int nd, const npy_intp *dims)
{
    return cached_f32(nd, dims, 1);
}

static PyObject *py_empty_cache(PyObject *self, PyObject *noargs)
{
    (void)self, (void)noargs;
    block all[CACHE_SLOTS];
    lock();
    int n = ncached;
    size_t bytes = cached_bytes;
    memcpy(all, cache, sizeof(block) * (size_t)n);
    ncached = 0;
    cached_bytes = 0;
    unlock();
    for (int i = 0; i < n; i++) free(all[i].p);
    return PyLong_FromSize_t(bytes);
}

static PyObject *py_array_cache_info(PyObject *self, PyObject *noargs)
{
    (void)self, (void)noargs;
    lock();
    int n = ncached;
    size_t bytes = cached_bytes;
    unlock();
    return Py_BuildValue("{s:i,s:n,s:n,s:n}", "blocks", n, "bytes", (Py_ssize_t)bytes, "capacity",
                         (Py_ssize_t)cap_bytes, "min_bytes", (Py_ssize_t)CACHE_MIN);
}

PyMethodDef csub_py_alloc_methods[] = {
    {"empty_cache", (PyCFunction)py_empty_cache, METH_NOARGS,
     "empty_cache() -> bytes freed: the cached blocks of csub's large outputs, back to the system"},
    {"array_cache_info", (PyCFunction)py_array_cache_info, METH_NOARGS,
     "array_cache_info() -> {blocks, bytes, capacity, min_bytes}: the cache of output memory"},
    {NULL, NULL, 0, NULL},
};
