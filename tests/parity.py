"""What the parity tests share ((IA)³, BitFit, bottleneck adapters, adapter files): the same
random BERT / RoBERTa in transformers and peftcore, batches, logits, gradient and loss
comparisons, and the two training loops (torch.optim.AdamW beside peftcore.optim.AdamW).

Every function that touches torch imports it inside, so this module imports without torch;
the `hf_models` fixture skips when torch, transformers or peft is missing.
"""
from __future__ import annotations

import warnings
import zlib

import numpy as np
import pytest

import peftcore

TINY = dict(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, num_labels=3, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0)
MODEL_TYPES = ["bert", "roberta"]
# one AdamW for both frameworks; settings away from the defaults so each one must be honoured
ADAMW = dict(lr=2e-2, betas=(0.85, 0.99), eps=1e-6, weight_decay=0.05)


def hf_config(model_type, tiny=TINY):
    """transformers' config of the tiny BERT / RoBERTa (shapes and dropout from `tiny`)."""
    import transformers
    if model_type == "bert":
        config = transformers.BertConfig(max_position_embeddings=24, **tiny)
    else:
        config = transformers.RobertaConfig(max_position_embeddings=26, pad_token_id=1,
                                            bos_token_id=0, eos_token_id=2, type_vocab_size=1,
                                            **tiny)
    config._attn_implementation = "eager"
    return config


def hf_class(model_type):
    """transformers' sequence-classification class of `model_type`."""
    import transformers
    return {"bert": transformers.BertForSequenceClassification,
            "roberta": transformers.RobertaForSequenceClassification}[model_type]


