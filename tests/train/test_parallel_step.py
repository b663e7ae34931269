"""One step under pmap, jit+shard_map and on one device agree; eval metrics are exact on a ragged last batch."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from tiny import Tiny, tiny_dataset, tiny_variables

import jaxtl
from jaxtl.train import Parallel, TrainState, evaluate, train_step

KINDS = ("none", "pmap", "shard_map")


@pytest.fixture(scope="module")
def resnet_steps():
    """resnet18 at 64x64, one SGD-momentum step over the same global batch of 8 under each wrapper."""
    module = jaxtl.create("resnet18", num_classes=10)
    variables = module.init(jax.random.PRNGKey(0), np.zeros((1, 64, 64, 3), np.float32), train=False)
    rng = np.random.default_rng(0)
    batch = {
        "images": rng.normal(size=(8, 64, 64, 3)).astype(np.float32),
        "labels": rng.integers(0, 10, 8).astype(np.int32),
    }
    out = {}
    for kind in KINDS:
        par = Parallel(kind)
        state = par.put_state(TrainState.create(module, variables, optax.sgd(0.1, momentum=0.9), rng=0))
        state, metrics = par.map(train_step)(state, par.put_batch(batch))
        out[kind] = (par.get_state(state), par.get_metrics(metrics))
    return jax.device_get(variables), out


def _max_diff(a, b) -> float:
    diffs = jax.tree.map(lambda x, y: float(np.max(np.abs(np.float64(x) - np.float64(y)))), a, b)
    return max(jax.tree.leaves(diffs))


@pytest.mark.parametrize("kind", ["pmap", "shard_map"])
def test_parallel_step_equals_single_device(resnet_steps, kind):
    _, out = resnet_steps
    ref_state, ref_metrics = out["none"]
    state, metrics = out[kind]
    assert _max_diff(ref_state.params, state.params) < 1e-5
    assert _max_diff(ref_state.batch_stats, state.batch_stats) < 1e-5
    assert abs(ref_metrics["loss"] - metrics["loss"]) < 1e-5 * max(1.0, abs(ref_metrics["loss"]))
    assert int(state.step) == 1
    np.testing.assert_array_equal(ref_state.rng, state.rng)


def test_step_moves_params_and_statistics(resnet_steps):
    variables, out = resnet_steps
    state, _ = out["none"]
    # Guard against a vacuous equivalence: the step did change things, statistics included.
    assert _max_diff(variables["params"], state.params) > 1e-4
    assert _max_diff(variables["batch_stats"]["bn1"], state.batch_stats["bn1"]) > 1e-4
    assert int(state.batch_stats["bn1"]["num_batches_tracked"]) == 1


def test_cross_device_batchnorm_uses_global_batch():
    """Per-device statistics (no axis) differ from the global-batch ones the step computes."""
    module = Tiny()
    variables = tiny_variables(module)
    data = tiny_dataset(8)
    batch = {"images": data.images, "labels": data.labels.astype(np.int32)}
    par = Parallel("pmap")
    step = par.map(train_step, donate=False)
    base = par.put_state(TrainState.create(module, variables, optax.sgd(0.1), rng=0))
    shard = par.put_batch(batch)
    synced, _ = step(base, shard)
    unsynced, _ = jax.pmap(lambda s, b: train_step(s, b, axis_name=None))(base, shard)
    means = np.asarray(synced.batch_stats["bn1"]["mean"])
    assert np.all(means == means[0]), "replicas must hold identical statistics"
    own = np.asarray(unsynced.batch_stats["bn1"]["mean"])
    assert not np.allclose(own[0], own[1]), "without the axis each device sees only its own shard"
    np.testing.assert_allclose(means[0], own.mean(axis=0), rtol=1e-5, atol=1e-6)


def test_batch_not_divisible_by_devices_is_a_clear_error():
    par = Parallel("shard_map")
    with pytest.raises(ValueError, match="not divisible by the 4 devices"):
        par.put_batch({"images": np.zeros((6, 4, 4, 3), np.float32)})


@pytest.mark.parametrize("kind", ["pmap", "shard_map"])
def test_eval_on_ragged_dataset_equals_numpy_count(kind):
    module = Tiny(num_classes=7)
    variables = tiny_variables(module, seed=1)
    data = tiny_dataset(n=37, num_classes=7, seed=2)  # 37 = 4 full batches of 8 + 5
    state = TrainState.create(module, variables, optax.sgd(0.1), rng=0)
    par = Parallel(kind)
    metrics = evaluate(par.put_state(state), data, batch_size=8, par=par)
    logits = np.asarray(module.apply(variables, data.images, train=False), np.float64)
    labels = data.labels
    top1 = np.sum(np.argmax(logits, -1) == labels)
    top5 = np.sum(np.any(np.argsort(-logits, -1)[:, :5] == labels[:, None], axis=-1))
    logp = (
        logits
        - np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1, keepdims=True))
        - logits.max(-1, keepdims=True)
    )
    assert metrics["count"] == 37
    assert metrics["top1"] == top1 / 37
    assert metrics["top5"] == top5 / 37
    assert metrics["top1"] < metrics["top5"] < 1.0  # the checks above compare non-trivial numbers
    assert metrics["loss"] == pytest.approx(-np.mean(logp[np.arange(37), labels]), rel=1e-5)


def test_autoencoder_encoder_statistics_are_cross_device():
    # The encoder is a field of the Autoencoder: its BatchNorms must average over devices too, so the replicas
    # hold the statistics a single device computes on the whole batch.
    from jaxtl.models import Autoencoder, ConvNet

    module = Autoencoder(ConvNet(num_classes=0, widths=(4, 8)), out_channels=3, decoder_widths=(8,))
    images = np.random.default_rng(1).uniform(size=(8, 16, 16, 3)).astype(np.float32)
    variables = module.init(jax.random.PRNGKey(0), images[:1], train=False)
    stats = {}
    for kind in KINDS:
        par = Parallel(kind)
        state = par.put_state(TrainState.create(module, variables, optax.sgd(0.1), rng=0))
        state, _ = par.map(jax.tree_util.Partial(train_step, loss="mse"))(state, par.put_batch({"images": images}))
        stats[kind] = jax.device_get(state.batch_stats)
        if kind == "pmap":  # every replica the same
            for leaf in jax.tree.leaves(stats[kind]):
                assert all(np.array_equal(leaf[0], leaf[d]) for d in range(leaf.shape[0]))
        stats[kind] = par.get_state(state).batch_stats
    for kind in ("pmap", "shard_map"):
        assert _max_diff(stats[kind]["encoder"], stats["none"]["encoder"]) < 1e-5
