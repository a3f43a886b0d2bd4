"""The engine's block sites (csrc/adapters/bottleneck.c), driven through
Encoder.set_block_adapters: AdapterHub `adapters` 1.3.0 on torch is the reference for the
forward (every option of its bottleneck flow) and for the gradients; central differences
check the backward where torch is absent."""
from __future__ import annotations

import numpy as np
import pytest

import peftcore
from helpers import (assert_dropout_acts, check_entries_by_finite_differences,  # noqa: F401
                     check_grads_by_finite_differences, engine_param, fixed_masks_loss,
                     one_thread, random_batch)
from peftcore import _C

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = dict(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
           intermediate_size=64, max_position_embeddings=48, num_labels=3,
           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)

# option sets of adapters' BnConfig: its two placements and the switches of its data flow
CASES = {
    "pfeiffer": dict(mh_adapter=False, output_adapter=True, non_linearity="relu",
                     original_ln_before=True, original_ln_after=True, residual_before_ln=True),
    "houlsby": dict(mh_adapter=True, output_adapter=True, non_linearity="swish",
                    original_ln_before=False, original_ln_after=True, residual_before_ln=True),
    "norms_gate_learned": dict(mh_adapter=True, output_adapter=True, non_linearity="gelu",
                               original_ln_before=True, original_ln_after=False,
                               residual_before_ln="post_add", ln_before=True, ln_after=True,
                               use_gating=True, scaling="learned"),
    "residual_after_ln": dict(mh_adapter=False, output_adapter=True, non_linearity="tanh",
                              original_ln_before=True, original_ln_after=True,
                              residual_before_ln=False, adapter_residual_before_ln=True,
                              ln_after=True, scaling="channel"),
    "gelu_new_scaled": dict(mh_adapter=True, output_adapter=False, non_linearity="gelu_new",
                            original_ln_before=False, original_ln_after=True,
                            residual_before_ln=True, scaling=0.5, use_gating=True),
    "leaky_linear_ln": dict(mh_adapter=True, output_adapter=True, non_linearity="leakyrelu",
                            original_ln_before=True, original_ln_after=False,
                            residual_before_ln=False, ln_before=True),
}
ENGINE_OPTIONS = ("non_linearity", "residual_before_ln", "original_ln_before",
                  "original_ln_after", "adapter_residual_before_ln")
BLOCKS = {"attention": "attention.output", "ffn": "output"}


def _engine_entry(prefix, params, case):
    """set_block_adapters' entry from adapters' parameters of one block (name -> array)"""
    down = "adapter_down.1" if case.get("ln_before") else "adapter_down.0"
    names = {"down_weight": f"{down}.weight", "down_bias": f"{down}.bias",
             "up_weight": "adapter_up.weight", "up_bias": "adapter_up.bias",
             "norm_before_weight": "adapter_norm_before.weight",
             "norm_before_bias": "adapter_norm_before.bias",
             "norm_after_weight": "adapter_norm_after.weight",
             "norm_after_bias": "adapter_norm_after.bias",
             "gate_weight": "gate.weight", "gate_bias": "gate.bias", "scaling": "scaling"}
    tensors = {k: engine_param(params[f"{prefix}.{v}"]) for k, v in names.items()
               if f"{prefix}.{v}" in params}
    options = {k: case.get(k, False) for k in ENGINE_OPTIONS}
    options["non_linearity"] = case["non_linearity"]
    if isinstance(case.get("scaling", 1.0), float):
        options["scaling"] = case.get("scaling", 1.0)
    return tensors, ("bottleneck", {k: p.tensor for k, p in tensors.items()}, options)


def _peftcore_with(case, params, folder):
    model = peftcore.AutoModelForSequenceClassification.from_pretrained(folder)
    for n, p in model.named_parameters():
        p.requires_grad = False
    adapter_params = {}
    for l in range(CFG["num_hidden_layers"]):
        for block, where in BLOCKS.items():
            prefix = f"bert.encoder.layer.{l}.{where}.adapters.a"
            if f"{prefix}.adapter_up.weight" not in params:
                continue
            tensors, entry = _engine_entry(prefix, params, case)
            model._engine.set_block_adapters(l, block, [entry])
            adapter_params.update({f"{prefix}:{k}": p for k, p in tensors.items()})
    return model, adapter_params


