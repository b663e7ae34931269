"""ConvNet, Autoencoder and the autoencoder -> classifier transfer."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxtl
from jaxtl.data import load_digits
from jaxtl.models import Autoencoder, ConvNet, classifier_from_autoencoder, get_spec, list_models
from jaxtl.models.autoencoder import last_spatial_map

SMALL = dict(widths=(8, 16, 32))


@pytest.fixture(scope="module")
def digits():
    ds = load_digits(size=32, channels=1)
    return jnp.asarray(ds.images[:256])


def _paths(tree):
    return {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)}


def _make_step(ae, tx):
    @jax.jit
    def step(params, batch_stats, opt_state, x):
        def loss_fn(p):
            y, upd = ae.apply({"params": p, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"])
            return jnp.mean(jnp.square(y - x)), upd["batch_stats"]

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_stats, opt_state, loss

    return step


@pytest.fixture(scope="module")
def trained_convnet_ae(digits):
    """A small ConvNet autoencoder after 30 adam steps on digits, with its loss curve."""
    encoder = ConvNet(num_classes=0, **SMALL)
    ae = Autoencoder(encoder, out_channels=1, decoder_widths=(32, 16, 8))
    variables = jax.jit(ae.init)(jax.random.key(0), digits[:2])
    tx = optax.adam(3e-3)
    params, stats = variables["params"], variables["batch_stats"]
    opt_state = tx.init(params)
    step = _make_step(ae, tx)
    losses = []
    for i in range(30):
        x = digits[(i % 4) * 64 : (i % 4 + 1) * 64]
        params, stats, opt_state, loss = step(params, stats, opt_state, x)
        losses.append(float(loss))
    return encoder, ae, {"params": params, "batch_stats": stats}, losses


def test_convnet_reconstruction_loss_falls(trained_convnet_ae, digits):
    _, _, _, losses = trained_convnet_ae
    assert all(np.isfinite(losses))
    assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4]), losses
    # Better than the best input-independent output (the per-pixel mean image): it reconstructs, not just averages.
    mean_image_mse = float(jnp.mean(jnp.square(digits - digits.mean(axis=0, keepdims=True))))
    assert np.mean(losses[-4:]) < mean_image_mse, (losses, mean_image_mse)


def test_autoencoder_output_and_latent(trained_convnet_ae, digits):
    encoder, ae, variables, _ = trained_convnet_ae
    y = ae.apply(variables, digits[:3])
    assert y.shape == (3, 32, 32, 1) and y.dtype == jnp.float32
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0  # sigmoid output for [0, 1] inputs
    z = ae.apply(variables, digits[:3], method=Autoencoder.encode)
    assert z.shape == (3, encoder.num_features)
    assert set(variables["params"]) == {"encoder", "decoder"}


def test_classifier_from_autoencoder_keeps_encoder(trained_convnet_ae, digits):
    encoder, ae, variables, _ = trained_convnet_ae
    clf, cvars = classifier_from_autoencoder(variables, encoder, 10, jax.random.key(7))
    assert isinstance(clf, ConvNet) and clf.num_classes == 10 and clf.widths == SMALL["widths"]
    enc_p, enc_s = variables["params"]["encoder"], variables["batch_stats"]["encoder"]
    assert set(cvars["params"]) == set(enc_p) | {"fc"}
    body = {k: v for k, v in cvars["params"].items() if k != "fc"}
    jax.tree_util.tree_map(np.testing.assert_array_equal, enc_p, body)  # also fails if the trees differ
    jax.tree_util.tree_map(np.testing.assert_array_equal, enc_s, cvars["batch_stats"])
    assert cvars["params"]["fc"]["kernel"].shape == (32, 10)
    feats = clf.apply(cvars, digits[:3], return_features=True)
    assert feats["logits"].shape == (3, 10) and bool(jnp.all(jnp.isfinite(feats["logits"])))
    # The classifier's pre-logits are the autoencoder's latent: the encoder really was carried over.
    z = ae.apply(variables, digits[:3], method=Autoencoder.encode)
    np.testing.assert_array_equal(np.asarray(feats["pre_logits"]), np.asarray(z))


def test_classifier_from_autoencoder_errors(trained_convnet_ae):
    encoder, _, variables, _ = trained_convnet_ae
    with pytest.raises(ValueError, match="encoder"):
        classifier_from_autoencoder({"params": {"foo": {}}}, encoder, 10, jax.random.key(0))
    with pytest.raises(ValueError, match=r"do not match.*mis-shaped: \['stage3'\]\['bn1'\]"):
        classifier_from_autoencoder(variables, ConvNet(num_classes=0, widths=(8, 16, 64)), 10, jax.random.key(0))
    with pytest.raises(ValueError, match="num_classes"):
        classifier_from_autoencoder(variables, encoder, 0, jax.random.key(0))


def test_convnet_trees_differ_by_fc_only():
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    head = jax.eval_shape(functools.partial(ConvNet(num_classes=10).init, train=False), jax.random.key(0), x)
    body = jax.eval_shape(functools.partial(ConvNet(num_classes=0).init, train=False), jax.random.key(0), x)
    assert _paths(head["params"]) - _paths(body["params"]) == {"['fc']['bias']", "['fc']['kernel']"}
    assert _paths(body["params"]) < _paths(head["params"])
    assert _paths(head["batch_stats"]) == _paths(body["batch_stats"])
    assert head["params"]["fc"]["kernel"].shape == (128, 10)


def test_convnet_features_and_registry():
    spec = get_spec("convnet_small")
    assert "convnet_small" in list_models("convnet") and spec.family == "convnet" and spec.input_size == 32
    model = jaxtl.create("convnet_small", num_classes=0)
    assert isinstance(model, ConvNet) and model.num_features == spec.num_features == 128
    x = jnp.zeros((2, 32, 32, 3))
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
    feats = jax.eval_shape(lambda v: model.apply(v, x, return_features=True), variables)
    assert feats["stage1"].shape == (2, 16, 16, 32) and feats["stage3"].shape == (2, 4, 4, 128)
    assert feats["last_map"].shape == (2, 4, 4, 128)
    assert feats["pre_logits"].shape == feats["logits"].shape == (2, 128)
    with pytest.raises(ValueError, match="at least 8x8"):
        model.init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)))


def test_last_spatial_map_finds_layer4():
    model = jaxtl.create("resnet18", num_classes=0)
    x = jnp.zeros((1, 64, 64, 3))
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
    feats = jax.eval_shape(lambda v: model.apply(v, x, return_features=True), variables)
    assert last_spatial_map(feats) is feats["layer4"]
    ae = Autoencoder(model, image_size=48)
    out = jax.eval_shape(functools.partial(ae.init, train=False), jax.random.key(0), x)
    assert "layer4" in out["params"]["encoder"] and "fc" not in out["params"]["encoder"]
    y = jax.eval_shape(lambda v: ae.apply(v, x), out)
    assert y.shape == (1, 48, 48, 3)


def test_autoencoder_rejects_encoder_with_head():
    ae = Autoencoder(ConvNet(num_classes=10, **SMALL))
    with pytest.raises(ValueError, match="num_classes=0"):
        ae.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_resnet18_autoencoder_one_step(digits):
    encoder = jaxtl.create("resnet18", num_classes=0)
    ae = Autoencoder(encoder, decoder_widths=(32, 16))
    x = jnp.repeat(digits[:8], 3, axis=-1)
    # Jitted init: one persistent-cache hit instead of hundreds of eagerly compiled ops.
    variables = jax.jit(ae.init)(jax.random.key(0), x[:2])
    tx = optax.adam(1e-3)
    params, stats = variables["params"], variables["batch_stats"]
    new_params, new_stats, _, loss = _make_step(ae, tx)(params, stats, tx.init(params), x)
    assert np.isfinite(float(loss))
    # Jitted applies below: eager dispatch of a ResNet costs seconds per call on a loaded 2-core CPU.
    assert jax.jit(ae.apply)({"params": new_params, "batch_stats": new_stats}, x).shape == (8, 32, 32, 3)
    # The step moved the encoder and updated its BatchNorm statistics.
    assert not np.array_equal(new_params["encoder"]["conv1"]["kernel"], params["encoder"]["conv1"]["kernel"])
    assert int(new_stats["encoder"]["bn1"]["num_batches_tracked"]) == 1
    clf, cvars = classifier_from_autoencoder(
        {"params": new_params, "batch_stats": new_stats}, encoder, 4, jax.random.key(1)
    )
    assert clf.num_classes == 4 and cvars["params"]["fc"]["kernel"].shape == (512, 4)
    assert cvars["params"]["layer4"] is new_params["encoder"]["layer4"]
    assert jax.jit(clf.apply)(cvars, x[:2]).shape == (2, 4)
