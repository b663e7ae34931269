"""Weight EMA: equal to a plain numpy EMA of the parameters and BatchNorm statistics (warm-up and every-k rules),
the same on 4 devices as on one, frozen leaves untouched, and exact across a checkpoint round trip."""

from __future__ import annotations

import functools

import jax
import numpy as np
import optax
import pytest
from flax import traverse_util
from tiny import Tiny, tiny_variables

from jaxtl.train import Parallel, ParamGroups, TrainState, train_step
from jaxtl.train.ema import EMA, torchvision_decay

STEPS = 7


def _flat(tree) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(dict(tree)), sep="/").items()}


def _batches(n_steps: int, size: int = 8):
    rng = np.random.default_rng(0)
    return [
        {
            "images": rng.normal(size=(size, 16, 16, 3)).astype(np.float32),
            "labels": rng.integers(0, 5, size).astype(np.int32),
        }
        for _ in range(n_steps)
    ]


def _run(config: EMA | None, groups=None, n_steps: int = STEPS, kind: str = "none", accumulate: int = 1):
    module = Tiny()
    par = Parallel(kind)
    tx = optax.sgd(0.1, momentum=0.9)
    state = TrainState.create(
        module, tiny_variables(module), tx, rng=0, groups=groups, ema=config, accumulate=accumulate
    )
    trace = [(_flat(state.params), _flat(state.batch_stats))]
    emas = []
    step = par.map(train_step, donate=False)
    placed = par.put_state(state)
    for batch in _batches(n_steps):
        placed, _ = step(placed, par.put_batch(batch))
        host = par.get_state(placed)
        trace.append((_flat(host.params), _flat(host.batch_stats)))
        emas.append(host.ema_variables if config is not None else None)
    return trace, emas, par.get_state(placed)


def _numpy_ema(trace, config: EMA):
    """ema_0 = initial weights; after step s (1-based) with s % every == 0: ema = d ema + (1 - d) current, with
    d = min(decay, (1 + n) / (10 + n)) for the n-th update (warm-up) or d = decay; float64."""
    params = {k: v.astype(np.float64) for k, v in trace[0][0].items()}
    stats = {k: v.astype(np.float64) for k, v in trace[0][1].items()}
    out = []
    n = 0
    for s in range(1, len(trace)):
        if s % config.every == 0:
            d = min(config.decay, (1 + n) / (10 + n)) if config.warmup else config.decay
            cur_p, cur_s = trace[s]
            params = {k: d * v + (1 - d) * cur_p[k] for k, v in params.items()}
            stats = {k: (cur_s[k] if "num_batches" in k else d * v + (1 - d) * cur_s[k]) for k, v in stats.items()}
            n += 1
        out.append((params, stats))
    return out


@pytest.mark.parametrize("config", [EMA(decay=0.9, warmup=True, every=2), EMA(decay=0.6, warmup=False, every=1)])
def test_ema_equals_numpy_reference(config):
    trace, emas, _ = _run(config)
    reference = _numpy_ema(trace, config)
    for s, (got, (want_p, want_s)) in enumerate(zip(emas, reference), start=1):
        got_p, got_s = _flat(got["params"]), _flat(got["batch_stats"])
        assert got_p.keys() == want_p.keys() and got_s.keys() == want_s.keys()
        for k in want_p:
            np.testing.assert_allclose(got_p[k], want_p[k], rtol=2e-6, atol=1e-7, err_msg=f"step {s}: {k}")
        for k in want_s:
            np.testing.assert_allclose(got_s[k], want_s[k], rtol=2e-6, atol=1e-7, err_msg=f"step {s}: {k}")
    # Not vacuous: the average lags the model, and between updates (every=2) it does not move at all.
    last_p = _flat(emas[-1]["params"])
    assert max(np.max(np.abs(last_p[k] - trace[-1][0][k])) for k in last_p) > 1e-4
    if config.every == 2:
        for a, b in zip(jax.tree.leaves(emas[1]), jax.tree.leaves(emas[2])):
            np.testing.assert_array_equal(a, b)


