"""Adapter configuration base class, enums and the adapter_config.json format (HF PEFT compatible)."""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import warnings
from dataclasses import dataclass
from typing import Any, Optional, Union

from .utils.io import CONFIG_NAME, atomic_write_json


class PeftType(str, enum.Enum):
    """Adapter method names, spelled as in HF PEFT's `adapter_config.json`."""

    PROMPT_TUNING = "PROMPT_TUNING"
    MULTITASK_PROMPT_TUNING = "MULTITASK_PROMPT_TUNING"
    P_TUNING = "P_TUNING"
    PREFIX_TUNING = "PREFIX_TUNING"
    LORA = "LORA"
    ADALORA = "ADALORA"
    ADAMSS = "ADAMSS"
    BOFT = "BOFT"
    ADAPTION_PROMPT = "ADAPTION_PROMPT"
    IA3 = "IA3"
    BEFT = "BEFT"
    LILY = "LILY"
    LOHA = "LOHA"
    LOKR = "LOKR"
    OFT = "OFT"
    POLY = "POLY"
    LN_TUNING = "LN_TUNING"
    VERA = "VERA"
    FROD = "FROD"
    PVERA = "PVERA"
    FOURIERFT = "FOURIERFT"
    GLORA = "GLORA"
    XLORA = "XLORA"
    HRA = "HRA"
    VBLORA = "VBLORA"
    UNILORA = "UNILORA"
    CPT = "CPT"
    MISS = "MISS"
    RANDLORA = "RANDLORA"
    ROAD = "ROAD"
    TRAINABLE_TOKENS = "TRAINABLE_TOKENS"
    HIRA = "HIRA"
    SHIRA = "SHIRA"
    C3A = "C3A"
    WAVEFT = "WAVEFT"
    OSF = "OSF"
    DELORA = "DELORA"
    GRALORA = "GRALORA"
    CARTRIDGE = "CARTRIDGE"
    TINYLORA = "TINYLORA"
    PSOFT = "PSOFT"
    PEANUT = "PEANUT"
    SHADOW = "SHADOW"
    SUPERTUNING = "SUPERTUNING"
    DEFT = "DEFT"
    # peftcore's own: bias-only fine-tuning (HF PEFT has no BitFit)
    BITFIT = "BITFIT"
    # peftcore's own: bottleneck adapters after transformer blocks (AdapterHub's `adapters`
    # library's method; HF PEFT has none)
    BOTTLENECK = "BOTTLENECK"
    # peftcore's own: AdapterHub's ConfigUnion / UniPELT (gated prefix + bottleneck + LoRA)
    UNIPELT = "UNIPELT"


class TaskType(str, enum.Enum):
    """Task heads, spelled as in HF PEFT."""

    SEQ_CLS = "SEQ_CLS"
    SEQ_2_SEQ_LM = "SEQ_2_SEQ_LM"
    CAUSAL_LM = "CAUSAL_LM"
    TOKEN_CLS = "TOKEN_CLS"
    QUESTION_ANS = "QUESTION_ANS"
    FEATURE_EXTRACTION = "FEATURE_EXTRACTION"


# filled by peftcore.tuners.registry.register (importing peftcore registers every method)
_CONFIG_REGISTRY: dict[str, type] = {}


# readers of adapter_config.json layouts other than HF PEFT's flat one (e.g. another
# library's): each takes the file's dict and returns it in the flat layout (with its
# `peft_type`), or None if the layout is not its own
_CONFIG_LAYOUTS: list = []


def register_config(peft_type: Union[str, PeftType], cls: type) -> None:
    """Register `cls` as the config class loaded for `peft_type`."""
    _CONFIG_REGISTRY[PeftType(peft_type).value] = cls


def register_config_layout(reader) -> None:
    """Register a reader of another adapter_config.json layout (see _CONFIG_LAYOUTS)."""
    if reader not in _CONFIG_LAYOUTS:
        _CONFIG_LAYOUTS.append(reader)


def _in_peft_layout(config_dict: dict, source: Optional[str]) -> dict:
    """`config_dict` in PEFT's flat layout: the registered readers of other layouts convert
    their own."""
    for reader in _CONFIG_LAYOUTS:
        converted = reader(config_dict, source)
        if converted is not None:
            return converted
    return config_dict


def get_config_class(peft_type: Any, source: Optional[str] = None) -> type:
    """Return the registered config class for `peft_type`, or raise ValueError."""
    where = f" in {source}" if source else ""
    if peft_type is None:
        raise ValueError(f"Missing 'peft_type'{where}; cannot tell which adapter config to build")
    key = peft_type.value if isinstance(peft_type, enum.Enum) else peft_type
    if not isinstance(key, str):
        raise ValueError(f"peft_type{where} must be a string such as 'LORA', got {peft_type!r}")
    if key in _CONFIG_REGISTRY:
        return _CONFIG_REGISTRY[key]
    supported = ", ".join(sorted(_CONFIG_REGISTRY)) or "none"
    if key in PeftType._value2member_map_:
        raise ValueError(f"peft_type {key!r}{where} is not supported by peftcore (supported: {supported})")
    raise ValueError(f"Unknown peft_type {peft_type!r}{where} (supported: {supported})")


