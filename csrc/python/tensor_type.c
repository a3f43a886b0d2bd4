/* peftcore._C.Tensor: an engine tensor seen from Python, sharing memory with NumPy. */
#include "glue.h"

static int npy_type_of(pc_dtype d) {
    switch (d) {
    case PC_FLOAT32: return NPY_FLOAT32;
    case PC_INT32: return NPY_INT32;
    case PC_INT64: return NPY_INT64;
    }
    return NPY_FLOAT32;
}

static const char *dtype_str(pc_dtype d) {
    switch (d) {
    case PC_FLOAT32: return "float32";
    case PC_INT32: return "int32";
    case PC_INT64: return "int64";
    }
    return "?";
}

PyObject *glue_wrap_tensor(pc_tensor *t) {
    PcTensorObject *self = PyObject_New(PcTensorObject, &PcTensorType);
    if (!self) return NULL;
    pc_tensor_retain(t);
    self->t = t;
    self->keepalive = NULL;
    return (PyObject *)self;
}

pc_tensor *glue_tensor_of(PyObject *obj, const char *what) {
    if (!PyObject_TypeCheck(obj, &PcTensorType)) {
        PyErr_Format(PyExc_TypeError, "%s must be a peftcore Tensor, got %s", what,
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    return ((PcTensorObject *)obj)->t;
}

/* Tensor(ndarray): wrap a C-contiguous float32/int32/int64 array without copying. */
static PyObject *tensor_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"array", NULL};
    PyObject *obj;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:Tensor", kwlist, &obj)) return NULL;
    if (PyObject_TypeCheck(obj, &PcTensorType)) {
        PcTensorObject *src = (PcTensorObject *)obj;
        PcTensorObject *self = (PcTensorObject *)type->tp_alloc(type, 0);
        if (!self) return NULL;
        pc_tensor_retain(src->t);
        self->t = src->t;
        Py_XINCREF(src->keepalive);
        self->keepalive = src->keepalive;
        return (PyObject *)self;
    }
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "Tensor expects a numpy.ndarray, got %s",
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *arr = (PyArrayObject *)obj;
    pc_dtype dtype;
    switch (PyArray_TYPE(arr)) {
    case NPY_FLOAT32: dtype = PC_FLOAT32; break;
    case NPY_INT32: dtype = PC_INT32; break;
    case NPY_INT64: dtype = PC_INT64; break;
    default:
        PyErr_Format(PyExc_TypeError, "Tensor expects a float32, int32 or int64 array, got %s",
                     PyArray_DESCR(arr)->typeobj->tp_name);
        return NULL;
    }
    if (!PyArray_IS_C_CONTIGUOUS(arr) || !PyArray_ISALIGNED(arr)) {
        PyErr_SetString(PyExc_ValueError,
                        "Tensor expects a C-contiguous, aligned array, got a non-contiguous "
                        "one (use numpy.ascontiguousarray first)");
        return NULL;
    }
    if (!PyArray_ISNOTSWAPPED(arr)) {
        PyErr_Format(PyExc_ValueError,
                     "Tensor expects native byte order, got a byte-swapped %s array (use "
                     "array.astype(array.dtype.newbyteorder('=')) first)", dtype_str(dtype));
        return NULL;
    }
    if (PyArray_NDIM(arr) > PC_MAX_DIMS) {
        PyErr_Format(PyExc_ValueError, "Tensor supports at most %d dimensions, got %d",
                     PC_MAX_DIMS, PyArray_NDIM(arr));
        return NULL;
    }
    int64_t shape[PC_MAX_DIMS];
    for (int i = 0; i < PyArray_NDIM(arr); i++) shape[i] = PyArray_DIM(arr, i);
    pc_tensor *t = pc_tensor_borrow(PyArray_DATA(arr), dtype, PyArray_NDIM(arr), shape);
    if (!t) {
        PyErr_Format(PyExc_MemoryError, "Tensor: out of memory for a %zu-byte tensor header",
                     sizeof(pc_tensor));
        return NULL;
    }
    /* read-only memory (a memmap opened with mode='r', a bytes object) stays read-only */
    t->readonly = !PyArray_ISWRITEABLE(arr);
    PcTensorObject *self = (PcTensorObject *)type->tp_alloc(type, 0);
    if (!self) {
        pc_tensor_release(t);
        return NULL;
    }
    self->t = t;
    Py_INCREF(obj);
    self->keepalive = obj;
    return (PyObject *)self;
}

