"""The one state pytree of a training run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxtl._compile import run_once
from jaxtl.data.protocol import Normalization
from jaxtl.models.heads import head_name
from jaxtl.train.ema import EMA, ema_variables, init_ema
from jaxtl.train.groups import (
    ParamGroups,
    TxFactory,
    check_optimizer_respects,
    frozen_stat_paths,
    is_backbone_frozen,
    param_paths,
)
from jaxtl.train.optim import accumulate_gradients, trainable_labels


def _init_optimizer(tx: optax.GradientTransformation, params: Any) -> optax.OptState:
    """``tx.init(params)`` as one compiled program run once (the same values as op by op, which dispatches and
    compiles a program per leaf shape: 0.6 s for a ResNet18 on a CPU, 0.2 s this way); op by op if it cannot be
    traced."""
    try:
        return run_once(tx.init, params)
    except Exception:  # an init that needs concrete values: its own error, if any, comes from the plain call
        return tx.init(params)


class TrainState(struct.PyTreeNode):
    """params, batch_stats, opt_state, step and rng; the module, optimizer and parameter groups are static.

    ``groups`` (:class:`~jaxtl.train.groups.ParamGroups`) is the single source of truth for freezing: ``tx`` is the
    optimizer it built, ``trainable`` the paths it lets train, ``frozen_stats`` the batch_stats of modules with no
    trainable parameter (a step leaves them untouched), and ``backbone_frozen`` is True when only the classifier
    head trains: the step then runs the model in eval mode (BatchNorm on running averages) and differentiates the
    head only. ``normalization`` is the ``(mean, std)`` a step applies on device to uint8 input batches.

    Optional parts, each absent (None / 1) when off so the state's leaves, and a step's results, are exactly what
    they are without them: ``ema`` the weight average (:mod:`jaxtl.train.ema`, configured by ``ema_config``,
    read with :attr:`ema_variables`), ``lr_scale`` a float32 scalar the step multiplies the updates by (what
    reduce-on-plateau lowers), ``accumulate`` the micro-batches per optimizer step (``tx`` then accumulates).
    """

    params: Any
    batch_stats: Any
    opt_state: optax.OptState
    step: jax.Array
    rng: jax.Array
    module: nn.Module = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    ema: Any = None
    lr_scale: Any = None
    groups: ParamGroups = struct.field(pytree_node=False, default_factory=ParamGroups)
    trainable: tuple[str, ...] = struct.field(pytree_node=False, default=())
    frozen_stats: tuple[str, ...] = struct.field(pytree_node=False, default=())
    backbone_frozen: bool = struct.field(pytree_node=False, default=False)
    normalization: Normalization | None = struct.field(pytree_node=False, default=None)
    ema_config: EMA | None = struct.field(pytree_node=False, default=None)
    accumulate: int = struct.field(pytree_node=False, default=1)

    @property
    def apply_fn(self) -> Any:
        return self.module.apply

    @property
    def all_trainable(self) -> bool:
        return len(self.trainable) == len(param_paths(self.params))

    @property
    def variables(self) -> dict[str, Any]:
        """``{"params", "batch_stats"}`` as ``module.apply`` takes them."""
        out = {"params": self.params}
        if self.batch_stats:
            out["batch_stats"] = self.batch_stats
        return out

    @property
    def ema_variables(self) -> dict[str, Any]:
        """``{"params", "batch_stats"}`` of the weight average (frozen leaves are the model's own)."""
        if self.ema is None:
            raise ValueError("this state keeps no weight EMA; create it with TrainState.create(..., ema=EMA(...))")
        return ema_variables(self.ema, self.params, self.batch_stats)

    @classmethod
    def create(
        cls,
        module: nn.Module,
        variables: dict[str, Any],
        tx: optax.GradientTransformation | TxFactory,
        rng: jax.Array | int = 0,
        groups: ParamGroups | str | Sequence[str] | None = None,
        normalization: Normalization | None = None,
        *,
        ema: EMA | None = None,
        accumulate: int = 1,
        lr_scale: float | None = None,
    ) -> TrainState:
        """A fresh state training ``module`` from ``variables`` with ``tx`` under ``groups``.

        ``tx`` is a *plain* optax optimizer (or a factory ``Group -> optimizer``): the state wraps it for the groups
        itself, so a frozen group gets exact zero updates whichever route built the state. ``groups`` is a
        :class:`~jaxtl.train.groups.ParamGroups`, a regex or list of regexes of the trainable paths (the rest is
        frozen), or None (everything trains); e.g. ``ParamGroups.head_only(module)`` trains the model's head (its
        ``head_path``: ``fc`` for a ResNet, ``heads/head`` for a ViT). An optimizer that
        freezes trainable leaves on its own is refused. ``rng`` is a ``jax.random.PRNGKey`` or an int seed; it
        drives on-device augmentation.

        ``ema`` (:class:`~jaxtl.train.ema.EMA`) keeps a weight average, updated by the step; ``accumulate=N``
        averages the gradients of N micro-batches (N calls of the step) into one optimizer step (schedules count
        optimizer steps); ``lr_scale`` (e.g. 1.0) adds the learning-rate factor that reduce-on-plateau lowers
        (:func:`jaxtl.train.plateau.set_lr_scale`). All off by default.
        """
        if "params" not in variables:
            raise ValueError(f"variables must hold 'params', got keys {sorted(variables)}")
        params = variables["params"]
        batch_stats = variables.get("batch_stats", {})
        spec = ParamGroups.of(groups)
        paths = spec.trainable_paths(params)
        all_paths = param_paths(params)
        full_tx = spec.optimizer(tx, params)
        # Probed before accumulation wraps it: MultiSteps' first update is zero everywhere, which says nothing.
        check_optimizer_respects(full_tx, params, paths)
        if accumulate != 1:
            labels = None if len(paths) == len(all_paths) else trainable_labels(params, paths)
            full_tx = accumulate_gradients(full_tx, accumulate, labels)
        if isinstance(rng, int):
            rng = jax.random.PRNGKey(rng)
        frozen_stats = frozen_stat_paths(batch_stats, paths) if len(paths) < len(all_paths) else ()
        backbone_frozen = is_backbone_frozen(paths, all_paths, head_name(module))
        ema_state = None
        if ema is not None:
            if not isinstance(ema, EMA):
                raise TypeError(f"ema must be a jaxtl.train.EMA (decay, warmup, every), got {type(ema).__name__}")
            # The step never changes frozen leaves, nor any statistics when the backbone runs in eval mode.
            stat_paths = [] if backbone_frozen else [p for p in param_paths(batch_stats) if p not in frozen_stats]
            ema_state = init_ema(params, batch_stats, paths, stat_paths)
        if lr_scale is not None and not lr_scale > 0:
            raise ValueError(f"lr_scale must be > 0, got {lr_scale}")
        return cls(
            params=params,
            batch_stats=batch_stats,
            opt_state=_init_optimizer(full_tx, params),
            step=jnp.zeros((), jnp.int32),
            rng=jnp.asarray(rng, jnp.uint32),
            module=module,
            tx=full_tx,
            ema=ema_state,
            lr_scale=None if lr_scale is None else jnp.asarray(lr_scale, jnp.float32),
            groups=spec,
            trainable=paths,
            frozen_stats=frozen_stats,
            backbone_frozen=backbone_frozen,
            normalization=None if normalization is None else (tuple(normalization[0]), tuple(normalization[1])),
            ema_config=ema,
            accumulate=int(accumulate),  # validated by accumulate_gradients unless it is 1
        )
