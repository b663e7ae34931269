"""Datasets and sources, streaming image pipelines, transforms, splits, augmentation and batching."""

from typing import TYPE_CHECKING

# First: a data worker that is starting up ignores Ctrl-C from here on (jaxtl.data.workers; nothing elsewhere). The
# rest loads on first use: a worker process unpickling jaxtl.data.decoding imports no jax, flax or optax of ours.
from jaxtl.data import workers  # noqa: F401

if TYPE_CHECKING:
    from jaxtl.data.augment import add_noise, random_crop_flip, random_mask
    from jaxtl.data.dataset import ArrayDataset
    from jaxtl.data.image_source import ImageSource, default_workers
    from jaxtl.data.in_memory import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        SkippedFilesWarning,
        load_digits,
        load_image_folder,
        load_npz,
        normalize,
    )
    from jaxtl.data.listing import list_image_folder, read_csv_list
    from jaxtl.data.pack import pack_image_folder
    from jaxtl.data.protocol import Source, check_labels
    from jaxtl.data.specs import DATA_SPECS, open_source
    from jaxtl.data.splits import labeled_unlabeled_split, train_test_split
    from jaxtl.data.transforms import ImageTransform
else:
    from jaxtl._lazy import exports

    __getattr__, __dir__ = exports(
        __name__,
        {
            "jaxtl.data.augment": ("add_noise", "random_crop_flip", "random_mask"),
            "jaxtl.data.dataset": ("ArrayDataset",),
            "jaxtl.data.in_memory": (
                "IMAGENET_MEAN",
                "IMAGENET_STD",
                "SkippedFilesWarning",
                "load_digits",
                "load_image_folder",
                "load_npz",
                "normalize",
            ),
            "jaxtl.data.pack": ("pack_image_folder",),
            "jaxtl.data.image_source": ("ImageSource", "default_workers"),
            "jaxtl.data.protocol": ("Source", "check_labels"),
            "jaxtl.data.listing": ("list_image_folder", "read_csv_list"),
            "jaxtl.data.specs": ("DATA_SPECS", "open_source"),
            "jaxtl.data.splits": ("labeled_unlabeled_split", "train_test_split"),
            "jaxtl.data.transforms": ("ImageTransform",),
        },
    )

__all__ = [
    "ArrayDataset",
    "DATA_SPECS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageSource",
    "ImageTransform",
    "SkippedFilesWarning",
    "Source",
    "add_noise",
    "check_labels",
    "default_workers",
    "labeled_unlabeled_split",
    "list_image_folder",
    "load_digits",
    "load_image_folder",
    "load_npz",
    "normalize",
    "open_source",
    "pack_image_folder",
    "random_crop_flip",
    "random_mask",
    "read_csv_list",
    "train_test_split",
]
