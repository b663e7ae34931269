"""The one place where torchvision state_dict keys and Flax variable paths meet.

Flax submodules carry torchvision's names, so only the leaf differs: a rule per Flax leaf name (and rank) gives
the torch leaf name, the variable collection and the layout change between the two (an axis permutation, or
trailing unit axes). Nothing is mapped by order.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np


@dataclasses.dataclass(frozen=True)
class LeafRule:
    """How one Flax leaf maps to a torch leaf: ``perm`` turns the torch array into the Flax one; ``unit_axes``
    trailing size-1 axes exist in torch only (ConvNeXt's ``layer_scale``: torch ``[C, 1, 1]``, Flax ``[C]``)."""

    collection: str
    flax_leaf: str
    torch_leaf: str
    ndim: int
    perm: tuple[int, ...] | None = None
    unit_axes: int = 0

    def to_flax(self, a: np.ndarray) -> np.ndarray:
        if self.unit_axes:
            return a.reshape(a.shape[: a.ndim - self.unit_axes])
        return a if self.perm is None else np.transpose(a, self.perm)

    def to_torch(self, a: np.ndarray) -> np.ndarray:
        if self.unit_axes:
            return a.reshape(a.shape + (1,) * self.unit_axes)
        return a if self.perm is None else np.transpose(a, np.argsort(self.perm))

    def torch_shape(self, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.unit_axes:
            return tuple(flax_shape) + (1,) * self.unit_axes
        if self.perm is None:
            return tuple(flax_shape)
        inverse = np.argsort(self.perm)
        return tuple(int(flax_shape[i]) for i in inverse)


# Conv kernels: torch OIHW -> Flax HWIO. Linear: torch [out, in] -> Flax [in, out] (the attention's packed q/k/v
# projection too). Norm leaves are renamed only; a ViT's class token and position embedding are the same arrays.
RULES: tuple[LeafRule, ...] = (
    LeafRule("params", "kernel", "weight", 4, (2, 3, 1, 0)),
    LeafRule("params", "kernel", "weight", 2, (1, 0)),
    LeafRule("params", "scale", "weight", 1),
    LeafRule("params", "bias", "bias", 1),
    LeafRule("params", "in_proj_kernel", "in_proj_weight", 2, (1, 0)),
    LeafRule("params", "in_proj_bias", "in_proj_bias", 1),
    LeafRule("params", "class_token", "class_token", 3),
    LeafRule("params", "pos_embedding", "pos_embedding", 3),
    LeafRule("params", "layer_scale", "layer_scale", 1, unit_axes=2),
    LeafRule("batch_stats", "mean", "running_mean", 1),
    LeafRule("batch_stats", "var", "running_var", 1),
    LeafRule("batch_stats", "num_batches_tracked", "num_batches_tracked", 0),
)

# torch's order of a module's own entries in state_dict(): parameters in registration order, then buffers.
TORCH_LEAF_ORDER = (
    "weight",
    "bias",
    "in_proj_weight",
    "in_proj_bias",
    "class_token",
    "pos_embedding",
    "layer_scale",
    "running_mean",
    "running_var",
    "num_batches_tracked",
)

# torchvision's child-module creation order, which is the order of its state_dict. Only siblings are compared, so
# one list serves every family: ResNet (conv1 ... fc), ViT (conv_proj, encoder, heads; layers, ln; ln_1,
# self_attention, ln_2, mlp; out_proj; head), ConvNeXt (features, classifier; block). Numbered children
# ("0", "encoder_layer_3") sort by their number.
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
    "conv_proj",
    "encoder",
    "heads",
    "layers",
    "ln",
    "ln_1",
    "self_attention",
    "ln_2",
    "mlp",
    "out_proj",
    "head",
    "features",
    "classifier",
    "block",
)
_NUMBERED = re.compile(r"^(?:encoder_layer_)?(\d+)$")

# Leaves whose values must be integers (everything else must be floating point).
INTEGER_TORCH_LEAVES = frozenset({"num_batches_tracked"})
STAT_TORCH_LEAVES = frozenset({"running_mean", "running_var", "num_batches_tracked"})


def rule_for_flax(collection: str, path: tuple[str, ...], ndim: int) -> LeafRule:
    """The rule for the Flax variable ``collection/path`` of rank ``ndim``; KeyError if none applies."""
    for rule in RULES:
        if rule.collection == collection and rule.flax_leaf == path[-1] and rule.ndim == ndim:
            return rule
    raise KeyError(f"no torch name rule for Flax variable {collection}/{'/'.join(path)} (rank {ndim})")


def flax_to_torch_key(path: tuple[str, ...], rule: LeafRule) -> str:
    """``("layer1", "0", "conv1", "kernel")`` -> ``"layer1.0.conv1.weight"``."""
    return ".".join((*path[:-1], rule.torch_leaf))


def torch_prefix(head_path: str) -> str:
    """The torch key prefix of a Flax head path: ``"heads/head"`` -> ``"heads.head."``."""
    return head_path.replace("/", ".") + "."


def torch_module_and_leaf(key: str) -> tuple[str, str]:
    """``"layer1.0.bn1.running_mean"`` -> ``("layer1.0.bn1", "running_mean")``."""
    module, _, leaf = key.rpartition(".")
    return module, leaf


def flax_key(collection: str, path: tuple[str, ...]) -> str:
    """The flat Flax-layout name used in files: ``"params/conv1/kernel"``."""
    return "/".join((collection, *path))


def _module_rank(part: str) -> int:
    m = _NUMBERED.match(part)
    if m:
        return int(m.group(1))
    return _MODULE_ORDER.index(part) if part in _MODULE_ORDER else len(_MODULE_ORDER)


def torch_order(key: str) -> tuple[tuple[int, int], ...]:
    """A sort key that puts torch keys in the order of torchvision's own ``state_dict()``: at every level a module's
    own parameters and buffers come first, then its children in creation order."""
    module, leaf = torch_module_and_leaf(key)
    parts = module.split(".") if module else []
    leaf_rank = TORCH_LEAF_ORDER.index(leaf) if leaf in TORCH_LEAF_ORDER else len(TORCH_LEAF_ORDER)
    return (*((1, _module_rank(p)) for p in parts), (0, leaf_rank))
