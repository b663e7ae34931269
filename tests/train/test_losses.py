"""Cross-entropy with label smoothing, class weights and soft targets against torch's own; balanced weights against
scikit-learn; the weighted mean's denominator is global across devices."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from tiny import Tiny, tiny_variables

from jaxtl.train import Parallel, TrainState, train_step
from jaxtl.train.losses import (
    CrossEntropy,
    balanced_class_weights,
    class_counts,
    cross_entropy,
    imbalance_warning,
    mixed_targets,
    soft_cross_entropy,
)

torch = pytest.importorskip("torch")
F = torch.nn.functional

K = 5


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(12, K)).astype(np.float32) * 2
    labels = rng.integers(0, K, 12)
    weights = rng.uniform(0.2, 3.0, K).astype(np.float32)
    return logits, labels, weights


def _batch_mean(loss: CrossEntropy, logits, batch) -> float:
    per = np.asarray(loss.per_example(logits, batch, None), np.float64)
    w = loss.example_weight(logits, batch)
    return float(per.sum() / (len(per) if w is None else np.asarray(w, np.float64).sum()))


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("weighted", [False, True])
def test_hard_labels_match_torch(case, smoothing, weighted):
    logits, labels, weights = case
    loss = CrossEntropy(smoothing, weights.tolist() if weighted else None)
    got = _batch_mean(loss, logits, {"labels": labels})
    want = F.cross_entropy(
        torch.tensor(logits),
        torch.tensor(labels),
        weight=torch.tensor(weights) if weighted else None,
        label_smoothing=smoothing,
    ).item()
    np.testing.assert_allclose(got, want, rtol=2e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True])
def test_soft_targets_per_example_match_torch(case, smoothing, weighted):
    """torch's probability-target loss per example (reduction='none'), class weights and smoothing included."""
    logits, labels, weights = case
    rng = np.random.default_rng(1)
    targets = rng.dirichlet(np.ones(K), len(labels)).astype(np.float32)
    w = weights if weighted else None
    got = np.asarray(soft_cross_entropy(logits, targets, smoothing, w))
    want = F.cross_entropy(
        torch.tensor(logits),
        torch.tensor(targets),
        weight=None if w is None else torch.tensor(w),
        label_smoothing=smoothing,
        reduction="none",
    ).numpy()
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)


def test_mixed_targets_weighting_reduces_to_hard_labels(case):
    """A mixed target with lam=1 is the plain label: the same loss and the same weight (torch's denominator)."""
    logits, labels, weights = case
    loss = CrossEntropy(0.1, weights.tolist())
    partner = np.roll(labels, 1)
    plain = _batch_mean(loss, logits, {"labels": labels})
    mixed = _batch_mean(loss, logits, {"labels": labels, "mix_labels": partner, "mix_lam": np.float32(1.0)})
    np.testing.assert_allclose(mixed, plain, rtol=1e-6)
    lam = np.float32(0.3)
    w = np.asarray(loss.example_weight(logits, {"labels": labels, "mix_labels": partner, "mix_lam": lam}))
    np.testing.assert_allclose(w, lam * weights[labels] + (1 - lam) * weights[partner], rtol=1e-6)
    t = np.asarray(mixed_targets(labels, partner, lam, K))
    np.testing.assert_allclose(t.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(loss.per_example(logits, {"labels": labels, "targets": t}, None)),
        np.asarray(loss.per_example(logits, {"labels": labels, "mix_labels": partner, "mix_lam": lam}, None)),
        rtol=1e-6,
    )


def test_unweighted_path_and_fingerprint_unchanged(case):
    logits, labels, _ = case
    got = np.asarray(cross_entropy(logits, labels, 0.1))
    want = np.asarray(optax.softmax_cross_entropy(logits, optax.smooth_labels(jax.nn.one_hot(labels, K), 0.1)))
    np.testing.assert_array_equal(got, want)
    assert repr(CrossEntropy()) == "CrossEntropy(label_smoothing=0.0)"  # the run fingerprint of existing workdirs
    assert CrossEntropy(0.1, [1, 2, 3]) == CrossEntropy(0.1, (1.0, 2.0, 3.0))
    assert CrossEntropy(0.1, [1, 2, 3]) != CrossEntropy(0.1)
    assert "class_weights=(1.0, 2.0)" in repr(CrossEntropy(0.0, [1, 2]))


