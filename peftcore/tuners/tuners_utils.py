"""Module-name matching and reporting helpers with HF PEFT semantics."""

from __future__ import annotations

import re
from typing import Iterable, Optional, Union

# HF PEFT's default LoRA target modules per `config.model_type` (used when target_modules is None).
# A str value is a regex matched with re.fullmatch.
DEFAULT_TARGET_MODULES: dict[str, Union[list[str], str]] = {
    "t5": ["q", "v"],
    "mt5": ["q", "v"],
    "bart": ["q_proj", "v_proj"],
    "gpt2": ["c_attn"],
    "bloom": ["query_key_value"],
    "blip-2": ["q", "v", "q_proj", "v_proj"],
    "opt": ["q_proj", "v_proj"],
    "gptj": ["q_proj", "v_proj"],
    "gpt_neox": ["query_key_value"],
    "gpt_neo": ["q_proj", "v_proj"],
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "electra": ["query", "value"],
    "deberta-v2": ["query_proj", "value_proj"],
    "deberta": ["in_proj"],
    "layoutlm": ["query", "value"],
    "llama": ["q_proj", "v_proj"],
    "llama4": ["q_proj", "v_proj"],
    "chatglm": ["query_key_value"],
    "gpt_bigcode": ["c_attn"],
    "mpt": ["Wqkv"],
    "RefinedWebModel": ["query_key_value"],
    "RefinedWeb": ["query_key_value"],
    "falcon": ["query_key_value"],
    "btlm": ["c_proj", "c_attn"],
    "codegen": ["qkv_proj"],
    "mistral": ["q_proj", "v_proj"],
    "mixtral": ["q_proj", "v_proj"],
    "stablelm": ["q_proj", "v_proj"],
    "phi": ["q_proj", "v_proj", "fc1", "fc2"],
    "gemma": ["q_proj", "v_proj"],
    "gemma2": ["q_proj", "v_proj"],
    "gemma3_text": ["q_proj", "v_proj"],
    "gemma4": r".*language_model\..*\.(q_proj|v_proj)",
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
    "nemotron_h": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "rwkv": ["key", "value", "receptance", "output"],
    "rwkv7": ["r_proj", "k_proj", "v_proj", "o_proj", "key", "value"],
}

# What HF PEFT's task-specific PeftModel classes append to `modules_to_save`.
TASK_MODULES_TO_SAVE = {
    "SEQ_CLS": ["classifier", "score"],
    "TOKEN_CLS": ["classifier", "score"],
    "QUESTION_ANS": ["qa_outputs"],
}


def resolve_target_modules(config, model_type: Optional[str]):
    """Return `config.target_modules`, else HF's default for `model_type` (set, or regex str)."""
    if config.target_modules is not None:
        return config.target_modules
    default = DEFAULT_TARGET_MODULES.get(model_type)
    if default is None:
        raise ValueError(
            f"Please specify `target_modules` in `peft_config` (no default is known for model_type {model_type!r})"
        )
    return default if isinstance(default, str) else set(default)


def _matches_name_list(names: Iterable[str], key: str) -> bool:
    """HF list semantics: exact name, or `key` ends with '.' + name."""
    return any(key == name or key.endswith(f".{name}") for name in names)


def _layer_index(key: str, layers_pattern) -> Optional[int]:
    """Index of the first numbered layer segment in `key` (restricted to `layers_pattern` if given)."""
    if not layers_pattern:  # None, "" or [] means any "<name>.<digits>." segment
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", key)
    else:
        patterns = [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern
        match = None
        for pattern in patterns:
            match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", key)
            if match is not None:
                break
    return int(match.group("idx")) if match else None


def check_target_module_exists(config, key: str) -> bool:
    """Whether the module named `key` gets an adapter under `config` (HF PEFT semantics).

    Order: `exclude_modules` and `modules_to_save` veto; a str `target_modules` is `re.fullmatch`ed;
    a collection matches exactly or by '.'-suffix, then a suffix match is filtered by
    `layers_to_transform` / `layers_pattern` (an exact full-key match is not filtered, as in HF).
    """
    exclude = getattr(config, "exclude_modules", None)
    if exclude:
        if isinstance(exclude, str):
            if re.fullmatch(exclude, key):
                return False
        elif _matches_name_list(exclude, key):
            return False

    # Module names in modules_to_save are used as regex fragments, as HF does.
    for name in getattr(config, "modules_to_save", None) or ():
        if re.match(rf"(^|.*\.){name}($|\..*)", key):
            return False

    target_modules = config.target_modules
    if target_modules is None:
        if getattr(config, "target_parameters", None) is not None:
            return False
        raise ValueError("`target_modules` is None; resolve it first (see resolve_target_modules)")
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, key) is not None
    if key in target_modules:
        return True
    if not any(key.endswith(f".{name}") for name in target_modules):
        return False

    layer_indexes = getattr(config, "layers_to_transform", None)
    if layer_indexes is None or (isinstance(layer_indexes, list) and not layer_indexes):
        return True
    index = _layer_index(key, getattr(config, "layers_pattern", None))
    if index is None:
        return False
    return index == layer_indexes if isinstance(layer_indexes, int) else index in layer_indexes


def get_pattern_key(pattern_keys: Iterable[str], key: str) -> str:
    """First pattern in `pattern_keys` matching `key` (regex `(.*\\.)?(<pattern>)$` from the start), else `key`.

    Used as `config.rank_pattern.get(get_pattern_key(config.rank_pattern, key), config.r)`.
    """
    for pattern in pattern_keys:
        if re.match(rf"(.*\.)?({pattern})$", key):
            return pattern
    return key


def format_trainable_parameters(trainable: int, total: int) -> str:
    """The exact line HF PEFT's `print_trainable_parameters()` prints."""
    trainable, total = int(trainable), int(total)
    if total <= 0:
        raise ValueError(f"`total` must be a positive parameter count, got {total}")
    return f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"
