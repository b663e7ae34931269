"""Datasets, splits, augmentation and batching."""

from jaxtl.data.augment import add_noise, random_crop_flip, random_mask
from jaxtl.data.dataset import ArrayDataset
from jaxtl.data.datasets import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SkippedFilesWarning,
    load_digits,
    load_image_folder,
    load_npz,
    normalize,
)
from jaxtl.data.splits import check_num_classes, labeled_unlabeled_split, train_test_split

__all__ = [
    "ArrayDataset",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SkippedFilesWarning",
    "add_noise",
    "check_num_classes",
    "labeled_unlabeled_split",
    "load_digits",
    "load_image_folder",
    "load_npz",
    "normalize",
    "random_crop_flip",
    "random_mask",
    "train_test_split",
]
