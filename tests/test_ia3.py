"""(IA)³ through the engine, checked against NumPy references (no torch needed).

The reference for the forward is the bare model with every targeted weight merged in
float64: a feedforward layer scales its input, W' = W·diag(l) with l of shape (1, in); any
other layer scales its output, W' = diag(l)·W and b' = l⊙b with l of shape (out, 1). The
reference for the gradients is the chain rule through those merged weights (dL/dl from
the engine's dL/dW' and dL/db' of the reference), plus float64 central differences.

The numeric tests need the engine's set_adapters() (sites "in"/"out" of method "ia3").
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import peftcore
from helpers import check_entries_by_finite_differences, one_thread, randomize_parameters  # noqa: F401,E501
from peftcore import IA3Config, PeftConfig, PeftModel, get_peft_model

CFG = dict(model_type="bert", vocab_size=40, hidden_size=32, num_hidden_layers=2,
           num_attention_heads=4, intermediate_size=64, max_position_embeddings=48,
           num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
ALL_LINEARS = ["query", "key", "value", "attention.output.dense", "intermediate.dense",
               "output.dense"]
PREFIX = "base_model.model."

pytestmark = pytest.mark.usefixtures("one_thread")


def _base(seed=0, head=True, **overrides):
    cls = peftcore.AutoModelForSequenceClassification if head else peftcore.AutoModel
    return randomize_parameters(cls.from_config(dict(CFG, **overrides), seed=seed), seed)


def _batch(B=3, T=6, seed=0, num_labels=3):
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, 40, (B, T))
    mask = np.ones_like(ids)
    mask[-1, T - 2:] = 0
    return ids, mask, rng.integers(0, num_labels, B)


def _vectors(pm, adapter=None):
    adapter = adapter or pm.active_adapter
    return {name: layer for name, layer in pm.base_model.tuner_layers()
            if adapter in layer.adapter_names()}


def _peft(config, seed=0, vec_seed=1, head=True, **overrides):
    """A random base model with every (IA)³ vector set to 1 + N(0, 0.3)."""
    pm = get_peft_model(_base(seed, head=head, **overrides), config)
    _randomize_vectors(pm, vec_seed)
    return pm


def _randomize_vectors(pm, seed, adapter=None):
    rng = np.random.default_rng(seed)
    for layer in _vectors(pm, adapter).values():
        v = layer.vector(adapter or pm.active_adapter)
        v[...] = 1 + 0.3 * rng.standard_normal(v.shape)


def _merged_reference(pm, seed=0, head=True, adapter=None, **overrides):
    """The bare model (same seed) with each (IA)³ layer of `pm` merged in float64.
    Returns (model, {name: (l, is_feedforward, W, b)}) with the unmerged W and b."""
    adapter = adapter or pm.active_adapter
    ref = _base(seed, head=head, **overrides)
    parts = {}
    for name, layer in _vectors(pm, adapter).items():
        l = np.asarray(layer.vector(adapter), np.float64)
        lin = ref.get_submodule(name)
        W, b = np.asarray(lin.weight, np.float64), np.asarray(lin.bias, np.float64)
        if layer.is_feedforward:
            lin.weight[...] = (W * l).astype(np.float32)  # W·diag(l), l (1, in)
        else:
            lin.weight[...] = (l * W).astype(np.float32)  # diag(l)·W, l (out, 1)
            lin.bias[...] = (l[:, 0] * b).astype(np.float32)
        parts[name] = (l, layer.is_feedforward, W, b)
    return ref, parts


def _assert_close(actual, expected, rtol, what):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    err = np.abs(actual - expected).max()
    scale = max(np.abs(expected).max(), 1e-12)
    assert err <= rtol * scale, f"{what}: max error {err:.3g} vs scale {scale:.3g}"


# ------------------------------------------------------------------ config (no engine needed)

def test_config_fields_defaults_and_json(tmp_path):
    c = IA3Config()
    assert c.to_dict() == {
        "task_type": None, "peft_type": "IA3", "auto_mapping": None, "peft_version": None,
        "base_model_name_or_path": None, "revision": None, "inference_mode": False,
        "target_modules": None, "exclude_modules": None, "feedforward_modules": None,
        "fan_in_fan_out": False, "modules_to_save": None, "init_ia3_weights": True}
    c = IA3Config(target_modules=["key", "value", "output.dense"], feedforward_modules=["output.dense"],
                  task_type="SEQ_CLS")
    assert c.target_modules == {"key", "value", "output.dense"}  # lists become sets, as HF
    c.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "IA3" and saved["feedforward_modules"] == ["output.dense"]
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert type(loaded) is IA3Config and loaded == c


def test_feedforward_modules_must_be_a_subset_of_target_modules():
    with pytest.raises(ValueError, match=r"feedforward_modules.*\['intermediate.dense'\].*"
                                         r"target_modules=\['key', 'value'\]"):
        IA3Config(target_modules=["key", "value"], feedforward_modules=["intermediate.dense"])
    IA3Config(target_modules=".*key", feedforward_modules=["other"])  # a regex is not checked, as HF


def test_hf_file_layout_loads(tmp_path):
    """adapter_config.json as HF PEFT 0.21 writes it (sets as lists, peft_version)."""
    (tmp_path / "adapter_config.json").write_text(json.dumps({
        "task_type": "SEQ_CLS", "peft_type": "IA3", "auto_mapping": None,
        "peft_version": "0.21.2", "base_model_name_or_path": None, "revision": None,
        "inference_mode": True, "target_modules": ["output.dense", "value", "key"],
        "exclude_modules": None, "feedforward_modules": ["output.dense"],
        "fan_in_fan_out": False, "modules_to_save": ["classifier", "score"],
        "init_ia3_weights": True}))
    c = PeftConfig.from_pretrained(tmp_path)
    assert isinstance(c, IA3Config) and c.feedforward_modules == {"output.dense"}
    assert c.inference_mode is True and c.peft_version == "0.21.2"


# ------------------------------------------------------------------ structure

def test_default_targets_names_and_feedforward_as_hf():
    """bert's defaults: key, value, output.dense; "output.dense" is feedforward by plain
    suffix, so attention.output.dense scales its input as well as the FFN's output.dense."""
    pm = get_peft_model(_base(), IA3Config(task_type="SEQ_CLS"))
    layers = dict(pm.base_model.tuner_layers())
    assert sorted(layers) == sorted(f"bert.encoder.layer.{i}.{n}" for i in range(2) for n in
                                    ["attention.self.key", "attention.self.value",
                                     "attention.output.dense", "output.dense"])
    for name, layer in layers.items():
        ff = name.endswith("output.dense")
        assert layer.is_feedforward == ff, name
        assert layer.vector("default").shape == ((1, layer.in_features) if ff else (layer.out_features, 1))
        np.testing.assert_array_equal(layer.vector("default"), 1.0)
    names = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert f"{PREFIX}bert.encoder.layer.0.attention.self.key.ia3_l.default" in names
    assert f"{PREFIX}bert.encoder.layer.0.attention.self.key.base_layer.weight" in dict(pm.named_parameters())
    assert pm.get_model_status().adapter_model_type == "IA3Model"
    status = pm.get_layer_status()
    # HF PEFT's ia3.Linear keeps torch's repr, so HF reports module_type "Linear"
    assert [s.module_type for s in status] == ["Linear"] * 8 + ["ModulesToSaveWrapper"]
    assert status[0].name == "model.bert.encoder.layer.0.attention.self.key"
    assert "(ia3_l): ParameterDict(  (default): Parameter containing: [torch.FloatTensor of size 32x1])" \
        in repr(pm)


