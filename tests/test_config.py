"""Tests for peftcore.config, LoraConfig and tuners_utils (compared with HF PEFT when installed)."""

import dataclasses
import enum
import json
import os

import pytest

from peftcore.config import PeftConfig, PeftType, TaskType, register_config
from peftcore.tuners import LoraConfig
from peftcore.tuners.tuners_utils import (
    DEFAULT_TARGET_MODULES,
    TASK_MODULES_TO_SAVE,
    check_target_module_exists,
    format_trainable_parameters,
    get_pattern_key,
    resolve_target_modules,
)


def _normalise(d):
    """JSON-normalise a config dict (sets -> sorted lists, enums -> str) for comparison."""

    def conv(v):
        if isinstance(v, (set, frozenset)):
            return sorted(conv(x) for x in v)
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, enum.Enum):
            return v.value
        return v

    return {k: conv(v) for k, v in d.items()}


# ---------------------------------------------------------------- defaults / enums


def test_enum_values():
    assert PeftType.LORA == "LORA" and PeftType.LORA.value == "LORA"
    assert TaskType.SEQ_CLS == "SEQ_CLS"
    assert LoraConfig().peft_type is PeftType.LORA


def test_defaults_without_peft():
    c = LoraConfig()
    assert (c.r, c.lora_alpha, c.lora_dropout, c.bias) == (8, 8, 0.0, "none")
    assert c.target_modules is None and c.modules_to_save is None
    assert c.init_lora_weights is True and c.use_rslora is False and c.fan_in_fan_out is False
    assert c.layers_to_transform is None and c.layers_pattern is None
    assert c.rank_pattern == {} and c.alpha_pattern == {}
    assert c.task_type is None and c.inference_mode is False
    assert LoraConfig().rank_pattern is not c.rank_pattern  # no shared mutable default


def test_defaults_match_peft():
    peft = pytest.importorskip("peft")
    ours = LoraConfig().to_dict()
    theirs = _normalise(peft.LoraConfig().to_dict())
    theirs.pop("peft_version")  # peft auto-fills its own version
    ours.pop("peft_version")
    assert set(ours) == set(theirs)
    for key in theirs:
        assert ours[key] == theirs[key], key


