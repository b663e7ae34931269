"""Recognise which registered torchvision architecture a state dict belongs to, from key names and tensor shapes.

Each family is known by two anchor keys (also how a key prefix is found, see :mod:`.checkpoints`) and a
description of its structure read from the shapes; the registered architecture whose arguments match is the
answer. A ViT's input size is read from its position embedding (SWAG weights are 384, 512 or 518 px).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from jaxtl.models import get_spec, list_models

from .errors import BridgeError
from .names import torch_prefix

_RESNET_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.")
_VIT_LAYER = re.compile(r"^encoder\.layers\.encoder_layer_(\d+)\.")
_CONVNEXT_BLOCK = re.compile(r"^features\.(\d+)\.(\d+)\.layer_scale$")


def _shape(sd: Mapping[str, Any], key: str) -> tuple[int, ...] | None:
    """The shape of ``sd[key]``; None when absent or not an array (a non-tensor value is reported later, by key)."""
    shape = getattr(sd.get(key), "shape", None)
    try:
        return None if shape is None else tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        return None


def _resnet(sd: Mapping[str, Any]) -> dict[str, Any]:
    depth = [0, 0, 0, 0]
    for k in sd:
        m = _RESNET_BLOCK.match(k)
        if m:
            stage, idx = int(m.group(1)) - 1, int(m.group(2))
            depth[stage] = max(depth[stage], idx + 1)
    bottleneck = any(re.match(r"^layer[1-4]\.\d+\.conv3\.weight$", k) for k in sd)
    seen: dict[str, Any] = {"block": "bottleneck" if bottleneck else "basic", "layers": tuple(depth)}
    conv2 = _shape(sd, "layer1.0.conv2.weight")
    if bottleneck and conv2 is not None and len(conv2) == 4 and conv2[1] > 0:
        # layer1 has planes=64, so its conv2 is [W, W/groups, 3, 3] with W = groups * width_per_group.
        seen["groups"], seen["width_per_group"] = max(conv2[0] // conv2[1], 1), conv2[1]
    else:
        seen["groups"], seen["width_per_group"] = 1, 64
    return seen


def _vit(sd: Mapping[str, Any]) -> dict[str, Any]:
    proj = _shape(sd, "conv_proj.weight") or ()
    mlp = _shape(sd, "encoder.layers.encoder_layer_0.mlp.0.weight") or ()
    pos = _shape(sd, "encoder.pos_embedding") or ()
    layers = 1 + max((int(m.group(1)) for k in sd if (m := _VIT_LAYER.match(k))), default=-1)
    seen: dict[str, Any] = {
        "patch_size": proj[2] if len(proj) == 4 else None,
        "hidden_dim": proj[0] if len(proj) == 4 else None,
        "num_layers": layers,
        "mlp_dim": mlp[0] if len(mlp) == 2 else None,
        "image_size": None,
    }
    if len(pos) == 3 and seen["patch_size"]:
        grid = math.isqrt(max(pos[1] - 1, 0))
        if grid * grid == pos[1] - 1:
            seen["image_size"] = grid * seen["patch_size"]
    return seen


def _convnext(sd: Mapping[str, Any]) -> dict[str, Any]:
    blocks: dict[int, int] = {}
    for k in sd:
        m = _CONVNEXT_BLOCK.match(k)
        if m:
            index, j = int(m.group(1)), int(m.group(2))
            blocks[index] = max(blocks.get(index, 0), j + 1)
    stages = sorted(blocks)
    widths = [(_shape(sd, f"features.{i}.0.layer_scale") or (0,))[0] for i in stages]
    return {"widths": tuple(widths), "depths": tuple(blocks[i] for i in stages)}


def _resnet_match(kw: Mapping[str, Any], seen: Mapping[str, Any]) -> bool:
    return (
        kw["block"] == seen["block"]
        and tuple(kw["layers"]) == seen["layers"]
        and kw.get("groups", 1) == seen["groups"]
        and kw.get("width_per_group", 64) == seen["width_per_group"]
    )


def _vit_match(kw: Mapping[str, Any], seen: Mapping[str, Any]) -> bool:
    return all(kw[k] == seen[k] for k in ("patch_size", "hidden_dim", "num_layers", "mlp_dim"))


def _convnext_match(kw: Mapping[str, Any], seen: Mapping[str, Any]) -> bool:
    setting = kw["block_setting"]
    return tuple(w for w, _, _ in setting) == seen["widths"] and tuple(n for _, _, n in setting) == seen["depths"]


def _no_overrides(name: str, seen: Mapping[str, Any], sd: Mapping[str, Any]) -> dict[str, Any]:
    return {}


def _vit_overrides(name: str, seen: Mapping[str, Any], sd: Mapping[str, Any]) -> dict[str, Any]:
    """A ViT's input size, read from its position embedding (SWAG: 384, 512, 518 px)."""
    if seen["image_size"] is None:
        pos = list(_shape(sd, "encoder.pos_embedding") or ())
        raise BridgeError(
            f"the state dict looks like {name}, but its position embedding {pos} is not a class token plus a "
            "square grid of patches"
        )
    return {"image_size": seen["image_size"]} if seen["image_size"] != get_spec(name).input_size else {}


