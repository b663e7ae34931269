"""Flax variables -> a torchvision state dict, exactly: no arithmetic, only transposes and reshapes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jaxtl.models import get_head, get_spec

from .check import check_arch, expected, is_float
from .errors import BridgeError, format_problems
from .infer import flax_overrides


def to_torchvision(variables: Mapping[str, Any], arch: str) -> dict[str, Any]:
    """Flax ``{"params", "batch_stats"}`` of ``arch`` -> a torch state dict that
    ``torchvision.models.<arch>(num_classes=k).load_state_dict(sd, strict=True)`` accepts (k from the head; 0 =
    none: load it into a model whose head you replace, or with ``strict=False``). A ViT built for another input size
    (``image_size`` from its position embedding) needs ``torchvision.models.<arch>(image_size=...)``."""
    import torch

    check_arch(arch)
    if "params" not in variables:
        raise BridgeError(f"variables lack the collection 'params'; got {sorted(variables)}")
    head = get_head(variables, get_spec(arch).head_path)
    kernel = head.get("kernel") if isinstance(head, Mapping) else None
    num_classes = int(kernel.shape[-1]) if kernel is not None and len(kernel.shape) == 2 else 0
    entries = expected(arch, num_classes, flax_overrides(arch, variables["params"]))
    needed = sorted({e.collection for e in entries} - set(variables))
    if needed:
        raise BridgeError(f"variables lack the collection(s) {needed}; {arch} has 'params' and 'batch_stats'")
    flat: dict[tuple[str, ...], Any] = {}
    for c in ("params", "batch_stats"):
        for kp, leaf in jax.tree_util.tree_flatten_with_path(variables.get(c, {}))[0]:
            flat[(c, *(str(getattr(k, "key", k)) for k in kp))] = leaf
    wanted = {(e.collection, *e.path): e for e in entries}
    problems = [f"missing variable {'/'.join(k)!r}" for k in wanted if k not in flat]
    problems += [f"unexpected variable {'/'.join(k)!r}" for k in flat if k not in wanted]
    out: dict[str, Any] = {}
    for key, e in wanted.items():
        if key not in flat:
            continue
        a = np.asarray(flat[key])
        name = "/".join(key)
        if tuple(a.shape) != e.flax_shape:
            problems.append(f"shape of {name!r} is {list(a.shape)}, {arch} needs {list(e.flax_shape)}")
        elif e.torch_key.endswith("num_batches_tracked"):
            if a.dtype.kind not in "iu":
                problems.append(f"{name!r} has dtype {a.dtype}, expected an integer")
            else:
                out[e.torch_key] = torch.tensor(int(a), dtype=torch.int64)
        elif not is_float(a.dtype):
            problems.append(f"{name!r} has dtype {a.dtype}, expected floating point")
        else:
            t = np.ascontiguousarray(e.rule.to_torch(a.astype(np.float32)))
            out[e.torch_key] = torch.from_numpy(t.copy())
    if problems:
        raise BridgeError(format_problems(f"cannot export variables as torchvision {arch}", problems))
    return out
