"""The torchvision ResNet family in Flax linen, numerically and structurally faithful.

Submodules carry torchvision's names (``conv1``, ``bn1``, ``layer3/1/conv2``, ``downsample/0``, ``fc``), so a key
of a torch ``state_dict`` and a Flax parameter path read the same. Padding is explicit and symmetric as in torch;
max-pooling pads with -inf. Input is NHWC.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtl.models.batchnorm import BatchNorm

Dtype = Any

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu") for every conv.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _torch_linear_init(fan_in: int) -> tuple[Any, Any]:
    # torch.nn.Linear default: kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for both.
    bound = 1.0 / float(fan_in) ** 0.5

    def init(key: jax.Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init, init


class Downsample(nn.Module):
    """torchvision's ``downsample = Sequential(conv1x1, BatchNorm2d)``: children named "0" and "1"."""

    features: int
    stride: int
    dtype: Dtype = jnp.float32
    axis_name: str | None = None
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = ConvLayer(self.features, 1, self.stride, 0, dtype=self.dtype, conv_impl=self.conv_impl, name="0")(x)
        return BatchNorm(dtype=self.dtype, axis_name=self.axis_name, name="1")(x, train)


def conv_im2col(x: jax.Array, kernel: jax.Array, stride: int, padding: int, groups: int = 1) -> jax.Array:
    """A convolution as kh*kw shifted strided slices and one (grouped) matmul; same numbers as the conv.

    XLA:CPU runs a conv whose input map is smaller than its kernel (layer4's 3x3 convs on a 2x2 map at 64x64
    input) through a path about 80x slower than this formulation, forward and backward; likewise the input gradient
    of a strided conv whose *output* is smaller than the kernel (layer4/0/conv2 at 64x64: 4x4 -> 2x2, stride 2;
    about 20x slower than this, ``benchmarks/train_steps.py`` full step at 64x64 batch 32).
    x: ``[N, H, W, Cin]``, kernel: ``[kh, kw, Cin/groups, Cout]`` -> ``[N, Ho, Wo, Cout]``.
    """
    kh, kw, cin_g, cout = kernel.shape
    n, h, w, _ = x.shape
    p, s = padding, stride
    ho, wo = (h + 2 * p - kh) // s + 1, (w + 2 * p - kw) // s + 1
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    taps = [
        jax.lax.slice(xp, (0, i, j, 0), (n, i + s * (ho - 1) + 1, j + s * (wo - 1) + 1, xp.shape[3]), (1, s, s, 1))
        for i in range(kh)
        for j in range(kw)
    ]
    cols = jnp.stack(taps, axis=3).reshape(n * ho * wo, kh * kw, groups, cin_g)
    k = kernel.reshape(kh * kw, cin_g, groups, cout // groups)
    out = jnp.einsum("mtgc,tcgo->mgo", cols, k)
    return out.reshape(n, ho, wo, cout)


def conv1x1_matmul(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """A 1x1 convolution (no padding, groups=1) as one matmul over pixels: ``x.reshape(-1, Cin) @ W``.

    On XLA:CPU this is faster to train than the convolution: the weight gradient becomes a plain ``x^T @ dy``
    matmul instead of a convolution wrapped in layout transposes (ResNet50 train step about 1.3x faster at 224x224
    batch 8, see ``benchmarks/train_steps.py``); forward speed is the same.
    x: ``[N, H, W, Cin]``, kernel: ``[1, 1, Cin, Cout]`` -> ``[N, ceil(H/s), ceil(W/s), Cout]``.
    """
    if stride > 1:
        x = x[:, ::stride, ::stride, :]
    n, h, w, cin = x.shape
    out = x.reshape(n * h * w, cin) @ kernel.reshape(cin, kernel.shape[-1])
    return out.reshape(n, h, w, kernel.shape[-1])


def _pool_taps(x: jax.Array, k: int, s: int, p: int) -> tuple[list[jax.Array], tuple[int, ...]]:
    n, h, w, c = x.shape
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=-jnp.inf)
    taps = [
        jax.lax.slice(xp, (0, i, j, 0), (n, i + s * (ho - 1) + 1, j + s * (wo - 1) + 1, c), (1, s, s, 1))
        for i in range(k)
        for j in range(k)
    ]
    return taps, xp.shape


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool_taps(x: jax.Array, kernel: int, stride: int, padding: int) -> jax.Array:
    """torch's ``MaxPool2d(kernel, stride, padding)`` (-inf padding) as the max of kernel**2 strided slices.

    The backward sends each output's gradient to the first maximal element of its window in row-major order, as
    torch's CPU kernel does (ties are common after a ReLU). On XLA:CPU this is much faster to differentiate
    than ``reduce_window`` + ``select_and_scatter`` (ResNet stem pool, 112x112x64 batch 8, forward + backward:
    ~95 ms -> ~11 ms on 2 cores); the gradients are bitwise the same. x: ``[N, H, W, C]`` -> ``[N, Ho, Wo, C]``.
    """
    taps, _ = _pool_taps(x, kernel, stride, padding)
    out = taps[0]
    for t in taps[1:]:
        out = jnp.maximum(out, t)
    return out


def _max_pool_fwd(x: jax.Array, kernel: int, stride: int, padding: int) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    out = max_pool_taps(x, kernel, stride, padding)
    return out, (x, out)


def _max_pool_bwd(kernel: int, stride: int, padding: int, res: tuple[jax.Array, ...], g: jax.Array) -> tuple[Any]:
    x, out = res
    taps, padded_shape = _pool_taps(x, kernel, stride, padding)
    _, hp, wp, _ = padded_shape
    _, ho, wo, _ = out.shape
    taken = jnp.zeros(out.shape, jnp.bool_)
    zero = jnp.zeros((), g.dtype)
    parts = []
    for idx, t in enumerate(taps):
        i, j = divmod(idx, kernel)
        first = (t == out) & ~taken
        taken = taken | first
        # The transpose of the strided slice: interior padding puts each value back at its input position.
        rows = (i, hp - i - stride * (ho - 1) - 1, stride - 1)
        cols = (j, wp - j - stride * (wo - 1) - 1, stride - 1)
        parts.append(jax.lax.pad(jnp.where(first, g, zero), zero, ((0, 0, 0), rows, cols, (0, 0, 0))))
    # Sum in torch's order: it accumulates output by output (row-major), i.e. from the last tap to the first.
    dxp = None
    for part in reversed(parts):
        dxp = part if dxp is None else dxp + part
    assert dxp is not None
    return (dxp[:, padding : hp - padding, padding : wp - padding, :],)


max_pool_taps.defvjp(_max_pool_fwd, _max_pool_bwd)


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
        k_init, b_init = _torch_linear_init(x.shape[-1])
        init = dict(kernel_init=k_init, bias_init=b_init)
        x = nn.Dense(num_classes, dtype=dtype, param_dtype=jnp.float32, **init, name="fc")(x)
    feats["logits"] = x
    return feats if return_features else x


CONV_IMPLS = ("auto", "xla", "im2col")


class ConvLayer(nn.Module):
    """A bias-free 2D convolution with torch's symmetric padding. Kernel ``kernel`` is HWIO (torch: OIHW).

    ``conv_impl``: "xla" (``lax.conv_general_dilated``), "im2col" (:func:`conv_im2col`) or "auto": on the CPU
    backend, a matmul for 1x1 kernels (:func:`conv1x1_matmul`) and im2col when the input or output map is smaller
    than the kernel; XLA's convolution everywhere else (GPU/TPU always).
    """

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    dtype: Dtype = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, p, s = self.kernel_size, self.padding, self.stride
        in_features = x.shape[-1]
        kernel = self.param("kernel", conv_init, (k, k, in_features // self.groups, self.features), jnp.float32)
        x = x.astype(self.dtype)
        kernel = kernel.astype(self.dtype)
        if self.conv_impl not in CONV_IMPLS:
            raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {self.conv_impl!r}")
        auto_cpu = self.conv_impl == "auto" and jax.default_backend() == "cpu"
        if auto_cpu and k == 1 and p == 0 and self.groups == 1:
            return conv1x1_matmul(x, kernel, s)
        out_hw = min((x.shape[1] + 2 * p - k) // s + 1, (x.shape[2] + 2 * p - k) // s + 1)
        small = min(x.shape[1], x.shape[2]) < k or out_hw < k
        use_im2col = self.conv_impl == "im2col" or (auto_cpu and k > 1 and small)
        if use_im2col:
            return conv_im2col(x, kernel, s, p, self.groups)
        return jax.lax.conv_general_dilated(
            x,
            kernel,
            window_strides=(s, s),
            padding=((p, p), (p, p)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=self.groups,
        )


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
    conv_impl: str = "auto"

    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.groups != 1 or self.base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64 (as torchvision)")
        bn = dict(dtype=self.dtype, axis_name=self.axis_name)
        ds = dict(bn, conv_impl=self.conv_impl)
        identity = x
        out = ConvLayer(self.planes, 3, self.stride, 1, dtype=self.dtype, conv_impl=self.conv_impl, name="conv1")(x)
        out = nn.relu(BatchNorm(**bn, name="bn1")(out, train))
        out = ConvLayer(self.planes, 3, 1, 1, dtype=self.dtype, conv_impl=self.conv_impl, name="conv2")(out)
        last_init = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
        out = BatchNorm(**bn, scale_init=last_init, name="bn2")(out, train)
        if self.downsample:
            identity = Downsample(self.planes, self.stride, **ds, name="downsample")(x, train)
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
    conv_impl: str = "auto"

    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        bn = dict(dtype=self.dtype, axis_name=self.axis_name)
        ds = dict(bn, conv_impl=self.conv_impl)
        width = int(self.planes * (self.base_width / 64.0)) * self.groups
        s1, s3 = (self.stride, 1) if self.stride_in_1x1 else (1, self.stride)
        identity = x
        conv = dict(dtype=self.dtype, conv_impl=self.conv_impl)
        out = ConvLayer(width, 1, s1, 0, **conv, name="conv1")(x)
        out = nn.relu(BatchNorm(**bn, name="bn1")(out, train))
        out = ConvLayer(width, 3, s3, 1, groups=self.groups, **conv, name="conv2")(out)
        out = nn.relu(BatchNorm(**bn, name="bn2")(out, train))
        out = ConvLayer(self.planes * self.expansion, 1, 1, 0, **conv, name="conv3")(out)
        last_init = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
        out = BatchNorm(**bn, scale_init=last_init, name="bn3")(out, train)
        if self.downsample:
            identity = Downsample(self.planes * self.expansion, self.stride, **ds, name="downsample")(x, train)
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
    conv_impl: str = "auto"

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
            conv_impl=self.conv_impl,
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
    conv_impl: str = "auto"  # "auto" | "xla" | "im2col": see ConvLayer

    @property
    def num_features(self) -> int:
        return 512 * _BLOCKS[self.block].expansion  # type: ignore[attr-defined,no-any-return]

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False) -> Any:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"ResNet expects NHWC images [N, H, W, 3], got shape {tuple(x.shape)}")
        feats: dict[str, jax.Array] = {}
        x = ConvLayer(64, 7, 2, 3, dtype=self.dtype, conv_impl=self.conv_impl, name="conv1")(x)
        x = BatchNorm(dtype=self.dtype, axis_name=self.axis_name, name="bn1")(x, train)
        x = nn.relu(x)
        # Flax's max_pool pads with -inf (the reduce_window init), as torch's MaxPool2d(3, 2, 1).
        if self.conv_impl == "auto" and jax.default_backend() == "cpu":
            x = max_pool_taps(x, 3, 2, 1)  # same numbers, much faster backward on XLA:CPU
        else:
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
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
                conv_impl=self.conv_impl,
                name=f"layer{i + 1}",
            )(x, train)
            in_features = planes * expansion
            feats[f"layer{i + 1}"] = x
        return pooled_head(x, feats, self.num_classes, self.dtype, return_features)
