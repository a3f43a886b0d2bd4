"""The engine's KV site (prefix tuning: extra key/value rows in every layer's attention) and
embeddings site (prompt tuning: virtual-token rows), driven through set_block_adapters and
checked against Hugging Face PEFT 0.21 on transformers 4.57: logits, and the gradients of
the prompt parameters, which flow back through the whole frozen encoder."""
from __future__ import annotations

import numpy as np
import pytest

import peftcore
from helpers import (check_grads_by_finite_differences, fixed_masks_loss,  # noqa: F401
                     one_thread)
from peftcore import _C
from peftcore.models.parameter import Parameter

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = dict(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
           intermediate_size=64, max_position_embeddings=48, num_labels=3,
           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
P = 5


def _param(values):
    p = Parameter(_C.Tensor.zeros(np.shape(values)))
    p[...] = values
    p.requires_grad = True
    return p


def _batch(B=3, T=7, seed=1):
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, 40, (B, T))
    mask = np.ones_like(ids)
    mask[-1, T - 3:] = 0
    return ids, mask, rng.integers(0, 3, B)


@pytest.fixture(scope="module")
def refs():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    return torch, transformers, peft


def _hf(refs, folder, config, seed=0):
    torch, transformers, peft = refs
    torch.manual_seed(seed)
    tm = transformers.BertForSequenceClassification(transformers.BertConfig(**CFG))
    with torch.no_grad():
        for p in tm.parameters():
            p.add_(0.2 * torch.randn_like(p))
    tm.save_pretrained(folder)
    pm = peft.get_peft_model(tm, config).double()
    with torch.no_grad():
        emb = pm.prompt_encoder["default"].embedding.weight
        emb.copy_(0.5 * torch.randn_like(emb))
    pm.eval()
    return pm, emb


def _frozen(folder):
    model = peftcore.AutoModelForSequenceClassification.from_pretrained(folder)
    for p in model.parameters():
        p.requires_grad = False
    return model


def _rel(got, want):
    return np.linalg.norm(got - want) / np.linalg.norm(want)


def test_prefix_rows_match_hf_peft(refs, tmp_path):
    torch, _, peft = refs
    pm, emb = _hf(refs, tmp_path, peft.PrefixTuningConfig(task_type="SEQ_CLS",
                                                          num_virtual_tokens=P))
    C, L = CFG["hidden_size"], CFG["num_hidden_layers"]
    model = _frozen(tmp_path)
    table = emb.detach().numpy().astype(np.float32)  # (P, 2·L·C): layer l's keys, values
    prefixes = []
    for l in range(L):
        k = _param(table[:, 2 * l * C:(2 * l + 1) * C])
        v = _param(table[:, (2 * l + 1) * C:(2 * l + 2) * C])
        prefixes.append((k, v))
        model._engine.set_block_adapters(l, "kv", [("prefix", {"key": k.tensor, "value": v.tensor}, {})])
    ids, mask, labels = _batch()
    B, T = ids.shape
    out = pm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
             labels=torch.tensor(labels))
    out.loss.backward()
    positions = np.broadcast_to(P + np.arange(T), (B, T))  # transformers' offset by the cache
    got = model(ids, attention_mask=mask, position_ids=positions, labels=labels)
    np.testing.assert_allclose(got.logits, out.logits.detach().numpy(), rtol=1e-4, atol=1e-4)
    model.backward()
    grad = emb.grad.numpy()
    for l, (k, v) in enumerate(prefixes):
        assert _rel(k.grad, grad[:, 2 * l * C:(2 * l + 1) * C]) < 1e-3, l
        assert _rel(v.grad, grad[:, (2 * l + 1) * C:(2 * l + 2) * C]) < 1e-3, l
    # eval without a backward: first tokens only in the last layer, and split among workers
    old = peftcore.get_num_threads()
    try:
        peftcore.set_num_threads(2)
        with peftcore.no_grad():
            np.testing.assert_allclose(model(ids, attention_mask=mask, position_ids=positions).logits,
                                       out.logits.detach().numpy(), rtol=1e-4, atol=1e-4)
    finally:
        peftcore.set_num_threads(old)


