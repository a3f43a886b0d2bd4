"""BERT-family models on the engine: AutoModel and AutoModelForSequenceClassification."""
from __future__ import annotations

import contextlib
import os
import threading
import warnings
import weakref
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .. import _C
from ..grad_mode import is_grad_enabled
from ..utils.checks import is_int
from .checkpoint import LazyTensor
from .checkpoint import load_state_dict as read_checkpoint
from .configuration import ACTIVATIONS, EncoderConfig
from .modules import Embedding, LayerNorm, Linear, Module, ModuleList, leaf_kind
from .parameter import Parameter

_HEAD_KIND = {"bert": 1, "roberta": 2}

# Every model, so that a process forked while another thread held a model's lock (inside a
# forward or an adapter swap) gives its child free locks: the child has no such thread.
_MODELS = weakref.WeakSet()


def _fresh_locks_after_fork():
    for model in list(_MODELS):
        model._lock = threading.RLock()


os.register_at_fork(after_in_child=_fresh_locks_after_fork)


class ModelOutput(dict):
    """transformers' ModelOutput: the fields that are not None, reachable as attributes
    (out.logits), keys (out["logits"]) and by position (out[0], skipping None fields, so
    out[0] is the loss when there is one); to_tuple() gives what return_dict=False returns.
    Iterating yields the keys, as a dict. `loss` is a NumPy float64 (a Python float too), so
    out.loss.item() and float(out.loss) both work."""

    _fields: tuple[str, ...] = ()

    def __init__(self, *args, **kwargs):
        if len(args) > len(self._fields):
            raise TypeError(f"{type(self).__name__} takes at most {len(self._fields)} fields")
        values = dict(zip(self._fields, args))
        for key, value in kwargs.items():
            if key not in self._fields:
                raise TypeError(f"{type(self).__name__} has no field {key!r}")
            if key in values:
                raise TypeError(f"{type(self).__name__} got field {key!r} twice")
            values[key] = value
        super().__init__()
        for name in self._fields:
            object.__setattr__(self, name, values.get(name))
            if values.get(name) is not None:
                super().__setitem__(name, values[name])

    def __getitem__(self, key):
        if isinstance(key, (int, slice)):
            return self.to_tuple()[key]
        return super().__getitem__(key)

    def __setattr__(self, name, value):
        if name in self._fields:
            self.__setitem__(name, value)
        object.__setattr__(self, name, value)

    def __setitem__(self, key, value):
        if key not in self._fields:
            raise KeyError(f"{type(self).__name__} has no field {key!r}")
        object.__setattr__(self, key, value)
        if value is None:
            self.pop(key, None)
        else:
            # keep the fields' order whatever order they are set in
            items = {k: (value if k == key else self.get(k)) for k in self._fields}
            super().clear()
            super().update((k, v) for k, v in items.items() if v is not None)

    def __reduce__(self):
        return (type(self), tuple(getattr(self, f) for f in self._fields))

    def to_tuple(self) -> tuple:
        return tuple(self[k] for k in self.keys())

    def __repr__(self):
        inner = ", ".join(f"{k}={_short(v)}" for k, v in self.items())
        return f"{type(self).__name__}({inner})"


def _short(value):
    if isinstance(value, np.ndarray) and value.ndim > 0:
        return f"array(shape={value.shape}, dtype={value.dtype})"
    return repr(value)


class BaseModelOutputWithPooling(ModelOutput):
    _fields = ("last_hidden_state", "pooler_output", "hidden_states", "attentions")


class SequenceClassifierOutput(ModelOutput):
    _fields = ("loss", "logits", "hidden_states", "attentions")


PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


def _refuse_unsupported(output_attentions):
    if output_attentions:
        raise NotImplementedError("output_attentions=True: peftcore's engine does not return "
                                  "attention probabilities")


def _hidden_states(layers):
    """transformers' hidden_states: the embeddings' output, then each layer's, (B, T, C)
    each (views of one (L+1, B, T, C) array)."""
    return None if layers is None else tuple(layers)


