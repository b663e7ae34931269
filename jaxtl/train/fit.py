"""The fit loop: data-parallel steps, periodic eval, JSON-lines metrics, Orbax checkpoints and exact resume.

A run is fully determined by its arguments: the data order of epoch ``e`` is ``default_rng([seed, e])``, the ragged
last train batch is dropped, and the state (params, batch_stats, opt_state, step, rng) is checkpointed together with
the data position (epoch, batch). Restarting ``fit`` with the same arguments and ``workdir`` restores the latest
complete checkpoint, skips the batches already consumed, and finishes bit-identical (on CPU) to an uninterrupted run.

Faults: a checkpoint carries a SHA-256 of its arrays; a newest checkpoint that cannot be read or does not match
(truncated or corrupted files, missing metadata) is reported with a warning, moved to ``workdir/damaged_checkpoints``
and the previous one is used. An unwritable work directory or one without room for a checkpoint is an error
(:class:`WorkdirError`) before training starts.

Multi-process (``jax.distributed``): every process runs ``fit`` with the same arguments and a shared ``workdir``;
each feeds its slice of every global batch, all of them call the Orbax save/restore (Orbax coordinates the
writes), and only process 0 writes ``metrics.jsonl`` and shows progress.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import pathlib
import shutil
import time
import warnings
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from jaxtl.data.batching import iterate_batches, run_length
from jaxtl.data.dataset import ArrayDataset
from jaxtl.train.freeze import Trainable
from jaxtl.train.optim import make_optimizer
from jaxtl.train.parallel import Parallel, prefetch_to_device
from jaxtl.train.state import TrainState
from jaxtl.train.step import Augment, eval_step, train_step


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stopped before checkpointing the bad state."""

    def __init__(self, step: int, loss: float, last_checkpoint: int | None):
        self.step, self.loss, self.last_checkpoint = step, loss, last_checkpoint
        where = f"last good checkpoint: step {last_checkpoint}" if last_checkpoint is not None else "no checkpoint"
        super().__init__(f"non-finite loss {loss} at step {step}; stopped ({where})")


class WorkdirError(OSError):
    """The work directory cannot hold this run's checkpoints (not writable, or too little free space)."""


class CheckpointDamagedError(RuntimeError):
    """A checkpoint could not be read back, or its arrays do not match the digest written with it."""


@dataclasses.dataclass
class FitResult:
    """The final state (host arrays), its ``{"params", "batch_stats"}`` and the metrics history (dicts)."""

    state: TrainState
    variables: dict[str, Any]
    history: list[dict[str, Any]]


# --- run checkpoints -------------------------------------------------------------------------------------------


def _leaves_dict(state: TrainState) -> dict[str, np.ndarray]:
    # Flat leaves keep Orbax away from optax's empty MaskedNode/NamedTuple nodes; the tree comes from a fresh state.
    return {f"{i:05d}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(state))}


def _digest(leaves: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for key in sorted(leaves):
        arr = np.ascontiguousarray(np.asarray(leaves[key]))
        h.update(f"{key}:{arr.dtype.str}:{arr.shape};".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _from_leaves(template: TrainState, leaves: dict[str, Any], where: str) -> TrainState:
    expected = jax.tree.leaves(template)
    if len(leaves) != len(expected):
        raise ValueError(f"checkpoint {where} holds {len(leaves)} arrays, this run's state has {len(expected)}")
    ordered = [np.asarray(leaves[f"{i:05d}"]) for i in range(len(expected))]
    for i, (got, want) in enumerate(zip(ordered, expected)):
        if got.shape != np.shape(want):
            raise ValueError(f"checkpoint {where}: array {i} has shape {got.shape}, this run expects {np.shape(want)}")
    return jax.tree.unflatten(jax.tree.structure(template), ordered)  # type: ignore[no-any-return]


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def checkpoint_bytes(state: TrainState) -> int:
    """The bytes of one run checkpoint's arrays (params, batch_stats, optimizer state, step, rng)."""
    return int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(state)))


def check_workdir(workdir: str | pathlib.Path, need_bytes: int = 0) -> pathlib.Path:
    """Create ``workdir`` and prove it writable (a probe file) with ``need_bytes`` free; raise :class:`WorkdirError`.

    Run before training so a bad directory fails in seconds, not at the first checkpoint.
    """
    path = pathlib.Path(workdir)
    if path.exists() and not path.is_dir():
        raise WorkdirError(f"work directory {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"cannot create work directory {path}: {e.strerror or e}") from e
    probe = path / f".jaxtl-write-probe-{os.getpid()}-{jax.process_index()}"
    try:
        with probe.open("wb") as f:
            f.write(b"jaxtl")
        probe.unlink()
    except OSError as e:
        raise WorkdirError(f"work directory {path} is not writable: {e.strerror or e}") from e
    free = shutil.disk_usage(path).free
    if free < need_bytes:
        raise WorkdirError(
            f"work directory {path} has {free / 2**20:.1f} MiB free; one checkpoint needs about "
            f"{need_bytes / 2**20:.1f} MiB"
        )
    return path


def checkpoint_manager(
    directory: str | pathlib.Path, keep: int = 3, best_metric: str | None = None, best_mode: str = "max"
) -> ocp.CheckpointManager:
    """An Orbax manager keeping the latest ``keep`` checkpoints and the best one by eval ``best_metric``."""
    policies: list[Any] = [ocp.checkpoint_managers.LatestN(keep)]
    if best_metric is not None:
        policies.append(
            ocp.checkpoint_managers.BestN(
                get_metric_fn=lambda m: m[best_metric],
                reverse=best_mode == "min",
                n=1,
                keep_checkpoints_without_metrics=False,
            )
        )
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        cleanup_tmp_directories=True,
        enable_async_checkpointing=False,
    )
    return ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options)


