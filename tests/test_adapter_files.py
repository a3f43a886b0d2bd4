"""Adapter folders: HF PEFT's file format (compared with what peft saves), round trips,
interoperability with HF PEFT both ways, crash safety of save_pretrained, and bad files
(clear errors, model untouched)."""
from __future__ import annotations

import copy
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

import peftcore
from helpers import one_thread, randomize_parameters, torch_repr_as_peftcore  # noqa: F401  (one_thread: a fixture)
from parity import hf_load, hf_logits, pc_load, save_random_models
from peftcore import LoraConfig, PeftModel, get_peft_model
from peftcore.optim import AdamW
from peftcore.tuners.lora.layer import LoraLinear

TINY = dict(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, num_labels=3)
CFG = dict(TINY, model_type="bert", max_position_embeddings=24, hidden_dropout_prob=0.0,
           attention_probs_dropout_prob=0.0)
FILES = ["adapter_config.json", "adapter_model.safetensors"]


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ helpers (peftcore only)

def _base(seed=0):
    model = peftcore.AutoModelForSequenceClassification.from_config(CFG, seed=seed)
    return randomize_parameters(model, seed)


def _batch(B=4, T=7, seed=0, vocab=40, low=3):
    rng = np.random.default_rng(seed)
    ids = rng.integers(low, vocab, (B, T))
    mask = np.ones_like(ids)
    mask[-1, T - 3:] = 0
    return ids, mask, rng.integers(0, 3, B)


def _logits(model, batch):
    ids, mask = batch[:2]
    return np.array(model(ids, attention_mask=mask).logits, copy=True)


def _randomize(pm, seed):
    rng = np.random.default_rng(seed)
    for _, p in pm.named_parameters():
        if p.requires_grad:
            p[...] = 0.3 * rng.standard_normal(p.shape)


def _snapshot(model):
    return [(n, bool(p.requires_grad), np.array(p, copy=True)) for n, p in model.named_parameters()]


def _assert_same_snapshot(model, snap):
    now = _snapshot(model)
    assert [(n, g) for n, g, _ in now] == [(n, g) for n, g, _ in snap]
    for (n, _, a), (_, _, b) in zip(now, snap):
        np.testing.assert_array_equal(a, b, err_msg=n)


def _close(a, b, rtol):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    err, scale = np.abs(a - b).max(), max(np.abs(b).max(), 1e-12)
    assert err <= rtol * scale, f"max error {err:.3g} vs scale {scale:.3g}"


