"""One train step of a small ViT and a small ConvNeXt under pmap and jit+shard_map (4 fake devices) gives the
single-device numbers: LayerNorm models have no cross-device statistics, so only the gradient psum differs."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

from jaxtl.models import ConvNeXt, VisionTransformer
from jaxtl.train import Parallel, TrainState, train_step
from jaxtl.train.groups import ParamGroups

MODELS = {
    "vit": VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64, num_classes=5
    ),
    "convnext": ConvNeXt(block_setting=((8, 16, 1), (16, None, 2)), num_classes=5),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def steps(request):
    module = MODELS[request.param]
    rng = np.random.default_rng(0)
    variables = jax.jit(module.init)(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
    # No weight decay on norms, biases and embeddings, through a factory: these families' default groups.
    groups = ParamGroups.defaults(module)

    def factory(g):
        return optax.chain(optax.add_decayed_weights(1e-2 * g.weight_decay_scale), optax.sgd(0.1 * g.lr_scale, 0.9))

    batch = {
        "images": rng.normal(size=(8, 32, 32, 3)).astype(np.float32),
        "labels": rng.integers(0, 5, 8).astype(np.int32),
    }
    out = {}
    for kind in ("none", "pmap", "shard_map"):
        par = Parallel(kind)
        state = par.put_state(TrainState.create(module, variables, factory, rng=0, groups=groups))
        state, metrics = par.map(train_step)(state, par.put_batch(batch))
        out[kind] = (par.get_state(state), par.get_metrics(metrics))
    return jax.device_get(variables), out


def _max_diff(a, b) -> float:
    diffs = jax.tree.map(lambda x, y: float(np.max(np.abs(np.float64(x) - np.float64(y)))), a, b)
    return max(jax.tree.leaves(diffs))


@pytest.mark.parametrize("kind", ["pmap", "shard_map"])
def test_parallel_step_equals_single_device(steps, kind) -> None:
    variables, out = steps
    ref_state, ref_metrics = out["none"]
    state, metrics = out[kind]
    assert not ref_state.batch_stats and _max_diff(variables["params"], ref_state.params) > 1e-4  # it did move
    assert _max_diff(ref_state.params, state.params) < 1e-5
    assert abs(ref_metrics["loss"] - metrics["loss"]) < 1e-5 * max(1.0, abs(ref_metrics["loss"]))
    assert int(state.step) == 1
