"""Encoder models (BERT / RoBERTa / MiniLM) against transformers and against finite differences.

Parity tests (need torch + transformers) build small random transformers models, save them
with save_pretrained (so loading is covered too) and compare outputs and every gradient with
torch autograd, in eval mode (no dropout). The finite-difference tests need no torch: they
check the engine's gradients against float64 central differences of its own loss.
"""
from __future__ import annotations

import contextlib
import json
import warnings

import numpy as np
import pytest

from helpers import (assert_dropout_acts, check_entries_by_finite_differences, fixed_masks_loss,
                     torch_repr_as_peftcore)

import peftcore
from peftcore import AutoModel, AutoModelForSequenceClassification

# a small architecture: big enough for several heads, small enough to run in milliseconds
TINY = dict(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=24)
LOGIT_ATOL = 1e-4
GRAD_RTOL = 1e-3


# ------------------------------------------------------------------ helpers (transformers side)

def _torch():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return torch


def _hf_config(model_type: str, num_labels: int = 2, **overrides):
    import transformers
    kw = dict(TINY, num_labels=num_labels, **overrides)
    if model_type == "bert":
        return transformers.BertConfig(**kw)
    # RoBERTa: pad 1, positions start at pad + 1, one token type
    kw.setdefault("type_vocab_size", 1)
    kw["max_position_embeddings"] = kw["max_position_embeddings"] + 2
    return transformers.RobertaConfig(pad_token_id=1, bos_token_id=0, eos_token_id=2, **kw)


def _randomize(model, seed: int, std: float = 0.15):
    """Replace transformers' init (zero biases, unit LayerNorm, std 0.02) by values that make
    every term of the forward matter: random biases and LayerNorm affines, sharper attention."""
    torch = _torch()
    gen = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(std * noise)


def _hf_model(model_type: str, head: bool, seed: int = 0, num_labels: int = 2, **overrides):
    torch = _torch()
    import transformers
    config = _hf_config(model_type, num_labels=num_labels, **overrides)
    config._attn_implementation = "eager"
    classes = {("bert", False): transformers.BertModel,
               ("bert", True): transformers.BertForSequenceClassification,
               ("roberta", False): transformers.RobertaModel,
               ("roberta", True): transformers.RobertaForSequenceClassification}
    torch.manual_seed(seed)
    model = classes[model_type, head](config)
    _randomize(model, seed)
    return model.eval()


def _save(model, folder, safetensors: bool = True):
    folder.mkdir(parents=True, exist_ok=True)
    if safetensors:
        model.save_pretrained(folder)
    else:  # the legacy layout: config.json + torch.save'd state dict
        torch = _torch()
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder


def _load(folder, head: bool, **kw):
    cls = AutoModelForSequenceClassification if head else AutoModel
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every weight must be found, none left over
        return cls.from_pretrained(folder, **kw).eval()