def _container_name(model_type: str, parts: list[str]) -> str | None:
    """transformers' class name for the container at the dotted path `parts` of a BERT-family
    model (e.g. bert.encoder.layer.0.attention.output -> BertSelfOutput)."""
    family = {"bert": "Bert", "roberta": "Roberta"}.get(model_type, model_type.capitalize())
    last, parent = parts[-1], parts[-2] if len(parts) > 1 else ""
    if len(parts) == 1 and last == model_type:
        return f"{family}Model"
    if parent == "layer" and last.isdigit():
        return f"{family}Layer"
    if last == "output":
        return f"{family}SelfOutput" if parent == "attention" else f"{family}Output"
    if last == "classifier":  # a container only where the head has two linears
        return f"{family}ClassificationHead"
    kinds = {"embeddings": "Embeddings", "encoder": "Encoder", "attention": "Attention",
             "self": "SelfAttention", "intermediate": "Intermediate", "pooler": "Pooler"}
    return family + kinds[last] if last in kinds else None


class EncoderModel(Module):
    """An encoder in the C engine, named and loaded as transformers' model of that class.

    Sub-classes set `with_head` (classification head) and whether names carry the
    architecture prefix ("bert." / "roberta.")."""

    with_head = False
    # the tuner (of peftcore.tuners) whose adapters this model holds, set and cleared by it:
    # such a model's layers and values belong to that wrapper too
    adapter_owner = None
    # An eval forward under no_grad splits the batch among one worker per thread, and each
    # worker runs every layer over groups of its whole sequences, the groups of all workers
    # together at most about `inference_rows` tokens (at least one sequence each), so its
    # scratch memory is bounded whatever the batch size; the outputs are the same. None:
    # each worker's share at once. The default is as many tokens as fit
    # INFERENCE_SCRATCH_BYTES of layer scratch: 2182 for bert-base (15 KB a token), 4359 for
    # MiniLM-L6 (7.5 KB a token), so a 32×128 MiniLM batch runs in one group per worker,
    # where its GEMMs are longest.
    INFERENCE_SCRATCH_BYTES = 32 << 20

    def __init__(self, config: EncoderConfig, seed: int = 0, add_pooling_layer: bool = True,
                 _init_weights: bool = True):
        super().__init__()
        self.config = config
        self.base_model_prefix = config.model_type
        self.training = False
        self.add_pooling_layer = bool(add_pooling_layer)
        self._seed = int(seed)
        # dropout masks: one stream per model, from its seed, advanced by each forward, so a
        # run is reproducible whatever else the process has run before
        self._forwards = 0
        self._pending_grad = None
        # The model lock: a forward or backward and every model-changing call (adapter set,
        # add, delete, merge, unmerge, unload, load, enable, disable) hold it, so a change
        # of several engine calls and weight writes runs whole between two forwards.
        self._lock = threading.RLock()
        self._forward_live = False   # a forward ran and its backward has not
        self._stale_forward = None   # the call that changed the model since that forward
        _MODELS.add(self)
        self._engine = _C.Encoder(self._engine_config())
        self.inference_rows = max(1, self.INFERENCE_SCRATCH_BYTES //
                                  self._engine.inference_bytes_per_token())
        self._build_tree()
        if _init_weights:
            self.init_weights(seed)

    @property
    def inference_rows(self) -> int | None:
        return self._inference_rows

    @inference_rows.setter
    def inference_rows(self, rows):
        self._inference_rows = None if rows is None else _check_rows(rows)

    # ------------------------------------------------------------ structure

    def _engine_config(self) -> dict:
        c = self.config
        head = _HEAD_KIND[c.model_type] if self.with_head else 0
        return dict(
            vocab_size=c.vocab_size, hidden_size=c.hidden_size,
            num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
            intermediate_size=c.intermediate_size,
            max_position_embeddings=c.max_position_embeddings,
            type_vocab_size=c.type_vocab_size, layer_norm_eps=c.layer_norm_eps,
            hidden_dropout_prob=c.hidden_dropout_prob,
            attention_probs_dropout_prob=c.attention_probs_dropout_prob,
            classifier_dropout=c.effective_classifier_dropout,
            activation=ACTIVATIONS[c.hidden_act], add_pooler=int(self._has_pooler()),
            head=head, num_labels=c.num_labels if self.with_head else 0,
            word_padding_idx=c.pad_token_id if c.pad_token_id is not None else -1,
            position_padding_idx=c.pad_token_id if c.model_type == "roberta" else -1)

    def _has_pooler(self) -> bool:
        # BertForSequenceClassification pools; RobertaForSequenceClassification does not
        if self.with_head:
            return self.config.model_type == "bert"
        return self.add_pooling_layer

    def _prefix(self, is_head: bool) -> str:
        return "" if is_head or not self.with_head else self.base_model_prefix + "."

    def _build_tree(self):
        """Module tree with transformers' names over the engine's parameters. The engine lists
        them in the order transformers 4.57 (the pinned reference) registers them, so
        named_parameters(), state_dict() and print(model) follow it as they are: the
        embeddings' word, position, token_type, LayerNorm for BERT and RoBERTa alike
        (transformers 5 moves RoBERTa's position_embeddings after the LayerNorm)."""
        self._linear_names = {}
        linears = {name: (i, fin, fout) for i, (name, fin, fout, _) in
                   enumerate(self._engine.linears())}
        for name, tensor, is_head in self._engine.params():
            full = self._prefix(is_head) + name
            module_name, pname = full.rsplit(".", 1)
            bare_module = module_name[len(self._prefix(is_head)):]
            module = self._ensure_module(module_name, bare_module, linears)
            param = Parameter(tensor)
            module._parameters[pname] = param
        for bare, (index, _, _) in linears.items():
            is_head = bare.startswith("classifier")
            self._linear_names[index] = self._prefix(is_head) + bare

    def _ensure_module(self, module_name, bare_name, linears) -> Module:
        node = self
        parts = module_name.split(".")
        for depth, part in enumerate(parts):
            if part not in node._modules:
                is_leaf = depth == len(parts) - 1
                kind = leaf_kind(module_name) if is_leaf else None
                if is_leaf and bare_name in linears:
                    index, fin, fout = linears[bare_name]
                    child = Linear(fin, fout, index)
                elif kind is LayerNorm:
                    child = LayerNorm(self.config.layer_norm_eps)
                elif kind is Embedding:
                    # the embeddings transformers builds with padding_idx (its row gets no
                    # gradient there; peftcore's engine does the same)
                    padded = part == "word_embeddings" or (
                        part == "position_embeddings" and self.config.model_type == "roberta")
                    child = Embedding(self.config.pad_token_id if padded else None)
                elif part == "layer":
                    child = ModuleList()
                else:
                    child = Module()
                    child.display_name = _container_name(self.config.model_type,
                                                         parts[:depth + 1])
                node._modules[part] = child
            node = node._modules[part]
        return node

    def linear_modules(self):
        """(transformers name, Linear) for every linear of the model."""
        for index, name in sorted(self._linear_names.items()):
            yield name, self.get_submodule(name)

    def num_parameters(self, only_trainable: bool = False) -> int:
        return sum(p.size for _, p in self.named_parameters()
                   if p.requires_grad or not only_trainable)

    def get_input_embeddings(self):
        return self.get_submodule(self._prefix(False) + "embeddings.word_embeddings")

    # ------------------------------------------------------------ weights

    def init_weights(self, seed: int = 0, names=None):
        """transformers' init: N(0, initializer_range) weights, zero biases, LayerNorm 1/0,
        the padding row of the word (and, for RoBERTa, position) embeddings zero. One
        seeded stream over the parameters in order, drawn in chunks (no full-size float64
        temporary); `names` limits the init to those parameters."""
        if not is_int(seed) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        if names is not None:
            names = {names} if isinstance(names, str) else set(names)
            unknown = sorted(names - {n for n, _ in self.named_parameters()})
            if unknown:
                raise KeyError(f"init_weights: no parameters named {unknown}")
        rng = np.random.default_rng(seed)
        std = float(self.config.initializer_range) + 0.0  # -0.0 -> 0.0 (NumPy: "scale < 0")
        pad = self.config.pad_token_id
        emb = self._prefix(False) + "embeddings."
        padded = {emb + "word_embeddings.weight"}
        if self.config.model_type == "roberta":
            padded.add(emb + "position_embeddings.weight")
        chunk = 1 << 20
        for name, p in self.named_parameters():
            if names is not None and name not in names:
                continue
            if "LayerNorm" in name:
                p[...] = 1.0 if name.endswith("weight") else 0.0
            elif name.endswith("bias"):
                p[...] = 0.0
            else:
                flat = p.view(np.ndarray).reshape(-1)
                for start in range(0, flat.size, chunk):  # the same draws as one call
                    stop = min(start + chunk, flat.size)
                    flat[start:stop] = rng.normal(0.0, std, size=stop - start)
                if name in padded and pad is not None and 0 <= pad < p.shape[0]:
                    p[pad] = 0.0

    def __reduce__(self):
        """pickle and copy.deepcopy: a new engine model with this one's config, weights,
        requires_grad flags, mode and dropout stream (gradients are not carried over)."""
        if self.adapter_owner is not None:
            raise TypeError(f"cannot copy or pickle a {type(self).__name__} that holds adapter "
                            f"layers; copy the model before get_peft_model(), or save the "
                            f"adapter with save_pretrained() and load it into a copy")
        state = dict(training=self.training, inference_rows=self.inference_rows,
                     _forwards=self._forwards,
                     trainable={n: bool(p.requires_grad) for n, p in self.named_parameters()})
        return (_rebuild_model, (type(self), self.config, self._seed, self.add_pooling_layer,
                                 self.state_dict(), state))

    def save_pretrained(self, save_directory):
        """Write a Hugging Face model folder, config.json and model.safetensors (each file
        atomically), that transformers and from_pretrained load: e.g. the result of a PEFT
        model's merge_and_unload()."""
        from ..utils.io import atomic_write_json, save_safetensors

        folder = Path(save_directory)
        if folder.is_file():
            raise ValueError(f"save_pretrained needs a folder, and {folder} is a file")
        folder.mkdir(parents=True, exist_ok=True)
        save_safetensors(folder / "model.safetensors", self.state_dict(), metadata={"format": "pt"})
        atomic_write_json(folder / "config.json", self.config.to_hf_dict(type(self).__name__))

    def state_dict(self) -> dict:
        return {name: np.array(p, copy=True) for name, p in self.named_parameters()}

    def load_state_dict(self, state_dict: dict, strict: bool = True):
        """Copy values in; all shapes are checked before anything is written.
        Returns (missing_keys, unexpected_keys)."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"load_state_dict expects a mapping of names to arrays, got "
                            f"{type(state_dict).__name__}")
        params = dict(self.named_parameters())
        missing = [k for k in params if k not in state_dict]
        unexpected = [k for k in state_dict if k not in params]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        arrays = {}
        for k, v in state_dict.items():
            if k not in params:
                continue
            a = v if isinstance(v, LazyTensor) else np.asarray(v)  # lazy: read when copied
            # every parameter is float32: integer data would be cast (or, written as I32
            # over float bytes, read as huge floats) without a word
            if isinstance(a, LazyTensor):
                if a.entry.dtype not in ("F16", "BF16", "F32", "F64"):
                    raise TypeError(f"{a.path}: tensor {a.name!r} has dtype {a.entry.dtype}, "
                                    f"but {k} is a float32 parameter (expected F32, F16, BF16 "
                                    f"or F64)")
            elif a.dtype.kind != "f":
                raise TypeError(f"load_state_dict: {k} must hold floating-point numbers (it "
                                f"is a float32 parameter), got dtype {a.dtype}")
            if tuple(a.shape) != params[k].shape:
                raise ValueError(f"load_state_dict: {k} has shape {tuple(a.shape)}, the model "
                                 f"expects {params[k].shape}")
            arrays[k] = a
        for k, a in arrays.items():
            if isinstance(a, LazyTensor):
                a.copy_into(params[k])
            else:
                params[k][...] = a
        return missing, unexpected

    def _match_checkpoint_keys(self, checkpoint: dict) -> tuple[dict, list]:
        """Map checkpoint names to ours: with or without the architecture prefix, and old
        LayerNorm gamma/beta names. Returns ({our name: array}, unexpected names)."""
        ours = {name for name, _ in self.named_parameters()}
        prefix = self.base_model_prefix + "."
        matched, unexpected = {}, []
        for key, value in checkpoint.items():
            k = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
            if k.endswith("position_ids"):
                continue  # a buffer, not a parameter
            candidates = [k, prefix + k]
            if k.startswith(prefix):
                candidates.append(k[len(prefix):])
            target = next((c for c in candidates if c in ours), None)
            if target is None:
                unexpected.append(key)
            else:
                matched[target] = value
        return matched, unexpected

    @classmethod
    def from_config(cls, config, seed: int = 0, **kwargs):
        if isinstance(config, dict):
            config = EncoderConfig.from_dict(config)
        return cls(config, seed=seed, **kwargs)

    @classmethod
    def from_pretrained(cls, path, seed: int = 0, **config_overrides):
        """Load a Hugging Face model folder: config.json and model.safetensors (or
        pytorch_model.bin, read without torch). Missing weights (e.g. a new head) are
        initialised fresh and named in one warning; unused checkpoint weights are listed."""
        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(f"model folder {path} does not exist")
        add_pooling_layer = config_overrides.pop("add_pooling_layer", True)
        config = EncoderConfig.from_pretrained(folder, **config_overrides)
        checkpoint = read_checkpoint(folder, lazy=True)  # one tensor in memory at a time
        model = cls(config, seed=seed, add_pooling_layer=add_pooling_layer, _init_weights=False)
        matched, unexpected = model._match_checkpoint_keys(checkpoint)
        missing = [name for name, _ in model.named_parameters() if name not in matched]
        model.init_weights(seed, names=set(missing))
        model.load_state_dict(matched, strict=False)
        if missing:
            warnings.warn(f"Some weights of {cls.__name__} were not initialized from the model "
                          f"checkpoint at {path} and are newly initialized: {missing}",
                          stacklevel=2)
        if unexpected:
            warnings.warn(f"Some weights of the model checkpoint at {path} were not used when "
                          f"initializing {cls.__name__}: {unexpected}", stacklevel=2)
        return model

    # ------------------------------------------------------------ running

    @contextlib.contextmanager
    def _changing(self, what: str):
        """Hold the model lock around a model-changing call `what`: forwards and backwards
        on other threads wait until it is done. A forward that ran before it can no longer
        be backpropagated (unless the call raised)."""
        with self._lock:
            yield
            # a refused call changed nothing, so only a call that returned invalidates
            if self._forward_live:
                self._stale_forward = what

    def _check_forward_fresh(self):
        """Refuse a backward whose forward a model change has invalidated."""
        if self._stale_forward is not None:
            raise RuntimeError(f"{self._stale_forward}() changed the model after the last "
                               f"forward, which invalidated it: run the forward again before "
                               f"backward()")

    def _engine_backward(self, **grad):
        with self._lock:
            self._check_forward_fresh()
            self._engine.backward(**grad)
            self._forward_live = False
            for hook in self.adapter_hooks():
                hook.after_backward()

    def adapter_hooks(self) -> list:
        """Adapter parts that compute around the engine (e.g. a reparameterisation MLP
        that makes a method's engine tensors): each one's before_forward() runs before every engine forward and after_backward()
        after every backward, under the model lock. Tuners add and remove them."""
        hooks = self.__dict__.get("_adapter_hooks")
        if hooks is None:
            hooks = self.__dict__["_adapter_hooks"] = []
        return hooks

    def train(self, mode: bool = True):
        """Set training mode. Leaving it releases the activation memory training kept (see
        release_memory)."""
        leaving = self.training and not mode
        self.training = bool(mode)
        if leaving:
            self.release_memory()
        return self

    def release_memory(self):
        """Free the activations and scratch the engine keeps between forwards: they grow to
        the largest batch run so far and never shrink by themselves. The next forward
        allocates what its batch needs; a backward of an earlier forward is no longer
        possible."""
        with self._changing("release_memory"):
            self._pending_grad = None
            self._engine.release_activations()

    def eval(self):
        return self.train(False)

    def _prepare_inputs(self, input_ids, attention_mask, token_type_ids, position_ids):
        ids = np.asarray(input_ids)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"input_ids must be int32 or int64, got {ids.dtype}")
        if ids.ndim == 1:
            ids = ids[None, :]
        if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
            raise ValueError(f"input_ids must be a non-empty (batch, seq_len) array, got shape {ids.shape}")
        ids = _as_int64(ids, "input_ids")
        B, T = ids.shape
        c = self.config
        if attention_mask is not None:
            mask = np.asarray(attention_mask)
            if mask.ndim == 1 and mask.shape[0] == T and B == 1:
                mask = mask[None, :]
            if mask.shape != ids.shape:
                raise ValueError(f"attention_mask has shape {mask.shape}, input_ids {ids.shape}")
            if mask.dtype.kind not in "iub":
                raise TypeError(f"attention_mask must be an int or bool array, got {mask.dtype}")
            if mask.dtype.kind != "b" and ((mask != 0) & (mask != 1)).any():
                bad = mask[(mask != 0) & (mask != 1)][0]
                raise ValueError(f"attention_mask must hold 1 (attend) or 0 (padding), got {bad}")
            mask = mask.astype(np.int64)
        else:
            mask = None
        if token_type_ids is None:
            types = np.zeros_like(ids)
        else:
            types = np.asarray(token_type_ids)
            if types.ndim == 1 and B == 1:
                types = types[None, :]
            if types.shape != ids.shape:
                raise ValueError(f"token_type_ids has shape {types.shape}, input_ids {ids.shape}")
            if types.dtype.kind not in "iu":
                raise TypeError(f"token_type_ids must be int32 or int64, got {types.dtype}")
            types = _as_int64(types, "token_type_ids")
        if position_ids is None:
            if c.model_type == "roberta":
                # RoBERTa counts positions from padding_idx + 1 over non-padding tokens
                not_pad = (ids != c.pad_token_id).astype(np.int64)
                positions = np.cumsum(not_pad, axis=1) * not_pad + c.pad_token_id
            else:
                positions = np.broadcast_to(np.arange(T, dtype=np.int64), (B, T))
        else:
            positions = np.asarray(position_ids)
            if positions.dtype.kind not in "iu":
                raise TypeError(f"position_ids must be int32 or int64, got {positions.dtype}")
            if positions.shape not in ((T,), (1, T), (B, T)):
                raise ValueError(f"position_ids has shape {positions.shape}, input_ids {ids.shape} "
                                 f"(expected ({T},), (1, {T}) or ({B}, {T}))")
            positions = np.broadcast_to(_as_int64(positions, "position_ids"), (B, T))
        longest = int(positions.max()) + 1
        if longest > c.max_position_embeddings:
            raise ValueError(f"sequence length {T} needs position {longest - 1}, but "
                             f"max_position_embeddings is {c.max_position_embeddings}")
        return ids, mask, types, np.ascontiguousarray(positions, dtype=np.int64)

    def _run(self, inputs, want_hidden):
        """The engine forward on checked inputs (from _prepare_inputs): (last hidden state,
        pooled, logits, every layer's hidden states). want_hidden: 0 logits only, 1 the last
        hidden state, 2 every layer's too (the last layer then runs on every token).
        Everything that can be refused is refused before the engine runs, so a bad call
        leaves the last forward's activations and pending gradient in place."""
        ids, mask, types, positions = inputs
        with self._lock:
            self._pending_grad = None
            self._engine.set_inference_rows(self._inference_rows or 0)
            seed = (self._seed * 0x9E3779B1 + self._forwards) % 2**64
            self._forwards += 1
            for hook in self.adapter_hooks():
                hook.before_forward()
            out = self._engine.forward(ids, positions, types, mask, self.training, seed,
                                       want_hidden, is_grad_enabled())
            self._forward_live, self._stale_forward = True, None
            return out

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)


class AutoModelBase(EncoderModel):
    """BertModel / RobertaModel: last_hidden_state and pooler_output."""

    with_head = False

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                output_hidden_states=None, output_attentions=None, return_dict=None):
        """transformers' keywords: return_dict=False gives a tuple (last_hidden_state,
        pooler_output when the model pools, hidden_states when asked).
        output_hidden_states=True adds the embeddings' output and every layer's, (B, T, C)
        each: copies the model does not otherwise keep, (layers + 1)·B·T·hidden floats.
        They are outputs only: backward() takes the gradient of last_hidden_state or
        pooler_output."""
        _refuse_unsupported(output_attentions)
        inputs = self._prepare_inputs(input_ids, attention_mask, token_type_ids, position_ids)
        hidden, pooled, _, layers = self._run(inputs, 2 if output_hidden_states else 1)
        out = BaseModelOutputWithPooling(hidden, pooled, _hidden_states(layers))
        return out if return_dict is None or return_dict else out.to_tuple()

    def backward(self, grad=None, *, grad_last_hidden_state=None, grad_pooler_output=None):
        """Backpropagate the gradient of last_hidden_state (B,T,C) or of pooler_output
        (B,C), computed by the caller from this forward's outputs."""
        given = [g for g in (grad, grad_last_hidden_state, grad_pooler_output) if g is not None]
        if len(given) != 1:
            raise ValueError("backward() takes one gradient: of last_hidden_state or pooler_output")
        g = np.asarray(given[0])
        if grad_pooler_output is not None or (grad is not None and g.ndim == 2):
            self._engine_backward(d_pooled=g)
        else:
            self._engine_backward(d_hidden=g)


