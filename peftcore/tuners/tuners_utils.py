"""The protocol every adapter method shares, and module-name matching with HF PEFT semantics.

A method (tuners/<method>/) supplies a config class, a layer class (a BaseTunerLayer) and a
tuner class (a BaseTuner) that says only what differs: how a target is planned, created and
updated, its parameter key infix and its merge math. Everything else lives here once:
finding targets by name, injecting, switching adapters, marking what trains, deleting,
merging, unloading and the adapter files' keys.
"""

from __future__ import annotations

import copy
import functools
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np

from ..models.checkpoint import read_torch_bin
from ..models.modules import Linear, Module
from ..utils.io import SAFETENSORS_WEIGHTS_NAME, read_safetensors, save_adapter_files
from ..utils.random import generator

# HF PEFT's default LoRA target modules per `config.model_type` (used when target_modules is None).
# A str value is a regex matched with re.fullmatch.
DEFAULT_TARGET_MODULES: dict[str, Union[list[str], str]] = {
    "t5": ["q", "v"],
    "mt5": ["q", "v"],
    "bart": ["q_proj", "v_proj"],
    "gpt2": ["c_attn"],
    "bloom": ["query_key_value"],
    "blip-2": ["q", "v", "q_proj", "v_proj"],
    "opt": ["q_proj", "v_proj"],
    "gptj": ["q_proj", "v_proj"],
    "gpt_neox": ["query_key_value"],
    "gpt_neo": ["q_proj", "v_proj"],
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "electra": ["query", "value"],
    "deberta-v2": ["query_proj", "value_proj"],
    "deberta": ["in_proj"],
    "layoutlm": ["query", "value"],
    "llama": ["q_proj", "v_proj"],
    "llama4": ["q_proj", "v_proj"],
    "chatglm": ["query_key_value"],
    "gpt_bigcode": ["c_attn"],
    "mpt": ["Wqkv"],
    "RefinedWebModel": ["query_key_value"],
    "RefinedWeb": ["query_key_value"],
    "falcon": ["query_key_value"],
    "btlm": ["c_proj", "c_attn"],
    "codegen": ["qkv_proj"],
    "mistral": ["q_proj", "v_proj"],
    "mixtral": ["q_proj", "v_proj"],
    "stablelm": ["q_proj", "v_proj"],
    "phi": ["q_proj", "v_proj", "fc1", "fc2"],
    "gemma": ["q_proj", "v_proj"],
    "gemma2": ["q_proj", "v_proj"],
    "gemma3_text": ["q_proj", "v_proj"],
    "gemma4": r".*language_model\..*\.(q_proj|v_proj)",
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
    "nemotron_h": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "rwkv": ["key", "value", "receptance", "output"],
    "rwkv7": ["r_proj", "k_proj", "v_proj", "o_proj", "key", "value"],
}

# What HF PEFT's task-specific PeftModel classes append to `modules_to_save`.
TASK_MODULES_TO_SAVE = {
    "SEQ_CLS": ["classifier", "score"],
    "TOKEN_CLS": ["classifier", "score"],
    "QUESTION_ANS": ["qa_outputs"],
}


def resolve_target_modules(config, model_type: Optional[str]):
    """Return `config.target_modules`, else HF's default for `model_type` (set, or regex str)."""
    if config.target_modules is not None:
        return config.target_modules
    default = DEFAULT_TARGET_MODULES.get(model_type)
    if default is None:
        raise ValueError(
            f"Please specify `target_modules` in `peft_config` (no default is known for model_type {model_type!r})"
        )
    return default if isinstance(default, str) else set(default)


def _matches_name_list(names: Iterable[str], key: str) -> bool:
    """HF list semantics: exact name, or `key` ends with '.' + name."""
    return any(key == name or key.endswith(f".{name}") for name in names)