@dataclasses.dataclass(frozen=True)
class Family:
    """How one family's state dict looks: two ``anchors`` keys that identify it, what its shapes say
    (``describe``), whether a registered architecture's arguments fit that (``match``), and the ``create()``
    arguments the weights fix beyond the registry's (``overrides``)."""

    name: str
    anchors: tuple[str, str]
    describe: Callable[[Mapping[str, Any]], dict[str, Any]]
    match: Callable[[Mapping[str, Any], Mapping[str, Any]], bool]
    overrides: Callable[[str, Mapping[str, Any], Mapping[str, Any]], dict[str, Any]] = _no_overrides


FAMILIES: dict[str, Family] = {
    "resnet": Family("resnet", ("conv1.weight", "layer1.0.conv1.weight"), _resnet, _resnet_match),
    "vit": Family("vit", ("class_token", "conv_proj.weight"), _vit, _vit_match, _vit_overrides),
    "convnext": Family("convnext", ("features.0.0.weight", "features.1.0.layer_scale"), _convnext, _convnext_match),
}


def family_of(sd: Mapping[str, Any]) -> str | None:
    """The family whose anchor keys ``sd`` holds, None if none."""
    for fam in FAMILIES.values():
        if all(a in sd for a in fam.anchors):
            return fam.name
    return None


def known_families() -> str:
    """What each family's state dict starts with, for error messages."""
    return "; ".join(f"{f.name}: {' + '.join(repr(a) for a in f.anchors)}" for f in FAMILIES.values())


def head_rows(sd: Mapping[str, Any], head_path: str) -> int:
    """Rows of the head's weight in ``sd`` (its classes): 0 when absent or not a matrix."""
    shape = _shape(sd, torch_prefix(head_path) + "weight")
    return shape[0] if shape is not None and len(shape) == 2 else 0


def describe(sd: Mapping[str, Any]) -> dict[str, Any]:
    """What the keys and shapes say: ``family`` (None if unknown), the family's structure (ResNet: block, layers,
    groups, width_per_group; ViT: patch_size, hidden_dim, num_layers, mlp_dim, image_size; ConvNeXt: widths,
    depths) and ``num_classes`` (rows of the family's head weight, 0 without one)."""
    family = family_of(sd)
    if family is None:
        return {"family": None, "num_classes": head_rows(sd, "fc")}
    seen = {"family": family, **FAMILIES[family].describe(sd)}
    head = get_spec(list_models(family)[0]).head_path
    seen["num_classes"] = head_rows(sd, head)
    return seen


def infer(state_dict: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(arch, overrides)``: the registered architecture whose structure matches ``state_dict`` and the
    ``create()`` arguments it needs beyond the registry's (a ViT's ``image_size``). BridgeError if none matches,
    saying what was seen."""
    seen = describe(state_dict)
    family = seen["family"]
    if family is None:
        sample = ", ".join(list(state_dict)[:5])
        raise BridgeError(
            "not a state dict of a torchvision architecture jaxtl converts (families: "
            f"{', '.join(FAMILIES)}); none of their keys were found ({known_families()}); first keys: {sample}"
        )
    fam = FAMILIES[family]
    for name in list_models(family):
        if fam.match(get_spec(name).kwargs, seen):
            return name, fam.overrides(name, seen, state_dict)
    shown = ", ".join(f"{k}={list(v) if isinstance(v, tuple) else v}" for k, v in seen.items() if k != "num_classes")
    raise BridgeError(
        f"no registered architecture matches the state dict: saw {shown}; known {family} architectures: "
        f"{', '.join(list_models(family))}"
    )


def infer_arch(state_dict: Mapping[str, Any]) -> str:
    """The registered architecture name (e.g. "resnext50_32x4d", "vit_b_16") whose structure matches
    ``state_dict`` (torch keys to anything with ``.shape``); BridgeError if none matches, saying what was seen."""
    return infer(state_dict)[0]


def flax_overrides(arch: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The ``create()`` arguments beyond the registry's that Flax ``params`` of ``arch`` need (a ViT's image size
    from its position embedding); {} when the registry's defaults fit."""
    spec = get_spec(arch)
    if spec.patch_size is None:
        return {}
    pos = params.get("encoder", {}).get("pos_embedding") if isinstance(params.get("encoder"), Mapping) else None
    if pos is None or len(pos.shape) != 3:
        return {}
    grid = math.isqrt(max(int(pos.shape[1]) - 1, 0))
    size = grid * spec.patch_size
    return {"image_size": size} if grid * grid == int(pos.shape[1]) - 1 and size != spec.input_size else {}
