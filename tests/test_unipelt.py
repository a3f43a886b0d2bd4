"""UniPELT / ConfigUnion on the tuner protocol without torch: the engine's gated prefix by
central differences, the PeftModel API (several adapters, disable, delete, unload, save and
load), gate export (get_gate_values, JSON / CSV, heat map), and bad input refused with the
model unchanged. Parity with `adapters` itself is in test_unipelt_parity.py."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import peftcore
from helpers import check_entries_by_finite_differences, one_thread, randomize_parameters, random_batch  # noqa: F401,E501
from peftcore import PeftConfig, PeftModel, SeqBnConfig, UniPELTConfig, get_peft_model
from peftcore.tuners.unipelt import (ConfigUnion, LoRAConfig, PrefixTuningConfig,
                                     plot_gate_heatmap, write_gate_values)
from peftcore.tuners.unipelt.gates import mean_gate_values
from peftcore.models.parameter import Parameter
from peftcore import _C

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = dict(model_type="bert", vocab_size=40, hidden_size=16, num_hidden_layers=2,
           num_attention_heads=2, intermediate_size=32, max_position_embeddings=32,
           num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
PREFIX = "base_model.model."


def _base(seed=0):
    model = peftcore.AutoModelForSequenceClassification.from_config(CFG, seed=seed)
    return randomize_parameters(model, seed)


def _batch(B=3, T=6, seed=0):
    return random_batch(B, T, seed, low=3, pad=2)


def _small(**kw):
    """UniPELT sized for the tiny model (prefix MLP 16 wide, bottleneck 4)."""
    parts = dict(prefix_tuning=PrefixTuningConfig(prefix_length=3, bottleneck_size=16),
                 adapter=SeqBnConfig(reduction_factor=4), lora=LoRAConfig(r=2, alpha=2))
    return UniPELTConfig(**{**parts, **kw})


def _randomize_adapters(pm, seed=1):
    rng = np.random.default_rng(seed)
    for n, p in pm.named_parameters():
        if p.requires_grad:
            p[...] = 0.3 * rng.standard_normal(p.shape)


def _snapshot(model):
    ids = _batch()[0]
    return ([(n, bool(p.requires_grad), np.array(p, copy=True)) for n, p in model.named_parameters()],
            [(n, type(m).__name__) for n, m in model.named_modules()], np.array(model(ids).logits))


def _assert_unchanged(model, snap):
    params, modules, logits = _snapshot(model)
    assert [(n, g) for n, g, _ in params] == [(n, g) for n, g, _ in snap[0]]
    for (n, _, a), (_, _, b) in zip(params, snap[0]):
        np.testing.assert_array_equal(a, b, err_msg=n)
    assert modules == snap[1]
    np.testing.assert_array_equal(logits, snap[2])


# ------------------------------------------------------------------ the engine's gated prefix

def _param(values):
    p = Parameter(_C.Tensor.zeros(np.shape(values)))
    p[...] = values
    p.requires_grad = True
    return p


def _check_by_differences(named, loss, rng, entries_of=None):
    """Each parameter's gradient is non-zero, and at its largest entry and a random one
    matches central differences of loss (entries_of(name, g) may choose others)."""
    for name, p in named:
        g = p.grad.astype(np.float64)
        assert np.abs(g).max() > 0, name
        entries = [np.unravel_index(int(np.argmax(np.abs(g))), g.shape),
                   tuple(int(rng.integers(k)) for k in g.shape)]
        if entries_of is not None:
            entries = entries_of(name, g) or entries
        check_entries_by_finite_differences(p, g, entries, loss, 1e-2, 2e-2, 5e-5, name)


@pytest.mark.parametrize("gates", [1, 2])
def test_gated_prefix_grads_by_finite_differences(gates):
    """Keys, values, the gate's weight and bias, and the encoder's own weights below it (the
    gate reads the layer's input) against central differences, without torch."""
    rng = np.random.default_rng(4)
    model = _base()
    for n, p in model.named_parameters():
        p.requires_grad = n.endswith(("query.weight", "word_embeddings.weight"))
    C, P = CFG["hidden_size"], 3
    params = {}
    for layer in range(2):
        t = {"key": _param(0.8 * rng.standard_normal((P, C)).astype(np.float32)),
             "value": _param(0.8 * rng.standard_normal((P, C)).astype(np.float32)),
             "gate_weight": _param(0.5 * rng.standard_normal((gates, C)).astype(np.float32)),
             "gate_bias": _param(0.5 * rng.standard_normal(gates).astype(np.float32))}
        params.update({f"{layer}.{k}": p for k, p in t.items()})
        model._engine.set_block_adapters(layer, "kv", [("prefix", {k: p.tensor for k, p in t.items()}, {})])
    ids, mask, labels = _batch(seed=5)

    def loss():
        return float(model(ids, attention_mask=mask, labels=labels).loss)

    model(ids, attention_mask=mask, labels=labels)
    model.backward()
    own = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    _check_by_differences(list(params.items()) + own, loss, rng, lambda name, g: (
        [(int(ids[0, 1]), 3), (int(ids[1, 2]), 7)] if name.endswith("word_embeddings.weight")
        else None))


def test_gated_lora_with_dropout_backward_matches_finite_differences():
    """Gated LoRA runs every row of the batch in one call with its sequence's gate as the
    row's scale; with dropout the backward must see the forward's masks: pinning the model's
    count of forwards makes a train-mode forward deterministic, checked by differences."""
    config = UniPELTConfig(prefix_tuning=False, adapter=False,
                           lora=LoRAConfig(r=2, alpha=2, dropout=0.4), task_type="SEQ_CLS")
    pm = get_peft_model(_base(), config)
    _randomize_adapters(pm)
    pm.train()
    base = pm.get_base_model()
    ids, mask, labels = _batch(seed=6)

    def loss():
        base._forwards = 4321  # every forward draws the same masks
        return float(pm(ids, attention_mask=mask, labels=labels).loss)

    train_loss = loss()
    assert loss() == train_loss
    pm.eval()
    assert abs(loss() - train_loss) > 1e-4  # dropout really acts in train mode
    pm.train()
    base._forwards = 4321
    pm(ids, attention_mask=mask, labels=labels)
    pm.backward()
    rng = np.random.default_rng(7)
    names = [n for n, p in pm.named_parameters() if p.requires_grad and "lora" in n]
    assert any("gate" in n for n in names) and any("lora_A" in n for n in names), names
    _check_by_differences([(n, p) for n, p in pm.named_parameters() if n in names], loss, rng)


@pytest.mark.parametrize("intermediate", [False, True], ids=["qv", "qv+intermediate"])
def test_gated_lora_runs_the_last_layer_at_first_tokens(intermediate):
    """Gated LoRA on the query and value averages over the layer's input, which the last layer
    has at every row: a classification forward still computes that layer at the first tokens
    only, handing the query's gate the rest of the sequences. Logits, every gradient and the
    gates equal the whole last layer's (which the hidden states ask for). On the intermediate
    projection, whose input exists there at the first tokens only, the layer runs whole."""
    config = UniPELTConfig(prefix_tuning=False, adapter=False, task_type="SEQ_CLS",
                           lora=LoRAConfig(r=2, alpha=2, intermediate_lora=intermediate))
    pm = get_peft_model(_base(), config)
    _randomize_adapters(pm)
    pm.eval()
    model = pm.get_base_model()
    ids, mask, _ = _batch()
    g = np.random.default_rng(5).standard_normal((ids.shape[0], CFG["num_labels"]))
    trainable = [(n, p) for n, p in pm.named_parameters() if p.requires_grad]
    assert any("gate" in n for n, _ in trainable)
    out = model(ids, attention_mask=mask, output_hidden_states=True)
    whole_gates = model._engine.gate_values()
    model.backward(g.astype(np.float32))
    whole_grads = {n: p.grad.copy() for n, p in trainable}
    pm.zero_grad()
    compact = model(ids, attention_mask=mask).logits
    gates = model._engine.gate_values()
    np.testing.assert_allclose(compact, out.logits, rtol=1e-5, atol=1e-6)
    assert [k[:3] for k in gates] == [k[:3] for k in whole_gates] and len(gates) >= 4
    for (layer, site, which, a), (_, _, _, b) in zip(gates, whole_gates):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=str((layer, which)))
    model.backward(g.astype(np.float32))
    for n, p in trainable:
        scale = max(np.abs(whole_grads[n]).max(), 1e-6)
        np.testing.assert_allclose(p.grad, whole_grads[n], rtol=1e-4, atol=1e-5 * scale,
                                   err_msg=n)
        assert np.abs(p.grad).max() > 0, n
    model(ids, attention_mask=mask)
    if intermediate:  # the whole last layer ran: its hidden states exist
        model._engine.backward(d_hidden=np.zeros(out.hidden_states[-1].shape, np.float32))
    else:
        with pytest.raises(RuntimeError, match="hidden"):
            model._engine.backward(d_hidden=np.zeros(out.hidden_states[-1].shape, np.float32))
    with peftcore.no_grad():  # inference: first tokens, split among workers
        model.inference_rows = ids.shape[1]
        np.testing.assert_allclose(model(ids, attention_mask=mask).logits, out.logits,
                                   rtol=1e-5, atol=1e-6)


