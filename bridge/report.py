"""What a conversion found and did (:class:`BridgeReport`), its result (:class:`Conversion`) and the model card of
weights that say nothing about themselves."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxtl.models.card import ModelCard

from .checkpoints import Located
from .errors import BridgeError


@dataclasses.dataclass
class BridgeReport:
    """What a conversion found and did. ``problems`` is empty exactly when the state dict converts strictly.

    ``head`` is the architecture's head path (``"fc"``, ``"heads/head"``, ``"classifier/2"``); the ``fc_*`` fields
    describe that head whatever it is called (``fc_shape``: its torch weight's shape in the source).
    ``arch_kwargs``: what ``create()`` needs beyond the registry's defaults (a ViT's ``image_size``)."""

    arch: str | None
    source: str
    num_classes: int = 0
    source_num_classes: int = 0
    fc_reinitialized: bool = False
    seed: int | None = None
    dropped: list[str] = dataclasses.field(default_factory=list)
    ignored: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    mismatched: list[str] = dataclasses.field(default_factory=list)
    bad_values: list[str] = dataclasses.field(default_factory=list)
    cast_from: dict[str, int] = dataclasses.field(default_factory=dict)
    param_tensors: int = 0
    param_elements: int = 0
    stat_tensors: int = 0
    stat_elements: int = 0
    arch_error: str | None = None
    hint: str | None = None
    layout: str = "torch"
    entry: str | None = None
    alternatives: list[str] = dataclasses.field(default_factory=list)
    prefix: str | None = None
    prefix_detected: bool = False
    outside_prefix: list[str] = dataclasses.field(default_factory=list)
    cached: str | None = None
    fc_shape: list[int] | None = None
    card: dict[str, Any] | None = None
    head: str | None = None
    arch_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def notes(self) -> list[str]:
        """What was done to reach the state dict (entry unwrapped, prefix stripped, keys left out), one line each."""
        located = Located({}, self.source, self.entry, self.alternatives, self.prefix, self.prefix_detected)
        located.outside_prefix, located.layout = self.outside_prefix, self.layout
        notes = located.notes()
        if self.cached:
            notes.append(f"loaded the converted variables from the cache {self.cached}")
        return notes

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BridgeReport:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def problems(self) -> list[str]:
        out = [x for x in (self.hint, self.arch_error) if x]
        out += [f"missing key {k!r}" for k in self.missing]
        out += [f"unexpected key {k!r}" for k in self.unexpected]
        return out + self.mismatched + self.bad_values

    @property
    def ok(self) -> bool:
        return not self.problems


def dtype_name(dtype: Any) -> str:
    """The model card's name of a compute dtype: "bfloat16" for bfloat16, else "float32"."""
    return "bfloat16" if jnp.dtype(dtype) == jnp.bfloat16 else "float32"


def default_card(
    arch: str, num_classes: int, source: str | None, dtype: Any = jnp.float32, image_size: int | None = None
) -> ModelCard:
    """The card of weights that say nothing about themselves: the registry's default eval transform for ``arch``
    (at ``image_size`` when given: a ViT built for another size), no class names."""
    return ModelCard.for_arch(arch, num_classes, source=source, dtype=dtype_name(dtype), image_size=image_size)


def report_card(report: BridgeReport, dtype: Any) -> ModelCard:
    """The card a jaxtl Flax-layout file carried (adapted to the head), else :func:`default_card`."""
    assert report.arch is not None
    size = report.arch_kwargs.get("image_size")
    if report.card is None:
        return default_card(report.arch, report.num_classes, report.source, dtype, size)
    try:
        card = ModelCard.from_dict(report.card, where=report.source)
    except ValueError as e:
        raise BridgeError(f"{report.source}: the model card in its metadata is not valid: {e}") from e
    if card.arch != report.arch:
        raise BridgeError(f"{report.source}: its model card says {card.arch}, its variables are {report.arch}")
    if card.num_classes != report.num_classes:
        kind = "classifier" if report.num_classes else "backbone"
        card = card.replace(num_classes=report.num_classes, class_names=(), kind=kind)
    return card.replace(dtype=dtype_name(dtype))


class Conversion(tuple):  # type: ignore[type-arg]
    """``(module, variables)`` that unpacks as a 2-tuple and also carries ``.report`` (a :class:`BridgeReport`) and
    ``.card`` (the :class:`~jaxtl.models.card.ModelCard`: architecture, classes, preprocessing, source)."""

    report: BridgeReport
    card: ModelCard

    def __new__(
        cls, module: nn.Module, variables: dict[str, Any], report: BridgeReport, card: ModelCard | None = None
    ) -> Conversion:
        self = super().__new__(cls, (module, variables))
        self.report = report
        assert report.arch is not None
        self.card = card or report_card(report, module.dtype)
        return self

    @property
    def module(self) -> nn.Module:
        return self[0]  # type: ignore[no-any-return]

    @property
    def variables(self) -> dict[str, Any]:
        return self[1]  # type: ignore[no-any-return]
