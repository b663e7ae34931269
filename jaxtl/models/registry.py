"""The registry of architectures: each registered once, with the metadata everything else iterates over."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxtl.models.resnet import ResNet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def channel_stats(
    channels: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """RGB ``mean``/``std`` for ``channels``-channel input: as given for 3 channels, their averages for 1 (gray)."""
    if channels == 1:
        return (sum(mean) / len(mean),), (sum(std) / len(std),)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def default_resize(crop_size: int) -> int:
    """torchvision's evaluation recipe for a ``crop_size`` crop: resize the shorter side to ``crop_size * 256/224``
    (rounded, 256 for 224), then ``CenterCrop(crop_size)``."""
    return max(crop_size, round(crop_size * 256 / 224))


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """What is known about an architecture without building it."""

    name: str
    family: str
    kwargs: dict[str, Any]
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    classifier: str = "fc"
    num_features: int = 2048
    factory: Callable[..., nn.Module] = ResNet


_REGISTRY: dict[str, ArchSpec] = {}


def register(spec: ArchSpec) -> ArchSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"architecture {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def _resnet(name: str, block: str, layers: Sequence[int], groups: int = 1, width: int = 64) -> None:
    register(
        ArchSpec(
            name=name,
            family="resnet",
            kwargs=dict(block=block, layers=tuple(layers), groups=groups, width_per_group=width),
            num_features=512 if block == "basic" else 2048,
        )
    )


_resnet("resnet18", "basic", (2, 2, 2, 2))
_resnet("resnet34", "basic", (3, 4, 6, 3))
_resnet("resnet50", "bottleneck", (3, 4, 6, 3))
_resnet("resnet101", "bottleneck", (3, 4, 23, 3))
_resnet("resnet152", "bottleneck", (3, 8, 36, 3))
_resnet("resnext50_32x4d", "bottleneck", (3, 4, 6, 3), groups=32, width=4)
_resnet("resnext101_32x8d", "bottleneck", (3, 4, 23, 3), groups=32, width=8)
_resnet("resnext101_64x4d", "bottleneck", (3, 4, 23, 3), groups=64, width=4)
_resnet("wide_resnet50_2", "bottleneck", (3, 4, 6, 3), width=128)
_resnet("wide_resnet101_2", "bottleneck", (3, 4, 23, 3), width=128)


def list_models(family: str | None = None) -> list[str]:
    """Names of the registered architectures (optionally of one family), in registration order."""
    return [n for n, s in _REGISTRY.items() if family is None or s.family == family]


def get_spec(name: str) -> ArchSpec:
    """The metadata of a registered architecture; a clear KeyError naming the choices otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; choose one of: {', '.join(_REGISTRY)}") from None


def create(name: str, num_classes: int = 1000, dtype: Any = jnp.float32, **overrides: Any) -> nn.Module:
    """Build a registered architecture, e.g. ``create("resnet50", num_classes=10)``.

    ``num_classes=0`` gives a backbone without ``fc`` whose output is the pooled features.
    ``overrides`` go to the module (``axis_name=``, ``stride_in_1x1=``, ``zero_init_residual=``).
    """
    spec = get_spec(name)
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    return spec.factory(**spec.kwargs, num_classes=num_classes, dtype=dtype, **overrides)


def _make_factory(name: str) -> Callable[..., nn.Module]:
    def factory(num_classes: int = 1000, dtype: Any = jnp.float32, **overrides: Any) -> nn.Module:
        return create(name, num_classes=num_classes, dtype=dtype, **overrides)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"torchvision's ``{name}`` in Flax (NHWC input). See :func:`create`."
    return factory


resnet18 = _make_factory("resnet18")
resnet34 = _make_factory("resnet34")
resnet50 = _make_factory("resnet50")
resnet101 = _make_factory("resnet101")
resnet152 = _make_factory("resnet152")
resnext50_32x4d = _make_factory("resnext50_32x4d")
resnext101_32x8d = _make_factory("resnext101_32x8d")
resnext101_64x4d = _make_factory("resnext101_64x4d")
wide_resnet50_2 = _make_factory("wide_resnet50_2")
wide_resnet101_2 = _make_factory("wide_resnet101_2")
