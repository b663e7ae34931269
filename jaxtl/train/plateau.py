"""Early stopping and reduce-on-plateau on an eval metric: small host-side trackers the fit loop feeds once per
evaluation, with their whole state as JSON (``state_dict()`` / ``load_state_dict()``), so a run resumed from a
checkpoint that saved it continues them exactly.

- :class:`EarlyStopping` follows Keras's ``EarlyStopping``: stop once ``patience`` evaluations in a row brought no
  improvement of more than ``min_delta``.
- :class:`ReduceLROnPlateau` follows torch's ``optim.lr_scheduler.ReduceLROnPlateau``: after more than ``patience``
  evaluations without improvement multiply the learning rate by ``factor`` (not below ``min_scale``), then wait
  ``cooldown`` evaluations. Its ``scale`` goes into the train state's ``lr_scale`` leaf (:func:`set_lr_scale`),
  which the step multiplies every update by: for SGD (momentum included) and AdamW that is exactly scaling the
  learning rate (decoupled weight decay included, as torch scales it with the rate).

"Improvement" of ``value`` over ``best``: ``mode="min"``: ``value < best - min_delta`` (``relative``:
``value < best * (1 - min_delta)``); ``mode="max"``: ``value > best + min_delta`` (``best * (1 + min_delta)``).
A NaN value never improves.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import jax
import numpy as np

MODES = ("min", "max")


@dataclasses.dataclass
class Plateau:
    """Tracks the best value of a metric and how many evaluations in a row did not improve on it."""

    mode: str = "min"
    patience: int = 10
    min_delta: float = 0.0
    relative: bool = False
    best: float | None = None
    bad: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES} ('min' for a loss, 'max' for accuracy), got {self.mode!r}")
        if isinstance(self.patience, bool) or not isinstance(self.patience, numbers.Integral) or self.patience < 0:
            raise ValueError(f"patience must be an int >= 0 (evaluations), got {self.patience!r}")
        if not (math.isfinite(self.min_delta) and self.min_delta >= 0):
            raise ValueError(f"min_delta must be a finite number >= 0, got {self.min_delta!r}")

    def improves(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            bound = self.best * (1 - self.min_delta) if self.relative else self.best - self.min_delta
            return value < bound
        bound = self.best * (1 + self.min_delta) if self.relative else self.best + self.min_delta
        return value > bound

    def observe(self, value: float) -> bool:
        """Record one evaluation; True when it improved (and became the best)."""
        value = float(value)
        if self.improves(value):
            self.best, self.bad = value, 0
            return True
        self.bad += 1
        return False

    def state_dict(self) -> dict[str, Any]:
        """Everything, JSON-serialisable (a NaN-free float or None for ``best``)."""
        return {k: v for k, v in dataclasses.asdict(self).items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s output; its settings must equal this tracker's."""
        for key in ("mode", "patience", "min_delta", "relative"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"saved {type(self).__name__} has {key}={state[key]!r}, this run {getattr(self, key)!r}"
                )
        for key, value in state.items():
            if key not in {f.name for f in dataclasses.fields(self)}:
                raise ValueError(f"unknown {type(self).__name__} state key {key!r}")
            setattr(self, key, value)


@dataclasses.dataclass
class EarlyStopping(Plateau):
    """Keras's rule: :meth:`update` returns True (stop) once ``patience`` evaluations in a row did not improve."""

    patience: int = 5
    stopped: bool = False

    def update(self, value: float) -> bool:
        self.observe(value)
        self.stopped = self.stopped or self.bad >= max(self.patience, 1)
        return self.stopped


@dataclasses.dataclass
class ReduceLROnPlateau(Plateau):
    """torch's rule: after more than ``patience`` evaluations without improvement, ``scale *= factor`` (at least
    ``min_scale``), bad count reset, then ``cooldown`` evaluations during which bad ones are not counted.
    Defaults are torch's (``factor=0.1``, ``patience=10``, ``min_delta=1e-4`` relative)."""

    factor: float = 0.1
    cooldown: int = 0
    min_scale: float = 0.0
    min_delta: float = 1e-4
    relative: bool = True
    scale: float = 1.0
    cooldown_left: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.factor < 1.0:
            raise ValueError(f"factor must lie in (0, 1), got {self.factor!r}")
        if isinstance(self.cooldown, bool) or not isinstance(self.cooldown, numbers.Integral) or self.cooldown < 0:
            raise ValueError(f"cooldown must be an int >= 0, got {self.cooldown!r}")
        if not 0.0 <= self.min_scale <= 1.0:
            raise ValueError(f"min_scale must lie in [0, 1], got {self.min_scale!r}")

    def update(self, value: float) -> float:
        """Record one evaluation; returns the learning-rate scale to train with from now on."""
        self.observe(value)
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.bad = 0
        if self.bad > self.patience:
            new = max(self.scale * self.factor, self.min_scale)
            if self.scale - new > 1e-8:  # torch's eps: no change below it
                self.scale = new
            self.cooldown_left = self.cooldown
            self.bad = 0
        return self.scale


