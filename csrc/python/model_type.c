/* peftcore._C.Encoder: a BERT-family encoder owned by the engine. The glue checks inputs
 * (dtypes, shapes, id ranges) so the engine can trust them. */
#include "glue.h"
#include "../models/encoder.h"

typedef struct {
    PyObject_HEAD
    pc_encoder *enc;
    PyObject *refs; /* ("adapters" | "linear", index) -> the adapters' tensors / (weight,
                     * bias) Tensor objects the engine points at, kept alive while it does */
} PcEncoderObject;

static int get_int(PyObject *d, const char *key, int *out, int deflt) {
    PyObject *v = PyDict_GetItemString(d, key);
    if (!v || v == Py_None) { *out = deflt; return deflt == -1 ? -1 : 0; }
    long x = PyLong_AsLong(v);
    if (x == -1 && PyErr_Occurred()) return -2;
    if (x < INT32_MIN || x > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "config %s=%ld is out of range", key, x);
        return -2;
    }
    *out = (int)x;
    return 0;
}

static int get_float(PyObject *d, const char *key, float *out, float deflt) {
    PyObject *v = PyDict_GetItemString(d, key);
    if (!v || v == Py_None) { *out = deflt; return 0; }
    double x = PyFloat_AsDouble(v);
    if (x == -1.0 && PyErr_Occurred()) return -1;
    *out = (float)x;
    return 0;
}

/* Encoder(cfg: dict) with keys vocab_size, hidden_size, num_hidden_layers,
 * num_attention_heads, intermediate_size, max_position_embeddings, type_vocab_size,
 * layer_norm_eps, hidden_dropout_prob, attention_probs_dropout_prob, classifier_dropout,
 * activation (0 gelu, 1 gelu_tanh, 2 relu), add_pooler, head (0 none, 1 bert, 2 roberta),
 * num_labels. Missing required keys raise KeyError; the Python side fills defaults. */
static int encoder_init(PcEncoderObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"config", NULL};
    PyObject *d;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!:Encoder", kwlist, &PyDict_Type, &d))
        return -1;
    pc_encoder_config c = {0};
    static const char *required[] = {"vocab_size", "hidden_size", "num_hidden_layers",
                                     "num_attention_heads", "intermediate_size",
                                     "max_position_embeddings", "type_vocab_size"};
    int *slots[] = {&c.vocab_size, &c.hidden, &c.layers, &c.heads, &c.intermediate,
                    &c.max_positions, &c.type_vocab_size};
    for (int i = 0; i < 7; i++) {
        int rc = get_int(d, required[i], slots[i], -1);
        if (rc == -1) { PyErr_Format(PyExc_KeyError, "config needs '%s'", required[i]); return -1; }
        if (rc < 0) return -1;
    }
    int act = 0, pooler = 1, head = 0, labels = 0;
    if (get_int(d, "word_padding_idx", &c.word_padding_idx, -2) < 0 ||
        get_int(d, "position_padding_idx", &c.position_padding_idx, -2) < 0 ||
        get_int(d, "activation", &act, 0) < 0 || get_int(d, "add_pooler", &pooler, 1) < 0 ||
        get_int(d, "head", &head, 0) < 0 || get_int(d, "num_labels", &labels, 0) < 0 ||
        get_float(d, "layer_norm_eps", &c.layer_norm_eps, 1e-12f) < 0 ||
        get_float(d, "hidden_dropout_prob", &c.hidden_dropout, 0.1f) < 0 ||
        get_float(d, "attention_probs_dropout_prob", &c.attention_dropout, 0.1f) < 0 ||
        get_float(d, "classifier_dropout", &c.classifier_dropout, c.hidden_dropout) < 0)
        return -1;
    if (act < 0 || act > 2 || head < 0 || head > 2) {
        PyErr_SetString(PyExc_ValueError, "config activation must be 0..2 and head 0..2");
        return -1;
    }
    c.activation = (pc_activation)act;
    c.add_pooler = pooler != 0;
    c.head = (pc_head_kind)head;
    c.num_labels = labels;
    const char *err = NULL;
    pc_encoder *enc = pc_encoder_new(&c, &err);
    if (!enc) {
        if (err && strcmp(err, "out of memory") == 0) {
            /* embeddings, per layer four projections, the FFN and two LayerNorms, pooler */
            const long long h = c.hidden, i = c.intermediate;
            const long long floats =
                ((long long)c.vocab_size + c.max_positions + c.type_vocab_size + 2) * h +
                (long long)c.layers * (4 * h * h + 2 * h * i + 9 * h + i) + h * h + h;
            PyErr_Format(PyExc_MemoryError, "Encoder: out of memory for the parameters of a "
                         "model with vocab_size=%d, hidden_size=%d, num_hidden_layers=%d, "
                         "intermediate_size=%d (about %lld bytes)", c.vocab_size, c.hidden,
                         c.layers, c.intermediate, floats * 4);
        }
        else PyErr_Format(PyExc_ValueError, "invalid encoder config: %s", err);
        return -1;
    }
    pc_encoder_free(self->enc);
    self->enc = enc;
    Py_XDECREF(self->refs);
    self->refs = PyDict_New();
    return self->refs ? 0 : -1;
}

