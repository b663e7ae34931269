"""A small VGG-style CNN for small images (``convnet_small``: digits at 32x32), with the ResNets' call signature and
family description, so every route (autoencoder pretraining, fine-tuning, the probe) takes it as it takes a ResNet."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtl.models import kernels
from jaxtl.models.batchnorm import BatchNorm
from jaxtl.models.resnet import ConvLayer, pooled_head

Dtype = Any

__all__ = ["ConvNet", "ConvStage"]


class ConvStage(nn.Module):
    """Two (conv3x3 -> BatchNorm -> relu), then 2x2 max-pooling with stride 2 (halves H and W, floor)."""

    features: int
    dtype: Dtype = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for i in (1, 2):
            x = ConvLayer(self.features, 3, 1, 1, dtype=self.dtype, name=f"conv{i}")(x)
            x = BatchNorm(dtype=self.dtype, axis_name=self.axis_name, name=f"bn{i}")(x, train)
            x = nn.relu(x)
        return kernels.max_pool(x, 2, 2, 0)


class ConvNet(nn.Module):
    """A small VGG-style classifier for small images (e.g. digits at 32x32), with ResNet's call signature.

    ``__call__(x, train, return_features=False)`` takes NHWC images ``[N, H, W, C]`` (any C; H and W at least
    ``2 ** len(widths)``). Returns logits ``[N, num_classes]``, or with ``return_features=True`` a dict of
    ``stage1``..``stageK`` (``[N, H / 2^k, W / 2^k, widths[k-1]]``), ``last_map`` (the last stage's map),
    ``pre_logits`` (global average pool, ``[N, widths[-1]]``) and ``logits``. ``num_classes=0`` = encoder, no ``fc``.
    """

    num_classes: int = 10
    widths: Sequence[int] = (32, 64, 128)
    dtype: Dtype = jnp.float32
    axis_name: str | None = None

    head_path: ClassVar[str] = "fc"
    no_decay: ClassVar[str] = r"(?:^|/)(?:bias|scale)$"
    decay_norms: ClassVar[bool] = True  # decays every parameter, as the ResNets
    input_size: ClassVar[int | None] = None  # any input size

    @property
    def num_features(self) -> int:
        return int(self.widths[-1])

    @property
    def layer_patterns(self) -> tuple[str, ...]:
        """One layer per stage from the input up; ``fc`` is the top."""
        return tuple(f"^stage{i + 1}/" for i in range(len(self.widths)))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False) -> Any:
        if x.ndim != 4:
            raise ValueError(f"ConvNet expects NHWC images [N, H, W, C], got shape {tuple(x.shape)}")
        if not self.widths:
            raise ValueError("ConvNet needs at least one stage width")
        min_size = 2 ** len(self.widths)
        if min(x.shape[1], x.shape[2]) < min_size:
            raise ValueError(
                f"ConvNet with {len(self.widths)} stages needs images of at least {min_size}x{min_size}, "
                f"got {x.shape[1]}x{x.shape[2]}"
            )
        feats: dict[str, jax.Array] = {}
        for i, width in enumerate(self.widths):
            x = ConvStage(width, dtype=self.dtype, axis_name=self.axis_name, name=f"stage{i + 1}")(x, train)
            feats[f"stage{i + 1}"] = x
        feats["last_map"] = x
        return pooled_head(x, feats, self.num_classes, self.dtype, return_features)