def set_lr_scale(state: Any, scale: float) -> Any:
    """``state`` with its ``lr_scale`` leaf set to ``scale``, placed as the old leaf was (one device, pmap's
    per-device copies, or a replicated shard_map array), so the mapped step takes it without recompiling."""
    old = state.lr_scale
    if old is None:
        raise ValueError("this state has no lr_scale; create it with TrainState.create(..., lr_scale=1.0)")
    if not scale > 0:
        raise ValueError(f"the learning-rate scale must be > 0, got {scale}")
    new = np.full(np.shape(old), scale, np.float32)
    if isinstance(old, jax.Array):
        return state.replace(lr_scale=jax.device_put(new, old.sharding))
    return state.replace(lr_scale=new)


@dataclasses.dataclass
class Decision:
    """What one evaluation decided: whether it ``improved`` (a new best), whether to ``stop``, and the new
    learning-rate scale when reduce-on-plateau changed it (else None)."""

    improved: bool
    stop: bool
    lr_scale: float | None


class Monitor:
    """The trackers of one :class:`~jaxtl.train.config.Stopping` config, fed once per evaluation by the fit loop:
    the best value and its step (``min_delta`` applies, as for the trackers), :class:`EarlyStopping` when
    ``patience`` is set, :class:`ReduceLROnPlateau` when ``reduce_patience`` is. All of it round-trips through
    :meth:`state_dict` (JSON), saved with each checkpoint."""

    def __init__(self, stopping: Any):
        self.metric: str = stopping.metric
        mode, delta = stopping.resolved_mode, float(stopping.min_delta)
        self.best = Plateau(mode=mode, patience=0, min_delta=delta)
        self.best_step: int | None = None
        self.improvements = 0
        self.stopped_at: int | None = None
        self.early = None
        if stopping.patience is not None:
            self.early = EarlyStopping(mode=mode, patience=stopping.patience, min_delta=delta)
        self.reduce = None
        if stopping.reduce_patience is not None:
            self.reduce = ReduceLROnPlateau(
                mode=mode,
                patience=stopping.reduce_patience,
                min_delta=delta,
                relative=False,  # one improvement rule for every tracker of the run
                factor=stopping.reduce_factor,
                cooldown=stopping.cooldown,
                min_scale=stopping.min_lr_scale,
            )

    def update(self, step: int, metrics: dict[str, float]) -> Decision:
        """Record the evaluation of ``step`` (``metrics`` holds the monitored metric)."""
        value = float(metrics[self.metric])
        improved = self.best.observe(value)
        if improved:
            self.best_step, self.improvements = step, self.improvements + 1
        stop = self.early.update(value) if self.early is not None else False
        scale = None
        if self.reduce is not None:
            old = self.reduce.scale
            new = self.reduce.update(value)
            scale = new if new != old else None
        if stop and self.stopped_at is None:
            self.stopped_at = step
        return Decision(improved, stop, scale)

    @property
    def stopped(self) -> bool:
        return self.stopped_at is not None

    def rank(self, improved: bool) -> float:
        """A number whose maximum over the evaluations is the best one, by this monitor's rule (ties and
        ``min_delta`` included): what a checkpoint store keeps as "the best"."""
        return float(self.improvements if improved else self.improvements - 0.5)

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best.state_dict(),
            "best_step": self.best_step,
            "improvements": self.improvements,
            "stopped_at": self.stopped_at,
            "early": None if self.early is None else self.early.state_dict(),
            "reduce": None if self.reduce is None else self.reduce.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s output (the settings must be this monitor's)."""
        self.best.load_state_dict(state["best"])
        self.best_step, self.improvements = state["best_step"], int(state["improvements"])
        self.stopped_at = state["stopped_at"]
        for name in ("early", "reduce"):
            tracker, saved = getattr(self, name), state.get(name)
            if (tracker is None) != (saved is None):
                raise ValueError(f"the saved trackers {'lack' if saved is None else 'hold'} {name}; this run differs")
            if tracker is not None:
                tracker.load_state_dict(saved)
