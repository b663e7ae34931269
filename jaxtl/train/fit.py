"""The fit loop: data-parallel steps, periodic eval, JSON-lines metrics and TensorBoard, checkpoints and exact resume.

A run is fully determined by its arguments: the data order of epoch ``e`` is ``default_rng([seed, e])``, the ragged
last train batch is dropped, and the state (params, batch_stats, opt_state, step, rng, and the weight average and
learning-rate scale when on) is checkpointed together with the data position (epoch, batch) and the early-stopping
trackers. Restarting ``fit`` with the same arguments and work directory restores the latest complete checkpoint,
skips the batches already consumed, and finishes bit-identical (on CPU) to an uninterrupted run. The work directory
belongs to one run (:class:`~jaxtl.lifecycle.Run`: lock, identity, signals). The loop itself is
:class:`~jaxtl.train.loop.TrainingLoop`.

Multi-process (``jax.distributed``): every process runs ``fit`` with the same arguments and a shared work
directory; each feeds its slice of every global batch, all of them call the Orbax save/restore (Orbax coordinates
the writes), and only process 0 writes ``metrics.jsonl`` and the event files and shows progress.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import flax.linen as nn
import jax
import optax

from jaxtl.compile_cache import default_compile_cache
from jaxtl.data.batching import run_length
from jaxtl.data.image_source import ImageSource
from jaxtl.data.protocol import Source, check_labels
from jaxtl.errors import ConfigError
from jaxtl.lifecycle import Run
from jaxtl.models.heads import head_classes, head_name
from jaxtl.train.config import Checkpoints, Loop, Optimizer
from jaxtl.train.evaluation import evaluate, evaluate_variables
from jaxtl.train.groups import ParamGroups, TxFactory
from jaxtl.train.loop import BEST_RANK, NonFiniteLossError, OnStep, Outputs, Request, TrainingLoop
from jaxtl.train.losses import Loss, get_loss
from jaxtl.train.parallel import Parallel
from jaxtl.train.plateau import Monitor
from jaxtl.train.result import RunResult
from jaxtl.train.run_log import METRICS, TENSORBOARD, RunLog, kept_records
from jaxtl.train.run_store import RunStore, checkpoint_bytes, sync
from jaxtl.train.state import TrainState
from jaxtl.train.step import Augment
from jaxtl.train.timings import phase

__all__ = ["WRITES", "NonFiniteLossError", "OnStep", "evaluate", "evaluate_variables", "fit"]

OptimizerSpec: TypeAlias = "Optimizer | Mapping[str, Any] | optax.GradientTransformation | TxFactory"
WRITES = ("checkpoints", METRICS, TENSORBOARD)  # what fit writes in a work directory


# --- the pieces of fit ---------------------------------------------------------------------------------------------


def _check_request(
    module: nn.Module, variables: Mapping[str, Any], data: Source, loop: Loop, loss: Loss, eval_data: Source | None
) -> Parallel:
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
    classes = head_classes(variables, head_name(module)) if loss.needs_labels else 0
    if loss.needs_labels:
        check_labels(data, classes)
        if eval_data is not None:
            check_labels(eval_data, classes, "eval data")
    stopping = loop.stopping
    if stopping is not None:
        if eval_data is None:
            raise ConfigError("early stopping / reduce-on-plateau watch an eval metric: give eval_data", "stopping")
        if stopping.metric != "loss" and not loss.needs_labels:
            raise ConfigError(f"{loss!r} reports no {stopping.metric}; watch the eval loss", "stopping_metric")
        if stopping.metric == "top5" and classes <= 5:
            raise ConfigError(f"top-5 of {classes} classes is always 1: watch top1 or the loss", "stopping_metric")
    return par


def _optimizer(optimizer: OptimizerSpec) -> Optimizer | optax.GradientTransformation | TxFactory:
    if isinstance(optimizer, Mapping):
        return Optimizer(**{k: v for k, v in optimizer.items() if k != "total_steps"})
    return optimizer


def _fn_name(fn: Any) -> str | None:
    return None if fn is None else str(getattr(fn, "__qualname__", type(fn).__name__))


def _identity(state: TrainState, request: Request, optimizer: Any, updates: int) -> dict[str, Any]:
    # What decides the numbers of a plain ``fit`` run (a recipe records its own config instead).
    kinds = re.findall(r"namedtuple\[(\w+)\]", str(jax.tree.structure(state.opt_state)))
    opt = optimizer.identity(updates) if isinstance(optimizer, Optimizer) else {"optimizer": "an optax optimizer"}
    out = {
        "model": " ".join(repr(state.module).split()),
        "groups": repr(state.groups),
        "optimizer_state": ", ".join(kinds),
        "loss": repr(request.loss),
        "augment": _fn_name(request.augment),
        "corrupt": _fn_name(request.loss.corrupt),
        **opt,
        **request.loop.identity(),
        "data": request.data.digest(),
        "num_examples": len(request.data),
        "input": _input_identity(request.data),
    }
    if request.loop.stopping is not None and request.eval_data is not None:
        out["eval_data"] = request.eval_data.digest()  # early stopping's decisions depend on it
    return out


def _input_identity(data: Source) -> dict[str, Any]:
    """How the examples become batches (the data's digest covers what they are, not this): the image shape, the
    normalisation applied on the device and, for streamed data, the transform (size, resize, augmentation)."""
    from jaxtl.data.image_source import ImageSource

    out: dict[str, Any] = {"image_shape": list(data.image_shape), "normalization": data.normalization}
    if isinstance(data, ImageSource):
        t = data.transform
        out["transform"] = {
            "size": t.size,
            "resize_size": t.resize_size,
            "augment": t.augment,
            "interpolation": t.interpolation,
        }
    return out


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


def _store(run: Run, checkpoints: Checkpoints, request: Request) -> RunStore:
    """The run's checkpoints; "the best" is early stopping's when it restores the best, else ``best_metric``."""
    stopping = request.loop.stopping
    best = checkpoints.best_metric
    if stopping is not None:
        if best is not None and best != stopping.metric:
            raise ConfigError(
                f"best_metric={best!r} but early stopping watches {stopping.metric!r}: the best checkpoint is the "
                "one it restores; leave best_metric unset or make them the same",
                "best_metric",
            )
        if stopping.restores_best:
            return RunStore(run.workdir, keep=checkpoints.keep, best_metric=BEST_RANK, best_mode="max")
        best = stopping.metric
    if best is None and request.eval_data is not None:
        best = "top1" if request.loss.needs_labels else "loss"
    mode = stopping.resolved_mode if stopping is not None else "min" if best == "loss" else "max"
    return RunStore(run.workdir, keep=checkpoints.keep, best_metric=best, best_mode=mode)


def _restore(store: RunStore, state: TrainState, per_epoch: int) -> tuple[TrainState, int, dict[str, Any]]:
    restored = store.restore_latest(state)
    if restored is None:
        return state, 0, {}
    state, position = restored
    step = int(position["step"])
    if (position["epoch"], position["batch"]) != divmod(step, per_epoch):
        raise ConfigError(
            f"checkpoint at step {step} was written with epoch/batch {position['epoch']}/{position['batch']}, "
            f"inconsistent with {per_epoch} batches per epoch: was batch_size or the dataset changed?",
            "batch_size",
        )
    return state, step, dict(position)


def _monitor(loop: Loop, position: Mapping[str, Any]) -> Monitor | None:
    if loop.stopping is None:
        return None
    monitor = Monitor(loop.stopping)
    if position.get("stopping") is not None:
        try:
            monitor.load_state_dict(position["stopping"])
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(
                f"the checkpoint's early-stopping state does not fit this run's Stopping ({e})", "stopping"
            ) from None
    return monitor


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
    eval_data: Source | None = None,
    callbacks: Sequence[OnStep] = (),
    progress: bool = True,
) -> RunResult:
    """Train ``module`` from ``variables`` on ``data`` (a :class:`~jaxtl.data.protocol.Source`, e.g. an
    ``ArrayDataset`` ``[N,H,W,C]`` or a streaming image folder), data-parallel; returns a
    :class:`~jaxtl.train.result.RunResult` (``.state``, ``.variables``, ``.history``).

    ``optimizer``: an :class:`~jaxtl.train.config.Optimizer` (or its fields as a dict; the schedule spans the run's
    optimizer steps, groups' ``lr_scale``/``weight_decay_scale`` applied), a plain optax optimizer, or a factory
    ``Group -> optimizer``. ``groups`` (:class:`ParamGroups`, or regexes of the trainable paths) says what trains:
    e.g. ``ParamGroups.head_only(module)`` freezes the backbone, BatchNorm included. ``loss``: ``"ce"``/``CrossEntropy``
    (label smoothing, class weights, ``mixing=Mixing(...)`` for mixup/cutmix) or ``"mse"``/``Reconstruction()`` (an
    autoencoder: the target is the clean input; ``corrupt=`` for denoising). ``augment(rng, images)`` runs on device.
    ``loop`` (:class:`~jaxtl.train.config.Loop`): batch, length, seed, eval cadence, and gradient accumulation,
    weight EMA and early stopping / reduce-on-plateau when asked; evaluation on ``eval_data`` records ``"eval"``
    (and ``"eval_ema"``) lines.

    ``checkpoints`` (:class:`Checkpoints`): metrics as JSON lines in ``workdir/metrics.jsonl`` and TensorBoard event
    files in ``workdir/tensorboard``, resumable checkpoints, automatic resume, the work directory locked and its
    run's identity checked. A NaN/inf loss raises :class:`NonFiniteLossError` before anything of that step is saved;
    SIGINT/SIGTERM stop the run after the current step with a checkpoint (:class:`~jaxtl.lifecycle.RunInterrupted`).
    ``callbacks``: ``fn(step, metrics)`` for every step in order (after its checkpoint if it has one; the next step
    may already be computing).
    """
    default_compile_cache()  # on unless configured otherwise or turned off (jaxtl.compile_cache)
    loss = get_loss(loss)
    par = _check_request(module, variables, data, loop, loss, eval_data)
    per_epoch, total = run_length(len(data), loop.batch_size, loop.epochs, loop.steps)
    loop.check_length(total)
    updates = loop.optimizer_steps(total)
    spec = _optimizer(optimizer)
    tx = spec.factory(updates) if isinstance(spec, Optimizer) else spec
    reduces = loop.stopping is not None and loop.stopping.reduces_lr
    with phase("state: create"):
        state = TrainState.create(
            module,
            dict(variables),
            tx,
            jax.random.PRNGKey(loop.seed),
            groups,
            data.normalization,
            ema=loop.ema,
            accumulate=loop.accumulate,
            lr_scale=1.0 if reduces else None,
        )
    schedule = spec.schedule_fn(updates) if isinstance(spec, Optimizer) else None
    request = Request(data, loop, total, loss, augment, eval_data, tuple(callbacks), progress, schedule)
    need = int(checkpoint_bytes(state) * 1.1) + 2**20  # one more checkpoint plus Orbax's metadata
    with _checkpointing(checkpoints, lambda: _identity(state, request, spec, updates), need) as run:
        store, step, history = None, 0, []
        position: dict[str, Any] = {}
        if run is not None:
            assert checkpoints is not None
            store = _store(run, checkpoints, request)
        log = None
        try:
            if store is not None:
                state, step, position = _restore(store, state, per_epoch)
                history = kept_records(store.workdir / METRICS, step, jax.process_index() == 0)
                sync("jaxtl_fit_metrics_log")
            tensorboard = checkpoints is not None and checkpoints.tensorboard
            workdir = run.workdir if run is not None else None
            log = RunLog(workdir, history, tensorboard=tensorboard, start_step=step, main=jax.process_index() == 0)
            every = checkpoints.every if checkpoints is not None else None
            training = TrainingLoop(
                state, par, request, Outputs(log, run, store, every), step=step, monitor=_monitor(loop, position)
            )
            if step >= total or training.stopped_early:
                training.bar.already_finished(step)
            elif step:
                training.bar.resuming(step, workdir)
            training.bar.start()
            try:
                training.train()
            finally:
                training.bar.close()
            final = training.result_state()
            training.log_images(final)
        finally:
            for source in (data, eval_data):
                if isinstance(source, ImageSource):
                    source.close()  # its workers would go on preparing an epoch nobody asked for
            if log is not None:
                log.close()
            if store is not None:
                store.close()
    return RunResult(module, final.variables, None, log.history, state=final, resumed_from=step)
