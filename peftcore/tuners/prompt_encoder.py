"""Prompt encoders: the small differentiable networks that turn P trainable embeddings into
the virtual tokens or the key/value prefixes a prompt-learning method hands the engine.

Each encoder is a Module whose parameters carry HF PEFT's names (`embedding.weight`,
`mlp_head.0.weight`, `transform.2.bias`, ...) and which runs on peftcore.functional's C ops:

    out = encoder.forward(training)   # (P, out_dim) float32, the same for every sequence
                                      # (step=n: dropout masks of forward n, else its own count)
    grads = encoder.backward(d_out)   # d_out (P, out_dim): the gradient summed over the batch;
                                      # accumulated into .grad of every parameter that
                                      # requires one, and returned {name: gradient}

forward keeps what backward needs (one forward, then at most one backward). The encoders:
  PromptTable       out = E (P, D)                          prompt tuning; prefix tuning
                                                            without projection; any method
                                                            loaded for inference
  MLPPromptEncoder  out = W3·relu(W2·relu(W1·E))            P-tuning, MLP
  LSTMPromptEncoder out = W2·relu(W1·BiLSTM(E))             P-tuning, LSTM (the C op
                                                            peftcore.functional.lstm)
  PrefixProjection  out = W2·tanh(W1·E)                     prefix tuning with projection
"""
from __future__ import annotations

import numpy as np

from .. import _C
from .. import functional as F
from ..models.modules import Module
from ..models.parameter import Parameter


def new_parameter(values) -> Parameter:
    """A trainable float32 Parameter over new engine memory holding `values`."""
    values = np.asarray(values, dtype=np.float32)
    p = Parameter(_C.Tensor.zeros(values.shape))
    p[...] = values
    p.requires_grad = True
    return p


def accumulate(p: Parameter, g) -> None:
    """p.grad += g (the buffer made on first use), if p trains."""
    if not p.requires_grad:
        return
    if p.grad is None:
        p.grad = np.ascontiguousarray(g, dtype=np.float32)
    else:
        p.grad[...] += g


def _torch_linear_init(rng, fan_out: int, fan_in: int):
    """torch.nn.Linear's default init: U(±1/√fan_in) weight and bias."""
    bound = 1.0 / np.sqrt(fan_in)
    return (rng.uniform(-bound, bound, (fan_out, fan_in)), rng.uniform(-bound, bound, fan_out))


class _Linear(Module):
    display_name = "Linear"

    def __init__(self, fan_in: int, fan_out: int, rng):
        super().__init__()
        w, b = _torch_linear_init(rng, fan_out, fan_in)
        self._parameters["weight"] = new_parameter(w)
        self._parameters["bias"] = new_parameter(b)

    def extra_repr(self):
        out, fin = self.weight.shape
        return f"in_features={fin}, out_features={out}, bias=True"

    def forward(self, x, cache):
        cache.append(x)
        return F.linear(x, self.weight, self.bias)

    def backward(self, dy, cache):
        x = cache.pop()
        dx, dw, db = F.linear_backward(dy, x, self.weight, self.weight.requires_grad,
                                       self.bias.requires_grad)
        if dw is not None:
            accumulate(self.weight, dw)
        if db is not None:
            accumulate(self.bias, db)
        return dx