def test_field_names_match_peft():
    peft = pytest.importorskip("peft")
    theirs = {f.name for f in dataclasses.fields(peft.LoraConfig)} - {"runtime_config"}
    assert {f.name for f in dataclasses.fields(LoraConfig)} == theirs


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_task_modules_to_save_match_peft():
    """HF's SEQ_CLS model appends ["classifier", "score"] to modules_to_save (bert and roberta alike)."""
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")

    for cfg_cls, model_cls in [
        (transformers.BertConfig, transformers.BertForSequenceClassification),
        (transformers.RobertaConfig, transformers.RobertaForSequenceClassification),
    ]:
        cfg = cfg_cls(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
        model = peft.get_peft_model(model_cls(cfg), peft.LoraConfig(task_type="SEQ_CLS", r=2))
        config = model.peft_config["default"]
        assert config.modules_to_save == TASK_MODULES_TO_SAVE["SEQ_CLS"]
        assert config.target_modules == set(DEFAULT_TARGET_MODULES[cfg.model_type])


# ---------------------------------------------------------------- to_dict / save / load


def test_to_dict_is_json_ready(tmp_path):
    c = LoraConfig(target_modules=["value", "query"], task_type="SEQ_CLS", layer_replication=None)
    d = c.to_dict()
    assert d["target_modules"] == ["query", "value"]
    assert d["peft_type"] == "LORA" and type(d["peft_type"]) is str
    assert d["task_type"] == "SEQ_CLS" and type(d["task_type"]) is str
    json.dumps(d)  # must not raise


def test_save_and_load_roundtrip(tmp_path):
    c = LoraConfig(
        r=4, lora_alpha=16, lora_dropout=0.1, target_modules=["query", "value"], bias="lora_only",
        modules_to_save=["classifier"], layers_to_transform=[0, 2], layers_pattern="layer",
        rank_pattern={"query": 2}, alpha_pattern={"value": 3}, task_type=TaskType.SEQ_CLS,
        base_model_name_or_path="bert-base-uncased", init_lora_weights="gaussian", use_rslora=True,
    )
    c.save_pretrained(tmp_path)
    raw = (tmp_path / "adapter_config.json").read_text()
    assert raw == json.dumps(c.to_dict(), indent=2, sort_keys=True)  # HF's exact formatting
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert type(loaded) is LoraConfig
    assert loaded == c
    assert LoraConfig.from_json_file(tmp_path / "adapter_config.json") == c
    assert [p for p in os.listdir(tmp_path)] == ["adapter_config.json"]


def test_save_pretrained_rejects_file(tmp_path):
    f = tmp_path / "x"
    f.write_text("")
    with pytest.raises(ValueError, match="should be a directory"):
        LoraConfig().save_pretrained(f)


def test_load_ignores_unknown_keys_keeps_known(tmp_path):
    d = LoraConfig(r=16).to_dict()
    d["some_future_option"] = 3
    d["runtime_config"] = {"ephemeral_gpu_offload": False}
    d["peft_version"] = "9.9.9"
    (tmp_path / "adapter_config.json").write_text(json.dumps(d))
    with pytest.warns(UserWarning, match="some_future_option"):
        c = PeftConfig.from_pretrained(tmp_path)
    assert c.r == 16 and c.peft_version == "9.9.9"
    assert not hasattr(c, "some_future_option")


@pytest.mark.parametrize(
    "content, match",
    [
        ('{"r": 8}', "Missing 'peft_type'"),
        ('{"peft_type": "NOT_A_METHOD"}', "Unknown peft_type"),
        ('{"peft_type": "LOHA"}', "not supported by peftcore"),
        ('{"peft_type": "LORA", "r": 8', "not valid JSON"),
        ("\xff\xfe garbage", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"peft_type": ["LORA"]}', r"peft_type in .* must be a string such as 'LORA', got \['LORA'\]"),
        ('{"peft_type": {"a": 1}}', "must be a string"),
        ('{"peft_type": "LORA", "use_rslora": "yes"}', "`use_rslora` must be True or False, got 'yes'"),
        ('{"peft_type": "LORA", "fan_in_fan_out": 1}', "`fan_in_fan_out` must be True or False"),
        ('{"peft_type": "LORA", "inference_mode": null}', "`inference_mode` must be True or False"),
    ],
)
def test_load_errors(tmp_path, content, match):
    path = tmp_path / "adapter_config.json"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(ValueError, match=match) as info:
        PeftConfig.from_json_file(path)
    assert str(path) in str(info.value)  # names the file


def test_invalid_values_in_file_name_the_file(tmp_path):
    path = tmp_path / "adapter_config.json"
    path.write_text(json.dumps({"peft_type": "LORA", "r": 0}))
    with pytest.raises(ValueError, match="`r` must be a positive int") as info:
        PeftConfig.from_json_file(path)
    assert str(path) in str(info.value)


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        PeftConfig.from_pretrained(tmp_path)


def test_register_config_dispatch(tmp_path):
    @dataclasses.dataclass
    class FakeLoha(PeftConfig):
        alpha: int = 1

        def __post_init__(self):
            super().__post_init__()
            self.peft_type = PeftType.LOHA

    register_config("LOHA", FakeLoha)
    try:
        FakeLoha(alpha=5).save_pretrained(tmp_path)
        loaded = PeftConfig.from_pretrained(tmp_path)
        assert type(loaded) is FakeLoha and loaded.alpha == 5
        with pytest.raises(ValueError, match="cannot load"):
            LoraConfig.from_pretrained(tmp_path)
    finally:
        from peftcore import config as cfg

        cfg._CONFIG_REGISTRY.pop("LOHA")


def test_our_file_loads_in_peft(tmp_path):
    peft = pytest.importorskip("peft")
    c = LoraConfig(
        r=4, lora_alpha=32, target_modules=["query", "value"], modules_to_save=["classifier", "score"],
        task_type="SEQ_CLS", layers_to_transform=1, rank_pattern={"query": 8}, inference_mode=True,
    )
    c.save_pretrained(tmp_path)
    theirs = peft.LoraConfig.from_pretrained(str(tmp_path))
    assert isinstance(theirs, peft.LoraConfig)
    t = _normalise(theirs.to_dict())
    o = c.to_dict()
    t.pop("peft_version"), o.pop("peft_version")
    assert t == o


def test_peft_file_loads_in_ours(tmp_path):
    peft = pytest.importorskip("peft")
    theirs = peft.LoraConfig(
        r=16, lora_alpha=8, lora_dropout=0.05, target_modules=["q_proj", "v_proj"], bias="all",
        task_type="CAUSAL_LM", layers_to_transform=[0, 1], layers_pattern="layers", use_rslora=True,
        alpha_pattern={"v_proj": 4}, init_lora_weights="gaussian", fan_in_fan_out=True,
    )
    theirs.save_pretrained(str(tmp_path))
    ours = PeftConfig.from_pretrained(tmp_path)
    assert isinstance(ours, LoraConfig)
    raw = json.loads((tmp_path / "adapter_config.json").read_text())
    raw["target_modules"] = sorted(raw["target_modules"])  # peft writes list(set): arbitrary order
    assert ours.to_dict() == raw
    assert ours.to_dict() == _normalise(theirs.to_dict())


def test_peft_unsupported_feature_file_is_rejected(tmp_path):
    peft = pytest.importorskip("peft")
    peft.LoraConfig(use_dora=True).save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="use_dora"):
        PeftConfig.from_pretrained(tmp_path)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"r": 0}, "`r` must be a positive int, got 0"),
        ({"r": -3}, "`r` must be a positive int"),
        ({"r": 4.0}, "`r` must be a positive int, got 4.0"),
        ({"r": True}, "`r` must be a positive int"),
        ({"r": "8"}, "`r` must be a positive int"),
        ({"lora_alpha": 0}, "`lora_alpha` must be a finite number > 0"),
        ({"lora_alpha": float("nan")}, "`lora_alpha` must be a finite number > 0, got nan"),
        ({"lora_alpha": float("inf")}, "`lora_alpha` must be a finite number > 0, got inf"),
        ({"lora_dropout": float("nan")}, r"`lora_dropout` must be a float in \[0, 1\), got nan"),
        ({"alpha_pattern": {"q": float("nan")}}, "`alpha_pattern` must map str to finite numbers > 0"),
        ({"lora_dropout": 1.0}, r"`lora_dropout` must be a float in \[0, 1\), got 1.0"),
        ({"lora_dropout": -0.1}, r"`lora_dropout` must be a float in \[0, 1\)"),
        ({"bias": "some"}, "`bias` must be one of"),
        ({"init_lora_weights": "pissa"}, "supported values are True, False and 'gaussian'"),
        ({"init_lora_weights": "loftq"}, "not supported by peftcore"),
        ({"init_lora_weights": 1}, "not supported by peftcore"),
        ({"use_dora": True}, "`use_dora=True` is not supported"),
        ({"loftq_config": {"loftq_bits": 4}}, "`loftq_config=.*` is not supported"),
        ({"target_modules": 3}, "`target_modules` must be a str, a list of str or None"),
        ({"target_modules": ["q", 1]}, "`target_modules` must be"),
        ({"layers_to_transform": "0"}, "`layers_to_transform` must be an int or a list of ints"),
        ({"layers_to_transform": [0, 1.5]}, "`layers_to_transform` must be an int or a list of ints"),
        ({"target_modules": ".*q", "layers_to_transform": 0}, "cannot be used when `target_modules` is a str"),
        ({"layers_pattern": "layers"}, "`layers_to_transform` must also be specified"),
        ({"modules_to_save": "classifier"}, "`modules_to_save` must be a list of str"),
        ({"rank_pattern": {"q": 0}}, "`rank_pattern` must map str to positive ints"),
        ({"task_type": "NOT_A_TASK"}, "Invalid task type"),
    ],
)
def test_validation_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoraConfig(**kwargs)


