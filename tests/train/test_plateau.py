"""Reduce-on-plateau equals torch's ReduceLROnPlateau on the same metric sequence; early stopping follows Keras's
rule; both resume exactly from their JSON state; the state's lr_scale scales the step's updates."""

from __future__ import annotations

import functools
import json

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from jaxtl.train import Parallel, TrainState, train_step
from jaxtl.train.plateau import EarlyStopping, ReduceLROnPlateau, set_lr_scale

SEQUENCE = [1.0, 0.9, 0.95, 0.9, 0.91, 0.92, 0.899995, 0.93, 0.85, 0.86, 0.87, 0.88, 0.89, 0.9, 0.91, float("nan"), 0.7]


@pytest.mark.parametrize(
    "mode, relative, min_delta, patience, cooldown",
    [("min", True, 1e-4, 2, 0), ("min", False, 0.01, 1, 2), ("max", True, 0.0, 0, 1), ("max", False, 0.02, 3, 0)],
)
def test_reduce_on_plateau_matches_torch(mode, relative, min_delta, patience, cooldown):
    torch = pytest.importorskip("torch")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt,
        mode=mode,
        factor=0.5,
        patience=patience,
        threshold=min_delta,
        threshold_mode="rel" if relative else "abs",
        cooldown=cooldown,
        min_lr=0.1,
    )
    ours = ReduceLROnPlateau(
        mode=mode,
        factor=0.5,
        patience=patience,
        min_delta=min_delta,
        relative=relative,
        cooldown=cooldown,
        min_scale=0.1,
    )
    values = SEQUENCE if mode == "min" else [-v for v in SEQUENCE]
    scales = []
    for v in values:
        ref.step(v)
        scales.append((ours.update(v), opt.param_groups[0]["lr"]))
    for got, want in scales:
        assert got == pytest.approx(want, rel=1e-12)
    assert min(s for s, _ in scales) < 1.0  # not vacuous: it did reduce


def test_early_stopping_keras_rule():
    stop = EarlyStopping(mode="min", patience=3)
    decisions = [stop.update(v) for v in [1.0, 0.9, 0.95, 0.91, 0.89, 0.9, 0.9, 0.9]]
    assert decisions == [False] * 7 + [True]  # stops at the third evaluation in a row without improvement
    assert stop.best == 0.89
    assert stop.update(0.5)  # a stop stays a stop
    guarded = EarlyStopping(mode="max", patience=1, min_delta=0.05)
    assert [guarded.update(v) for v in [0.5, 0.54]] == [False, True]  # +0.04 is not an improvement of 0.05
    with pytest.raises(ValueError, match="mode must be one of"):
        EarlyStopping(mode="lower")
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=-1)


@pytest.mark.parametrize("cls", [EarlyStopping, ReduceLROnPlateau])
def test_json_state_resumes_exactly(cls):
    kwargs = {"patience": 2, "mode": "min"}
    straight, first = cls(**kwargs), cls(**kwargs)
    out = [straight.update(v) for v in SEQUENCE]
    part = [first.update(v) for v in SEQUENCE[:7]]
    saved = json.loads(json.dumps(first.state_dict()))
    second = cls(**kwargs)
    second.load_state_dict(saved)
    assert part + [second.update(v) for v in SEQUENCE[7:]] == out
    assert second.state_dict() == straight.state_dict()
    with pytest.raises(ValueError, match="patience=2, this run 5"):
        cls(patience=5).load_state_dict(saved)


class Linear(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(3, name="fc")(x.reshape(x.shape[0], -1))


@pytest.mark.parametrize("kind", ["none", "pmap"])
def test_lr_scale_scales_the_update(kind):
    module = Linear()
    variables = module.init(jax.random.PRNGKey(0), np.zeros((1, 2, 2, 1), np.float32))
    rng = np.random.default_rng(0)
    batch = {
        "images": rng.normal(size=(8, 2, 2, 1)).astype(np.float32),
        "labels": rng.integers(0, 3, 8).astype(np.int32),
    }
    par = Parallel(kind)
    step = par.map(functools.partial(train_step), donate=False)
    full = par.put_state(TrainState.create(module, variables, optax.sgd(0.5), lr_scale=1.0))
    quarter = set_lr_scale(full, 0.25)
    assert np.shape(quarter.lr_scale) == np.shape(full.lr_scale)
    moved = {}
    for name, state in (("full", full), ("quarter", quarter)):
        new, _ = step(state, par.put_batch(batch))
        moved[name] = np.asarray(par.get_state(new).params["fc"]["kernel"]) - variables["params"]["fc"]["kernel"]
    np.testing.assert_allclose(moved["quarter"], 0.25 * moved["full"], rtol=1e-5, atol=1e-8)
    assert np.max(np.abs(moved["full"])) > 1e-3
    with pytest.raises(ValueError, match="no lr_scale"):
        set_lr_scale(TrainState.create(module, variables, optax.sgd(0.5)), 0.5)