def _batch(model_type: str, vocab: int, B: int = 4, T: int = 10, seed: int = 0):
    """Right-padded batch: lengths T, T-3, 5, 1 (a lone [CLS]); padding holds pad_token_id."""
    rng = np.random.default_rng(seed)
    pad = 1 if model_type == "roberta" else 0
    ids = rng.integers(3, vocab, size=(B, T))
    lengths = [T, T - 3, 5, 1, T - 1, 2][:B]
    mask = (np.arange(T)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    ids[mask == 0] = pad
    return ids, mask


def _hf_run(model, ids, mask, types=None, labels=None):
    torch = _torch()
    kw = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    if types is not None:
        kw["token_type_ids"] = torch.tensor(types)
    if labels is not None:
        kw["labels"] = torch.tensor(labels)
    model.zero_grad(set_to_none=True)
    return model(**kw)


def _hf_grads(model) -> dict:
    return {n: p.grad.numpy().copy() for n, p in model.named_parameters() if p.grad is not None}


def _grad_error(name, ours, theirs, scale):
    """Relative error max|ours - theirs| / max|theirs|. key.bias gradients are zero in theory
    (softmax is shift-invariant per query) and only rounding noise in both: compare them to the
    largest gradient of the model instead."""
    err = float(np.abs(ours - theirs).max())
    if name.endswith("attention.self.key.bias"):
        return err / scale
    return err / max(float(np.abs(theirs).max()), 1e-30)


def _assert_grads_match(pc_model, hf_grads, names=None, rtol=GRAD_RTOL):
    scale = max(float(np.abs(g).max()) for g in hf_grads.values())
    worst = (0.0, None)
    for name, p in pc_model.named_parameters():
        if names is not None and name not in names:
            continue
        if name not in hf_grads:  # torch left it without gradient (e.g. the pooler)
            assert p.grad is None or not p.grad.any(), f"{name} has a gradient, torch's has none"
            continue
        assert p.grad is not None, f"{name} has no gradient"
        assert p.grad.shape == hf_grads[name].shape, name
        err = _grad_error(name, p.grad, hf_grads[name], scale)
        assert err < rtol, f"{name}: relative gradient error {err:.2e}"
        worst = max(worst, (err, name))
    return worst


def _as_np(t):
    return t.detach().numpy()


# ------------------------------------------------------------------ parity with transformers

@pytest.fixture(scope="module", params=["bert", "roberta"])
def seqcls_pair(request, tmp_path_factory):
    """(model_type, transformers model, its saved folder) for a classification model."""
    _torch()
    model_type = request.param
    hf = _hf_model(model_type, head=True, num_labels=3)
    folder = _save(hf, tmp_path_factory.mktemp(f"{model_type}_cls"))
    return model_type, hf, folder


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
@pytest.mark.parametrize("head", [True, False])
def test_repr_matches_transformers(model_type, head, tmp_path):
    """print(model) shows transformers' tree: its class names, names, shapes and settings
    (padding_idx, eps), leaving out only the dropouts and activations the engine applies."""
    hf = _hf_model(model_type, head=head)
    pc = _load(_save(hf, tmp_path), head=head)
    assert repr(pc) == torch_repr_as_peftcore(repr(hf))


def test_names_and_shapes_match_transformers(seqcls_pair):
    model_type, hf, folder = seqcls_pair
    pc = _load(folder, head=True)
    ours = {n: p.shape for n, p in pc.named_parameters()}
    theirs = {n: tuple(p.shape) for n, p in hf.named_parameters()}
    assert ours == theirs
    assert pc.num_parameters() == sum(p.numel() for p in hf.parameters())
    for name, p in pc.named_parameters():  # loading copied every value
        np.testing.assert_array_equal(p, _as_np(hf.get_parameter(name)), err_msg=name)


@pytest.mark.parametrize("training, grad", [(False, False), (False, True), (True, True)])
def test_output_hidden_states_match_transformers(seqcls_pair, training, grad):
    """Every layer's hidden states, as transformers returns them (the embeddings' output
    first), from an eval forward split among workers (no grad), one that keeps its
    activations, and a training one (dropout off); asking for them changes no logit."""
    model_type, hf, folder = seqcls_pair
    pc = _load(folder, head=True, hidden_dropout_prob=0.0,
               attention_probs_dropout_prob=0.0).train(training)
    ids, mask = _batch(model_type, TINY["vocab_size"], B=5, T=9)
    with (contextlib.nullcontext() if grad else peftcore.no_grad()):
        plain = pc(ids, attention_mask=mask).logits
        out = pc(ids, attention_mask=mask, output_hidden_states=True)
        ref = hf(input_ids=_torch().tensor(ids), attention_mask=_torch().tensor(mask),
                 output_hidden_states=True)
    assert len(out.hidden_states) == len(ref.hidden_states) == TINY["num_hidden_layers"] + 1
    for i, (ours, theirs) in enumerate(zip(out.hidden_states, ref.hidden_states)):
        assert ours.shape == (5, 9, TINY["hidden_size"]) and ours.dtype == np.float32
        np.testing.assert_allclose(ours, _as_np(theirs), rtol=0, atol=LOGIT_ATOL,
                                   err_msg=f"hidden_states[{i}]")
    np.testing.assert_allclose(out.logits, _as_np(ref.logits), rtol=0, atol=LOGIT_ATOL)
    np.testing.assert_allclose(out.logits, plain, rtol=0, atol=1e-6)
    assert list(out.keys()) == ["logits", "hidden_states"]
    logits, states = pc(ids, attention_mask=mask, output_hidden_states=True, return_dict=False)
    assert len(states) == len(out.hidden_states)


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_automodel_output_hidden_states(model_type, tmp_path):
    """AutoModel: hidden_states[-1] is last_hidden_state bit for bit; a backward after such a
    forward gives the gradients of one without."""
    hf = _hf_model(model_type, head=False)
    pc = _load(_save(hf, tmp_path), head=False)
    ids, mask = _batch(model_type, TINY["vocab_size"])
    for p in pc.parameters():
        p.requires_grad = True
    out = pc(ids, attention_mask=mask, output_hidden_states=True)
    ref = hf(input_ids=_torch().tensor(ids), attention_mask=_torch().tensor(mask),
             output_hidden_states=True)
    np.testing.assert_array_equal(out.hidden_states[-1], out.last_hidden_state)
    for ours, theirs in zip(out.hidden_states, ref.hidden_states, strict=True):
        np.testing.assert_allclose(ours, _as_np(theirs), rtol=0, atol=LOGIT_ATOL)
    g = np.random.default_rng(1).standard_normal(out.last_hidden_state.shape).astype(np.float32)
    pc.backward(g)
    with_states = {n: p.grad.copy() for n, p in pc.named_parameters() if p.grad is not None}
    assert "embeddings.word_embeddings.weight" in with_states
    pc.zero_grad(set_to_none=True)
    pc(ids, attention_mask=mask)
    pc.backward(g)
    without = {n: p.grad for n, p in pc.named_parameters() if p.grad is not None}
    assert without.keys() == with_states.keys()
    for n, grad in without.items():
        np.testing.assert_array_equal(grad, with_states[n], err_msg=n)


@pytest.mark.parametrize("B,T", [(4, 10), (6, 16)])
def test_seqcls_logits_loss_and_grads(seqcls_pair, B, T):
    """(6, 16): 96 rows, enough for the engine to take q, k and v's weight gradients from one
    fused GEMM (rows·intermediate >= 3·hidden²); (4, 10) has them one by one."""
    model_type, hf, folder = seqcls_pair
    pc = _load(folder, head=True)
    ids, mask = _batch(model_type, TINY["vocab_size"], B=B, T=T)
    labels = np.array([0, 2, 1, 2, 1, 0])[:B]
    out = pc(ids, attention_mask=mask, labels=labels)
    ref = _hf_run(hf, ids, mask, labels=labels)
    assert out.logits.shape == (B, 3) and out.logits.dtype == np.float32
    np.testing.assert_allclose(out.logits, _as_np(ref.logits), rtol=0, atol=LOGIT_ATOL)
    assert abs(out.loss - ref.loss.item()) < LOGIT_ATOL
    pc.backward()
    ref.loss.backward()
    _assert_grads_match(pc, _hf_grads(hf))


def test_seqcls_ignore_index_and_grad_logits(seqcls_pair):
    """labels=-100 rows are ignored like torch's CE; backward(grad_logits) takes any loss."""
    torch = _torch()
    model_type, hf, folder = seqcls_pair
    pc = _load(folder, head=True)
    ids, mask = _batch(model_type, TINY["vocab_size"], seed=3)
    labels = np.array([1, -100, 0, -100])
    out = pc(ids, attention_mask=mask, labels=labels)
    ref = _hf_run(hf, ids, mask, labels=labels)
    assert abs(out.loss - ref.loss.item()) < LOGIT_ATOL
    pc.backward()
    ref.loss.backward()
    _assert_grads_match(pc, _hf_grads(hf))
    # an arbitrary loss through grad_logits: sum(logits * W)
    w = np.random.default_rng(7).standard_normal((4, 3)).astype(np.float32)
    pc.zero_grad()
    pc(ids, attention_mask=mask)
    pc.backward(w)
    ref = _hf_run(hf, ids, mask)
    (ref.logits * torch.tensor(w)).sum().backward()
    _assert_grads_match(pc, _hf_grads(hf))


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_automodel_hidden_pooler_and_grads(model_type, tmp_path):
    torch = _torch()
    hf = _hf_model(model_type, head=False, seed=1)
    pc = _load(_save(hf, tmp_path), head=False)
    ids, mask = _batch(model_type, TINY["vocab_size"], seed=1)
    out = pc(ids, attention_mask=mask)
    ref = _hf_run(hf, ids, mask)
    h, h_ref = out.last_hidden_state, _as_np(ref.last_hidden_state)
    assert h.shape == (4, 10, 32)
    real = mask.astype(bool)
    np.testing.assert_allclose(h[real], h_ref[real], rtol=0, atol=LOGIT_ATOL)
    np.testing.assert_allclose(h[~real], h_ref[~real], rtol=0, atol=LOGIT_ATOL)  # padding too
    np.testing.assert_allclose(out.pooler_output, _as_np(ref.pooler_output), rtol=0,
                               atol=LOGIT_ATOL)
    assert out[0] is out.last_hidden_state and out[1] is out.pooler_output

    rng = np.random.default_rng(2)
    # gradient of sum(R ⊙ hidden) over real tokens (a masked pooling loss)
    r = (rng.standard_normal(h.shape) * mask[..., None]).astype(np.float32)
    pc.backward(grad_last_hidden_state=r)
    (ref.last_hidden_state * torch.tensor(r)).sum().backward()
    _assert_grads_match(pc, _hf_grads(hf))
    # gradient of sum(S ⊙ pooled): through the pooler only
    s = rng.standard_normal(out.pooler_output.shape).astype(np.float32)
    pc.zero_grad()
    pc(ids, attention_mask=mask)
    pc.backward(grad_pooler_output=s)
    ref = _hf_run(hf, ids, mask)
    (ref.pooler_output * torch.tensor(s)).sum().backward()
    _assert_grads_match(pc, _hf_grads(hf))


def _padding_rows(model_type):
    """(parameter, row) pairs transformers' Embedding(padding_idx) never updates."""
    pad = 1 if model_type == "roberta" else 0
    rows = [("embeddings.word_embeddings.weight", pad)]
    if model_type == "roberta":  # padded tokens sit at position padding_idx
        rows.append(("embeddings.position_embeddings.weight", pad))
    return rows


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_automodel_loss_on_padded_positions(model_type, tmp_path):
    """A loss reading every position, padding included: all gradients match transformers'
    except the padding_idx embedding rows (see test_padding_rows_get_no_gradient)."""
    torch = _torch()
    hf = _hf_model(model_type, head=False, seed=1)
    pc = _load(_save(hf, tmp_path), head=False)
    ids, mask = _batch(model_type, TINY["vocab_size"], seed=1)
    out = pc(ids, attention_mask=mask)
    r = np.random.default_rng(9).standard_normal(out.last_hidden_state.shape).astype(np.float32)
    pc.backward(grad_last_hidden_state=r)
    (_hf_run(hf, ids, mask).last_hidden_state * torch.tensor(r)).sum().backward()
    hf_grads = _hf_grads(hf)
    params = dict(pc.named_parameters())
    for name, row in _padding_rows(model_type):
        assert not hf_grads[name][row].any()
        hf_grads[name][row] = params[name].grad[row]  # compared in the test below
    _assert_grads_match(pc, hf_grads)


def _pad_row_grads(model, model_type, ids, mask):
    """max |grad| of each padding_idx row after backward of sum(logits)."""
    model.zero_grad(set_to_none=True)
    out = model(ids, attention_mask=mask)
    model.backward(np.ones_like(out.logits))
    params = dict(model.named_parameters())
    return [float(np.abs(params[f"{model_type}.{name}"].grad[row]).max())
            for name, row in _padding_rows(model_type)]


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_masked_positions_get_exactly_zero_gradient(model_type):
    """Padded positions can't influence the logits, so their embedding rows get exactly 0."""
    model = _small(model_type).eval()
    ids, mask = _batch(model_type, TINY["vocab_size"])
    leaks = _pad_row_grads(model, model_type, ids, mask)
    assert max(leaks) < 1e-30  # the leak is tiny (~1e-40): numerically harmless
    assert leaks == [0.0] * len(leaks)


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_padding_idx_rows_get_no_gradient(model_type):
    """A pad token inside the attended span (attention_mask 1) does reach the loss, but
    transformers never updates the padding_idx row."""
    model = _small(model_type).eval()
    ids, mask = _batch(model_type, TINY["vocab_size"])
    ids[0, 3] = 1 if model_type == "roberta" else 0
    assert max(_pad_row_grads(model, model_type, ids, mask)) < 1e-30


def test_frozen_encoder_only_head_trains(seqcls_pair):
    model_type, hf, folder = seqcls_pair
    pc = _load(folder, head=True)
    head = {n for n, _ in pc.named_parameters() if n.startswith("classifier.")}
    assert head == ({"classifier.weight", "classifier.bias"} if model_type == "bert" else
                    {"classifier.dense.weight", "classifier.dense.bias",
                     "classifier.out_proj.weight", "classifier.out_proj.bias"})
    ids, mask = _batch(model_type, TINY["vocab_size"], seed=4)
    labels = np.array([2, 0, 1, 1])
    pc(ids, attention_mask=mask, labels=labels)  # full fine-tune first
    pc.backward()
    full = {n: p.grad.copy() for n, p in pc.named_parameters() if n in head}
    pc.zero_grad(set_to_none=True)
    for name, p in pc.named_parameters():
        p.requires_grad = name in head
    assert pc.num_parameters(only_trainable=True) == sum(full[n].size for n in head)
    out = pc(ids, attention_mask=mask, labels=labels)
    pc.backward()
    ref = _hf_run(hf, ids, mask, labels=labels)
    ref.loss.backward()
    assert abs(out.loss - ref.loss.item()) < LOGIT_ATOL
    _assert_grads_match(pc, _hf_grads(hf), names=head)
    for name, p in pc.named_parameters():  # the very same head gradients as full fine-tuning
        if name in head:
            np.testing.assert_array_equal(p.grad, full[name], err_msg=name)
    for name, p in pc.named_parameters():
        if name not in head:
            assert p.grad is None, f"frozen {name} got a gradient buffer"


def test_regression_head_mse(tmp_path):
    _torch()
    hf = _hf_model("bert", head=True, num_labels=1, seed=5)
    assert hf.config.num_labels == 1
    pc = _load(_save(hf, tmp_path), head=True)
    assert pc.config.num_labels == 1
    ids, mask = _batch("bert", TINY["vocab_size"], seed=5)
    labels = np.array([0.5, -1.25, 2.0, 0.0], dtype=np.float32)
    out = pc(ids, attention_mask=mask, labels=labels)
    ref = _hf_run(hf, ids, mask, labels=labels)  # float labels, num_labels=1: MSELoss
    assert out.logits.shape == (4, 1)
    np.testing.assert_allclose(out.logits, _as_np(ref.logits), rtol=0, atol=LOGIT_ATOL)
    assert abs(out.loss - ref.loss.item()) < LOGIT_ATOL
    pc.backward()
    ref.loss.backward()
    _assert_grads_match(pc, _hf_grads(hf))


def test_token_type_ids(tmp_path):
    _torch()
    hf = _hf_model("bert", head=True, seed=6, type_vocab_size=3)
    pc = _load(_save(hf, tmp_path), head=True)
    ids, mask = _batch("bert", TINY["vocab_size"], seed=6)
    types = (np.arange(10)[None, :] >= np.array([[4], [2], [3], [0]])).astype(np.int64)
    types[0, 8:] = 2
    labels = np.array([1, 0, 1, 0])
    out = pc(ids, attention_mask=mask, token_type_ids=types, labels=labels)
    ref = _hf_run(hf, ids, mask, types=types, labels=labels)
    np.testing.assert_allclose(out.logits, _as_np(ref.logits), rtol=0, atol=LOGIT_ATOL)
    pc.backward()
    ref.loss.backward()
    _assert_grads_match(pc, _hf_grads(hf))
    assert not np.allclose(out.logits, pc(ids, attention_mask=mask).logits, atol=1e-3)
    assert np.abs(dict(pc.named_parameters())[
        "bert.embeddings.token_type_embeddings.weight"].grad).min(axis=1).max() > 0


def test_pytorch_model_bin_loads_identically(tmp_path):
    _torch()
    hf = _hf_model("roberta", head=True, seed=8)
    st = _load(_save(hf, tmp_path / "st"), head=True)
    folder = _save(hf, tmp_path / "bin", safetensors=False)
    assert (folder / "pytorch_model.bin").is_file() and not (folder / "model.safetensors").exists()
    pb = _load(folder, head=True)
    a, b = st.state_dict(), pb.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    ids, mask = _batch("roberta", TINY["vocab_size"], seed=8)
    np.testing.assert_array_equal(st(ids, attention_mask=mask).logits,
                                  pb(ids, attention_mask=mask).logits)


# ------------------------------------------------------------------ the real all-MiniLM-L6-v2

def _minilm_batch(vocab):
    rng = np.random.default_rng(11)
    B, T = 3, 16
    ids = rng.integers(1000, vocab, size=(B, T))
    lengths = np.array([16, 9, 4])
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int64)
    ids[:, 0] = 101                              # [CLS]
    ids[np.arange(B), lengths - 1] = 102         # [SEP]
    ids[mask == 0] = 0                           # [PAD]
    types = np.zeros_like(ids)
    types[0, 8:] = 1                             # a sentence pair in the first row
    return ids, mask, types


