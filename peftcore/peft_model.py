"""PeftModel and get_peft_model: Hugging Face PEFT's interface over the engine's adapters."""
from __future__ import annotations

import contextlib
import copy
import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import PeftConfig
from .models.encoder import EncoderModel
from .models.modules import Module
from .tuners.registry import tuner_class
from .tuners.tuners_utils import (TASK_MODULES_TO_SAVE, all_or_irregular, check_adapter_name,
                                  format_trainable_parameters, wrapped_adapters)
from .utils.io import CheckpointError


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


def _prepare_config(config, base_model: EncoderModel, model_task=None):
    """A copy of `config` with the task head added to modules_to_save. As in HF PEFT, the
    head comes from the PeftModel's task (the first adapter's task_type, `model_task`), so
    every adapter of a SEQ_CLS model saves its own classifier."""
    tuner_class(config)  # refuses a config of a method peftcore does not implement
    config = copy.deepcopy(config)
    task = getattr(config.task_type, "value", config.task_type) if model_task is None else model_task
    extra = TASK_MODULES_TO_SAVE.get(task, [])
    if extra:
        current = list(config.modules_to_save or [])
        config.modules_to_save = current + [m for m in extra if m not in current]
    if not config.base_model_name_or_path:
        config.base_model_name_or_path = base_model.config.name_or_path or None
    return config


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
    """A base model with adapters of one method (held by that method's tuner, `base_model`);
    named and saved as Hugging Face PEFT's PeftModel."""

    def __init__(self, model: EncoderModel, peft_config, adapter_name: str = "default"):
        super().__init__()
        if isinstance(model, PeftModel):
            raise ValueError("the model already has adapters: use add_adapter() instead")
        if not isinstance(model, EncoderModel):
            raise TypeError(f"get_peft_model expects a peftcore model, got {type(model).__name__}")
        config = _prepare_config(peft_config, model)
        # the model's task is fixed by its first adapter (HF PEFT picks the PeftModel class by it)
        self._task_type = getattr(config.task_type, "value", config.task_type) or ""
        self._modules["base_model"] = tuner_class(config)(model, config, adapter_name)
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

    @property
    def peft_type(self):
        return self.active_peft_config.peft_type

    def _check_config(self, config, source=None):
        """A new adapter is of this model's method (as HF PEFT) and fits its other adapters."""
        tuner_class(config)
        if config.peft_type != self.peft_type or not isinstance(self.base_model, tuner_class(config)):
            where = f" ({source})" if source else ""
            raise ValueError(f"Cannot combine adapters with different peft types. Found "
                             f"{self.peft_type.value} and {config.peft_type.value}{where}: this "
                             f"model's adapters are {type(self.base_model).__name__}'s, the new "
                             f"one is a {type(config).__name__}")
        self.base_model.check_new_config(config)

    @_model_change
    def add_adapter(self, adapter_name: str, peft_config):
        """Add a new (inactive, frozen) adapter; activate it with set_adapter()."""
        self._check_new_name(adapter_name)
        self._check_config(peft_config)
        config = _prepare_config(peft_config, self.get_base_model(), self._task_type)
        plan = self.base_model.plan(self.get_base_model(), config)
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
        """One TunerLayerStatus per adapter layer (the method's layers and modules_to_save
        wrappers), named relative to the tuner ("model.<...>") and filled in as HF PEFT does."""
        status = []
        for name, layer in self.base_model.all_layers():
            flags = layer.requires_grad_flags()
            status.append(TunerLayerStatus(
                name=f"model.{name}", module_type=layer.module_type, enabled=not layer.disabled,
                active_adapters=list(self.active_adapters),
                merged_adapters=list(layer.merged_adapters),
                requires_grad={a: all_or_irregular(v) for a, v in flags.items()},
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
            requires_grad={a: all_or_irregular(v) for a, v in flags.items()},
            available_adapters=sorted(set().union(*(layer.available_adapters for layer in layers))),
            devices={a: sorted(d) for a, d in devices.items()}, quantization_backend=None)

    # ------------------------------------------------------------ running

    def __call__(self, *args, **kwargs):
        return self.base_model.run(*args, **kwargs)

    forward = __call__

    def backward(self, *args, **kwargs):
        return self.base_model.run_backward(*args, **kwargs)

    def get_prompt(self, batch_size: int):
        """Prompt-learning methods: the virtual tokens (batch_size, P, D), or each layer's
        (key, value) prefixes (batch_size, heads, P, head_dim), as HF PEFT's get_prompt."""
        if not self.active_peft_config.is_prompt_learning:
            raise ValueError(f"get_prompt() is only for prompt-learning methods; this model's "
                             f"adapter is a {type(self.active_peft_config).__name__}")
        return self.base_model.get_prompt(batch_size)

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

    def get_gate_values(self, *args, **kwargs) -> dict:
        """The gates of a forward on this batch, for a method whose submodules are gated:
        its tuner's get_gate_values."""
        fn = getattr(type(self.base_model), "get_gate_values", None)
        if fn is None:
            raise ValueError(f"{type(self.base_model).__name__}'s adapters have no gates; "
                             f"get_gate_values() is for methods with gated submodules")
        return fn(self.base_model, *args, **kwargs)

    # ------------------------------------------------------------ files

    def adapter_state_dict(self, adapter_name: str) -> dict:
        """HF PEFT's saved keys (adapter name removed) -> float32 arrays."""
        if adapter_name not in self.peft_config:
            raise ValueError(f"adapter {adapter_name!r} not found; available: {list(self.peft_config)}")
        return self.base_model.adapter_state_dict(adapter_name)

    def save_pretrained(self, save_directory, selected_adapters=None):
        """Write each adapter in its method's layout (HF PEFT's: adapter_config.json and
        adapter_model.safetensors), "default" in save_directory, others in sub-folders."""
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
            self.base_model.write_adapter(out, name, config)

    @staticmethod
    def _read_adapter(directory):
        """(config, tensors) of the adapter saved in `directory`, in the layout its method
        writes (the tuner reads its files)."""
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"adapter folder {directory} does not exist")
        config = PeftConfig.from_pretrained(directory)
        weights, source = tuner_class(config).read_adapter_weights(directory, config)
        for key, value in weights.items():
            if np.asarray(value).dtype.kind != "f":
                raise CheckpointError(f"{source}: tensor {key!r} has dtype "
                                      f"{np.asarray(value).dtype}; adapter weights are float "
                                      f"parameters (float32, float16, bfloat16 or float64)")
        return config, weights

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
        if config is not None and getattr(config, "peft_type", None) != file_config.peft_type:
            raise ValueError(f"config is a {type(config).__name__} (peft_type "
                             f"{getattr(config.peft_type, 'value', config.peft_type)!r}), but the "
                             f"adapter in {model_id} is {file_config.peft_type.value!r} "
                             f"({type(file_config).__name__}): a file loads as its own method")
        config = copy.deepcopy(config or file_config)
        config.inference_mode = not is_trainable
        prepared = _prepare_config(config, model)
        tuner = tuner_class(prepared)
        tuner.check_weights(model, tuner.plan(model, prepared), weights)
        with model._changing("from_pretrained"):  # forwards see no half-loaded adapter
            peft_model = cls(model, config, adapter_name)
            peft_model.base_model.load_weights(adapter_name, weights)
        return peft_model

    @_model_change
    def load_adapter(self, model_id, adapter_name: str, is_trainable: bool = False):
        """Load another saved adapter under `adapter_name` (not activated)."""
        self._check_new_name(adapter_name)
        config, weights = self._read_adapter(model_id)
        self._check_config(config, source=str(model_id))
        config.inference_mode = not is_trainable
        prepared = _prepare_config(config, self.get_base_model(), self._task_type)
        plan = self.base_model.plan(self.get_base_model(), prepared)
        self.base_model.check_weights(self.get_base_model(), plan, weights)
        self.base_model.inject_adapter(adapter_name, plan)
        self.base_model.set_adapter(self.active_adapter)
        self.base_model.load_weights(adapter_name, weights)


PeftModelForSequenceClassification = PeftModel


def get_peft_model(model: EncoderModel, peft_config, adapter_name: str = "default") -> PeftModel:
    """Wrap `model` with a new adapter, as peft.get_peft_model."""
    return PeftModel(model, peft_config, adapter_name)
