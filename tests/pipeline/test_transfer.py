"""pretrain_autoencoder / build_classifier / finetune / evaluate_classifier, and a small run_demo end to end."""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtl.data import ArrayDataset, load_digits, train_test_split
from jaxtl.demo import ARMS, DemoConfig, run_demo
from jaxtl.models import ConvNet
from jaxtl.train.losses import mse
from jaxtl.transfer import (
    _corrupt_fn,
    build_classifier,
    evaluate_classifier,
    finetune,
    parse_denoise,
    pretrain_autoencoder,
)

WIDTHS = (8, 16)


@pytest.fixture(scope="module")
def split() -> tuple[ArrayDataset, ArrayDataset]:
    return train_test_split(load_digits(size=16, channels=1), 0.25, seed=0)


@pytest.fixture(scope="module")
def pretrained(split):
    return pretrain_autoencoder(
        ConvNet(num_classes=0, widths=WIDTHS),
        split[0],
        steps=40,
        batch_size=64,
        lr=3e-3,
        denoise=("noise", 0.2),
        decoder_widths=(16, 8),
        progress=False,
    )


def test_reconstruction_loss_falls(pretrained) -> None:
    _, _, hist = pretrained
    losses = [h["loss"] for h in hist if h["split"] == "train"]
    assert len(losses) == 40 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses


def test_denoising_trains_on_clean_target() -> None:
    # train_step's corrupt hook changes the model's input only: the mse target is the clean image.
    import optax

    from jaxtl.models import Autoencoder
    from jaxtl.train import TrainState, train_step

    ae = Autoencoder(ConvNet(num_classes=0, widths=WIDTHS), out_channels=1, decoder_widths=(8,))
    x = jax.random.uniform(jax.random.PRNGKey(1), (3, 16, 16, 1))
    v = ae.init(jax.random.PRNGKey(0), x)
    state = TrainState.create(ae, v, optax.sgd(0.0), rng=0)
    corrupt = _corrupt_fn(("noise", 0.5))
    assert corrupt is not None and not np.allclose(corrupt(jax.random.PRNGKey(2), x), x)

    def shift(rng: jax.Array, images: jax.Array) -> jax.Array:
        return images + 0.25  # deterministic, so the expected loss can be computed outside the step

    _, metrics = train_step(state, {"images": x}, axis_name=None, loss="mse", corrupt=shift)
    recon, _ = ae.apply(v, x + 0.25, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(metrics["loss"], jnp.mean(mse(recon, x)), rtol=1e-5)
    recon_clean, _ = ae.apply(v, x, train=True, mutable=["batch_stats"])
    assert not np.isclose(float(metrics["loss"]), float(jnp.mean(mse(recon_clean, x))), rtol=1e-3)


def test_parse_denoise() -> None:
    assert parse_denoise("noise:0.2") == ("noise", 0.2)
    assert parse_denoise("mask:0.5") == ("mask", 0.5, 4)
    assert parse_denoise(("mask", 0.25, 2)) == ("mask", 0.25, 2)
    for bad in ("noise", "blur:1", "mask:1.5", "noise:-1", ("noise",)):
        with pytest.raises(ValueError, match="denoise"):
            parse_denoise(bad)


def test_mask_denoising_runs(split) -> None:
    _, _, hist = pretrain_autoencoder(
        ConvNet(num_classes=0, widths=WIDTHS), split[1], steps=3, batch_size=32, denoise="mask:0.5:4", progress=False
    )
    assert len([h for h in hist if h["split"] == "train"]) == 3
    with pytest.raises(ValueError, match="patch 3 must divide"):
        pretrain_autoencoder(ConvNet(num_classes=0), split[1], steps=1, denoise=("mask", 0.5, 3), progress=False)


def test_encoder_arrives_unchanged(pretrained) -> None:
    ae, ae_vars, _ = pretrained
    clf, v = build_classifier((ae.encoder, ae_vars), 10, jax.random.PRNGKey(3), (16, 16, 1))
    assert clf.num_classes == 10 and set(v["params"]) == {*ae_vars["params"]["encoder"], "fc"}
    enc = {"params": ae_vars["params"]["encoder"], "batch_stats": ae_vars["batch_stats"]["encoder"]}
    got = {"params": {k: x for k, x in v["params"].items() if k != "fc"}, "batch_stats": v["batch_stats"]}
    assert jax.tree.all(jax.tree.map(np.array_equal, got, enc))
    # From a (module, variables) classifier: the old head is replaced, everything else kept.
    clf2, v2 = build_classifier((clf, v), 4, jax.random.PRNGKey(4), (16, 16, 1))
    assert v2["params"]["fc"]["kernel"].shape == (WIDTHS[-1], 4) and clf2.num_classes == 4
    assert jax.tree.all(jax.tree.map(np.array_equal, v2["batch_stats"], v["batch_stats"]))


def test_finetune_modes(pretrained, split) -> None:
    ae, ae_vars, _ = pretrained
    train = split[0].subset(np.arange(64))
    clf, v = build_classifier((ae.encoder, ae_vars), 10, jax.random.PRNGKey(0), (16, 16, 1))
    kw = dict(steps=6, batch_size=16, lr=1e-2, progress=False)
    probe, hist = finetune(clf, v, train, mode="linear_probe", eval_data=split[1], **kw)
    frozen, _ = finetune(clf, v, train, mode="frozen", **kw)  # takes the cached-feature path by itself
    np.testing.assert_array_equal(probe["params"]["fc"]["kernel"], frozen["params"]["fc"]["kernel"])
    # The backbone run at every step gives the features the probe cached: the same head to float rounding.
    per_step, _ = finetune(clf, v, train, mode="frozen", feature_cache=False, **kw)
    np.testing.assert_allclose(probe["params"]["fc"]["kernel"], per_step["params"]["fc"]["kernel"], atol=1e-5)
    assert hist[-1]["split"] == "eval" and hist[-1]["n"] == len(split[1])
    full, _ = finetune(clf, v, train, mode="full", backbone_lr_scale=0.1, **kw)
    moved = [
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(full["params"]["stage1"]), jax.tree.leaves(v["params"]["stage1"]))
    ]
    assert max(moved) > 0
    m = evaluate_classifier(clf, full, split[1], batch_size=100)
    assert set(m) == {"top1", "top5", "loss", "n"} and m["n"] == len(split[1]) and 0 <= m["top1"] <= m["top5"] <= 1
    with pytest.raises(ValueError, match="mode must be one of"):
        finetune(clf, v, train, mode="half", **kw)
    with pytest.raises(ValueError, match="cannot augment"):
        finetune(clf, v, train, mode="linear_probe", augment=True, **kw)
    with pytest.raises(ValueError, match="needs a labeled"):
        finetune(clf, v, train.unlabeled(), mode="full", **kw)