static void tensor_dealloc(PcTensorObject *self) {
    pc_tensor_release(self->t);
    Py_XDECREF(self->keepalive);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* An ndarray viewing t's memory whose base is `owner` (keeps the memory alive). */
static PyObject *view_of(pc_tensor *t, PyObject *owner) {
    npy_intp dims[PC_MAX_DIMS];
    for (int i = 0; i < t->ndim; i++) dims[i] = (npy_intp)t->shape[i];
    PyObject *arr = PyArray_New(&PyArray_Type, t->ndim, dims, npy_type_of(t->dtype), NULL,
                                t->data, 0, t->readonly ? NPY_ARRAY_CARRAY_RO : NPY_ARRAY_CARRAY,
                                NULL);
    if (!arr) return NULL;
    Py_INCREF(owner);
    if (PyArray_SetBaseObject((PyArrayObject *)arr, owner) < 0) {
        Py_DECREF(arr);
        return NULL;
    }
    return arr;
}

static PyObject *tensor_array(PcTensorObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"dtype", "copy", NULL};
    PyObject *dtype = Py_None, *copy = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OO:__array__", kwlist, &dtype, &copy))
        return NULL;
    PyObject *view = view_of(self->t, (PyObject *)self);
    if (!view) return NULL;
    if (dtype == Py_None && (copy == Py_None || !PyObject_IsTrue(copy))) return view;
    PyArray_Descr *descr = NULL;
    if (dtype != Py_None && !PyArray_DescrConverter(dtype, &descr)) {
        Py_DECREF(view);
        return NULL;
    }
    PyObject *out = PyArray_FromAny(view, descr, 0, 0, NPY_ARRAY_ENSURECOPY, NULL);
    Py_DECREF(view);
    return out;
}

static PyObject *tensor_numpy(PcTensorObject *self, PyObject *Py_UNUSED(ignored)) {
    return view_of(self->t, (PyObject *)self);
}

static PyObject *tensor_zeros(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"shape", "dtype", NULL};
    PyObject *shape_obj;
    const char *dtype_name = "float32";
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|s:zeros", kwlist, &shape_obj, &dtype_name))
        return NULL;
    pc_dtype dtype;
    if (strcmp(dtype_name, "float32") == 0) dtype = PC_FLOAT32;
    else if (strcmp(dtype_name, "int32") == 0) dtype = PC_INT32;
    else if (strcmp(dtype_name, "int64") == 0) dtype = PC_INT64;
    else {
        PyErr_Format(PyExc_TypeError, "dtype must be 'float32', 'int32' or 'int64', got '%s'",
                     dtype_name);
        return NULL;
    }
    PyObject *seq = PySequence_Fast(shape_obj, "shape must be a sequence of ints");
    if (!seq) return NULL;
    Py_ssize_t nd = PySequence_Fast_GET_SIZE(seq);
    if (nd > PC_MAX_DIMS) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "at most %d dimensions, got %zd", PC_MAX_DIMS, nd);
        return NULL;
    }
    int64_t shape[PC_MAX_DIMS];
    for (Py_ssize_t i = 0; i < nd; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (PyBool_Check(item) || !PyIndex_Check(item)) {
            PyErr_Format(PyExc_TypeError, "Tensor.zeros: shape[%zd] must be an int, got %s", i,
                         Py_TYPE(item)->tp_name);
            Py_DECREF(seq);
            return NULL;
        }
        PyObject *index = PyNumber_Index(item);
        long long v = index ? PyLong_AsLongLong(index) : -1;
        Py_XDECREF(index);
        if (v == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "Tensor.zeros: shape[%zd] must be in [0, 2**63), "
                         "got %R", i, item);
            Py_DECREF(seq);
            return NULL;
        }
        if (v < 0) {
            Py_DECREF(seq);
            PyErr_Format(PyExc_ValueError, "Tensor.zeros: shape entries must be >= 0, got %lld", v);
            return NULL;
        }
        shape[i] = v;
    }
    Py_DECREF(seq);
    int64_t numel = pc_shape_numel((int)nd, shape, pc_dtype_size(dtype));
    if (numel < 0 || (uint64_t)numel * pc_dtype_size(dtype) > (uint64_t)PY_SSIZE_T_MAX) {
        PyErr_Format(PyExc_ValueError, "Tensor.zeros: shape %R has more elements (or bytes) "
                     "than fit in 63 bits", shape_obj);
        return NULL;
    }
    pc_tensor *t = pc_tensor_new(dtype, (int)nd, shape);
    if (!t) {
        PyErr_Format(PyExc_MemoryError, "Tensor.zeros: cannot allocate %lld bytes for %lld "
                     "%s elements", (long long)numel * (long long)pc_dtype_size(dtype),
                     (long long)numel, dtype_str(dtype));
        return NULL;
    }
    PcTensorObject *self = (PcTensorObject *)type->tp_alloc(type, 0);
    if (!self) { pc_tensor_release(t); return NULL; }
    self->t = t;
    self->keepalive = NULL;
    return (PyObject *)self;
}

