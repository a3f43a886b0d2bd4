"""Encoder models fed bad input: wrong dtypes and shapes, out-of-range ids and labels, empty
batches, missing or corrupt model folders, unsafe pickles, backward without forward.

Every bad call must raise a Python exception of the documented type and leave the model
working: a valid forward afterwards gives the same logits (and a valid backward the same
gradients) as before. All call cases are first run in a child interpreter, so a segfault or
abort shows up as a failing test naming the case instead of killing the suite.
"""
import json
import os
import pickle
import re
import struct
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from peftcore import AutoModel, AutoModelForSequenceClassification, EncoderConfig
from peftcore.models.encoder import SequenceClassificationBase

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

CONFIG = dict(model_type="bert", vocab_size=40, hidden_size=16, num_hidden_layers=2,
              num_attention_heads=2, intermediate_size=32, max_position_embeddings=12,
              type_vocab_size=2, num_labels=3)
ROBERTA = dict(CONFIG, model_type="roberta", pad_token_id=1, type_vocab_size=1,
               max_position_embeddings=14)


def _batch():
    ids = np.array([[5, 6, 7, 8, 9, 10], [11, 12, 13, 0, 0, 0]], dtype=np.int64)
    mask = (ids != 0).astype(np.int64)
    return ids, mask


LABELS = np.array([2, 0])


def _cls(config=CONFIG):
    return AutoModelForSequenceClassification.from_config(config, seed=1).eval()


def _head_only():
    """Only the classifier trains: the backward never reaches the encoder layers."""
    model = _cls()
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("classifier")
    return model


def _base(config=CONFIG):
    return AutoModel.from_config(config, seed=1).eval()


# ------------------------------------------------------------------ call cases
# name -> (model factory, bad call on the model, expected exception type)

def _fwd(**overrides):
    def call(model):
        ids, mask = _batch()
        kw = dict(input_ids=ids, attention_mask=mask)
        kw.update(overrides)
        return model(**kw)
    return call


def _backward_twice(model):
    ids, mask = _batch()
    model(ids, attention_mask=mask, labels=LABELS)
    model.backward()
    model.backward()


def _backward_twice_grad_logits(model):
    ids, mask = _batch()
    out = model(ids, attention_mask=mask)
    model.backward(np.ones_like(out.logits))
    model.backward(np.ones_like(out.logits))


def _backward(**kw):
    def call(model):
        ids, mask = _batch()
        model(ids, attention_mask=mask)
        model.backward(**kw)
    return call


