"""UniPELT (Mao et al. 2022) as AdapterHub `adapters` 1.3 defines it: a ConfigUnion of
prefix tuning, a bottleneck adapter and LoRA, each gated; the same field names, defaults
and adapter_config.json layout.

    UniPELTConfig()                       prefix (length 10) + SeqBn (reduction 16) + LoRA
                                          (r 8, alpha 2), every one with use_gating=True
    UniPELTConfig(lora=False)             UniPELT(AP): adapter + prefix (peftcore's spelling
                                          for leaving a submodule out)
    ConfigUnion(PrefixTuningConfig(...), LoRAConfig(...), ...)   any subset, gated or not
    ConfigUnion(PrefixTuningConfig(use_gating=True))             one method alone

Components: PrefixTuningConfig and LoRAConfig (AdapterHub's, below) and the bottleneck
tuner's BnConfig / SeqBnConfig / DoubleSeqBnConfig. AdapterHub's file is
{"config": {"architecture": "union", "configs": [...]}, "hidden_size", "model_class",
"model_name", "model_type", "name", "version"} (a single prefix or LoRA config is written as
itself, "architecture": "prefix_tuning" / "lora"); peftcore adds PEFT's fields at the top
level, which `adapters` ignores. `read_union_layout` reads such a file into PEFT's layout.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import List, Optional

from ...config import PeftConfig, PeftType, _jsonable
from ...utils.checks import is_int
from ..bottleneck.config import ADAPTERHUB_FIELDS as BN_FIELDS
from ..bottleneck.config import BnConfig, SeqBnConfig

PEFT_FIELDS = ("peft_type", "task_type", "modules_to_save", "inference_mode",
               "base_model_name_or_path", "revision")
PREFIX_NON_LINEARITIES = ("tanh", "relu", "gelu")


def _check_bool(name, owner, *fields):
    for f in fields:
        if not isinstance(getattr(owner, f), bool):
            raise ValueError(f"{name}: `{f}` must be True or False, got {getattr(owner, f)!r}")


def _check_leave_out(name, leave_out):
    if not isinstance(leave_out, (list, tuple, set)) or not all(is_int(i) for i in leave_out):
        raise ValueError(f"{name}: `leave_out` must be a list of layer indices (ints), got "
                         f"{leave_out!r}")
    return sorted(int(i) for i in leave_out)


def _check_seed(name, seed):
    if seed is not None and (not is_int(seed) or seed < 0):
        raise ValueError(f"{name}: `init_weights_seed` must be None or an int >= 0, got {seed!r}")


def _check_dropout(name, p):
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"{name}: `dropout` must be a float in [0, 1), got {p!r}")
    return float(p)


@dataclass
class PrefixTuningConfig:
    """AdapterHub's PrefixTuningConfig (Li and Liang 2021): prefix_length key and value rows
    in every layer's attention (not in leave_out), reparameterised by the MLP
    Embedding(prefix_length, C) → Linear(C, bottleneck_size) → non_linearity →
    Linear(bottleneck_size, layers·2·C) unless flat (then trained directly). use_gating: a
    gate Linear(C, 1 if shared_gating else 2) on the attention's input, averaged over each
    sequence's tokens after a sigmoid, scales the keys (and values). encoder_prefix /
    cross_prefix are kept for the file (an encoder has self-attention only); dropout > 0 is
    not implemented (the engine shares one set of prefix rows across the batch)."""

    architecture: str = "prefix_tuning"
    encoder_prefix: bool = True
    cross_prefix: bool = True
    leave_out: List[int] = field(default_factory=list)
    flat: bool = False
    prefix_length: int = 30
    bottleneck_size: int = 512
    non_linearity: str = "tanh"
    dropout: float = 0.0
    use_gating: bool = False
    shared_gating: bool = True
    init_weights_seed: Optional[int] = None

    def __post_init__(self):
        name = "PrefixTuningConfig"
        if self.architecture != "prefix_tuning":
            raise ValueError(f"{name}: architecture is 'prefix_tuning', got {self.architecture!r}")
        _check_bool(name, self, "encoder_prefix", "cross_prefix", "flat", "use_gating",
                    "shared_gating")
        for f in ("prefix_length", "bottleneck_size"):
            v = getattr(self, f)
            if not is_int(v) or v < 1:
                raise ValueError(f"{name}: `{f}` must be an int >= 1, got {v!r}")
        if not isinstance(self.non_linearity, str) or \
                self.non_linearity.lower() not in PREFIX_NON_LINEARITIES:
            raise ValueError(f"{name}: non_linearity {self.non_linearity!r} is not one peftcore "
                             f"runs in the prefix MLP; expected one of "
                             f"{', '.join(PREFIX_NON_LINEARITIES)}")
        self.dropout = _check_dropout(name, self.dropout)
        if self.dropout != 0.0:
            raise ValueError(f"{name}: dropout={self.dropout} is not implemented by peftcore "
                             f"(only 0.0): AdapterHub draws a dropout mask per example over the "
                             f"prefix rows, the engine shares one set of rows across the batch")
        self.leave_out = _check_leave_out(name, self.leave_out)
        _check_seed(name, self.init_weights_seed)

    def gates(self) -> int:
        """Outputs of the gate Linear: 1 (one gate for keys and values) or 2."""
        return 0 if not self.use_gating else (1 if self.shared_gating else 2)

    def adapterhub_dict(self) -> dict:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}


@dataclass
class LoRAConfig:
    """AdapterHub's LoRAConfig (not HF PEFT's LoraConfig): LoRA on the self-attention
    matrices attn_matrices (q, k, v), the intermediate and/or output dense layers, with
    scaling alpha / r, or with use_gating a learned gate (the mean over each sequence's
    tokens of sigmoid(Linear(in, 1)(x))) in its place. init_weights "lora" (A Kaiming-
    uniform, B zero) or "bert" (both N(0, 0.02)); composition_mode "add" only."""

    architecture: str = "lora"
    selfattn_lora: bool = True
    intermediate_lora: bool = False
    output_lora: bool = False
    leave_out: List[int] = field(default_factory=list)
    r: int = 8
    alpha: int = 8
    dropout: float = 0.0
    attn_matrices: List[str] = field(default_factory=lambda: ["q", "v"])
    composition_mode: str = "add"
    init_weights: str = "lora"
    init_weights_seed: Optional[int] = None
    use_gating: bool = False
    use_dora: bool = False
    vera_d: Optional[float] = None
    vera_b: Optional[float] = None
    dtype: Optional[str] = None

    def __post_init__(self):
        name = "LoRAConfig"
        if self.architecture != "lora":
            raise ValueError(f"{name}: architecture is 'lora', got {self.architecture!r}")
        _check_bool(name, self, "selfattn_lora", "intermediate_lora", "output_lora",
                    "use_gating", "use_dora")
        if not is_int(self.r) or self.r < 1:
            raise ValueError(f"{name}: `r` must be an int >= 1, got {self.r!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)):
            raise ValueError(f"{name}: `alpha` must be a number, got {self.alpha!r}")
        self.dropout = _check_dropout(name, self.dropout)
        matrices = list(self.attn_matrices) if isinstance(self.attn_matrices, (list, tuple)) else None
        if matrices is None or not matrices or any(m not in ("q", "k", "v") for m in matrices) \
                or len(set(matrices)) != len(matrices):
            raise ValueError(f"{name}: `attn_matrices` must be a non-empty list of distinct 'q', "
                             f"'k', 'v', got {self.attn_matrices!r}")
        self.attn_matrices = matrices
        if not (self.selfattn_lora or self.intermediate_lora or self.output_lora):
            raise ValueError(f"{name}: selfattn_lora, intermediate_lora and output_lora are all "
                             f"False, so no linear would get LoRA")
        for f, default in (("composition_mode", "add"), ("use_dora", False), ("vera_d", None),
                           ("vera_b", None), ("dtype", None)):
            if getattr(self, f) != default:
                raise ValueError(f"{name}: {f}={getattr(self, f)!r} is not implemented by "
                                 f"peftcore (only {default!r})")
        if self.init_weights not in ("lora", "bert"):
            raise ValueError(f"{name}: init_weights {self.init_weights!r} is not implemented; "
                             f"expected 'lora' or 'bert'")
        self.leave_out = _check_leave_out(name, self.leave_out)
        _check_seed(name, self.init_weights_seed)

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    def adapterhub_dict(self) -> dict:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}


COMPONENTS = (PrefixTuningConfig, BnConfig, LoRAConfig)


def kind_of(component) -> str:
    """'prefix_tuning', 'bottleneck' or 'lora'."""
    if isinstance(component, PrefixTuningConfig):
        return "prefix_tuning"
    if isinstance(component, BnConfig):
        return "bottleneck"
    if isinstance(component, LoRAConfig):
        return "lora"
    raise TypeError(f"a ConfigUnion takes PrefixTuningConfig, BnConfig (SeqBnConfig, "
                    f"DoubleSeqBnConfig) and LoRAConfig components (AdapterHub's, or their "
                    f"dicts), got {type(component).__name__}")


def component_from_dict(d: dict):
    """A component from its AdapterHub dict ("architecture": prefix_tuning, lora, or
    bottleneck / None)."""
    if isinstance(d, COMPONENTS):
        return d
    if not isinstance(d, dict):
        kind_of(d)   # raises, naming what a union takes
    arch = d.get("architecture")
    if arch == "prefix_tuning":
        cls, fields = PrefixTuningConfig, {f.name for f in dataclasses.fields(PrefixTuningConfig)}
    elif arch == "lora":
        cls, fields = LoRAConfig, {f.name for f in dataclasses.fields(LoRAConfig)}
    elif arch in (None, "bottleneck"):
        cls, fields = BnConfig, set(BN_FIELDS)
    else:
        raise ValueError(f"unknown submodule architecture {arch!r} in a union; peftcore's "
                         f"UniPELT takes 'prefix_tuning', 'bottleneck' and 'lora'")
    unknown = sorted(set(d) - fields - {"architecture"})
    if unknown:
        raise ValueError(f"{cls.__name__} has no fields {unknown}")
    kwargs = {k: v for k, v in d.items() if k != "architecture" or cls is not BnConfig}
    return cls(**kwargs)


@dataclass
class ConfigUnion(PeftConfig):
    """AdapterHub's ConfigUnion: several methods in one adapter, at most one of each kind
    (a prefix, a bottleneck adapter, a LoRA). configs: the components (or their AdapterHub
    dicts). modules_to_save, task_type, inference_mode: as every peftcore adapter config."""

    configs: list = field(default_factory=list)
    modules_to_save: Optional[list[str]] = None

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.UNIPELT
        if not isinstance(self.configs, (list, tuple)) or not self.configs:
            raise ValueError(f"a ConfigUnion needs a non-empty list of configs, got "
                             f"{self.configs!r}")
        configs = [component_from_dict(c) for c in self.configs]
        kinds = [kind_of(c) for c in configs]
        repeated = sorted({k for k in kinds if kinds.count(k) > 1})
        if repeated:
            raise ValueError(f"a ConfigUnion holds each method once; {repeated} given "
                             f"{[kinds.count(k) for k in repeated]} times ({kinds})")
        self.configs = configs
        if isinstance(self.modules_to_save, str):
            raise ValueError(f"`modules_to_save` must be a list of str or None, got the str "
                             f"{self.modules_to_save!r}")

    def component(self, kind: str):
        """The component of kind 'prefix_tuning', 'bottleneck' or 'lora', or None."""
        return next((c for c in self.configs if kind_of(c) == kind), None)

    def adapterhub_dict(self) -> dict:
        """The "config" entry of AdapterHub's adapter_config.json."""
        if len(self.configs) == 1 and not isinstance(self.configs[0], BnConfig):
            return self.configs[0].adapterhub_dict()
        return {"architecture": "union", "configs": [c.adapterhub_dict() for c in self.configs]}

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["configs"] = self.adapterhub_dict().get("configs", [self.adapterhub_dict()])
        return out


