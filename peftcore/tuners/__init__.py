"""Adapter methods. Importing this package registers each one: PeftType -> (config, tuner)."""

from ..config import PeftType, register_config_layout
from .bitfit import BitFitConfig, BitFitModel
from .bottleneck import BnConfig, BottleneckModel, DoubleSeqBnConfig, SeqBnConfig
from .bottleneck.config import read_adapterhub_layout
from .ia3 import IA3Config, IA3Model
from .lora import LoraConfig, LoraModel
from .prompt_learning import (PrefixTuningConfig, PromptEncoderConfig, PromptLearningModel,
                              PromptTuningConfig)
from .registry import register
from .unipelt import ConfigUnion, UniPELTModel, read_union_layout

register(PeftType.LORA, LoraConfig, LoraModel)
register(PeftType.IA3, IA3Config, IA3Model)
register(PeftType.BITFIT, BitFitConfig, BitFitModel)
register(PeftType.BOTTLENECK, BnConfig, BottleneckModel)
register(PeftType.UNIPELT, ConfigUnion, UniPELTModel)
register(PeftType.PROMPT_TUNING, PromptTuningConfig, PromptLearningModel)
register(PeftType.P_TUNING, PromptEncoderConfig, PromptLearningModel)
register(PeftType.PREFIX_TUNING, PrefixTuningConfig, PromptLearningModel)
register_config_layout(read_union_layout)  # AdapterHub's union / prefix / LoRA files (first)
register_config_layout(read_adapterhub_layout)  # AdapterHub's adapter_config.json

__all__ = ["LoraConfig", "IA3Config", "BitFitConfig", "BnConfig", "SeqBnConfig", "DoubleSeqBnConfig",
           "ConfigUnion", "PromptTuningConfig", "PromptEncoderConfig", "PrefixTuningConfig"]
