"""The fit loop: data-parallel steps, periodic eval, JSON-lines metrics, checkpoints and exact resume.

A run is fully determined by its arguments: the data order of epoch ``e`` is ``default_rng([seed, e])``, the ragged
last train batch is dropped, and the state (params, batch_stats, opt_state, step, rng) is checkpointed together with
the data position (epoch, batch). Restarting ``fit`` with the same arguments and work directory restores the latest
complete checkpoint, skips the batches already consumed, and finishes bit-identical (on CPU) to an uninterrupted
run. The work directory belongs to one run (:class:`~jaxtl.lifecycle.Run`: lock, identity, signals).

Multi-process (``jax.distributed``): every process runs ``fit`` with the same arguments and a shared work
directory; each feeds its slice of every global batch, all of them call the Orbax save/restore (Orbax coordinates
the writes), and only process 0 writes ``metrics.jsonl`` and shows progress.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import flax.linen as nn
import jax
import optax

from jaxtl.data.batching import run_length
from jaxtl.data.source import Source, check_labels
from jaxtl.errors import ConfigError, JaxtlError
from jaxtl.lifecycle import Run, RunInterrupted, write_atomic
from jaxtl.models.heads import head_classes, head_name
from jaxtl.train.config import Checkpoints, Loop, Optimizer
from jaxtl.train.groups import ParamGroups, TxFactory
from jaxtl.train.losses import Loss, get_loss
from jaxtl.train.parallel import Parallel, prefetch_to_device
from jaxtl.train.progress import Progress
from jaxtl.train.result import RunResult
from jaxtl.train.run_store import RunStore, checkpoint_bytes, sync
from jaxtl.train.state import TrainState
from jaxtl.train.step import Augment, eval_metrics, train_step

__all__ = ["NonFiniteLossError", "evaluate", "evaluate_variables", "fit"]

OnStep = Callable[[int, dict[str, float]], None]
OptimizerSpec: TypeAlias = "Optimizer | Mapping[str, Any] | optax.GradientTransformation | TxFactory"
WRITES = ("checkpoints", "metrics.jsonl")  # what fit writes in a work directory


class NonFiniteLossError(JaxtlError, RuntimeError):
    """The training loss became NaN or infinite; the run stopped before checkpointing the bad state."""

    def __init__(self, step: int, loss: float, last_checkpoint: int | None):
        self.step, self.loss, self.last_checkpoint = step, loss, last_checkpoint
        where = f"last good checkpoint: step {last_checkpoint}" if last_checkpoint is not None else "no checkpoint"
        super().__init__(
            f"non-finite loss {loss} at step {step}; stopped ({where}). Lower the learning rate or check the data"
        )


# --- evaluation --------------------------------------------------------------------------------------------------


def evaluate(
    state: TrainState,
    data: Source,
    batch_size: int,
    *,
    par: Parallel | None = None,
    loss: Loss | str = "ce",
    eval_fn: Callable[..., Any] | None = None,
) -> dict[str, float]:
    """Exact ``loss``, ``top1``, ``top5`` (for a labeled loss) over every example of ``data``.

    ``state`` is on the devices of ``par`` (as ``fit`` keeps it) or, when ``par`` is None, a host state that is put
    on one device. The ragged last batch is padded to ``batch_size`` and masked, never dropped.
    """
    return evaluate_variables(
        state.module, state.variables, data, batch_size, par=par, loss=loss, eval_fn=eval_fn, norm=state.normalization
    )


def _eval_fn(module: nn.Module, loss: Loss, norm: Any, par: Parallel) -> Callable[..., Any]:
    def per_device(variables: Any, batch: Any, *, axis_name: str | None) -> Any:
        return eval_metrics(module, variables, batch, loss, norm, axis_name)

    return par.map(per_device, donate=False, n_out=1)  # type: ignore[no-any-return]


def evaluate_variables(
    module: nn.Module,
    variables: Mapping[str, Any],
    data: Source,
    batch_size: int,
    *,
    par: Parallel | None = None,
    loss: Loss | str = "ce",
    eval_fn: Callable[..., Any] | None = None,
    norm: Any = None,
) -> dict[str, float]:
    """:func:`evaluate` from a module and its variables (no optimizer state); variables already placed by ``par``
    when ``par`` is given, else host arrays evaluated on one device of this process. ``top5`` is reported only
    when the head has more than 5 classes (with 5 or fewer it is always 1)."""
    loss = get_loss(loss)
    if par is None:
        par = Parallel("none")  # process-local: each process of a multi-process run evaluates everything
        variables = par.put_state({k: v for k, v in variables.items() if k in ("params", "batch_stats")})
    fn = eval_fn or _eval_fn(module, loss, norm if norm is not None else data.normalization, par)
    totals: dict[str, float] = {}
    for batch in par.full_pass(data, batch_size):
        for k, v in par.get_metrics(fn(variables, batch)).items():
            totals[k] = totals.get(k, 0.0) + v
    count = totals["count"]
    out = {"loss": totals["loss_sum"] / count, "count": count}
    if "top1_correct" in totals:
        out["top1"] = totals["top1_correct"] / count
        if head_classes(variables, head_name(module)) > 5:
            out["top5"] = totals["top5_correct"] / count
    return out


# --- the pieces of fit ---------------------------------------------------------------------------------------------


def _check_request(module: nn.Module, variables: Mapping[str, Any], data: Source, loop: Loop, loss: Loss) -> Parallel:
    if loss.needs_labels and data.labels is None:
        raise ConfigError(f"loss {loss!r} needs labeled data; use loss='mse' for unlabeled data", "loss")
    par = Parallel(loop.parallel)
    if par.kind == "none" and jax.process_count() > 1:
        raise ConfigError(
            f"parallel='none' trains on one device; this is a {jax.process_count()}-process run (jax.distributed): "
            "use parallel='pmap' or 'shard_map'",
            "parallel",
        )
    for name, size in (("batch_size", loop.batch_size), ("eval_batch_size", loop.eval_batch_size)):
        if size is not None and size % par.num_devices:
            raise ConfigError(
                f"{name}={size} is not divisible by the {par.num_devices} devices ({par.kind}); "
                f"use a multiple of {par.num_devices}",
                name,
            )
    if loss.needs_labels:
        check_labels(data, head_classes(variables, head_name(module)))
    return par


def _tx(optimizer: OptimizerSpec, total: int) -> optax.GradientTransformation | TxFactory:
    if isinstance(optimizer, Optimizer):
        return optimizer.factory(total)
    if isinstance(optimizer, Mapping):
        return Optimizer(**{k: v for k, v in optimizer.items() if k != "total_steps"}).factory(total)
    return optimizer


def _fn_name(fn: Any) -> str | None:
    return None if fn is None else str(getattr(fn, "__qualname__", type(fn).__name__))


def _identity(
    module: nn.Module,
    state: TrainState,
    data: Source,
    loop: Loop,
    step_kw: Mapping[str, Any],
    optimizer: OptimizerSpec,
    total: int,
) -> dict[str, Any]:
    # What decides the numbers of a plain ``fit`` run (a recipe records its own config instead).
    kinds = re.findall(r"namedtuple\[(\w+)\]", str(jax.tree.structure(state.opt_state)))
    if isinstance(optimizer, Mapping):
        optimizer = Optimizer(**{k: v for k, v in optimizer.items() if k != "total_steps"})
    opt = optimizer.identity(total) if isinstance(optimizer, Optimizer) else {"optimizer": "an optax optimizer"}
    return {
        "model": " ".join(repr(module).split()),
        "groups": repr(state.groups),
        "optimizer_state": ", ".join(kinds),
        "loss": repr(step_kw["loss"]),
        "augment": _fn_name(step_kw["augment"]),
        "corrupt": _fn_name(step_kw["corrupt"]),
        **opt,
        **loop.identity(),
        "data": data.digest(),
        "num_examples": len(data),
    }


def _metrics_log(path: Path, restored_step: int, main: bool) -> list[dict[str, Any]]:
    # A killed run may have logged steps past its last checkpoint; the resumed run logs them again.
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


@contextlib.contextmanager
def _checkpointing(checkpoints: Checkpoints | None, identity: Callable[[], dict[str, Any]], need: int) -> Iterator[Any]:
    """The open run (``None`` without checkpoints): the recipe's, or one fit opens on a path itself."""
    if checkpoints is None:
        yield None
        return
    if isinstance(checkpoints.workdir, Run):
        yield checkpoints.workdir
        return
    run = Run(
        Path(checkpoints.workdir),
        identity(),
        writes=WRITES,
        allow_changes=checkpoints.allow_changes,
        need_bytes=need,
        kind="fit",
    )
    with run:
        yield run


