"""The registry of architectures: each registered once, with what the rest of jaxtl asks about it.

An :class:`ArchSpec` names the module class and its arguments, and the default card facts (torchvision's eval
transform for the architecture's default weights). Everything else is declared by the module itself (the
:class:`~jaxtl.models.protocol.Classifier` protocol) and read through the spec: the head path, the feature width,
the no-weight-decay rule, the layers from the input up.

    spec = get_spec("vit_b_16")
    spec.head_path, spec.num_features, spec.patch_size   # "heads/head", 768, 16
    module = create("vit_b_16", num_classes=10, image_size=384)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxtl.errors import UnknownArchError
from jaxtl.models.convnet import ConvNet
from jaxtl.models.convnext import ConvNeXt
from jaxtl.models.preprocessing import Preprocessing
from jaxtl.models.protocol import Classifier
from jaxtl.models.resnet import ResNet
from jaxtl.models.vit import VisionTransformer, resize

# Kept for older callers (jaxtl.data imports them); ImageNet's mean/std are data constants and belong to jaxtl.data.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def channel_stats(
    channels: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """RGB ``mean``/``std`` for ``channels``-channel input: as given for 3 channels, their averages for 1 (gray).
    Kept for older callers: :meth:`Preprocessing.with_channels` is the model card's rule."""
    if channels == 1:
        return (sum(mean) / len(mean),), (sum(std) / len(std),)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def default_resize(crop_size: int) -> int:
    """torchvision's evaluation recipe for a ``crop_size`` crop: resize the shorter side to ``crop_size * 256/224``
    (rounded, 256 for 224), then ``CenterCrop(crop_size)``. Kept for older callers."""
    return max(crop_size, round(crop_size * 256 / 224))


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """What is known about an architecture without building it: ``factory(**kwargs, num_classes=, dtype=)`` builds
    it; ``preprocessing`` is its default eval transform (the card of weights that say nothing about themselves);
    ``torchvision``: torchvision has it, so the bridge converts it both ways."""

    name: str
    family: str
    kwargs: Mapping[str, Any]
    factory: Callable[..., nn.Module]
    preprocessing: Preprocessing = dataclasses.field(default_factory=Preprocessing)
    torchvision: bool = True

    def build(self, num_classes: int = 1000, dtype: Any = jnp.float32, **overrides: Any) -> Classifier:
        module = self.factory(**{**self.kwargs, **overrides}, num_classes=num_classes, dtype=dtype)
        if not isinstance(module, Classifier):
            raise TypeError(f"{self.name}: {type(module).__name__} does not declare the Classifier protocol")
        return module

    @property
    def head_path(self) -> str:
        """Where the head sits in ``params``: ``"fc"``, ``"heads/head"``, ``"classifier/2"``."""
        return str(self.build(0).head_path)

    @property
    def classifier(self) -> str:
        """The head path (older name)."""
        return self.head_path

    @property
    def num_features(self) -> int:
        """Width of the pooled features (the head's input)."""
        return int(self.build(0).num_features)

    @property
    def no_decay(self) -> str:
        """Regex of the parameter paths that take no weight decay."""
        return str(self.build(0).no_decay)

    @property
    def layer_patterns(self) -> tuple[str, ...]:
        """One regex per layer from the input up; the rest (final norm, head) is the top layer."""
        return tuple(self.build(0).layer_patterns)

    @property
    def input_size(self) -> int:
        """The default input size (a ViT is built for it; the others take any size)."""
        return int(self.kwargs.get("image_size", self.preprocessing.crop_size))

    @property
    def patch_size(self) -> int | None:
        """A transformer's patch size (None for convolutional networks)."""
        p = self.kwargs.get("patch_size")
        return None if p is None else int(p)


_REGISTRY: dict[str, ArchSpec] = {}


def register(spec: ArchSpec) -> ArchSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"architecture {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def _resnet(name: str, block: str, layers: Sequence[int], groups: int = 1, width: int = 64) -> None:
    kwargs = dict(block=block, layers=tuple(layers), groups=groups, width_per_group=width)
    register(ArchSpec(name, "resnet", kwargs, ResNet, Preprocessing(crop_size=224, resize_size=256)))


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


def _vit(name: str, patch: int, layers: int, heads: int, hidden: int, mlp: int, pre: Preprocessing) -> None:
    kwargs = dict(image_size=224, patch_size=patch, num_layers=layers, num_heads=heads, hidden_dim=hidden, mlp_dim=mlp)
    register(ArchSpec(name, "vit", kwargs, VisionTransformer, pre))


# Default cards: torchvision's eval transform of the default 224-px weights (vit_h_14's only 224-px weights are the
# SWAG linear-probe ones: resize 224, bicubic).
_vit("vit_b_16", 16, 12, 12, 768, 3072, Preprocessing(crop_size=224, resize_size=256))
_vit("vit_b_32", 32, 12, 12, 768, 3072, Preprocessing(crop_size=224, resize_size=256))
_vit("vit_l_16", 16, 24, 16, 1024, 4096, Preprocessing(crop_size=224, resize_size=242))
_vit("vit_l_32", 32, 24, 16, 1024, 4096, Preprocessing(crop_size=224, resize_size=256))
_vit("vit_h_14", 14, 32, 16, 1280, 5120, Preprocessing(crop_size=224, resize_size=224, interpolation="bicubic"))


