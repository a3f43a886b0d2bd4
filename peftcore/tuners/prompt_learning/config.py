"""Prompt-learning configs with HF PEFT 0.21's fields, defaults and adapter_config.json:
PromptTuningConfig (PROMPT_TUNING), PromptEncoderConfig (P_TUNING) and PrefixTuningConfig
(PREFIX_TUNING, also P-tuning v2), over one base, PromptLearningConfig."""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional, Union

from ...config import PeftConfig, PeftType
from ...utils.checks import is_int


class PromptTuningInit(str, enum.Enum):
    TEXT = "TEXT"
    SAMPLE_VOCAB = "SAMPLE_VOCAB"
    RANDOM = "RANDOM"


class PromptEncoderReparameterizationType(str, enum.Enum):
    MLP = "MLP"
    LSTM = "LSTM"


def _positive_int_or_none(name: str, value, required: bool = False):
    if value is None:
        if required:
            raise ValueError(f"`{name}` is required: a positive int (the number of virtual "
                             f"tokens), got None")
        return None
    if not is_int(value) or value <= 0:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}")
    return int(value)


@dataclass
class PromptLearningConfig(PeftConfig):
    """What every prompt-learning method shares (peft.PromptLearningConfig's fields).

    num_virtual_tokens: P, the virtual tokens (prompt methods) or key/value rows per layer
        (prefix tuning); required.
    token_dim, num_layers, num_attention_heads: the model's hidden size, layer count and
        heads; None: filled from the model by get_peft_model (a value given must match it).
    num_transformer_submodules: 1 for an encoder (2 only for encoder-decoder models, which
        peftcore has not); None: filled.
    modules_to_save: as for LoRA (a SEQ_CLS task adds the classifier).
    """

    num_virtual_tokens: int = None
    token_dim: int = None
    num_transformer_submodules: Optional[int] = None
    num_attention_heads: Optional[int] = None
    num_layers: Optional[int] = None
    modules_to_save: Optional[list[str]] = None

    def __post_init__(self):
        super().__post_init__()
        self.num_virtual_tokens = _positive_int_or_none("num_virtual_tokens",
                                                        self.num_virtual_tokens, required=True)
        for name in ("token_dim", "num_transformer_submodules", "num_attention_heads",
                     "num_layers"):
            setattr(self, name, _positive_int_or_none(name, getattr(self, name)))
        if isinstance(self.modules_to_save, str):
            raise ValueError(f"`modules_to_save` must be a list of str or None, got the str "
                             f"{self.modules_to_save!r}")
        if self.modules_to_save is not None:
            self.modules_to_save = list(self.modules_to_save)
        if not isinstance(self.inference_mode, bool):
            raise ValueError(f"`inference_mode` must be True or False, got {self.inference_mode!r}")

    @property
    def is_prompt_learning(self) -> bool:
        return True

    def prompt_width(self) -> int:
        """The width of the saved `prompt_embeddings` rows."""
        return self.token_dim


