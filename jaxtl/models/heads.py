"""Classifier heads in one place: one rule for a new head, and one function each to read, make, put, strip and
replace a head, at any head path (``"fc"``, ``"heads/head"``, ``"classifier/2"``).

A head is ``{"kernel": [F, K], "bias": [K]}`` at the model's ``head_path`` in ``params`` (see
:class:`~jaxtl.models.protocol.Classifier`). Every function takes ``head`` as that path or as the module itself.

**The head rule.** A new head is initialised as the architecture itself initialises it: :func:`init_head` runs the
module's own ``init`` from the given key (an int seed is ``jax.random.PRNGKey(seed)``) and keeps only the head
(under ``jit``, so XLA drops the rest of the work). That is torch's ``nn.Linear`` init for a ResNet's and the
ConvNet's ``fc``, zeros for a ViT's ``heads/head`` (as torchvision's ``VisionTransformer``), a truncated normal
(std 0.02) and zero bias for ConvNeXt's ``classifier/2``. Every route that makes a head uses it: the recipes'
``build_classifier`` (``finetune``, the CLI), the bridge's ``from_torchvision(num_classes=N, seed=s)``,
:func:`replace_head` and the linear probe given the model; the same seed gives the same head on each.
:func:`new_head` is the one exception, for features without any model: a bare ``nn.Linear``'s init.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxtl._compile import compile_once
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
    """A bare linear layer's head ``{"kernel": [F, K], "bias": [K]}`` (float32): torch's ``nn.Linear`` init from
    ``rng``. For features without a model only; a model's new head is :func:`init_head` (the head rule)."""
    if num_features < 1 or num_classes < 1:
        raise ValueError(f"a head needs num_features >= 1 and num_classes >= 1, got {num_features}, {num_classes}")
    key = jax.random.PRNGKey(rng) if isinstance(rng, int) else rng
    k_kernel, k_bias = jax.random.split(key)
    init = torch_linear_init(num_features)
    return {"kernel": init(k_kernel, (num_features, num_classes)), "bias": init(k_bias, (num_classes,))}


INIT_SIZE = 32  # the input side a head is initialised at for modules that take any size


@functools.lru_cache(maxsize=16)
def _head_init(module: Classifier, input_shape: tuple[int, ...], key_type: jax.ShapeDtypeStruct) -> Any:
    # One compiled program per (module, shape, key type): only the head is returned, so the rest of the init and
    # the forward pass are dropped; a big backbone costs its trace, not its parameters. It runs once: compiled for a
    # quick start (jaxtl._compile), the same bits.
    path = head_path(module)

    def init(key: jax.Array) -> Any:
        variables = module.init(key, jnp.zeros((1, *input_shape), jnp.float32), train=False)  # type: ignore[attr-defined]
        return get_head(variables, path)

    return compile_once(init, key_type)


def init_head(
    module: Classifier, num_classes: int, rng: jax.Array | int, *, input_shape: Sequence[int] | None = None
) -> dict[str, jax.Array]:
    """A new ``num_classes`` head ``{"kernel": [F, K], "bias": [K]}`` for ``module``'s architecture, initialised as
    the module initialises it from ``rng`` (a key, or an int seed: ``PRNGKey(seed)``). The head rule: see the
    module docstring. ``input_shape`` ``(H, W, C)`` is what the init is traced with (default: the module's
    ``input_size``, else 32x32, with 3 channels); the head's values do not depend on it."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"a new head needs num_classes >= 1, got {num_classes!r}")
    if not isinstance(module, Classifier):
        raise TypeError(f"init_head needs a jaxtl classifier module (the Classifier protocol), got {module!r}")
    if isinstance(rng, bool):
        raise TypeError("rng must be a jax.random key or an int seed, got a bool")
    key = jax.random.PRNGKey(rng) if isinstance(rng, int) else rng
    if input_shape is None:
        size = module.input_size or INIT_SIZE
        input_shape = (size, size, 3)
    clf = module.clone(num_classes=num_classes)  # type: ignore[attr-defined]
    key_type = jax.ShapeDtypeStruct(key.shape, key.dtype)
    head = _head_init(clf, tuple(int(d) for d in input_shape), key_type)(key)
    if head is None:
        raise ValueError(f"{type(module).__name__}(num_classes={num_classes}) has no head at {clf.head_path!r}")
    return {"kernel": head["kernel"], "bias": head["bias"]}


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
    """Output size of the head in ``variables`` (0 when there is none: a backbone); variables replicated for
    ``pmap`` (a leading device axis) count the same."""
    h = get_head(variables, head)
    return 0 if h is None else int(h["bias"].shape[-1])


def replace_head(
    variables: Mapping[str, Any], num_classes: int, rng: jax.Array | int, *, head: Head = HEAD
) -> dict[str, Any]:
    """``variables`` with a new ``num_classes`` head made by the head rule (:func:`init_head`: ``head`` must then be
    the module), or without a head for ``num_classes=0`` (``head``: the module or its head path). The backbone's
    arrays are the very same objects."""
    out = strip_head(variables, head)
    if num_classes == 0:
        return out
    if not isinstance(head, Classifier):
        raise TypeError("replace_head needs head= the model: a new head is initialised as the model initialises it")
    return set_head(out, init_head(head, num_classes, rng), head)
