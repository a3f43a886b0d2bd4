/* peftcore._C functional ops: check arguments, allocate outputs, call the engine with the
 * GIL released. Each returns new NumPy arrays; backward functions return zero-initialised
 * gradients that the engine accumulates into. */
#include <string.h>

#include "glue.h"

#define CHECK(cond) do { if (!(cond)) goto fail; } while (0)

static PyObject *f_linear_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo, *wo, *bo = Py_None, *result = NULL;
    PyArrayObject *x = NULL, *w = NULL, *b = NULL, *y = NULL;
    if (!PyArg_ParseTuple(args, "OO|O", &xo, &wo, &bo)) return NULL;
    CHECK(x = glue_f32(xo, "linear: input"));
    CHECK(w = glue_f32(wo, "linear: weight"));
    CHECK(glue_check_ndim(x, -1, "linear: input") == 0);
    CHECK(glue_check_ndim(w, 2, "linear: weight") == 0);
    int64_t N = glue_rows(x), IC = glue_last(x), OC = PyArray_DIM(w, 0);
    if (PyArray_DIM(w, 1) != IC) {
        PyErr_Format(PyExc_ValueError,
                     "linear: weight must be (out_features, %lld) to match the input's last "
                     "dimension, got (%lld, %lld)", (long long)IC, (long long)OC,
                     (long long)PyArray_DIM(w, 1));
        goto fail;
    }
    if (bo != Py_None) {
        CHECK(b = glue_f32(bo, "linear: bias"));
        if (PyArray_NDIM(b) != 1 || PyArray_DIM(b, 0) != OC) {
            char s[64];
            glue_shape_str(s, sizeof s, b);
            PyErr_Format(PyExc_ValueError, "linear: bias must be (%lld,), got %s",
                         (long long)OC, s);
            goto fail;
        }
    }
    CHECK(glue_check_int_range(N, "linear: rows") == 0 && glue_check_int_range(IC, "in") == 0 &&
          glue_check_int_range(OC, "out") == 0);
    npy_intp dims[NPY_MAXDIMS];
    for (int i = 0; i < PyArray_NDIM(x) - 1; i++) dims[i] = PyArray_DIM(x, i);
    dims[PyArray_NDIM(x) - 1] = (npy_intp)OC;
    CHECK(y = glue_zeros(PyArray_NDIM(x), dims));
    GLUE_COMPUTE_BEGIN
    pc_linear_forward(glue_fp(y), glue_fp(x), glue_fp(w), b ? glue_fp(b) : NULL, (int)N,
                      (int)IC, (int)OC);
    GLUE_COMPUTE_END
    result = (PyObject *)y;
    y = NULL;
fail:
    Py_XDECREF(x); Py_XDECREF(w); Py_XDECREF(b); Py_XDECREF(y);
    return result;
}

/* linear_backward(dy, x, w, need_weight_grad, need_bias_grad) -> (dx, dw|None, db|None) */
static PyObject *f_linear_backward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *dyo, *xo, *wo, *result = NULL;
    int need_dw = 0, need_db = 0;
    PyArrayObject *dy = NULL, *x = NULL, *w = NULL, *dx = NULL, *dw = NULL, *db = NULL;
    if (!PyArg_ParseTuple(args, "OOO|pp", &dyo, &xo, &wo, &need_dw, &need_db)) return NULL;
    CHECK(dy = glue_f32(dyo, "linear_backward: grad_output"));
    CHECK(x = glue_f32(xo, "linear_backward: input"));
    CHECK(w = glue_f32(wo, "linear_backward: weight"));
    CHECK(glue_check_ndim(x, -1, "linear_backward: input") == 0);
    CHECK(glue_check_ndim(w, 2, "linear_backward: weight") == 0);
    int64_t N = glue_rows(x), IC = glue_last(x), OC = PyArray_DIM(w, 0);
    if (PyArray_DIM(w, 1) != IC || glue_rows(dy) != N || glue_last(dy) != OC ||
        PyArray_NDIM(dy) != PyArray_NDIM(x)) {
        PyErr_Format(PyExc_ValueError,
                     "linear_backward: expected grad_output (..., %lld) with the input's "
                     "leading shape and weight (%lld, %lld)", (long long)OC, (long long)OC,
                     (long long)IC);
        goto fail;
    }
    CHECK(glue_check_int_range(N * (IC > OC ? IC : OC), "linear_backward: size") == 0);
    CHECK(dx = glue_zeros(PyArray_NDIM(x), PyArray_DIMS(x)));
    if (need_dw) CHECK(dw = glue_zeros(2, PyArray_DIMS(w)));
    npy_intp odims[1] = {(npy_intp)OC};
    if (need_db) CHECK(db = glue_zeros(1, odims));
    GLUE_COMPUTE_BEGIN
    pc_linear_backward(glue_fp(dx), dw ? glue_fp(dw) : NULL, db ? glue_fp(db) : NULL,
                       glue_fp(dy), glue_fp(x), glue_fp(w), (int)N, (int)IC, (int)OC);
    GLUE_COMPUTE_END
    result = Py_BuildValue("(OOO)", dx, dw ? (PyObject *)dw : Py_None,
                           db ? (PyObject *)db : Py_None);
fail:
    Py_XDECREF(dy); Py_XDECREF(x); Py_XDECREF(w);
    Py_XDECREF(dx); Py_XDECREF(dw); Py_XDECREF(db);
    return result;
}

static PyObject *f_embedding_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *io, *wo, *result = NULL;
    PyArrayObject *ids = NULL, *w = NULL, *y = NULL;
    if (!PyArg_ParseTuple(args, "OO", &io, &wo)) return NULL;
    CHECK(ids = glue_ids(io, "embedding: input"));
    CHECK(w = glue_f32(wo, "embedding: weight"));
    CHECK(glue_check_ndim(w, 2, "embedding: weight") == 0);
    if (PyArray_NDIM(ids) >= NPY_MAXDIMS) {
        PyErr_SetString(PyExc_ValueError, "embedding: input has too many dimensions");
        goto fail;
    }
    int64_t V = PyArray_DIM(w, 0), C = PyArray_DIM(w, 1), N = PyArray_SIZE(ids);
    CHECK(glue_check_ids_range(ids, V, "embedding") == 0);
    CHECK(glue_check_int_range(N, "embedding: ids") == 0 && glue_check_int_range(C, "dim") == 0);
    npy_intp dims[NPY_MAXDIMS];
    for (int i = 0; i < PyArray_NDIM(ids); i++) dims[i] = PyArray_DIM(ids, i);
    dims[PyArray_NDIM(ids)] = (npy_intp)C;
    CHECK(y = glue_zeros(PyArray_NDIM(ids) + 1, dims));
    GLUE_COMPUTE_BEGIN
    pc_embedding_forward(glue_fp(y), glue_ip(ids), glue_fp(w), (int)N, (int)C);
    GLUE_COMPUTE_END
    result = (PyObject *)y;
    y = NULL;