static void encoder_dealloc(PcEncoderObject *self) {
    pc_encoder_free(self->enc);
    Py_XDECREF(self->refs);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int ready(PcEncoderObject *self) {
    if (self->enc) return 0;
    PyErr_SetString(PyExc_RuntimeError, "Encoder was not initialised");
    return -1;
}

/* params() -> [(name, Tensor, is_head)] */
static PyObject *encoder_params(PcEncoderObject *self, PyObject *Py_UNUSED(ignored)) {
    if (ready(self) < 0) return NULL;
    int n = pc_encoder_num_params(self->enc);
    PyObject *list = PyList_New(n);
    if (!list) return NULL;
    for (int i = 0; i < n; i++) {
        const char *name;
        bool is_head;
        pc_tensor *t = pc_encoder_param(self->enc, i, &name, &is_head);
        PyObject *wrapped = glue_wrap_tensor(t);
        PyObject *item = wrapped ? Py_BuildValue("(sNO)", name, wrapped, is_head ? Py_True : Py_False) : NULL;
        if (!item) { Py_DECREF(list); return NULL; }
        PyList_SET_ITEM(list, i, item);
    }
    return list;
}

/* linears() -> [(name, in_features, out_features, layer)] */
static PyObject *encoder_linears(PcEncoderObject *self, PyObject *Py_UNUSED(ignored)) {
    if (ready(self) < 0) return NULL;
    int n = pc_encoder_num_linears(self->enc);
    PyObject *list = PyList_New(n);
    if (!list) return NULL;
    for (int i = 0; i < n; i++) {
        pc_linear_slot *s = pc_encoder_linear(self->enc, i);
        PyObject *item = Py_BuildValue("(siii)", s->name, s->in, s->out, s->layer);
        if (!item) { Py_DECREF(list); return NULL; }
        PyList_SET_ITEM(list, i, item);
    }
    return list;
}

/* set_adapters(index, entries): the adapters of linear `index`, replaced as a whole. entries
 * is a list of (method, site, tensors, scale, dropout) run in list order, site "in" (the
 * linear's input) or "out" (its output); [] removes them all. Everything is checked before
 * anything changes. */
static PyObject *encoder_set_adapters(PcEncoderObject *self, PyObject *args) {
    int index;
    PyObject *entries;
    if (!PyArg_ParseTuple(args, "iO!:set_adapters", &index, &PyList_Type, &entries)) return NULL;
    if (ready(self) < 0) return NULL;
    if (index < 0 || index >= pc_encoder_num_linears(self->enc)) {
        PyErr_Format(PyExc_IndexError, "linear index %d out of range [0, %d)", index,
                     pc_encoder_num_linears(self->enc));
        return NULL;
    }
    const pc_linear_slot *slot = pc_encoder_linear(self->enc, index);
    const Py_ssize_t n = PyList_GET_SIZE(entries);
    if (n > 2 * PC_SITE_MAX_ADAPTERS) {
        PyErr_Format(PyExc_ValueError, "at most %d adapters per site of a linear, got %zd entries",
                     PC_SITE_MAX_ADAPTERS, n);
        return NULL;
    }
    pc_adapter *by_site[PC_LINEAR_SITES][PC_SITE_MAX_ADAPTERS];
    int count[PC_LINEAR_SITES] = {0};
    PyObject *refs = PyList_New(0); /* the Tensor objects the adapters point at */
    if (!refs) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(entries, i), *tensors;
        const char *method, *site_name;
        float scale, dropout;
        if (!PyTuple_Check(item) ||
            !PyArg_ParseTuple(item, "ssO!ff", &method, &site_name, &PyTuple_Type, &tensors,
                              &scale, &dropout)) {
            if (!PyErr_Occurred() || PyErr_ExceptionMatches(PyExc_TypeError)) {
                PyErr_Clear();
                PyErr_Format(PyExc_TypeError,
                             "set_adapters entry %zd must be (method: str, site: 'in' | 'out', "
                             "tensors: tuple, scale: float, dropout: float), got %R", i, item);
            }
            goto fail;
        }
        pc_site_kind site;
        if (!strcmp(site_name, "in")) {
            site = PC_SITE_LINEAR_IN;
        } else if (!strcmp(site_name, "out")) {
            site = PC_SITE_LINEAR_OUT;
        } else {
            PyErr_Format(PyExc_ValueError, "set_adapters entry %zd: site must be 'in' or 'out', "
                         "got '%s'", i, site_name);
            goto fail;
        }
        if (count[site] == PC_SITE_MAX_ADAPTERS) {
            PyErr_Format(PyExc_ValueError, "at most %d adapters per site of a linear",
                         PC_SITE_MAX_ADAPTERS);
            goto fail;
        }
        pc_tensor *t[PC_ADAPTER_MAX_TENSORS] = {0};
        const Py_ssize_t nt = PyTuple_GET_SIZE(tensors);
        if (nt > PC_ADAPTER_MAX_TENSORS) {
            PyErr_Format(PyExc_ValueError, "set_adapters entry %zd: at most %d tensors, got %zd",
                         i, PC_ADAPTER_MAX_TENSORS, nt);
            goto fail;
        }
        for (Py_ssize_t j = 0; j < nt; j++) {
            PyObject *to = PyTuple_GET_ITEM(tensors, j);
            if (!(t[j] = glue_tensor_of(to, "an adapter tensor")) || PyList_Append(refs, to) < 0)
                goto fail;
        }
        char err[256];
        pc_adapter *a = pc_adapter_new(method, site, t, (int)nt, scale, dropout, slot->in,
                                       slot->out, err, sizeof err);
        if (!a) {
            PyErr_Format(PyExc_ValueError, "%s: %s", slot->name, err);
            goto fail;
        }
        by_site[site][count[site]++] = a;
    }
    glue_engine_lock();
    for (int k = 0; k < PC_LINEAR_SITES; k++)
        pc_encoder_set_adapters(self->enc, index, (pc_site_kind)k, by_site[k], count[k]);
    glue_engine_unlock();
    PyObject *key = Py_BuildValue("(si)", "adapters", index);
    int ok = key ? (n ? PyDict_SetItem(self->refs, key, refs) : 0) : -1;
    if (key && !n && PyDict_DelItem(self->refs, key) < 0) PyErr_Clear();
    Py_XDECREF(key);
    Py_DECREF(refs);
    if (ok < 0) return NULL;
    Py_RETURN_NONE;
fail:
    for (int k = 0; k < PC_LINEAR_SITES; k++)
        for (int j = 0; j < count[k]; j++) pc_adapter_free(by_site[k][j]);
    Py_DECREF(refs);
    return NULL;
}

