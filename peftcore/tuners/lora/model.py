"""LoraModel: finds target linears by name, injects LoRA layers, switches, merges, unloads."""
from __future__ import annotations

import copy
import functools
import warnings
from dataclasses import dataclass

from ...models.modules import Linear, Module
from ...utils.random import generator
from ..modules_to_save import ModulesToSaveWrapper, check_saveable
from ..tuners_utils import check_target_module_exists, get_pattern_key, resolve_target_modules
from .layer import LoraLinear

_ADAPTER_INFIXES = (".lora_A", ".lora_B", ".lora_dropout", ".base_layer", ".modules_to_save",
                    ".original_module")


@dataclass
class LoraPlan:
    """What injecting a config changes: target linear names with (in, out, r, alpha), and
    the names of modules whose copies are saved with the adapter."""
    targets: dict
    modules_to_save: list
    config: object


def _candidate_modules(model: Module):
    """(name, module) of the model, skipping adapter internals."""
    for name, module in model.named_modules():
        if name and not any(infix in name for infix in _ADAPTER_INFIXES):
            yield name, module


def plan_lora(model: Module, config) -> LoraPlan:
    """Resolve targets of `config` on `model` without changing anything."""
    config = copy.deepcopy(config)
    if config.fan_in_fan_out:  # HF PEFT's warning and fix: it describes Conv1D weights
        warnings.warn("fan_in_fan_out is set to True but the target modules are Linear layers "
                      "(weights stored (out, in)). Setting fan_in_fan_out to False.", stacklevel=3)
        config.fan_in_fan_out = False
    config.target_modules = resolve_target_modules(config, model.config.model_type)
    modules = dict(_candidate_modules(model))
    save = []
    for wanted in config.modules_to_save or ():
        found = [n for n in modules if n == wanted or n.endswith("." + wanted)]
        save.extend(n for n in found if n not in save)
    for name in save:
        check_saveable(name, modules[name])
    targets = {}
    for name, module in modules.items():
        if name in save or not check_target_module_exists(config, name):
            continue
        if not isinstance(module, (Linear, LoraLinear)):
            raise ValueError(f"Target module {name} ({type(module).__name__}) is not supported: "
                             f"LoRA applies to Linear layers only")
        pattern_r = get_pattern_key(config.rank_pattern or {}, name)
        pattern_a = get_pattern_key(config.alpha_pattern or {}, name)
        r = (config.rank_pattern or {}).get(pattern_r, config.r)
        alpha = (config.alpha_pattern or {}).get(pattern_a, config.lora_alpha)
        targets[name] = (module.in_features, module.out_features, r, alpha)
    if not targets:
        linear_names = [n for n, m in modules.items() if isinstance(m, (Linear, LoraLinear))]
        raise ValueError(f"Target modules {config.target_modules} not found in the base model. "
                         f"Please check the target modules and try again. The model's linear "
                         f"modules are: {linear_names}")
    return LoraPlan(targets, save, config)


