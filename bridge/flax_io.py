"""Flax-layout .safetensors files: keys are variable paths such as "params/layer1/0/conv1/kernel"."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .errors import BridgeError
from .safetensors_io import load_safetensors, save_safetensors

_FORMAT = "jaxtl-flax"


def save_flax_safetensors(variables: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write a Flax variables tree (``{"params": ..., "batch_stats": ...}``) to ``path``, one tensor per leaf."""
    flat: dict[str, np.ndarray] = {}
    for kp, leaf in jax.tree_util.tree_flatten_with_path(dict(variables))[0]:
        parts = [str(getattr(k, "key", k)) for k in kp]
        bad = [p for p in parts if "/" in p]
        if bad:
            raise BridgeError(f"cannot save {'/'.join(parts)!r}: a path part contains '/'")
        flat["/".join(parts)] = np.asarray(leaf)
    save_safetensors(flat, path, metadata={"format": _FORMAT})


def load_flax_safetensors(path: str | os.PathLike) -> dict[str, Any]:
    """Read a file written by :func:`save_flax_safetensors` -> the nested variables tree of jnp arrays."""
    tensors, metadata = load_safetensors(path)
    if metadata.get("format") != _FORMAT:
        raise BridgeError(
            f"{path} is not a jaxtl Flax-layout .safetensors file (metadata format={metadata.get('format')!r}); "
            "for a torchvision state dict use from_torchvision"
        )
    tree: dict[str, Any] = {}
    for key, a in tensors.items():
        parts = key.split("/")
        node = tree
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise BridgeError(f"{path}: key {key!r} nests under a tensor")
            node = child
        if parts[-1] in node:
            raise BridgeError(f"{path}: key {key!r} clashes with another entry")
        node[parts[-1]] = jnp.asarray(a)
    return tree
