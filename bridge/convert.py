"""torchvision weights -> Flax ``(module, variables)``, strictly checked, mapped by name rules (see :mod:`.names`).

The checking lives in :mod:`.check`, the export back to torch in :mod:`.export`, named weights in :mod:`.hub`;
this module is the one entry point that takes every kind of source.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from .check import convert_located, inspect_state_dict
from .errors import BridgeError
from .export import to_torchvision
from .hub import pretrained
from .io import read_source
from .report import BridgeReport, Conversion, default_card, dtype_name
from .weights import is_weights_enum

__all__ = [
    "BridgeReport",
    "Conversion",
    "default_card",
    "dtype_name",
    "from_torchvision",
    "inspect_state_dict",
    "to_torchvision",
]


def from_torchvision(
    source: Any,
    arch: str | None = None,
    num_classes: int | None = None,
    dtype: Any = jnp.float32,
    seed: int = 0,
    strict: bool = True,
    prefix: str | None = None,
    entry: str | None = None,
    trust_pickle: bool = False,
) -> Conversion:
    """Convert torchvision weights (ResNet, ViT, ConvNeXt) to ``(module, variables)``.

    ``source``: a torch ``nn.Module``, a state dict (torch tensors or numpy arrays), a .pth/.pt/.safetensors path
    (a training checkpoint too: see :func:`~jaxtl.bridge.checkpoints.locate` for ``entry=``/``prefix=``), or a
    torchvision weights enum such as ``ViT_B_16_Weights.IMAGENET1K_V1`` (fetched and cached as
    :func:`~jaxtl.bridge.pretrained` does). ``arch``: a registered torchvision architecture; inferred from keys and
    shapes when None (a ViT's input size too, from its position embedding). ``num_classes``: None keeps the
    checkpoint's head; another value drops it and initialises a new head from ``seed`` (0 = backbone, no head).
    ``dtype`` is the module's compute dtype; variables are always float32 (``num_batches_tracked`` int32).
    ``strict=False`` ignores unexpected keys and fills missing ``num_batches_tracked`` with 0 (as torch does for old
    checkpoints); everything else is still an error. ``trust_pickle=True`` reads a .pth with ``weights_only=False``
    (runs its pickled code; warns). The result unpacks as ``module, variables`` and has ``.report`` and ``.card``.
    Raises BridgeError listing every missing/unexpected/mis-shaped key and every bad value at once.
    """
    if is_weights_enum(source):
        if arch is not None or prefix is not None or entry is not None:
            raise BridgeError("a torchvision weights enum fixes the architecture; arch/prefix/entry do not apply")
        loaded = pretrained(weights=source, num_classes=num_classes, dtype=dtype, seed=seed)
        return Conversion(loaded.module, loaded.variables, loaded.report, loaded.card)
    sd, located = read_source(source, prefix=prefix, entry=entry, trust_pickle=trust_pickle)
    return convert_located(sd, located, arch=arch, num_classes=num_classes, dtype=dtype, seed=seed, strict=strict)
