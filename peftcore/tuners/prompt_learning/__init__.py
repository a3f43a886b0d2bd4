"""Prompt learning: prompt tuning, P-tuning and prefix tuning / P-tuning v2, as HF PEFT."""

from .config import (PrefixTuningConfig, PromptEncoderConfig, PromptEncoderReparameterizationType,
                     PromptLearningConfig, PromptTuningConfig, PromptTuningInit)
from .model import PromptLearningModel

__all__ = ["PromptLearningConfig", "PromptTuningConfig", "PromptEncoderConfig",
           "PrefixTuningConfig", "PromptTuningInit", "PromptEncoderReparameterizationType",
           "PromptLearningModel"]
