"""Layers the transformer and ConvNeXt families share, each as torch computes it.

- :class:`LayerNorm`: torch's ``nn.LayerNorm`` over the last axis, always in float32 (two-pass variance, as torch);
  the output is cast to the compute dtype.
- :class:`Conv2d`: a convolution with a bias and torch's symmetric padding, through
  :func:`jaxtl.models.kernels.conv2d` (the platform's kernel chosen when the program is lowered).
- :func:`stochastic_depth`: torchvision's ``StochasticDepth(p, "row")``: one Bernoulli draw per example, scaled by
  ``1 / (1 - p)`` in train mode, identity in eval.
- :func:`gelu`: the exact (erf) GELU of ``torch.nn.GELU()``.

Random draws in train mode (dropout, stochastic depth) come from the ``"dropout"`` rng collection:
``module.apply(variables, x, train=True, rngs={"dropout": key})``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxtl.models import kernels

Dtype = Any
RNG_COLLECTION = "dropout"  # the one rng stream of dropout and stochastic depth in every jaxtl model


def gelu(x: jax.Array) -> jax.Array:
    """``torch.nn.GELU()`` (approximate="none"): ``x * Phi(x)`` with the exact normal CDF."""
    return jax.nn.gelu(x, approximate=False)


def trunc_normal(std: float) -> Any:
    """``torch.nn.init.trunc_normal_(std=std)``: a normal of standard deviation ``std`` cut at +-2 (absolute, as
    torch's default ``a=-2, b=2``; for the small stds used here that is no cut at all)."""

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        lo, hi = -2.0 / std, 2.0 / std
        return jax.random.truncated_normal(key, lo, hi, shape, dtype) * std

    return init


class LayerNorm(nn.Module):
    """``torch.nn.LayerNorm(C, eps)`` over the last axis. ``scale``/``bias`` (torch ``weight``/``bias``) are float32
    and the statistics are computed in float32 whatever the input dtype; the output has the compute ``dtype``."""

    epsilon: float = 1e-6
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        centered = xf - mean
        var = jnp.mean(jnp.square(centered), axis=-1, keepdims=True)  # two passes: E[x^2]-E[x]^2 loses digits
        bshape = (1,) * (x.ndim - 1) + (features,)  # explicit broadcast: rank promotion may be set to raise
        y = centered * lax.rsqrt(var + self.epsilon) * scale.reshape(bshape) + bias.reshape(bshape)
        return y.astype(self.dtype)


class Conv2d(nn.Module):
    """``torch.nn.Conv2d(..., bias=True)`` on NHWC input. ``kernel`` is HWIO ``[k, k, Cin/groups, Cout]`` (torch:
    OIHW), ``bias`` ``[Cout]``; both float32, cast to the compute ``dtype``."""

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    dtype: Dtype = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        cin = x.shape[-1]
        if cin % self.groups:
            raise ValueError(f"Conv2d: {cin} input channels are not divisible into {self.groups} groups")
        kernel = self.param("kernel", self.kernel_init, (k, k, cin // self.groups, self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        y = kernels.conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.padding, self.groups)
        return y + bias.astype(self.dtype).reshape(1, 1, 1, -1)


def dense(features: int, dtype: Dtype, name: str, kernel_init: Any, bias_init: Any = nn.initializers.zeros) -> Any:
    """A ``torch.nn.Linear`` as ``nn.Dense``: float32 parameters, computed in ``dtype``."""
    return nn.Dense(
        features, dtype=dtype, param_dtype=jnp.float32, kernel_init=kernel_init, bias_init=bias_init, name=name
    )


def stochastic_depth(module: nn.Module, x: jax.Array, rate: float, train: bool) -> jax.Array:
    """torchvision's ``stochastic_depth(x, rate, "row", training=train)``: in train mode each example's ``x`` is
    zeroed with probability ``rate`` and kept ones are divided by ``1 - rate``; identity in eval or at rate 0.

    Draws from ``module``'s ``"dropout"`` rng (``apply(..., rngs={"dropout": key})``).
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"stochastic depth probability must lie in [0, 1], got {rate}")
    if not train or rate == 0.0:
        return x
    survival = 1.0 - rate
    key = module.make_rng(RNG_COLLECTION)
    keep = jax.random.bernoulli(key, survival, (x.shape[0],) + (1,) * (x.ndim - 1))
    noise = keep.astype(x.dtype)
    if survival > 0.0:
        noise = noise / jnp.asarray(survival, x.dtype)
    return x * noise


def check_rng(module: nn.Module, train: bool, rates: dict[str, float]) -> None:
    """A clear error when ``module`` runs in train mode with a nonzero rate in ``rates`` (names for the message)
    but was given no ``"dropout"`` rng."""
    active = {k: v for k, v in rates.items() if v}
    if train and active and not module.has_rng(RNG_COLLECTION):
        said = ", ".join(f"{k}={v:g}" for k, v in active.items())
        raise ValueError(
            f"{type(module).__name__} in train mode with {said} draws random numbers: pass "
            f"apply(..., rngs={{'{RNG_COLLECTION}': key}}), or build it with rate 0"
        )


def pool_and_flatten(x: jax.Array) -> jax.Array:
    """``AdaptiveAvgPool2d(1)`` + ``flatten``: ``[N, H, W, C]`` -> ``[N, C]``, averaged in float32."""
    return jnp.mean(x.astype(jnp.promote_types(x.dtype, jnp.float32)), axis=(1, 2))
