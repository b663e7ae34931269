"""Weight EMA: an exponential moving average of the trained parameters and BatchNorm statistics.

As torchvision's reference scripts (``ExponentialMovingAverage`` over parameters *and* buffers) and timm's
``ModelEmaV2`` keep it: after every ``every``-th optimizer step, ``ema = decay * ema + (1 - decay) * current``,
starting from the initial weights. The warm-up (on by default) is TensorFlow's ``ExponentialMovingAverage``
``num_updates`` rule that timm's train script offers too: the decay of the ``n``-th update (``n = 0, 1, ...``) is
``min(decay, (1 + n) / (10 + n))``, so the first updates follow the model quickly instead of averaging in the
random or pretrained start for thousands of steps. torchvision's references instead rescale the decay by the run's
length (:func:`torchvision_decay` gives that number) and have no warm-up.

What is averaged: the trainable parameters and the BatchNorm statistics that the step updates (of modules with a
trainable parameter, and none when the backbone is frozen and runs on running averages). Frozen leaves are not
stored twice: :func:`ema_variables` takes them from the model, so they are bit-identical. Integer statistics
(``num_batches_tracked``) are copied, not averaged. With gradient accumulation, "optimizer step" means an update
of the parameters, i.e. every ``accumulate`` micro-batches.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util
from jax import lax

from jaxtl.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class EMA:
    """``decay`` per update (timm's default 0.9998), ``warmup`` (``min(decay, (1 + n) / (10 + n))`` for the
    ``n``-th update), ``every`` optimizer steps between updates (torchvision's ``--model-ema-steps``)."""

    decay: float = 0.9998
    warmup: bool = True
    every: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.decay, bool) or not (isinstance(self.decay, numbers.Real) and 0.0 <= self.decay < 1.0):
            raise ConfigError(f"ema decay must lie in [0, 1), got {self.decay!r}", "ema")
        if isinstance(self.every, bool) or not isinstance(self.every, numbers.Integral) or self.every < 1:
            raise ConfigError(
                f"ema_every must be an int >= 1 (optimizer steps between EMA updates), got {self.every!r}", "ema_every"
            )
        object.__setattr__(self, "decay", float(self.decay))
        object.__setattr__(self, "every", int(self.every))
        object.__setattr__(self, "warmup", bool(self.warmup))

    def decay_at(self, n: jax.Array | int) -> jax.Array:
        """The decay of the ``n``-th update (0-based), float32."""
        d = jnp.float32(self.decay)
        if not self.warmup:
            return d
        n = jnp.asarray(n, jnp.float32)
        return jnp.minimum(d, (1.0 + n) / (10.0 + n))


def torchvision_decay(decay: float, every: int, batch_size: int, epochs: int) -> float:
    """The per-update decay torchvision's classification reference uses for ``--model-ema-decay decay``:
    ``1 - min(1, (1 - decay) * batch_size * every / epochs)`` (``batch_size`` the global batch)."""
    if epochs < 1 or batch_size < 1 or every < 1:
        raise ValueError(f"epochs, batch_size and every must be >= 1, got {epochs}, {batch_size}, {every}")
    return 1.0 - min(1.0, (1.0 - decay) * batch_size * every / epochs)


def _flat(tree: Mapping[str, Any]) -> dict[str, Any]:
    return traverse_util.flatten_dict(dict(tree), sep="/") if tree else {}


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    return traverse_util.unflatten_dict(dict(flat), sep="/") if flat else {}


def init_ema(
    params: Mapping[str, Any], batch_stats: Mapping[str, Any], trainable: Iterable[str], stat_paths: Iterable[str]
) -> dict[str, Any]:
    """The starting average: copies of the ``trainable`` parameter leaves and the ``stat_paths`` statistics,
    as ``{"params": nested, "batch_stats": nested}`` (copies: a step donates its state)."""
    flat_p, flat_s = _flat(params), _flat(batch_stats)
    return {
        "params": _nest({p: jnp.array(flat_p[p], copy=True) for p in trainable}),
        "batch_stats": _nest({p: jnp.array(flat_s[p], copy=True) for p in stat_paths}),
    }


def _average(avg: jax.Array, new: jax.Array, decay: jax.Array) -> jax.Array:
    if not jnp.issubdtype(avg.dtype, jnp.inexact):
        return new  # counters (num_batches_tracked) are copied
    mixed = decay * avg.astype(jnp.float32) + (1.0 - decay) * new.astype(jnp.float32)
    return mixed.astype(avg.dtype)


def update_ema(
    config: EMA,
    ema: dict[str, Any],
    params: Mapping[str, Any],
    batch_stats: Mapping[str, Any],
    step: jax.Array,
    accumulate: int = 1,
) -> dict[str, Any]:
    """``ema`` after the micro-step that made ``step`` (1-based count): averaged with the current ``params`` and
    ``batch_stats`` when ``step`` ends an update period (``config.every * accumulate`` micro-steps), else
    unchanged (bit for bit). The same on every device: it reads replicated values only."""
    period = config.every * accumulate
    due = step % period == 0
    n = step // period - 1  # updates before this one
    flat_p, flat_s = _flat(params), _flat(batch_stats)
    current = {
        "params": _nest({p: flat_p[p] for p in _flat(ema["params"])}),
        "batch_stats": _nest({p: flat_s[p] for p in _flat(ema["batch_stats"])}),
    }

    def do(avg: dict[str, Any]) -> dict[str, Any]:
        decay = config.decay_at(n)
        return jax.tree.map(lambda a, c: _average(a, c, decay), avg, current)

    return lax.cond(due, do, lambda avg: avg, ema)  # type: ignore[no-any-return]


def ema_variables(ema: Mapping[str, Any], params: Mapping[str, Any], batch_stats: Mapping[str, Any]) -> dict[str, Any]:
    """Full ``{"params", "batch_stats"}`` of the averaged model: the averaged leaves over the model's own (frozen
    leaves and statistics the step never changes come from ``params``/``batch_stats`` unchanged)."""
    out = {"params": _nest({**_flat(params), **_flat(ema["params"])})}
    if batch_stats:
        out["batch_stats"] = _nest({**_flat(batch_stats), **_flat(ema["batch_stats"])})
    return out