def test_valid_inputs_are_normalised():
    c = LoraConfig(target_modules=("q", "v"), layers_to_transform=(1, 2), modules_to_save=("head",))
    assert c.target_modules == {"q", "v"}
    assert c.layers_to_transform == [1, 2] and c.modules_to_save == ["head"]
    assert LoraConfig(target_modules="all-linear").target_modules == "all-linear"
    assert LoraConfig(init_lora_weights=False).init_lora_weights is False
    assert LoraConfig(lora_alpha=2.5, lora_dropout=0.5).lora_alpha == 2.5
    assert LoraConfig(task_type="SEQ_CLS").task_type is TaskType.SEQ_CLS


# ---------------------------------------------------------------- target-module matching

BERT_Q = "bert.encoder.layer.3.attention.self.query"
MATCH_CASES = [
    # (config kwargs, key, expected)
    ({"target_modules": ["query", "value"]}, BERT_Q, True),
    ({"target_modules": ["query", "value"]}, "bert.encoder.layer.3.attention.self.key", False),
    ({"target_modules": ["query"]}, "query", True),
    ({"target_modules": ["query"]}, "bert.encoder.layer.3.attention.self.myquery", False),
    ({"target_modules": ["self.query"]}, BERT_Q, True),
    ({"target_modules": ["attention"]}, "bert.encoder.layer.3.attention", True),
    ({"target_modules": ["attention"]}, BERT_Q, False),
    ({"target_modules": r".*\.(query|value)"}, BERT_Q, True),
    ({"target_modules": r"query"}, BERT_Q, False),  # fullmatch, not search
    ({"target_modules": r".*layer\.[0-2]\..*query"}, BERT_Q, False),
    ({"target_modules": r".*layer\.[3-5]\..*query"}, BERT_Q, True),
    ({"target_modules": ["query"], "layers_to_transform": 3}, BERT_Q, True),
    ({"target_modules": ["query"], "layers_to_transform": 2}, BERT_Q, False),
    ({"target_modules": ["query"], "layers_to_transform": [1, 3]}, BERT_Q, True),
    ({"target_modules": ["query"], "layers_to_transform": [0, 1]}, BERT_Q, False),
    ({"target_modules": ["query"], "layers_to_transform": []}, BERT_Q, True),
    ({"target_modules": ["query"], "layers_to_transform": 3, "layers_pattern": "layer"}, BERT_Q, True),
    ({"target_modules": ["query"], "layers_to_transform": 3, "layers_pattern": "layers"}, BERT_Q, False),
    ({"target_modules": ["query"], "layers_to_transform": 3, "layers_pattern": ["h", "layer"]}, BERT_Q, True),
    ({"target_modules": ["query"], "layers_to_transform": 0}, "query", True),  # exact key skips layer filter
    ({"target_modules": ["query"], "layers_to_transform": 0}, "pooler.query", False),  # no index found
    ({"target_modules": ["q_proj"], "layers_to_transform": 1},
     "model.layers.1.mlp.experts.0.q_proj", True),  # first index wins
    ({"target_modules": ["q_proj"], "layers_to_transform": 0},
     "model.layers.1.mlp.experts.0.q_proj", False),
    ({"target_modules": ["query", "value"], "exclude_modules": ["value"]},
     "bert.encoder.layer.3.attention.self.value", False),
    ({"target_modules": ["query"], "exclude_modules": r".*layer\.3\..*"}, BERT_Q, False),
    ({"target_modules": ["dense"], "modules_to_save": ["classifier"]}, "classifier.dense", False),
    ({"target_modules": ["dense"], "modules_to_save": ["classifier"]}, "bert.pooler.dense", True),
]


