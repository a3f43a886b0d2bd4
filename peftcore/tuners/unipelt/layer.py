"""UniPELT's pieces at their places in the model, named as AdapterHub `adapters` names them:

    <...>.attention.self.query.loras.<adapter>.{lora_A, lora_B, gate.weight, gate.bias}
    <...>.attention.self.prefix_tuning.prefix_gates.<adapter>.{weight, bias}
    <base>.prefix_tuning.prefix_tunings.<adapter>.self_prefix.{wte.weight, control_trans.0.*,
                                                                control_trans.2.*}
                                                   (flat: ...self_prefix.control_trans)
    <...>.output.adapters.<adapter>.*               (the bottleneck tuner's BottleneckLayer)

The engine runs LoRA at the linear's output site and the prefix at the layer's KV site, each
with its gate (csrc/adapters/lora.c, prefix.c, csrc/ops/gate.c). The prefix pool's MLP is
composed of peftcore.functional ops: before every forward it writes each layer's key and
value rows into the tensors the KV sites read, and after every backward it carries their
gradients back to its parameters (EncoderModel's adapter hooks).
"""
from __future__ import annotations

import math

import numpy as np

from ... import functional as F
from ...models.modules import Embedding, Module, named_container
from ..bottleneck.layer import Dense, _shown
from ..tuners_utils import ModulePerAdapter, new_parameter, set_block_adapters, set_linear_adapters


def _kaiming_uniform(shape, fan_in, rng):
    """torch's nn.Linear default: U(±1/√fan_in) (kaiming_uniform_ with a = √5)."""
    bound = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, shape)


def _gate(fin: int, outputs: int, rng) -> Dense:
    """AdapterHub's gate: nn.Linear(fin, outputs), weight N(0, 0.02), torch's default bias."""
    gate = Dense(fin, outputs)
    gate.weight[...] = rng.normal(0.0, 0.02, gate.weight.shape)
    gate.bias[...] = _kaiming_uniform(gate.bias.shape, fin, rng)
    return gate


class _PerAdapter(ModulePerAdapter):
    """UniPELT's tuner layers: per-adapter modules, nothing to merge."""

    def merge_one(self, adapter: str):
        raise ValueError("UniPELT's gated submodules cannot be merged into the base weights")

    def unload(self, merge: bool):
        self.active_adapter = None
        self.sync()
        return None

    # files: state(adapter) gives the keys after `<layer>.`, the adapter's name taken out
    def load_state(self, adapter: str, tensors: dict):
        for key, p in self.state(adapter).items():
            p[...] = tensors[key]


# ------------------------------------------------------------------ LoRA

class LoRA(Module):
    """One adapter's LoRA on one linear (AdapterHub's LoRA module): lora_A (r, in),
    lora_B (out, r) and, gated, gate = Linear(in, 1)."""

    def __init__(self, fin: int, fout: int, config, rng):
        super().__init__()
        self.r, self.scaling, self.dropout_p = config.r, config.scaling, config.dropout
        self.use_gating = config.use_gating
        A, B = new_parameter((config.r, fin)), new_parameter((fout, config.r))
        if config.init_weights == "lora":
            A[...] = _kaiming_uniform(A.shape, fin, rng)
            B[...] = 0.0
        else:   # "bert"
            A[...] = rng.normal(0.0, 0.02, A.shape)
            B[...] = rng.normal(0.0, 0.02, B.shape)
        self._parameters["lora_A"], self._parameters["lora_B"] = A, B
        if config.use_gating:
            self._modules["gate"] = _gate(fin, 1, rng)

    def engine_entry(self) -> tuple:
        tensors = [self.lora_A.tensor, self.lora_B.tensor]
        if self.use_gating:
            tensors += [self.gate.weight.tensor, self.gate.bias.tensor]
        # gated: the gate replaces alpha / r (the scale is unused)
        return ("lora", "out", tuple(tensors), float(self.scaling), float(self.dropout_p))


class LoRALayer(_PerAdapter):
    """The `loras` ModuleDict a linear gets (AdapterHub's LoRALinear keeps it there)."""

    display_name = "ModuleDict"
    module_type = "LoRALinear"

    def __init__(self, engine, index: int, fin: int, fout: int):
        super().__init__(engine, index)
        self.fin, self.fout = fin, fout   # its children are the adapters' LoRA modules

    def add(self, adapter: str, config, rng):
        self._modules[adapter] = LoRA(self.fin, self.fout, config, rng)

    def sync(self):
        a = self.running_adapter()
        set_linear_adapters(self._engine, self.index,
                            [] if a is None else [self._modules[a].engine_entry()])

    def state(self, adapter: str) -> dict:
        return dict(self._modules[adapter].named_parameters())