fail:
    Py_XDECREF(ids); Py_XDECREF(w); Py_XDECREF(y);
    return result;
}

/* embedding_backward(dy, ids, num_embeddings) -> dweight (V, C) */
static PyObject *f_embedding_backward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *dyo, *io, *result = NULL;
    long long V;
    PyArrayObject *dy = NULL, *ids = NULL, *dw = NULL;
    if (!PyArg_ParseTuple(args, "OOL", &dyo, &io, &V)) return NULL;
    CHECK(dy = glue_f32(dyo, "embedding_backward: grad_output"));
    CHECK(ids = glue_ids(io, "embedding_backward: input"));
    int64_t N = PyArray_SIZE(ids), C = glue_last(dy);
    if (V < 0 || PyArray_NDIM(dy) != PyArray_NDIM(ids) + 1 || glue_rows(dy) != N) {
        PyErr_SetString(PyExc_ValueError,
                        "embedding_backward: grad_output must be input.shape + (dim,) and "
                        "num_embeddings >= 0");
        goto fail;
    }
    CHECK(glue_check_ids_range(ids, V, "embedding_backward") == 0);
    npy_intp dims[2] = {(npy_intp)V, (npy_intp)C};
    CHECK(dw = glue_zeros(2, dims));
    GLUE_COMPUTE_BEGIN
    pc_embedding_backward(glue_fp(dw), glue_fp(dy), glue_ip(ids), (int)N, (int)C);
    GLUE_COMPUTE_END
    result = (PyObject *)dw;
    dw = NULL;
fail:
    Py_XDECREF(dy); Py_XDECREF(ids); Py_XDECREF(dw);
    return result;
}

/* weight and bias must be (C,) for an input (..., C) */
static int check_vector(PyArrayObject *v, int64_t C, const char *what) {
    if (PyArray_NDIM(v) == 1 && PyArray_DIM(v, 0) == C) return 0;
    char s[64];
    glue_shape_str(s, sizeof s, v);
    PyErr_Format(PyExc_ValueError, "%s must be (%lld,) to match the input's last dimension, got %s",
                 what, (long long)C, s);
    return -1;
}

/* LSTM shapes: x (B,T,IN), w_ih (4H,IN), w_hh (4H,H); 0 with B, T, IN, H set, or -1 raised */
static int lstm_dims(PyArrayObject *x, PyArrayObject *w_ih, PyArrayObject *w_hh, int64_t *B,
                     int64_t *T, int64_t *IN, int64_t *H) {
    if (PyArray_NDIM(x) != 3 || PyArray_NDIM(w_ih) != 2 || PyArray_NDIM(w_hh) != 2) {
        PyErr_SetString(PyExc_ValueError, "lstm: input must be (batch, steps, input_size), "
                        "weight_ih (4*hidden, input_size) and weight_hh (4*hidden, hidden)");
        return -1;
    }
    *B = PyArray_DIM(x, 0), *T = PyArray_DIM(x, 1), *IN = PyArray_DIM(x, 2);
    *H = PyArray_DIM(w_hh, 1);
    if (*B < 1 || *T < 1 || *H < 1 || PyArray_DIM(w_hh, 0) != 4 * *H ||
        PyArray_DIM(w_ih, 0) != 4 * *H || PyArray_DIM(w_ih, 1) != *IN) {
        PyErr_Format(PyExc_ValueError,
                     "lstm: weight_hh must be (4*H, H) and weight_ih (4*H, %lld) for an input "
                     "(B, T, %lld) with B, T >= 1; got weight_ih (%lld, %lld), weight_hh "
                     "(%lld, %lld)", (long long)*IN, (long long)*IN,
                     (long long)PyArray_DIM(w_ih, 0), (long long)PyArray_DIM(w_ih, 1),
                     (long long)PyArray_DIM(w_hh, 0), (long long)PyArray_DIM(w_hh, 1));
        return -1;
    }
    if (glue_check_int_range(*B * *T * 4 * *H, "lstm: gates") < 0 ||
        glue_check_int_range(*B * *T * *IN, "lstm: input") < 0)
        return -1;
    return 0;
}

/* same shape as `like` (a numpy shape check) */
static int same_shape(PyArrayObject *a, int ndim, const npy_intp *dims, const char *what) {
    if (PyArray_NDIM(a) == ndim && !memcmp(PyArray_DIMS(a), dims, sizeof(npy_intp) * ndim))
        return 0;
    char s[64];
    glue_shape_str(s, sizeof s, a);
    PyErr_Format(PyExc_ValueError, "lstm_backward: %s has shape %s, the forward's is (%lld, %lld, "
                 "%lld)", what, s, (long long)dims[0], (long long)dims[1], (long long)dims[2]);
    return -1;
}

/* lstm_forward(x, w_ih, w_hh, b_ih|None, b_hh|None, reverse) -> (h, gates, c) */
static PyObject *f_lstm_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo, *wio, *who, *bio = Py_None, *bho = Py_None, *result = NULL;
    int reverse = 0;
    PyArrayObject *x = NULL, *wi = NULL, *wh = NULL, *bi = NULL, *bh = NULL;
    PyArrayObject *h = NULL, *g = NULL, *c = NULL;
    if (!PyArg_ParseTuple(args, "OOO|OOp", &xo, &wio, &who, &bio, &bho, &reverse)) return NULL;
    CHECK(x = glue_f32(xo, "lstm: input"));
    CHECK(wi = glue_f32(wio, "lstm: weight_ih"));
    CHECK(wh = glue_f32(who, "lstm: weight_hh"));
    int64_t B, T, IN, H;
    CHECK(lstm_dims(x, wi, wh, &B, &T, &IN, &H) == 0);
    if (bio != Py_None) {
        CHECK(bi = glue_f32(bio, "lstm: bias_ih"));
        CHECK(check_vector(bi, 4 * H, "lstm: bias_ih") == 0);
    }
    if (bho != Py_None) {
        CHECK(bh = glue_f32(bho, "lstm: bias_hh"));
        CHECK(check_vector(bh, 4 * H, "lstm: bias_hh") == 0);
    }
    npy_intp dh[3] = {(npy_intp)B, (npy_intp)T, (npy_intp)H};
    npy_intp dg[3] = {(npy_intp)B, (npy_intp)T, (npy_intp)(4 * H)};
    CHECK(h = glue_zeros(3, dh));
    CHECK(g = glue_zeros(3, dg));
    CHECK(c = glue_zeros(3, dh));
    GLUE_COMPUTE_BEGIN
    pc_lstm_forward(glue_fp(h), glue_fp(g), glue_fp(c), glue_fp(x), glue_fp(wi), glue_fp(wh),
                    bi ? glue_fp(bi) : NULL, bh ? glue_fp(bh) : NULL, (int)B, (int)T, (int)IN,
                    (int)H, reverse);
    GLUE_COMPUTE_END
    result = Py_BuildValue("(OOO)", h, g, c);
