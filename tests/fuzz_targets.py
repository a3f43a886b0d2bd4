"""Fuzz targets for tests/test_fuzz.py (issue 22): every input either works or raises a
clean Python exception of the kinds a target allows; anything else (another exception type,
or a crash of the interpreter) is a bug.

Run one target: python tests/fuzz_targets.py <target> <examples>. It prints one JSON line
{"target", "examples", "seconds", "cpu_seconds"}. Hypothesis runs derandomized (a fixed seed per target)
with no example database, so a run is reproducible; inputs that once failed are kept as
explicit @example cases. The process caps its address space, so an input asking for a huge
allocation gets MemoryError instead of swapping the machine.
"""
from __future__ import annotations

import io
import json
import math
import os
import pickle
import resource
import struct
import sys
import tempfile
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import peftcore
from peftcore.models.checkpoint import CheckpointError, read_torch_bin
from peftcore.utils.io import read_safetensors

warnings.simplefilter("ignore")
COUNT = [0]
WORK = Path(tempfile.mkdtemp(prefix="peftcore-fuzz-"))

TINY = dict(model_type="bert", vocab_size=100, hidden_size=16, num_hidden_layers=1,
            num_attention_heads=2, intermediate_size=32, max_position_embeddings=16,
            type_vocab_size=2, num_labels=3)

# JSON-like values with the edges that break parsers: huge and negative ints, NaN and
# infinities, strings that look like numbers, nesting
_SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-2**70, max_value=2**70),
    st.sampled_from([0, 1, -1, 2, 100, 2**31 - 1, 2**31, 2**32, 2**62, 2**63 - 1, 2**63, 2**64]),
    st.sampled_from([0.0, -0.0, 0.1, 1.0, 1e-12, -1.0, 1e308, math.nan, math.inf, -math.inf]),
    st.sampled_from(["0.1", "tiny", "gelu", "bert", "(unclosed", "../x", "", "LORA", "query",
                     "SEQ_CLS", "é", "\x00"]),
)
_KEYS = st.sampled_from(["a", "dtype", "shape", "data_offsets", "query", "0", ""])
# flat and shallow: Hypothesis draws deep recursive strategies ~20x slower, and the parsers'
# depth limits have their own explicit examples
JSON = st.one_of(_SCALARS, st.lists(_SCALARS, max_size=3),
                 st.dictionaries(_KEYS, _SCALARS, max_size=3),
                 st.lists(st.lists(_SCALARS, max_size=2), max_size=2))


def _run(test, n: int) -> dict:
    """Run a @given test for n examples under fixed settings; return the counts."""
    configured = settings(max_examples=n, derandomize=True, database=None, deadline=None,
                          suppress_health_check=list(HealthCheck),
                          phases=[Phase.explicit, Phase.generate, Phase.shrink])(test)
    start, cpu = time.time(), time.process_time()
    configured()
    return dict(examples=COUNT[0], seconds=round(time.time() - start, 2),
                cpu_seconds=round(time.process_time() - cpu, 2))


def _expect(allowed, fn, *args, **kwargs):
    """fn(*args) returns or raises one of `allowed`; another exception fails the example."""
    COUNT[0] += 1
    try:
        return fn(*args, **kwargs)
    except allowed:
        return None


# ------------------------------------------------------------------ safetensors reader

def _valid_safetensors() -> bytes:
    import safetensors.numpy
    return safetensors.numpy.save({
        "w": np.arange(6, dtype=np.float32).reshape(2, 3),
        "ids": np.arange(4, dtype=np.int64),
        "h": np.ones(3, np.float16),
    }, metadata={"format": "pt"})


_ST_VALID = None


def _st_file(data: bytes) -> Path:
    path = WORK / "fuzz.safetensors"
    path.write_bytes(data)
    return path


def _read_all(path: Path):
    eager = read_safetensors(path)
    for value in read_safetensors(path, lazy=True).values():
        np.asarray(value)
    return eager


def _header_bytes(header) -> bytes:
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob


