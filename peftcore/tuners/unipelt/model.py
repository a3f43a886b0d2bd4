"""UniPELTModel: AdapterHub's ConfigUnion (UniPELT) on the tuner protocol, its files, and
the gates' export.

Targets (layer i not in the component's leave_out):
    <...>.layer.<i>.attention.self.{query,key,value}, .intermediate.dense, .output.dense
                                                    LoRA (attn_matrices, intermediate_lora,
                                                    output_lora): a child `loras`
    <...>.layer.<i>.attention.output, .output       bottleneck adapter: a child `adapters`
    <...>.layer.<i>.attention.self                  prefix gates and rows: `prefix_tuning`
    <base>                                          the prefix pool (its MLP): `prefix_tuning`

Files are AdapterHub's (`model.save_adapter(folder, name)` / `model.load_adapter(folder)`):
    adapter_config.json      {"config": {"architecture": "union", "configs": [...]}, ...}
    adapter.safetensors      (written; pytorch_adapter.bin also read) every tensor under
                             AdapterHub's key, the prefix pool also under each layer's
                             `attention.self.prefix_tuning.pool.` as `adapters` saves it
    head_config.json, model_head.safetensors   the classifier (modules_to_save)
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ..bottleneck.layer import BottleneckLayer, expected_adapter_state
from ..bottleneck.model import (
    CONFIG_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_NAME,
    _read_head,
    _read_one,
    block_of,
    write_adapterhub_files,
)
from ..tuners_utils import KEY_PREFIX, BaseTuner, Plan
from .layer import LoRALayer, PrefixTuningLayer, PrefixTuningPool

_LORA = [(re.compile(r"(?:^|.*\.)layer\.(\d+)\.attention\.self\.(query|key|value)$"), "selfattn"),
         (re.compile(r"(?:^|.*\.)layer\.(\d+)\.intermediate\.dense$"), "intermediate"),
         (re.compile(r"(?:^|.*\.)layer\.(\d+)\.output\.dense$"), "output")]
_ATTENTION = re.compile(r"(?:^|.*\.)layer\.(\d+)\.attention\.self$")
# a file key: <head>.<container>.<adapter>.<rest>
_FILE_KEY = re.compile(r"^(?P<head>(?:.*\.)?(?:loras|adapters|prefix_gates|prefix_tunings))\."
                       r"(?P<name>[^.]+)\.(?P<rest>.+)$")
_POOL_COPY = ".prefix_tuning.pool."

# where each kind of layer hangs in the module it adapts
_CHILD = {"lora": "loras", "bottleneck": "adapters", "prefix": "prefix_tuning",
          "pool": "prefix_tuning"}


def _lora_target(name: str, lora):
    for pattern, where in _LORA:
        m = pattern.match(name)
        if m is None:
            continue
        if where == "selfattn":
            if not lora.selfattn_lora or m.group(2)[0] not in lora.attn_matrices:
                return None
        elif not getattr(lora, f"{where}_lora"):
            return None
        layer = int(m.group(1))
        return None if layer in lora.leave_out else layer
    return None


class UniPELTModel(BaseTuner):
    """Holds the base model (as child `model`) and its UniPELT / ConfigUnion adapters."""

    prefix = "unipelt"
    layer_cls = (LoRALayer, BottleneckLayer, PrefixTuningLayer, PrefixTuningPool)
    merge_refusal = ("UniPELT's submodules are gated by their input (and a prefix and a "
                     "bottleneck adapter are not weights of the base model), so they cannot "
                     "be folded into the base weights. Use unload() to remove them")

    # ------------------------------------------------------------ planning

    @classmethod
    def prepare_config(cls, config, model):
        layers, hidden = model.config.num_hidden_layers, model.config.hidden_size
        for c in config.configs:
            outside = sorted(i for i in c.leave_out if not 0 <= i < layers)
            if outside:
                raise ValueError(f"{type(c).__name__}: leave_out {outside} names layers outside "
                                 f"the model: expected indices in [0, {layers - 1}]")
        bn = config.component("bottleneck")
        if bn is not None:
            if bn.ln_before:
                raise ValueError("a union's bottleneck adapter with ln_before=True is not "
                                 "implemented by peftcore (use the bottleneck tuner alone)")
            for layer in range(layers):
                bn.bottleneck_size(layer, hidden)
        return config

    @classmethod
    def is_target(cls, config, name, module):
        return cls._kind(config, name) is not None

    @classmethod
    def _kind(cls, config, name):
        lora, bn, prefix = (config.component(k) for k in ("lora", "bottleneck", "prefix_tuning"))
        if lora is not None and _lora_target(name, lora) is not None:
            return "lora"
        if bn is not None:
            found = block_of(name)
            if found and getattr(bn, found[2]) and found[0] not in bn.leave_out:
                return "bottleneck"
        if prefix is not None:
            m = _ATTENTION.match(name)
            if m and int(m.group(1)) not in prefix.leave_out:
                return "prefix"
        return None

    @classmethod
    def target_info(cls, name, module, config):
        kind = cls._kind(config, name)
        if kind == "lora":
            return ("lora", _lora_target(name, config.component("lora")), module.in_features,
                    module.out_features)
        if kind == "bottleneck":
            layer, block, _ = block_of(name)
            hidden = module.dense.out_features
            return ("bottleneck", layer, block, hidden,
                    config.component("bottleneck").bottleneck_size(layer, hidden))
        return ("prefix", int(_ATTENTION.match(name).group(1)))

    @classmethod
    def plan(cls, model, config) -> Plan:
        plan = super().plan(model, config)
        prefix = plan.config.component("prefix_tuning")
        if prefix is None:
            return plan
        # the pool first (the layers' rows are its), then every prefixed layer in order
        layers = [name for name, info in plan.targets.items() if info[0] == "prefix"]
        base = model.base_model_prefix if model.base_model_prefix in model._modules else ""
        targets = {base: ("pool", len(layers))}
        for name, info in plan.targets.items():
            targets[name] = info if info[0] != "prefix" else info + (layers.index(name),)
        return Plan(targets, plan.modules_to_save, plan.config)

    @classmethod
    def no_targets(cls, config, modules):
        raise ValueError(f"no module gets a submodule of this union: every layer is left out "
                         f"or nothing matches ({[type(c).__name__ for c in config.configs]})")

    def check_new_config(self, config):
        """Any union joins: each adapter has its own submodules, prefix layers and pool
        entry (plan() numbers its prefixed layers itself)."""

    # ------------------------------------------------------------ layers

    def layer_for(self, name, info, config):
        module = self.model.get_submodule(name) if name else self.model
        child = _CHILD[info[0]]
        layer = module._modules.get(child)
        if layer is None:
            engine, hidden = self.model._engine, self.model.config.hidden_size
            if info[0] == "lora":
                layer = LoRALayer(engine, module.index, info[2], info[3])
            elif info[0] == "bottleneck":
                layer = BottleneckLayer(engine, info[1], info[2], info[3])
            elif info[0] == "prefix":
                layer = PrefixTuningLayer(engine, info[1], hidden)
            else:
                layer = PrefixTuningPool(engine, hidden)
                self.model.adapter_hooks().append(layer)
            module._modules[child] = layer
        return layer

    def update_layer(self, layer, adapter_name, info, config, rng):
        kind = info[0]
        if kind == "lora":
            layer.add(adapter_name, config.component("lora"), rng)
        elif kind == "bottleneck":
            layer.add(adapter_name, info[4], config.component("bottleneck"), rng)
        elif kind == "pool":
            layer.add(adapter_name, info[1], config.component("prefix_tuning"), rng)
        else:
            pool = self._pool()
            prefix = config.component("prefix_tuning")
            layer.add(adapter_name, pool.rows[adapter_name][info[2]], prefix.gates(), rng)

    def _pool(self):
        return next((m for _, m in self.tuner_layers() if isinstance(m, PrefixTuningPool)), None)

    def unload(self, merge: bool):
        model = super().unload(merge)
        hooks = model.adapter_hooks()
        hooks[:] = [h for h in hooks if not isinstance(h, PrefixTuningPool)]
        for _, module in list(model.named_modules()):
            for child in ("loras", "adapters", "prefix_tuning"):
                if isinstance(module._modules.get(child), self.layer_cls):
                    del module._modules[child]
        return model

    # ------------------------------------------------------------ files

    @classmethod
    def _layer_state_shapes(cls, info, config, hidden):
        """{key after the layer's name (adapter name taken out): shape} of one target."""
        kind = info[0]
        if kind == "lora":
            lora = config.component("lora")
            shapes = {"lora_A": (lora.r, info[2]), "lora_B": (info[3], lora.r)}
            if lora.use_gating:
                shapes.update({"gate.weight": (1, info[2]), "gate.bias": (1,)})
            return shapes
        if kind == "bottleneck":
            return expected_adapter_state(info[3], info[4], config.component("bottleneck"))
        prefix = config.component("prefix_tuning")
        if kind == "prefix":
            G = prefix.gates()
            return {"prefix_gates.weight": (G, hidden), "prefix_gates.bias": (G,)} if G else {}
        P, width = prefix.prefix_length, info[1] * 2 * hidden
        head = "prefix_tunings.self_prefix."
        if prefix.flat:
            return {head + "control_trans": (P * width,)}
        b = prefix.bottleneck_size
        return {head + "wte.weight": (P, hidden), head + "control_trans.0.weight": (b, hidden),
                head + "control_trans.0.bias": (b,), head + "control_trans.2.weight": (width, b),
                head + "control_trans.2.bias": (width,)}

    @staticmethod
    def _layer_name(target: str, info) -> str:
        child = _CHILD[info[0]]
        return f"{target}.{child}" if target else child

    @classmethod
    def expected_tensors(cls, model, plan: Plan):
        expected, aliases, required = super().expected_tensors(
            model, Plan({}, plan.modules_to_save, plan.config))
        hidden = model.config.hidden_size
        for target, info in plan.targets.items():
            layer = cls._layer_name(target, info)
            for suffix, shape in cls._layer_state_shapes(info, plan.config, hidden).items():
                key = f"{KEY_PREFIX}{layer}.{suffix}"
                expected[key] = shape
                required.append(key)
        return expected, aliases, required

    @classmethod
    def read_adapter_weights(cls, directory: Path, config):
        """AdapterHub's tensors keyed as adapter_state_dict keys them (the adapter's name
        taken out); the pool's per-layer copies are skipped (the model-level one is read)."""
        meta = json.loads((directory / CONFIG_NAME).read_text())
        file_name = meta.get("name")
        weights, source = _read_one(directory, SAFE_WEIGHTS_NAME, WEIGHTS_NAME, required=True)
        out = {}
        for key, value in weights.items():
            if _POOL_COPY in key:
                continue
            m = _FILE_KEY.match(key)
            if m is None or m.group("name") != file_name:
                raise ValueError(f"{source}: tensor {key!r} is not a weight of the adapter "
                                 f"{file_name!r} (expected '<module>.<loras|adapters|"
                                 f"prefix_gates|prefix_tunings>.{file_name}.<part>')")
            out[f"{KEY_PREFIX}{m.group('head')}.{m.group('rest')}"] = value
        _read_head(directory, config, out)
        return out, source

    def write_adapter(self, directory: Path, adapter_name: str, config):
        """AdapterHub's files for adapter `adapter_name`, PEFT's fields added to its
        adapter_config.json."""
        model = self.model
        adapter, head = {}, {}
        layer_names = {name for name, _ in self.tuner_layers()}
        pool = None
        for name, layer in self.tuner_layers():
            if adapter_name not in layer.adapter_names():
                continue
            if isinstance(layer, PrefixTuningPool):
                pool = {k: np.array(v) for k, v in layer.state(adapter_name).items()}
            for suffix, value in layer.state(adapter_name).items():
                if isinstance(layer, (LoRALayer, BottleneckLayer)):
                    key = f"{name}.{adapter_name}.{suffix}"
                else:   # prefix_gates.<adapter>.weight, prefix_tunings.<adapter>.self_prefix...
                    first, _, rest = suffix.partition(".")
                    key = f"{name}.{first}.{adapter_name}.{rest}"
                adapter[key] = np.array(value)
        if pool is not None:   # AdapterHub also saves the pool under every layer's attention
            for l in range(model.config.num_hidden_layers):
                at = self._attention_name(l)
                for suffix, value in pool.items():
                    first, _, rest = suffix.partition(".")
                    adapter[f"{at}.prefix_tuning.pool.{first}.{adapter_name}.{rest}"] = value
        for key, value in self.adapter_state_dict(adapter_name).items():
            bare = key[len(KEY_PREFIX):]
            if not any(bare.startswith(n + ".") for n in layer_names):
                head[bare] = value
        write_adapterhub_files(directory, model, config, adapter_name, adapter, head)

    def _attention_name(self, layer: int) -> str:
        base = self.model.base_model_prefix
        head = f"{base}." if base in self.model._modules else ""
        return f"{head}encoder.layer.{layer}.attention.self"

    # ------------------------------------------------------------ gates

    def get_gate_values(self, *args, **kwargs) -> dict:
        """The gates of a forward on this batch, computed by the engine: {layer: {submodule:
        (B,) or (B, 2) float32 array}}, submodules 'lora_query', 'lora_key', 'lora_value',
        'lora_intermediate', 'lora_output', 'adapter_attention', 'adapter_output' and
        'prefix' ((B, 2): key, value gates when not shared). Arguments as the model's
        forward (input_ids, attention_mask, ...; labels are ignored). The forward runs in
        eval mode (no dropout) and keeps its activations, so it cannot run under no_grad."""
        from ...grad_mode import is_grad_enabled

        if not is_grad_enabled():
            raise RuntimeError("get_gate_values() runs a forward that keeps its activations "
                               "(the gates are read from them): call it outside no_grad()")
        kwargs.pop("labels", None)
        model = self.model
        names = {m.index: n for n, m in model.named_modules()
                 if getattr(m, "index", None) is not None and not isinstance(m, LoRALayer)}
        with model._lock:
            training = model.training
            model.training = False   # not train(False): that would release memory
            try:
                model(*args, **kwargs)
                raw = model._engine.gate_values()
            finally:
                model.training = training
        out: dict = {}
        for layer, site, which, gates in raw:
            if site == "out":
                name = names[which]
                part = name.rsplit(".", 2)
                sub = "lora_" + (part[-1] if part[-2] == "self" else part[-2])
            elif site == "kv":
                sub = "prefix"
            else:
                sub = f"adapter_{'attention' if site == 'attention' else 'output'}"
            out.setdefault(layer, {})[sub] = gates[:, 0] if gates.shape[1] == 1 else gates
        return out