fail:
    Py_XDECREF(x); Py_XDECREF(wi); Py_XDECREF(wh); Py_XDECREF(bi); Py_XDECREF(bh);
    Py_XDECREF(h); Py_XDECREF(g); Py_XDECREF(c);
    return result;
}

/* lstm_backward(dh, x, h, gates, c, w_ih, w_hh, reverse) -> (dx, dw_ih, dw_hh, db) */
static PyObject *f_lstm_backward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o[7], *result = NULL;
    int reverse = 0, rc = 0;
    PyArrayObject *a[7] = {NULL}, *dx = NULL, *dwi = NULL, *dwh = NULL, *db = NULL;
    static const char *const what[7] = {"lstm_backward: grad_output", "lstm_backward: input",
                                        "lstm_backward: output", "lstm_backward: gates",
                                        "lstm_backward: cells", "lstm_backward: weight_ih",
                                        "lstm_backward: weight_hh"};
    if (!PyArg_ParseTuple(args, "OOOOOOO|p", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6],
                          &reverse))
        return NULL;
    for (int i = 0; i < 7; i++) CHECK(a[i] = glue_f32(o[i], what[i]));
    int64_t B, T, IN, H;
    CHECK(lstm_dims(a[1], a[5], a[6], &B, &T, &IN, &H) == 0);
    npy_intp dh[3] = {(npy_intp)B, (npy_intp)T, (npy_intp)H};
    npy_intp dg[3] = {(npy_intp)B, (npy_intp)T, (npy_intp)(4 * H)};
    CHECK(same_shape(a[0], 3, dh, "grad_output") == 0 && same_shape(a[2], 3, dh, "output") == 0 &&
          same_shape(a[3], 3, dg, "gates") == 0 && same_shape(a[4], 3, dh, "cells") == 0);
    npy_intp dxd[3] = {(npy_intp)B, (npy_intp)T, (npy_intp)IN};
    npy_intp dwid[2] = {(npy_intp)(4 * H), (npy_intp)IN}, dwhd[2] = {(npy_intp)(4 * H), (npy_intp)H};
    npy_intp dbd[1] = {(npy_intp)(4 * H)};
    CHECK(dx = glue_zeros(3, dxd));
    CHECK(dwi = glue_zeros(2, dwid));
    CHECK(dwh = glue_zeros(2, dwhd));
    CHECK(db = glue_zeros(1, dbd));
    GLUE_COMPUTE_BEGIN
    rc = pc_lstm_backward(glue_fp(dx), glue_fp(dwi), glue_fp(dwh), glue_fp(db), glue_fp(a[0]),
                          glue_fp(a[1]), glue_fp(a[2]), glue_fp(a[3]), glue_fp(a[4]),
                          glue_fp(a[5]), glue_fp(a[6]), (int)B, (int)T, (int)IN, (int)H, reverse);
    GLUE_COMPUTE_END
    if (rc) {
        PyErr_NoMemory();
        goto fail;
    }
    result = Py_BuildValue("(OOOO)", dx, dwi, dwh, db);
fail:
    for (int i = 0; i < 7; i++) Py_XDECREF(a[i]);
    Py_XDECREF(dx); Py_XDECREF(dwi); Py_XDECREF(dwh); Py_XDECREF(db);
    return result;
}


/* layernorm_forward(x, weight, bias, eps) -> (y, mean, rstd) */
static PyObject *f_layernorm_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo, *wo, *bo, *result = NULL;
    double eps;
    PyArrayObject *x = NULL, *w = NULL, *b = NULL, *y = NULL, *mean = NULL, *rstd = NULL;
    if (!PyArg_ParseTuple(args, "OOOd", &xo, &wo, &bo, &eps)) return NULL;
    CHECK(x = glue_f32(xo, "layer_norm: input"));
    CHECK(w = glue_f32(wo, "layer_norm: weight"));
    CHECK(b = glue_f32(bo, "layer_norm: bias"));
    CHECK(glue_check_ndim(x, -1, "layer_norm: input") == 0);
    int64_t N = glue_rows(x), C = glue_last(x);
    CHECK(check_vector(w, C, "layer_norm: weight") == 0 && check_vector(b, C, "layer_norm: bias") == 0);
    if (!(eps > 0)) {
        glue_value_error_float("layer_norm: eps must be > 0, got", eps);
        goto fail;
    }
    CHECK(glue_check_int_range(N, "layer_norm: rows") == 0 && glue_check_int_range(C, "dim") == 0);
    npy_intp ndims[1] = {(npy_intp)N};
    CHECK(y = glue_zeros(PyArray_NDIM(x), PyArray_DIMS(x)));
    CHECK(mean = glue_zeros(1, ndims));
    CHECK(rstd = glue_zeros(1, ndims));
    GLUE_COMPUTE_BEGIN
    pc_layernorm_forward(glue_fp(y), glue_fp(mean), glue_fp(rstd), glue_fp(x), glue_fp(w),
                         glue_fp(b), (int)N, (int)C, (float)eps);
    GLUE_COMPUTE_END
    result = Py_BuildValue("(OOO)", y, mean, rstd);
fail:
    Py_XDECREF(x); Py_XDECREF(w); Py_XDECREF(b);
    Py_XDECREF(y); Py_XDECREF(mean); Py_XDECREF(rstd);
    return result;
}