def test_engine_refuses_a_bad_prefix_gate():
    model = _base()
    C = CFG["hidden_size"]
    key = _param(np.zeros((2, C), np.float32))
    for tensors, match in [({"gate_weight": _param(np.zeros((3, C), np.float32)),
                             "gate_bias": _param(np.zeros(3, np.float32))}, "G 1 .shared. or 2"),
                           ({"gate_weight": _param(np.zeros((1, C), np.float32))}, "go together"),
                           ({"gate_weight": _param(np.zeros((1, C + 1), np.float32)),
                             "gate_bias": _param(np.zeros(1, np.float32))}, "gate_weight")]:
        entry = {"key": key.tensor, "value": key.tensor, **{k: p.tensor for k, p in tensors.items()}}
        with pytest.raises(ValueError, match=match):
            model._engine.set_block_adapters(0, "kv", [("prefix", entry, {})])
    # gates on a method without a gate: (IA)³ takes no gate tensors
    lin = dict(model.named_modules())["bert.encoder.layer.0.attention.self.value"]
    ones = _param(np.ones((C, 1), np.float32))
    with pytest.raises(ValueError, match="ia3"):
        model._engine.set_adapters(lin.index, [("ia3", "out", (ones.tensor, ones.tensor, ones.tensor),
                                                1.0, 0.0)])