# ------------------------------------------------------------------ prefix tuning

class PrefixTuningLayer(_PerAdapter):
    """A layer's `prefix_tuning` module (AdapterHub's PrefixTuningLayer): the gates of each
    adapter (`prefix_gates.<adapter>`, Linear(C, 1 or 2)) and the key/value rows (P, C) the
    pool writes for this layer, which the engine's KV site reads."""

    display_name = "PrefixTuningLayer"
    module_type = "PrefixTuningLayer"
    _container = "prefix_gates"

    def __init__(self, engine, layer: int, hidden: int):
        super().__init__(engine)
        self.layer, self.hidden = layer, hidden
        self._modules["prefix_gates"] = named_container("ModuleDict")
        self.rows: dict = {}    # adapter -> (key, value) Parameters, not in the tree

    def adapter_names(self) -> list:
        return list(self.rows)

    def adapter_parameters(self, adapter: str) -> list:
        gate = self.prefix_gates._modules.get(adapter)
        return [] if gate is None else [gate.weight, gate.bias]

    def delete_adapter(self, adapter: str):
        self.rows.pop(adapter, None)
        super().delete_adapter(adapter)

    def add(self, adapter: str, rows: tuple, gates: int, rng):
        self.rows[adapter] = rows
        if gates:
            self.prefix_gates._modules[adapter] = _gate(self.hidden, gates, rng)

    def sync(self):
        a = self.running_adapter()
        entries = []
        if a is not None:
            key, value = self.rows[a]
            tensors = {"key": key.tensor, "value": value.tensor}
            gate = self.prefix_gates._modules.get(a)
            if gate is not None:
                tensors.update(gate_weight=gate.weight.tensor, gate_bias=gate.bias.tensor)
            entries = [("prefix", tensors, {})]
        set_block_adapters(self._engine, self.layer, "kv", entries)

    def state(self, adapter: str) -> dict:
        gate = self.prefix_gates._modules.get(adapter)
        return {} if gate is None else {"prefix_gates.weight": gate.weight,
                                        "prefix_gates.bias": gate.bias}


class PrefixTuning(Module):
    """One adapter's prefix (AdapterHub's PrefixTuning, or FlatPrefixTuning when flat) for
    L layers of width C: its forward gives the (P, L·2·C) rows, layer j's keys at columns
    [2jC, (2j+1)C) and values after them."""

    def __init__(self, layers: int, hidden: int, config, rng):
        super().__init__()
        P, C, width = config.prefix_length, hidden, layers * 2 * hidden
        self.P, self.width, self.flat = P, width, config.flat
        self.non_linearity = config.non_linearity.lower()
        if config.flat:
            self._parameters["control_trans"] = new_parameter((P * width,),
                                                              rng.standard_normal(P * width))
        else:
            wte = Embedding()
            wte._parameters["weight"] = new_parameter((P, C), rng.standard_normal((P, C)))
            self._modules["wte"] = wte
            seq = named_container("Sequential")
            first, second = Dense(C, config.bottleneck_size), Dense(config.bottleneck_size, width)
            for lin in (first, second):
                lin.weight[...] = _kaiming_uniform(lin.weight.shape, lin.in_features, rng)
                lin.bias[...] = _kaiming_uniform(lin.bias.shape, lin.in_features, rng)
            seq._modules["0"] = first
            seq._modules["1"] = _shown("Activation_Function_Class")
            seq._modules["2"] = second
            self._modules["control_trans"] = seq
        self._modules["dropout"] = _shown("Dropout", f"p={config.dropout}, inplace=False")
        self._saved = None

    def forward(self) -> np.ndarray:
        """The rows (P, L·2·C); what the backward needs is kept."""
        if self.flat:
            self._saved = None
            return np.asarray(self.control_trans).reshape(self.P, self.width)
        first, second = self.control_trans._modules["0"], self.control_trans._modules["2"]
        emb = np.asarray(self.wte.weight)            # Embedding(arange(P))
        pre = F.linear(emb, first.weight, first.bias)
        act = F.tanh(pre) if self.non_linearity == "tanh" else \
            F.relu(pre) if self.non_linearity == "relu" else F.gelu(pre)
        self._saved = (emb, pre, act)
        return F.linear(act, second.weight, second.bias)

    def backward(self, d_rows: np.ndarray):
        """Accumulate the parameters' gradients from that of the rows (P, L·2·C)."""
        if self.flat:
            _accumulate(self.control_trans, d_rows.reshape(-1))
            return
        emb, pre, act = self._saved
        first, second = self.control_trans._modules["0"], self.control_trans._modules["2"]
        d_act, d_w2, d_b2 = F.linear_backward(d_rows, act, second.weight, True, True)
        d_pre = F.tanh_backward(d_act, act) if self.non_linearity == "tanh" else \
            F.relu_backward(d_act, pre) if self.non_linearity == "relu" else \
            F.gelu_backward(d_act, pre)
        d_emb, d_w1, d_b1 = F.linear_backward(d_pre, emb, first.weight, True, True)
        for p, g in ((second.weight, d_w2), (second.bias, d_b2), (first.weight, d_w1),
                     (first.bias, d_b1), (self.wte.weight, d_emb)):
            _accumulate(p, g)