def test_minilm_matches_transformers_bertmodel(minilm_dir):
    torch = _torch()
    import transformers
    pc = _load(minilm_dir, head=False)
    assert pc.config.hidden_size == 384 and pc.config.num_hidden_layers == 6
    hf = transformers.BertModel.from_pretrained(minilm_dir, attn_implementation="eager").eval()
    ids, mask, types = _minilm_batch(pc.config.vocab_size)
    out = pc(ids, attention_mask=mask, token_type_ids=types)
    with torch.no_grad():
        ref = _hf_run(hf, ids, mask, types=types)
    real = mask.astype(bool)
    np.testing.assert_allclose(out.last_hidden_state[real], _as_np(ref.last_hidden_state)[real],
                               rtol=0, atol=LOGIT_ATOL)
    np.testing.assert_allclose(out.pooler_output, _as_np(ref.pooler_output), rtol=0,
                               atol=LOGIT_ATOL)


def test_minilm_classification_logits_and_grads(minilm_dir):
    torch = _torch()
    import transformers
    torch.manual_seed(0)
    hf = transformers.BertForSequenceClassification.from_pretrained(
        minilm_dir, num_labels=2, attn_implementation="eager").eval()
    with pytest.warns(UserWarning, match="newly initialized.*classifier"):
        pc = AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=2)
    pc.eval()
    # the seeded head of transformers, copied over
    missing, unexpected = pc.load_state_dict(
        {k: _as_np(v) for k, v in hf.state_dict().items() if k.startswith("classifier.")},
        strict=False)
    assert not unexpected
    for name, p in pc.named_parameters():
        np.testing.assert_array_equal(p, _as_np(hf.get_parameter(name)), err_msg=name)
    ids, mask, types = _minilm_batch(pc.config.vocab_size)
    labels = np.array([1, 0, 1])
    out = pc(ids, attention_mask=mask, token_type_ids=types, labels=labels)
    ref = _hf_run(hf, ids, mask, types=types, labels=labels)
    np.testing.assert_allclose(out.logits, _as_np(ref.logits), rtol=0, atol=LOGIT_ATOL)
    assert abs(out.loss - ref.loss.item()) < LOGIT_ATOL
    pc.backward()
    ref.loss.backward()
    _assert_grads_match(pc, _hf_grads(hf))


