"""Differentiable ops of the C engine, one forward and one backward function each.

Forward functions follow torch.nn.functional's signatures where one exists; inputs are
float32 NumPy arrays (or peftcore Tensors), outputs are new NumPy arrays. Backward
functions take the gradient of the output and what the forward saw, and return the
gradients of the inputs. Every call releases the GIL while it computes.
"""
from __future__ import annotations

import numpy as np

from . import _C
from .utils.checks import is_int

__all__ = [
    "linear", "linear_backward", "embedding", "embedding_backward", "layer_norm",
    "layer_norm_backward", "gelu", "gelu_backward", "tanh", "tanh_backward", "relu",
    "relu_backward", "softmax", "softmax_backward", "add", "add_backward", "dropout",
    "dropout_backward", "multi_head_attention", "multi_head_attention_backward",
    "cross_entropy", "cross_entropy_backward", "mse_loss", "mse_loss_backward",
    "binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits_backward",
    "lstm", "lstm_backward",
]


_INT32_MAX = 2**31 - 1
_INT64_RANGE = (-2**63, 2**63 - 1)


def _int_arg(fn: str, name: str, value, lo: int, hi: int) -> int:
    """An int argument (NumPy ints too, bools not) in [lo, hi], or an error naming it."""
    if not is_int(value):
        raise TypeError(f"{fn}: {name} must be an int, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{fn}: {name} must be in [{lo}, {hi}], got {value}")
    return int(value)


def _check_mask(mask):
    """attention_mask values are 1 (attend) or 0 (padding), as the model's forward requires."""
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.dtype.kind not in "biuf":
        raise TypeError(f"multi_head_attention: attention_mask must be numbers or bools, got "
                        f"{m.dtype}")
    bad = (m != 0) & (m != 1)
    if bad.any():
        raise ValueError(f"multi_head_attention: attention_mask must hold 1 (attend) or 0 "
                         f"(padding), got {m[bad].flat[0]}")
    return m


def linear(input, weight, bias=None):
    """y = input · weightᵀ + bias; input (..., in), weight (out, in), bias (out,)."""
    return _C.linear_forward(input, weight, bias)


def linear_backward(grad_output, input, weight, weight_grad=False, bias_grad=False):
    """Returns (d_input, d_weight or None, d_bias or None); weight gradients only when asked."""
    return _C.linear_backward(grad_output, input, weight, bool(weight_grad), bool(bias_grad))


def embedding(input, weight):
    """weight[input] for int32/int64 ids; an id outside [0, num_embeddings) raises IndexError."""
    return _C.embedding_forward(input, weight)


def embedding_backward(grad_output, input, num_embeddings):
    """Scatter-add of grad_output (input.shape + (dim,)) into a (num_embeddings, dim) gradient."""
    num_embeddings = _int_arg("embedding_backward", "num_embeddings", num_embeddings, 0,
                              _INT64_RANGE[1])
    return _C.embedding_backward(grad_output, input, num_embeddings)


def _check_normalized_shape(input, normalized_shape):
    if not isinstance(input, (np.ndarray, _C.Tensor)):
        raise TypeError(f"layer_norm: input must be a float32 array, got {type(input).__name__}")
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if len(shape) != 1 or np.shape(input)[-1:] != shape:
        raise ValueError(
            f"layer_norm: normalized_shape must be the input's last dimension "
            f"{tuple(np.shape(input)[-1:])}, got {shape}")


def layer_norm(input, normalized_shape, weight, bias, eps=1e-5, return_stats=False):
    """LayerNorm over the last dimension. With return_stats, also (mean, rstd) per row."""
    _check_normalized_shape(input, normalized_shape)
    out, mean, rstd = _C.layernorm_forward(input, weight, bias, float(eps))
    return (out, mean, rstd) if return_stats else out


def layer_norm_backward(grad_output, input, weight, eps=1e-5, mean=None, rstd=None):
    """Returns (d_input, d_weight, d_bias). mean/rstd are recomputed when not given."""
    if mean is None or rstd is None:
        _, mean, rstd = _C.layernorm_forward(input, weight, np.zeros_like(weight), float(eps))
    return _C.layernorm_backward(grad_output, input, weight, mean, rstd)


def _gelu_kind(approximate):
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return approximate == "tanh"


def gelu(input, approximate="none"):
    """x·Φ(x) (exact, as BERT) or the tanh approximation."""
    if _gelu_kind(approximate):
        return _C.gelu_tanh_forward(input)
    return _C.gelu_forward(input)


def gelu_backward(grad_output, input, approximate="none"):
    if _gelu_kind(approximate):
        return _C.gelu_tanh_backward(grad_output, input)
    return _C.gelu_backward(grad_output, input)


def tanh(input):
    return _C.tanh_forward(input)


def tanh_backward(grad_output, output):
    """Takes the forward's output y: dx = dy·(1 - y²)."""
    return _C.tanh_backward(grad_output, output)


def relu(input):
    return _C.relu_forward(input)


def relu_backward(grad_output, input):
    return _C.relu_backward(grad_output, input)


def softmax(input, dim=-1):
    """Softmax over the last dimension (the only one supported)."""
    if dim not in (-1, np.ndim(input) - 1):
        raise ValueError(f"softmax: only the last dimension is supported, got dim={dim}")
    return _C.softmax_forward(input)


def softmax_backward(grad_output, output):
    """Takes the forward's output y: dx = y ⊙ (dy - Σ dy·y)."""
    return _C.softmax_backward(grad_output, output)