@dataclass
class PromptTuningConfig(PromptLearningConfig):
    """Prompt tuning (Lester et al.): P trainable virtual-token embeddings before the input's.

    prompt_tuning_init: "RANDOM" (N(0, 1), as torch's nn.Embedding), "SAMPLE_VOCAB" (rows of
        the word embeddings at random ids) or "TEXT" (the embeddings of
        prompt_tuning_init_text's tokens, repeated or cut to P).
    prompt_tuning_init_text, tokenizer_name_or_path, tokenizer_kwargs: for "TEXT" (a local
        model folder with tokenizer.json or vocab.txt; no Hub download).
    """

    prompt_tuning_init: Union[PromptTuningInit, str] = PromptTuningInit.RANDOM
    prompt_tuning_init_text: Optional[str] = None
    tokenizer_name_or_path: Optional[str] = None
    tokenizer_kwargs: Optional[dict] = None

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.PROMPT_TUNING
        if self.prompt_tuning_init not in PromptTuningInit._value2member_map_:
            raise ValueError(f"`prompt_tuning_init` must be one of "
                             f"{[v.value for v in PromptTuningInit]}, got {self.prompt_tuning_init!r}")
        self.prompt_tuning_init = PromptTuningInit(self.prompt_tuning_init)
        text = self.prompt_tuning_init == PromptTuningInit.TEXT
        if text and not self.tokenizer_name_or_path:
            raise ValueError(f"When prompt_tuning_init='TEXT', tokenizer_name_or_path can't be "
                             f"{self.tokenizer_name_or_path!r}: give the folder of a tokenizer")
        if text and (not isinstance(self.prompt_tuning_init_text, str)
                     or not self.prompt_tuning_init_text.strip()):
            raise ValueError(f"When prompt_tuning_init='TEXT', prompt_tuning_init_text must be a "
                             f"non-empty str, got {self.prompt_tuning_init_text!r}")
        if self.tokenizer_kwargs and not text:
            raise ValueError("tokenizer_kwargs only valid when using prompt_tuning_init='TEXT'.")


@dataclass
class PromptEncoderConfig(PromptLearningConfig):
    """P-tuning (Liu et al.): the virtual tokens come from a prompt encoder over P embeddings.

    encoder_reparameterization_type: "MLP" (Linear, ReLU, Linear, ReLU, Linear) or "LSTM"
        (a bidirectional LSTM, then Linear, ReLU, Linear).
    encoder_hidden_size: the encoder's hidden size; None: token_dim.
    encoder_num_layers: the LSTM's layers (an MLP always has its three linears; another
        value warns, as HF PEFT).
    encoder_dropout: the LSTM's dropout between its layers.
    """

    encoder_reparameterization_type: Union[str, PromptEncoderReparameterizationType] = \
        PromptEncoderReparameterizationType.MLP
    encoder_hidden_size: int = None
    encoder_num_layers: int = 2
    encoder_dropout: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.P_TUNING
        kind = self.encoder_reparameterization_type
        if kind not in PromptEncoderReparameterizationType._value2member_map_:
            raise ValueError(f"Prompt encoder type not recognized: encoder_reparameterization_type "
                             f"must be 'MLP' (recommended) or 'LSTM', got {kind!r}")
        self.encoder_reparameterization_type = PromptEncoderReparameterizationType(kind)
        self.encoder_hidden_size = _positive_int_or_none("encoder_hidden_size",
                                                         self.encoder_hidden_size)
        self.encoder_num_layers = _positive_int_or_none("encoder_num_layers",
                                                        self.encoder_num_layers, required=True)
        dropout = self.encoder_dropout
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"`encoder_dropout` must be a float in [0, 1), got {dropout!r}")
        self.encoder_dropout = float(dropout)


@dataclass
class PrefixTuningConfig(PromptLearningConfig):
    """Prefix tuning (Li and Liang) / P-tuning v2: P trainable key and value rows in every
    layer's attention.

    prefix_projection: the rows come from P embeddings through Linear(D, h), Tanh,
        Linear(h, 2·L·D) (True), or are trained directly (False: P-tuning v2).
    encoder_hidden_size: h; None: token_dim.
    init_weights: None, or "zero" (the projection's last linear, or the rows, start at zero).
    """

    encoder_hidden_size: int = None
    prefix_projection: bool = False
    init_weights: Optional[str] = None

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.PREFIX_TUNING
        self.encoder_hidden_size = _positive_int_or_none("encoder_hidden_size",
                                                         self.encoder_hidden_size)
        if not isinstance(self.prefix_projection, bool):
            raise ValueError(f"`prefix_projection` must be True or False, got "
                             f"{self.prefix_projection!r}")
        if self.init_weights not in (None, "zero"):
            raise ValueError(f"`init_weights` must be None or 'zero', got {self.init_weights!r}")

    def prompt_width(self) -> int:
        return self.num_layers * 2 * self.token_dim