# ------------------------------------------------------------------ config and API

def test_unipelt_defaults_and_variants():
    config = UniPELTConfig()
    prefix, bn, lora = (config.component(k) for k in ("prefix_tuning", "bottleneck", "lora"))
    assert (prefix.prefix_length, prefix.bottleneck_size, prefix.use_gating, prefix.shared_gating) \
        == (10, 512, True, True)
    assert isinstance(bn, SeqBnConfig) and bn.reduction_factor == 16 and bn.use_gating
    assert (lora.r, lora.alpha, lora.attn_matrices, lora.use_gating) == (8, 2, ["q", "v"], True)
    ap = UniPELTConfig(lora=False)
    assert [type(c).__name__ for c in ap.configs] == ["PrefixTuningConfig", "SeqBnConfig"]
    assert UniPELTConfig(prefix_tuning=PrefixTuningConfig(use_gating=False)).configs[0].use_gating
    alone = ConfigUnion(configs=[LoRAConfig(use_gating=True)])
    assert alone.adapterhub_dict()["architecture"] == "lora"
    assert peftcore.PeftType.UNIPELT.value == "UNIPELT"


@pytest.mark.parametrize("configs, match", [
    ([PrefixTuningConfig(), PrefixTuningConfig(prefix_length=3)], r"each method once.*prefix_tuning"),
    ([LoRAConfig(), LoRAConfig(r=2)], r"each method once.*lora"),
    ([{"architecture": "prompt_tuning", "prompt_length": 4}], r"unknown submodule architecture 'prompt_tuning'"),
    ([{"architecture": "lora", "use_gating": True, "rank": 4}], r"LoRAConfig has no fields \['rank'\]"),
    ([peftcore.LoraConfig(r=2)], r"a ConfigUnion takes .* got LoraConfig"),
    ([], r"non-empty list of configs"),
])
def test_bad_unions_are_refused(configs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ConfigUnion(configs=configs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(dropout=0.1), "dropout=0.1 is not implemented"),
    (dict(non_linearity="swish"), "non_linearity 'swish'"),
    (dict(prefix_length=0), "prefix_length"),
    (dict(shared_gating="yes"), "shared_gating"),
])
def test_bad_prefix_configs_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PrefixTuningConfig(**kwargs)


