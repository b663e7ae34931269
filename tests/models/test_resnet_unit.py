"""Unit tests of the ResNet building blocks that need no torch: im2col conv, BatchNorm, registry, features."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxtl
from jaxtl.models import BatchNorm, get_spec, list_models
from jaxtl.models.kernels import conv_im2col


def _xla_conv(x, w, stride, pad, groups):
    return jax.lax.conv_general_dilated(
        x,
        w,
        (stride, stride),
        ((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )


@pytest.mark.parametrize(
    "h,k,stride,pad,groups",
    [(2, 3, 1, 1, 1), (4, 3, 2, 1, 1), (2, 3, 1, 1, 8), (5, 7, 2, 3, 1), (3, 1, 2, 0, 1), (1, 3, 1, 1, 1)],
)
def test_im2col_matches_xla_conv(h, k, stride, pad, groups):
    rng = np.random.default_rng(h * 100 + k * 10 + groups)
    x = jnp.asarray(rng.standard_normal((2, h, h + 1, 16)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, 16 // groups, 24)), jnp.float32)
    ref = _xla_conv(x, w, stride, pad, groups)
    out = conv_im2col(x, w, stride, pad, groups)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    # Gradients agree too: the point of im2col is the backward pass on tiny maps.
    g_ref = jax.grad(lambda w: jnp.sum(jnp.sin(_xla_conv(x, w, stride, pad, groups))))(w)
    g_out = jax.grad(lambda w: jnp.sum(jnp.sin(conv_im2col(x, w, stride, pad, groups))))(w)
    np.testing.assert_allclose(g_out, g_ref, rtol=1e-4, atol=1e-4)


def test_model_conv_impls_agree_on_small_maps():
    # 32x32 input: layer4 runs on a 1x1 map, where "auto" picks im2col on CPU.
    model = jaxtl.create("resnet18", num_classes=7)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3)), jnp.float32)
    variables = model.init(jax.random.key(0), x)
    outs = {impl: model.clone(conv_impl=impl).apply(variables, x) for impl in ("auto", "xla", "cpu", "im2col")}
    scale = float(jnp.max(jnp.abs(outs["xla"])))
    for impl in ("auto", "cpu", "im2col"):
        assert float(jnp.max(jnp.abs(outs[impl] - outs["xla"]))) <= 1e-5 * scale
    with pytest.raises(ValueError, match="conv_impl"):
        model.clone(conv_impl="winograd").apply(variables, x)


def test_batchnorm_follows_torch_update_rule():
    x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 3, 3, 5)) * 2 + 1, jnp.float32)
    bn = BatchNorm()
    variables = bn.init(jax.random.key(0), x, train=False)
    y, updates = bn.apply(variables, x, train=True, mutable=["batch_stats"])
    xf = np.asarray(x).reshape(-1, 5)
    mean, biased, unbiased = xf.mean(0), xf.var(0), xf.var(0, ddof=1)
    np.testing.assert_allclose(y, ((np.asarray(x) - mean) / np.sqrt(biased + 1e-5)), rtol=1e-4, atol=1e-5)
    stats = updates["batch_stats"]
    np.testing.assert_allclose(stats["mean"], 0.1 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * unbiased, rtol=1e-5)
    assert int(stats["num_batches_tracked"]) == 1
    # Eval mode normalises with the running averages and changes nothing.
    y_eval, same = bn.apply(variables, x, train=False, mutable=["batch_stats"])
    np.testing.assert_allclose(y_eval, np.asarray(x) / np.sqrt(1 + 1e-5), rtol=1e-5)
    for key, value in same["batch_stats"].items():
        np.testing.assert_array_equal(value, variables["batch_stats"][key])


def test_batchnorm_cross_device_equals_global_batch():
    n_dev = 4
    x = jnp.asarray(np.random.default_rng(2).standard_normal((n_dev * 2, 2, 2, 3)), jnp.float32)
    bn = BatchNorm(axis_name="data")
    variables = BatchNorm().init(jax.random.key(0), x, train=False)

    def per_device(v, xs):
        return bn.apply(v, xs, train=True, mutable=["batch_stats"])

    y, upd = jax.pmap(per_device, axis_name="data", in_axes=(None, 0))(variables, x.reshape(n_dev, 2, 2, 2, 3))
    y_ref, upd_ref = BatchNorm().apply(variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(y.reshape(x.shape), y_ref, rtol=1e-5, atol=1e-6)
    for key in ("mean", "var"):
        for d in range(n_dev):
            np.testing.assert_allclose(upd["batch_stats"][key][d], upd_ref["batch_stats"][key], rtol=1e-5)


def test_bfloat16_keeps_float32_params_and_stats():
    model = jaxtl.create("resnet18", num_classes=3, dtype=jnp.bfloat16)
    x = jnp.ones((2, 32, 32, 3), jnp.float32)
    variables = model.init(jax.random.key(0), x)
    dtypes = {str(a.dtype) for a in jax.tree.leaves(variables) if a.ndim}
    assert dtypes == {"float32"}
    logits, upd = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert logits.dtype == jnp.bfloat16
    assert {str(a.dtype) for a in jax.tree.leaves(upd) if a.ndim} == {"float32"}


def test_registry_metadata_and_errors():
    names = list_models("resnet")
    assert len(names) == 10 and names[0] == "resnet18"
    for name in names:
        spec = get_spec(name)
        assert spec.head_path == spec.classifier == "fc" and spec.input_size == 224
        assert len(spec.preprocessing.mean) == 3 and spec.preprocessing.resize_size == 256
        assert callable(getattr(jaxtl.models, name))
    with pytest.raises(KeyError, match="resnet18"):
        jaxtl.create("resnet19")
    with pytest.raises(ValueError, match="num_classes"):
        jaxtl.create("resnet18", num_classes=-1)


def test_features_backbone_and_v1_option():
    x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 64, 64, 3)), jnp.float32)
    model = jaxtl.models.resnet50(num_classes=5)
    variables = model.init(jax.random.key(0), x)
    feats = model.apply(variables, x, return_features=True)
    shapes = {k: v.shape for k, v in feats.items()}
    assert shapes == {
        "stem": (2, 16, 16, 64),
        "layer1": (2, 16, 16, 256),
        "layer2": (2, 8, 8, 512),
        "layer3": (2, 4, 4, 1024),
        "layer4": (2, 2, 2, 2048),
        "pre_logits": (2, 2048),
        "logits": (2, 5),
    }
    backbone = jaxtl.create("resnet50", num_classes=0)
    bb_vars = {
        "params": {k: v for k, v in variables["params"].items() if k != "fc"},
        **{"batch_stats": variables["batch_stats"]},
    }
    np.testing.assert_array_equal(backbone.apply(bb_vars, x), feats["pre_logits"])
    # v1 puts the stride on the 1x1 conv: same parameters, different function.
    v1 = model.clone(stride_in_1x1=True)
    assert jax.tree.structure(v1.init(jax.random.key(0), x)) == jax.tree.structure(variables)
    assert not np.allclose(v1.apply(variables, x), feats["logits"])
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        model.apply(variables, jnp.zeros((2, 3, 64, 64)))


def test_cross_device_gradients_equal_single_device_in_float64():
    # In float32 a 1x1 layer4 map (16x16 input) leaves BatchNorm 2 values per channel per device, which amplifies
    # rounding so pmap and one-device gradients differ visibly; in float64 they must agree to rounding.
    with jax.enable_x64(True):
        model = jaxtl.create("resnet18", num_classes=5, dtype=jnp.float64)
        x = jnp.asarray(np.random.default_rng(4).standard_normal((8, 16, 16, 3)), jnp.float64)
        variables = model.init(jax.random.key(0), x)
        variables = jax.tree.map(lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a, variables)
        weights = jnp.arange(5, dtype=jnp.float64)[None, :]

        def loss(params, xs, module):
            out, _ = module.apply(
                {"params": params, "batch_stats": variables["batch_stats"]}, xs, train=True, mutable=["batch_stats"]
            )
            return jnp.sum(jnp.tanh(out) * weights)

        single = jax.jit(jax.grad(loss), static_argnums=2)(variables["params"], x, model)
        sharded = model.clone(axis_name="d")
        per_device = jax.pmap(
            lambda p, xs: jax.lax.psum(jax.grad(loss)(p, xs, sharded), "d"), axis_name="d", in_axes=(None, 0)
        )(variables["params"], x.reshape(4, 2, 16, 16, 3))
        for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(per_device)):
            assert a.dtype == jnp.float64
            np.testing.assert_allclose(b[0], a, rtol=0, atol=1e-11 * float(jnp.max(jnp.abs(a))) + 1e-300)
