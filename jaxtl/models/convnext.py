"""torchvision's ConvNeXt (``convnext_tiny`` ... ``convnext_large``) in Flax linen, numerically and structurally
faithful.

Submodules carry torchvision's names: ``features/0`` is the stem (``0`` a 4x4 stride-4 conv, ``1`` a LayerNorm),
``features/1, 3, 5, 7`` the stages of ``CNBlock``s (``features/1/0/block/{0,2,3,5}``: the 7x7 depthwise conv,
LayerNorm, the two Linears; ``features/1/0/layer_scale``), ``features/2, 4, 6`` the downsampling (``0`` LayerNorm,
``1`` a 2x2 stride-2 conv) and ``classifier/0`` (LayerNorm) and ``classifier/2`` (the Linear head). Every LayerNorm
has eps 1e-6 and runs in float32; GELU is exact (erf); stochastic depth is torchvision's "row" mode, its
probability rising linearly over the blocks to ``stochastic_depth_prob``, drawn from the ``"dropout"`` rng in train
mode. Input is NHWC; any size from 32 px (the four stride-2 steps after the stride-4 stem).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtl.models.layers import (
    Conv2d,
    LayerNorm,
    check_rng,
    dense,
    gelu,
    pool_and_flatten,
    stochastic_depth,
    trunc_normal,
)

Dtype = Any
LN_EPS = 1e-6
_INIT = trunc_normal(0.02)  # torchvision: trunc_normal_(std=0.02) for every Conv2d and Linear, zero biases

# (input_channels, out_channels or None, num_layers) per stage: torchvision's CNBlockConfig.
BlockSetting = Sequence[tuple[int, int | None, int]]


class CNBlockBody(nn.Module):
    """torchvision's ``CNBlock.block``: depthwise 7x7 conv "0", (Permute), LayerNorm "2", Linear(C, 4C) "3", GELU,
    Linear(4C, C) "5", (Permute). NHWC needs no permutes."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        x = Conv2d(c, 7, 1, 3, groups=c, dtype=self.dtype, kernel_init=_INIT, name="0")(x)
        x = LayerNorm(LN_EPS, self.dtype, name="2")(x)
        x = gelu(dense(4 * c, self.dtype, "3", _INIT)(x))
        return dense(c, self.dtype, "5", _INIT)(x)  # type: ignore[no-any-return]


class CNBlock(nn.Module):
    """``x + stochastic_depth(layer_scale * block(x))``; ``layer_scale`` is ``[C]`` (torch: ``[C, 1, 1]``)."""

    layer_scale: float = 1e-6
    stochastic_depth_prob: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c = x.shape[-1]
        gamma = self.param("layer_scale", nn.initializers.constant(self.layer_scale), (c,), jnp.float32)
        y = CNBlockBody(self.dtype, name="block")(x) * gamma.astype(self.dtype).reshape(1, 1, 1, c)
        return x + stochastic_depth(self, y, self.stochastic_depth_prob, train)


def stochastic_depth_rates(block_setting: BlockSetting, stochastic_depth_prob: float) -> list[float]:
    """Each block's drop probability, in order: torchvision's ``p * block_id / (total_blocks - 1)``."""
    total = sum(n for _, _, n in block_setting)
    return [stochastic_depth_prob * i / (total - 1.0) if total > 1 else 0.0 for i in range(total)]


class Stage(nn.Module):
    """``Sequential(CNBlock, ...)``: children "0", "1", ...; ``rates`` holds each block's stochastic depth."""

    rates: Sequence[float]
    layer_scale: float = 1e-6
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for i, rate in enumerate(self.rates):
            x = CNBlock(self.layer_scale, rate, self.dtype, name=str(i))(x, train)
        return x


