"""Convolution and max-pooling kernels, and the one place that picks an implementation for each platform.

Models call :func:`conv2d` and :func:`max_pool`. On GPU and TPU they are XLA's own ``conv_general_dilated`` and
``reduce_window``. XLA:CPU runs some shapes much faster written another way, so on the CPU they become:

- a 1x1 convolution: one matmul over pixels (:func:`conv1x1_matmul`);
- a stride-1 depthwise convolution (ConvNeXt's 7x7): a sum of shifted, scaled slices (:func:`conv_depthwise_taps`);
- a convolution whose input or output map is smaller than its kernel: im2col (:func:`conv_im2col`);
- a stride-1 convolution with fewer output than input channels: XLA's conv, but its weight gradient computed
  with the output gradient in the batch role (:func:`conv_swapped_wgrad`);
- max pooling: the maximum of strided slices with a torch-exact backward (:func:`max_pool_taps`).

The choice is made when the program is *lowered*, for the platform it is lowered for
(:func:`jax.lax.platform_dependent`), not from ``jax.default_backend()`` while tracing: a step traced on this
machine and lowered or exported for ``cuda`` or ``tpu`` gets XLA's kernels. All implementations give the same
numbers up to float rounding (max pooling: bitwise, gradients included).

:func:`use` forces one implementation everywhere, for tests and benchmarks: ``"xla"`` (XLA's kernels on every
platform), ``"cpu"`` (the CPU kernels on every platform) or ``"im2col"`` (every convolution through im2col, XLA's
pooling); ``"auto"`` is the per-platform choice above.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

IMPLS = ("auto", "xla", "cpu", "im2col")

# Part of jax's jit cache key: a function traced under one forced choice is traced again under another.
_FORCED = jax.make_user_context(default_value="auto")


def check_impl(impl: str) -> str:
    """``impl`` if it is one of :data:`IMPLS`, else a ValueError naming the choices."""
    if impl not in IMPLS:
        raise ValueError(f"conv_impl must be one of {IMPLS}, got {impl!r}")
    return impl


@contextlib.contextmanager
def use(impl: str) -> Iterator[None]:
    """Force the kernels used while tracing inside the ``with`` block (``"auto"``: leave the current choice).

    The choice is part of ``jax.jit``'s cache key, so a jitted function called inside the block is traced for it.
    ``ResNet(conv_impl=...)`` uses it around its own body.
    """
    check_impl(impl)
    if impl == "auto":
        yield
        return
    with _FORCED(impl):
        yield


def current_impl() -> str:
    """The implementation :func:`use` forces here, or ``"auto"``."""
    return str(_FORCED.value)


# --- convolution -----------------------------------------------------------------------------------------------


def conv_xla(x: jax.Array, kernel: jax.Array, stride: int, padding: int, groups: int = 1) -> jax.Array:
    """XLA's convolution with torch's symmetric padding. x ``[N, H, W, Cin]``, kernel HWIO -> ``[N, Ho, Wo, Cout]``."""
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )


def window_taps(xp: jax.Array, kh: int, kw: int, stride: int, out_hw: tuple[int, int]) -> list[jax.Array]:
    """The ``kh * kw`` strided slices of an already padded NHWC map ``xp``, one per kernel offset in row-major
    order: tap ``(i, j)`` holds ``xp[:, i + stride * a, j + stride * b, :]`` for every output position ``(a, b)``
    of the ``out_hw`` output (what im2col stacks, depthwise taps sum and max pooling maximises)."""
    n, _, _, c = xp.shape
    ho, wo = out_hw
    s = stride
    return [
        jax.lax.slice(xp, (0, i, j, 0), (n, i + s * (ho - 1) + 1, j + s * (wo - 1) + 1, c), (1, s, s, 1))
        for i in range(kh)
        for j in range(kw)
    ]


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
    taps = window_taps(jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0))), kh, kw, s, (ho, wo))
    cols = jnp.stack(taps, axis=3).reshape(n * ho * wo, kh * kw, groups, cin_g)
    k = kernel.reshape(kh * kw, cin_g, groups, cout // groups)
    out = jnp.einsum("mtgc,tcgo->mgo", cols, k)
    return out.reshape(n, ho, wo, cout)


def _depthwise_sum(xp: jax.Array, kernel: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
    """The sum over the kernel offsets of ``xp``'s shifted slice times that offset's per-channel weight (``xp``
    already padded, both in the accumulation dtype): one fused elementwise loop."""
    kh, kw, _, _ = kernel.shape
    taps = window_taps(xp, kh, kw, 1, out_hw)
    terms = (tap * kernel[t // kw : t // kw + 1, t % kw : t % kw + 1] for t, tap in enumerate(taps))
    return functools.reduce(jnp.add, terms)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_depthwise_taps(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
    """A stride-1 depthwise convolution (one filter per channel) as the sum of its kh*kw shifted, scaled input
    slices; same numbers as the conv up to float rounding (the taps are summed in another order).

    XLA:CPU runs a grouped convolution with one channel per group far below its other convolutions (ConvNeXt's 7x7
    depthwise convs took most of its step, ``benchmarks/train_steps.py``); as one fused elementwise loop it runs at
    memory speed. The backward is written out rather than derived: the input gradient is the same kind of sum (the
    output gradient against the flipped kernel), the kernel gradient one reduction per offset in a loop. Derived,
    the kernel gradient was kh*kw separate reductions, which XLA:CPU compiled ~2.5x slower (a small ConvNeXt's step
    under shard_map ~4x) and ran 1.5-2.5x slower; the kernel gradient is bitwise the derived one, the input gradient
    equal up to rounding.
    x: ``[N, H, W, C]``, kernel: ``[kh, kw, 1, C]`` -> ``[N, Ho, Wo, C]``.
    """
    kh, kw, _, _ = kernel.shape
    _, h, w, _ = x.shape
    p = padding
    acc = jnp.promote_types(x.dtype, jnp.float32)  # bfloat16 input sums in float32, as the conv accumulates
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0))).astype(acc)
    out = _depthwise_sum(xp, kernel.astype(acc), (h + 2 * p - kh + 1, w + 2 * p - kw + 1))
    return out.astype(x.dtype)


def _depthwise_fwd(x: jax.Array, kernel: jax.Array, padding: int) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return conv_depthwise_taps(x, kernel, padding), (x, kernel)


def _depthwise_bwd(padding: int, res: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, kernel = res
    kh, kw, _, c = kernel.shape
    n, h, w, _ = x.shape
    _, ho, wo, _ = g.shape
    p = padding
    acc = jnp.promote_types(x.dtype, jnp.float32)
    ga = g.astype(acc)
    # Input gradient: the output gradient padded by k-1-p (a negative pad crops) against the flipped kernel.
    zero = jnp.zeros((), acc)
    gp = jax.lax.pad(ga, zero, ((0, 0, 0), (kh - 1 - p, kh - 1 - p, 0), (kw - 1 - p, kw - 1 - p, 0), (0, 0, 0)))
    dx = _depthwise_sum(gp, kernel[::-1, ::-1].astype(acc), (h, w))
    # Kernel gradient: for each offset, the sum over batch and positions of its input slice times the gradient.
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0))).astype(acc)

    def offset_grad(t: jax.Array) -> jax.Array:
        tap = jax.lax.dynamic_slice(xp, (0, t // kw, t % kw, 0), (n, ho, wo, c))
        return jnp.sum(tap * ga, axis=(0, 1, 2))

    dk = jax.lax.map(offset_grad, jnp.arange(kh * kw)).reshape(kh, kw, 1, c)
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


conv_depthwise_taps.defvjp(_depthwise_fwd, _depthwise_bwd)


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


def _conv_grad_x(x: jax.Array, kernel: jax.Array, padding: int, dy: jax.Array) -> jax.Array:
    _, vjp = jax.vjp(lambda x_: conv_xla(x_, kernel, 1, padding), x)
    return vjp(dy)[0]  # type: ignore[no-any-return]


def conv_weight_grad_by_dy(x: jax.Array, dy: jax.Array, k: int, padding: int) -> jax.Array:
    """The weight gradient of a stride-1 conv (``padding <= k - 1``) as a conv with ``dy`` in the batch role.

    ``dW[i, j, ci, co] = sum_{n,h,w} x_pad[n, h + i, w + j, ci] * dy[n, h, w, co]``. XLA's own transpose rule
    computes it as a conv of ``x`` (its channels as the batch, the images as features) with ``dy`` as the kernel;
    this one swaps the roles: ``dy`` (padded by ``k - 1 - padding``) is the image and ``x`` the kernel, giving
    ``dW`` with its window flipped. XLA:CPU's (Eigen's) convolution is a matmul whose output columns are the
    kernel's output features, and it is much faster when those are the larger channel count (``Cin`` here, ``Cout``
    in XLA's form): forward + backward at batch 64, the autoencoder's 32 -> 3 output conv (32x32) runs ~2.5x
    faster this way, its 128 -> 64 (16x16) and 64 -> 32 (32x32) convs ~10%; with ``Cout >= Cin`` it is no faster
    (3 -> 32: ~1.7x slower), so :func:`cpu_conv` takes it only for ``Cout < Cin``.
    x: ``[N, H, W, Cin]``, dy: ``[N, Ho, Wo, Cout]`` -> ``[k, k, Cin, Cout]``.
    """
    q = k - 1 - padding
    out = jax.lax.conv_general_dilated(
        dy,
        x,
        window_strides=(1, 1),
        padding=((q, q), (q, q)),
        dimension_numbers=("CHWN", "IHWO", "NHWC"),
    )  # [Cout, k, k, Cin], window flipped
    return jnp.transpose(out[:, ::-1, ::-1, :], (1, 2, 3, 0))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_swapped_wgrad(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
    """XLA's stride-1 convolution (``padding <= k - 1``) whose weight gradient is :func:`conv_weight_grad_by_dy`;
    the input gradient is XLA's. Same numbers as :func:`conv_xla` up to float rounding, gradients included.
    x: ``[N, H, W, Cin]``, kernel: HWIO ``[k, k, Cin, Cout]`` -> ``[N, Ho, Wo, Cout]``.
    """
    return conv_xla(x, kernel, 1, padding)


def _swapped_fwd(x: jax.Array, kernel: jax.Array, padding: int) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return conv_xla(x, kernel, 1, padding), (x, kernel)


def _swapped_bwd(padding: int, res: tuple[jax.Array, jax.Array], dy: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, kernel = res
    dw = conv_weight_grad_by_dy(x, dy, kernel.shape[0], padding)
    return _conv_grad_x(x, kernel, padding, dy), dw.astype(kernel.dtype)


conv_swapped_wgrad.defvjp(_swapped_fwd, _swapped_bwd)


Conv = Callable[[jax.Array, jax.Array], jax.Array]


def cpu_conv(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], stride: int, padding: int, groups: int) -> str:
    """Which formulation XLA:CPU runs fastest for this convolution: ``"matmul"``, ``"im2col"`` (a map smaller than
    the kernel), ``"depthwise"`` (stride 1, one channel per group: :func:`conv_depthwise_taps`), ``"swapped"``
    (XLA's conv, weight gradient by :func:`conv_weight_grad_by_dy`: stride 1, fewer output than input channels) or
    ``"xla"``."""
    k = kernel_shape[0]
    if k == 1 and padding == 0 and groups == 1:
        return "matmul"
    out_hw = min((x_shape[1] + 2 * padding - k) // stride + 1, (x_shape[2] + 2 * padding - k) // stride + 1)
    if k > 1 and (min(x_shape[1], x_shape[2]) < k or out_hw < k):
        return "im2col"
    if groups > 1 and groups == x_shape[3] == kernel_shape[3] and stride == 1:
        # Unrolled taps compile slowly (a ConvNeXt's k*k per block); a map smaller than the kernel took im2col above.
        return "depthwise"
    square = kernel_shape[0] == kernel_shape[1]
    if stride == 1 and groups == 1 and square and padding <= k - 1 and kernel_shape[3] < kernel_shape[2]:
        return "swapped"
    return "xla"


def _conv_by_name(name: str, stride: int, padding: int, groups: int) -> Conv:
    if name == "matmul":
        return functools.partial(conv1x1_matmul, stride=stride)
    if name == "im2col":
        return functools.partial(conv_im2col, stride=stride, padding=padding, groups=groups)
    if name == "depthwise":
        return lambda x, kernel: conv_depthwise_taps(x, kernel, padding)
    if name == "swapped":
        return lambda x, kernel: conv_swapped_wgrad(x, kernel, padding)
    return functools.partial(conv_xla, stride=stride, padding=padding, groups=groups)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 0, groups: int = 1) -> jax.Array:
    """A bias-free 2D convolution, torch's symmetric padding, in the implementation chosen for the platform.

    x: ``[N, H, W, Cin]``, kernel: HWIO ``[k, k, Cin/groups, Cout]`` -> ``[N, Ho, Wo, Cout]``.
    """
    impl = current_impl()
    xla = _conv_by_name("xla", stride, padding, groups)
    if impl == "xla":
        return xla(x, kernel)
    if impl == "im2col":
        return _conv_by_name("im2col", stride, padding, groups)(x, kernel)
    name = cpu_conv(x.shape, kernel.shape, stride, padding, groups)
    if name == "xla":
        return xla(x, kernel)
    cpu = _conv_by_name(name, stride, padding, groups)
    if impl == "cpu":
        return cpu(x, kernel)
    return jax.lax.platform_dependent(x, kernel, cpu=cpu, default=xla)  # type: ignore[no-any-return]


# --- max pooling -----------------------------------------------------------------------------------------------


def max_pool_xla(x: jax.Array, kernel: int, stride: int, padding: int) -> jax.Array:
    """torch's ``MaxPool2d`` as XLA's ``reduce_window`` (padding is -inf, the reduction's init). NHWC."""
    pad = ((padding, padding), (padding, padding))
    return nn.max_pool(x, (kernel, kernel), strides=(stride, stride), padding=pad)


def _pool_taps(x: jax.Array, k: int, s: int, p: int) -> tuple[list[jax.Array], tuple[int, ...]]:
    _, h, w, _ = x.shape
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=-jnp.inf)
    return window_taps(xp, k, k, s, (ho, wo)), xp.shape


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


def max_pool(x: jax.Array, kernel: int, stride: int, padding: int = 0) -> jax.Array:
    """torch's ``MaxPool2d(kernel, stride, padding)`` on NHWC ``[N, H, W, C]``, per platform (see the module doc)."""
    impl = current_impl()
    xla = functools.partial(max_pool_xla, kernel=kernel, stride=stride, padding=padding)
    if impl in ("xla", "im2col"):
        return xla(x)

    def cpu(x: jax.Array) -> jax.Array:
        return max_pool_taps(x, kernel, stride, padding)

    if impl == "cpu":
        return cpu(x)
    return jax.lax.platform_dependent(x, cpu=cpu, default=xla)  # type: ignore[no-any-return]


# --- bilinear upsampling ---------------------------------------------------------------------------------------


def resize_bilinear_xla(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """``jax.image.resize(..., "bilinear")`` of NHWC ``x`` to ``size`` (torch's ``align_corners=False``)."""
    return jax.image.resize(x, (x.shape[0], *size, x.shape[3]), "bilinear")


def _upsample2x_axis(x: jax.Array, axis: int) -> jax.Array:
    # Output 2i samples input i - 1/4, output 2i+1 samples i + 1/4 (half-pixel centres), clamped at the edges.
    n = x.shape[axis]
    take = functools.partial(jax.lax.slice_in_dim, x, axis=axis)
    prev = jnp.concatenate([take(0, 1), take(0, n - 1)], axis=axis)
    nxt = jnp.concatenate([take(1, n), take(n - 1, n)], axis=axis)
    even = 0.75 * x + 0.25 * prev
    odd = 0.75 * x + 0.25 * nxt
    out = jnp.stack([even, odd], axis=axis + 1)
    return out.reshape(*x.shape[:axis], 2 * n, *x.shape[axis + 1 :])


def upsample2x_bilinear(x: jax.Array) -> jax.Array:
    """Bilinear 2x upsampling of NHWC ``x`` ``[N, H, W, C]`` -> ``[N, 2H, 2W, C]`` as fixed-weight shifted sums.

    The same numbers as :func:`resize_bilinear_xla` up to float rounding, and on XLA:CPU several times faster
    forward and backward than its per-axis weight-matrix products (a gradient that is a few adds instead of two
    transposed matmuls).
    """
    return _upsample2x_axis(_upsample2x_axis(x, 1), 2)


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear resize of NHWC ``x`` to ``size`` = ``(H', W')`` (torch ``align_corners=False``), per platform:
    on the CPU an exact 2x upsampling is :func:`upsample2x_bilinear`; every other case is ``jax.image.resize``."""
    size = (int(size[0]), int(size[1]))
    xla = functools.partial(resize_bilinear_xla, size=size)
    impl = current_impl()
    if impl in ("xla", "im2col") or size != (2 * x.shape[1], 2 * x.shape[2]):
        return xla(x)
    if impl == "cpu":
        return upsample2x_bilinear(x)
    return jax.lax.platform_dependent(x, cpu=upsample2x_bilinear, default=xla)  # type: ignore[no-any-return]
