"""Bottleneck adapters at one transformer output block, named as AdapterHub `adapters`.

A block (attention output or feed-forward output) computes, without adapters,
    out = LayerNorm(h + x)          h: its dense output after dropout, x: its residual input.
With adapter a running, the engine computes AdapterHub's single-adapter flow instead
(Adapter.pre_forward → forward → post_forward), for example Pfeiffer's defaults:
    y = LayerNorm(h + x)                                   original_ln_before
    z = up(σ(down(y))) · scaling + h                       residual_before_ln=True: h
    out = LayerNorm(z + x)                                 original_ln_after
with down (r, C), up (C, r) and r = C // reduction_factor; ln_before / ln_after add new
LayerNorms around the bottleneck, use_gating multiplies by the token mean of σ(gate(y)).

Names as AdapterHub: the block gets a child `adapters` (a ModuleDict of one Adapter per
adapter name), so parameters are `<block>.adapters.<adapter>.adapter_down.0.weight`,
`...adapter_up.bias`, `...adapter_norm_before.weight`, `...gate.weight`, `...scaling`.
"""
from __future__ import annotations

import math

import numpy as np

from ...models.modules import LayerNorm, Module, named_container
from ..tuners_utils import ModulePerAdapter, new_parameter, set_block_adapters


class Dense(Module):
    """A per-adapter nn.Linear (weight (out, in) and bias) the engine reads."""

    display_name = "Linear"

    def __init__(self, fin: int, fout: int):
        super().__init__()
        self.in_features, self.out_features = fin, fout
        self._parameters["weight"] = new_parameter((fout, fin))
        self._parameters["bias"] = new_parameter((fout,))

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias=True"


def _layer_norm(size: int) -> LayerNorm:
    """torch's nn.LayerNorm(size) (eps 1e-5), as AdapterHub creates it."""
    norm = LayerNorm(1e-5)
    norm._parameters["weight"] = new_parameter((size,), 1.0)
    norm._parameters["bias"] = new_parameter((size,), 0.0)
    return norm


def _second_name(norm: LayerNorm) -> LayerNorm:
    """Where AdapterHub lists the same LayerNorm a second time (adapter_down.0): shown
    alike, holding no parameters (they are counted and saved once, under the first name)."""
    alias = LayerNorm(norm.eps)
    alias.extra_repr = norm.extra_repr
    return alias


def _shown(name: str, extra: str = "") -> Module:
    """A module the engine applies itself (activation, dropout), shown where AdapterHub has it."""
    module = named_container(name)
    module.extra_repr = lambda: extra
    return module


class Adapter(Module):
    """One adapter's parts at one block, in AdapterHub's order and names."""

    def __init__(self, hidden: int, bottleneck: int, config):
        super().__init__()
        self.hidden, self.bottleneck = hidden, bottleneck
        self.non_linearity = config.non_linearity.lower()
        self.ln_before, self.ln_after = config.ln_before, config.ln_after
        self.use_gating = config.use_gating
        self.scaling_kind = config.scaling if isinstance(config.scaling, str) else None
        self.scaling_value = 1.0 if self.scaling_kind else float(config.scaling)
        self.dropout_p = config.dropout
        self.options = {
            "non_linearity": self.non_linearity,
            "residual_before_ln": config.residual_before_ln,
            "original_ln_before": config.original_ln_before,
            "original_ln_after": config.original_ln_after,
            "adapter_residual_before_ln": config.adapter_residual_before_ln,
            "scaling": self.scaling_value,
            "dropout": self.dropout_p,
        }
        if self.scaling_kind is not None:   # AdapterHub: a Parameter of the Adapter itself
            self._parameters["scaling"] = new_parameter((1,) if self.scaling_kind == "learned"
                                                        else (hidden,), 1.0)
        if self.ln_before:
            self._modules["adapter_norm_before"] = _layer_norm(hidden)
        act = _shown("Activation_Function_Class")
        self._modules["non_linearity"] = act
        down = named_container("Sequential")
        if self.ln_before:   # AdapterHub lists adapter_norm_before here as well
            down._modules["0"] = _second_name(self.adapter_norm_before)
        down._modules[str(len(down._modules))] = Dense(hidden, bottleneck)
        down._modules[str(len(down._modules))] = act
        self._modules["adapter_down"] = down
        self._modules["adapter_up"] = Dense(bottleneck, hidden)
        if self.ln_after:
            self._modules["adapter_norm_after"] = _layer_norm(hidden)
        if self.use_gating:
            self._modules["gate"] = Dense(hidden, 1)
        self._modules["dropout"] = _shown("Dropout", f"p={self.dropout_p}, inplace=False")

    @property
    def down_key(self) -> str:
        return "adapter_down.1" if self.ln_before else "adapter_down.0"

    @property
    def down(self) -> Dense:
        return self.adapter_down[self.down_key.rsplit(".", 1)[1]]

    # ------------------------------------------------------------ initialisation

    def init_weights(self, kind: str, rng: np.random.Generator):
        """AdapterHub's inits. LayerNorms start at 1/0 and scaling at ones in all of them."""
        down, up = self.down, self.adapter_up
        gate = self._modules.get("gate")
        if kind == "bert":
            for lin in (down, up) + ((gate,) if gate is not None else ()):
                lin.weight[...] = rng.normal(0.0, 0.02, lin.weight.shape)
                lin.bias[...] = 0.0
        elif kind == "mam_adapter":
            _kaiming_uniform(down, rng, bias=False)
            up.weight[...] = 0.0
            up.bias[...] = 0.0
            if gate is not None:
                gate.weight[...] = rng.normal(0.0, 0.02, gate.weight.shape)
                gate.bias[...] = 0.0
        elif kind == "houlsby":
            for lin in (down, up):
                lin.weight[...] = _truncated_normal(rng, 0.01, 0.02, lin.weight.shape)
                lin.bias[...] = 0.0
            if gate is not None:   # AdapterHub leaves torch's default nn.Linear init
                _kaiming_uniform(gate, rng, bias=True)
        else:
            raise ValueError(f"unknown init_weights {kind!r}")

    # ------------------------------------------------------------ engine and files

    def engine_entry(self) -> tuple:
        tensors = {"down_weight": self.down.weight.tensor, "down_bias": self.down.bias.tensor,
                   "up_weight": self.adapter_up.weight.tensor,
                   "up_bias": self.adapter_up.bias.tensor}
        if self.ln_before:
            tensors["norm_before_weight"] = self.adapter_norm_before.weight.tensor
            tensors["norm_before_bias"] = self.adapter_norm_before.bias.tensor
        if self.ln_after:
            tensors["norm_after_weight"] = self.adapter_norm_after.weight.tensor
            tensors["norm_after_bias"] = self.adapter_norm_after.bias.tensor
        if self.use_gating:
            tensors["gate_weight"] = self.gate.weight.tensor
            tensors["gate_bias"] = self.gate.bias.tensor
        if self.scaling_kind is not None:
            tensors["scaling"] = self._parameters["scaling"].tensor
        return ("bottleneck", tensors, dict(self.options))

    def state(self) -> dict:
        """AdapterHub's keys after `adapters.<adapter>.` -> the Parameters (in its order)."""
        return dict(self.named_parameters())