class Stem(nn.Module):
    """``Conv2dNormActivation(3, C, 4, stride 4, bias)``: conv "0", LayerNorm "1"."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = Conv2d(self.features, 4, 4, 0, dtype=self.dtype, kernel_init=_INIT, name="0")(x)
        return LayerNorm(LN_EPS, self.dtype, name="1")(x)  # type: ignore[no-any-return]


class Downsample(nn.Module):
    """``Sequential(LayerNorm2d "0", Conv2d(C, C', 2, stride 2) "1")``."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = LayerNorm(LN_EPS, self.dtype, name="0")(x)
        return Conv2d(self.features, 2, 2, 0, dtype=self.dtype, kernel_init=_INIT, name="1")(x)  # type: ignore[no-any-return]


class Features(nn.Module):
    """torchvision's ``features = Sequential(stem, stage, downsample, stage, ...)``; also returns each stage's map."""

    block_setting: BlockSetting
    layer_scale: float = 1e-6
    stochastic_depth_prob: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
        maps: dict[str, jax.Array] = {}
        x = Stem(self.block_setting[0][0], self.dtype, name="0")(x)
        maps["stem"] = x
        rates = stochastic_depth_rates(self.block_setting, self.stochastic_depth_prob)
        index, first = 1, 0
        for s, (_, out_channels, num_layers) in enumerate(self.block_setting):
            stage_rates = tuple(rates[first : first + num_layers])
            x = Stage(stage_rates, self.layer_scale, self.dtype, name=str(index))(x, train)
            maps[f"stage{s + 1}"] = x
            first += num_layers
            index += 1
            if out_channels is not None:
                x = Downsample(out_channels, self.dtype, name=str(index))(x)
                index += 1
        return x, maps


class ClassifierHead(nn.Module):
    """torchvision's ``classifier = Sequential(LayerNorm2d "0", Flatten, Linear "2")`` on the pooled features; the
    Linear only when ``num_classes`` > 0. Returns (normed pooled features, logits or the features)."""

    num_classes: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        feats = LayerNorm(LN_EPS, self.dtype, name="0")(x)
        if not self.num_classes:
            return feats, feats
        return feats, dense(self.num_classes, self.dtype, "2", _INIT)(feats)


class ConvNeXt(nn.Module):
    """A torchvision ConvNeXt.

    ``__call__(x, train=False, return_features=False)`` takes NHWC images ``[N, H, W, 3]`` (H, W >= 32) and returns
    logits ``[N, num_classes]``, or with ``return_features=True`` a dict of ``stem``, ``stage1``..``stage4``
    (per-stage maps ``[N, h, w, C]``), ``pre_logits`` (pooled and normed by ``classifier/0``: torchvision's input to
    the Linear, ``[N, num_features]``) and ``logits``. ``num_classes=0`` keeps ``classifier/0`` and drops
    ``classifier/2``: the output is ``pre_logits``.
    """

    block_setting: BlockSetting
    stochastic_depth_prob: float = 0.0
    layer_scale: float = 1e-6
    num_classes: int = 1000
    dtype: Dtype = jnp.float32

    head_path: ClassVar[str] = "classifier/2"
    no_decay: ClassVar[str] = r"(?:^|/)(?:bias|scale|layer_scale)$"
    decay_norms: ClassVar[bool] = False  # norms, biases, embeddings: no weight decay
    input_size: ClassVar[int | None] = None  # any input size

    @property
    def num_features(self) -> int:
        last_in, last_out, _ = self.block_setting[-1]
        return int(last_out if last_out is not None else last_in)

    @property
    def layer_patterns(self) -> tuple[str, ...]:
        """Parameter paths per layer from the input up: the stem, then each block (a downsampling layer goes with
        the block after it); ``classifier`` is the top."""
        out = [r"^features/0/"]
        index, down = 1, None  # down: the index of the downsampling layer just before this stage, if any
        for _, out_channels, num_layers in self.block_setting:
            for j in range(num_layers):
                first_after_down = j == 0 and down is not None
                out.append(f"^features/(?:{down}/|{index}/0/)" if first_after_down else f"^features/{index}/{j}/")
            down = index + 1 if out_channels is not None else None
            index += 2 if out_channels is not None else 1
        return tuple(out)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False) -> Any:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"ConvNeXt expects NHWC images [N, H, W, 3], got shape {tuple(x.shape)}")
        if min(x.shape[1], x.shape[2]) < 32:
            raise ValueError(f"ConvNeXt needs images of at least 32x32, got {x.shape[1]}x{x.shape[2]}")
        check_rng(self, train, {"stochastic_depth_prob": self.stochastic_depth_prob})
        x, feats = Features(
            self.block_setting, self.layer_scale, self.stochastic_depth_prob, self.dtype, name="features"
        )(x, train)
        pooled = pool_and_flatten(x)
        pre, logits = ClassifierHead(self.num_classes, self.dtype, name="classifier")(pooled)
        feats["pre_logits"], feats["logits"] = pre, logits
        return feats if return_features else logits
