"""IA3Model: (IA)³'s part of the tuner protocol."""
from __future__ import annotations

import re
import warnings

from ...models.modules import Linear
from ..tuners_utils import BaseTuner
from .config import check_feedforward_subset
from .layer import IA3Linear

# HF PEFT's TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING / ..._FEEDFORWARD_MODULES_MAPPING
# for the model types peftcore runs
DEFAULT_TARGET_MODULES = {"bert": ["key", "value", "output.dense"],
                          "roberta": ["key", "value", "output.dense"]}
DEFAULT_FEEDFORWARD_MODULES = {"bert": ["output.dense"], "roberta": ["output.dense"]}


def is_feedforward(config, name: str) -> bool:
    """HF PEFT's test: a regex is re.fullmatch'ed, names match by plain suffix (so
    "output.dense" is feedforward in attention.output.dense as well)."""
    if isinstance(config.feedforward_modules, str):
        return re.fullmatch(config.feedforward_modules, name) is not None
    return any(name.endswith(wanted) for wanted in config.feedforward_modules)


class IA3Model(BaseTuner):
    """Holds the base model (as child `model`) and its (IA)³ adapters."""

    prefix = "ia3_"
    layer_cls = IA3Linear

    @classmethod
    def prepare_config(cls, config, model):
        model_type = model.config.model_type
        if config.target_modules is None:
            if model_type not in DEFAULT_TARGET_MODULES:
                raise ValueError(f"Please specify `target_modules` in `peft_config` (no default "
                                 f"is known for model_type {model_type!r})")
            config.target_modules = set(DEFAULT_TARGET_MODULES[model_type])
        if config.feedforward_modules is None:
            if model_type not in DEFAULT_FEEDFORWARD_MODULES:
                raise ValueError(f"Please specify `feedforward_modules` in `peft_config` (no "
                                 f"default is known for model_type {model_type!r})")
            config.feedforward_modules = set(DEFAULT_FEEDFORWARD_MODULES[model_type])
        if config.fan_in_fan_out:
            warnings.warn("fan_in_fan_out is set to True but the target module is `torch.nn.Linear`. "
                          "Setting fan_in_fan_out to False.", stacklevel=4)
            config.fan_in_fan_out = False
        return config

    @classmethod
    def plan(cls, model, config):
        # a config changed after construction is checked again
        check_feedforward_subset(config.feedforward_modules, config.target_modules)
        return super().plan(model, config)

    @classmethod
    def target_info(cls, name, module, config):
        """(in, out, is_feedforward); a layer keeps the kind its first adapter gave it (HF)."""
        if isinstance(module, IA3Linear):
            return (module.in_features, module.out_features, module.is_feedforward)
        if not isinstance(module, Linear):
            raise ValueError(f"Target module {name} ({type(module).__name__}) is not supported: "
                             f"(IA)³ applies to Linear layers only")
        return (module.in_features, module.out_features, is_feedforward(config, name))

    def create_layer(self, name, module, info, config):
        return IA3Linear(module, self.model._engine, info[2])

    def update_layer(self, layer, adapter_name, info, config, rng):
        layer.update_layer(adapter_name, config.init_ia3_weights, rng)
