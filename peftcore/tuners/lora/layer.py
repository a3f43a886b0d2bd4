"""LoRA on one engine linear, named as HF PEFT's lora.Linear.

For the active adapter the engine computes y = x·Wᵀ + b + s·dropout(x)·Aᵀ·Bᵀ with
A (r, in), B (out, r), s = alpha/r (alpha/√r with rsLoRA). The parameters live in engine
tensors; this module only plumbs them and keeps HF's names:
    <name>.base_layer.weight, <name>.lora_A.<adapter>.weight, <name>.lora_B.<adapter>.weight
"""
from __future__ import annotations

import math

import numpy as np

from ...models.modules import Linear, Module, named_container
from ...models.parameter import Parameter
from ..tuners_utils import BaseTunerLayer, new_parameter


class ParamHolder(Module):
    """A leaf holding one `weight` Parameter (HF's per-adapter nn.Linear of lora_A/lora_B)."""

    display_name = "Linear"

    def __init__(self, weight: Parameter):
        super().__init__()
        self._parameters["weight"] = weight

    def extra_repr(self):
        out_features, in_features = self.weight.shape
        return f"in_features={in_features}, out_features={out_features}, bias=False"


class AdapterDropout(Module):
    """Where HF PEFT keeps an adapter's dropout (an nn.Dropout, or nn.Identity for p = 0);
    the engine applies it, this shows it."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.display_name = "Dropout" if p > 0 else "Identity"

    def extra_repr(self):
        return f"p={self.p:g}, inplace=False" if self.p > 0 else ""


class LoraLinear(BaseTunerLayer):
    display_name = "lora.Linear"
    module_type = "lora.Linear"
    adapter_layer_names = ("lora_A", "lora_B")
    adapter_attr_names = ("r", "lora_alpha", "scaling", "dropout_p")

    def __init__(self, base_layer: Linear, engine):
        super().__init__(engine, base_layer.index)
        self._modules["base_layer"] = base_layer
        self._modules["lora_dropout"] = named_container("ModuleDict")
        self._modules["lora_A"] = named_container("ModuleDict")
        self._modules["lora_B"] = named_container("ModuleDict")
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.r, self.lora_alpha, self.scaling, self.dropout_p = {}, {}, {}, {}

    @property
    def base_weight(self) -> Parameter:
        return self.base_layer.weight

    def update_layer(self, adapter: str, r: int, alpha: float, dropout: float,
                     init_lora_weights, use_rslora: bool, rng: np.random.Generator):
        """Create adapter `adapter` with HF's initialisation: A Kaiming-uniform
        (U(±1/√in)) or N(0, 1/r) for "gaussian", B zero; with init False both random."""
        A = new_parameter((r, self.in_features))
        B = new_parameter((self.out_features, r))
        if init_lora_weights == "gaussian":
            A[...] = rng.normal(0.0, 1.0 / r, size=A.shape)
        else:
            bound = 1.0 / math.sqrt(self.in_features)
            A[...] = rng.uniform(-bound, bound, size=A.shape)
        if init_lora_weights is False:
            bound = 1.0 / math.sqrt(r)
            B[...] = rng.uniform(-bound, bound, size=B.shape)
        self.lora_A._modules[adapter] = ParamHolder(A)
        self.lora_B._modules[adapter] = ParamHolder(B)
        self.lora_dropout._modules[adapter] = AdapterDropout(float(dropout))
        self.r[adapter] = r
        self.lora_alpha[adapter] = alpha
        self.scaling[adapter] = alpha / math.sqrt(r) if use_rslora else alpha / r
        self.dropout_p[adapter] = float(dropout)

    def weights(self, adapter: str) -> tuple[Parameter, Parameter]:
        return self.lora_A[adapter].weight, self.lora_B[adapter].weight

    def delete_adapter(self, adapter: str):
        self.lora_dropout._modules.pop(adapter, None)
        super().delete_adapter(adapter)

    def engine_entries(self, adapter: str) -> list:
        """y += s·dropout(x)·Aᵀ·Bᵀ on the linear's output."""
        A, B = self.weights(adapter)
        return [("lora", "out", (A.tensor, B.tensor), self.scaling[adapter], self.dropout_p[adapter])]

    @staticmethod
    def expected_state(info) -> dict:
        fin, fout, r, _ = info
        return {"lora_A.weight": (r, fin), "lora_B.weight": (fout, r)}

    def state(self, adapter: str) -> dict:
        A, B = self.weights(adapter)
        return {"lora_A.weight": A, "lora_B.weight": B}

    def load_state(self, adapter: str, tensors: dict):
        A, B = self.weights(adapter)
        A[...] = tensors["lora_A.weight"]
        B[...] = tensors["lora_B.weight"]

    # rows of W updated per block by merge/unmerge: the float64 temporaries are a few
    # (32, in) blocks instead of several whole (out, in) copies
    _MERGE_ROWS = 32

    def delta_weight(self, adapter: str, rows: slice = slice(None)) -> np.ndarray:
        """ΔW (out, in) = s·B·A, or its rows `rows`, in float64, so that W + ΔW is rounded to
        float32 once (merge then unmerge restores W to within that rounding).

        Summed as r outer products rather than with `@`: NumPy's BLAS would start its own
        thread pool, whose idle threads then compete with the engine's for the cores."""
        A, B = self.weights(adapter)
        A64, B64 = np.asarray(A, np.float64), np.asarray(B[rows], np.float64)
        delta = np.zeros((B64.shape[0], A64.shape[1]))
        for j in range(A64.shape[0]):
            delta += np.multiply.outer(B64[:, j], A64[j])
        return self.scaling[adapter] * delta

    def _add_delta(self, adapter: str, sign: float):
        """W += sign·ΔW, block of rows by block of rows, each sum rounded once to float32;
        W is unchanged if any block fails (out of memory, interrupted)"""
        w = self.base_weight
        before = np.array(w, copy=True)
        try:
            for r0 in range(0, w.shape[0], self._MERGE_ROWS):
                rows = slice(r0, r0 + self._MERGE_ROWS)
                w[rows] = (np.asarray(w[rows], np.float64)
                           + sign * self.delta_weight(adapter, rows)).astype(np.float32)
        except BaseException:
            w[...] = before
            raise

    def merge_one(self, adapter: str):
        self._add_delta(adapter, 1.0)

    def unmerge_one(self, adapter: str):
        self._add_delta(adapter, -1.0)