_ENTRY = st.fixed_dictionaries({
    "dtype": st.one_of(st.sampled_from(["F32", "F16", "BF16", "F64", "I8", "I32", "I64", "U8",
                                        "BOOL", "F8", "f32"]), JSON),
    "shape": st.one_of(st.lists(st.sampled_from([0, 1, 2, 3, 2**31, 2**62, 2**64, -1]),
                                max_size=4), JSON),
    "data_offsets": st.one_of(st.lists(st.sampled_from([0, 1, 4, 8, 12, 24, 2**63, -4]),
                                       min_size=2, max_size=2), JSON),
})


@given(st.one_of(
    st.binary(max_size=64),
    st.tuples(st.dictionaries(_KEYS, st.one_of(_ENTRY, JSON), max_size=3),
              st.binary(max_size=48)).map(lambda hd: _header_bytes(hd[0]) + hd[1]),
    st.tuples(st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
              st.integers(0, 400)),
    st.sampled_from([b"\x00" * 8, struct.pack("<Q", 2**63), struct.pack("<Q", 5) + b"{}{}{"]),
))
@example(struct.pack("<Q", 200_001) + b"{\"a\":" + b"[" * 100_000 + b"]" * 100_000 + b"}")
def fuzz_safetensors(case):
    if isinstance(case, tuple):  # byte flips and a cut of a valid file
        flips, cut = case
        data = bytearray(_ST_VALID)
        for i, v in flips:
            if i < len(data):
                data[i] = v
        case = bytes(data[:cut]) if cut < len(data) else bytes(data)
    _expect(CheckpointError, _read_all, _st_file(case))


# ------------------------------------------------------------------ restricted unpickler

_PKL_VALID = None
_PKL_STORAGES = None


def _torch_parts():
    """data.pkl and the storages of a torch.save'd state dict (torch needed only here)."""
    import torch
    buf = io.BytesIO()
    torch.save({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3),
                "b": torch.arange(3, dtype=torch.int64),
                "t": torch.ones(4, dtype=torch.float16)[::2]}, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        names = z.namelist()
        pkl = next(n for n in names if n.endswith("/data.pkl"))
        prefix = pkl[:-len("data.pkl")]
        storages = {n[len(prefix) + 5:]: z.read(n) for n in names if n.startswith(prefix + "data/")}
        return z.read(pkl), storages


def _zip_file(data_pkl: bytes, storages: dict) -> Path:
    path = WORK / "fuzz.bin"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
        for key, raw in storages.items():
            z.writestr(f"archive/data/{key}", raw)
    return path


@given(st.one_of(
    st.tuples(st.lists(st.tuples(st.integers(0, 600), st.integers(0, 255)), max_size=4),
              st.integers(0, 600), st.booleans()),
    JSON.map(lambda obj: pickle.dumps(obj, protocol=2)),
    st.binary(max_size=80),
))
def fuzz_unpickler(case):
    storages = _PKL_STORAGES
    if isinstance(case, tuple):
        flips, cut, drop_storage = case
        data = bytearray(_PKL_VALID)
        for i, v in flips:
            if i < len(data):
                data[i] = v
        case = bytes(data[:cut]) if cut < len(data) else bytes(data)
        if drop_storage:
            storages = dict(list(storages.items())[1:])
    _expect(CheckpointError, read_torch_bin, _zip_file(case, storages))


# ------------------------------------------------------------------ config.json

_CONFIG_KEYS = sorted(set(TINY) | {
    "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range",
    "layer_norm_eps", "pad_token_id", "classifier_dropout", "problem_type", "id2label",
    "label2id", "architectures", "_name_or_path"})


@given(st.dictionaries(st.one_of(st.sampled_from(_CONFIG_KEYS), _KEYS), JSON, max_size=4),
       st.booleans())