/* layernorm_backward(dy, x, weight, mean, rstd) -> (dx, dweight, dbias) */
static PyObject *f_layernorm_backward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *dyo, *xo, *wo, *mo, *ro, *result = NULL;
    PyArrayObject *dy = NULL, *x = NULL, *w = NULL, *m = NULL, *r = NULL;
    PyArrayObject *dx = NULL, *dw = NULL, *db = NULL;
    if (!PyArg_ParseTuple(args, "OOOOO", &dyo, &xo, &wo, &mo, &ro)) return NULL;
    CHECK(dy = glue_f32(dyo, "layer_norm_backward: grad_output"));
    CHECK(x = glue_f32(xo, "layer_norm_backward: input"));
    CHECK(w = glue_f32(wo, "layer_norm_backward: weight"));
    CHECK(m = glue_f32(mo, "layer_norm_backward: mean"));
    CHECK(r = glue_f32(ro, "layer_norm_backward: rstd"));
    CHECK(glue_check_ndim(x, -1, "layer_norm_backward: input") == 0);
    CHECK(glue_check_same_shape(x, dy, "input", "grad_output") == 0);
    int64_t N = glue_rows(x), C = glue_last(x);
    CHECK(check_vector(w, C, "layer_norm_backward: weight") == 0);
    CHECK(check_vector(m, N, "layer_norm_backward: mean") == 0);
    CHECK(check_vector(r, N, "layer_norm_backward: rstd") == 0);
    CHECK(glue_check_int_range(N, "layer_norm: rows") == 0 && glue_check_int_range(C, "dim") == 0);
    npy_intp cdims[1] = {(npy_intp)C};
    CHECK(dx = glue_zeros(PyArray_NDIM(x), PyArray_DIMS(x)));
    CHECK(dw = glue_zeros(1, cdims));
    CHECK(db = glue_zeros(1, cdims));
    GLUE_COMPUTE_BEGIN
    pc_layernorm_backward(glue_fp(dx), glue_fp(dw), glue_fp(db), glue_fp(dy), glue_fp(x),
                          glue_fp(w), glue_fp(m), glue_fp(r), (int)N, (int)C);
    GLUE_COMPUTE_END
    result = Py_BuildValue("(OOO)", dx, dw, db);
fail:
    Py_XDECREF(dy); Py_XDECREF(x); Py_XDECREF(w); Py_XDECREF(m); Py_XDECREF(r);
    Py_XDECREF(dx); Py_XDECREF(dw); Py_XDECREF(db);
    return result;
}

/* Elementwise ops share one shape: unary forward(x) and backward(dy, saved). */
typedef void (*unary_fn)(float *, const float *, int64_t);
typedef void (*unary_bwd_fn)(float *, const float *, const float *, int64_t);

static PyObject *unary_forward(PyObject *args, const char *name, unary_fn fn) {
    PyObject *xo, *result = NULL;
    PyArrayObject *x = NULL, *y = NULL;
    if (!PyArg_ParseTuple(args, "O", &xo)) return NULL;
    CHECK(x = glue_f32(xo, name));
    CHECK(y = glue_zeros(PyArray_NDIM(x), PyArray_DIMS(x)));
    int64_t n = PyArray_SIZE(x);
    GLUE_COMPUTE_BEGIN
    fn(glue_fp(y), glue_fp(x), n);
    GLUE_COMPUTE_END
    result = (PyObject *)y;
    y = NULL;
fail:
    Py_XDECREF(x); Py_XDECREF(y);
    return result;
}

static PyObject *unary_backward(PyObject *args, const char *name, unary_bwd_fn fn) {
    PyObject *dyo, *so, *result = NULL;
    PyArrayObject *dy = NULL, *s = NULL, *dx = NULL;
    if (!PyArg_ParseTuple(args, "OO", &dyo, &so)) return NULL;
    CHECK(dy = glue_f32(dyo, name));
    CHECK(s = glue_f32(so, name));
    CHECK(glue_check_same_shape(s, dy, "the saved tensor", "grad_output") == 0);
    CHECK(dx = glue_zeros(PyArray_NDIM(s), PyArray_DIMS(s)));
    int64_t n = PyArray_SIZE(s);
    GLUE_COMPUTE_BEGIN
    fn(glue_fp(dx), glue_fp(dy), glue_fp(s), n);
    GLUE_COMPUTE_END
    result = (PyObject *)dx;
    dx = NULL;
fail:
    Py_XDECREF(dy); Py_XDECREF(s); Py_XDECREF(dx);
    return result;
}

static void gelu_exact(float *y, const float *x, int64_t n) { pc_gelu_forward(y, x, n, false); }
static void gelu_tanh(float *y, const float *x, int64_t n) { pc_gelu_forward(y, x, n, true); }
static void gelu_exact_bwd(float *dx, const float *dy, const float *x, int64_t n) {
    pc_gelu_backward(dx, dy, x, n, false);
}
static void gelu_tanh_bwd(float *dx, const float *dy, const float *x, int64_t n) {
    pc_gelu_backward(dx, dy, x, n, true);
}

#define UNARY(pyname, fn, kind) \
    static PyObject *f_##pyname(PyObject *self, PyObject *args) { \
        (void)self; \
        return unary_##kind(args, #pyname, fn); \
    }
UNARY(gelu_forward, gelu_exact, forward)
UNARY(gelu_tanh_forward, gelu_tanh, forward)
UNARY(gelu_backward, gelu_exact_bwd, backward)
UNARY(gelu_tanh_backward, gelu_tanh_bwd, backward)
UNARY(tanh_forward, pc_tanh_forward, forward)
UNARY(tanh_backward, pc_tanh_backward, backward)
UNARY(relu_forward, pc_relu_forward, forward)
UNARY(relu_backward, pc_relu_backward, backward)


static PyObject *f_softmax_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo, *result = NULL;
    PyArrayObject *x = NULL, *y = NULL;
    if (!PyArg_ParseTuple(args, "O", &xo)) return NULL;
    CHECK(x = glue_f32(xo, "softmax: input"));
    CHECK(glue_check_ndim(x, -1, "softmax: input") == 0);
    int64_t N = glue_rows(x), C = glue_last(x);
    CHECK(glue_check_int_range(N, "softmax: rows") == 0 && glue_check_int_range(C, "dim") == 0);
    CHECK(y = glue_zeros(PyArray_NDIM(x), PyArray_DIMS(x)));
    GLUE_COMPUTE_BEGIN
    pc_softmax_forward(glue_fp(y), glue_fp(x), (int)N, (int)C);
    GLUE_COMPUTE_END
    result = (PyObject *)y;
    y = NULL;
fail:
    Py_XDECREF(x); Py_XDECREF(y);
    return result;
}

