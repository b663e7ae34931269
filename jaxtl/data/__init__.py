"""Datasets, splits, augmentation and batching."""

from jaxtl.data.dataset import ArrayDataset

__all__ = ["ArrayDataset"]