class _Activation(Module):
    """ReLU or Tanh (no parameters)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.display_name = {"relu": "ReLU", "tanh": "Tanh"}[kind]

    def forward(self, x, cache):
        if self.kind == "relu":
            cache.append(x)
            return F.relu(x)
        y = F.tanh(x)
        cache.append(y)
        return y

    def backward(self, dy, cache):
        saved = cache.pop()
        return F.relu_backward(dy, saved) if self.kind == "relu" else F.tanh_backward(dy, saved)


class _Sequential(Module):
    display_name = "Sequential"

    def __init__(self, layers):
        super().__init__()
        for i, layer in enumerate(layers):
            self._modules[str(i)] = layer

    def forward(self, x, cache):
        for layer in self._modules.values():
            x = layer.forward(x, cache)
        return x

    def backward(self, dy, cache):
        for layer in reversed(list(self._modules.values())):
            dy = layer.backward(dy, cache)
        return dy


class _LSTM(Module):
    """torch.nn.LSTM(bidirectional=True, batch_first=True) over one sequence: `num_layers`
    layers, each the concatenation of a forward and a reverse pass, dropout between layers
    in training mode. Parameters named as torch's (weight_ih_l0, ..._reverse)."""

    display_name = "LSTM"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, dropout: float, rng):
        super().__init__()
        self.sizes = (input_size, hidden_size, num_layers)
        self.dropout = float(dropout)
        self._seed, self._calls = int(rng.integers(2**63)), 0
        bound = 1.0 / np.sqrt(hidden_size)
        for layer in range(num_layers):
            fan_in = input_size if layer == 0 else 2 * hidden_size
            for suffix in ("", "_reverse"):
                for name, shape in (("weight_ih", (4 * hidden_size, fan_in)),
                                    ("weight_hh", (4 * hidden_size, hidden_size)),
                                    ("bias_ih", (4 * hidden_size,)), ("bias_hh", (4 * hidden_size,))):
                    self._parameters[f"{name}_l{layer}{suffix}"] = \
                        new_parameter(rng.uniform(-bound, bound, shape))

    def extra_repr(self):
        i, h, n = self.sizes
        return (f"{i}, {h}, num_layers={n}, batch_first=True"
                + (f", dropout={self.dropout}" if self.dropout else "") + ", bidirectional=True")

    def _weights(self, layer, suffix):
        return [self._parameters[f"{n}_l{layer}{suffix}"]
                for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]

    def forward(self, x, cache):
        """x (P, I) -> (P, 2H)."""
        _, H, layers = self.sizes
        seed = (self._seed + self._calls) % 2**64
        self._calls += 1
        training = cache is not None and getattr(self, "_training", False)
        x = np.ascontiguousarray(x, dtype=np.float32)[None]
        for layer in range(layers):
            if layer and training and self.dropout:
                x = F.dropout(x, self.dropout, True, seed + layer)
            outs = []
            for suffix, reverse in (("", False), ("_reverse", True)):
                w = self._weights(layer, suffix)
                h, state = F.lstm(x, *w, reverse=reverse, return_state=True)
                cache.append((x, h, state))
                outs.append(h)
            x = np.concatenate(outs, axis=2)
        cache.append((training, seed))
        return x[0]

    def backward(self, dy, cache):
        _, H, layers = self.sizes
        training, seed = cache.pop()
        d = np.ascontiguousarray(dy, dtype=np.float32)[None]
        for layer in reversed(range(layers)):
            dx = None
            for suffix, reverse, part in (("_reverse", True, 1), ("", False, 0)):
                x, h, state = cache.pop()
                w = self._weights(layer, suffix)
                dh = np.ascontiguousarray(d[:, :, part * H:(part + 1) * H])
                gx, gih, ghh, gb = F.lstm_backward(dh, x, h, state, w[0], w[1], reverse=reverse)
                for p, g in zip(w, (gih, ghh, gb, gb)):
                    accumulate(p, g)
                dx = gx if dx is None else dx + gx
            if layer and training and self.dropout:
                dx = F.dropout_backward(dx, self.dropout, True, seed + layer)
            d = dx
        return d[0]


class _Embedding(Module):
    display_name = "Embedding"

    def __init__(self, values):
        super().__init__()
        self._parameters["weight"] = new_parameter(values)

    def extra_repr(self):
        return f"{self.weight.shape[0]}, {self.weight.shape[1]}"


