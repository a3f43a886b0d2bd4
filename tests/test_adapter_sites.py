"""The engine's adapter sites (csrc/adapters), driven directly through Encoder.set_adapters.

Every configuration here is equivalent to the bare model with merged weights, computed by
NumPy in float64: an (IA)³ vector l at a linear's input scales W's columns (W·diag(l)), at
its output W's rows and the bias (diag(l)·W, l ⊙ b), and LoRA adds s·B·A times whatever
input scaling precedes it. The adapter tensors' gradients are checked against the chain
rule through those merged weights and against central differences.
"""
from __future__ import annotations

import numpy as np
import pytest

import peftcore
from helpers import (check_entries_by_finite_differences, engine_param, one_thread,  # noqa: F401
                     random_batch, randomize_parameters)
from peftcore import _C

CFG = dict(model_type="bert", vocab_size=40, hidden_size=32, num_hidden_layers=2,
           num_attention_heads=4, intermediate_size=64, max_position_embeddings=48,
           num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
LAYER_LINEARS = ["attention.self.query", "attention.self.key", "attention.self.value",
                 "attention.output.dense", "intermediate.dense", "output.dense"]
HEAD_LINEARS = ["bert.pooler.dense", "classifier"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(seed=0, **overrides):
    model = peftcore.AutoModelForSequenceClassification.from_config(dict(CFG, **overrides),
                                                                    seed=seed)
    return randomize_parameters(model, seed)


def _linears(model, layers=(0, 1)):
    names = [f"bert.encoder.layer.{l}.{n}" for l in layers for n in LAYER_LINEARS]
    return names + HEAD_LINEARS


def _batch(B=3, T=7, seed=0):
    return random_batch(B, T, seed, low=2, pad=3)


class Plan:
    """Adapters per linear: a list of ("ia3", site, l) / ("lora", "out", A, B, s) entries,
    each given to the engine and mirrored into merged float64 weights."""

    def __init__(self, model):
        self.model = model
        self.entries = {}  # linear name -> [entry]
        self.params = {}   # "name:k:part" -> Parameter

    def add(self, name, *entries):
        self.entries.setdefault(name, []).extend(entries)

    def apply(self):
        for name, entries in self.entries.items():
            linear = self.model.get_submodule(name)
            engine_entries = []
            for k, e in enumerate(entries):
                if e[0] == "ia3":
                    p = engine_param(e[2])
                    self.params[f"{name}:{k}:l"] = p
                    engine_entries.append(("ia3", e[1], (p.tensor,), 1.0, 0.0))
                else:
                    A, B = engine_param(e[2]), engine_param(e[3])
                    self.params[f"{name}:{k}:A"], self.params[f"{name}:{k}:B"] = A, B
                    engine_entries.append(("lora", "out", (A.tensor, B.tensor), e[4], 0.0))
            self.model._engine.set_adapters(linear.index, engine_entries)
        for n, p in self.model.named_parameters():
            p.requires_grad = False
        return self

    def merged(self, name, W, b):
        """W_eff, b_eff (float64) of linear `name` as the engine runs it: the input site's
        vectors in order, then the output site's entries in order."""
        W, b = W.astype(np.float64), b.astype(np.float64)
        entries = self.entries.get(name, [])
        col = np.ones(W.shape[1])
        for e in entries:
            if e[0] == "ia3" and e[1] == "in":
                col = col * e[2].reshape(-1)
        W = W * col
        for e in entries:
            if e[0] == "ia3" and e[1] == "out":
                l = e[2].reshape(-1).astype(np.float64)
                W, b = W * l[:, None], b * l
            elif e[0] == "lora":
                W = W + e[4] * (e[3].astype(np.float64) @ e[2].astype(np.float64)) * col
        return W, b


def _reference(plan, seed=0, **overrides):
    """The bare model (same seed) with every adapted linear's merged weights."""
    ref = _model(seed, **overrides)
    for name in plan.entries:
        lin = ref.get_submodule(name)
        W, b = plan.merged(name, np.asarray(lin.weight), np.asarray(lin.bias))
        lin.weight[...] = W.astype(np.float32)
        lin.bias[...] = b.astype(np.float32)
    return ref


def _vec(rng, n):
    return (1.0 + 0.5 * rng.standard_normal(n)).astype(np.float32)


def _hf_default(model, rng):
    """(IA)³ as HF PEFT puts it on BERT: keys and values scaled at their output, both
    `output.dense` layers (attention's and the FFN's) at their input."""
    plan = Plan(model)
    C, I = CFG["hidden_size"], CFG["intermediate_size"]
    for l in (0, 1):
        pre = f"bert.encoder.layer.{l}."
        plan.add(pre + "attention.self.key", ("ia3", "out", _vec(rng, C).reshape(C, 1)))
        plan.add(pre + "attention.self.value", ("ia3", "out", _vec(rng, C).reshape(C, 1)))
        plan.add(pre + "attention.output.dense", ("ia3", "in", _vec(rng, C).reshape(1, C)))
        plan.add(pre + "output.dense", ("ia3", "in", _vec(rng, I).reshape(1, I)))
    return plan


def _everything(model, rng):
    """Both sites of every linear, (IA)³ and LoRA chained at outputs in both orders."""
    plan = Plan(model)
    for i, name in enumerate(_linears(model)):
        lin = model.get_submodule(name)
        fin, fout = lin.in_features, lin.out_features
        r = 1 + i % 3
        lora = ("lora", "out", (0.3 * rng.standard_normal((r, fin))).astype(np.float32),
                (0.3 * rng.standard_normal((fout, r))).astype(np.float32), 0.5 + i % 2)
        ia3_out = ("ia3", "out", _vec(rng, fout))
        plan.add(name, ("ia3", "in", _vec(rng, fin)),
                 *((ia3_out, lora) if i % 2 else (lora, ia3_out)))
    return plan


def _qkv_inputs(model, rng):
    """Input sites on two of q/k/v: the fused projection splits; key scaled at its output."""
    plan = Plan(model)
    C = CFG["hidden_size"]
    for l in (0, 1):
        pre = f"bert.encoder.layer.{l}.attention.self."
        plan.add(pre + "query", ("ia3", "in", _vec(rng, C)))
        plan.add(pre + "value", ("ia3", "in", _vec(rng, C)), ("ia3", "in", _vec(rng, C)))
        plan.add(pre + "key", ("ia3", "out", _vec(rng, C)))
    return plan


PLANS = {"hf_default": _hf_default, "everything": _everything, "qkv_inputs": _qkv_inputs}


@pytest.mark.parametrize("which", list(PLANS))
def test_forward_equals_merged_weights(which):
    model = _model()
    plan = PLANS[which](model, np.random.default_rng(1)).apply()
    ref = _reference(plan)
    ids, mask, labels = _batch()
    want = ref(ids, attention_mask=mask).logits
    got = model(ids, attention_mask=mask, labels=labels).logits  # a forward for a backward
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
    with peftcore.no_grad():  # first tokens only in the last layer, keys/values not folded
        got = model(ids, attention_mask=mask).logits
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_no_grad_inference_split_among_workers_matches():
    """Eval forwards without a backward run the batch on two workers, each through its own
    rows of the adapters' buffers and of the input sites' scratch."""
    model = _model()
    plan = _everything(model, np.random.default_rng(2)).apply()
    ids, mask, _ = _batch(B=5, T=9, seed=3)
    want = _reference(plan)(ids, attention_mask=mask).logits
    old = peftcore.get_num_threads()
    try:
        peftcore.set_num_threads(2)
        with peftcore.no_grad():
            got = model(ids, attention_mask=mask).logits
    finally:
        peftcore.set_num_threads(old)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def _chain_rule(ref, name, entry):
    """The gradient of the one (IA)³ vector of linear `name` from the merged weight's
    gradient G and bias gradient g: at the input Σ_o G·W, at the output Σ_i G·W + g·b."""
    lin = ref.get_submodule(name)
    G, g = lin.weight.grad.astype(np.float64), lin.bias.grad.astype(np.float64)
    base = _model().get_submodule(name)
    W, b = np.asarray(base.weight, np.float64), np.asarray(base.bias, np.float64)
    return (G * W).sum(0) if entry[1] == "in" else (G * W).sum(1) + g * b


def test_ia3_grads_chain_rule_hf_default():
    model = _model()
    plan = _hf_default(model, np.random.default_rng(4)).apply()
    ref = _reference(plan)
    ids, mask, labels = _batch(B=4, T=9, seed=5)
    model(ids, attention_mask=mask, labels=labels)
    model.backward()
    for n, p in ref.named_parameters():
        p.requires_grad = n.endswith((".weight", ".bias")) and any(
            n.startswith(name + ".") for name in plan.entries)
    ref(ids, attention_mask=mask, labels=labels)
    ref.backward()
    for name, (entry,) in plan.entries.items():
        got = plan.params[f"{name}:0:l"].grad.reshape(-1)
        np.testing.assert_allclose(got, _chain_rule(ref, name, entry), rtol=1e-4, atol=1e-6,
                                   err_msg=name)


@pytest.mark.parametrize("which", list(PLANS))
def test_adapter_grads_finite_differences(which):
    model = _model()
    plan = PLANS[which](model, np.random.default_rng(6)).apply()
    ids, mask, labels = _batch(B=3, T=6, seed=7)

    def loss():
        return float(model(ids, attention_mask=mask, labels=labels).loss)

    model(ids, attention_mask=mask, labels=labels)
    model.backward()
    rng = np.random.default_rng(8)
    checked = 0
    for key, p in plan.params.items():
        g = p.grad.astype(np.float64)
        assert np.isfinite(g).all(), key
        if np.abs(g).max() < 1e-4:  # e.g. a key's output scale: softmax ignores a shift
            continue
        entries = [np.unravel_index(int(np.argmax(np.abs(g))), g.shape),
                   tuple(int(rng.integers(k)) for k in g.shape)]
        check_entries_by_finite_differences(p, g, entries, loss, 1e-2, 2e-2, 5e-5, key)
        checked += 1
    assert checked >= len(plan.params) // 2


def test_thread_count_does_not_change_adapter_grads():
    ids, mask, labels = _batch(B=8, T=40, seed=9)
    old = peftcore.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            peftcore.set_num_threads(threads)
            model = _model(max_position_embeddings=64)
            plan = _everything(model, np.random.default_rng(10)).apply()
            out = model(ids, attention_mask=mask, labels=labels)
            model.backward()
            results.append((out.logits.copy(), {k: p.grad.copy() for k, p in plan.params.items()}))
    finally:
        peftcore.set_num_threads(old)
    (l1, g1), (l2, g2) = results
    np.testing.assert_array_equal(l1, l2)
    for k in g1:
        np.testing.assert_array_equal(g1[k], g2[k], err_msg=k)


def test_removing_adapters_restores_the_bare_model_bitwise():
    model = _model()
    ids, mask, _ = _batch()
    bare = model(ids, attention_mask=mask).logits.copy()
    plan = _everything(model, np.random.default_rng(11)).apply()
    assert np.abs(model(ids, attention_mask=mask).logits - bare).max() > 1e-3
    for name in plan.entries:
        model._engine.set_adapters(model.get_submodule(name).index, [])
    np.testing.assert_array_equal(model(ids, attention_mask=mask).logits, bare)


def _ia3_tensor(n):
    return engine_param(np.ones(n, np.float32)).tensor


BAD = {
    "unknown method": ([("dora", "out", (), 1.0, 0.0)], ValueError, "unknown adapter method 'dora'"),
    "lora at the input": ([("lora", "in", (_C.Tensor.zeros((2, 32)), _C.Tensor.zeros((32, 2))),
                            1.0, 0.0)], ValueError, "cannot act at a linear's in site"),
    "bad site": ([("ia3", "middle", (), 1.0, 0.0)], ValueError, "site must be 'in' or 'out'"),
    "ia3 length": ([("ia3", "out", (_C.Tensor.zeros((31,)),), 1.0, 0.0)], ValueError,
                   "must have 32 elements"),
    "lora shapes": ([("lora", "out", (_C.Tensor.zeros((2, 31)), _C.Tensor.zeros((32, 2))), 1.0,
                      0.0)], ValueError, "lora A must be float32 (r, 32) and B (32, r)"),
    "lora dropout": ([("lora", "out", (_C.Tensor.zeros((2, 32)), _C.Tensor.zeros((32, 2))), 1.0,
                       1.5)], ValueError, "lora dropout must be in [0, 1), got 1.5"),
    "tensor count": ([("ia3", "out", (), 1.0, 0.0)], ValueError, "takes 1 tensors, got 0"),
    "int tensor": ([("ia3", "out", (_C.Tensor(np.zeros(32, np.int64)),), 1.0, 0.0)], ValueError,
                   "must be float32"),
    "not a tuple": (["ia3"], TypeError, "must be (method: str"),
    "too many": ([("ia3", "out", None, 1.0, 0.0)] * 5, ValueError, "at most 4 adapters"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_entries_raise_and_change_nothing(case):
    entries, error, message = BAD[case]
    model = _model()
    ids, mask, _ = _batch()
    query = model.get_submodule("bert.encoder.layer.0.attention.self.query")
    keep = engine_param(_vec(np.random.default_rng(0), 32))
    model._engine.set_adapters(query.index, [("ia3", "out", (keep.tensor,), 1.0, 0.0)])
    before = model(ids, attention_mask=mask).logits.copy()
    entries = [("ia3", "out", (_ia3_tensor(32),), 1.0, 0.0) if e[2] is None else e
               if isinstance(e, tuple) else e for e in entries]
    with pytest.raises(error, match=__import__("re").escape(message)):
        model._engine.set_adapters(query.index, entries)
    np.testing.assert_array_equal(model(ids, attention_mask=mask).logits, before)


def test_bad_index_and_argument_types():
    model = _model()
    with pytest.raises(IndexError, match="out of range"):
        model._engine.set_adapters(10_000, [])
    with pytest.raises(TypeError):
        model._engine.set_adapters(0, ("ia3", "out", (), 1.0, 0.0))


def test_adapter_tensors_outlive_their_python_objects():
    """The engine keeps what an adapter points at alive: dropping every Python reference to
    the vector after set_adapters changes nothing."""
    model = _model()
    ids, mask, _ = _batch()
    name = "bert.encoder.layer.1.intermediate.dense"
    lin = model.get_submodule(name)
    values = _vec(np.random.default_rng(12), lin.out_features)
    model._engine.set_adapters(lin.index, [("ia3", "out", (engine_param(values).tensor,), 1.0, 0.0)])
    import gc
    gc.collect()
    plan = Plan(model)
    plan.add(name, ("ia3", "out", values))
    np.testing.assert_allclose(model(ids, attention_mask=mask).logits,
                               _reference(plan)(ids, attention_mask=mask).logits,
                               rtol=2e-5, atol=2e-5)