def save_run(
    manager: ocp.CheckpointManager,
    state: TrainState,
    position: dict[str, int],
    metrics: dict[str, float] | None = None,
) -> None:
    """Write one complete checkpoint (state leaves + data position) at ``position["step"]``; blocks until done.

    In a multi-process run every process calls this with the same (replicated) state; Orbax coordinates.
    """
    leaves = _leaves_dict(state)
    meta = {**position, "sha256": _digest(leaves)}
    args = ocp.args.Composite(state=ocp.args.StandardSave(leaves), meta=ocp.args.JsonSave(meta))
    manager.save(position["step"], args=args, metrics=metrics, force=True)
    manager.wait_until_finished()


def _step_dirs(manager: ocp.CheckpointManager) -> list[int]:
    # Orbax lists only steps it considers complete; a step folder missing its metadata must still be reported.
    directory = pathlib.Path(manager.directory)
    found = (
        {int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit()} if directory.exists() else set()
    )
    return sorted(found | set(manager.all_steps()), reverse=True)


def _restore_step(manager: ocp.CheckpointManager, template: TrainState, step: int) -> tuple[TrainState, dict[str, int]]:
    where = str(pathlib.Path(manager.directory) / str(step))
    target = _leaves_dict(template)
    # Orbax writes this file as part of the commit and restores without it (only logging); its absence means the
    # folder was not written by a finished save, so its contents are not trusted.
    if not (pathlib.Path(where) / "_CHECKPOINT_METADATA").is_file():
        raise CheckpointDamagedError(f"checkpoint step {step} at {where} lacks its _CHECKPOINT_METADATA file")
    try:
        restored = manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
        )
        meta = dict(restored["meta"])
        leaves = {k: np.asarray(v) for k, v in restored["state"].items()}
    except Exception as e:  # Orbax/tensorstore raise many types for unreadable files; all mean "damaged" here.
        raise CheckpointDamagedError(
            f"checkpoint step {step} at {where} cannot be read: {type(e).__name__}: {e}"
        ) from e
    want = meta.pop("sha256", None)
    if want is not None and set(leaves) == set(target) and _digest(leaves) != want:
        raise CheckpointDamagedError(f"checkpoint step {step} at {where}: arrays do not match their SHA-256")
    for key in ("step", "epoch", "batch"):
        if not isinstance(meta.get(key), int):
            raise CheckpointDamagedError(f"checkpoint step {step} at {where}: metadata lacks an integer {key!r}")
    return _from_leaves(template, leaves, where), meta


