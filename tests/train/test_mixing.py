"""Mixup/CutMix: torchvision's v2.MixUp and v2.CutMix on the same lambda and box give the same images and targets;
the draw depends on the key alone, and 1 and 4 devices mix the global batch identically."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tiny import Tiny, tiny_variables

from jaxtl.train import Parallel, TrainState, train_step
from jaxtl.train.losses import CrossEntropy, mixed_targets
from jaxtl.train.mixing import MixDraw, Mixing, apply, cutmix_box, draw, mix_batch

torch = pytest.importorskip("torch")
v2 = pytest.importorskip("torchvision.transforms.v2")

K, N, H, W = 6, 8, 12, 10  # H != W catches a swapped box axis


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    return rng.normal(size=(N, H, W, 3)).astype(np.float32), rng.integers(0, K, N).astype(np.int32)


def _torch_run(transform, images, labels):
    out_images, out_labels = transform(torch.tensor(images).permute(0, 3, 1, 2), torch.tensor(labels).long())
    return out_images.permute(0, 2, 3, 1).numpy(), out_labels.numpy()


def _ours(images, labels, params):
    mixed, partner = jax.jit(apply, static_argnums=3)(images, labels, params, None)
    return np.asarray(mixed), np.asarray(mixed_targets(labels, partner, params.lam, K))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixup_matches_torchvision(batch, seed, monkeypatch):
    images, labels = batch
    params = draw(jax.random.PRNGKey(seed), Mixing(mixup_alpha=0.4), H, W)
    assert not bool(params.cutmix)
    lam = float(params.lam)
    mixup = v2.MixUp(alpha=0.4, num_classes=K)
    monkeypatch.setattr(mixup._dist, "sample", lambda *a, **k: torch.tensor([lam]))
    want_images, want_targets = _torch_run(mixup, images, labels)
    got_images, got_targets = _ours(images, labels, params)
    np.testing.assert_allclose(got_images, want_images, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got_targets, want_targets, rtol=1e-6, atol=1e-7)
    # ... and by torchvision's formula written out: the batch rolled by one, weighted 1 - lam.
    np.testing.assert_allclose(got_images, np.roll(images, 1, 0) * (1 - lam) + images * lam, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_cutmix_matches_torchvision(batch, seed, monkeypatch):
    images, labels = batch
    k_lam, k_x, k_y = jax.random.split(jax.random.PRNGKey(seed), 3)
    lam = jax.random.beta(k_lam, 1.0, 1.0, ())
    r_x, r_y = jax.random.randint(k_x, (), 0, W), jax.random.randint(k_y, (), 0, H)
    box, lam_box = cutmix_box(lam, r_x, r_y, H, W)
    params = MixDraw(lam_box, jnp.asarray(True), box)
    cutmix = v2.CutMix(alpha=1.0, num_classes=K)
    monkeypatch.setattr(cutmix._dist, "sample", lambda *a, **k: torch.tensor([float(lam)]))
    centres = iter([int(r_x), int(r_y)])  # torchvision draws r_x then r_y with torch.randint
    monkeypatch.setattr(torch, "randint", lambda high, size: torch.tensor([next(centres)]))
    want_images, want_targets = _torch_run(cutmix, images, labels)
    got_images, got_targets = _ours(images, labels, params)
    np.testing.assert_array_equal(got_images, want_images)
    np.testing.assert_allclose(got_targets, want_targets, rtol=1e-6, atol=1e-7)


def test_cutmix_box_is_torchvisions_formula():
    """torchvision's make_params by hand (float64, Python int()) over many lambdas and centres."""
    rng = np.random.default_rng(0)
    lams = rng.beta(0.5, 0.5, 400).astype(np.float32)
    for h, w in ((12, 10), (224, 224), (7, 31)):
        r_x, r_y = rng.integers(0, w, 400), rng.integers(0, h, 400)
        box, lam_box = jax.jit(jax.vmap(cutmix_box, (0, 0, 0, None, None)), static_argnums=(3, 4))(
            lams, r_x.astype(np.int32), r_y.astype(np.int32), h, w
        )
        for i in range(len(lams)):
            r = 0.5 * math.sqrt(1.0 - float(lams[i]))
            rw, rh = int(r * w), int(r * h)
            want = (max(r_x[i] - rw, 0), max(r_y[i] - rh, 0), min(r_x[i] + rw, w), min(r_y[i] + rh, h))
            assert tuple(int(b[i]) for b in box) == want
            area = (want[2] - want[0]) * (want[3] - want[1])
            np.testing.assert_allclose(float(lam_box[i]), 1.0 - area / (w * h), rtol=1e-6)


