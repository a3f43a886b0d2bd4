"""(IA)³ on one engine linear, named as HF PEFT's ia3.Linear.

For the active adapter the engine computes, with l the adapter's vector,
    feedforward:  y = (x ⊙ l)·Wᵀ + b        l of shape (1, in)
    otherwise:    y = (x·Wᵀ + b) ⊙ l        l of shape (out, 1)
Names as HF: <name>.base_layer.weight, <name>.ia3_l.<adapter> (a ParameterDict entry).
"""
from __future__ import annotations

import warnings

import numpy as np

from ...models.modules import Linear
from ...models.parameter import Parameter
from ..tuners_utils import BaseTunerLayer, ParameterDict, new_parameter

# HF PEFT divides by l + 1e-8 when unmerging, to avoid dividing by zero
_UNMERGE_EPS = np.float32(1e-8)


class IA3Linear(BaseTunerLayer):
    display_name = "Linear"   # HF's ia3.Linear keeps torch's repr: "Linear(...)"
    module_type = "Linear"
    adapter_layer_names = ("ia3_l",)

    def __init__(self, base_layer: Linear, engine, is_feedforward: bool):
        super().__init__(engine, base_layer.index)
        self._modules["base_layer"] = base_layer
        self._modules["ia3_l"] = ParameterDict()
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.is_feedforward = bool(is_feedforward)

    @staticmethod
    def vector_shape(in_features: int, out_features: int, is_feedforward: bool) -> tuple:
        return (1, in_features) if is_feedforward else (out_features, 1)

    def update_layer(self, adapter: str, init_ia3_weights: bool, rng: np.random.Generator):
        """A new vector: ones, or N(0, 1) draws with init_ia3_weights=False (as HF)."""
        shape = self.vector_shape(self.in_features, self.out_features, self.is_feedforward)
        values = 1.0 if init_ia3_weights else rng.standard_normal(shape)
        self.ia3_l._parameters[adapter] = new_parameter(shape, values)

    def adapter_names(self) -> list:
        return list(self.ia3_l._parameters)

    def adapter_parameters(self, adapter: str) -> list:
        p = self.ia3_l._parameters.get(adapter)
        return [] if p is None else [p]

    def vector(self, adapter: str) -> Parameter:
        return self.ia3_l._parameters[adapter]

    def delete_adapter(self, adapter: str):
        self.ia3_l._parameters.pop(adapter, None)
        super().delete_adapter(adapter)

    def engine_entries(self, adapter: str) -> list:
        site = "in" if self.is_feedforward else "out"
        return [("ia3", site, (self.vector(adapter).tensor,), 1.0, 0.0)]

    # merging, as HF: W ⊙ l (l broadcast over the rows (feedforward) or the columns), and
    # for an output vector the bias too; unmerging divides by l + 1e-8, all in float32
    def merge_one(self, adapter: str):
        l = np.asarray(self.vector(adapter))
        w, b = self.base_layer.weight, self.base_layer._parameters.get("bias")
        w[...] = w * l
        if not self.is_feedforward and b is not None:
            b[...] = b * l.reshape(b.shape)

    def unmerge_one(self, adapter: str):
        l = np.asarray(self.vector(adapter))
        w, b = self.base_layer.weight, self.base_layer._parameters.get("bias")
        w[...] = w / (l + _UNMERGE_EPS)
        if not self.is_feedforward and b is not None:
            b[...] = b / (l.reshape(b.shape) + _UNMERGE_EPS)

    def unmerge(self):
        if not self.merged_adapters:
            return
        warnings.warn("Unmerge result can be inaccurate for (IA)^3.", stacklevel=4)
        super().unmerge()

    # files: `<name>.ia3_l`
    @staticmethod
    def expected_state(info) -> dict:
        fin, fout, is_feedforward = info
        return {"ia3_l": IA3Linear.vector_shape(fin, fout, is_feedforward)}

    def state(self, adapter: str) -> dict:
        return {"ia3_l": self.vector(adapter)}

    def load_state(self, adapter: str, tensors: dict):
        self.vector(adapter)[...] = tensors["ia3_l"]