def _restore_latest_good(
    manager: ocp.CheckpointManager, template: TrainState
) -> tuple[tuple[TrainState, dict[str, int]] | None, list[int]]:
    damaged: list[int] = []
    steps = _step_dirs(manager)
    for step in steps:
        try:
            return _restore_step(manager, template, step), damaged
        except CheckpointDamagedError as e:
            damaged.append(step)
            warnings.warn(f"{e}; falling back to the previous checkpoint", RuntimeWarning, stacklevel=3)
    if damaged:
        raise CheckpointDamagedError(
            f"every checkpoint in {manager.directory} is damaged (steps {damaged}); move them away to start afresh"
        )
    return None, damaged


def restore_run(
    manager: ocp.CheckpointManager, template: TrainState, step: int | None = None
) -> tuple[TrainState, dict[str, int]] | None:
    """The state and data position of checkpoint ``step``, or None when there is none.

    By default the latest readable one: a damaged newer checkpoint is reported with a ``RuntimeWarning`` naming
    its step and path, and the previous one is tried. An explicit ``step`` that is damaged raises
    :class:`CheckpointDamagedError`.
    """
    if step is not None:
        return _restore_step(manager, template, step)
    return _restore_latest_good(manager, template)[0]


def _set_aside(directory: pathlib.Path, steps: list[int]) -> None:
    # Out of Orbax's folder, so it neither lists them nor refuses to write those steps again; kept for inspection.
    aside = directory.parent / "damaged_checkpoints"
    aside.mkdir(exist_ok=True)
    for step in steps:
        src = directory / str(step)
        if src.exists():
            dst = aside / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
            shutil.move(str(src), str(dst))
            warnings.warn(f"damaged checkpoint step {step} moved from {src} to {dst}", RuntimeWarning, stacklevel=3)


# --- evaluation -------------------------------------------------------------------------------------------------


def evaluate(
    state: TrainState,
    dataset: ArrayDataset,
    batch_size: int,
    *,
    par: Parallel | None = None,
    loss: str = "ce",
    eval_fn: Callable[..., Any] | None = None,
) -> dict[str, float]:
    """Exact ``loss``, ``top1``, ``top5`` (for ``"ce"``) over every example of ``dataset``.

    ``state`` is on the devices of ``par`` (as ``fit`` keeps it) or, when ``par`` is None, a host state that is put
    on one device. The ragged last batch is padded to ``batch_size`` and masked, never dropped.
    """
    if par is None:
        par = Parallel("none")  # process-local: each process of a multi-process run evaluates everything
        state = par.put_state(state)
    fn = eval_fn or par.map(functools.partial(eval_step, loss=loss), donate=False, n_out=1)
    totals: dict[str, float] = {}
    for batch in par.full_pass(dataset, batch_size):
        for k, v in par.get_metrics(fn(state, batch)).items():
            totals[k] = totals.get(k, 0.0) + v
    count = totals["count"]
    out = {"loss": totals["loss_sum"] / count, "count": count}
    if "top1_correct" in totals:
        out["top1"] = totals["top1_correct"] / count
        out["top5"] = totals["top5_correct"] / count
    return out


# --- the loop ---------------------------------------------------------------------------------------------------


def _metrics_log(path: pathlib.Path, restored_step: int) -> None:
    # A killed run may have logged steps past its last checkpoint; the resumed run logs them again.
    if not path.exists():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    keep = []
    for ln in lines:
        try:
            rec = json.loads(ln)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
        if rec.get("step", 0) <= restored_step:
            keep.append(ln)
    path.write_text("".join(k + "\n" for k in keep))


