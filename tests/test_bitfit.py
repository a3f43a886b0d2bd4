"""BitFit: only biases (and the modules_to_save head) train; each adapter is a set of bias
values, written into the model's shared bias tensors when it runs."""
from __future__ import annotations

import json

import numpy as np
import pytest

import peftcore
from helpers import (check_entries_by_finite_differences, one_thread,  # noqa: F401
                     random_batch, randomize_parameters)
from peftcore import BitFitConfig, PeftConfig, PeftModel, get_peft_model

CFG = dict(model_type="bert", vocab_size=40, hidden_size=16, num_hidden_layers=2,
           num_attention_heads=2, intermediate_size=32, max_position_embeddings=32,
           num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
PREFIX = "base_model.model."

pytestmark = pytest.mark.usefixtures("one_thread")


def _base(seed=0, model_type="bert"):
    model = peftcore.AutoModelForSequenceClassification.from_config(
        dict(CFG, model_type=model_type), seed=seed)
    return randomize_parameters(model, seed)


def _batch(B=3, T=6, seed=0):
    return random_batch(B, T, seed, low=3, pad=2)


def _logits(model, batch):
    ids, mask, _ = batch
    return model(ids, attention_mask=mask).logits


def _biases(model):
    return {n: np.array(p) for n, p in model.named_parameters() if n.endswith(".bias")}


def _set_biases(pm, seed):
    """Give the active adapter's trainable biases new values (as training would)."""
    rng = np.random.default_rng(seed)
    for name, p in pm.named_parameters():
        if p.requires_grad and name.endswith(".bias") and ".modules_to_save." not in name:
            p[...] = p + 0.5 * rng.standard_normal(p.shape)


def test_config_and_file(tmp_path):
    c = BitFitConfig(task_type="SEQ_CLS")
    assert c.to_dict() == {
        "task_type": "SEQ_CLS", "peft_type": "BITFIT", "auto_mapping": None, "peft_version": None,
        "base_model_name_or_path": None, "revision": None, "inference_mode": False,
        "target_modules": None, "exclude_modules": None, "modules_to_save": None}
    c.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == "BITFIT"
    assert PeftConfig.from_pretrained(tmp_path) == c


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_every_bias_and_the_head_train(model_type):
    pm = get_peft_model(_base(model_type=model_type), BitFitConfig(task_type="SEQ_CLS"))
    batch = _batch()
    pm(*batch[:1], attention_mask=batch[1], labels=batch[2])
    pm.backward()
    for name, p in pm.named_parameters():
        wanted = ".modules_to_save.default." in name or (
            name.endswith(".bias") and ".classifier." not in name)
        assert p.requires_grad == wanted, name
        if wanted:
            assert p.grad is not None and np.abs(p.grad).max() > 0, name
        else:
            assert p.grad is None, name
    names = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert f"{PREFIX}{model_type}.embeddings.LayerNorm.bias" in names
    assert f"{PREFIX}{model_type}.encoder.layer.0.attention.self.query.bias" in names
    trainable = sum(p.size for n, p in pm.named_parameters() if p.requires_grad)
    assert pm.get_nb_trainable_parameters()[0] == trainable
    assert pm.get_model_status().adapter_model_type == "BitFitModel"
    assert pm.get_model_status().peft_types == {"default": "BITFIT"}


def test_named_modules_only():
    pm = get_peft_model(_base(), BitFitConfig(target_modules=["query", "LayerNorm"]))
    names = sorted(n[len(PREFIX):] for n, p in pm.named_parameters() if p.requires_grad)
    assert names == sorted(["bert.embeddings.LayerNorm.bias"] + [
        f"bert.encoder.layer.{i}.{m}.bias" for i in range(2)
        for m in ["attention.self.query", "attention.output.LayerNorm", "output.LayerNorm"]])
    regex = get_peft_model(_base(), BitFitConfig(target_modules=r".*layer\.1\..*dense"))
    names = sorted(n[len(PREFIX):] for n, p in regex.named_parameters() if p.requires_grad)
    assert names == [f"bert.encoder.layer.1.{m}.bias" for m in
                     ["attention.output.dense", "intermediate.dense", "output.dense"]]


def test_grads_by_finite_differences():
    pm = get_peft_model(_base(), BitFitConfig(task_type="SEQ_CLS"))
    ids, mask, labels = _batch(seed=2)

    def loss():
        return float(pm(ids, attention_mask=mask, labels=labels).loss)

    pm(ids, attention_mask=mask, labels=labels)
    pm.backward()
    params = dict(pm.named_parameters())
    for name in [f"{PREFIX}bert.encoder.layer.0.attention.self.value.bias",
                 f"{PREFIX}bert.encoder.layer.1.output.LayerNorm.bias",
                 f"{PREFIX}bert.embeddings.LayerNorm.bias"]:
        p, g = params[name], params[name].grad.astype(np.float64)
        entries = [(int(i),) for i in np.argsort(-np.abs(g))[:3]]
        check_entries_by_finite_differences(p, g, entries, loss, 1e-2, 1e-2, 3e-5, name)


def test_adapters_switch_restore_values_exactly():
    base = _base()
    batch = _batch()
    bare_logits, bare_biases = _logits(base, batch), _biases(base)
    pm = get_peft_model(base, BitFitConfig(task_type="SEQ_CLS"))
    _set_biases(pm, 1)
    default_biases = _biases(pm.get_base_model())
    default_logits = _logits(pm, batch)
    pm.add_adapter("other", BitFitConfig(target_modules=["value", "intermediate.dense"]))
    # a new adapter is frozen, starts from the original values and does not run yet
    np.testing.assert_array_equal(_logits(pm, batch), default_logits)
    pm.set_adapter("other")
    trainable = sorted(n for n, p in pm.named_parameters() if p.requires_grad)
    assert len([n for n in trainable if n.endswith(".bias") and "modules_to_save" not in n]) == 4
    np.testing.assert_array_equal(_biases(pm.get_base_model())[
        "bert.encoder.layer.0.attention.self.query.bias"],
        bare_biases["bert.encoder.layer.0.attention.self.query.bias"])
    _set_biases(pm, 2)
    other_biases = _biases(pm.get_base_model())
    other_logits = _logits(pm, batch)
    assert np.abs(other_logits - default_logits).max() > 1e-3
    for _ in range(2):
        pm.set_adapter("default")
        for name, value in _biases(pm.get_base_model()).items():
            if ".modules_to_save." not in name:
                np.testing.assert_array_equal(value, default_biases[name], err_msg=name)
        np.testing.assert_array_equal(_logits(pm, batch), default_logits)
        pm.set_adapter("other")
        for name, value in _biases(pm.get_base_model()).items():
            if ".modules_to_save." not in name:
                np.testing.assert_array_equal(value, other_biases[name], err_msg=name)
        np.testing.assert_array_equal(_logits(pm, batch), other_logits)
    with pm.disable_adapter():
        np.testing.assert_array_equal(_logits(pm, batch), bare_logits)
        assert not any(p.requires_grad for _, p in pm.named_parameters())
    np.testing.assert_array_equal(_logits(pm, batch), other_logits)
    pm.set_adapter("default")
    pm.delete_adapter("other")
    assert list(pm.peft_config) == ["default"]
    np.testing.assert_array_equal(_logits(pm, batch), default_logits)
    bare = pm.unload()
    np.testing.assert_array_equal(_logits(bare, batch), bare_logits)
    for name, value in _biases(bare).items():
        np.testing.assert_array_equal(value, bare_biases[name], err_msg=name)


def test_merge_and_unload_keeps_the_active_values():
    pm = get_peft_model(_base(), BitFitConfig(task_type="SEQ_CLS"))
    _set_biases(pm, 3)
    batch = _batch()
    want = _logits(pm, batch)
    merged = pm.merge_and_unload()
    np.testing.assert_array_equal(_logits(merged, batch), want)
    assert sorted(n for n, _ in merged.named_parameters()) == sorted(
        n for n, _ in _base().named_parameters())
    get_peft_model(merged, BitFitConfig())  # a bare model again


def test_save_load_state_dict_round_trip(tmp_path):
    pm = get_peft_model(_base(), BitFitConfig(task_type="SEQ_CLS"))
    _set_biases(pm, 4)
    pm.add_adapter("second", BitFitConfig(target_modules=["key"]))
    pm.set_adapter("second")
    _set_biases(pm, 5)
    pm.set_adapter("default")
    batch = _batch()
    want = {"default": _logits(pm, batch)}
    pm.set_adapter("second")
    want["second"] = _logits(pm, batch)
    state = pm.adapter_state_dict("default")   # of the adapter not running
    assert all(k.startswith(PREFIX) for k in state)
    assert f"{PREFIX}bert.encoder.layer.0.attention.self.key.bias" in state
    assert f"{PREFIX}classifier.weight" in state and f"{PREFIX}classifier.bias" in state
    assert len([k for k in state if k.endswith(".bias")]) == 2 * 8 + 2 + 1
    second = pm.adapter_state_dict("second")
    assert sorted(second) == sorted([f"{PREFIX}bert.encoder.layer.{i}.attention.self.key.bias"
                                     for i in range(2)] + [f"{PREFIX}classifier.weight",
                                                           f"{PREFIX}classifier.bias"])
    pm.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == "BITFIT"
    assert (tmp_path / "second" / "adapter_model.safetensors").is_file()
    loaded = PeftModel.from_pretrained(_base(), tmp_path)
    np.testing.assert_array_equal(_logits(loaded, batch), want["default"])
    loaded.load_adapter(tmp_path / "second", "second")
    np.testing.assert_array_equal(_logits(loaded, batch), want["default"])
    loaded.set_adapter("second")
    np.testing.assert_array_equal(_logits(loaded, batch), want["second"])
    for name in ("default", "second"):
        ours, theirs = loaded.adapter_state_dict(name), pm.adapter_state_dict(name)
        assert sorted(ours) == sorted(theirs)
        for key in ours:
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


def test_target_without_bias_is_refused_and_changes_nothing():
    base = _base()
    batch = _batch()
    before = _logits(base, batch)
    with pytest.raises(ValueError, match=r"word_embeddings.*target_modules=\{'word_embeddings'\}.* has no bias"):
        get_peft_model(base, BitFitConfig(target_modules=["word_embeddings"]))
    with pytest.raises(ValueError, match=r"Target modules \{'nothing'\} not found"):
        get_peft_model(base, BitFitConfig(target_modules=["nothing"]))
    assert base.adapter_owner is None and all(p.requires_grad for _, p in base.named_parameters())
    np.testing.assert_array_equal(_logits(base, batch), before)
    pm = get_peft_model(base, BitFitConfig())
    with pytest.raises(ValueError, match="word_embeddings"):
        pm.add_adapter("x", BitFitConfig(target_modules=["word_embeddings"]))
    assert list(pm.peft_config) == ["default"]
