"""What a run gives back, whichever route ran it (``fit``, ``finetune``, ``pretrain``, ``convert``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flax.linen as nn

from jaxtl.models.card import ModelCard

__all__ = ["RunResult"]


@dataclasses.dataclass
class RunResult:
    """A trained (or converted) model and how it came to be.

    Unpacks as ``module, variables, card = result`` and is accepted as a model by every next step
    (``finetune``, ``evaluate``, ``predict``, ``pretrain(init=...)``), like :func:`jaxtl.bridge.pretrained`'s result.

    - ``module``, ``variables`` (``{"params", "batch_stats"}``, host arrays), ``card`` (None from plain ``fit``);
    - ``history``: the metric records (``{"step", "split": "train"|"eval", ...}``);
    - ``metrics``: the held-out evaluation (``top1``, ``top5``, ``loss``, ``n``; empty when nothing was held out);
    - ``path``: where the model was saved (None without a work directory);
    - ``state``: the final :class:`~jaxtl.train.state.TrainState` (routes that train through ``fit``);
    - ``resumed_from``: the step a resumed run started at (0: a fresh run); ``train_size``: examples trained on.
    """

    module: nn.Module
    variables: dict[str, Any]
    card: ModelCard | None = None
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    path: Path | None = None
    state: Any = None
    resumed_from: int = 0
    train_size: int | None = None

    def __iter__(self) -> Iterator[Any]:
        yield self.module
        yield self.variables
        yield self.card
