"""Tests for peftcore.models.checkpoint: safetensors / torch-zip reading without torch."""
import importlib.metadata
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from peftcore.models.checkpoint import (
    CheckpointError, LazyTensor, UnsafeCheckpointError, find_installed_model, load_state_dict,
    read_safetensors, read_torch_bin,
)


# ---------------------------------------------------------------------------
# helpers

def _save_safetensors(path: Path, tensors: dict) -> Path:
    st_numpy = pytest.importorskip("safetensors.numpy")
    st_numpy.save_file(tensors, str(path))
    return path


def _write_raw_safetensors(path: Path, header: dict, data: bytes) -> Path:
    """safetensors by hand: u64 LE header length, JSON header, raw data."""
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


def _bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (truncation; exact for the values used here)."""
    return (values.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


def _torch_style_zip(path: Path, data_pkl: bytes, storages: dict = None) -> Path:
    """A zip laid out like torch.save's: <prefix>/data.pkl, <prefix>/data/<key>."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
        for key, raw in (storages or {}).items():
            z.writestr(f"archive/data/{key}", raw)
    return path


def _ints(values) -> bytes:
    """Pickle opcodes for a tuple of ints (protocol 0 MARK ... TUPLE)."""
    return b"(" + b"".join(b"I%d\n" % v for v in values) + b"t"


def _tensor_pickle(size, stride, offset, numel, storage=b"FloatStorage") -> bytes:
    """Hand-written pickle of {'w': _rebuild_tensor_v2(storage '0', ...)}.

    Same opcodes torch.save emits (GLOBAL, BINPERSID, REDUCE), so these tests
    need no torch.
    """
    persistent_id = (b"(Vstorage\nctorch\n" + storage + b"\nV0\nVcpu\nI%d\nt" % numel)
    args = b"(" + persistent_id + b"Q" + b"I%d\n" % offset + _ints(size) + _ints(stride)
    hooks = b"ccollections\nOrderedDict\n)R"  # backward_hooks = OrderedDict()
    return (b"\x80\x02}(Vw\nctorch._utils\n_rebuild_tensor_v2\n"
            + args + b"I00\n" + hooks + b"tRu.")


# ---------------------------------------------------------------------------
# safetensors

def test_safetensors_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "f32": rng.standard_normal((3, 4)).astype(np.float32),
        "f16": rng.standard_normal((5,)).astype(np.float16),
        "f64": rng.standard_normal((2, 2, 2)),
        "i64": np.arange(7, dtype=np.int64).reshape(1, 7),
        "i32": np.array([-3, 5], dtype=np.int32),
        "u8": np.array([0, 255], dtype=np.uint8),
        "mask": np.array([True, False]),
        "scalar": np.array(2.5, dtype=np.float32),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }
    _save_safetensors(tmp_path / "model.safetensors", tensors)
    state = load_state_dict(tmp_path)

    assert set(state) == set(tensors)
    for name, expected in tensors.items():
        got = state[name]
        assert got.shape == expected.shape, name
        assert got.flags.c_contiguous and got.flags.writeable, name
        if expected.dtype.kind == "f":
            assert got.dtype == np.float32, name
            np.testing.assert_array_equal(got, expected.astype(np.float32))
        else:
            assert got.dtype == expected.dtype, name
            np.testing.assert_array_equal(got, expected)