def fit(
    module: nn.Module,
    variables: dict[str, Any],
    train_data: ArrayDataset,
    *,
    eval_data: ArrayDataset | None = None,
    tx: optax.GradientTransformation | None = None,
    optimizer: dict[str, Any] | None = None,
    batch_size: int = 32,
    epochs: int | None = None,
    steps: int | None = None,
    eval_every: int | None = None,
    eval_batch_size: int | None = None,
    seed: int = 0,
    workdir: str | pathlib.Path | None = None,
    trainable: Trainable = None,
    parallel: str = "pmap",
    augment: Augment | None = None,
    corrupt: Augment | None = None,
    loss: str = "ce",
    label_smoothing: float = 0.0,
    checkpoint_every: int | None = None,
    keep: int = 3,
    best_metric: str | None = None,
    classifier: str = "fc",
    progress: bool = True,
    prefetch: int = 2,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> FitResult:
    """Train ``module`` from ``variables`` on ``train_data`` (images ``[N,H,W,C]``) data-parallel; returns a FitResult.

    Give ``tx`` (a plain optax optimizer) or ``optimizer`` (kwargs of :func:`make_optimizer`; ``total_steps`` is
    filled in). Run length is ``steps`` or ``epochs`` (epochs of ``N // batch_size`` steps; the ragged last batch
    is dropped). ``trainable`` freezes the rest (see :func:`jaxtl.freeze`); ``"^fc/"`` freezes the whole backbone,
    BatchNorm included. ``loss="mse"`` trains an autoencoder (target = input, no labels needed); ``corrupt(rng,
    images)`` (e.g. noise) changes only the model's input, so the target stays clean (denoising). ``augment`` runs
    first and changes both.

    Multi-process (``jax.distributed`` initialised): call it in every process with the same arguments;
    ``batch_size`` is the global batch, each process feeds its ``batch_size / num_processes`` slice, ``workdir``
    must be shared, and only process 0 writes metrics and shows progress.

    With ``workdir``: metrics as JSON lines in ``workdir/metrics.jsonl``, checkpoints in ``workdir/checkpoints``
    every ``checkpoint_every`` steps (default: every epoch) and at the end, keeping ``keep`` latest plus the best by
    eval ``best_metric`` ("top1", or "loss" which is minimised), and automatic resume from the latest one.
    Eval runs every ``eval_every`` steps (default: every epoch) and at the end.
    A NaN/inf loss raises :class:`NonFiniteLossError` before anything of that step is saved. A damaged newest
    checkpoint is reported (``RuntimeWarning``), set aside and the previous one used; an unwritable or full
    ``workdir`` raises :class:`WorkdirError` before the first step.
    ``on_step(step, train_metrics)`` is called for every step, in order, after its checkpoint if it has one. One step
    stays in flight (its metrics are read once the next one is queued), so the device is not kept waiting for the
    host: when ``on_step`` runs for a step without a checkpoint, the next step may already be computing.
    """
    if (tx is None) == (optimizer is None):
        raise ValueError("give exactly one of tx= (an optax optimizer) or optimizer= (make_optimizer kwargs)")
    if loss == "ce" and train_data.labels is None:
        raise ValueError("loss='ce' needs a labeled train_data; use loss='mse' for unlabeled data")
    if parallel == "none" and jax.process_count() > 1:
        raise ValueError(
            f"parallel='none' trains on one device; this is a {jax.process_count()}-process run (jax.distributed): "
            "use parallel='pmap' or 'shard_map' (CLI: --parallel pmap)"
        )
    par = Parallel(parallel)
    if batch_size % par.num_devices:
        raise ValueError(
            f"batch_size={batch_size} is not divisible by the {par.num_devices} devices ({parallel}); "
            f"use a multiple of {par.num_devices}"
        )
    eval_batch_size = eval_batch_size or batch_size
    if eval_batch_size % par.num_devices:
        raise ValueError(f"eval_batch_size={eval_batch_size} is not divisible by the {par.num_devices} devices")
    steps_per_epoch, total_steps = run_length(len(train_data), batch_size, epochs, steps)
    if tx is None:
        tx = make_optimizer(**{"total_steps": total_steps, **(optimizer or {})})
    eval_every = eval_every or steps_per_epoch
    checkpoint_every = checkpoint_every or steps_per_epoch
    if best_metric is None and eval_data is not None:
        best_metric = "top1" if loss == "ce" else "loss"

    host_state = TrainState.create(module, variables, tx, jax.random.PRNGKey(seed), trainable, classifier)
    step = 0
    manager = None
    metrics_path = None
    last_ckpt: int | None = None
    main = jax.process_index() == 0
    if workdir is not None:
        # Room for one more checkpoint plus Orbax's metadata; the older ones already occupy their space.
        workdir = check_workdir(workdir, int(checkpoint_bytes(host_state) * 1.1) + 2**20)
        metrics_path = workdir / "metrics.jsonl"
        best_mode = "min" if best_metric == "loss" else "max"
        ckpt_dir = workdir / "checkpoints"
        manager = checkpoint_manager(ckpt_dir, keep, best_metric, best_mode)
        try:
            restored, damaged = _restore_latest_good(manager, host_state)
        except BaseException:
            manager.close()
            raise
        if damaged:
            manager.close()
            if main:
                _set_aside(ckpt_dir, damaged)
            _sync("jaxtl_fit_set_aside_damaged")
            manager = checkpoint_manager(ckpt_dir, keep, best_metric, best_mode)
        if restored is not None:
            host_state, position = restored
            step = int(position["step"])
            if (position["epoch"], position["batch"]) != divmod(step, steps_per_epoch):
                raise ValueError(
                    f"checkpoint at step {step} was written with epoch/batch {position['epoch']}/{position['batch']}, "
                    f"inconsistent with {steps_per_epoch} batches per epoch: was batch_size or the dataset changed?"
                )
            last_ckpt = step
            if main:
                _metrics_log(metrics_path, step)
        _sync("jaxtl_fit_metrics_log")

    history: list[dict[str, Any]] = []
    if metrics_path is not None and metrics_path.exists():
        history = [json.loads(ln) for ln in metrics_path.read_text().splitlines() if ln.strip()]

    def log(record: dict[str, Any]) -> None:
        history.append(record)
        if metrics_path is not None and main:
            with metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    step_fn = par.map(
        functools.partial(train_step, loss=loss, label_smoothing=label_smoothing, augment=augment, corrupt=corrupt)
    )
    eval_fn = par.map(functools.partial(eval_step, loss=loss, label_smoothing=label_smoothing), donate=False, n_out=1)
    state = par.put_state(host_state)

    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=step, desc="fit", unit="step", dynamic_ncols=True)
    pending: tuple[int, int, int, Any] | None = None
    clock = [time.perf_counter()]

    def finish(done: int, epoch: int, b: int, metrics: Any, callback: bool = True) -> dict[str, float]:
        """Step ``done`` is over: fetch its metrics, check the loss, log, show progress, call ``on_step``."""
        m = par.get_metrics(metrics)
        if not math.isfinite(m["loss"]):
            raise NonFiniteLossError(done, m["loss"], last_ckpt)
        now = time.perf_counter()
        dt, clock[0] = now - clock[0], now
        log({"step": done, "split": "train", "epoch": epoch, "batch": b, **m, "images_per_s": batch_size / dt})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{m['loss']:.4f}", img_s=f"{batch_size / dt:.0f}")
        if callback and on_step is not None:
            on_step(done, m)
        return m

    try:
        while step < total_steps:
            epoch, start = divmod(step, steps_per_epoch)
            stop = min(steps_per_epoch, start + total_steps - step)
            batches = iterate_batches(
                train_data,
                batch_size,
                seed=seed,
                epoch=epoch,
                start_batch=start,
                process_index=par.process_index,
                process_count=par.process_count,
            )
            for b, batch in zip(range(start, stop), prefetch_to_device(batches, prefetch, par.put_batch)):
                state, metrics = step_fn(state, batch)
                step += 1
                # One step stays in flight: the previous step's metrics are read (a host sync) only once this one
                # is queued, so the device never waits for the host between steps.
                if pending is not None:
                    finish(*pending)
                pending = (step, epoch, b, metrics)
                eval_due = eval_data is not None and (step % eval_every == 0 or step == total_steps)
                ckpt_due = manager is not None and (step % checkpoint_every == 0 or step == total_steps)
                if not (eval_due or ckpt_due):
                    continue
                m = finish(*pending, callback=False)  # its loss is checked before anything of this step is saved
                pending = None
                eval_metrics = None
                if eval_due:
                    assert eval_data is not None
                    eval_metrics = evaluate(state, eval_data, eval_batch_size, par=par, loss=loss, eval_fn=eval_fn)
                    log({"step": step, "split": "eval", **eval_metrics})
                if ckpt_due:
                    assert manager is not None
                    position = {"step": step, "epoch": step // steps_per_epoch, "batch": step % steps_per_epoch}
                    save_run(manager, par.get_state(state), position, eval_metrics)
                    last_ckpt = step
                if on_step is not None:
                    on_step(step, m)
                clock[0] = time.perf_counter()  # eval and checkpoint time is not the next step's
        if pending is not None:
            finish(*pending)
    finally:
        if bar is not None:
            bar.close()
        if manager is not None:
            manager.wait_until_finished()
            manager.close()
    final = par.get_state(state)
    return FitResult(final, final.variables, history)
