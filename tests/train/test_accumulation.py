"""Gradient accumulation: N micro-batches make the update of one batch N times larger (a model without BatchNorm),
schedules count optimizer steps, frozen groups stay exactly frozen and hold no accumulator, a checkpoint taken
mid-accumulation resumes exactly, and the optimizer check still probes the real optimizer."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from jaxtl.train import TrainState, make_optimizer, train_step

K, N_MICRO, MICRO = 4, 4, 2


class MLP(nn.Module):
    """No BatchNorm: per-example gradients average exactly, whatever the batch split."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Dense(16, name="hidden")(x.reshape(x.shape[0], -1)))
        return nn.Dense(K, name="fc")(x)


@pytest.fixture(scope="module")
def setup():
    module = MLP()
    variables = module.init(jax.random.PRNGKey(0), np.zeros((1, 4, 4, 3), np.float32))
    rng = np.random.default_rng(0)
    big = [
        {
            "images": rng.normal(size=(N_MICRO * MICRO, 4, 4, 3)).astype(np.float32),
            "labels": rng.integers(0, K, N_MICRO * MICRO).astype(np.int32),
        }
        for _ in range(3)
    ]
    # The schedule warms up over 1 and decays over 4 *optimizer* steps: counting micro-steps would change it.
    tx = make_optimizer("sgd", lr=0.2, momentum=0.9, weight_decay=1e-3, warmup_steps=1, total_steps=4, clip_norm=1.0)
    return module, variables, big, tx


def _micro(batch):
    return [{k: v[i * MICRO : (i + 1) * MICRO] for k, v in batch.items()} for i in range(N_MICRO)]


_step = jax.jit(functools.partial(train_step, axis_name=None))


def _train(state, batches):
    for b in batches:
        state, _ = _step(state, b)
    return state


def _assert_close(a, b, rtol=2e-5, atol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize("groups", [None, "^fc/"])
def test_accumulated_updates_equal_big_batch_steps(setup, groups):
    module, variables, big, tx = setup
    big_state = _train(TrainState.create(module, variables, tx, groups=groups), big)
    acc = TrainState.create(module, variables, tx, groups=groups, accumulate=N_MICRO)
    micro = [m for b in big for m in _micro(b)]
    for i in range(N_MICRO - 1):  # nothing moves until the N-th micro-batch
        acc, _ = _step(acc, micro[i])
        _assert_close(acc.params, variables["params"], rtol=0, atol=0)
    acc = _train(acc, micro[N_MICRO - 1 :])
    assert int(acc.step) == len(micro)
    _assert_close(acc.params, big_state.params)
    assert np.max(np.abs(np.asarray(acc.params["fc"]["kernel"] - variables["params"]["fc"]["kernel"]))) > 1e-3
    if groups is not None:  # the frozen layer did not move at all, and has no accumulator
        np.testing.assert_array_equal(
            np.asarray(acc.params["hidden"]["kernel"]), variables["params"]["hidden"]["kernel"]
        )
        paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(acc.opt_state)[0]]
        assert any("acc_grads" in p and "fc" in p for p in paths)
        assert not any("acc_grads" in p and "hidden" in p for p in paths), paths


def test_resume_mid_accumulation_is_exact(setup):
    module, variables, big, tx = setup
    micro = [m for b in big[:2] for m in _micro(b)]

    def fresh():
        return TrainState.create(module, variables, tx, accumulate=N_MICRO)

    straight = _train(fresh(), micro)
    part = _train(fresh(), micro[:6])  # 1 update done, 2 micro-batches of the next accumulated
    restored = jax.tree.unflatten(jax.tree.structure(fresh()), [np.array(x) for x in jax.tree.leaves(part)])
    resumed = _train(restored, micro[6:])
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_optimizer_check_probes_the_inner_optimizer(setup):
    """An optimizer freezing a trainable leaf on its own is refused with accumulation too (MultiSteps' first update
    is zero everywhere, so the state probes the optimizer before wrapping it)."""
    module, variables, _, _ = setup
    labels = {"hidden": {"bias": "a", "kernel": "a"}, "fc": {"bias": "z", "kernel": "a"}}
    sneaky = optax.partition({"a": optax.sgd(0.1), "z": optax.set_to_zero()}, labels)
    with pytest.raises(ValueError, match="freezes leaves on its own"):
        TrainState.create(module, variables, sneaky, accumulate=N_MICRO)
    with pytest.raises(ValueError, match="int >= 1"):
        TrainState.create(module, variables, optax.sgd(0.1), accumulate=0)
