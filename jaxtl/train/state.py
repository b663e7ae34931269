"""The one state pytree of a training run."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxtl.train.freeze import (
    Trainable,
    freeze,
    frozen_stat_paths,
    is_backbone_frozen,
    param_paths,
    trainable_paths,
)


class TrainState(struct.PyTreeNode):
    """params, batch_stats, opt_state, step and rng; the module, optimizer and freezing labels are static.

    ``trainable`` holds the trainable parameter paths (all of them when nothing is frozen); ``frozen_stats``
    the batch_stats paths of modules with no trainable parameter, which a step leaves untouched.
    ``backbone_frozen`` is True when only the classifier head trains: the step then runs the model in eval mode
    (BatchNorm on running averages) and differentiates the head only.
    """

    params: Any
    batch_stats: Any
    opt_state: optax.OptState
    step: jax.Array
    rng: jax.Array
    module: nn.Module = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    trainable: tuple[str, ...] = struct.field(pytree_node=False)
    frozen_stats: tuple[str, ...] = struct.field(pytree_node=False, default=())
    backbone_frozen: bool = struct.field(pytree_node=False, default=False)

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

    @classmethod
    def create(
        cls,
        module: nn.Module,
        variables: dict[str, Any],
        tx: optax.GradientTransformation,
        rng: jax.Array | int = 0,
        trainable: Trainable = None,
        classifier: str = "fc",
    ) -> TrainState:
        """A fresh state. ``tx`` is a plain optimizer: with ``trainable`` set it is wrapped by :func:`freeze`.

        ``rng`` is a ``jax.random.PRNGKey`` (uint32 ``[2]``) or an int seed; it drives on-device augmentation.
        """
        if "params" not in variables:
            raise ValueError(f"variables must hold 'params', got keys {sorted(variables)}")
        params = variables["params"]
        batch_stats = variables.get("batch_stats", {})
        paths = trainable_paths(params, trainable)
        all_paths = param_paths(params)
        if trainable is not None:
            tx = freeze(tx, params, trainable)
        if isinstance(rng, int):
            rng = jax.random.PRNGKey(rng)
        return cls(
            params=params,
            batch_stats=batch_stats,
            opt_state=tx.init(params),
            step=jnp.zeros((), jnp.int32),
            rng=jnp.asarray(rng, jnp.uint32),
            module=module,
            tx=tx,
            trainable=paths,
            frozen_stats=frozen_stat_paths(batch_stats, paths) if len(paths) < len(all_paths) else (),
            backbone_frozen=is_backbone_frozen(paths, all_paths, classifier),
        )