def test_run_demo_small(tmp_path) -> None:
    cfg = DemoConfig.quick(seeds=2, labels_per_class=(1, 3))
    res = run_demo(tmp_path, config=cfg, progress=False, verbose=False)
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["summary"].keys() == set(ARMS)
    assert len(written["runs"]) == len(ARMS) * 2 * 2 == len(res["runs"])
    for arm in ARMS:
        for lpc in ("1", "3"):
            cell = written["summary"][arm][lpc]
            assert len(cell["top1"]) == 2 and cell["mean"] == pytest.approx(np.mean(cell["top1"]))
    assert {"config", "budget", "timings", "versions", "pretrain"} <= written.keys()
    for png in ("reconstructions.png", "accuracy.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_backbone_lr_scale_applies_to_optimizer_dicts() -> None:
    # finetune's optimizer dict goes through fit's per-group factory: the backbone group's lr is scaled.
    from jaxtl.train.fit import _group_optimizer
    from jaxtl.train.groups import ParamGroups

    grads = {"fc": {"w": jnp.ones((2,))}, "conv": {"w": jnp.ones((2,))}}
    for optimizer in ({"name": "sgd", "lr": 0.3}, {"name": "sgd", "lr": 0.3, "momentum": 0.5}):
        factory = functools.partial(_group_optimizer, {**optimizer, "total_steps": 10})
        tx = ParamGroups.finetune("fc", backbone_lr_scale=0.5).optimizer(factory, grads)
        updates, _ = tx.update(grads, tx.init(grads), grads)
        # First step of cosine decay from 0.3 (head) and 0.3 * 0.5 (backbone); momentum starts at the gradient.
        np.testing.assert_allclose(updates["conv"]["w"], -0.15 * np.ones(2), rtol=1e-6)
        np.testing.assert_allclose(updates["fc"]["w"], -0.3 * np.ones(2), rtol=1e-6)


def test_large_feature_caches_are_memory_mapped(pretrained, split, tmp_path, monkeypatch) -> None:
    import jaxtl.transfer

    ae, ae_vars, _ = pretrained
    train = split[0].subset(np.arange(64))
    clf, v = build_classifier((ae.encoder, ae_vars), 10, jax.random.PRNGKey(0), (16, 16, 1))
    kw = dict(mode="frozen", steps=6, batch_size=16, lr=1e-2, progress=False)
    in_memory, _ = finetune(clf, v, train, **kw)
    monkeypatch.setattr(jaxtl.transfer, "FEATURES_IN_MEMORY", 0)  # every cache counts as large
    mapped, _ = finetune(clf, v, train, workdir=tmp_path, **kw)
    feats = np.load(tmp_path / "features.npy", mmap_mode="r")
    assert feats.shape == (64, WIDTHS[-1])
    np.testing.assert_allclose(mapped["params"]["fc"]["kernel"], in_memory["params"]["fc"]["kernel"], atol=1e-6)
    mapped_tmp, _ = finetune(clf, v, train, **kw)  # no workdir: a temporary file, removed afterwards
    np.testing.assert_array_equal(mapped_tmp["params"]["fc"]["kernel"], mapped["params"]["fc"]["kernel"])