def test_lazy_safetensors_read_on_demand_equal_eager(tmp_path):
    """lazy=True checks the header now and reads each tensor when copied out: the values
    equal an eager load, float32 goes straight into the destination's memory, other
    dtypes are converted, and a wrong destination shape is refused."""
    rng = np.random.default_rng(3)
    tensors = {"f32": rng.standard_normal((3, 4)).astype(np.float32),
               "f16": rng.standard_normal((5,)).astype(np.float16),
               "i64": np.arange(6, dtype=np.int64).reshape(2, 3)}
    _save_safetensors(tmp_path / "model.safetensors", tensors)
    eager = load_state_dict(tmp_path)
    lazy = load_state_dict(tmp_path, lazy=True)
    assert set(lazy) == set(eager)
    for name, value in lazy.items():
        assert isinstance(value, LazyTensor) and value.shape == eager[name].shape
        np.testing.assert_array_equal(np.asarray(value), eager[name])
        dst = np.full(value.shape, 7, dtype=eager[name].dtype)
        value.copy_into(dst)
        np.testing.assert_array_equal(dst, eager[name])
    with pytest.raises(ValueError, match="shape"):
        lazy["f32"].copy_into(np.zeros((4, 3), np.float32))
    # a corrupt header is still reported at load time, not at first use
    raw = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(raw[:-8])
    with pytest.raises(CheckpointError, match="truncated"):
        load_state_dict(tmp_path, lazy=True)


def test_safetensors_bf16_is_widened_to_float32(tmp_path):
    # all exactly representable in bf16 (8 significant bits)
    values = np.array([[1.0, -2.5, 0.15625], [2.0**100, -0.0, 65280.0]], dtype=np.float32)
    bits = _bf16_bits(values)
    header = {
        "__metadata__": {"format": "pt"},
        "w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, bits.nbytes]},
    }
    _write_raw_safetensors(tmp_path / "model.safetensors", header, bits.tobytes())
    got = load_state_dict(tmp_path)["w"]
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, values)


