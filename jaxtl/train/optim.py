"""Optimizers and learning-rate schedules by name (what the CLI and ``fit(optimizer=...)`` use)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import optax
from flax import traverse_util

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant")


def make_schedule(
    lr: float, warmup_steps: int = 0, total_steps: int | None = None, schedule: str = "cosine"
) -> optax.Schedule:
    """Linear warmup from 0 over ``warmup_steps``, then constant or cosine decay to 0 at ``total_steps``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if schedule == "cosine":
        if total_steps is None:
            raise ValueError("schedule='cosine' needs total_steps")
        if total_steps <= warmup_steps:
            raise ValueError(f"total_steps={total_steps} must exceed warmup_steps={warmup_steps}")
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, total_steps, end_value=0.0)
    if warmup_steps == 0:
        return optax.constant_schedule(lr)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup_steps), optax.constant_schedule(lr)], [warmup_steps]
    )


def make_optimizer(
    name: str = "sgd",
    lr: float = 0.01,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    total_steps: int | None = None,
    schedule: str = "cosine",
    clip_norm: float | None = None,
) -> optax.GradientTransformation:
    """An optax optimizer by name: ``"sgd"`` (torch-style: L2 ``weight_decay`` added to the gradient, then
    momentum) or ``"adamw"`` (decoupled weight decay). Optional global-norm clipping runs first.

    Wrap the result with :func:`jaxtl.freeze` (``fit`` does it) so decay and clipping see trainable leaves only.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    sched = make_schedule(lr, warmup_steps, total_steps, schedule)
    parts: list[optax.GradientTransformation] = []
    if clip_norm is not None:
        if clip_norm <= 0:
            raise ValueError(f"clip_norm must be positive, got {clip_norm}")
        parts.append(optax.clip_by_global_norm(clip_norm))
    if name == "sgd":
        if weight_decay:
            parts.append(optax.add_decayed_weights(weight_decay))
        parts.append(optax.sgd(sched, momentum=momentum or None, nesterov=nesterov))
    else:
        parts.append(optax.adamw(sched, weight_decay=weight_decay))
    return optax.chain(*parts)


def accumulate_gradients(
    tx: optax.GradientTransformation, every: int, trainable_labels: Any = None
) -> optax.GradientTransformation:
    """``tx`` applied to the mean gradient of ``every`` consecutive micro-batches (``optax.MultiSteps``): the
    first ``every - 1`` calls return zero updates and only accumulate, the ``every``-th runs ``tx`` once. So N
    micro-batches of B give the update of one batch of N*B (BatchNorm aside: it normalises each micro-batch), and
    ``tx``'s own counters (a learning-rate schedule's step) count *optimizer* steps, not micro-steps. The running
    mean and the micro-step counter live in the optimizer state, so a checkpoint taken mid-accumulation resumes
    exactly.

    ``trainable_labels``: a pytree like the params of ``"accumulate"``/``"frozen"`` labels (see
    :func:`trainable_labels`), or None when everything trains. Frozen leaves then get exact zeros and no
    accumulator, so a frozen backbone costs no memory here.
    """
    if isinstance(every, bool) or not isinstance(every, numbers.Integral) or every < 1:
        raise ValueError(f"gradient accumulation needs an int >= 1 of micro-batches per update, got {every!r}")
    acc = optax.MultiSteps(tx, every_k_schedule=int(every)).gradient_transformation()
    if trainable_labels is None:
        return acc
    return optax.partition({"accumulate": acc, "frozen": optax.set_to_zero()}, trainable_labels)


def trainable_labels(params: Any, trainable: Sequence[str]) -> Any:
    """``"accumulate"`` for the ``trainable`` paths, ``"frozen"`` for the rest, shaped like ``params``."""
    keep = set(trainable)
    flat = traverse_util.flatten_dict(dict(params), sep="/")
    return traverse_util.unflatten_dict({p: "accumulate" if p in keep else "frozen" for p in flat}, sep="/")
