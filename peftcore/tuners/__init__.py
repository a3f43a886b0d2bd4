"""Adapter methods. Importing this package registers each one: PeftType -> (config, tuner)."""

from ..config import PeftType
from .bitfit import BitFitConfig, BitFitModel
from .ia3 import IA3Config, IA3Model
from .lora import LoraConfig, LoraModel
from .registry import register

register(PeftType.LORA, LoraConfig, LoraModel)
register(PeftType.IA3, IA3Config, IA3Model)
register(PeftType.BITFIT, BitFitConfig, BitFitModel)

__all__ = ["LoraConfig", "IA3Config", "BitFitConfig"]
