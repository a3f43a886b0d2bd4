"""Crash-safe file writing and validated safetensors reading (numpy only)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Optional

import numpy as np
import safetensors.numpy

CONFIG_NAME = "adapter_config.json"
SAFETENSORS_WEIGHTS_NAME = "adapter_model.safetensors"
# HF PEFT always writes this metadata into adapter_model.safetensors.
DEFAULT_SAFETENSORS_METADATA = {"format": "pt"}

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
    fd, tmp = _temp_file_in(directory, os.path.basename(path))
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


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> None:
    """A matplotlib figure into `path`, in the format its suffix names (PNG without one),
    written atomically: rendered in memory first, so a failed render leaves `path` as it was."""
    from io import BytesIO

    suffix = os.path.splitext(os.fspath(path))[1].lstrip(".").lower()
    buffer = BytesIO()
    fig.savefig(buffer, format=suffix or "png", dpi=dpi)
    atomic_write_bytes(path, buffer.getvalue())


def _temp_file_in(directory, name: str) -> tuple[int, str]:
    """A temp file next to `name` in `directory`; an OSError names the folder and the file
    being saved (not the temp file's random name)."""
    try:
        return tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise type(exc)(exc.errno, f"cannot save {name} into the folder {directory} "
                                   f"({exc.strerror})", str(directory)) from None


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


class CheckpointError(ValueError):
    """A weight file (a model checkpoint or an adapter) is truncated, corrupt, unsafe or in
    an unsupported format; the message names the file."""


def bf16_to_float32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) -> float32: bf16 is the top half of an f32."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def as_native(array: np.ndarray, float32: bool = True) -> np.ndarray:
    """C-contiguous in native byte order; floating -> float32 unless ``float32`` is False."""
    # np.asarray, not np.ascontiguousarray: the latter turns 0-d into shape (1,)
    if float32 and array.dtype.kind == "f":
        return np.asarray(array, dtype=np.float32, order="C")
    return np.asarray(array, dtype=array.dtype.newbyteorder("="), order="C")


# --------------------------------------------------------------------------
# safetensors reading, by hand (the safetensors package is only used to write):
# 8-byte little-endian u64 header length N, N bytes of UTF-8 JSON
# {name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}} (plus an optional
# "__metadata__": {str: str}), then the little-endian data; offsets count from the first
# byte after the header and the tensors tile the data section in order.

# safetensors dtype code -> NumPy storage dtype (all little-endian).  BF16 is read as raw
# uint16 bits and widened by bf16_to_float32.  F8_* is not supported.
_ST_DTYPES = {
    "BOOL": "|b1", "U8": "|u1", "I8": "|i1",
    "U16": "<u2", "I16": "<i2", "U32": "<u4", "I32": "<i4",
    "U64": "<u8", "I64": "<i8",
    "F16": "<f2", "BF16": "<u2", "F32": "<f4", "F64": "<f8",
}
_ST_MAX_HEADER = 100_000_000  # the safetensors library's own limit


class _SafetensorsEntry(NamedTuple):
    dtype: str  # safetensors code, e.g. "F32"
    shape: tuple
    begin: int  # byte offsets into the data section
    end: int


class _SafetensorsHeader(NamedTuple):
    entries: dict  # name -> _SafetensorsEntry, in file order
    metadata: dict  # str -> str
    data_start: int  # file offset of the data section