def _layer_index(key: str, layers_pattern) -> Optional[int]:
    """Index of the first numbered layer segment in `key` (restricted to `layers_pattern` if given)."""
    if not layers_pattern:  # None, "" or [] means any "<name>.<digits>." segment
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", key)
    else:
        patterns = [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern
        match = None
        for pattern in patterns:
            match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", key)
            if match is not None:
                break
    return int(match.group("idx")) if match else None


def check_target_module_exists(config, key: str) -> bool:
    """Whether the module named `key` gets an adapter under `config` (HF PEFT semantics).

    Order: `exclude_modules` and `modules_to_save` veto; a str `target_modules` is `re.fullmatch`ed;
    a collection matches exactly or by '.'-suffix, then a suffix match is filtered by
    `layers_to_transform` / `layers_pattern` (an exact full-key match is not filtered, as in HF).
    """
    exclude = getattr(config, "exclude_modules", None)
    if exclude:
        if isinstance(exclude, str):
            if re.fullmatch(exclude, key):
                return False
        elif _matches_name_list(exclude, key):
            return False

    # Module names in modules_to_save are used as regex fragments, as HF does.
    for name in getattr(config, "modules_to_save", None) or ():
        if re.match(rf"(^|.*\.){name}($|\..*)", key):
            return False

    target_modules = config.target_modules
    if target_modules is None:
        if getattr(config, "target_parameters", None) is not None:
            return False
        raise ValueError("`target_modules` is None; resolve it first (see resolve_target_modules)")
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, key) is not None
    if key in target_modules:
        return True
    if not any(key.endswith(f".{name}") for name in target_modules):
        return False

    layer_indexes = getattr(config, "layers_to_transform", None)
    if layer_indexes is None or (isinstance(layer_indexes, list) and not layer_indexes):
        return True
    index = _layer_index(key, getattr(config, "layers_pattern", None))
    if index is None:
        return False
    return index == layer_indexes if isinstance(layer_indexes, int) else index in layer_indexes


def get_pattern_key(pattern_keys: Iterable[str], key: str) -> str:
    """First pattern in `pattern_keys` matching `key` (regex `(.*\\.)?(<pattern>)$` from the start), else `key`.

    Used as `config.rank_pattern.get(get_pattern_key(config.rank_pattern, key), config.r)`.
    """
    for pattern in pattern_keys:
        if re.match(rf"(.*\.)?({pattern})$", key):
            return pattern
    return key


def format_trainable_parameters(trainable: int, total: int) -> str:
    """The exact line HF PEFT's `print_trainable_parameters()` prints."""
    trainable, total = int(trainable), int(total)
    if total <= 0:
        raise ValueError(f"`total` must be a positive parameter count, got {total}")
    return f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"


# ------------------------------------------------------------------ small shared pieces

# every saved adapter key starts with this (HF PEFT's PeftModel -> tuner -> model path)
KEY_PREFIX = "base_model.model."


def new_parameter(shape, values=None):
    """A fresh engine tensor wrapped as a Parameter, optionally filled with values."""
    from .. import _C
    from ..models.parameter import Parameter

    p = Parameter(_C.Tensor.zeros(tuple(int(s) for s in shape)))
    if values is not None:
        p[...] = values
    return p


def check_adapter_name(adapter_name) -> str:
    """An adapter name is a module key and a folder name under save_pretrained's folder:
    a non-empty str without path separators, dots or NUL (torch's ModuleDict refuses dots)."""
    if not isinstance(adapter_name, str) or not adapter_name:
        raise ValueError(f"adapter_name must be a non-empty str, got {adapter_name!r}")
    bad = [c for c in ("/", "\\", ".", "\0", ":") if c in adapter_name]
    if bad or adapter_name.strip() != adapter_name:
        raise ValueError(f"adapter_name {adapter_name!r} cannot be used: it names a sub-folder "
                         f"of save_pretrained's folder and a module key, so it must not contain "
                         f"'/', '\\', '.', ':', NUL or surrounding spaces")
    return adapter_name


