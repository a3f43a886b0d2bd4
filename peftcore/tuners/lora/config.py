"""LoraConfig: HF PEFT's LoRA field names and defaults, validated at construction."""

from __future__ import annotations

import re

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from ...config import PeftConfig, PeftType
from ...utils.checks import is_finite_real, is_int

_BIAS_VALUES = ("none", "all", "lora_only")

# HF PEFT fields peftcore stores (so configs round-trip) but does not implement:
# any truthy value is rejected. All their HF defaults are falsy (None/False/{}).
_UNSUPPORTED_FIELDS = (
    "megatron_config",
    "trainable_token_indices",
    "loftq_config",
    "eva_config",
    "corda_config",
    "lora_ga_config",
    "use_dora",
    "velora_config",
    "alora_invocation_tokens",
    "use_qalora",
    "monteclora_config",
    "layer_replication",
    "lora_bias",
    "target_parameters",
    "use_bdlora",
    "arrow_config",
    "kasa_config",
    "ensure_weight_tying",
)


def _str_collection(name: str, value, *, as_set: bool):
    """Validate None / str / collection of str; lists become sets (like HF) or lists."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value):
        return set(value) if as_set else list(value)
    raise ValueError(f"`{name}` must be a str, a list of str or None, got {value!r}")


@dataclass
class LoraConfig(PeftConfig):
    """Configuration of a LoRA adapter (same fields, defaults and JSON as `peft.LoraConfig`).

    `target_modules` / `exclude_modules` given as a list are stored as a set; a str is a regex
    matched with `re.fullmatch`. Only `init_lora_weights` in {True, False, "gaussian"} is supported.
    """

    r: int = 8
    target_modules: Optional[Union[list[str], str]] = None
    exclude_modules: Optional[Union[list[str], str]] = None
    lora_alpha: int = 8
    lora_dropout: float = 0.0
    fan_in_fan_out: bool = False
    bias: Literal["none", "all", "lora_only"] = "none"
    use_rslora: bool = False
    modules_to_save: Optional[list[str]] = None
    init_lora_weights: Union[bool, Literal["gaussian"]] = True
    layers_to_transform: Optional[Union[list[int], int]] = None
    layers_pattern: Optional[Union[list[str], str]] = None
    rank_pattern: Optional[dict] = field(default_factory=dict)
    alpha_pattern: Optional[dict] = field(default_factory=dict)
    # Stored for file compatibility only (see _UNSUPPORTED_FIELDS).
    megatron_config: Optional[dict] = None
    megatron_core: Optional[str] = "megatron.core"
    trainable_token_indices: Optional[Union[list[int], dict]] = None
    loftq_config: Union[dict, None] = field(default_factory=dict)
    eva_config: Optional[dict] = None
    corda_config: Optional[dict] = None
    lora_ga_config: Optional[dict] = None
    use_dora: bool = False
    velora_config: Optional[dict] = None
    alora_invocation_tokens: Optional[list[int]] = None
    use_qalora: bool = False
    qalora_group_size: int = 16
    monteclora_config: Optional[dict] = None
    layer_replication: Optional[list] = None
    lora_bias: bool = False
    target_parameters: Optional[list[str]] = None
    use_bdlora: Optional[dict] = None
    arrow_config: Optional[dict] = None
    kasa_config: Optional[dict] = None
    ensure_weight_tying: bool = False

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.LORA
        self._validate()

    def _validate(self) -> None:
        for name in _UNSUPPORTED_FIELDS:
            value = getattr(self, name)
            if value:
                raise ValueError(f"`{name}={value!r}` is not supported by peftcore; leave it at its default")

        if not is_int(self.r) or self.r <= 0:
            raise ValueError(f"`r` must be a positive int, got {self.r!r}")
        if not (is_finite_real(self.lora_alpha) and self.lora_alpha > 0):
            raise ValueError(f"`lora_alpha` must be a finite number > 0, got {self.lora_alpha!r}")
        if not is_finite_real(self.lora_dropout) or not 0 <= self.lora_dropout < 1:
            raise ValueError(f"`lora_dropout` must be a float in [0, 1), got {self.lora_dropout!r}")
        for name in ("fan_in_fan_out", "use_rslora", "inference_mode"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be True or False, got {getattr(self, name)!r}")
        if self.bias not in _BIAS_VALUES:
            raise ValueError(f"`bias` must be one of {list(_BIAS_VALUES)}, got {self.bias!r}")
        if not (isinstance(self.init_lora_weights, bool) or self.init_lora_weights == "gaussian"):
            raise ValueError(
                f"`init_lora_weights={self.init_lora_weights!r}` is not supported by peftcore; "
                "supported values are True, False and 'gaussian'"
            )

        self.target_modules = _str_collection("target_modules", self.target_modules, as_set=True)
        self.exclude_modules = _str_collection("exclude_modules", self.exclude_modules, as_set=True)
        self.layers_pattern = _str_collection("layers_pattern", self.layers_pattern, as_set=False)
        if isinstance(self.modules_to_save, str):
            raise ValueError(f"`modules_to_save` must be a list of str or None, got the str {self.modules_to_save!r}")
        if self.modules_to_save is not None:
            self.modules_to_save = _str_collection("modules_to_save", self.modules_to_save, as_set=False)

        ltt = self.layers_to_transform
        if isinstance(ltt, (list, tuple)):
            if not all(is_int(i) and i >= 0 for i in ltt):
                raise ValueError(f"`layers_to_transform` must be an int or a list of ints >= 0, got {ltt!r}")
            self.layers_to_transform = [int(i) for i in ltt]
        elif ltt is not None and not (is_int(ltt) and ltt >= 0):
            raise ValueError(f"`layers_to_transform` must be an int or a list of ints >= 0, got {ltt!r}")

        if isinstance(self.target_modules, str) and self.layers_to_transform is not None:
            raise ValueError("`layers_to_transform` cannot be used when `target_modules` is a str.")
        if isinstance(self.target_modules, str) and self.layers_pattern is not None:
            raise ValueError("`layers_pattern` cannot be used when `target_modules` is a str.")
        if self.layers_pattern and self.layers_to_transform is None:
            raise ValueError("When `layers_pattern` is specified, `layers_to_transform` must also be specified.")

        # every str used as a regular expression compiles, or the field is named
        if isinstance(self.target_modules, str):
            _check_regex("target_modules", self.target_modules)
        if isinstance(self.exclude_modules, str):
            _check_regex("exclude_modules", self.exclude_modules)
        for name in self.modules_to_save or ():
            _check_regex("modules_to_save", rf"(^|.*\.){name}($|\..*)", name)
        for name in (self.layers_pattern if isinstance(self.layers_pattern, list)
                     else [self.layers_pattern] if self.layers_pattern else []):
            _check_regex("layers_pattern", rf"(?:^|.*?\.){name}\.(?P<idx>\d+)\.", name)

        if not isinstance(self.rank_pattern or {}, dict) or not isinstance(self.alpha_pattern or {}, dict):
            raise ValueError(f"`rank_pattern` and `alpha_pattern` must be dicts, got "
                             f"{self.rank_pattern!r:.100} and {self.alpha_pattern!r:.100}")
        self.rank_pattern = dict(self.rank_pattern or {})
        self.alpha_pattern = dict(self.alpha_pattern or {})
        for key, value in self.rank_pattern.items():
            if not isinstance(key, str) or not is_int(value) or value <= 0:
                raise ValueError(f"`rank_pattern` must map str to positive ints, got {key!r}: {value!r}")
        for key, value in self.alpha_pattern.items():
            if not isinstance(key, str) or not (is_finite_real(value) and value > 0):
                raise ValueError(f"`alpha_pattern` must map str to finite numbers > 0, got {key!r}: {value!r}")
        for field_name in ("rank_pattern", "alpha_pattern"):
            for key in getattr(self, field_name):
                _check_regex(field_name, rf"(.*\.)?({key})$", key)


def _check_regex(field_name: str, pattern: str, given=None) -> None:
    """ValueError naming the field unless `pattern` (built from `given`) compiles."""
    try:
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise ValueError(f"`{field_name}` holds an invalid regular expression "
                         f"{given if given is not None else pattern!r}: {exc}") from None


def _module_names_or_regex(name: str, value):
    """A field such as target_modules: None, a list of str (stored as a set) or a str,
    a regex that must compile (ValueError naming the field otherwise)."""
    value = _str_collection(name, value, as_set=True)
    if isinstance(value, str):
        _check_regex(name, value)
    return value


def _modules_to_save(value):
    """`modules_to_save`: None or a list of str (a lone str is refused), each name usable in
    the suffix regex that finds the modules; ValueError otherwise."""
    if isinstance(value, str):
        raise ValueError(f"`modules_to_save` must be a list of str or None, got the str "
                         f"{value!r}")
    if value is None:
        return None
    value = _str_collection("modules_to_save", value, as_set=False)
    for module in value:
        _check_regex("modules_to_save", rf"(^|.*\.){module}($|\..*)", module)
    return value