static PyObject *tensor_get_shape(PcTensorObject *self, void *c) {
    (void)c;
    PyObject *tup = PyTuple_New(self->t->ndim);
    if (!tup) return NULL;
    for (int i = 0; i < self->t->ndim; i++)
        PyTuple_SET_ITEM(tup, i, PyLong_FromLongLong(self->t->shape[i]));
    return tup;
}
static PyObject *tensor_get_dtype(PcTensorObject *self, void *c) {
    (void)c;
    return PyUnicode_FromString(dtype_str(self->t->dtype));
}
static PyObject *tensor_get_ndim(PcTensorObject *self, void *c) {
    (void)c;
    return PyLong_FromLong(self->t->ndim);
}
static PyObject *tensor_get_size(PcTensorObject *self, void *c) {
    (void)c;
    return PyLong_FromLongLong(self->t->numel);
}
static PyObject *tensor_get_requires_grad(PcTensorObject *self, void *c) {
    (void)c;
    return PyBool_FromLong(self->t->requires_grad);
}
static int tensor_set_requires_grad(PcTensorObject *self, PyObject *v, void *c) {
    (void)c;
    if (!v || !PyBool_Check(v)) {
        PyErr_SetString(PyExc_TypeError, "requires_grad must be True or False");
        return -1;
    }
    if (v == Py_True && self->t->dtype != PC_FLOAT32) {
        PyErr_Format(PyExc_TypeError, "only float32 tensors can require gradients, this is %s",
                     dtype_str(self->t->dtype));
        return -1;
    }
    if (v == Py_True && self->t->readonly) {
        PyErr_SetString(PyExc_ValueError, "this Tensor views read-only memory (a read-only "
                        "memmap or bytes): it cannot require gradients, since training would "
                        "write it; copy it first (numpy.array(arr))");
        return -1;
    }
    glue_engine_lock();
    self->t->requires_grad = v == Py_True;
    glue_engine_unlock();
    return 0;
}
/* .grad: a NumPy view of the gradient buffer, or None when there is none yet */
static PyObject *tensor_get_grad(PcTensorObject *self, void *c) {
    (void)c;
    if (!self->t->grad) Py_RETURN_NONE;
    PyObject *owner = glue_wrap_tensor(self->t->grad);
    if (!owner) return NULL;
    PyObject *v = view_of(self->t->grad, owner);
    Py_DECREF(owner);
    return v;
}
/* grad = None drops the buffer; grad = array copies values in (shape must match) */
static int tensor_set_grad(PcTensorObject *self, PyObject *v, void *c) {
    (void)c;
    if (!v || v == Py_None) {
        glue_engine_lock();
        pc_tensor_release(self->t->grad);
        self->t->grad = NULL;
        glue_engine_unlock();
        return 0;
    }
    PyArrayObject *arr = glue_f32(v, "grad");
    if (!arr) return -1;
    bool same = PyArray_SIZE(arr) == self->t->numel && PyArray_NDIM(arr) == self->t->ndim;
    for (int i = 0; same && i < self->t->ndim; i++) same = PyArray_DIM(arr, i) == self->t->shape[i];
    if (!same) {
        Py_DECREF(arr);
        PyErr_SetString(PyExc_ValueError, "grad must have the tensor's shape");
        return -1;
    }
    glue_engine_lock();
    pc_tensor *g = pc_tensor_grad(self->t);
    if (g) memcpy(g->data, PyArray_DATA(arr), sizeof(float) * (size_t)g->numel);
    glue_engine_unlock();
    Py_DECREF(arr);
    if (!g) {
        PyErr_Format(PyExc_MemoryError, "grad: cannot allocate %lld bytes for the gradient",
                     (long long)self->t->numel * 4);
        return -1;
    }
    return 0;
}

static PyObject *tensor_zero_grad(PcTensorObject *self, PyObject *Py_UNUSED(ignored)) {
    glue_engine_lock();
    if (self->t->grad) memset(self->t->grad->data, 0, sizeof(float) * (size_t)self->t->numel);
    glue_engine_unlock();
    Py_RETURN_NONE;
}

