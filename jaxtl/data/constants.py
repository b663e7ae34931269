"""Data constants: ImageNet's channel statistics and torchvision's evaluation resize rule.

They belong to the data layer (as timm keeps them in ``timm.data``); models describe their own preprocessing in
their cards. ``tests/data/test_constants.py`` checks that they agree with the model registry's copies.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "channel_stats", "default_resize"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def channel_stats(
    channels: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """RGB ``mean``/``std`` for ``channels``-channel input: as given for 3 channels, their averages for 1 (gray)."""
    if channels == 1:
        return (sum(mean) / len(mean),), (sum(std) / len(std),)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def default_resize(crop_size: int) -> int:
    """torchvision's evaluation recipe for a ``crop_size`` crop: resize the shorter side to ``crop_size * 256/224``
    (rounded, 256 for 224), then ``CenterCrop(crop_size)``."""
    return max(crop_size, round(crop_size * 256 / 224))
