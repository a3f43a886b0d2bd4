"""modules_to_save: a trainable per-adapter copy of a module (e.g. the classification head).

As HF PEFT's ModulesToSaveWrapper: `<name>.original_module.*` keeps the frozen base weights,
`<name>.modules_to_save.<adapter>.*` holds each adapter's copy. The engine is pointed at the
active adapter's copy (or at the original when adapters are disabled).
"""
from __future__ import annotations

import numpy as np

from ..models.modules import Linear, Module, named_container
from .tuners_utils import BaseTunerLayer, new_parameter


def check_saveable(name: str, module: Module):
    """modules_to_save copies linear layers, alone or in containers holding nothing else."""
    if isinstance(module, ModulesToSaveWrapper):
        return
    other = [(n, m) for n, m in module.named_modules()
             if m._parameters and not isinstance(m, Linear)]
    if other or not _linears(module):
        what = (f"{name}.{other[0][0]}".rstrip(".") + f" is a {type(other[0][1]).__name__}"
                if other else f"{name} holds no linear layer")
        raise ValueError(f"modules_to_save supports linear layers and containers of them: {what}")


def _clone(module: Module) -> Module:
    """A copy of a module tree of Linears with new engine tensors holding the same values."""
    if isinstance(module, Linear):
        copy = Linear(module.in_features, module.out_features, module.index)
    else:
        copy = Module()
        copy.display_name = module.display_name
    for name, p in module._parameters.items():
        copy._parameters[name] = new_parameter(p.shape, np.asarray(p))
    for name, child in module._modules.items():
        copy._modules[name] = _clone(child)
    return copy


def _linears(module: Module):
    return [m for _, m in module.named_modules() if isinstance(m, Linear)]


class ModulesToSaveWrapper(BaseTunerLayer):
    """The layer protocol over per-adapter copies of a module; the engine runs the active
    adapter's copy in place of the original (the original when adapters are disabled)."""

    adapter_layer_names = ("modules_to_save",)
    module_type = "ModulesToSaveWrapper"

    def __init__(self, original: Module, engine, name: str = "module"):
        super().__init__(engine)
        check_saveable(name, original)
        self._modules["original_module"] = original
        self._modules["modules_to_save"] = named_container("ModuleDict")

    def update(self, adapter: str):
        self.modules_to_save._modules[adapter] = _clone(self.original_module)

    def current(self) -> Module:
        a = self.running_adapter()
        return self.original_module if a is None else self.modules_to_save[a]

    def sync(self):
        for original, live in zip(_linears(self.original_module), _linears(self.current())):
            self._engine.set_linear_params(original.index, live.weight.tensor, live.bias.tensor)

    def unload(self, merge: bool) -> Module:
        """With `merge`, make the active copy's values the module's own; then point the
        engine back at the original's tensors."""
        if merge:
            live = self.current()
            for original, copy in zip(_linears(self.original_module), _linears(live)):
                original.weight[...] = copy.weight
                original.bias[...] = copy.bias
        self.active_adapter = None
        self.sync()
        return self.original_module