def model_change(method):
    """Run a model-changing method whole with respect to forwards and backwards on other
    threads: under the base model's lock (see EncoderModel._changing)."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self.model._changing(method.__name__):
            return method(self, *args, **kwargs)
    return locked


def replace_module(root: Module, name: str, new: Module):
    parent_name, _, child = name.rpartition(".")
    root.get_submodule(parent_name)._modules[child] = new


def set_linear_adapters(engine, index: int, entries: list):
    """Give the engine the adapters of linear `index`: a list of
    (method, site, tensors, scale, dropout), applied in order; [] for none."""
    engine.set_adapters(index, entries)


def set_block_adapters(engine, layer: int, block: str, entries: list):
    """Give the engine the adapters of encoder layer `layer`'s output block `block`
    ("attention" or "ffn"): a list of (method, tensors, options); [] for none."""
    if not hasattr(engine, "set_block_adapters"):
        if not entries:   # nothing can have been set there: nothing to clear
            return
        raise AttributeError("this build of peftcore's engine has no block adapter sites "
                             "(Encoder.set_block_adapters); rebuild peftcore from a source "
                             "tree that has them")
    engine.set_block_adapters(layer, block, entries)


def all_or_irregular(flags):
    """True if all flags are True, False if all are False, else "irregular" (as HF PEFT)."""
    flags = list(flags)
    if all(f is True for f in flags):
        return True
    if all(f is False for f in flags):
        return False
    return "irregular"


# ------------------------------------------------------------------ the layer protocol

class BaseTunerLayer(Module):
    """Per-adapter bookkeeping of one adapted module: which adapters it holds, which is
    active, whether adapters are disabled, which are merged into the base weights.

    A subclass names the containers holding its per-adapter parts (`adapter_layer_names`,
    keyed by adapter) and the per-adapter dicts of settings (`adapter_attr_names`), and
    implements `engine_entries` (what the engine runs for an active adapter), `state` /
    `load_state` / `expected_state` (the saved tensors) and, if it can merge,
    `merge_one` / `unmerge_one`."""

    adapter_layer_names: tuple = ()
    adapter_attr_names: tuple = ()
    module_type = "BaseTunerLayer"   # what get_layer_status reports

    def __init__(self, engine=None, index=None):
        super().__init__()
        self._engine = engine
        self.index = index
        self.active_adapter: str | None = None
        self.disabled = False
        self.merged_adapters: list[str] = []

    @property
    def base_layer(self):
        return self._modules["base_layer"]

    def adapter_names(self) -> list:
        return list(self._modules[self.adapter_layer_names[0]]._modules)

    def adapter_parameters(self, adapter: str) -> list:
        """The Parameters adapter `adapter` trains in this layer."""
        return [p for name in self.adapter_layer_names
                if adapter in self._modules[name]._modules
                for _, p in self._modules[name]._modules[adapter].named_parameters()]

    def delete_adapter(self, adapter: str):
        for name in self.adapter_layer_names:
            self._modules[name]._modules.pop(adapter, None)
        for name in self.adapter_attr_names:
            getattr(self, name).pop(adapter, None)
        if self.active_adapter == adapter:
            self.active_adapter = None
        self.sync()

    def set_active(self, adapter: str | None):
        self.active_adapter = adapter if adapter in self.adapter_names() else None
        self.sync()

    def set_disabled(self, disabled: bool):
        self.disabled = bool(disabled)
        self.sync()

    def running_adapter(self) -> str | None:
        """The adapter the engine should apply on top of the base weights, if any."""
        a = self.active_adapter
        if a is None or self.disabled or a in self.merged_adapters or a not in self.adapter_names():
            return None
        return a

    def sync(self):
        """Tell the engine what to run on this linear: the running adapter, or nothing."""
        a = self.running_adapter()
        set_linear_adapters(self._engine, self.index, [] if a is None else self.engine_entries(a))

    def engine_entries(self, adapter: str) -> list:
        raise NotImplementedError

    # merging: W (and b) changed in place, remembered in merged_adapters
    def merge_one(self, adapter: str):
        raise NotImplementedError(f"{type(self).__name__} cannot merge")

    def unmerge_one(self, adapter: str):
        raise NotImplementedError(f"{type(self).__name__} cannot unmerge")

    def merge(self, adapter: str):
        if adapter in self.merged_adapters or adapter not in self.adapter_names():
            return
        self.merge_one(adapter)
        self.merged_adapters.append(adapter)
        self.sync()

    def unmerge(self):
        while self.merged_adapters:
            self.unmerge_one(self.merged_adapters.pop())
        self.sync()

    def unload(self, merge: bool) -> Module | None:
        """Stop adapting; the module that takes this layer's place in the model (None:
        the layer is not in the model's tree)."""
        self.active_adapter = None
        self.sync()
        return self.base_layer

    # files: tensors keyed by their name after `<layer name>.` (adapter name removed)
    def state(self, adapter: str) -> dict:
        raise NotImplementedError

    def load_state(self, adapter: str, tensors: dict):
        raise NotImplementedError

    def requires_grad_flags(self) -> dict:
        return {a: [p.requires_grad for p in self.adapter_parameters(a)]
                for a in self.adapter_names()}


