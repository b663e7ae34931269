"""The torchvision ResNet family in Flax linen, numerically and structurally faithful.

Submodules carry torchvision's names (``conv1``, ``bn1``, ``layer3/1/conv2``, ``downsample/0``, ``fc``), so a key
of a torch ``state_dict`` and a Flax parameter path read the same. Padding is explicit and symmetric as in torch;
max-pooling pads with -inf. Input is NHWC.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtl.models import kernels
from jaxtl.models.batchnorm import BatchNorm
from jaxtl.models.heads import torch_linear_init

Dtype = Any

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu") for every conv.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class Downsample(nn.Module):
    """torchvision's ``downsample = Sequential(conv1x1, BatchNorm2d)``: children named "0" and "1"."""

    features: int
    stride: int
    dtype: Dtype = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = ConvLayer(self.features, 1, self.stride, 0, dtype=self.dtype, name="0")(x)
        return BatchNorm(dtype=self.dtype, axis_name=self.axis_name, name="1")(x, train)


def pooled_head(
    x: jax.Array, feats: dict[str, jax.Array], num_classes: int, dtype: Dtype, return_features: bool
) -> Any:
    """Global average pool of the last map ``[N, h, w, C]`` -> ``pre_logits`` ``[N, C]``, then ``fc`` (torch's
    Linear init) when ``num_classes`` > 0. Call it inside a compact ``__call__``: ``fc`` belongs to that module.

    Fills ``feats["pre_logits"]`` and ``feats["logits"]``; returns ``feats`` or the logits.
    """
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(dtype)
    feats["pre_logits"] = x
    if num_classes:
        linear_init = torch_linear_init(x.shape[-1])
        init = dict(kernel_init=linear_init, bias_init=linear_init)
        x = nn.Dense(num_classes, dtype=dtype, param_dtype=jnp.float32, **init, name="fc")(x)
    feats["logits"] = x
    return feats if return_features else x


