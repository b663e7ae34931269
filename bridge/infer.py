"""Recognise which registered torchvision ResNet a state dict belongs to, from key names and tensor shapes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from jaxtl.models import get_spec, list_models

from .errors import BridgeError

FAMILY = "resnet"  # the registry family whose members are torchvision-convertible
_BLOCK_KEY = re.compile(r"^layer([1-4])\.(\d+)\.")


def describe(sd: Mapping[str, Any]) -> dict[str, Any]:
    """What the keys and shapes say: block type, per-stage depth, groups, width per group, num_classes (fc rows)."""
    depth = [0, 0, 0, 0]
    for k in sd:
        m = _BLOCK_KEY.match(k)
        if m:
            stage, idx = int(m.group(1)) - 1, int(m.group(2))
            depth[stage] = max(depth[stage], idx + 1)
    bottleneck = any(re.match(r"^layer[1-4]\.\d+\.conv3\.weight$", k) for k in sd)
    seen: dict[str, Any] = {"block": "bottleneck" if bottleneck else "basic", "layers": tuple(depth)}
    conv2 = sd.get("layer1.0.conv2.weight")
    if bottleneck and conv2 is not None and len(conv2.shape) == 4 and conv2.shape[1] > 0:
        # layer1 has planes=64, so its conv2 is [W, W/groups, 3, 3] with W = groups * width_per_group.
        total, per_group = int(conv2.shape[0]), int(conv2.shape[1])
        seen["groups"] = max(total // per_group, 1)
        seen["width_per_group"] = per_group
    else:
        seen["groups"], seen["width_per_group"] = 1, 64
    fc = sd.get("fc.weight")
    seen["num_classes"] = int(fc.shape[0]) if fc is not None and len(fc.shape) == 2 else 0
    return seen


def infer_arch(state_dict: Mapping[str, Any]) -> str:
    """The registered architecture name (e.g. "resnext50_32x4d") whose structure matches ``state_dict``.

    ``state_dict`` maps torch keys to arrays/tensors (anything with ``.shape``). BridgeError if none matches,
    saying what was seen.
    """
    seen = describe(state_dict)
    if not any(seen["layers"]) or "conv1.weight" not in state_dict:
        sample = ", ".join(list(state_dict)[:5])
        raise BridgeError(
            f"not a torchvision ResNet state dict: no 'conv1.weight' / 'layerN.M.*' keys (first keys: {sample})"
        )
    for name in list_models(FAMILY):
        kw = get_spec(name).kwargs
        if (
            kw["block"] == seen["block"]
            and tuple(kw["layers"]) == seen["layers"]
            and kw.get("groups", 1) == seen["groups"]
            and kw.get("width_per_group", 64) == seen["width_per_group"]
        ):
            return name
    raise BridgeError(
        f"no registered architecture matches the state dict: saw block={seen['block']}, layers={list(seen['layers'])}, "
        f"groups={seen['groups']}, width_per_group={seen['width_per_group']}; "
        f"known: {', '.join(list_models(FAMILY))}"
    )
