"""Bottleneck adapters (AdapterHub's Houlsby / Pfeiffer) on the tuner protocol.

Structure tests run without the engine's block sites: the `sites` fixture records what the
layers hand the engine (and passes it on when the engine has set_block_adapters). Numeric
tests (marked `engine`) need the engine's set_block_adapters; parity with `adapters` itself
is in test_bottleneck_parity.py.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import peftcore
from helpers import (check_entries_by_finite_differences, one_thread,  # noqa: F401
                     random_batch, randomize_parameters)
from peftcore import (BnConfig, DoubleSeqBnConfig, PeftConfig, PeftModel, PeftType, SeqBnConfig,
                      get_peft_model)
from peftcore.tuners.bottleneck import layer as bottleneck_layer

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = dict(model_type="bert", vocab_size=40, hidden_size=16, num_hidden_layers=2,
           num_attention_heads=2, intermediate_size=32, max_position_embeddings=32,
           num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
PREFIX = "base_model.model."
L0 = "bert.encoder.layer.0"


@pytest.fixture
def sites(monkeypatch):
    """{(layer, block): (method, tensor names, options)} of the running adapter at each
    block site, as the layers last set it (absent: none)."""
    state = {}
    real = bottleneck_layer.set_block_adapters

    def record(engine, layer, block, entries):
        if hasattr(engine, "set_block_adapters"):
            real(engine, layer, block, entries)
        state.pop((layer, block), None)
        for method, tensors, options in entries:
            state[(layer, block)] = (method, sorted(tensors), dict(options))

    monkeypatch.setattr(bottleneck_layer, "set_block_adapters", record)
    return state


def _base(seed=0, **overrides):
    model = peftcore.AutoModelForSequenceClassification.from_config({**CFG, **overrides}, seed=seed)
    return randomize_parameters(model, seed)


def _batch(B=3, T=6, seed=0):
    return random_batch(B, T, seed, low=3, pad=2)


def _logits(model, b):
    return np.array(model(b[0], attention_mask=b[1]).logits, copy=True)


def _randomize_adapters(pm, seed=1, adapter="default"):
    """Random adapter values (LayerNorm weights and scalings around 1) so each one matters."""
    rng = np.random.default_rng(seed)
    for name, p in pm.named_parameters():
        if f".adapters.{adapter}." in name:
            center = 1.0 if name.endswith(("norm_before.weight", "norm_after.weight", "scaling")) else 0.0
            p[...] = center + 0.3 * rng.standard_normal(p.shape)


def _snapshot(model):
    return ([(n, bool(p.requires_grad), np.array(p, copy=True)) for n, p in model.named_parameters()],
            [(n, type(m).__name__) for n, m in model.named_modules()])


def _assert_unchanged(model, snap):
    params, modules = _snapshot(model)
    assert [(n, g) for n, g, _ in params] == [(n, g) for n, g, _ in snap[0]]
    for (n, _, a), (_, _, b) in zip(params, snap[0]):
        np.testing.assert_array_equal(a, b, err_msg=n)
    assert modules == snap[1]
    assert getattr(model, "adapter_owner", None) is None


# ------------------------------------------------------------------ configs

def test_configs_have_adapterhubs_defaults():
    seq, double = SeqBnConfig(), DoubleSeqBnConfig()
    assert (seq.mh_adapter, seq.output_adapter, seq.reduction_factor, seq.non_linearity) == \
        (False, True, 16, "relu")
    assert (seq.original_ln_before, seq.original_ln_after, seq.residual_before_ln) == (True, True, True)
    assert (double.mh_adapter, double.output_adapter, double.non_linearity,
            double.original_ln_before, double.original_ln_after) == (True, True, "swish", False, True)
    for c in (seq, double):
        assert (c.ln_before, c.ln_after, c.adapter_residual_before_ln, c.init_weights, c.scaling,
                c.use_gating, c.dropout, c.leave_out) == (False, False, False, "bert", 1.0, False,
                                                          0.0, [])
        assert c.peft_type is PeftType.BOTTLENECK
    with pytest.raises(ValueError, match="BnConfig needs mh_adapter, output_adapter, "
                                         "reduction_factor, non_linearity"):
        BnConfig()


def test_configs_match_adapters_own_defaults():
    adapters = pytest.importorskip("adapters")
    for ours, theirs in ((SeqBnConfig(), adapters.SeqBnConfig()),
                         (DoubleSeqBnConfig(), adapters.DoubleSeqBnConfig())):
        assert ours.adapterhub_dict() == json.loads(json.dumps(theirs.to_dict()))


@pytest.mark.parametrize("kwargs, match", [
    (dict(reduction_factor=0), r"reduction_factor must be a number > 0.*got 0"),
    (dict(reduction_factor=-2), r"reduction_factor must be a number > 0"),
    (dict(reduction_factor={"0": 4, "1": 0}), r"reduction_factor\['1'\] must be a number > 0"),
    (dict(non_linearity="softplus"), r"unknown non_linearity 'softplus'; expected one of relu, "
                                     r"swish, silu, gelu, gelu_new, tanh, leakyrelu"),
    (dict(residual_before_ln="pre_add"), r"residual_before_ln.*True, False or \"post_add\""),
    (dict(init_weights="mam"), r"unknown init_weights 'mam'; expected one of bert, houlsby, mam_adapter"),
    (dict(scaling="vector"), r"unknown scaling 'vector'"),
    (dict(dropout=1.0), r"dropout.*\[0, 1\)"),
    (dict(leave_out=[0.5]), r"leave_out.*ints"),
    (dict(is_parallel=True), r"is_parallel=True is not implemented"),
    (dict(phm_layer=True), r"phm_layer=True is not implemented"),
    (dict(mh_adapter=False, output_adapter=False), r"both False"),
])
def test_bad_config_values_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SeqBnConfig(**kwargs)


@pytest.mark.parametrize("config, match", [
    (SeqBnConfig(reduction_factor=17), r"reduction_factor 17 \(layer 0\) is larger than the hidden "
                                       r"size 16.*expected a reduction factor in \(0, 16\]"),
    (SeqBnConfig(reduction_factor={"0": 4}), r"no value for layer 1 and no \"default\""),
    (SeqBnConfig(leave_out=[1, 2]), r"leave_out \[2\] names layers outside the model: expected "
                                    r"indices in \[0, 1\]"),
    (SeqBnConfig(leave_out=[-1]), r"leave_out \[-1\] names layers outside"),
    (SeqBnConfig(leave_out=[0, 1]), r"no output block gets an adapter"),
], ids=["rf-too-large", "rf-no-default", "leave-out-2", "leave-out-neg", "leave-out-all"])
def test_configs_that_do_not_fit_the_model_change_nothing(sites, config, match):
    base = _base()
    snap = _snapshot(base)
    with pytest.raises(ValueError, match=match):
        get_peft_model(base, config)
    _assert_unchanged(base, snap)
    assert not sites


def test_bottleneck_size_is_hidden_floor_divided():
    config = SeqBnConfig(reduction_factor={"0": 3, "default": 0.5})
    assert config.bottleneck_size(0, 16) == 5
    assert config.bottleneck_size(1, 16) == 32   # < 1: an up-projection, as AdapterHub
    assert SeqBnConfig(reduction_factor=16).bottleneck_size(0, 16) == 1


# ------------------------------------------------------------------ structure

def test_pfeiffer_names_sites_and_trainable_parameters(sites, capsys):
    pm = get_peft_model(_base(), SeqBnConfig(task_type="SEQ_CLS", reduction_factor=4))
    trainable = sorted(n for n, p in pm.named_parameters() if p.requires_grad)
    expected = sorted(f"{PREFIX}bert.encoder.layer.{i}.output.adapters.default.{k}"
                      for i in range(2) for k in ("adapter_down.0.weight", "adapter_down.0.bias",
                                                  "adapter_up.weight", "adapter_up.bias"))
    expected += [f"{PREFIX}classifier.modules_to_save.default.{k}" for k in ("bias", "weight")]
    assert trainable == sorted(expected)
    shapes = {n: p.shape for n, p in pm.named_parameters()}
    assert shapes[f"{PREFIX}{L0}.output.adapters.default.adapter_down.0.weight"] == (4, 16)
    assert shapes[f"{PREFIX}{L0}.output.adapters.default.adapter_up.weight"] == (16, 4)
    assert set(sites) == {(0, "ffn"), (1, "ffn")}
    method, tensors, options = sites[(0, "ffn")]
    assert method == "bottleneck" and tensors == ["down_bias", "down_weight", "up_bias", "up_weight"]
    assert options == {"non_linearity": "relu", "residual_before_ln": True,
                       "original_ln_before": True, "original_ln_after": True,
                       "adapter_residual_before_ln": False, "scaling": 1.0, "dropout": 0.0}
    pm.print_trainable_parameters()
    n = 2 * (4 * 16 + 4 + 16 * 4 + 16) + 3 * 16 + 3
    total = pm.get_nb_trainable_parameters()[1]
    assert capsys.readouterr().out == f"trainable params: {n:,d} || all params: {total:,d} || " \
                                      f"trainable%: {100 * n / total:.4f}\n"
    assert "(adapters): ModuleDict(\n" in repr(pm) and "(default): Adapter(" in repr(pm)


def test_houlsby_with_every_option_names_its_parts(sites):
    config = DoubleSeqBnConfig(reduction_factor=8, ln_before=True, ln_after=True, use_gating=True,
                               scaling="channel", leave_out=[1], non_linearity="gelu_new")
    pm = get_peft_model(_base(), config)
    names = {n[len(PREFIX):]: p.shape for n, p in pm.named_parameters() if ".adapters." in n}
    for block in ("attention.output", "output"):
        head = f"{L0}.{block}.adapters.default."
        assert {k[len(head):]: v for k, v in names.items() if k.startswith(head)} == {
            "scaling": (16,), "adapter_norm_before.weight": (16,), "adapter_norm_before.bias": (16,),
            "adapter_down.1.weight": (2, 16), "adapter_down.1.bias": (2,),
            "adapter_up.weight": (16, 2), "adapter_up.bias": (16,),
            "adapter_norm_after.weight": (16,), "adapter_norm_after.bias": (16,),
            "gate.weight": (1, 16), "gate.bias": (1,)}
    assert not any("layer.1." in n for n in names)   # left out
    assert set(sites) == {(0, "attention"), (0, "ffn")}
    _, tensors, options = sites[(0, "attention")]
    assert tensors == sorted(["down_weight", "down_bias", "up_weight", "up_bias", "norm_before_weight",
                              "norm_before_bias", "norm_after_weight", "norm_after_bias",
                              "gate_weight", "gate_bias", "scaling"])
    assert options["non_linearity"] == "gelu_new" and options["original_ln_before"] is False


@pytest.mark.parametrize("init", ["bert", "houlsby", "mam_adapter"])
def test_initialisations(sites, init):
    pm = get_peft_model(_base(), DoubleSeqBnConfig(reduction_factor=2, init_weights=init,
                                                   use_gating=True, ln_before=True,
                                                   scaling="learned"))
    params = {n: np.asarray(p) for n, p in pm.named_parameters() if ".adapters." in n}
    down = np.concatenate([v.ravel() for n, v in params.items() if "adapter_down.1.weight" in n])
    up = np.concatenate([v.ravel() for n, v in params.items() if "adapter_up.weight" in n])
    for n, v in params.items():
        if n.endswith(("adapter_down.1.bias", "adapter_up.bias")):
            assert np.all(v == 0), n
        if n.endswith(("norm_before.weight", "scaling")):
            assert np.all(v == 1), n
    if init == "bert":
        assert 0.012 < down.std() < 0.028 and 0.012 < up.std() < 0.028
    elif init == "houlsby":
        assert np.abs(down).max() <= 0.02 and np.abs(up).max() <= 0.02 and down.std() > 0.005
    else:
        assert np.all(up == 0) and np.abs(down).max() <= 1 / 4 and down.std() > 0.05


def test_init_weights_seed_gives_every_module_the_same_draws(sites):
    pm = get_peft_model(_base(), DoubleSeqBnConfig(reduction_factor=4, init_weights_seed=7))
    downs = [np.asarray(p) for n, p in pm.named_parameters() if n.endswith("adapter_down.0.weight")]
    assert len(downs) == 4 and all(np.array_equal(d, downs[0]) for d in downs)


def test_several_adapters_switch_disable_delete(sites):
    pm = get_peft_model(_base(), SeqBnConfig(task_type="SEQ_CLS", reduction_factor=4))
    pm.add_adapter("houlsby", DoubleSeqBnConfig(reduction_factor=8, non_linearity="tanh"))
    assert sites[(0, "ffn")][2]["non_linearity"] == "relu" and (0, "attention") not in sites
    trainable = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert trainable and not any(".houlsby." in n for n in trainable)
    pm.set_adapter("houlsby")
    assert sites[(0, "ffn")][2]["non_linearity"] == "tanh" and (0, "attention") in sites
    trainable = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert any(".houlsby." in n for n in trainable) and not any(".default." in n for n in trainable)
    status = {s.name: s for s in pm.get_layer_status()}
    layer = status[f"model.{L0}.output.adapters"]
    assert layer.module_type == "BottleneckLayer" and layer.available_adapters == ["default", "houlsby"]
    assert layer.requires_grad == {"default": False, "houlsby": True}
    assert status[f"model.{L0}.attention.output.adapters"].available_adapters == ["houlsby"]
    model_status = pm.get_model_status()
    assert model_status.peft_types == {"default": "BOTTLENECK", "houlsby": "BOTTLENECK"}
    assert model_status.num_adapter_layers == 5   # 2 ffn, 2 attention, the head wrapper
    with pm.disable_adapter():
        assert not sites
        assert not any(p.requires_grad for n, p in pm.named_parameters() if ".adapters." in n)
    assert (0, "attention") in sites
    pm.set_adapter("default")
    pm.delete_adapter("houlsby")
    assert not any(".houlsby." in n for n, _ in pm.named_parameters())
    assert (0, "attention") not in sites and (0, "ffn") in sites
    with pytest.raises(ValueError, match="Found BOTTLENECK and LORA"):
        pm.add_adapter("lora", peftcore.LoraConfig(target_modules=["query"]))


def test_merge_is_refused_and_unload_restores_the_tree(sites):
    base = _base()
    modules = [n for n, _ in base.named_modules()]
    names = [n for n, _ in base.named_parameters()]
    pm = get_peft_model(base, DoubleSeqBnConfig(task_type="SEQ_CLS", reduction_factor=4))
    before = _snapshot(pm)
    for call in (pm.merge_and_unload, pm.merge_adapter):
        with pytest.raises(ValueError, match="BottleneckModel cannot merge: a bottleneck adapter "
                                             "is non-linear.*use unload\\(\\)"):
            call()
    _, mods = _snapshot(pm)
    assert mods == before[1]
    model = pm.unload()
    assert [n for n, _ in model.named_modules()] == modules
    assert [n for n, _ in model.named_parameters()] == names
    assert not sites and model.adapter_owner is None


# ------------------------------------------------------------------ files

def test_save_writes_adapterhubs_layout(sites, tmp_path):
    pm = get_peft_model(_base(), DoubleSeqBnConfig(task_type="SEQ_CLS", reduction_factor=4,
                                                   ln_before=True))
    pm.add_adapter("other", SeqBnConfig(reduction_factor=2))
    _randomize_adapters(pm)
    pm.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "adapter.safetensors", "adapter_config.json", "head_config.json",
        "model_head.safetensors", "other"]
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["name"] == "default" and meta["hidden_size"] == 16
    assert meta["model_class"] == "BertForSequenceClassification" and meta["model_type"] == "bert"
    assert meta["config"]["mh_adapter"] is True and meta["config"]["non_linearity"] == "swish"
    assert meta["peft_type"] == "BOTTLENECK" and meta["task_type"] == "SEQ_CLS"
    from peftcore.utils.io import read_safetensors
    tensors = read_safetensors(tmp_path / "adapter.safetensors")
    key = f"{L0}.output.adapters.default."
    assert f"{key}adapter_down.1.weight" in tensors and f"{key}adapter_up.bias" in tensors
    np.testing.assert_array_equal(tensors[f"{key}adapter_down.0.weight"],
                                  tensors[f"{key}adapter_norm_before.weight"])
    assert f"bert.encoder.layer.1.attention.output.adapters.default.adapter_up.weight" in tensors
    assert sorted(read_safetensors(tmp_path / "model_head.safetensors")) == [
        "classifier.bias", "classifier.weight"]
    head = json.loads((tmp_path / "head_config.json").read_text())
    assert head["num_labels"] == 3 and head["model_class"] == "BertForSequenceClassification"
    other = read_safetensors(tmp_path / "other" / "adapter.safetensors")
    assert all(".adapters.other." in k for k in other)


def test_save_load_round_trip(sites, tmp_path):
    pm = get_peft_model(_base(), DoubleSeqBnConfig(task_type="SEQ_CLS", reduction_factor=4,
                                                   ln_before=True, ln_after=True, use_gating=True,
                                                   scaling="learned"))
    _randomize_adapters(pm)
    for name, p in pm.named_parameters():
        if ".modules_to_save." in name:
            p[...] = 0.5
    pm.save_pretrained(tmp_path)
    config = PeftConfig.from_pretrained(tmp_path)
    assert isinstance(config, BnConfig) and config.scaling == "learned" and config.inference_mode
    loaded = PeftModel.from_pretrained(_base(), tmp_path, adapter_name="again")
    theirs = {n.replace(".again.", ".default."): p for n, p in loaded.named_parameters()}
    for name, p in pm.named_parameters():
        np.testing.assert_array_equal(theirs[name], p, err_msg=name)
    assert loaded.get_nb_trainable_parameters()[0] == 0
    trainable = PeftModel.from_pretrained(_base(), tmp_path, is_trainable=True)
    assert trainable.get_nb_trainable_parameters() == pm.get_nb_trainable_parameters()
    pm.load_adapter(tmp_path, "copy")
    assert "copy" in pm.peft_config


def _hub_folder(tmp_path, hidden=16, drop=None, extra=None):
    """AdapterHub's files for a Pfeiffer adapter named "task" on the tiny BERT, by hand."""
    folder = tmp_path / "hub"
    folder.mkdir()
    config = SeqBnConfig(reduction_factor=4).adapterhub_dict()
    (folder / "adapter_config.json").write_text(json.dumps({
        "config": config, "hidden_size": hidden, "model_class": "BertForSequenceClassification",
        "model_name": "", "model_type": "bert", "name": "task", "version": "adapters.1.3.0"}))
    tensors = {}
    for i in range(2):
        key = f"bert.encoder.layer.{i}.output.adapters.task."
        tensors[key + "adapter_down.0.weight"] = np.full((hidden // 4, hidden), 0.1, np.float32)
        tensors[key + "adapter_down.0.bias"] = np.zeros(hidden // 4, np.float32)
        tensors[key + "adapter_up.weight"] = np.full((hidden, hidden // 4), 0.2, np.float32)
        tensors[key + "adapter_up.bias"] = np.ones(hidden, np.float32)
    for key in drop or ():
        del tensors[key]
    tensors.update(extra or {})
    from peftcore.utils.io import save_safetensors
    save_safetensors(folder / "adapter.safetensors", tensors, metadata={})
    return folder


def test_hand_made_adapterhub_folder_loads(sites, tmp_path):
    pm = PeftModel.from_pretrained(_base(), _hub_folder(tmp_path))
    up = pm.get_base_model().get_submodule(f"{L0}.output.adapters").state("default")
    np.testing.assert_array_equal(up["adapter_up.bias"], 1.0)
    np.testing.assert_array_equal(up["adapter_down.0.weight"], np.float32(0.1))
    assert pm.peft_config["default"].non_linearity == "relu"


@pytest.mark.parametrize("kind", ["hidden", "missing", "stranger", "bin-object"])
def test_adapterhub_files_that_do_not_fit_change_nothing(sites, tmp_path, kind):
    if kind == "hidden":
        folder, match = _hub_folder(tmp_path, hidden=32), (
            r"the adapter file is for hidden size 32 .*this model's hidden size is 16")
    elif kind == "missing":
        folder = _hub_folder(tmp_path, drop=[f"bert.encoder.layer.1.output.adapters.task.adapter_up.bias"])
        match = r"lacks tensors.*layer.1.output.adapters.adapter_up.bias"
    elif kind == "stranger":
        folder = _hub_folder(tmp_path, extra={
            "bert.encoder.layer.0.output.adapters.other.adapter_up.bias": np.ones(16, np.float32)})
        match = r"not a weight of the bottleneck adapter 'task'"
    else:
        folder = _hub_folder(tmp_path)
        (folder / "adapter.safetensors").unlink()
        _write_bin_with_an_object(folder / "pytorch_adapter.bin")
        match = r"pytorch_adapter.bin"
    base = _base()
    snap = _snapshot(base)
    with pytest.raises(ValueError, match=match):
        PeftModel.from_pretrained(base, folder)
    _assert_unchanged(base, snap)
    assert not sites


def _write_bin_with_an_object(path):
    """A torch zip checkpoint whose pickle names a global other than tensors (a function)."""
    import io
    import pickle
    import zipfile

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    data = io.BytesIO()
    pickle.dump({"bert.encoder.layer.0.output.adapters.task.adapter_up.bias": Evil()}, data, protocol=2)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data.getvalue())
        archive.writestr("archive/version", "3\n")


def test_other_adapterhub_methods_are_refused(tmp_path):
    # (AdapterHub's LoRA, prefix tuning and unions are read as a ConfigUnion: test_unipelt.py)
    folder = tmp_path / "prompt"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({
        "config": {"architecture": "prompt_tuning", "prompt_length": 8}, "name": "x",
        "hidden_size": 16}))
    with pytest.raises(ValueError, match=r"is a 'prompt_tuning' adapter; peftcore reads "
                                         r"AdapterHub's bottleneck adapters"):
        PeftConfig.from_pretrained(folder)


# ------------------------------------------------------------------ numbers (need the engine)

@pytest.mark.parametrize("config", [
    SeqBnConfig(init_weights="mam_adapter", reduction_factor=4),
    DoubleSeqBnConfig(init_weights="mam_adapter", reduction_factor=4),
    SeqBnConfig(init_weights="mam_adapter", reduction_factor=4, residual_before_ln=False),
], ids=["pfeiffer", "houlsby", "residual-after-ln"])
def test_zero_up_projection(config):
    """With up = 0 the adapter's output is its residual: h (residual_before_ln=True), or
    LN(h + x) after the block's LayerNorm (False, Pfeiffer), whose original_ln_after then adds
    x again; for the first two that is LN(h + x) at every block, as the bare model."""
    b = _batch()
    base = _base()
    want = _logits(base, b)
    pm = get_peft_model(base, config)
    if config.residual_before_ln is False:   # LN(LN(h + x) + x): the model changes
        assert np.abs(_logits(pm, b) - want).max() > 1e-3
    else:
        np.testing.assert_allclose(_logits(pm, b), want, rtol=0, atol=1e-6)


def test_adapter_changes_logits_and_disable_gives_the_bare_model():
    b = _batch()
    base = _base()
    want = _logits(base, b)
    pm = get_peft_model(base, DoubleSeqBnConfig(reduction_factor=4, task_type="SEQ_CLS"))
    _randomize_adapters(pm)
    adapted = _logits(pm, b)
    assert np.abs(adapted - want).max() > 1e-3
    with pm.disable_adapter():
        np.testing.assert_array_equal(_logits(pm, b), want)
    pm.add_adapter("second", SeqBnConfig(reduction_factor=2))
    _randomize_adapters(pm, seed=5, adapter="second")
    pm.set_adapter("second")
    assert np.abs(_logits(pm, b) - adapted).max() > 1e-3
    pm.set_adapter("default")
    np.testing.assert_array_equal(_logits(pm, b), adapted)


@pytest.mark.parametrize("config", [
    SeqBnConfig(reduction_factor=4, non_linearity="tanh"),
    DoubleSeqBnConfig(reduction_factor=4, ln_before=True, ln_after=True, use_gating=True,
                      scaling="channel", adapter_residual_before_ln=True),
], ids=["pfeiffer-tanh", "houlsby-all-options"])
def test_gradients_by_finite_differences(config):
    b = _batch(seed=2)
    pm = get_peft_model(_base(), config)
    _randomize_adapters(pm)
    pm.zero_grad(set_to_none=True)
    pm(b[0], attention_mask=b[1], labels=b[2])
    pm.backward()
    params = {n: p for n, p in pm.named_parameters() if p.requires_grad}
    assert params and all(".adapters.default." in n for n in params)
    grads = {n: np.array(p.grad, np.float64) for n, p in params.items()}

    def loss():
        return float(pm(b[0], attention_mask=b[1], labels=b[2]).loss)

    rng = np.random.default_rng(0)
    for name, p in params.items():
        entries = [tuple(int(rng.integers(0, s)) for s in p.shape) for _ in range(2)]
        check_entries_by_finite_differences(p, grads[name], entries, loss, eps=1e-2, rtol=3e-2,
                                            atol=2e-4, name=name)


def test_pfeiffer_training_lowers_the_loss():
    b = _batch(B=6, seed=4)
    pm = get_peft_model(_base(), SeqBnConfig(reduction_factor=4, task_type="SEQ_CLS"))
    opt = peftcore.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=3e-2)
    pm.train()
    losses = []
    for _ in range(15):
        losses.append(float(pm(b[0], attention_mask=b[1], labels=b[2]).loss))
        pm.backward()
        opt.step()
        opt.zero_grad()
    assert losses[-1] < 0.6 * losses[0], losses
