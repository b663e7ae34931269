"""BatchNorm that reproduces ``torch.nn.BatchNorm2d`` exactly.

Flax's own ``nn.BatchNorm`` differs from torch in two ways that matter when weights move between the two:
its ``momentum`` is the weight of the *old* average (torch's is the weight of the new batch), and it updates
the running variance with the biased batch variance, where torch uses the unbiased one (``n / (n - 1)``).
This module follows torch: normalise with the biased variance, update ``var`` with the unbiased one.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Dtype = Any


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
            reduce_axes = tuple(range(x.ndim - 1))
            xf = x.astype(stat_dtype)
            mean = jnp.mean(xf, axis=reduce_axes)
            n = 1
            for a in reduce_axes:
                n *= x.shape[a]
            if self.axis_name is not None:
                mean = lax.pmean(mean, self.axis_name)
                n = n * lax.psum(1, self.axis_name)
            # Two passes (mean, then mean of squared deviations) as torch does; E[x^2]-E[x]^2 loses digits.
            var = jnp.mean(jnp.square(xf - mean.reshape(bshape)), axis=reduce_axes)
            if self.axis_name is not None:
                var = lax.pmean(var, self.axis_name)
            if not self.is_initializing():
                m = self.momentum
                unbiased = var * (n / max(n - 1, 1)) if isinstance(n, int) else var * (n / jnp.maximum(n - 1, 1))
                ra_mean.value = (1.0 - m) * ra_mean.value + m * mean
                ra_var.value = (1.0 - m) * ra_var.value + m * unbiased
                tracked.value = tracked.value + 1
        else:
            mean, var = ra_mean.value, ra_var.value

        # Same association as torch's CPU kernel: (x - mean) * (invstd * weight) + bias.
        mul = scale * lax.rsqrt(var + self.epsilon)
        y = (x.astype(stat_dtype) - mean.reshape(bshape)) * mul.reshape(bshape) + bias.reshape(bshape)
        return y.astype(self.dtype)
