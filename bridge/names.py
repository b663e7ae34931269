"""The one place where torchvision state_dict keys and Flax variable paths meet.

Flax submodules carry torchvision's names, so only the leaf differs: a rule per Flax leaf name gives the torch leaf
name, the variable collection and the axis permutation between the two layouts. Nothing is mapped by order.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class LeafRule:
    """How one Flax leaf maps to a torch leaf; ``perm`` turns the torch array into the Flax one."""

    collection: str
    flax_leaf: str
    torch_leaf: str
    ndim: int
    perm: tuple[int, ...] | None = None

    def to_flax(self, a: np.ndarray) -> np.ndarray:
        return a if self.perm is None else np.transpose(a, self.perm)

    def to_torch(self, a: np.ndarray) -> np.ndarray:
        return a if self.perm is None else np.transpose(a, np.argsort(self.perm))

    def torch_shape(self, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.perm is None:
            return tuple(flax_shape)
        inverse = np.argsort(self.perm)
        return tuple(int(flax_shape[i]) for i in inverse)


# Conv kernels: torch OIHW -> Flax HWIO. Linear: torch [out, in] -> Flax [in, out]. BatchNorm leaves are renamed only.
RULES: tuple[LeafRule, ...] = (
    LeafRule("params", "kernel", "weight", 4, (2, 3, 1, 0)),
    LeafRule("params", "kernel", "weight", 2, (1, 0)),
    LeafRule("params", "scale", "weight", 1),
    LeafRule("params", "bias", "bias", 1),
    LeafRule("batch_stats", "mean", "running_mean", 1),
    LeafRule("batch_stats", "var", "running_var", 1),
    LeafRule("batch_stats", "num_batches_tracked", "num_batches_tracked", 0),
)

# torch's order of a module's own entries in state_dict(): parameters first, then buffers.
TORCH_LEAF_ORDER = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

# torchvision's module creation order (ResNet, then inside a block), which is the order of its state_dict.
_MODULE_ORDER = (
    "conv1",
    "bn1",
    "conv2",
    "bn2",
    "conv3",
    "bn3",
    "downsample",
    "layer1",
    "layer2",
    "layer3",
    "layer4",
    "fc",
)

# Leaves whose values must be integers (everything else must be floating point).
INTEGER_TORCH_LEAVES = frozenset({"num_batches_tracked"})


def rule_for_flax(collection: str, path: tuple[str, ...], ndim: int) -> LeafRule:
    """The rule for the Flax variable ``collection/path`` of rank ``ndim``; KeyError if none applies."""
    for rule in RULES:
        if rule.collection == collection and rule.flax_leaf == path[-1] and rule.ndim == ndim:
            return rule
    raise KeyError(f"no torch name rule for Flax variable {collection}/{'/'.join(path)} (rank {ndim})")


def flax_to_torch_key(path: tuple[str, ...], rule: LeafRule) -> str:
    """``("layer1", "0", "conv1", "kernel")`` -> ``"layer1.0.conv1.weight"``."""
    return ".".join((*path[:-1], rule.torch_leaf))


def torch_module_and_leaf(key: str) -> tuple[str, str]:
    """``"layer1.0.bn1.running_mean"`` -> ``("layer1.0.bn1", "running_mean")``."""
    module, _, leaf = key.rpartition(".")
    return module, leaf


def flax_key(collection: str, path: tuple[str, ...]) -> str:
    """The flat Flax-layout name used in files: ``"params/conv1/kernel"``."""
    return "/".join((collection, *path))


def torch_order(key: str) -> tuple[int, ...]:
    """A sort key that puts torch keys in the order of torchvision's own ``state_dict()``."""
    module, leaf = torch_module_and_leaf(key)
    parts = module.split(".") if module else []
    ranks = [
        int(p) if p.isdigit() else _MODULE_ORDER.index(p) if p in _MODULE_ORDER else len(_MODULE_ORDER) for p in parts
    ]
    return (*ranks, TORCH_LEAF_ORDER.index(leaf) if leaf in TORCH_LEAF_ORDER else len(TORCH_LEAF_ORDER))