class _Training:
    """One fit run's moving parts: the mapped steps, the state on the devices, the store and the log."""

    def __init__(self, state: TrainState, data: Source, loop: Loop, par: Parallel, total: int, **kw: Any):
        self.data, self.loop, self.par, self.total = data, loop, par, total
        self.loss: Loss = kw["loss"]
        self.eval_data: Source | None = kw["eval_data"]
        self.callbacks: Sequence[OnStep] = kw["callbacks"]
        self.run: Run | None = kw["run"]
        self.store: RunStore | None = kw["store"]
        self.step, self.last_ckpt, self.history = kw["step"], kw["step"] if kw["step"] else None, kw["history"]
        self.main = jax.process_index() == 0
        self.metrics_path = None if self.run is None else self.run.workdir / "metrics.jsonl"
        self.per_epoch = run_length(len(data), loop.batch_size, loop.epochs, loop.steps)[0]
        self.eval_every = loop.eval_every or self.per_epoch
        self.ckpt_every: int = kw["every"] or self.per_epoch
        self.step_fn = par.map(functools.partial(train_step, **kw["step_kw"]))
        self.eval_fn = _eval_fn(state.module, self.loss, state.normalization, par)
        self.state = par.put_state(state)
        self.bar = Progress(total, initial=self.step, desc=kw["desc"], enabled=kw["progress"] and self.main)
        self.clock = time.perf_counter()
        self.pending: tuple[int, int, int, Any] | None = None

    def log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if self.metrics_path is not None and self.main:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def finish(self, done: int, epoch: int, b: int, metrics: Any, callback: bool = True) -> dict[str, float]:
        """Step ``done`` is over: fetch its metrics, check the loss, log, show progress, run the callbacks."""
        m = self.par.get_metrics(metrics)
        if not math.isfinite(m["loss"]):
            raise NonFiniteLossError(done, m["loss"], self.last_ckpt)
        now = time.perf_counter()
        dt, self.clock = now - self.clock, now
        bs = self.loop.batch_size
        self.bar.update(1, loss=f"{m['loss']:.4f}", img_s=f"{bs / dt:.0f}")
        self.log({"step": done, "split": "train", "epoch": epoch, "batch": b, **m, "images_per_s": bs / dt})
        if callback:
            for cb in self.callbacks:
                cb(done, m)
        return m

    def epoch_batches(self, epoch: int, start: int) -> Iterator[Any]:
        batches = self.data.batches(
            self.loop.batch_size,
            seed=self.loop.seed,
            epoch=epoch,
            start_batch=start,
            process_index=self.par.process_index,
            process_count=self.par.process_count,
            train=True,
        )
        return prefetch_to_device(batches, self.loop.prefetch, self.par.put_batch)

    def after_step(self, epoch: int, b: int, metrics: Any, stop: bool) -> None:
        """Evaluate and checkpoint when due (or stopping); otherwise keep one step in flight."""
        step = self.step
        # One step stays in flight: the previous step's metrics are read (a host sync) only once this one is
        # queued, so the device never waits for the host between steps.
        if self.pending is not None:
            self.finish(*self.pending)
        self.pending = (step, epoch, b, metrics)
        eval_due = self.eval_data is not None and (step % self.eval_every == 0 or step == self.total)
        ckpt_due = self.store is not None and (step % self.ckpt_every == 0 or step == self.total or stop)
        if not (eval_due or ckpt_due or stop):
            return
        m = self.finish(*self.pending, callback=False)  # its loss is checked before anything of it is saved
        self.pending = None
        evaluated = None
        if eval_due:
            assert self.eval_data is not None
            evaluated = evaluate_variables(
                self.state.module,
                self.state.variables,
                self.eval_data,
                self.loop.eval_batch_size or self.loop.batch_size,
                par=self.par,
                loss=self.loss,
                eval_fn=self.eval_fn,
            )
            self.log({"step": step, "split": "eval", **evaluated})
        if ckpt_due:
            assert self.store is not None
            position = {"step": step, "epoch": step // self.per_epoch, "batch": step % self.per_epoch}
            self.store.save(self.par.get_state(self.state), position, evaluated)
            self.last_ckpt = step
        for cb in self.callbacks:
            cb(step, m)
        self.clock = time.perf_counter()  # eval and checkpoint time is not the next step's

    def train(self) -> None:
        run = self.run
        stop = (lambda: run.stop_signal) if run is not None else (lambda: None)
        while self.step < self.total and stop() is None:
            epoch, start = divmod(self.step, self.per_epoch)
            end = min(self.per_epoch, start + self.total - self.step)
            for b, batch in zip(range(start, end), self.epoch_batches(epoch, start)):
                self.state, metrics = self.step_fn(self.state, batch)
                self.step += 1
                self.after_step(epoch, b, metrics, stop() is not None)
                if stop() is not None:
                    break
        if self.pending is not None:
            self.finish(*self.pending)
            self.pending = None
        signum = stop()
        if signum is not None and self.step < self.total:
            where = self.run.workdir if self.run is not None else None
            raise RunInterrupted(signum, self.step, self.last_ckpt if self.store is not None else None, where)


def _restore(store: RunStore, state: TrainState, per_epoch: int) -> tuple[TrainState, int]:
    restored = store.restore_latest(state)
    if restored is None:
        return state, 0
    state, position = restored
    step = int(position["step"])
    if (position["epoch"], position["batch"]) != divmod(step, per_epoch):
        raise ConfigError(
            f"checkpoint at step {step} was written with epoch/batch {position['epoch']}/{position['batch']}, "
            f"inconsistent with {per_epoch} batches per epoch: was batch_size or the dataset changed?",
            "batch_size",
        )
    return state, step


def fit(
    module: nn.Module,
    variables: Mapping[str, Any],
    data: Source,
    *,
    optimizer: OptimizerSpec,
    groups: ParamGroups | str | Sequence[str] | None = None,
    loop: Loop = Loop(),  # noqa: B008  (frozen)
    checkpoints: Checkpoints | None = None,
    loss: Loss | str = "ce",
    augment: Augment | None = None,
    corrupt: Augment | None = None,
    eval_data: Source | None = None,
    callbacks: Sequence[OnStep] = (),
    progress: bool = True,
) -> RunResult:
    """Train ``module`` from ``variables`` on ``data`` (a :class:`~jaxtl.data.source.Source`, e.g. an
    ``ArrayDataset`` ``[N,H,W,C]`` or a streaming image folder), data-parallel; returns a
    :class:`~jaxtl.train.result.RunResult` (``.state``, ``.variables``, ``.history``).

    ``optimizer``: an :class:`~jaxtl.train.config.Optimizer` (or its fields as a dict; the schedule spans the run,
    groups' ``lr_scale``/``weight_decay_scale`` applied), a plain optax optimizer, or a factory
    ``Group -> optimizer``. ``groups`` (:class:`ParamGroups`, or regexes of the trainable paths) says what trains:
    e.g. ``ParamGroups.head_only()`` freezes the backbone, BatchNorm included. ``loss``: ``"ce"``/``CrossEntropy``
    or ``"mse"``/``Reconstruction()`` (an autoencoder: the target is the clean input). ``augment(rng, images)``
    runs on device first; ``corrupt(rng, images)`` then changes only the model's input (denoising).

    ``checkpoints`` (:class:`Checkpoints`): metrics as JSON lines in ``workdir/metrics.jsonl``, resumable
    checkpoints, automatic resume, the work directory locked and its run's identity checked. A NaN/inf loss raises
    :class:`NonFiniteLossError` before anything of that step is saved; SIGINT/SIGTERM stop the run after the
    current step with a checkpoint (:class:`~jaxtl.lifecycle.RunInterrupted`). ``callbacks``: ``fn(step, metrics)``
    for every step in order (after its checkpoint if it has one; the next step may already be computing).
    """
    loss = get_loss(loss)
    par = _check_request(module, variables, data, loop, loss)
    if eval_data is not None and loss.needs_labels:
        check_labels(eval_data, head_classes(variables, head_name(module)), "eval data")
    per_epoch, total = run_length(len(data), loop.batch_size, loop.epochs, loop.steps)
    tx = _tx(optimizer, total)
    state = TrainState.create(module, dict(variables), tx, jax.random.PRNGKey(loop.seed), groups, data.normalization)
    need = int(checkpoint_bytes(state) * 1.1) + 2**20  # one more checkpoint plus Orbax's metadata
    step_kw = {"loss": loss, "augment": augment, "corrupt": corrupt}
    with _checkpointing(
        checkpoints, lambda: _identity(module, state, data, loop, step_kw, optimizer, total), need
    ) as run:
        store, step, history = None, 0, []
        if run is not None:
            assert checkpoints is not None
            best = checkpoints.best_metric or (None if eval_data is None else "top1" if loss.needs_labels else "loss")
            store = RunStore(
                run.workdir, keep=checkpoints.keep, best_metric=best, best_mode="min" if best == "loss" else "max"
            )
        try:
            if store is not None:
                state, step = _restore(store, state, per_epoch)
                history = _metrics_log(store.workdir / "metrics.jsonl", step, jax.process_index() == 0)
                sync("jaxtl_fit_metrics_log")
            training = _Training(
                state,
                data,
                loop,
                par,
                total,
                loss=loss,
                eval_data=eval_data,
                callbacks=callbacks,
                run=run,
                store=store,
                step=step,
                history=history,
                every=checkpoints.every if checkpoints is not None else None,
                step_kw=step_kw,
                desc="fit",
                progress=progress,
            )
            if step >= total and step:
                training.bar.already_finished()
            elif step:
                training.bar.resuming(step, run.workdir if run is not None else None)
            training.bar.start()
            try:
                training.train()
            finally:
                training.bar.close()
        finally:
            if store is not None:
                store.close()
    final = par.get_state(training.state)
    return RunResult(module, final.variables, None, training.history, state=final, resumed_from=step)