def test_gates_on_a_method_without_a_gate_are_refused():
    with pytest.raises(TypeError, match="use_gating"):
        peftcore.IA3Config(use_gating=True)
    with pytest.raises(TypeError, match="use_gating"):
        peftcore.LoraConfig(use_gating=True)


def test_peft_model_api(capsys):
    pm = get_peft_model(_base(), _small(task_type="SEQ_CLS"))
    pm.print_trainable_parameters()
    line = capsys.readouterr().out
    trainable = sum(p.size for p in pm.parameters() if p.requires_grad)
    assert f"trainable params: {trainable:,d}" in line
    names = [n for n, p in pm.named_parameters() if p.requires_grad]
    L0 = f"{PREFIX}bert.encoder.layer.0"
    for want in (f"{L0}.attention.self.query.loras.default.gate.weight",
                 f"{L0}.attention.self.value.loras.default.lora_B",
                 f"{L0}.attention.self.prefix_tuning.prefix_gates.default.bias",
                 f"{L0}.output.adapters.default.gate.weight",
                 f"{PREFIX}bert.prefix_tuning.prefix_tunings.default.self_prefix.wte.weight",
                 f"{PREFIX}classifier.modules_to_save.default.weight"):
        assert want in names, want
    ids, mask, labels = _batch()
    bare = np.array(_base()(ids, attention_mask=mask).logits)
    _randomize_adapters(pm)
    adapted = np.array(pm(ids, attention_mask=mask).logits)
    assert np.abs(adapted - bare).max() > 1e-3
    pm.add_adapter("ap", _small(lora=False))
    assert not any(".ap." in n for n, p in pm.named_parameters() if p.requires_grad)
    np.testing.assert_array_equal(pm(ids, attention_mask=mask).logits, adapted)
    pm.set_adapter("ap")
    trainable = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert any(".ap." in n for n in trainable) and not any(".default." in n for n in trainable)
    assert not any(".loras.ap." in n for n, _ in pm.named_parameters())
    gates = pm.get_gate_values(ids, attention_mask=mask)
    assert set(gates[0]) == {"prefix", "adapter_output"}
    with pm.disable_adapter():
        np.testing.assert_allclose(pm(ids, attention_mask=mask).logits, bare, rtol=0, atol=1e-6)
        assert not any(p.requires_grad for n, p in pm.named_parameters() if ".ap." in n)
    pm.set_adapter("default")
    np.testing.assert_array_equal(pm(ids, attention_mask=mask).logits, adapted)
    pm.delete_adapter("ap")
    assert not any(".ap." in n for n, _ in pm.named_parameters())
    with pytest.raises(ValueError, match="cannot merge"):
        pm.merge_and_unload()
    model = pm.unload()
    assert not any(k in n for n, _ in model.named_parameters()
                   for k in ("loras", "adapters", "prefix_tuning"))
    assert model.adapter_hooks() == []
    np.testing.assert_allclose(model(ids, attention_mask=mask).logits, bare, rtol=0, atol=1e-6)


