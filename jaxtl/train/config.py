"""The training configs: :class:`Optimizer`, :class:`Loop` (with :class:`~jaxtl.train.ema.EMA` and
:class:`Stopping`), :class:`Regularization` (what a classifier's loss adds) and :class:`Checkpoints`.

Frozen and self-validating: a bad value raises :class:`~jaxtl.errors.ConfigError` naming its field when the
config is built, before any work. The recipe configs (:mod:`jaxtl.recipes.config`) hold these whole.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import optax

from jaxtl.errors import ConfigError
from jaxtl.train.ema import EMA
from jaxtl.train.losses import CrossEntropy, balanced_class_weights
from jaxtl.train.mixing import Mixing
from jaxtl.train.optim import OPTIMIZERS, SCHEDULES, make_optimizer, make_schedule

if TYPE_CHECKING:
    from jaxtl.lifecycle import Run

PARALLEL_CHOICES = ("auto", "pmap", "shard_map", "none")
STOP_METRICS = ("loss", "top1", "top5")


def check_number(
    value: Any,
    field: str,
    *,
    low: float | None = None,
    low_open: bool = False,
    integer: bool = False,
    none_ok: bool = False,
) -> None:
    """:class:`ConfigError` naming ``field`` unless ``value`` is a finite (integer) number above ``low``."""
    if value is None and none_ok:
        return
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        raise ConfigError(f"{field} must be {kind}, got {value!r}", field)
    if not math.isfinite(value):
        raise ConfigError(f"{field} must be finite, got {value!r}", field)
    if low is not None and (value <= low if low_open else value < low):
        raise ConfigError(f"{field} must be {'>' if low_open else '>='} {low:g}, got {value!r}", field)


def check_choice(value: Any, field: str, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{field} must be one of {', '.join(map(str, choices))}; got {value!r}", field)


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """An optimizer by name: ``"adamw"`` (decoupled weight decay) or ``"sgd"`` (torch-style: L2 ``weight_decay``
    added to the gradient, then ``momentum``), peak learning rate ``lr`` after ``warmup_steps`` of linear warm-up,
    then ``schedule`` ``"cosine"`` (to 0 at the run's last step) or ``"constant"``; optional global-norm clipping
    at ``clip_norm``. Weight decay and clipping see trainable parameters only (the parameter groups wrap it)."""

    name: str = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "cosine"
    clip_norm: float | None = None

    def __post_init__(self) -> None:
        check_choice(self.name, "optimizer", OPTIMIZERS)
        check_number(self.lr, "lr", low=0, low_open=True)
        check_number(self.momentum, "momentum", low=0)
        check_number(self.weight_decay, "weight_decay", low=0)
        check_number(self.warmup_steps, "warmup_steps", low=0, integer=True)
        check_choice(self.schedule, "schedule", SCHEDULES)
        check_number(self.clip_norm, "clip_norm", low=0, low_open=True, none_ok=True)

    def build(self, total_steps: int, lr_scale: float = 1.0, weight_decay_scale: float = 1.0) -> Any:
        """The optax optimizer for a run of ``total_steps`` (one parameter group's scales applied)."""
        if self.schedule == "cosine" and total_steps <= self.warmup_steps:
            raise ConfigError(
                f"the run has {total_steps} steps, not more than warmup_steps={self.warmup_steps}", "warmup_steps"
            )
        return make_optimizer(
            self.name,
            self.lr * lr_scale,
            momentum=self.momentum,
            nesterov=self.nesterov,
            weight_decay=self.weight_decay * weight_decay_scale,
            warmup_steps=self.warmup_steps,
            total_steps=total_steps,
            schedule=self.schedule,
            clip_norm=self.clip_norm,
        )

    def factory(self, total_steps: int) -> Any:
        """``Group -> optax optimizer`` for :meth:`ParamGroups.optimizer` (each group's lr/decay scales)."""

        def make(group: Any) -> optax.GradientTransformation:
            return self.build(total_steps, group.lr_scale, group.weight_decay_scale)

        return make

    def schedule_fn(self, total_steps: int) -> Any:
        """The learning rate at an optimizer step (the peak group's; other groups scale it), for logs."""
        return make_schedule(self.lr, self.warmup_steps, total_steps, self.schedule)

    def identity(self, total_steps: int | None) -> dict[str, Any]:
        """What decides the updates; a cosine schedule depends on the run's length, a constant one does not.
        ``total_steps`` counts optimizer steps (batches / ``Loop.accumulate``)."""
        out = {f"optimizer.{f.name}": getattr(self, f.name) for f in dataclasses.fields(self)}
        out["optimizer.total_steps"] = total_steps if self.schedule == "cosine" else None
        return out


@dataclasses.dataclass(frozen=True)
class Stopping:
    """Early stopping and reduce-on-plateau on an eval ``metric`` (``"loss"``, minimised, or ``"top1"``/``"top5"``,
    maximised; ``mode`` ``"min"``/``"max"`` overrides), checked at every evaluation (``Loop.eval_every``). An
    evaluation improves when it beats the best so far by more than ``min_delta``. Needs evaluation data (``fit``'s
    ``eval_data``; ``finetune``'s held-out split).

    - ``patience``: stop once that many evaluations in a row brought no improvement (Keras's ``EarlyStopping``;
      None: never stop early); ``restore_best``: the run's result is then the state of its best evaluation (its
      checkpoint, with a work directory).
    - ``reduce_patience``: after more than that many evaluations without improvement multiply the learning rate by
      ``reduce_factor`` (not below ``min_lr_scale`` times the schedule's), then wait ``cooldown`` evaluations
      (torch's ``ReduceLROnPlateau``; None: off).

    The trackers' state is saved with every checkpoint, so a resumed run continues them exactly."""

    metric: str = "loss"
    mode: str | None = None
    patience: int | None = None
    min_delta: float = 0.0
    restore_best: bool = True
    reduce_patience: int | None = None
    reduce_factor: float = 0.1
    min_lr_scale: float = 0.0
    cooldown: int = 0

    def __post_init__(self) -> None:
        check_choice(self.metric, "stopping_metric", STOP_METRICS)
        if self.mode is not None:
            check_choice(self.mode, "stopping_mode", ("min", "max"))
        check_number(self.patience, "patience", low=1, integer=True, none_ok=True)
        check_number(self.min_delta, "min_delta", low=0)
        if not isinstance(self.restore_best, bool):
            raise ConfigError(f"restore_best must be True or False, got {self.restore_best!r}", "restore_best")
        check_number(self.reduce_patience, "reduce_patience", low=0, integer=True, none_ok=True)
        check_number(self.reduce_factor, "reduce_factor", low=0, low_open=True)
        if not self.reduce_factor < 1:
            raise ConfigError(f"reduce_factor must lie in (0, 1), got {self.reduce_factor}", "reduce_factor")
        check_number(self.min_lr_scale, "min_lr_scale", low=0)
        if not self.min_lr_scale <= 1:
            raise ConfigError(f"min_lr_scale must lie in [0, 1], got {self.min_lr_scale}", "min_lr_scale")
        check_number(self.cooldown, "cooldown", low=0, integer=True)
        if self.patience is None and self.reduce_patience is None:
            raise ConfigError(
                "Stopping needs patience (early stopping) or reduce_patience (reduce-on-plateau), or both",
                "patience",
            )

    @property
    def resolved_mode(self) -> str:
        """``mode``, or ``"min"`` for the loss and ``"max"`` for accuracies."""
        return self.mode or ("min" if self.metric == "loss" else "max")

    @property
    def reduces_lr(self) -> bool:
        return self.reduce_patience is not None

    @property
    def restores_best(self) -> bool:
        """Whether a stop restores the best evaluation's state (early stopping on, ``restore_best``)."""
        return self.patience is not None and self.restore_best

    def identity(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "mode": self.resolved_mode}


@dataclasses.dataclass(frozen=True)
class Loop:
    """How long and in what order a run trains. ``batch_size`` is the global batch; run length is ``steps`` or
    ``epochs`` (``N // batch_size`` steps each: the ragged last batch is dropped). Eval runs every ``eval_every``
    steps (default: every epoch) and at the end, in batches of ``eval_batch_size`` (default ``batch_size``).
    ``parallel``: ``"auto"`` (pmap over several devices, else one device), ``"pmap"``, ``"shard_map"`` or
    ``"none"``; ``prefetch`` batches are kept on the devices ahead of the step.

    Off unless asked: ``accumulate=N`` averages the gradients of N batches into one optimizer step (an effective
    batch of ``N * batch_size``; ``steps``, ``eval_every`` and checkpoints count batches, the learning-rate schedule
    and ``warmup_steps`` count optimizer steps; the run's batches must be a multiple of N); ``ema``
    (:class:`~jaxtl.train.ema.EMA`) keeps a weight average, evaluated beside the model; ``stopping``
    (:class:`Stopping`) stops early and/or lowers the learning rate on an eval metric's plateau."""

    batch_size: int = 32
    epochs: int | None = None
    steps: int | None = None
    seed: int = 0
    eval_every: int | None = None
    eval_batch_size: int | None = None
    parallel: str = "auto"
    prefetch: int = 2
    accumulate: int = 1
    ema: EMA | None = None
    stopping: Stopping | None = None

    def __post_init__(self) -> None:
        check_number(self.batch_size, "batch_size", low=1, integer=True)
        check_number(self.epochs, "epochs", low=1, integer=True, none_ok=True)
        check_number(self.steps, "steps", low=1, integer=True, none_ok=True)
        check_number(self.seed, "seed", low=0, integer=True)
        check_number(self.eval_every, "eval_every", low=1, integer=True, none_ok=True)
        check_number(self.eval_batch_size, "eval_batch_size", low=1, integer=True, none_ok=True)
        check_choice(self.parallel, "parallel", PARALLEL_CHOICES)
        check_number(self.prefetch, "prefetch", low=1, integer=True)
        if self.epochs is not None and self.steps is not None:
            raise ConfigError(f"give epochs or steps, not both (epochs={self.epochs}, steps={self.steps})", "steps")
        check_number(self.accumulate, "accumulate", low=1, integer=True)
        if self.ema is not None and not isinstance(self.ema, EMA):
            raise ConfigError(f"ema must be an EMA(decay, warmup, every) or None, got {type(self.ema).__name__}", "ema")
        if self.stopping is not None and not isinstance(self.stopping, Stopping):
            raise ConfigError(
                f"stopping must be a Stopping(...) or None, got {type(self.stopping).__name__}", "stopping"
            )
        if self.steps is not None:
            self.check_length(self.steps)

    def check_length(self, batches: int) -> None:
        """:class:`ConfigError` unless a run of ``batches`` batches ends on a whole optimizer step."""
        k = self.accumulate
        if batches % k:
            lower, upper = batches // k * k, -(-batches // k) * k
            choices = f"{lower} or {upper}" if lower else str(upper)
            raise ConfigError(
                f"the run has {batches} batches, not a multiple of accumulate={k} (its last optimizer step would be "
                f"incomplete): make it {choices} batches (steps), or choose accumulate to divide {batches}",
                "accumulate",
            )

    def optimizer_steps(self, batches: int) -> int:
        """The optimizer steps of a run of ``batches`` batches (what a learning-rate schedule spans)."""
        return batches // self.accumulate

    def identity(self) -> dict[str, Any]:
        """What decides the numbers: the batch size and the seed (order, augmentation, head init), and the options
        that are on (an option off leaves no entry, so a run's identity reads as before the option existed)."""
        out: dict[str, Any] = {"loop.batch_size": self.batch_size, "loop.seed": self.seed}
        if self.accumulate != 1:
            out["loop.accumulate"] = self.accumulate
        if self.ema is not None:
            out["loop.ema"] = dataclasses.asdict(self.ema)
        if self.stopping is not None:
            out["loop.stopping"] = {**self.stopping.identity(), "eval_every": self.eval_every}
        return out


@dataclasses.dataclass(frozen=True)
class Regularization:
    """What fine-tuning's loss adds, each off by default:

    - ``label_smoothing`` ``s``: the target becomes ``(1 - s) * onehot + s / K`` (torch's convention);
    - ``class_weights``: ``"balanced"`` (``n / (K * count)`` per class over the training split, scikit-learn's
      rule) or one weight per class; the mean loss divides by the batch's weight sum (torch's weighted mean), in
      training and in evaluation;
    - ``mixup_alpha`` / ``cutmix_alpha``: torchvision's ``v2.MixUp`` / ``v2.CutMix`` on the device (one
      ``lam ~ Beta(alpha, alpha)`` per batch, the batch mixed with itself rolled by one, soft targets; both on: one
      of the two per batch), drawn from ``(seed, step)``: the same on any number of devices or hosts. They mix
      images, so the backbone runs every step (no feature cache).
    """

    label_smoothing: float = 0.0
    class_weights: str | tuple[float, ...] | None = None
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0

    def __post_init__(self) -> None:
        check_number(self.label_smoothing, "label_smoothing", low=0)
        if not self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}", "label_smoothing")
        weights = self.class_weights
        if isinstance(weights, str):
            if weights != "balanced":
                raise ConfigError(
                    f"class_weights must be 'balanced' or one number per class, got {weights!r}", "class_weights"
                )
        elif weights is not None:
            if not isinstance(weights, Sequence) or not weights:
                raise ConfigError(
                    f"class_weights must be 'balanced' or one number per class, got {weights!r}", "class_weights"
                )
            for w in weights:
                check_number(w, "class_weights", low=0)
            if not any(float(w) > 0 for w in weights):
                raise ConfigError("class_weights are all 0: at least one class must count", "class_weights")
            object.__setattr__(self, "class_weights", tuple(float(w) for w in weights))
        check_number(self.mixup_alpha, "mixup_alpha", low=0)
        check_number(self.cutmix_alpha, "cutmix_alpha", low=0)

    @property
    def mixing(self) -> Mixing | None:
        """The :class:`~jaxtl.train.mixing.Mixing` the step applies, or None (both alphas 0)."""
        if self.mixup_alpha == 0 and self.cutmix_alpha == 0:
            return None
        return Mixing(self.mixup_alpha, self.cutmix_alpha)

    def loss(self, labels: np.ndarray, num_classes: int) -> CrossEntropy:
        """The training loss for a split with ``labels`` of ``num_classes`` classes (``"balanced"`` resolved)."""
        weights = self.class_weights
        if weights == "balanced":
            try:
                weights = balanced_class_weights(labels, num_classes)
            except ValueError as e:
                raise ConfigError(str(e), "class_weights") from None
        elif weights is not None and len(weights) != num_classes:
            raise ConfigError(
                f"class_weights has {len(weights)} weights, the data has {num_classes} classes: give one per class",
                "class_weights",
            )
        return CrossEntropy(self.label_smoothing, weights, self.mixing)  # type: ignore[arg-type]

    def identity(self) -> dict[str, Any]:
        """``label_smoothing`` always (as before the others existed); the others when on."""
        out: dict[str, Any] = {"label_smoothing": self.label_smoothing}
        if self.class_weights is not None:
            out["class_weights"] = self.class_weights
        for name in ("mixup_alpha", "cutmix_alpha"):
            if getattr(self, name):
                out[name] = getattr(self, name)
        return out


def fit_batch(batch_size: int, num_examples: int, devices: int) -> int:
    """The global batch a run trains with, by one rule on every route: ``batch_size`` must be a multiple of the
    device count (:class:`ConfigError` otherwise); when the data holds fewer examples than one batch, the batch is
    the data size rounded down to the devices, with a warning saying so."""
    if batch_size % devices:
        lower, upper = batch_size // devices * devices, -(-batch_size // devices) * devices
        choices = f"{lower} or {upper}" if lower else str(upper)
        raise ConfigError(
            f"batch_size={batch_size} is not a multiple of the {devices} devices: use {choices}", "batch_size"
        )
    if num_examples >= batch_size:
        return batch_size
    clamped = num_examples // devices * devices
    if clamped < 1:
        raise ConfigError(
            f"{num_examples} training examples cannot fill one batch on {devices} devices (one example each)",
            "batch_size",
        )
    warnings.warn(
        f"batch_size={batch_size} is larger than the {num_examples} training examples: training with batches of "
        f"{clamped}",
        stacklevel=3,
    )
    return clamped


@dataclasses.dataclass(frozen=True)
class Checkpoints:
    """Where and how often a run is saved: ``workdir/checkpoints`` every ``every`` steps (default: every epoch) and
    at the end, the latest ``keep`` plus the best by eval ``best_metric`` (``"top1"``, or ``"loss"`` minimised;
    default top-1 for a classifier, else the loss; with early stopping: what it monitors). ``workdir`` is a path
    (``fit`` opens the run there: lock, identity, signals) or a :class:`~jaxtl.lifecycle.Run` a recipe already
    holds. ``allow_changes`` continues a work directory that holds a run with another identity. ``tensorboard``:
    TensorBoard event files in ``workdir/tensorboard`` (``tensorboard --logdir WORKDIR``), on by default."""

    workdir: str | os.PathLike[str] | Run
    every: int | None = None
    keep: int = 3
    best_metric: str | None = None
    allow_changes: bool = False
    tensorboard: bool = True

    def __post_init__(self) -> None:
        check_number(self.every, "every", low=1, integer=True, none_ok=True)
        check_number(self.keep, "keep", low=1, integer=True)
        if self.best_metric not in (None, "top1", "loss"):
            raise ConfigError(f"best_metric must be 'top1', 'loss' or None; got {self.best_metric!r}", "best_metric")
        if not isinstance(self.tensorboard, bool):
            raise ConfigError(f"tensorboard must be True or False, got {self.tensorboard!r}", "tensorboard")