ids0, mask0 = _batch()
CASES = {
    # input_ids
    "float_ids": (_cls, _fwd(input_ids=ids0.astype(np.float32)), TypeError),
    "float64_ids": (_cls, _fwd(input_ids=ids0.astype(np.float64)), TypeError),
    "bool_ids": (_cls, _fwd(input_ids=ids0 > 7), TypeError),
    "string_ids": (_cls, _fwd(input_ids=[["a", "b"]], attention_mask=None), TypeError),
    "ids_3d": (_cls, _fwd(input_ids=ids0[None], attention_mask=None), ValueError),
    "ids_eq_vocab": (_cls, _fwd(input_ids=np.where(ids0 == 7, 40, ids0)), IndexError),
    "ids_huge": (_cls, _fwd(input_ids=np.where(ids0 == 7, 2**40, ids0)), IndexError),
    "ids_negative": (_cls, _fwd(input_ids=np.where(ids0 == 7, -1, ids0)), IndexError),
    "empty_batch": (_cls, _fwd(input_ids=np.zeros((0, 5), np.int64), attention_mask=None),
                    ValueError),
    "empty_seq": (_cls, _fwd(input_ids=np.zeros((2, 0), np.int64), attention_mask=None),
                  ValueError),
    "empty_batch_with_mask": (_cls, _fwd(input_ids=np.zeros((0, 5), np.int64),
                                         attention_mask=np.zeros((0, 5), np.int64)), ValueError),
    "too_long": (_cls, _fwd(input_ids=np.full((1, 13), 5), attention_mask=None), ValueError),
    "too_long_roberta": (lambda: _cls(ROBERTA),
                         _fwd(input_ids=np.full((1, 13), 5), attention_mask=None), ValueError),
    # attention_mask / token_type_ids
    "mask_shape": (_cls, _fwd(attention_mask=mask0[:, :5]), ValueError),
    "mask_transposed": (_cls, _fwd(attention_mask=np.ones((6, 2), np.int64)), ValueError),
    "mask_batch": (_cls, _fwd(attention_mask=mask0[:1]), ValueError),
    "mask_value_2": (_cls, _fwd(attention_mask=mask0 * 2), ValueError),
    "mask_negative": (_cls, _fwd(attention_mask=-mask0), ValueError),
    "ids_uint64_past_int64": (_cls, _fwd(input_ids=np.where(ids0 == 7, 2**63 + 5, ids0)
                                         .astype(np.uint64)), IndexError),
    "positions_float": (_cls, _fwd(position_ids=np.arange(6, dtype=np.float64)), TypeError),
    "positions_strings": (_cls, _fwd(position_ids=np.array(list("abcdef"))), TypeError),
    "positions_shape": (_cls, _fwd(position_ids=np.arange(5)), ValueError),
    "positions_batch": (_cls, _fwd(position_ids=np.zeros((3, 6), np.int64)), ValueError),
    "positions_negative": (_cls, _fwd(position_ids=np.arange(6) - 1), IndexError),
    "types_shape": (_cls, _fwd(token_type_ids=np.zeros((2, 7), np.int64)), ValueError),
    "types_float": (_cls, _fwd(token_type_ids=np.zeros((2, 6), np.float32)), TypeError),
    "types_out_of_range": (_cls, _fwd(token_type_ids=np.full((2, 6), 2)), IndexError),
    "types_negative": (_cls, _fwd(token_type_ids=np.full((2, 6), -1)), IndexError),
    # labels
    "label_too_big": (_cls, _fwd(labels=np.array([3, 0])), ValueError),
    "label_negative": (_cls, _fwd(labels=np.array([-1, 0])), ValueError),
    "label_float": (_cls, _fwd(labels=np.array([1.0, 0.0])), TypeError),
    "label_count": (_cls, _fwd(labels=np.array([1, 0, 2])), ValueError),
    # (B, 1) is flattened as transformers does (tests/test_model_outputs.py); (B, 2) ints are not
    "label_2d": (_cls, _fwd(labels=np.array([[1, 0], [0, 1]])), ValueError),
    "mse_label_count": (lambda: _cls(dict(CONFIG, num_labels=1)),
                        _fwd(labels=np.array([0.5, 1.0, 2.0], np.float32)), ValueError),
    "mse_label_strings": (lambda: _cls(dict(CONFIG, num_labels=1)),
                          _fwd(labels=np.array(["0.5", "x"])), TypeError),
    # load_state_dict / init_weights: refused whole, before any value is written
    "load_state_dict_list": (_cls, lambda m: m.load_state_dict([("classifier.bias", 0)]), TypeError),
    "load_state_dict_strings": (_cls, lambda m: m.load_state_dict(
        {"classifier.bias": np.zeros(3), "classifier.weight": np.full((3, 16), "x")}, strict=False),
        TypeError),
    "load_state_dict_complex": (_cls, lambda m: m.load_state_dict(
        {"classifier.weight": np.ones((3, 16), np.complex64)}, strict=False), TypeError),
    "load_state_dict_shape_after_good_key": (_cls, lambda m: m.load_state_dict(
        {"classifier.bias": np.ones(3), "classifier.weight": np.ones((16, 3))}, strict=False),
        ValueError),
    "init_weights_unknown_name": (_cls, lambda m: m.init_weights(names=["classifier.bias", "nope"]),
                                  KeyError),
    "init_weights_negative_seed": (_cls, lambda m: m.init_weights(seed=-1), ValueError),
    "inference_rows_zero": (_cls, lambda m: setattr(m, "inference_rows", 0), ValueError),
    "inference_rows_float": (_cls, lambda m: setattr(m, "inference_rows", 64.0), ValueError),
    # backward
    "backward_before_forward": (_cls, lambda m: m.backward(), RuntimeError),
    "backward_grad_before_forward": (_cls, lambda m: m.backward(np.ones((2, 3), np.float32)),
                                     RuntimeError),
    "base_backward_before_forward": (
        _base, lambda m: m.backward(grad_last_hidden_state=np.ones((2, 6, 16), np.float32)),
        RuntimeError),
    "backward_twice": (_cls, _backward_twice, RuntimeError),
    "backward_twice_grad_logits": (_cls, _backward_twice_grad_logits, RuntimeError),
    # one backward per forward even when it stops at the head (activations untouched)
    "backward_twice_head_only": (_head_only, _backward_twice_grad_logits, RuntimeError),
    "backward_without_labels": (_cls, _backward(), RuntimeError),
    "grad_logits_shape": (_cls, _backward(grad_logits=np.ones((2, 2), np.float32)), ValueError),
    "grad_logits_batch": (_cls, _backward(grad_logits=np.ones((3, 3), np.float32)), ValueError),
    "grad_hidden_shape": (_base, _backward(grad_last_hidden_state=np.ones((2, 5, 16), np.float32)),
                          ValueError),
    "grad_pooled_shape": (_base, _backward(grad_pooler_output=np.ones((2, 15), np.float32)),
                          ValueError),
    "two_grads": (_base, _backward(grad_last_hidden_state=np.ones((2, 6, 16), np.float32),
                                   grad_pooler_output=np.ones((2, 16), np.float32)), ValueError),
    "no_grad_given": (_base, _backward(), ValueError),
}


