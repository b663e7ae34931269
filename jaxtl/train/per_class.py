"""Which classes fail: per-class precision, recall, F1 and support, the confusion matrix (and its picture), the
worst-classified examples, as one JSON-serialisable report.

The numbers are scikit-learn's ``precision_recall_fscore_support(labels=range(K), zero_division=0)`` and
``confusion_matrix`` (rows: true class, columns: predicted): a class that is never predicted has precision 0, a
class with no example recall 0, and the macro average runs over all ``K`` classes, absent ones included.

Predictions are gathered in a streaming pass (:func:`collect_predictions`): per example only the top-k classes
with their probabilities and the true class's probability come back to the host, so memory is O(N * k), never the
O(N * K) logits of a model with many classes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxtl.data.protocol import Normalization, Source
from jaxtl.train.parallel import Parallel
from jaxtl.train.step import prepare_images, with_axis


@dataclasses.dataclass(frozen=True)
class Predictions:
    """Per real example, in data order: ``labels`` ``[N]``, the ``top`` k classes ``[N, k]`` (most probable
    first, so ``top[:, 0]`` is the prediction) with their probabilities ``top_prob`` ``[N, k]``, ``true_prob``
    ``[N]`` the probability of the true class and ``loss`` ``[N]`` its cross-entropy (``-log p``, from the
    log-softmax, so it stays finite where the probability underflows)."""

    labels: np.ndarray
    top: np.ndarray
    top_prob: np.ndarray
    true_prob: np.ndarray
    num_classes: int
    loss: np.ndarray | None = None

    @property
    def preds(self) -> np.ndarray:
        return self.top[:, 0]

    def metrics(self) -> dict[str, float]:
        """``top1``, ``top5`` (more than 5 classes), mean cross-entropy ``loss`` and ``n``: what
        :func:`~jaxtl.train.evaluation.evaluate_variables` reports, from this one pass (the same top-k rule; the
        loss to float rounding of the sum)."""
        n = len(self.labels)
        out = {"top1": float(np.mean(self.preds == self.labels)) if n else 0.0}
        if self.num_classes > 5 and self.top.shape[1] >= 5:
            out["top5"] = float(np.mean(np.any(self.top[:, :5] == self.labels[:, None], axis=1))) if n else 0.0
        if self.loss is not None:
            out["loss"] = float(np.mean(self.loss.astype(np.float64))) if n else 0.0
        out["n"] = n
        return out


def predict_step(
    module: nn.Module,
    variables: Mapping[str, Any],
    batch: Mapping[str, jax.Array],
    normalization: Normalization | None,
    axis_name: str | None,
    top_k: int = 5,
) -> dict[str, jax.Array]:
    """Per-device, per-example outputs of this shard: ``top`` ``[n, k]`` int32 (ranked by the logits, as top-k
    accuracy ranks them), ``top_prob`` ``[n, k]``, ``true_prob`` ``[n]`` (softmax in float32), ``loss`` ``[n]``
    (cross-entropy of the true class) and ``mask`` ``[n]``; ``axis_name`` only for BatchNorm's module clone (eval
    mode runs no collective)."""
    module = with_axis(module, axis_name)
    images = prepare_images(batch["images"], normalization)
    logits = module.apply(dict(variables), images, train=False)
    if not isinstance(logits, jax.Array) or logits.ndim != 2:
        raise ValueError(
            f"a per-class report needs class logits [n, K] from the model, got {jax.tree.map(jnp.shape, logits)}"
        )
    logits = logits.astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    probs = jnp.exp(log_probs)
    _, top = lax.top_k(logits, min(top_k, probs.shape[-1]))
    top_prob = jnp.take_along_axis(probs, top, axis=-1)
    labels = jnp.clip(batch["labels"].astype(jnp.int32), 0, probs.shape[-1] - 1)[:, None]
    true_prob = jnp.take_along_axis(probs, labels, axis=-1)[:, 0]
    loss = -jnp.take_along_axis(log_probs, labels, axis=-1)[:, 0]
    n = images.shape[0]
    mask = batch["mask"].astype(jnp.float32) if "mask" in batch else jnp.ones((n,), jnp.float32)
    out = {"top": top.astype(jnp.int32), "top_prob": top_prob, "true_prob": true_prob, "loss": loss}
    return {**out, "mask": mask}


def collect_predictions(
    module: nn.Module,
    variables: Mapping[str, Any],
    data: Source,
    batch_size: int,
    *,
    par: Parallel | None = None,
    top_k: int = 5,
    normalization: Normalization | None = None,
) -> Predictions:
    """:func:`predict_step` over every example of ``data`` once, in order (ragged last batch padded and dropped
    again by its mask). ``variables`` are host arrays, or already placed by ``par`` when it is given."""
    if data.labels is None:
        raise ValueError("a per-class report needs labeled data")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if par is None:
        par = Parallel("none")
        variables = par.put_state({k: v for k, v in variables.items() if k in ("params", "batch_stats")})
    norm = normalization if normalization is not None else data.normalization

    def per_device(v: Any, batch: Any, *, axis_name: str | None) -> Any:
        return predict_step(module, v, batch, norm, axis_name, top_k)

    fn: Callable[..., Any] = par.map(per_device, donate=False, batch_out=True)
    parts: dict[str, list[np.ndarray]] = {"top": [], "top_prob": [], "true_prob": [], "loss": [], "labels": []}
    for batch in par.full_pass(data, batch_size):
        out = fn(variables, batch)
        keep = par.gather(out["mask"]) > 0
        for key in ("top", "top_prob", "true_prob", "loss"):
            parts[key].append(par.gather(out[key])[keep])
        parts["labels"].append(par.gather(batch["labels"])[keep])
    if not parts["labels"]:  # no example at all
        k = min(top_k, data.num_classes)
        parts = {
            "top": [np.zeros((0, k), np.int64)],
            "top_prob": [np.zeros((0, k), np.float32)],
            "true_prob": [np.zeros((0,), np.float32)],
            "loss": [np.zeros((0,), np.float32)],
            "labels": [np.zeros((0,), np.int64)],
        }
    return Predictions(
        labels=np.concatenate(parts["labels"]).astype(np.int64),
        top=np.concatenate(parts["top"]).astype(np.int64),
        top_prob=np.concatenate(parts["top_prob"]).astype(np.float32),
        true_prob=np.concatenate(parts["true_prob"]).astype(np.float32),
        num_classes=data.num_classes,
        loss=np.concatenate(parts["loss"]).astype(np.float32),
    )


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """``[K, K]`` int64 counts, row = true class, column = predicted class (scikit-learn's convention)."""
    y, p = np.asarray(labels, np.int64), np.asarray(preds, np.int64)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"labels {y.shape} and predictions {p.shape} must be 1-D arrays of one length")
    for what, v in (("labels", y), ("predictions", p)):
        if v.size and (v.min() < 0 or v.max() >= num_classes):
            raise ValueError(f"{what} must lie in [0, {num_classes}), got values from {v.min()} to {v.max()}")
    return np.bincount(y * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros(num.shape, np.float64)
    np.divide(num, den, out=out, where=den > 0)  # zero_division=0
    return out


def precision_recall_f1(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per class ``(precision, recall, f1, support)`` from a confusion matrix; 0 where undefined."""
    tp = np.diag(cm).astype(np.float64)
    predicted, support = cm.sum(axis=0), cm.sum(axis=1)
    fp, fn = predicted - tp, support - tp
    return _ratio(tp, predicted), _ratio(tp, support), _ratio(2 * tp, 2 * tp + fp + fn), support


@dataclasses.dataclass(frozen=True)
class ClassReport:
    """The per-class report (see the module docstring); :meth:`to_dict` is its JSON form."""

    class_names: tuple[str, ...]
    confusion: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    accuracy: float
    top5: float | None
    worst: tuple[dict[str, Any], ...]

    @classmethod
    def from_predictions(
        cls,
        predictions: Predictions,
        class_names: Sequence[str] = (),
        names: Sequence[str] | None = None,
        worst: int = 20,
    ) -> ClassReport:
        """Build the report; ``names`` (one per example, e.g. file names) label the ``worst`` examples, those with
        the lowest probability of their true class."""
        k = predictions.num_classes
        if class_names and len(class_names) != k:
            raise ValueError(f"{len(class_names)} class names for {k} classes")
        labels = predictions.labels
        if names is not None and len(names) != len(labels):
            raise ValueError(f"{len(names)} example names for {len(labels)} predictions")
        cm = confusion_matrix(labels, predictions.preds, k)
        precision, recall, f1, support = precision_recall_f1(cm)
        n = len(labels)
        top5 = None
        if predictions.top.ndim == 2 and predictions.top.shape[1] >= min(5, k):
            top5 = float(np.mean(np.any(predictions.top[:, :5] == labels[:, None], axis=1))) if n else 0.0
        cnames = tuple(class_names) if class_names else tuple(str(i) for i in range(k))
        order = np.argsort(predictions.true_prob, kind="stable")[: max(worst, 0)]
        rows = []
        for i in order:
            row: dict[str, Any] = {"index": int(i)}
            if names is not None:
                row["name"] = str(names[i])
            pred = int(predictions.preds[i])
            row.update(
                label=cnames[labels[i]],
                predicted=cnames[pred],
                true_prob=float(predictions.true_prob[i]),
                predicted_prob=float(predictions.top_prob[i, 0]),
            )
            rows.append(row)
        return cls(
            class_names=cnames,
            confusion=cm,
            precision=precision,
            recall=recall,
            f1=f1,
            support=support,
            accuracy=float(np.trace(cm) / n) if n else 0.0,
            top5=top5,
            worst=tuple(rows),
        )

    def averages(self) -> dict[str, dict[str, float]]:
        """``macro`` (plain mean over the K classes) and ``weighted`` (by support) precision, recall and F1."""
        total = self.support.sum()
        w = self.support / total if total else np.zeros_like(self.precision)
        out = {}
        for name, weights in (("macro", np.full(len(self.precision), 1.0 / len(self.precision))), ("weighted", w)):
            out[name] = {
                "precision": float(np.sum(self.precision * weights)),
                "recall": float(np.sum(self.recall * weights)),
                "f1": float(np.sum(self.f1 * weights)),
                "support": int(total),
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        per_class = [
            {
                "class": name,
                "precision": float(self.precision[c]),
                "recall": float(self.recall[c]),
                "f1": float(self.f1[c]),
                "support": int(self.support[c]),
            }
            for c, name in enumerate(self.class_names)
        ]
        return {
            "accuracy": self.accuracy,
            "top5": self.top5,
            "count": int(self.support.sum()),
            "per_class": per_class,
            **self.averages(),
            "confusion_matrix": {
                "classes": list(self.class_names),
                "rows_true_columns_predicted": self.confusion.tolist(),
            },
            "worst": list(self.worst),
        }

    def text(self, digits: int = 3) -> str:
        """A table like scikit-learn's ``classification_report``, plus accuracy (and top-5), then the worst-classified
        examples (lowest probability of the true class) by name (else by index)."""
        width = max(12, *(len(n) for n in self.class_names))
        head = f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}"
        lines = [head, ""]

        def row(name: str, p: float, r: float, f: float, s: int) -> str:
            return f"{name:>{width}} {p:>9.{digits}f} {r:>9.{digits}f} {f:>9.{digits}f} {s:>9d}"

        for c, name in enumerate(self.class_names):
            lines.append(row(name, self.precision[c], self.recall[c], self.f1[c], int(self.support[c])))
        lines.append("")
        total = int(self.support.sum())
        lines.append(f"{'accuracy':>{width}} {'':>9} {'':>9} {self.accuracy:>9.{digits}f} {total:>9d}")
        for name, avg in self.averages().items():
            lines.append(row(f"{name} avg", avg["precision"], avg["recall"], avg["f1"], total))
        if self.top5 is not None:
            lines.append(f"{'top-5':>{width}} {'':>9} {'':>9} {self.top5:>9.{digits}f} {total:>9d}")
        if self.worst:
            lines += ["", "worst-classified (probability of the true class):"]
            for w in self.worst:
                name = w.get("name", f"#{w['index']}")
                verdict = "right" if w["label"] == w["predicted"] else f"taken for {w['predicted']}"
                lines.append(f"  {w['true_prob']:.4f}  {name}: {w['label']}, {verdict}")
        return "\n".join(lines)

    def plot_confusion(self, path: str | os.PathLike, normalize: bool = True) -> Path:
        """Write the confusion matrix as a PNG with class names (rows normalised to recall when ``normalize``;
        counts written in the cells up to 30 classes). Needs matplotlib."""
        figure_cls = _figure()
        k = len(self.class_names)
        cm = self.confusion.astype(np.float64)
        shown = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalize else cm
        side = min(max(4.0, 0.45 * k + 2.0), 40.0)
        # A bare Figure (no pyplot): nothing global changes, whatever backend the caller's notebook uses.
        fig = figure_cls(figsize=(side + 1.5, side))
        ax = fig.add_subplot()
        im = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class" if normalize else "")
        if k <= 100:
            ax.set_xticks(range(k), labels=self.class_names, rotation=90 if k > 8 else 45, ha="center")
            ax.set_yticks(range(k), labels=self.class_names)
        if k <= 30:
            threshold = shown.max() / 2 if shown.size else 0
            for (i, j), count in np.ndenumerate(self.confusion):
                color = "white" if shown[i, j] > threshold else "black"
                ax.text(j, i, str(count), ha="center", va="center", color=color, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"confusion matrix ({int(self.support.sum())} examples, accuracy {self.accuracy:.3f})")
        fig.tight_layout()
        return _atomic(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=100))

    def save(self, directory: str | os.PathLike, picture: bool = True) -> dict[str, Path]:
        """Write ``report.json`` (and ``confusion.png``) into ``directory``; returns their paths."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=1) + "\n"
        out = {"json": _atomic(d / "report.json", lambda tmp: Path(tmp).write_text(text))}
        if picture:
            out["confusion"] = self.plot_confusion(d / "confusion.png")
        return out


def _atomic(path: Path, write: Callable[[str], Any]) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _figure() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            "the confusion-matrix picture needs matplotlib, which is not installed: pip install matplotlib "
            "(or pass picture=False for the JSON report alone)"
        ) from err
    return Figure