@pytest.fixture(scope="module")
def torch_refs():
    return (pytest.importorskip("torch"), pytest.importorskip("transformers"),
            pytest.importorskip("adapters"))


def _torch_pair(torch_refs, case, folder, seed=0):
    torch, transformers, adapters = torch_refs
    torch.manual_seed(seed)
    tm = transformers.BertForSequenceClassification(transformers.BertConfig(**CFG))
    with torch.no_grad():
        for p in tm.parameters():
            p.add_(0.2 * torch.randn_like(p))
    tm.save_pretrained(folder)
    adapters.init(tm)
    tm.add_adapter("a", config=adapters.BnConfig(reduction_factor=4, **case))
    tm.set_active_adapters("a")
    tm.train_adapter("a")
    with torch.no_grad():
        for n, p in tm.named_parameters():
            if ".adapters.a." in n:
                p.copy_(1.0 + 0.3 * torch.randn_like(p) if n.endswith("scaling")
                        else 0.2 * torch.randn_like(p))
    tm.eval()
    params = {n: p.detach().numpy().copy() for n, p in tm.named_parameters()
              if ".adapters.a." in n}
    return tm, params


def _batch(B=3, T=7, seed=1):
    return random_batch(B, T, seed, low=2, pad=2)


@pytest.mark.parametrize("name", list(CASES))
def test_logits_and_grads_match_adapters(torch_refs, name, tmp_path):
    torch = torch_refs[0]
    case = CASES[name]
    tm, params = _torch_pair(torch_refs, case, tmp_path)
    model, adapter_params = _peftcore_with(case, params, tmp_path)
    ids, mask, labels = _batch()
    tm = tm.double()  # the reference in float64
    out = tm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
             labels=torch.tensor(labels))
    out.loss.backward()
    got = model(ids, attention_mask=mask, labels=labels)
    np.testing.assert_allclose(got.logits, out.logits.detach().numpy(), rtol=1e-4, atol=1e-4)
    assert abs(float(got.loss) - out.loss.item()) < 1e-4
    model.backward()
    torch_grads = {n: p.grad.numpy() for n, p in tm.named_parameters() if ".adapters.a." in n}
    down = "adapter_down.1" if case.get("ln_before") else "adapter_down.0"
    names = {"down_weight": f"{down}.weight", "down_bias": f"{down}.bias",
             "up_weight": "adapter_up.weight", "up_bias": "adapter_up.bias",
             "norm_before_weight": "adapter_norm_before.weight",
             "norm_before_bias": "adapter_norm_before.bias",
             "norm_after_weight": "adapter_norm_after.weight",
             "norm_after_bias": "adapter_norm_after.bias",
             "gate_weight": "gate.weight", "gate_bias": "gate.bias", "scaling": "scaling"}
    assert len(adapter_params) == len(torch_grads)
    for key, p in adapter_params.items():
        prefix, part = key.split(":")
        want = torch_grads[f"{prefix}.{names[part]}"]
        if np.linalg.norm(want) < 1e-6:
            continue
        # 1e-3 relative, plus 1e-6 of the block's largest gradient: a scalar multiplier
        # (scaling, gate) of what a LayerNorm then normalises has an almost cancelling true
        # gradient, which float32 gets to ~5e-3 relative (torch's float32 run as well)
        block = max(np.linalg.norm(g) for n, g in torch_grads.items() if n.startswith(prefix))
        err = np.linalg.norm(p.grad.reshape(want.shape) - want)
        assert err <= 1e-3 * np.linalg.norm(want) + 1e-6 * block, (key, err, np.linalg.norm(want))
    with peftcore.no_grad():  # eval without a backward: whole or first tokens, in chunks
        np.testing.assert_allclose(model(ids, attention_mask=mask).logits,
                                   out.logits.detach().numpy(), rtol=1e-4, atol=1e-4)


