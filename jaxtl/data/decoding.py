"""What the data workers run: stream position ``k`` -> this process's rows of one global batch, decoded and
transformed (see :mod:`jaxtl.data.image_source` for the order and the handling of unreadable files).
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Protocol

import numpy as np

from jaxtl.data.batching import epoch_indices, num_batches
from jaxtl.data.transforms import ImageTransform, decode_image, example_rng

__all__ = ["LoadBatch", "Plan", "Reader"]


class Reader(Protocol):
    def __len__(self) -> int: ...
    def name(self, i: int) -> str: ...
    def read(self, i: int) -> bytes: ...


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a stream yields, batch after batch: the batching options of ``batches()``."""

    num_examples: int
    batch_size: int
    seed: int
    shuffle: bool
    drop_remainder: bool
    rows: tuple[int, int]  # this process's rows [start, stop) of each global batch
    train: bool

    @property
    def per_epoch(self) -> int:
        return num_batches(self.num_examples, self.batch_size, self.drop_remainder)

    def locate(self, k: int, epoch0: int, start0: int) -> tuple[int, int]:
        """``(epoch, batch)`` of the ``k``-th batch of a stream that starts at batch ``start0`` of ``epoch0``."""
        first = self.per_epoch - start0
        if k < first:
            return epoch0, start0 + k
        e, b = divmod(k - first, self.per_epoch)
        return epoch0 + 1 + e, b


class LoadBatch:
    """Stream position ``k`` -> this process's rows of one global batch; runs in the workers (pickled).

    Everything is derived from ``(plan, start, k)``: the epoch's order (``epoch_indices``), the batch's global
    indices, each example's pixels and draws (``example_rng(seed, epoch, index)``).
    """

    def __init__(
        self,
        reader: Reader,
        labels: np.ndarray,
        transform: ImageTransform,
        channels: int,
        plan: Plan,
        start: tuple[int, int],
    ) -> None:
        self.reader = reader
        self.labels = labels
        self.transform = transform
        self.channels = channels
        self.mode = "RGB" if channels == 3 else "L"
        self.plan = plan
        self.start = start
        self._orders: dict[int, np.ndarray] = {}  # the last epochs' orders (grain's threads share this object)
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_orders", "_lock")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._orders = {}
        self._lock = threading.Lock()

    def _order(self, epoch: int) -> np.ndarray:
        with self._lock:
            if epoch not in self._orders:
                if len(self._orders) >= 2:
                    self._orders.pop(min(self._orders))
                plan = self.plan
                self._orders[epoch] = epoch_indices(plan.num_examples, plan.seed, epoch, plan.shuffle)
            return self._orders[epoch]

    def _pixels(self, j: int, i: int, epoch: int) -> np.ndarray | None:
        """Example ``j``'s pixels with position ``i``'s draws, or None when it cannot be read, decoded or
        transformed. Pillow raises many types on damaged data (OSError, ValueError, SyntaxError, struct.error,
        EOFError, DecompressionBombError, MemoryError, ...): any of them makes one bad file, never a dead run."""
        train = self.plan.train
        try:
            img = decode_image(self.reader.read(j), self.mode)
            return self.transform(img, example_rng(self.plan.seed, epoch, i) if train else None, train)
        except Exception:
            return None

    def _example(self, i: int, epoch: int) -> tuple[np.ndarray, int, float, int]:
        """``(pixels, label, mask, bad index or -1)`` of global index ``i`` (-1: padding)."""
        s = self.transform.size
        if i < 0:
            return np.zeros((s, s, self.channels), np.uint8), 0, 0.0, -1
        pixels = self._pixels(i, i, epoch)
        j = i
        if pixels is None:
            if not self.plan.drop_remainder:  # batches with a mask: the bad file is masked out like padding
                return np.zeros((s, s, self.channels), np.uint8), 0, 0.0, i
            n = self.plan.num_examples
            for step in range(1, n):  # batches without a mask: the next readable example takes its place
                j = (i + step) % n
                pixels = self._pixels(j, i, epoch)
                if pixels is not None:
                    break
            else:
                raise ValueError(f"none of the {n} images could be read (first: {self.reader.name(i)!r})")
        assert pixels is not None
        return pixels, int(self.labels[j]), 1.0, (i if j != i else -1)

    def __call__(self, k: Any) -> dict[str, np.ndarray]:
        plan = self.plan
        epoch, b = plan.locate(int(k), *self.start)
        idx = np.full(plan.batch_size, -1, np.int64)  # -1: padding of the ragged last global batch
        part = self._order(epoch)[b * plan.batch_size : (b + 1) * plan.batch_size]
        idx[: len(part)] = part
        rows = [self._example(int(i), epoch) for i in idx[plan.rows[0] : plan.rows[1]]]
        return {
            "images": np.stack([r[0] for r in rows]),
            "labels": np.asarray([r[1] for r in rows], np.int32),
            "mask": np.asarray([r[2] for r in rows], np.float32),
            "bad": np.asarray([r[3] for r in rows], np.int64),
            "where": np.asarray([epoch, b], np.int64),
        }
