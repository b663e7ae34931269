"""Splits: exact per-class counts, disjointness, seeded determinism, clear errors."""

from __future__ import annotations

import types

import numpy as np
import pytest

from jaxtl.data import ArrayDataset, check_labels, labeled_unlabeled_split, train_test_split


@pytest.fixture(scope="module")
def ds():
    # Unbalanced classes: 30, 20, 10 examples; the image holds its own index so splits can be traced back.
    labels = np.repeat(np.arange(3), [30, 20, 10]).astype(np.int32)
    labels = np.random.default_rng(1).permutation(labels)
    images = np.arange(len(labels), dtype=np.float32).reshape(-1, 1, 1, 1)
    return ArrayDataset(images, labels, 3, ("a", "b", "c"))


def ids(part):
    return part.images[:, 0, 0, 0].astype(int)


def test_train_test_split_stratified(ds):
    train, test = train_test_split(ds, 0.2, seed=0)
    assert len(test) == 12 and len(train) == 48
    assert set(ids(train)).isdisjoint(ids(test)) and len(set(ids(train)) | set(ids(test))) == 60
    np.testing.assert_array_equal(np.bincount(test.labels, minlength=3), [6, 4, 2])
    np.testing.assert_array_equal(ds.labels[ids(test)], test.labels)  # labels travel with their images
    again = train_test_split(ds, 0.2, seed=0)[1]
    np.testing.assert_array_equal(ids(again), ids(test))
    other = train_test_split(ds, 0.2, seed=1)[1]
    assert not np.array_equal(ids(other), ids(test))


def test_train_test_split_random_and_unlabeled(ds):
    train, test = train_test_split(ds, 0.25, seed=3, stratified=False)
    assert len(test) == 15 and set(ids(train)).isdisjoint(ids(test))
    tr, te = train_test_split(ds.unlabeled(), 0.25, seed=3)
    assert tr.labels is None and te.labels is None and len(te) == 15
    with pytest.raises(ValueError, match="test_fraction"):
        train_test_split(ds, 1.0, seed=0)
    with pytest.raises(ValueError, match="empty"):
        train_test_split(ds, 0.001, seed=0)


def test_labeled_unlabeled_split_exact_per_class(ds):
    lab, unl = labeled_unlabeled_split(ds, 4, seed=0)
    np.testing.assert_array_equal(np.bincount(lab.labels, minlength=3), [4, 4, 4])
    assert unl.labels is None and len(unl) == 48 and unl.num_classes == 3
    assert set(ids(lab)).isdisjoint(ids(unl)) and len(set(ids(lab)) | set(ids(unl))) == 60
    np.testing.assert_array_equal(ds.labels[ids(lab)], lab.labels)
    np.testing.assert_array_equal(ids(labeled_unlabeled_split(ds, 4, seed=0)[0]), ids(lab))
    assert not np.array_equal(ids(labeled_unlabeled_split(ds, 4, seed=5)[0]), ids(lab))


def test_labeled_unlabeled_split_class_too_small(ds):
    with pytest.raises(ValueError, match=r"class 2 \(c\): 10"):
        labeled_unlabeled_split(ds, 11, seed=0)
    sparse = ArrayDataset(np.zeros((4, 1, 1, 1), np.float32), np.array([0, 0, 1, 1]), 3)
    with pytest.raises(ValueError, match="class 2: 0"):
        labeled_unlabeled_split(sparse, 1, seed=0)
    with pytest.raises(ValueError, match="labels=None"):
        labeled_unlabeled_split(ds.unlabeled(), 1, seed=0)


def test_check_labels(ds):
    check_labels(ds, 3)
    check_labels(ds, 10)
    check_labels(ds.unlabeled(), 0)  # unlabeled data fits any model
    with pytest.raises(ValueError, match=r"eval data has labels in \[0, 2\], but the model's head has 2 outputs"):
        check_labels(ds, 2, "eval data")
    with pytest.raises(ValueError, match="no classifier head"):
        check_labels(ds, 0)
    negative = types.SimpleNamespace(labels=np.array([0, -1]), num_classes=2)  # a source that checks nothing itself
    with pytest.raises(ValueError, match=r"labels in \[-1, 0\]"):
        check_labels(negative, 2)
    few = ArrayDataset(np.zeros((2, 1, 1, 1), np.float32), np.array([0, 1]), 5)
    with pytest.raises(ValueError, match="has 5 classes, but the model's head has only 3 outputs"):
        check_labels(few, 3)
