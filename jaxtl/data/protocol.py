"""What every training, evaluation and feature-extraction path consumes: a :class:`Source` of batches.

An in-memory :class:`~jaxtl.data.dataset.ArrayDataset` is one; the streaming image pipeline (grain workers
decoding files) is another. A source yields host batches ``{"images": [b, H, W, C], "labels": [b], "mask": [b]?}``
where ``b`` is this process's slice of the global batch. Images are either float32 already in the model's input
space (normalised), or uint8 pixels: then ``normalization`` holds the ``(mean, std)`` that the compiled step
applies on the device (``x / 255``, minus mean, over std, cast to the compute dtype), so hosts move 4x fewer bytes.

Batch ``b`` of epoch ``e`` is a function of ``(seed, e, b)`` only (``epoch_indices`` + ``process_slice``), and
so is any random augmentation of its rows, so results do not depend on worker or process count and a resumed
run needs nothing but the step.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

Batch = dict[str, np.ndarray]
Normalization = tuple[tuple[float, ...], tuple[float, ...]]


@runtime_checkable
class Source(Protocol):
    """A finite, indexable-by-position set of examples that yields deterministic batches."""

    @property
    def num_classes(self) -> int:
        """Size of the label space (labels lie in ``[0, num_classes)``)."""
        ...

    @property
    def class_names(self) -> Sequence[str]:
        """``num_classes`` names when known, else empty."""
        ...

    def __len__(self) -> int: ...

    @property
    def labels(self) -> np.ndarray | None:
        """All labels ``[N]`` (int) in example order, or None for unlabeled data (cheap: no pixels decoded)."""
        ...

    @property
    def normalization(self) -> Normalization | None:
        """``(mean, std)`` the step applies on device when images are uint8; None when images are float32."""
        ...

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of every image this source yields."""
        ...

    def digest(self) -> str:
        """16 hex characters identifying the data by content, not by how its path is spelled (what each source
        covers: :mod:`jaxtl.data.identity`)."""
        ...

    def example_names(self, indices: Sequence[int] | np.ndarray | None = None) -> list[str] | None:
        """Root-relative names of the examples at ``indices`` (default all), or None (in-memory arrays)."""
        ...

    def content_keys(self, indices: Sequence[int] | np.ndarray) -> list[str]:
        """A 16-hex-character content hash per example at ``indices``, reading only those examples."""
        ...

    def batches(
        self,
        batch_size: int,
        *,
        seed: int = 0,
        epoch: int = 0,
        shuffle: bool = True,
        drop_remainder: bool = True,
        start_batch: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        train: bool = True,
    ) -> Iterator[Batch]:
        """One epoch of batches from ``start_batch`` on: this process's slice of each global batch.

        ``train=True`` applies the source's training augmentation (drawn from ``(seed, epoch, global index)``);
        ``train=False`` its deterministic eval transform. With ``drop_remainder=False`` the ragged last batch is
        padded and carries ``mask`` (1 real, 0 padding).
        """
        ...


def check_labels(data: Source, num_outputs: int, what: str = "train data") -> None:
    """Raise a ValueError naming ``what`` when ``data``'s labels do not fit a classifier head of ``num_outputs``.

    Every label must index an output (``[0, num_outputs)``) and the data's label space (``num_classes``) must not
    be larger than the head. Unlabeled or empty data passes: whether labels are needed is the caller's question.
    """
    labels = data.labels
    if labels is None or len(labels) == 0:
        return
    if num_outputs < 1:
        raise ValueError(f"{what} has labels, but the model has no classifier head (num_classes={num_outputs})")
    lo, hi = int(np.min(labels)), int(np.max(labels))
    if lo < 0 or hi >= num_outputs:
        raise ValueError(
            f"{what} has labels in [{lo}, {hi}], but the model's head has {num_outputs} outputs (labels must lie in "
            f"[0, {num_outputs})): give the model a head of at least {hi + 1} classes"
        )
    if data.num_classes > num_outputs:
        raise ValueError(
            f"{what} has {data.num_classes} classes, but the model's head has only {num_outputs} outputs: give the "
            f"model a head of at least {data.num_classes} classes"
        )
