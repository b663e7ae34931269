"""Evaluating a classifier: exact top-1/top-5/loss over every example, on all of the data or on the held-out
examples its fine-tuning recorded (what ``jaxtl evaluate`` runs), and on request the per-class report (precision,
recall, F1, support, the confusion matrix and its picture, the worst-classified examples by file name)."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import warnings
from collections.abc import Mapping
from typing import Any

import flax.linen as nn

from jaxtl.data.protocol import Source, check_labels
from jaxtl.errors import ConfigError, DataError
from jaxtl.lifecycle import Run
from jaxtl.models.heads import head_classes, head_name
from jaxtl.recipes.config import EvaluateConfig
from jaxtl.recipes.data import heldout_part, open_data
from jaxtl.recipes.model import ModelLike, as_model, variables_digest
from jaxtl.train.evaluation import evaluate_variables
from jaxtl.train.parallel import Parallel
from jaxtl.train.per_class import ClassReport, collect_predictions

__all__ = ["REPORT", "class_report", "evaluate", "evaluate_classifier"]

REPORT = "report"  # the report's folder in a work directory: report.json and confusion.png


def evaluate_classifier(
    module: nn.Module, variables: Mapping[str, Any], data: Source, batch_size: int = 256, parallel: str = "none"
) -> dict[str, float]:
    """Exact ``top1``, ``top5`` (heads of more than 5 classes), mean cross-entropy ``loss`` and ``n`` over every
    example of labeled ``data``.

    Eval-mode BatchNorm, no optimizer state; one device of this process by default (``parallel="auto"`` to use
    all); the ragged last batch is padded and masked, never dropped. Labels outside the head are an error.
    """
    if data.labels is None:
        raise DataError("evaluation needs labeled data (labels=None)")
    check_labels(data, head_classes(variables, head_name(module)), "eval data")
    par, placed, bs = _placed(variables, data, batch_size, parallel)
    m = evaluate_variables(module, placed, data, bs, par=par, loss="ce")
    out = {"top1": float(m["top1"]), "loss": float(m["loss"]), "n": int(m["count"])}
    if "top5" in m:
        out["top5"] = float(m["top5"])
    return out


def _placed(
    variables: Mapping[str, Any], data: Source, batch_size: int, parallel: str
) -> tuple[Parallel | None, dict[str, Any], int]:
    """``(par, variables as par places them, batch size)``: at most the data, a multiple of the devices."""
    par = None if parallel == "none" else Parallel(parallel)
    placed = dict(variables)
    if par is not None:
        placed = par.put_state({k: v for k, v in variables.items() if k in ("params", "batch_stats")})
    bs = max(1, min(batch_size, len(data)))
    if par is not None:
        bs = -(-bs // par.num_devices) * par.num_devices
    return par, placed, bs


def class_report(
    module: nn.Module,
    variables: Mapping[str, Any],
    data: Source,
    batch_size: int = 256,
    parallel: str = "none",
    worst: int = 20,
) -> tuple[ClassReport, dict[str, float]]:
    """The per-class report of a classifier on labeled ``data`` and the metrics of :func:`evaluate_classifier`
    (``top1``, ``top5``, ``loss``, ``n``), both from one pass; ``worst`` examples named by file when the data has
    names."""
    if data.labels is None:
        raise DataError("a per-class report needs labeled data (labels=None)")
    check_labels(data, head_classes(variables, head_name(module)), "eval data")
    par, placed, bs = _placed(variables, data, batch_size, parallel)
    predictions = collect_predictions(module, placed, data, bs, par=par)
    report = ClassReport.from_predictions(predictions, data.class_names, names=data.example_names(), worst=worst)
    return report, predictions.metrics()


def evaluate(
    config: EvaluateConfig,
    model: ModelLike,
    data: str | Source,
    *,
    workdir: str | pathlib.Path | None = None,
) -> dict[str, Any]:
    """Top-1/top-5/loss of a classifier on ``data``, prepared as its model card says, labels mapped through the
    card's class names (a class the model does not know is an error; a subset of classes is fine).

    ``model``: a saved classifier's directory, or ``(module, variables, card)``. ``config.split="test"`` evaluates
    the held-out examples recorded beside a saved classifier (refused if ``data`` does not hold them unchanged).
    ``config.report``: the result also holds ``"report"``, the :class:`~jaxtl.train.per_class.ClassReport`
    (``.text()`` is its table). ``workdir``: the metrics are also written to ``workdir/evaluation.json``, and the
    report to ``workdir/report/`` (``report.json``, ``confusion.png``), through the run lifecycle.
    """
    if not isinstance(config, EvaluateConfig):
        raise ConfigError(f"config must be an EvaluateConfig, got {type(config).__name__}", "config")
    saved = pathlib.Path(model) if isinstance(model, (str, pathlib.Path)) else None
    module, variables, card = as_model(model)
    if card is None:
        raise ConfigError("evaluation needs the model card: pass (module, variables, card) or a saved model", "model")
    if card.num_classes < 1:
        raise DataError(f"{saved or 'the model'} is a backbone without classifier head (num_classes=0); fine-tune it")
    source = open_data(data, card, config.input, map_classes=True)
    if source.labels is None:
        raise DataError(f"{data}: no labels to evaluate against")
    if card.class_names and list(source.class_names) != list(card.class_names):
        raise DataError(
            f"{data}: its classes {list(source.class_names)[:10]} are not the model's {list(card.class_names)[:10]} "
            "in that order; evaluate with the classes the model was trained on"
        )
    if source.num_classes > card.num_classes:
        raise DataError(f"{data}: {source.num_classes} classes, but the classifier has {card.num_classes}")
    if config.split == "test":
        if saved is None:
            raise ConfigError("split='test' needs a saved classifier (its held-out record is saved beside it)", "split")
        source = heldout_part(source, saved)
    run = None
    if workdir is not None:
        identity = {"model": variables_digest(variables), "data": source.digest(), "split": config.split}
        run = Run(pathlib.Path(workdir), identity, writes=("evaluation.json", REPORT), kind="evaluate")
        run.__enter__()
    try:
        if run is not None:
            run.check_output("evaluation.json")
            if config.report:
                run.check_output(REPORT)
        report = None
        if config.report:
            report, metrics = class_report(
                module, variables, source, config.batch_size, config.parallel, worst=config.worst
            )
        else:
            metrics = evaluate_classifier(module, variables, source, config.batch_size, parallel=config.parallel)
        if run is not None and run.main:
            with run.output("evaluation.json") as tmp:
                tmp.write_text(json.dumps({"model": str(saved or card.source), "data": str(data), **metrics}, indent=2))
            if report is not None:
                picture = importlib.util.find_spec("matplotlib") is not None
                if not picture:
                    warnings.warn(
                        "the per-class report's confusion.png needs matplotlib (pip install matplotlib); "
                        "writing report.json alone",
                        stacklevel=2,
                    )
                with run.output(REPORT) as tmp:
                    report.save(tmp, picture=picture)
    finally:
        if run is not None:
            run.close()
    return {**metrics, "report": report} if report is not None else dict(metrics)