def test_ema_counts_optimizer_steps_under_accumulation():
    """With 2 micro-batches per optimizer step, EMA(every=1) updates after micro-steps 2, 4, 6: the reference of
    EMA(every=2) over micro-steps (the BatchNorm statistics still move every micro-step)."""
    trace, emas, _ = _run(EMA(decay=0.5, warmup=True, every=1), n_steps=6, accumulate=2)
    reference = _numpy_ema(trace, EMA(decay=0.5, warmup=True, every=2))
    for got, (want_p, want_s) in zip(emas, reference):
        for k, v in _flat(got["params"]).items():
            np.testing.assert_allclose(v, want_p[k], rtol=2e-6, atol=1e-7)
        for k, v in _flat(got["batch_stats"]).items():
            np.testing.assert_allclose(v, want_s[k], rtol=2e-6, atol=1e-7)


def test_ema_on_four_devices_equals_one():
    config = EMA(decay=0.8, every=1)
    _, emas_one, _ = _run(config, n_steps=3)
    _, emas_four, _ = _run(config, n_steps=3, kind="pmap")
    for a, b in zip(jax.tree.leaves(emas_one[-1]), jax.tree.leaves(emas_four[-1])):
        np.testing.assert_allclose(np.asarray(b, np.float64), np.asarray(a, np.float64), rtol=1e-5, atol=1e-6)


def test_frozen_leaves_are_not_averaged():
    trace, emas, final = _run(EMA(decay=0.5, warmup=False), groups=ParamGroups.head_only(), n_steps=2)
    assert set(_flat(final.ema["params"])) == {"fc/bias", "fc/kernel"}
    assert final.ema["batch_stats"] == {}  # a frozen backbone runs BatchNorm on running averages
    got = _flat(emas[-1]["params"])
    for k, v in trace[0][0].items():
        if not k.startswith("fc/"):
            np.testing.assert_array_equal(got[k], v)  # bit-identical: taken from the model, not averaged
    np.testing.assert_array_equal(_flat(emas[-1]["batch_stats"])["bn1/mean"], trace[0][1]["bn1/mean"])
    assert not np.array_equal(got["fc/kernel"], trace[-1][0]["fc/kernel"])


def test_off_adds_no_leaves():
    module = Tiny()
    state = TrainState.create(module, tiny_variables(module), optax.sgd(0.1), rng=0)
    assert state.ema is None and state.lr_scale is None and state.accumulate == 1
    base = (state.params, state.batch_stats, state.opt_state, state.step, state.rng)
    assert len(jax.tree.leaves(state)) == len(jax.tree.leaves(base))
    with pytest.raises(ValueError, match="keeps no weight EMA"):
        _ = state.ema_variables


def test_resume_mid_run_is_exact():
    """Checkpoints store the state's leaves and restore them into a fresh state's tree (as the run store does):
    2 steps, round trip, 2 more equals 4 steps straight, EMA included, bit for bit."""
    module = Tiny()
    variables = tiny_variables(module)
    config = EMA(decay=0.7, every=2)

    def fresh():
        return TrainState.create(module, variables, optax.sgd(0.1, momentum=0.9), rng=0, ema=config)

    step = jax.jit(functools.partial(train_step, axis_name=None))
    batches = _batches(4)
    straight = fresh()
    for b in batches:
        straight, _ = step(straight, b)
    resumed = fresh()
    for b in batches[:3]:  # stop after step 3: between EMA updates
        resumed, _ = step(resumed, b)
    leaves = [np.array(x) for x in jax.tree.leaves(resumed)]
    resumed = jax.tree.unflatten(jax.tree.structure(fresh()), leaves)
    resumed, _ = step(resumed, batches[3])
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_config_checks_and_torchvision_decay():
    for bad in ({"decay": 1.0}, {"decay": -0.1}, {"every": 0}, {"every": 1.5}):
        with pytest.raises(ValueError):
            EMA(**bad)
    # torchvision's reference: --model-ema-decay 0.99998, --model-ema-steps 32, batch 32 x 8 GPUs, 600 epochs.
    assert torchvision_decay(0.99998, 32, 256, 600) == pytest.approx(1 - 0.00002 * 256 * 32 / 600)
    assert torchvision_decay(0.9, 32, 256, 1) == 0.0
