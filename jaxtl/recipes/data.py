"""Data for the recipes: a data spec opened as a model card says, augmentation resolved to one meaning, the
held-out split drawn and recorded by content, and mapped back for ``evaluate --split test``.

The held-out record (``heldout.json`` beside a fine-tuned classifier) lists each held-out example's name (for
files: its path relative to the data's root) and a short SHA-256 of its content. Evaluating ``split="test"`` finds
those examples in the data it is given and checks their content; data that does not hold them is refused, so a
"held-out" accuracy is never measured on training images.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxtl.data.dataset import ArrayDataset
from jaxtl.data.protocol import Source
from jaxtl.data.splits import labeled_unlabeled_split, split_indices
from jaxtl.errors import ConfigError, DataError
from jaxtl.models.card import ModelCard
from jaxtl.recipes.config import Input, Split

__all__ = ["HELDOUT", "heldout_part", "open_data", "resolve_augment", "split_for_training"]

HELDOUT = "heldout.json"
STREAMING = ("folder", "csv", "arrayrecord")


def _streaming(spec: str | Source) -> bool:
    if isinstance(spec, str):
        return spec.partition(":")[0] in STREAMING
    return not isinstance(spec, ArrayDataset)


def resolve_augment(augment: str, data: str | Source) -> tuple[str, bool]:
    """``(in the workers, on the device)`` for an :class:`~jaxtl.recipes.config.Input` ``augment``: streamed data
    augments in its workers (``rrc``, ``flip``), in-memory data on the device (``crop-flip``); ``auto`` picks the
    kind's own. A kind's augmentation asked of the other kind is a :class:`ConfigError`."""
    streaming = _streaming(data)
    if augment == "auto":
        augment = "rrc" if streaming else "crop-flip"
    if augment in ("rrc", "flip") and not streaming:
        raise ConfigError(
            f"augment={augment!r} needs streamed data (folder:, csv:, arrayrecord:); use 'crop-flip'", "augment"
        )
    if augment == "crop-flip" and streaming:
        raise ConfigError("augment='crop-flip' is for in-memory data; streamed data uses 'rrc' or 'flip'", "augment")
    if augment in ("rrc", "flip"):
        return augment, False
    return "none", augment == "crop-flip"


def open_data(
    spec: str | Source,
    card: ModelCard,
    input: Input = Input(),  # noqa: B008  (frozen)
    *,
    labeled: bool = True,
    map_classes: bool = False,
) -> Source:
    """The data named by ``spec`` (see :data:`jaxtl.data.DATA_SPECS`), prepared as ``card`` says: its crop and
    resize sizes (``input.image_size``/``resize_size`` override them), interpolation, channels and mean/std,
    streamed data augmented in its workers as ``input.augment`` says. A ready :class:`~jaxtl.data.protocol.Source`
    is returned as it is. ``map_classes``: labels follow the card's class names (a class the model does not know
    is an error).
    """
    if not isinstance(spec, str):
        return spec
    from jaxtl.data.specs import open_source

    pre = card.preprocessing
    if input.image_size is not None:
        pre = pre.with_size(input.image_size, input.resize_size)
    elif input.resize_size is not None:
        pre = pre.with_size(pre.crop_size, input.resize_size)
    worker_aug, _ = resolve_augment(input.augment, spec)
    names = card.class_names if map_classes and card.class_names else None
    return open_source(  # type: ignore[no-any-return]
        spec,
        image_size=pre.crop_size,
        resize_size=pre.resize_size,
        channels=pre.channels,
        augment=worker_aug,
        interpolation=pre.interpolation,
        workers=input.workers,
        mean=pre.mean,
        std=pre.std,
        labeled=labeled,
        class_names=names,
    )


def _without_augmentation(data: Source) -> Source:
    from jaxtl.data.image_source import ImageSource

    if isinstance(data, ImageSource) and data.transform.augment != "none":
        return data.with_options(augment="none")
    return data


def _describe(data: Source, indices: np.ndarray) -> dict[str, Any]:
    return {"names": data.example_names(indices), "keys": list(data.content_keys(indices))}


def split_for_training(data: Source, split: Split, seed: int) -> tuple[Source, Source | None, dict[str, Any]]:
    """``(train, held-out or None, record)``: the stratified held-out part of ``split.test_fraction`` (never
    augmented), then ``labels_per_class`` labels per class kept for training. ``record`` says which examples were
    held out (names and content keys) so evaluation can find exactly them again."""
    if data.labels is None:
        raise DataError("fine-tuning needs labeled data: this data has no labels (DIR/<class>/<image> for folders)")
    present = np.unique(np.asarray(data.labels))
    if len(present) < 2:
        raise DataError(
            f"the data holds a single class ({_class_name(data, int(present[0]))}); a classifier needs at least two"
        )
    record: dict[str, Any] = {
        "test_fraction": split.test_fraction,
        "seed": seed,
        "labels_per_class": split.labels_per_class,
        "num_examples": len(data),
    }
    test = None
    train = data
    if split.test_fraction > 0:
        try:
            train_idx, test_idx = split_indices(len(data), np.asarray(data.labels), split.test_fraction, seed)
        except ValueError as e:
            raise ConfigError(str(e), "test_fraction") from None
        train = data.subset(train_idx)  # type: ignore[attr-defined]
        test = _without_augmentation(data.subset(test_idx))  # type: ignore[attr-defined]
        record["test"] = _describe(data, test_idx)
    if split.labels_per_class:
        try:
            train, _ = labeled_unlabeled_split(train, split.labels_per_class, seed)  # type: ignore[arg-type]
        except ValueError as e:
            raise ConfigError(str(e), "labels_per_class") from None
    record["train_size"] = len(train)
    return train, test, record


def _class_name(data: Source, label: int) -> str:
    names = list(data.class_names or ())
    return names[label] if label < len(names) else str(label)


def write_heldout(folder: Path, record: dict[str, Any]) -> None:
    (folder / HELDOUT).write_text(json.dumps(record))


def heldout_part(data: Source, checkpoint: Path) -> Source:
    """The examples of ``data`` that the fine-tuning which saved ``checkpoint`` held out, found by name and checked
    by content; :class:`DataError` saying why when ``data`` does not hold all of them unchanged."""
    path = Path(checkpoint) / HELDOUT
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(
            f"{checkpoint} records no held-out split (saved without one, e.g. test_fraction=0 or by convert); "
            "evaluate split='all' (--split all) on data it was not trained on"
        ) from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is damaged: {e}") from None
    test = record.get("test") if isinstance(record, dict) else None
    if not test:
        raise DataError(f"{checkpoint} was trained on all its data (test_fraction=0): there is no held-out split")
    indices = _find(data, test.get("names"), list(test["keys"]))
    return _without_augmentation(data.subset(indices))  # type: ignore[attr-defined]


def _find(data: Source, names: Sequence[str] | None, keys: list[str]) -> np.ndarray:
    have = data.example_names()
    if names is not None and have is not None:
        index = {n: i for i, n in enumerate(have)}
        missing = [n for n in names if n not in index]
        if missing:
            raise DataError(
                f"{len(missing)} of the {len(names)} held-out images are not in this data (e.g. {missing[0]}): "
                "evaluate --split test needs the data the classifier was fine-tuned on"
            )
        indices = np.asarray([index[n] for n in names], np.int64)
        got = data.content_keys(indices)
        changed = [n for n, a, b in zip(names, keys, got) if a != b]
        if changed:
            raise DataError(
                f"{len(changed)} held-out image(s) changed since fine-tuning (e.g. {changed[0]}): refusing to report "
                "held-out accuracy on other images"
            )
        return indices
    all_keys = data.content_keys(np.arange(len(data)))
    index = {k: i for i, k in enumerate(all_keys)}
    missing_keys = [k for k in keys if k not in index]
    if missing_keys:
        raise DataError(
            f"{len(missing_keys)} of the {len(keys)} held-out examples are not in this data: evaluate --split test "
            "needs the data the classifier was fine-tuned on"
        )
    return np.asarray([index[k] for k in keys], np.int64)