def test_sharded_safetensors_index(tmp_path):
    a = np.ones((2, 3), np.float32)
    b = np.arange(4, dtype=np.int64)
    _save_safetensors(tmp_path / "model-00001-of-00002.safetensors", {"a": a})
    _save_safetensors(tmp_path / "model-00002-of-00002.safetensors", {"b": b})
    index = {"metadata": {"total_size": 32},
             "weight_map": {"a": "model-00001-of-00002.safetensors",
                            "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))

    state = load_state_dict(tmp_path)
    np.testing.assert_array_equal(state["a"], a)
    np.testing.assert_array_equal(state["b"], b)
    assert state["b"].dtype == np.int64


def test_sharded_index_problems(tmp_path):
    _save_safetensors(tmp_path / "shard.safetensors", {"a": np.ones(2, np.float32)})
    index_path = tmp_path / "model.safetensors.index.json"

    index_path.write_text(json.dumps({"weight_map": {"a": "shard.safetensors",
                                                     "b": "shard.safetensors"}}))
    with pytest.raises(ValueError, match="'b'"):
        load_state_dict(tmp_path)

    index_path.write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
    with pytest.raises(FileNotFoundError, match="gone.safetensors"):
        load_state_dict(tmp_path)

    index_path.write_text(json.dumps({"weight_map": {"a": "../shard.safetensors"}}))
    with pytest.raises(ValueError, match="bad shard file name"):
        load_state_dict(tmp_path)

    index_path.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid checkpoint index"):
        load_state_dict(tmp_path)


def test_safetensors_preferred_over_bin(tmp_path):
    _save_safetensors(tmp_path / "model.safetensors", {"a": np.zeros(1, np.float32)})
    (tmp_path / "pytorch_model.bin").write_bytes(b"not even a zip")
    assert list(load_state_dict(tmp_path)) == ["a"]


@pytest.mark.parametrize("cut, problem", [
    (5, "no header"),                       # inside the 8-byte length
    (20, "bad safetensors header length"),  # inside the JSON header
    (-3, "data section has only"),          # inside the tensor data
])
def test_truncated_safetensors(tmp_path, cut, problem):
    path = _save_safetensors(tmp_path / "model.safetensors",
                             {"w": np.arange(12, dtype=np.float32).reshape(3, 4)})
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(ValueError, match=problem) as info:
        load_state_dict(tmp_path)
    assert "model.safetensors" in str(info.value)
    assert isinstance(info.value, CheckpointError)


@pytest.mark.parametrize("header, data, problem", [
    (b"{oops", b"", "not valid JSON"),
    (b"[1, 2]", b"", "not a JSON object"),
    (b"\xff\xfe{}", b"", "not valid JSON"),
    (json.dumps({"w": {"dtype": "F8_E4M3", "shape": [1],
                       "data_offsets": [0, 1]}}).encode(), b"\0", "unsupported dtype"),
    (json.dumps({"w": {"dtype": "F32", "shape": [3],
                       "data_offsets": [0, 8]}}).encode(), b"\0" * 8, "do not match"),
    (json.dumps({"w": {"dtype": "F32", "shape": [-1],
                       "data_offsets": [0, 4]}}).encode(), b"\0" * 4, "malformed shape"),
    (json.dumps({"w": {"dtype": "F32"}}).encode(), b"", "malformed header entry"),
])
def test_corrupt_safetensors_header(tmp_path, header, data, problem):
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    with pytest.raises(ValueError, match=problem) as info:
        read_safetensors(path)
    assert str(path) in str(info.value)


def test_huge_header_length_is_rejected(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    with pytest.raises(ValueError, match="bad safetensors header length"):
        read_safetensors(path)


# ---------------------------------------------------------------------------
# missing files

def test_missing_folder(tmp_path):
    folder = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        load_state_dict(folder)


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError) as info:
        load_state_dict(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert "model.safetensors" in message and "pytorch_model.bin" in message


# ---------------------------------------------------------------------------
# pytorch_model.bin without torch (hand-built torch-style zips)

def test_hand_built_torch_zip_strided_view(tmp_path):
    storage = np.arange(10, dtype=np.float32)
    # size (2, 2), stride (1, 3), offset 1 -> [[1, 4], [2, 5]]: a transposed slice
    path = _torch_style_zip(tmp_path / "pytorch_model.bin",
                            _tensor_pickle((2, 2), (1, 3), 1, 10),
                            {"0": storage.tobytes()})
    got = read_torch_bin(path)["w"]
    np.testing.assert_array_equal(got, [[1, 4], [2, 5]])
    assert got.dtype == np.float32 and got.flags.c_contiguous and got.flags.writeable


def test_hand_built_torch_zip_out_of_bounds_view(tmp_path):
    path = _torch_style_zip(tmp_path / "pytorch_model.bin",
                            _tensor_pickle((3, 3), (1, 4), 2, 10),  # last element 12
                            {"0": np.zeros(10, np.float32).tobytes()})
    with pytest.raises(ValueError, match="past the end of its storage") as info:
        read_torch_bin(path)
    assert "pytorch_model.bin" in str(info.value)


def test_hand_built_torch_zip_storage_size_mismatch(tmp_path):
    path = _torch_style_zip(tmp_path / "pytorch_model.bin",
                            _tensor_pickle((4,), (1,), 0, 4),
                            {"0": b"\0" * 12})  # 3 floats, not 4
    with pytest.raises(ValueError, match="holds 12 bytes"):
        read_torch_bin(path)


class _Evil:
    """Pickles to a call of `func(arg)`, as an attacker's checkpoint would."""

    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize("make_pickle, forbidden", [
    (lambda marker: pickle.dumps(_Evil(os.system, f"touch {marker}"), protocol=2),
     os.system.__module__ + ".system"),  # 'posix.system' on Linux
    (lambda marker: pickle.dumps(_Evil(eval, f"open({str(marker)!r}, 'w')"), protocol=4),
     "builtins.eval"),
    (lambda marker: b"cos\nsystem\n(V" + f"touch {marker}".encode() + b"\ntR.",
     "os.system"),
    # the malicious global hidden inside a tensor's arguments
    (lambda marker: _tensor_pickle((1,), (1,), 0, 1).replace(
        b"I00\n", b"cos\nsystem\n(V" + f"touch {marker}".encode() + b"\ntR"),
     "os.system"),
])
def test_malicious_pickle_is_refused_and_not_run(tmp_path, make_pickle, forbidden):
    marker = tmp_path / "pwned"
    folder = tmp_path / "model"
    folder.mkdir()
    _torch_style_zip(folder / "pytorch_model.bin", make_pickle(marker),
                     {"0": np.zeros(1, np.float32).tobytes()})
    with pytest.raises(UnsafeCheckpointError) as info:
        load_state_dict(folder)
    assert f"'{forbidden}'" in str(info.value)
    assert "only tensor storages are allowed" in str(info.value)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, pickle.UnpicklingError)
    assert not marker.exists()


def test_legacy_torch_format_without_torch(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    # legacy files start with the pickled magic number 0x1950a86a20f9469cfc6c
    path.write_bytes(b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.")
    with pytest.raises(ValueError, match="legacy"):
        load_state_dict(tmp_path)


def test_not_a_zip(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"hello, I am not a checkpoint")
    with pytest.raises(ValueError, match="not a torch zip checkpoint"):
        load_state_dict(tmp_path)


def test_truncated_zip(tmp_path):
    path = _torch_style_zip(tmp_path / "pytorch_model.bin",
                            _tensor_pickle((4,), (1,), 0, 4),
                            {"0": np.zeros(4, np.float32).tobytes()})
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(ValueError, match="truncated or corrupt zip") as info:
        load_state_dict(tmp_path)
    assert "pytorch_model.bin" in str(info.value)


def test_corrupt_pickle_in_zip(tmp_path):
    path = _torch_style_zip(tmp_path / "pytorch_model.bin", b"\x80\x02}(Vw\n")  # cut short
    with pytest.raises(ValueError, match="corrupt torch checkpoint"):
        read_torch_bin(path)


def test_zip_without_data_pkl(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hi")
    with pytest.raises(ValueError, match="data.pkl"):
        read_torch_bin(path)


# ---------------------------------------------------------------------------
# pytorch_model.bin written by real torch

def _torch_state_dict(torch):
    """Every storage dtype, views with offsets/strides, shared storage, params."""
    torch.manual_seed(0)
    base = torch.randn(6, 8)
    linear = torch.nn.Linear(4, 3)
    state = {
        "f32": torch.randn(3, 5),
        "f16": torch.randn(4).half(),
        "bf16": torch.randn(2, 3).bfloat16(),
        "f64": torch.randn(2, 2).double(),
        "i64": torch.arange(10),
        "i32": torch.tensor([1, -2, 3], dtype=torch.int32),
        "i16": torch.tensor([7, -8], dtype=torch.int16),
        "i8": torch.tensor([-1, 2], dtype=torch.int8),
        "u8": torch.tensor([0, 255], dtype=torch.uint8),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(1.5),
        "empty": torch.zeros(0, 3),
        "base": base,
        "slice": base[1:5, ::2],            # offset 8, strides (8, 2)
        "column": base[:, 3],               # offset 3, stride (8,)
        "transposed": base.t(),             # strides (1, 8)
        "same_tensor_again": base,          # shared storage, same view
        "param": linear.weight,             # nn.Parameter -> _rebuild_parameter
        "bf16_view": torch.randn(4, 4).bfloat16()[1:, 2],
    }
    return state


def _expected(tensor) -> np.ndarray:
    tensor = tensor.detach()
    if tensor.is_floating_point():
        tensor = tensor.float()
    return tensor.numpy()


def test_torch_saved_state_dict(tmp_path):
    torch = pytest.importorskip("torch")
    state = _torch_state_dict(torch)
    torch.save(state, tmp_path / "pytorch_model.bin")

    got = load_state_dict(tmp_path)
    assert list(got) == list(state)
    for name, tensor in state.items():
        expected = _expected(tensor)
        assert got[name].dtype == expected.dtype, name
        assert got[name].shape == expected.shape, name
        assert got[name].flags.c_contiguous and got[name].flags.writeable, name
        np.testing.assert_array_equal(got[name], expected, err_msg=name)
    # one tensor saved under two names (tied weights) stays one array, as in torch;
    # views of a shared storage are independent copies
    assert got["same_tensor_again"] is got["base"]
    got["base"][1, 0] = 123.0
    assert got["slice"][0, 0] == _expected(state["slice"])[0, 0] != 123.0


def test_torch_module_state_dict_and_sharded_bin(tmp_path):
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8))
    state = model.state_dict()  # OrderedDict carrying a _metadata attribute
    names = list(state)
    torch.save({k: state[k] for k in names[:2]}, tmp_path / "pytorch_model-00001-of-00002.bin")
    torch.save({k: state[k] for k in names[2:]}, tmp_path / "pytorch_model-00002-of-00002.bin")
    weight_map = {k: f"pytorch_model-0000{1 + (i >= 2)}-of-00002.bin"
                  for i, k in enumerate(names)}
    (tmp_path / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))

    got = load_state_dict(tmp_path)
    assert sorted(got) == sorted(names)
    for name in names:
        np.testing.assert_array_equal(got[name], _expected(state[name]))

    torch.save(state, tmp_path / "whole.bin")
    whole = read_torch_bin(tmp_path / "whole.bin")
    assert list(whole) == names


def test_torch_legacy_format_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"w": torch.ones(2)}, tmp_path / "pytorch_model.bin",
               _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match="legacy .* unsupported"):
        load_state_dict(tmp_path)


