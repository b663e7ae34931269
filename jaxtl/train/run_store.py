"""A run's resumable checkpoints: ``WORKDIR/checkpoints`` (Orbax), the latest ``keep`` plus the best by an eval
metric, each with a SHA-256 of its arrays. A damaged newest checkpoint is reported, set aside in
``WORKDIR/damaged_checkpoints/`` and the previous one used. The work directory itself (lock, identity, signals)
belongs to the :class:`~jaxtl.lifecycle.Run` that opened it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import shutil
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxtl.errors import CheckpointDamagedError
from jaxtl.lifecycle import WorkdirError
from jaxtl.outputs import os_error_message

__all__ = ["RunStore", "checkpoint_bytes", "digest", "sync"]


def sync(name: str) -> None:
    """A barrier across the processes of a multi-process run (nothing in one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _leaves_dict(state: Any) -> dict[str, np.ndarray]:
    # Flat leaves keep Orbax away from optax's empty MaskedNode/NamedTuple nodes; the tree comes from a fresh state.
    return {f"{i:05d}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(state))}


def digest(leaves: Mapping[str, Any]) -> str:
    """SHA-256 over the sorted ``{key: array}`` (key, dtype, shape and bytes of each)."""
    h = hashlib.sha256()
    for key in sorted(leaves):
        arr = np.ascontiguousarray(np.asarray(leaves[key]))
        h.update(f"{key}:{arr.dtype.str}:{arr.shape};".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _from_leaves(template: Any, leaves: Mapping[str, Any], where: str) -> Any:
    expected = jax.tree.leaves(template)
    if len(leaves) != len(expected):
        raise CheckpointDamagedError(
            f"checkpoint {where} holds {len(leaves)} arrays, this run's state has {len(expected)}"
        )
    ordered = [np.asarray(leaves[f"{i:05d}"]) for i in range(len(expected))]
    for i, (got, want) in enumerate(zip(ordered, expected)):
        if got.shape != np.shape(want):
            raise CheckpointDamagedError(
                f"checkpoint {where}: array {i} has shape {got.shape}, this run expects {np.shape(want)}"
            )
    return jax.tree.unflatten(jax.tree.structure(template), ordered)


def checkpoint_bytes(state: Any) -> int:
    """The bytes of one run checkpoint's arrays (params, batch_stats, optimizer state, step, rng)."""
    return int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(state)))


def _reason(e: BaseException) -> str:
    """``Type: message`` of a failed read, without the tensorstore spec (a ~2 kB JSON dump) that ends its text."""
    text = str(e).split(" [tensorstore_spec", 1)[0].strip()
    return f"{type(e).__name__}: {text}"


def _raised_by_a_closed_loop(args: Any) -> bool:
    if not (isinstance(args.exc_value, RuntimeError) and str(args.exc_value) == "Event loop is closed"):
        return False
    return any(frame.f_code.co_name == "call_soon_threadsafe" for frame, _ in traceback.walk_tb(args.exc_traceback))


class _DamagedReads(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" records for reads of checkpoints already reported
    damaged (their folders in ``folders``); every other record passes."""

    def __init__(self) -> None:
        super().__init__()
        self.folders: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return exc is None or not any(folder in str(exc) for folder in self.folders)


_DAMAGED_READS = _DamagedReads()


def _quiet_failed_reads(folder: str) -> None:
    """After a failed restore of the checkpoint in ``folder``, keep the reads it left in flight from printing
    tracebacks around the one-line warning.

    Orbax runs a restore in an event loop of its own and closes it when the first read fails. tensorstore's other
    reads still complete later: each one's wake-up call to the closed loop raises ``RuntimeError('Event loop is
    closed')`` in a tensorstore thread (Python prints it as an ignored exception), and each failed read left in a
    task logs "Task exception was never retrieved" when the task is collected. Those, and only those, are dropped:
    the closed-loop error only when raised in ``call_soon_threadsafe``, the task records only when their error
    names a checkpoint already reported damaged; every other ignored exception and log record reaches its usual
    handler. Installed once per process, on the first failed restore.
    """
    _DAMAGED_READS.folders.add(folder)
    asyncio_log = logging.getLogger("asyncio")
    if _DAMAGED_READS not in asyncio_log.filters:
        asyncio_log.addFilter(_DAMAGED_READS)
    if not getattr(sys.unraisablehook, "_jaxtl_drops_closed_loop_wakeups", False):
        sys.unraisablehook = _closed_loop_filter(sys.unraisablehook)


def _closed_loop_filter(previous: Callable[[Any], object]) -> Callable[[Any], None]:
    """An unraisable-exception hook that drops a closed loop's wake-up errors and hands the rest to ``previous``."""

    def hook(args: Any) -> None:
        if not _raised_by_a_closed_loop(args):
            previous(args)

    hook._jaxtl_drops_closed_loop_wakeups = True  # type: ignore[attr-defined]
    return hook


@dataclasses.dataclass
class RunStore:
    """The checkpoints of one run in ``workdir/checkpoints``: Orbax manager, digests, damaged-checkpoint handling.
    ``readonly`` opens it to inspect (tests, tools) without a run."""

    workdir: Path
    keep: int = 3
    best_metric: str | None = None
    best_mode: str = "max"
    readonly: bool = False

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.ckpt_dir = self.workdir / "checkpoints"
        self.main = jax.process_index() == 0
        self.manager = self._manager()

    def _manager(self) -> Any:
        import orbax.checkpoint as ocp

        policies: list[Any] = [ocp.checkpoint_managers.LatestN(self.keep)]
        if self.best_metric is not None:
            metric = self.best_metric
            policies.append(
                ocp.checkpoint_managers.BestN(
                    get_metric_fn=lambda m: m[metric],
                    reverse=self.best_mode == "min",
                    n=1,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            cleanup_tmp_directories=not self.readonly,
            enable_async_checkpointing=False,
            read_only=self.readonly,
        )
        return ocp.CheckpointManager(self.ckpt_dir.absolute(), options=options)

    def _step_dirs(self) -> list[int]:
        # Orbax lists only steps it considers complete; a step folder missing its metadata must still be reported.
        d = self.ckpt_dir
        found = {int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit()} if d.exists() else set()
        if getattr(self, "manager", None) is not None:
            found |= set(self.manager.all_steps())
        return sorted(found, reverse=True)

    def save(self, state: Any, position: Mapping[str, int], metrics: Mapping[str, float] | None = None) -> None:
        """Write one complete checkpoint (state leaves + data position) at ``position["step"]``; blocks until done.

        In a multi-process run every process calls this with the same (replicated) state; Orbax coordinates.
        """
        import orbax.checkpoint as ocp

        leaves = _leaves_dict(state)
        meta = {**position, "sha256": digest(leaves)}
        args = ocp.args.Composite(state=ocp.args.StandardSave(leaves), meta=ocp.args.JsonSave(meta))
        try:
            self.manager.save(position["step"], args=args, metrics=dict(metrics) if metrics else None, force=True)
            self.manager.wait_until_finished()
        except OSError as e:
            what = f"cannot write checkpoint step {position['step']}"
            raise WorkdirError(os_error_message(what, e, self.ckpt_dir)) from None
        except Exception as e:  # tensorstore reports a full disk as its own error type with a long text
            if "No space left" in str(e) or "ENOSPC" in str(e):
                free = shutil.disk_usage(self.workdir).free / 2**20
                raise WorkdirError(
                    f"cannot write checkpoint step {position['step']} to {self.ckpt_dir}: no space left on device "
                    f"({free:.1f} MiB free; one checkpoint needs about {checkpoint_bytes(state) / 2**20:.1f} MiB); "
                    "free some space and run the same command again to resume"
                ) from None
            raise

    def restore_step(self, template: Any, step: int) -> tuple[Any, dict[str, int]]:
        """The state and data position of checkpoint ``step``; :class:`CheckpointDamagedError` if unreadable."""
        import orbax.checkpoint as ocp

        where = str(self.ckpt_dir / str(step))
        target = _leaves_dict(template)
        # Orbax writes this file as part of the commit; its absence means the folder is not a finished save.
        if not (Path(where) / "_CHECKPOINT_METADATA").is_file():
            raise CheckpointDamagedError(f"checkpoint step {step} at {where} lacks its _CHECKPOINT_METADATA file")
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
            )
            meta = dict(restored["meta"])
            leaves = {k: np.asarray(v) for k, v in restored["state"].items()}
        except Exception as e:  # Orbax/tensorstore raise many types for unreadable files; all mean "damaged" here.
            _quiet_failed_reads(where)
            raise CheckpointDamagedError(f"checkpoint step {step} at {where} cannot be read: {_reason(e)}") from e
        want = meta.pop("sha256", None)
        if want is not None and set(leaves) == set(target) and digest(leaves) != want:
            raise CheckpointDamagedError(f"checkpoint step {step} at {where}: arrays do not match their SHA-256")
        for key in ("step", "epoch", "batch"):
            if not isinstance(meta.get(key), int):
                raise CheckpointDamagedError(f"checkpoint step {step} at {where}: metadata lacks an integer {key!r}")
        return _from_leaves(template, leaves, where), meta

    def restore_latest(self, template: Any) -> tuple[Any, dict[str, int]] | None:
        """The newest readable checkpoint, or None when there is none. Damaged newer ones are warned about (step
        and path), moved to ``workdir/damaged_checkpoints/``, and the previous one is used; if every checkpoint is
        damaged the run stops (:class:`CheckpointDamagedError`) rather than silently starting over."""
        damaged: list[int] = []
        result = None
        for step in self._step_dirs():
            try:
                result = self.restore_step(template, step)
                break
            except CheckpointDamagedError as e:
                damaged.append(step)
                warnings.warn(f"{e}; falling back to the previous checkpoint", RuntimeWarning, stacklevel=3)
        if damaged and result is None:
            raise CheckpointDamagedError(
                f"every checkpoint in {self.ckpt_dir} is damaged (steps {damaged}); move them away to start afresh"
            )
        if damaged and not self.readonly:
            self.manager.close()
            if self.main:
                self._set_aside(damaged)
            sync("jaxtl_set_aside_damaged")
            self.manager = self._manager()
        return result

    def _set_aside(self, steps: list[int]) -> None:
        # Out of Orbax's folder, so it neither lists them nor refuses to write those steps again; kept to inspect.
        aside = self.workdir / "damaged_checkpoints"
        aside.mkdir(exist_ok=True)
        for step in steps:
            src = self.ckpt_dir / str(step)
            if src.exists():
                dst = aside / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
                shutil.move(str(src), str(dst))
                warnings.warn(f"damaged checkpoint step {step} moved from {src} to {dst}", RuntimeWarning, stacklevel=4)

    def close(self) -> None:
        manager = getattr(self, "manager", None)
        if manager is not None:
            with contextlib.suppress(Exception):
                manager.wait_until_finished()
            manager.close()
            self.manager = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
