"""BatchNorm that reproduces ``torch.nn.BatchNorm2d`` exactly.

Flax's own ``nn.BatchNorm`` differs from torch in two ways that matter when weights move between the two:
its ``momentum`` is the weight of the *old* average (torch's is the weight of the new batch), and it updates
the running variance with the biased batch variance, where torch uses the unbiased one (``n / (n - 1)``).
This module follows torch: normalise with the biased variance, update ``var`` with the unbiased one.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Dtype = Any


def _reduce_count(x: jax.Array) -> int:
    n = 1
    for a in x.shape[:-1]:
        n *= a
    return n


def _bn_train_fwd(
    x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float, axis_name: str | None
) -> tuple[tuple[jax.Array, jax.Array, jax.Array], tuple[jax.Array, ...]]:
    stat_dtype = jnp.promote_types(x.dtype, jnp.float32)  # never below float32 (bfloat16 inputs)
    bshape = (1,) * (x.ndim - 1) + (x.shape[-1],)  # explicit broadcast: rank promotion may be set to raise
    reduce_axes = tuple(range(x.ndim - 1))
    xf = x.astype(stat_dtype)
    mean = jnp.mean(xf, axis=reduce_axes)
    if axis_name is not None:
        mean = lax.pmean(mean, axis_name)
    # Two passes (mean, then mean of squared deviations) as torch does; E[x^2]-E[x]^2 loses digits.
    var = jnp.mean(jnp.square(xf - mean.reshape(bshape)), axis=reduce_axes)
    if axis_name is not None:
        var = lax.pmean(var, axis_name)
    invstd = lax.rsqrt(var + epsilon)
    # Same association as torch's CPU kernel: (x - mean) * (invstd * weight) + bias.
    mul = scale.astype(stat_dtype) * invstd
    y = (xf - mean.reshape(bshape)) * mul.reshape(bshape) + bias.astype(stat_dtype).reshape(bshape)
    return (y, mean, var), (x, mean, invstd, scale)


def _bn_train_bwd(
    epsilon: float, axis_name: str | None, res: tuple[jax.Array, ...], cts: tuple[jax.Array, jax.Array, jax.Array]
) -> tuple[jax.Array, jax.Array, jax.Array]:
    # Closed form (as torch's batch_norm_backward): with x_hat = (x - mean) * invstd over N reduced elements,
    # dx = invstd * scale * (g - mean(g) - x_hat * mean(g * x_hat)) + dmean / N + dvar * 2 (x - mean) / N.
    # Two reductions and one elementwise pass, instead of differentiating the two-pass statistics step by step.
    x, mean, invstd, scale = res
    gy, dmean, dvar = cts
    stat_dtype = invstd.dtype
    bshape = (1,) * (x.ndim - 1) + (x.shape[-1],)
    reduce_axes = tuple(range(x.ndim - 1))
    xhat = (x.astype(stat_dtype) - mean.reshape(bshape)) * invstd.reshape(bshape)
    g = gy.astype(stat_dtype)
    sum_g = jnp.sum(g, axis=reduce_axes)
    sum_gx = jnp.sum(g * xhat, axis=reduce_axes)
    n: Any = _reduce_count(x)
    tot_g, tot_gx, tot_dmean, tot_dvar = sum_g, sum_gx, dmean.astype(stat_dtype), dvar.astype(stat_dtype)
    if axis_name is not None:
        # The forward's pmean of the statistics makes every device's x feed every device's output.
        tot_g, tot_gx, tot_dmean, tot_dvar = lax.psum((tot_g, tot_gx, tot_dmean, tot_dvar), axis_name)
        n = n * lax.psum(1, axis_name)
    k1 = scale.astype(stat_dtype) * invstd
    k2 = 2.0 * tot_dvar / (invstd * n) - k1 * (tot_gx / n)
    k3 = tot_dmean / n - k1 * (tot_g / n)
    dx = g * k1.reshape(bshape) + xhat * k2.reshape(bshape) + k3.reshape(bshape)
    return dx.astype(x.dtype), sum_gx.astype(scale.dtype), sum_g.astype(scale.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train(
    x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float, axis_name: str | None = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Train-mode batch norm over all axes but the last, with a closed-form backward.

    x: ``[..., C]``, scale/bias: ``[C]`` -> (y ``[..., C]`` in the statistics dtype, batch mean ``[C]``, biased
    batch variance ``[C]``); with ``axis_name`` the statistics are averaged over that mapped axis.
    """
    return _bn_train_fwd(x, scale, bias, epsilon, axis_name)[0]


batch_norm_train.defvjp(_bn_train_fwd, _bn_train_bwd)


class BatchNorm(nn.Module):
    """Torch-exact batch normalisation over all axes but the last (NHWC or NC input).

    Parameters ``scale``/``bias`` (torch ``weight``/``bias``) and statistics ``mean``/``var``/
    ``num_batches_tracked`` (torch ``running_mean``/``running_var``/``num_batches_tracked``) are float32 whatever
    the compute ``dtype``; statistics are computed in float32 too (float64 for float64 inputs).

    Attributes:
      momentum: torch convention, the weight of the new batch in the running averages (0.1 in torch).
      epsilon: added to the variance (1e-5 in torch).
      dtype: dtype of the output.
      axis_name: when set, batch statistics are averaged over this mapped axis (cross-device, "SyncBatchNorm").
    """

    momentum: float = 0.1
    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32
    axis_name: str | None = None
    scale_init: Any = nn.initializers.ones

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", self.scale_init, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
        tracked = self.variable("batch_stats", "num_batches_tracked", lambda: jnp.zeros((), jnp.int32))

        stat_dtype = jnp.promote_types(x.dtype, jnp.float32)  # never below float32 (bfloat16 inputs)
        bshape = (1,) * (x.ndim - 1) + (features,)  # explicit broadcast: rank promotion may be set to raise
        if train:
            y, mean, var = batch_norm_train(x, scale, bias, self.epsilon, self.axis_name)
            if not self.is_initializing():
                n: Any = _reduce_count(x)
                if self.axis_name is not None:
                    n = n * lax.psum(1, self.axis_name)
                m = self.momentum
                unbiased = var * (n / max(n - 1, 1)) if isinstance(n, int) else var * (n / jnp.maximum(n - 1, 1))
                ra_mean.value = (1.0 - m) * ra_mean.value + m * mean
                ra_var.value = (1.0 - m) * ra_var.value + m * unbiased
                tracked.value = tracked.value + 1
            return y.astype(self.dtype)

        mean, var = ra_mean.value, ra_var.value
        # Same association as torch's CPU kernel: (x - mean) * (invstd * weight) + bias.
        mul = scale * lax.rsqrt(var + self.epsilon)
        y = (x.astype(stat_dtype) - mean.reshape(bshape)) * mul.reshape(bshape) + bias.reshape(bshape)
        return y.astype(self.dtype)