def _random_bottlenecks(model, rng, blocks, options_of, every_part=False, scaling_len=None, r=8):
    """Bottleneck adapters of random tensors at `blocks` of both layers (options_of(block):
    their options); every_part: both norms, a gate and a scaling of scaling_len elements too.
    Their parameters by "layer.block.tensor"."""
    C, params = CFG["hidden_size"], {}
    for l in range(2):
        for block in blocks:
            t = {"down_weight": 0.4 * rng.standard_normal((r, C)),
                 "down_bias": 0.4 * rng.standard_normal(r),
                 "up_weight": 0.4 * rng.standard_normal((C, r)),
                 "up_bias": 0.4 * rng.standard_normal(C)}
            if every_part:
                t.update({"norm_before_weight": 1 + 0.3 * rng.standard_normal(C),
                          "norm_before_bias": 0.3 * rng.standard_normal(C),
                          "norm_after_weight": 1 + 0.3 * rng.standard_normal(C),
                          "norm_after_bias": 0.3 * rng.standard_normal(C),
                          "gate_weight": 0.4 * rng.standard_normal((1, C)),
                          "gate_bias": 0.4 * rng.standard_normal(1),
                          "scaling": 1 + 0.3 * rng.standard_normal(scaling_len)})
            t = {k: engine_param(v.astype(np.float32)) for k, v in t.items()}
            params.update({f"{l}.{block}.{k}": p for k, p in t.items()})
            model._engine.set_block_adapters(l, block, [(
                "bottleneck", {k: p.tensor for k, p in t.items()}, options_of(block))])
    return params


def test_block_adapter_grads_finite_differences():
    """Every switch at once (norms, gate, learned scaling, "post_add"), without torch"""
    rng = np.random.default_rng(3)
    model = peftcore.AutoModelForSequenceClassification.from_config(
        dict(CFG, model_type="bert"), seed=0)
    for n, p in model.named_parameters():
        p[...] = p + 0.2 * rng.standard_normal(p.shape)
        p.requires_grad = n.endswith("LayerNorm.weight")  # the block's own LayerNorms too
    params = _random_bottlenecks(model, rng, BLOCKS, lambda block: {
        "non_linearity": "silu", "residual_before_ln": "post_add", "original_ln_before": True,
        "original_ln_after": True}, every_part=True, scaling_len=1)
    ids, mask, labels = _batch(seed=5)

    def loss():
        return float(model(ids, attention_mask=mask, labels=labels).loss)

    model(ids, attention_mask=mask, labels=labels)
    model.backward()
    ln = {n: p for n, p in model.named_parameters() if p.requires_grad}
    check_grads_by_finite_differences({**params, **ln}, loss, rng, 1e-2, 2e-2, 5e-5)


FLOWS = {  # the backward's paths: z = LN(h + x) or h; residual h, h + x or z; norms, gate
    "pfeiffer": {"non_linearity": "relu", "residual_before_ln": True,
                 "original_ln_before": True, "original_ln_after": True},
    "houlsby": {"non_linearity": "silu", "residual_before_ln": True,
                "original_ln_before": False, "original_ln_after": True},
    "post_add_gated_norms": {"non_linearity": "gelu", "residual_before_ln": "post_add",
                             "original_ln_before": True, "original_ln_after": False},
    "residual_z_ln_after": {"non_linearity": "tanh", "residual_before_ln": False,
                            "original_ln_before": False, "original_ln_after": True,
                            "adapter_residual_before_ln": True},
}


@pytest.mark.parametrize("flow", list(FLOWS))
def test_block_adapter_grads_through_dropout_finite_differences(flow):
    """Train mode with the branches' dropout (which the adapter's backward applies to the
    branch's gradient) and the adapter's own: central differences of a loss whose masks are
    held fixed, for the adapter's tensors, the blocks' LayerNorms, the branches below each
    junction (attention output and FFN output biases) and the embeddings under layer 0."""
    rng = np.random.default_rng(11)
    model = peftcore.AutoModelForSequenceClassification.from_config(
        dict(CFG, model_type="bert", hidden_dropout_prob=0.2), seed=0)
    trained = ("LayerNorm.weight", "attention.output.dense.bias", "output.dense.bias")
    for n, p in model.named_parameters():
        p[...] = p + 0.2 * rng.standard_normal(p.shape)
        p.requires_grad = n.endswith(trained)
    params = _random_bottlenecks(model, rng, BLOCKS,
                                 lambda block: dict(FLOWS[flow], dropout=0.25, scaling=0.7),
                                 every_part=flow == "post_add_gated_norms",
                                 scaling_len=CFG["hidden_size"])
    model.train()
    ids, mask, labels = _batch(seed=6)
    loss = fixed_masks_loss(model, ids, mask, labels, 3)
    loss()
    model.backward()
    assert_dropout_acts(model, loss, ids, mask, labels)
    checked = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert len(checked) == 2 * 4 + 1  # 2 LayerNorms and 2 branch biases a layer, embeddings'
    check_grads_by_finite_differences({**params, **checked}, loss, rng, 1e-2, 2e-2, 5e-5)