# ------------------------------------------------------------------ finite differences (no torch)

FD_CONFIG = dict(vocab_size=30, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=16, max_position_embeddings=16, hidden_dropout_prob=0.0,
                 attention_probs_dropout_prob=0.0)


def _fd_model(model_type, head, num_labels=3, seed=0, **overrides):
    cfg = dict(FD_CONFIG, model_type=model_type, num_labels=num_labels, **overrides)
    if model_type == "roberta":
        cfg.update(pad_token_id=1, type_vocab_size=1, max_position_embeddings=18)
    cls = AutoModelForSequenceClassification if head else AutoModel
    model = cls.from_config(cfg, seed=seed)
    rng = np.random.default_rng(100 + seed)
    for name, p in model.named_parameters():  # every term significant, no zero biases
        if "LayerNorm.weight" in name:
            p[...] = 1 + 0.2 * rng.standard_normal(p.shape)
        else:
            p[...] = 0.3 * rng.standard_normal(p.shape)
    return model.eval()


def _fd_check(loss_fn, model, names, ids):
    """Central differences (eps 1e-2, float64 arithmetic on the float32 engine's loss) of the
    largest-gradient entries, a random entry and a random direction of each parameter."""
    params = dict(model.named_parameters())
    rng = np.random.default_rng(0)
    eps = 1e-2
    for name in names:
        p, g = params[name], params[name].grad.astype(np.float64)
        assert np.isfinite(g).all() and np.abs(g).max() > 1e-4, name
        entries = [np.unravel_index(i, g.shape) for i in np.argsort(-np.abs(g).ravel())[:3]]
        if name.endswith("word_embeddings.weight"):  # a row the batch uses
            entries.append((int(ids[0, 2]), int(rng.integers(g.shape[1]))))
        else:
            entries.append(tuple(int(rng.integers(n)) for n in g.shape))
        # atol: the float32 loss's rounding over 2·eps (the baseline set's sums, without
        # fused multiply-adds, sit ~5e-5 off on entries whose gradient is near 0)
        check_entries_by_finite_differences(p, g, entries, loss_fn, eps, 1e-2, 1e-4, name)
        # directional derivative along a random unit direction v: (L(θ+εv) - L(θ-εv)) / 2ε = g·v
        v = rng.standard_normal(g.shape)
        v /= np.linalg.norm(v)
        old = np.array(p, copy=True)
        p[...] = old + eps * v
        up = loss_fn()
        p[...] = old - eps * v
        down = loss_fn()
        p[...] = old
        fd, exact = (up - down) / (2 * eps), float((g * v).sum())
        assert abs(fd - exact) <= 1e-2 * np.linalg.norm(g) + 3e-5, (name, "direction", fd, exact)


FD_NAMES = ["embeddings.LayerNorm.weight", "embeddings.word_embeddings.weight",
            "embeddings.position_embeddings.weight",
            "encoder.layer.0.attention.self.query.weight",
            "encoder.layer.1.attention.self.key.weight",
            "encoder.layer.0.attention.self.value.bias",
            "encoder.layer.0.attention.output.dense.weight",
            "encoder.layer.1.attention.output.LayerNorm.bias",
            "encoder.layer.0.intermediate.dense.bias", "encoder.layer.1.output.dense.weight"]


@pytest.mark.parametrize("model_type,num_labels", [("bert", 3), ("roberta", 3), ("bert", 1)])
def test_finite_differences_seqcls(model_type, num_labels):
    model = _fd_model(model_type, head=True, num_labels=num_labels)
    ids, mask = _batch(model_type, FD_CONFIG["vocab_size"], B=3, T=6, seed=2)
    labels = (np.array([0, 2, 1]) if num_labels == 3 else
              np.array([0.7, -0.4, 1.5], dtype=np.float32))

    def loss():
        return float(model(ids, attention_mask=mask, labels=labels).loss)

    model(ids, attention_mask=mask, labels=labels)
    model.backward()
    prefix = model_type + "."
    head = (["classifier.weight", "classifier.bias", prefix + "pooler.dense.weight"]
            if model_type == "bert" else
            ["classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight"])
    _fd_check(loss, model, [prefix + n for n in FD_NAMES] + head, ids)


def test_finite_differences_train_mode_through_dropout():
    """Train-mode gradients through every dropout (the embeddings', the attention
    probabilities', both residual branches', the head's) against central differences: each
    loss is evaluated with the same masks, the model's forward count held where it was."""
    model = _fd_model("bert", head=True, hidden_dropout_prob=0.2,
                      attention_probs_dropout_prob=0.2).train()
    ids, mask = _batch("bert", FD_CONFIG["vocab_size"], B=3, T=6, seed=2)
    labels = np.array([0, 2, 1])

    loss = fixed_masks_loss(model, ids, mask, labels, 7)
    loss()
    model.backward()
    assert_dropout_acts(model, loss, ids, mask, labels)
    _fd_check(loss, model, ["bert." + n for n in FD_NAMES] + ["classifier.weight"], ids)


