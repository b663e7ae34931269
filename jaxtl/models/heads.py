"""Classifier heads in one place: torch's Linear init, a new head, strip and replace.

Every model in jaxtl ends in a linear head called ``fc`` (torchvision's name) on pooled features ``pre_logits``;
the bridge (a new head over torchvision weights), the linear probe, transfer (a head over a pretrained encoder)
and the models themselves use these functions, so a "new head" means the same numbers on every route.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

HEAD = "fc"


def head_name(module: nn.Module | None = None) -> str:
    """The name of ``module``'s classifier head (``fc`` for every jaxtl model; a module may define ``head_name``)."""
    return str(getattr(module, "head_name", HEAD)) if module is not None else HEAD


def torch_linear_init(fan_in: int) -> Any:
    """``torch.nn.Linear``'s default init for kernel and bias: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``
    (kaiming_uniform with a=sqrt(5) reduces to this)."""
    bound = 1.0 / float(fan_in) ** 0.5

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def new_head(num_features: int, num_classes: int, rng: jax.Array | int) -> dict[str, jax.Array]:
    """A fresh head ``{"kernel": [F, K], "bias": [K]}`` (float32) with torch's Linear init from ``rng``."""
    if num_features < 1 or num_classes < 1:
        raise ValueError(f"a head needs num_features >= 1 and num_classes >= 1, got {num_features}, {num_classes}")
    key = jax.random.PRNGKey(rng) if isinstance(rng, int) else rng
    k_kernel, k_bias = jax.random.split(key)
    init = torch_linear_init(num_features)
    return {"kernel": init(k_kernel, (num_features, num_classes)), "bias": init(k_bias, (num_classes,))}


def strip_head(variables: Mapping[str, Any], head: str = HEAD) -> dict[str, Any]:
    """``{"params", "batch_stats"}`` without the head (a backbone's variables); other collections are dropped."""
    out: dict[str, Any] = {"params": {k: v for k, v in variables["params"].items() if k != head}}
    stats = {k: v for k, v in variables.get("batch_stats", {}).items() if k != head}
    if stats:
        out["batch_stats"] = stats
    return out


def head_classes(variables: Mapping[str, Any], head: str = HEAD) -> int:
    """Output size of the head in ``variables`` (0 when there is none: a backbone)."""
    fc = variables.get("params", {}).get(head)
    return 0 if fc is None else int(fc["bias"].shape[0])


def replace_head(
    variables: Mapping[str, Any], num_classes: int, rng: jax.Array | int, *, num_features: int, head: str = HEAD
) -> dict[str, Any]:
    """``variables`` with a new ``num_classes`` head of torch's Linear init over ``num_features`` pooled features
    (the backbone's arrays are the very same objects)."""
    out = strip_head(variables, head)
    out["params"] = {**out["params"], head: new_head(num_features, num_classes, rng)}
    return out
