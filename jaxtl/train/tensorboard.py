"""TensorBoard event files for a run, through tensorboardX's writer (no TensorFlow): ``tensorboard --logdir
WORKDIR`` shows them.

:class:`TensorBoard` takes the same records the fit loop writes to ``metrics.jsonl`` (:meth:`TensorBoard.record`:
``{"step", "split", metric: value, ...}`` -> scalars ``split/metric``), plus any scalar (the learning rate) and
images (a few input images; an autoencoder's inputs beside their reconstructions). Only process 0 of a
multi-process run writes; ``enabled=False`` makes every call a no-op, so a loop holds one object either way.
:func:`read_scalars` / :func:`read_images` read event files back (tests; a run's summary).
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Position and size of a run's bookkeeping, not metrics: never plotted.
NOT_SCALARS = ("step", "split", "epoch", "batch", "count")


def _writer_class() -> Any:
    try:
        from tensorboardX import SummaryWriter
    except ImportError as err:
        raise ImportError(
            "TensorBoard logging needs the tensorboardX package (pure Python, no TensorFlow): "
            "pip install tensorboardX; or turn TensorBoard off"
        ) from err
    return SummaryWriter


class TensorBoard:
    """Event files in ``logdir`` (created); ``enabled=False`` or a process other than 0 writes nothing.

    ``flush_secs``: pending events reach the file at least this often (and at :meth:`flush`/:meth:`close`).
    ``purge_step``: a resumed run passes the step it restored; TensorBoard then drops the earlier files' events
    from that step on (what the killed run logged past its checkpoint), as ``metrics.jsonl`` is truncated.
    """

    def __init__(
        self,
        logdir: str | os.PathLike,
        *,
        enabled: bool = True,
        flush_secs: int = 30,
        process_index: int | None = None,
        purge_step: int | None = None,
    ):
        if process_index is None:
            import jax

            process_index = jax.process_index()
        self.logdir = Path(logdir)
        self.enabled = bool(enabled) and process_index == 0
        self._writer: Any = None
        if self.enabled:
            writer = _writer_class()
            # The file name holds the time in seconds: a run resumed within the same second would reopen (and
            # truncate) the earlier file. The nanosecond suffix keeps them apart, in the order TensorBoard reads.
            self._writer = writer(
                logdir=str(self.logdir),
                flush_secs=flush_secs,
                purge_step=purge_step,
                filename_suffix=f".{time.time_ns()}",
            )

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self._writer is not None:
            self._writer.add_scalar(tag, float(value), int(step))

    def record(self, record: Mapping[str, Any]) -> None:
        """One ``metrics.jsonl`` record: every numeric field but the position fields as ``{split}/{field}``."""
        if self._writer is None:
            return
        step, split = int(record["step"]), str(record.get("split", "train"))
        for key, value in record.items():
            if key in NOT_SCALARS or isinstance(value, bool) or not isinstance(value, int | float | np.number):
                continue
            self._writer.add_scalar(f"{split}/{key}", float(value), step)

    def images(
        self,
        tag: str,
        images: np.ndarray,
        step: int,
        normalization: tuple[Sequence[float], Sequence[float]] | None = None,
        max_images: int = 8,
    ) -> None:
        """Up to ``max_images`` of ``images`` ``[N, H, W, C]`` (C 1 or 3) as one row: uint8 pixels, or floats in
        [0, 1], or normalised floats with their ``normalization`` ``(mean, std)`` undone first."""
        if self._writer is None:
            return
        row = _row(displayable(images[:max_images], normalization))
        self._writer.add_image(tag, row, int(step), dataformats="HWC")

    def reconstructions(
        self,
        tag: str,
        inputs: np.ndarray,
        outputs: np.ndarray,
        step: int,
        normalization: tuple[Sequence[float], Sequence[float]] | None = None,
        max_images: int = 8,
    ) -> None:
        """An autoencoder's ``inputs`` (top row) over its ``outputs`` (bottom row), ``[N, H, W, C]`` each."""
        if self._writer is None:
            return
        if np.shape(inputs) != np.shape(outputs):
            raise ValueError(f"inputs {np.shape(inputs)} and reconstructions {np.shape(outputs)} differ in shape")
        top = _row(displayable(inputs[:max_images], normalization))
        bottom = _row(displayable(outputs[:max_images], normalization))
        self._writer.add_image(tag, np.concatenate([top, bottom], axis=0), int(step), dataformats="HWC")

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> TensorBoard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def displayable(images: np.ndarray, normalization: tuple[Sequence[float], Sequence[float]] | None = None) -> np.ndarray:
    """``images`` ``[N, H, W, C]`` as uint8 RGB: uint8 kept, floats (normalised ones un-normalised first) clipped
    to [0, 1] and scaled; one channel repeated to three."""
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"images must be [N, H, W, C] with C 1 or 3, got shape {x.shape}")
    if x.dtype != np.uint8:
        x = x.astype(np.float32)
        if normalization is not None:
            mean, std = (np.asarray(v, np.float32).reshape(1, 1, 1, -1) for v in normalization)
            x = x * std + mean
        x = np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return x


def _row(images: np.ndarray, pad: int = 2) -> np.ndarray:
    n, h, w, c = images.shape
    out = np.zeros((h, n * w + (n - 1) * pad, c), np.uint8)
    for i in range(n):
        out[:, i * (w + pad) : i * (w + pad) + w] = images[i]
    return out


# --- reading event files back ---


def _records(path: Path) -> list[bytes]:
    """The payloads of a TFRecord file (length, masked CRC, data, masked CRC; CRCs not checked here)."""
    data = path.read_bytes()
    out, pos = [], 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        start = pos + 12
        if start + length + 4 > len(data):
            break  # a record still being written
        out.append(data[start : start + length])
        pos = start + length + 4
    return out


def _values(logdir: str | os.PathLike, field: str) -> dict[str, list[tuple[int, Any]]]:
    """``{tag: [(step, summary value), ...]}`` of the values holding ``field``, files in the order written (their
    names start with the creation time), honouring purges as TensorBoard does: a session start at step ``s`` drops
    what earlier files logged from ``s`` on."""
    from tensorboardX.proto import event_pb2

    def created(f: Path) -> tuple[int, str]:
        stamp = f.name.split(".")[3]
        return (int(stamp) if stamp.isdigit() else 0, f.name)

    out: dict[str, list[tuple[int, Any]]] = {}
    for f in sorted(Path(logdir).glob("events.out.tfevents.*"), key=created):
        for record in _records(f):
            event = event_pb2.Event.FromString(record)
            if event.HasField("session_log") and event.session_log.status == event.session_log.START:
                out = {tag: [(s, v) for s, v in seq if s < event.step] for tag, seq in out.items()}
            for value in event.summary.value:
                if value.HasField(field):
                    out.setdefault(value.tag, []).append((int(event.step), value))
    return out


def read_scalars(logdir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of every scalar in ``logdir``'s event files, as TensorBoard shows them."""
    return {tag: [(s, float(v.simple_value)) for s, v in seq] for tag, seq in _values(logdir, "simple_value").items()}


def read_images(logdir: str | os.PathLike) -> dict[str, list[tuple[int, np.ndarray]]]:
    """``{tag: [(step, uint8 [H, W, C]), ...]}`` of every image in ``logdir``'s event files (decoded PNGs)."""
    import io

    from PIL import Image

    return {
        tag: [(s, np.asarray(Image.open(io.BytesIO(v.image.encoded_image_string)))) for s, v in seq]
        for tag, seq in _values(logdir, "image").items()
    }
