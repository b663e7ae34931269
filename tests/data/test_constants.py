"""The data layer's ImageNet statistics and resize rule agree with the model registry's (each layer keeps its own:
jaxtl.data imports nothing from jaxtl.models)."""

from __future__ import annotations

import pytest

from jaxtl.data import constants
from jaxtl.models import registry
from jaxtl.models.preprocessing import Preprocessing


@pytest.mark.parametrize("channels", [1, 3])
def test_channel_stats_agree(channels):
    assert constants.channel_stats(channels) == registry.channel_stats(channels)
    pre = Preprocessing().with_channels(channels)
    assert constants.channel_stats(channels) == (tuple(pre.mean), tuple(pre.std))


def test_constants_and_resize_rule_agree():
    assert (constants.IMAGENET_MEAN, constants.IMAGENET_STD) == (registry.IMAGENET_MEAN, registry.IMAGENET_STD)
    for size in (8, 16, 32, 37, 112, 224, 384):
        assert constants.default_resize(size) == registry.default_resize(size)
        assert constants.default_resize(size) == Preprocessing().with_size(size).resize_size
