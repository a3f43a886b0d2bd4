"""LoRA layers through the engine, checked against NumPy references (no torch needed).

The reference for the forward is the bare model with every targeted weight replaced by
W + s·B·A (s = alpha/r, or alpha/√r with rsLoRA), computed in float64 by NumPy. The reference
for the LoRA gradients is the chain rule through that merged weight: with G = dL/dW_eff,
dL/dA = s·Bᵀ·G and dL/dB = s·G·Aᵀ; plus float64 central differences of the engine's loss.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import peftcore
from helpers import check_entries_by_finite_differences, one_thread, randomize_parameters  # noqa: F401,E501
from peftcore import LoraConfig, get_peft_model

# a tiny architecture without hidden/attention dropout, so only LoRA dropout is random
CFG = dict(model_type="bert", vocab_size=40, hidden_size=32, num_hidden_layers=2,
           num_attention_heads=4, intermediate_size=64, max_position_embeddings=48,
           num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
ALL_LINEARS = ["query", "key", "value", "attention.output.dense", "intermediate.dense",
               "output.dense"]


# ------------------------------------------------------------------ helpers

pytestmark = pytest.mark.usefixtures("one_thread")


# widths through every path of the LoRA row kernels: a 64-wide register block, a 16-float
# vector and a scalar tail (80 = 64 + 16, 100 = 64 + 32 + 4)
WIDE = dict(hidden_size=80, num_attention_heads=4, intermediate_size=100, num_labels=5)


def _base(seed=0, head=True, **overrides):
    """A random bare model where every weight, bias and LayerNorm affine matters."""
    cfg = dict(CFG, **overrides)
    cls = peftcore.AutoModelForSequenceClassification if head else peftcore.AutoModel
    model = cls.from_config(cfg, seed=seed)
    return randomize_parameters(model, seed)


def _batch(B=3, T=6, seed=0, vocab=40, num_labels=3):
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, vocab, (B, T))
    mask = np.ones_like(ids)
    if B > 1:
        mask[-1, T - 2:] = 0
    return ids, mask, rng.integers(0, num_labels, B)


def _peft(config, seed=0, lora_seed=1, lora_std=0.3, head=True, **overrides):
    """A random base model (seeded) with LoRA weights set to N(0, lora_std)."""
    pm = get_peft_model(_base(seed, head=head, **overrides), config)
    rng = np.random.default_rng(lora_seed)
    for name, p in pm.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            p[...] = lora_std * rng.standard_normal(p.shape)
    return pm


def _expected_scale(r, alpha, rslora):
    return alpha / math.sqrt(r) if rslora else alpha / r


def _merged_reference(pm, seed=0, head=True, scale_of=None, **overrides):
    """The bare model (same seed) with W + s·B·A in float64 for every LoRA layer of `pm`.
    Returns (model, {layer name: (A, B, s)}) with s from `scale_of(name, layer)`."""
    ref = _base(seed, head=head, **overrides)
    adapter = pm.active_adapter
    factors = {}
    for name, layer in pm.base_model.lora_layers():
        A, B = (np.asarray(w, np.float64) for w in layer.weights(adapter))
        s = scale_of(name, layer) if scale_of else layer.scaling[adapter]
        w = ref.get_submodule(name).weight
        w[...] = (np.asarray(w, np.float64) + s * (B @ A)).astype(np.float32)
        factors[name] = (A, B, s)
    return ref, factors


def _lora_grads(pm):
    return {n: p.grad.copy() for n, p in pm.named_parameters()
            if (".lora_A." in n or ".lora_B." in n) and p.grad is not None}


def _assert_close(actual, expected, rtol, what):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    err = np.abs(actual - expected).max()
    scale = max(np.abs(expected).max(), 1e-12)
    assert err <= rtol * scale, f"{what}: max error {err:.3g} vs scale {scale:.3g}"


# ------------------------------------------------------------------ forward and scaling

@pytest.mark.parametrize("targets", [["query"], ["key"], ["value"], ALL_LINEARS])
def test_eval_without_grad_equals_merged_weights(targets):
    """A classification forward folds the last layer's key and value projections into its
    attention when they carry no adapter (the merged reference always does; so does the
    adapted model with LoRA on the query only) and projects them when they do, with
    gradients on or off alike: every combination gives the merged model's logits."""
    pm = _peft(LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False),
               num_hidden_layers=2)
    ref, _ = _merged_reference(pm, num_hidden_layers=2)
    pm.eval(), ref.eval()
    ids, mask, _ = _batch(B=4, T=9)
    want = ref(ids, attention_mask=mask).logits  # gradients on
    with peftcore.no_grad():
        folded = ref(ids, attention_mask=mask).logits
        adapted = pm(ids, attention_mask=mask).logits
    np.testing.assert_array_equal(folded, want)  # the same fold either way
    _assert_close(adapted, want, 1e-5, "LoRA, no_grad")
    _assert_close(pm(ids, attention_mask=mask).logits, want, 1e-5, "LoRA, with grad")


