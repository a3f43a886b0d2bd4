/* peftcore._C optimizer entry points over Tensor objects. */
#include "glue.h"
#include "../optim/adamw.h"

static int same_size(pc_tensor *a, pc_tensor *b, const char *what) {
    if (a->numel == b->numel && a->dtype == PC_FLOAT32 && b->dtype == PC_FLOAT32) return 0;
    PyErr_Format(PyExc_ValueError, "adamw_step: %s must be float32 with %lld elements",
                 what, (long long)a->numel);
    return -1;
}

/* adamw_step(param, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay):
 * uses param.grad; does nothing when the parameter has no gradient */
static PyObject *adamw_step(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *po, *mo, *vo;
    long long t;
    float lr, b1, b2, eps, wd;
    if (!PyArg_ParseTuple(args, "OOOLfffff", &po, &mo, &vo, &t, &lr, &b1, &b2, &eps, &wd))
        return NULL;
    pc_tensor *p = glue_tensor_of(po, "param"), *m = p ? glue_tensor_of(mo, "exp_avg") : NULL,
              *v = m ? glue_tensor_of(vo, "exp_avg_sq") : NULL;
    if (!v) return NULL;
    if (same_size(p, m, "exp_avg") < 0 || same_size(p, v, "exp_avg_sq") < 0) return NULL;
    if (p->readonly) {
        PyErr_SetString(PyExc_ValueError, "adamw_step: param views read-only memory (a "
                        "read-only memmap or bytes); the optimizer cannot update it");
        return NULL;
    }
    if (t < 1) {
        PyErr_Format(PyExc_ValueError, "adamw_step: step must be >= 1, got %lld", t);
        return NULL;
    }
    GLUE_COMPUTE_BEGIN
    if (p->grad)
        pc_adamw_step(pc_f32(p), pc_f32(p->grad), pc_f32(m), pc_f32(v), p->numel, t, lr, b1,
                      b2, eps, wd);
    GLUE_COMPUTE_END
    Py_RETURN_NONE;
}

/* TypeError unless every item of the (PySequence_Fast) sequence is a Tensor */
static int check_tensors(PyObject *seq) {
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++)
        if (!glue_tensor_of(PySequence_Fast_GET_ITEM(seq, i), "parameter")) return -1;
    return 0;
}

/* grad_sum_squares([Tensor]) -> Σ over their gradients of g² (tensors without grad skipped) */
static PyObject *grad_sum_squares(PyObject *self, PyObject *arg) {
    (void)self;
    PyObject *seq = PySequence_Fast(arg, "grad_sum_squares expects a sequence of Tensors");
    if (!seq) return NULL;
    if (check_tensors(seq) < 0) { Py_DECREF(seq); return NULL; }
    double total = 0.0;
    glue_engine_lock();
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        pc_tensor *t = ((PcTensorObject *)PySequence_Fast_GET_ITEM(seq, i))->t;
        if (t->grad) total += pc_sum_squares(pc_f32(t->grad), t->grad->numel);
    }
    glue_engine_unlock();
    Py_DECREF(seq);
    return PyFloat_FromDouble(total);
}

/* scale_grads([Tensor], factor) */
static PyObject *scale_grads(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *list;
    float factor;
    if (!PyArg_ParseTuple(args, "Of", &list, &factor)) return NULL;
    PyObject *seq = PySequence_Fast(list, "scale_grads expects a sequence of Tensors");
    if (!seq) return NULL;
    if (check_tensors(seq) < 0) { Py_DECREF(seq); return NULL; }
    glue_engine_lock();
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        pc_tensor *t = ((PcTensorObject *)PySequence_Fast_GET_ITEM(seq, i))->t;
        if (t->grad) pc_scale(pc_f32(t->grad), t->grad->numel, factor);
    }
    glue_engine_unlock();
    Py_DECREF(seq);
    Py_RETURN_NONE;
}

PyMethodDef glue_optim_methods[] = {
    {"adamw_step", adamw_step, METH_VARARGS,
     "adamw_step(param, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay)"},
    {"grad_sum_squares", grad_sum_squares, METH_O, "Σ g² over the tensors' gradients"},
    {"scale_grads", scale_grads, METH_VARARGS, "multiply the tensors' gradients by a factor"},
    {NULL, NULL, 0, NULL}};