@pytest.mark.parametrize("kwargs, key, expected", MATCH_CASES)
def test_check_target_module_exists(kwargs, key, expected):
    assert check_target_module_exists(LoraConfig(**kwargs), key) is expected


@pytest.mark.parametrize("kwargs, key, expected", MATCH_CASES)
def test_check_target_module_exists_matches_peft(kwargs, key, expected):
    pytest.importorskip("peft")
    import peft
    from peft.tuners.tuners_utils import check_target_module_exists as peft_check

    assert bool(peft_check(peft.LoraConfig(**kwargs), key)) is check_target_module_exists(LoraConfig(**kwargs), key)


def test_check_target_module_none_requires_resolution():
    with pytest.raises(ValueError, match="target_modules"):
        check_target_module_exists(LoraConfig(), BERT_Q)


def test_default_target_modules():
    assert DEFAULT_TARGET_MODULES["bert"] == ["query", "value"]
    assert DEFAULT_TARGET_MODULES["roberta"] == ["query", "value"]
    assert resolve_target_modules(LoraConfig(), "bert") == {"query", "value"}
    assert resolve_target_modules(LoraConfig(target_modules=["k"]), "bert") == {"k"}
    with pytest.raises(ValueError, match="Please specify `target_modules`"):
        resolve_target_modules(LoraConfig(), "unknown-arch")