def expected_adapter_state(hidden: int, bottleneck: int, config) -> dict:
    """The keys and shapes Adapter(hidden, bottleneck, config).state() has."""
    shapes = {}
    if isinstance(config.scaling, str):
        shapes["scaling"] = (1,) if config.scaling == "learned" else (hidden,)
    if config.ln_before:
        shapes.update({"adapter_norm_before.weight": (hidden,), "adapter_norm_before.bias": (hidden,)})
    down = "adapter_down.1" if config.ln_before else "adapter_down.0"
    shapes.update({f"{down}.weight": (bottleneck, hidden), f"{down}.bias": (bottleneck,),
                   "adapter_up.weight": (hidden, bottleneck), "adapter_up.bias": (hidden,)})
    if config.ln_after:
        shapes.update({"adapter_norm_after.weight": (hidden,), "adapter_norm_after.bias": (hidden,)})
    if config.use_gating:
        shapes.update({"gate.weight": (1, hidden), "gate.bias": (1,)})
    return shapes


def _kaiming_uniform(lin: Dense, rng, bias: bool):
    """torch's nn.Linear default: weight U(±1/√in) (kaiming_uniform_, a=√5); the bias
    U(±1/√in) too, or zero."""
    bound = 1.0 / math.sqrt(lin.in_features)
    lin.weight[...] = rng.uniform(-bound, bound, lin.weight.shape)
    lin.bias[...] = rng.uniform(-bound, bound, lin.bias.shape) if bias else 0.0


def _truncated_normal(rng, std: float, bound: float, shape) -> np.ndarray:
    """N(0, std²) draws redrawn until inside [-bound, bound]."""
    out = rng.normal(0.0, std, shape)
    bad = np.abs(out) > bound
    while bad.any():
        out[bad] = rng.normal(0.0, std, int(bad.sum()))
        bad = np.abs(out) > bound
    return out


class BottleneckLayer(ModulePerAdapter):
    """The `adapters` ModuleDict of one output block: one Adapter per adapter name; tells
    the engine which one runs there."""

    display_name = "ModuleDict"
    module_type = "BottleneckLayer"

    def __init__(self, engine, layer: int, block: str, hidden: int):
        super().__init__(engine)
        self.layer, self.block, self.hidden = layer, block, hidden

    def add(self, adapter: str, bottleneck: int, config, rng: np.random.Generator):
        module = Adapter(self.hidden, bottleneck, config)
        if config.init_weights_seed is not None:   # AdapterHub re-seeds for every module
            rng = np.random.default_rng(config.init_weights_seed)
        module.init_weights(config.init_weights, rng)
        self._modules[adapter] = module

    def sync(self):
        a = self.running_adapter()
        entries = [] if a is None else [self._modules[a].engine_entry()]
        set_block_adapters(self._engine, self.layer, self.block, entries)

    def merge_one(self, adapter: str):
        raise ValueError("a bottleneck adapter is non-linear and cannot be merged")

    def unload(self, merge: bool):
        """Stop adapting; the tuner takes this ModuleDict out of its block."""
        self.active_adapter = None
        self.sync()
        return None

    # files: keys after `<block>.adapters.` without the adapter name
    def state(self, adapter: str) -> dict:
        return self._modules[adapter].state()

    def load_state(self, adapter: str, tensors: dict):
        for key, p in self._modules[adapter].state().items():
            p[...] = tensors[key]
