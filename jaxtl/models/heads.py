"""Classifier heads in one place: torch's Linear init, and one function each to read, make, put, strip and
replace a head, at any head path (``"fc"``, ``"heads/head"``, ``"classifier/2"``).

A head is ``{"kernel": [F, K], "bias": [K]}`` at the model's ``head_path`` in ``params`` (see
:class:`~jaxtl.models.protocol.Classifier`). Every function takes ``head`` as that path or as the module itself;
the bridge (a new head over torchvision weights), the linear probe, transfer and the models use them, so a "new
head" means the same numbers on every route.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxtl.models.protocol import Classifier

HEAD = "fc"  # the head path of the ResNets and ConvNet (older code's default)
Head = str | Sequence[str] | Classifier


def head_path(head: Head) -> tuple[str, ...]:
    """``head`` as a tuple of keys: ``"heads/head"`` -> ``("heads", "head")``; a :class:`Classifier` gives its
    ``head_path``."""
    if isinstance(head, Classifier):
        head = head.head_path
    parts = tuple(head.split("/")) if isinstance(head, str) else tuple(str(p) for p in head)
    if not parts or not all(parts):
        raise ValueError(f"a head path needs non-empty names, got {head!r}")
    return parts


def head_name(module: Any = None) -> str:
    """The ``"/"``-joined head path of ``module`` (a :class:`Classifier`), :data:`HEAD` for anything else (a
    module declaring no head path, or None). Kept for older callers: prefer :func:`head_path`."""
    return "/".join(head_path(module)) if isinstance(module, Classifier) else HEAD


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


def get_head(variables: Mapping[str, Any], head: Head = HEAD) -> Any:
    """The head's parameters in ``variables["params"]`` (None when there is no head: a backbone)."""
    node: Any = variables.get("params", {})
    for key in head_path(head):
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _without(tree: Mapping[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    """``tree`` without the subtree at ``path``; parents left empty by the removal go too."""
    out = dict(tree)
    key, rest = path[0], path[1:]
    if key not in out:
        return out
    if rest:
        child = out[key]
        if isinstance(child, Mapping):
            child = _without(child, rest)
            if child:
                out[key] = child
            else:
                del out[key]
        return out
    del out[key]
    return out


def _with(tree: Mapping[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out = dict(tree)
    key, rest = path[0], path[1:]
    out[key] = _with(out.get(key, {}), rest, value) if rest else value
    return out


def set_head(variables: Mapping[str, Any], params: Mapping[str, Any], head: Head = HEAD) -> dict[str, Any]:
    """``variables`` with ``params`` (``{"kernel", "bias"}``) as the head; the other arrays are the same objects."""
    return {**variables, "params": _with(variables.get("params", {}), head_path(head), dict(params))}


def strip_head(variables: Mapping[str, Any], head: Head = HEAD) -> dict[str, Any]:
    """``{"params", "batch_stats"}`` without the head (a backbone's variables); other collections are dropped."""
    path = head_path(head)
    out: dict[str, Any] = {"params": _without(variables["params"], path)}
    stats = _without(variables.get("batch_stats", {}), path)
    if stats:
        out["batch_stats"] = stats
    return out


def head_classes(variables: Mapping[str, Any], head: Head = HEAD) -> int:
    """Output size of the head in ``variables`` (0 when there is none: a backbone)."""
    h = get_head(variables, head)
    return 0 if h is None else int(h["bias"].shape[0])


def replace_head(
    variables: Mapping[str, Any],
    num_classes: int,
    rng: jax.Array | int,
    *,
    num_features: int | None = None,
    head: Head = HEAD,
) -> dict[str, Any]:
    """``variables`` with a new ``num_classes`` head (torch's Linear init over ``num_features`` pooled features;
    both taken from ``head`` when it is the module), or without a head for ``num_classes=0``. The backbone's arrays
    are the very same objects."""
    out = strip_head(variables, head)
    if num_classes == 0:
        return out
    if num_features is None:
        if not isinstance(head, Classifier):
            raise TypeError("replace_head needs num_features=, or head= the model (which knows its feature width)")
        num_features = head.num_features
    return set_head(out, new_head(num_features, num_classes, rng), head)