@pytest.mark.parametrize("blocks", [("ffn",), ("attention", "ffn")])
def test_backward_stopping_under_the_lowest_adapter_changes_no_gradient(blocks):
    """Where nothing under the lowest adapter trains, the backward stops at its junction:
    every gradient is the same bits as where a bias under it trains (and the backward goes
    down to it), and that bias's gradient is what central differences give."""
    rng = np.random.default_rng(4)
    model = peftcore.AutoModelForSequenceClassification.from_config(
        dict(CFG, model_type="bert", hidden_dropout_prob=0.1), seed=0)
    for n, p in model.named_parameters():
        p.requires_grad = n.startswith("classifier")
    adapters = _random_bottlenecks(model, rng, blocks, lambda block: {
        "non_linearity": "silu", "residual_before_ln": True,
        "original_ln_before": block == "ffn", "original_ln_after": True})
    model.train()
    ids, mask, labels = _batch(seed=8)
    params = dict(model.named_parameters())
    under = params["bert.encoder.layer.0.attention.self.query.bias"]

    def grads(under_trains):
        under.requires_grad = under_trains
        for p in list(adapters.values()) + list(params.values()):
            p.grad = None
        model._forwards = 5
        model(ids, attention_mask=mask, labels=labels)
        model.backward()
        return {k: p.grad.copy() for k, p in list(adapters.items()) + list(params.items())
                if p.grad is not None}

    stopped, through = grads(False), grads(True)
    assert set(through) - set(stopped) == {"bert.encoder.layer.0.attention.self.query.bias"}
    for k, g in stopped.items():
        assert np.array_equal(g, through[k]), k

    loss = fixed_masks_loss(model, ids, mask, labels, 5)
    g = through["bert.encoder.layer.0.attention.self.query.bias"].astype(np.float64)
    check_entries_by_finite_differences(under, g, [(int(np.argmax(np.abs(g))),), (3,)], loss,
                                        1e-2, 2e-2, 5e-5, "query.bias")


def test_removing_block_adapters_restores_the_bare_model_bitwise():
    model = peftcore.AutoModelForSequenceClassification.from_config(
        dict(CFG, model_type="bert"), seed=0)
    ids, mask, _ = _batch()
    bare = model(ids, attention_mask=mask).logits.copy()
    C = CFG["hidden_size"]
    rng = np.random.default_rng(0)
    t = {"down_weight": engine_param(rng.standard_normal((4, C)).astype(np.float32)),
         "down_bias": engine_param(np.zeros(4, np.float32)),
         "up_weight": engine_param(rng.standard_normal((C, 4)).astype(np.float32)),
         "up_bias": engine_param(np.zeros(C, np.float32))}
    model._engine.set_block_adapters(1, "ffn", [("bottleneck", {k: p.tensor for k, p in t.items()}, {})])
    assert np.abs(model(ids, attention_mask=mask).logits - bare).max() > 1e-3
    model._engine.set_block_adapters(1, "ffn", [])
    np.testing.assert_array_equal(model(ids, attention_mask=mask).logits, bare)