def test_training_lowers_the_loss_and_trains_every_part():
    pm = get_peft_model(_base(), _small(task_type="SEQ_CLS"))
    params = [p for p in pm.parameters() if p.requires_grad]
    start = [np.array(p, copy=True) for p in params]
    opt = peftcore.optim.AdamW(params, lr=1e-2)
    ids, mask, labels = _batch(B=6, seed=2)
    pm.train()
    losses = []
    for _ in range(15):
        losses.append(float(pm(ids, attention_mask=mask, labels=labels).loss))
        pm.backward()
        opt.step()
        opt.zero_grad()
    assert losses[-1] < losses[0] - 0.1
    moved = [not np.array_equal(a, p) for a, p in zip(start, params)]
    assert all(moved), [n for (n, p), m in zip(pm.named_parameters(), moved) if not m]


def test_prefix_pool_gradient_by_finite_differences():
    """The pool's MLP, run around the engine (forward before it, backward after it)."""
    pm = get_peft_model(_base(), ConfigUnion(configs=[PrefixTuningConfig(
        prefix_length=3, bottleneck_size=8, use_gating=True, shared_gating=False)]))
    _randomize_adapters(pm, seed=3)
    ids, mask, labels = _batch(seed=6)

    def loss():
        return float(pm(ids, attention_mask=mask, labels=labels).loss)

    pm(ids, attention_mask=mask, labels=labels)
    pm.backward()
    _check_by_differences([(n, p) for n, p in pm.named_parameters() if p.requires_grad], loss,
                          np.random.default_rng(0))


# ------------------------------------------------------------------ files

def test_save_load_round_trip_and_several_adapters(tmp_path):
    pm = get_peft_model(_base(), _small(task_type="SEQ_CLS"))
    pm.add_adapter("flat", ConfigUnion(configs=[PrefixTuningConfig(flat=True, prefix_length=2,
                                                                   use_gating=True)]))
    _randomize_adapters(pm)
    pm.set_adapter("flat")
    _randomize_adapters(pm, seed=2)
    ids, mask, _ = _batch()
    want_flat = np.array(pm(ids, attention_mask=mask).logits)
    pm.set_adapter("default")
    want = np.array(pm(ids, attention_mask=mask).logits)
    pm.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["config"]["architecture"] == "union" and meta["peft_type"] == "UNIPELT"
    flat_meta = json.loads((tmp_path / "flat" / "adapter_config.json").read_text())
    assert flat_meta["config"]["architecture"] == "prefix_tuning" and flat_meta["name"] == "flat"
    assert isinstance(PeftConfig.from_pretrained(tmp_path), ConfigUnion)
    loaded = PeftModel.from_pretrained(_base(), tmp_path)
    np.testing.assert_array_equal(loaded(ids, attention_mask=mask).logits, want)
    loaded.load_adapter(tmp_path / "flat", "flat")
    loaded.set_adapter("flat")
    np.testing.assert_array_equal(loaded(ids, attention_mask=mask).logits, want_flat)


def _saved(tmp_path):
    pm = get_peft_model(_base(), _small(task_type="SEQ_CLS"), adapter_name="task")
    _randomize_adapters(pm)
    folder = tmp_path / "saved"
    pm.save_pretrained(folder)
    return folder / "task"


def _rewrite(folder, change):
    from peftcore.utils.io import read_safetensors
    import safetensors.numpy
    tensors = read_safetensors(folder / "adapter.safetensors")
    change(tensors)
    safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                                str(folder / "adapter.safetensors"))


GATE = "bert.encoder.layer.1.attention.self.prefix_tuning.prefix_gates.task.weight"
LORA_A = "bert.encoder.layer.0.attention.self.value.loras.task.lora_A"


