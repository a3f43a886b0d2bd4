"""A light module tree with transformers' dotted names over the engine's parameters."""
from __future__ import annotations

from collections import OrderedDict


class Module:
    """A named node; leaves hold Parameters. Children are kept in insertion order."""

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
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in self._modules.items():
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        return "\n".join(lines) + ")" if len(lines) > 1 else lines[0] + ")"


class Linear(Module):
    """y = x·Wᵀ + b; `index` is the engine's number for this linear."""

    def __init__(self, in_features: int, out_features: int, index: int):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.index = index

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}"


class Embedding(Module):
    def extra_repr(self):
        w = self._parameters.get("weight")
        return "" if w is None else f"{w.shape[0]}, {w.shape[1]}"


class LayerNorm(Module):
    def extra_repr(self):
        w = self._parameters.get("weight")
        return "" if w is None else f"({w.shape[0]},)"


def leaf_kind(module_name: str):
    """The leaf class for an engine parameter's owning module, by its last name part."""
    last = module_name.rsplit(".", 1)[-1]
    if last.endswith("_embeddings"):
        return Embedding
    if last == "LayerNorm":
        return LayerNorm
    return None
