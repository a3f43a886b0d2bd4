"""The tuner protocol: the registry, generic PeftModel code, and refusals that leave the
model as it was (bad configs, files that do not fit, one method's file loaded as another)."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import peftcore
from helpers import one_thread, randomize_parameters  # noqa: F401
from peftcore import (BitFitConfig, IA3Config, LoraConfig, PeftModel, PeftType, get_peft_model)
from peftcore.tuners.registry import registered
from peftcore.utils.io import save_adapter_files

PACKAGE = Path(peftcore.__file__).resolve().parent
METHOD_WORDS = ("lora", "ia3", "bitfit", "(ia)", "bottleneck", "adapterhub", "seqbn", "unipelt")

CFG = dict(model_type="bert", vocab_size=40, hidden_size=16, num_hidden_layers=2,
           num_attention_heads=2, intermediate_size=32, max_position_embeddings=32,
           num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
PREFIX = "base_model.model."

pytestmark = pytest.mark.usefixtures("one_thread")


def _base(seed=0):
    model = peftcore.AutoModelForSequenceClassification.from_config(CFG, seed=seed)
    return randomize_parameters(model, seed)


def _batch():
    rng = np.random.default_rng(0)
    return rng.integers(3, 40, (2, 5))


def _snapshot(model):
    return ([(n, bool(p.requires_grad), np.array(p, copy=True)) for n, p in model.named_parameters()],
            [(n, type(m).__name__) for n, m in model.named_modules()], model(_batch()).logits)


def _assert_unchanged(model, snap):
    params, modules, logits = _snapshot(model)
    assert [(n, g) for n, g, _ in params] == [(n, g) for n, g, _ in snap[0]]
    for (n, _, a), (_, _, b) in zip(params, snap[0]):
        np.testing.assert_array_equal(a, b, err_msg=n)
    assert modules == snap[1]
    np.testing.assert_array_equal(logits, snap[2])


def _ia3_folder(folder, model, vector_shape=None):
    """An (IA)³ adapter as HF PEFT writes it for bert's default targets, made by hand."""
    config = IA3Config(task_type="SEQ_CLS", target_modules=["key", "value", "output.dense"],
                       feedforward_modules=["output.dense"], inference_mode=True)
    tensors = {}
    for name, lin in model.linear_modules():
        if name.endswith(("key", "value")):
            tensors[f"{PREFIX}{name}.ia3_l"] = np.full((lin.out_features, 1), 1.5, np.float32)
        elif name.endswith("output.dense"):
            tensors[f"{PREFIX}{name}.ia3_l"] = np.full((1, lin.in_features), 0.5, np.float32)
    tensors[f"{PREFIX}classifier.weight"] = np.zeros((3, 16), np.float32)
    tensors[f"{PREFIX}classifier.bias"] = np.zeros(3, np.float32)
    if vector_shape is not None:
        key = f"{PREFIX}bert.encoder.layer.1.attention.self.value.ia3_l"
        tensors[key] = np.ones(vector_shape, np.float32)
    save_adapter_files(folder, config.to_dict(), tensors)
    return folder


def _lora_folder(folder):
    pm = get_peft_model(_base(), LoraConfig(r=2, target_modules=["query", "value"],
                                            task_type="SEQ_CLS"))
    pm.save_pretrained(folder)
    return folder


def _bitfit_folder(folder):
    get_peft_model(_base(), BitFitConfig(task_type="SEQ_CLS")).save_pretrained(folder)
    return folder


# ------------------------------------------------------------------ registry and layout

def test_registry_maps_each_method_to_its_config_and_tuner():
    table = registered()
    assert {k: (c.__name__, t.__name__) for k, (c, t) in table.items()} == {
        PeftType.LORA: ("LoraConfig", "LoraModel"), PeftType.IA3: ("IA3Config", "IA3Model"),
        PeftType.BITFIT: ("BitFitConfig", "BitFitModel"),
        PeftType.BOTTLENECK: ("BnConfig", "BottleneckModel"),
        PeftType.UNIPELT: ("ConfigUnion", "UniPELTModel"),
        PeftType.PROMPT_TUNING: ("PromptTuningConfig", "PromptLearningModel"),
        PeftType.P_TUNING: ("PromptEncoderConfig", "PromptLearningModel"),
        PeftType.PREFIX_TUNING: ("PrefixTuningConfig", "PromptLearningModel")}
    assert PeftType("BITFIT") is PeftType.BITFIT
    for name in ("IA3Config", "BitFitConfig", "LoraConfig", "BnConfig", "SeqBnConfig",
                 "DoubleSeqBnConfig"):
        assert name in peftcore.__all__ and hasattr(peftcore, name)