class SequenceClassificationBase(EncoderModel):
    """BertForSequenceClassification / RobertaForSequenceClassification."""

    with_head = True

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                labels=None, output_hidden_states=None, output_attentions=None,
                return_dict=None):
        """Logits, and with labels the loss transformers picks from config.problem_type (set
        at the first forward with labels when None, as transformers does): "regression"
        (num_labels=1) MSE; "single_label_classification" (int labels, (B,) or (B, 1))
        cross-entropy; "multi_label_classification" (float (B, num_labels) targets in
        [0, 1]) BCE-with-logits. return_dict=False gives a tuple ((loss,) logits,
        hidden_states when asked). output_hidden_states=True returns the embeddings' output
        and every layer's, (B, T, C) each, as transformers does, at the cost of copying them
        and of running the last layer on every token (without it, an eval forward runs the
        last layer on the first tokens alone)."""
        _refuse_unsupported(output_attentions)
        inputs = self._prepare_inputs(input_ids, attention_mask, token_type_ids, position_ids)
        problem, target = (None, None) if labels is None else \
            self._check_labels(labels, inputs[0].shape[0])
        with self._lock:  # the loss's gradient belongs to this forward
            _, _, logits, layers = self._run(inputs, 2 if output_hidden_states else 0)
            loss = None
            if target is not None:
                if problem == "regression":
                    loss = _C.mse_forward(logits, target)
                    self._pending_grad = _C.mse_backward(logits, target, 1.0)
                elif problem == "multi_label_classification":
                    loss = _C.bce_with_logits_forward(logits, target)
                    self._pending_grad = _C.bce_with_logits_backward(logits, target, 1.0)
                else:
                    loss = _C.cross_entropy_forward(logits, target, -100)
                    self._pending_grad = _C.cross_entropy_backward(logits, target, -100, 1.0)
                self.config.problem_type = problem
                loss = np.float64(loss)
        out = SequenceClassifierOutput(loss=loss, logits=logits,
                                       hidden_states=_hidden_states(layers))
        return out if return_dict is None or return_dict else out.to_tuple()

    def _problem_type(self, labels) -> str:
        problem = self.config.problem_type
        if problem is not None:
            if problem not in PROBLEM_TYPES:
                raise ValueError(f"config.problem_type must be one of {list(PROBLEM_TYPES)} or "
                                 f"None, got {problem!r}")
            return problem
        if self.config.num_labels == 1:
            return "regression"
        if labels.dtype.kind in "iu":
            return "single_label_classification"
        return "multi_label_classification"

    def _check_labels(self, labels, B):
        """(problem type, labels as its loss takes them): (B, num_labels) float32 targets
        for regression and multi-label, (B,) int64 class ids in [0, num_labels) or -100
        (ignored) for single-label classification ((B, 1) is flattened, as transformers)."""
        labels = np.asarray(labels)
        problem = self._problem_type(labels)
        C = self.config.num_labels
        if problem == "regression":
            if labels.size != B * C:
                raise ValueError(f"labels must hold {C} value(s) per example ({B} examples), "
                                 f"got shape {labels.shape}")
            if labels.dtype.kind not in "iuf":
                raise TypeError(f"labels must be numbers for regression, got {labels.dtype}")
            return problem, np.ascontiguousarray(labels, np.float32).reshape(B, C)
        if problem == "multi_label_classification":
            if labels.shape != (B, C) and self.config.problem_type is None:
                raise TypeError(f"labels must be int class ids (B,) for single-label "
                                f"classification, or (B, {C}) targets in [0, 1] for multi-label "
                                f"classification; got {labels.dtype} of shape {labels.shape}")
            if labels.shape != (B, C):
                raise ValueError(f"multi-label labels must have shape ({B}, {C}), got "
                                 f"{labels.shape}")
            if labels.dtype.kind not in "iufb":
                raise TypeError(f"multi-label labels must be numbers in [0, 1], got {labels.dtype}")
            target = np.ascontiguousarray(labels, np.float32)
            if not ((target >= 0) & (target <= 1)).all():
                raise ValueError("multi-label labels must be in [0, 1]")
            return problem, target
        if labels.dtype.kind not in "iu":
            raise TypeError(f"labels must be int class ids for num_labels={C}, got {labels.dtype}")
        if labels.shape == (B, 1):
            labels = labels.reshape(B)
        if labels.shape != (B,):
            raise ValueError(f"labels must have shape ({B},), got {labels.shape}")
        bad = (labels != -100) & ((labels < 0) | (labels >= C))
        if bad.any():
            raise ValueError(f"labels must be in [0, {C}) or -100, got {labels[bad][0]}")
        return problem, labels

    def backward(self, grad_logits=None):
        """Accumulate gradients into .grad of trainable parameters: of the loss of the last
        forward with labels, or of any loss whose gradient w.r.t. the logits is given."""
        with self._lock:
            self._check_forward_fresh()
            pending = grad_logits is None
            if pending:
                if self._pending_grad is None:
                    raise RuntimeError("backward() without grad_logits needs a forward with "
                                       "labels first")
                grad_logits = self._pending_grad
            self._engine_backward(d_logits=np.asarray(grad_logits))
            if pending:  # kept where the engine refused and the forward stays usable
                self._pending_grad = None


