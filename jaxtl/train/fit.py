"""The fit loop: data-parallel steps, periodic eval, JSON-lines metrics, checkpoints and exact resume.

A run is fully determined by its arguments: the data order of epoch ``e`` is ``default_rng([seed, e])``, the ragged
last train batch is dropped, and the state (params, batch_stats, opt_state, step, rng) is checkpointed together with
the data position (epoch, batch). Restarting ``fit`` with the same arguments and work directory restores the latest
complete checkpoint, skips the batches already consumed, and finishes bit-identical (on CPU) to an uninterrupted
run. The work directory belongs to one run (:class:`~jaxtl.train.checkpoint.RunStore`: lock + fingerprint).

Multi-process (``jax.distributed``): every process runs ``fit`` with the same arguments and a shared work
directory; each feeds its slice of every global batch, all of them call the Orbax save/restore (Orbax coordinates
the writes), and only process 0 writes ``metrics.jsonl`` and shows progress.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import pathlib
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import optax

from jaxtl.data.batching import run_length
from jaxtl.data.source import Source, check_labels
from jaxtl.models.heads import head_classes, head_name
from jaxtl.train.checkpoint import RunStore, check_workdir, checkpoint_bytes, data_digest
from jaxtl.train.groups import ParamGroups, TxFactory
from jaxtl.train.losses import Loss, get_loss
from jaxtl.train.optim import make_optimizer
from jaxtl.train.parallel import Parallel, prefetch_to_device
from jaxtl.train.progress import Progress
from jaxtl.train.state import TrainState
from jaxtl.train.step import Augment, eval_metrics, train_step

OnStep = Callable[[int, dict[str, float]], None]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stopped before checkpointing the bad state."""

    def __init__(self, step: int, loss: float, last_checkpoint: int | None):
        self.step, self.loss, self.last_checkpoint = step, loss, last_checkpoint
        where = f"last good checkpoint: step {last_checkpoint}" if last_checkpoint is not None else "no checkpoint"
        super().__init__(
            f"non-finite loss {loss} at step {step}; stopped ({where}). Lower the learning rate or check the data"
        )


class RunInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM stopped the run after a step; ``checkpoint`` is the step saved (None without a workdir)."""

    def __init__(self, signum: int, step: int, checkpoint: int | None, workdir: pathlib.Path | None):
        self.signum, self.step, self.checkpoint, self.workdir = signum, step, checkpoint, workdir
        name = signal.Signals(signum).name
        if checkpoint is not None:
            what = f"checkpoint of step {checkpoint} saved in {workdir}; run the same command again to resume"
        else:
            what = "nothing saved (no work directory)"
        super().__init__(f"{name} received: stopped after step {step}; {what}")


@dataclasses.dataclass(frozen=True)
class Loop:
    """How long and in what order a run trains. ``batch_size`` is the global batch; run length is ``steps`` or
    ``epochs`` (``N // batch_size`` steps each: the ragged last batch is dropped). Eval runs every ``eval_every``
    steps (default: every epoch) and at the end, in batches of ``eval_batch_size`` (default ``batch_size``).
    ``parallel``: ``"auto"`` (pmap over several devices, else one device), ``"pmap"``, ``"shard_map"`` or
    ``"none"``; ``prefetch`` batches are kept on the devices ahead of the step."""

    batch_size: int = 32
    epochs: int | None = None
    steps: int | None = None
    seed: int = 0
    eval_every: int | None = None
    eval_batch_size: int | None = None
    parallel: str = "auto"
    prefetch: int = 2


@dataclasses.dataclass(frozen=True)
class Checkpoints:
    """Where and how often a run is saved: ``workdir/checkpoints`` every ``every`` steps (default: every epoch) and
    at the end, the latest ``keep`` plus the best by eval ``best_metric`` (``"top1"``, or ``"loss"`` minimised;
    default by the loss). ``allow_changes`` resumes a work directory that holds a run with another fingerprint."""

    workdir: str | os.PathLike
    every: int | None = None
    keep: int = 3
    best_metric: str | None = None
    allow_changes: bool = False


@dataclasses.dataclass
class FitResult:
    """The final state (host arrays), its ``{"params", "batch_stats"}`` and the metrics history (dicts)."""

    state: TrainState
    variables: dict[str, Any]
    history: list[dict[str, Any]]
    resumed_from: int = 0


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
    when ``par`` is given, else host arrays evaluated on one device of this process."""
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
        out["top5"] = totals["top5_correct"] / count
    return out


def _metrics_log(path: pathlib.Path, restored_step: int) -> list[dict[str, Any]]:
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
    if jax.process_index() == 0:
        path.write_text("".join(json.dumps(r) + "\n" for r in keep))
    return keep


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[list[int]]:
    """SIGINT/SIGTERM set a flag that the loop reads after each step (a second SIGINT interrupts at once)."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, frame: Any) -> None:
        if received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        received.append(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _fingerprint(
    module: nn.Module, state: TrainState, data: Source, loop: Loop, loss: Loss, extra: Mapping[str, Any]
) -> dict[str, Any]:
    # The run's length is not in it (a finished run may be extended); a schedule that depends on it is, through
    # the optimizer's kwargs (fit(optimizer=...) records them with total_steps).
    state_kinds = re.findall(r"namedtuple\[(\w+)\]", str(jax.tree.structure(state.opt_state)))
    return {
        "model": " ".join(repr(module).split()),
        "groups": repr(state.groups),
        "optimizer_state": ", ".join(state_kinds),
        "loss": repr(loss),
        "batch_size": loop.batch_size,
        "seed": loop.seed,
        "data": data_digest(data),
        "num_examples": len(data),
        **dict(extra),
    }


def fit(
    module: nn.Module,
    variables: Mapping[str, Any],
    data: Source,
    *,
    tx: optax.GradientTransformation | TxFactory | None = None,
    optimizer: Mapping[str, Any] | None = None,
    groups: ParamGroups | str | Sequence[str] | None = None,
    loop: Loop = Loop(),
    checkpoints: Checkpoints | None = None,
    loss: Loss | str = "ce",
    augment: Augment | None = None,
    corrupt: Augment | None = None,
    eval_data: Source | None = None,
    callbacks: Sequence[OnStep] = (),
    progress: bool = True,
    run_info: Mapping[str, Any] | None = None,
) -> FitResult:
    """Train ``module`` from ``variables`` on ``data`` (a :class:`~jaxtl.data.source.Source`, e.g. an
    ``ArrayDataset`` ``[N,H,W,C]`` or a streaming image folder), data-parallel; returns a :class:`FitResult`.

    ``tx`` is a plain optax optimizer (or a factory ``Group -> optimizer``), or ``optimizer`` the keyword
    arguments of :func:`make_optimizer` (``total_steps`` filled in; groups' ``lr_scale``/``weight_decay_scale``
    applied). ``groups`` (:class:`ParamGroups`, or regexes of the trainable paths) says what trains: e.g.
    ``ParamGroups.head_only()`` freezes the backbone, BatchNorm included. ``loss``: ``"ce"``/``CrossEntropy(...)``
    or ``"mse"``/``Reconstruction()`` (an autoencoder: the target is the clean input). ``augment(rng, images)`` runs
    on device first; ``corrupt(rng, images)`` then changes only the model's input (denoising).

    ``checkpoints`` (:class:`Checkpoints`): metrics as JSON lines in ``workdir/metrics.jsonl``, resumable
    checkpoints, automatic resume, the workdir locked and its run fingerprint checked (``run_info`` adds fields
    that the arguments cannot show, e.g. an optimizer's learning rate when ``tx`` is given). A NaN/inf loss raises
    :class:`NonFiniteLossError` before anything of that step is saved; SIGINT/SIGTERM stop the run after the
    current step with a checkpoint (:class:`RunInterrupted`). ``callbacks``: ``fn(step, train_metrics)`` for every
    step in order (after its checkpoint if it has one; the next step may already be computing).
    """
    if (tx is None) == (optimizer is None):
        raise ValueError("give exactly one of tx= (an optax optimizer) or optimizer= (make_optimizer kwargs)")
    loss = get_loss(loss)
    if loss.needs_labels and data.labels is None:
        raise ValueError(f"loss {loss!r} needs labeled data; use loss='mse' for unlabeled data")
    par = Parallel(loop.parallel)
    if par.kind == "none" and jax.process_count() > 1:
        raise ValueError(
            f"parallel='none' trains on one device; this is a {jax.process_count()}-process run (jax.distributed): "
            "use parallel='pmap' or 'shard_map' (CLI: --parallel pmap)"
        )
    batch_size = loop.batch_size
    if batch_size % par.num_devices:
        raise ValueError(
            f"batch_size={batch_size} is not divisible by the {par.num_devices} devices ({par.kind}); "
            f"use a multiple of {par.num_devices}"
        )
    eval_batch_size = loop.eval_batch_size or batch_size
    if eval_batch_size % par.num_devices:
        raise ValueError(f"eval_batch_size={eval_batch_size} is not divisible by the {par.num_devices} devices")
    if loss.needs_labels:
        check_labels(data, head_classes(variables, head_name(module)))
        if eval_data is not None:
            check_labels(eval_data, head_classes(variables, head_name(module)), "eval data")
    steps_per_epoch, total = run_length(len(data), batch_size, loop.epochs, loop.steps)
    if tx is None:
        opts = {"total_steps": total, **(optimizer or {})}
        tx = functools.partial(_group_optimizer, opts)
        run_info = {"optimizer": dict(opts), **(run_info or {})}
    eval_every = loop.eval_every or steps_per_epoch
    host_state = TrainState.create(
        module, dict(variables), tx, jax.random.PRNGKey(loop.seed), groups, data.normalization
    )
    main = jax.process_index() == 0
    notices: list[tuple[str, Any]] = []
    store: RunStore | None = None
    step, last_ckpt = 0, None
    history: list[dict[str, Any]] = []
    metrics_path = None
    if checkpoints is not None:
        # Room for one more checkpoint plus Orbax's metadata; the older ones already occupy their space.
        workdir = check_workdir(checkpoints.workdir, int(checkpoint_bytes(host_state) * 1.1) + 2**20)
        best = checkpoints.best_metric
        if best is None and eval_data is not None:
            best = "top1" if loss.needs_labels else "loss"
        store = RunStore(
            workdir,
            _fingerprint(module, host_state, data, loop, loss, run_info or {}),
            keep=checkpoints.keep,
            best_metric=best,
            best_mode="min" if best == "loss" else "max",
            allow_changes=checkpoints.allow_changes,
        )
        metrics_path = workdir / "metrics.jsonl"
        try:
            restored = store.restore_latest(host_state)
        except BaseException:
            store.close()
            raise
        if restored is not None:
            host_state, position = restored
            step = last_ckpt = int(position["step"])
            if (position["epoch"], position["batch"]) != divmod(step, steps_per_epoch):
                store.close()
                raise ValueError(
                    f"checkpoint at step {step} was written with epoch/batch {position['epoch']}/{position['batch']}, "
                    f"inconsistent with {steps_per_epoch} batches per epoch: was batch_size or the dataset changed?"
                )
            history = _metrics_log(metrics_path, step)
            notices.append(("finished", None) if step >= total else ("resuming", workdir))
        from jaxtl.train.checkpoint import _sync

        _sync("jaxtl_fit_metrics_log")
    checkpoint_every = (checkpoints.every if checkpoints is not None else None) or steps_per_epoch
    resumed_from = step

    def log(record: dict[str, Any]) -> None:
        history.append(record)
        if metrics_path is not None and main:
            with metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    step_fn = par.map(functools.partial(train_step, loss=loss, augment=augment, corrupt=corrupt))
    eval_fn = _eval_fn(module, loss, host_state.normalization, par)
    state = par.put_state(host_state)
    bar = Progress(total, initial=step, desc="fit", enabled=progress and main)
    for kind, where in notices:
        if kind == "finished":
            bar.already_finished()
        else:
            bar.resuming(step, where)
    bar.start()
    clock = [time.perf_counter()]
    pending: tuple[int, int, int, Any] | None = None

    def finish(done: int, epoch: int, b: int, metrics: Any, callback: bool = True) -> dict[str, float]:
        """Step ``done`` is over: fetch its metrics, check the loss, log, show progress, run the callbacks."""
        m = par.get_metrics(metrics)
        if not math.isfinite(m["loss"]):
            raise NonFiniteLossError(done, m["loss"], last_ckpt)
        now = time.perf_counter()
        dt, clock[0] = now - clock[0], now
        bar.update(1, loss=f"{m['loss']:.4f}", img_s=f"{batch_size / dt:.0f}")
        log({"step": done, "split": "train", "epoch": epoch, "batch": b, **m, "images_per_s": batch_size / dt})
        if callback:
            for cb in callbacks:
                cb(done, m)
        return m

    try:
        with _stop_on_signals() as received:
            while step < total and not received:
                epoch, start = divmod(step, steps_per_epoch)
                stop = min(steps_per_epoch, start + total - step)
                batches = data.batches(
                    batch_size,
                    seed=loop.seed,
                    epoch=epoch,
                    start_batch=start,
                    process_index=par.process_index,
                    process_count=par.process_count,
                    train=True,
                )
                for b, batch in zip(range(start, stop), prefetch_to_device(batches, loop.prefetch, par.put_batch)):
                    state, metrics = step_fn(state, batch)
                    step += 1
                    # One step stays in flight: the previous step's metrics are read (a host sync) only once this
                    # one is queued, so the device never waits for the host between steps.
                    if pending is not None:
                        finish(*pending)
                    pending = (step, epoch, b, metrics)
                    eval_due = eval_data is not None and (step % eval_every == 0 or step == total)
                    ckpt_due = store is not None and (step % checkpoint_every == 0 or step == total or bool(received))
                    if not (eval_due or ckpt_due or received):
                        continue
                    m = finish(*pending, callback=False)  # its loss is checked before anything of it is saved
                    pending = None
                    eval_metrics_ = None
                    if eval_due:
                        assert eval_data is not None
                        eval_metrics_ = evaluate_variables(
                            module, state.variables, eval_data, eval_batch_size, par=par, loss=loss, eval_fn=eval_fn
                        )
                        log({"step": step, "split": "eval", **eval_metrics_})
                    if ckpt_due:
                        assert store is not None
                        position = {"step": step, "epoch": step // steps_per_epoch, "batch": step % steps_per_epoch}
                        store.save(par.get_state(state), position, eval_metrics_)
                        last_ckpt = step
                    for cb in callbacks:
                        cb(step, m)
                    clock[0] = time.perf_counter()  # eval and checkpoint time is not the next step's
                    if received:
                        break
            if pending is not None:
                finish(*pending)
                pending = None
            if received and step < total:
                where = store.workdir if store is not None else None
                raise RunInterrupted(received[0], step, last_ckpt if store is not None else None, where)
    finally:
        bar.close()
        if store is not None:
            store.close()
    final = par.get_state(state)
    return FitResult(final, final.variables, history, resumed_from)


def _group_optimizer(opts: Mapping[str, Any], group: Any) -> optax.GradientTransformation:
    """:func:`make_optimizer` for one parameter group: its learning rate and weight decay scaled."""
    kwargs = dict(opts)
    kwargs["lr"] = kwargs.get("lr", 0.01) * group.lr_scale
    kwargs["weight_decay"] = kwargs.get("weight_decay", 0.0) * group.weight_decay_scale
    return make_optimizer(**kwargs)
