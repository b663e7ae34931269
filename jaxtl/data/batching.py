"""Deterministic batching: seeded per-epoch order, padding of the ragged last batch, per-device shards.

The order of epoch ``e`` depends only on ``(seed, e)``, so a resumed run can skip the batches it has already
consumed and see exactly the data an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np

Batch = dict[str, np.ndarray]


class Arrays(Protocol):
    """What :func:`iterate_batches` reads: images ``[N, ...]`` and labels ``[N]`` or None (an ArrayDataset)."""

    @property
    def images(self) -> np.ndarray: ...

    @property
    def labels(self) -> np.ndarray | None: ...

    def __len__(self) -> int: ...


def epoch_indices(num_examples: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The example order ``[N]`` of one epoch: ``default_rng([seed, epoch]).permutation(N)`` (or ``arange``)."""
    if num_examples <= 0:
        raise ValueError(f"num_examples must be positive, got {num_examples}")
    if not shuffle:
        return np.arange(num_examples)
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def num_batches(num_examples: int, batch_size: int, drop_remainder: bool) -> int:
    """Batches per epoch: ``N // B`` when the ragged last batch is dropped, ``ceil(N / B)`` otherwise."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return num_examples // batch_size if drop_remainder else -(-num_examples // batch_size)


def run_length(num_examples: int, batch_size: int, epochs: int | None, steps: int | None) -> tuple[int, int]:
    """``(steps_per_epoch, total_steps)`` of a run given exactly one of ``epochs`` or ``steps``.

    An epoch is ``N // B`` steps (the ragged last batch is dropped in training).
    """
    per_epoch = num_batches(num_examples, batch_size, drop_remainder=True)
    if per_epoch == 0:
        raise ValueError(f"{num_examples} training examples are fewer than one batch of {batch_size}")
    if (epochs is None) == (steps is None):
        raise ValueError("give exactly one of epochs= or steps=")
    total = steps if steps is not None else int(epochs) * per_epoch  # type: ignore[arg-type]
    if total <= 0:
        raise ValueError(f"the run must have at least one step, got {total}")
    return per_epoch, total


def pad_batch(batch: Batch, batch_size: int) -> Batch:
    """Pad every array of ``batch`` along axis 0 to ``batch_size`` and add ``mask`` [B] (1 real, 0 padding).

    Padding repeats zeros, so the padded rows are finite; an existing ``mask`` is padded with zeros.
    """
    n = len(next(iter(batch.values())))
    if n > batch_size:
        raise ValueError(f"batch of {n} examples does not fit batch_size={batch_size}")
    out: Batch = {}
    for key, value in batch.items():
        pad = np.zeros((batch_size - n, *value.shape[1:]), value.dtype)
        out[key] = np.concatenate([value, pad], axis=0)
    if "mask" not in batch:
        out["mask"] = np.concatenate([np.ones(n, np.float32), np.zeros(batch_size - n, np.float32)])
    return out


def process_slice(batch_size: int, process_index: int, process_count: int) -> slice:
    """The contiguous rows ``[p * B/P, (p+1) * B/P)`` of a global batch that process ``p`` of ``P`` feeds."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index must lie in [0, {process_count}), got {process_index}")
    if batch_size % process_count:
        raise ValueError(
            f"global batch_size={batch_size} is not divisible by the {process_count} processes; "
            f"choose a multiple of {process_count}"
        )
    per = batch_size // process_count
    return slice(process_index * per, (process_index + 1) * per)


def iterate_batches(
    dataset: Arrays,
    batch_size: int,
    *,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
    drop_remainder: bool = True,
    start_batch: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[Batch]:
    """Yield ``{"images": [B,H,W,C], "labels": [B]}`` batches of one epoch, from batch ``start_batch`` on.

    With ``drop_remainder=False`` the ragged last batch is padded to ``batch_size`` and every batch carries a
    ``mask`` [B] so metrics count real examples only. Unlabeled datasets yield no ``labels``.
    With ``process_count > 1`` each yielded batch is this process's contiguous slice ``[B / P, ...]`` of the
    global batch (see :func:`process_slice`); only those rows are read from ``dataset``, so P processes together
    see exactly the global batches one process would.
    """
    n = len(dataset)
    order = epoch_indices(n, seed, epoch, shuffle)
    total = num_batches(n, batch_size, drop_remainder)
    if not 0 <= start_batch <= total:
        raise ValueError(f"start_batch={start_batch} outside [0, {total}] for {n} examples, batch_size={batch_size}")
    rows = process_slice(batch_size, process_index, process_count)
    local_size = rows.stop - rows.start
    for b in range(start_batch, total):
        global_idx = order[b * batch_size : (b + 1) * batch_size]
        # Padding is decided on the global batch, so a process may hold only padding rows of a ragged last batch.
        idx = global_idx[rows]
        batch: Batch = {"images": np.asarray(dataset.images[idx], np.float32)}
        if dataset.labels is not None:
            batch["labels"] = np.asarray(dataset.labels[idx], np.int32)
        if not drop_remainder:
            batch = pad_batch(batch, local_size)
        yield batch


def shard_for_devices(batch: Batch, num_devices: int) -> Batch:
    """Reshape each ``[B, ...]`` array to ``[num_devices, B // num_devices, ...]`` (for ``jax.pmap``)."""
    out: Batch = {}
    for key, value in batch.items():
        if value.shape[0] % num_devices:
            raise ValueError(
                f"global batch of {value.shape[0]} ({key!r}) is not divisible by the {num_devices} devices; "
                f"choose a batch size that is a multiple of {num_devices}"
            )
        out[key] = value.reshape(num_devices, value.shape[0] // num_devices, *value.shape[1:])
    return out