@example({"hidden_dropout_prob": "0.1"}, False)
@example({"pad_token_id": 1000}, True)
@example({"initializer_range": -1}, True)
@example({"max_position_embeddings": 1}, True)  # the harness's own bug, kept
@example({"model_type": "roberta", "pad_token_id": None}, True)
@example({"initializer_range": -0.0}, True)  # found by this fuzzer
def fuzz_config_json(changes, build):
    folder = WORK / "model"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(dict(TINY, **changes)))
    config = _expect(ValueError, peftcore.EncoderConfig.from_pretrained, folder)
    if config is None or not build:
        return
    # build only small models (a drawn num_labels or type_vocab_size of millions would fill
    # the child's 1 GiB address space with a legitimate allocation)
    weights = (config.vocab_size + config.type_vocab_size + config.num_labels) * \
        config.hidden_size + config.num_hidden_layers * (
            4 * config.hidden_size ** 2 + 2 * config.hidden_size * config.intermediate_size)
    if weights < 200_000 and config.max_position_embeddings * config.hidden_size < 200_000:
        model = peftcore.AutoModelForSequenceClassification.from_config(config)
        offset = config.pad_token_id + 1 if config.model_type == "roberta" else 0
        with peftcore.no_grad():  # the longest sequence the positions allow, at most 4
            model(np.full((1, min(4, config.max_position_embeddings - offset)), 2, np.int64)
                  % config.vocab_size)


# ------------------------------------------------------------------ adapter_config.json

_LORA_BASE = peftcore.LoraConfig(r=2, target_modules=["query"], task_type="SEQ_CLS").to_dict()
_BASE_MODEL = None


@given(st.dictionaries(st.one_of(st.sampled_from(sorted(_LORA_BASE)), _KEYS), JSON, max_size=4),
       st.booleans())
@example({"target_modules": "(unclosed"}, True)
@example({"rank_pattern": {"(bad": 2}}, True)
def fuzz_adapter_config(changes, inject):
    folder = WORK / "adapter"
    folder.mkdir(exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(dict(_LORA_BASE, **changes)))
    config = _expect(ValueError, peftcore.PeftConfig.from_pretrained, folder)
    if config is None or not inject or not isinstance(config, peftcore.LoraConfig):
        return
    if config.r > 64:
        return
    pm = _expect(ValueError, peftcore.get_peft_model, _BASE_MODEL, config)
    if pm is not None:
        pm.unload()


# ------------------------------------------------------------------ Tensor(...) from arrays

_DTYPES = [np.float32, np.int32, np.int64, np.float64, np.float16, np.int8, np.uint8,
           np.uint32, np.uint64, np.bool_, np.complex64]
_BIG = [0, 1, 2, 3, 2**31 - 1, 2**31, 2**32 + 1, 2**40, 2**62, 2**62 + 1, 2**63 - 1]


def _arrays():
    dtypes = st.sampled_from(_DTYPES).flatmap(
        lambda d: st.sampled_from([np.dtype(d), np.dtype(d).newbyteorder()]))
    return hnp.arrays(dtypes, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4))


@given(_arrays(), st.sampled_from(["plain", "readonly", "transposed", "strided", "sliced",
                                   "zero_stride", "unaligned", "frombuffer"]),
       st.lists(st.sampled_from(_BIG), max_size=4))
@example(np.arange(3, dtype=">f4"), "plain", [])
@example(np.zeros(2, np.float32), "frombuffer", [2**62 + 1, 4])
@example(np.zeros(4, np.float32), "readonly", [2**40, 2**40])
@example(np.zeros((), np.float32), "plain", [0, 2**62])  # found by this fuzzer
def fuzz_tensor(array, how, zeros_shape):
    a = array
    if how == "readonly":
        a = a.copy()
        a.flags.writeable = False
    elif how == "transposed":
        a = a.T
    elif how == "strided" and a.ndim:
        a = a[::2]
    elif how == "sliced" and a.ndim and a.shape[0] > 1:
        a = a[1:]
    elif how == "zero_stride":
        a = np.lib.stride_tricks.as_strided(a.reshape(-1)[:1] if a.size else a,
                                            shape=(2**40,) if a.size else a.shape,
                                            strides=(0,) if a.size else a.strides)
    elif how == "unaligned" and a.itemsize > 1:
        raw = np.zeros(a.nbytes + 1, np.uint8)
        a = np.frombuffer(raw.data, a.dtype, a.size, offset=1).reshape(a.shape) if a.size else a
    elif how == "frombuffer":
        a = np.frombuffer(a.tobytes(), a.dtype).reshape(a.shape)
    t = _expect((TypeError, ValueError), peftcore.Tensor, a)
    if t is not None:
        view = np.asarray(t)
        assert view.shape == a.shape and view.dtype == a.dtype.newbyteorder("=")
        assert np.array_equal(view, a, equal_nan=True)
        assert view.flags.writeable == a.flags.writeable
        assert memoryview(t).readonly == (not a.flags.writeable)
        if a.dtype == np.float32:
            # requires_grad is refused exactly for read-only memory (the optimizer would
            # write into it), and a refusal leaves the flag unset
            try:
                t.requires_grad = True
                refused = False
            except ValueError:
                refused = True
            assert refused == (not a.flags.writeable) and t.requires_grad == (not refused)
            t.grad = np.ones(a.shape, np.float32)
            assert np.array_equal(t.grad, np.ones(a.shape, np.float32))
        repr(t)
    z = _expect((ValueError, MemoryError), peftcore.Tensor.zeros, tuple(zeros_shape))
    if z is not None:
        assert z.size == math.prod(zeros_shape) and not np.asarray(z).any()