@pytest.mark.parametrize("use_rslora", [False, True])
@pytest.mark.parametrize("targets,layers", [(["query", "value"], 1), (ALL_LINEARS, 2)])
def test_forward_equals_numpy_merged_weights(use_rslora, targets, layers):
    r, alpha = 4, 6
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, use_rslora=use_rslora,
                        init_lora_weights=False)
    pm = _peft(config, num_hidden_layers=layers)
    expected_s = _expected_scale(r, alpha, use_rslora)
    layers_found = pm.base_model.lora_layers()
    assert len(layers_found) == layers * len(targets)
    for _, layer in layers_found:
        assert layer.scaling["default"] == pytest.approx(expected_s, rel=1e-12)
    ref, _ = _merged_reference(pm, scale_of=lambda n, l: expected_s, num_hidden_layers=layers)
    ids, mask, _ = _batch()
    ours = pm(ids, attention_mask=mask).logits
    want = ref(ids, attention_mask=mask).logits
    _assert_close(ours, want, 1e-5, "logits")
    # the low-rank path really contributes (not a vacuous comparison)
    bare = _base(num_hidden_layers=layers)(ids, attention_mask=mask).logits
    assert np.abs(ours - bare).max() > 1e-2


def test_forward_equals_numpy_merged_weights_automodel():
    config = LoraConfig(r=3, lora_alpha=5, target_modules=["query", "output.dense"],
                        init_lora_weights=False)
    pm = _peft(config, head=False)
    ref, _ = _merged_reference(pm, head=False)
    ids, mask, _ = _batch()
    ours, want = pm(ids, attention_mask=mask), ref(ids, attention_mask=mask)
    _assert_close(ours.last_hidden_state, want.last_hidden_state, 1e-5, "hidden")
    _assert_close(ours.pooler_output, want.pooler_output, 1e-5, "pooler")


def test_rank_and_alpha_patterns():
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value", "intermediate.dense"],
                        rank_pattern={"value": 2, "layer.1.attention.self.query": 6},
                        alpha_pattern={"intermediate.dense": 3, "query": 5},
                        init_lora_weights=False)
    pm = _peft(config)

    def expected(name):
        r = 2 if name.endswith("value") else 6 if name.endswith("layer.1.attention.self.query") else 4
        alpha = 3 if name.endswith("intermediate.dense") else 5 if name.endswith("query") else 8
        return r, alpha

    layers = dict(pm.base_model.lora_layers())
    assert len(layers) == 6
    for name, layer in layers.items():
        r, alpha = expected(name)
        A, B = layer.weights("default")
        assert A.shape == (r, layer.in_features), name
        assert B.shape == (layer.out_features, r), name
        assert layer.r["default"] == r and layer.lora_alpha["default"] == alpha, name
        assert layer.scaling["default"] == pytest.approx(alpha / r), name
    ref, _ = _merged_reference(pm, scale_of=lambda n, l: expected(n)[1] / expected(n)[0])
    ids, mask, _ = _batch()
    _assert_close(pm(ids, attention_mask=mask).logits, ref(ids, attention_mask=mask).logits,
                  1e-5, "logits")


