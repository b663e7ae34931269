"""Per-class report: scikit-learn's numbers (zero_division=0, absent classes included), the confusion-matrix PNG,
the worst examples, JSON output, and the streaming prediction pass on 1 and 4 devices (ragged last batch)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image
from tiny import Tiny, tiny_dataset, tiny_variables

from jaxtl.train import Parallel
from jaxtl.train.per_class import ClassReport, Predictions, collect_predictions, confusion_matrix

K = 6
NAMES = ("ant", "bee", "cat", "dog", "eel", "fox")


@pytest.fixture(scope="module")
def predictions():
    rng = np.random.default_rng(0)
    n = 60
    labels = rng.integers(0, K - 2, n)  # class 4 never occurs ...
    labels[:3] = 5
    preds = np.where(rng.random(n) < 0.6, labels, rng.integers(0, K - 1, n))  # ... and class 5 is never predicted
    preds[preds == 5] = 0
    probs = rng.dirichlet(np.ones(K), n).astype(np.float32)
    top = np.argsort(-probs, axis=1, kind="stable")
    top[:, 0] = preds  # the report reads the prediction from top[:, 0]
    return Predictions(labels, top, np.take_along_axis(probs, top, 1), probs[np.arange(n), labels], K)


def test_matches_sklearn(predictions):
    metrics = pytest.importorskip("sklearn.metrics")
    y, p = predictions.labels, predictions.preds
    report = ClassReport.from_predictions(predictions, NAMES)
    np.testing.assert_array_equal(report.confusion, metrics.confusion_matrix(y, p, labels=range(K)))
    want = metrics.precision_recall_fscore_support(y, p, labels=range(K), zero_division=0)
    for got, ref in zip((report.precision, report.recall, report.f1, report.support), want):
        np.testing.assert_allclose(got, ref, rtol=1e-12)
    assert report.precision[5] == 0 and report.recall[4] == 0 and report.support[4] == 0
    sk = metrics.classification_report(y, p, labels=range(K), zero_division=0, output_dict=True)
    ours = report.to_dict()
    for avg in ("macro", "weighted"):
        for key in ("precision", "recall", "f1"):
            assert ours[avg][key] == pytest.approx(sk[f"{avg} avg"]["f1-score" if key == "f1" else key], rel=1e-12)
    assert ours["accuracy"] == pytest.approx(metrics.accuracy_score(y, p))
    assert [r["class"] for r in ours["per_class"]] == list(NAMES)


def test_worst_examples_json_and_picture(predictions, tmp_path):
    files = [f"img_{i:03d}.jpg" for i in range(len(predictions.labels))]
    report = ClassReport.from_predictions(predictions, NAMES, names=files, worst=5)
    order = np.argsort(predictions.true_prob, kind="stable")[:5]
    assert [w["name"] for w in report.worst] == [files[i] for i in order]
    assert [w["true_prob"] for w in report.worst] == pytest.approx(predictions.true_prob[order].tolist())
    assert report.worst[0]["label"] == NAMES[predictions.labels[order[0]]]
    paths = report.save(tmp_path)
    loaded = json.loads(paths["json"].read_text())
    assert loaded["confusion_matrix"]["rows_true_columns_predicted"] == report.confusion.tolist()
    assert loaded["worst"][0]["name"] == files[order[0]]
    with Image.open(paths["confusion"]) as im:
        assert im.format == "PNG" and min(im.size) > 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion.png", "report.json"]  # no temporaries left
    text = report.text()
    assert "fox" in text and "macro avg" in text and "weighted avg" in text


def test_missing_matplotlib_is_one_clear_error(predictions, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    report = ClassReport.from_predictions(predictions)
    with pytest.raises(ImportError, match="needs matplotlib"):
        report.plot_confusion(tmp_path / "c.png")
    assert report.save(tmp_path, picture=False)["json"].exists()


def test_bad_input():
    with pytest.raises(ValueError, match=r"predictions must lie in \[0, 3\)"):
        confusion_matrix(np.array([0, 1]), np.array([0, 3]), 3)
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        ClassReport.from_predictions(
            Predictions(np.zeros(1, int), np.zeros((1, 1), int), np.ones((1, 1)), np.ones(1), 3), ("a", "b")
        )


@pytest.mark.parametrize("kind", ["none", "pmap"])
def test_streaming_predictions_match_the_model(kind):
    module = Tiny()
    variables = tiny_variables(module)
    data = tiny_dataset(10)  # batches of 8: the second is ragged (2 real, 6 padding)
    par = Parallel(kind)
    placed = par.put_state({"params": variables["params"], "batch_stats": variables["batch_stats"]})
    got = collect_predictions(module, placed, data, 8, par=par, top_k=3)
    logits = np.asarray(module.apply(variables, data.images, train=False), np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    assert got.top.shape == (10, 3) and got.labels.tolist() == data.labels.tolist()
    np.testing.assert_array_equal(got.top, np.argsort(-probs, axis=1, kind="stable")[:, :3])
    np.testing.assert_allclose(got.true_prob, probs[np.arange(10), data.labels], rtol=1e-5)
    np.testing.assert_allclose(got.top_prob, np.take_along_axis(probs, got.top, 1), rtol=1e-5)
    report = ClassReport.from_predictions(got)
    assert report.accuracy == pytest.approx(np.mean(np.argmax(logits, 1) == data.labels))
    assert report.top5 is None  # top-5 needs 5 kept classes (of 5); only 3 were kept
