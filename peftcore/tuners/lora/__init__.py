"""LoRA adapter."""

from .config import LoraConfig
from .model import LoraModel

__all__ = ["LoraConfig", "LoraModel"]
