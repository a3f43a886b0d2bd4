/* Tensors: a typed, shaped, refcounted block of memory (owned, borrowed or a view). */
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

static pc_tensor *tensor_header(pc_dtype dtype, int ndim, const int64_t *shape) {
    if (ndim < 0 || ndim > PC_MAX_DIMS) return NULL;
    pc_tensor *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->dtype = dtype;
    t->ndim = ndim;
    t->numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) { free(t); return NULL; }
        t->shape[i] = shape[i];
        t->numel *= shape[i];
    }
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
    if (offset < 0 || offset + t->numel > base->numel) { free(t); return NULL; }
    t->data = (char *)base->data + (size_t)offset * pc_dtype_size(base->dtype);
    t->base = base;
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
