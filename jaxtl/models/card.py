"""The model card: what a set of variables is (architecture, head, classes), how its inputs must be prepared, and
where its weights came from. The library writes it with every checkpoint and reads it back in evaluate, finetune
and predict, so a checkpoint saved from Python carries the same facts as one saved by the CLI.

    card = ModelCard.for_arch("resnet50", num_classes=10, class_names=names)
    card.preprocessing.mean, card.preprocessing.crop_size  # (0.485, 0.456, 0.406), 224
    ModelCard.from_dict(card.to_dict()) == card             # JSON round trip, every field checked
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp

from jaxtl.models.preprocessing import INTERPOLATIONS, ModelCardError, Preprocessing, field_error, positive_int
from jaxtl.models.registry import create, get_spec

__all__ = ["DTYPES", "INTERPOLATIONS", "KINDS", "ModelCard", "ModelCardError", "Preprocessing"]

KINDS = ("classifier", "backbone", "encoder")
DTYPES = ("float32", "bfloat16")


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
            raise field_error(where, "arch", f"must be a non-empty string, got {self.arch!r}")
        positive_int(self.num_classes, "num_classes", where, allow_zero=True)
        if not isinstance(self.preprocessing, Preprocessing):
            raise field_error(where, "preprocessing", "must be a Preprocessing")
        names = self.class_names
        if isinstance(names, str) or not isinstance(names, Sequence) or not all(isinstance(n, str) for n in names):
            raise field_error(where, "class_names", f"must be a list of strings, got {names!r}")
        if names and len(names) != self.num_classes:
            raise field_error(where, "class_names", f"has {len(names)} names for num_classes={self.num_classes}")
        if len(set(names)) != len(names):
            raise field_error(where, "class_names", "holds duplicate names")
        object.__setattr__(self, "class_names", tuple(names))
        if self.kind not in KINDS:
            raise field_error(where, "kind", f"must be one of {KINDS}, got {self.kind!r}")
        if self.dtype not in DTYPES:
            raise field_error(where, "dtype", f"must be one of {DTYPES}, got {self.dtype!r}")
        if self.source is not None and not isinstance(self.source, str):
            raise field_error(where, "source", f"must be a string or null, got {self.source!r}")
        if not isinstance(self.extra, Mapping):
            raise field_error(where, "extra", f"must be an object, got {type(self.extra).__name__}")

    @classmethod
    def for_arch(cls, arch: str, num_classes: int, **fields: Any) -> ModelCard:
        """A card with the registry's defaults for ``arch`` (its default eval transform: input size, resize,
        interpolation, mean/std): what a model built with ``jaxtl.create(arch, num_classes)`` expects. ``fields``
        override any field; ``channels=1`` averages the mean/std (gray input); ``image_size=N`` sets the crop size
        (the resize keeps the default's crop/resize ratio)."""
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
