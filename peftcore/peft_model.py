"""PeftModel and get_peft_model: Hugging Face PEFT's interface over the engine's adapters."""
from __future__ import annotations

import contextlib
import copy
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import PeftConfig, PeftType
from .models.checkpoint import read_torch_bin
from .models.encoder import EncoderModel
from .models.modules import Module
from .tuners.lora.config import LoraConfig
from .tuners.lora.layer import LoraLinear
from .tuners.lora.model import LoraModel, check_adapter_name, plan_lora, wrapped_adapters
from .tuners.modules_to_save import ModulesToSaveWrapper
from .tuners.tuners_utils import TASK_MODULES_TO_SAVE, format_trainable_parameters
from .utils.io import (CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, CheckpointError, read_safetensors,
                       save_adapter_files)

_PREFIX = "base_model.model."


@dataclass
class TunerLayerStatus:
    name: str
    module_type: str
    enabled: bool
    active_adapters: list
    merged_adapters: list
    requires_grad: dict
    available_adapters: list
    devices: dict = field(default_factory=dict)
    quantization_backend: str | None = None


@dataclass
class TunerModelStatus:
    base_model_type: str
    adapter_model_type: str
    peft_types: dict
    trainable_params: int
    total_params: int
    num_adapter_layers: int
    enabled: bool | str
    active_adapters: list | str
    merged_adapters: list | str
    requires_grad: dict
    available_adapters: list
    devices: dict = field(default_factory=dict)
    quantization_backend: str | None = None


def _all_or_irregular(flags):
    """True if all flags are True, False if all are False, else "irregular" (as HF PEFT)."""
    flags = list(flags)
    if all(f is True for f in flags):
        return True
    if all(f is False for f in flags):
        return False
    return "irregular"


def _prepare_config(config, base_model: EncoderModel, model_task=None):
    """A copy of `config` with the task head added to modules_to_save. As in HF PEFT, the
    head comes from the PeftModel's task (the first adapter's task_type, `model_task`), so
    every adapter of a SEQ_CLS model saves its own classifier."""
    if not isinstance(config, LoraConfig):
        raise ValueError(f"peftcore supports LoraConfig adapters; got {type(config).__name__}")
    config = copy.deepcopy(config)
    task = getattr(config.task_type, "value", config.task_type) if model_task is None else model_task
    extra = TASK_MODULES_TO_SAVE.get(task, [])
    if extra:
        current = list(config.modules_to_save or [])
        config.modules_to_save = current + [m for m in extra if m not in current]
    if not config.base_model_name_or_path:
        config.base_model_name_or_path = base_model.config.name_or_path or None
    return config


def _remove_adapter_name(key: str, adapter_name: str) -> str:
    """HF PEFT's checkpoint key of a model key: `<...>.lora_A.<adapter>.weight` ->
    `<...>.lora_A.weight` (only when the adapter name is the second-to-last part)."""
    head, _, suffix = key.rpartition(".")
    return re.sub(re.escape(f".{adapter_name}") + "$", "", head) + "." + suffix


def _model_change(method):
    """A PeftModel call that changes the model runs whole under the base model's lock:
    forwards and backwards on other threads see the model before it or after it."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self.get_base_model()._changing(method.__name__):
            return method(self, *args, **kwargs)
    return locked


def _one_adapter_name(adapter_name):
    """set_adapter's argument: a name, or (as HF PEFT accepts) a list or tuple of one."""
    if isinstance(adapter_name, (list, tuple)):
        if len(adapter_name) != 1:
            raise ValueError(f"peftcore runs one adapter at a time: set_adapter takes a name or "
                             f"a list of one name, got {list(adapter_name)!r}")
        adapter_name = adapter_name[0]
    if not isinstance(adapter_name, str):
        raise TypeError(f"adapter_name must be a str (or a list of one str), got "
                        f"{type(adapter_name).__name__}")
    return adapter_name


# the class HF PEFT's get_peft_model returns for a task type (repr shows it)
_PEFT_MODEL_NAMES = {
    "SEQ_CLS": "PeftModelForSequenceClassification", "SEQ_2_SEQ_LM": "PeftModelForSeq2SeqLM",
    "CAUSAL_LM": "PeftModelForCausalLM", "TOKEN_CLS": "PeftModelForTokenClassification",
    "QUESTION_ANS": "PeftModelForQuestionAnswering",
    "FEATURE_EXTRACTION": "PeftModelForFeatureExtraction",
}