def run_case(name):
    """Run one case; returns the exception it raised (None if it raised nothing)."""
    factory, call, _ = CASES[name]
    model = factory()
    try:
        call(model)
    except Exception as exc:  # noqa: BLE001 - the test checks the type
        return exc
    return None


@pytest.fixture(scope="module")
def crashes():
    """Run every call case in a child interpreter; {case: exit description} for crashes."""
    script = (
        "import sys; sys.path.insert(0, %r); sys.path.insert(0, %r)\n"
        "import test_encoder_bad_input as t\n"
        "for name in t.CASES:\n"
        "    print('CASE', name, flush=True)\n"
        "    t.run_case(name)\n"
        "print('DONE', flush=True)\n" % (str(REPO), str(HERE)))
    result = {}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    if "DONE" not in proc.stdout:
        started = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("CASE")]
        last = started[-1] if started else "<import>"
        result[last] = f"exit code {proc.returncode}: {proc.stderr[-2000:]}"
    return result


def test_no_case_crashes(crashes):
    assert not crashes


@pytest.mark.parametrize("name", list(CASES))
def test_bad_call_raises_and_model_still_works(crashes, name):
    if name in crashes:
        pytest.fail(f"{name} crashed the interpreter: {crashes[name]}")
    factory, call, expected = CASES[name]
    model = factory()
    ids, mask = _batch()
    is_cls = isinstance(model, SequenceClassificationBase)
    labels = (np.array([0.5, -1.0], np.float32) if is_cls and model.config.num_labels == 1
              else LABELS)

    def reference():
        """logits (or hidden states) and gradients of one valid step from zeroed grads."""
        model.zero_grad(set_to_none=True)
        if is_cls:
            out = model(ids, attention_mask=mask, labels=labels)
            model.backward()
            value = out.logits
        else:
            out = model(ids, attention_mask=mask)
            model.backward(grad_last_hidden_state=np.ones_like(out.last_hidden_state))
            value = out.last_hidden_state
        grads = {n: p.grad.copy() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return value, grads

    before, grads_before = reference()
    weights = model.state_dict()
    with pytest.raises(expected):
        call(model)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, weights[k], err_msg=f"{name} changed {k}")
    after, grads_after = reference()
    np.testing.assert_array_equal(after, before)
    assert grads_after.keys() == grads_before.keys()
    for k in grads_before:
        np.testing.assert_array_equal(grads_after[k], grads_before[k], err_msg=k)


def test_error_messages_name_the_problem():
    model = _cls()
    ids, mask = _batch()
    with pytest.raises(IndexError, match="vocab_size"):
        model(np.where(ids == 7, 40, ids), attention_mask=mask)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(np.full((1, 13), 5))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        model(ids, attention_mask=mask, labels=np.array([3, 0]))
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, attention_mask=mask[:, :5])
    with pytest.raises(ValueError, match=r"attention_mask must hold 1 .* or 0 .*, got 2"):
        model(ids, attention_mask=mask * 2)
    with pytest.raises(TypeError, match="position_ids must be int"):
        model(ids, attention_mask=mask, position_ids=np.arange(6.0))
    with pytest.raises(ValueError, match=r"position_ids has shape \(5,\), input_ids \(2, 6\)"):
        model(ids, attention_mask=mask, position_ids=np.arange(5))
    with pytest.raises(IndexError, match=str(2**63 + 5)):
        model(np.full((1, 3), 2**63 + 5, np.uint64))