@pytest.mark.parametrize("path", ["peft_model.py"] + sorted(
    str(p.relative_to(PACKAGE)) for p in (PACKAGE / "models").glob("*.py")))
def test_generic_code_names_no_method(path):
    text = (PACKAGE / path).read_text().lower()
    found = [w for w in METHOD_WORDS if w in text]
    assert not found, f"{path} names {found}"


def test_config_does_not_import_the_tuners():
    tree = ast.parse((PACKAGE / "config.py").read_text())
    imported = [getattr(node, "module", None) or "" for node in ast.walk(tree)
                if isinstance(node, (ast.Import, ast.ImportFrom))]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names]
    assert not [m for m in imported if "tuners" in m], imported


def test_lora_layer_and_wrapper_share_the_layer_protocol():
    from peftcore.tuners.tuners_utils import BaseTuner, BaseTunerLayer

    pm = get_peft_model(_base(), LoraConfig(r=2, target_modules=["query"], task_type="SEQ_CLS"))
    assert isinstance(pm.base_model, BaseTuner)
    layers = pm.base_model.all_layers()
    assert layers and all(isinstance(layer, BaseTunerLayer) for _, layer in layers)
    assert [type(layer).__name__ for _, layer in layers] == ["LoraLinear"] * 2 + ["ModulesToSaveWrapper"]
    assert [n for n, _ in pm.base_model.lora_layers()] == [n for n, _ in layers[:2]]


# ------------------------------------------------------------------ bad configs

def test_feedforward_not_in_targets_after_construction_is_refused():
    base = _base()
    snap = _snapshot(base)
    config = IA3Config(target_modules=["key"], feedforward_modules=["key"])
    config.feedforward_modules = {"intermediate.dense"}
    with pytest.raises(ValueError, match=r"feedforward_modules=\['intermediate.dense'\].*"
                                         r"target_modules=\['key'\]"):
        get_peft_model(base, config)
    _assert_unchanged(base, snap)


@pytest.mark.parametrize("config", [
    IA3Config(target_modules=["nothing"], feedforward_modules=[]),
    IA3Config(target_modules=r"bert\..*\.nothing", feedforward_modules=[]),
    LoraConfig(target_modules=["nothing"]),
    BitFitConfig(target_modules=["nothing"]),
], ids=["ia3", "ia3-regex", "lora", "bitfit"])
def test_a_target_matching_no_module_is_refused(config):
    base = _base()
    snap = _snapshot(base)
    with pytest.raises(ValueError, match=r"Target modules .*nothing.* not found"):
        get_peft_model(base, config)
    _assert_unchanged(base, snap)
    assert base.adapter_owner is None


def test_an_ia3_target_that_is_not_linear_is_refused():
    base = _base()
    snap = _snapshot(base)
    with pytest.raises(ValueError, match=r"LayerNorm.*not supported"):
        get_peft_model(base, IA3Config(target_modules=["LayerNorm"], feedforward_modules=[]))
    _assert_unchanged(base, snap)


def test_a_config_of_an_unimplemented_method_is_refused():
    with pytest.raises(TypeError, match="peft_config must be an adapter config"):
        get_peft_model(_base(), {"peft_type": "LORA"})
    with pytest.raises(ValueError, match="PeftConfig"):
        get_peft_model(_base(), peftcore.PeftConfig(peft_type="LOHA"))


# ------------------------------------------------------------------ files that do not fit

@pytest.mark.parametrize("shape", [(16, 2), (1, 16), (17, 1)])
def test_an_ia3_file_whose_vectors_do_not_fit_is_refused(tmp_path, shape):
    base = _base()
    folder = _ia3_folder(tmp_path / "ia3", base, vector_shape=shape)
    snap = _snapshot(base)
    with pytest.raises(ValueError, match=r"layer.1.attention.self.value.ia3_l.*shape "
                                         + repr(shape).replace("(", r"\(").replace(")", r"\)")
                                         + r".*needs \(16, 1\)"):
        PeftModel.from_pretrained(base, folder)
    _assert_unchanged(base, snap)
    assert base.adapter_owner is None