def _jsonable(value: Any) -> Any:
    """Convert a config value to plain JSON types (enums -> str, sets/tuples -> lists)."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        items = [_jsonable(v) for v in value]
        try:
            return sorted(items)
        except TypeError:
            return items
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        return value.item()
    return value


def _read_json(path: str) -> dict:
    """Read a JSON object from `path`; ValueError naming the file if it is corrupt."""
    try:
        with open(path, "rb") as f:
            obj = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"Could not parse adapter config {path!r}: not valid JSON ({exc})") from None
    except RecursionError:
        raise ValueError(f"Could not parse adapter config {path!r}: JSON nested too deeply") from None
    if not isinstance(obj, dict):
        raise ValueError(f"Adapter config {path!r} must contain a JSON object, got {type(obj).__name__}")
    return obj


@dataclass
class PeftConfig:
    """Fields shared by every adapter config, named and defaulted as in HF PEFT."""

    task_type: Optional[Union[str, TaskType]] = None
    peft_type: Optional[Union[str, PeftType]] = None
    auto_mapping: Optional[dict] = None
    peft_version: Optional[str] = None
    base_model_name_or_path: Optional[str] = None
    revision: Optional[str] = None
    inference_mode: bool = False

    def __post_init__(self):
        if self.task_type is not None:
            if self.task_type not in TaskType._value2member_map_:
                raise ValueError(
                    f"Invalid task type: '{self.task_type}'. Must be one of the following task types: "
                    f"{', '.join(t.value for t in TaskType)}."
                )
            self.task_type = TaskType(self.task_type)
        if self.peft_type is not None:
            if self.peft_type not in PeftType._value2member_map_:
                raise ValueError(f"Unknown peft_type {self.peft_type!r}")
            self.peft_type = PeftType(self.peft_type)

    @property
    def is_prompt_learning(self) -> bool:
        """False: peftcore only implements weight-injecting adapters."""
        return False

    def to_dict(self) -> dict:
        """Return all fields as a JSON-ready dict (what goes into adapter_config.json)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def save_pretrained(self, save_directory: str | os.PathLike, auto_mapping_dict: Optional[dict] = None) -> None:
        """Atomically write `adapter_config.json` into `save_directory` (created if needed)."""
        save_directory = os.fspath(save_directory)
        if os.path.isfile(save_directory):
            raise ValueError(f"Provided path ({save_directory}) should be a directory, not a file")
        os.makedirs(save_directory, exist_ok=True)
        output = self.to_dict()
        if auto_mapping_dict is not None:
            output["auto_mapping"] = auto_mapping_dict
        atomic_write_json(os.path.join(save_directory, CONFIG_NAME), output)

    @classmethod
    def from_dict(cls, config_dict: dict, source: Optional[str] = None) -> "PeftConfig":
        """Build the config class registered for `config_dict['peft_type']`.

        Keys the class does not know (e.g. from a newer HF PEFT) are dropped with a warning.
        """
        config_dict = _in_peft_layout(config_dict, source)
        config_cls = get_config_class(config_dict.get("peft_type"), source)
        if not issubclass(config_cls, cls):
            raise ValueError(
                f"{cls.__name__} cannot load a {config_dict['peft_type']!r} config"
                + (f" from {source}" if source else "")
            )
        kwargs = dict(config_dict)
        kwargs.pop("runtime_config", None)  # runtime-only in HF PEFT, never meant to be saved
        known = {f.name for f in dataclasses.fields(config_cls) if f.init}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            warnings.warn(
                f"Ignoring unknown keys {unknown} for {config_cls.__name__}"
                + (f" in {source}" if source else "")
                + "; they were probably written by a newer PEFT version.",
                stacklevel=2,
            )
            for key in unknown:
                del kwargs[key]
        try:
            return config_cls(**kwargs)
        except (ValueError, TypeError) as exc:
            if source is None:
                raise
            raise ValueError(f"Invalid {config_cls.__name__} in {source}: {exc}") from exc

    @classmethod
    def from_json_file(cls, path_json_file: str | os.PathLike) -> "PeftConfig":
        """Load a config object from a JSON file, dispatching on its `peft_type`."""
        path = os.fspath(path_json_file)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No such adapter config file: {path!r}")
        return cls.from_dict(_read_json(path), source=repr(path))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, subfolder: Optional[str] = None) -> "PeftConfig":
        """Load `adapter_config.json` from a local directory (no Hub download)."""
        path = os.fspath(pretrained_model_name_or_path)
        if subfolder is not None:
            path = os.path.join(path, subfolder)
        config_file = os.path.join(path, CONFIG_NAME)
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"Can't find '{CONFIG_NAME}' at '{path}'")
        return cls.from_json_file(config_file)
