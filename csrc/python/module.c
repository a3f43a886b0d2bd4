/* peftcore._C: module set-up and runtime information. */
#define PEFTCORE_GLUE_MAIN
#include "glue.h"

static const char *gemm_description(void) {
    const char *path = pc_gemm_path();
    return strcmp(path, "packed") == 0     ? "peftcore packing + BLIS micro-kernel"
           : strcmp(path, "packed-a") == 0 ? "peftcore packing of both operands + BLIS micro-kernel"
           : strcmp(path, "blis-sup") == 0 ? "BLIS (small-matrix path on)"
                                           : "BLIS";
}

static PyObject *backend_info(PyObject *self, PyObject *Py_UNUSED(ignored)) {
    (void)self;
    return Py_BuildValue("{s:s,s:s,s:i,s:s,s:O,s:s,s:s,s:s,s:s,s:s,s:s}", "blis_arch",
                         pc_blis_arch(), "blis_version", pc_blis_version(), "num_threads",
                         pc_get_num_threads(), "simd", pc_cpu_simd(), "blis_arch_from_env",
                         pc_blis_arch_from_env() ? Py_True : Py_False, "blis_arch_note",
                         pc_blis_arch_note(), "fork_note", pc_fork_note(), "gemm",
                         gemm_description(),
                         "isa", pc_isa_name(pc_isa_active()), "isa_available",
                         pc_isa_available(), "isa_note", pc_isa_note());
}

static PyObject *set_num_threads(PyObject *self, PyObject *arg) {
    (void)self;
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 1 || n > 1024) {
        PyErr_Format(PyExc_ValueError, "set_num_threads expects an int in [1, 1024], got %ld", n);
        return NULL;
    }
    glue_engine_lock(); /* not while another thread's forward has sized its work */
    int used = pc_set_num_threads((int)n);
    glue_engine_unlock();
    return PyLong_FromLong(used);
}

/* os.register_at_fork hooks. Before a fork the forking thread takes the engine lock, so no
 * other thread is inside the engine or BLIS (holding their mutexes) at the fork; the parent
 * then releases it and the child, which has only the forking thread, starts with a new one. */
static PyObject *before_fork(PyObject *self, PyObject *Py_UNUSED(ignored)) {
    (void)self;
    glue_engine_lock();
    Py_RETURN_NONE;
}

static PyObject *after_fork_in_parent(PyObject *self, PyObject *Py_UNUSED(ignored)) {
    (void)self;
    glue_engine_unlock();
    Py_RETURN_NONE;
}

static PyObject *after_fork_in_child(PyObject *self, PyObject *Py_UNUSED(ignored)) {
    (void)self;
    if (glue_engine_lock_init() < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *set_gemm_path(PyObject *self, PyObject *arg) {
    (void)self;
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name) return NULL;
    glue_engine_lock(); /* not while a product runs */
    const char *before = pc_gemm_path();
    bool ok = pc_set_gemm_path(name);
    glue_engine_unlock();
    if (!ok) {
        PyErr_Format(PyExc_ValueError, "_set_gemm_path: expected 'packed' or 'packed-a' (where "
                     "BLIS's kernel set allows them), 'blis' or 'blis-sup', got '%s'", name);
        return NULL;
    }
    return PyUnicode_FromString(before);
}

static PyObject *get_num_threads(PyObject *self, PyObject *Py_UNUSED(ignored)) {
    (void)self;
    return PyLong_FromLong(pc_get_num_threads());
}

static PyMethodDef runtime_methods[] = {
    {"backend_info", backend_info, METH_NOARGS, "BLIS kernel set, version, threads, SIMD."},
    {"set_num_threads", set_num_threads, METH_O, "Threads for BLIS and the engine's kernels."},
    {"get_num_threads", get_num_threads, METH_NOARGS, "Current thread count."},
    {"_set_gemm_path", set_gemm_path, METH_O,
     "Who computes products: 'packed', 'packed-a', 'blis' or 'blis-sup' (benchmarks); returns the previous."},
    {"_before_fork", before_fork, METH_NOARGS, "Take the engine lock for a fork."},
    {"_after_fork_in_parent", after_fork_in_parent, METH_NOARGS, "Release it after the fork."},
    {"_after_fork_in_child", after_fork_in_child, METH_NOARGS, "A new engine lock in the child."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "peftcore._C",
                                        "peftcore's C engine.", -1, NULL, NULL, NULL, NULL, NULL};

static int add_functions(PyObject *module, PyMethodDef *defs) {
    for (PyMethodDef *d = defs; d->ml_name; d++) {
        PyObject *f = PyCFunction_NewEx(d, NULL, PyModule_GetNameObject(module));
        if (!f || PyModule_AddObject(module, d->ml_name, f) < 0) {
            Py_XDECREF(f);
            return -1;
        }
    }
    return 0;
}

PyMODINIT_FUNC PyInit__C(void) {
    import_array();
    if (glue_engine_lock_init() < 0) return NULL;
    pc_runtime_init();
    PyObject *m = PyModule_Create(&module_def);
    if (!m) return NULL;
    if (add_functions(m, runtime_methods) < 0 || add_functions(m, glue_functional_methods) < 0 ||
        add_functions(m, glue_optim_methods) < 0)
        goto fail;
    if (glue_register_models(m) < 0) goto fail;
    if (PyType_Ready(&PcTensorType) < 0) goto fail;
    Py_INCREF(&PcTensorType);
    if (PyModule_AddObject(m, "Tensor", (PyObject *)&PcTensorType) < 0) {
        Py_DECREF(&PcTensorType);
        goto fail;
    }
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