static PyObject *f_softmax_backward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *dyo, *yo, *result = NULL;
    PyArrayObject *dy = NULL, *y = NULL, *dx = NULL;
    if (!PyArg_ParseTuple(args, "OO", &dyo, &yo)) return NULL;
    CHECK(dy = glue_f32(dyo, "softmax_backward: grad_output"));
    CHECK(y = glue_f32(yo, "softmax_backward: output"));
    CHECK(glue_check_ndim(y, -1, "softmax_backward: output") == 0);
    CHECK(glue_check_same_shape(y, dy, "output", "grad_output") == 0);
    int64_t N = glue_rows(y), C = glue_last(y);
    CHECK(glue_check_int_range(N, "softmax: rows") == 0 && glue_check_int_range(C, "dim") == 0);
    CHECK(dx = glue_zeros(PyArray_NDIM(y), PyArray_DIMS(y)));
    GLUE_COMPUTE_BEGIN
    pc_softmax_backward(glue_fp(dx), glue_fp(dy), glue_fp(y), (int)N, (int)C);
    GLUE_COMPUTE_END
    result = (PyObject *)dx;
    dx = NULL;
fail:
    Py_XDECREF(dy); Py_XDECREF(y); Py_XDECREF(dx);
    return result;
}

static PyObject *f_add_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *ao, *bo, *result = NULL;
    PyArrayObject *a = NULL, *b = NULL, *y = NULL;
    if (!PyArg_ParseTuple(args, "OO", &ao, &bo)) return NULL;
    CHECK(a = glue_f32(ao, "add: input"));
    CHECK(b = glue_f32(bo, "add: other"));
    CHECK(glue_check_same_shape(a, b, "input", "other") == 0);
    CHECK(y = glue_zeros(PyArray_NDIM(a), PyArray_DIMS(a)));
    int64_t n = PyArray_SIZE(a);
    GLUE_COMPUTE_BEGIN
    pc_add_forward(glue_fp(y), glue_fp(a), glue_fp(b), n);
    GLUE_COMPUTE_END
    result = (PyObject *)y;
    y = NULL;
fail:
    Py_XDECREF(a); Py_XDECREF(b); Py_XDECREF(y);
    return result;
}

static int check_p(double p, const char *what) {
    if (p >= 0.0 && p < 1.0) return 0;
    char msg[96];
    snprintf(msg, sizeof msg, "%s: p must be in [0, 1), got", what);
    glue_value_error_float(msg, p);
    return -1;
}

/* dropout_forward(x, p, seed) -> y;  dropout_backward(dy, p, seed) -> dx */
static PyObject *dropout_call(PyObject *args, bool backward) {
    PyObject *xo, *result = NULL;
    double p;
    unsigned long long seed;
    PyArrayObject *x = NULL, *y = NULL;
    if (!PyArg_ParseTuple(args, "OdK", &xo, &p, &seed)) return NULL;
    CHECK(check_p(p, "dropout") == 0);
    CHECK(x = glue_f32(xo, "dropout: input"));
    CHECK(y = glue_zeros(PyArray_NDIM(x), PyArray_DIMS(x)));
    int64_t n = PyArray_SIZE(x);
    GLUE_COMPUTE_BEGIN
    if (backward) pc_dropout_backward(glue_fp(y), glue_fp(x), n, (float)p, seed);
    else pc_dropout_forward(glue_fp(y), glue_fp(x), n, (float)p, seed);
    GLUE_COMPUTE_END
    result = (PyObject *)y;
    y = NULL;
fail:
    Py_XDECREF(x); Py_XDECREF(y);
    return result;
}
static PyObject *f_dropout_forward(PyObject *s, PyObject *a) { (void)s; return dropout_call(a, false); }
static PyObject *f_dropout_backward(PyObject *s, PyObject *a) { (void)s; return dropout_call(a, true); }

/* q (B,Tq,C), k and v (B,Tk,C) with C = H·D */
static int check_attention_inputs(PyArrayObject *q, PyArrayObject *k, PyArrayObject *v,
                                  int H) {
    if (glue_check_ndim(q, 3, "attention: query") < 0) return -1;
    if (glue_check_ndim(k, 3, "attention: key") < 0) return -1;
    if (glue_check_same_shape(k, v, "key", "value") < 0) return -1;
    if (PyArray_DIM(k, 0) != PyArray_DIM(q, 0) || PyArray_DIM(k, 2) != PyArray_DIM(q, 2)) {
        PyErr_Format(PyExc_ValueError,
                     "attention: key must be (%lld, Tk, %lld) like query's batch and width, got "
                     "(%lld, %lld, %lld)", (long long)PyArray_DIM(q, 0), (long long)PyArray_DIM(q, 2),
                     (long long)PyArray_DIM(k, 0), (long long)PyArray_DIM(k, 1),
                     (long long)PyArray_DIM(k, 2));
        return -1;
    }
    int64_t C = PyArray_DIM(q, 2);
    if (H <= 0 || C % H != 0) {
        PyErr_Format(PyExc_ValueError,
                     "attention: num_heads must be positive and divide the width %lld, got %d",
                     (long long)C, H);
        return -1;
    }
    int64_t bhtt = PyArray_DIM(q, 0) * H * PyArray_DIM(q, 1) * PyArray_DIM(k, 1);
    if (bhtt > ((int64_t)1 << 40)) {
        PyErr_SetString(PyExc_ValueError, "attention: batch·heads·Tq·Tk is too large");
        return -1;
    }
    if (glue_check_int_range(PyArray_DIM(k, 0) * PyArray_DIM(k, 1) * C, "attention: size") < 0)
        return -1;
    return glue_check_int_range(PyArray_DIM(q, 0) * PyArray_DIM(q, 1) * C, "attention: size");
}

static pc_attention_dims attention_dims(PyArrayObject *q, PyArrayObject *k, int H) {
    int C = (int)PyArray_DIM(q, 2);
    pc_attention_dims d = {(int)PyArray_DIM(q, 0), (int)PyArray_DIM(q, 1), (int)PyArray_DIM(k, 1),
                           H, C / H, C, C, NULL, false};
    return d;
}

