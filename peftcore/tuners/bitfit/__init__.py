"""BitFit: fine-tune only the biases (Ben Zaken et al., 2022); peftcore's own PeftType."""

from .config import BitFitConfig
from .model import BitFitModel

__all__ = ["BitFitConfig", "BitFitModel"]