@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new"])
def test_frozen_output_weights_keep_gelus_slope(hidden_act):
    """Where the feed-forward output weights are frozen the forward keeps gelu'(pre) in place
    of pre. The gradients are the same bits as where those weights train (pre kept, gelu
    recomputed) and agree with central differences. A weight set to train between the
    forward and the backward is refused, the forward kept for a backward as it was made."""
    ids, mask = _batch("bert", FD_CONFIG["vocab_size"], B=3, T=6, seed=2)
    labels = np.array([0, 2, 1])
    trained = ["bert.encoder.layer.0.intermediate.dense.bias",
               "bert.encoder.layer.1.attention.self.query.weight",
               "bert.encoder.layer.0.output.dense.bias", "classifier.weight"]
    grads = []
    for wo_trains in (False, True):
        model = _fd_model("bert", head=True, hidden_act=hidden_act, hidden_dropout_prob=0.2).train()
        for name, p in model.named_parameters():
            p.requires_grad = name in trained or (wo_trains and name.endswith("output.dense.weight")
                                                  and "attention" not in name)
        model._forwards = 3
        model(ids, attention_mask=mask, labels=labels)
        model.backward()
        grads.append({n: p.grad.copy() for n, p in model.named_parameters() if n in trained})
    for name in trained:
        np.testing.assert_array_equal(grads[0][name], grads[1][name], err_msg=name)

    def loss():
        model._forwards = 3
        return float(model(ids, attention_mask=mask, labels=labels).loss)

    for name, p in model.named_parameters():
        p.requires_grad = name in trained
        p.grad = None
    loss()
    wo = model.bert.encoder.layer[1].output.dense.weight
    wo.requires_grad = True
    with pytest.raises(RuntimeError, match="set to train after the last forward"):
        model.backward()
    wo.requires_grad = False
    model.backward()
    for name in trained:
        np.testing.assert_array_equal(model.get_parameter(name).grad, grads[0][name], err_msg=name)
    _fd_check(loss, model, trained, ids)


def test_finite_differences_automodel():
    model = _fd_model("bert", head=False)
    ids, mask = _batch("bert", FD_CONFIG["vocab_size"], B=3, T=6, seed=3)
    types = np.zeros_like(ids)
    types[0, 3:] = 1
    rng = np.random.default_rng(4)
    r = rng.standard_normal((3, 6, 8))
    s = rng.standard_normal((3, 8))

    def hidden_loss():
        out = model(ids, attention_mask=mask, token_type_ids=types)
        return float((out.last_hidden_state.astype(np.float64) * r).sum())

    def pooled_loss():
        out = model(ids, attention_mask=mask, token_type_ids=types)
        return float((out.pooler_output.astype(np.float64) * s).sum())

    model(ids, attention_mask=mask, token_type_ids=types)
    model.backward(grad_last_hidden_state=r.astype(np.float32))
    _fd_check(hidden_loss, model, FD_NAMES + ["embeddings.token_type_embeddings.weight"], ids)
    model.zero_grad(set_to_none=True)
    model(ids, attention_mask=mask, token_type_ids=types)
    model.backward(grad_pooler_output=s.astype(np.float32))
    _fd_check(pooled_loss, model, FD_NAMES + ["pooler.dense.weight", "pooler.dense.bias"], ids)


# ------------------------------------------------------------------ training mechanics (no torch)

def _small(model_type="bert", **overrides):
    cfg = dict(TINY, model_type=model_type, **{"num_labels": 2, **overrides})
    if model_type == "roberta":
        cfg.update(pad_token_id=1, type_vocab_size=1, max_position_embeddings=26)
    return AutoModelForSequenceClassification.from_config(cfg, seed=3)


def test_dropout_train_vs_eval():
    model = _small()  # dropout 0.1 everywhere
    ids, mask = _batch("bert", TINY["vocab_size"])
    eval1 = model.eval()(ids, attention_mask=mask).logits
    eval2 = model(ids, attention_mask=mask).logits
    np.testing.assert_array_equal(eval1, eval2)
    model.train()
    train1 = model(ids, attention_mask=mask, labels=np.array([0, 1, 1, 0]))
    model.backward()
    train2 = model(ids, attention_mask=mask).logits
    assert not np.allclose(train1.logits, eval1, atol=1e-6)
    assert not np.allclose(train1.logits, train2, atol=1e-6)  # a new mask each step
    assert all(np.isfinite(p.grad).all() for _, p in model.named_parameters())
    np.testing.assert_array_equal(model.eval()(ids, attention_mask=mask).logits, eval1)


def test_dropout_stream_is_per_model_and_reproducible():
    """A model's dropout masks come from its own seed and forward count: rebuilding it
    replays the same masks, whatever other models ran in between."""
    ids, mask = _batch("bert", TINY["vocab_size"])
    first = _small().train()
    run1 = [first(ids, attention_mask=mask).logits for _ in range(2)]
    other = _small().train()
    for _ in range(3):
        other(ids, attention_mask=mask)
    again = _small().train()
    run2 = [again(ids, attention_mask=mask).logits for _ in range(2)]
    for a, b in zip(run1, run2):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(run1[0], run1[1])


