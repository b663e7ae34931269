"""``jaxtl pack``: an image folder written as ArrayRecord shards, grain's random-access file format.

A pack directory holds ``data-SSSSS-of-NNNNN.array_record`` shards (one record per image: label, original path
and the file's bytes unchanged, see :func:`jaxtl.data.listing.encode_record`), ``labels.npy`` (int32 ``[N]``, so
labels are known without reading a record) and ``jaxtl_pack.json`` (class names, shards, record counts). Few large
files instead of many small ones suit network storage; ``--data arrayrecord:DIR`` streams it like the folder, with
the same decoding and transforms, so the batches are identical.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxtl.data.listing import PACK_INDEX, list_image_folder
from jaxtl.errors import DataError
from jaxtl.outputs import Output, write_outputs

__all__ = ["PackResult", "pack_image_folder"]

_LABELS_FILE = "labels.npy"


@dataclasses.dataclass(frozen=True)
class PackResult:
    """What :func:`pack_image_folder` wrote: ``out`` directory, shard paths, record and byte counts."""

    out: str
    shards: tuple[str, ...]
    num_records: int
    num_bytes: int
    class_names: tuple[str, ...]


def pack_image_folder(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    num_shards: int | None = None,
    records_per_shard: int = 10_000,
    class_names: Sequence[str] | None = None,
    overwrite: bool = False,
) -> PackResult:
    """Write the images of ``root`` (listed by :func:`jaxtl.data.listing.list_image_folder`) as a pack in ``out``.

    ``num_shards`` defaults to ``ceil(N / records_per_shard)``; records keep the folder's order, split into
    contiguous shards. File bytes are copied, not decoded: an unreadable image is found (and replaced) when it is
    streamed, as it would be from the folder. The pack is written under a temporary name and renamed into place
    when complete (:func:`jaxtl.lifecycle.write_outputs`): a failed pack leaves nothing behind and an earlier pack
    intact. ``out`` must not exist, or with ``overwrite=True`` be exactly a pack jaxtl wrote (its record).
    """
    if records_per_shard < 1:
        raise DataError(f"records_per_shard must be >= 1, got {records_per_shard}")
    if num_shards is not None and num_shards < 1:
        raise DataError(f"num_shards must be >= 1, got {num_shards}")
    listing = list_image_folder(root, class_names)  # a bad folder fails before anything is written
    final = os.path.abspath(os.fspath(out))
    written: list[PackResult] = []
    write_outputs(
        [Output(Path(final), "dir", "pack output")],
        lambda tmps: written.append(_write_pack(listing, root, str(tmps[0]), num_shards, records_per_shard)),
        overwrite=overwrite,
        sources=[Path(root)],
    )
    r = written[0]
    shards = tuple(os.path.join(final, os.path.basename(p)) for p in r.shards)
    return dataclasses.replace(r, out=final, shards=shards)


def _write_pack(listing: Any, root: Any, out_s: str, num_shards: int | None, records_per_shard: int) -> PackResult:
    """Write the pack of ``listing`` into the new directory ``out_s``."""
    from array_record.python.array_record_module import ArrayRecordWriter

    from jaxtl.data.listing import FileReader, encode_record

    n = len(listing.labels)
    shards = num_shards if num_shards is not None else max(1, math.ceil(n / records_per_shard))
    if not 1 <= shards <= n:
        raise DataError(f"num_shards must lie in [1, {n}] for {n} images, got {shards}")
    os.makedirs(out_s)

    reader = FileReader(listing.paths)
    bounds = np.linspace(0, n, shards + 1).round().astype(np.int64)
    root_s = os.fspath(root)
    entries, paths, total = [], [], 0
    for s in range(shards):
        name = f"data-{s:05d}-of-{shards:05d}.array_record"
        path = os.path.join(out_s, name)
        writer = ArrayRecordWriter(path, "group_size:1")  # group size 1: one record per random read
        try:
            for i in range(int(bounds[s]), int(bounds[s + 1])):
                try:
                    data = reader.read(i)
                except OSError as e:
                    raise DataError(f"image {reader.name(i)!r} could not be read while packing: {e}") from e
                total += len(data)
                writer.write(encode_record(data, int(listing.labels[i]), os.path.relpath(reader.name(i), root_s)))
        finally:
            writer.close()
        entries.append({"file": name, "num_records": int(bounds[s + 1] - bounds[s]), "first": int(bounds[s])})
        paths.append(path)
    np.save(os.path.join(out_s, _LABELS_FILE), listing.labels.astype(np.int32))
    index = {
        "format": "jaxtl-arrayrecord",
        "version": 1,
        "class_names": list(listing.class_names),
        "num_records": n,
        "labels_file": _LABELS_FILE,
        "shards": entries,
    }
    with open(os.path.join(out_s, PACK_INDEX), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=1)
    return PackResult(out_s, tuple(paths), n, total, listing.class_names)