def _train_peftcore(pm, steps=4, lr=2e-2, seed=0):
    """A few real AdamW steps so every trainable tensor moves away from its init."""
    opt = AdamW([p for p in pm.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    pm.train()
    for step in range(steps):
        ids, mask, labels = _batch(seed=seed + step, vocab=pm.config.vocab_size)
        pm(ids, attention_mask=mask, labels=labels)
        pm.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return pm.eval()


def _tree(folder: Path):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# ------------------------------------------------------------------ file format vs HF PEFT

@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    """{model_type: folder}: random small models (TINY: dropout as transformers' default)
    with every weight significant, saved with transformers so both libraries load the same
    weights."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    return {k: folder for k, (_, folder) in save_random_models(tmp_path_factory, TINY).items()}


FORMAT_CASES = [
    ("bert", [("default", dict(task_type="SEQ_CLS"))]),
    ("bert", [("default", dict(task_type="SEQ_CLS", bias="all", modules_to_save=["pooler"]))]),
    ("bert", [("default", dict(task_type="SEQ_CLS", bias="lora_only", target_modules=["query", "dense"],
                               rank_pattern={"dense": 2}, alpha_pattern={"query": 3},
                               layers_to_transform=[1]))]),
    ("roberta", [("default", dict(task_type="SEQ_CLS", bias="all", target_modules=["query", "dense"]))]),
    ("roberta", [("default", dict(task_type="SEQ_CLS", modules_to_save=["classifier"])),
                 ("other", dict(task_type="SEQ_CLS", r=2, target_modules=r".*value", lora_dropout=0.1))]),
    ("roberta", [("x", dict(use_rslora=True, init_lora_weights="gaussian")), ("y", dict(r=2))]),
]

# fields whose saved value legitimately differs: HF writes its version, the auto class of a
# task-less model and the torch model's name_or_path (empty here; peftcore's is the folder)
_UNCOMPARED = {"peft_version", "auto_mapping", "base_model_name_or_path"}


@pytest.mark.parametrize("case", FORMAT_CASES, ids=lambda c: f"{c[0]}-" + "+".join(n for n, _ in c[1]))
def test_saved_files_match_peft(hf_models, case, tmp_path):
    import peft
    model_type, adapters = case
    (name0, kw0), rest = adapters[0], adapters[1:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(hf_load(hf_models, model_type),
                                     peft.LoraConfig(**copy.deepcopy(kw0)), adapter_name=name0)
        for name, kw in rest:
            theirs.add_adapter(name, peft.LoraConfig(**copy.deepcopy(kw)))
        theirs.save_pretrained(tmp_path / "hf")
    ours = get_peft_model(pc_load(hf_models, model_type), LoraConfig(**copy.deepcopy(kw0)),
                          adapter_name=name0)
    for name, kw in rest:
        ours.add_adapter(name, LoraConfig(**copy.deepcopy(kw)))
    # print(model) shows HF PEFT's tree (less the dropouts and activations the engine applies)
    assert repr(ours) == torch_repr_as_peftcore(repr(theirs))
    ours.save_pretrained(tmp_path / "pc")

    hf_tree = [f for f in _tree(tmp_path / "hf") if not f.endswith("README.md")]
    assert _tree(tmp_path / "pc") == hf_tree
    expected_dirs = sorted(["." if n == "default" else n for n, _ in adapters])
    assert sorted(str(Path(f).parent) for f in hf_tree if f.endswith(".json")) == expected_dirs
    for sub in expected_dirs:
        h, o = tmp_path / "hf" / sub, tmp_path / "pc" / sub
        hc = json.loads((h / "adapter_config.json").read_text())
        oc = json.loads((o / "adapter_config.json").read_text())
        assert set(oc) == set(hc)
        for key in set(hc) - _UNCOMPARED:
            if key in ("target_modules", "exclude_modules") and isinstance(hc[key], list):
                assert sorted(oc[key]) == sorted(hc[key]), key  # HF writes a set's order
            elif key == "modules_to_save" and hc[key] is not None:
                assert set(oc[key]) == set(hc[key]), key  # HF may repeat names
            else:
                assert oc[key] == hc[key], key
        assert oc["inference_mode"] is True and oc["peft_type"] == "LORA"
        ht = safetensors.numpy.load_file(h / "adapter_model.safetensors")
        ot = safetensors.numpy.load_file(o / "adapter_model.safetensors")
        assert sorted(ot) == sorted(ht)
        assert all(ot[k].shape == ht[k].shape and ot[k].dtype == ht[k].dtype == np.float32
                   for k in ht)
        from safetensors import safe_open
        with safe_open(str(o / "adapter_model.safetensors"), "np") as f:
            assert f.metadata() == {"format": "pt"}


# ------------------------------------------------------------------ round trips (no torch)

def test_round_trip_in_peftcore(tmp_path):
    batch = _batch()
    pm = get_peft_model(_base(), LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                                            task_type="SEQ_CLS", init_lora_weights=False))
    pm.add_adapter("other", LoraConfig(r=2, target_modules=["key"], task_type="SEQ_CLS",
                                       init_lora_weights=False))
    _train_peftcore(pm)
    pm.set_adapter("other")
    _randomize(pm, 3)
    other = _logits(pm, batch)
    pm.set_adapter("default")
    default = _logits(pm, batch)
    pm.save_pretrained(tmp_path)
    assert _tree(tmp_path) == FILES + [f"other/{f}" for f in FILES]
    assert json.loads((tmp_path / "adapter_config.json").read_text())["r"] == 4
    assert json.loads((tmp_path / "other" / "adapter_config.json").read_text())["r"] == 2

    loaded = PeftModel.from_pretrained(_base(), tmp_path)
    np.testing.assert_array_equal(_logits(loaded, batch), default)
    assert loaded.peft_config["default"].inference_mode is True
    assert loaded.get_nb_trainable_parameters()[0] == 0
    assert not any(p.requires_grad for p in loaded.parameters())
    ours = dict(pm.named_parameters())
    adapter_names = [n for n, _ in loaded.named_parameters() if ".default." in n]
    assert adapter_names == [n for n in ours if ".default." in n]
    for name, p in loaded.named_parameters():
        if name in ours:
            np.testing.assert_array_equal(p, ours[name], err_msg=name)

    loaded.load_adapter(tmp_path / "other", adapter_name="second")
    assert loaded.active_adapter == "default"  # loaded inactive
    np.testing.assert_array_equal(_logits(loaded, batch), default)
    loaded.set_adapter("second")
    np.testing.assert_array_equal(_logits(loaded, batch), other)
    assert loaded.get_nb_trainable_parameters()[0] == 0  # is_trainable=False by default

    trainable = PeftModel.from_pretrained(_base(), tmp_path, is_trainable=True)
    assert trainable.peft_config["default"].inference_mode is False
    assert trainable.get_nb_trainable_parameters()[0] == pm.get_nb_trainable_parameters()[0]
    np.testing.assert_array_equal(_logits(trainable, batch), default)
    trainable.load_adapter(tmp_path / "other", adapter_name="other", is_trainable=True)
    trainable.set_adapter("other")
    assert trainable.get_nb_trainable_parameters()[0] > 0
    with pytest.raises(ValueError, match="already exists"):
        trainable.load_adapter(tmp_path / "other", adapter_name="other")


def test_selected_adapters_and_saving_into_a_file(tmp_path):
    pm = get_peft_model(_base(), LoraConfig(r=2, target_modules=["query"]))
    pm.add_adapter("b", LoraConfig(r=2, target_modules=["value"]))
    pm.save_pretrained(tmp_path / "only_b", selected_adapters=["b"])
    assert _tree(tmp_path / "only_b") == [f"b/{f}" for f in FILES]
    with pytest.raises(ValueError, match="nope"):
        pm.save_pretrained(tmp_path / "x", selected_adapters=["nope"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="directory"):
        pm.save_pretrained(tmp_path / "file")


# ------------------------------------------------------------------ interop with HF PEFT

INTEROP = {
    # SEQ_CLS: BERT's head is the `classifier` linear, RoBERTa's `classifier.dense` + `out_proj`
    "bert": dict(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value", "output.dense"]),
    "roberta": dict(task_type="SEQ_CLS", r=4, lora_alpha=16, use_rslora=True,
                    target_modules=["query", "key", "intermediate.dense"]),
}


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_peftcore_trained_adapter_loads_in_hf_peft(hf_models, model_type, tmp_path):
    import peft
    batch = _batch(low=3)
    pm = get_peft_model(pc_load(hf_models, model_type), LoraConfig(**INTEROP[model_type]))
    start = {n: np.array(p) for n, p in pm.named_parameters() if p.requires_grad}
    _train_peftcore(pm)
    moved = [n for n, p in pm.named_parameters() if p.requires_grad
             and np.abs(np.asarray(p) - start[n]).max() > 1e-3]
    assert len(moved) == len(start)  # B started at zero and every tensor trained
    head = [n for n in start if ".modules_to_save.default." in n]
    assert len(head) == (2 if model_type == "bert" else 4)
    ours = _logits(pm, batch)
    pm.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.PeftModel.from_pretrained(hf_load(hf_models, model_type), str(tmp_path)).eval()
    _close(hf_logits(theirs, batch), ours, 1e-4)
    # every tensor HF PEFT holds for the adapter came from our file
    hf_params = {n: p.detach().numpy() for n, p in theirs.named_parameters()}
    for name, p in pm.named_parameters():
        if ".default." in name:
            np.testing.assert_array_equal(hf_params[name], p, err_msg=name)


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_hf_peft_trained_adapter_loads_in_peftcore(hf_models, model_type, tmp_path):
    import peft
    import torch
    batch = _batch(low=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(hf_load(hf_models, model_type),
                                     peft.LoraConfig(**INTEROP[model_type]))
    torch.manual_seed(0)
    opt = torch.optim.AdamW([p for p in theirs.parameters() if p.requires_grad], lr=2e-2)
    theirs.train()
    for step in range(4):
        ids, mask, labels = _batch(seed=step)
        out = theirs(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                     labels=torch.tensor(labels))
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    theirs.eval()
    expected = hf_logits(theirs, batch)
    theirs.save_pretrained(tmp_path)
    pm = PeftModel.from_pretrained(pc_load(hf_models, model_type), tmp_path)
    _close(_logits(pm, batch), expected, 1e-4)
    assert pm.peft_config["default"].inference_mode is True
    assert pm.get_nb_trainable_parameters()[0] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bare = hf_load(hf_models, model_type)
    with pm.disable_adapter():
        _close(_logits(pm, batch), hf_logits(bare, batch), 1e-4)
    # also under a second name next to another adapter
    other = get_peft_model(pc_load(hf_models, model_type),
                           LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["value"]))
    other.load_adapter(tmp_path, adapter_name="hf")
    other.set_adapter("hf")
    _close(_logits(other, batch), expected, 1e-4)


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
@pytest.mark.parametrize("bias", ["lora_only", "all"])
def test_bias_adapters_interoperate(hf_models, model_type, bias, tmp_path):
    """Trained biases travel both ways: HF PEFT keys a LoRA layer's bias as
    `<name>.base_layer.bias` (and, with bias="all", also saves the head wrapper's biases)."""
    import peft
    import torch
    batch = _batch(low=3)
    kw = dict(task_type="SEQ_CLS", bias=bias, target_modules=["query", "dense"],
              init_lora_weights=False)
    pm = get_peft_model(pc_load(hf_models, model_type), LoraConfig(**kw))
    _randomize(pm, 5)
    ours = _logits(pm, batch)
    pm.save_pretrained(tmp_path / "pc")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = peft.PeftModel.from_pretrained(hf_load(hf_models, model_type),
                                                str(tmp_path / "pc")).eval()
        theirs = peft.get_peft_model(hf_load(hf_models, model_type), peft.LoraConfig(**kw))
    _close(hf_logits(loaded, batch), ours, 1e-4)
    gen = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for p in theirs.parameters():
            if p.requires_grad:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    theirs.eval()
    expected = hf_logits(theirs, batch)
    theirs.save_pretrained(tmp_path / "hf")
    back = PeftModel.from_pretrained(pc_load(hf_models, model_type), tmp_path / "hf")
    _close(_logits(back, batch), expected, 1e-4)


# ------------------------------------------------------------------ crash safety

def _saved_pair(tmp_path):
    """A folder holding adapter 1 (r=2), and a model with a different adapter 2 (r=3)."""
    first = get_peft_model(_base(), LoraConfig(r=2, target_modules=["query"], task_type="SEQ_CLS",
                                               init_lora_weights=False))
    _randomize(first, 1)
    first.save_pretrained(tmp_path)
    second = get_peft_model(_base(), LoraConfig(r=3, target_modules=["query", "value"],
                                                task_type="SEQ_CLS", init_lora_weights=False))
    _randomize(second, 2)
    return first, second


def _assert_first_intact(tmp_path, first, before):
    batch = _batch()
    assert {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)} == before
    loaded = PeftModel.from_pretrained(_base(), tmp_path)
    np.testing.assert_array_equal(_logits(loaded, batch), _logits(first, batch))


def test_failed_rename_of_second_file_keeps_previous_adapter(tmp_path, monkeypatch):
    first, second = _saved_pair(tmp_path)
    before = {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)}
    real_replace, calls = os.replace, []

    def failing_replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the weights are in place, the config rename fails
            raise OSError("simulated: no space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        second.save_pretrained(tmp_path)
    monkeypatch.setattr(os, "replace", real_replace)
    assert len(calls) >= 2
    _assert_first_intact(tmp_path, first, before)  # same bytes: no temp or backup files left


@pytest.mark.parametrize("where", ["serialise", "first_rename", "write"])
def test_failed_save_keeps_previous_adapter(tmp_path, monkeypatch, where):
    first, second = _saved_pair(tmp_path)
    before = {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)}

    def boom(*args, **kwargs):
        raise OSError("simulated failure")

    if where == "serialise":
        monkeypatch.setattr(safetensors.numpy, "save", boom)
    elif where == "first_rename":
        monkeypatch.setattr(os, "replace", boom)
    else:
        monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="simulated"):
        second.save_pretrained(tmp_path)
    monkeypatch.undo()
    _assert_first_intact(tmp_path, first, before)


