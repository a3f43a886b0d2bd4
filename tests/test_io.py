"""Tests for peftcore.utils.io: atomic writes and validated safetensors files."""

import json
import os
import struct

import numpy as np
import pytest

from peftcore.utils import io
from peftcore.utils.io import (
    CheckpointError,
    atomic_write_bytes,
    read_safetensors,
    read_safetensors_metadata,
    save_adapter_files,
    save_safetensors,
)


def _tensors():
    rng = np.random.default_rng(0)
    return {
        "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight": rng.standard_normal((4, 16)).astype(np.float32),
        "base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.weight": np.zeros((16, 4), np.float32),
        "base_model.model.classifier.bias": np.arange(3, dtype=np.float32),
    }


# ---------------------------------------------------------------- atomic writes


def test_atomic_write_creates_and_replaces(tmp_path):
    p = tmp_path / "f.bin"
    atomic_write_bytes(p, b"one")
    atomic_write_bytes(p, b"two")
    assert p.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["f.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert (p.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_atomic_write_keeps_old_file_when_replace_fails(tmp_path, monkeypatch):
    p = tmp_path / "f.bin"
    p.write_bytes(b"old")

    def boom(*args, **kwargs):
        raise OSError("disk on fire")

    monkeypatch.setattr(io.os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        atomic_write_bytes(p, b"new content")
    assert p.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]  # temp file cleaned up


def test_atomic_write_keeps_old_file_when_write_fails_midway(tmp_path, monkeypatch):
    p = tmp_path / "f.bin"
    p.write_bytes(b"old")
    real_fsync = os.fsync
    calls = []

    def failing_fsync(fd):
        calls.append(fd)
        raise KeyboardInterrupt  # even non-Exception interruptions clean up

    monkeypatch.setattr(io.os, "fsync", failing_fsync)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(p, b"x" * 100_000)
    monkeypatch.setattr(io.os, "fsync", real_fsync)
    assert calls and p.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_atomic_write_bad_data_type(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(p, "not bytes")
    assert p.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]


# ---------------------------------------------------------------- safetensors


def test_safetensors_roundtrip_and_metadata(tmp_path):
    p = tmp_path / "adapter_model.safetensors"
    t = _tensors()
    t["half"] = np.ones((2, 2), np.float16)
    t["strided"] = np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]  # non-contiguous view
    save_safetensors(p, t)
    loaded = read_safetensors(p, float32=False)
    assert set(loaded) == set(t)
    for k in t:
        assert loaded[k].dtype == t[k].dtype
        np.testing.assert_array_equal(loaded[k], t[k])
    widened = read_safetensors(p)  # the default: floating tensors as float32
    assert widened["half"].dtype == np.float32
    np.testing.assert_array_equal(widened["half"], t["half"])
    assert read_safetensors_metadata(p) == {"format": "pt"}  # what HF PEFT writes
    save_safetensors(p, t, metadata={})
    assert read_safetensors_metadata(p) == {}


def test_safetensors_readable_by_reference_loader(tmp_path):
    from safetensors import safe_open

    p = tmp_path / "a.safetensors"
    save_safetensors(p, _tensors())
    with safe_open(str(p), "np") as f:
        assert f.metadata() == {"format": "pt"}
        assert set(f.keys()) == set(_tensors())


def test_safetensors_loads_in_torch(tmp_path):
    pytest.importorskip("torch")
    from safetensors.torch import load_file

    p = tmp_path / "a.safetensors"
    save_safetensors(p, _tensors())
    loaded = load_file(str(p))
    for k, v in _tensors().items():
        np.testing.assert_array_equal(loaded[k].numpy(), v)


def test_save_safetensors_rejects_non_arrays(tmp_path):
    with pytest.raises(TypeError, match="numpy.ndarray"):
        save_safetensors(tmp_path / "a.safetensors", {"x": [1, 2, 3]})
    assert os.listdir(tmp_path) == []


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_safetensors(tmp_path / "nope.safetensors")


def _good_bytes(tmp_path):
    p = tmp_path / "good.safetensors"
    save_safetensors(p, _tensors())
    return p.read_bytes()