@pytest.mark.parametrize("kind, match", [
    ("missing gate", r"lacks tensors.*prefix_gates.weight"),
    ("wrong shape", r"lora_A' has shape \(3, 16\), the base model needs \(2, 16\)"),
    ("stranger", r"not a weight of the adapter 'task'"),
    ("config not gated", r"prefix_gates\.(weight|bias)' does not match any module"),
])
def test_files_that_do_not_fit_change_nothing(tmp_path, kind, match):
    folder = _saved(tmp_path)
    if kind == "missing gate":
        _rewrite(folder, lambda t: t.pop(GATE))
    elif kind == "wrong shape":
        _rewrite(folder, lambda t: t.__setitem__(LORA_A, np.zeros((3, 16), np.float32)))
    elif kind == "stranger":
        _rewrite(folder, lambda t: t.__setitem__(LORA_A.replace(".task.", ".other."),
                                                 np.zeros((2, 16), np.float32)))
    else:   # the file's gates, with a config whose prefix has none
        meta = json.loads((folder / "adapter_config.json").read_text())
        meta["config"]["configs"][0]["use_gating"] = False
        (folder / "adapter_config.json").write_text(json.dumps(meta))
    base = _base()
    snap = _snapshot(base)
    with pytest.raises(ValueError, match=match):
        PeftModel.from_pretrained(base, folder, adapter_name="task")
    _assert_unchanged(base, snap)


def test_mixing_with_a_non_gated_adapter_of_the_same_name_changes_nothing(tmp_path):
    pm = get_peft_model(_base(), _small(task_type="SEQ_CLS"), adapter_name="task")
    _randomize_adapters(pm)
    snap = _snapshot(pm)
    plain = ConfigUnion(configs=[PrefixTuningConfig(prefix_length=3, bottleneck_size=16),
                                 LoRAConfig(r=2)])
    with pytest.raises(ValueError, match="an adapter named 'task' already exists"):
        pm.add_adapter("task", plain)
    other = get_peft_model(_base(), plain, adapter_name="task")
    other.save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="an adapter named 'task' already exists"):
        pm.load_adapter(tmp_path / "plain" / "task", "task")
    with pytest.raises(ValueError, match="Found UNIPELT and BOTTLENECK"):
        pm.add_adapter("bn", SeqBnConfig(reduction_factor=4))
    _assert_unchanged(pm, snap)


# ------------------------------------------------------------------ gates out

def test_gate_values_json_csv_and_heatmap(tmp_path):
    pm = get_peft_model(_base(), _small(task_type="SEQ_CLS"))
    _randomize_adapters(pm)
    ids, mask, labels = _batch(B=4)
    with peftcore.no_grad():
        with pytest.raises(RuntimeError, match="outside no_grad"):
            pm.get_gate_values(ids, attention_mask=mask)
    pm.train()
    gates = pm.get_gate_values(ids, attention_mask=mask, labels=labels)
    assert pm.training
    assert sorted(gates) == [0, 1]
    assert set(gates[0]) == {"lora_query", "lora_value", "prefix", "adapter_output"}
    for subs in gates.values():
        for values in subs.values():
            assert values.shape == (4,) and ((values > 0) & (values < 1)).all()
    # each example's gate depends on its own tokens only
    alone = pm.get_gate_values(ids[1:2], attention_mask=mask[1:2])
    np.testing.assert_allclose(alone[1]["prefix"], gates[1]["prefix"][1:2], rtol=1e-5)
    write_gate_values(gates, tmp_path / "g.json")
    body = json.loads((tmp_path / "g.json").read_text())
    np.testing.assert_allclose(body["1"]["adapter_output"], gates[1]["adapter_output"], rtol=1e-6)
    write_gate_values(gates, tmp_path / "g.csv")
    rows = list(csv.DictReader((tmp_path / "g.csv").open()))
    assert len(rows) == 2 * 4 * 4
    row = next(r for r in rows if r["layer"] == "0" and r["submodule"] == "lora_value"
               and r["example"] == "2")
    assert abs(float(row["value"]) - float(gates[0]["lora_value"][2])) < 1e-6
    with pytest.raises(ValueError, match=".json or .csv"):
        write_gate_values(gates, tmp_path / "g.txt")
    other = pm.get_gate_values(_batch(B=2, seed=9)[0])
    means = mean_gate_values([gates, other])
    want = (gates[0]["prefix"].sum() + other[0]["prefix"].sum()) / 6
    assert abs(means[0]["prefix"] - want) < 1e-6
    pytest.importorskip("matplotlib")
    fig = plot_gate_heatmap([gates, other], tmp_path / "heat.png")
    assert (tmp_path / "heat.png").stat().st_size > 1000
    image = fig.axes[0].images[0].get_array()
    assert image.shape == (2, 4)
    assert abs(float(image[0, sorted(means[0]).index("prefix")]) - means[0]["prefix"]) < 1e-9