_hf_class = hf_class  # the name the tests first imported


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    """{model_type: folder}: random small models without dropout, every weight significant,
    saved by transformers so both libraries load the same weights."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    return {k: folder for k, (_, folder) in save_random_models(tmp_path_factory).items()}


def save_random_models(tmp_path_factory, tiny=TINY, model_types=MODEL_TYPES):
    """{model_type: (torch model, folder)}: random small models (config hf_config(·, tiny)),
    every weight significant, saved by transformers so both libraries load the same
    weights. The caller skips when torch or transformers is missing."""
    import torch
    out = {}
    for model_type in model_types:
        torch.manual_seed(0)
        model = hf_class(model_type)(hf_config(model_type, tiny)).eval()
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                noise = torch.randn(p.shape, generator=gen)
                p.copy_(1 + 0.1 * noise if "LayerNorm.weight" in name else 0.15 * noise)
            if model_type == "roberta":  # keep transformers' padding rows
                model.roberta.embeddings.word_embeddings.weight[1] = 0
                model.roberta.embeddings.position_embeddings.weight[1] = 0
        folder = tmp_path_factory.mktemp(model_type)
        model.save_pretrained(folder)
        out[model_type] = (model, folder)
    return out


def hf_load(hf_models, model_type):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hf_class(model_type).from_pretrained(hf_models[model_type],
                                                     attn_implementation="eager").eval()


def pc_load(hf_models, model_type):
    return peftcore.AutoModelForSequenceClassification.from_pretrained(hf_models[model_type])


def batch(B=4, T=7, seed=0):
    """Token ids (never RoBERTa's padding id 1), a mask with padding in the last row, labels."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, TINY["vocab_size"], (B, T))
    mask = np.ones_like(ids)
    mask[-1, T - 3:] = 0
    return ids, mask, rng.integers(0, TINY["num_labels"], B)


def pc_logits(model, b):
    ids, mask = b[:2]
    return np.array(model(ids, attention_mask=mask).logits, copy=True)


def hf_logits(model, b):
    import torch
    ids, mask = b[:2]
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()


def close(actual, expected, rtol, what=""):
    """max |actual - expected| <= rtol · max |expected|."""
    a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert a.shape == e.shape, (what, a.shape, e.shape)
    err, scale = np.abs(a - e).max(), max(np.abs(e).max(), 1e-12)
    assert err <= rtol * scale, f"{what}: max error {err:.3g} vs scale {scale:.3g}"


def seeded_values(name, shape, center=0.0, std=0.3):
    """Values for one tensor, keyed by its name, so both frameworks get the same ones."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    return (center + std * rng.standard_normal(shape)).astype(np.float32)


def set_pc(pm, values: dict):
    """Write values {name: array} into peftcore parameters of those names."""
    params = dict(pm.named_parameters())
    for name, value in values.items():
        assert tuple(params[name].shape) == value.shape, (name, params[name].shape, value.shape)
        params[name][...] = value


def set_hf(model, values: dict):
    import torch
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in values.items():
            assert tuple(params[name].shape) == value.shape, (name, params[name].shape)
            params[name].copy_(torch.from_numpy(value))


def pc_grads(pm, b):
    """(loss, {name: grad}) of one forward with labels and backward, for every trainable
    parameter."""
    ids, mask, labels = b
    pm.zero_grad(set_to_none=True)
    loss = float(pm(ids, attention_mask=mask, labels=labels).loss)
    pm.backward()
    return loss, {n: np.array(p.grad, copy=True) for n, p in pm.named_parameters()
                  if p.requires_grad}


def hf_grads(model, b):
    import torch
    ids, mask, labels = b
    model.zero_grad(set_to_none=True)
    out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                labels=torch.tensor(labels))
    out.loss.backward()
    return float(out.loss.detach()), {n: p.grad.numpy().copy() for n, p in model.named_parameters()
                             if p.requires_grad}


def compare_grads(ours: dict, theirs: dict, rtol=1e-3, floor=1e-6):
    """Same names; every reference gradient of norm >= floor matched within rtol (relative
    Frobenius error). Returns the names skipped for a reference norm below floor."""
    assert sorted(ours) == sorted(theirs)
    skipped = []
    for name, ref in theirs.items():
        got = ours[name]
        assert got.shape == ref.shape, (name, got.shape, ref.shape)
        norm = np.linalg.norm(ref.astype(np.float64))
        if norm < floor:
            skipped.append(name)
            continue
        err = np.linalg.norm(got.astype(np.float64) - ref)
        assert err <= rtol * norm, f"{name}: |error| {err:.3g} vs |grad| {norm:.3g}"
    return skipped


def train_pc(pm, steps=20, seed=0, batches=2):
    """Losses of `steps` AdamW steps (ADAMW), train mode, cycling over `batches` seeded
    batches (random labels: only a few fixed batches can be learnt)."""
    opt = peftcore.optim.AdamW([p for p in pm.parameters() if p.requires_grad], **ADAMW)
    pm.train()
    losses = []
    for step in range(steps):
        ids, mask, labels = batch(seed=seed + step % batches)
        losses.append(float(pm(ids, attention_mask=mask, labels=labels).loss))
        pm.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    pm.eval()
    return losses


def train_hf(model, steps=20, seed=0, batches=2):
    import torch
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], **ADAMW)
    model.train()
    losses = []
    for step in range(steps):
        ids, mask, labels = batch(seed=seed + step % batches)
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    labels=torch.tensor(labels))
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(out.loss.detach()))
    model.eval()
    return losses


def count_trainable_hf(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def check_logits(theirs, ours, b, bare_logits, rtol=1e-4):
    """ours' logits on batch b (also under peftcore.no_grad) equal theirs' within rtol, and
    theirs differ from the bare model's (bare_logits) by more than 1e-2: the adapter matters,
    not a comparison of two bare models."""
    want = hf_logits(theirs, b)
    close(pc_logits(ours, b), want, rtol, "logits")
    with peftcore.no_grad():
        close(pc_logits(ours, b), want, rtol, "logits under no_grad")
    assert np.abs(want - bare_logits).max() > 1e-2
    return want


def grads_with_equal_loss(theirs, ours, b):
    """(their grads, our grads) of one forward with labels and backward on batch b, after
    checking the two losses agree within 1e-4 (relative above 1)."""
    loss_t, g_t = hf_grads(theirs, b)
    loss_o, g_o = pc_grads(ours, b)
    assert abs(loss_o - loss_t) <= 1e-4 * max(1.0, abs(loss_t))
    return g_t, g_o


def assert_frozen_without_grad(model):
    """Frozen peftcore parameters get no gradient buffer."""
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, name