# ---------------------------------------------------------------------------
# the pip-packaged all-MiniLM-L6-v2

def test_find_installed_model_layout(minilm_dir):
    assert (minilm_dir / "config.json").is_file()
    assert (minilm_dir / "model.safetensors").is_file()
    assert (minilm_dir / "vocab.txt").is_file()
    assert (minilm_dir / "tokenizer.json").is_file()
    config = json.loads((minilm_dir / "config.json").read_text())
    assert config["hidden_size"] == 384 and config["num_hidden_layers"] == 6


def test_minilm_state_dict(minilm_dir):
    state = load_state_dict(minilm_dir)
    assert state["embeddings.word_embeddings.weight"].shape == (30522, 384)
    assert state["embeddings.position_embeddings.weight"].shape == (512, 384)
    assert state["embeddings.token_type_embeddings.weight"].shape == (2, 384)
    assert not any(name.startswith("bert.") for name in state)  # no prefix
    layers = {int(name.split(".")[2]) for name in state if name.startswith("encoder.layer.")}
    assert layers == set(range(6))
    layer = "encoder.layer.5."
    assert state[layer + "attention.self.query.weight"].shape == (384, 384)
    assert state[layer + "intermediate.dense.weight"].shape == (1536, 384)
    assert state[layer + "output.dense.weight"].shape == (384, 1536)
    assert state["pooler.dense.weight"].shape == (384, 384)
    floats = [a for a in state.values() if a.dtype.kind == "f"]
    assert all(a.dtype == np.float32 for a in floats)
    if "embeddings.position_ids" in state:  # int64 buffer kept as integers
        assert state["embeddings.position_ids"].dtype == np.int64

    # cross-check against the safetensors library when it is installed
    st_numpy = pytest.importorskip("safetensors.numpy")
    reference = st_numpy.load_file(str(minilm_dir / "model.safetensors"))
    assert set(reference) == set(state)
    for name in ("embeddings.word_embeddings.weight", layer + "output.dense.bias"):
        np.testing.assert_array_equal(state[name], reference[name])


def test_find_installed_model_absent(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    assert find_installed_model() is None


def test_find_installed_model_unknown_name():
    with pytest.raises(ValueError, match="unknown packaged model"):
        find_installed_model("gpt-17")