/* attention_forward(q, k, v, num_heads, mask|None, dropout_p, seed) -> (out, probs) */
static PyObject *f_attention_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *qo, *ko, *vo, *mo = Py_None, *result = NULL;
    int H;
    double p = 0.0;
    unsigned long long seed = 0;
    int want_probs = 1;
    PyArrayObject *q = NULL, *k = NULL, *v = NULL, *m = NULL, *out = NULL, *probs = NULL;
    if (!PyArg_ParseTuple(args, "OOOi|OdKp", &qo, &ko, &vo, &H, &mo, &p, &seed, &want_probs))
        return NULL;
    CHECK(check_p(p, "attention") == 0);
    CHECK(q = glue_f32(qo, "attention: query"));
    CHECK(k = glue_f32(ko, "attention: key"));
    CHECK(v = glue_f32(vo, "attention: value"));
    CHECK(check_attention_inputs(q, k, v, H) == 0);
    const pc_attention_dims dims = attention_dims(q, k, H);
    const int64_t B = dims.B, T = dims.Tk;
    if (mo != Py_None) {
        PyObject *mf = PyArray_FromAny(mo, PyArray_DescrFromType(NPY_FLOAT32), 0, 0,
                                       NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | NPY_ARRAY_FORCECAST,
                                       NULL);
        CHECK(mf);
        m = (PyArrayObject *)mf;
        if (PyArray_NDIM(m) != 2 || PyArray_DIM(m, 0) != B || PyArray_DIM(m, 1) != T) {
            PyErr_Format(PyExc_ValueError, "attention: mask must be (%lld, %lld)",
                         (long long)B, (long long)T);
            goto fail;
        }
        for (npy_intp i = 0; i < PyArray_SIZE(m); i++)
            if (glue_fp(m)[i] != 0.0f && glue_fp(m)[i] != 1.0f) {
                glue_value_error_float("attention: mask must hold 1 (attend) or 0 (padding), got",
                                       glue_fp(m)[i]);
                goto fail;
            }
    }
    npy_intp pdims[4] = {(npy_intp)B, H, (npy_intp)dims.Tq, (npy_intp)T};
    CHECK(out = glue_zeros(3, PyArray_DIMS(q)));
    if (want_probs) CHECK(probs = glue_zeros(4, pdims));
    int rc;
    GLUE_COMPUTE_BEGIN
    rc = pc_attention_forward(glue_fp(out), probs ? glue_fp(probs) : NULL, glue_fp(q),
                              glue_fp(k), glue_fp(v), m ? glue_fp(m) : NULL, &dims, (float)p, seed);
    GLUE_COMPUTE_END
    if (rc < 0) {
        /* per thread: Kᵀ and the mask's bias row, the probabilities when they are not kept,
         * and with dropout the dropped ones (as pc_attention_forward allocates) */
        const long long pair = (long long)dims.Tq * dims.Tk;
        const long long floats = (long long)(dims.D + 1) * dims.Tk + (probs ? 0 : pair) +
                                 (p > 0 ? pair : 0);
        PyErr_Format(PyExc_MemoryError, "attention: out of memory for its per-thread scratch "
                     "(%lld bytes per thread)", floats * 4);
        goto fail;
    }
    result = Py_BuildValue("(OO)", out, probs ? (PyObject *)probs : Py_None);
fail:
    Py_XDECREF(q); Py_XDECREF(k); Py_XDECREF(v); Py_XDECREF(m);
    Py_XDECREF(out); Py_XDECREF(probs);
    return result;
}

/* attention_backward(dout, probs, q, k, v, num_heads, dropout_p, seed) -> (dq, dk, dv) */
static PyObject *f_attention_backward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *doo, *po, *qo, *ko, *vo, *result = NULL;
    int H;
    double p = 0.0;
    unsigned long long seed = 0;
    PyArrayObject *dout = NULL, *probs = NULL, *q = NULL, *k = NULL, *v = NULL;
    PyArrayObject *dq = NULL, *dk = NULL, *dv = NULL;
    if (!PyArg_ParseTuple(args, "OOOOOi|dK", &doo, &po, &qo, &ko, &vo, &H, &p, &seed))
        return NULL;
    CHECK(check_p(p, "attention_backward") == 0);
    CHECK(dout = glue_f32(doo, "attention_backward: grad_output"));
    CHECK(probs = glue_f32(po, "attention_backward: probs"));
    CHECK(q = glue_f32(qo, "attention_backward: query"));
    CHECK(k = glue_f32(ko, "attention_backward: key"));
    CHECK(v = glue_f32(vo, "attention_backward: value"));
    CHECK(check_attention_inputs(q, k, v, H) == 0);
    CHECK(glue_check_same_shape(q, dout, "query", "grad_output") == 0);
    const pc_attention_dims dims = attention_dims(q, k, H);
    if (PyArray_NDIM(probs) != 4 || PyArray_DIM(probs, 0) != dims.B || PyArray_DIM(probs, 1) != H ||
        PyArray_DIM(probs, 2) != dims.Tq || PyArray_DIM(probs, 3) != dims.Tk) {
        PyErr_Format(PyExc_ValueError, "attention_backward: probs must be (%d, %d, %d, %d)",
                     dims.B, H, dims.Tq, dims.Tk);
        goto fail;
    }
    CHECK(dq = glue_zeros(3, PyArray_DIMS(q)));
    CHECK(dk = glue_zeros(3, PyArray_DIMS(k)));
    CHECK(dv = glue_zeros(3, PyArray_DIMS(k)));
    int rc;
    GLUE_COMPUTE_BEGIN
    rc = pc_attention_backward(glue_fp(dq), glue_fp(dk), glue_fp(dv), glue_fp(dout),
                               glue_fp(probs), glue_fp(q), glue_fp(k), glue_fp(v), &dims,
                               (float)p, seed);
    GLUE_COMPUTE_END
    if (rc < 0) {
        /* per thread: dS, Vᵀ and, with dropout, the dropped probabilities and their mask */
        const long long pair = (long long)dims.Tq * dims.Tk;
        const long long floats = pair + (long long)dims.D * dims.Tk +
                                 (p > 0 ? pair + (pair + 3) / 4 : 0);
        PyErr_Format(PyExc_MemoryError, "attention backward: out of memory for its per-thread "
                     "scratch (%lld bytes per thread)", floats * 4);
        goto fail;
    }
    result = Py_BuildValue("(OOO)", dq, dk, dv);
fail:
    Py_XDECREF(dout); Py_XDECREF(probs); Py_XDECREF(q); Py_XDECREF(k); Py_XDECREF(v);
    Py_XDECREF(dq); Py_XDECREF(dk); Py_XDECREF(dv);
    return result;
}

