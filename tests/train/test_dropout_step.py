"""The train step gives models with dropout (a ViT) or stochastic depth (ConvNeXt) their ``"dropout"`` rng: the
drop is drawn from the state's key (the same state and batch give the same step; the next step draws anew), each
device draws its own under shard_map, and a model without such layers is unaffected (tests/test_routes.py keeps
the ResNet routes bitwise)."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

from jaxtl.models import ConvNeXt, VisionTransformer, new_head, set_head
from jaxtl.train import Parallel, TrainState, train_step

MODELS = {
    "vit": VisionTransformer(
        image_size=16, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=16, num_classes=3
    ),
    "convnext": ConvNeXt(block_setting=((8, None, 2),), num_classes=3),
}
DROP = {"vit": dict(dropout=0.5, attention_dropout=0.5), "convnext": dict(stochastic_depth_prob=0.9)}
SIZE = {"vit": 16, "convnext": 32}


def _loss(par: Parallel, state: TrainState, batch: dict) -> float:
    _, metrics = par.map(train_step)(par.put_state(state), par.put_batch(batch))
    return float(par.get_metrics(metrics)["loss"])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_dropout_is_drawn_from_the_step_key(name: str) -> None:
    size = SIZE[name]
    module = MODELS[name].clone(**DROP[name])
    variables = jax.jit(module.init)(jax.random.key(0), np.zeros((1, size, size, 3), np.float32))
    # A ViT's zero head and ConvNeXt's 1e-6 layer scale would hide whether anything was dropped.
    variables = set_head(variables, new_head(module.num_features, 3, 1), module)
    variables = jax.tree_util.tree_map_with_path(
        lambda p, x: np.ones_like(x) if "layer_scale" in jax.tree_util.keystr(p) else x, variables
    )
    rng = np.random.default_rng(0)
    batch = {
        "images": rng.normal(size=(8, size, size, 3)).astype(np.float32),
        "labels": rng.integers(0, 3, 8).astype(np.int32),
    }
    one = Parallel("none")
    losses = {
        seed: _loss(one, TrainState.create(module, variables, optax.sgd(0.0), rng=seed), batch) for seed in (0, 1)
    }
    again = _loss(one, TrainState.create(module, variables, optax.sgd(0.0), rng=0), batch)
    assert losses[0] == again  # the same state and batch: the same drop
    assert losses[0] != losses[1]  # another key: another drop
    plain = MODELS[name]  # no dropout: the key changes nothing
    p_vars = jax.tree.map(np.asarray, variables)
    assert _loss(one, TrainState.create(plain, p_vars, optax.sgd(0.0), rng=0), batch) == _loss(
        one, TrainState.create(plain, p_vars, optax.sgd(0.0), rng=1), batch
    )
    sharded = _loss(Parallel("shard_map"), TrainState.create(module, variables, optax.sgd(0.0), rng=0), batch)
    assert np.isfinite(sharded) and sharded != losses[0]  # each device draws its own drop