def add(input, other):
    """Residual add."""
    return _C.add_forward(input, other)


def add_backward(grad_output):
    """Both inputs receive the output's gradient."""
    g = _C.dropout_forward(grad_output, 0.0, 0)  # a checked float32 copy
    return g, g.copy()


def _check_seed(seed):
    if not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**64:
        raise ValueError(f"dropout: seed must be an int in [0, 2**64), got {seed!r}")
    return int(seed)


def dropout(input, p=0.5, training=True, seed=0):
    """Inverted dropout whose mask depends only on (seed, element index)."""
    if not training:
        _C.dropout_forward(np.zeros(0, np.float32), float(p), 0)  # checks p
        p = 0.0
    return _C.dropout_forward(input, float(p), _check_seed(seed))


def dropout_backward(grad_output, p=0.5, training=True, seed=0):
    if not training:
        _C.dropout_backward(np.zeros(0, np.float32), float(p), 0)  # checks p
        p = 0.0
    return _C.dropout_backward(grad_output, float(p), _check_seed(seed))


def multi_head_attention(query, key, value, num_heads, attention_mask=None, dropout_p=0.0,
                         seed=0, return_probs=False):
    """Scaled-dot-product attention over heads packed in the last dim.

    query: (B, Tq, H·D); key/value: (B, Tk, H·D) (Tq = Tk for self-attention; fewer queries
    when only some positions' outputs are needed); attention_mask: (B, Tk) with 1 = attend,
    0 = padding. Returns out (B, Tq, H·D) and, with return_probs, the softmax probabilities
    (B, H, Tq, Tk) the backward needs."""
    # without return_probs the engine keeps each pair's probabilities in scratch only
    num_heads = _int_arg("multi_head_attention", "num_heads", num_heads, 1, _INT32_MAX)
    attention_mask = _check_mask(attention_mask)
    out, probs = _C.attention_forward(query, key, value, num_heads, attention_mask,
                                      float(dropout_p), _check_seed(seed), bool(return_probs))
    return (out, probs) if return_probs else out


def multi_head_attention_backward(grad_output, probs, query, key, value, num_heads,
                                  dropout_p=0.0, seed=0):
    """Returns (d_query, d_key, d_value)."""
    num_heads = _int_arg("multi_head_attention_backward", "num_heads", num_heads, 1, _INT32_MAX)
    return _C.attention_backward(grad_output, probs, query, key, value, num_heads,
                                 float(dropout_p), _check_seed(seed))


def cross_entropy(input, target, ignore_index=-100, weight=None):
    """Mean cross-entropy of logits (N, C) against class ids (N,); NaN if all are ignored.
    With `weight` (C,) (torch's weight=): Σ w[t]·nll / Σ w[t] over the rows counted."""
    ignore_index = _int_arg("cross_entropy", "ignore_index", ignore_index, *_INT64_RANGE)
    return _C.cross_entropy_forward(input, target, ignore_index, _class_weight(weight))


def cross_entropy_backward(input, target, ignore_index=-100, grad_loss=1.0, weight=None):
    ignore_index = _int_arg("cross_entropy_backward", "ignore_index", ignore_index, *_INT64_RANGE)
    return _C.cross_entropy_backward(input, target, ignore_index, float(grad_loss),
                                     _class_weight(weight))


def _class_weight(weight):
    if weight is None:
        return None
    w = np.asarray(weight)
    if w.dtype.kind not in "iuf":
        raise TypeError(f"cross_entropy: weight must be numbers, got {w.dtype}")
    return np.ascontiguousarray(w, dtype=np.float32)


def binary_cross_entropy_with_logits(input, target):
    """Mean binary cross-entropy of logits against targets in [0, 1], element-wise (the
    multi-label loss); float32 arrays of one shape."""
    return _C.bce_with_logits_forward(input, target)


def binary_cross_entropy_with_logits_backward(input, target, grad_loss=1.0):
    return _C.bce_with_logits_backward(input, target, float(grad_loss))


def mse_loss(input, target):
    return _C.mse_forward(input, target)


def mse_loss_backward(input, target, grad_loss=1.0):
    return _C.mse_backward(input, target, float(grad_loss))


def lstm(input, weight_ih, weight_hh, bias_ih=None, bias_hh=None, reverse=False,
         return_state=False):
    """One direction of one LSTM layer as torch.nn.LSTM computes it (batch first, gates
    i, f, g, o, zero initial state): input (B, T, I), weight_ih (4H, I), weight_hh (4H, H),
    biases (4H,) -> every step's hidden state (B, T, H). reverse runs the steps from the last
    (a bidirectional LSTM's second direction). With return_state, also the state the
    backward needs: (gates after their nonlinearities (B, T, 4H), cell states (B, T, H))."""
    h, gates, c = _C.lstm_forward(input, weight_ih, weight_hh, bias_ih, bias_hh, bool(reverse))
    return (h, (gates, c)) if return_state else h


def lstm_backward(grad_output, input, output, state, weight_ih, weight_hh, reverse=False):
    """Returns (d_input, d_weight_ih, d_weight_hh, d_bias): d_bias is the gradient of bias_ih
    and of bias_hh alike. `output` and `state` are the forward's (return_state=True)."""
    gates, cells = state
    return _C.lstm_backward(grad_output, input, output, gates, cells, weight_ih, weight_hh,
                            bool(reverse))