/* logits (N,C), targets (N) in [0,C) or == ignore_index */
static int check_ce(PyArrayObject *logits, PyArrayObject *t, long long ignore_index) {
    if (glue_check_ndim(logits, 2, "cross_entropy: input") < 0) return -1;
    if (PyArray_NDIM(t) != 1 || PyArray_DIM(t, 0) != PyArray_DIM(logits, 0)) {
        PyErr_Format(PyExc_ValueError, "cross_entropy: target must be (%ld,), one class per row",
                     (long)PyArray_DIM(logits, 0));
        return -1;
    }
    const int64_t *tp = glue_ip(t);
    int64_t C = PyArray_DIM(logits, 1);
    for (npy_intp i = 0; i < PyArray_SIZE(t); i++)
        if (tp[i] != ignore_index && (tp[i] < 0 || tp[i] >= C)) {
            PyErr_Format(PyExc_IndexError,
                         "cross_entropy: target %lld at position %ld is out of range [0, %lld)",
                         (long long)tp[i], (long)i, (long long)C);
            return -1;
        }
    return glue_check_int_range(PyArray_SIZE(logits), "cross_entropy: size");
}

/* the optional class weights: None, or float32 (C,) of finite values >= 0 */
static int ce_weight(PyObject *wo, PyArrayObject *logits, PyArrayObject **w) {
    *w = NULL;
    if (wo == NULL || wo == Py_None) return 0;
    if (!(*w = glue_f32(wo, "cross_entropy: weight"))) return -1;
    if (PyArray_NDIM(*w) != 1 || PyArray_DIM(*w, 0) != PyArray_DIM(logits, 1)) {
        PyErr_Format(PyExc_ValueError, "cross_entropy: weight must be (%ld,), one per class, "
                     "got %d dims of size %ld", (long)PyArray_DIM(logits, 1),
                     PyArray_NDIM(*w), (long)PyArray_SIZE(*w));
        return -1;
    }
    const float *wp = glue_fp(*w);
    for (npy_intp c = 0; c < PyArray_SIZE(*w); c++)
        if (!(wp[c] >= 0.0f) || isinf(wp[c])) {
            PyObject *bad = PyFloat_FromDouble(wp[c]);
            if (bad)
                PyErr_Format(PyExc_ValueError, "cross_entropy: weight[%ld] is %R; class "
                             "weights must be finite and >= 0", (long)c, bad);
            Py_XDECREF(bad);
            return -1;
        }
    return 0;
}

static PyObject *f_cross_entropy_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *lo, *to, *wo = NULL, *result = NULL;
    long long ignore_index = -100;
    PyArrayObject *l = NULL, *t = NULL, *w = NULL;
    if (!PyArg_ParseTuple(args, "OO|LO", &lo, &to, &ignore_index, &wo)) return NULL;
    CHECK(l = glue_f32(lo, "cross_entropy: input"));
    CHECK(t = glue_ids(to, "cross_entropy: target"));
    CHECK(check_ce(l, t, ignore_index) == 0);
    CHECK(ce_weight(wo, l, &w) == 0);
    float loss;
    int count;
    double weight_sum;
    GLUE_COMPUTE_BEGIN
    if (w)
        loss = pc_cross_entropy_weighted_forward(glue_fp(l), glue_ip(t), glue_fp(w),
                                                 (int)PyArray_DIM(l, 0), (int)PyArray_DIM(l, 1),
                                                 ignore_index, &weight_sum);
    else
        loss = pc_cross_entropy_forward(glue_fp(l), glue_ip(t), (int)PyArray_DIM(l, 0),
                                        (int)PyArray_DIM(l, 1), ignore_index, &count);
    GLUE_COMPUTE_END
    result = PyFloat_FromDouble(loss);
fail:
    Py_XDECREF(l); Py_XDECREF(t); Py_XDECREF(w);
    return result;
}

static PyObject *f_cross_entropy_backward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *lo, *to, *wo = NULL, *result = NULL;
    long long ignore_index = -100;
    double dloss = 1.0;
    PyArrayObject *l = NULL, *t = NULL, *w = NULL, *dl = NULL;
    if (!PyArg_ParseTuple(args, "OO|LdO", &lo, &to, &ignore_index, &dloss, &wo)) return NULL;
    CHECK(l = glue_f32(lo, "cross_entropy_backward: input"));
    CHECK(t = glue_ids(to, "cross_entropy_backward: target"));
    CHECK(check_ce(l, t, ignore_index) == 0);
    CHECK(ce_weight(wo, l, &w) == 0);
    CHECK(dl = glue_zeros(2, PyArray_DIMS(l)));
    GLUE_COMPUTE_BEGIN
    if (w)
        pc_cross_entropy_weighted_backward(glue_fp(dl), glue_fp(l), glue_ip(t), glue_fp(w),
                                           (int)PyArray_DIM(l, 0), (int)PyArray_DIM(l, 1),
                                           ignore_index, (float)dloss);
    else
        pc_cross_entropy_backward(glue_fp(dl), glue_fp(l), glue_ip(t), (int)PyArray_DIM(l, 0),
                                  (int)PyArray_DIM(l, 1), ignore_index, (float)dloss);
    GLUE_COMPUTE_END
    result = (PyObject *)dl;
    dl = NULL;
fail:
    Py_XDECREF(l); Py_XDECREF(t); Py_XDECREF(w); Py_XDECREF(dl);
    return result;
}

static PyObject *mse_call(PyObject *args, bool backward, bool bce) {
    PyObject *xo, *to, *result = NULL;
    double dloss = 1.0;
    PyArrayObject *x = NULL, *t = NULL, *dx = NULL;
    if (!PyArg_ParseTuple(args, "OO|d", &xo, &to, &dloss)) return NULL;
    const char *name = bce ? "binary_cross_entropy_with_logits" : "mse_loss";
    char what[64];
    snprintf(what, sizeof what, "%s: input", name);
    CHECK(x = glue_f32(xo, what));
    snprintf(what, sizeof what, "%s: target", name);
    CHECK(t = glue_f32(to, what));
    CHECK(glue_check_same_shape(x, t, "input", "target") == 0);
    int64_t n = PyArray_SIZE(x);
    if (!backward) {
        float loss;
        GLUE_COMPUTE_BEGIN
        loss = bce ? pc_bce_with_logits_forward(glue_fp(x), glue_fp(t), n)
                   : pc_mse_forward(glue_fp(x), glue_fp(t), n);
        GLUE_COMPUTE_END
        result = PyFloat_FromDouble(loss);
        goto fail;
    }
    CHECK(dx = glue_zeros(PyArray_NDIM(x), PyArray_DIMS(x)));
    GLUE_COMPUTE_BEGIN
    if (bce)
        pc_bce_with_logits_backward(glue_fp(dx), glue_fp(x), glue_fp(t), n, (float)dloss);
    else
        pc_mse_backward(glue_fp(dx), glue_fp(x), glue_fp(t), n, (float)dloss);
    GLUE_COMPUTE_END
    result = (PyObject *)dx;
    dx = NULL;
fail:
    Py_XDECREF(x); Py_XDECREF(t); Py_XDECREF(dx);
    return result;
}
static PyObject *f_mse_forward(PyObject *s, PyObject *a) { (void)s; return mse_call(a, false, false); }
static PyObject *f_mse_backward(PyObject *s, PyObject *a) { (void)s; return mse_call(a, true, false); }
static PyObject *f_bce_with_logits_forward(PyObject *s, PyObject *a) { (void)s; return mse_call(a, false, true); }
static PyObject *f_bce_with_logits_backward(PyObject *s, PyObject *a) { (void)s; return mse_call(a, true, true); }

