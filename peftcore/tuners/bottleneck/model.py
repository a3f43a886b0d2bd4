"""BottleneckModel: bottleneck adapters' part of the tuner protocol, and AdapterHub's files.

Targets are output blocks, not linears: `<...>.layer.<i>.attention.output` (mh_adapter)
and `<...>.layer.<i>.output` (output_adapter) of every layer not in leave_out.

Files are AdapterHub's (`model.save_adapter(folder, name, use_safetensors=True)` writes and
`model.load_adapter(folder, use_safetensors=True)` reads them):
    adapter_config.json     {"config": {BnConfig fields}, "hidden_size", "model_class",
                             "model_name", "model_type", "name", "version"} plus PEFT's
                             fields at the top level (peft_type, task_type, modules_to_save...)
    adapter.safetensors     <prefix>encoder.layer.<i>.output.adapters.<name>.adapter_up.bias ...
                            (or pytorch_adapter.bin, read by the restricted unpickler)
    head_config.json,       the modules_to_save copies (the classifier) under the model's own
    model_head.safetensors  names, as AdapterHub saves a static head (or pytorch_model_head.bin)
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ...config import TaskType
from ...models.checkpoint import read_torch_bin
from ...utils.io import json_bytes, read_safetensors, write_files_together
from ..tuners_utils import KEY_PREFIX, BaseTuner, Plan
from .config import read_adapterhub_layout
from .layer import BottleneckLayer, expected_adapter_state

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME, SAFE_WEIGHTS_NAME = "pytorch_adapter.bin", "adapter.safetensors"
HEAD_CONFIG_NAME = "head_config.json"
HEAD_WEIGHTS_NAME, SAFE_HEAD_WEIGHTS_NAME = "pytorch_model_head.bin", "model_head.safetensors"

_BLOCKS = [(re.compile(r"(?:^|.*\.)layer\.(\d+)\.attention\.output$"), "attention", "mh_adapter"),
           (re.compile(r"(?:^|.*\.)layer\.(\d+)\.output$"), "ffn", "output_adapter")]
_KEY = re.compile(r"^(?P<block>.*\.adapters)\.(?P<name>[^.]+)\.(?P<rest>.+)$")


def block_of(name: str):
    """(layer index, engine block, config flag) of an output block's module name, or None."""
    for pattern, block, flag in _BLOCKS:
        match = pattern.match(name)
        if match:
            return int(match.group(1)), block, flag
    return None


class BottleneckModel(BaseTuner):
    """Holds the base model (as child `model`) and its bottleneck adapters."""

    prefix = "adapters"
    layer_cls = BottleneckLayer
    merge_refusal = ("a bottleneck adapter is non-linear (down-projection, non-linearity, "
                     "up-projection, around a residual and LayerNorms), so it cannot be folded "
                     "into the base weights. Keep the PeftModel, or use unload() to remove the "
                     "adapters without merging")

    # ------------------------------------------------------------ planning

    @classmethod
    def prepare_config(cls, config, model):
        layers = model.config.num_hidden_layers
        outside = sorted(i for i in config.leave_out if not 0 <= i < layers)
        if outside:
            raise ValueError(f"leave_out {outside} names layers outside the model: expected "
                             f"indices in [0, {layers - 1}] ({layers} layers)")
        hidden = model.config.hidden_size
        for layer in range(layers):   # every layer's bottleneck size must exist
            config.bottleneck_size(layer, hidden)
        return config

    @classmethod
    def is_target(cls, config, name, module):
        found = block_of(name)
        if found is None:
            return False
        layer, _, flag = found
        return getattr(config, flag) and layer not in config.leave_out

    @classmethod
    def target_info(cls, name, module, config):
        """(layer, block, hidden size, bottleneck size)."""
        layer, block, _ = block_of(name)
        hidden = module.dense.out_features
        return (layer, block, hidden, config.bottleneck_size(layer, hidden))

    @classmethod
    def no_targets(cls, config, modules):
        raise ValueError(f"no output block gets an adapter: mh_adapter={config.mh_adapter}, "
                         f"output_adapter={config.output_adapter}, leave_out={config.leave_out}")

    # ------------------------------------------------------------ layers

    def layer_for(self, name, info, config):
        """The block's `adapters` ModuleDict, added to the block the first time."""
        block = self.model.get_submodule(name)
        layer = block._modules.get("adapters")
        if not isinstance(layer, BottleneckLayer):
            layer = BottleneckLayer(self.model._engine, info[0], info[1], info[2])
            block._modules["adapters"] = layer
        return layer

    def update_layer(self, layer, adapter_name, info, config, rng):
        layer.add(adapter_name, info[3], config, rng)

    def unload(self, merge: bool):
        model = super().unload(merge)
        for _, module in list(model.named_modules()):
            if isinstance(module._modules.get("adapters"), BottleneckLayer):
                del module._modules["adapters"]
        return model

    # ------------------------------------------------------------ files

    @classmethod
    def expected_tensors(cls, model, plan: Plan):
        expected, aliases, required = super().expected_tensors(model, Plan({}, plan.modules_to_save,
                                                                            plan.config))
        for name, (_, _, hidden, bottleneck) in plan.targets.items():
            for suffix, shape in expected_adapter_state(hidden, bottleneck, plan.config).items():
                key = f"{KEY_PREFIX}{name}.adapters.{suffix}"
                expected[key] = shape
                required.append(key)
        return expected, aliases, required

    @classmethod
    def check_weights(cls, model, plan: Plan, weights: dict):
        """The hidden size first (an adapter for another model), then every tensor."""
        hidden = model.config.hidden_size
        for key, value in weights.items():
            if key.endswith(".adapters.adapter_up.bias") and np.shape(value) != (hidden,):
                raise ValueError(f"the adapter file is for hidden size {np.shape(value)[0]} "
                                 f"({key!r} has shape {tuple(np.shape(value))}); this model's "
                                 f"hidden size is {hidden}")
        super().check_weights(model, plan, weights)

    @classmethod
    def read_adapter_weights(cls, directory: Path, config):
        """AdapterHub's adapter (and head) tensors, keyed as adapter_state_dict keys them:
        `base_model.model.<block>.adapters.<rest>` without the adapter's name."""
        meta = json.loads((directory / CONFIG_NAME).read_text())
        file_name = meta.get("name")
        weights, source = _read_one(directory, SAFE_WEIGHTS_NAME, WEIGHTS_NAME, required=True)
        out = {}
        for key, value in weights.items():
            match = _KEY.match(key)
            if match is None or match.group("name") != file_name:
                raise ValueError(f"{source}: tensor {key!r} is not a weight of the bottleneck "
                                 f"adapter {file_name!r} (expected '<block>.adapters."
                                 f"{file_name}.<part>')")
            rest = match.group("rest")
            if config.ln_before and rest.startswith("adapter_down.0."):
                # AdapterHub's second name of adapter_norm_before (also in its state dict)
                rest = "adapter_norm_before." + rest[len("adapter_down.0."):]
                if f"{KEY_PREFIX}{match.group('block')}.{rest}" in out:
                    continue
            out[f"{KEY_PREFIX}{match.group('block')}.{rest}"] = value
        _read_head(directory, config, out)
        return out, source

    def write_adapter(self, directory: Path, adapter_name: str, config):
        """AdapterHub's files for adapter `adapter_name`, with PEFT's fields added to its
        adapter_config.json."""
        state = self.adapter_state_dict(adapter_name)
        adapter, head = {}, {}
        for key, value in state.items():
            bare = key[len(KEY_PREFIX):]
            block, sep, rest = bare.partition(".adapters.")
            if sep:
                adapter[f"{block}.adapters.{adapter_name}.{rest}"] = value
                if rest.startswith("adapter_norm_before."):   # AdapterHub's second name
                    adapter[f"{block}.adapters.{adapter_name}.adapter_down.0."
                            f"{rest.rpartition('.')[2]}"] = value
            else:
                head[bare] = value
        write_adapterhub_files(directory, self.model, config, adapter_name, adapter, head)


