"""BnConfig, SeqBnConfig (Pfeiffer) and DoubleSeqBnConfig (Houlsby): AdapterHub `adapters`
1.3's bottleneck-adapter fields, defaults and adapter_config.json layout.

An AdapterHub adapter_config.json is {"config": {<BnConfig fields>}, "hidden_size",
"model_class", "model_name", "model_type", "name", "version"}; peftcore writes the same and
adds PEFT's own fields (peft_type, task_type, modules_to_save, ...) at the top level, which
`adapters` ignores. `read_adapterhub_layout` turns such a file into PEFT's flat layout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import List, Optional, Union

from ...config import PeftConfig, PeftType
from ...utils.checks import is_int
from ..lora.config import _modules_to_save

# the non-linearities the engine runs (AdapterHub lower-cases the name)
NON_LINEARITIES = ("relu", "swish", "silu", "gelu", "gelu_new", "tanh", "leakyrelu")
INIT_WEIGHTS = ("bert", "houlsby", "mam_adapter")
SCALING_KINDS = ("learned", "channel")

# AdapterHub's BnConfig fields in its order, and those whose non-default values peftcore
# does not implement (parallel adapters, PHM layers, invertible adapters, stochastic depth)
ADAPTERHUB_FIELDS = (
    "mh_adapter", "output_adapter", "reduction_factor", "non_linearity", "original_ln_before",
    "original_ln_after", "ln_before", "ln_after", "init_weights", "init_weights_seed",
    "is_parallel", "scaling", "use_gating", "residual_before_ln", "adapter_residual_before_ln",
    "inv_adapter", "inv_adapter_reduction_factor", "cross_adapter", "leave_out", "dropout",
    "phm_layer", "phm_dim", "factorized_phm_W", "shared_W_phm", "shared_phm_rule",
    "factorized_phm_rule", "phm_c_init", "phm_init_range", "learn_phm",
    "hypercomplex_nonlinearity", "phm_rank", "phm_bias", "stochastic_depth")
UNSUPPORTED = {"is_parallel": False, "phm_layer": False, "inv_adapter": None,
               "stochastic_depth": 0.0}
# PEFT's fields peftcore adds to the AdapterHub file
PEFT_FIELDS = ("peft_type", "task_type", "modules_to_save", "inference_mode",
               "base_model_name_or_path", "revision")


@dataclass
class BnConfig(PeftConfig):
    """A bottleneck adapter after transformer blocks (AdapterHub `adapters`' BnConfig: the
    same field names, defaults and data flow).

    mh_adapter / output_adapter: an adapter after the attention output block / the feed-
        forward output block of every layer (BnConfig needs both given).
    reduction_factor: the bottleneck size is hidden_size // reduction_factor (at least 1);
        a number > 0 and at most the hidden size, or a mapping from layer index (str) to
        one, with a "default" for the others.
    non_linearity: relu, swish, silu, gelu, gelu_new, tanh or leakyrelu (case ignored).
    original_ln_before: the block's residual and LayerNorm before the adapter (Pfeiffer);
        residual_before_ln: the adapter's residual taken before that LayerNorm (True), after
        it (False) or after the block's residual addition ("post_add").
    original_ln_after: the block's residual and LayerNorm after the adapter.
    ln_before / ln_after: new LayerNorms around the bottleneck; adapter_residual_before_ln:
        the adapter's residual added before ln_after (else after it).
    init_weights: "bert" (N(0, 0.02), zero biases), "houlsby" (truncated N(0, 0.01²) in
        ±0.02, zero biases) or "mam_adapter" (Kaiming-uniform down, zero up);
        init_weights_seed: the same draws for every adapter module.
    scaling: a float multiplying the bottleneck output, or "learned" (one trained scalar)
        or "channel" (a trained vector).
    use_gating: a learned gate σ(x·g + b), averaged over tokens, multiplies the output.
    dropout: dropout of the bottleneck output; leave_out: layer indices without adapters.
    The remaining AdapterHub fields are kept for its files; parallel adapters, PHM layers,
    invertible adapters and stochastic depth are not implemented (only their defaults).
    modules_to_save, task_type, inference_mode: as every peftcore adapter config.
    """

    mh_adapter: Optional[bool] = None
    output_adapter: Optional[bool] = None
    reduction_factor: Union[float, Mapping, None] = None
    non_linearity: Optional[str] = None
    original_ln_before: bool = False
    original_ln_after: bool = True
    ln_before: bool = False
    ln_after: bool = False
    init_weights: str = "bert"
    init_weights_seed: Optional[int] = None
    is_parallel: bool = False
    scaling: Union[float, str] = 1.0
    use_gating: bool = False
    residual_before_ln: Union[bool, str] = True
    adapter_residual_before_ln: bool = False
    inv_adapter: Optional[str] = None
    inv_adapter_reduction_factor: Optional[float] = None
    cross_adapter: bool = False
    leave_out: List[int] = field(default_factory=list)
    dropout: float = 0.0
    phm_layer: bool = False
    phm_dim: int = 4
    factorized_phm_W: Optional[bool] = True
    shared_W_phm: Optional[bool] = False
    shared_phm_rule: Optional[bool] = True
    factorized_phm_rule: Optional[bool] = False
    phm_c_init: Optional[str] = "normal"
    phm_init_range: Optional[float] = 0.0001
    learn_phm: Optional[bool] = True
    hypercomplex_nonlinearity: Optional[str] = "glorot-uniform"
    phm_rank: Optional[int] = 1
    phm_bias: Optional[bool] = True
    stochastic_depth: Optional[float] = 0.0
    modules_to_save: Optional[list[str]] = None

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.BOTTLENECK
        name = type(self).__name__
        missing = [f for f in ("mh_adapter", "output_adapter", "reduction_factor", "non_linearity")
                   if getattr(self, f) is None]
        if missing:
            raise ValueError(f"{name} needs {', '.join(missing)} (AdapterHub's BnConfig has no "
                             f"defaults for them; SeqBnConfig and DoubleSeqBnConfig have)")
        for f in ("mh_adapter", "output_adapter", "original_ln_before", "original_ln_after",
                  "ln_before", "ln_after", "use_gating", "adapter_residual_before_ln",
                  "inference_mode", "cross_adapter"):
            if not isinstance(getattr(self, f), bool):
                raise ValueError(f"`{f}` must be True or False, got {getattr(self, f)!r}")
        if not (self.mh_adapter or self.output_adapter):
            raise ValueError(f"{name}: mh_adapter and output_adapter are both False, so no "
                             f"block would get an adapter; set at least one to True")
        self.reduction_factor = check_reduction_factor(self.reduction_factor)
        if not isinstance(self.non_linearity, str) or self.non_linearity.lower() not in NON_LINEARITIES:
            raise ValueError(f"unknown non_linearity {self.non_linearity!r}; expected one of "
                             f"{', '.join(NON_LINEARITIES)}")
        if self.residual_before_ln not in (True, False, "post_add") or \
                not isinstance(self.residual_before_ln, (bool, str)):
            raise ValueError(f"`residual_before_ln` must be True, False or \"post_add\", got "
                             f"{self.residual_before_ln!r}")
        if self.init_weights not in INIT_WEIGHTS:
            raise ValueError(f"unknown init_weights {self.init_weights!r}; expected one of "
                             f"{', '.join(INIT_WEIGHTS)}")
        if self.init_weights_seed is not None and (not is_int(self.init_weights_seed)
                                                   or self.init_weights_seed < 0):
            raise ValueError(f"`init_weights_seed` must be None or an int >= 0, got "
                             f"{self.init_weights_seed!r}")
        self.scaling = check_scaling(self.scaling)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`dropout` must be a float in [0, 1), got {self.dropout!r}")
        self.dropout = float(self.dropout)
        if not isinstance(self.leave_out, (list, tuple, set)) or \
                not all(is_int(i) for i in self.leave_out):
            raise ValueError(f"`leave_out` must be a list of layer indices (ints), got "
                             f"{self.leave_out!r}")
        self.leave_out = [int(i) for i in self.leave_out]
        for f, default in UNSUPPORTED.items():
            if getattr(self, f) != default:
                raise ValueError(f"{name}: {f}={getattr(self, f)!r} is not implemented by "
                                 f"peftcore (only {default!r}); peftcore runs sequential "
                                 f"bottleneck adapters")
        self.modules_to_save = _modules_to_save(self.modules_to_save)

    # ------------------------------------------------------------ per layer

    def reduction_for(self, layer: int) -> float:
        """The reduction factor of layer `layer` (AdapterHub's lookup in a mapping)."""
        rf = self.reduction_factor
        if not isinstance(rf, Mapping):
            return rf
        if str(layer) in rf:
            return rf[str(layer)]
        if "default" in rf:
            return rf["default"]
        raise ValueError(f"reduction_factor {dict(rf)!r} gives no value for layer {layer} and "
                         f"no \"default\"; add one, e.g. {{'1': 8, 'default': 16}}")

    def bottleneck_size(self, layer: int, hidden_size: int) -> int:
        """hidden_size // reduction_factor, at least 1; a reduction factor larger than the
        hidden size is refused."""
        rf = self.reduction_for(layer)
        if rf > hidden_size:
            raise ValueError(f"reduction_factor {rf!r} (layer {layer}) is larger than the hidden "
                             f"size {hidden_size}: the bottleneck would have "
                             f"{hidden_size} // {rf} = 0 dimensions; expected a reduction factor "
                             f"in (0, {hidden_size}]")
        return max(1, int(hidden_size // rf))

    # ------------------------------------------------------------ AdapterHub's file

    def adapterhub_dict(self) -> dict:
        """The "config" entry of AdapterHub's adapter_config.json."""
        from ...config import _jsonable

        return {f: _jsonable(getattr(self, f)) for f in ADAPTERHUB_FIELDS}


def check_reduction_factor(rf):
    def one(value, where=""):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not math.isfinite(value) or value <= 0:
            raise ValueError(f"reduction_factor{where} must be a number > 0 (the bottleneck size "
                             f"is hidden_size // reduction_factor), got {value!r}")
        return value

    if isinstance(rf, Mapping):
        if not rf:
            raise ValueError("reduction_factor must be a number > 0 or a non-empty mapping from "
                             "layer index to one")
        out = {}
        for key, value in rf.items():
            key = str(key)
            if key != "default" and not key.isdigit():
                raise ValueError(f"reduction_factor mapping keys are layer indices or "
                                 f"\"default\", got {key!r}")
            out[key] = one(value, f"[{key!r}]")
        return out
    return one(rf)


def check_scaling(scaling):
    if isinstance(scaling, str):
        if scaling not in SCALING_KINDS:
            raise ValueError(f"unknown scaling {scaling!r}; expected a float, \"learned\" or "
                             f"\"channel\"")
        return scaling
    if isinstance(scaling, bool) or not isinstance(scaling, (int, float)) or \
            not math.isfinite(scaling):
        raise ValueError(f"`scaling` must be a float, \"learned\" or \"channel\", got {scaling!r}")
    return float(scaling)


@dataclass
class SeqBnConfig(BnConfig):
    """Pfeiffer et al. (2020): one adapter after the feed-forward block, the block's
    residual and LayerNorm applied before it (AdapterHub's SeqBnConfig defaults)."""

    original_ln_before: bool = True
    original_ln_after: bool = True
    residual_before_ln: Union[bool, str] = True
    adapter_residual_before_ln: bool = False
    ln_before: bool = False
    ln_after: bool = False
    mh_adapter: Optional[bool] = False
    output_adapter: Optional[bool] = True
    non_linearity: Optional[str] = "relu"
    reduction_factor: Union[float, Mapping, None] = 16


@dataclass
class DoubleSeqBnConfig(BnConfig):
    """Houlsby et al. (2019): adapters after the attention and the feed-forward blocks
    (AdapterHub's DoubleSeqBnConfig defaults)."""

    original_ln_before: bool = False
    original_ln_after: bool = True
    residual_before_ln: Union[bool, str] = True
    adapter_residual_before_ln: bool = False
    ln_before: bool = False
    ln_after: bool = False
    mh_adapter: Optional[bool] = True
    output_adapter: Optional[bool] = True
    non_linearity: Optional[str] = "swish"
    reduction_factor: Union[float, Mapping, None] = 16


def read_adapterhub_layout(d: dict, source=None):
    """PEFT's flat layout of an AdapterHub adapter_config.json ({"config": {...}, "name",
    ...}), or None for another layout. AdapterHub's other methods are refused."""
    inner = d.get("config")
    if not isinstance(inner, dict) or "name" not in d:
        return None
    where = f" in {source}" if source else ""
    architecture = inner.get("architecture")
    if architecture is not None or "reduction_factor" not in inner:
        raise ValueError(f"the AdapterHub adapter{where} is a {architecture or 'non-bottleneck'!r} "
                         f"adapter; peftcore reads AdapterHub's bottleneck adapters (BnConfig), and its "
                         f"prefix tuning, LoRA and unions (UniPELT) as a ConfigUnion")
    flat = dict(inner)
    flat.update({k: d[k] for k in PEFT_FIELDS if k in d})
    flat["peft_type"] = PeftType.BOTTLENECK.value
    return flat
