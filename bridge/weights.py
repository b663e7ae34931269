"""torchvision's named weights: which file each name is, where torch's hub cache keeps it, and getting it there.

A test checks :data:`TORCHVISION_WEIGHTS` against torchvision, so that a name resolves (and a cached load runs)
without importing torchvision.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from pathlib import Path
from typing import Any

from .errors import BridgeError, WeightsUnavailableError

_BASE = "https://download.pytorch.org/models/"
_V1, _V2 = "IMAGENET1K_V1", "IMAGENET1K_V2"
_E2E, _LINEAR = "IMAGENET1K_SWAG_E2E_V1", "IMAGENET1K_SWAG_LINEAR_V1"

# arch -> (enum class, {name: file}, DEFAULT name)
TORCHVISION_WEIGHTS: dict[str, tuple[str, dict[str, str], str]] = {
    "resnet18": ("ResNet18_Weights", {_V1: "resnet18-f37072fd.pth"}, _V1),
    "resnet34": ("ResNet34_Weights", {_V1: "resnet34-b627a593.pth"}, _V1),
    "resnet50": ("ResNet50_Weights", {_V1: "resnet50-0676ba61.pth", _V2: "resnet50-11ad3fa6.pth"}, _V2),
    "resnet101": ("ResNet101_Weights", {_V1: "resnet101-63fe2227.pth", _V2: "resnet101-cd907fc2.pth"}, _V2),
    "resnet152": ("ResNet152_Weights", {_V1: "resnet152-394f9c45.pth", _V2: "resnet152-f82ba261.pth"}, _V2),
    "resnext50_32x4d": (
        "ResNeXt50_32X4D_Weights",
        {_V1: "resnext50_32x4d-7cdf4587.pth", _V2: "resnext50_32x4d-1a0047aa.pth"},
        _V2,
    ),
    "resnext101_32x8d": (
        "ResNeXt101_32X8D_Weights",
        {_V1: "resnext101_32x8d-8ba56ff5.pth", _V2: "resnext101_32x8d-110c445d.pth"},
        _V2,
    ),
    "resnext101_64x4d": ("ResNeXt101_64X4D_Weights", {_V1: "resnext101_64x4d-173b62eb.pth"}, _V1),
    "wide_resnet50_2": (
        "Wide_ResNet50_2_Weights",
        {_V1: "wide_resnet50_2-95faca4d.pth", _V2: "wide_resnet50_2-9ba9bcbe.pth"},
        _V2,
    ),
    "wide_resnet101_2": (
        "Wide_ResNet101_2_Weights",
        {_V1: "wide_resnet101_2-32ee1156.pth", _V2: "wide_resnet101_2-d733dc28.pth"},
        _V2,
    ),
    "vit_b_16": (
        "ViT_B_16_Weights",
        {_V1: "vit_b_16-c867db91.pth", _E2E: "vit_b_16_swag-9ac1b537.pth", _LINEAR: "vit_b_16_lc_swag-4e70ced5.pth"},
        _V1,
    ),
    "vit_b_32": ("ViT_B_32_Weights", {_V1: "vit_b_32-d86f8d99.pth"}, _V1),
    "vit_l_16": (
        "ViT_L_16_Weights",
        {_V1: "vit_l_16-852ce7e3.pth", _E2E: "vit_l_16_swag-4f3808c9.pth", _LINEAR: "vit_l_16_lc_swag-4d563306.pth"},
        _V1,
    ),
    "vit_l_32": ("ViT_L_32_Weights", {_V1: "vit_l_32-c7638314.pth"}, _V1),
    "vit_h_14": (
        "ViT_H_14_Weights",
        {_E2E: "vit_h_14_swag-80465313.pth", _LINEAR: "vit_h_14_lc_swag-c1eb923e.pth"},
        _E2E,
    ),
    "convnext_tiny": ("ConvNeXt_Tiny_Weights", {_V1: "convnext_tiny-983f1562.pth"}, _V1),
    "convnext_small": ("ConvNeXt_Small_Weights", {_V1: "convnext_small-0c510722.pth"}, _V1),
    "convnext_base": ("ConvNeXt_Base_Weights", {_V1: "convnext_base-6075fbad.pth"}, _V1),
    "convnext_large": ("ConvNeXt_Large_Weights", {_V1: "convnext_large-ea097f82.pth"}, _V1),
}
OFFLINE_ENV = "JAXTL_OFFLINE"
_HASH = re.compile(r"-([a-f0-9]*)\.")  # torch.hub.HASH_REGEX: the hash prefix in a file name


@dataclasses.dataclass(frozen=True)
class NamedWeights:
    """One torchvision weights entry: ``arch``, ``name`` (``"IMAGENET1K_V2"``), ``enum`` (``"ResNet50_Weights"``)."""

    arch: str
    name: str
    enum: str
    filename: str

    @property
    def url(self) -> str:
        return _BASE + self.filename

    @property
    def qualname(self) -> str:
        return f"{self.enum}.{self.name}"

    def torchvision_enum(self) -> Any:
        import torchvision

        return getattr(torchvision.models, self.enum)[self.name]


def weights_names(arch: str) -> list[str]:
    """The torchvision weights names of ``arch`` (``["IMAGENET1K_V1", "IMAGENET1K_V2"]``), plus ``"DEFAULT"``."""
    if arch not in TORCHVISION_WEIGHTS:
        return []
    return [*TORCHVISION_WEIGHTS[arch][1], "DEFAULT"]


def is_weights_enum(x: Any) -> bool:
    """A torchvision weights enum member (checked without importing torchvision)."""
    return type(x).__module__.startswith("torchvision.") and hasattr(x, "url") and hasattr(x, "transforms")


def resolve_name(arch: str | None, name: str) -> NamedWeights:
    """``(arch, "IMAGENET1K_V2" | "DEFAULT")``, ``"resnet50.IMAGENET1K_V2"``, ``"ResNet50_Weights.DEFAULT"`` or
    ``"resnet50"`` (its DEFAULT) -> the :class:`NamedWeights`; BridgeError listing the choices otherwise."""
    if name in TORCHVISION_WEIGHTS and arch in (None, name):  # an architecture alone: its DEFAULT weights
        arch, name = name, "DEFAULT"
    head, dot, tail = name.rpartition(".")
    if dot:
        by_enum = {v[0].lower(): a for a, v in TORCHVISION_WEIGHTS.items()}
        named_arch = head if head in TORCHVISION_WEIGHTS else by_enum.get(head.lower())
        if named_arch is None:
            raise BridgeError(
                f"unknown weights {name!r}: {head!r} is neither a torchvision architecture jaxtl has nor its "
                f"weights enum; known: {', '.join(TORCHVISION_WEIGHTS)}"
            )
        if arch is not None and arch != named_arch:
            raise BridgeError(f"weights {name!r} belong to {named_arch}, not {arch}")
        arch, name = named_arch, tail
    if arch is None:
        raise BridgeError(f"weights {name!r} need an architecture: pretrained('resnet50', weights={name!r})")
    if arch not in TORCHVISION_WEIGHTS:
        raise BridgeError(
            f"torchvision has no pretrained weights for {arch!r} that jaxtl converts; "
            f"choose one of: {', '.join(TORCHVISION_WEIGHTS)}"
        )
    enum, files, default = TORCHVISION_WEIGHTS[arch]
    real = default if name == "DEFAULT" else name
    if real not in files:
        raise BridgeError(f"{enum} has no weights {name!r}; choose one of: {', '.join(weights_names(arch))}")
    return NamedWeights(arch, real, enum, files[real])


def torch_hub_dir() -> Path:
    """``torch.hub.get_dir()``, computed without importing torch when it is not imported yet:
    ``$TORCH_HOME/hub``, else ``$XDG_CACHE_HOME/torch/hub``, else ``~/.cache/torch/hub``."""
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "hub"):  # respects torch.hub.set_dir()
        return Path(torch.hub.get_dir())
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(os.path.expanduser(home)) / "hub"


def cached_weights_file(w: NamedWeights) -> Path:
    """Where torch's hub cache keeps ``w``: ``<torch hub dir>/checkpoints/<file name of the URL>``."""
    return torch_hub_dir() / "checkpoints" / w.filename