@pytest.mark.parametrize("bad_call", [
    lambda m, ids, mask: m(ids, attention_mask=mask, labels=np.array([3, 0])),
    lambda m, ids, mask: m(ids, attention_mask=mask, labels=np.array([1.5, 0.0])),
    lambda m, ids, mask: m(ids, attention_mask=mask * 2, labels=LABELS),
    lambda m, ids, mask: m(ids[:, :5], attention_mask=mask, labels=LABELS),
], ids=["label_range", "label_dtype", "mask_value", "mask_shape"])
def test_refused_forward_keeps_the_pending_backward(bad_call):
    """A forward refused for its arguments must not run: the previous forward's activations
    and loss gradient stay, so backward() afterwards gives the gradients of that forward."""
    ids, mask = _batch()
    plain, refused = _cls().train(), _cls().train()  # same seed: same dropout masks
    plain(ids, attention_mask=mask, labels=LABELS)
    plain.backward()

    refused(ids, attention_mask=mask, labels=LABELS)
    with pytest.raises((ValueError, TypeError)):
        bad_call(refused, ids, mask)
    refused.backward()
    for n, p in refused.named_parameters():
        np.testing.assert_array_equal(p.grad, plain.get_parameter(n).grad, err_msg=n)
    # nor did it draw a dropout mask: the next forwards of both match too
    np.testing.assert_array_equal(refused(ids, attention_mask=mask).logits,
                                  plain(ids, attention_mask=mask).logits)


def test_sequence_at_the_position_limit_works():
    """The longest sequences that fit: max_position_embeddings tokens for BERT,
    max_position_embeddings - pad_token_id - 1 for RoBERTa (positions start after the pad)."""
    for config, longest in ((CONFIG, 12), (ROBERTA, 12)):
        model = _cls(config)
        out = model(np.full((1, longest), 5))
        assert np.isfinite(out.logits).all()
        with pytest.raises(ValueError):
            model(np.full((1, longest + 1), 5))


def test_label_ignore_index_is_allowed():
    model = _cls()
    ids, mask = _batch()
    out = model(ids, attention_mask=mask, labels=np.array([-100, 1]))
    assert np.isfinite(out.loss)
    model.backward()


# ------------------------------------------------------------------ bad model folders

def _save_folder(folder: Path, config=CONFIG) -> Path:
    """A model folder written by peftcore itself: config.json + model.safetensors."""
    st_numpy = pytest.importorskip("safetensors.numpy")
    folder.mkdir(parents=True, exist_ok=True)
    model = _cls(config)
    (folder / "config.json").write_text(json.dumps(EncoderConfig.from_dict(config).to_dict()))
    st_numpy.save_file(model.state_dict(), str(folder / "model.safetensors"))
    return folder


def test_folder_round_trip(tmp_path):
    folder = _save_folder(tmp_path / "m")
    ids, mask = _batch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    np.testing.assert_array_equal(loaded(ids, attention_mask=mask).logits,
                                  _cls()(ids, attention_mask=mask).logits)


@pytest.mark.parametrize("cls", [AutoModel, AutoModelForSequenceClassification])
def test_missing_folder(tmp_path, cls):
    with pytest.raises(FileNotFoundError):
        cls.from_pretrained(tmp_path / "nowhere")


@pytest.mark.parametrize("cls", [AutoModel, AutoModelForSequenceClassification])
def test_folder_without_config(tmp_path, cls):
    folder = _save_folder(tmp_path / "m")
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        cls.from_pretrained(folder)


@pytest.mark.parametrize("cls", [AutoModel, AutoModelForSequenceClassification])
def test_folder_without_weights(tmp_path, cls):
    folder = _save_folder(tmp_path / "m")
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights"):
        cls.from_pretrained(folder)


@pytest.mark.parametrize("cls", [AutoModel, AutoModelForSequenceClassification])
def test_unsupported_model_type(tmp_path, cls):
    folder = _save_folder(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "gpt2"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="gpt2"):
        cls.from_pretrained(folder)
    with pytest.raises(ValueError, match="gpt2"):
        cls.from_config(config)


def test_config_not_json(tmp_path):
    folder = _save_folder(tmp_path / "m")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError):
        AutoModelForSequenceClassification.from_pretrained(folder)


@pytest.mark.parametrize("keep", [0, 4, 7, 100, -100, -1])
def test_truncated_safetensors(tmp_path, keep):
    folder = _save_folder(tmp_path / "m")
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:len(data) + keep])
    with pytest.raises(ValueError):
        AutoModelForSequenceClassification.from_pretrained(folder)


def test_safetensors_with_wrong_shape(tmp_path):
    st_numpy = pytest.importorskip("safetensors.numpy")
    folder = _save_folder(tmp_path / "m")
    state = _cls().state_dict()
    state["classifier.weight"] = np.zeros((4, 16), np.float32)
    st_numpy.save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match="classifier.weight"):
        AutoModelForSequenceClassification.from_pretrained(folder)


