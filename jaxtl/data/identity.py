"""What identifies data: a source's digest, and each example's name and content key.

A run records which data it trained on and which examples it held out, and must recognise them later however the
path is spelled. So identity is taken from content and from names relative to the data's root, never from the
root's own path:

- :func:`source_digest` (``Source.digest()``), 16 hex characters, without reading any image:

  * image files (``folder:``, ``csv:``): every example's root-relative name (``cat/x.jpg``; for a file list, the
    path as the list writes it, normalised) and file size, in example order, plus the labels and class names
    when the source is labeled. The same folder given as a relative or absolute path, through a symlink or with a
    trailing slash, or after the root folder was renamed, has the same digest; adding, removing or renaming a
    file, moving it to another class or changing its size changes it. Rewriting a file with other bytes of the
    same size does not (that needs reading every file: :func:`content_keys` does, for the examples asked);
  * ArrayRecord packs: every selected shard's file name and size and the record count, plus the labels and class
    names (and the positions of a subset);
  * in-memory arrays (``digits``, ``npz:``): sha256 of the pixels as held (after normalisation), their shape and
    dtype, the labels and class names.

  Options that change how examples are turned into batches (image size, resize, augmentation, mean/std, workers)
  are not data identity and are not covered: a run records them with its configuration.
- :func:`example_names`: the root-relative name of each example (files; ArrayRecord records carry the name they
  were packed under, read from the record), None for in-memory arrays.
- :func:`content_keys`: per example, the first 16 hex characters of the sha256 of its encoded bytes (the image
  file's bytes; for a packed record the image bytes it holds, so a file and its record have the same key) or of
  its pixel row (in-memory arrays: the row's bytes as stored, C order). Only the examples asked are read.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxtl.errors import DataError

__all__ = ["KEY_CHARS", "array_digest", "content_key", "content_keys", "example_names", "source_digest"]

KEY_CHARS = 16
"""Hex characters of a digest or content key (64 bits)."""

_VERSION = b"jaxtl-data-identity-1\0"


def content_key(data: bytes | np.ndarray) -> str:
    """The first :data:`KEY_CHARS` hex characters of the sha256 of ``data`` (bytes, or an array's bytes in C order)."""
    raw = np.ascontiguousarray(data).tobytes() if isinstance(data, np.ndarray) else bytes(data)
    return hashlib.sha256(raw).hexdigest()[:KEY_CHARS]


def _header(h: Any, kind: str, fields: dict[str, Any]) -> None:
    h.update(_VERSION + kind.encode() + b"\0" + json.dumps(fields, sort_keys=True).encode() + b"\0")


def _update_array(h: Any, a: np.ndarray) -> None:
    a = np.ascontiguousarray(a)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a if a.size else b"")


def array_digest(images: np.ndarray, labels: np.ndarray | None, class_names: Sequence[str], num_classes: int) -> str:
    """The digest of in-memory data: pixels ``[N, H, W, C]`` as held, labels ``[N]`` or None, the label space."""
    h = hashlib.sha256()
    _header(h, "arrays", {"class_names": list(class_names), "num_classes": num_classes, "labeled": labels is not None})
    _update_array(h, images)
    if labels is not None:
        _update_array(h, np.asarray(labels, np.int64))
    return h.hexdigest()[:KEY_CHARS]


def _resolve(reader: Any, indices: np.ndarray | None) -> tuple[Any, np.ndarray | None]:
    """The innermost reader under ``SubsetReader`` layers and the indices into it (None: all of it, in order)."""
    from jaxtl.data.listing import SubsetReader

    while isinstance(reader, SubsetReader):
        indices = reader.indices if indices is None else reader.indices[indices]
        reader = reader.base
    return reader, indices


def _file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1  # gone or unreadable: differs from any real size; the stream reports the file when it reads it


def source_digest(
    reader: Any, labels: np.ndarray | None, class_names: Sequence[str], indices: np.ndarray | None = None
) -> str:
    """The digest of a streaming source: ``reader``'s examples (``indices`` of it, default all) and their
    ``labels`` (None: unlabeled, class names then left out too). See the module doc for what it covers."""
    from jaxtl.data.arrayrecord import ArrayRecordReader
    from jaxtl.data.listing import FileReader

    base, idx = _resolve(reader, None if indices is None else np.asarray(indices, np.int64))
    h = hashlib.sha256()
    labeled = labels is not None
    _header(h, "images", {"class_names": list(class_names) if labeled else [], "labeled": labeled})
    if labels is not None:
        _update_array(h, np.asarray(labels, np.int64))
    if isinstance(base, FileReader):
        rows = range(len(base)) if idx is None else (int(i) for i in idx)
        names, sizes = [], []
        for i in rows:
            names.append(base.names[i])
            sizes.append(_file_size(base.paths[i]))
        h.update(b"files\0")
        h.update("\0".join(names).encode("utf-8", "surrogateescape"))
        _update_array(h, np.asarray(sizes, np.int64))
    elif isinstance(base, ArrayRecordReader):
        shards = [(os.path.basename(f), _file_size(f)) for f in base.files]
        h.update(b"arrayrecord\0" + json.dumps({"shards": shards, "records": len(base)}).encode())
        if idx is not None:
            _update_array(h, idx)
    else:  # another reader: what it says about itself, else only its type and length
        own = getattr(base, "identity", None)
        h.update(b"reader\0" + (own() if callable(own) else f"{type(base).__qualname__}:{len(base)}".encode()))
        if idx is not None:
            _update_array(h, idx)
    return h.hexdigest()[:KEY_CHARS]


def example_names(reader: Any, indices: Sequence[int] | np.ndarray | None = None) -> list[str] | None:
    """The root-relative names of ``reader``'s examples at ``indices`` (default all, in order), or None when the
    reader has no names. ArrayRecord names are read from the records (each record asked is read)."""
    from jaxtl.data.arrayrecord import ArrayRecordReader, decode_record
    from jaxtl.data.listing import FileReader

    base, idx = _resolve(reader, None if indices is None else np.asarray(indices, np.int64))
    rows = range(len(base)) if idx is None else [int(i) for i in idx]
    if isinstance(base, FileReader):
        return [base.names[i] for i in rows]
    if isinstance(base, ArrayRecordReader):
        source = base._open()
        return [decode_record(source[i])[2] for i in rows]
    name = getattr(base, "example_name", None)
    return [str(name(i)) for i in rows] if callable(name) else None


def content_keys(reader: Any, indices: Sequence[int] | np.ndarray) -> list[str]:
    """The content key of each example of ``reader`` at ``indices`` (only those are read). Raises ValueError
    naming the file or record when one cannot be read."""
    out = []
    for i in np.asarray(indices, np.int64).reshape(-1):
        try:
            data = reader.read(int(i))
        except Exception as e:  # OSError for a file; array_record raises its own types for a damaged shard
            raise DataError(f"example {int(i)} ({reader.name(int(i))}) could not be read: {e}") from e
        out.append(content_key(data))
    return out
