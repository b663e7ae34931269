"""Exact evaluation of a model over every example of a source: mean loss, top-1 and top-5.

The ragged last batch is padded and masked, never dropped; the sums come back from the devices per batch and are
added on the host, so any batch size and device count give the same numbers (to float rounding of the sums).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn

from jaxtl.data.source import Normalization, Source
from jaxtl.models.heads import head_classes, head_name
from jaxtl.train.losses import Loss, get_loss
from jaxtl.train.parallel import Parallel
from jaxtl.train.state import TrainState
from jaxtl.train.step import eval_metrics

__all__ = ["eval_function", "evaluate", "evaluate_variables"]


def eval_function(module: nn.Module, loss: Loss, norm: Normalization | None, par: Parallel) -> Callable[..., Any]:
    """``fn(variables, batch) -> global metric sums`` of one batch, mapped by ``par`` (compile it once per run)."""

    def per_device(variables: Any, batch: Any, *, axis_name: str | None) -> Any:
        return eval_metrics(module, variables, batch, loss, norm, axis_name)

    return par.map(per_device, donate=False, n_out=1)  # type: ignore[no-any-return]


def evaluate(
    state: TrainState,
    data: Source,
    batch_size: int,
    *,
    par: Parallel | None = None,
    loss: Loss | str = "ce",
    eval_fn: Callable[..., Any] | None = None,
) -> dict[str, float]:
    """Exact ``loss``, ``top1``, ``top5`` (for a labeled loss) over every example of ``data``.

    ``state`` is on the devices of ``par`` (as ``fit`` keeps it) or, when ``par`` is None, a host state that is put
    on one device. The ragged last batch is padded to ``batch_size`` and masked, never dropped.
    """
    return evaluate_variables(
        state.module, state.variables, data, batch_size, par=par, loss=loss, eval_fn=eval_fn, norm=state.normalization
    )


def evaluate_variables(
    module: nn.Module,
    variables: Mapping[str, Any],
    data: Source,
    batch_size: int,
    *,
    par: Parallel | None = None,
    loss: Loss | str = "ce",
    eval_fn: Callable[..., Any] | None = None,
    norm: Any = None,
) -> dict[str, float]:
    """:func:`evaluate` from a module and its variables (no optimizer state); variables already placed by ``par``
    when ``par`` is given, else host arrays evaluated on one device of this process. ``top5`` is reported only
    when the head has more than 5 classes (with 5 or fewer it is always 1). With class weights the mean loss is
    divided by the examples' weight sum, as in training (torch's weighted mean)."""
    loss = get_loss(loss)
    if par is None:
        par = Parallel("none")  # process-local: each process of a multi-process run evaluates everything
        variables = par.put_state({k: v for k, v in variables.items() if k in ("params", "batch_stats")})
    fn = eval_fn or eval_function(module, loss, norm if norm is not None else data.normalization, par)
    totals: dict[str, float] = {}
    for batch in par.full_pass(data, batch_size):
        for k, v in par.get_metrics(fn(variables, batch)).items():
            totals[k] = totals.get(k, 0.0) + v
    count = totals["count"]
    out = {"loss": totals["loss_sum"] / totals.get("weight_sum", count), "count": count}
    if "top1_correct" in totals:
        out["top1"] = totals["top1_correct"] / count
        if head_classes(variables, head_name(module)) > 5:
            out["top5"] = totals["top5_correct"] / count
    return out
