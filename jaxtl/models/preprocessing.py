"""How a model's inputs must be prepared: torchvision's eval transform as the weights define it, and the one error
type of model-card fields (this module is below the registry and the card: both use it)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from jaxtl.errors import JaxtlError

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


class ModelCardError(JaxtlError, ValueError):
    """A model card field that is missing or has a wrong type or value; the message names the field."""


def field_error(where: str, name: str, why: str) -> ModelCardError:
    """The error for field ``name`` of the card at ``where``: "<where>: model card field '<name>' <why>"."""
    return ModelCardError(f"{where}: model card field {name!r} {why}")


def positive_int(value: Any, name: str, where: str, allow_zero: bool = False) -> int:
    """``value`` if it is an int >= 1 (>= 0 with ``allow_zero``), else a :class:`ModelCardError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        raise field_error(where, name, f"must be an integer >= {0 if allow_zero else 1}, got {value!r}")
    return value


def floats(value: Any, name: str, where: str, positive: bool = False) -> tuple[float, ...]:
    """``value`` as a non-empty tuple of finite (``positive``: > 0) floats, else a :class:`ModelCardError`."""
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise field_error(where, name, f"must be a non-empty list of numbers, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (positive and v <= 0):
            raise field_error(where, name, f"must hold finite{' positive' if positive else ''} numbers, got {value!r}")
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
        positive_int(self.crop_size, "crop_size", where)
        positive_int(self.resize_size, "resize_size", where)
        if self.resize_size < self.crop_size:
            raise field_error(where, "resize_size", f"({self.resize_size}) is smaller than crop_size {self.crop_size}")
        if self.channels not in (1, 3):
            raise field_error(where, "channels", f"must be 1 or 3, got {self.channels!r}")
        mean = floats(self.mean, "mean", where)
        std = floats(self.std, "std", where, positive=True)
        if len(mean) != self.channels or len(std) != self.channels:
            raise field_error(where, "mean/std", f"need {self.channels} values each, got {len(mean)} and {len(std)}")
        if self.interpolation not in INTERPOLATIONS:
            raise field_error(where, "interpolation", f"must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
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
            raise field_error(where, "preprocessing", f"must be an object, got {type(d).__name__}")
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise field_error(where, "preprocessing", f"has unknown keys {unknown}")
        try:
            out = cls(**dict(d))
        except ModelCardError as e:
            raise ModelCardError(str(e).replace("preprocessing:", f"{where}:", 1)) from None
        return out