def test_init_ones_leaves_the_model_unchanged():
    base = _base()
    ids, mask, _ = _batch()
    bare = base(ids, attention_mask=mask).logits
    pm = get_peft_model(base, IA3Config(target_modules=ALL_LINEARS,
                                        feedforward_modules=["intermediate.dense"]))
    np.testing.assert_allclose(pm(ids, attention_mask=mask).logits, bare, rtol=1e-6, atol=1e-6)


def test_print_trainable_parameters_as_hf(capsys):
    pm = get_peft_model(_base(), IA3Config(task_type="SEQ_CLS"))
    # per layer: key, value (32 x 1 each), attention.output.dense (1 x 32), output.dense
    # (1 x 64); the classifier copy 3 x 32 + 3
    trainable = 2 * (32 + 32 + 32 + 64) + 3 * 32 + 3
    total = sum(p.size for _, p in pm.named_parameters())
    assert pm.get_nb_trainable_parameters() == (trainable, total)
    pm.print_trainable_parameters()
    assert capsys.readouterr().out.strip() == \
        f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"


# ------------------------------------------------------------------ forward and gradients

@pytest.mark.parametrize("mode", ["eval", "train", "no_grad"])
@pytest.mark.parametrize("targets,ff", [(["key", "value", "output.dense"], ["output.dense"]),
                                        (ALL_LINEARS, ["intermediate.dense", "query"]),
                                        (["query"], [])])