class _SystemCall:
    """Unpickling this calls os.system(command)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _evil_pickles(marker: Path):
    command = f"touch {marker}"
    exec_code = f"import os; os.system({command!r})"
    return {
        # literally GLOBAL 'os system' + REDUCE, as a hand-crafted exploit would write it
        "os.system": (b"\x80\x02}(X\x01\x00\x00\x00wcos\nsystem\n(X"
                      + struct.pack("<I", len(command)) + command.encode() + b"tRu."),
        # what pickle itself writes for it (GLOBAL 'posix system' on Linux)
        "pickle.dumps": pickle.dumps({"w": _SystemCall(command)}, protocol=2),
        "builtins.exec": (b"cbuiltins\nexec\n(X" + struct.pack("<I", len(exec_code))
                          + exec_code.encode() + b"tR."),
    }


@pytest.mark.parametrize("kind", ["os.system", "pickle.dumps", "builtins.exec"])
def test_malicious_pickle_is_refused_without_side_effect(tmp_path, kind):
    marker = tmp_path / "pwned"
    payload = _evil_pickles(marker)[kind]
    folder = _save_folder(tmp_path / "m")
    (folder / "model.safetensors").unlink()
    with zipfile.ZipFile(folder / "pytorch_model.bin", "w") as z:  # torch.save's layout
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
    with pytest.raises((ValueError, pickle.UnpicklingError)) as info:
        AutoModelForSequenceClassification.from_pretrained(folder)
    assert not marker.exists(), "the pickle ran code"
    if kind != "builtins.exec":
        assert "system" in str(info.value)


def test_malicious_pickle_payload_really_works(tmp_path):
    """The os.system payload above is real: plain pickle.loads runs it (in a child)."""
    marker = tmp_path / "pwned"
    for kind, payload in _evil_pickles(marker).items():
        code = f"import pickle; pickle.loads({payload!r})"
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
        assert marker.exists(), kind
        marker.unlink()


def test_failed_load_leaves_loaded_model_working(tmp_path):
    """A failed from_pretrained doesn't disturb a model already in memory."""
    good = _save_folder(tmp_path / "good")
    model = AutoModelForSequenceClassification.from_pretrained(good).eval()
    ids, mask = _batch()
    before = model(ids, attention_mask=mask).logits
    bad = _save_folder(tmp_path / "bad")
    (bad / "model.safetensors").write_bytes(b"\x10")
    with pytest.raises(ValueError):
        AutoModelForSequenceClassification.from_pretrained(bad)
    np.testing.assert_array_equal(model(ids, attention_mask=mask).logits, before)


def _torch_bin_folder(folder: Path) -> Path:
    """A model folder whose weights are a torch.save zip (pytorch_model.bin) only."""
    torch = pytest.importorskip("torch")
    folder = _save_folder(folder)
    state = AutoModelForSequenceClassification.from_pretrained(folder).state_dict()
    (folder / "model.safetensors").unlink()
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, folder / "pytorch_model.bin")
    return folder


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_damaged_weight_files_raise_checkpoint_errors(tmp_path, weights):
    """Seeded random damage (bytes changed, cut out or put in): each load either works (the
    damage hit tensor values) or raises CheckpointError naming the file, never another
    exception from the file formats' readers."""
    from peftcore.models.checkpoint import CheckpointError

    folder = (_save_folder(tmp_path / "m") if weights == "model.safetensors"
              else _torch_bin_folder(tmp_path / "m"))
    path = folder / weights
    good = path.read_bytes()
    rng = np.random.default_rng(7)
    refused = 0
    for _ in range(150):
        data = bytearray(good)
        for _ in range(int(rng.choice([1, 2, 4, 16]))):
            i, kind = int(rng.integers(len(data))), int(rng.integers(3))
            if kind == 0:
                data[i] = int(rng.integers(256))
            elif kind == 1:
                del data[i:i + int(rng.integers(1, 64))]
            else:
                data[i:i] = rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8).tobytes()
        path.write_bytes(bytes(data))
        try:
            AutoModelForSequenceClassification.from_pretrained(folder)
        except CheckpointError as exc:
            assert str(path) in str(exc)
            refused += 1
    assert refused > 50  # the damage really was seen


def test_zip_end_record_that_makes_zipfile_raise(tmp_path):
    """A ZIP64 locator claiming several disks makes zipfile.is_zipfile raise, not say no."""
    from peftcore.models.checkpoint import CheckpointError

    folder = _torch_bin_folder(tmp_path / "m")
    path = folder / "pytorch_model.bin"
    good = path.read_bytes()
    end = good.rindex(b"PK\x05\x06")  # the end of central directory record
    path.write_bytes(good[:end] + struct.pack("<4sIQI", b"PK\x06\x07", 1, 0, 2) + good[end:])
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*span multiple disks"):
        AutoModelForSequenceClassification.from_pretrained(folder)