# ------------------------------------------------------------------ initialisation

def _lora_factors(pm):
    return [(name, *layer.weights(pm.active_adapter), layer)
            for name, layer in pm.base_model.lora_layers()]


def test_init_true_kaiming_uniform_a_zero_b():
    base = _base()
    ids, mask, _ = _batch()
    bare = base(ids, attention_mask=mask).logits
    pm = get_peft_model(base, LoraConfig(r=8, target_modules=ALL_LINEARS))
    all_a = []
    for name, A, B, layer in _lora_factors(pm):
        bound = 1 / math.sqrt(layer.in_features)
        assert not np.asarray(B).any(), name
        assert np.abs(A).max() <= bound * (1 + 1e-6), name
        all_a.append(np.asarray(A).ravel() / bound)
    a = np.concatenate(all_a)
    assert a.max() > 0.95 and a.min() < -0.95  # spread over the whole interval
    assert abs(a.std() - 1 / math.sqrt(3)) < 0.03  # uniform(-1, 1) std
    # B = 0: the adapter does not change the model yet
    np.testing.assert_array_equal(pm(ids, attention_mask=mask).logits, bare)


def test_init_gaussian():
    r = 4
    peftcore.manual_seed(0)  # a fixed draw: the bounds below are 4 standard errors wide
    pm = get_peft_model(_base(), LoraConfig(r=r, target_modules=ALL_LINEARS,
                                            init_lora_weights="gaussian"))
    a = np.concatenate([np.asarray(A).ravel() for _, A, B, _ in _lora_factors(pm)])
    assert all(not np.asarray(B).any() for _, _, B, _ in _lora_factors(pm))
    assert abs(a.std() - 1 / r) < 0.05 / r  # N(0, 1/r): std 1/r (HF's normal_(std=1/r))
    assert abs(a.mean()) < 4 * (1 / r) / np.sqrt(a.size)
    assert np.abs(a).max() > 2.5 / r  # tails, not a bounded distribution


def test_init_false_nonzero_b():
    base = _base()
    ids, mask, _ = _batch()
    bare = base(ids, attention_mask=mask).logits
    pm = get_peft_model(base, LoraConfig(r=4, target_modules=["query", "value"],
                                         init_lora_weights=False))
    for name, A, B, _ in _lora_factors(pm):
        assert np.asarray(A).any() and np.asarray(B).all(), name
    assert np.abs(pm(ids, attention_mask=mask).logits - bare).max() > 1e-4


@pytest.mark.parametrize("init", [True, False, "gaussian"])
def test_manual_seed_makes_init_reproducible(init):
    def weights(seed):
        peftcore.manual_seed(seed)
        pm = get_peft_model(_base(), LoraConfig(r=4, target_modules=["query", "value"],
                                                init_lora_weights=init))
        return {n: np.array(p) for n, p in pm.named_parameters() if ".lora_" in n}

    first, again, other = weights(11), weights(11), weights(12)
    assert first.keys() == again.keys() == other.keys() and first
    for n in first:
        np.testing.assert_array_equal(first[n], again[n], err_msg=n)
    assert any(not np.array_equal(first[n], other[n]) for n in first if ".lora_A." in n)


# ------------------------------------------------------------------ dropout

def test_lora_dropout_only_in_train_mode():
    config = LoraConfig(r=4, lora_alpha=8, target_modules=ALL_LINEARS, lora_dropout=0.3,
                        init_lora_weights=False)
    pm = _peft(config)
    ids, mask, _ = _batch()
    ref, _ = _merged_reference(pm)
    want = ref(ids, attention_mask=mask).logits
    e1 = pm.eval()(ids, attention_mask=mask).logits
    e2 = pm(ids, attention_mask=mask).logits
    np.testing.assert_array_equal(e1, e2)
    _assert_close(e1, want, 1e-5, "eval logits")  # eval: no dropout at all
    t1 = pm.train()(ids, attention_mask=mask).logits
    t2 = pm(ids, attention_mask=mask).logits
    assert pm.training
    assert np.abs(t1 - e1).max() > 1e-3
    assert np.abs(t1 - t2).max() > 1e-3  # a new mask each forward
    np.testing.assert_array_equal(pm.eval()(ids, attention_mask=mask).logits, e1)
    # with p = 0, train mode runs exactly the eval computation
    pm0 = _peft(LoraConfig(r=4, lora_alpha=8, target_modules=ALL_LINEARS, lora_dropout=0.0,
                           init_lora_weights=False))
    np.testing.assert_array_equal(pm0.train()(ids, attention_mask=mask).logits,
                                  pm0.eval()(ids, attention_mask=mask).logits)