def read_safetensors(path: str | os.PathLike, lazy: bool = False,
                     float32: bool = True) -> dict:
    """Load one ``.safetensors`` file into NumPy arrays; `CheckpointError` (a ValueError)
    names the file and the fault, FileNotFoundError a missing file.

    Floating tensors come back as C-contiguous float32 (``float32=False`` keeps float16 and
    float64; bfloat16, which NumPy lacks, is always widened to float32); integer and bool
    tensors keep their dtype. With ``lazy``, the values are `LazyTensor`s (the header is
    checked now, the data read when needed)."""
    path = Path(path)
    with open(path, "rb") as f:
        header = _read_safetensors_header(f, path)
        if lazy:
            return {name: LazyTensor(path, name, entry, header.data_start)
                    for name, entry in header.entries.items()}
        state = {}
        for name, entry in header.entries.items():
            f.seek(header.data_start + entry.begin)
            state[name] = _read_safetensors_tensor(f, path, name, entry, float32)
    return state


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file ({} when absent); the header is checked."""
    path = Path(path)
    with open(path, "rb") as f:
        return dict(_read_safetensors_header(f, path).metadata)


class LazyTensor:
    """One tensor of a checked safetensors file, read when needed: `shape`, `read()`,
    `copy_into(dst)` (straight from the file into dst's memory for float32), or
    ``np.asarray(lazy)``."""

    __slots__ = ("path", "name", "entry", "data_start")

    def __init__(self, path: Path, name: str, entry: _SafetensorsEntry, data_start: int):
        self.path, self.name, self.entry, self.data_start = path, name, entry, data_start

    @property
    def shape(self) -> tuple:
        return self.entry.shape

    def read(self) -> np.ndarray:
        with open(self.path, "rb") as f:
            f.seek(self.data_start + self.entry.begin)
            return _read_safetensors_tensor(f, self.path, self.name, self.entry, True)

    def copy_into(self, dst: np.ndarray) -> None:
        """dst[...] = this tensor; dst must have its shape."""
        if dst.shape != self.shape:
            raise ValueError(f"{self.path}: tensor {self.name!r} has shape {self.shape}, "
                             f"the destination {dst.shape}")
        plain = dst.view(np.ndarray)
        if self.entry.dtype == "F32" and plain.dtype == np.float32 and plain.flags.c_contiguous:
            with open(self.path, "rb") as f:
                f.seek(self.data_start + self.entry.begin)
                if f.readinto(plain.reshape(-1).view(np.uint8)) != self.entry.end - self.entry.begin:
                    raise CheckpointError(f"{self.path}: file ended inside tensor {self.name!r}")
            if sys.byteorder != "little":
                plain.byteswap(inplace=True)
        else:
            plain[...] = self.read()

    def __array__(self, dtype=None, copy=None):
        array = self.read()
        return array if dtype is None else array.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"LazyTensor({self.name!r}, shape={self.shape}, dtype={self.entry.dtype})"


def _read_safetensors_header(f, path: Path) -> _SafetensorsHeader:
    """Parse and validate the header: its length and JSON, every entry (known dtype, sane
    shape, offsets matching it), the metadata, and the tensors tiling the data section."""
    file_size = os.fstat(f.fileno()).st_size
    prefix = f.read(8)
    if len(prefix) < 8:
        raise CheckpointError(f"{path}: truncated safetensors file ({file_size} bytes, too "
                              f"short for the 8-byte header length: no header)")
    (header_len,) = struct.unpack("<Q", prefix)
    if header_len == 0 or header_len > _ST_MAX_HEADER or 8 + header_len > file_size:
        raise CheckpointError(
            f"{path}: bad safetensors header length {header_len} for a file of "
            f"{file_size} bytes (truncated or not a safetensors file)"
        )
    try:
        header = json.loads(f.read(header_len).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path}: safetensors header is not valid JSON ({exc})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: safetensors header is nested too deeply to be a "
                              f"header (it maps tensor names to flat entries)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise CheckpointError(f"{path}: safetensors __metadata__ must map strings to strings, "
                              f"got {metadata!r:.200}")
    data_size = file_size - 8 - header_len
    entries = {name: _check_entry(path, name, raw, data_size) for name, raw in header.items()}
    covered = 0
    for name, entry in sorted(entries.items(), key=lambda item: (item[1].begin, item[1].end)):
        if entry.begin != covered:
            raise CheckpointError(
                f"{path}: tensor {name!r} starts at byte {entry.begin} of the data section, "
                f"expected {covered} (tensors must tile the data section in order)"
            )
        covered = entry.end
    if covered != data_size:
        raise CheckpointError(f"{path}: the tensors cover {covered} bytes but the data "
                              f"section has {data_size} (trailing bytes)")
    return _SafetensorsHeader(entries, metadata, 8 + header_len)


def _check_entry(path: Path, name: str, raw: object, data_size: int) -> _SafetensorsEntry:
    """Validate one header entry: known dtype, sane shape, offsets in bounds."""
    try:
        dtype, shape, offsets = raw["dtype"], raw["shape"], raw["data_offsets"]
    except (TypeError, KeyError):
        raise CheckpointError(
            f"{path}: malformed header entry for tensor {name!r}: {raw!r:.200}"
        ) from None
    if not isinstance(dtype, str) or dtype not in _ST_DTYPES:
        raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}")
    if not (_is_int_list(shape) and _is_int_list(offsets) and len(offsets) == 2):
        raise CheckpointError(
            f"{path}: tensor {name!r} has a malformed shape or data_offsets: {raw!r:.200}"
        )
    begin, end = offsets
    nbytes = math.prod(shape) * np.dtype(_ST_DTYPES[dtype]).itemsize
    if begin > end or end - begin != nbytes:
        raise CheckpointError(
            f"{path}: tensor {name!r} data_offsets {offsets} do not match "
            f"shape {shape} of dtype {dtype} ({nbytes} bytes)"
        )
    if end > data_size:
        raise CheckpointError(
            f"{path}: tensor {name!r} data_offsets end at byte {end} but the data "
            f"section has only {data_size} bytes (file truncated?)"
        )
    return _SafetensorsEntry(dtype, tuple(shape), begin, end)


def _is_int_list(value: object) -> bool:
    """A JSON list of non-negative integers (JSON true/false excluded)."""
    return isinstance(value, list) and all(
        type(v) is int and v >= 0 for v in value
    )


def _read_safetensors_tensor(f, path: Path, name: str, entry: _SafetensorsEntry,
                             float32: bool) -> np.ndarray:
    """Read one tensor at the current file position into its output dtype."""
    array = np.empty(entry.shape, dtype=_ST_DTYPES[entry.dtype])
    if f.readinto(array.reshape(-1).view(np.uint8)) != entry.end - entry.begin:
        raise CheckpointError(f"{path}: file ended inside tensor {name!r}")
    if entry.dtype == "BF16":
        array = bf16_to_float32(array)
    return as_native(array, float32)


def save_adapter_files(directory, config_dict, tensors: Mapping[str, np.ndarray]) -> None:
    """Write adapter_model.safetensors and adapter_config.json into `directory` as one unit
    (see write_files_together)."""
    if hasattr(config_dict, "to_dict"):
        config_dict = config_dict.to_dict()
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    write_files_together(directory, [
        (SAFETENSORS_WEIGHTS_NAME, lambda: safetensors.numpy.save(
            arrays, metadata=dict(DEFAULT_SAFETENSORS_METADATA))),
        (CONFIG_NAME, lambda: json_bytes(config_dict)),
    ])


def json_bytes(obj) -> bytes:
    """JSON as HF PEFT and AdapterHub write it: indent 2, sorted keys."""
    return json.dumps(obj, indent=2, sort_keys=True).encode("utf-8")


def write_files_together(directory, payloads) -> None:
    """Write files [(name, make bytes)] into `directory` as one unit: all are serialised
    and staged as fsynced temp files first, then renamed into place; if anything fails,
    files already replaced are restored, so the folder keeps the previous files (or none)
    and no temp file is left."""
    directory = Path(directory)
    if directory.is_file():
        raise ValueError(f"Provided path ({directory}) should be a directory, not a file")
    data = [(name, make()) for name, make in payloads]  # serialisation errors: nothing written
    directory.mkdir(parents=True, exist_ok=True)
    staged, backups, replaced = [], {}, []
    try:
        for name, blob in data:
            fd, tmp = _temp_file_in(directory, name)
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
