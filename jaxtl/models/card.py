"""The model card: what a set of variables is (architecture, head, classes), how its inputs must be prepared, and
where its weights came from. The library writes it with every checkpoint and reads it back in evaluate, finetune
and predict, so a checkpoint saved from Python carries the same facts as one saved by the CLI.

    card = ModelCard.for_arch("resnet50", num_classes=10, class_names=names)
    card.preprocessing.mean, card.preprocessing.crop_size  # (0.485, 0.456, 0.406), 224
    ModelCard.from_dict(card.to_dict()) == card             # JSON round trip, every field checked
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from jaxtl.errors import JaxtlError

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
KINDS = ("classifier", "backbone", "encoder")
DTYPES = ("float32", "bfloat16")


class ModelCardError(JaxtlError, ValueError):
    """A model card field that is missing or has a wrong type or value; the message names the field."""


def _field_error(where: str, name: str, why: str) -> ModelCardError:
    return ModelCardError(f"{where}: model card field {name!r} {why}")


def _positive_int(value: Any, name: str, where: str, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        raise _field_error(where, name, f"must be an integer >= {0 if allow_zero else 1}, got {value!r}")
    return value


def _floats(value: Any, name: str, where: str, positive: bool = False) -> tuple[float, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise _field_error(where, name, f"must be a non-empty list of numbers, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (positive and v <= 0):
            raise _field_error(where, name, f"must hold finite{' positive' if positive else ''} numbers, got {value!r}")
        out.append(float(v))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """torchvision's eval transform, as the weights define it: ``Resize(resize_size)`` of the shorter side with
    ``interpolation`` (antialiased), ``CenterCrop(crop_size)``, scale to ``[0, 1]``, normalise with ``mean``/``std``.

    ``channels`` is 3 (RGB) or 1 (gray: one mean/std). Training at ``crop_size`` uses the same mean/std.
    """

    crop_size: int = 224
    resize_size: int = 256
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    channels: int = 3

    def __post_init__(self) -> None:
        self.check("preprocessing")

    def check(self, where: str) -> None:
        _positive_int(self.crop_size, "crop_size", where)
        _positive_int(self.resize_size, "resize_size", where)
        if self.resize_size < self.crop_size:
            raise _field_error(where, "resize_size", f"({self.resize_size}) is smaller than crop_size {self.crop_size}")
        if self.channels not in (1, 3):
            raise _field_error(where, "channels", f"must be 1 or 3, got {self.channels!r}")
        mean = _floats(self.mean, "mean", where)
        std = _floats(self.std, "std", where, positive=True)
        if len(mean) != self.channels or len(std) != self.channels:
            raise _field_error(where, "mean/std", f"need {self.channels} values each, got {len(mean)} and {len(std)}")
        if self.interpolation not in INTERPOLATIONS:
            raise _field_error(where, "interpolation", f"must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def with_channels(self, channels: int) -> Preprocessing:
        """The same transform for ``channels``-channel input: 3 keeps the RGB mean/std, 1 (gray) averages them."""
        if channels == self.channels:
            return self
        if channels == 1:
            mean, std = (sum(self.mean) / len(self.mean),), (sum(self.std) / len(self.std),)
        else:
            raise ModelCardError(f"cannot make {channels}-channel statistics from {self.channels}-channel ones")
        return dataclasses.replace(self, mean=mean, std=std, channels=1)

    def with_size(self, crop_size: int, resize_size: int | None = None) -> Preprocessing:
        """The same transform at another crop size; the resize keeps the crop/resize ratio (224/256 by default)."""
        if resize_size is None:
            resize_size = max(crop_size, round(crop_size * self.resize_size / self.crop_size))
        return dataclasses.replace(self, crop_size=crop_size, resize_size=resize_size)

    def to_dict(self) -> dict[str, Any]:
        return {
            "crop_size": self.crop_size,
            "resize_size": self.resize_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "channels": self.channels,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "model card") -> Preprocessing:
        if not isinstance(d, Mapping):
            raise _field_error(where, "preprocessing", f"must be an object, got {type(d).__name__}")
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise _field_error(where, "preprocessing", f"has unknown keys {unknown}")
        try:
            out = cls(**dict(d))
        except ModelCardError as e:
            raise ModelCardError(str(e).replace("preprocessing:", f"{where}:", 1)) from None
        return out


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """What travels with a model's variables. ``num_classes=0`` is a backbone (no head); ``class_names`` has
    ``num_classes`` entries when known (else empty); ``source`` names where the weights came from (a path, a URL or
    a torchvision weights name); ``dtype`` is the compute dtype the model was trained or should run in;
    ``extra`` holds free JSON (training facts such as the split or the final metrics)."""

    arch: str
    num_classes: int
    preprocessing: Preprocessing = dataclasses.field(default_factory=Preprocessing)
    class_names: tuple[str, ...] = ()
    kind: str = "classifier"
    dtype: str = "float32"
    source: str | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.check("model card")

    def check(self, where: str) -> None:
        if not isinstance(self.arch, str) or not self.arch:
            raise _field_error(where, "arch", f"must be a non-empty string, got {self.arch!r}")
        _positive_int(self.num_classes, "num_classes", where, allow_zero=True)
        if not isinstance(self.preprocessing, Preprocessing):
            raise _field_error(where, "preprocessing", "must be a Preprocessing")
        names = self.class_names
        if isinstance(names, str) or not isinstance(names, Sequence) or not all(isinstance(n, str) for n in names):
            raise _field_error(where, "class_names", f"must be a list of strings, got {names!r}")
        if names and len(names) != self.num_classes:
            raise _field_error(where, "class_names", f"has {len(names)} names for num_classes={self.num_classes}")
        if len(set(names)) != len(names):
            raise _field_error(where, "class_names", "holds duplicate names")
        object.__setattr__(self, "class_names", tuple(names))
        if self.kind not in KINDS:
            raise _field_error(where, "kind", f"must be one of {KINDS}, got {self.kind!r}")
        if self.dtype not in DTYPES:
            raise _field_error(where, "dtype", f"must be one of {DTYPES}, got {self.dtype!r}")
        if self.source is not None and not isinstance(self.source, str):
            raise _field_error(where, "source", f"must be a string or null, got {self.source!r}")
        if not isinstance(self.extra, Mapping):
            raise _field_error(where, "extra", f"must be an object, got {type(self.extra).__name__}")

    @classmethod
    def for_arch(cls, arch: str, num_classes: int, **fields: Any) -> ModelCard:
        """A card with the registry's defaults for ``arch`` (its default eval transform: input size, resize,
        interpolation, mean/std): what a model built with ``jaxtl.create(arch, num_classes)`` expects. ``fields``
        override any field; ``channels=1`` averages the mean/std (gray input); ``image_size=N`` sets the crop size
        (the resize keeps the default's crop/resize ratio)."""
        from jaxtl.models.registry import get_spec

        spec = get_spec(arch)
        channels = int(fields.pop("channels", 3))
        image_size = fields.pop("image_size", None)
        pre = fields.pop("preprocessing", None) or spec.preprocessing.with_channels(channels)
        if image_size is not None:
            pre = pre.with_size(int(image_size))
        kind = fields.pop("kind", "classifier" if num_classes else "backbone")
        return cls(arch=arch, num_classes=num_classes, preprocessing=pre, kind=kind, **fields)

    def build_module(self, dtype: Any = None) -> Any:
        """The module these variables belong to: ``jaxtl.create(arch, num_classes, dtype, image_size=crop_size)``
        (a transformer is built for the card's input size) in ``dtype`` (default: the card's)."""
        import jax.numpy as jnp

        from jaxtl.models.registry import create

        dtype = jnp.dtype(self.dtype) if dtype is None else dtype
        return create(self.arch, self.num_classes, dtype, image_size=self.preprocessing.crop_size)

    def replace(self, **changes: Any) -> ModelCard:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "num_classes": self.num_classes,
            "preprocessing": self.preprocessing.to_dict(),
            "class_names": list(self.class_names),
            "kind": self.kind,
            "dtype": self.dtype,
            "source": self.source,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "model card") -> ModelCard:
        """The card of a ``to_dict()`` mapping; :class:`ModelCardError` naming ``where`` and the field if wrong."""
        if not isinstance(d, Mapping):
            raise ModelCardError(f"{where}: a model card must be an object, got {type(d).__name__}")
        missing = [k for k in ("arch", "num_classes") if k not in d]
        if missing:
            raise ModelCardError(f"{where}: model card lacks {', '.join(missing)}")
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ModelCardError(f"{where}: model card has unknown keys {unknown}")
        fields = dict(d)
        fields["preprocessing"] = Preprocessing.from_dict(fields.get("preprocessing", {}), where)
        fields["class_names"] = fields.get("class_names") or ()
        fields["extra"] = fields.get("extra") or {}
        try:
            return cls(**fields)
        except ModelCardError as e:
            raise ModelCardError(str(e).replace("model card:", f"{where}:", 1)) from None