def model_change(method):
    """Run a model-changing method whole with respect to forwards and backwards on other
    threads: under the base model's lock (see EncoderModel._changing)."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self.model._changing(method.__name__):
            return method(self, *args, **kwargs)
    return locked


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


def wrapped_adapters(model: Module) -> list:
    """The adapters already injected into `model` (by a PeftModel that wraps it)."""
    names = []
    for _, m in model.named_modules():
        if isinstance(m, (LoraLinear, ModulesToSaveWrapper)):
            names.extend(a for a in m.adapter_names() if a not in names)
    return names


def _replace(root: Module, name: str, new: Module):
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name)
    parent._modules[child] = new


class LoraModel(Module):
    """Holds the base model (as child `model`) and its LoRA adapters."""

    prefix = "lora_"

    def __init__(self, model: Module, config, adapter_name: str):
        super().__init__()
        check_adapter_name(adapter_name)
        existing = wrapped_adapters(model)
        if existing:
            raise ValueError(f"this base model is already wrapped by a PeftModel (adapters "
                             f"{existing}); a second wrapper would change the first one's "
                             f"layers. Add adapters to that PeftModel with add_adapter() or "
                             f"load_adapter(), or call its unload() first")
        self._modules["model"] = model
        self.peft_config: dict = {}
        self.active_adapter = adapter_name
        self.disabled = False
        plan = plan_lora(model, config)  # may refuse the config: before anything changes
        with model._changing("get_peft_model"):
            for _, p in model.named_parameters():
                p.requires_grad = False
            self.inject_adapter(adapter_name, plan)
            self.set_adapter(adapter_name)

    # ------------------------------------------------------------ structure

    def lora_layers(self):
        return [(n, m) for n, m in self.model.named_modules() if isinstance(m, LoraLinear)]

    def wrappers(self):
        return [(n, m) for n, m in self.model.named_modules() if isinstance(m, ModulesToSaveWrapper)]

    @model_change
    def inject_adapter(self, adapter_name: str, plan: LoraPlan):
        """Add adapter `adapter_name` as planned. The plan was validated, so this succeeds."""
        engine = self.model._engine
        config = plan.config
        rng = generator()
        for name, (_, _, r, alpha) in plan.targets.items():
            module = self.model.get_submodule(name)
            if isinstance(module, Linear):
                module = LoraLinear(module, engine)
                module.disabled = self.disabled
                _replace(self.model, name, module)
            module.update_layer(adapter_name, r, alpha, config.lora_dropout,
                                config.init_lora_weights, config.use_rslora, rng)
        for name in plan.modules_to_save:
            module = self.model.get_submodule(name)
            if not isinstance(module, ModulesToSaveWrapper):
                module = ModulesToSaveWrapper(module, engine, name)
                module.disabled = self.disabled
                _replace(self.model, name, module)
            module.update(adapter_name)
        self.peft_config[adapter_name] = config

    @model_change
    def set_adapter(self, adapter_name: str):
        """Make `adapter_name` the one the engine runs and the one that trains. A merged
        model is unmerged first (with HF PEFT's warning)."""
        if any(layer.merged_adapters for _, layer in self.lora_layers()):
            warnings.warn("Adapter cannot be set when the model is merged. Unmerging the model first.",
                          stacklevel=3)
            self.unmerge_adapter()
        self.active_adapter = adapter_name
        for _, layer in self.lora_layers() + self.wrappers():
            layer.set_active(adapter_name if adapter_name in layer.adapter_names() else None)
        self._mark_trainable()

    def _adapter_params(self):
        """(adapter name, Parameter) of every LoRA factor and modules_to_save copy."""
        for _, layer in self.lora_layers():
            for adapter in layer.adapter_names():
                for p in layer.weights(adapter):
                    yield adapter, p
        for _, wrapper in self.wrappers():
            for adapter in wrapper.adapter_names():
                for _, p in wrapper.modules_to_save[adapter].named_parameters():
                    yield adapter, p

    def _mark_adapter_params(self):
        """Only the active adapter's factors and copies train (none in inference mode or
        while adapters are disabled, as HF PEFT)."""
        name = self.active_adapter
        trainable = not self.peft_config[name].inference_mode and not self.disabled
        for adapter, p in self._adapter_params():
            p.requires_grad = trainable and adapter == name

    def _mark_trainable(self):
        name = self.active_adapter
        config = self.peft_config[name]
        trainable = not config.inference_mode
        for pname, p in self.model.named_parameters():
            p.requires_grad = False
        self._mark_adapter_params()
        if trainable and config.bias == "lora_only":
            for _, layer in self.lora_layers():
                if name in layer.adapter_names():
                    layer.base_layer.bias.requires_grad = True
        if trainable and config.bias == "all":
            for pname, p in self.model.named_parameters():
                if pname.endswith("bias") and ".modules_to_save." not in pname \
                        and ".original_module." not in pname:
                    p.requires_grad = True

    @model_change
    def set_disabled(self, disabled: bool):
        """Run the bare base model (adapter weights frozen meanwhile, as HF PEFT) or not.
        Merged adapters are unmerged first: disabled means the base weights alone."""
        if disabled:
            self.unmerge_adapter()
        self.disabled = bool(disabled)
        for _, layer in self.lora_layers() + self.wrappers():
            layer.disabled = self.disabled
            layer.sync()
        self._mark_adapter_params()

    @model_change
    def delete_adapter(self, adapter_name: str):
        for _, layer in self.lora_layers() + self.wrappers():
            layer.delete_adapter(adapter_name)
        del self.peft_config[adapter_name]

    # ------------------------------------------------------------ merging

    @model_change
    def merge_adapter(self):
        for _, layer in self.lora_layers():
            if self.active_adapter in layer.adapter_names():
                layer.merge(self.active_adapter)

    @model_change
    def unmerge_adapter(self):
        for _, layer in self.lora_layers():
            layer.unmerge()

    @model_change
    def unload(self, merge: bool) -> Module:
        """Remove every LoRA layer (merging the active adapter first when asked) and every
        modules_to_save wrapper (keeping the active copy's values); return the bare model."""
        if merge:
            self.merge_adapter()
        for name, layer in self.lora_layers():
            layer.set_active(None)
            _replace(self.model, name, layer.base_layer)
        for name, wrapper in self.wrappers():
            _replace(self.model, name, wrapper.unwrap() if merge else wrapper.original_module)
            if not merge:
                wrapper.set_active(None)
        return self.model
