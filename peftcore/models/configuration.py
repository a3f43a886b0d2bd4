"""Encoder configuration, read from and written to Hugging Face's config.json."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..utils.checks import is_finite_real, is_int

SUPPORTED_MODEL_TYPES = ("bert", "roberta")

# transformers' per-architecture defaults, for keys a config.json leaves out
_DEFAULTS = {
    "bert": dict(vocab_size=30522, max_position_embeddings=512, type_vocab_size=2,
                 layer_norm_eps=1e-12, pad_token_id=0),
    "roberta": dict(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1,
                    layer_norm_eps=1e-5, pad_token_id=1),
}

_INT_MAX = 2**31 - 1

# hidden_act names transformers uses -> the engine's activation ids
ACTIVATIONS = {"gelu": 0, "gelu_new": 1, "gelu_pytorch_tanh": 1, "gelu_fast": 1, "relu": 2}


@dataclass
class EncoderConfig:
    """BERT / RoBERTa hyper-parameters, with transformers' names and defaults."""

    model_type: str = "bert"
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    classifier_dropout: float | None = None
    num_labels: int = 2
    problem_type: str | None = None
    name_or_path: str = ""
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if not isinstance(self.model_type, str) or self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"unsupported model_type {self.model_type!r}; peftcore supports "
                             f"{', '.join(SUPPORTED_MODEL_TYPES)} (MiniLM is 'bert')")
        if not isinstance(self.hidden_act, str) or self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r}; expected one of "
                             f"{sorted(ACTIVATIONS)}")
        # sizes the engine takes as C ints
        for name in ("vocab_size", "hidden_size", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings", "type_vocab_size", "num_labels"):
            value = getattr(self, name)
            if not is_int(value) or not 0 < value <= _INT_MAX:
                raise ValueError(f"{name} must be a positive int (at most {_INT_MAX}), got "
                                 f"{value!r}")
        if not is_int(self.num_hidden_layers) or not 0 <= self.num_hidden_layers <= _INT_MAX:
            raise ValueError(f"num_hidden_layers must be an int >= 0, got {self.num_hidden_layers!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                             f"num_attention_heads {self.num_attention_heads}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
            value = getattr(self, name)
            if name == "classifier_dropout" and value is None:
                continue
            if not is_finite_real(value) or not 0 <= value < 1:
                raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
        if not is_finite_real(self.layer_norm_eps) or not 0 < self.layer_norm_eps < 1:
            raise ValueError(f"layer_norm_eps must be a number in (0, 1), got "
                             f"{self.layer_norm_eps!r}")
        if not is_finite_real(self.initializer_range) or self.initializer_range < 0:
            raise ValueError(f"initializer_range must be a number >= 0, got "
                             f"{self.initializer_range!r}")
        if self.pad_token_id is not None and (not is_int(self.pad_token_id) or
                                              not 0 <= self.pad_token_id < self.vocab_size):
            raise ValueError(f"pad_token_id must be None or an int in [0, vocab_size="
                             f"{self.vocab_size}), got {self.pad_token_id!r}")
        if self.model_type == "roberta" and self.pad_token_id is None:
            raise ValueError("RoBERTa needs a pad_token_id: its positions count from "
                             "pad_token_id + 1")
        if self.model_type == "roberta" and \
                self.pad_token_id + 1 >= self.max_position_embeddings:
            raise ValueError(f"RoBERTa counts positions from pad_token_id + 1, so pad_token_id "
                             f"{self.pad_token_id} needs max_position_embeddings > "
                             f"{self.pad_token_id + 1}, got {self.max_position_embeddings}")
        if self.problem_type is not None and not isinstance(self.problem_type, str):
            raise ValueError(f"problem_type must be None or a str, got {self.problem_type!r}")
        if not isinstance(self.name_or_path, str):
            raise ValueError(f"name_or_path must be a str, got {self.name_or_path!r}")

    @classmethod
    def from_dict(cls, d: dict, **overrides) -> "EncoderConfig":
        d = {**d, **overrides}
        model_type = d.get("model_type")
        if model_type is None:
            raise ValueError("config has no 'model_type'")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"unsupported model_type {model_type!r}; peftcore supports "
                             f"{', '.join(SUPPORTED_MODEL_TYPES)} (MiniLM is 'bert')")
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {**_DEFAULTS[model_type], **{k: v for k, v in d.items() if k in known}}
        if "id2label" in d and d["id2label"] is not None and not isinstance(d["id2label"], dict):
            raise ValueError(f"id2label must map label ids to names, got {d['id2label']!r:.100}")
        if "num_labels" not in overrides and "id2label" in d and d["id2label"]:
            values["num_labels"] = len(d["id2label"])
        values.setdefault("name_or_path", d.get("_name_or_path", ""))
        extra = {k: v for k, v in d.items() if k not in known}
        return cls(**values, extra=extra)

    @classmethod
    def from_pretrained(cls, path, **overrides) -> "EncoderConfig":
        file = Path(path) / "config.json"
        if not file.is_file():
            raise FileNotFoundError(f"no config.json in {path}")
        try:
            d = json.loads(file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{file} is not valid JSON: {e}") from None
        except RecursionError:
            raise ValueError(f"{file} is not usable JSON: nested too deeply") from None
        if not isinstance(d, dict):
            raise ValueError(f"{file} must hold a JSON object")
        try:
            return cls.from_dict(d, name_or_path=str(path), **overrides)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{file}: {e}") from None

    def to_dict(self) -> dict:
        d = asdict(self)
        extra = d.pop("extra")
        return {**extra, **d}

    def to_hf_dict(self, architecture: str) -> dict:
        """config.json as transformers writes it: labels as id2label/label2id (the file's own
        names kept when their count still fits), the class in `architectures`, no path."""
        d = self.to_dict()
        d.pop("name_or_path")
        d.pop("_name_or_path", None)
        num_labels = d.pop("num_labels")
        id2label = d.get("id2label")
        if not (isinstance(id2label, dict) and len(id2label) == num_labels):
            id2label = {str(i): f"LABEL_{i}" for i in range(num_labels)}
        d["id2label"] = {str(k): v for k, v in id2label.items()}
        d["label2id"] = {v: int(k) for k, v in d["id2label"].items()}
        d["architectures"] = [architecture]
        return d

    @property
    def effective_classifier_dropout(self) -> float:
        if self.classifier_dropout is None:
            return self.hidden_dropout_prob
        return self.classifier_dropout
