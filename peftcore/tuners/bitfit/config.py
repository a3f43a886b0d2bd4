"""BitFitConfig: which biases train (peftcore's own method; HF PEFT has none)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from ...config import PeftConfig, PeftType
from ..lora.config import _module_names_or_regex, _modules_to_save


@dataclass
class BitFitConfig(PeftConfig):
    """Configuration of a BitFit adapter: the adapter is the values of some biases.

    target_modules: None trains every bias of the model (linears and LayerNorms, not the
        modules_to_save copies); else names (exact or '.'-suffix match) or a regex
        (re.fullmatch) of modules whose biases train; each must have a bias.
    exclude_modules: names or a regex of modules left out.
    modules_to_save: modules trained whole and saved with the adapter (for SEQ_CLS the
        classifier is added, as for every method).
    """

    target_modules: Optional[Union[list[str], str]] = None
    exclude_modules: Optional[Union[list[str], str]] = None
    modules_to_save: Optional[list[str]] = None

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.BITFIT
        for name in ("target_modules", "exclude_modules"):
            setattr(self, name, _module_names_or_regex(name, getattr(self, name)))
        self.modules_to_save = _modules_to_save(self.modules_to_save)
        if not isinstance(self.inference_mode, bool):
            raise ValueError(f"`inference_mode` must be True or False, got {self.inference_mode!r}")
