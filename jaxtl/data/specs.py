"""Data specs: the one-string names of data sets that the CLI's ``--data`` and the recipes take.

:func:`open_source` turns a spec into a :class:`~jaxtl.data.protocol.Source`. A spec that is not one (a bare path
such as ``my_images``) gets an error suggesting the spec that path would be (``folder:my_images``, ``csv:x.csv``,
``npz:x.npz``, ``arrayrecord:packed``); anything else lists the forms (:data:`DATA_SPECS`).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxtl.data.constants import channel_stats, default_resize
from jaxtl.data.image_source import ImageSource, default_workers
from jaxtl.data.transforms import AUGMENTATIONS, INTERPOLATIONS, ImageTransform
from jaxtl.errors import ConfigError, DataError

__all__ = ["DATA_SPECS", "open_source", "suggest_spec"]

DATA_SPECS = (
    "digits | folder:DIR (DIR/<class>/<image>; for pretraining also DIR/<image>) | csv:FILE (path,label rows; for "
    "pretraining also path rows or a .txt of paths) | npz:FILE (keys images, labels) | arrayrecord:DIR|GLOB"
)
"""The forms of a data spec, as the CLI's help and errors show them."""


def _map_classes(
    labels: np.ndarray, names: Sequence[str], class_names: Sequence[str], origin: str
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Labels re-indexed into ``class_names`` by name (a subset is fine, an unknown class an error). Integer labels
    (names ``"0".."K-1"``, e.g. a CSV of numbers) already index ``class_names`` and are only range-checked."""
    wanted = list(class_names)
    if len(set(wanted)) != len(wanted):
        raise ValueError(f"class_names has duplicates: {wanted}")
    index = {n: i for i, n in enumerate(wanted)}
    if all(n in index for n in names):
        table = np.asarray([index[n] for n in names], np.int32)
        return table[labels], tuple(wanted)
    if tuple(names) == tuple(str(i) for i in range(len(names))) and len(names) <= len(wanted):
        return labels, tuple(wanted)
    unknown = [n for n in names if n not in index]
    raise ValueError(f"{origin}: class(es) {unknown[:10]} are not among the {len(wanted)} class names {wanted[:10]}")


def open_source(
    spec: str,
    *,
    image_size: int,
    resize_size: int | None = None,
    channels: int = 3,
    augment: str = "none",
    interpolation: str = "bilinear",
    workers: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    labeled: bool = True,
    class_names: Sequence[str] | None = None,
) -> Any:
    """The :class:`~jaxtl.data.protocol.Source` named by a data spec (see :data:`DATA_SPECS`).

    ``folder:DIR``, ``csv:FILE`` and ``arrayrecord:DIR|GLOB`` stream (:class:`ImageSource`: uint8 batches,
    ``normalization = (mean, std)``, ``augment`` in ``"none" | "flip" | "rrc"``, every resize with
    ``interpolation``: the model card's, bilinear or bicubic; ``workers`` grain worker processes, default
    :func:`default_workers`). ``digits`` and ``npz:FILE`` load in memory as an
    :class:`~jaxtl.data.dataset.ArrayDataset` normalised with ``(mean, std)`` (``augment`` must be ``"none"``:
    their augmentation is the training loop's array crop/flip). ``mean``/``std`` default to ImageNet's (grey: their
    average). ``class_names`` fixes the label order (e.g. a checkpoint's classes): a folder's sub-folders, a CSV's or
    pack's class names must be among them (integer CSV labels index them directly). ``labeled=False`` drops labels
    and also accepts unlabeled data: a flat folder ``DIR/<image>``, a file list of paths (``csv:`` with one column,
    or a ``.txt`` of one path per line); asked for labels, those are errors saying what labeled data needs.
    Raises :class:`~jaxtl.errors.DataError` naming the spec for a bad spec, path or file (a bare path: the spec it
    would be), :class:`~jaxtl.errors.ConfigError` for a bad option (both are ValueErrors).
    """
    from jaxtl.data import in_memory

    if augment not in AUGMENTATIONS:
        raise ConfigError(f"data spec {spec!r}: augment must be one of {AUGMENTATIONS}, got {augment!r}", "augment")
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(
            f"data spec {spec!r}: interpolation must be one of {tuple(INTERPOLATIONS)}, got {interpolation!r}",
            "interpolation",
        )
    if image_size < 1:
        raise ConfigError(f"data spec {spec!r}: image size must be >= 1, got {image_size}", "image_size")
    if channels not in (1, 3):
        raise ConfigError(f"data spec {spec!r}: channels must be 1 or 3, got {channels}", "channels")
    mean_d, std_d = channel_stats(channels)
    mean = mean_d if mean is None else mean
    std = std_d if std is None else std
    kind, _, arg = spec.partition(":")
    try:
        if spec in ("digits", "npz") or kind == "npz":
            if augment != "none":
                raise ValueError(f"augment={augment!r} needs decoded originals: use folder:, csv: or arrayrecord:")
            if spec == "digits":
                ds = in_memory.load_digits(size=image_size, channels=channels)
            elif arg:
                ds = in_memory.load_npz(
                    arg, labels_key="labels" if labeled else None, image_shape=(image_size, image_size, channels)
                )
                if ds.images.shape[1:] != (image_size, image_size, channels):
                    raise ValueError(
                        f"npz file {arg!r} holds images of shape {ds.images.shape[1:]}, expected "
                        f"{(image_size, image_size, channels)} (set the image size to match)"
                    )
            else:
                raise ValueError("npz needs a file: npz:FILE")
            from jaxtl.data.dataset import ArrayDataset

            images = in_memory.normalize(ds.images, mean, std)
            out = ArrayDataset(images, ds.labels, ds.num_classes, ds.class_names)
            return out if labeled or out.labels is None else out.unlabeled()
        if kind in ("folder", "csv", "arrayrecord") and arg:
            from jaxtl.data import listing

            found: listing.ImageList | listing.ArrayRecordList
            if kind == "folder":
                found = listing.list_image_folder(arg, class_names, labeled=labeled)
            elif kind == "csv":
                found = listing.read_csv_list(arg, labeled=labeled)
            else:
                found = listing.list_arrayrecord(arg)
            labels = found.labels if found.labeled else None
            names = found.class_names
            if labels is not None and class_names is not None and kind != "folder":
                labels, names = _map_classes(labels, names, class_names, found.origin)
            resize = default_resize(image_size) if resize_size is None else resize_size
            transform = ImageTransform(image_size, resize, augment, interpolation=interpolation)  # type: ignore[arg-type]
            src = ImageSource(
                found.reader(),
                labels,
                names,
                transform=transform,
                channels=channels,
                workers=default_workers() if workers is None else workers,
                normalization=(mean, std),
                origin=found.origin,
            )
            return src if labeled else src.unlabeled()
    except ConfigError as e:
        raise ConfigError(f"data spec {spec!r}: {e}", e.field) from None
    except ValueError as e:
        raise DataError(f"data spec {spec!r}: {e}") from None
    raise DataError(suggest_spec(spec))


def suggest_spec(spec: str) -> str:
    """The error for a string that is not a data spec: the spec a bare path would be, or the forms."""
    kind = None
    if os.path.isdir(spec):
        from jaxtl.data.arrayrecord import PACK_INDEX

        kind = "arrayrecord" if os.path.isfile(os.path.join(spec, PACK_INDEX)) else "folder"
    elif os.path.isfile(spec):
        ext = os.path.splitext(spec)[1].lower()
        kind = {".npz": "npz", ".csv": "csv", ".txt": "csv", ".array_record": "arrayrecord"}.get(ext)
        if kind is None:
            return (
                f"{spec!r} is not a data spec: it is a file, and data is a folder of images (folder:DIR), a file "
                f"list (csv:FILE), an npz file (npz:FILE) or a pack (arrayrecord:DIR); data specs: {DATA_SPECS}"
            )
    elif any(m.endswith(".array_record") for m in glob.glob(spec)):
        kind = "arrayrecord"
    if kind is not None:
        what = {"folder": "a folder", "arrayrecord": "a pack", "csv": "a file list", "npz": "an npz file"}[kind]
        return f"{spec!r} is not a data spec; it is {what}: write {kind}:{spec} (data specs: {DATA_SPECS})"
    return f"{spec!r} is not a data spec; expected {DATA_SPECS}"