def test_forward_equals_numpy_merged_weights(mode, targets, ff):
    pm = _peft(IA3Config(target_modules=targets, feedforward_modules=ff))
    ref, parts = _merged_reference(pm)
    assert any(f for _, f, _, _ in parts.values()) == bool(ff)
    ids, mask, _ = _batch(B=4, T=9)
    if mode == "train":
        pm.train(), ref.train()
    want = ref(ids, attention_mask=mask).logits
    if mode == "no_grad":
        with peftcore.no_grad():
            ours = pm(ids, attention_mask=mask).logits
    else:
        ours = pm(ids, attention_mask=mask).logits
    _assert_close(ours, want, 1e-5, "logits")
    bare = _base()(ids, attention_mask=mask).logits
    assert np.abs(ours - bare).max() > 1e-2  # the vectors really act


def test_forward_automodel():
    pm = _peft(IA3Config(target_modules=["value", "intermediate.dense"],
                         feedforward_modules=["intermediate.dense"]), head=False)
    ref, _ = _merged_reference(pm, head=False)
    ids, mask, _ = _batch()
    ours, want = pm(ids, attention_mask=mask), ref(ids, attention_mask=mask)
    _assert_close(ours.last_hidden_state, want.last_hidden_state, 1e-5, "hidden")
    _assert_close(ours.pooler_output, want.pooler_output, 1e-5, "pooler")


def test_grads_by_the_chain_rule():
    pm = _peft(IA3Config(target_modules=ALL_LINEARS, task_type="SEQ_CLS",
                         feedforward_modules=["intermediate.dense", "attention.output.dense"]))
    ref, parts = _merged_reference(pm)
    ids, mask, labels = _batch(B=4, T=7, seed=3)
    _assert_close(pm(ids, attention_mask=mask, labels=labels).logits,
                  ref(ids, attention_mask=mask, labels=labels).logits, 1e-5, "logits")
    pm.backward()
    wanted = {f"{n}.weight" for n in parts} | {f"{n}.bias" for n in parts}
    for name, p in ref.named_parameters():
        p.requires_grad = name in wanted
    ref.backward()
    for name, (l, ff, W, b) in parts.items():
        lin = ref.get_submodule(name)
        GW, Gb = lin.weight.grad.astype(np.float64), lin.bias.grad.astype(np.float64)
        if ff:    # W' = W·diag(l): dL/dl_j = Σ_i G[i, j]·W[i, j]
            want = (GW * W).sum(axis=0, keepdims=True)
        else:     # W' = diag(l)·W, b' = l⊙b: dL/dl_i = Σ_j G[i, j]·W[i, j] + Gb[i]·b[i]
            want = ((GW * W).sum(axis=1) + Gb * b)[:, None]
        got = dict(pm.named_parameters())[f"{PREFIX}{name}.ia3_l.default"].grad
        _assert_close(got, want, 1e-4, f"{name} dl")