def test_gate_values_need_gates():
    pm = get_peft_model(_base(), SeqBnConfig(reduction_factor=4))
    with pytest.raises(ValueError, match="have no gates"):
        pm.get_gate_values(_batch()[0])


def test_eval_forwards_in_groups_and_workers_match_the_kept_forward():
    """The gated prefix, LoRA and adapter in eval forwards split among workers and into
    groups of one sequence (their gates' saved rows per part) give the kept forward's
    logits."""
    pm = get_peft_model(_base(), _small(task_type="SEQ_CLS"))
    _randomize_adapters(pm)
    ids, mask, _ = _batch(B=5, T=6, seed=4)
    want = np.array(pm(ids, attention_mask=mask).logits)
    base = pm.get_base_model()
    old = peftcore.get_num_threads()
    try:
        for threads, rows in ((2, 0), (1, 6), (2, 6)):
            peftcore.set_num_threads(threads)
            base.inference_rows = rows or None
            with peftcore.no_grad():
                got = np.array(pm(ids, attention_mask=mask).logits)
            np.testing.assert_allclose(got, want, rtol=0, atol=2e-6, err_msg=f"{threads} {rows}")
    finally:
        peftcore.set_num_threads(old)
        base.inference_rows = None


def test_adapters_with_different_prefix_layers_share_the_pool(tmp_path):
    """Two unions whose prefixes cover different layers: each has its own rows in the pool
    and its own gates; switching, saving and loading keep each one's logits."""
    first = ConfigUnion(configs=[PrefixTuningConfig(prefix_length=2, bottleneck_size=8,
                                                    leave_out=[1], use_gating=True)])
    second = ConfigUnion(configs=[PrefixTuningConfig(prefix_length=3, bottleneck_size=8,
                                                     flat=True, use_gating=True,
                                                     shared_gating=False)])
    pm = get_peft_model(_base(), first, adapter_name="one")
    pm.add_adapter("two", second)
    pool = pm.base_model.model.bert.prefix_tuning
    assert [len(pool.rows[a]) for a in ("one", "two")] == [1, 2]
    ids, mask, labels = _batch()
    logits = {}
    for name in ("one", "two"):
        pm.set_adapter(name)
        _randomize_adapters(pm, seed=len(name))
        logits[name] = np.array(pm(ids, attention_mask=mask).logits)
    assert np.abs(logits["one"] - logits["two"]).max() > 1e-3
    gates = pm.get_gate_values(ids, attention_mask=mask)
    assert sorted(gates) == [0, 1] and gates[0]["prefix"].shape == (3, 2)
    pm.set_adapter("one")
    assert sorted(pm.get_gate_values(ids, attention_mask=mask)) == [0]
    np.testing.assert_array_equal(pm(ids, attention_mask=mask).logits, logits["one"])
    pm.save_pretrained(tmp_path)
    for name, folder in (("one", tmp_path / "one"), ("two", tmp_path / "two")):
        loaded = PeftModel.from_pretrained(_base(), folder, adapter_name=name)
        np.testing.assert_array_equal(loaded(ids, attention_mask=mask).logits, logits[name])