class ConvLayer(nn.Module):
    """A bias-free 2D convolution with torch's symmetric padding. Kernel ``kernel`` is HWIO (torch: OIHW).

    The implementation is :func:`jaxtl.models.kernels.conv2d`'s choice for the lowering platform.
    """

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        in_features = x.shape[-1]
        kernel = self.param("kernel", conv_init, (k, k, in_features // self.groups, self.features), jnp.float32)
        return kernels.conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.padding, self.groups)


class BasicBlock(nn.Module):
    """resnet18/34 block: two 3x3 convs."""

    planes: int
    stride: int = 1
    downsample: bool = False
    groups: int = 1
    base_width: int = 64
    stride_in_1x1: bool = False  # unused: BasicBlock has no 1x1 conv; kept for a uniform signature
    zero_init_residual: bool = False
    dtype: Dtype = jnp.float32
    axis_name: str | None = None

    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.groups != 1 or self.base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64 (as torchvision)")
        bn = dict(dtype=self.dtype, axis_name=self.axis_name)
        identity = x
        out = ConvLayer(self.planes, 3, self.stride, 1, dtype=self.dtype, name="conv1")(x)
        out = nn.relu(BatchNorm(**bn, name="bn1")(out, train))
        out = ConvLayer(self.planes, 3, 1, 1, dtype=self.dtype, name="conv2")(out)
        last_init = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
        out = BatchNorm(**bn, scale_init=last_init, name="bn2")(out, train)
        if self.downsample:
            identity = Downsample(self.planes, self.stride, **bn, name="downsample")(x, train)
        return nn.relu(out + identity)


class Bottleneck(nn.Module):
    """resnet50+ block: 1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand (x4). Stride on the 3x3 (v1.5)."""

    planes: int
    stride: int = 1
    downsample: bool = False
    groups: int = 1
    base_width: int = 64
    stride_in_1x1: bool = False
    zero_init_residual: bool = False
    dtype: Dtype = jnp.float32
    axis_name: str | None = None

    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        bn = dict(dtype=self.dtype, axis_name=self.axis_name)
        width = int(self.planes * (self.base_width / 64.0)) * self.groups
        s1, s3 = (self.stride, 1) if self.stride_in_1x1 else (1, self.stride)
        identity = x
        conv = dict(dtype=self.dtype)
        out = ConvLayer(width, 1, s1, 0, **conv, name="conv1")(x)
        out = nn.relu(BatchNorm(**bn, name="bn1")(out, train))
        out = ConvLayer(width, 3, s3, 1, groups=self.groups, **conv, name="conv2")(out)
        out = nn.relu(BatchNorm(**bn, name="bn2")(out, train))
        out = ConvLayer(self.planes * self.expansion, 1, 1, 0, **conv, name="conv3")(out)
        last_init = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
        out = BatchNorm(**bn, scale_init=last_init, name="bn3")(out, train)
        if self.downsample:
            identity = Downsample(self.planes * self.expansion, self.stride, **bn, name="downsample")(x, train)
        return nn.relu(out + identity)


_BLOCKS: dict[str, type[nn.Module]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResLayer(nn.Module):
    """torchvision's ``layerN = Sequential(block, block, ...)``: children named "0", "1", ..."""

    block: str
    planes: int
    blocks: int
    stride: int
    in_features: int
    groups: int = 1
    base_width: int = 64
    stride_in_1x1: bool = False
    zero_init_residual: bool = False
    dtype: Dtype = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        cls = _BLOCKS[self.block]
        expansion = cls.expansion  # type: ignore[attr-defined]
        common = dict(
            groups=self.groups,
            base_width=self.base_width,
            stride_in_1x1=self.stride_in_1x1,
            zero_init_residual=self.zero_init_residual,
            dtype=self.dtype,
            axis_name=self.axis_name,
        )
        needs_down = self.stride != 1 or self.in_features != self.planes * expansion
        x = cls(self.planes, self.stride, needs_down, name="0", **common)(x, train)  # type: ignore[call-arg]
        for i in range(1, self.blocks):
            x = cls(self.planes, 1, False, name=str(i), **common)(x, train)  # type: ignore[call-arg]
        return x


class ResNet(nn.Module):
    """A torchvision ResNet / ResNeXt / Wide ResNet.

    ``__call__(x, train, return_features=False)`` takes NHWC images ``[N, H, W, 3]``. It returns logits
    ``[N, num_classes]``, or with ``return_features=True`` a dict of ``stem`` (after the max-pool), ``layer1``..
    ``layer4`` (per-stage maps ``[N, h, w, C]``), ``pre_logits`` (pooled ``[N, num_features]``) and ``logits``.
    With ``num_classes=0`` the model has no ``fc`` and is a backbone: logits are the pooled features.

    BatchNorm uses batch statistics and updates ``batch_stats`` exactly when ``train`` is True.
    """

    block: str
    layers: Sequence[int]
    num_classes: int = 1000
    groups: int = 1
    width_per_group: int = 64
    stride_in_1x1: bool = False  # ResNet v1 (stride on the first 1x1 conv); torchvision is v1.5 (False)
    zero_init_residual: bool = False
    dtype: Dtype = jnp.float32
    axis_name: str | None = None
    conv_impl: str = "auto"  # force the kernels (tests, benchmarks): see jaxtl.models.kernels.use

    head_path: ClassVar[str] = "fc"
    no_decay: ClassVar[str] = r"(?:^|/)(?:bias|scale)$"  # BatchNorm's scale and bias, fc's bias
    decay_norms: ClassVar[bool] = True  # torchvision's recipe decays every parameter
    input_size: ClassVar[int | None] = None  # any input size

    @property
    def num_features(self) -> int:
        return 512 * _BLOCKS[self.block].expansion  # type: ignore[attr-defined,no-any-return]

    @property
    def layer_patterns(self) -> tuple[str, ...]:
        """Parameter paths per layer from the input up: the stem (conv1, bn1), then each block; ``fc`` is the top."""
        blocks = [f"^layer{i + 1}/{j}/" for i, n in enumerate(self.layers) for j in range(n)]
        return (r"^(?:conv1|bn1)/", *blocks)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False) -> Any:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"ResNet expects NHWC images [N, H, W, 3], got shape {tuple(x.shape)}")
        with kernels.use(self.conv_impl):  # a forced choice holds for every layer traced below
            feats: dict[str, jax.Array] = {}
            x = ConvLayer(64, 7, 2, 3, dtype=self.dtype, name="conv1")(x)
            x = BatchNorm(dtype=self.dtype, axis_name=self.axis_name, name="bn1")(x, train)
            x = nn.relu(x)
            x = kernels.max_pool(x, 3, 2, 1)  # torch's MaxPool2d(3, 2, 1), -inf padding
            feats["stem"] = x
            expansion = _BLOCKS[self.block].expansion  # type: ignore[attr-defined]
            in_features = 64
            for i, (planes, n) in enumerate(zip((64, 128, 256, 512), self.layers, strict=True)):
                x = ResLayer(
                    self.block,
                    planes,
                    n,
                    stride=1 if i == 0 else 2,
                    in_features=in_features,
                    groups=self.groups,
                    base_width=self.width_per_group,
                    stride_in_1x1=self.stride_in_1x1,
                    zero_init_residual=self.zero_init_residual,
                    dtype=self.dtype,
                    axis_name=self.axis_name,
                    name=f"layer{i + 1}",
                )(x, train)
                in_features = planes * expansion
                feats[f"layer{i + 1}"] = x
            return pooled_head(x, feats, self.num_classes, self.dtype, return_features)