def test_train_mode_without_dropout_equals_eval():
    model = _small(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ids, mask = _batch("bert", TINY["vocab_size"])
    a = model.eval()(ids, attention_mask=mask).logits
    b = model.train()(ids, attention_mask=mask).logits
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_gradients_accumulate_and_zero_grad(model_type):
    model = _small(model_type).eval()
    ids, mask = _batch(model_type, TINY["vocab_size"])
    labels = np.array([0, 1, 1, 0])
    model(ids, attention_mask=mask, labels=labels)
    model.backward()
    once = {n: p.grad.copy() for n, p in model.named_parameters()}
    model(ids, attention_mask=mask, labels=labels)
    model.backward()
    for n, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, 2 * once[n], rtol=1e-5, atol=1e-12, err_msg=n)
    model.zero_grad()
    assert all(p.grad is not None and not p.grad.any() for _, p in model.named_parameters())
    model(ids, attention_mask=mask, labels=labels)
    model.backward()
    for n, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, once[n], rtol=1e-5, atol=1e-12, err_msg=n)
    model.zero_grad(set_to_none=True)
    assert all(p.grad is None for _, p in model.named_parameters())


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
@pytest.mark.parametrize("trainable", ["layer.1", "layer.0"])
def test_backward_stops_below_lowest_trainable_layer(model_type, trainable):
    """Only one encoder layer + the classifier train: layers/embeddings below it get no
    gradient buffer, and the trainable gradients equal those of a full backward — the
    gradient passes through the frozen pooler and, for layer.0, a frozen layer above."""
    model = _small(model_type).eval()
    ids, mask = _batch(model_type, TINY["vocab_size"])
    labels = np.array([1, 0, 0, 1])
    model(ids, attention_mask=mask, labels=labels)
    model.backward()
    full = {n: p.grad.copy() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    def wanted(name):  # the pooler stays frozen: the gradient passes through it
        return f"encoder.{trainable}." in name or name.startswith("classifier")

    for name, p in model.named_parameters():
        p.requires_grad = wanted(name)
    model(ids, attention_mask=mask, labels=labels)
    model.backward()
    for name, p in model.named_parameters():
        if wanted(name):
            np.testing.assert_allclose(p.grad, full[name], rtol=1e-5, atol=1e-9, err_msg=name)
        else:
            assert p.grad is None, f"frozen {name} got a gradient buffer"


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_no_grad_forward_matches_and_keeps_no_activations(model_type):
    """Under no_grad the outputs are those of a forward with gradients, bit for bit: for a
    bare encoder, and with a classification head, whose last layer folds its key and value
    projections into attention either way. The arena is a fraction of the training one, and
    backward() refuses with a clear error."""
    import peftcore

    cfg = dict(TINY, model_type=model_type)
    if model_type == "roberta":
        cfg.update(pad_token_id=1, type_vocab_size=1, max_position_embeddings=26)
    bare = AutoModel.from_config(cfg, seed=3).eval()
    ids, mask = _batch(model_type, TINY["vocab_size"])
    with peftcore.no_grad():
        light_hidden = bare(ids, attention_mask=mask).last_hidden_state
    np.testing.assert_array_equal(light_hidden, bare(ids, attention_mask=mask).last_hidden_state)

    model = _small(model_type).eval()
    with peftcore.no_grad():
        light = model(ids, attention_mask=mask).logits
        light_bytes = model._engine.activation_bytes()
    with pytest.raises(RuntimeError, match="no_grad"):
        model.backward(np.ones_like(light))
    full = model(ids, attention_mask=mask).logits
    np.testing.assert_array_equal(light, full)
    fresh = _small(model_type).eval()
    fresh(ids, attention_mask=mask)
    assert light_bytes < fresh._engine.activation_bytes()
    model.backward(np.ones_like(full))  # a normal forward still allows its backward


@pytest.mark.parametrize("head", [True, False])
def test_training_forward_under_no_grad_equals_with_grad(head):
    """A train-mode forward under no_grad (dropout on, nothing kept for a backward) runs the
    whole batch at once, as dropout numbers its elements over the batch: its outputs equal
    those of the same forward with gradients on, dropout masks included."""
    import peftcore

    ids, mask = _batch("bert", TINY["vocab_size"], B=5, T=8)
    cls = AutoModelForSequenceClassification if head else AutoModel
    light, full = (cls.from_config(dict(TINY, model_type="bert"), seed=2).train()
                   for _ in range(2))
    light.inference_rows = 8  # groups apply to eval forwards only
    with peftcore.no_grad():
        got = light(ids, attention_mask=mask)
    want = full(ids, attention_mask=mask)
    for name, x in want.__dict__.items():
        if x is not None:
            np.testing.assert_array_equal(getattr(got, name), x, err_msg=name)
    key = "logits" if head else "last_hidden_state"  # dropout really ran
    assert np.abs(getattr(full.eval()(ids, attention_mask=mask), key) - getattr(want, key)).max() > 1e-3


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
@pytest.mark.parametrize("no_grad", [False, True])
def test_first_token_only_last_layer_equals_full_layer(model_type, no_grad):
    """A classification forward computes the last layer at the first tokens only; logits and
    every gradient equal those of the full last layer (which the engine still runs when the
    hidden states are asked for), up to float rounding of the differently-shaped GEMMs."""
    import peftcore

    model = _small(model_type).eval()
    ids, mask = _batch(model_type, TINY["vocab_size"])
    rng = np.random.default_rng(5)
    g = rng.standard_normal((ids.shape[0], 2)).astype(np.float32)
    if no_grad:
        with peftcore.no_grad():
            compact = model(ids, attention_mask=mask).logits
            hidden, _, full, _ = model._run(model._prepare_inputs(ids, mask, None, None), True)
        assert hidden.shape == ids.shape + (TINY["hidden_size"],)
        np.testing.assert_allclose(compact, full, rtol=1e-5, atol=1e-6)
        return
    hidden, _, full, _ = model._run(model._prepare_inputs(ids, mask, None, None), True)
    model.backward(g)
    full_grads = {n: p.grad.copy() for n, p in model.named_parameters()}
    model.zero_grad()
    compact = model(ids, attention_mask=mask).logits
    np.testing.assert_allclose(compact, full, rtol=1e-5, atol=1e-6)
    model.backward(g)
    for n, p in model.named_parameters():
        scale = max(np.abs(full_grads[n]).max(), 1e-6)
        np.testing.assert_allclose(p.grad, full_grads[n], rtol=1e-4, atol=1e-5 * scale, err_msg=n)
    # the last layer's hidden states do not exist after such a forward
    model(ids, attention_mask=mask)
    with pytest.raises(RuntimeError, match="hidden"):
        model._engine.backward(d_hidden=np.zeros(hidden.shape, np.float32))
    model.backward(g)  # the refused call changed nothing: the forward's backward still runs


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
@pytest.mark.parametrize("biases_train", [False, True])
def test_frozen_last_keys_values_fold_into_the_backward(model_type, biases_train):
    """With the last layer's key and value weights frozen and layers below training, a
    classification forward and backward fold them into attention: their share of the layer's
    input gradient (and their biases' gradients, as BitFit trains them) comes from the
    attention's score and probability gradients, dK and dV are never formed (TINY leaves the
    backward's scratch room: H·(2T + 4C + 1) <= 2·T·C). Every gradient equals the full last
    layer's (run when hidden states are asked for, which never folds) up to rounding."""
    model = _small(model_type).eval()
    H, C, L = TINY["num_attention_heads"], TINY["hidden_size"], TINY["num_hidden_layers"]
    ids, mask = _batch(model_type, TINY["vocab_size"])
    T = ids.shape[1]
    assert H * (2 * T + 4 * C + 1) <= 2 * T * C
    frozen = [n for n, p in model.named_parameters()
              if f"layer.{L - 1}.attention.self.key." in n or f"layer.{L - 1}.attention.self.value." in n]
    assert len(frozen) == 4
    if biases_train:
        frozen = [n for n in frozen if n.endswith(".weight")]
    for n, p in model.named_parameters():
        p.requires_grad = n not in frozen
    g = np.random.default_rng(6).standard_normal((ids.shape[0], 2)).astype(np.float32)
    _, _, full, _ = model._run(model._prepare_inputs(ids, mask, None, None), True)
    model.backward(g)
    full_grads = {n: p.grad.copy() for n, p in model.named_parameters() if n not in frozen}
    model.zero_grad()
    compact = model(ids, attention_mask=mask).logits
    np.testing.assert_allclose(compact, full, rtol=1e-5, atol=1e-6)
    model.backward(g)
    for n, p in model.named_parameters():
        if n in frozen:
            assert p.grad is None, n
            continue
        scale = max(np.abs(full_grads[n]).max(), 1e-6)
        np.testing.assert_allclose(p.grad, full_grads[n], rtol=1e-4, atol=1e-5 * scale, err_msg=n)
    # the first layer's query weight gets its gradient through the folded keys and values
    assert np.abs(model.get_parameter(f"{model_type}.encoder.layer.0.attention.self.query.weight").grad).max() > 0


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("trains", ["biases", "everything", "ia3"])
def test_last_keys_values_fold_into_the_forward_and_backward(model_type, mode, trains):
    """A classification forward that keeps activations for a backward folds the last layer's
    key and value projections into attention as well (never projecting them), dropout
    included, and the backward then reads the layer's input where the keys and values would
    be; their weights', biases' and (IA)³ vectors' gradients come from the same pass. Logits
    and every gradient equal, to rounding, those of the same model with an all-zero LoRA on
    the last key projection, which rules the fold out and adds nothing. biases: no dense
    weight trains, as with BitFit (the probabilities are kept per layer, dropout marked in
    them); everything: full fine-tuning (they are not); ia3: (IA)³ vectors on the last
    layer's keys and values (folded as column scales) train with the biases."""
    from helpers import engine_param

    L, C = TINY["num_hidden_layers"], TINY["hidden_size"]
    ids, mask = _batch(model_type, TINY["vocab_size"])
    labels = np.array([1, 0, 1, 0])
    dense = ("query.weight", "key.weight", "value.weight", "dense.weight")
    last = f"{model_type}.encoder.layer.{L - 1}.attention.self."
    runs = []
    for blocked in (False, True):
        model = getattr(_small(model_type), mode)()
        rng = np.random.default_rng(7)
        for n, p in model.named_parameters():
            if n.endswith(".bias"):  # every bias term significant (they start at zero)
                p[...] = 0.3 * rng.standard_normal(p.shape)
            p.requires_grad = trains == "everything" or "encoder.layer." not in n or \
                not n.endswith(dense)
        vectors = {s: engine_param(1 + 0.3 * rng.standard_normal(C).astype(np.float32))
                   for s in ("key", "value")}
        zero_a, zero_b = engine_param(np.zeros((2, C), np.float32)), engine_param(np.zeros((C, 2), np.float32))
        zero_a.requires_grad = zero_b.requires_grad = False
        for s in ("key", "value"):
            entries = [("ia3", "out", (vectors[s].tensor,), 1.0, 0.0)] if trains == "ia3" else []
            if blocked and s == "key":
                entries.append(("lora", "out", (zero_a.tensor, zero_b.tensor), 1.0, 0.0))
            model._engine.set_adapters(model.get_submodule(last + s).index, entries)
        out = model(ids, attention_mask=mask, labels=labels)
        model.backward()
        grads = {n: p.grad.copy() for n, p in model.named_parameters() if p.grad is not None}
        if trains == "ia3":
            grads.update({s: v.grad.copy() for s, v in vectors.items()})
        runs.append((out.logits.copy(), grads))
    (folded, g_folded), (plain, g_plain) = runs
    np.testing.assert_allclose(folded, plain, rtol=1e-5, atol=1e-6)
    assert set(g_folded) == set(g_plain)
    if trains == "everything":
        assert last + "value.weight" in g_folded
    differ = False
    for n, g in g_folded.items():
        scale = max(np.abs(g_plain[n]).max(), 1e-6)
        np.testing.assert_allclose(g, g_plain[n], rtol=1e-4, atol=1e-5 * scale, err_msg=n)
        differ |= not np.array_equal(g, g_plain[n])
    assert differ  # another path ran: the same math in another order
    if mode == "train":  # dropout ran in both, with the same masks (else far apart)
        assert np.abs(model.eval()(ids, attention_mask=mask).logits - plain).max() > 1e-3


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_grouped_inference_equals_whole_batch(model_type):
    """inference_rows splits a no_grad forward into groups of sequences: the outputs equal
    the whole batch's, and the activation buffers shrink to one group's."""
    import peftcore

    ids, mask = _batch(model_type, TINY["vocab_size"], B=5, T=6)
    for head in (True, False):
        cfg = dict(TINY, model_type=model_type, num_labels=2)
        if model_type == "roberta":
            cfg.update(pad_token_id=1, type_vocab_size=1, max_position_embeddings=26)
        cls = AutoModelForSequenceClassification if head else AutoModel
        whole, grouped = cls.from_config(cfg, seed=3).eval(), cls.from_config(cfg, seed=3).eval()
        whole.inference_rows = None
        grouped.inference_rows = 12  # two sequences of 6 tokens per group: 2, 2, 1
        with peftcore.no_grad():
            a, b = whole(ids, attention_mask=mask), grouped(ids, attention_mask=mask)
        for x, y in zip(a.__dict__.values(), b.__dict__.values()):
            if x is not None:
                np.testing.assert_allclose(y, x, rtol=1e-6, atol=1e-7)
        assert grouped._engine.activation_bytes() < whole._engine.activation_bytes()
        if head:  # with gradients on, the batch runs whole and a backward may follow
            grouped(ids, attention_mask=mask)
            grouped.backward(np.ones((5, 2), np.float32))


@pytest.mark.parametrize("threads", [2, 3, 4])
@pytest.mark.parametrize("adapted", [False, True])
def test_inference_workers_equal_one_thread(threads, adapted):
    """A no_grad eval forward splits the batch among one worker per thread, each running every
    layer on its own sequences with single-threaded ops, and the sequences left over (5 or 6
    among 2, 3 or 4 workers) run after with all threads on each op: every output is bit for
    bit that of one thread, in groups or whole, with and without a head, and with unmerged
    LoRA adapters on every linear (their intermediates are per row of the batch)."""
    import peftcore
    from peftcore import LoraConfig, get_peft_model

    T = 7
    before = peftcore.get_num_threads()
    for head in (True, False):
        def build():
            cls = AutoModelForSequenceClassification if head else AutoModel
            model = cls.from_config(dict(TINY, model_type="bert", num_labels=2), seed=5)
            if adapted:
                targets = ["query", "key", "value", "attention.output.dense",
                           "intermediate.dense", "output.dense"]
                model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, init_lora_weights=False,
                                                         target_modules=targets))
            return model.eval()

        for B in (5, 6):
            ids, mask = _batch("bert", TINY["vocab_size"], B=B, T=T)
            model = build()
            base = model.base_model.model if adapted else model
            try:
                peftcore.set_num_threads(1)
                base.inference_rows = None
                with peftcore.no_grad():
                    want = model(ids, attention_mask=mask)
                peftcore.set_num_threads(threads)
                # repeated: two workers sharing any buffer would show up as a race
                for rows in (None, T, 2 * threads * T) * 4:
                    base.inference_rows = rows
                    with peftcore.no_grad():
                        got = model(ids, attention_mask=mask)
                    for name, x in want.__dict__.items():
                        if x is not None:
                            np.testing.assert_array_equal(getattr(got, name), x,
                                                          err_msg=f"{name} B={B} rows={rows}")
                if head:  # then a forward with gradients and its backward, as ever
                    out = model(ids, attention_mask=mask)
                    np.testing.assert_allclose(out.logits, want.logits, rtol=1e-6, atol=1e-7)
                    model.backward(np.ones((B, 2), np.float32))
            finally:
                peftcore.set_num_threads(before)


