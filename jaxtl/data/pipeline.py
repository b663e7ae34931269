"""The streaming image :class:`~jaxtl.data.source.Source`: grain workers decode files, apply torchvision's
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

Either way it is counted: one :class:`~jaxtl.data.loaders.SkippedFilesWarning` per ``batches()`` call (an epoch)
names the files, and :attr:`ImageSource.bad_files` keeps every name seen.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import hashlib
import os
import threading
import warnings
import weakref
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from jaxtl.data.batching import Batch, epoch_indices, num_batches, process_slice
from jaxtl.data.loaders import SkippedFilesWarning
from jaxtl.data.transforms import AUGMENTATIONS, Augment, ImageTransform, decode_image, example_rng
from jaxtl.models.registry import channel_stats, default_resize

__all__ = ["DATA_SPECS", "ImageSource", "default_workers", "open_source"]

DATA_SPECS = "digits | folder:DIR | csv:FILE (path,label rows) | npz:FILE (keys images, labels) | arrayrecord:DIR|GLOB"


class Reader(Protocol):
    def __len__(self) -> int: ...
    def name(self, i: int) -> str: ...
    def read(self, i: int) -> bytes: ...


def default_workers() -> int:
    """Worker processes when none are asked for: one per core but one (left for the training loop), at most 16."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(16, cores - 1))


@dataclasses.dataclass(frozen=True)
class _Plan:
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


class _LoadBatch:
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
        plan: _Plan,
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


_LIVE_STREAMS: weakref.WeakSet[_Stream] | None = None


def _close_live_streams() -> None:
    """At exit: close the streams still open, so grain unlinks the shared memory of batches nobody took (otherwise
    Python's resource tracker reports them as leaked at shutdown)."""
    for stream in list(_LIVE_STREAMS or ()):
        with contextlib.suppress(Exception):
            stream.close()


def _track(stream: _Stream) -> None:
    global _LIVE_STREAMS
    if _LIVE_STREAMS is None:  # registered on first use, not on import
        _LIVE_STREAMS = weakref.WeakSet()
        atexit.register(_close_live_streams)
    _LIVE_STREAMS.add(stream)


class _Stream:
    """One grain pipeline yielding batch after batch of a :class:`_Plan`, across epochs, from ``(epoch, batch)``.

    Kept by the source between ``batches()`` calls, so consecutive epochs reuse the worker processes (starting
    them costs seconds: each imports jax through grain) and the next epoch's first batches are ready in time.
    """

    _LENGTH = 1 << 50  # batches: a stream never runs out; it is closed or dropped instead

    def __init__(self, source: ImageSource, plan: _Plan, epoch: int, start: int) -> None:
        import grain

        load = _LoadBatch(source.reader, source._labels, source.transform, source.channels, plan, (epoch, start))
        ds = grain.MapDataset.range(self._LENGTH).map(load)
        read = grain.ReadOptions(num_threads=source.read_threads, prefetch_buffer_size=source.prefetch)
        it = ds.to_iter_dataset(read)
        if source.workers > 0:
            _let_grain_read_its_flags()
            opts = grain.MultiprocessingOptions(num_workers=source.workers, per_worker_buffer_size=source.prefetch)
            it = it.mp_prefetch(opts)
        self.plan = plan
        self.next = (epoch, start)
        self.owner: object | None = None  # the batches() generator reading it now
        self._it: Any = iter(it)
        _track(self)

    def take(self) -> Batch:
        shared = next(self._it)
        # Copied out of grain's shared memory (one memcpy, small next to decoding the batch): the segment is freed
        # now, whatever keeps the batch alive later (jax on CPU may alias host arrays instead of copying them).
        batch = {k: np.array(v, copy=True) for k, v in shared.items()}
        del shared
        where = (int(batch["where"][0]), int(batch["where"][1]))
        if where != self.next:  # grain keeps order; never hand out a batch of another position regardless
            raise RuntimeError(f"data stream out of step: got batch {where}, expected {self.next}")
        e, b = self.next
        self.next = (e, b + 1) if b + 1 < self.plan.per_epoch else (e + 1, 0)
        del batch["where"]
        return batch

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


def _let_grain_read_its_flags() -> None:
    """grain 0.2 reads an absl flag when it starts worker processes, which fails unless absl parsed the command
    line (an ``absl.app`` program). Outside one, mark only that flag as given (its default value): the same thing
    grain does for its own debug flags in the workers. Nothing else about absl's state changes."""
    from absl import flags

    name = "grain_enable_multiprocess_worker_profiling"
    if not flags.FLAGS.is_parsed() and name in flags.FLAGS:
        flags.FLAGS[name].present = 1


