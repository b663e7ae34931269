"""A small reader/writer of the .safetensors format with numpy and ml_dtypes (no torch, no safetensors package).

Layout: an 8-byte little-endian header length N, N bytes of JSON mapping each tensor name to ``dtype``, ``shape`` and
``data_offsets`` [begin, end) into the raw buffer that follows (plus an optional ``__metadata__`` of strings).
Everything read is validated, so a truncated or inconsistent file raises :class:`BridgeError` naming it.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path

import ml_dtypes
import numpy as np

from .errors import BridgeError

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_NAMES: dict[np.dtype, str] = {v: k for k, v in _DTYPES.items()}

# The reference implementation refuses headers above 100 MB; a bigger length means a corrupt file.
_MAX_HEADER = 100_000_000


def _is_count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _dtype_name(a: np.ndarray, key: str) -> str:
    dt = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
    name = _NAMES.get(np.dtype(dt))
    if name is None:
        raise BridgeError(f"cannot write {key!r}: dtype {a.dtype} is not one of {', '.join(_DTYPES)}")
    return name


def save_safetensors(
    tensors: Mapping[str, np.ndarray], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> None:
    """Write ``{name: array}`` to ``path`` in the .safetensors format (readable by the ``safetensors`` package)."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    chunks: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        a = np.asarray(tensors[name])
        dt = _dtype_name(a, name)
        data = np.ascontiguousarray(a, dtype=_DTYPES[dt]).tobytes()
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the reference writer pads with spaces so the buffer starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for c in chunks:
            f.write(c)


def load_safetensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a .safetensors file -> (``{name: array}``, metadata). BridgeError naming the file if it is malformed."""
    p = Path(path)
    try:
        blob = p.read_bytes()
    except OSError as e:
        raise BridgeError(f"cannot read {p}: {e}") from e

    def bad(why: str) -> BridgeError:
        return BridgeError(f"{p} is not a valid .safetensors file: {why}")

    if len(blob) < 8:
        raise bad(f"{len(blob)} bytes, too short for the 8-byte header length")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > _MAX_HEADER or 8 + n > len(blob):
        raise bad(f"header length {n} exceeds the file size {len(blob)} (truncated or corrupt)")
    try:
        header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad(f"header is not JSON ({e})") from e
    except RecursionError as e:
        raise bad("header nests JSON too deeply (a crafted file?)") from e
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise bad("__metadata__ is not an object")
    buffer = memoryview(blob)[8 + n :]
    out: dict[str, np.ndarray] = {}
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise bad(f"entry {name!r} lacks dtype/shape/data_offsets")
        dt = _DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
        if dt is None:
            raise bad(f"entry {name!r} has unsupported dtype {info['dtype']!r}; supported: {', '.join(_DTYPES)}")
        shape, offs = info["shape"], info["data_offsets"]
        if not (isinstance(shape, list) and all(_is_count(d) for d in shape)):
            raise bad(f"entry {name!r} has a bad shape {shape!r} (a list of integers >= 0)")
        if not (isinstance(offs, list) and len(offs) == 2 and all(_is_count(o) for o in offs)):
            raise bad(f"entry {name!r} has bad data_offsets {offs!r} (two integers >= 0)")
        begin, end = offs
        if not 0 <= begin <= end <= len(buffer):
            raise bad(f"entry {name!r} data_offsets {offs} outside the {len(buffer)}-byte buffer (truncated?)")
        if end - begin != math.prod(shape) * dt.itemsize:
            raise bad(f"entry {name!r}: {end - begin} bytes for shape {shape} of {info['dtype']}")
        spans.append((begin, end, name))
        out[name] = np.frombuffer(buffer[begin:end], dtype=dt).reshape(shape).copy()
    # As the reference reader: tensors must tile the buffer exactly, without gaps, overlaps or trailing bytes.
    pos = 0
    for begin, end, name in sorted(spans):
        if begin != pos:
            raise bad(f"entry {name!r} starts at {begin}, expected {pos} (gap or overlap)")
        pos = end
    if pos != len(buffer):
        raise bad(f"{len(buffer) - pos} trailing bytes after the last tensor")
    return out, {str(k): str(v) for k, v in metadata.items()}