def test_failed_first_save_leaves_no_files(tmp_path, monkeypatch):
    pm = get_peft_model(_base(), LoraConfig(r=2, target_modules=["query"]))
    real_replace, calls = os.replace, []

    def failing_replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("simulated")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        pm.save_pretrained(tmp_path / "new")
    assert _tree(tmp_path / "new") == []


# ------------------------------------------------------------------ bad files

def _write_safetensors_by_hand(path, arrays: dict, dtype_code: str, bits_of):
    """A safetensors file whose tensors are stored as dtype_code, their bytes bits_of(array)."""
    header, chunks, offset = {}, [], 0
    for name, array in arrays.items():
        raw = bits_of(array).tobytes()
        header[name] = {"dtype": dtype_code, "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + b"".join(chunks))


@pytest.mark.parametrize("dtype_code", ["BF16", "F16", "F64"])
def test_adapter_saved_in_lower_or_higher_precision_loads(tmp_path, dtype_code):
    """Adapters trained in bf16/fp16 (HF PEFT with autocast_adapter_dtype=False) or saved in
    float64 load, each weight as the float32 nearest the stored value."""
    folder = _good_folder(tmp_path)
    weights = safetensors.numpy.load_file(folder / "adapter_model.safetensors")
    if dtype_code == "BF16":  # bf16 = the top 16 bits of the float32
        bits_of = lambda a: (a.astype("<f4").view("<u4") >> 16).astype("<u2")  # noqa: E731
        stored = {n: (bits_of(a).astype(np.uint32) << 16).view(np.float32) for n, a in weights.items()}
    else:
        numpy_dtype = {"F16": "<f2", "F64": "<f8"}[dtype_code]
        bits_of = lambda a: a.astype(numpy_dtype)  # noqa: E731
        stored = {n: a.astype(numpy_dtype).astype(np.float32) for n, a in weights.items()}
    _write_safetensors_by_hand(folder / "adapter_model.safetensors", weights, dtype_code, bits_of)
    pm = PeftModel.from_pretrained(_base(), folder)
    state = pm.adapter_state_dict("default")
    assert set(state) == set(stored)
    for name, value in stored.items():
        assert state[name].dtype == np.float32
        np.testing.assert_array_equal(state[name], value, err_msg=name)
    if dtype_code != "F64":  # the rounding really happened
        assert any(not np.array_equal(stored[n], weights[n]) for n in weights)


def _good_folder(tmp_path, r=4):
    pm = get_peft_model(_base(), LoraConfig(r=r, target_modules=["query", "value"],
                                            task_type="SEQ_CLS", init_lora_weights=False))
    _randomize(pm, 4)
    folder = tmp_path / f"good_r{r}"
    pm.save_pretrained(folder)
    return folder


def _corrupt(tmp_path, kind):
    folder = _good_folder(tmp_path)
    bad = tmp_path / f"bad_{kind}"
    weights = safetensors.numpy.load_file(folder / "adapter_model.safetensors")
    config = json.loads((folder / "adapter_config.json").read_text())
    bad.mkdir()
    if kind == "missing_folder":
        bad.rmdir()
        return bad, (FileNotFoundError,), "does not exist"
    raw = (folder / "adapter_model.safetensors").read_bytes()
    if kind == "truncated":
        (bad / "adapter_model.safetensors").write_bytes(raw[: len(raw) // 2])
        (bad / "adapter_config.json").write_text(json.dumps(config))
        return bad, (ValueError,), "truncated"
    if kind == "corrupt_json":
        (bad / "adapter_model.safetensors").write_bytes(raw)
        (bad / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4,')
        return bad, (ValueError,), "JSON"
    if kind == "no_weights":
        (bad / "adapter_config.json").write_text(json.dumps(config))
        return bad, (FileNotFoundError,), "adapter_model"
    if kind == "unknown_peft_type":
        config["peft_type"] = "NOT_A_METHOD"
        (bad / "adapter_model.safetensors").write_bytes(raw)
        (bad / "adapter_config.json").write_text(json.dumps(config))
        return bad, (ValueError,), "NOT_A_METHOD"
    if kind == "unsupported_peft_type":
        config["peft_type"] = "LOHA"  # a method peftcore does not implement
        (bad / "adapter_model.safetensors").write_bytes(raw)
        (bad / "adapter_config.json").write_text(json.dumps(config))
        return bad, (ValueError,), "LOHA"
    if kind == "wrong_rank":  # tensors saved with r=4, config says r=8
        config["r"] = 8
        (bad / "adapter_config.json").write_text(json.dumps(config))
        (bad / "adapter_model.safetensors").write_bytes(raw)
        return bad, (ValueError,), "shape"
    if kind == "unknown_tensor":
        weights["base_model.model.bert.encoder.layer.0.attention.self.nothing.lora_A.weight"] = \
            np.zeros((4, 32), np.float32)
    elif kind == "missing_tensor":
        del weights["base_model.model.bert.encoder.layer.1.attention.self.value.lora_B.weight"]
    (bad / "adapter_config.json").write_text(json.dumps(config))
    safetensors.numpy.save_file(weights, bad / "adapter_model.safetensors")
    return bad, (ValueError,), {"unknown_tensor": "nothing", "missing_tensor": "lacks"}[kind]


BAD_KINDS = ["missing_folder", "truncated", "corrupt_json", "no_weights", "unknown_peft_type",
             "unsupported_peft_type", "wrong_rank", "unknown_tensor", "missing_tensor"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_adapter_folder_from_pretrained(tmp_path, kind):
    folder, errors, match = _corrupt(tmp_path, kind)
    base = _base()
    batch = _batch()
    before, snap = _logits(base, batch), _snapshot(base)
    with pytest.raises(errors, match=match):
        PeftModel.from_pretrained(base, folder)
    _assert_same_snapshot(base, snap)
    assert not any(isinstance(m, LoraLinear) for m in base.modules())
    np.testing.assert_array_equal(_logits(base, batch), before)
    get_peft_model(base, LoraConfig(r=2, target_modules=["query"]))  # still a bare model


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_adapter_folder_load_adapter(tmp_path, kind):
    folder, errors, match = _corrupt(tmp_path, kind)
    pm = get_peft_model(_base(), LoraConfig(r=2, target_modules=["key"], task_type="SEQ_CLS",
                                            init_lora_weights=False))
    batch = _batch()
    before, snap = _logits(pm, batch), _snapshot(pm)
    with pytest.raises(errors, match=match):
        pm.load_adapter(folder, adapter_name="bad")
    assert list(pm.peft_config) == ["default"]
    _assert_same_snapshot(pm, snap)
    np.testing.assert_array_equal(_logits(pm, batch), before)
    pm.load_adapter(_good_folder(tmp_path / "ok"), adapter_name="bad")  # the name is still free
