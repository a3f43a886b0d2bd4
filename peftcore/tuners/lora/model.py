"""LoraModel: LoRA's part of the tuner protocol (targets, layer creation, biases)."""
from __future__ import annotations

import re
import warnings

import numpy as np

from ...models.modules import Linear
from ..tuners_utils import KEY_PREFIX, BaseTuner, ModulesToSaveWrapper, get_pattern_key
from .layer import LoraLinear


class LoraModel(BaseTuner):
    """Holds the base model (as child `model`) and its LoRA adapters."""

    prefix = "lora_"
    layer_cls = LoraLinear

    # ------------------------------------------------------------ planning

    @classmethod
    def prepare_config(cls, config, model):
        if config.fan_in_fan_out:  # HF PEFT's warning and fix: it describes Conv1D weights
            warnings.warn("fan_in_fan_out is set to True but the target modules are Linear layers "
                          "(weights stored (out, in)). Setting fan_in_fan_out to False.", stacklevel=4)
            config.fan_in_fan_out = False
        return super().prepare_config(config, model)

    @classmethod
    def target_info(cls, name, module, config):
        """(in, out, r, alpha), r and alpha from rank_pattern / alpha_pattern if they match."""
        if not isinstance(module, (Linear, LoraLinear)):
            raise ValueError(f"Target module {name} ({type(module).__name__}) is not supported: "
                             f"LoRA applies to Linear layers only")
        rank_pattern, alpha_pattern = config.rank_pattern or {}, config.alpha_pattern or {}
        r = rank_pattern.get(get_pattern_key(rank_pattern, name), config.r)
        alpha = alpha_pattern.get(get_pattern_key(alpha_pattern, name), config.lora_alpha)
        return (module.in_features, module.out_features, r, alpha)

    # ------------------------------------------------------------ layers

    def update_layer(self, layer, adapter_name, info, config, rng):
        _, _, r, alpha = info
        layer.update_layer(adapter_name, r, alpha, config.lora_dropout, config.init_lora_weights,
                           config.use_rslora, rng)

    def lora_layers(self):
        return self.tuner_layers()

    def check_new_config(self, config):
        """As HF PEFT: biases are shared base parameters, so one adapter at most may train them."""
        if getattr(config, "bias", "none") != "none" and any(
                c.bias != "none" for c in self.peft_config.values()):
            raise ValueError("LoraModel supports only 1 adapter with bias. When using multiple "
                             "adapters, set bias to 'none' for all adapters.")

    def mark_trainable(self):
        """The active adapter's factors and copies, and its biases with bias="lora_only"
        (those of its LoRA layers) or "all" (every bias but the modules_to_save copies')."""
        super().mark_trainable()
        name = self.active_adapter
        config = self.peft_config[name]
        if config.inference_mode:
            return
        if config.bias == "lora_only":
            for _, layer in self.tuner_layers():
                if name in layer.adapter_names():
                    layer.base_layer.bias.requires_grad = True
        if config.bias == "all":
            for pname, p in self.model.named_parameters():
                if pname.endswith("bias") and ".modules_to_save." not in pname \
                        and ".original_module." not in pname:
                    p.requires_grad = True

    # ------------------------------------------------------------ files: biases

    def adapter_state_dict(self, adapter_name: str) -> dict:
        """Biases are keyed as HF PEFT saves them: a LoRA layer's as `<name>.base_layer.bias`,
        and with bias="all" every bias of the model, modules_to_save wrappers' included."""
        state = super().adapter_state_dict(adapter_name)
        config = self.peft_config[adapter_name]
        if config.bias == "lora_only":  # HF saves the bias of every LoRA layer
            for name, layer in self.tuner_layers():
                state[f"{KEY_PREFIX}{name}.base_layer.bias"] = np.array(layer.base_layer.bias)
        if config.bias == "all":
            others = [a for a in self.peft_config if a != adapter_name]
            for pname, p in self.model.named_parameters():
                if not pname.endswith(".bias") or any(f".modules_to_save.{a}." in pname
                                                      for a in others):
                    continue
                key = _remove_adapter_name(KEY_PREFIX + pname, adapter_name)
                state.setdefault(key, np.array(p))
        return state

    @classmethod
    def expected_tensors(cls, model, plan):
        expected, aliases, required = super().expected_tensors(model, plan)
        if plan.config.bias == "all":  # HF's extra keys of wrapped biases
            for name in plan.modules_to_save:
                module = model.get_submodule(name)
                if isinstance(module, ModulesToSaveWrapper):
                    module = module.original_module
                for pname, p in module.named_parameters():
                    if pname.endswith("bias"):
                        expected[f"{KEY_PREFIX}{name}.original_module.{pname}"] = p.shape
                        aliases.append((re.compile(re.escape(f"{KEY_PREFIX}{name}.modules_to_save.")
                                                   + r"(?:[^.]+\.)?" + re.escape(pname) + "$"),
                                        p.shape))
        if plan.config.bias != "none":
            for pname, p in model.named_parameters():
                if pname.endswith(".bias") and ".modules_to_save." not in pname:
                    clean = pname.replace(".base_layer.", ".").replace(".original_module.", ".")
                    expected.setdefault(KEY_PREFIX + clean, p.shape)
                    # HF PEFT's key for the bias of a LoRA layer (older peftcore wrote `clean`)
                    expected.setdefault(f"{KEY_PREFIX}{clean[:-len('.bias')]}.base_layer.bias", p.shape)
        return expected, aliases, required

    def load_weights(self, adapter_name: str, weights: dict):
        super().load_weights(adapter_name, weights)
        for pname, p in self.model.named_parameters():
            if not pname.endswith(".bias") or ".modules_to_save." in pname:
                continue
            bare = pname.replace(".base_layer.", ".")
            for key in (KEY_PREFIX + pname, KEY_PREFIX + bare,
                        f"{KEY_PREFIX}{bare[:-len('.bias')]}.base_layer.bias"):
                if key in weights:
                    p[...] = weights[key]
                    break


def _remove_adapter_name(key: str, adapter_name: str) -> str:
    """HF PEFT's checkpoint key of a model key: `<...>.lora_A.<adapter>.weight` ->
    `<...>.lora_A.weight` (only when the adapter name is the second-to-last part)."""
    head, _, suffix = key.rpartition(".")
    return re.sub(re.escape(f".{adapter_name}") + "$", "", head) + "." + suffix
