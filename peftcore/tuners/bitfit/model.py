"""BitFitModel: an adapter is a set of bias values.

Biases are parameters of the base model, shared by every adapter, so the model's bias
tensors hold the values of the adapter that runs (the engine reads them there, and they
are what trains) and each BitFitBias keeps the others: every adapter's values, and the
original ones. Switching adapters saves the running adapter's values and writes the next
one's; disabling or unloading writes the originals back (merge_and_unload keeps the
active adapter's).
"""
from __future__ import annotations

import copy

import numpy as np

from ..tuners_utils import BaseTuner, BaseTunerLayer, check_target_module_exists


class BitFitBias(BaseTunerLayer):
    """The layer protocol over one module's bias. Not part of the module tree: the module
    keeps its own names (`<name>.bias`)."""

    module_type = "bitfit.Bias"

    def __init__(self, module):
        super().__init__()
        self.target = module
        self.values: dict = {}   # adapter -> float32 copy, stale while that adapter runs
        self.original = np.array(module.bias, copy=True)
        self.live: str | None = None   # whose values are in the bias now (None: original)

    @property
    def bias(self):
        return self.target.bias

    def add(self, adapter: str):
        """A new adapter starts from the original values."""
        self.values[adapter] = self.original.copy()

    def adapter_names(self) -> list:
        return list(self.values)

    def adapter_parameters(self, adapter: str) -> list:
        return [self.bias] if adapter == self.live else []

    def requires_grad_flags(self) -> dict:
        return {a: [a == self.live and self.bias.requires_grad] for a in self.values}

    def delete_adapter(self, adapter: str):
        self.values.pop(adapter, None)
        super().delete_adapter(adapter)

    def sync(self):
        """Put the running adapter's values (or the originals) into the bias."""
        wanted = self.running_adapter()
        if wanted == self.live:
            return
        if self.live in self.values:
            self.values[self.live] = np.array(self.bias, copy=True)
        self.bias[...] = self.original if wanted is None else self.values[wanted]
        self.bias.grad = None  # a gradient of one adapter's values is no step for another's
        self.bias.requires_grad = False  # until the tuner marks the running adapter's
        self.live = wanted

    def merge(self, adapter: str):
        """Nothing to fold: the running adapter's values are the bias already."""

    def unmerge(self):
        pass

    def unload(self, merge: bool):
        if not merge:
            self.active_adapter = None
            self.sync()
        return None  # the module stays where it is

    @staticmethod
    def expected_state(info) -> dict:
        return {"bias": info}

    def state(self, adapter: str) -> dict:
        return {"bias": self.bias if adapter == self.live else self.values[adapter]}

    def load_state(self, adapter: str, tensors: dict):
        target = self.bias if adapter == self.live else self.values[adapter]
        target[...] = tensors["bias"]


class BitFitModel(BaseTuner):
    """Holds the base model (as child `model`) and its BitFit adapters."""

    prefix = "bias"
    layer_cls = BitFitBias

    def __init__(self, model, config, adapter_name: str):
        self._layers: dict = {}   # module name -> BitFitBias
        super().__init__(model, config, adapter_name)

    @classmethod
    def prepare_config(cls, config, model):
        return config  # target_modules None means every bias

    @classmethod
    def is_target(cls, config, name, module):
        if config.target_modules is None:
            every = copy.copy(config)
            every.target_modules = ".*"  # still vetoed by exclude_modules and modules_to_save
            return "bias" in module._parameters and check_target_module_exists(every, name)
        return check_target_module_exists(config, name)

    @classmethod
    def target_info(cls, name, module, config):
        """The bias's shape; a target without a bias is refused."""
        bias = module._parameters.get("bias")
        if bias is None:
            raise ValueError(f"BitFit target {name} ({type(module).__name__}, matched by "
                             f"target_modules={config.target_modules!r}) has no bias")
        return tuple(bias.shape)

    @classmethod
    def no_targets(cls, config, modules):
        with_bias = [n for n, m in modules.items() if "bias" in m._parameters]
        raise ValueError(f"Target modules {config.target_modules!r} not found in the base model. "
                         f"Please check the target modules and try again. The model's modules "
                         f"with a bias are: {with_bias}")

    def layer_for(self, name, info, config):
        if name not in self._layers:
            self._layers[name] = BitFitBias(self.model.get_submodule(name))
        return self._layers[name]

    def update_layer(self, layer, adapter_name, info, config, rng):
        layer.add(adapter_name)

    def tuner_layers(self) -> list:
        return [(n, layer) for n, layer in self.all_layers() if isinstance(layer, BitFitBias)]

    def all_layers(self) -> list:
        layers = []
        for name, module in self.model.named_modules():
            if name in self._layers:
                layers.append((name, self._layers[name]))
            elif isinstance(module, BaseTunerLayer):
                layers.append((name, module))
        return layers

    def unload(self, merge: bool):
        model = super().unload(merge)
        self._layers.clear()
        return model
