"""The in-memory dataset every loader returns and every training loop consumes."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
    """Images ``[N, H, W, C]`` float32 and integer labels ``[N]`` (or ``None`` for unlabeled data).

    ``num_classes`` is the size of the label space (labels lie in ``[0, num_classes)``), which can exceed the
    classes present (a split may hold a subset). ``class_names`` has ``num_classes`` entries when known.
    """

    images: np.ndarray
    labels: np.ndarray | None
    num_classes: int
    class_names: Sequence[str] = ()

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(f"images must be [N, H, W, C], got shape {self.images.shape}")
        if len(self.images) == 0:
            raise ValueError("dataset is empty")
        if self.labels is not None:
            if self.labels.shape != (len(self.images),):
                raise ValueError(f"labels must be [N] with N={len(self.images)}, got shape {self.labels.shape}")
            if not np.issubdtype(self.labels.dtype, np.integer):
                raise ValueError(f"labels must be integers, got dtype {self.labels.dtype}")
            lo, hi = int(self.labels.min()), int(self.labels.max())
            if lo < 0 or hi >= self.num_classes:
                raise ValueError(f"labels must lie in [0, {self.num_classes}), found values in [{lo}, {hi}]")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: np.ndarray) -> ArrayDataset:
        """The examples at ``indices``, same label space."""
        labels = None if self.labels is None else self.labels[indices]
        return ArrayDataset(self.images[indices], labels, self.num_classes, self.class_names)

    def unlabeled(self) -> ArrayDataset:
        """The same images with labels dropped."""
        return ArrayDataset(self.images, None, self.num_classes, self.class_names)

    # --- identity (jaxtl.data.identity) ---

    def digest(self) -> str:
        """16 hex characters of the sha256 of the pixels as held (shape, dtype, bytes), the labels and the label
        space; computed once (the arrays are not expected to change in place)."""
        cached = self.__dict__.get("_digest")
        if cached is None:
            from jaxtl.data.identity import array_digest

            cached = array_digest(self.images, self.labels, self.class_names, self.num_classes)
            object.__setattr__(self, "_digest", cached)  # frozen dataclass: a private cache, not a field
        return str(cached)

    def example_names(self, indices: Sequence[int] | np.ndarray | None = None) -> None:
        """In-memory examples have no names: None (identify them by :meth:`content_keys`)."""
        del indices
        return None

    def content_keys(self, indices: Sequence[int] | np.ndarray) -> list[str]:
        """16 hex characters of the sha256 of each pixel row ``images[i]`` (its bytes as stored, C order)."""
        from jaxtl.data.identity import content_key

        return [content_key(self.images[int(i)]) for i in np.asarray(indices, np.int64).reshape(-1)]

    # --- the Source protocol (jaxtl.data.protocol) ---

    @property
    def normalization(self) -> None:
        """In-memory images are float32 in the model's input space already: nothing to apply on device."""
        return None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

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
    ) -> Iterator[dict[str, np.ndarray]]:
        """One epoch of batches (see :class:`jaxtl.data.protocol.Source`); ``train`` changes nothing here."""
        from jaxtl.data.batching import iterate_batches

        del train
        return iterate_batches(
            self,
            batch_size,
            seed=seed,
            epoch=epoch,
            shuffle=shuffle,
            drop_remainder=drop_remainder,
            start_batch=start_batch,
            process_index=process_index,
            process_count=process_count,
        )