def test_prompt_rows_match_hf_peft(refs, tmp_path):
    torch, _, peft = refs
    pm, emb = _hf(refs, tmp_path, peft.PromptTuningConfig(task_type="SEQ_CLS",
                                                          num_virtual_tokens=P))
    model = _frozen(tmp_path)
    prompt = _param(emb.detach().numpy().astype(np.float32))
    model._engine.set_block_adapters(-1, "embeddings", [("prompt", {"prompt": prompt.tensor}, {})])
    ids, mask, labels = _batch()
    B, T = ids.shape
    out = pm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
             labels=torch.tensor(labels))
    out.loss.backward()
    # PEFT: P virtual tokens in front, the mask's ones and token type 0 for them, positions
    # 0..P+T-1, and the head reading position 0 (the first virtual token)
    ids_p = np.concatenate([np.zeros((B, P), ids.dtype), ids], axis=1)
    mask_p = np.concatenate([np.ones((B, P), mask.dtype), mask], axis=1)
    got = model(ids_p, attention_mask=mask_p, labels=labels)
    np.testing.assert_allclose(got.logits, out.logits.detach().numpy(), rtol=1e-4, atol=1e-4)
    model.backward()
    assert _rel(prompt.grad, emb.grad.numpy()) < 1e-3
    with peftcore.no_grad():
        np.testing.assert_allclose(model(ids_p, attention_mask=mask_p).logits,
                                   out.logits.detach().numpy(), rtol=1e-4, atol=1e-4)


def test_prefix_and_prompt_grads_finite_differences():
    """Both sites at once, in train mode with attention dropout (the masks cover the prefix
    columns too), without torch."""
    rng = np.random.default_rng(4)
    model = peftcore.AutoModelForSequenceClassification.from_config(
        dict(CFG, model_type="bert", attention_probs_dropout_prob=0.2), seed=0)
    for p in model.parameters():
        p[...] = p + 0.2 * rng.standard_normal(p.shape)
        p.requires_grad = False
    C = CFG["hidden_size"]
    params = {}
    for l in range(2):
        k, v = (_param((0.5 * rng.standard_normal((P - l, C))).astype(np.float32)) for _ in "kv")
        params[f"{l}.key"], params[f"{l}.value"] = k, v
        model._engine.set_block_adapters(l, "kv", [("prefix", {"key": k.tensor, "value": v.tensor}, {})])
    prompt = _param((0.5 * rng.standard_normal((3, C))).astype(np.float32))
    params["prompt"] = prompt
    model._engine.set_block_adapters(-1, "embeddings", [("prompt", {"prompt": prompt.tensor}, {})])
    model.train()
    ids, mask, labels = _batch(seed=6)

    loss = fixed_masks_loss(model, ids, mask, labels, 777)
    loss()
    model.backward()
    check_grads_by_finite_differences(params, loss, rng, 1e-2, 2e-2, 5e-5)


def test_bad_prompt_entries_raise_and_change_nothing():
    import re
    model = peftcore.AutoModelForSequenceClassification.from_config(
        dict(CFG, model_type="bert"), seed=0)
    ids, mask, _ = _batch()
    before = model(ids, attention_mask=mask).logits.copy()
    C = CFG["hidden_size"]
    cases = [
        ((0, "kv", [("prefix", {"key": _C.Tensor.zeros((P, C)), "value": _C.Tensor.zeros((P + 1, C))}, {})]),
         ValueError, "key and value must both be (P, 32)"),
        ((0, "kv", [("prefix", {"key": _C.Tensor.zeros((P, C - 1)), "value": _C.Tensor.zeros((P, C - 1))}, {})]),
         ValueError, "(P, 32)"),
        ((-1, "embeddings", [("prompt", {"prompt": _C.Tensor.zeros((P, C + 1))}, {})]),
         ValueError, "the virtual tokens must be (P, 32)"),
        ((-1, "embeddings", [("prefix", {}, {})]), ValueError,
         "'prefix' is not an adapter method that acts at the embeddings site"),
        ((0, "embeddings", []), IndexError, "the embeddings site takes layer -1"),
        ((0, "kv", [("prefix", {"key": _C.Tensor.zeros((P, C)), "value": _C.Tensor.zeros((P, C))},
                     {"dropout": 0.1})]), ValueError, "takes no options"),
    ]
    for args, error, message in cases:
        with pytest.raises(error, match=re.escape(message)):
            model._engine.set_block_adapters(*args)
    np.testing.assert_array_equal(model(ids, attention_mask=mask).logits, before)