def test_draws_follow_random_choice_and_beta():
    keys = jax.random.split(jax.random.PRNGKey(0), 4000)
    both = jax.jit(jax.vmap(functools.partial(draw, mixing=Mixing(0.2, 1.0), height=H, width=W)))(keys)
    frac = float(np.mean(np.asarray(both.cutmix)))
    assert 0.46 < frac < 0.54, frac  # v2.RandomChoice: each with probability 1/2
    lam_mix = np.asarray(both.lam)[~np.asarray(both.cutmix)]
    # Beta(0.2, 0.2): mean 1/2, variance 1/(4 (2 alpha + 1)) = 0.179; finite and in [0, 1].
    assert np.all(np.isfinite(lam_mix)) and np.all((lam_mix >= 0) & (lam_mix <= 1))
    assert abs(lam_mix.mean() - 0.5) < 0.03 and abs(lam_mix.var() - 1 / 5.6) < 0.02
    only_mixup = jax.jit(jax.vmap(functools.partial(draw, mixing=Mixing(mixup_alpha=1.0), height=H, width=W)))(keys)
    assert not np.any(np.asarray(only_mixup.cutmix))
    for bad in ({"mixup_alpha": -1.0}, {"cutmix_alpha": float("nan")}, {}):
        with pytest.raises(ValueError, match="alpha"):
            Mixing(**bad)


def test_four_devices_mix_the_global_batch_as_one(batch):
    """The roll crosses device boundaries: pmap over 4 shards gives the single-device mixed batch exactly."""
    images, labels = batch
    mixing = Mixing(0.2, 1.0)
    one_fn = jax.jit(lambda k, x, y: mix_batch(k, x, y, mixing, None))
    four_fn = jax.pmap(lambda k, x, y: mix_batch(k, x, y, mixing, "d"), axis_name="d", in_axes=(None, 0, 0))
    shards = images.reshape(4, N // 4, H, W, 3), labels.reshape(4, N // 4)
    for seed in range(4):  # both methods get drawn
        key = jax.random.PRNGKey(seed)
        one, four = one_fn(key, images, labels), four_fn(key, *shards)
        np.testing.assert_array_equal(np.asarray(four[0]).reshape(images.shape), np.asarray(one[0]))
        np.testing.assert_array_equal(np.asarray(four[1]["mix_labels"]).reshape(-1), np.asarray(one[1]["mix_labels"]))
        np.testing.assert_array_equal(np.asarray(four[1]["mix_lam"]), np.full(4, np.asarray(one[1]["mix_lam"])))
    np.testing.assert_array_equal(np.asarray(one[1]["mix_labels"]), np.roll(labels, 1))


@pytest.fixture(scope="module")
def mixed_steps():
    module = Tiny(num_classes=K)
    variables = tiny_variables(module)
    rng = np.random.default_rng(1)
    data = {
        "images": rng.normal(size=(N, 16, 16, 3)).astype(np.float32),
        "labels": rng.integers(0, K, N).astype(np.int32),
    }
    mix = Mixing(1.0, 1.0)  # lam uniform: far from the unmixed batch
    out = {}
    for kind in ("none", "pmap", "shard_map"):
        par = Parallel(kind)
        state = par.put_state(TrainState.create(module, variables, optax.sgd(0.1), rng=0))
        step = par.map(functools.partial(train_step, loss=CrossEntropy(mixing=mix)))
        history = []
        for _ in range(3):
            state, metrics = step(state, par.put_batch(data))
            history.append(par.get_metrics(metrics))
        out[kind] = (par.get_state(state), history)
    plain = TrainState.create(module, variables, optax.sgd(0.1), rng=0)
    _, plain_metrics = jax.jit(functools.partial(train_step, axis_name=None))(plain, data)
    return out, float(plain_metrics["loss"])


def test_mixed_step_is_device_count_independent(mixed_steps):
    out, plain_loss = mixed_steps
    ref_state, ref_hist = out["none"]
    for kind in ("pmap", "shard_map"):
        state, hist = out[kind]
        for a, b in zip(ref_hist, hist):
            np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
            assert a["top1"] == b["top1"]
        np.testing.assert_allclose(
            np.asarray(state.params["fc"]["kernel"]), np.asarray(ref_state.params["fc"]["kernel"]), atol=1e-5
        )
    # Mixing did something: the first step's loss differs from the unmixed step's on the same batch.
    assert abs(ref_hist[0]["loss"] - plain_loss) > 1e-3


def test_mixing_refuses_masks_and_non_mixings():
    module = Tiny(num_classes=K)
    state = TrainState.create(module, tiny_variables(module), optax.sgd(0.1), rng=0)
    batch = {"images": np.zeros((2, 16, 16, 3), np.float32), "labels": np.zeros(2, np.int32)}
    loss = CrossEntropy(mixing=Mixing(1.0))
    with pytest.raises(ValueError, match="whole training batches"):
        jax.eval_shape(functools.partial(train_step, axis_name=None, loss=loss), state, {**batch, "mask": np.ones(2)})
    with pytest.raises(TypeError, match=r"mixing must be a jaxtl\.train\.mixing\.Mixing"):
        CrossEntropy(mixing=(0.2, 1.0))