/* set_block_adapters(layer, where, entries): the adapter at a layer's "attention" or "ffn"
 * block junction, at its "kv" site (extra key/value rows of its attention), or, with layer
 * -1, at the "embeddings" (the word-embedding rows); entries is [] or [(method, tensors:
 * dict, options: dict)], tensors and options named as the method names them. Everything is
 * checked before anything changes. */
static PyObject *encoder_set_block_adapters(PcEncoderObject *self, PyObject *args) {
    int layer;
    const char *block_name;
    PyObject *entries;
    if (!PyArg_ParseTuple(args, "isO!:set_block_adapters", &layer, &block_name, &PyList_Type,
                          &entries))
        return NULL;
    if (ready(self) < 0) return NULL;
    const pc_encoder_config *cfg = pc_encoder_get_config(self->enc);
    pc_block_kind block = PC_BLOCK_ATTENTION;
    pc_site_kind site = PC_SITE_BLOCK;
    if (!strcmp(block_name, "attention")) {
        block = PC_BLOCK_ATTENTION;
    } else if (!strcmp(block_name, "ffn")) {
        block = PC_BLOCK_FFN;
    } else if (!strcmp(block_name, "kv")) {
        site = PC_SITE_KV;
    } else if (!strcmp(block_name, "embeddings")) {
        site = PC_SITE_EMBEDDINGS;
    } else {
        PyErr_Format(PyExc_ValueError, "block must be 'attention' or 'ffn' (or 'kv', "
                     "'embeddings'), got '%s'", block_name);
        return NULL;
    }
    if (site == PC_SITE_EMBEDDINGS ? layer != -1 : layer < 0 || layer >= cfg->layers) {
        if (site == PC_SITE_EMBEDDINGS)
            PyErr_Format(PyExc_IndexError, "the embeddings site takes layer -1, got %d", layer);
        else
            PyErr_Format(PyExc_IndexError, "layer %d out of range [0, %d)", layer, cfg->layers);
        return NULL;
    }
    const Py_ssize_t n = PyList_GET_SIZE(entries);
    if (n > 1) {
        PyErr_Format(PyExc_ValueError, "one adapter per block at most, got %zd", n);
        return NULL;
    }
    pc_adapter *adapter = NULL;
    PyObject *refs = PyList_New(0);
    if (!refs) return NULL;
    if (n == 1) {
        PyObject *item = PyList_GET_ITEM(entries, 0), *tensors, *options;
        const char *method;
        if (!PyTuple_Check(item) ||
            !PyArg_ParseTuple(item, "sO!O!", &method, &PyDict_Type, &tensors, &PyDict_Type,
                              &options)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "a block adapter entry must be (method: str, tensors: "
                         "dict, options: dict), got %R", item);
            goto fail;
        }
        const pc_adapter_method *m = pc_adapter_method_find(method);
        if (!m || !(m->sites & (1u << site))) {
            PyErr_Format(PyExc_ValueError, "'%s' is not an adapter method that acts at the %s "
                         "site", method, block_name);
            goto fail;
        }
        pc_tensor *t[PC_ADAPTER_MAX_TENSORS] = {0};
        float opt[PC_ADAPTER_MAX_OPTIONS] = {0};
        PyObject *key, *value;
        Py_ssize_t pos = 0;
        while (PyDict_Next(tensors, &pos, &key, &value)) {
            const char *name = PyUnicode_Check(key) ? PyUnicode_AsUTF8(key) : NULL;
            int i = 0;
            while (name && i < m->num_tensors && strcmp(name, m->tensor_names[i])) i++;
            if (!name || i == m->num_tensors) {
                PyErr_Format(PyExc_ValueError, "%s adapter: unknown tensor %R", method, key);
                goto fail;
            }
            if (value == Py_None) continue;
            if (!(t[i] = glue_tensor_of(value, m->tensor_names[i])) ||
                PyList_Append(refs, value) < 0)
                goto fail;
        }
        for (int i = 0; i < m->num_options; i++) opt[i] = m->option_defaults[i];
        if (m->num_options == 0 && PyDict_Size(options)) {
            PyErr_Format(PyExc_ValueError, "%s adapter takes no options, got %R", method, options);
            goto fail;
        }
        pos = 0;
        while (PyDict_Next(options, &pos, &key, &value)) {
            const char *name = PyUnicode_Check(key) ? PyUnicode_AsUTF8(key) : NULL;
            int i = 0;
            while (name && i < m->num_options && strcmp(name, m->option_names[i])) i++;
            if (!name || i == m->num_options) {
                PyErr_Format(PyExc_ValueError, "%s adapter: unknown option %R", method, key);
                goto fail;
            }
            if (PyUnicode_Check(value)) {
                if (m->option_word(i, PyUnicode_AsUTF8(value), &opt[i]) < 0) {
                    PyErr_Format(PyExc_ValueError, "%s adapter: option %s cannot be %R", method,
                                 name, value);
                    goto fail;
                }
            } else {
                const double v = PyFloat_AsDouble(value);
                if (v == -1.0 && PyErr_Occurred()) {
                    PyErr_Clear();
                    PyErr_Format(PyExc_TypeError, "%s adapter: option %s must be a number, bool "
                                 "or word, got %R", method, name, value);
                    goto fail;
                }
                opt[i] = (float)v;
            }
        }
        char err[256];
        if (!(adapter = pc_site_adapter_new(method, site, t, opt, cfg->hidden, err, sizeof err))) {
            PyErr_Format(PyExc_ValueError, "layer %d %s site: %s", layer, block_name, err);
            goto fail;
        }
    }
    glue_engine_lock();
    if (site == PC_SITE_BLOCK)
        pc_encoder_set_block_adapters(self->enc, layer, block, &adapter, (int)n);
    else if (site == PC_SITE_KV)
        pc_encoder_set_kv_adapters(self->enc, layer, &adapter, (int)n);
    else
        pc_encoder_set_embedding_adapters(self->enc, &adapter, (int)n);
    glue_engine_unlock();
    PyObject *rkey = Py_BuildValue("(sii)", "block", layer, (int)(site * 2 + block));
    int ok = rkey ? (n ? PyDict_SetItem(self->refs, rkey, refs) : 0) : -1;
    if (rkey && !n && PyDict_DelItem(self->refs, rkey) < 0) PyErr_Clear();
    Py_XDECREF(rkey);
    Py_DECREF(refs);
    if (ok < 0) return NULL;
    Py_RETURN_NONE;