def test_inference_scratch_is_one_hidden_state_and_one_layer_region():
    """An eval forward under no_grad holds the hidden state (N,C) plus one layer's scratch,
    (max(4C, I) + C) floats per row of a group, where a forward with gradients keeps every
    layer's activations; the two give the same logits."""
    import peftcore

    B, T, C, I = 6, 20, TINY["hidden_size"], TINY["intermediate_size"]
    ids, mask = _batch("bert", TINY["vocab_size"], B=B, T=T)
    per_row = max(4 * C, I) + C
    for rows, group in ((None, B), (2 * T, 2)):  # a fresh model each: buffers only grow
        model = AutoModelForSequenceClassification.from_config(dict(TINY, model_type="bert"),
                                                               seed=1).eval()
        model.inference_rows = rows
        with peftcore.no_grad():
            logits = model(ids, attention_mask=mask).logits
        scratch = model._engine.activation_bytes() / 4
        # the slack: ids, masks, LayerNorm statistics and the head's (B,C) buffers
        least = B * T * C + group * T * per_row
        assert least <= scratch <= least + 12 * B * T + 8 * B * C + 64 * 16
        kept = AutoModelForSequenceClassification.from_config(dict(TINY, model_type="bert"),
                                                              seed=1).eval()
        np.testing.assert_allclose(kept(ids, attention_mask=mask).logits, logits, rtol=1e-6,
                                   atol=1e-7)
        assert kept._engine.activation_bytes() > 3 * model._engine.activation_bytes()


