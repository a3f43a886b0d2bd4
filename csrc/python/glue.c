/* Argument conversion and checking shared by the glue. */
#include "glue.h"

#include <stdio.h>

static const char *dtype_name(PyObject *obj) {
    if (PyArray_Check(obj)) return PyArray_DESCR((PyArrayObject *)obj)->typeobj->tp_name;
    return Py_TYPE(obj)->tp_name;
}

PyArrayObject *glue_f32(PyObject *obj, const char *what) {
    if (!obj || obj == Py_None) {
        PyErr_Format(PyExc_TypeError, "%s must be a float32 array, got None", what);
        return NULL;
    }
    PyObject *arr = PyArray_FromAny(obj, NULL, 0, 0, 0, NULL);
    if (!arr) return NULL;
    if (PyArray_TYPE((PyArrayObject *)arr) != NPY_FLOAT32) {
        PyErr_Format(PyExc_TypeError, "%s must be float32, got %s", what, dtype_name(arr));
        Py_DECREF(arr);
        return NULL;
    }
    PyObject *c = PyArray_FromAny(arr, PyArray_DescrFromType(NPY_FLOAT32), 0, 0,
                                  NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED, NULL);
    Py_DECREF(arr);
    return (PyArrayObject *)c;
}

PyArrayObject *glue_ids(PyObject *obj, const char *what) {
    if (!obj || obj == Py_None) {
        PyErr_Format(PyExc_TypeError, "%s must be an int32 or int64 array, got None", what);
        return NULL;
    }
    PyObject *arr = PyArray_FromAny(obj, NULL, 0, 0, 0, NULL);
    if (!arr) return NULL;
    int t = PyArray_TYPE((PyArrayObject *)arr);
    bool is_int = PyArray_ISINTEGER((PyArrayObject *)arr) && t != NPY_UINT64 && t != NPY_ULONGLONG;
    if (!is_int) {
        PyErr_Format(PyExc_TypeError, "%s must be int32 or int64, got %s", what,
                     dtype_name(arr));
        Py_DECREF(arr);
        return NULL;
    }
    PyObject *c = PyArray_FromAny(arr, PyArray_DescrFromType(NPY_INT64), 0, 0,
                                  NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | NPY_ARRAY_FORCECAST,
                                  NULL);
    Py_DECREF(arr);
    return (PyArrayObject *)c;
}

PyArrayObject *glue_zeros(int ndim, const npy_intp *dims) {
    return (PyArrayObject *)PyArray_ZEROS(ndim, (npy_intp *)dims, NPY_FLOAT32, 0);
}

PyArrayObject *glue_empty(int ndim, const npy_intp *dims) {
    return (PyArrayObject *)PyArray_EMPTY(ndim, (npy_intp *)dims, NPY_FLOAT32, 0);
}

void glue_shape_str(char *buf, size_t n, PyArrayObject *a) {
    size_t used = (size_t)snprintf(buf, n, "(");
    for (int i = 0; i < PyArray_NDIM(a) && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, i ? ", %ld" : "%ld",
                                 (long)PyArray_DIM(a, i));
    if (PyArray_NDIM(a) == 1 && used < n) used += (size_t)snprintf(buf + used, n - used, ",");
    if (used < n) snprintf(buf + used, n - used, ")");
}

int glue_check_ndim(PyArrayObject *a, int ndim, const char *what) {
    int got = PyArray_NDIM(a);
    if ((ndim >= 0 && got != ndim) || (ndim < 0 && got < 1)) {
        char s[128];
        glue_shape_str(s, sizeof s, a);
        if (ndim >= 0)
            PyErr_Format(PyExc_ValueError, "%s must have %d dimension(s), got shape %s", what,
                         ndim, s);
        else
            PyErr_Format(PyExc_ValueError, "%s must have at least 1 dimension, got shape %s",
                         what, s);
        return -1;
    }
    return 0;
}

int glue_check_same_shape(PyArrayObject *a, PyArrayObject *b, const char *what_a,
                          const char *what_b) {
    if (PyArray_NDIM(a) == PyArray_NDIM(b) &&
        PyArray_CompareLists(PyArray_DIMS(a), PyArray_DIMS(b), PyArray_NDIM(a)))
        return 0;
    char sa[128], sb[128];
    glue_shape_str(sa, sizeof sa, a);
    glue_shape_str(sb, sizeof sb, b);
    PyErr_Format(PyExc_ValueError, "%s must have the shape of %s %s, got %s", what_b, what_a,
                 sa, sb);
    return -1;
}

int glue_check_ids_range(PyArrayObject *ids, int64_t limit, const char *what) {
    const int64_t *p = glue_ip(ids);
    npy_intp n = PyArray_SIZE(ids);
    for (npy_intp i = 0; i < n; i++) {
        if (p[i] < 0 || p[i] >= limit) {
            PyErr_Format(PyExc_IndexError, "%s: id %lld at flat position %ld is out of range [0, %lld)",
                         what, (long long)p[i], (long)i, (long long)limit);
            return -1;
        }
    }
    return 0;
}

int glue_check_int_range(int64_t v, const char *what) {
    if (v > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "%s is %lld, larger than the engine's limit %d", what,
                     (long long)v, INT32_MAX);
        return -1;
    }
    return 0;
}

void glue_value_error_float(const char *prefix, double value) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s %g", prefix, value);
    PyErr_SetString(PyExc_ValueError, buf);
}

static PyThread_type_lock engine_lock;

int glue_engine_lock_init(void) {
    engine_lock = PyThread_allocate_lock();
    if (!engine_lock) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

void glue_engine_lock(void) {
    if (PyThread_acquire_lock(engine_lock, NOWAIT_LOCK)) return;
    Py_BEGIN_ALLOW_THREADS
    PyThread_acquire_lock(engine_lock, WAIT_LOCK);
    Py_END_ALLOW_THREADS
}

void glue_engine_unlock(void) { PyThread_release_lock(engine_lock); }
