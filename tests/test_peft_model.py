"""PeftModel's interface: names, printed counts and status as HF PEFT (compared with peft on
the same small transformers models when installed), adapter management, disabling, merging,
and errors for bad configs."""
from __future__ import annotations

import copy
import dataclasses
import re
import warnings

import numpy as np
import pytest

import peftcore
from helpers import one_thread, randomize_parameters  # noqa: F401  (one_thread: a fixture)
from peftcore import LoraConfig, PeftModel, get_peft_model
from peftcore.models.encoder import EncoderModel

TINY = dict(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, num_labels=3)
CFG = dict(TINY, model_type="bert", max_position_embeddings=24, hidden_dropout_prob=0.0,
           attention_probs_dropout_prob=0.0)

LAYER_FIELDS = ["name", "module_type", "enabled", "active_adapters", "merged_adapters",
                "requires_grad", "available_adapters", "devices", "quantization_backend"]
MODEL_FIELDS = ["base_model_type", "adapter_model_type", "peft_types", "trainable_params",
                "total_params", "num_adapter_layers", "enabled", "active_adapters",
                "merged_adapters", "requires_grad", "available_adapters", "devices",
                "quantization_backend"]


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ peftcore-only helpers

def _base(seed=0, head=True, **overrides):
    cfg = dict(CFG, **overrides)
    cls = peftcore.AutoModelForSequenceClassification if head else peftcore.AutoModel
    model = cls.from_config(cfg, seed=seed)
    return randomize_parameters(model, seed)


def _batch(B=3, T=6, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, 40, (B, T))
    mask = np.ones_like(ids)
    mask[-1, T - 2:] = 0
    return ids, mask


def _randomize_adapter(pm, adapter, seed):
    """Random LoRA factors and modules_to_save copies for `adapter`, so it changes logits."""
    rng = np.random.default_rng(seed)
    for name, p in pm.named_parameters():
        if f".{adapter}." in name and (".lora_" in name or ".modules_to_save." in name):
            p[...] = 0.3 * rng.standard_normal(p.shape)


def _logits(model, batch):
    ids, mask = batch
    return np.array(model(ids, attention_mask=mask).logits, copy=True)


def _close(a, b, rtol=1e-5):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() <= rtol * max(np.abs(b).max(), 1e-12)


def _trainable(pm):
    return sorted(n for n, p in pm.named_parameters() if p.requires_grad)


# ------------------------------------------------------------------ HF PEFT reference helpers

