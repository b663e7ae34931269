"""Where a run's metric records go: the history in memory, ``WORKDIR/metrics.jsonl`` (one JSON object a line) and
TensorBoard event files in ``WORKDIR/tensorboard/`` (``tensorboard --logdir WORKDIR`` shows them). Process 0 of a
multi-process run writes the files.

A resumed run keeps the records up to the step it restored and drops what the killed run logged past its
checkpoint, in both: ``metrics.jsonl`` is rewritten, and TensorBoard is told to purge from the next step on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxtl.outputs import write_atomic
from jaxtl.train.tensorboard import TensorBoard

__all__ = ["METRICS", "TENSORBOARD", "RunLog", "kept_records"]

METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"  # the event files' folder: their names are TensorBoard's, so the run records the folder
PLOTTED = ("train", "eval", "eval_ema")  # splits whose records become TensorBoard scalars


def kept_records(path: Path, restored_step: int, main: bool) -> list[dict[str, Any]]:
    """The records of ``path`` up to ``restored_step`` (the file rewritten to hold only them, by process 0)."""
    if not path.exists():
        return []
    keep = []
    for ln in path.read_text().splitlines():
        try:
            rec = json.loads(ln)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
        if rec.get("step", 0) <= restored_step:
            keep.append(rec)
    if main:
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in keep))
    return keep


class RunLog:
    """The records of one run: ``history`` (kept in memory, returned with the result) and, with a ``workdir``, the
    JSON lines and (``tensorboard``) the event files. ``start_step``: the step a resumed run restored."""

    def __init__(
        self,
        workdir: Path | None,
        history: list[dict[str, Any]],
        *,
        tensorboard: bool = True,
        start_step: int = 0,
        main: bool = True,
    ):
        self.history = history
        self.metrics_path = workdir / METRICS if workdir is not None and main else None
        logdir = Path(workdir or ".") / TENSORBOARD
        enabled = tensorboard and workdir is not None and main
        # Files of an earlier attempt: TensorBoard drops their events from the next step on.
        purge = start_step + 1 if enabled and any(logdir.glob("events.out.tfevents.*")) else None
        self.tb = TensorBoard(logdir, enabled=enabled, process_index=0, purge_step=purge)

    @property
    def tensorboard(self) -> bool:
        return self.tb.enabled

    def log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if self.metrics_path is not None:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        if record.get("split") in PLOTTED:
            self.tb.record(record)

    def images(self, tag: str, images: np.ndarray, step: int, normalization: Any = None) -> None:
        """A few images ``[N, H, W, C]`` (uint8, or floats with their ``normalization`` undone) as one picture."""
        self.tb.images(tag, images, step, normalization)

    def reconstructions(
        self, inputs: np.ndarray, outputs: np.ndarray, step: int, normalization: Sequence[Any] | None = None
    ) -> None:
        self.tb.reconstructions("reconstructions", inputs, outputs, step, normalization)  # type: ignore[arg-type]

    def close(self) -> None:
        self.tb.close()