class PeftModel(Module):
    """A base model with LoRA adapters; named and saved as Hugging Face PEFT's PeftModel."""

    def __init__(self, model: EncoderModel, peft_config, adapter_name: str = "default"):
        super().__init__()
        if isinstance(model, PeftModel):
            raise ValueError("the model already has adapters: use add_adapter() instead")
        if not isinstance(model, EncoderModel):
            raise TypeError(f"get_peft_model expects a peftcore model, got {type(model).__name__}")
        config = _prepare_config(peft_config, model)
        # the model's task is fixed by its first adapter (HF PEFT picks the PeftModel class by it)
        self._task_type = getattr(config.task_type, "value", config.task_type) or ""
        self._modules["base_model"] = LoraModel(model, config, adapter_name)
        self.display_name = _PEFT_MODEL_NAMES.get(self._task_type, "PeftModel")

    # ------------------------------------------------------------ adapters

    @property
    def peft_config(self) -> dict:
        return self.base_model.peft_config

    @property
    def active_adapter(self) -> str:
        return self.base_model.active_adapter

    @property
    def active_adapters(self) -> list:
        return [self.active_adapter]

    @property
    def active_peft_config(self):
        return self.peft_config[self.active_adapter]

    def get_base_model(self) -> EncoderModel:
        return self.base_model.model

    def _check_new_name(self, adapter_name: str):
        check_adapter_name(adapter_name)
        if adapter_name in self.peft_config:
            raise ValueError(f"an adapter named {adapter_name!r} already exists; existing adapters: "
                             f"{list(self.peft_config)}")

    def _check_bias(self, config):
        """As HF PEFT: biases are shared base parameters, so one adapter at most may train them."""
        if getattr(config, "bias", "none") != "none" and any(
                c.bias != "none" for c in self.peft_config.values()):
            raise ValueError("LoraModel supports only 1 adapter with bias. When using multiple "
                             "adapters, set bias to 'none' for all adapters.")

    @_model_change
    def add_adapter(self, adapter_name: str, peft_config):
        """Add a new (inactive, frozen) adapter; activate it with set_adapter()."""
        self._check_new_name(adapter_name)
        self._check_bias(peft_config)
        config = _prepare_config(peft_config, self.get_base_model(), self._task_type)
        plan = plan_lora(self.get_base_model(), config)
        self.base_model.inject_adapter(adapter_name, plan)
        self.base_model.set_adapter(self.active_adapter)

    @_model_change
    def set_adapter(self, adapter_name: str):
        adapter_name = _one_adapter_name(adapter_name)
        if adapter_name not in self.peft_config:
            raise ValueError(f"adapter {adapter_name!r} not found; available: {list(self.peft_config)}")
        self.base_model.set_adapter(adapter_name)

    @_model_change
    def delete_adapter(self, adapter_name: str):
        if not isinstance(adapter_name, str):
            raise TypeError(f"adapter_name must be a str, got {type(adapter_name).__name__}")
        if adapter_name not in self.peft_config:
            raise ValueError(f"adapter {adapter_name!r} not found; available: {list(self.peft_config)}")
        if adapter_name == self.active_adapter:
            raise ValueError(f"adapter {adapter_name!r} is active; set_adapter() another one "
                             f"before deleting it")
        self.base_model.delete_adapter(adapter_name)

    @contextlib.contextmanager
    def disable_adapter(self):
        """Run the bare base model inside the block (blocks may nest)."""
        with self.get_base_model()._changing("disable_adapter"):
            was_disabled = self.base_model.disabled
            self.base_model.set_disabled(True)
        try:
            yield
        finally:
            if not was_disabled:
                with self.get_base_model()._changing("disable_adapter"):
                    self.base_model.set_disabled(False)

    @_model_change
    def merge_adapter(self):
        self.base_model.merge_adapter()

    @_model_change
    def unmerge_adapter(self):
        self.base_model.unmerge_adapter()

    @_model_change
    def merge_and_unload(self) -> EncoderModel:
        """Fold the active adapter into the base weights and return the bare base model."""
        return self.base_model.unload(merge=True)

    @_model_change
    def unload(self) -> EncoderModel:
        """Remove all adapters without merging and return the bare base model."""
        return self.base_model.unload(merge=False)

    # ------------------------------------------------------------ parameters and status

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        trainable = total = 0
        for _, p in self.named_parameters():
            total += p.size
            if p.requires_grad:
                trainable += p.size
        return trainable, total

    def print_trainable_parameters(self):
        print(format_trainable_parameters(*self.get_nb_trainable_parameters()))

    def get_layer_status(self) -> list:
        """One TunerLayerStatus per adapter layer (LoRA layers and modules_to_save wrappers),
        named relative to the LoraModel ("model.<...>") and filled in as HF PEFT does."""
        status = []
        for name, module in self.base_model.named_modules():
            if isinstance(module, LoraLinear):
                module_type = "lora.Linear"
                flags = {a: [p.requires_grad for p in module.weights(a)]
                         for a in module.adapter_names()}
                merged = list(module.merged_adapters)
            elif isinstance(module, ModulesToSaveWrapper):
                module_type = "ModulesToSaveWrapper"
                flags = {a: [p.requires_grad for _, p in module.modules_to_save[a].named_parameters()]
                         for a in module.adapter_names()}
                merged = []
            else:
                continue
            status.append(TunerLayerStatus(
                name=name, module_type=module_type, enabled=not module.disabled,
                active_adapters=list(self.active_adapters), merged_adapters=merged,
                requires_grad={a: _all_or_irregular(v) for a, v in flags.items()},
                available_adapters=sorted(flags), devices={a: ["cpu"] for a in flags},
                quantization_backend=None))
        if not status:
            raise ValueError("No adapter layers found in the model, please ensure that it's a PEFT "
                             "model or that you have PEFT adapters injected in the model.")
        return status

    def get_model_status(self) -> TunerModelStatus:
        layers = self.get_layer_status()
        trainable, total = self.get_nb_trainable_parameters()
        enabled = {layer.enabled for layer in layers}
        active = {tuple(layer.active_adapters) for layer in layers}
        merged_all = set().union(*(layer.merged_adapters for layer in layers))
        merged = sorted(merged_all)
        if any((set(layer.available_adapters) - set(layer.merged_adapters)) & merged_all
               for layer in layers):
            merged = "irregular"
        flags, devices = {}, {}
        for layer in layers:
            for a, flag in layer.requires_grad.items():
                flags.setdefault(a, []).append(flag)
            for a, devs in layer.devices.items():
                devices.setdefault(a, set()).update(devs)
        return TunerModelStatus(
            base_model_type=type(self.get_base_model()).__name__,
            adapter_model_type=type(self.base_model).__name__,
            peft_types={k: v.peft_type.value for k, v in self.peft_config.items()},
            trainable_params=trainable, total_params=total, num_adapter_layers=len(layers),
            enabled=enabled.pop() if len(enabled) == 1 else "irregular",
            active_adapters=list(active.pop()) if len(active) == 1 else "irregular",
            merged_adapters=merged,
            requires_grad={a: _all_or_irregular(v) for a, v in flags.items()},
            available_adapters=sorted(set().union(*(layer.available_adapters for layer in layers))),
            devices={a: sorted(d) for a, d in devices.items()}, quantization_backend=None)

    # ------------------------------------------------------------ running

    def __call__(self, *args, **kwargs):
        return self.get_base_model()(*args, **kwargs)

    forward = __call__

    def backward(self, *args, **kwargs):
        return self.get_base_model().backward(*args, **kwargs)

    def train(self, mode: bool = True):
        self.get_base_model().train(mode)
        return self

    def eval(self):
        return self.train(False)

    def release_memory(self):
        """Free the base model's activation memory (EncoderModel.release_memory)."""
        self.get_base_model().release_memory()

    @property
    def training(self) -> bool:
        return self.get_base_model().training

    @property
    def config(self):
        return self.get_base_model().config

    # ------------------------------------------------------------ files

    def adapter_state_dict(self, adapter_name: str) -> dict:
        """HF PEFT's saved keys (adapter name removed) -> float32 arrays. Biases are keyed as
        HF PEFT saves them: a LoRA layer's as `<name>.base_layer.bias`, and with bias="all"
        every bias of the model, modules_to_save wrappers' included."""
        if adapter_name not in self.peft_config:
            raise ValueError(f"adapter {adapter_name!r} not found; available: {list(self.peft_config)}")
        state = {}
        config = self.peft_config[adapter_name]
        for name, layer in self.base_model.lora_layers():
            if adapter_name in layer.adapter_names():
                A, B = layer.weights(adapter_name)
                state[f"{_PREFIX}{name}.lora_A.weight"] = np.array(A)
                state[f"{_PREFIX}{name}.lora_B.weight"] = np.array(B)
            if config.bias == "lora_only":  # HF saves the bias of every LoRA layer
                state[f"{_PREFIX}{name}.base_layer.bias"] = np.array(layer.base_layer.bias)
        for name, wrapper in self.base_model.wrappers():
            if adapter_name in wrapper.adapter_names():
                for pname, p in wrapper.modules_to_save[adapter_name].named_parameters():
                    state[f"{_PREFIX}{name}.{pname}"] = np.array(p)
        if config.bias == "all":
            others = [a for a in self.peft_config if a != adapter_name]
            for pname, p in self.get_base_model().named_parameters():
                if not pname.endswith(".bias") or any(f".modules_to_save.{a}." in pname
                                                      for a in others):
                    continue
                state.setdefault(_remove_adapter_name(_PREFIX + pname, adapter_name), np.array(p))
        return state

    def save_pretrained(self, save_directory, selected_adapters=None):
        """Write each adapter as HF PEFT does: adapter_config.json and
        adapter_model.safetensors, "default" in save_directory, others in sub-folders."""
        save_directory = Path(save_directory)
        if save_directory.is_file():
            raise ValueError(f"Provided path ({save_directory}) should be a directory, not a file")
        names = list(self.peft_config) if selected_adapters is None else list(selected_adapters)
        for name in names:
            if name not in self.peft_config:
                raise ValueError(f"adapter {name!r} not found; available: {list(self.peft_config)}")
        for name in names:
            out = save_directory if name == "default" else save_directory / name
            config = copy.deepcopy(self.peft_config[name])
            config.inference_mode = True
            save_adapter_files(out, config.to_dict(), self.adapter_state_dict(name))

    @staticmethod
    def _read_adapter(directory):
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"adapter folder {directory} does not exist")
        config = PeftConfig.from_pretrained(directory)
        if config.peft_type != PeftType.LORA:
            raise ValueError(f"{directory / CONFIG_NAME}: peft_type {config.peft_type.value!r} "
                             f"is not supported by peftcore (LORA is)")
        weights_file = directory / SAFETENSORS_WEIGHTS_NAME
        if weights_file.is_file():
            weights = read_safetensors(weights_file)
        elif (directory / "adapter_model.bin").is_file():
            weights = read_torch_bin(directory / "adapter_model.bin")
        else:
            raise FileNotFoundError(f"no {SAFETENSORS_WEIGHTS_NAME} (or adapter_model.bin) in {directory}")
        source = weights_file if weights_file.is_file() else directory / "adapter_model.bin"
        for key, value in weights.items():
            if np.asarray(value).dtype.kind != "f":
                raise CheckpointError(f"{source}: tensor {key!r} has dtype "
                                      f"{np.asarray(value).dtype}; adapter weights are float "
                                      f"parameters (float32, float16, bfloat16 or float64)")
        return config, weights

    def _assign_weights(self, adapter_name: str, weights: dict, plan) -> None:
        """Check every saved tensor against the planned adapter (names and shapes) and
        return silently, or raise naming the first tensor that does not fit."""
        expected = {}
        for name, (fin, fout, r, _) in plan.targets.items():
            expected[f"{_PREFIX}{name}.lora_A.weight"] = (r, fin)
            expected[f"{_PREFIX}{name}.lora_B.weight"] = (fout, r)
        model = self.get_base_model()
        aliases = []  # (regex, shape): HF's extra keys of wrapped biases (bias="all")
        for name in plan.modules_to_save:
            module = model.get_submodule(name)
            if isinstance(module, ModulesToSaveWrapper):
                module = module.original_module
            for pname, p in module.named_parameters():
                expected[f"{_PREFIX}{name}.{pname}"] = p.shape
                if pname.endswith("bias") and plan.config.bias == "all":
                    expected[f"{_PREFIX}{name}.original_module.{pname}"] = p.shape
                    aliases.append((re.compile(re.escape(f"{_PREFIX}{name}.modules_to_save.")
                                               + r"(?:[^.]+\.)?" + re.escape(pname) + "$"), p.shape))
        if plan.config.bias != "none":
            for pname, p in model.named_parameters():
                if pname.endswith(".bias") and ".modules_to_save." not in pname:
                    clean = pname.replace(".base_layer.", ".").replace(".original_module.", ".")
                    expected.setdefault(_PREFIX + clean, p.shape)
                    # HF PEFT's key for the bias of a LoRA layer (older peftcore wrote `clean`)
                    expected.setdefault(f"{_PREFIX}{clean[:-len('.bias')]}.base_layer.bias", p.shape)
        for key, value in weights.items():
            shape = expected.get(key)
            if shape is None:
                shape = next((s for pattern, s in aliases if pattern.match(key)), None)
            if shape is None:
                raise ValueError(f"adapter tensor {key!r} does not match any module of the base "
                                 f"model for this adapter config")
            if tuple(np.shape(value)) != tuple(shape):
                raise ValueError(f"adapter tensor {key!r} has shape {tuple(np.shape(value))}, the "
                                 f"base model needs {tuple(shape)}")
        lora_keys = [k for k in expected if ".lora_" in k]
        missing = [k for k in lora_keys if k not in weights]
        if missing:
            raise ValueError(f"adapter file lacks tensors: {missing[:5]}{' ...' if len(missing) > 5 else ''}")

    def _load_into(self, adapter_name: str, weights: dict):
        """Copy checked tensors into the injected adapter."""
        model = self.get_base_model()
        for name, layer in self.base_model.lora_layers():
            if adapter_name in layer.adapter_names():
                A, B = layer.weights(adapter_name)
                A[...] = weights[f"{_PREFIX}{name}.lora_A.weight"]
                B[...] = weights[f"{_PREFIX}{name}.lora_B.weight"]
        for name, wrapper in self.base_model.wrappers():
            if adapter_name in wrapper.adapter_names():
                for pname, p in wrapper.modules_to_save[adapter_name].named_parameters():
                    for key in (f"{_PREFIX}{name}.{pname}", f"{_PREFIX}{name}.modules_to_save.{pname}"):
                        if key in weights:
                            p[...] = weights[key]
                            break
        for pname, p in model.named_parameters():
            if not pname.endswith(".bias") or ".modules_to_save." in pname:
                continue
            bare = pname.replace(".base_layer.", ".")
            for key in (_PREFIX + pname, _PREFIX + bare,
                        f"{_PREFIX}{bare[:-len('.bias')]}.base_layer.bias"):
                if key in weights:
                    p[...] = weights[key]
                    break

    @classmethod
    def from_pretrained(cls, model: EncoderModel, model_id, adapter_name: str = "default",
                        is_trainable: bool = False, config=None):
        """Load an adapter saved by peftcore or Hugging Face PEFT onto `model`. Nothing is
        changed when the files do not fit the model."""
        if isinstance(model, PeftModel):
            raise ValueError("PeftModel.from_pretrained expects a base model, got a PeftModel: "
                             "use its load_adapter() to add another adapter")
        if not isinstance(model, EncoderModel):
            raise TypeError(f"PeftModel.from_pretrained expects a peftcore model, got "
                            f"{type(model).__name__}")
        check_adapter_name(adapter_name)
        existing = wrapped_adapters(model)
        if existing:
            raise ValueError(f"this base model is already wrapped by a PeftModel (adapters "
                             f"{existing}); loading would overwrite that wrapper's weights. Use "
                             f"that PeftModel's load_adapter(), or call its unload() first")
        file_config, weights = cls._read_adapter(model_id)
        config = copy.deepcopy(config or file_config)
        config.inference_mode = not is_trainable
        prepared = _prepare_config(config, model)
        plan = plan_lora(model, prepared)
        probe = object.__new__(cls)
        Module.__init__(probe)
        probe._modules["base_model"] = _PlanView(model)
        cls._assign_weights(probe, adapter_name, weights, plan)
        with model._changing("from_pretrained"):  # forwards see no half-loaded adapter
            peft_model = cls(model, config, adapter_name)
            peft_model._load_into(adapter_name, weights)
        return peft_model

    @_model_change
    def load_adapter(self, model_id, adapter_name: str, is_trainable: bool = False):
        """Load another saved adapter under `adapter_name` (not activated)."""
        self._check_new_name(adapter_name)
        config, weights = self._read_adapter(model_id)
        self._check_bias(config)
        config.inference_mode = not is_trainable
        prepared = _prepare_config(config, self.get_base_model(), self._task_type)
        plan = plan_lora(self.get_base_model(), prepared)
        self._assign_weights(adapter_name, weights, plan)
        self.base_model.inject_adapter(adapter_name, plan)
        self.base_model.set_adapter(self.active_adapter)
        self._load_into(adapter_name, weights)


class _PlanView(Module):
    """Stands in for a LoraModel while checking a file against a model not yet wrapped."""

    def __init__(self, model):
        super().__init__()
        self._modules["model"] = model


PeftModelForSequenceClassification = PeftModel


def get_peft_model(model: EncoderModel, peft_config, adapter_name: str = "default") -> PeftModel:
    """Wrap `model` with a new adapter, as peft.get_peft_model."""
    return PeftModel(model, peft_config, adapter_name)
