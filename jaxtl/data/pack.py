"""``jaxtl pack``: an image folder written as ArrayRecord shards, grain's random-access file format.

A pack directory holds ``data-SSSSS-of-NNNNN.array_record`` shards (one record per image: label, original path
and the file's bytes unchanged, see :func:`jaxtl.data.sources.encode_record`), ``labels.npy`` (int32 ``[N]``, so
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

import numpy as np

from jaxtl.data.sources import PACK_INDEX, list_image_folder

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


def _clear_previous(out: str, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` unless it is a pack and ``overwrite``; then remove only what the pack wrote."""
    if not os.path.exists(out):
        return
    if not os.path.isdir(out):
        raise ValueError(f"pack output {out!r} exists and is not a directory")
    entries = os.listdir(out)
    if not entries:
        return
    index_path = os.path.join(out, PACK_INDEX)
    if not os.path.isfile(index_path):
        raise ValueError(f"pack output {out!r} is a non-empty directory that is not a jaxtl pack; refusing to write")
    if not overwrite:
        raise ValueError(f"pack output {out!r} already holds a pack; pass overwrite (--overwrite) to replace it")
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
        written = [str(s["file"]) for s in index["shards"]] + [str(index.get("labels_file", _LABELS_FILE))]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"pack output {out!r}: its {PACK_INDEX} could not be read ({e}); refusing to overwrite") from e
    os.remove(index_path)  # first: a half-removed pack is never mistaken for a whole one
    for name in written:
        if os.path.basename(name) != name:
            continue  # an index naming files outside the pack: not ours to delete
        path = os.path.join(out, name)
        if os.path.isfile(path):
            os.remove(path)


def pack_image_folder(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    num_shards: int | None = None,
    records_per_shard: int = 10_000,
    class_names: Sequence[str] | None = None,
    overwrite: bool = False,
) -> PackResult:
    """Write the images of ``root`` (listed by :func:`jaxtl.data.sources.list_image_folder`) as a pack in ``out``.

    ``num_shards`` defaults to ``ceil(N / records_per_shard)``; records keep the folder's order, split into
    contiguous shards. File bytes are copied, not decoded: an unreadable image is found (and replaced) when it is
    streamed, as it would be from the folder. ``out`` must be absent, empty, or a previous pack with
    ``overwrite=True`` (only the files that pack wrote are removed). The index is written last, so an interrupted
    pack is never read as a complete one.
    """
    from array_record.python.array_record_module import ArrayRecordWriter

    from jaxtl.data.sources import FileReader, encode_record

    listing = list_image_folder(root, class_names)
    n = len(listing.labels)
    if records_per_shard < 1:
        raise ValueError(f"records_per_shard must be >= 1, got {records_per_shard}")
    shards = num_shards if num_shards is not None else max(1, math.ceil(n / records_per_shard))
    if not 1 <= shards <= n:
        raise ValueError(f"num_shards must lie in [1, {n}] for {n} images, got {shards}")
    out_s = os.fspath(out)
    _clear_previous(out_s, overwrite)
    os.makedirs(out_s, exist_ok=True)

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
                    raise ValueError(f"image {reader.name(i)!r} could not be read while packing: {e}") from e
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
    tmp = os.path.join(out_s, PACK_INDEX + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(index, f, indent=1)
    os.replace(tmp, os.path.join(out_s, PACK_INDEX))
    return PackResult(out_s, tuple(paths), n, total, listing.class_names)