def UniPELTConfig(prefix_tuning=None, adapter=None, lora=None, **kwargs) -> ConfigUnion:
    """AdapterHub's UniPELTConfig: PrefixTuningConfig(prefix_length=10),
    SeqBnConfig(reduction_factor=16) and LoRAConfig(r=8, alpha=2) unless given, each with
    use_gating=True. False leaves a submodule out (UniPELT(AP): lora=False). kwargs:
    task_type, modules_to_save, inference_mode."""
    parts = []
    for given, default in ((prefix_tuning, lambda: PrefixTuningConfig(prefix_length=10)),
                           (adapter, lambda: SeqBnConfig(reduction_factor=16)),
                           (lora, lambda: LoRAConfig(r=8, alpha=2))):
        if given is False:
            continue
        part = default() if given is None else component_from_dict(given)
        parts.append(dataclasses.replace(part, use_gating=True))
    if not parts:
        raise ValueError("UniPELTConfig: every submodule left out (prefix_tuning, adapter and "
                         "lora all False)")
    return ConfigUnion(configs=parts, **kwargs)


def read_union_layout(d: dict, source=None):
    """PEFT's flat layout of AdapterHub's adapter_config.json of a union, a prefix tuning or
    a LoRA adapter, or None for another layout."""
    inner = d.get("config")
    if not isinstance(inner, dict) or "name" not in d:
        return None
    arch = inner.get("architecture")
    if arch == "union":
        configs = inner.get("configs")
        if not isinstance(configs, list):
            where = f" in {source}" if source else ""
            raise ValueError(f"the AdapterHub union{where} has no list of configs")
    elif arch in ("prefix_tuning", "lora"):
        configs = [inner]
    else:
        return None
    flat = {"configs": configs}
    flat.update({k: d[k] for k in PEFT_FIELDS if k in d})
    flat["peft_type"] = PeftType.UNIPELT.value
    return flat
