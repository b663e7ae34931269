"""ArrayRecord packs (written by :func:`jaxtl.data.pack.pack_image_folder`): the record format, the index beside
the shards, and a reader the data workers use to fetch one record's image bytes by index.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxtl.errors import DataError

__all__ = [
    "PACK_INDEX",
    "ArrayRecordList",
    "ArrayRecordReader",
    "decode_record",
    "encode_record",
    "list_arrayrecord",
]

PACK_INDEX = "jaxtl_pack.json"
"""The index a pack directory holds beside its ``.array_record`` shards: class names, shards, record counts."""

_RECORD_MAGIC = b"JXT1"
_RECORD_HEAD = struct.Struct("<4sqI")  # magic, label, length of the utf-8 name


def encode_record(image: bytes, label: int, name: str) -> bytes:
    """One ArrayRecord record: a 16-byte header (magic, int64 label, name length), the utf-8 name, the image
    file's bytes unchanged (JPEG stays JPEG: decoding and transforms are the folder source's)."""
    raw = name.encode("utf-8")
    return _RECORD_HEAD.pack(_RECORD_MAGIC, label, len(raw)) + raw + image


def decode_record(record: bytes) -> tuple[bytes, int, str]:
    """``(image bytes, label, name)`` of a record written by :func:`encode_record`; ValueError if it is not one."""
    if len(record) < _RECORD_HEAD.size:
        raise DataError(f"record of {len(record)} bytes is too short for a jaxtl record")
    magic, label, n = _RECORD_HEAD.unpack_from(record)
    if magic != _RECORD_MAGIC or _RECORD_HEAD.size + n > len(record):
        raise DataError("not a jaxtl image record (bad magic or name length)")
    start = _RECORD_HEAD.size
    return record[start + n :], int(label), record[start : start + n].decode("utf-8", "replace")


class ArrayRecordReader:
    """Reads example ``i`` from ArrayRecord shards (grain's ``ArrayRecordDataSource``, opened lazily per process)."""

    def __init__(self, files: Sequence[str]) -> None:
        self.files = tuple(files)
        self._source: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"files": self.files, "_source": None}  # each worker opens its own readers

    def _open(self) -> Any:
        if self._source is None:
            import grain.python as gp

            self._source = gp.ArrayRecordDataSource(list(self.files))
        return self._source

    def __len__(self) -> int:
        return len(self._open())

    def name(self, i: int) -> str:
        try:
            return f"record {i} ({decode_record(self._open()[i])[2]})"
        except Exception:
            return f"record {i} of {', '.join(self.files)}"

    def read(self, i: int) -> bytes:
        return decode_record(self._open()[i])[0]


@dataclasses.dataclass(frozen=True)
class ArrayRecordList:
    """ArrayRecord shards (in order) with their labels ``[N]`` and class names, from a pack index."""

    files: tuple[str, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]
    origin: str
    labeled = True  # packs always hold labels

    def reader(self) -> ArrayRecordReader:
        return ArrayRecordReader(self.files)


def _read_pack_index(directory: str) -> dict[str, Any]:
    index_path = os.path.join(directory, PACK_INDEX)
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
    except FileNotFoundError:
        raise DataError(
            f"{directory!r} has no {PACK_INDEX}; ArrayRecord data must be written by 'jaxtl pack' "
            "(it stores class names and labels beside the shards)"
        ) from None
    except (OSError, ValueError) as e:
        raise DataError(f"{index_path!r} could not be read: {e}") from e
    if not isinstance(index, dict) or index.get("format") != "jaxtl-arrayrecord" or index.get("version") != 1:
        raise DataError(f"{index_path!r} is not a jaxtl pack index (format jaxtl-arrayrecord, version 1)")
    try:
        shards = [(str(s["file"]), int(s["num_records"]), int(s["first"])) for s in index["shards"]]
        names = tuple(str(n) for n in index["class_names"])
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{index_path!r}: malformed shard list or class names ({e})") from e
    index["_shards"] = shards
    index["_names"] = names
    return index


def list_arrayrecord(pattern: str | os.PathLike[str]) -> ArrayRecordList:
    """The shards a pack directory (or a glob of its ``.array_record`` files) holds, with labels and class names.

    ``pattern`` is a directory written by :func:`jaxtl.data.pack.pack_image_folder` (all its shards), or a glob of
    shard files in one such directory (a subset, in sorted order). Raises ValueError naming the pattern when
    nothing matches, the index is missing or malformed, or a shard is not in the index or has another length.
    """
    pat = os.fspath(pattern)
    if os.path.isdir(pat):
        directory = pat
        index = _read_pack_index(directory)
        chosen = [s[0] for s in index["_shards"]]
    else:
        matches = sorted(glob.glob(pat))
        if not matches:
            raise DataError(f"ArrayRecord pattern {pat!r} matches no files")
        dirs = {os.path.dirname(os.path.abspath(m)) for m in matches}
        if len(dirs) != 1:
            raise DataError(f"ArrayRecord pattern {pat!r} matches files in {len(dirs)} folders; use one pack folder")
        directory = dirs.pop()
        index = _read_pack_index(directory)
        chosen = [os.path.basename(m) for m in matches]
    by_file = {f: (n, first) for f, n, first in index["_shards"]}
    labels_path = os.path.join(directory, str(index.get("labels_file", "labels.npy")))
    try:
        all_labels = np.load(labels_path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"labels of pack {directory!r} ({labels_path!r}) could not be read: {e}") from e
    files, parts = [], []
    for f in chosen:
        if f not in by_file:
            raise DataError(f"{os.path.join(directory, f)!r} is not a shard listed in {PACK_INDEX}")
        n, first = by_file[f]
        if first < 0 or first + n > len(all_labels):
            raise DataError(f"{PACK_INDEX} in {directory!r}: shard {f!r} points past the {len(all_labels)} labels")
        path = os.path.join(directory, f)
        if not os.path.isfile(path):
            raise DataError(f"shard {path!r} listed in {PACK_INDEX} does not exist")
        files.append(path)
        parts.append(all_labels[first : first + n])
    labels = np.concatenate(parts).astype(np.int64)
    names = index["_names"]
    if len(labels) == 0:
        raise DataError(f"ArrayRecord pattern {pat!r} selects no records")
    if labels.min() < 0 or labels.max() >= len(names):
        raise DataError(f"labels of pack {directory!r} lie outside [0, {len(names)})")
    reader = ArrayRecordReader(files)
    try:
        count = len(reader)
    except Exception as e:  # array_record raises its own error types for a damaged file
        raise DataError(f"ArrayRecord shards {files} could not be opened: {e}") from e
    if count != len(labels):
        raise DataError(f"ArrayRecord shards {files} hold {count} records, {PACK_INDEX} lists {len(labels)}")
    return ArrayRecordList(tuple(files), labels.astype(np.int32), names, f"ArrayRecord data {pat!r}")