/* the engine data pointer, for identity checks in tests ("no copy") */
static PyObject *tensor_get_data_ptr(PcTensorObject *self, void *c) {
    (void)c;
    return PyLong_FromVoidPtr(self->t->data);
}

static PyObject *tensor_repr(PcTensorObject *self) {
    PyObject *shape = tensor_get_shape(self, NULL);
    if (!shape) return NULL;
    PyObject *r = PyUnicode_FromFormat("Tensor(shape=%R, dtype=%s, requires_grad=%s)", shape,
                                       dtype_str(self->t->dtype),
                                       self->t->requires_grad ? "True" : "False");
    Py_DECREF(shape);
    return r;
}

static int tensor_getbuffer(PcTensorObject *self, Py_buffer *view, int flags) {
    pc_tensor *t = self->t;
    if ((flags & PyBUF_WRITABLE) && t->readonly) {
        view->obj = NULL;
        PyErr_SetString(PyExc_BufferError, "this Tensor views read-only memory");
        return -1;
    }
    view->buf = t->data;
    view->obj = (PyObject *)self;
    Py_INCREF(self);
    view->itemsize = (Py_ssize_t)pc_dtype_size(t->dtype);
    view->len = (Py_ssize_t)t->numel * view->itemsize;
    view->readonly = t->readonly;
    view->format = t->dtype == PC_FLOAT32 ? "f" : t->dtype == PC_INT32 ? "i" : "q";
    view->ndim = t->ndim;
    Py_ssize_t *shape_strides = PyMem_Malloc(sizeof(Py_ssize_t) * 2 * (t->ndim ? t->ndim : 1));
    if (!shape_strides) {
        Py_DECREF(self);
        view->obj = NULL;
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t stride = view->itemsize;
    for (int i = t->ndim - 1; i >= 0; i--) {
        shape_strides[i] = (Py_ssize_t)t->shape[i];
        shape_strides[t->ndim + i] = stride;
        stride *= (Py_ssize_t)t->shape[i];
    }
    view->shape = shape_strides;
    view->strides = shape_strides + t->ndim;
    view->suboffsets = NULL;
    view->internal = shape_strides;
    return 0;
}

static void tensor_releasebuffer(PcTensorObject *self, Py_buffer *view) {
    (void)self;
    PyMem_Free(view->internal);
}

static PyBufferProcs tensor_as_buffer = {(getbufferproc)tensor_getbuffer,
                                         (releasebufferproc)tensor_releasebuffer};

static PyMethodDef tensor_methods[] = {
    {"__array__", (PyCFunction)(void (*)(void))tensor_array, METH_VARARGS | METH_KEYWORDS,
     "A NumPy view of the tensor's memory (no copy)."},
    {"numpy", (PyCFunction)tensor_numpy, METH_NOARGS, "A NumPy view of the tensor's memory."},
    {"zeros", (PyCFunction)(void (*)(void))tensor_zeros,
     METH_VARARGS | METH_KEYWORDS | METH_CLASS, "Tensor.zeros(shape, dtype='float32')"},
    {"zero_grad", (PyCFunction)tensor_zero_grad, METH_NOARGS, "Set the gradient to zero."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef tensor_getset[] = {
    {"shape", (getter)tensor_get_shape, NULL, "shape tuple", NULL},
    {"dtype", (getter)tensor_get_dtype, NULL, "'float32', 'int32' or 'int64'", NULL},
    {"ndim", (getter)tensor_get_ndim, NULL, "number of dimensions", NULL},
    {"size", (getter)tensor_get_size, NULL, "number of elements", NULL},
    {"requires_grad", (getter)tensor_get_requires_grad, (setter)tensor_set_requires_grad,
     "whether models and optimizers compute and apply a gradient", NULL},
    {"grad", (getter)tensor_get_grad, (setter)tensor_set_grad, "gradient (NumPy view) or None",
     NULL},
    {"data_ptr", (getter)tensor_get_data_ptr, NULL, "address of the data", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

PyTypeObject PcTensorType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "peftcore._C.Tensor",
    .tp_basicsize = sizeof(PcTensorObject),
    .tp_dealloc = (destructor)tensor_dealloc,
    .tp_repr = (reprfunc)tensor_repr,
    .tp_as_buffer = &tensor_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Tensor(array): an engine tensor sharing memory with a C-contiguous float32, "
              "int32 or int64 NumPy array.",
    .tp_methods = tensor_methods,
    .tp_getset = tensor_getset,
    .tp_new = tensor_new,
};