@pytest.mark.parametrize("entry, error, message", [
    (("bottleneck", {"down_weight": None}, {}), ValueError, "needs tensor 'down_weight'"),
    (("lora", {}, {}), ValueError, "not an adapter method that acts at the attention site"),
    (("bottleneck", {"down": None}, {}), ValueError, "unknown tensor 'down'"),
    (("bottleneck", {}, {"non_linearity": "softsign"}), ValueError,
     "option non_linearity cannot be 'softsign'"),
    (("bottleneck", {}, {"colour": 1}), ValueError, "unknown option 'colour'"),
    (("bottleneck", {}, {"dropout": 1.5}), ValueError, "dropout must be in [0, 1)"),
    ("bottleneck", TypeError, "must be (method: str, tensors: dict, options: dict)"),
])
def test_bad_block_entries_raise_and_change_nothing(entry, error, message):
    import re
    model = peftcore.AutoModelForSequenceClassification.from_config(
        dict(CFG, model_type="bert"), seed=0)
    C = CFG["hidden_size"]
    good = {"down_weight": _C.Tensor.zeros((4, C)), "down_bias": _C.Tensor.zeros((4,)),
            "up_weight": _C.Tensor.zeros((C, 4)), "up_bias": _C.Tensor.zeros((C,))}
    if isinstance(entry, tuple) and entry[0] == "bottleneck":
        tensors = dict(good, **entry[1])
        entry = ("bottleneck", {k: v for k, v in tensors.items()}, entry[2])
        if "down_weight" in entry[1] and entry[1]["down_weight"] is None:
            del entry[1]["down_weight"]
    ids, mask, _ = _batch()
    before = model(ids, attention_mask=mask).logits.copy()
    with pytest.raises(error, match=re.escape(message)):
        model._engine.set_block_adapters(0, "attention", [entry])
    np.testing.assert_array_equal(model(ids, attention_mask=mask).logits, before)
    with pytest.raises(ValueError, match="block must be 'attention' or 'ffn'"):
        model._engine.set_block_adapters(0, "mlp", [])
    with pytest.raises(IndexError, match="layer 2 out of range"):
        model._engine.set_block_adapters(2, "ffn", [])


@pytest.mark.parametrize("dims", [{}, dict(intermediate_lora=True, output_lora=True)],
                         ids=["qv", "qv+ffn"])
def test_gated_lora_matches_adapters(torch_refs, dims, tmp_path):
    """The linear output site's LoRA with a gate (UniPELT's, AdapterHub's use_gating): the
    gate, a mean over each sequence's rows, replaces alpha/r. On query and value the last
    layer still runs at the first tokens (the query's gate is handed the layer's input at
    every row); with the feed-forward's LoRA it runs whole."""
    torch, transformers, adapters = torch_refs
    torch.manual_seed(3)
    tm = transformers.BertForSequenceClassification(transformers.BertConfig(**CFG))
    with torch.no_grad():
        for p in tm.parameters():
            p.add_(0.2 * torch.randn_like(p))
    tm.save_pretrained(tmp_path)
    adapters.init(tm)
    tm.add_adapter("a", config=adapters.LoRAConfig(r=4, alpha=2, use_gating=True, **dims))
    tm.set_active_adapters("a")
    tm.train_adapter("a")
    with torch.no_grad():
        for n, p in tm.named_parameters():
            if ".loras.a." in n:
                p.copy_(0.4 * torch.randn_like(p))
    tm = tm.double().eval()
    model = peftcore.AutoModelForSequenceClassification.from_pretrained(tmp_path)
    for p in model.parameters():
        p.requires_grad = False
    mine = {}
    torch_params = dict(tm.named_parameters())
    for name, module in model.named_modules():
        prefix = f"{name}.loras.a"
        if f"{prefix}.lora_A" not in torch_params:
            continue
        parts = [engine_param(torch_params[f"{prefix}.{k}"].detach().numpy().astype(np.float32))
                 for k in ("lora_A", "lora_B", "gate.weight", "gate.bias")]
        mine[prefix] = parts
        model._engine.set_adapters(module.index, [("lora", "out", tuple(p.tensor for p in parts),
                                                   1.0, 0.0)])
    assert len(mine) == 2 * CFG["num_hidden_layers"] * (2 if dims else 1)
    ids, mask, labels = _batch()
    out = tm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
             labels=torch.tensor(labels))
    out.loss.backward()
    got = model(ids, attention_mask=mask, labels=labels)
    np.testing.assert_allclose(got.logits, out.logits.detach().numpy(), rtol=1e-4, atol=1e-4)
    model.backward()
    for prefix, parts in mine.items():
        for p, k in zip(parts, ("lora_A", "lora_B", "gate.weight", "gate.bias")):
            want = torch_params[f"{prefix}.{k}"].grad.numpy()
            err = np.linalg.norm(p.grad.reshape(want.shape) - want)
            assert err <= 1e-3 * np.linalg.norm(want) + 1e-7, (prefix, k, err)
    with peftcore.no_grad():
        np.testing.assert_allclose(model(ids, attention_mask=mask).logits,
                                   out.logits.detach().numpy(), rtol=1e-4, atol=1e-4)
