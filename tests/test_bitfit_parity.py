"""BitFit (peftcore's PeftType "BITFIT") against a torch bias-only baseline: the same
transformers model with every parameter frozen except the biases (all of them, LayerNorm's
included, or those of the named modules) and the classification head. Logits, every
trainable gradient, a 20-step AdamW run and the trainable parameter count must agree; the
adapter folder round-trips in peftcore.

BitFit leaves the forward unchanged: the comparisons first give every trainable tensor the
same random values on both sides, so the biases matter.
"""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import safetensors.numpy

import peftcore
from helpers import one_thread  # noqa: F401  (a fixture)
from parity import (MODEL_TYPES, assert_frozen_without_grad, batch, check_logits, close,
                    compare_grads, count_trainable_hf, grads_with_equal_loss, hf_load, hf_models,
                    pc_load, pc_logits, hf_logits, seeded_values, set_hf, set_pc, train_hf,
                    train_pc)  # noqa: F401  (hf_models: a fixture)
from peftcore import PeftModel, get_peft_model

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = {
    "all": dict(task_type="SEQ_CLS"),
    # only the biases of these modules (HF-style names: the module itself or a dotted suffix)
    "named": dict(task_type="SEQ_CLS", target_modules=["query", "value", "output.LayerNorm"]),
}
CASES = [(m, c) for m in MODEL_TYPES for c in CONFIGS]
ids_of = lambda case: f"{case[0]}-{case[1]}"  # noqa: E731
HEAD = "classifier."  # BERT's linear head and RoBERTa's two-layer head live under it


def _module_matches(module, targets):
    return any(module == t or module.endswith("." + t) for t in targets)


def _baseline_trains(name, kw):
    """Does the torch bias-only baseline train the transformers parameter `name`?"""
    if name.startswith(HEAD):
        return True
    if not name.endswith(".bias"):
        return False
    targets = kw.get("target_modules")
    return targets is None or _module_matches(name[: -len(".bias")], targets)


def _baseline(hf_models, model_type, config_name):
    model = hf_load(hf_models, model_type)
    for name, p in model.named_parameters():
        p.requires_grad_(_baseline_trains(name, CONFIGS[config_name]))
    return model


def _bitfit(hf_models, model_type, config_name):
    config = peftcore.BitFitConfig(**copy.deepcopy(CONFIGS[config_name]))
    return get_peft_model(pc_load(hf_models, model_type), config)


def _torch_name(name):
    """peftcore's PeftModel parameter name -> the transformers name it trains."""
    name = name.removeprefix("base_model.model.")
    return name.replace(".modules_to_save.default.", ".")


def _trainable_by_torch_name(pm):
    out = {}
    for name, p in pm.named_parameters():
        if p.requires_grad:
            assert _torch_name(name) not in out, name
            out[_torch_name(name)] = name
    return out


def _randomized(hf_models, model_type, config_name):
    """(baseline, bitfit, values): every trainable tensor set to the same seeded values."""
    theirs = _baseline(hf_models, model_type, config_name)
    ours = _bitfit(hf_models, model_type, config_name)
    values = {n: seeded_values(n, tuple(p.shape)) for n, p in theirs.named_parameters()
              if p.requires_grad}
    set_hf(theirs, values)
    names = _trainable_by_torch_name(ours)
    set_pc(ours, {names[n]: v for n, v in values.items()})
    return theirs, ours, values


# ------------------------------------------------------------------ which parameters train

@pytest.mark.parametrize("case", CASES, ids=ids_of)
def test_trains_exactly_the_baselines_parameters(hf_models, case, capsys):
    theirs = _baseline(hf_models, *case)
    ours = _bitfit(hf_models, *case)
    expected = sorted(n for n, p in theirs.named_parameters() if p.requires_grad)
    assert sorted(_trainable_by_torch_name(ours)) == expected
    n_trainable = count_trainable_hf(theirs)
    assert ours.get_nb_trainable_parameters()[0] == n_trainable
    # the count, independently: hidden-size biases per layer and module, plus the head
    H, I, L = 32, 64, 2
    if case[1] == "all":
        per_layer = 4 * H + I + H + 2 * H  # q k v attn.out, intermediate, output, 2 LayerNorms
        head = 3 * H + 3 if case[0] == "bert" else H * H + H + 3 * H + 3
        pooler = H if case[0] == "bert" else 0  # RoBERTa's SEQ_CLS model has no pooler
        assert n_trainable == H + L * per_layer + pooler + head  # embeddings' LayerNorm first
    ours.print_trainable_parameters()
    line = capsys.readouterr().out
    assert line.startswith(f"trainable params: {n_trainable:,} || all params: ")
    total = ours.get_nb_trainable_parameters()[1]
    assert line == (f"trainable params: {n_trainable:,} || all params: {total:,} || "
                    f"trainable%: {100 * n_trainable / total:.4f}\n")