def test_bad_weights_are_refused(case):
    logits, labels, _ = case
    for bad in ([], [1.0, -1.0], [0.0, 0.0], [1.0, float("nan")], [[1.0]]):
        with pytest.raises(ValueError, match="class_weights"):
            CrossEntropy(0.0, bad)
    with pytest.raises(ValueError, match="class_weights has shape \\(3,\\), the model has 5 classes"):
        CrossEntropy(0.0, [1.0, 2.0, 3.0]).per_example(logits, {"labels": labels}, None)


def test_balanced_weights_match_sklearn():
    sklearn_utils = pytest.importorskip("sklearn.utils")
    labels = np.array([0] * 50 + [1] * 7 + [2] * 20 + [3] * 3)
    want = sklearn_utils.compute_class_weight("balanced", classes=np.arange(4), y=labels)
    np.testing.assert_allclose(balanced_class_weights(labels, 4), want, rtol=1e-12)
    np.testing.assert_array_equal(class_counts(labels, 4), [50, 7, 20, 3])
    with pytest.raises(ValueError, match="classes 4 have none"):
        balanced_class_weights(labels, 5)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        balanced_class_weights(labels, 3)


def test_imbalance_warning():
    names = ("cat", "dog", "eel")
    assert imbalance_warning([0] * 10 + [1] * 1 + [2] * 5, 3) is None  # 10x is not over 10x
    msg = imbalance_warning([0] * 11 + [1] * 1 + [2] * 5, 3, names)
    assert msg is not None and "'cat' has 11" in msg and "'dog' 1" in msg and "11.0x" in msg
    assert imbalance_warning([0] * 50 + [1] * 10 + [2] * 5, 3, threshold=5.0) is not None
    msg = imbalance_warning([0, 0, 1], 3, names)
    assert msg is not None and "'eel'" in msg and "no training example" in msg
    assert imbalance_warning([], 3) is None


@pytest.fixture(scope="module")
def weighted_steps():
    """One step of Tiny with class weights on one device and on 4 (uneven weight sums per shard)."""
    module = Tiny()
    variables = tiny_variables(module)
    rng = np.random.default_rng(3)
    # Shards of 2: device 0 holds the heavy class only, so a per-device denominator would weigh shards wrongly.
    labels = np.array([4, 4, 0, 1, 2, 3, 0, 1], np.int32)
    batch = {"images": rng.normal(size=(8, 16, 16, 3)).astype(np.float32), "labels": labels}
    weights = [0.5, 1.0, 1.5, 2.0, 8.0]
    loss = CrossEntropy(0.1, weights)
    out = {}
    for kind in ("none", "pmap"):
        par = Parallel(kind)
        state = par.put_state(TrainState.create(module, variables, optax.sgd(0.1), rng=0))
        step = par.map(lambda s, b, axis_name: train_step(s, b, axis_name=axis_name, loss=loss))
        new, metrics = step(state, par.put_batch(batch))
        out[kind] = (par.get_state(new), par.get_metrics(metrics))
    return module, variables, batch, weights, out


def test_weighted_loss_is_global_and_matches_torch(weighted_steps):
    module, variables, batch, weights, out = weighted_steps
    logits, _ = module.apply(variables, batch["images"], train=True, mutable=["batch_stats"])
    want = F.cross_entropy(
        torch.tensor(np.asarray(logits)),
        torch.tensor(batch["labels"]).long(),
        weight=torch.tensor(weights),
        label_smoothing=0.1,
    ).item()
    for kind in ("none", "pmap"):
        np.testing.assert_allclose(out[kind][1]["loss"], want, rtol=1e-5)
    a, b = out["none"][0].params, out["pmap"][0].params
    np.testing.assert_allclose(np.asarray(a["fc"]["kernel"]), np.asarray(b["fc"]["kernel"]), rtol=1e-5, atol=1e-6)
