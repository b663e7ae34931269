"""Seeded, stratified splits of an :class:`ArrayDataset`."""

from __future__ import annotations

import numpy as np

from jaxtl.data.dataset import ArrayDataset

__all__ = ["labeled_unlabeled_split", "split_indices", "train_test_split"]


def _allocate(counts: np.ndarray, total: int) -> np.ndarray:
    """Integers proportional to ``counts`` summing to ``total`` (largest remainder, ties to the lower class)."""
    exact = counts * (total / counts.sum())
    base = np.floor(exact).astype(np.int64)
    rest = total - int(base.sum())
    order = np.argsort(-(exact - base), kind="stable")
    base[order[:rest]] += 1
    return base


def split_indices(
    num_examples: int, labels: np.ndarray | None, test_fraction: float, seed: int, stratified: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The ``(train, test)`` indices of :func:`train_test_split` (each sorted): ``round(test_fraction * N)`` test
    examples, per class in proportion when ``stratified`` and ``labels`` are given, reproducibly for a ``seed``."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    n = num_examples
    n_test = round(test_fraction * n)
    if n_test == 0 or n_test == n:
        raise ValueError(f"test_fraction={test_fraction} of {n} examples leaves an empty train or test part")
    rng = np.random.default_rng(seed)
    if stratified and labels is not None:
        classes, counts = np.unique(labels, return_counts=True)
        per_class = _allocate(counts, n_test)
        test_idx = []
        for c, k in zip(classes, per_class, strict=True):
            members = np.flatnonzero(labels == c)
            test_idx.append(rng.permutation(members)[:k])
        test = np.sort(np.concatenate(test_idx))
    else:
        test = np.sort(rng.permutation(n)[:n_test])
    train = np.setdiff1d(np.arange(n), test, assume_unique=True)
    return train, test


def train_test_split(
    ds: ArrayDataset, test_fraction: float, seed: int, stratified: bool = True
) -> tuple[ArrayDataset, ArrayDataset]:
    """Split into ``(train, test)`` with ``round(test_fraction * N)`` test examples, reproducibly for a ``seed``.

    ``stratified`` keeps each class's share equal in both parts (largest-remainder rounding); it needs labels, and
    for an unlabeled dataset the split is simply random. Examples keep their original order within each part.
    """
    train, test = split_indices(len(ds), ds.labels, test_fraction, seed, stratified)
    return ds.subset(train), ds.subset(test)


def labeled_unlabeled_split(ds: ArrayDataset, labels_per_class: int, seed: int) -> tuple[ArrayDataset, ArrayDataset]:
    """Keep exactly ``labels_per_class`` labels per class; the rest becomes unlabeled (``labels=None``).

    Every class in ``[0, num_classes)`` must have at least ``labels_per_class`` examples. Reproducible for a
    ``seed``; both parts keep the original order and the label space.
    """
    if ds.labels is None:
        raise ValueError("labeled_unlabeled_split needs a labeled dataset, got labels=None")
    if labels_per_class < 1:
        raise ValueError(f"labels_per_class must be >= 1, got {labels_per_class}")
    counts = np.bincount(ds.labels, minlength=ds.num_classes)
    short = {c: int(counts[c]) for c in range(ds.num_classes) if counts[c] < labels_per_class}
    if short:
        name = (lambda c: f"{c} ({ds.class_names[c]})") if ds.class_names else str
        detail = ", ".join(f"class {name(c)}: {k}" for c, k in short.items())
        raise ValueError(f"labels_per_class={labels_per_class} but some classes have fewer examples: {detail}")
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(ds.labels == c))[:labels_per_class] for c in range(ds.num_classes)]
    labeled = np.sort(np.concatenate(chosen))
    rest = np.setdiff1d(np.arange(len(ds)), labeled, assume_unique=True)
    if len(rest) == 0:
        raise ValueError(f"labels_per_class={labels_per_class} uses all {len(ds)} examples; nothing is left unlabeled")
    return ds.subset(labeled), ds.subset(rest).unlabeled()