# ------------------------------------------------------------------ forward and gradients

@pytest.mark.parametrize("case", CASES, ids=ids_of)
def test_logits_equal_the_baseline(hf_models, case):
    theirs, ours, _ = _randomized(hf_models, *case)
    b = batch(seed=3)
    check_logits(theirs, ours, b, hf_logits(hf_load(hf_models, case[0]), b))


@pytest.mark.parametrize("case", CASES, ids=ids_of)
def test_gradients_equal_the_baseline(hf_models, case):
    theirs, ours, _ = _randomized(hf_models, *case)
    g_t, g_o = grads_with_equal_loss(theirs, ours, batch(seed=5))
    skipped = compare_grads({_torch_name(n): g for n, g in g_o.items()}, g_t, rtol=1e-3)
    # only the key biases: the softmax over keys ignores a shift shared by all of them
    assert all(n.endswith("attention.self.key.bias") for n in skipped), skipped
    assert_frozen_without_grad(ours)


@pytest.mark.parametrize("case", CASES, ids=ids_of)
def test_adamw_run_matches_the_baseline(hf_models, case):
    theirs = _baseline(hf_models, *case)
    ours = _bitfit(hf_models, *case)
    losses_t = train_hf(theirs, steps=20)
    losses_o = train_pc(ours, steps=20)
    np.testing.assert_allclose(losses_o, losses_t, rtol=0, atol=1e-4)
    assert losses_t[-1] < losses_t[0] - 0.05
    b = batch(seed=99)
    close(pc_logits(ours, b), hf_logits(theirs, b), 1e-3, "logits after training")


# ------------------------------------------------------------------ files

@pytest.mark.parametrize("case", CASES, ids=ids_of)
def test_round_trip_in_peftcore(hf_models, case, tmp_path):
    theirs, ours, values = _randomized(hf_models, *case)
    b = batch(seed=7)
    expected = pc_logits(ours, b)
    ours.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json",
                                                           "adapter_model.safetensors"]
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "BITFIT" and config["task_type"] == "SEQ_CLS"
    assert config["inference_mode"] is True
    saved = safetensors.numpy.load_file(tmp_path / "adapter_model.safetensors")
    # keys: base_model.model.<module>.bias for the biases, the head under its own name
    assert sorted(saved) == sorted(f"base_model.model.{n}" for n in values)
    for name, value in values.items():
        np.testing.assert_array_equal(saved[f"base_model.model.{name}"], value, err_msg=name)

    loaded = PeftModel.from_pretrained(pc_load(hf_models, case[0]), tmp_path)
    np.testing.assert_array_equal(pc_logits(loaded, b), expected)
    assert loaded.get_nb_trainable_parameters()[0] == 0
    assert not any(p.requires_grad for p in loaded.parameters())
    trainable = PeftModel.from_pretrained(pc_load(hf_models, case[0]), tmp_path, is_trainable=True)
    assert trainable.get_nb_trainable_parameters() == ours.get_nb_trainable_parameters()
    np.testing.assert_array_equal(pc_logits(trainable, b), expected)
    # and a trained model saved again gives the same folder contents
    trainable.save_pretrained(tmp_path / "again")
    again = safetensors.numpy.load_file(tmp_path / "again" / "adapter_model.safetensors")
    assert sorted(again) == sorted(saved)
    for key in saved:
        np.testing.assert_array_equal(again[key], saved[key], err_msg=key)


def test_loading_leaves_untrained_biases_alone(hf_models, tmp_path):
    """A folder of named-module BitFit carries only those biases: every other bias of the
    model it is loaded into keeps its own value."""
    _, ours, values = _randomized(hf_models, "bert", "named")
    ours.save_pretrained(tmp_path)
    base = pc_load(hf_models, "bert")
    before = {n: np.array(p) for n, p in base.named_parameters()}
    loaded = PeftModel.from_pretrained(base, tmp_path)
    for name, p in loaded.named_parameters():
        plain = _torch_name(name)
        if plain in values and ".original_module." not in name:
            np.testing.assert_array_equal(p, values[plain], err_msg=name)
        elif plain in before and ".original_module." not in name:
            np.testing.assert_array_equal(p, before[plain], err_msg=name)