def test_default_target_modules_match_peft():
    pytest.importorskip("peft")
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as theirs

    assert DEFAULT_TARGET_MODULES == theirs


PATTERN_CASES = [
    (["query"], BERT_Q),
    (["layer.3.attention.self.query"], BERT_Q),
    (["^bert.encoder.layer.3.attention.self.query"], BERT_Q),
    ([r"layer\.[0-2]\..*query", r"layer\.3\..*query"], BERT_Q),
    (["ery"], BERT_Q),  # must match a whole dotted suffix
    (["attention"], BERT_Q),
    (["value"], BERT_Q),
    ([], BERT_Q),
]


def test_get_pattern_key_by_hand():
    assert get_pattern_key(["query"], BERT_Q) == "query"
    assert get_pattern_key(["ery"], BERT_Q) == BERT_Q
    assert get_pattern_key(["attention"], BERT_Q) == BERT_Q
    assert get_pattern_key([r"layer\.[0-2]\..*query", r"layer\.3\..*query"], BERT_Q) == r"layer\.3\..*query"
    rank = {"layer.3.attention.self.query": 16}
    assert rank.get(get_pattern_key(rank, BERT_Q), 8) == 16
    assert rank.get(get_pattern_key(rank, BERT_Q.replace("3", "2")), 8) == 8


@pytest.mark.parametrize("patterns, key", PATTERN_CASES)
def test_get_pattern_key_matches_peft(patterns, key):
    pytest.importorskip("peft")
    from peft.utils.other import get_pattern_key as peft_get

    assert get_pattern_key(patterns, key) == peft_get(patterns, key)


# ---------------------------------------------------------------- trainable parameter line

PARAM_CASES = [(370178, 108680450), (1, 3), (0, 10), (1123, 39078), (884736, 223843584), (5, 5)]


def test_format_trainable_parameters_by_hand():
    assert format_trainable_parameters(1123, 39078) == (
        "trainable params: 1,123 || all params: 39,078 || trainable%: 2.8737"
    )
    with pytest.raises(ValueError):
        format_trainable_parameters(0, 0)


@pytest.mark.parametrize("trainable, total", PARAM_CASES)
def test_format_trainable_parameters_matches_peft(trainable, total, capsys):
    pytest.importorskip("peft")
    from peft import PeftModel

    class Fake:
        def get_nb_trainable_parameters(self):
            return trainable, total

    PeftModel.print_trainable_parameters(Fake())
    assert capsys.readouterr().out == format_trainable_parameters(trainable, total) + "\n"
