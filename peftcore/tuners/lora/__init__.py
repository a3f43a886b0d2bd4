"""LoRA adapter."""

from .config import LoraConfig

__all__ = ["LoraConfig"]
