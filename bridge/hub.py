"""Pretrained weights in one line, the torchvision way.

    module, variables, card = pretrained("resnet50", weights="IMAGENET1K_V2", num_classes=10)
    module, variables, card = pretrained(weights=torchvision.models.ResNet50_Weights.DEFAULT)
    module, variables, card = pretrained(weights="runs/epoch_30.ckpt")  # any checkpoint from_torchvision reads

Named weights are fetched the way torchvision fetches them: the file named by the weights' URL in the torch hub
cache (``$TORCH_HOME/hub/checkpoints``, ``torch.hub.get_dir()``), downloaded there by ``torch.hub`` with its hash
check and progress bar when absent. The converted variables are cached (:mod:`.cache`), so the next load of the
same file imports neither torch nor torchvision. The card carries the weights' eval transform, class names and URL.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

import jaxtl
from jaxtl.models.card import ModelCard, Preprocessing

from . import cache
from .convert import BridgeReport, dtype_name, from_torchvision, replace_head
from .errors import BridgeError

_BASE = "https://download.pytorch.org/models/"
# torchvision's weights enums for the ResNet family: arch -> (enum class, {name: file}, DEFAULT name). A test checks
# this table against torchvision, so that a name resolves (and a cached load runs) without importing torchvision.
TORCHVISION_WEIGHTS: dict[str, tuple[str, dict[str, str], str]] = {
    "resnet18": ("ResNet18_Weights", {"IMAGENET1K_V1": "resnet18-f37072fd.pth"}, "IMAGENET1K_V1"),
    "resnet34": ("ResNet34_Weights", {"IMAGENET1K_V1": "resnet34-b627a593.pth"}, "IMAGENET1K_V1"),
    "resnet50": (
        "ResNet50_Weights",
        {"IMAGENET1K_V1": "resnet50-0676ba61.pth", "IMAGENET1K_V2": "resnet50-11ad3fa6.pth"},
        "IMAGENET1K_V2",
    ),
    "resnet101": (
        "ResNet101_Weights",
        {"IMAGENET1K_V1": "resnet101-63fe2227.pth", "IMAGENET1K_V2": "resnet101-cd907fc2.pth"},
        "IMAGENET1K_V2",
    ),
    "resnet152": (
        "ResNet152_Weights",
        {"IMAGENET1K_V1": "resnet152-394f9c45.pth", "IMAGENET1K_V2": "resnet152-f82ba261.pth"},
        "IMAGENET1K_V2",
    ),
    "resnext50_32x4d": (
        "ResNeXt50_32X4D_Weights",
        {"IMAGENET1K_V1": "resnext50_32x4d-7cdf4587.pth", "IMAGENET1K_V2": "resnext50_32x4d-1a0047aa.pth"},
        "IMAGENET1K_V2",
    ),
    "resnext101_32x8d": (
        "ResNeXt101_32X8D_Weights",
        {"IMAGENET1K_V1": "resnext101_32x8d-8ba56ff5.pth", "IMAGENET1K_V2": "resnext101_32x8d-110c445d.pth"},
        "IMAGENET1K_V2",
    ),
    "resnext101_64x4d": (
        "ResNeXt101_64X4D_Weights",
        {"IMAGENET1K_V1": "resnext101_64x4d-173b62eb.pth"},
        "IMAGENET1K_V1",
    ),
    "wide_resnet50_2": (
        "Wide_ResNet50_2_Weights",
        {"IMAGENET1K_V1": "wide_resnet50_2-95faca4d.pth", "IMAGENET1K_V2": "wide_resnet50_2-9ba9bcbe.pth"},
        "IMAGENET1K_V2",
    ),
    "wide_resnet101_2": (
        "Wide_ResNet101_2_Weights",
        {"IMAGENET1K_V1": "wide_resnet101_2-32ee1156.pth", "IMAGENET1K_V2": "wide_resnet101_2-d733dc28.pth"},
        "IMAGENET1K_V2",
    ),
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
                f"unknown weights {name!r}: {head!r} is neither a torchvision ResNet architecture nor its weights "
                f"enum; known: {', '.join(TORCHVISION_WEIGHTS)}"
            )
        if arch is not None and arch != named_arch:
            raise BridgeError(f"weights {name!r} belong to {named_arch}, not {arch}")
        arch, name = named_arch, tail
    if arch is None:
        raise BridgeError(f"weights {name!r} need an architecture: pretrained('resnet50', weights={name!r})")
    if arch not in TORCHVISION_WEIGHTS:
        raise BridgeError(
            f"torchvision has no pretrained weights for {arch!r} in jaxtl's ResNet family; "
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


def fetch(w: NamedWeights, download: bool | None = None, progress: bool = True) -> Path:
    """The local file of ``w``: the torch hub cache's copy, downloaded there by ``torch.hub.download_url_to_file``
    (hash prefix checked, progress bar) when absent. ``download=False`` (default: on unless ``$JAXTL_OFFLINE`` is
    set) never touches the network. A missing file that cannot be downloaded is a BridgeError naming the URL and
    the exact path to put the file at."""
    path = cached_weights_file(w)
    if path.is_file():
        return path
    if download is None:
        download = os.environ.get(OFFLINE_ENV, "") in ("", "0")
    put_it = f"download {w.url} elsewhere and put it at {path} (torch's hub cache, $TORCH_HOME/hub/checkpoints)"
    if not download:
        raise BridgeError(f"{w.qualname} is not in the torch hub cache and downloads are off; {put_it}")
    try:
        import torch.hub
    except ImportError as e:
        raise BridgeError(f"downloading {w.qualname} needs torch (pip install 'jaxtl[torch]'), or {put_it}") from e
    m = _HASH.search(w.filename)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(w.url, str(path), m.group(1) if m else None, progress=progress)
    except Exception as e:  # URLError, HTTPError, timeouts, a hash mismatch (RuntimeError)
        raise BridgeError(f"cannot download {w.qualname} from {w.url} ({e}); {put_it}") from e
    return path


def _unique(names: list[str]) -> tuple[list[str], dict[str, str]]:
    """Class names made unique (a model card needs that): a repeated name becomes "name (index)" everywhere."""
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    out = [f"{n} ({i})" if counts[n] > 1 else n for i, n in enumerate(names)]
    return out, {str(i): n for i, n in enumerate(names) if counts[n] > 1}


def card_from_weights(enum_member: Any, arch: str) -> ModelCard:
    """The model card of a torchvision weights enum member: ``transforms()``'s resize/crop size, interpolation,
    mean and std; ``meta["categories"]`` as class names; the URL as source."""
    t = enum_member.transforms()
    size = lambda v: int(v[0] if isinstance(v, list | tuple) else v)  # noqa: E731
    pre = Preprocessing(
        crop_size=size(t.crop_size),
        resize_size=size(t.resize_size),
        mean=tuple(float(x) for x in t.mean),
        std=tuple(float(x) for x in t.std),
        interpolation=str(getattr(t.interpolation, "value", t.interpolation)),
        channels=3,
    )
    names, renamed = _unique([str(c) for c in enum_member.meta.get("categories") or []])
    extra: dict[str, Any] = {"weights": f"{type(enum_member).__name__}.{enum_member.name}"}
    if renamed:
        extra["renamed_categories"] = renamed
    for k in ("recipe", "_metrics"):
        if k in enum_member.meta:
            extra[k.lstrip("_")] = enum_member.meta[k]
    return ModelCard(
        arch=arch,
        num_classes=len(names),
        preprocessing=pre,
        class_names=tuple(names),
        source=enum_member.url,
        extra=extra,
    )


class Pretrained(tuple):  # type: ignore[type-arg]
    """``(module, variables, card)``, unpacking as a 3-tuple, with ``.report`` (a :class:`BridgeReport`)."""

    report: BridgeReport

    def __new__(cls, module: nn.Module, variables: dict[str, Any], card: ModelCard, report: BridgeReport) -> Pretrained:
        self = super().__new__(cls, (module, variables, card))
        self.report = report
        return self

    @property
    def module(self) -> nn.Module:
        return self[0]  # type: ignore[no-any-return]

    @property
    def variables(self) -> dict[str, Any]:
        return self[1]  # type: ignore[no-any-return]

    @property
    def card(self) -> ModelCard:
        return self[2]  # type: ignore[no-any-return]


def _convert_file(
    path: Path, arch: str | None, named: NamedWeights | None, options: Mapping[str, Any], trust_pickle: bool
) -> tuple[dict[str, Any], dict[str, Any], BridgeReport]:
    """Convert ``path`` keeping its head -> (variables, card dict, report)."""
    conv = from_torchvision(path, arch=arch, trust_pickle=trust_pickle, **options)
    report = conv.report
    assert report.arch is not None
    if named is not None:
        card = card_from_weights(named.torchvision_enum(), report.arch)
        if card.num_classes != report.num_classes:
            card = card.replace(num_classes=report.num_classes, class_names=())
    else:
        card = conv.card  # the card a jaxtl Flax-layout file carries, else the registry's defaults
    card = card.replace(extra={**card.extra, "file": str(path), "sha256": cache.file_sha256(path)})
    return conv.variables, card.to_dict(), report


def pretrained(
    arch: str | None = None,
    weights: Any = "DEFAULT",
    *,
    num_classes: int | None = None,
    dtype: Any = jnp.float32,
    seed: int = 0,
    prefix: str | None = None,
    entry: str | None = None,
    strict: bool = True,
    trust_pickle: bool = False,
    download: bool | None = None,
    progress: bool = True,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> Pretrained:
    """Pretrained ResNet weights as ``(module, variables, card)``; also ``.report``.

    ``weights``: a torchvision weights name for ``arch`` (``"IMAGENET1K_V2"``, ``"DEFAULT"``), a qualified name
    (``"resnet50.IMAGENET1K_V2"``, ``"ResNet50_Weights.DEFAULT"``), a torchvision weights enum member, or the path
    of a .pth/.pt/.safetensors file or training checkpoint (``arch`` then optional: inferred). Named weights come
    from the torch hub cache, downloaded there by torch when absent (see :func:`fetch`; ``download``, ``progress``).
    ``num_classes``: None keeps the weights' head (1000 ImageNet classes, named in ``card.class_names``); another
    size puts a new head initialised from ``seed``; 0 gives the backbone. ``prefix``/``entry``/``strict``/
    ``trust_pickle`` as in :func:`from_torchvision`. The conversion is cached under ``cache_dir`` (default
    :func:`~jaxtl.bridge.cache.default_cache_dir`), so a second load of the same file needs no torch;
    ``use_cache=False`` converts afresh and stores nothing.
    """
    named: NamedWeights | None = None
    if is_weights_enum(weights):
        named = resolve_name(arch, f"{type(weights).__name__}.{weights.name}")
    elif isinstance(weights, str) and not _looks_like_path(weights):
        named = resolve_name(arch, weights)
    elif not isinstance(weights, str | os.PathLike):
        raise BridgeError(
            f"weights must be a torchvision weights name or enum, or a file path; got a {type(weights).__name__}"
        )
    if named is not None:
        if prefix is not None or entry is not None:
            raise BridgeError(f"{named.qualname} is a bare torchvision state dict; prefix/entry do not apply")
        path, arch = fetch(named, download=download, progress=progress), named.arch
    else:
        path = Path(weights)
        if not path.is_file():
            raise BridgeError(f"no such file: {path}")
    if arch is not None and arch not in jaxtl.models.list_models("resnet"):
        raise BridgeError(f"{arch!r} is not a torchvision ResNet; choose one of: {', '.join(TORCHVISION_WEIGHTS)}")
    options = {"prefix": prefix, "entry": entry, "strict": strict}
    entry_file = cache.entry_path(Path(cache_dir or cache.default_cache_dir()), path, {**options, "arch": arch})
    hit = cache.read_entry(entry_file) if use_cache else None
    if hit is not None:
        variables, card_dict, report_dict = hit
        report = BridgeReport.from_dict(report_dict)
        report.cached = str(entry_file)
    else:
        variables, card_dict, report = _convert_file(path, arch, named, options, trust_pickle)
        if use_cache:
            cache.write_entry(entry_file, variables, card_dict, report.to_dict())
    card = ModelCard.from_dict(card_dict, where=str(entry_file))
    variables = replace_head(variables, report, num_classes, seed)
    if report.num_classes != card.num_classes:
        card = card.replace(
            num_classes=report.num_classes, class_names=(), kind="classifier" if report.num_classes else "backbone"
        )
    card = card.replace(dtype=dtype_name(dtype))
    assert report.arch is not None
    module = jaxtl.create(report.arch, num_classes=report.num_classes, dtype=dtype)
    return Pretrained(module, variables, card, report)


def _looks_like_path(s: str) -> bool:
    return (
        os.sep in s
        or "/" in s
        or s.endswith((".pth", ".pt", ".safetensors", ".ckpt", ".bin", ".tar"))
        or Path(s).is_file()
    )
