"""The streaming image :class:`~jaxtl.data.protocol.Source`: grain workers decode files, apply torchvision's
transforms and batch uint8 pixels; memory does not grow with the dataset.

Order and content are functions of position only. Epoch ``e``'s order is ``epoch_indices(N, seed, e)``; global
batch ``b`` holds positions ``[b * B, (b + 1) * B)`` of it and process ``p`` of ``P`` takes its
``process_slice`` rows; example ``i``'s crop and flip come from ``example_rng(seed, e, i)``. A grain
``MapDataset`` maps stream position ``k`` to ``(epoch, batch)`` and then to this process's rows of that batch
(decoded, transformed, stacked), and (``workers > 0``) spreads whole batches over worker processes
(``mp_prefetch``), returning them in order. So the batches are bit-identical for any number of workers and
processes, and a resumed run needs only its step (``start_batch``). The stream runs across epochs: asking for the
next epoch with the same options keeps the workers (and the batches they prepared) instead of starting new ones.

Bad files found mid-stream (corrupt, truncated, zero bytes, gone) never stop a run:

- in batches without a mask (``drop_remainder=True``, training) the example is replaced by the next readable one
  in index order (``i + 1, i + 2, ...`` wrapping around; its own label, ``i``'s augmentation draws), so the batch
  keeps its shape and every row is a real image;
- in batches with a mask (``drop_remainder=False``, evaluation and feature extraction) it becomes a zero image with
  mask 0, like padding, so no metric counts it.

Either way it is counted: one :class:`~jaxtl.data.in_memory.SkippedFilesWarning` per ``batches()`` call (an epoch)
names the files, and :attr:`ImageSource.bad_files` keeps every name seen.

Start-up: a worker process costs about as much to start (a fresh interpreter importing grain and Pillow, no jax:
see :mod:`jaxtl.data.workers`) as decoding a few hundred images, so an evaluation pass over fewer than
:data:`IN_PROCESS_BELOW` examples decodes in this process (threads) instead: the batches are the same either way.
:meth:`ImageSource.prepare` starts a pass's workers and its first batches ahead of the ``batches()`` call that
takes them (fine-tuning does so before it builds the head and compiles), and stopping a stream's workers happens in
the background.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from jaxtl.data.batching import Batch, num_batches, process_slice
from jaxtl.data.constants import channel_stats, default_resize
from jaxtl.data.decoding import LoadBatch, Plan, Reader
from jaxtl.data.in_memory import SkippedFilesWarning
from jaxtl.data.stream import IN_PROCESS_BELOW, Stream
from jaxtl.data.transforms import ImageTransform
from jaxtl.data.workers import check_worker_count, usable_cores, warn_at_caller

__all__ = ["IN_PROCESS_BELOW", "ImageSource", "default_workers"]


def default_workers() -> int:
    """Worker processes when none are asked for: one per core but one (left for the training loop), at most 16."""
    return max(0, min(16, usable_cores() - 1))


class ImageSource:
    """A streaming :class:`~jaxtl.data.protocol.Source` of encoded images (files or ArrayRecord records).

    ``reader`` fetches example ``i``'s encoded bytes (:class:`~jaxtl.data.listing.FileReader`,
    :class:`~jaxtl.data.listing.ArrayRecordReader`); ``labels`` int ``[N]``; batches are uint8
    ``[b, size, size, channels]`` with ``normalization = (mean, std)`` for the step to apply on device (default
    ImageNet's, grey: their averages). ``transform`` (:class:`~jaxtl.data.transforms.ImageTransform`) turns one
    decoded image into ``[size, size, channels]``: its training augmentation, its eval Resize + CenterCrop, the
    model card's interpolation for both.
    ``workers`` decode in grain worker processes (0: in this process, with ``read_threads`` threads); each
    worker process also reads with ``read_threads`` threads and keeps ``prefetch`` batches ready.
    ``labels=None`` makes an unlabeled source (batches carry no ``"labels"``).
    """

    def __init__(
        self,
        reader: Reader,
        labels: np.ndarray | None,
        class_names: Sequence[str],
        *,
        transform: ImageTransform,
        channels: int = 3,
        workers: int = 0,
        read_threads: int = 2,
        prefetch: int = 2,
        normalization: tuple[Sequence[float], Sequence[float]] | None = None,
        origin: str = "image source",
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        mean, std = channel_stats(channels) if normalization is None else normalization
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean/std have {len(mean)}/{len(std)} entries for {channels}-channel images")
        if any(not s > 0 for s in std):
            raise ValueError(f"std must be > 0, got {tuple(std)}")
        if workers < 0 or read_threads < 1 or prefetch < 1:
            raise ValueError(
                f"workers must be >= 0, read_threads and prefetch >= 1; got {workers}, {read_threads}, {prefetch}"
            )
        check_worker_count(workers)
        labeled = labels is not None
        labels = np.asarray(labels) if labeled else np.zeros(len(reader), np.int32)
        if labels.ndim != 1 or len(labels) == 0:
            raise ValueError(f"{origin}: labels must be a non-empty [N] array, got shape {labels.shape}")
        if len(reader) != len(labels):
            raise ValueError(f"{origin}: {len(reader)} examples but {len(labels)} labels")
        if labeled and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise ValueError(f"{origin}: labels must lie in [0, {len(class_names)})")
        self.reader = reader
        self._labels = labels.astype(np.int32)  # zeros when unlabeled: the workers' rows need some label
        self.class_names: Sequence[str] = tuple(class_names)
        self.num_classes: int = len(self.class_names)
        self.transform = transform
        self.channels = channels
        self.workers = workers
        self.read_threads = read_threads
        self.prefetch = prefetch
        self._normalization = (tuple(float(m) for m in mean), tuple(float(s) for s in std))
        self.origin = origin
        self.bad_files: set[str] = set()
        self._labeled = labeled
        self._stream: Stream | None = None

    def __len__(self) -> int:
        return len(self._labels)

    def __repr__(self) -> str:
        t = self.transform
        return (
            f"ImageSource({self.origin}, {len(self)} images, {self.num_classes} classes, "
            f"{t.size}px (resize {t.resize_size}), augment={t.augment!r}, workers={self.workers})"
        )

    @property
    def labels(self) -> np.ndarray | None:
        """All labels ``[N]`` int32, in example order (from the listing: nothing is decoded); None if unlabeled."""
        return self._labels if self._labeled else None

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(mean, std)`` per channel, applied on device to ``images / 255``."""
        return self._normalization

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.transform.size, self.transform.size, self.channels)

    def batch_layout(
        self, batch_size: int, *, drop_remainder: bool = True, process_count: int = 1
    ) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]:
        """``{key: (shape, dtype)}`` of the batches :meth:`batches` yields with these options (every batch of a
        pass has it: the ragged last one is padded, or dropped), known without reading an image."""
        b = process_slice(batch_size, 0, process_count).stop
        out: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {"images": ((b, *self.image_shape), np.dtype(np.uint8))}
        if self._labeled:
            out["labels"] = ((b,), np.dtype(np.int32))
        if not drop_remainder:
            out["mask"] = ((b,), np.dtype(np.float32))
        return out

    def prepare(self, batch_size: int, **options: Any) -> None:
        """Start the workers of the pass ``batches(batch_size, **options)`` would give and fetch its first batch in
        the background, so that call (made soon after, with the same options) finds them ready. Does nothing if
        this source's kept stream is being read."""
        plan, epoch, start, total = self._plan(batch_size, **options)
        if start == total:
            return
        stream, private = self._open_stream(plan, epoch, start)
        if private:
            stream.close()
        else:
            stream.prime()

    def with_options(self, **changes: Any) -> ImageSource:
        """The same examples with other options: the transform's (``image_size``, ``resize_size``, default
        :func:`~jaxtl.data.constants.default_resize` of a new ``image_size``; ``augment``, ``interpolation``; or a
        whole ``transform``), ``workers``, ``normalization``, ... (``mean``/``std`` change one half of it)."""
        t = self.transform
        sized = {k: changes.pop(k) for k in ("image_size", "resize_size") if k in changes}
        if "image_size" in sized:
            size = sized["image_size"]
            t = dataclasses.replace(t, size=size, resize_size=sized.get("resize_size") or default_resize(size))
        elif "resize_size" in sized:
            t = dataclasses.replace(t, resize_size=sized["resize_size"])
        kept = {k: changes.pop(k) for k in ("augment", "interpolation") if k in changes}
        opts: dict[str, Any] = {
            "transform": dataclasses.replace(t, **kept),
            "channels": self.channels,
            "workers": self.workers,
            "read_threads": self.read_threads,
            "prefetch": self.prefetch,
            "normalization": self._normalization,
            "origin": self.origin,
        }
        if "mean" in changes or "std" in changes:
            mean, std = changes.pop("mean", self._normalization[0]), changes.pop("std", self._normalization[1])
            changes["normalization"] = (mean, std)
        opts.update(changes)
        return ImageSource(self.reader, self.labels, self.class_names, **opts)

    def unlabeled(self) -> ImageSource:
        """The same images without labels (``labels`` is None, batches carry no ``"labels"``)."""
        src = self.with_options()
        src._labeled = False
        return src

    def subset(self, indices: np.ndarray) -> ImageSource:
        """The examples at ``indices`` (e.g. a train/test split), same label space and options."""
        from jaxtl.data.listing import SubsetReader

        idx = np.asarray(indices, np.int64)
        src = self.with_options()
        src.reader = SubsetReader(self.reader, idx)
        src._labels = self._labels[idx]
        if len(idx) == 0:
            raise ValueError(f"{self.origin}: empty subset")
        return src

    def digest(self) -> str:
        """16 hex characters identifying the examples by root-relative name, file size and label (ArrayRecord:
        shard names, sizes and record count), however the root's path is spelled; no image is read. Not the
        options (size, augmentation, ...). Details: :mod:`jaxtl.data.identity`."""
        from jaxtl.data.identity import source_digest

        return source_digest(self.reader, self.labels, self.class_names)

    def example_names(self, indices: Sequence[int] | np.ndarray | None = None) -> list[str] | None:
        """The root-relative name of each example at ``indices`` (default all, in order), e.g. ``cat/x.jpg``;
        ArrayRecord names are read from the records asked for."""
        from jaxtl.data.identity import example_names

        return example_names(self.reader, indices)

    def content_keys(self, indices: Sequence[int] | np.ndarray) -> list[str]:
        """16 hex characters of the sha256 of each example's encoded bytes at ``indices`` (only those are read);
        ValueError naming an example that cannot be read."""
        from jaxtl.data.identity import content_keys

        return content_keys(self.reader, indices)

    def close(self) -> None:
        """Stop the worker processes kept between epochs (also done when the source is garbage collected)."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:  # noqa: SIM105  (not contextlib.suppress: at interpreter shutdown module globals may be gone)
            self.close()
        except Exception:
            pass

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
        """One epoch from ``start_batch`` on: this process's rows of each global batch (see the module doc).

        Yields ``{"images": uint8 [b, H, W, C], "labels": int32 [b]}`` with ``b = batch_size / process_count``,
        plus ``"mask"`` float32 ``[b]`` when ``drop_remainder=False`` (0 for padding and unreadable files).
        Asking for the next epoch with the same options continues the same grain pipeline (the workers stay up
        and have its first batches ready); anything else starts a new one.
        """
        plan, epoch, start, total = self._plan(
            batch_size,
            seed=seed,
            epoch=epoch,
            shuffle=shuffle,
            drop_remainder=drop_remainder,
            start_batch=start_batch,
            process_index=process_index,
            process_count=process_count,
            train=train,
        )
        return self._iterate(plan, epoch, start, total)

    def _plan(
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
    ) -> tuple[Plan, int, int, int]:
        """``(plan, epoch, start batch, batches in the epoch)`` of a ``batches()`` call (its defaults are these)."""
        n = len(self)
        total = num_batches(n, batch_size, drop_remainder)
        if not 0 <= start_batch <= total:
            raise ValueError(
                f"start_batch={start_batch} outside [0, {total}] for {n} examples, batch_size={batch_size}"
            )
        rows = process_slice(batch_size, process_index, process_count)
        return (
            Plan(n, batch_size, seed, shuffle, drop_remainder, (rows.start, rows.stop), train),
            epoch,
            start_batch,
            total,
        )

    def _open_stream(self, plan: Plan, epoch: int, start_batch: int) -> tuple[Stream, bool]:
        """The kept stream when it is at ``(epoch, start_batch)`` of ``plan`` and idle, else a new one (kept unless
        the kept one is being read: then a private one). Returns ``(stream, private)``."""
        kept = self._stream
        # Unshuffled eval passes are the same for every epoch (no order, no draws): evaluation after evaluation
        # continues one stream whatever epoch it names.
        same = not plan.shuffle and not plan.train
        if (
            kept is not None
            and kept.owner is None
            and kept.plan == plan
            and (kept.next == (epoch, start_batch) or (same and kept.next[1] == start_batch))
        ):
            return kept, False
        if kept is not None and kept.owner is not None:
            return self._new_stream(plan, epoch, start_batch), True
        self.close()
        self._stream = self._new_stream(plan, epoch, start_batch)
        return self._stream, False

    def _new_stream(self, plan: Plan, epoch: int, start_batch: int) -> Stream:
        load = LoadBatch(self.reader, self._labels, self.transform, self.channels, plan, (epoch, start_batch))
        return Stream(load, workers=self.workers, read_threads=self.read_threads, prefetch=self.prefetch)

    def _iterate(self, plan: Plan, epoch: int, start_batch: int, total: int) -> Iterator[Batch]:
        if start_batch == total:
            return
        stream, private = self._open_stream(plan, epoch, start_batch)
        token = object()
        stream.owner = token
        bad: set[int] = set()
        try:
            for b in range(start_batch, total):
                try:
                    batch = stream.take()
                except BaseException:
                    private = True  # a failed stream is not kept
                    if self._stream is stream:
                        self._stream = None
                    raise
                if b == total - 1 and stream.owner is token:
                    # All of this epoch is taken: the next epoch may continue the stream even while this
                    # generator waits, suspended at its last batch, to be closed.
                    stream.owner = None
                flagged = batch.pop("bad")
                bad.update(int(i) for i in flagged[flagged >= 0])
                if plan.drop_remainder:
                    del batch["mask"]
                if not self._labeled:
                    del batch["labels"]
                yield batch
        finally:
            if stream.owner is token:
                stream.owner = None
            if private:
                stream.close()
            if bad:
                names = [self.reader.name(i) for i in sorted(bad)]
                self.bad_files.update(names)
                shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
                action = "replaced by the next readable image" if plan.drop_remainder else "masked out"
                warn_at_caller(
                    f"{self.origin}, epoch {epoch}: {len(names)} unreadable image(s) {action}: {shown}",
                    SkippedFilesWarning,
                )
