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

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxtl.models import at_image_size, create
from jaxtl.models.card import ModelCard, Preprocessing

from . import cache
from .check import adapt_head, check_arch, convert_located
from .errors import BridgeError
from .io import read_source
from .report import BridgeReport, dtype_name
from .weights import (
    OFFLINE_ENV,
    TORCHVISION_WEIGHTS,
    NamedWeights,
    cached_weights_file,
    fetch,
    is_weights_enum,
    resolve_name,
    torch_hub_dir,
    weights_names,
)

__all__ = [
    "OFFLINE_ENV",
    "TORCHVISION_WEIGHTS",
    "NamedWeights",
    "Pretrained",
    "cached_weights_file",
    "card_from_weights",
    "fetch",
    "is_weights_enum",
    "pretrained",
    "resolve_name",
    "torch_hub_dir",
    "weights_names",
]


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

    def at_image_size(self, image_size: int) -> Pretrained:
        """The same weights for ``image_size`` inputs: a ViT rebuilt for that size with its position embedding
        interpolated (torchvision's ``interpolate_embeddings``, bicubic), the card's crop (and resize, in proportion)
        set to it; a convolutional network only gets the card's new sizes."""
        module, variables = at_image_size(self.module, self.variables, image_size)
        card = self.card.replace(preprocessing=self.card.preprocessing.with_size(image_size))
        return Pretrained(module, variables, card, self.report)


def _convert_file(
    path: Path, arch: str | None, named: NamedWeights | None, options: Mapping[str, Any], trust_pickle: bool
) -> tuple[dict[str, Any], dict[str, Any], BridgeReport]:
    """Convert ``path`` keeping its head -> (variables, card dict, report)."""
    sd, located = read_source(path, prefix=options["prefix"], entry=options["entry"], trust_pickle=trust_pickle)
    conv = convert_located(sd, located, arch=arch, strict=options["strict"])
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
    use_cache: bool | str | os.PathLike = True,
) -> Pretrained:
    """Pretrained torchvision weights (ResNet, ViT, ConvNeXt) as ``(module, variables, card)``; also ``.report``.

    ``weights``: a torchvision weights name for ``arch`` (``"IMAGENET1K_V2"``, ``"IMAGENET1K_SWAG_E2E_V1"``,
    ``"DEFAULT"``), a qualified name (``"resnet50.IMAGENET1K_V2"``, ``"ViT_B_16_Weights.DEFAULT"``), a torchvision
    weights enum member, or the path of a .pth/.pt/.safetensors file or training checkpoint (``arch`` then optional:
    inferred). Named weights come from the torch hub cache, downloaded there by torch when absent (see :func:`fetch`;
    ``download``, ``progress``); weights neither there nor downloadable raise one
    :class:`~jaxtl.bridge.errors.WeightsUnavailableError` naming the file to place in the cache and its URL.
    ``num_classes``: None keeps the weights' head (1000 ImageNet classes, named in ``card.class_names``); another
    size puts a new head initialised from ``seed``; 0 gives the backbone. A ViT is built for the input size of its
    weights (SWAG E2E: 384, 512 or 518 px; see :meth:`Pretrained.at_image_size` for another). ``prefix``/``entry``/
    ``strict``/``trust_pickle`` as in :func:`~jaxtl.bridge.from_torchvision`. The conversion is cached, so a second
    load of the same file needs no torch: ``use_cache=True`` in :func:`~jaxtl.bridge.cache.default_cache_dir`, a
    folder there, ``False`` converts afresh and stores nothing.
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
    if arch is not None:
        check_arch(arch)
    options = {"prefix": prefix, "entry": entry, "strict": strict}
    cache_dir = cache.default_cache_dir() if use_cache is True or use_cache is False else Path(use_cache)
    entry_file = cache.entry_path(cache_dir, path, {**options, "arch": arch})
    hit = cache.read_entry(entry_file) if use_cache is not False else None
    if hit is not None:
        variables, card_dict, report_dict = hit
        report = BridgeReport.from_dict(report_dict)
        report.cached = str(entry_file)
    else:
        variables, card_dict, report = _convert_file(path, arch, named, options, trust_pickle)
        if use_cache is not False:
            cache.write_entry(entry_file, variables, card_dict, report.to_dict())
    card = ModelCard.from_dict(card_dict, where=str(entry_file))
    variables = adapt_head(variables, report, num_classes, seed)
    if report.num_classes != card.num_classes:
        card = card.replace(
            num_classes=report.num_classes, class_names=(), kind="classifier" if report.num_classes else "backbone"
        )
    card = card.replace(dtype=dtype_name(dtype))
    assert report.arch is not None
    module = create(report.arch, num_classes=report.num_classes, dtype=dtype, **report.arch_kwargs)
    return Pretrained(module, variables, card, report)


def _looks_like_path(s: str) -> bool:
    return (
        os.sep in s
        or "/" in s
        or s.endswith((".pth", ".pt", ".safetensors", ".ckpt", ".bin", ".tar"))
        or Path(s).is_file()
    )