def _accumulate(p, g):
    if not p.requires_grad:
        return
    if p.grad is None:
        p.grad = g.reshape(p.shape)
    else:
        p.grad[...] += g.reshape(p.shape)


class PrefixTuningPool(_PerAdapter):
    """The model's `prefix_tuning` module (AdapterHub's PrefixTuningPool): per adapter, its
    prefix (`prefix_tunings.<adapter>.self_prefix`) and the (key, value) rows of each of
    its layers, which it fills before every forward and whose gradients it carries back
    after every backward."""

    display_name = "PrefixTuningPool"
    module_type = "PrefixTuningPool"
    _container = "prefix_tunings"

    def __init__(self, engine, hidden: int):
        super().__init__(engine)
        self.hidden = hidden
        self._modules["prefix_tunings"] = named_container("ModuleDict")
        self.rows: dict = {}    # adapter -> [(key, value)] per prefixed layer, in order
        self._filled = None     # the adapter whose rows the last forward wrote

    def add(self, adapter: str, layers: int, config, rng):
        group = named_container("ModuleDict")
        group._modules["self_prefix"] = PrefixTuning(layers, self.hidden, config, rng)
        self.prefix_tunings._modules[adapter] = group
        P, C = config.prefix_length, self.hidden
        self.rows[adapter] = [(new_parameter((P, C)), new_parameter((P, C)))
                              for _ in range(layers)]

    def delete_adapter(self, adapter: str):
        self.rows.pop(adapter, None)
        super().delete_adapter(adapter)

    def prefix(self, adapter: str) -> PrefixTuning:
        return self.prefix_tunings._modules[adapter]._modules["self_prefix"]

    def sync(self):
        """Nothing for the engine itself: the layers' KV sites read the rows it fills."""

    def state(self, adapter: str) -> dict:
        return {f"prefix_tunings.self_prefix.{k}": p
                for k, p in self.prefix(adapter).named_parameters()}

    # ------------------------------------------------------------ the model's hooks

    def before_forward(self):
        adapter = self.running_adapter()
        self._filled = adapter
        if adapter is None:
            return
        prefix = self.prefix(adapter)
        trains = any(p.requires_grad for _, p in prefix.named_parameters())
        rows = prefix.forward()
        C = self.hidden
        for j, (key, value) in enumerate(self.rows[adapter]):
            key[...] = rows[:, 2 * j * C:(2 * j + 1) * C]
            value[...] = rows[:, (2 * j + 1) * C:(2 * j + 2) * C]
            for p in (key, value):
                if p.requires_grad != trains:
                    p.requires_grad = trains
                p.grad = None

    def after_backward(self):
        adapter = self._filled
        if adapter is None or adapter not in self.rows:
            return
        pairs = self.rows[adapter]
        if not pairs or not pairs[0][0].requires_grad:
            return
        P, C = pairs[0][0].shape
        d_rows = np.zeros((P, len(pairs) * 2 * C), np.float32)
        for j, (key, value) in enumerate(pairs):
            for k, p in enumerate((key, value)):
                if p.grad is not None:
                    d_rows[:, (2 * j + k) * C:(2 * j + k + 1) * C] = p.grad
                    p.grad = None
        self.prefix(adapter).backward(d_rows)