def _convnext(name: str, widths: Sequence[int], depths: Sequence[int], sd_prob: float, resize: int) -> None:
    setting = tuple(
        (w, widths[i + 1] if i + 1 < len(widths) else None, d) for i, (w, d) in enumerate(zip(widths, depths))
    )
    kwargs = dict(block_setting=setting, stochastic_depth_prob=sd_prob)
    register(ArchSpec(name, "convnext", kwargs, ConvNeXt, Preprocessing(crop_size=224, resize_size=resize)))


# torchvision's stochastic depth defaults (its training recipe) and its weights' eval resize.
_convnext("convnext_tiny", (96, 192, 384, 768), (3, 3, 9, 3), 0.1, 236)
_convnext("convnext_small", (96, 192, 384, 768), (3, 3, 27, 3), 0.4, 230)
_convnext("convnext_base", (128, 256, 512, 1024), (3, 3, 27, 3), 0.5, 232)
_convnext("convnext_large", (192, 384, 768, 1536), (3, 3, 27, 3), 0.5, 232)

# jaxtl's own small CNN for small images (no torchvision weights: the bridge does not convert it).
register(
    ArchSpec(
        name="convnet_small",
        family="convnet",
        kwargs=dict(widths=(32, 64, 128)),
        factory=ConvNet,
        preprocessing=Preprocessing(crop_size=32, resize_size=37, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        torchvision=False,
    )
)


def list_models(family: str | None = None, *, torchvision: bool | None = None) -> list[str]:
    """Names of the registered architectures, in registration order; optionally of one ``family`` (``"resnet"``,
    ``"vit"``, ``"convnext"``, ``"convnet"``) and/or only those torchvision has (``torchvision=True``: what the
    bridge converts)."""
    return [
        n
        for n, s in _REGISTRY.items()
        if (family is None or s.family == family) and (torchvision is None or s.torchvision == torchvision)
    ]


def families(torchvision: bool | None = None) -> list[str]:
    """The registered families, in registration order (``torchvision=True``: those the bridge converts)."""
    out: list[str] = []
    for s in _REGISTRY.values():
        if s.family not in out and (torchvision is None or s.torchvision == torchvision):
            out.append(s.family)
    return out


def get_spec(name: str) -> ArchSpec:
    """The metadata of a registered architecture; an UnknownArchError (a KeyError) naming the choices otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownArchError(f"unknown architecture {name!r}; choose one of: {', '.join(_REGISTRY)}") from None


def create(
    name: str, num_classes: int = 1000, dtype: Any = jnp.float32, *, image_size: int | None = None, **overrides: Any
) -> Any:
    """Build a registered architecture, e.g. ``create("resnet50", num_classes=10)``.

    ``num_classes=0`` gives a backbone without head whose output is the pooled features. ``image_size`` builds a
    transformer for that input size (its patch grid; interpolate pretrained position embeddings with
    :func:`at_image_size`); convolutional networks take any size and ignore it. ``overrides`` go to the module
    (``axis_name=``, ``stride_in_1x1=``, ``stochastic_depth_prob=``, ``attention_impl=``, ...).
    """
    spec = get_spec(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be an integer >= 0, got {num_classes!r}")
    if image_size is not None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
        if spec.patch_size is not None:
            if image_size % spec.patch_size:
                raise ValueError(
                    f"{name}: image_size {image_size} is not a multiple of the patch size {spec.patch_size}"
                )
            overrides["image_size"] = image_size
    return spec.build(num_classes, dtype, **overrides)


def at_image_size(module: Any, variables: Mapping[str, Any], image_size: int) -> tuple[Any, dict[str, Any]]:
    """``(module, variables)`` ready for ``image_size`` inputs: a Vision Transformer is rebuilt for that size with its
    position embedding interpolated (torchvision's ``interpolate_embeddings``, bicubic); a convolutional network
    takes any size and comes back unchanged."""
    if isinstance(module, VisionTransformer):
        return resize(module, variables, image_size)
    return module, dict(variables)


def _make_factory(name: str) -> Callable[..., Any]:
    def factory(num_classes: int = 1000, dtype: Any = jnp.float32, **overrides: Any) -> Any:
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
vit_b_16 = _make_factory("vit_b_16")
vit_b_32 = _make_factory("vit_b_32")
vit_l_16 = _make_factory("vit_l_16")
vit_l_32 = _make_factory("vit_l_32")
vit_h_14 = _make_factory("vit_h_14")
convnext_tiny = _make_factory("convnext_tiny")
convnext_small = _make_factory("convnext_small")
convnext_base = _make_factory("convnext_base")
convnext_large = _make_factory("convnext_large")