def test_lora_dropout_mask_statistics():
    """LoRA on the (BERT) classifier: with a fixed upstream gradient G of the logits and a
    single example, dA = s·(G·B)ᵀ·dropout(x), so dA / dA(p=0) is the mask scaled by 1/(1-p),
    the same for every row of A."""
    p = 0.3

    def make(dropout):
        pm = _peft(LoraConfig(r=2, target_modules=["classifier"], lora_dropout=dropout,
                              init_lora_weights=False), num_hidden_layers=1)
        return pm.train()

    pm, pm0 = make(p), make(0.0)
    ids, _, _ = _batch(B=1, T=7)
    G = np.random.default_rng(5).standard_normal((1, 3)).astype(np.float32)
    name = "base_model.model.classifier.lora_A.default.weight"
    pm0(ids)
    pm0.backward(G)
    dA0 = dict(pm0.named_parameters())[name].grad.astype(np.float64)
    assert np.abs(dA0).min() > 1e-8
    masks = []
    for _ in range(40):
        pm.zero_grad(set_to_none=True)
        pm(ids)
        pm.backward(G)
        ratio = dict(pm.named_parameters())[name].grad / dA0
        np.testing.assert_allclose(ratio[0], ratio[1], rtol=1e-5, atol=1e-6)
        kept = np.abs(ratio[0]) > 0.5 / (1 - p)
        np.testing.assert_allclose(ratio[0][kept], 1 / (1 - p), rtol=1e-5)
        np.testing.assert_allclose(ratio[0][~kept], 0.0, atol=1e-6)
        masks.append(kept)
    masks = np.array(masks)
    n = masks.size
    drop_rate = 1 - masks.mean()
    assert abs(drop_rate - p) < 4 * math.sqrt(p * (1 - p) / n), drop_rate
    assert len({m.tobytes() for m in masks}) == len(masks)  # a new mask every forward


def _fd_check(loss_fn, params, grads, names, eps=1e-2, n_entries=3, rtol=1e-2, atol=3e-5):
    """Central differences in float64 of the float32 engine's loss, at the largest-gradient
    entries and a random entry of each named parameter."""
    rng = np.random.default_rng(0)
    for name in names:
        p, g = params[name], grads[name].astype(np.float64)
        assert np.isfinite(g).all() and np.abs(g).max() > 1e-4, name
        entries = [np.unravel_index(i, g.shape) for i in np.argsort(-np.abs(g).ravel())[:n_entries]]
        entries.append(tuple(int(rng.integers(k)) for k in g.shape))
        check_entries_by_finite_differences(p, g, entries, loss_fn, eps, rtol, atol, name)


def _lora_names(pm, parts):
    return [n for n, p in pm.named_parameters() if p.requires_grad and any(s in n for s in parts)]


def test_lora_grads_finite_differences():
    config = LoraConfig(r=3, lora_alpha=6, target_modules=["query", "value", "intermediate.dense"],
                        task_type="SEQ_CLS", init_lora_weights=False)
    pm = _peft(config)
    ids, mask, labels = _batch(B=3, T=6, seed=2)

    def loss():
        return float(pm(ids, attention_mask=mask, labels=labels).loss)

    pm(ids, attention_mask=mask, labels=labels)
    pm.backward()
    params = dict(pm.named_parameters())
    grads = {n: p.grad.copy() for n, p in params.items() if p.grad is not None}
    names = _lora_names(pm, ["layer.0.attention.self.query", "layer.1.attention.self.value",
                             "layer.0.intermediate.dense", "layer.1.intermediate.dense",
                             "classifier.modules_to_save"])
    assert len(names) == 10
    _fd_check(loss, params, grads, names)