def test_grads_by_finite_differences():
    pm = _peft(IA3Config(target_modules=["key", "value", "intermediate.dense", "output.dense"],
                         feedforward_modules=["output.dense"], task_type="SEQ_CLS"))
    ids, mask, labels = _batch(B=3, T=6, seed=2)

    def loss():
        return float(pm(ids, attention_mask=mask, labels=labels).loss)

    pm(ids, attention_mask=mask, labels=labels)
    pm.backward()
    params = dict(pm.named_parameters())
    names = [n for n, p in params.items() if p.requires_grad and ".layer.0." in n and ".ia3_l." in n]
    names.append(f"{PREFIX}classifier.modules_to_save.default.weight")
    # key, value, intermediate.dense, and output.dense in both places it ends a name
    assert len(names) == 6
    rng = np.random.default_rng(0)
    for name in names:
        p, g = params[name], params[name].grad.astype(np.float64)
        assert np.abs(g).max() > 1e-4, name
        entries = [np.unravel_index(i, g.shape) for i in np.argsort(-np.abs(g).ravel())[:3]]
        entries.append(tuple(int(rng.integers(k)) for k in g.shape))
        check_entries_by_finite_differences(p, g, entries, loss, 1e-2, 1e-2, 3e-5, name)


def test_only_vectors_and_head_train():
    pm = _peft(IA3Config(task_type="SEQ_CLS"))
    ids, mask, labels = _batch()
    pm(ids, attention_mask=mask, labels=labels)
    pm.backward()
    for name, p in pm.named_parameters():
        adapter = ".ia3_l.default" in name or ".modules_to_save.default." in name
        assert p.requires_grad == adapter, name
        assert (p.grad is not None and np.abs(p.grad).max() > 0) if adapter else p.grad is None, name


# ------------------------------------------------------------------ merging