def _with_header(header: dict, body: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + body


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda b: b[:5], "too short"),
        (lambda b: b[:0], "too short"),
        (lambda b: b[:-1], "truncated"),
        (lambda b: b[: len(b) // 2], "truncated"),
        (lambda b: struct.pack("<Q", 10**12) + b[8:], "bad safetensors header length 1000000000000"),
        (lambda b: b[:8] + b"\x00" * (len(b) - 8), "not valid JSON"),
        (lambda b: b + b"extra", "cover .*\\(trailing bytes\\)"),
        (lambda b: _with_header([1, 2], b""), "JSON object"),
        (lambda b: _with_header({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}}, b"\0" * 8), "do not match"),
        (lambda b: _with_header({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8), "has only 8 bytes"),
        (lambda b: _with_header({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8), r"\(12 bytes\)"),
        (lambda b: _with_header({"x": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8), "unsupported dtype 'Q7'"),
        (lambda b: _with_header({"x": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8), "malformed shape"),
        (lambda b: _with_header({"x": {"dtype": "F32"}}, b""), "malformed header entry"),
        (lambda b: _with_header({"__metadata__": {"a": 1}}, b""), "__metadata__ must map strings to strings"),
        # two tensors over the same bytes, and a gap before the first
        (lambda b: _with_header({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                 "y": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 16),
         "'y' starts at byte 0 .* expected 8"),
        (lambda b: _with_header({"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8),
         "'x' starts at byte 4 .* expected 0"),
    ],
)
def test_corrupt_safetensors_raise_value_error(tmp_path, mutate, match):
    p = tmp_path / "adapter_model.safetensors"
    p.write_bytes(mutate(_good_bytes(tmp_path)))
    with pytest.raises(ValueError, match=match) as info:
        read_safetensors(p)
    assert "adapter_model.safetensors" in str(info.value)
    assert isinstance(info.value, CheckpointError)


def test_bf16_safetensors_read_as_float32(tmp_path):
    values = np.array([1.0, -2.5, 0.15625, 65280.0], dtype=np.float32)  # exact in bf16
    bits = (values.view(np.uint32) >> 16).astype("<u2")
    p = tmp_path / "adapter_model.safetensors"
    p.write_bytes(_with_header({"x": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}},
                               bits.tobytes()))
    for float32 in (True, False):  # NumPy has no bfloat16: widened either way
        got = read_safetensors(p, float32=float32)["x"]
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, values)


def test_empty_tensor_dict_roundtrip(tmp_path):
    p = tmp_path / "e.safetensors"
    save_safetensors(p, {})
    assert read_safetensors(p) == {}


# ---------------------------------------------------------------- adapter directory


def test_save_adapter_files(tmp_path):
    from peftcore.tuners import LoraConfig

    d = tmp_path / "out" / "adapter"
    cfg = LoraConfig(target_modules=["query", "value"], task_type="SEQ_CLS")
    save_adapter_files(d, cfg.to_dict(), _tensors())
    assert sorted(os.listdir(d)) == ["adapter_config.json", "adapter_model.safetensors"]
    assert json.loads((d / "adapter_config.json").read_text()) == cfg.to_dict()
    assert set(read_safetensors(d / "adapter_model.safetensors")) == set(_tensors())
    save_adapter_files(d, cfg, _tensors())  # config object accepted, overwrite ok
    assert sorted(os.listdir(d)) == ["adapter_config.json", "adapter_model.safetensors"]


def test_save_adapter_files_failure_keeps_previous_files(tmp_path, monkeypatch):
    d = tmp_path / "adapter"
    save_adapter_files(d, {"peft_type": "LORA", "r": 8}, _tensors())
    before = {n: (d / n).read_bytes() for n in os.listdir(d)}
    monkeypatch.setattr(io.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("no space")))
    with pytest.raises(OSError):
        save_adapter_files(d, {"peft_type": "LORA", "r": 4}, {"w": np.ones(3, np.float32)})
    assert {n: (d / n).read_bytes() for n in os.listdir(d)} == before


def test_adapter_files_load_in_peft(tmp_path):
    """A directory written by us loads with HF PEFT's config loader and safetensors torch loader."""
    peft = pytest.importorskip("peft")
    from peftcore.tuners import LoraConfig
    from safetensors.torch import load_file

    cfg = LoraConfig(target_modules=["query", "value"], task_type="SEQ_CLS")
    save_adapter_files(tmp_path, cfg.to_dict(), _tensors())
    assert peft.PeftConfig.from_pretrained(str(tmp_path)).r == 8
    assert set(load_file(str(tmp_path / "adapter_model.safetensors"))) == set(_tensors())


def test_save_figure_is_atomic(tmp_path, monkeypatch):
    """A figure is rendered in memory, then written as atomic_write_bytes writes: a render
    that fails leaves the previous file whole and no temp file behind."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    p = tmp_path / "plot.png"
    io.save_figure(fig, p)
    first = p.read_bytes()
    assert first.startswith(b"\x89PNG")
    io.save_figure(fig, tmp_path / "plot.svg")
    assert b"<svg" in (tmp_path / "plot.svg").read_bytes()

    def render_then_fail(target, **kwargs):
        target.write(b"\x89PNG half a file")
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(fig, "savefig", render_then_fail)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        io.save_figure(fig, p)
    assert p.read_bytes() == first
    assert sorted(os.listdir(tmp_path)) == ["plot.png", "plot.svg"]
    plt.close(fig)