def _why(e: BaseException) -> str:
    """The innermost reason of a download failure, one line (urllib wraps the socket error in ``reason``)."""
    reason = getattr(e, "reason", None)
    text = str(reason if reason is not None else e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def fetch(w: NamedWeights, download: bool | None = None, progress: bool = True) -> Path:
    """The local file of ``w``: the torch hub cache's copy, downloaded there by ``torch.hub.download_url_to_file``
    (hash prefix checked, progress bar) when absent. ``download=False`` (default: on unless ``$JAXTL_OFFLINE`` is
    set) never touches the network. A missing file that cannot be downloaded raises one
    :class:`WeightsUnavailableError` (a BridgeError and an OSError) naming the URL and the exact path to put the file
    at, without the network library's traceback."""
    path = cached_weights_file(w)
    if path.is_file():
        return path
    if download is None:
        download = os.environ.get(OFFLINE_ENV, "") in ("", "0")
    put_it = f"download {w.url} elsewhere and put it at {path} (torch's hub cache, $TORCH_HOME/hub/checkpoints)"
    if not download:
        raise WeightsUnavailableError(
            f"{w.qualname} is not in the torch hub cache and downloads are off; {put_it}", str(path), w.url
        )
    try:
        import torch.hub
    except ImportError:
        raise WeightsUnavailableError(
            f"downloading {w.qualname} needs torch (pip install 'jaxtl[torch]'), or {put_it}", str(path), w.url
        ) from None
    m = _HASH.search(w.filename)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(w.url, str(path), m.group(1) if m else None, progress=progress)
    except Exception as e:  # URLError, HTTPError, timeouts, a hash mismatch (RuntimeError)
        # ``from None``: the message says all; urllib's 50-line chained traceback would bury it.
        raise WeightsUnavailableError(
            f"cannot download {w.qualname} from {w.url} ({_why(e)}); {put_it}", str(path), w.url
        ) from None
    return path
