"""Bottleneck adapters (Houlsby, Pfeiffer) after transformer blocks, as AdapterHub `adapters`."""

from .config import BnConfig, DoubleSeqBnConfig, SeqBnConfig
from .model import BottleneckModel

__all__ = ["BnConfig", "SeqBnConfig", "DoubleSeqBnConfig", "BottleneckModel"]