def write_adapterhub_files(directory: Path, model, config, adapter_name: str, adapter: dict,
                           head: dict) -> None:
    """AdapterHub's files for one adapter of `model`, written together: its weights `adapter`
    (keyed as AdapterHub keys them) and adapter_config.json with PEFT's fields added; with
    `head` (the classification head's weights), AdapterHub's head files beside them."""
    from ... import __version__

    c = model.config
    meta = {"hidden_size": c.hidden_size, "model_class": type(model).__name__,
            "model_name": c.name_or_path or "", "model_type": c.model_type,
            "name": adapter_name, "version": f"peftcore.{__version__}"}
    peft = config.to_dict()
    body = {"config": config.adapterhub_dict(), **meta,
            **{k: peft[k] for k in ("peft_type", "task_type", "modules_to_save",
                                    "inference_mode", "base_model_name_or_path", "revision")}}
    files = [(SAFE_WEIGHTS_NAME, lambda: _safetensors(adapter)),
             (CONFIG_NAME, lambda: json_bytes(body))]
    if head:
        head_meta = {"config": None, **meta, "name": None, "label2id": _label2id(c),
                     "num_labels": c.num_labels}
        files += [(SAFE_HEAD_WEIGHTS_NAME, lambda: _safetensors(head)),
                  (HEAD_CONFIG_NAME, lambda: json_bytes(head_meta))]
    write_files_together(directory, files)


def _read_one(directory: Path, safe: str, legacy: str, required: bool):
    if (directory / safe).is_file():
        return read_safetensors(directory / safe), directory / safe
    if (directory / legacy).is_file():
        return read_torch_bin(directory / legacy), directory / legacy
    if required:
        raise FileNotFoundError(f"no {safe} (or {legacy}) in {directory}")
    return {}, None


def _read_head(directory: Path, config, out: dict) -> None:
    """The head AdapterHub saved beside an adapter (if any) into `out`, keyed as
    adapter_state_dict keys it. A classification model's own head trains with the adapter,
    as modules_to_save does for PEFT's SEQ_CLS task, so such a head sets config.task_type."""
    head, _ = _read_one(directory, SAFE_HEAD_WEIGHTS_NAME, HEAD_WEIGHTS_NAME, required=False)
    out.update({KEY_PREFIX + k: v for k, v in head.items()})
    if head and config.task_type is None and (directory / HEAD_CONFIG_NAME).is_file():
        head_meta = json.loads((directory / HEAD_CONFIG_NAME).read_text())
        if str(head_meta.get("model_class", "")).endswith("ForSequenceClassification"):
            config.task_type = TaskType.SEQ_CLS


def _safetensors(tensors: dict) -> bytes:
    import safetensors.numpy

    return safetensors.numpy.save({k: np.ascontiguousarray(v, dtype=np.float32)
                                   for k, v in tensors.items()})


def _label2id(config) -> dict:
    id2label = getattr(config, "extra", {}).get("id2label")
    if isinstance(id2label, dict) and len(id2label) == config.num_labels:
        return {v: int(k) for k, v in id2label.items()}
    return {f"LABEL_{i}": i for i in range(config.num_labels)}

