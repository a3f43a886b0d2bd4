"""Crash-safe file writing and validated safetensors reading (numpy only)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import safetensors.numpy

CONFIG_NAME = "adapter_config.json"
SAFETENSORS_WEIGHTS_NAME = "adapter_model.safetensors"
# HF PEFT always writes this metadata into adapter_model.safetensors.
DEFAULT_SAFETENSORS_METADATA = {"format": "pt"}

# Bytes per element for every dtype name the safetensors format defines.
_DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}

# Read the process umask once so atomically written files get normal permissions.
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so readers see either the old file or the complete new one.

    The bytes go to a temp file in the same directory, are flushed and fsynced, then
    `os.replace`d over `path`. On any failure the temp file is removed and `path` is untouched.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: str) -> None:
    """Best-effort fsync of a directory so a rename survives a crash."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write `obj` as JSON the way HF PEFT does (indent=2, sorted keys, no trailing newline)."""
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True).encode("utf-8"))


def save_safetensors(
    path: str | os.PathLike,
    tensors: Mapping[str, np.ndarray],
    metadata: Optional[Mapping[str, str]] = None,
) -> None:
    """Atomically save numpy arrays as a safetensors file.

    `metadata` defaults to HF PEFT's `{"format": "pt"}`; pass `{}` to write none.
    """
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"safetensors keys must be str, got {type(name).__name__} ({name!r})")
        if not isinstance(value, np.ndarray):
            raise TypeError(f"tensor {name!r} must be a numpy.ndarray, got {type(value).__name__}")
    if metadata is None:
        metadata = DEFAULT_SAFETENSORS_METADATA
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    data = safetensors.numpy.save(arrays, metadata=dict(metadata) or None)
    atomic_write_bytes(path, data)


def _parse_header(data: bytes, path: str) -> dict:
    """Validate the safetensors framing (header length, JSON header, data offsets) and return the header."""
    if len(data) < 8:
        raise ValueError(f"Corrupt safetensors file {path!r}: {len(data)} bytes is too short for the 8-byte header length")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise ValueError(
            f"Corrupt or truncated safetensors file {path!r}: header length {header_len} exceeds "
            f"the {len(data) - 8} bytes after the length prefix"
        )
    try:
        header = json.loads(data[8 : 8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"Corrupt safetensors file {path!r}: header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError(f"Corrupt safetensors file {path!r}: header must be a JSON object")

    body_len = len(data) - 8 - header_len
    covered = 0
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise ValueError(f"Corrupt safetensors file {path!r}: __metadata__ must map str to str")
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise ValueError(f"Corrupt safetensors file {path!r}: bad header entry for tensor {name!r}") from None
        if dtype not in _DTYPE_SIZES:
            raise ValueError(f"Corrupt safetensors file {path!r}: tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ValueError(f"Corrupt safetensors file {path!r}: tensor {name!r} has invalid shape {shape!r}")
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= body_len):
            raise ValueError(
                f"Corrupt or truncated safetensors file {path!r}: tensor {name!r} has data offsets "
                f"[{begin!r}, {end!r}] outside the {body_len}-byte data section"
            )
        expected = math.prod(shape) * _DTYPE_SIZES[dtype]
        if end - begin != expected:
            raise ValueError(
                f"Corrupt safetensors file {path!r}: tensor {name!r} spans {end - begin} bytes "
                f"but dtype {dtype} with shape {shape} needs {expected}"
            )
        covered += end - begin
    if covered != body_len:
        raise ValueError(
            f"Corrupt safetensors file {path!r}: tensors cover {covered} bytes but the data section has {body_len}"
        )
    return header


def _read_file(path: str | os.PathLike) -> tuple[str, bytes]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such safetensors file: {path!r}")
    with open(path, "rb") as f:
        return path, f.read()


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load a safetensors file into numpy arrays.

    Raises `FileNotFoundError` if missing and `ValueError` (naming the file) if truncated or corrupt.
    """
    path, data = _read_file(path)
    _parse_header(data, path)
    try:
        return safetensors.numpy.load(data)
    except Exception as exc:  # SafetensorError, unsupported dtype (e.g. BF16 in numpy), ...
        raise ValueError(f"Could not load safetensors file {path!r}: {exc}") from exc


def load_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Return the `__metadata__` dict of a safetensors file ({} when absent)."""
    path, data = _read_file(path)
    return dict(_parse_header(data, path).get("__metadata__", {}))


def save_adapter_files(directory, config_dict, tensors: Mapping[str, np.ndarray]) -> None:
    """Write adapter_model.safetensors and adapter_config.json into `directory` as one unit:
    both are serialised and staged as fsynced temp files first, then renamed into place; if
    anything fails, files already replaced are restored, so the folder keeps the previous
    adapter (or none) and no temp file is left."""
    directory = Path(directory)
    if hasattr(config_dict, "to_dict"):
        config_dict = config_dict.to_dict()
    if directory.is_file():
        raise ValueError(f"Provided path ({directory}) should be a directory, not a file")
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    payloads = [
        (SAFETENSORS_WEIGHTS_NAME, lambda: safetensors.numpy.save(
            arrays, metadata=dict(DEFAULT_SAFETENSORS_METADATA))),
        (CONFIG_NAME, lambda: json.dumps(config_dict, indent=2, sort_keys=True).encode("utf-8")),
    ]
    data = [(name, make()) for name, make in payloads]  # serialisation errors: nothing written
    directory.mkdir(parents=True, exist_ok=True)
    staged, backups, replaced = [], {}, []
    try:
        for name, blob in data:
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
            staged.append((tmp, directory / name))
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_UMASK)
        for tmp, final in staged:
            if final.exists():
                fd, backup = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".bak", dir=directory)
                os.close(fd)
                os.unlink(backup)
                try:
                    os.link(final, backup)
                except OSError:  # no hard links here: copy
                    shutil.copy2(final, backup)
                backups[final] = backup
            os.replace(tmp, final)
            replaced.append(final)
    except BaseException as exc:
        for final in reversed(replaced):  # put the previous files back
            try:
                if final in backups:
                    os.replace(backups.pop(final), final)
                else:
                    os.unlink(final)
            except OSError as undo_error:  # report it with the error that caused the undo
                exc.add_note(f"could not restore {final}: {undo_error}")
        raise
    finally:
        for path in [tmp for tmp, _ in staged] + list(backups.values()):
            with contextlib.suppress(FileNotFoundError):  # renamed into place already
                os.unlink(path)
        _fsync_dir(str(directory))
