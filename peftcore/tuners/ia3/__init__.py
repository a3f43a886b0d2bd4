"""(IA)³: learned vectors scaling a linear's input (feedforward layers) or output."""

from .config import IA3Config
from .model import IA3Model

__all__ = ["IA3Config", "IA3Model"]
