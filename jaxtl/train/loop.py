"""The body of ``fit``: one run's moving parts (the mapped step, the state on the devices, evaluation, the
early-stopping monitor, checkpoints, the log) and the loop over batches.

One step stays in flight: the previous step's metrics are read (a host sync) only once the next one is queued, so
the device never waits for the host between steps. Evaluation and checkpoints happen between steps; a checkpoint
holds the state, the data position and the early-stopping/plateau trackers, so a resumed run continues exactly.

Start-up: the train step is compiled from the batch's shapes while the first batch is fetched in the background
(:mod:`jaxtl.train.startup`: the data workers start meanwhile); the eval step compiles when the first evaluation
needs it, while that evaluation's first batch is fetched.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np

from jaxtl.data.batching import run_length
from jaxtl.data.protocol import Source
from jaxtl.errors import JaxtlError
from jaxtl.lifecycle import Run, RunInterrupted
from jaxtl.train.config import Loop
from jaxtl.train.evaluation import eval_function, evaluate_variables
from jaxtl.train.losses import Loss, Reconstruction
from jaxtl.train.parallel import Parallel, prefetch_to_device
from jaxtl.train.plateau import Monitor, set_lr_scale
from jaxtl.train.progress import Progress
from jaxtl.train.run_log import RunLog
from jaxtl.train.run_store import RunStore
from jaxtl.train.startup import Ahead, Program, batch_spec, spec_of
from jaxtl.train.state import TrainState
from jaxtl.train.step import Augment, prepare_images, train_step
from jaxtl.train.timings import mark, phase

__all__ = ["BEST_RANK", "NonFiniteLossError", "OnStep", "Outputs", "Request", "TrainingLoop"]

OnStep = Callable[[int, dict[str, float]], None]
BEST_RANK = "best_rank"  # the checkpoint metric that makes early stopping's best the store's best
SAMPLE_IMAGES = 8  # input images (and reconstructions) shown in TensorBoard at the end


class NonFiniteLossError(JaxtlError, RuntimeError):
    """The training loss became NaN or infinite; the run stopped before checkpointing the bad state."""

    def __init__(self, step: int, loss: float, last_checkpoint: int | None):
        self.step, self.loss, self.last_checkpoint = step, loss, last_checkpoint
        where = f"last good checkpoint: step {last_checkpoint}" if last_checkpoint is not None else "no checkpoint"
        super().__init__(
            f"non-finite loss {loss} at step {step}; stopped ({where}). Lower the learning rate or check the data"
        )


@dataclasses.dataclass(frozen=True)
class Request:
    """What a fit run was asked to do (``total`` batches; ``schedule``: the learning rate at an optimizer step, when
    the optimizer was given by name, for the logs)."""

    data: Source
    loop: Loop
    total: int
    loss: Loss
    augment: Augment | None = None
    eval_data: Source | None = None
    callbacks: Sequence[OnStep] = ()
    progress: bool = True
    schedule: Callable[[int], Any] | None = None


@dataclasses.dataclass
class Outputs:
    """Where a run writes: its open :class:`~jaxtl.lifecycle.Run`, checkpoints (``every`` batches; None: every
    epoch) and log; all but the log absent without a work directory."""

    log: RunLog
    run: Run | None = None
    store: RunStore | None = None
    every: int | None = None


class TrainingLoop:
    """One fit run from ``step`` (0, or the step a checkpoint restored) with ``monitor`` (the early-stopping and
    plateau trackers, restored too) when ``request.loop.stopping`` is set."""

    def __init__(
        self,
        state: TrainState,
        par: Parallel,
        request: Request,
        outputs: Outputs,
        *,
        step: int = 0,
        monitor: Monitor | None = None,
    ):
        r = self.r = request
        self.par, self.out, self.monitor = par, outputs, monitor
        self.step, self.last_ckpt = step, step if step else None
        self.main = jax.process_index() == 0
        self.per_epoch = run_length(len(r.data), r.loop.batch_size, r.loop.epochs, r.loop.steps)[0]
        self.eval_every = r.loop.eval_every or self.per_epoch
        self.ckpt_every = outputs.every or self.per_epoch
        self.step_fn = Program(par.map(functools.partial(train_step, loss=r.loss, augment=r.augment)), "train step")
        self.eval_fn = eval_function(state.module, r.loss, state.normalization, par)
        self.template = state  # host arrays: what a checkpoint is restored into
        self.state = par.put_state(state)
        self.lr_scale = monitor.reduce.scale if monitor is not None and monitor.reduce is not None else 1.0
        self.lr_at = None if r.schedule is None else jax.jit(r.schedule)
        self.best_host: TrainState | None = None  # the best evaluation's state, kept without a work directory
        self.sample: np.ndarray | None = None  # a few input images for TensorBoard
        self.bar = Progress(r.total, initial=step, desc="fit", enabled=r.progress and self.main)
        self.clock = time.perf_counter()
        self.pending: tuple[int, int, int, Any] | None = None
        self.first_step = step + 1  # the step whose metrics mark the end of start-up
        self.first_batch_at: float | None = None

    # -- one step's bookkeeping --

    def finish(self, done: int, epoch: int, b: int, metrics: Any, callback: bool = True) -> dict[str, float]:
        """Step ``done`` is over: fetch its metrics, check the loss, log, show progress, run the callbacks."""
        m = self.par.get_metrics(metrics)
        if done == self.first_step and self.first_batch_at is not None:
            mark("train: first step", self.first_batch_at)
        if not math.isfinite(m["loss"]):
            raise NonFiniteLossError(done, m["loss"], self.last_ckpt)
        now = time.perf_counter()
        dt, self.clock = now - self.clock, now
        bs = self.r.loop.batch_size
        self.bar.update(1, loss=f"{m['loss']:.4f}", img_s=f"{bs / dt:.0f}")
        record = {"step": done, "split": "train", "epoch": epoch, "batch": b, **m, "images_per_s": bs / dt}
        if self.lr_at is not None:  # the rate this batch's gradient is applied with (its optimizer step's)
            record["lr"] = float(self.lr_at((done - 1) // self.r.loop.accumulate)) * self.lr_scale
        self.out.log.log(record)
        if callback:
            for cb in self.r.callbacks:
                cb(done, m)
        return m

    def epoch_batches(self, epoch: int, start: int) -> Iterator[Any]:
        batches = self.r.data.batches(
            self.r.loop.batch_size,
            seed=self.r.loop.seed,
            epoch=epoch,
            start_batch=start,
            process_index=self.par.process_index,
            process_count=self.par.process_count,
            train=True,
        )
        if self.out.log.tensorboard and self.sample is None:
            batches = self._keep_sample(batches)
        return prefetch_to_device(batches, self.r.loop.prefetch, self.par.put_batch)

    def _keep_sample(self, batches: Iterator[Any]) -> Iterator[Any]:
        for batch in batches:
            if self.sample is None:
                self.sample = np.array(batch["images"][:SAMPLE_IMAGES])
            yield batch

    def after_step(self, epoch: int, b: int, metrics: Any, signalled: bool) -> None:
        """Evaluate and checkpoint when due (or stopping); otherwise keep one step in flight."""
        step = self.step
        if self.pending is not None:
            self.finish(*self.pending)
        self.pending = (step, epoch, b, metrics)
        eval_due = self.r.eval_data is not None and (step % self.eval_every == 0 or step == self.r.total)
        ckpt_due = self.out.store is not None and (step % self.ckpt_every == 0 or step == self.r.total or signalled)
        if not (eval_due or ckpt_due or signalled):
            return
        m = self.finish(*self.pending, callback=False)  # its loss is checked before anything of it is saved
        self.pending = None
        ranked = None
        if eval_due:
            ranked, must_save = self.evaluate(step)
            ckpt_due = ckpt_due or (must_save and self.out.store is not None)
        if ckpt_due:
            self.save(step, ranked)
        for cb in self.r.callbacks:
            cb(step, m)
        self.clock = time.perf_counter()  # eval and checkpoint time is not the next step's

    # -- evaluation, early stopping, checkpoints --

    def _evaluate(self, variables: Any) -> dict[str, float]:
        assert self.r.eval_data is not None
        size = self.r.loop.eval_batch_size or self.r.loop.batch_size
        return evaluate_variables(
            self.state.module, variables, self.r.eval_data, size, par=self.par, loss=self.r.loss, eval_fn=self.eval_fn
        )

    def evaluate(self, step: int) -> tuple[dict[str, float], bool]:
        """Evaluate the model (and its weight average), feed the monitor. Returns the metrics the checkpoint of this
        step is ranked by, and whether it must be saved (a new best that a stop restores, or the stop itself)."""
        evaluated = self._evaluate(self.state.variables)
        self.out.log.log({"step": step, "split": "eval", **evaluated})
        if self.state.ema is not None:
            self.out.log.log({"step": step, "split": "eval_ema", **self._evaluate(self.state.ema_variables)})
        stopping = self.r.loop.stopping
        if self.monitor is None or stopping is None:
            return evaluated, False
        decision = self.monitor.update(step, evaluated)
        if decision.lr_scale is not None:
            self.state, self.lr_scale = set_lr_scale(self.state, decision.lr_scale), decision.lr_scale
            self.bar.notice(
                f"fit: eval {stopping.metric} has not improved for more than {stopping.reduce_patience} evaluations: "
                f"learning rate x{decision.lr_scale:g} from step {step + 1}"
            )
        keeps_best = stopping.restores_best
        if decision.improved and keeps_best and self.out.store is None:
            self.best_host = self.par.get_state(self.state)
        if decision.stop:
            best = self.monitor.best.best
            record = {"step": step, "split": "stopped", "metric": stopping.metric, "best": best}
            self.out.log.log({**record, "best_step": self.monitor.best_step, "restored": keeps_best})
            restored = f"; restoring step {self.monitor.best_step}" if keeps_best else ""
            self.bar.notice(
                f"fit: early stopping at step {step}: eval {stopping.metric} has not improved on {best:.4g} "
                f"(step {self.monitor.best_step}) for {stopping.patience} evaluations{restored}"
            )
        if keeps_best:
            evaluated = {**evaluated, BEST_RANK: self.monitor.rank(decision.improved)}
        return evaluated, (decision.improved and keeps_best) or decision.stop

    def save(self, step: int, metrics: dict[str, float] | None) -> None:
        assert self.out.store is not None
        position: dict[str, Any] = {"step": step, "epoch": step // self.per_epoch, "batch": step % self.per_epoch}
        if self.monitor is not None:
            position["stopping"] = self.monitor.state_dict()
        self.out.store.save(self.par.get_state(self.state), position, metrics)
        self.last_ckpt = step

    @property
    def stopped_early(self) -> bool:
        return self.monitor is not None and self.monitor.stopped

    # -- the run --

    def start(self, batches: Iterator[Any]) -> Iterator[Any]:
        """The first epoch's batches, the first one fetched in the background while the train step compiles from
        the batch's shapes (known ahead for a streaming source; else the first batch's)."""
        ahead = Ahead(batches, "data: first batch")
        try:
            spec = batch_spec(self.r.data, self.r.loop.batch_size, self.par, train=True)
            self.step_fn.compile(self.state, spec if spec is not None else spec_of(ahead.first()))
            ahead.first()
        except BaseException:
            ahead.close()
            raise
        self.first_batch_at = time.perf_counter()
        return iter(ahead)

    def train(self) -> None:
        with phase("train: steps"):
            self._train()

    def _train(self) -> None:
        run = self.out.run
        signal = (lambda: run.stop_signal) if run is not None else (lambda: None)
        started = False
        while self.step < self.r.total and signal() is None and not self.stopped_early:
            epoch, start = divmod(self.step, self.per_epoch)
            end = min(self.per_epoch, start + self.r.total - self.step)
            batches = self.epoch_batches(epoch, start)
            if not started:
                batches, started = self.start(batches), True
            for b, batch in zip(range(start, end), batches):
                self.state, metrics = self.step_fn(self.state, batch)
                self.step += 1
                stop = signal() is not None  # read once: a signal between two reads would skip the save
                self.after_step(epoch, b, metrics, stop)
                if stop or self.stopped_early:
                    break
        if self.pending is not None:
            self.finish(*self.pending)
            self.pending = None
        signum = signal()
        if signum is not None and self.step < self.r.total and not self.stopped_early:
            if self.out.store is not None and self.step > 0 and self.last_ckpt != self.step:
                self.save(self.step, None)  # the signal came after the step's own check (between epochs, say)
            where = run.workdir if run is not None else None
            raise RunInterrupted(signum, self.step, self.last_ckpt if self.out.store is not None else None, where)

    def result_state(self) -> TrainState:
        """The state the run ends with, on the host: the last one, or the best evaluation's when early stopping
        stopped the run and restores the best."""
        state = self.par.get_state(self.state)
        stopping, monitor = self.r.loop.stopping, self.monitor
        if not (self.stopped_early and stopping is not None and stopping.restores_best and monitor is not None):
            return state
        best = monitor.best_step
        if best is None or best == self.step:
            return state
        if self.out.store is not None:
            return self.out.store.restore_step(self.template, best)[0]  # type: ignore[no-any-return]
        assert self.best_host is not None
        return self.best_host

    def log_images(self, state: TrainState) -> None:
        """At the end, into TensorBoard: a few training inputs, and an autoencoder's reconstructions of them."""
        if self.sample is None or not self.out.log.tensorboard:
            return
        norm = self.r.data.normalization
        if isinstance(self.r.loss, Reconstruction):
            x = prepare_images(jax.numpy.asarray(self.sample), norm)
            out = state.module.apply(state.variables, x, train=False)
            self.out.log.reconstructions(np.asarray(x), np.asarray(out), self.step, norm)
        else:
            self.out.log.images("inputs", self.sample, self.step)
