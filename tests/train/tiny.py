"""A tiny ResNet-shaped classifier (conv, torch-exact BatchNorm, pooled features, ``fc``) for fast engine tests.

It takes ``train`` and ``return_features`` as ResNet does and has an ``axis_name`` for cross-device BatchNorm,
so every engine path runs on it; importable from subprocesses (tests/train is put on ``sys.path``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtl.data import ArrayDataset
from jaxtl.models import BatchNorm


class Tiny(nn.Module):
    num_classes: int = 5
    width: int = 8
    axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False) -> Any:
        x = nn.Conv(self.width, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=False, name="conv1")(x)
        x = nn.relu(BatchNorm(axis_name=self.axis_name, name="bn1")(x, train))
        x = nn.Conv(self.width, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, name="conv2")(x)
        x = nn.relu(BatchNorm(axis_name=self.axis_name, name="bn2")(x, train))
        feats = jnp.mean(x, axis=(1, 2))
        logits = nn.Dense(self.num_classes, name="fc")(feats)
        return {"pre_logits": feats, "logits": logits} if return_features else logits


def tiny_variables(module: nn.Module, size: int = 16, seed: int = 0) -> dict[str, Any]:
    return dict(module.init(jax.random.PRNGKey(seed), jnp.zeros((1, size, size, 3)), train=False))


def tiny_dataset(n: int = 40, size: int = 16, num_classes: int = 5, seed: int = 0) -> ArrayDataset:
    """Learnable data: the class shifts the image mean per channel."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    images = rng.normal(size=(n, size, size, 3)).astype(np.float32)
    images += (labels[:, None, None, None] * np.array([0.5, -0.3, 0.2])).astype(np.float32)
    return ArrayDataset(images, labels.astype(np.int64), num_classes)
