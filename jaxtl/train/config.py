"""The training-loop configs: :class:`Optimizer`, :class:`Loop` and :class:`Checkpoints`.

Frozen and self-validating: a bad value raises :class:`~jaxtl.errors.ConfigError` naming its field when the
config is built, before any work. The recipe configs (:mod:`jaxtl.recipes.config`) hold these whole.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from typing import TYPE_CHECKING, Any

import optax

from jaxtl.errors import ConfigError
from jaxtl.train.optim import OPTIMIZERS, SCHEDULES, make_optimizer

if TYPE_CHECKING:
    from jaxtl.lifecycle import Run

PARALLEL_CHOICES = ("auto", "pmap", "shard_map", "none")


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

    def identity(self, total_steps: int | None) -> dict[str, Any]:
        """What decides the updates; a cosine schedule depends on the run's length, a constant one does not."""
        out = {f"optimizer.{f.name}": getattr(self, f.name) for f in dataclasses.fields(self)}
        out["optimizer.total_steps"] = total_steps if self.schedule == "cosine" else None
        return out


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

    def identity(self) -> dict[str, Any]:
        """What decides the numbers: the batch size and the seed (order, augmentation, head init)."""
        return {"loop.batch_size": self.batch_size, "loop.seed": self.seed}


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
    default by the loss). ``workdir`` is a path (``fit`` opens the run there: lock, identity, signals) or a
    :class:`~jaxtl.lifecycle.Run` a recipe already holds. ``allow_changes`` continues a work directory that holds
    a run with another identity."""

    workdir: str | os.PathLike[str] | Run
    every: int | None = None
    keep: int = 3
    best_metric: str | None = None
    allow_changes: bool = False

    def __post_init__(self) -> None:
        check_number(self.every, "every", low=1, integer=True, none_ok=True)
        check_number(self.keep, "keep", low=1, integer=True)
        if self.best_metric not in (None, "top1", "loss"):
            raise ConfigError(f"best_metric must be 'top1', 'loss' or None; got {self.best_metric!r}", "best_metric")