@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    """Small random transformers models (saved, so peftcore loads the same weights):
    {(model_type, head): (torch model, folder)}."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("peft")
    torch.manual_seed(0)
    configs = {
        "bert": transformers.BertConfig(max_position_embeddings=24, **TINY),
        "roberta": transformers.RobertaConfig(max_position_embeddings=26, pad_token_id=1,
                                              bos_token_id=0, eos_token_id=2,
                                              type_vocab_size=1, **TINY),
    }
    classes = {("bert", True): transformers.BertForSequenceClassification,
               ("bert", False): transformers.BertModel,
               ("roberta", True): transformers.RobertaForSequenceClassification,
               ("roberta", False): transformers.RobertaModel}
    out = {}
    for (model_type, head), cls in classes.items():
        model = cls(configs[model_type]).eval()
        folder = tmp_path_factory.mktemp(f"{model_type}_{'seqcls' if head else 'base'}")
        model.save_pretrained(folder)
        out[model_type, head] = (model, folder)
    return out


def _pair(hf_models, model_type, head, adapters):
    """(HF PEFT model, peftcore model) built with the same adapters [(name, kwargs), ...]."""
    import peft
    torch_model, folder = hf_models[model_type, head]
    cls = peftcore.AutoModelForSequenceClassification if head else peftcore.AutoModel
    ours_base = cls.from_pretrained(folder)
    (name0, kw0), rest = adapters[0], adapters[1:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(copy.deepcopy(torch_model), peft.LoraConfig(**copy.deepcopy(kw0)),
                                     adapter_name=name0)
        for name, kw in rest:
            theirs.add_adapter(name, peft.LoraConfig(**copy.deepcopy(kw)))
    ours = get_peft_model(ours_base, LoraConfig(**copy.deepcopy(kw0)), adapter_name=name0)
    for name, kw in rest:
        ours.add_adapter(name, LoraConfig(**copy.deepcopy(kw)))
    return theirs, ours


def _described(model):
    return [(n, bool(p.requires_grad), tuple(p.shape)) for n, p in model.named_parameters()]


NAME_CASES = [
    ("bert", True, [("default", dict(task_type="SEQ_CLS"))]),
    ("bert", True, [("default", dict())]),
    ("bert", False, [("default", dict(target_modules=["query", "key", "dense"]))]),
    ("bert", True, [("default", dict(target_modules=r".*layer\.1\..*(query|value)"))]),
    ("bert", True, [("default", dict(target_modules=["query", "value"], layers_to_transform=[1]))]),
    ("bert", True, [("default", dict(task_type="SEQ_CLS", bias="all"))]),
    ("bert", True, [("default", dict(task_type="SEQ_CLS", bias="lora_only"))]),
    ("bert", True, [("default", dict(modules_to_save=["pooler"]))]),
    ("bert", True, [("default", dict(task_type="SEQ_CLS", modules_to_save=["pooler.dense"]))]),
    ("bert", True, [("default", dict(task_type="SEQ_CLS")),
                    ("other", dict(task_type="SEQ_CLS", r=2, bias="all"))]),
    ("roberta", True, [("default", dict(task_type="SEQ_CLS"))]),
    ("roberta", True, [("default", dict(task_type="SEQ_CLS",
                                        target_modules=["query", "value", "dense"]))]),
    ("roberta", False, [("default", dict())]),
    ("roberta", True, [("default", dict(task_type="SEQ_CLS")),
                       ("other", dict(task_type="SEQ_CLS", r=2, target_modules=["key"]))]),
    # the PeftModel's task comes from its first adapter: a SEQ_CLS model gives every added
    # adapter a classifier copy, a task-less model gives none, whatever the new config says
    ("bert", True, [("default", dict(task_type="SEQ_CLS")), ("other", dict(r=2))]),
    ("bert", True, [("default", dict()), ("other", dict(task_type="SEQ_CLS", r=2))]),
]


def _case_id(case):
    model_type, head, adapters = case
    return f"{model_type}-{'seqcls' if head else 'base'}-" + "+".join(
        ",".join(f"{k}={v}" for k, v in kw.items()) or "defaults" for _, kw in adapters)


@pytest.mark.parametrize("case", NAME_CASES, ids=_case_id)
def test_named_parameters_match_peft(hf_models, case):
    theirs, ours = _pair(hf_models, *case)
    t, o = _described(theirs), _described(ours)
    assert sorted(o) == sorted(t)
    assert o == t  # same order too


def test_roberta_parameter_order_matches_transformers(hf_models):
    """RoBERTa's embeddings in the pinned reference's order (transformers 4.57.6: word,
    position, token_type, LayerNorm, as BERT's; transformers 5 registers position_embeddings
    after the LayerNorm), and every other parameter with them."""
    theirs, ours = _pair(hf_models, "roberta", True, [("default", dict(task_type="SEQ_CLS"))])
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]


PRINT_CASES = [NAME_CASES[i] for i in (0, 2, 3, 5, 6, 8, 9, 10, 11, 13, 14, 15)] + [
    ("bert", True, [("a", dict(task_type="SEQ_CLS", target_modules=["key"])),
                    ("b", dict(task_type="SEQ_CLS", r=2, target_modules=["value"])),
                    ("c", dict(r=3, target_modules=["query", "value"], modules_to_save=["pooler"]))]),
]


@pytest.mark.parametrize("case", PRINT_CASES, ids=_case_id)
def test_print_trainable_parameters_matches_peft(hf_models, case, capsys):
    theirs, ours = _pair(hf_models, *case)
    capsys.readouterr()
    theirs.print_trainable_parameters()
    expected = capsys.readouterr().out
    ours.print_trainable_parameters()
    got = capsys.readouterr().out
    assert re.fullmatch(r"trainable params: [\d,]+ \|\| all params: [\d,]+ \|\| trainable%: "
                        r"\d+\.\d{4}\n", got), got
    assert got == expected
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()
    if any(kw.get("bias", "none") != "none" for _, kw in case[2][1:]):
        # HF PEFT sets bias trainability once, from the adapter active at injection;
        # peftcore makes it follow the active adapter's config (see test_bias_follows_...)
        return
    # after switching to the last adapter too
    name = case[2][-1][0]
    theirs.set_adapter(name)
    ours.set_adapter(name)
    theirs.print_trainable_parameters()
    expected = capsys.readouterr().out
    ours.print_trainable_parameters()
    assert capsys.readouterr().out == expected


@pytest.mark.filterwarnings("ignore:Already unmerged")
@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_layer_and_model_status_match_peft(hf_models, model_type):
    theirs, ours = _pair(hf_models, model_type, True, [
        ("default", dict(task_type="SEQ_CLS", init_lora_weights=False)),
        ("other", dict(task_type="SEQ_CLS", r=2, target_modules=["key", "value"]))])
    assert [f.name for f in dataclasses.fields(type(ours.get_layer_status()[0]))] == \
        [f.name for f in dataclasses.fields(type(theirs.get_layer_status()[0]))]
    assert [f.name for f in dataclasses.fields(type(ours.get_model_status()))] == \
        [f.name for f in dataclasses.fields(type(theirs.get_model_status()))]

    def check(stage):
        t = [dataclasses.asdict(s) for s in theirs.get_layer_status()]
        o = [dataclasses.asdict(s) for s in ours.get_layer_status()]
        assert o == t, stage
        assert dataclasses.asdict(ours.get_model_status()) == \
            dataclasses.asdict(theirs.get_model_status()), stage

    check("fresh")
    with theirs.disable_adapter(), ours.disable_adapter():
        check("disabled")
    check("re-enabled")
    theirs.merge_adapter()
    ours.merge_adapter()
    check("merged")
    theirs.unmerge_adapter()
    ours.unmerge_adapter()
    check("unmerged")
    theirs.set_adapter("other")
    ours.set_adapter("other")
    check("other active")
    theirs.delete_adapter("default")
    ours.delete_adapter("default")
    check("default deleted")


# ------------------------------------------------------------------ status (no torch)

def test_status_fields_and_values():
    pm = get_peft_model(_base(), LoraConfig(r=2, target_modules=["query", "value"],
                                            task_type="SEQ_CLS", init_lora_weights=False))
    pm.add_adapter("other", LoraConfig(r=3, target_modules=["value"], task_type="SEQ_CLS"))
    layers = pm.get_layer_status()
    assert [f.name for f in dataclasses.fields(layers[0])] == LAYER_FIELDS
    assert [s.name for s in layers] == [
        f"model.bert.encoder.layer.{i}.attention.self.{m}" for i in (0, 1)
        for m in ("query", "value")] + ["model.classifier"]
    assert [s.module_type for s in layers] == ["lora.Linear"] * 4 + ["ModulesToSaveWrapper"]
    query, value, wrapper = layers[0], layers[1], layers[4]
    assert query.available_adapters == ["default"] and query.requires_grad == {"default": True}
    assert value.available_adapters == ["default", "other"]
    assert value.requires_grad == {"default": True, "other": False}
    assert wrapper.available_adapters == ["default", "other"]
    assert all(s.enabled and s.active_adapters == ["default"] and s.merged_adapters == []
               and s.quantization_backend is None for s in layers)
    status = pm.get_model_status()
    assert [f.name for f in dataclasses.fields(status)] == MODEL_FIELDS
    trainable, total = pm.get_nb_trainable_parameters()
    assert status.base_model_type == "BertForSequenceClassification"
    assert status.adapter_model_type == "LoraModel"
    assert status.peft_types == {"default": "LORA", "other": "LORA"}
    assert (status.trainable_params, status.total_params) == (trainable, total)
    assert status.num_adapter_layers == 5 and status.enabled is True
    assert status.active_adapters == ["default"]
    assert status.requires_grad == {"default": True, "other": False}
    assert status.available_adapters == ["default", "other"]
    assert status.devices == {"default": ["cpu"], "other": ["cpu"]}
    with pm.disable_adapter():
        s = pm.get_model_status()
        assert s.enabled is False and s.requires_grad == {"default": False, "other": False}
        assert s.trainable_params == 0
    pm.merge_adapter()
    assert [s.merged_adapters for s in pm.get_layer_status()] == [["default"]] * 4 + [[]]
    pm.unmerge_adapter()
    pm.set_adapter("other")
    s = pm.get_model_status()
    assert s.active_adapters == ["other"] and s.requires_grad == {"default": False, "other": True}


# ------------------------------------------------------------------ adapters

def test_add_set_delete_adapter():
    batch = _batch()
    pm = get_peft_model(_base(), LoraConfig(r=2, target_modules=["query", "value"],
                                            task_type="SEQ_CLS", init_lora_weights=False))
    before = _logits(pm, batch)
    default_trainable = _trainable(pm)
    assert pm.active_adapter == "default" and pm.active_adapters == ["default"]
    assert list(pm.peft_config) == ["default"]

    pm.add_adapter("second", LoraConfig(r=4, target_modules=["key"], task_type="SEQ_CLS"))
    _randomize_adapter(pm, "second", seed=5)
    assert list(pm.peft_config) == ["default", "second"]
    assert pm.peft_config["second"].r == 4
    assert pm.active_adapter == "default"  # added inactive ...
    assert _trainable(pm) == default_trainable  # ... and frozen
    second = [n for n, _ in pm.named_parameters() if ".second." in n]
    assert len(second) == 2 * 2 + 2  # key A/B in 2 layers + classifier copy
    np.testing.assert_array_equal(_logits(pm, batch), before)

    pm.set_adapter("second")
    assert pm.active_adapter == "second" and pm.active_peft_config is pm.peft_config["second"]
    assert _trainable(pm) == sorted(second)
    switched = _logits(pm, batch)
    assert not _close(switched, before, 1e-3)
    pm.set_adapter("default")
    np.testing.assert_array_equal(_logits(pm, batch), before)
    assert _trainable(pm) == default_trainable

    with pytest.raises(ValueError, match="default"):
        pm.add_adapter("default", LoraConfig(r=2, target_modules=["query"]))
    with pytest.raises(ValueError, match="missing"):
        pm.set_adapter("missing")
    with pytest.raises(ValueError, match="missing"):
        pm.delete_adapter("missing")
    with pytest.raises(ValueError, match="active"):
        pm.delete_adapter("default")
    assert list(pm.peft_config) == ["default", "second"]

    pm.delete_adapter("second")
    assert list(pm.peft_config) == ["default"]
    assert not [n for n, _ in pm.named_parameters() if ".second." in n]
    np.testing.assert_array_equal(_logits(pm, batch), before)
    pm.add_adapter("second", LoraConfig(r=2, target_modules=["query"]))  # the name is free again
    assert list(pm.peft_config) == ["default", "second"]


def test_only_one_adapter_may_train_biases():
    pm = get_peft_model(_base(), LoraConfig(r=2, target_modules=["query"], bias="all"))
    with pytest.raises(ValueError, match="only 1 adapter with bias"):
        pm.add_adapter("other", LoraConfig(r=2, target_modules=["value"], bias="lora_only"))
    assert list(pm.peft_config) == ["default"]
    pm.add_adapter("other", LoraConfig(r=2, target_modules=["value"]))


def test_bias_trainability_follows_the_active_adapter():
    pm = get_peft_model(_base(), LoraConfig(r=2, target_modules=["query"]))
    pm.add_adapter("biased", LoraConfig(r=2, target_modules=["value"], bias="lora_only"))
    assert not [n for n in _trainable(pm) if n.endswith(".bias")]
    pm.set_adapter("biased")
    assert [n for n in _trainable(pm) if n.endswith(".bias")] == [
        f"base_model.model.bert.encoder.layer.{i}.attention.self.value.base_layer.bias"
        for i in (0, 1)]
    pm.set_adapter("default")
    assert not [n for n in _trainable(pm) if n.endswith(".bias")]


def test_failed_add_adapter_leaves_model_unchanged():
    batch = _batch()
    pm = get_peft_model(_base(), LoraConfig(r=2, target_modules=["query"], init_lora_weights=False))
    before, names = _logits(pm, batch), _described(pm)
    for bad in (LoraConfig(target_modules=["nothing"]), LoraConfig(target_modules=["LayerNorm"]),
                # the targets are fine; the module to save is refused (it is no linear)
                LoraConfig(target_modules=["value"], modules_to_save=["embeddings"]),
                LoraConfig(target_modules=["value"], modules_to_save=["LayerNorm"])):
        with pytest.raises(ValueError):
            pm.add_adapter("bad", bad)
    assert list(pm.peft_config) == ["default"]
    assert _described(pm) == names
    np.testing.assert_array_equal(_logits(pm, batch), before)


@pytest.mark.parametrize("config, match", [
    (LoraConfig(target_modules=["nothing"]), "not found in the base model"),
    (LoraConfig(target_modules=["value"], modules_to_save=["word_embeddings"]),
     "modules_to_save supports linear layers.*word_embeddings is a Embedding"),
])
def test_failed_get_peft_model_leaves_base_model_unchanged(config, match):
    """Nothing is frozen, wrapped or copied before the config is known to apply."""
    batch = _batch()
    base = _base()
    before, names = _logits(base, batch), _described(base)
    with pytest.raises(ValueError, match=match):
        get_peft_model(base, config)
    assert _described(base) == names
    assert all(p.requires_grad for p in base.parameters())
    np.testing.assert_array_equal(_logits(base, batch), before)


def test_disable_adapter_runs_bare_base():
    batch = _batch()
    base = _base()
    bare = _logits(base, batch)
    bare_names = [n for n, _ in base.named_parameters()]
    pm = get_peft_model(base, LoraConfig(r=2, target_modules=["query", "value"],
                                         task_type="SEQ_CLS", init_lora_weights=False))
    _randomize_adapter(pm, "default", seed=1)
    adapted = _logits(pm, batch)
    assert not _close(adapted, bare, 1e-3)
    trainable = _trainable(pm)
    with pm.disable_adapter():
        np.testing.assert_array_equal(_logits(pm, batch), bare)
        assert _trainable(pm) == []  # HF PEFT freezes adapter weights meanwhile
        with pm.disable_adapter():  # nested blocks keep it disabled
            pass
        np.testing.assert_array_equal(_logits(pm, batch), bare)
    np.testing.assert_array_equal(_logits(pm, batch), adapted)
    assert _trainable(pm) == trainable
    with pytest.raises(KeyError):
        with pm.disable_adapter():
            raise KeyError("inside")
    np.testing.assert_array_equal(_logits(pm, batch), adapted)
    assert _trainable(pm) == trainable
    # the base model object is the one wrapped; unload gives the bare model back
    assert pm.get_base_model() is base
    bare_again = pm.unload()
    assert bare_again is base and [n for n, _ in bare_again.named_parameters()] == bare_names
    np.testing.assert_array_equal(_logits(bare_again, batch), bare)


def test_disable_adapter_gradients_reach_only_the_base_when_enabled_again():
    batch = _batch()
    pm = get_peft_model(_base(), LoraConfig(r=2, target_modules=["query"], task_type="SEQ_CLS",
                                            init_lora_weights=False))
    ids, mask = batch
    with pm.disable_adapter():
        pm(ids, attention_mask=mask, labels=np.array([0, 1, 2]))
        pm.backward()
    assert all(p.grad is None for _, p in pm.named_parameters())
    pm(ids, attention_mask=mask, labels=np.array([0, 1, 2]))
    pm.backward()
    assert all((p.grad is not None) == p.requires_grad for _, p in pm.named_parameters())


@pytest.mark.parametrize("task_type", [None, "SEQ_CLS"])
def test_merge_unmerge_and_merge_and_unload(task_type):
    batch = _batch()
    base = _base()
    names = [n for n, _ in base.named_parameters()]
    bare = _logits(base, batch)
    pm = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, task_type=task_type,
                                         target_modules=["query", "value", "output.dense"],
                                         init_lora_weights=False))
    _randomize_adapter(pm, "default", seed=2)
    adapted = _logits(pm, batch)
    assert not _close(adapted, bare, 1e-3)
    pm.merge_adapter()
    assert _close(_logits(pm, batch), adapted)
    pm.merge_adapter()  # merging twice changes nothing
    assert _close(_logits(pm, batch), adapted)
    with pm.disable_adapter():  # disabled means the bare base, also after a merge
        assert _close(_logits(pm, batch), bare)
    pm.merge_adapter()
    pm.unmerge_adapter()
    assert _close(_logits(pm, batch), adapted)
    merged = pm.merge_and_unload()
    assert isinstance(merged, EncoderModel) and not isinstance(merged, PeftModel)
    assert type(merged) is type(base)
    assert [n for n, _ in merged.named_parameters()] == names
    assert _close(_logits(merged, batch), adapted)


def test_merged_weight_is_base_plus_scaled_b_times_a_rounded_once():
    """merge writes fl32(W + s·B·A) with the sum in float64, for every row, including the
    rows of a last partial block (intermediate_size 37 is not a multiple of the 32-row block);
    unmerge comes back to W within one float32 rounding of each step"""
    base = _base(intermediate_size=37)
    pm = get_peft_model(base, LoraConfig(r=3, lora_alpha=5, target_modules=["intermediate.dense"],
                                         init_lora_weights=False))
    _randomize_adapter(pm, "default", seed=4)
    params = dict(pm.named_parameters())
    prefix = "base_model.model.bert.encoder.layer.1.intermediate.dense."
    w = np.array(params[prefix + "base_layer.weight"], copy=True)
    a = np.asarray(params[prefix + "lora_A.default.weight"], np.float64)
    b = np.asarray(params[prefix + "lora_B.default.weight"], np.float64)
    assert w.shape == (37, CFG["hidden_size"])
    expected = (w.astype(np.float64) + (5 / 3) * (b @ a)).astype(np.float32)
    pm.merge_adapter()
    merged = np.asarray(params[prefix + "base_layer.weight"])
    ulp = np.spacing(np.abs(expected))
    assert np.all(np.abs(merged - expected) <= ulp)  # b @ a sums in another order
    assert not np.array_equal(merged, w)
    pm.unmerge_adapter()
    restored = np.asarray(params[prefix + "base_layer.weight"])
    assert np.all(np.abs(restored - w) <= 2 * np.spacing(np.abs(w)) + 2 * ulp)


def test_merge_that_fails_midway_leaves_the_weight_unchanged(monkeypatch):
    pm = get_peft_model(_base(intermediate_size=37),
                        LoraConfig(r=2, target_modules=["intermediate.dense"], init_lora_weights=False))
    _randomize_adapter(pm, "default", seed=5)
    layer = pm.base_model.model.bert.encoder.layer[0].intermediate.dense
    w = np.array(layer.base_weight, copy=True)
    real, calls = type(layer).delta_weight, []

    def failing_on_second_block(self, adapter, rows=slice(None)):
        calls.append(rows)
        if len(calls) == 2:
            raise MemoryError("simulated")
        return real(self, adapter, rows)

    monkeypatch.setattr(type(layer), "delta_weight", failing_on_second_block)
    with pytest.raises(MemoryError):
        layer.merge("default")
    assert np.array_equal(layer.base_weight, w) and layer.merged_adapters == []


def test_set_adapter_while_merged_unmerges_first():
    batch = _batch()
    pm = get_peft_model(_base(), LoraConfig(r=2, target_modules=["query"], init_lora_weights=False))
    adapted = _logits(pm, batch)
    pm.add_adapter("other", LoraConfig(r=2, target_modules=["query"], init_lora_weights=False))
    pm.set_adapter("other")
    other = _logits(pm, batch)
    pm.set_adapter("default")
    pm.merge_adapter()
    with pytest.warns(UserWarning, match="Unmerging"):
        pm.set_adapter("other")
    assert all(not s.merged_adapters for s in pm.get_layer_status())
    assert _close(_logits(pm, batch), other)
    pm.set_adapter("default")
    assert _close(_logits(pm, batch), adapted)


def test_get_peft_model_twice_and_wrong_model():
    pm = get_peft_model(_base(), LoraConfig(target_modules=["query"]))
    with pytest.raises(ValueError, match="add_adapter"):
        get_peft_model(pm, LoraConfig(target_modules=["query"]))
    with pytest.raises(TypeError):
        get_peft_model(object(), LoraConfig(target_modules=["query"]))


# ------------------------------------------------------------------ bad configs

def test_target_matching_nothing_lists_module_names():
    base = _base()
    names = [n for n, _ in base.named_parameters()]
    with pytest.raises(ValueError) as info:
        get_peft_model(base, LoraConfig(target_modules=["nothing_like_this"]))
    message = str(info.value)
    assert "nothing_like_this" in message
    assert "bert.encoder.layer.0.attention.self.query" in message
    assert "bert.encoder.layer.1.output.dense" in message
    # the model is untouched
    assert [n for n, _ in base.named_parameters()] == names
    with pytest.raises(ValueError):
        get_peft_model(base, LoraConfig(target_modules=r".*no_such_module"))
    with pytest.raises(ValueError):
        get_peft_model(base, LoraConfig(target_modules=["query"], layers_to_transform=[7]))


@pytest.mark.parametrize("kwargs", [dict(r=0), dict(r=-2), dict(r=1.5), dict(lora_dropout=1.0),
                                    dict(lora_dropout=-0.1), dict(lora_dropout=2)],
                         ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_bad_hyper_parameters_raise_at_config(kwargs):
    with pytest.raises(ValueError):
        LoraConfig(target_modules=["query"], **kwargs)


@pytest.mark.parametrize("target", [["LayerNorm"], ["embeddings.LayerNorm"], r".*output\.LayerNorm",
                                    ["word_embeddings"]])
def test_targeting_non_linear_raises(target):
    base = _base()
    batch = _batch()
    before = _logits(base, batch)
    with pytest.raises(ValueError, match="Linear"):
        get_peft_model(base, LoraConfig(target_modules=target))
    assert all(not isinstance(m, peftcore.tuners.lora.layer.LoraLinear) for m in base.modules())
    np.testing.assert_array_equal(_logits(base, batch), before)


def test_fan_in_fan_out_is_switched_off_with_hf_peft_s_warning():
    """Our targets are Linear layers, stored (out, in): as HF PEFT does for nn.Linear, a
    fan_in_fan_out=True config warns and is applied (and saved) with False."""
    batch = _batch()
    peftcore.manual_seed(0)  # the same random LoRA weights for both
    plain = get_peft_model(_base(), LoraConfig(r=2, target_modules=["query"], init_lora_weights=False))
    peftcore.manual_seed(0)
    with pytest.warns(UserWarning, match="fan_in_fan_out is set to True.*Setting fan_in_fan_out to False"):
        flipped = get_peft_model(_base(), LoraConfig(r=2, target_modules=["query"],
                                                     init_lora_weights=False, fan_in_fan_out=True))
    assert flipped.peft_config["default"].fan_in_fan_out is False
    np.testing.assert_array_equal(_logits(flipped, batch), _logits(plain, batch))
