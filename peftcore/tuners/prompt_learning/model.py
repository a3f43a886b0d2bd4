"""PromptLearningModel: prompt tuning, P-tuning and prefix tuning on the tuner protocol.

The adapters are prompt encoders (peftcore/tuners/prompt_encoder.py) held by one layer,
`prompt_encoder` (named as HF PEFT's PeftModel names it: prompt_encoder.<adapter>.<...>).
The engine sees the running adapter's output through plain engine tensors ("buffers"):
  prompt methods   one (P, D) tensor at the embeddings site: the first P word-embedding
                   rows of every sequence are the virtual tokens;
  prefix tuning    per layer l a key and a value tensor (P, D) at its KV site, columns
                   [2l·D, (2l+1)·D) and [(2l+1)·D, (2l+2)·D) of the (P, 2·L·D) prefix table
                   (HF PEFT's past_key_values layout).
Each forward runs the encoder and copies its output into the buffers; each backward takes
the buffers' gradients (summed over the batch by the engine) back through the encoder.

The classification forward does what HF PEFT 0.21's does (checked in
tests/test_prompt_parity.py): the attention mask gets P ones in front; for prompt methods
the ids get P placeholder ids (their rows are replaced), token_type_ids P zeros, position
ids are those of inputs_embeds (0..P+T-1; RoBERTa: pad+1..pad+P+T, padding included) and
given position_ids are ignored with HF's warning; the head reads position 0, which is the
first VIRTUAL token (HF's behaviour, kept for parity). For prefix tuning the real tokens'
positions are offset by P, as transformers does with a key/value cache.

Files (HF PEFT's): adapter_config.json and adapter_model.safetensors with
`prompt_embeddings` ([P, D], prefix: [P, 2·L·D]) and the classifier under
`base_model.classifier.*`. peftcore also saves a trained encoder's own weights under
`prompt_encoder.<HF name>` (e.g. prompt_encoder.mlp_head.0.weight): HF PEFT's loader
ignores keys it does not know, and peftcore's from_pretrained(is_trainable=True) resumes
from them exactly (HF PEFT saves only the encoder's output, so its P-tuning and
prefix-projection runs cannot resume; HF PEFT issues #1607, #1247).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ... import _C
from ...config import PeftType
from ...grad_mode import is_grad_enabled
from ..prompt_encoder import (LSTMPromptEncoder, MLPPromptEncoder, PrefixProjection, PromptEncoderBase,
                              PromptTable)
from ..tuners_utils import KEY_PREFIX, BaseTuner, BaseTunerLayer, Plan, set_block_adapters
from .config import (PromptEncoderConfig, PromptEncoderReparameterizationType,
                     PromptLearningConfig, PromptTuningConfig, PromptTuningInit)

PROMPT_KEY = "prompt_embeddings"
ENCODER_KEY = "prompt_encoder."      # peftcore's extra keys: the encoder's own weights
HF_MODULE_PREFIX = "base_model."     # HF PEFT's prefix of modules_to_save keys here


def _is_prefix(config) -> bool:
    return config.peft_type == PeftType.PREFIX_TUNING


def text_init_ids(config: PromptTuningConfig, P: int, vocab_size: int) -> np.ndarray:
    """The token ids of prompt_tuning_init_text (with the tokenizer's special tokens, as
    HF's tokenizer(text)["input_ids"]), repeated or cut to P."""
    from ...train.data import load_tokenizer

    try:
        tokenizer = load_tokenizer(config.tokenizer_name_or_path)
    except (OSError, ValueError, FileNotFoundError) as exc:
        raise ValueError(f"prompt_tuning_init='TEXT': cannot load a tokenizer from "
                         f"tokenizer_name_or_path={config.tokenizer_name_or_path!r} ({exc})") from None
    tokenizer.no_truncation()
    tokenizer.no_padding()
    ids = list(tokenizer.encode(config.prompt_tuning_init_text).ids)
    if not ids:
        raise ValueError(f"prompt_tuning_init_text {config.prompt_tuning_init_text!r} gives no tokens")
    ids = (ids * (-(-P // len(ids))))[:P]
    ids = np.asarray(ids, dtype=np.int64)
    if ids.max() >= vocab_size:
        raise ValueError(f"the tokenizer at {config.tokenizer_name_or_path!r} gives id "
                         f"{ids.max()}, past the model's vocabulary ({vocab_size})")
    return ids


def build_encoder(config, word_embeddings, rng, info) -> PromptEncoderBase:
    """A new encoder for `config` (initialised as HF PEFT initialises it), or, in inference
    mode, a table to be loaded (HF PEFT builds only its embedding then)."""
    P, D, width = config.num_virtual_tokens, config.token_dim, config.prompt_width()
    if config.inference_mode:
        return PromptTable(np.zeros((P, width), np.float32))
    if isinstance(config, PromptTuningConfig):
        init = config.prompt_tuning_init
        if init == PromptTuningInit.RANDOM:
            return PromptTable(rng.standard_normal((P, D)))
        ids = info["init_ids"] if init == PromptTuningInit.TEXT else \
            rng.integers(0, word_embeddings.shape[0], P)
        return PromptTable(np.asarray(word_embeddings)[ids])
    if isinstance(config, PromptEncoderConfig):
        if config.encoder_reparameterization_type == PromptEncoderReparameterizationType.LSTM:
            return LSTMPromptEncoder(rng.standard_normal((P, D)), config.encoder_hidden_size,
                                     config.encoder_num_layers, config.encoder_dropout, rng)
        if config.encoder_num_layers != PromptEncoderConfig.encoder_num_layers:
            warnings.warn(f"for MLP, the argument `encoder_num_layers` is ignored. Exactly "
                          f"{PromptEncoderConfig.encoder_num_layers} MLP layers are used.")
        if config.encoder_dropout:
            warnings.warn("for MLP, the argument `encoder_dropout` is ignored: only the LSTM "
                          "encoder has dropout")
        return MLPPromptEncoder(rng.standard_normal((P, D)), config.encoder_hidden_size, rng)
    zero = config.init_weights == "zero"
    if config.prefix_projection:
        return PrefixProjection(rng.standard_normal((P, D)), config.encoder_hidden_size, width,
                                rng, zero_last=zero)
    return PromptTable(np.zeros((P, width)) if zero else rng.standard_normal((P, width)))


class PromptEncoderLayer(BaseTunerLayer):
    """HF PEFT's `prompt_encoder` ModuleDict: one encoder per adapter (children named by
    adapter), and the engine buffers the running one fills."""

    module_type = "ModuleDict"
    display_name = "ModuleDict"

    def __init__(self, engine, prefix: bool, num_layers: int):
        super().__init__(engine)
        self.prefix = prefix
        self.num_layers = num_layers
        self.configs: dict = {}
        self._buffers: dict = {}     # adapter -> list of engine tensors
        self._ran: str | None = None  # the adapter whose output the last forward used

    # ---------------------------------------------------------------- the protocol
    def adapter_names(self) -> list:
        return list(self._modules)

    def adapter_parameters(self, adapter: str) -> list:
        module = self._modules.get(adapter)
        return [] if module is None else [p for _, p in module.named_parameters()]

    def add(self, adapter: str, encoder: PromptEncoderBase, config):
        P, D = config.num_virtual_tokens, config.token_dim
        count = 2 * self.num_layers if self.prefix else 1
        self._modules[adapter] = encoder
        self.configs[adapter] = config
        self._buffers[adapter] = [_C.Tensor.zeros((P, D)) for _ in range(count)]
        self.sync()

    def replace_encoder(self, adapter: str, encoder: PromptEncoderBase):
        self._modules[adapter] = encoder
        self.sync()

    def delete_adapter(self, adapter: str):
        self._modules.pop(adapter, None)
        self.configs.pop(adapter, None)
        self._buffers.pop(adapter, None)
        if self.active_adapter == adapter:
            self.active_adapter = None
        self.sync()

    def sync(self):
        """The engine runs the running adapter's buffers at its sites, or none."""
        a = self.running_adapter()
        bufs = None if a is None else self._buffers[a]
        if self.prefix:
            for layer in range(self.num_layers):
                entries = [] if bufs is None else \
                    [("prefix", {"key": bufs[2 * layer], "value": bufs[2 * layer + 1]}, {})]
                set_block_adapters(self._engine, layer, "kv", entries)
        else:
            entries = [] if bufs is None else [("prompt", {"prompt": bufs[0]}, {})]
            set_block_adapters(self._engine, -1, "embeddings", entries)
        self._ran = None

    def unload(self, merge: bool):
        self.active_adapter = None
        self.sync()
        return None   # the layer is not in the base model's tree

    def state(self, adapter: str) -> dict:
        return {}   # the tuner writes the prompt's keys (adapter_state_dict)

    def load_state(self, adapter: str, tensors: dict):
        pass        # the tuner reads them (load_weights)

    # ---------------------------------------------------------------- running
    def trains(self, adapter: str) -> bool:
        return any(p.requires_grad for p in self.adapter_parameters(adapter))

    def output(self, adapter: str, training: bool = False) -> np.ndarray:
        """The encoder's output (P, D) or (P, 2·L·D), without touching the engine."""
        return self._modules[adapter].forward(training)

    def refresh(self, training: bool, step: int | None = None):
        """Before a forward: run the running adapter's encoder into the engine buffers
        (`step`, the model's forward count, picks the encoder's dropout masks)."""
        a = self.running_adapter()
        if a is None:
            return
        values = self._modules[a].forward(training, step)
        wants_grad = self.trains(a) and is_grad_enabled()
        bufs = self._buffers[a]
        D = self.configs[a].token_dim
        for i, buf in enumerate(bufs):
            view = np.asarray(buf)
            view[...] = values[:, i * D:(i + 1) * D] if self.prefix else values
            if buf.requires_grad != wants_grad:
                buf.requires_grad = wants_grad
            if wants_grad:
                buf.zero_grad()
        self._ran = a if wants_grad else None

    def backprop(self):
        """After the engine's backward: its gradients of the buffers through the encoder."""
        a, self._ran = self._ran, None
        if a is None or a not in self._modules:
            return
        grads = [np.asarray(b.grad) if b.grad is not None else np.zeros(np.shape(b), np.float32)
                 for b in self._buffers[a]]
        grad = np.concatenate(grads, axis=1) if self.prefix else grads[0]
        self._modules[a].backward(grad)


class PromptLearningModel(BaseTuner):
    """The tuner of the three prompt-learning methods (one PeftType per model, as HF)."""

    prefix = "prompt_encoder"
    layer_cls = PromptEncoderLayer
    merge_refusal = ("prompt-learning methods add virtual tokens or key/value rows; there are "
                     "no weights to fold them into. Keep the PeftModel, or use unload()")

    # ---------------------------------------------------------------- planning
    @classmethod
    def prepare_config(cls, config: PromptLearningConfig, model):
        c = model.config
        wanted = {"token_dim": c.hidden_size, "num_layers": c.num_hidden_layers,
                  "num_attention_heads": c.num_attention_heads, "num_transformer_submodules": 1}
        for name, value in wanted.items():
            given = getattr(config, name)
            if given is None:
                setattr(config, name, value)
            elif given != value:
                what = "prefix tuning needs attention layers of this shape" if _is_prefix(config) \
                    else "the virtual tokens must fit the model"
                raise ValueError(f"{type(config).__name__}.{name}={given}, but the model has "
                                 f"{value} ({c.model_type}: hidden_size {c.hidden_size}, "
                                 f"{c.num_hidden_layers} layers, {c.num_attention_heads} "
                                 f"heads); {what}")
        if c.hidden_size % c.num_attention_heads:
            raise ValueError(f"the model's hidden size {c.hidden_size} is not a multiple of its "
                             f"{c.num_attention_heads} attention heads")
        if getattr(config, "encoder_hidden_size", 1) is None:
            config.encoder_hidden_size = config.token_dim
        P = config.num_virtual_tokens
        room = c.max_position_embeddings - (c.pad_token_id + 1 if c.model_type == "roberta" else 0)
        if P >= room:
            raise ValueError(f"num_virtual_tokens={P} leaves no position for the input: the "
                             f"model has max_position_embeddings={c.max_position_embeddings}")
        return config

    @classmethod
    def plan(cls, model, config) -> Plan:
        if not isinstance(config, PromptLearningConfig):
            raise TypeError(f"expected a prompt-learning config, got {type(config).__name__}")
        plan = super().plan(model, config)
        info = {}
        cfg = plan.config
        if isinstance(cfg, PromptTuningConfig) and cfg.prompt_tuning_init == PromptTuningInit.TEXT \
                and not cfg.inference_mode:
            info["init_ids"] = text_init_ids(cfg, cfg.num_virtual_tokens, model.config.vocab_size)
        plan.targets["prompt_encoder"] = info
        return plan

    @classmethod
    def is_target(cls, config, name, module) -> bool:
        return False   # prompt learning adapts no module of the model

    @classmethod
    def no_targets(cls, config, modules):
        return None

    # ---------------------------------------------------------------- layers
    def tuner_layers(self) -> list:
        layer = self._modules.get("prompt_encoder")
        return [] if layer is None else [("prompt_encoder", layer)]

    def all_layers(self) -> list:
        return super().all_layers() + self.tuner_layers()

    def layer_for(self, name, info, config):
        layer = self._modules.get("prompt_encoder")
        if layer is None:
            layer = PromptEncoderLayer(self.model._engine, _is_prefix(config),
                                       self.model.config.num_hidden_layers)
            self._modules["prompt_encoder"] = layer
        return layer

    def update_layer(self, layer, adapter_name, info, config, rng):
        words = self.model.get_input_embeddings().weight
        layer.add(adapter_name, build_encoder(config, words, rng, info), config)

    # ---------------------------------------------------------------- running
    def get_prompt(self, batch_size: int):
        """The running adapter's virtual tokens (batch_size, P, D), or for prefix tuning each
        layer's (key, value) prefixes, (batch_size, heads, P, D/heads) each."""
        from ...utils.checks import is_int

        if not is_int(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        layer = self.tuner_layers()[0][1]
        a = self.active_adapter
        values = layer.output(a)
        config = self.peft_config[a]
        P = config.num_virtual_tokens
        if not _is_prefix(config):
            return np.broadcast_to(values, (batch_size, *values.shape)).copy()
        H, D = config.num_attention_heads, config.token_dim
        table = values.reshape(P, 2 * config.num_layers, H, D // H).transpose(1, 2, 0, 3)
        return [tuple(np.broadcast_to(table[2 * l + i], (batch_size, H, P, D // H)).copy()
                      for i in range(2)) for l in range(config.num_layers)]

    def run(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
            **kwargs):
        """The base model's forward with the running adapter's prompt, as HF PEFT's."""
        layer = self.tuner_layers()[0][1]
        with self.model._lock:
            a = layer.running_adapter()
            if a is None:
                return self.model(input_ids, attention_mask=attention_mask,
                                  token_type_ids=token_type_ids, position_ids=position_ids, **kwargs)
            config = self.peft_config[a]
            P, c = config.num_virtual_tokens, self.model.config
            ids = np.asarray(input_ids)
            if ids.ndim == 1:
                ids = ids[None, :]
            if ids.ndim != 2 or ids.dtype.kind not in "iu":
                return self.model(input_ids, attention_mask=attention_mask,   # its own error
                                  token_type_ids=token_type_ids, position_ids=position_ids, **kwargs)
            B, T = ids.shape
            roberta = c.model_type == "roberta"
            first = c.pad_token_id + 1 if roberta else 0
            if first + P + T > c.max_position_embeddings:
                raise ValueError(f"{P} virtual tokens and {T} input tokens need positions up to "
                                 f"{first + P + T - 1}, but the model's max_position_embeddings is "
                                 f"{c.max_position_embeddings}: shorten the input to at most "
                                 f"{c.max_position_embeddings - first - P} tokens")
            if _is_prefix(config):
                if position_ids is not None:
                    position_ids = np.asarray(position_ids) + P
                elif roberta:
                    real = (ids != c.pad_token_id).astype(np.int64)
                    position_ids = (np.cumsum(real, axis=1) + P) * real + c.pad_token_id
                else:
                    position_ids = np.broadcast_to(P + np.arange(T), (B, T))
            else:
                if position_ids is not None:
                    warnings.warn("Position ids are not supported for parameter efficient tuning. "
                                  "Ignoring position ids.")
                position_ids = np.broadcast_to(first + np.arange(P + T), (B, P + T))
                ids = np.concatenate([np.zeros((B, P), np.int64), ids.astype(np.int64)], axis=1)
                if attention_mask is not None:
                    mask = np.asarray(attention_mask)
                    mask = mask[None, :] if mask.ndim == 1 else mask
                    attention_mask = np.concatenate([np.ones((mask.shape[0], P), mask.dtype), mask], axis=1)
                if token_type_ids is not None:
                    types = np.asarray(token_type_ids)
                    types = types[None, :] if types.ndim == 1 else types
                    token_type_ids = np.concatenate([np.zeros((types.shape[0], P), types.dtype),
                                                     types], axis=1)
            layer.refresh(self.model.training, self.model._forwards)
            try:
                return self.model(ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                                  position_ids=position_ids, **kwargs)
            except BaseException:
                layer._ran = None
                raise

    def run_backward(self, *args, **kwargs):
        layer = self.tuner_layers()[0][1]
        with self.model._lock:
            self.model.backward(*args, **kwargs)
            layer.backprop()

    # ---------------------------------------------------------------- files
    @classmethod
    def read_adapter_weights(cls, directory: Path, config):
        """HF PEFT's keys, and the classifier's `base_model.<name>` as adapter_state_dict
        keys other methods' modules_to_save (`base_model.model.<name>`)."""
        weights, source = super().read_adapter_weights(directory, config)
        out = {}
        for key, value in weights.items():
            if key.startswith(HF_MODULE_PREFIX) and not key.startswith(KEY_PREFIX):
                key = KEY_PREFIX + key[len(HF_MODULE_PREFIX):]
            out[key] = value
        return out, source

    @classmethod
    def _prototype(cls, model, plan):
        """An encoder as the plan would build for training (its parameter names and shapes)."""
        import copy

        config = copy.deepcopy(plan.config)
        config.inference_mode = False
        if isinstance(config, PromptTuningConfig):
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            enc = build_encoder(config, None, np.random.default_rng(0), {})
        return None if isinstance(enc, PromptTable) else enc

    @classmethod
    def check_weights(cls, model, plan: Plan, weights: dict):
        config = plan.config
        P, width = config.num_virtual_tokens, config.prompt_width()
        if PROMPT_KEY not in weights:
            raise ValueError(f"adapter file lacks {PROMPT_KEY!r} (the virtual tokens)")
        shape = tuple(np.shape(weights[PROMPT_KEY]))
        if shape != (P, width):
            what = f"2 × {config.num_layers} layers × {config.token_dim}" if _is_prefix(config) \
                else f"the hidden size {config.token_dim}"
            raise ValueError(f"{PROMPT_KEY!r} has shape {shape}; this model needs ({P}, {width}) "
                             f"({P} virtual tokens × {what})")
        encoder_keys = {k: v for k, v in weights.items() if k.startswith(ENCODER_KEY)}
        if encoder_keys:
            proto = cls._prototype(model, plan)
            expected = {} if proto is None else \
                {ENCODER_KEY + n: p.shape for n, p in proto.named_parameters()}
            for key, value in encoder_keys.items():
                if key not in expected:
                    raise ValueError(f"adapter tensor {key!r} is not a weight of this config's "
                                     f"prompt encoder")
                if tuple(np.shape(value)) != tuple(expected[key]):
                    raise ValueError(f"adapter tensor {key!r} has shape {tuple(np.shape(value))}, "
                                     f"the prompt encoder needs {tuple(expected[key])}")
            missing = sorted(set(expected) - set(encoder_keys))
            if missing:
                raise ValueError(f"adapter file holds part of the prompt encoder: lacks {missing[:5]}")
        rest = {k: v for k, v in weights.items() if k != PROMPT_KEY and not k.startswith(ENCODER_KEY)}
        super().check_weights(model, Plan({}, plan.modules_to_save, config), rest)

    def load_weights(self, adapter_name: str, weights: dict):
        layer = self.tuner_layers()[0][1]
        config = self.peft_config[adapter_name]
        encoder = layer._modules[adapter_name]
        encoder_keys = {k[len(ENCODER_KEY):]: v for k, v in weights.items() if k.startswith(ENCODER_KEY)}
        if not isinstance(encoder, PromptTable) and encoder_keys:
            params = dict(encoder.named_parameters())
            for name, value in encoder_keys.items():
                params[name][...] = value
        elif isinstance(encoder, PromptTable):
            encoder.embedding.weight[...] = weights[PROMPT_KEY]
        else:
            warnings.warn(f"the adapter file has no prompt encoder weights (HF PEFT saves only "
                          f"{PROMPT_KEY!r}); adapter {adapter_name!r} trains its virtual tokens "
                          f"directly from here on, without the encoder's reparameterisation")
            layer.replace_encoder(adapter_name, PromptTable(weights[PROMPT_KEY]))
            self.mark_adapter_parameters()
        rest = {k: v for k, v in weights.items() if k != PROMPT_KEY and not k.startswith(ENCODER_KEY)}
        super().load_weights(adapter_name, rest)
        layer.sync()

    def adapter_state_dict(self, adapter_name: str) -> dict:
        """HF PEFT's keys: prompt_embeddings, base_model.<classifier...>; plus the encoder's
        own weights (prompt_encoder.<name>) when it is more than the table."""
        layer = self.tuner_layers()[0][1]
        state = {}
        for key, value in super().adapter_state_dict(adapter_name).items():
            if key.startswith(KEY_PREFIX):
                key = HF_MODULE_PREFIX + key[len(KEY_PREFIX):]
            state[key] = value
        state[PROMPT_KEY] = layer.output(adapter_name)
        encoder = layer._modules[adapter_name]
        if not isinstance(encoder, PromptTable):
            for name, p in encoder.named_parameters():
                state[ENCODER_KEY + name] = np.array(p)
        return state
