/* Tensors: a typed, shaped, refcounted block of memory (owned, borrowed or a view). */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

size_t pc_dtype_size(pc_dtype dtype) {
    switch (dtype) {
    case PC_FLOAT32: return 4;
    case PC_INT32: return 4;
    case PC_INT64: return 8;
    }
    return 0;
}

int64_t pc_shape_numel(int ndim, const int64_t *shape, size_t itemsize) {
    if (ndim < 0 || ndim > PC_MAX_DIMS) return -1;
    /* as NumPy: the product of the non-zero dimensions, in bytes, must fit even when a zero
     * dimension makes the count 0 (NumPy could not view the tensor otherwise) */
    int64_t n = 1, bytes;
    bool empty = false;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return -1;
        if (shape[i] == 0) empty = true;
        else if (__builtin_mul_overflow(n, shape[i], &n)) return -1;
    }
    if (__builtin_mul_overflow(n, (int64_t)(itemsize ? itemsize : 1), &bytes)) return -1;
    return empty ? 0 : n;
}

static pc_tensor *tensor_header(pc_dtype dtype, int ndim, const int64_t *shape) {
    int64_t numel = pc_shape_numel(ndim, shape, pc_dtype_size(dtype));
    if (numel < 0) return NULL;
    pc_tensor *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->dtype = dtype;
    t->ndim = ndim;
    t->numel = numel;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->refcount = 1;
    return t;
}

pc_tensor *pc_tensor_new(pc_dtype dtype, int ndim, const int64_t *shape) {
    pc_tensor *t = tensor_header(dtype, ndim, shape);
    if (!t) return NULL;
    t->data = pc_alloc((size_t)t->numel * pc_dtype_size(dtype));
    if (!t->data) { free(t); return NULL; }
    t->owns_data = true;
    return t;
}

pc_tensor *pc_tensor_borrow(void *data, pc_dtype dtype, int ndim, const int64_t *shape) {
    pc_tensor *t = tensor_header(dtype, ndim, shape);
    if (t) t->data = data;
    return t;
}

pc_tensor *pc_tensor_view(pc_tensor *base, int64_t offset, int ndim, const int64_t *shape) {
    pc_tensor *t = tensor_header(base->dtype, ndim, shape);
    if (!t) return NULL;
    if (offset < 0 || offset > base->numel || t->numel > base->numel - offset) {
        free(t);
        return NULL;
    }
    t->data = (char *)base->data + (size_t)offset * pc_dtype_size(base->dtype);
    t->base = base;
    t->readonly = base->readonly;
    pc_tensor_retain(base);
    return t;
}

void pc_tensor_retain(pc_tensor *t) {
    if (t) t->refcount++;
}

void pc_tensor_release(pc_tensor *t) {
    if (!t || --t->refcount > 0) return;
    if (t->grad) pc_tensor_release(t->grad);
    if (t->owns_data) pc_free(t->data);
    if (t->base) pc_tensor_release(t->base);
    free(t);
}

pc_tensor *pc_tensor_grad(pc_tensor *t) {
    if (!t->grad) t->grad = pc_tensor_new(PC_FLOAT32, t->ndim, t->shape);
    return t->grad;
}