/* _gemm(a, b, c, trans_a, trans_b, alpha, beta): c = alpha·op(a)·op(b) + beta·c in place
 * through pc_sgemm, for benchmarks and tests of the GEMM paths; every array 2-D, float32,
 * C-contiguous (c writable), op(x) = x.T when trans_x. */
static PyObject *f__gemm(PyObject *self, PyObject *args) {
    (void)self;
    PyArrayObject *arr[3];
    int ta, tb;
    float alpha, beta;
    if (!PyArg_ParseTuple(args, "O!O!O!ppff", &PyArray_Type, &arr[0], &PyArray_Type, &arr[1],
                          &PyArray_Type, &arr[2], &ta, &tb, &alpha, &beta))
        return NULL;
    static const char *const names[3] = {"a", "b", "c"};
    for (int i = 0; i < 3; i++)
        if (PyArray_TYPE(arr[i]) != NPY_FLOAT32 || PyArray_NDIM(arr[i]) != 2 ||
            !PyArray_IS_C_CONTIGUOUS(arr[i]) || (i == 2 && !PyArray_ISWRITEABLE(arr[i]))) {
            PyErr_Format(PyExc_TypeError, "_gemm: %s must be a 2-D C-contiguous%s float32 array",
                         names[i], i == 2 ? " writable" : "");
            return NULL;
        }
    const npy_intp *da = PyArray_DIMS(arr[0]), *db = PyArray_DIMS(arr[1]), *dc = PyArray_DIMS(arr[2]);
    const npy_intp M = ta ? da[1] : da[0], K = ta ? da[0] : da[1];
    const npy_intp N = tb ? db[0] : db[1], Kb = tb ? db[1] : db[0];
    if (Kb != K || dc[0] != M || dc[1] != N) {
        PyErr_Format(PyExc_ValueError, "_gemm: op(a) is (%lld, %lld) and op(b) (%lld, %lld): "
                     "they do not chain, or c is not (%lld, %lld)", (long long)M, (long long)K,
                     (long long)Kb, (long long)N, (long long)M, (long long)N);
        return NULL;
    }
    if (glue_check_int_range(M * N, "_gemm: size") < 0 || glue_check_int_range(M * K, "_gemm: size") < 0 ||
        glue_check_int_range(K * N, "_gemm: size") < 0)
        return NULL;
    GLUE_COMPUTE_BEGIN
    pc_sgemm(ta, tb, (int)M, (int)N, (int)K, alpha, glue_fp(arr[0]), (int)da[1], glue_fp(arr[1]),
             (int)db[1], beta, glue_fp(arr[2]), (int)dc[1]);
    GLUE_COMPUTE_END
    Py_RETURN_NONE;
}

#define DEF(name, doc) {#name, (PyCFunction)f_##name, METH_VARARGS, doc}
PyMethodDef glue_functional_methods[] = {
    DEF(linear_forward, "linear_forward(x, weight, bias=None) -> y"),
    DEF(linear_backward, "linear_backward(dy, x, weight, need_weight_grad, need_bias_grad) -> (dx, dw, db)"),
    DEF(embedding_forward, "embedding_forward(ids, weight) -> out"),
    DEF(embedding_backward, "embedding_backward(dy, ids, num_embeddings) -> dweight"),
    DEF(layernorm_forward, "layernorm_forward(x, weight, bias, eps) -> (y, mean, rstd)"),
    DEF(layernorm_backward, "layernorm_backward(dy, x, weight, mean, rstd) -> (dx, dw, db)"),
    DEF(gelu_forward, "gelu_forward(x) -> y (exact erf form)"),
    DEF(gelu_backward, "gelu_backward(dy, x) -> dx"),
    DEF(gelu_tanh_forward, "gelu_tanh_forward(x) -> y (tanh approximation)"),
    DEF(gelu_tanh_backward, "gelu_tanh_backward(dy, x) -> dx"),
    DEF(tanh_forward, "tanh_forward(x) -> y"),
    DEF(lstm_forward, "lstm_forward(x, w_ih, w_hh, b_ih=None, b_hh=None, reverse=False) -> (h, gates, c)"),
    DEF(lstm_backward, "lstm_backward(dh, x, h, gates, c, w_ih, w_hh, reverse=False) -> (dx, dw_ih, dw_hh, db)"),
    DEF(tanh_backward, "tanh_backward(dy, y) -> dx"),
    DEF(relu_forward, "relu_forward(x) -> y"),
    DEF(relu_backward, "relu_backward(dy, x) -> dx"),
    DEF(softmax_forward, "softmax_forward(x) -> y over the last dim"),
    DEF(softmax_backward, "softmax_backward(dy, y) -> dx"),
    DEF(add_forward, "add_forward(a, b) -> a + b"),
    DEF(dropout_forward, "dropout_forward(x, p, seed) -> y"),
    DEF(dropout_backward, "dropout_backward(dy, p, seed) -> dx"),
    DEF(attention_forward, "attention_forward(q, k, v, num_heads, mask, p, seed) -> (out, probs)"),
    DEF(attention_backward, "attention_backward(dout, probs, q, k, v, num_heads, p, seed) -> (dq, dk, dv)"),
    DEF(cross_entropy_forward, "cross_entropy_forward(logits, target, ignore_index, weight=None) -> loss"),
    DEF(cross_entropy_backward, "cross_entropy_backward(logits, target, ignore_index, dloss, weight=None) -> dlogits"),
    DEF(bce_with_logits_forward, "bce_with_logits_forward(x, target) -> loss"),
    DEF(bce_with_logits_backward, "bce_with_logits_backward(x, target, dloss) -> dx"),
    DEF(mse_forward, "mse_forward(x, target) -> loss"),
    DEF(mse_backward, "mse_backward(x, target, dloss) -> dx"),
    DEF(_gemm, "_gemm(a, b, c, trans_a, trans_b, alpha, beta): c = alpha op(a) op(b) + beta c"),
    {NULL, NULL, 0, NULL}};