class ModulePerAdapter(BaseTunerLayer):
    """A tuner layer holding one Module per adapter name: among its own children, or in its
    child container `_container` when that is set."""

    _container = ""

    def _per_adapter(self) -> dict:
        return self._modules[self._container]._modules if self._container else self._modules

    def adapter_names(self) -> list:
        return list(self._per_adapter())

    def adapter_parameters(self, adapter: str) -> list:
        module = self._per_adapter().get(adapter)
        return [] if module is None else [p for _, p in module.named_parameters()]

    def delete_adapter(self, adapter: str):
        self._per_adapter().pop(adapter, None)
        super().delete_adapter(adapter)


class ParameterDict(Module):
    """HF's nn.ParameterDict of per-adapter vectors: `<name>.<adapter>` is the Parameter."""

    display_name = "ParameterDict"

    def __repr__(self):
        items = "".join(f"  ({a}): Parameter containing: [torch.FloatTensor of size "
                        f"{'x'.join(str(s) for s in p.shape)}]" for a, p in self._parameters.items())
        return f"ParameterDict({items})" if len(self._parameters) == 1 else \
            "ParameterDict(\n" + "\n".join(
                f"    ({a}): Parameter containing: [torch.FloatTensor of size "
                f"{'x'.join(str(s) for s in p.shape)}]" for a, p in self._parameters.items()) + "\n)"


# the wrapper shares the layer protocol above, so it is imported once that exists
from .modules_to_save import ModulesToSaveWrapper, check_saveable  # noqa: E402


# ------------------------------------------------------------------ the tuner

@dataclass
class Plan:
    """What injecting a config would change, found without changing anything: the target
    modules with what the method needs to know of each (`targets`, name -> info), the
    modules whose copies are saved with the adapter, and the resolved config."""
    targets: dict
    modules_to_save: list
    config: object


def candidate_modules(model: Module):
    """(name, module) of every module a config may name: the model's own, and adapter
    layers and wrappers as a whole, never their insides (base_layer, copies, ...)."""
    def walk(module, prefix):
        for child_name, child in module._modules.items():
            name = f"{prefix}.{child_name}" if prefix else child_name
            yield name, child
            if not isinstance(child, BaseTunerLayer):
                yield from walk(child, name)
    yield from walk(model, "")