def test_an_ia3_file_lacking_a_vector_is_refused(tmp_path):
    base = _base()
    folder = _ia3_folder(tmp_path / "ia3", base)
    from peftcore.utils.io import read_safetensors
    import json
    tensors = read_safetensors(folder / "adapter_model.safetensors")
    del tensors[f"{PREFIX}bert.encoder.layer.0.output.dense.ia3_l"]
    config = json.loads((folder / "adapter_config.json").read_text())
    save_adapter_files(folder, config, tensors)
    snap = _snapshot(base)
    with pytest.raises(ValueError, match=r"lacks tensors.*layer.0.output.dense.ia3_l"):
        PeftModel.from_pretrained(base, folder)
    _assert_unchanged(base, snap)


# ------------------------------------------------------------------ one method's file as another

def test_ia3_file_with_a_lora_config_is_refused(tmp_path):
    base = _base()
    folder = _ia3_folder(tmp_path / "ia3", base)
    snap = _snapshot(base)
    with pytest.raises(ValueError, match=r"config is a LoraConfig.*'LORA'.*ia3.*is 'IA3'"):
        PeftModel.from_pretrained(base, folder, config=LoraConfig(target_modules=["key"]))
    _assert_unchanged(base, snap)


def test_lora_file_with_an_ia3_config_is_refused(tmp_path):
    folder = _lora_folder(tmp_path / "lora")
    base = _base()
    snap = _snapshot(base)
    with pytest.raises(ValueError, match=r"config is a IA3Config.*'IA3'.*is 'LORA'"):
        PeftModel.from_pretrained(base, folder, config=IA3Config())
    _assert_unchanged(base, snap)


def test_ia3_file_into_a_lora_model_is_refused(tmp_path):
    pm = get_peft_model(_base(), LoraConfig(r=2, target_modules=["query"], task_type="SEQ_CLS"))
    folder = _ia3_folder(tmp_path / "ia3", pm.get_base_model())
    snap = _snapshot(pm)
    with pytest.raises(ValueError, match=r"Cannot combine adapters with different peft types. "
                                         r"Found LORA and IA3 \(.*ia3\)"):
        pm.load_adapter(folder, "other")
    with pytest.raises(ValueError, match="Found LORA and IA3"):
        pm.add_adapter("other", IA3Config())
    _assert_unchanged(pm, snap)
    assert list(pm.peft_config) == ["default"]


@pytest.mark.parametrize("make", [_lora_folder, _bitfit_folder], ids=["lora", "bitfit"])
def test_another_methods_file_into_a_bitfit_model_is_refused(tmp_path, make):
    folder = make(tmp_path / "saved")
    pm = get_peft_model(_base(), BitFitConfig(task_type="SEQ_CLS"))
    snap = _snapshot(pm)
    if make is _bitfit_folder:  # the same method loads
        pm.load_adapter(folder, "other")
        assert list(pm.peft_config) == ["default", "other"]
        return
    with pytest.raises(ValueError, match="Found BITFIT and LORA"):
        pm.load_adapter(folder, "other")
    with pytest.raises(ValueError, match="Found BITFIT and LORA"):
        pm.add_adapter("other", LoraConfig(target_modules=["query"]))
    _assert_unchanged(pm, snap)


def test_lora_file_into_an_ia3_model_is_refused(tmp_path):
    folder = _lora_folder(tmp_path / "lora")
    pm = get_peft_model(_base(), IA3Config(task_type="SEQ_CLS"))
    snap = _snapshot(pm)
    with pytest.raises(ValueError, match="Found IA3 and LORA"):
        pm.load_adapter(folder, "other")
    _assert_unchanged(pm, snap)


def test_hand_made_ia3_file_loads(tmp_path):
    """The HF layout made by hand loads, and its vectors land where their keys say."""
    base = _base()
    folder = _ia3_folder(tmp_path / "ia3", base)
    pm = PeftModel.from_pretrained(base, folder)
    layer = pm.get_base_model().get_submodule("bert.encoder.layer.0.attention.self.key")
    np.testing.assert_array_equal(layer.vector("default"), 1.5)
    layer = pm.get_base_model().get_submodule("bert.encoder.layer.0.attention.output.dense")
    assert layer.is_feedforward
    np.testing.assert_array_equal(layer.vector("default"), 0.5)