@pytest.mark.parametrize("sizes", [{}, WIDE], ids=["small", "wide"])
def test_train_mode_dropout_backward_matches_finite_differences(sizes):
    """A model draws each forward's dropout seed from its own count of forwards; pinning
    the count makes the train-mode forward a deterministic function, so its backward can be
    checked against finite differences with the same masks."""
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value", "output.dense"],
                        lora_dropout=0.4, task_type="SEQ_CLS", init_lora_weights=False)
    pm = _peft(config, **sizes).train()
    base = pm.get_base_model()
    ids, mask, labels = _batch(B=3, T=6, seed=4)

    def loss():
        base._forwards = 12345  # every forward draws the same masks
        return float(pm(ids, attention_mask=mask, labels=labels).loss)

    l1, l2 = loss(), loss()
    assert l1 == l2  # same seed -> same masks
    pm.eval()
    assert abs(loss() - l1) > 1e-4  # ... and dropout really is applied in train mode
    pm.train()
    base._forwards = 12345
    pm(ids, attention_mask=mask, labels=labels)
    pm.backward()
    params = dict(pm.named_parameters())
    grads = {n: p.grad.copy() for n, p in params.items() if p.grad is not None}
    names = _lora_names(pm, ["layer.0.attention.self.query", "layer.0.attention.self.value",
                             "layer.1.output.dense", "classifier.modules_to_save.default.weight"])
    assert len(names) == 7
    _fd_check(loss, params, grads, names)


# ------------------------------------------------------------------ which parameters train

def test_only_lora_and_modules_to_save_get_grad():
    config = LoraConfig(r=2, target_modules=["query", "value"], task_type="SEQ_CLS",
                        init_lora_weights=False)
    pm = _peft(config)
    ids, mask, labels = _batch()
    pm(ids, attention_mask=mask, labels=labels)
    pm.backward()
    trainable = []
    for name, p in pm.named_parameters():
        if ".lora_A.default." in name or ".lora_B.default." in name \
                or ".modules_to_save.default." in name:
            assert p.requires_grad, name
            assert p.grad is not None and np.abs(p.grad).max() > 0, name
            trainable.append(name)
        else:
            assert not p.requires_grad, name
            assert p.grad is None, f"frozen {name} got a gradient"
    assert len(trainable) == 2 * 2 * 2 + 2


def test_backward_stops_below_lowest_lora_layer():
    """LoRA on layer 1 only: nothing of layer 0 or the embeddings gets a gradient buffer, and
    layer 1's grads equal those of a model that also carries LoRA on layer 0 and
    backpropagates through it (with layer-0 B = 0 the forwards are identical)."""
    ids, mask, labels = _batch(B=3, T=6, seed=6)
    top = _peft(LoraConfig(r=4, target_modules=["query", "value"], layers_to_transform=[1],
                           task_type="SEQ_CLS", init_lora_weights=False))
    both = _peft(LoraConfig(r=4, target_modules=["query", "value"], task_type="SEQ_CLS",
                            init_lora_weights=False))
    assert {n for n, _ in top.base_model.lora_layers()} == {
        "bert.encoder.layer.1.attention.self.query", "bert.encoder.layer.1.attention.self.value"}
    params_top, params_both = dict(top.named_parameters()), dict(both.named_parameters())
    for name, p in params_both.items():
        if ".lora_" in name:
            if "layer.1." in name:
                p[...] = params_top[name]
            elif ".lora_B." in name:
                p[...] = 0.0
    out_top = top(ids, attention_mask=mask, labels=labels)
    out_both = both(ids, attention_mask=mask, labels=labels)
    np.testing.assert_array_equal(out_top.logits, out_both.logits)
    top.backward()
    both.backward()
    for name, p in params_top.items():
        if p.requires_grad:
            np.testing.assert_allclose(p.grad, params_both[name].grad, rtol=1e-6, atol=1e-9,
                                       err_msg=name)
        else:
            assert p.grad is None, name
    assert np.abs(params_both["base_model.model.bert.encoder.layer.0.attention.self.query"
                              ".lora_B.default.weight"].grad).max() > 0
    # freezing layer 0's LoRA in `both` gives the same grads and no layer-0 buffers
    both.zero_grad(set_to_none=True)
    for name, p in params_both.items():
        if "layer.0." in name:
            p.requires_grad = False
    both(ids, attention_mask=mask, labels=labels)
    both.backward()
    for name, p in params_both.items():
        if "layer.0." in name:
            assert p.grad is None, name
        elif p.requires_grad:
            np.testing.assert_allclose(p.grad, params_top[name].grad, rtol=1e-6, atol=1e-9,
                                       err_msg=name)


