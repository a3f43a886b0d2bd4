"""A light module tree with transformers' dotted names over the engine's parameters."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np


class Module:
    """A named node; leaves hold Parameters. Children are kept in insertion order."""

    #: what repr calls this module: transformers' or HF PEFT's class name where the module
    #: stands for one of theirs (set per instance), else the Python class's name
    display_name: str | None = None

    def __init__(self):
        self._modules: "OrderedDict[str, Module]" = OrderedDict()
        self._parameters: "OrderedDict[str, object]" = OrderedDict()

    def __getattr__(self, name):
        modules = self.__dict__.get("_modules", {})
        if name in modules:
            return modules[name]
        params = self.__dict__.get("_parameters", {})
        if name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def to(self, *args, **kwargs):
        """torch's Module.to for the one place and type peftcore has: "cpu" (or a device
        whose str() is "cpu") and float32 are accepted and change nothing; anything else is
        refused, naming it. Returns the module."""
        for value in (*args, *kwargs.values()):
            if value is None or isinstance(value, bool):
                continue  # non_blocking=..., copy=...
            text = str(value)
            if text in ("cpu", "float32", "torch.float32") or text.startswith("cpu:"):
                continue
            try:
                if np.dtype(value) == np.float32:
                    continue
            except TypeError:
                pass
            raise ValueError(f"{type(self).__name__}.to({value!r}): peftcore runs on the CPU "
                             f"in float32 only")
        return self

    def cpu(self):
        return self

    def __getitem__(self, index):
        return self._modules[str(index)]

    def add_module(self, name: str, module: "Module"):
        self._modules[name] = module

    def named_children(self):
        return iter(self._modules.items())

    def named_modules(self, prefix: str = ""):
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        return (m for _, m in self.named_modules())

    def named_parameters(self, prefix: str = ""):
        for name, module in self.named_modules(prefix):
            for pname, p in module._parameters.items():
                yield (f"{name}.{pname}" if name else pname), p

    def parameters(self):
        return (p for _, p in self.named_parameters())

    def zero_grad(self, set_to_none: bool = False):
        """Zero every parameter's gradient (or drop the buffers with set_to_none)."""
        for _, p in self.named_parameters():
            if set_to_none:
                p.grad = None
            else:
                p.tensor.zero_grad()

    def get_submodule(self, target: str) -> "Module":
        module = self
        for part in target.split(".") if target else []:
            if part not in module._modules:
                raise AttributeError(f"no submodule {target!r}")
            module = module._modules[part]
        return module

    def get_parameter(self, target: str):
        """The parameter at a dotted name, e.g. "bert.pooler.dense.weight"."""
        module_path, _, name = target.rpartition(".")
        module = self.get_submodule(module_path)
        if name not in module._parameters:
            raise AttributeError(f"no parameter {target!r}")
        return module._parameters[name]

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        """torch's layout: ``Name(extra)`` for a leaf, else the extra line and then one
        ``(child): ...`` per child, indented, with the closing parenthesis on its own line."""
        name = self.display_name or type(self).__name__
        extra = self.extra_repr()
        children = [f"({child_name}): {child!r}" for child_name, child in self._modules.items()]
        if not children:
            return f"{name}({extra})"
        body = "\n".join(([extra] if extra else []) + children).replace("\n", "\n  ")
        return f"{name}(\n  {body}\n)"


class ModuleList(Module):
    """Children named 0, 1, …; repr shows a run of equal children once, as torch does:
    ``(0-5): 6 x BertLayer(...)``."""

    def __repr__(self):
        runs = []  # [first index, last index, repr]
        for index, child in enumerate(self._modules.values()):
            text = repr(child)
            if runs and runs[-1][2] == text:
                runs[-1][1] = index
            else:
                runs.append([index, index, text])
        if not runs:
            return "ModuleList()"
        entries = [f"({first}): {text}" if first == last else
                   f"({first}-{last}): {last - first + 1} x {text}"
                   for first, last, text in runs]
        return "ModuleList(\n  " + "\n".join(entries).replace("\n", "\n  ") + "\n)"


def named_container(display_name: str) -> Module:
    """An empty container module that repr shows as `display_name`."""
    module = Module()
    module.display_name = display_name
    return module


class Linear(Module):
    """y = x·Wᵀ + b; `index` is the engine's number for this linear."""

    def __init__(self, in_features: int, out_features: int, index: int):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.index = index

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={'bias' in self._parameters}")


class Embedding(Module):
    def __init__(self, padding_idx: int | None = None):
        super().__init__()
        self.padding_idx = padding_idx

    def extra_repr(self):
        w = self._parameters.get("weight")
        if w is None:
            return ""
        padding = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{w.shape[0]}, {w.shape[1]}{padding}"


class LayerNorm(Module):
    def __init__(self, eps: float | None = None):
        super().__init__()
        self.eps = eps

    def extra_repr(self):
        w = self._parameters.get("weight")
        if w is None:
            return ""
        eps = "" if self.eps is None else f", eps={self.eps:g}"
        bias = "bias" in self._parameters
        return f"({w.shape[0]},){eps}, elementwise_affine=True, bias={bias}"


def leaf_kind(module_name: str):
    """The leaf class for an engine parameter's owning module, by its last name part."""
    last = module_name.rsplit(".", 1)[-1]
    if last.endswith("_embeddings"):
        return Embedding
    if last == "LayerNorm":
        return LayerNorm
    return None