class ImageSource:
    """A streaming :class:`~jaxtl.data.source.Source` of encoded images (files or ArrayRecord records).

    ``reader`` fetches example ``i``'s encoded bytes (:class:`~jaxtl.data.sources.FileReader`,
    :class:`~jaxtl.data.sources.ArrayRecordReader`); ``labels`` int ``[N]``; batches are uint8
    ``[b, image_size, image_size, channels]`` with ``normalization = (mean, std)`` for the step to apply on device.
    ``augment`` is the training transform (:class:`~jaxtl.data.transforms.ImageTransform`); eval is
    Resize(``resize_size``, default :func:`~jaxtl.models.registry.default_resize`) + CenterCrop(``image_size``).
    ``workers`` decode in grain worker processes (0: in this process, with ``read_threads`` threads); each
    worker process also reads with ``read_threads`` threads and keeps ``prefetch`` batches ready.
    """

    def __init__(
        self,
        reader: Reader,
        labels: np.ndarray,
        class_names: Sequence[str],
        *,
        image_size: int,
        resize_size: int | None = None,
        channels: int = 3,
        augment: Augment = "none",
        workers: int = 0,
        read_threads: int = 2,
        prefetch: int = 2,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        origin: str = "image source",
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        mean_d, std_d = channel_stats(channels)
        mean = mean_d if mean is None else mean
        std = std_d if std is None else std
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean/std have {len(mean)}/{len(std)} entries for {channels}-channel images")
        if any(not s > 0 for s in std):
            raise ValueError(f"std must be > 0, got {tuple(std)}")
        if workers < 0 or read_threads < 1 or prefetch < 1:
            raise ValueError(
                f"workers must be >= 0, read_threads and prefetch >= 1; got {workers}, {read_threads}, {prefetch}"
            )
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise ValueError(f"{origin}: labels must be a non-empty [N] array, got shape {labels.shape}")
        if len(reader) != len(labels):
            raise ValueError(f"{origin}: {len(reader)} examples but {len(labels)} labels")
        if labels.min() < 0 or labels.max() >= len(class_names):
            raise ValueError(f"{origin}: labels must lie in [0, {len(class_names)})")
        self.reader = reader
        self._labels = labels.astype(np.int32)
        self.class_names: Sequence[str] = tuple(class_names)
        self.num_classes: int = len(self.class_names)
        resize = default_resize(image_size) if resize_size is None else resize_size
        self.transform = ImageTransform(image_size, resize, augment)
        self.channels = channels
        self.workers = workers
        self.read_threads = read_threads
        self.prefetch = prefetch
        self._normalization = (tuple(float(m) for m in mean), tuple(float(s) for s in std))
        self.origin = origin
        self.bad_files: set[str] = set()
        self._labeled = True
        self._stream: _Stream | None = None

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

    def with_options(self, **changes: Any) -> ImageSource:
        """The same examples with other options (``image_size``, ``augment``, ``workers``, ``mean``, ...)."""
        t = self.transform
        opts: dict[str, Any] = {
            "image_size": t.size,
            "resize_size": t.resize_size,
            "channels": self.channels,
            "augment": t.augment,
            "workers": self.workers,
            "read_threads": self.read_threads,
            "prefetch": self.prefetch,
            "mean": self._normalization[0],
            "std": self._normalization[1],
            "origin": self.origin,
        }
        if "image_size" in changes and "resize_size" not in changes:
            opts["resize_size"] = None
        opts.update(changes)
        src = ImageSource(self.reader, self._labels, self.class_names, **opts)
        src._labeled = self._labeled
        return src

    def unlabeled(self) -> ImageSource:
        """The same images without labels (``labels`` is None, batches carry no ``"labels"``)."""
        src = self.with_options()
        src._labeled = False
        return src

    def subset(self, indices: np.ndarray) -> ImageSource:
        """The examples at ``indices`` (e.g. a train/test split), same label space and options."""
        from jaxtl.data.sources import _Subset

        idx = np.asarray(indices, np.int64)
        src = self.with_options()
        src.reader = _Subset(self.reader, idx)
        src._labels = self._labels[idx]
        if len(idx) == 0:
            raise ValueError(f"{self.origin}: empty subset")
        return src

    def digest(self) -> str:
        """A short digest of what this source holds: its listing (file paths, or pack shards and their sizes),
        labels and class names, without reading any image. Part of a training run's fingerprint."""
        h = hashlib.sha256()
        h.update(repr((self.origin, tuple(self.class_names), self.image_shape)).encode())
        h.update(np.ascontiguousarray(self._labels).tobytes())
        _hash_reader(h, self.reader)
        return h.hexdigest()[:16]

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
        n = len(self)
        total = num_batches(n, batch_size, drop_remainder)
        if not 0 <= start_batch <= total:
            raise ValueError(
                f"start_batch={start_batch} outside [0, {total}] for {n} examples, batch_size={batch_size}"
            )
        rows = process_slice(batch_size, process_index, process_count)
        plan = _Plan(n, batch_size, seed, shuffle, drop_remainder, (rows.start, rows.stop), train)
        return self._iterate(plan, epoch, start_batch, total)

    def _open_stream(self, plan: _Plan, epoch: int, start_batch: int) -> tuple[_Stream, bool]:
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
            return _Stream(self, plan, epoch, start_batch), True
        self.close()
        self._stream = _Stream(self, plan, epoch, start_batch)
        return self._stream, False

    def _iterate(self, plan: _Plan, epoch: int, start_batch: int, total: int) -> Iterator[Batch]:
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
                warnings.warn(
                    f"{self.origin}, epoch {epoch}: {len(names)} unreadable image(s) {action}: {shown}",
                    SkippedFilesWarning,
                    stacklevel=2,
                )


# ---- data specs ----------------------------------------------------------------------------------------------------


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
    workers: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    labeled: bool = True,
    class_names: Sequence[str] | None = None,
) -> Any:
    """The :class:`~jaxtl.data.source.Source` named by a data spec (see :data:`DATA_SPECS`).

    ``folder:DIR``, ``csv:FILE`` and ``arrayrecord:DIR|GLOB`` stream (:class:`ImageSource`: uint8 batches,
    ``normalization = (mean, std)``, ``augment`` in ``"none" | "flip" | "rrc"``, ``workers`` grain worker
    processes, default :func:`default_workers`). ``digits`` and ``npz:FILE`` load in memory as an
    :class:`~jaxtl.data.dataset.ArrayDataset` normalised with ``(mean, std)`` (``augment`` must be ``"none"``:
    their augmentation is the training loop's array crop/flip). ``mean``/``std`` default to ImageNet's (grey: their
    average). ``class_names`` fixes the label order (e.g. a checkpoint's classes): a folder's sub-folders, a CSV's or
    pack's class names must be among them (integer CSV labels index them directly). ``labeled=False`` drops labels.
    Raises ValueError naming the spec for a bad spec, path, option or file.
    """
    from jaxtl.data import loaders

    if augment not in AUGMENTATIONS:
        raise ValueError(f"data spec {spec!r}: augment must be one of {AUGMENTATIONS}, got {augment!r}")
    if image_size < 1:
        raise ValueError(f"data spec {spec!r}: image size must be >= 1, got {image_size}")
    if channels not in (1, 3):
        raise ValueError(f"data spec {spec!r}: channels must be 1 or 3, got {channels}")
    mean_d, std_d = channel_stats(channels)
    mean = mean_d if mean is None else mean
    std = std_d if std is None else std
    kind, _, arg = spec.partition(":")
    try:
        if spec in ("digits", "npz") or kind == "npz":
            if augment != "none":
                raise ValueError(f"augment={augment!r} needs decoded originals: use folder:, csv: or arrayrecord:")
            if spec == "digits":
                ds = loaders.load_digits(size=image_size, channels=channels)
            elif arg:
                ds = loaders.load_npz(
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

            images = loaders.normalize(ds.images, mean, std)
            out = ArrayDataset(images, ds.labels, ds.num_classes, ds.class_names)
            return out if labeled or out.labels is None else out.unlabeled()
        if kind in ("folder", "csv", "arrayrecord") and arg:
            from jaxtl.data import sources

            listing: sources.ImageList | sources.ArrayRecordList
            if kind == "folder":
                listing = sources.list_image_folder(arg, class_names)
            elif kind == "csv":
                listing = sources.read_csv_list(arg)
            else:
                listing = sources.list_arrayrecord(arg)
            labels, names = listing.labels, listing.class_names
            if class_names is not None and kind != "folder":
                labels, names = _map_classes(labels, names, class_names, listing.origin)
            src = ImageSource(
                listing.reader(),
                labels,
                names,
                image_size=image_size,
                resize_size=resize_size,
                channels=channels,
                augment=augment,  # type: ignore[arg-type]
                workers=default_workers() if workers is None else workers,
                mean=mean,
                std=std,
                origin=listing.origin,
            )
            return src if labeled else src.unlabeled()
    except ValueError as e:
        raise ValueError(f"data spec {spec!r}: {e}") from None
    raise ValueError(f"{spec!r} is not a data spec; expected {DATA_SPECS}")


def _hash_reader(h: Any, reader: Any) -> None:
    """Feed what identifies ``reader``'s examples into ``h``: paths, subset indices, or shard names and sizes."""
    paths = getattr(reader, "paths", None)
    if paths is not None and hasattr(paths, "_blob"):
        h.update(paths._blob.tobytes())
        h.update(paths._offsets.tobytes())
    elif hasattr(reader, "base") and hasattr(reader, "indices"):
        h.update(np.ascontiguousarray(reader.indices).tobytes())
        _hash_reader(h, reader.base)
    elif hasattr(reader, "files"):
        for f in reader.files:
            h.update(f"{f}:{os.path.getsize(f) if os.path.exists(f) else -1};".encode())
    else:
        h.update(f"{type(reader).__name__}:{len(reader)}".encode())