# ------------------------------------------------------------------ kernels

ODD = dict(hidden_size=15, num_attention_heads=3, intermediate_size=37, num_labels=5)


@pytest.mark.parametrize("sizes", [ODD, WIDE], ids=["odd", "wide"])
@pytest.mark.parametrize("r", [1, 4, 8, 12, 16])
def test_kernels_odd_sizes_against_chain_rule(r, sizes):
    """Odd in/out sizes (15, 37, 5, or 80, 100) and 185 rows (three 64-row reduction
    chunks, the last partial), ranks in whole sweeps of 8 and not: logits against the merged
    NumPy weights, LoRA grads against s·Bᵀ·G and s·G·Aᵀ with G the engine's gradient of the
    merged weight."""
    alpha = 3 * r + 1
    targets = ALL_LINEARS + ["classifier"]
    pm = _peft(LoraConfig(r=r, lora_alpha=alpha, target_modules=targets,
                          init_lora_weights=False),
               lora_std=0.5 * math.sqrt(15 / sizes["hidden_size"] / r), **sizes)
    ref, factors = _merged_reference(pm, scale_of=lambda n, l: alpha / r, **sizes)
    assert len(factors) == 2 * 6 + 1
    ids, mask, labels = _batch(B=5, T=37, seed=r, num_labels=5)
    mask[1, 20:] = 0
    out = pm(ids, attention_mask=mask, labels=labels)
    want = ref(ids, attention_mask=mask, labels=labels)
    _assert_close(out.logits, want.logits, 2e-5, "logits")
    pm.backward()
    for name, p in ref.named_parameters():
        p.requires_grad = name in {f"{n}.weight" for n in factors}
    ref.backward()
    grads = _lora_grads(pm)
    for name, (A, B, s) in factors.items():
        G = ref.get_submodule(name).weight.grad.astype(np.float64)
        _assert_close(grads[f"base_model.model.{name}.lora_A.default.weight"], s * B.T @ G,
                      1e-4, f"{name} dA")
        _assert_close(grads[f"base_model.model.{name}.lora_B.default.weight"], s * G @ A.T,
                      1e-4, f"{name} dB")


@pytest.mark.parametrize("dropout", [0.0, 0.25])
def test_thread_count_does_not_change_lora_grads(dropout):
    config = LoraConfig(r=16, lora_alpha=16, target_modules=ALL_LINEARS, lora_dropout=dropout,
                        init_lora_weights=False)
    ids, mask, labels = _batch(B=8, T=40, seed=9)
    old = peftcore.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            peftcore.set_num_threads(threads)
            pm = _peft(config).train()  # a fresh model: the same dropout masks
            out = pm(ids, attention_mask=mask, labels=labels)
            pm.backward()
            results.append((out.logits.copy(), _lora_grads(pm)))
    finally:
        peftcore.set_num_threads(old)
    (l1, g1), (l2, g2) = results
    np.testing.assert_array_equal(l1, l2)
    assert g1.keys() == g2.keys() and len(g1) == 24
    for name in g1:
        np.testing.assert_array_equal(g1[name], g2[name], err_msg=name)
