"""Exact evaluation of a model over every example of a source: mean loss, top-1 and top-5.

The ragged last batch is padded and masked, never dropped; the sums come back from the devices per batch and are
added on the host, so any batch size and device count give the same numbers (to float rounding of the sums).

One eval program per (model, loss, normalisation, devices) in a process: evaluating twice (a model and its weight
average, every epoch) compiles once. It compiles while the pass's first batch is fetched, or earlier in the
background (:func:`prepare_evaluation`, which fine-tuning starts once training runs).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtl.compile_cache import default_compile_cache
from jaxtl.data.protocol import Normalization, Source
from jaxtl.models.heads import head_classes, head_name
from jaxtl.train.losses import Loss, get_loss
from jaxtl.train.parallel import Parallel
from jaxtl.train.startup import Ahead, Program, batch_spec, spec_of
from jaxtl.train.state import TrainState
from jaxtl.train.step import eval_metrics
from jaxtl.train.timings import phase

__all__ = ["eval_function", "evaluate", "evaluate_variables", "prepare_evaluation"]

_PROGRAMS: collections.OrderedDict[Any, Program] = collections.OrderedDict()
_KEEP = 8  # eval programs kept per process (the most recently used)


def eval_function(module: nn.Module, loss: Loss, norm: Normalization | None, par: Parallel) -> Program:
    """``fn(variables, batch) -> global metric sums`` of one batch, mapped by ``par``: the process's one program for
    these arguments (it compiles at the first evaluation, while that evaluation's first batch is fetched)."""
    key: Any = (module, loss, None if norm is None else tuple(map(tuple, norm)), par.kind, tuple(par.devices))
    try:
        hash(key)
    except TypeError:  # e.g. a loss holding an array: a program of its own
        key = None
    if key is not None and key in _PROGRAMS:
        _PROGRAMS.move_to_end(key)
        return _PROGRAMS[key]

    def per_device(variables: Any, batch: Any, *, axis_name: str | None) -> Any:
        return eval_metrics(module, variables, batch, loss, norm, axis_name)

    program = Program(par.map(per_device, donate=False, n_out=1), "eval step")
    if key is not None:
        _PROGRAMS[key] = program
        while len(_PROGRAMS) > _KEEP:
            _PROGRAMS.popitem(last=False)
    return program


def prepare_evaluation(
    module: nn.Module, variables: Mapping[str, Any], data: Source, batch_size: int, *, loss: Loss | str = "ce"
) -> None:
    """Compile, in the background at low priority, the program ``evaluate_variables(module, variables', data,
    batch_size, loss=loss)`` will run for variables shaped as ``variables`` (host arrays, one device), so the
    evaluation finds it built. Only shapes matter: call it before training ends."""
    par = Parallel("none")
    spec = batch_spec(data, batch_size, par, train=False)
    if spec is None:
        return  # its batches' shapes are known only from a batch: compiled with the pass as usual
    fn = eval_function(module, get_loss(loss), data.normalization, par)
    placed = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
    device = jax.sharding.SingleDeviceSharding(par.devices[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x), sharding=device), placed)
    fn.compile_in_background(abstract, spec)


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
    default_compile_cache()  # an evaluation is a run too (jaxtl.compile_cache)
    loss = get_loss(loss)
    if par is None:
        par = Parallel("none")  # process-local: each process of a multi-process run evaluates everything
        variables = par.put_state({k: v for k, v in variables.items() if k in ("params", "batch_stats")})
    fn = eval_fn or eval_function(module, loss, norm if norm is not None else data.normalization, par)
    batches: Iterator[Any] = par.full_pass(data, batch_size)
    if isinstance(fn, Program):  # compile (unless built already) while the first batch is fetched
        ahead = Ahead(batches, "eval: first batch")
        try:
            spec = batch_spec(data, batch_size, par, train=False)
            fn.compile(variables, spec if spec is not None else spec_of(ahead.first()))
        except BaseException:
            ahead.close()
            raise
        batches = iter(ahead)
    totals: dict[str, float] = {}
    with phase("eval: pass"):
        for batch in batches:
            for k, v in par.get_metrics(fn(variables, batch)).items():
                totals[k] = totals.get(k, 0.0) + v
    count = totals["count"]
    out = {"loss": totals["loss_sum"] / totals.get("weight_sum", count), "count": count}
    if "top1_correct" in totals:
        out["top1"] = totals["top1_correct"] / count
        if head_classes(variables, head_name(module)) > 5:
            out["top5"] = totals["top5_correct"] / count
    return out
