"""Which config class and tuner class serve each PeftType; the methods register themselves
in tuners/__init__.py (one line each), and PeftModel asks here instead of naming any."""
from __future__ import annotations

from ..config import PeftType, register_config

_TUNERS: dict = {}   # PeftType -> (config class, tuner class)


def register(peft_type: PeftType, config_cls: type, tuner_cls: type):
    register_config(peft_type, config_cls)
    _TUNERS[PeftType(peft_type)] = (config_cls, tuner_cls)


def registered() -> dict:
    """PeftType -> (config class, tuner class) of every method peftcore implements."""
    return dict(_TUNERS)


def tuner_class(config) -> type:
    """The tuner class for an adapter config, or a ValueError naming what is supported."""
    from ..config import PeftConfig

    if not isinstance(config, PeftConfig):
        raise TypeError(f"peft_config must be an adapter config such as LoraConfig, got "
                        f"{type(config).__name__}")
    entry = _TUNERS.get(config.peft_type)
    if entry is None or not isinstance(config, entry[0]):
        supported = ", ".join(cls.__name__ for cls, _ in _TUNERS.values())
        raise ValueError(f"peftcore supports {supported} adapters; got {type(config).__name__} "
                         f"(peft_type {getattr(config.peft_type, 'value', config.peft_type)!r})")
    return entry[1]


def adapter_layer_types() -> tuple:
    """The classes of every registered method's layers."""
    return tuple(tuner.layer_cls for _, tuner in _TUNERS.values())
