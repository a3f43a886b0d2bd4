"""IA3Config: HF PEFT 0.21's (IA)³ fields, defaults and adapter_config.json."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from ...config import PeftConfig, PeftType
from ..lora.config import _module_names_or_regex, _modules_to_save


@dataclass
class IA3Config(PeftConfig):
    """Configuration of an (IA)³ adapter (same fields, defaults and JSON as `peft.IA3Config`).

    target_modules: names (exact or '.'-suffix match) or a regex (re.fullmatch) of the
        linears to adapt; None: HF's default for the model type (bert, roberta: key, value,
        output.dense).
    feedforward_modules: which of them scale their input (a (1, in) vector) instead of
        their output (an (out, 1) vector); names match by plain suffix, as HF PEFT, so
        "output.dense" covers attention.output.dense too. Must be a subset of target_modules.
    exclude_modules, modules_to_save: as for LoRA.
    fan_in_fan_out: for Conv1D weights; peftcore's linears are (out, in), so it is reset.
    init_ia3_weights: vectors start at ones (True) or random (False, discouraged).
    """

    target_modules: Optional[Union[list[str], str]] = None
    exclude_modules: Optional[Union[list[str], str]] = None
    feedforward_modules: Optional[Union[list[str], str]] = None
    fan_in_fan_out: bool = False
    modules_to_save: Optional[list[str]] = None
    init_ia3_weights: bool = True

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.IA3
        for name in ("target_modules", "exclude_modules", "feedforward_modules"):
            setattr(self, name, _module_names_or_regex(name, getattr(self, name)))
        self.modules_to_save = _modules_to_save(self.modules_to_save)
        for name in ("fan_in_fan_out", "init_ia3_weights", "inference_mode"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be True or False, got {getattr(self, name)!r}")
        check_feedforward_subset(self.feedforward_modules, self.target_modules)


def check_feedforward_subset(feedforward_modules, target_modules):
    """HF PEFT's rule, checked when both are name collections: every feedforward module is
    one of the target modules."""
    if isinstance(feedforward_modules, set) and isinstance(target_modules, set):
        extra = sorted(feedforward_modules - target_modules)
        if extra:
            raise ValueError(f"`feedforward_modules` should be a subset of `target_modules`: "
                             f"feedforward_modules={sorted(feedforward_modules)} names {extra}, "
                             f"which target_modules={sorted(target_modules)} does not")
