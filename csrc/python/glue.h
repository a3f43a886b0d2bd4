/* Helpers shared by the CPython glue: argument conversion and checking. */
#ifndef PEFTCORE_GLUE_H
#define PEFTCORE_GLUE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_22_API_VERSION
#ifndef PEFTCORE_GLUE_MAIN
#define NO_IMPORT_ARRAY
#endif
#define PY_ARRAY_UNIQUE_SYMBOL peftcore_ARRAY_API
#include <numpy/arrayobject.h>

#include "../engine.h"

/* C-contiguous float32 array from obj (ndarray, Tensor, ...): new reference, or NULL with
 * TypeError "<what> must be float32, got <dtype>". Non-contiguous input is copied. */
PyArrayObject *glue_f32(PyObject *obj, const char *what);
/* Same for token ids / labels: int32 or int64 in, contiguous int64 out. */
PyArrayObject *glue_ids(PyObject *obj, const char *what);
/* New zeroed float32 array. */
PyArrayObject *glue_zeros(int ndim, const npy_intp *dims);
/* New float32 array left uninitialised, for outputs written in full. */
PyArrayObject *glue_empty(int ndim, const npy_intp *dims);
/* "(2, 3)" for messages */
void glue_shape_str(char *buf, size_t n, PyArrayObject *a);
/* Raise ValueError unless a has exactly ndim dims (ndim < 0: at least 1). */
int glue_check_ndim(PyArrayObject *a, int ndim, const char *what);
/* Raise ValueError unless a and b have the same shape. */
int glue_check_same_shape(PyArrayObject *a, PyArrayObject *b, const char *what_a,
                          const char *what_b);
/* Raise IndexError unless every id is in [0, limit). */
int glue_check_ids_range(PyArrayObject *ids, int64_t limit, const char *what);
/* Rows of a (..., C) array: product of all but the last dim */
static inline int64_t glue_rows(PyArrayObject *a) {
    int64_t n = 1;
    for (int i = 0; i < PyArray_NDIM(a) - 1; i++) n *= PyArray_DIM(a, i);
    return n;
}
static inline int64_t glue_last(PyArrayObject *a) {
    return PyArray_NDIM(a) ? PyArray_DIM(a, PyArray_NDIM(a) - 1) : 1;
}
static inline float *glue_fp(PyArrayObject *a) { return (float *)PyArray_DATA(a); }
static inline int64_t *glue_ip(PyArrayObject *a) { return (int64_t *)PyArray_DATA(a); }

/* ValueError "<prefix> <value>" (PyErr_Format has no %g) */
void glue_value_error_float(const char *prefix, double value);
/* Sizes passed to the engine as int must fit. */
int glue_check_int_range(int64_t v, const char *what);

extern PyTypeObject PcTensorType;
typedef struct {
    PyObject_HEAD
    pc_tensor *t;
    PyObject *keepalive; /* the ndarray whose memory a borrowed tensor uses */
} PcTensorObject;
/* Wrap an engine tensor (takes a new engine reference). */
PyObject *glue_wrap_tensor(pc_tensor *t);
/* The engine tensor behind a PcTensorObject, or NULL with TypeError. */
pc_tensor *glue_tensor_of(PyObject *obj, const char *what);

extern PyMethodDef glue_functional_methods[];
/* The engine lock. Threads may share a model: a forward on one while another runs a
 * backward, swaps an adapter or drops a gradient would free or resize memory in use. So every
 * call that reads or replaces engine-held state (an encoder's tensors and activations, a
 * tensor's gradient) runs between glue_engine_lock() and glue_engine_unlock(), with no Python
 * code in between (convert arguments before, build results and raise after), so a thread
 * never waits for the lock while holding it. Locking is called with the GIL held and waits
 * with the GIL released. */
int glue_engine_lock_init(void);
void glue_engine_lock(void);
void glue_engine_unlock(void);
/* Engine compute on converted arguments: under the engine lock, without the GIL. Every
 * call into the engine's kernels goes through these, so when peftcore's fork hook holds the
 * lock no thread is inside the engine or BLIS (whose own mutexes a child could not undo). */
#define GLUE_COMPUTE_BEGIN glue_engine_lock(); Py_BEGIN_ALLOW_THREADS
#define GLUE_COMPUTE_END Py_END_ALLOW_THREADS glue_engine_unlock();

extern PyMethodDef glue_optim_methods[];
int glue_register_models(PyObject *module);

#endif
