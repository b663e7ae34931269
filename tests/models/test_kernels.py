"""jaxtl.models.kernels: each CPU kernel against XLA's own op (values and gradients), and the choice between them
made per lowering platform, overridable with ``kernels.use``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtl.models import kernels


@pytest.mark.parametrize("shape", [(2, 4, 5, 3), (2, 1, 1, 4), (1, 8, 2, 2)])
def test_upsample2x_matches_jax_resize_values_and_gradients(shape):
    rng = np.random.default_rng(sum(shape))
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    size = (2 * shape[1], 2 * shape[2])
    g = jnp.asarray(rng.standard_normal((shape[0], *size, shape[3])), jnp.float32)
    fast, ref = kernels.upsample2x_bilinear(x), kernels.resize_bilinear_xla(x, size)
    assert fast.shape == ref.shape
    np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-6)
    g_fast = jax.grad(lambda x: jnp.sum(kernels.upsample2x_bilinear(x) * g))(x)
    g_ref = jax.grad(lambda x: jnp.sum(kernels.resize_bilinear_xla(x, size) * g))(x)
    np.testing.assert_allclose(g_fast, g_ref, rtol=0, atol=1e-5)


def test_upsample2x_matches_torch_interpolate():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((2, 4, 5, 3)).astype(np.float32)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(x).permute(0, 3, 1, 2), size=(8, 10), mode="bilinear", align_corners=False
    )
    out = kernels.upsample2x_bilinear(jnp.asarray(x))
    np.testing.assert_allclose(out, ref.permute(0, 2, 3, 1).numpy(), rtol=0, atol=1e-6)


def _lowered_ops(fn, x, platform):
    return jax.jit(fn).trace(x).lower(lowering_platforms=(platform,)).as_text()


def test_choice_is_made_for_the_lowering_platform():
    x = jax.ShapeDtypeStruct((2, 2, 2, 8), jnp.float32)  # a 2x2 map: smaller than the 3x3 kernel
    k = jnp.ones((3, 3, 8, 4), jnp.float32)

    def net(x):
        y = kernels.conv2d(x, k, 1, 1)
        y = kernels.resize_bilinear(y, (4, 4))
        return kernels.max_pool(y, 2, 2)

    cpu, gpu = _lowered_ops(net, x, "cpu"), _lowered_ops(net, x, "cuda")
    assert "stablehlo.convolution" in gpu and "stablehlo.reduce_window" in gpu
    assert "stablehlo.convolution" not in cpu and "stablehlo.reduce_window" not in cpu
    with kernels.use("xla"):  # forced: XLA's kernels on the CPU too
        assert "stablehlo.convolution" in _lowered_ops(net, x, "cpu")
    with kernels.use("cpu"):  # forced: the CPU kernels for a GPU lowering
        assert "stablehlo.convolution" not in _lowered_ops(net, x, "cuda")
    assert kernels.current_impl() == "auto"
    with pytest.raises(ValueError, match="conv_impl must be one of"), kernels.use("winograd"):
        pass


def test_all_implementations_agree_numerically():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((2, 6, 6, 4)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, 4, 5)), jnp.float32)
    k1 = jnp.asarray(rng.standard_normal((1, 1, 5, 6)), jnp.float32)

    def net(x, k, k1):
        y = kernels.conv2d(x, k, 2, 1)  # 6x6 -> 3x3: output smaller than the kernel, im2col on the CPU
        y = kernels.conv2d(kernels.resize_bilinear(y, (6, 6)), k1)  # 1x1: a matmul on the CPU
        return jnp.sum(jnp.sin(kernels.max_pool(y, 3, 2, 1)))

    results = {}
    for impl in kernels.IMPLS:
        with kernels.use(impl):
            results[impl] = jax.jit(jax.value_and_grad(net, argnums=(0, 1, 2)))(x, k, k1)
    for impl, (value, grads) in results.items():
        ref_value, ref_grads = results["xla"]
        np.testing.assert_allclose(value, ref_value, rtol=1e-5, err_msg=impl)
        for g, r in zip(grads, ref_grads, strict=True):
            np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4, err_msg=impl)


@pytest.mark.parametrize(
    ("hw", "cin", "cout", "k", "padding"),
    [((8, 8), 6, 3, 3, 1), ((7, 9), 5, 2, 3, 0), ((6, 5), 4, 3, 3, 2), ((6, 6), 4, 2, 5, 2), ((5, 4), 3, 3, 3, 1)],
)
def test_swapped_weight_gradient_matches_xla(hw, cin, cout, k, padding):
    rng = np.random.default_rng(cin * 10 + cout)
    x = jnp.asarray(rng.standard_normal((3, *hw, cin)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, cin, cout)), jnp.float32)

    def loss(conv):
        return lambda x, w: jnp.sum(jnp.sin(conv(x, w)))

    swapped = jax.jit(jax.value_and_grad(loss(lambda x, w: kernels.conv_swapped_wgrad(x, w, padding)), (0, 1)))
    ref = jax.jit(jax.value_and_grad(loss(lambda x, w: kernels.conv_xla(x, w, 1, padding)), (0, 1)))
    (value, (dx, dw)), (ref_value, (ref_dx, ref_dw)) = swapped(x, w), ref(x, w)
    np.testing.assert_array_equal(value, ref_value)  # the forward is XLA's own convolution
    np.testing.assert_array_equal(dx, ref_dx)  # so is the input gradient
    np.testing.assert_allclose(dw, ref_dw, rtol=1e-5, atol=1e-5)
    assert dw.shape == w.shape and dw.dtype == w.dtype


def test_cpu_rule_swaps_the_weight_gradient_only_for_fewer_output_channels():
    rule = kernels.cpu_conv
    assert rule((64, 32, 32, 32), (3, 3, 32, 3), 1, 1, 1) == "swapped"  # the autoencoder's output conv
    assert rule((64, 16, 16, 128), (3, 3, 128, 64), 1, 1, 1) == "swapped"
    assert rule((64, 32, 32, 3), (3, 3, 3, 32), 1, 1, 1) == "xla"  # more outputs: XLA's own form is faster
    assert rule((8, 56, 56, 64), (3, 3, 64, 64), 1, 1, 1) == "xla"  # ResNet's 3x3 convs keep XLA's gradient
    assert rule((8, 56, 56, 64), (3, 3, 64, 32), 2, 1, 1) == "xla"  # strided
    assert rule((8, 56, 56, 64), (3, 3, 32, 16), 1, 1, 2) == "xla"  # grouped
    assert rule((8, 56, 56, 64), (3, 3, 64, 32), 1, 3, 1) == "xla"  # padding beyond k - 1


def test_conv2d_takes_the_swapped_gradient_on_cpu_and_xla_elsewhere():
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((2, 6, 6, 6)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, 6, 2)), jnp.float32)  # 6 -> 2 channels, stride 1

    def loss(x, k):
        return jnp.sum(jnp.sin(kernels.conv2d(x, k, 1, 1)))

    def grad_k(x):
        return jax.grad(loss, argnums=1)(x, k)

    spec = jax.ShapeDtypeStruct(x.shape, x.dtype)
    swapped = "tensor<2x3x3x6xf32>"  # the weight-gradient conv's output [Cout, k, k, Cin] when dy is the batch
    assert swapped in _lowered_ops(grad_k, spec, "cpu")
    assert swapped not in _lowered_ops(grad_k, spec, "cuda")
    with kernels.use("xla"):
        assert swapped not in _lowered_ops(grad_k, spec, "cpu")
    results = {}
    for impl in ("auto", "xla"):
        with kernels.use(impl):
            results[impl] = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, k)
    for g, r in zip(results["auto"], results["xla"], strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("hw", "c", "k", "padding"), [((9, 9), 5, 7, 3), ((3, 4), 4, 7, 3), ((6, 5), 3, 3, 1)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_depthwise_taps_match_the_grouped_conv(hw, c, k, padding, dtype):
    """ConvNeXt's 7x7 depthwise conv on the CPU: the shifted-slice sum gives XLA's grouped conv's values and
    gradients (a map smaller than the kernel included); bfloat16 input sums in float32."""
    rng = np.random.default_rng(c * 7 + k)
    x = jnp.asarray(rng.standard_normal((2, *hw, c)), dtype)
    w = jnp.asarray(rng.standard_normal((k, k, 1, c)) * 0.2, dtype)

    def loss(conv):
        return lambda x, w: jnp.sum(jnp.sin(conv(x, w).astype(jnp.float32)))

    taps = jax.jit(jax.value_and_grad(loss(lambda x, w: kernels.conv_depthwise_taps(x, w, padding)), (0, 1)))
    ref = jax.jit(jax.value_and_grad(loss(lambda x, w: kernels.conv_xla(x, w, 1, padding, groups=c)), (0, 1)))
    (value, grads), (ref_value, ref_grads) = taps(x, w), ref(x, w)
    tol = 1e-5 if dtype == jnp.float32 else 3e-2
    np.testing.assert_allclose(value, ref_value, rtol=tol, atol=tol)
    for g, r in zip(grads, ref_grads, strict=True):
        assert g.shape == r.shape and g.dtype == r.dtype
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r, np.float32), rtol=tol, atol=tol * 10)
    out = kernels.conv_depthwise_taps(x, w, padding)
    assert out.dtype == dtype and out.shape == (2, hw[0] + 2 * padding - k + 1, hw[1] + 2 * padding - k + 1, c)


@pytest.mark.parametrize(("hw", "k", "padding"), [((9, 9), 7, 3), ((3, 4), 7, 3), ((6, 5), 3, 1), ((5, 5), 3, 0)])
def test_depthwise_taps_backward_is_the_derived_one(hw, k, padding):
    """The written-out backward (input gradient as a flipped-kernel sum, kernel gradient one reduction per offset
    in a loop) against the forward's own derivative: the kernel gradient bitwise, the input gradient to rounding."""
    rng = np.random.default_rng(k + padding)
    x = jnp.asarray(rng.standard_normal((2, *hw, 4)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, 1, 4)) * 0.2, jnp.float32)

    def derived(x, w):  # the forward's formula, differentiated by JAX
        xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
        return kernels._depthwise_sum(xp, w, (hw[0] + 2 * padding - k + 1, hw[1] + 2 * padding - k + 1))

    def loss(conv):
        return lambda x, w: jnp.sum(jnp.sin(conv(x, w)))

    written = jax.jit(jax.grad(loss(lambda x, w: kernels.conv_depthwise_taps(x, w, padding)), (0, 1)))(x, w)
    auto = jax.jit(jax.grad(loss(derived), (0, 1)))(x, w)
    np.testing.assert_array_equal(written[1], auto[1])
    np.testing.assert_allclose(written[0], auto[0], rtol=1e-6, atol=1e-6)


def test_cpu_rule_takes_the_taps_for_stride_1_depthwise_convs_only():
    rule = kernels.cpu_conv
    assert rule((8, 56, 56, 96), (7, 7, 1, 96), 1, 3, 96) == "depthwise"  # ConvNeXt-T stage 1
    assert rule((8, 7, 7, 768), (7, 7, 1, 768), 1, 3, 768) == "depthwise"  # stage 4 at 224 px
    assert rule((8, 2, 2, 768), (7, 7, 1, 768), 1, 3, 768) == "im2col"  # a map smaller than the kernel, as before
    assert rule((8, 56, 56, 96), (7, 7, 1, 96), 2, 3, 96) != "depthwise"  # strided
    assert rule((8, 56, 56, 64), (3, 3, 32, 64), 1, 1, 2) != "depthwise"  # grouped, not depthwise
    spec = jax.ShapeDtypeStruct((2, 9, 9, 4), jnp.float32)
    w = jnp.ones((7, 7, 1, 4), jnp.float32)

    def f(x):
        return kernels.conv2d(x, w, 1, 3, 4)

    assert "convolution" not in _lowered_ops(f, spec, "cpu")
    assert "convolution" in _lowered_ops(f, spec, "cuda")  # XLA's own conv elsewhere