class PromptEncoderBase(Module):
    """An `embedding` (P, in_dim) and, in subclasses, a head over it (`head_name`)."""

    head_name: str | None = None

    def __init__(self, embedding):
        super().__init__()
        self._modules["embedding"] = _Embedding(embedding)
        self._cache = None

    @property
    def num_tokens(self) -> int:
        return int(self.embedding.weight.shape[0])

    def head(self):
        return self._modules[self.head_name] if self.head_name else None

    def forward(self, training: bool = False, step: int | None = None) -> np.ndarray:
        """`step` picks the dropout masks (the model's forward count, so a resumed run draws
        the same ones); None: the encoder's own count."""
        table = np.array(self.embedding.weight, dtype=np.float32)
        head = self.head()
        if head is None:
            self._cache = []
            return table
        cache = []
        out = head.forward(table, cache)
        self._cache = cache
        return np.ascontiguousarray(out, dtype=np.float32)

    def backward(self, grad) -> dict:
        if self._cache is None:
            raise RuntimeError("prompt encoder: backward() needs a forward() first")
        cache, self._cache = self._cache, None
        grad = np.ascontiguousarray(grad, dtype=np.float32)
        head = self.head()
        d_table = grad if head is None else head.backward(grad, cache)
        accumulate(self.embedding.weight, d_table)
        return {name: p.grad for name, p in self.named_parameters() if p.requires_grad}


class PromptTable(PromptEncoderBase):
    """The virtual tokens are the parameters themselves: out = embedding.weight."""

    display_name = "PromptEmbedding"


class MLPPromptEncoder(PromptEncoderBase):
    """P-tuning's MLP (HF PEFT 0.21): Linear(D, h), ReLU, Linear(h, h), ReLU, Linear(h, D)."""

    display_name = "PromptEncoder"
    head_name = "mlp_head"

    def __init__(self, embedding, hidden_size: int, rng):
        super().__init__(embedding)
        D = int(np.shape(embedding)[1])
        self._modules["mlp_head"] = _Sequential([
            _Linear(D, hidden_size, rng), _Activation("relu"),
            _Linear(hidden_size, hidden_size, rng), _Activation("relu"),
            _Linear(hidden_size, D, rng)])


class LSTMPromptEncoder(PromptEncoderBase):
    """P-tuning's LSTM (HF PEFT 0.21): a bidirectional LSTM (hidden h, encoder_num_layers
    layers, encoder_dropout between them), then Linear(2h, 2h), ReLU, Linear(2h, D)."""

    display_name = "PromptEncoder"
    head_name = "mlp_head"

    def __init__(self, embedding, hidden_size: int, num_layers: int, dropout: float, rng):
        super().__init__(embedding)
        D = int(np.shape(embedding)[1])
        self._modules["lstm_head"] = _LSTM(D, hidden_size, num_layers, dropout, rng)
        self._modules["mlp_head"] = _Sequential([
            _Linear(2 * hidden_size, 2 * hidden_size, rng), _Activation("relu"),
            _Linear(2 * hidden_size, D, rng)])

    def forward(self, training: bool = False, step: int | None = None) -> np.ndarray:
        table = np.array(self.embedding.weight, dtype=np.float32)
        cache = []
        self.lstm_head._training = bool(training)
        if step is not None:
            self.lstm_head._calls = int(step)
        out = self.mlp_head.forward(self.lstm_head.forward(table, cache), cache)
        self._cache = cache
        return np.ascontiguousarray(out, dtype=np.float32)

    def backward(self, grad) -> dict:
        if self._cache is None:
            raise RuntimeError("prompt encoder: backward() needs a forward() first")
        cache, self._cache = self._cache, None
        d = self.mlp_head.backward(np.ascontiguousarray(grad, dtype=np.float32), cache)
        accumulate(self.embedding.weight, self.lstm_head.backward(d, cache))
        return {name: p.grad for name, p in self.named_parameters() if p.requires_grad}


class PrefixProjection(PromptEncoderBase):
    """Prefix tuning's reparameterisation: Linear(D, h), Tanh, Linear(h, out_dim)."""

    display_name = "PrefixEncoder"
    head_name = "transform"

    def __init__(self, embedding, hidden_size: int, out_dim: int, rng, zero_last=False):
        super().__init__(embedding)
        D = int(np.shape(embedding)[1])
        last = _Linear(hidden_size, out_dim, rng)
        if zero_last:
            last.weight[...] = 0.0
            last.bias[...] = 0.0
        self._modules["transform"] = _Sequential([_Linear(D, hidden_size, rng),
                                                  _Activation("tanh"), last])
