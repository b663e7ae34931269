"""Flax-layout .safetensors files: keys are variable paths such as "params/layer1/0/conv1/kernel".

The metadata says ``format: jaxtl-flax`` and may carry the model card (``card``, JSON) and the conversion report
(``report``, JSON), so a file the bridge wrote describes itself without a separate JSON.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jaxtl.models.card import ModelCard

from .errors import BridgeError
from .names import flax_to_torch_key, rule_for_flax
from .safetensors_io import load_safetensors, save_safetensors

FORMAT = "jaxtl-flax"


def _flatten(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    flat: dict[str, np.ndarray] = {}
    for kp, leaf in jax.tree_util.tree_flatten_with_path(dict(variables))[0]:
        parts = [str(getattr(k, "key", k)) for k in kp]
        if any("/" in p for p in parts):
            raise BridgeError(f"cannot save {'/'.join(parts)!r}: a path part contains '/'")
        flat["/".join(parts)] = np.asarray(leaf)
    return flat


def save_flax_safetensors(
    variables: Mapping[str, Any],
    path: str | os.PathLike,
    card: ModelCard | None = None,
    extra_metadata: Mapping[str, str] | None = None,
) -> None:
    """Write a Flax variables tree (``{"params": ..., "batch_stats": ...}``) to ``path``, one tensor per leaf.

    ``card`` (the model card) is stored as JSON in the metadata, so ``jaxtl inspect`` and the bridge read it back;
    ``extra_metadata`` (strings) is stored beside it.
    """
    metadata = {**(extra_metadata or {}), "format": FORMAT}
    if card is not None:
        metadata["card"] = json.dumps(card.to_dict())
    save_safetensors(_flatten(variables), path, metadata=metadata)


def _nest(path: str | os.PathLike, tensors: Mapping[str, np.ndarray]) -> dict[str, Any]:
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
        node[parts[-1]] = a
    return jax.device_put(tree, may_alias=False)  # one transfer for the tree (leaf by leaf: 0.5 s for a ResNet18)


def read_flax_safetensors(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """A file written by :func:`save_flax_safetensors` -> (nested variables of jnp arrays, metadata) where the
    metadata's ``card`` and ``report`` entries, when present, are parsed from JSON."""
    tensors, metadata = load_safetensors(path)
    if metadata.get("format") != FORMAT:
        raise BridgeError(
            f"{path} is not a jaxtl Flax-layout .safetensors file (metadata format={metadata.get('format')!r}); "
            "for a torchvision state dict use from_torchvision"
        )
    meta: dict[str, Any] = dict(metadata)
    for k in ("card", "report"):
        if k in meta:
            try:
                meta[k] = json.loads(meta[k])
            except json.JSONDecodeError as e:
                raise BridgeError(f"{path}: metadata {k!r} is not JSON ({e})") from e
    return _nest(path, tensors), meta


def load_flax_safetensors(path: str | os.PathLike) -> dict[str, Any]:
    """Read a file written by :func:`save_flax_safetensors` -> the nested variables tree of jnp arrays."""
    return read_flax_safetensors(path)[0]


def flax_to_torch_state_dict(tensors: Mapping[str, np.ndarray], origin: str) -> dict[str, np.ndarray]:
    """Flat Flax-layout tensors (``"params/layer1/0/conv1/kernel"``) -> torchvision keys and layouts (numpy only).

    BridgeError naming every key that no name rule maps (not a variable of a torchvision architecture)."""
    out: dict[str, np.ndarray] = {}
    bad: list[str] = []
    for key, a in tensors.items():
        collection, *path = key.split("/")
        try:
            rule = rule_for_flax(collection, tuple(path), a.ndim) if path else None
        except KeyError:
            rule = None
        if rule is None:
            bad.append(key)
            continue
        out[flax_to_torch_key(tuple(path), rule)] = rule.to_torch(a)
    if bad:
        from .errors import format_problems

        raise BridgeError(format_problems(f"{origin} holds Flax variables that no torchvision name rule maps", bad))
    return out
