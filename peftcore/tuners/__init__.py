"""Adapter methods. Importing this package registers each one: PeftType -> (config, tuner)."""

from ..config import PeftType
from .lora import LoraConfig, LoraModel
from .registry import register

register(PeftType.LORA, LoraConfig, LoraModel)

__all__ = ["LoraConfig"]