fail:
    pc_adapter_free(adapter);
    Py_DECREF(refs);
    return NULL;
}

/* set_linear_params(index, weight, bias): swap a head/pooler linear's tensors */
static PyObject *encoder_set_linear_params(PcEncoderObject *self, PyObject *args) {
    int index;
    PyObject *wo, *bo;
    if (!PyArg_ParseTuple(args, "iOO", &index, &wo, &bo)) return NULL;
    if (ready(self) < 0) return NULL;
    pc_tensor *w = glue_tensor_of(wo, "weight"), *b = w ? glue_tensor_of(bo, "bias") : NULL;
    if (!b) return NULL;
    /* kept alive with the engine's use: a Tensor over a NumPy array owns no memory itself */
    PyObject *key = Py_BuildValue("(si)", "linear", index), *pair = PyTuple_Pack(2, wo, bo);
    if (!key || !pair) { Py_XDECREF(key); Py_XDECREF(pair); return NULL; }
    glue_engine_lock();
    int rc = pc_encoder_set_linear_params(self->enc, index, w, b);
    glue_engine_unlock();
    int kept = rc == 0 ? PyDict_SetItem(self->refs, key, pair) : 0;
    Py_DECREF(key);
    Py_DECREF(pair);
    if (kept < 0) return NULL;
    if (rc == -1) {
        PyErr_Format(PyExc_ValueError, "linear %d cannot take separate weights (only the pooler "
                     "and classification head can)", index);
        return NULL;
    }
    if (rc == -2) {
        PyErr_SetString(PyExc_ValueError, "weight and bias must be float32 with the linear's shapes");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyArrayObject *ids_like(PyObject *obj, const char *what, npy_intp B, npy_intp T,
                               int64_t limit, const char *limit_what) {
    PyArrayObject *a = glue_ids(obj, what);
    if (!a) return NULL;
    if (PyArray_NDIM(a) != 2 || PyArray_DIM(a, 0) != B || PyArray_DIM(a, 1) != T) {
        char s[64];
        glue_shape_str(s, sizeof s, a);
        PyErr_Format(PyExc_ValueError, "%s must have the shape of input_ids (%ld, %ld), got %s",
                     what, (long)B, (long)T, s);
        Py_DECREF(a);
        return NULL;
    }
    const int64_t *p = glue_ip(a);
    for (npy_intp i = 0; i < B * T; i++)
        if (p[i] < 0 || p[i] >= limit) {
            PyErr_Format(PyExc_IndexError, "%s contains %lld at position (%ld, %ld); %s is %lld",
                         what, (long long)p[i], (long)(i / T), (long)(i % T), limit_what,
                         (long long)limit);
            Py_DECREF(a);
            return NULL;
        }
    return a;
}

/* an output array (if asked for) takes the engine's values (zeros if it has none) */
static void copy_out(PyObject *out, const float *src) {
    if (!out) return;
    size_t bytes = (size_t)PyArray_NBYTES((PyArrayObject *)out);
    if (src) memcpy(PyArray_DATA((PyArrayObject *)out), src, bytes);
    else memset(PyArray_DATA((PyArrayObject *)out), 0, bytes);
}

/* forward(input_ids, position_ids, token_type_ids, attention_mask|None, training, seed,
 *         want_hidden) -> (hidden|None, pooled|None, logits|None) */
static PyObject *encoder_forward(PcEncoderObject *self, PyObject *args) {
    PyObject *io, *po, *to, *mo, *result = NULL;
    int training, want_hidden, keep = 1;
    unsigned long long seed;
    /* want_hidden: 0 logits (and pooled) only, 1 also the last hidden state, 2 also every
     * layer's (the embeddings' output and each layer's, stacked) */
    if (!PyArg_ParseTuple(args, "OOOOpKi|p", &io, &po, &to, &mo, &training, &seed, &want_hidden,
                          &keep))
        return NULL;
    if (want_hidden < 0 || want_hidden > 2) {
        PyErr_Format(PyExc_ValueError, "want_hidden must be 0, 1 or 2, got %d", want_hidden);
        return NULL;
    }
    if (ready(self) < 0) return NULL;
    const pc_encoder_config *c = pc_encoder_get_config(self->enc);
    PyArrayObject *ids = NULL, *pos = NULL, *types = NULL, *mask = NULL;
    PyObject *hidden = NULL, *pooled = NULL, *logits = NULL, *layers = NULL;
    ids = glue_ids(io, "input_ids");
    if (!ids) return NULL;
    if (PyArray_NDIM(ids) != 2 || PyArray_DIM(ids, 0) < 1 || PyArray_DIM(ids, 1) < 1) {
        char s[64];
        glue_shape_str(s, sizeof s, ids);
        PyErr_Format(PyExc_ValueError, "input_ids must be (batch, seq_len) with both >= 1, got %s", s);
        goto fail;
    }
    npy_intp B = PyArray_DIM(ids, 0), T = PyArray_DIM(ids, 1);
    if (glue_check_int_range((int64_t)B * T * (c->intermediate > 3 * c->hidden ? c->intermediate : 3 * c->hidden),
                             "batch size x sequence length x width") < 0)
        goto fail;
    Py_DECREF(ids);
    if (!(ids = ids_like(io, "input_ids", B, T, c->vocab_size, "vocab_size"))) goto fail;
    if (!(pos = ids_like(po, "position_ids", B, T, c->max_positions, "max_position_embeddings")))
        goto fail;
    if (!(types = ids_like(to, "token_type_ids", B, T, c->type_vocab_size, "type_vocab_size")))
        goto fail;
    if (mo != Py_None) {
        PyArrayObject *m = glue_ids(mo, "attention_mask");
        if (!m) goto fail;
        if (PyArray_NDIM(m) != 2 || PyArray_DIM(m, 0) != B || PyArray_DIM(m, 1) != T) {
            PyErr_Format(PyExc_ValueError, "attention_mask must have the shape of input_ids (%ld, %ld)",
                         (long)B, (long)T);
            Py_DECREF(m);
            goto fail;
        }
        npy_intp dims[2] = {B, T};
        mask = glue_zeros(2, dims);
        if (!mask) { Py_DECREF(m); goto fail; }
        for (npy_intp i = 0; i < B * T; i++) glue_fp(mask)[i] = glue_ip(m)[i] != 0 ? 1.0f : 0.0f;
        Py_DECREF(m);
    }
    /* the outputs are allocated before the engine runs (no Python code under the lock);
     * a successful forward has each of them in full, so they start uninitialised */
    npy_intp hidden_dims[3] = {B, T, c->hidden}, pooled_dims[2] = {B, c->hidden},
             logits_dims[2] = {B, c->num_labels};
    if ((want_hidden && !(hidden = (PyObject *)glue_empty(3, hidden_dims))) ||
        (c->add_pooler && !(pooled = (PyObject *)glue_empty(2, pooled_dims))) ||
        (c->head != PC_HEAD_NONE && !(logits = (PyObject *)glue_empty(2, logits_dims))))
        goto fail;
    npy_intp layers_dims[4] = {c->layers + 1, B, T, c->hidden};
    if (want_hidden == 2 && !(layers = (PyObject *)glue_empty(4, layers_dims))) goto fail;
    int rc;
    int64_t failed;
    GLUE_COMPUTE_BEGIN
    pc_encoder_capture_hidden_states(self->enc, layers ? glue_fp((PyArrayObject *)layers) : NULL);
    rc = pc_encoder_forward(self->enc, glue_ip(ids), glue_ip(pos), glue_ip(types),
                            mask ? glue_fp(mask) : NULL, (int)B, (int)T, training != 0, keep != 0,
                            !want_hidden, seed);
    pc_encoder_capture_hidden_states(self->enc, NULL);
    if (rc == 0) {
        copy_out(hidden, pc_encoder_hidden(self->enc));
        copy_out(pooled, pc_encoder_pooled(self->enc));
        copy_out(logits, pc_encoder_logits(self->enc));
    }
    failed = rc < 0 ? pc_encoder_failed_bytes(self->enc) : 0;
    GLUE_COMPUTE_END
    if (rc < 0) {
        if (failed > 0)
            PyErr_Format(PyExc_MemoryError, "forward of a (%ld, %ld) batch: cannot allocate "
                         "%lld bytes of activations", (long)B, (long)T, (long long)failed);
        else
            PyErr_Format(PyExc_MemoryError, "forward of a (%ld, %ld) batch: out of memory for "
                         "per-thread scratch", (long)B, (long)T);
        goto fail;
    }
    result = Py_BuildValue("(OOOO)", hidden ? hidden : Py_None, pooled ? pooled : Py_None,
                           logits ? logits : Py_None, layers ? layers : Py_None);
fail:
    Py_XDECREF(ids); Py_XDECREF(pos); Py_XDECREF(types); Py_XDECREF(mask);
    Py_XDECREF(hidden); Py_XDECREF(pooled); Py_XDECREF(logits); Py_XDECREF(layers);
    return result;
}

/* backward(d_logits=None, d_hidden=None, d_pooled=None): exactly one is given */
static PyObject *encoder_backward(PcEncoderObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"d_logits", "d_hidden", "d_pooled", NULL};
    PyObject *lo = Py_None, *ho = Py_None, *po = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OOO:backward", kwlist, &lo, &ho, &po))
        return NULL;
    if (ready(self) < 0) return NULL;
    const pc_encoder_config *c = pc_encoder_get_config(self->enc);
    int given = (lo != Py_None) + (ho != Py_None) + (po != Py_None);
    if (given != 1) {
        PyErr_SetString(PyExc_ValueError, "backward() takes exactly one gradient");
        return NULL;
    }
    PyObject *obj = lo != Py_None ? lo : ho != Py_None ? ho : po;
    const char *what = lo != Py_None ? "grad_logits"
                       : ho != Py_None ? "grad_last_hidden_state" : "grad_pooler_output";
    PyArrayObject *g = glue_f32(obj, what);
    if (!g) return NULL;
    /* Under the lock: the saved forward's batch shape (another thread may have run a forward
     * since this one) checked against the gradient's, then the backward. Errors after. */
    enum { RAN, NO_FORWARD, BAD_SHAPE } outcome = RAN;
    int B = 0, T = 0, rc = 0;
    float *gp = glue_fp(g);
    glue_engine_lock();
    if (!pc_encoder_has_forward(self->enc)) {
        outcome = NO_FORWARD;
    } else {
        pc_encoder_batch_shape(self->enc, &B, &T);
        bool ok;
        if (lo != Py_None)
            ok = c->head != PC_HEAD_NONE && PyArray_NDIM(g) == 2 && PyArray_DIM(g, 0) == B &&
                 PyArray_DIM(g, 1) == c->num_labels;
        else if (ho != Py_None)
            ok = PyArray_NDIM(g) == 3 && PyArray_DIM(g, 0) == B && PyArray_DIM(g, 1) == T &&
                 PyArray_DIM(g, 2) == c->hidden;
        else
            ok = c->add_pooler && PyArray_NDIM(g) == 2 && PyArray_DIM(g, 0) == B &&
                 PyArray_DIM(g, 1) == c->hidden;
        if (!ok) {
            outcome = BAD_SHAPE;
        } else {
            Py_BEGIN_ALLOW_THREADS
            rc = pc_encoder_backward(self->enc, lo != Py_None ? gp : NULL,
                                     ho != Py_None ? gp : NULL, po != Py_None ? gp : NULL);
            Py_END_ALLOW_THREADS
        }
    }
    glue_engine_unlock();
    if (outcome == NO_FORWARD) {
        Py_DECREF(g);
        PyErr_SetString(PyExc_RuntimeError,
                        "backward() needs a forward pass first (each forward allows one backward)");
        return NULL;
    }
    if (outcome == BAD_SHAPE) {
        char s[64];
        glue_shape_str(s, sizeof s, g);
        Py_DECREF(g);
        if (lo != Py_None && c->head == PC_HEAD_NONE)
            PyErr_SetString(PyExc_ValueError, "this model has no classification head: no logits");
        else if (po != Py_None && !c->add_pooler)
            PyErr_SetString(PyExc_ValueError, "this model has no pooler (add_pooling_layer=False"
                            " or a RoBERTa classifier): grad_pooler_output has nothing to "
                            "backpropagate through");
        else if (ho != Py_None)
            PyErr_Format(PyExc_ValueError, "%s must have the last forward's shape (%d, %d, %d), "
                         "got %s", what, B, T, c->hidden, s);
        else
            PyErr_Format(PyExc_ValueError, "%s must have the last forward's shape (%d, %d), "
                         "got %s", what, B, lo != Py_None ? c->num_labels : c->hidden, s);
        return NULL;
    }
    Py_DECREF(g);
    if (rc == -1) {
        /* what the backward allocates on first use: the trainable parameters' gradients */
        long long grad_bytes = 0;
        for (int i = 0; i < pc_encoder_num_params(self->enc); i++) {
            const pc_tensor *t = pc_encoder_param(self->enc, i, NULL, NULL);
            if (t && t->requires_grad && !t->grad) grad_bytes += (long long)t->numel * 4;
        }
        PyErr_Format(PyExc_MemoryError, "backward of a (%d, %d) batch: out of memory for its "
                     "scratch or the trainable parameters' gradients (%lld bytes not yet "
                     "allocated)", B, T, grad_bytes);
        return NULL;
    }
    if (rc == -2) {
        PyErr_SetString(PyExc_RuntimeError, "backward() needs a forward pass first");
        return NULL;
    }
    if (rc == -3) {
        PyErr_SetString(PyExc_RuntimeError, "the last forward ran under peftcore.no_grad(): "
                        "it kept no activations to backpropagate through");
        return NULL;
    }
    if (rc == -5) {
        PyErr_SetString(PyExc_RuntimeError, "a feed-forward output weight was set to train after "
                        "the last forward, which kept only what the frozen weight needed: run "
                        "the forward again");
        return NULL;
    }
    if (rc == -4) {
        PyErr_SetString(PyExc_RuntimeError, "grad_hidden needs a forward that returned the hidden "
                        "states; the last one computed only the first tokens the head reads");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *encoder_activation_bytes(PcEncoderObject *self, PyObject *Py_UNUSED(ignored)) {
    if (ready(self) < 0) return NULL;
    glue_engine_lock();
    long long bytes = pc_encoder_activation_bytes(self->enc);
    glue_engine_unlock();
    return PyLong_FromLongLong(bytes);
}

static PyObject *encoder_release_activations(PcEncoderObject *self,
                                             PyObject *Py_UNUSED(ignored)) {
    if (ready(self) < 0) return NULL;
    glue_engine_lock();
    pc_encoder_release_activations(self->enc);
    glue_engine_unlock();
    Py_RETURN_NONE;
}

static PyObject *encoder_inference_bytes_per_token(PcEncoderObject *self,
                                                   PyObject *Py_UNUSED(ignored)) {
    if (ready(self) < 0) return NULL;
    return PyLong_FromLongLong(pc_encoder_inference_bytes_per_token(self->enc));
}

static PyObject *encoder_set_inference_rows(PcEncoderObject *self, PyObject *arg) {
    if (ready(self) < 0) return NULL;
    long long rows = PyLong_AsLongLong(arg);
    if (rows == -1 && PyErr_Occurred()) return NULL;
    if (rows < 0) {
        PyErr_Format(PyExc_ValueError, "inference_rows must be >= 0 (0: whole batch), got %lld", rows);
        return NULL;
    }
    glue_engine_lock();
    pc_encoder_set_inference_rows(self->enc, (int64_t)rows);
    glue_engine_unlock();
    Py_RETURN_NONE;
}

/* gate_values() -> [(layer, site, which, gates (B,G) float32)]: the gates of the last forward,
 * which kept its activations; site 'out' (which: the linear's index), 'attention' / 'ffn'
 * (block, which 0 / 1) or 'kv'. Copied out under the engine lock, the arrays built after. */
typedef struct {
    int layer, which, G, B;
    pc_site_kind site;
    float *g;
} gate_record;

typedef struct {
    gate_record *rec;
    int n, cap, failed;
} gate_records;

static void gate_visit(void *ctx, int layer, pc_site_kind site, int which, int G, const float *g,
                       int B) {
    gate_records *out = ctx;
    if (out->failed) return;
    if (out->n == out->cap) {
        const int cap = out->cap ? 2 * out->cap : 16;
        gate_record *rec = realloc(out->rec, sizeof *rec * (size_t)cap);
        if (!rec) {
            out->failed = 1;
            return;
        }
        out->rec = rec;
        out->cap = cap;
    }
    float *copy = malloc(sizeof(float) * (size_t)B * G);
    if (!copy) {
        out->failed = 1;
        return;
    }
    memcpy(copy, g, sizeof(float) * (size_t)B * G);
    out->rec[out->n++] = (gate_record){layer, which, G, B, site, copy};
}

static PyObject *encoder_gate_values(PcEncoderObject *self, PyObject *Py_UNUSED(ignored)) {
    if (ready(self) < 0) return NULL;
    gate_records out = {0};
    glue_engine_lock();
    const int status = pc_encoder_gate_values(self->enc, gate_visit, &out);
    glue_engine_unlock();
    PyObject *list = NULL;
    if (status == -2) {
        PyErr_SetString(PyExc_RuntimeError, "gate_values() needs a forward that kept its "
                        "activations (not under no_grad) since the model last changed");
    } else if (status == -1 || out.failed) {
        PyErr_NoMemory();
    } else if ((list = PyList_New(0))) {
        for (int i = 0; i < out.n; i++) {
            const gate_record *r = &out.rec[i];
            npy_intp dims[2] = {r->B, r->G};
            PyObject *arr = PyArray_SimpleNew(2, dims, NPY_FLOAT32);
            if (!arr) {
                Py_CLEAR(list);
                break;
            }
            memcpy(PyArray_DATA((PyArrayObject *)arr), r->g, sizeof(float) * (size_t)r->B * r->G);
            const char *name = r->site == PC_SITE_LINEAR_OUT ? "out"
                               : r->site == PC_SITE_KV       ? "kv"
                               : r->which == PC_BLOCK_ATTENTION ? "attention" : "ffn";
            PyObject *item = Py_BuildValue("(isiN)", r->layer, name, r->which, arr);
            if (!item || PyList_Append(list, item) < 0) {
                Py_XDECREF(item);
                Py_CLEAR(list);
                break;
            }
            Py_DECREF(item);
        }
    }
    for (int i = 0; i < out.n; i++) free(out.rec[i].g);
    free(out.rec);
    return list;
}

static PyMethodDef encoder_methods[] = {
    {"gate_values", (PyCFunction)encoder_gate_values, METH_NOARGS,
     "gate_values() -> [(layer, 'out' | 'attention' | 'ffn' | 'kv', which, gates (B, G))]: "
     "the gated adapters' gates of the last forward (which kept its activations)"},
    {"params", (PyCFunction)encoder_params, METH_NOARGS, "[(name, Tensor, is_head)]"},
    {"linears", (PyCFunction)encoder_linears, METH_NOARGS, "[(name, in, out, layer)]"},
    {"set_block_adapters", (PyCFunction)encoder_set_block_adapters, METH_VARARGS,
     "set_block_adapters(layer, 'attention' | 'ffn' | 'kv', [(method, tensors: dict, "
     "options: dict)]): the adapter at a block's junction or at a layer's extra key/value "
     "rows; (-1, 'embeddings', ...): at the word-embedding rows; [] removes it"},
    {"set_adapters", (PyCFunction)encoder_set_adapters, METH_VARARGS,
     "set_adapters(index, [(method, 'in' | 'out', tensors, scale, dropout), ...]): the "
     "linear's adapters, run in list order; [] removes them"},
    {"set_linear_params", (PyCFunction)encoder_set_linear_params, METH_VARARGS,
     "set_linear_params(index, weight, bias): use these tensors for a head linear"},
    {"forward", (PyCFunction)encoder_forward, METH_VARARGS,
     "forward(ids, positions, types, mask, training, seed, want_hidden, keep_activations=True)"
     " -> (hidden, pooled, logits)"},
    {"backward", (PyCFunction)(void (*)(void))encoder_backward, METH_VARARGS | METH_KEYWORDS,
     "backward(d_logits=None, d_hidden=None, d_pooled=None)"},
    {"set_inference_rows", (PyCFunction)encoder_set_inference_rows, METH_O,
     "set_inference_rows(rows): eval forwards without a backward run the layers in groups of"
     " about rows tokens (0: the whole batch)"},
    {"inference_bytes_per_token", (PyCFunction)encoder_inference_bytes_per_token, METH_NOARGS,
     "scratch bytes per token of a group in a grouped eval forward"},
    {"activation_bytes", (PyCFunction)encoder_activation_bytes, METH_NOARGS,
     "bytes held for activations"},
    {"release_activations", (PyCFunction)encoder_release_activations, METH_NOARGS,
     "free the activation arena and batch-sized scratch (forgets the last forward)"},
    {NULL, NULL, 0, NULL}};

PyTypeObject PcEncoderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "peftcore._C.Encoder",
    .tp_basicsize = sizeof(PcEncoderObject),
    .tp_dealloc = (destructor)encoder_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Encoder(config): a BERT-family encoder in the C engine.",
    .tp_methods = encoder_methods,
    .tp_init = (initproc)encoder_init,
    .tp_new = PyType_GenericNew,
};

int glue_register_models(PyObject *module) {
    if (PyType_Ready(&PcEncoderType) < 0) return -1;
    Py_INCREF(&PcEncoderType);
    if (PyModule_AddObject(module, "Encoder", (PyObject *)&PcEncoderType) < 0) {
        Py_DECREF(&PcEncoderType);
        return -1;
    }
    return 0;
}