def test_merge_unmerge_and_merge_and_unload():
    pm = _peft(IA3Config(task_type="SEQ_CLS", target_modules=ALL_LINEARS,
                         feedforward_modules=["intermediate.dense"]))
    ref, parts = _merged_reference(pm)
    ids, mask, _ = _batch()
    want = ref(ids, attention_mask=mask).logits
    before = {n: (np.array(pm.get_base_model().get_submodule(n).base_layer.weight),
                  np.array(pm.get_base_model().get_submodule(n).base_layer.bias)) for n in parts}
    pm.merge_adapter()
    for name, (l, ff, W, b) in parts.items():
        lin = pm.get_base_model().get_submodule(name).base_layer
        np.testing.assert_array_equal(lin.weight, (W.astype(np.float32) * l.astype(np.float32)))
        np.testing.assert_array_equal(lin.bias, b.astype(np.float32) if ff else
                                      b.astype(np.float32) * l[:, 0].astype(np.float32))
    assert all(s.merged_adapters == ["default"] for s in pm.get_layer_status()
               if s.module_type == "Linear")
    _assert_close(pm(ids, attention_mask=mask).logits, want, 1e-5, "merged")
    with pytest.warns(UserWarning, match=r"Unmerge result can be inaccurate for \(IA\)\^3."):
        pm.unmerge_adapter()
    for name, (w0, b0) in before.items():
        lin = pm.get_base_model().get_submodule(name).base_layer
        np.testing.assert_allclose(lin.weight, w0, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(lin.bias, b0, rtol=1e-6, atol=1e-7)
    _assert_close(pm(ids, attention_mask=mask).logits, want, 1e-5, "unmerged")
    merged = pm.merge_and_unload()
    assert type(merged).__name__ == "BertForSequenceClassification"
    assert not any(".ia3_l" in n or ".base_layer." in n for n, _ in merged.named_parameters())
    _assert_close(merged(ids, attention_mask=mask).logits, want, 1e-5, "merge_and_unload")


def test_unload_restores_the_bare_model():
    base = _base()
    ids, mask, _ = _batch()
    bare = base(ids, attention_mask=mask).logits
    pm = _peft(IA3Config(task_type="SEQ_CLS"))
    model = pm.unload()
    np.testing.assert_array_equal(model(ids, attention_mask=mask).logits, bare)
    get_peft_model(model, IA3Config())  # bare again: it can be wrapped anew


# ------------------------------------------------------------------ several adapters

def test_adapters_switch_disable_delete():
    pm = _peft(IA3Config(target_modules=["key", "value", "output.dense"],
                         feedforward_modules=["output.dense"]))
    pm.add_adapter("other", IA3Config(target_modules=["query", "intermediate.dense"],
                                      feedforward_modules=["intermediate.dense"]))
    _randomize_vectors(pm, 7, adapter="other")
    ids, mask, _ = _batch()
    want_default = _merged_reference(pm)[0](ids, attention_mask=mask).logits
    want_other = _merged_reference(pm, adapter="other")[0](ids, attention_mask=mask).logits
    bare = _base()(ids, attention_mask=mask).logits
    _assert_close(pm(ids, attention_mask=mask).logits, want_default, 1e-5, "default")
    # the new adapter is frozen until it is set
    params = dict(pm.named_parameters())
    assert not params[f"{PREFIX}bert.encoder.layer.0.attention.self.query.ia3_l.other"].requires_grad
    pm.set_adapter("other")
    assert params[f"{PREFIX}bert.encoder.layer.0.attention.self.query.ia3_l.other"].requires_grad
    assert not params[f"{PREFIX}bert.encoder.layer.0.attention.self.key.ia3_l.default"].requires_grad
    _assert_close(pm(ids, attention_mask=mask).logits, want_other, 1e-5, "other")
    with pm.disable_adapter():
        np.testing.assert_allclose(pm(ids, attention_mask=mask).logits, bare, rtol=1e-6, atol=1e-6)
        assert not any(p.requires_grad for _, p in pm.named_parameters())
    _assert_close(pm(ids, attention_mask=mask).logits, want_other, 1e-5, "other again")
    pm.set_adapter("default")
    pm.delete_adapter("other")
    assert list(pm.peft_config) == ["default"]
    assert not any(".ia3_l.other" in n for n, _ in pm.named_parameters())
    _assert_close(pm(ids, attention_mask=mask).logits, want_default, 1e-5, "after delete")


def test_inference_mode_trains_nothing():
    pm = get_peft_model(_base(), IA3Config(inference_mode=True))
    assert pm.get_nb_trainable_parameters()[0] == 0


# ------------------------------------------------------------------ files

def test_save_load_round_trip(tmp_path):
    pm = _peft(IA3Config(task_type="SEQ_CLS"))
    pm.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "IA3" and config["inference_mode"] is True
    state = pm.adapter_state_dict("default")
    assert sorted(state) == sorted(
        [f"{PREFIX}bert.encoder.layer.{i}.{n}.ia3_l" for i in range(2) for n in
         ["attention.self.key", "attention.self.value", "attention.output.dense", "output.dense"]]
        + [f"{PREFIX}classifier.weight", f"{PREFIX}classifier.bias"])
    ids, mask, _ = _batch()
    want = pm(ids, attention_mask=mask).logits
    loaded = PeftModel.from_pretrained(_base(), tmp_path)
    np.testing.assert_array_equal(loaded(ids, attention_mask=mask).logits, want)
    assert loaded.get_nb_trainable_parameters()[0] == 0  # loaded for inference
    for key, value in loaded.adapter_state_dict("default").items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)
    loaded.load_adapter(tmp_path, "copy", is_trainable=True)
    loaded.set_adapter("copy")
    np.testing.assert_array_equal(loaded(ids, attention_mask=mask).logits, want)