def test_default_inference_rows_fill_the_scratch_budget():
    """By default a group holds as many tokens as fit INFERENCE_SCRATCH_BYTES of layer
    scratch: twice as many for a model half as wide, and a batch that fits runs in one group
    while a larger one is split and its scratch stays within the budget."""
    import peftcore
    from peftcore.models.encoder import BertForSequenceClassification

    def rows_of(hidden, inter):
        cfg = dict(TINY, model_type="bert", hidden_size=hidden, intermediate_size=inter)
        return AutoModelForSequenceClassification.from_config(cfg, seed=0)

    narrow, wide = rows_of(384, 1536), rows_of(768, 3072)
    budget = BertForSequenceClassification.INFERENCE_SCRATCH_BYTES
    assert narrow.inference_rows == budget // (4 * (1536 + 384 + 4)) == 4359
    assert wide.inference_rows == budget // (4 * (3072 + 768 + 4)) == 2182
    # a small budget on the tiny model: per token (max(4C, I) + C + 4) floats
    C, I = TINY["hidden_size"], TINY["intermediate_size"]
    per_token = 4 * (max(4 * C, I) + C + 4)
    B, T = 6, 16

    class Small(BertForSequenceClassification):
        INFERENCE_SCRATCH_BYTES = 3 * T * per_token

    ids, mask = _batch("bert", TINY["vocab_size"], B=B, T=T)
    small = Small.from_config(dict(TINY, model_type="bert"), seed=4).eval()
    assert small.inference_rows == 3 * T
    whole = AutoModelForSequenceClassification.from_config(dict(TINY, model_type="bert"),
                                                           seed=4).eval()
    whole.inference_rows = None
    with peftcore.no_grad():
        np.testing.assert_allclose(small(ids, attention_mask=mask).logits,
                                   whole(ids, attention_mask=mask).logits, rtol=1e-6, atol=1e-7)
    hidden_state = 4 * B * T * C
    slack = 4 * (8 * B * T + 8 * B * C + 64 * 16)  # ids, masks, the head's (B,C) buffers
    assert small._engine.activation_bytes() <= hidden_state + small.INFERENCE_SCRATCH_BYTES + slack
    assert whole._engine.activation_bytes() > hidden_state + B * T * per_token


@pytest.mark.parametrize("rows", [0, -5, 2.5, "64", True])
def test_inference_rows_must_be_a_positive_int(rows):
    """A bad inference_rows is refused when it is set, naming what was given; the setting
    before it stays and the model runs as before."""
    import peftcore

    ids, mask = _batch("bert", TINY["vocab_size"], B=3, T=6)
    model = AutoModelForSequenceClassification.from_config(dict(TINY, model_type="bert"),
                                                           seed=2).eval()
    model.inference_rows = 6
    with peftcore.no_grad():
        expected = model(ids, attention_mask=mask).logits
        with pytest.raises(ValueError, match=f"inference_rows must be None or a positive int.*{rows!r}"):
            model.inference_rows = rows
        assert model.inference_rows == 6
        np.testing.assert_allclose(model(ids, attention_mask=mask).logits, expected, rtol=1e-6,
                                   atol=1e-7)


# ------------------------------------------------------------------ save_pretrained

@pytest.mark.parametrize("model_type", ["bert", "roberta"])
@pytest.mark.parametrize("head", [True, False])
def test_save_pretrained_round_trip(tmp_path, model_type, head):
    """A saved folder loads back into the same model: every parameter and the outputs."""
    model = _small(model_type, num_labels=3)
    if not head:
        model = AutoModel.from_config(dict(model.config.to_dict()), seed=4)
    model.save_pretrained(tmp_path / "saved")
    cls = AutoModelForSequenceClassification if head else AutoModel
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing missing, nothing unexpected
        back = cls.from_pretrained(tmp_path / "saved")
    assert type(back) is type(model) and back.config.num_labels == model.config.num_labels
    saved, loaded = model.state_dict(), back.state_dict()
    assert saved.keys() == loaded.keys()
    for k in saved:
        np.testing.assert_array_equal(loaded[k], saved[k], err_msg=k)
    ids, mask = _batch(model_type, TINY["vocab_size"])
    a, b = model.eval()(ids, attention_mask=mask), back.eval()(ids, attention_mask=mask)
    np.testing.assert_array_equal(a.logits if head else a.last_hidden_state,
                                  b.logits if head else b.last_hidden_state)


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_saved_folder_loads_in_transformers(tmp_path, model_type):
    """transformers reads the folder as its own: same class, labels and logits."""
    torch = _torch()
    import transformers

    model = _small(model_type, num_labels=3).eval()
    model.save_pretrained(tmp_path / "saved")
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved").eval()
    assert type(hf).__name__ == type(model).__name__ and hf.config.num_labels == 3
    ids, mask = _batch(model_type, TINY["vocab_size"])
    with torch.no_grad():
        ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    np.testing.assert_allclose(model(ids, attention_mask=mask).logits, ref, rtol=0,
                               atol=LOGIT_ATOL)


def test_merged_lora_model_saves_as_a_plain_model(tmp_path):
    """HF's flow: merge_and_unload(), then save_pretrained() of the merged base model."""
    import peftcore

    model = _small("bert")
    ids, mask = _batch("bert", TINY["vocab_size"])
    peft = peftcore.get_peft_model(model, peftcore.LoraConfig(
        target_modules=["query", "value"], init_lora_weights=False))
    adapted = peft.eval()(ids, attention_mask=mask).logits
    merged = peft.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    back = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    np.testing.assert_allclose(back(ids, attention_mask=mask).logits, adapted, rtol=1e-5,
                               atol=1e-6)


def test_save_pretrained_refuses_a_file_and_keeps_labels(tmp_path):
    model = _small("bert", num_labels=2)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        model.save_pretrained(tmp_path / "file")
    # label names read from a config.json are written back while their count fits
    model.config.extra["id2label"] = {"0": "negative", "1": "positive"}
    model.save_pretrained(tmp_path / "named")
    saved = json.loads((tmp_path / "named" / "config.json").read_text())
    assert saved["id2label"] == {"0": "negative", "1": "positive"}
    assert saved["label2id"] == {"negative": 0, "positive": 1}
    assert saved["architectures"] == ["BertForSequenceClassification"]
    assert "num_labels" not in saved and "name_or_path" not in saved


# ------------------------------------------------------------------ copies

@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_deepcopy_and_pickle_make_an_independent_model(how, model_type):
    """A copy has its own engine model: same weights, flags, mode and dropout stream, and
    changing one leaves the other alone."""
    import copy
    import pickle

    import peftcore

    model = _small(model_type).train()
    ids, mask = _batch(model_type, TINY["vocab_size"])
    model(ids, attention_mask=mask)  # the dropout stream moves on
    frozen = f"{model_type}.embeddings.word_embeddings.weight"
    model.get_parameter(frozen).requires_grad = False
    clone = copy.deepcopy(model) if how == "deepcopy" else pickle.loads(pickle.dumps(model))
    assert type(clone) is type(model) and clone.training
    assert not clone.get_parameter(frozen).requires_grad
    np.testing.assert_array_equal(clone(ids, attention_mask=mask).logits,
                                  model(ids, attention_mask=mask).logits)  # same dropout masks
    head = "classifier.weight" if model_type == "bert" else "classifier.out_proj.weight"
    clone.get_parameter(head)[...] = 0
    model.eval()
    assert not np.array_equal(clone.eval()(ids, attention_mask=mask).logits,
                              model(ids, attention_mask=mask).logits)
    peft = peftcore.get_peft_model(model, peftcore.LoraConfig(target_modules=["query"]))
    with pytest.raises(TypeError, match="holds adapter layers"):
        copy.deepcopy(peft)