# ------------------------------------------------------------------ the model's forward

_FWD_MODEL = None
_ID_VALUES = st.sampled_from([0, 1, 2, 15, 16, 99, 100, -1, -100, 2**31, 2**63 - 1])
_ID_DTYPES = st.sampled_from([np.int64, np.int32, np.int8, np.uint8, np.uint64, np.float32,
                              np.bool_])


def _ids(max_dims=3):
    shapes = hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0, max_side=18)
    return st.one_of(
        st.none(),
        st.tuples(_ID_DTYPES, shapes, st.lists(_ID_VALUES, max_size=3)).map(lambda c: _fill(*c)),
        st.lists(st.integers(-2, 120), max_size=6),
        st.sampled_from(["abc", 3, 2.5, [[1, 2], [3]]]),
    )


def _fill(dtype, shape, values):
    """An array of `shape` with mostly valid ids and a few `values` (cast as NumPy would)."""
    rng = np.random.default_rng(len(values) + sum(shape))
    base = rng.integers(0, 2, size=shape)
    flat = base.reshape(-1)
    for i, v in enumerate(values):
        if flat.size:
            flat[(i * 7) % flat.size] = v if -2**63 <= v < 2**63 else 0
    with np.errstate(all="ignore"):
        return base.astype(dtype)


@given(_ids(), _ids(), _ids(), _ids(), st.one_of(st.none(), _ids(max_dims=2)),
       st.booleans(), st.booleans())
@example(np.ones((2, 4), np.int64), np.array([[1, 2, 1, 1], [1, 1, 1, 1]]), None, None, None,
         False, False)
def fuzz_forward(ids, mask, types, positions, labels, training, backward):
    model = _FWD_MODEL.train(training)
    out = _expect((ValueError, TypeError, IndexError), model, ids, attention_mask=mask,
                  token_type_ids=types, position_ids=positions, labels=labels)
    if out is not None and backward:
        _expect(RuntimeError, model.backward)


TARGETS = {
    "safetensors": fuzz_safetensors, "unpickler": fuzz_unpickler,
    "config_json": fuzz_config_json, "adapter_config": fuzz_adapter_config,
    "tensor": fuzz_tensor, "forward": fuzz_forward,
}


def main(target: str, examples: int):
    global _ST_VALID, _PKL_VALID, _PKL_STORAGES, _BASE_MODEL, _FWD_MODEL
    peftcore.set_num_threads(1)
    if target == "safetensors":
        _ST_VALID = _valid_safetensors()
    elif target == "unpickler":
        _PKL_VALID, _PKL_STORAGES = _torch_parts()
    elif target == "adapter_config":
        _BASE_MODEL = peftcore.AutoModelForSequenceClassification.from_config(TINY)
    elif target == "forward":
        _FWD_MODEL = peftcore.AutoModelForSequenceClassification.from_config(TINY)
    # cap the address space: a huge allocation fails with MemoryError, quickly
    vm = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))
    sys.setrecursionlimit(3000)
    report = _run(TARGETS[target], examples)
    print(json.dumps(dict(target=target, **report)))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