class BaseTuner(Module):
    """Holds the base model (as child `model`), the adapters' configs (`peft_config`), the
    active adapter and whether adapters are disabled; a method's tuner subclasses it.

    A subclass sets `layer_cls` and `prefix` (the infix of its parameter names, e.g.
    "lora_") and implements `target_info` (what a target needs; refuses unsupported
    modules) and `create_layer` / `update_layer`; optionally `prepare_config`."""

    layer_cls: type = BaseTunerLayer
    prefix: str = ""
    # why this method's adapters cannot be folded into the base weights (None: they can)
    merge_refusal: str | None = None

    def __init__(self, model: Module, config, adapter_name: str):
        super().__init__()
        check_adapter_name(adapter_name)
        existing = wrapped_adapters(model)
        if existing:
            raise ValueError(f"this base model is already wrapped by a PeftModel (adapters "
                             f"{existing}); a second wrapper would change the first one's "
                             f"layers. Add adapters to that PeftModel with add_adapter() or "
                             f"load_adapter(), or call its unload() first")
        plan = self.plan(model, config)  # may refuse the config: before anything changes
        self._modules["model"] = model
        self.peft_config: dict = {}
        self.active_adapter = adapter_name
        self.disabled = False
        flags = [(p, p.requires_grad) for _, p in model.named_parameters()]
        with model._changing("get_peft_model"):
            model.adapter_owner = self
            try:
                for p, _ in flags:
                    p.requires_grad = False
                self.inject_adapter(adapter_name, plan)
                self.set_adapter(adapter_name)
            except BaseException:  # the engine refused: leave the model as it was
                self.unload(merge=False)
                for p, flag in flags:
                    p.requires_grad = flag
                raise

    # ------------------------------------------------------------ planning

    @classmethod
    def prepare_config(cls, config, model: Module):
        """Resolve what the config leaves to the model (e.g. default target modules) on a
        copy of it; the default: `target_modules` from DEFAULT_TARGET_MODULES."""
        config.target_modules = resolve_target_modules(config, model.config.model_type)
        return config

    @classmethod
    def target_info(cls, name: str, module: Module, config):
        """What injecting into target `name` needs, or a ValueError if it cannot be adapted."""
        raise NotImplementedError

    @classmethod
    def is_target(cls, config, name: str, module: Module) -> bool:
        return check_target_module_exists(config, name)

    @classmethod
    def plan(cls, model: Module, config) -> Plan:
        """Resolve `config` on `model` without changing either."""
        config = cls.prepare_config(copy.deepcopy(config), model)
        modules = dict(candidate_modules(model))
        save = []
        for wanted in config.modules_to_save or ():
            found = [n for n in modules if n == wanted or n.endswith("." + wanted)]
            save.extend(n for n in found if n not in save)
        for name in save:
            check_saveable(name, modules[name])
        targets = {}
        for name, module in modules.items():
            if name in save or isinstance(module, ModulesToSaveWrapper):
                continue
            if cls.is_target(config, name, module):
                targets[name] = cls.target_info(name, module, config)
        if not targets:
            cls.no_targets(config, modules)
        return Plan(targets, save, config)

    @classmethod
    def no_targets(cls, config, modules: dict):
        linear_names = [n for n, m in modules.items() if isinstance(m, (Linear, cls.layer_cls))]
        raise ValueError(f"Target modules {config.target_modules} not found in the base model. "
                         f"Please check the target modules and try again. The model's linear "
                         f"modules are: {linear_names}")

    # ------------------------------------------------------------ structure

    def tuner_layers(self) -> list:
        """(name, layer) of this method's layers, in model order."""
        return [(n, m) for n, m in self.model.named_modules() if isinstance(m, self.layer_cls)]

    def wrappers(self) -> list:
        return [(n, m) for n, m in self.model.named_modules() if isinstance(m, ModulesToSaveWrapper)]

    def all_layers(self) -> list:
        """(name, layer) of every object keeping the layer protocol, in model order."""
        return [(n, m) for n, m in self.model.named_modules() if isinstance(m, BaseTunerLayer)]

    def create_layer(self, name: str, module: Module, info, config) -> BaseTunerLayer:
        return self.layer_cls(module, self.model._engine)

    def layer_for(self, name: str, info, config) -> BaseTunerLayer:
        """The layer at target `name`: the one there, or a new one put in the module's place."""
        module = self.model.get_submodule(name)
        if isinstance(module, self.layer_cls):
            return module
        layer = self.create_layer(name, module, info, config)
        replace_module(self.model, name, layer)
        return layer

    def update_layer(self, layer: BaseTunerLayer, adapter_name: str, info, config, rng):
        raise NotImplementedError

    def check_new_config(self, config):
        """Refuse a config that cannot join the adapters already here (before any change)."""

    @model_change
    def inject_adapter(self, adapter_name: str, plan: Plan):
        """Add adapter `adapter_name` as planned. The plan was validated, so this succeeds."""
        rng = generator()
        for name, info in plan.targets.items():
            layer = self.layer_for(name, info, plan.config)
            layer.disabled = self.disabled
            self.update_layer(layer, adapter_name, info, plan.config, rng)
        for name in plan.modules_to_save:
            module = self.model.get_submodule(name)
            if not isinstance(module, ModulesToSaveWrapper):
                module = ModulesToSaveWrapper(module, self.model._engine, name)
                module.disabled = self.disabled
                replace_module(self.model, name, module)
            module.update(adapter_name)
        self.peft_config[adapter_name] = plan.config

    # ------------------------------------------------------------ switching

    @model_change
    def set_adapter(self, adapter_name: str):
        """Make `adapter_name` the one the engine runs and the one that trains. A merged
        model is unmerged first (with HF PEFT's warning)."""
        if any(layer.merged_adapters for _, layer in self.all_layers()):
            warnings.warn("Adapter cannot be set when the model is merged. Unmerging the model first.",
                          stacklevel=3)
            self.unmerge_adapter()
        self.active_adapter = adapter_name
        for _, layer in self.all_layers():
            layer.set_active(adapter_name)
        self.mark_trainable()

    def mark_adapter_parameters(self):
        """Only the active adapter's parameters train (none in inference mode or while
        adapters are disabled, as HF PEFT)."""
        name = self.active_adapter
        trainable = not self.peft_config[name].inference_mode and not self.disabled
        for _, layer in self.all_layers():
            for adapter in layer.adapter_names():
                for p in layer.adapter_parameters(adapter):
                    p.requires_grad = trainable and adapter == name

    def mark_trainable(self):
        for _, p in self.model.named_parameters():
            p.requires_grad = False
        self.mark_adapter_parameters()

    @model_change
    def set_disabled(self, disabled: bool):
        """Run the bare base model (adapter weights frozen meanwhile, as HF PEFT) or not.
        Merged adapters are unmerged first: disabled means the base weights alone."""
        if disabled:
            self.unmerge_adapter()
        self.disabled = bool(disabled)
        for _, layer in self.all_layers():
            layer.set_disabled(self.disabled)
        self.mark_adapter_parameters()

    @model_change
    def delete_adapter(self, adapter_name: str):
        for _, layer in self.all_layers():
            layer.delete_adapter(adapter_name)
        del self.peft_config[adapter_name]

    # ------------------------------------------------------------ running

    def run(self, *args, **kwargs):
        """The forward a PeftModel call runs: the base model's (a method that changes the
        inputs, as prompt learning does, overrides it)."""
        return self.model(*args, **kwargs)

    def run_backward(self, *args, **kwargs):
        """The backward a PeftModel's backward() runs."""
        return self.model.backward(*args, **kwargs)

    # ------------------------------------------------------------ merging

    def check_mergeable(self):
        """Refuse, before anything changes, to merge adapters of a method that cannot."""
        if self.merge_refusal is not None:
            raise ValueError(f"{type(self).__name__} cannot merge: {self.merge_refusal}")

    @model_change
    def merge_adapter(self):
        self.check_mergeable()
        for _, layer in self.tuner_layers():
            layer.merge(self.active_adapter)

    @model_change
    def unmerge_adapter(self):
        for _, layer in self.tuner_layers():
            if layer.merged_adapters:
                layer.unmerge()

    @model_change
    def unload(self, merge: bool) -> Module:
        """Remove every adapter layer (merging the active adapter first when asked) and
        every modules_to_save wrapper (keeping the active copy's values when merging);
        return the bare model."""
        if merge:
            self.check_mergeable()
            self.merge_adapter()
        for name, layer in self.all_layers():
            module = layer.unload(merge)
            if module is not None:
                replace_module(self.model, name, module)
        self.model.adapter_owner = None
        return self.model

    # ------------------------------------------------------------ files

    @classmethod
    def read_adapter_weights(cls, directory: Path, config) -> tuple:
        """(tensors keyed as adapter_state_dict keys them, the file read) of the adapter
        saved in `directory` with `config`; HF PEFT's layout: adapter_model.safetensors, or
        adapter_model.bin read by the restricted unpickler."""
        safe, legacy = directory / SAFETENSORS_WEIGHTS_NAME, directory / "adapter_model.bin"
        if safe.is_file():
            return read_safetensors(safe), safe
        if legacy.is_file():
            return read_torch_bin(legacy), legacy
        raise FileNotFoundError(f"no {SAFETENSORS_WEIGHTS_NAME} (or adapter_model.bin) in {directory}")

    def write_adapter(self, directory: Path, adapter_name: str, config):
        """Save adapter `adapter_name` (its `config` in inference mode) into `directory`:
        HF PEFT's adapter_config.json and adapter_model.safetensors."""
        save_adapter_files(directory, config.to_dict(), self.adapter_state_dict(adapter_name))

    @classmethod
    def expected_tensors(cls, model: Module, plan: Plan):
        """The saved tensors a file for `plan` may hold: ({key: shape}, [(regex, shape)] of
        keys matched by pattern, [keys a file must hold])."""
        expected, required = {}, []
        for name, info in plan.targets.items():
            for suffix, shape in cls.layer_cls.expected_state(info).items():
                expected[f"{KEY_PREFIX}{name}.{suffix}"] = shape
                required.append(f"{KEY_PREFIX}{name}.{suffix}")
        for name in plan.modules_to_save:
            module = model.get_submodule(name)
            if isinstance(module, ModulesToSaveWrapper):
                module = module.original_module
            for pname, p in module.named_parameters():
                expected[f"{KEY_PREFIX}{name}.{pname}"] = p.shape
        return expected, [], required

    @classmethod
    def check_weights(cls, model: Module, plan: Plan, weights: dict):
        """Check every saved tensor against the planned adapter (names and shapes) and
        return silently, or raise naming the first tensor that does not fit."""
        expected, aliases, required = cls.expected_tensors(model, plan)
        for key, value in weights.items():
            shape = expected.get(key)
            if shape is None:
                shape = next((s for pattern, s in aliases if pattern.match(key)), None)
            if shape is None:
                raise ValueError(f"adapter tensor {key!r} does not match any module of the base "
                                 f"model for this {type(plan.config).__name__}")
            if tuple(np.shape(value)) != tuple(shape):
                raise ValueError(f"adapter tensor {key!r} has shape {tuple(np.shape(value))}, the "
                                 f"base model needs {tuple(shape)}")
        missing = [k for k in required if k not in weights]
        if missing:
            raise ValueError(f"adapter file lacks tensors: {missing[:5]}{' ...' if len(missing) > 5 else ''}")

    def adapter_state_dict(self, adapter_name: str) -> dict:
        """HF PEFT's saved keys (adapter name removed) -> float32 arrays."""
        state = {}
        for name, layer in self.tuner_layers():
            if adapter_name in layer.adapter_names():
                for suffix, value in layer.state(adapter_name).items():
                    state[f"{KEY_PREFIX}{name}.{suffix}"] = np.array(value)
        for name, wrapper in self.wrappers():
            if adapter_name in wrapper.adapter_names():
                for pname, p in wrapper.modules_to_save[adapter_name].named_parameters():
                    state[f"{KEY_PREFIX}{name}.{pname}"] = np.array(p)
        return state

    def load_weights(self, adapter_name: str, weights: dict):
        """Copy checked tensors (see check_weights) into the injected adapter."""
        for name, layer in self.tuner_layers():
            if adapter_name in layer.adapter_names():
                head = f"{KEY_PREFIX}{name}."
                layer.load_state(adapter_name, {k[len(head):]: v for k, v in weights.items()
                                                if k.startswith(head)})
        for name, wrapper in self.wrappers():
            if adapter_name in wrapper.adapter_names():
                for pname, p in wrapper.modules_to_save[adapter_name].named_parameters():
                    for key in (f"{KEY_PREFIX}{name}.{pname}",
                                f"{KEY_PREFIX}{name}.modules_to_save.{pname}"):
                        if key in weights:
                            p[...] = weights[key]
                            break


def wrapped_adapters(model: Module) -> list:
    """The adapters a tuner has put into `model` (none if no PeftModel wraps it)."""
    owner = getattr(model, "adapter_owner", None)
    return list(owner.peft_config) if owner is not None else []
