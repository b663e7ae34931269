"""Hand-written backward passes against autodiff: BatchNorm's closed form, the strided-slice max pool."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxtl.models.batchnorm import batch_norm_train
from jaxtl.models.kernels import max_pool_taps


def _reference(x, scale, bias, epsilon, axis_name):
    # The pre-custom_vjp forward, differentiated by JAX step by step.
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes)
    if axis_name is not None:
        mean = lax.pmean(mean, axis_name)
    b = (1,) * (x.ndim - 1) + (-1,)
    var = jnp.mean(jnp.square(x - mean.reshape(b)), axis=axes)
    if axis_name is not None:
        var = lax.pmean(var, axis_name)
    y = (x - mean.reshape(b)) * (scale * lax.rsqrt(var + epsilon)).reshape(b) + bias.reshape(b)
    return y, mean, var


def _loss(fn, axis_name):
    # Uses all three outputs, so the dmean/dvar terms of the backward are exercised too.
    def loss(x, scale, bias, w):
        y, mean, var = fn(x, scale, bias, 1e-5, axis_name)
        return jnp.sum(jnp.sin(y) * w) + jnp.sum(mean**2) + 0.5 * jnp.sum(jnp.sqrt(var))

    return loss


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    # numpy float64: each test makes jax arrays inside its own enable_x64 context.
    return (
        rng.standard_normal((8, 3, 5, 6)) * 2.0 + 0.5,
        rng.uniform(0.5, 1.5, 6),
        rng.standard_normal(6),
        rng.standard_normal((8, 3, 5, 6)),
    )


def test_forward_and_gradients_match_autodiff(inputs):
    with jax.enable_x64(True):
        x, scale, bias, w = (jnp.asarray(a, jnp.float64) for a in inputs)
        out = batch_norm_train(x, scale, bias, 1e-5)
        ref = _reference(x, scale, bias, 1e-5, None)
        for a, b in zip(out, ref, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
        g = jax.grad(_loss(batch_norm_train, None), argnums=(0, 1, 2))(x, scale, bias, w)
        g_ref = jax.grad(_loss(_reference, None), argnums=(0, 1, 2))(x, scale, bias, w)
        for a, b in zip(g, g_ref, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_cross_device_gradients_match_autodiff(inputs):
    # Each device's x reaches every device's output through the pmean-ed statistics; the backward's psums must
    # give the same per-device gradients as autodiff through pmean.
    n_dev = 4
    assert jax.local_device_count() >= n_dev
    with jax.enable_x64(True):
        x, scale, bias, w = (jnp.asarray(a, jnp.float64) for a in inputs)
        assert x.dtype == jnp.float64
        xs, ws = x.reshape(n_dev, 2, 3, 5, 6), w.reshape(n_dev, 2, 3, 5, 6)

        def grads(fn):
            g = jax.grad(_loss(fn, "d"), argnums=(0, 1, 2))
            return jax.pmap(g, axis_name="d", in_axes=(0, None, None, 0))(xs, scale, bias, ws)

        for a, b in zip(grads(batch_norm_train), grads(_reference), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_bfloat16_input_keeps_float32_statistics():
    x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 3, 3, 5)), jnp.bfloat16)
    scale, bias = jnp.ones(5, jnp.float32), jnp.zeros(5, jnp.float32)
    y, mean, var = batch_norm_train(x, scale, bias, 1e-5)
    assert y.dtype == mean.dtype == var.dtype == jnp.float32
    dx, dscale, dbias = jax.grad(lambda x, s, b: jnp.sum(batch_norm_train(x, s, b, 1e-5)[0] ** 2), (0, 1, 2))(
        x, scale, bias
    )
    assert dx.dtype == jnp.bfloat16 and dscale.dtype == dbias.dtype == jnp.float32


@pytest.mark.parametrize("k,s,p", [(3, 2, 1), (2, 2, 0), (3, 1, 1)])
def test_max_pool_taps_equals_reduce_window_bitwise(k, s, p):
    # ReLU-like input: whole windows of zeros, so the first-maximum tie rule decides where gradients go.
    rng = np.random.default_rng(k * 10 + s)
    x = jnp.asarray(np.maximum(rng.standard_normal((2, 9, 8, 3)), 0.0), jnp.float32)
    ref = functools.partial(nn.max_pool, window_shape=(k, k), strides=(s, s), padding=((p, p), (p, p)))
    out = max_pool_taps(x, k, s, p)
    np.testing.assert_array_equal(out, ref(x))
    w = jnp.asarray(rng.standard_normal(out.shape), jnp.float32)
    g = jax.grad(lambda x: jnp.sum(max_pool_taps(x, k, s, p) * w))(x)
    g_ref = jax.grad(lambda x: jnp.sum(ref(x) * w))(x)
    np.testing.assert_array_equal(g, g_ref)
