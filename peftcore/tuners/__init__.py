"""Adapter methods. Importing this package registers every built-in config class."""

from .lora import LoraConfig

__all__ = ["LoraConfig"]