class BertModel(AutoModelBase):
    pass


class RobertaModel(AutoModelBase):
    pass


class BertForSequenceClassification(SequenceClassificationBase):
    pass


class RobertaForSequenceClassification(SequenceClassificationBase):
    pass


_AUTO = {"bert": BertModel, "roberta": RobertaModel}
_AUTO_SEQ = {"bert": BertForSequenceClassification, "roberta": RobertaForSequenceClassification}


def _rebuild_model(cls, config, seed, add_pooling_layer, weights, state):
    """The inverse of EncoderModel.__reduce__."""
    model = cls(config, seed=seed, add_pooling_layer=add_pooling_layer, _init_weights=False)
    model.load_state_dict(weights)
    for name, p in model.named_parameters():
        p.requires_grad = state["trainable"][name]
    model.training, model.inference_rows = state["training"], state["inference_rows"]
    model._forwards = state["_forwards"]
    return model


def _as_int64(array, name):
    """An int array as int64; uint64 values past int64's range raise rather than wrap."""
    if array.dtype == np.uint64 and array.size and array.max() > np.iinfo(np.int64).max:
        raise IndexError(f"{name} contains {array.max()}, past the int64 range of ids")
    return array.astype(np.int64, copy=False)


def _check_rows(rows) -> int:
    """inference_rows as the engine takes it: a positive int."""
    if not is_int(rows) or rows < 1:
        raise ValueError(f"inference_rows must be None or a positive int (tokens per group), "
                         f"got {rows!r}")
    return int(rows)


def _config_of(path_or_config, overrides):
    if isinstance(path_or_config, EncoderConfig):
        return path_or_config
    if isinstance(path_or_config, dict):
        return EncoderConfig.from_dict(path_or_config, **overrides)
    return EncoderConfig.from_pretrained(path_or_config, **overrides)


class AutoModel:
    """Picks BertModel or RobertaModel from config.json's model_type."""

    _mapping = _AUTO

    @classmethod
    def from_pretrained(cls, path, **kwargs):
        overrides = {k: v for k, v in kwargs.items() if k not in ("seed", "add_pooling_layer")}
        config = _config_of(path, overrides)
        return cls._mapping[config.model_type].from_pretrained(path, **kwargs)

    @classmethod
    def from_config(cls, config, seed: int = 0, **kwargs):
        config = _config_of(config, {})
        return cls._mapping[config.model_type](config, seed=seed, **kwargs)


class AutoModelForSequenceClassification(AutoModel):
    _mapping = _AUTO_SEQ
