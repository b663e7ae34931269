"""The recipes in Python: pretrain -> build_classifier / finetune (every mode) -> evaluate_classifier, the configs'
rules, and a small run_demo end to end."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxtl.recipes.finetuning as finetune_module
from jaxtl.data import ArrayDataset, load_digits, train_test_split
from jaxtl.demo import ARMS, DemoConfig, run_demo
from jaxtl.errors import ConfigError, DataError
from jaxtl.models import ConvNet
from jaxtl.recipes import (
    FinetuneConfig,
    Input,
    PretrainConfig,
    Split,
    build_classifier,
    evaluate_classifier,
    finetune,
    parse_denoise,
    pretrain,
)
from jaxtl.recipes.pretraining import corruption
from jaxtl.train import Loop, Optimizer
from jaxtl.train.config import Regularization
from jaxtl.train.losses import mse

WIDTH = 128  # convnet_small's feature width


@pytest.fixture(scope="module")
def split() -> tuple[ArrayDataset, ArrayDataset]:
    return train_test_split(load_digits(size=16, channels=1), 0.25, seed=0)


@pytest.fixture(scope="module")
def pretrained(split):
    config = PretrainConfig(
        arch="convnet_small",
        channels=1,
        denoise=("noise", 0.2),
        decoder_widths=(16, 8),
        optimizer=Optimizer(lr=3e-3),
        loop=Loop(steps=40, batch_size=64),
    )
    return pretrain(config, split[0], progress=False)


def _config(mode: str, **kw) -> FinetuneConfig:
    return FinetuneConfig(
        mode=mode, optimizer=Optimizer(lr=1e-2), loop=Loop(steps=6, batch_size=16), split=Split(test_fraction=0), **kw
    )


def test_reconstruction_loss_falls(pretrained) -> None:
    losses = [h["loss"] for h in pretrained.history if h["split"] == "train"]
    assert len(losses) == 40 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
    module, variables, card = pretrained  # the encoder, as every next step takes it
    assert module.num_classes == 0 and "fc" not in variables["params"] and card.kind == "encoder"


def test_denoising_trains_on_clean_target() -> None:
    # train_step's corrupt hook changes the model's input only: the mse target is the clean image.
    import optax

    from jaxtl.models import Autoencoder
    from jaxtl.train import Reconstruction, TrainState, train_step

    ae = Autoencoder(ConvNet(num_classes=0, widths=(8, 16)), out_channels=1, decoder_widths=(8,))
    x = jax.random.uniform(jax.random.PRNGKey(1), (3, 16, 16, 1))
    v = ae.init(jax.random.PRNGKey(0), x)
    state = TrainState.create(ae, v, optax.sgd(0.0), rng=0)
    corrupt = corruption(("noise", 0.5))
    assert corrupt is not None and not np.allclose(corrupt(jax.random.PRNGKey(2), x), x)

    def shift(rng: jax.Array, images: jax.Array) -> jax.Array:
        return images + 0.25  # deterministic, so the expected loss can be computed outside the step

    _, metrics = train_step(state, {"images": x}, axis_name=None, loss=Reconstruction(corrupt=shift))
    recon, _ = ae.apply(v, x + 0.25, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(metrics["loss"], jnp.mean(mse(recon, x)), rtol=1e-5)
    recon_clean, _ = ae.apply(v, x, train=True, mutable=["batch_stats"])
    assert not np.isclose(float(metrics["loss"]), float(jnp.mean(mse(recon_clean, x))), rtol=1e-3)


def test_parse_denoise() -> None:
    assert parse_denoise("noise:0.2") == ("noise", 0.2)
    assert parse_denoise("mask:0.5") == ("mask", 0.5, 4)
    assert parse_denoise(("mask", 0.25, 2)) == ("mask", 0.25, 2)
    for bad in ("noise", "blur:1", "mask:1.5", "noise:-1", ("noise",)):
        with pytest.raises(ConfigError, match="denoise"):
            parse_denoise(bad)


def test_mask_denoising_runs(split) -> None:
    loop = Loop(steps=3, batch_size=32)
    result = pretrain(PretrainConfig(channels=1, denoise="mask:0.5:4", loop=loop), split[1], progress=False)
    assert len([h for h in result.history if h["split"] == "train"]) == 3
    with pytest.raises(ConfigError, match="patch 3 must divide"):
        pretrain(PretrainConfig(channels=1, denoise=("mask", 0.5, 3), loop=loop), split[1], progress=False)


def test_encoder_arrives_unchanged(pretrained) -> None:
    _, enc_vars, _ = pretrained
    ae_vars = pretrained.state.variables
    clf, v = build_classifier((pretrained.state.module.encoder, ae_vars), 10, jax.random.PRNGKey(3))
    assert clf.num_classes == 10 and set(v["params"]) == {*enc_vars["params"], "fc"}
    got = {"params": {k: x for k, x in v["params"].items() if k != "fc"}, "batch_stats": v["batch_stats"]}
    assert jax.tree.all(jax.tree.map(np.array_equal, got, enc_vars))
    # From a (module, variables) classifier: the old head is replaced, everything else kept.
    clf2, v2 = build_classifier((clf, v), 4, jax.random.PRNGKey(4), (16, 16, 1))
    assert v2["params"]["fc"]["kernel"].shape == (WIDTH, 4) and clf2.num_classes == 4
    assert jax.tree.all(jax.tree.map(np.array_equal, v2["batch_stats"], v["batch_stats"]))


def test_finetune_modes(pretrained, split) -> None:
    train = split[0].subset(np.arange(64))
    model = pretrained  # the encoder: finetune gives it a new head of the data's classes
    probe = finetune(_config("linear_probe"), model, train, progress=False)
    frozen = finetune(_config("frozen"), model, train, progress=False)  # takes the cached-feature path by itself
    np.testing.assert_array_equal(probe.variables["params"]["fc"]["kernel"], frozen.variables["params"]["fc"]["kernel"])
    # The backbone run at every step gives the features the probe cached: the same head to float rounding.
    per_step = finetune(_config("frozen", feature_cache=False), model, train, progress=False)
    np.testing.assert_allclose(
        probe.variables["params"]["fc"]["kernel"], per_step.variables["params"]["fc"]["kernel"], atol=1e-5
    )
    full = finetune(_config("full", backbone_lr_scale=0.1), model, train, progress=False)
    start = pretrained.variables["params"]["stage1"]
    moved = [
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(full.variables["params"]["stage1"]), jax.tree.leaves(start))
    ]
    assert max(moved) > 0
    m = evaluate_classifier(full.module, full.variables, split[1], batch_size=100)
    assert set(m) == {"top1", "top5", "loss", "n"} and m["n"] == len(split[1]) and 0 <= m["top1"] <= m["top5"] <= 1
    with pytest.raises(DataError, match="needs labeled data"):
        finetune(_config("full"), model, train.unlabeled(), progress=False)


def test_held_out_split_is_evaluated(pretrained, split) -> None:
    config = FinetuneConfig(optimizer=Optimizer(lr=1e-2), loop=Loop(steps=4, batch_size=16), split=Split(0.25))
    result = finetune(config, pretrained, split[1], progress=False)
    assert (
        result.metrics["n"] == round(0.25 * len(split[1])) and result.train_size == len(split[1]) - result.metrics["n"]
    )
    assert (
        result.card is not None
        and result.card.kind == "classifier"
        and result.card.extra["split"]["test_fraction"] == 0.25
    )


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: FinetuneConfig(mode="half"), "mode"),
        (lambda: FinetuneConfig(mode="linear_probe", input=Input(augment="auto")), "augment"),
        (lambda: FinetuneConfig(mode="frozen", backbone_lr_scale=0.1), "backbone_lr_scale"),
        (lambda: FinetuneConfig(mode="full", feature_cache=True), "feature_cache"),
        (lambda: Split(test_fraction=1.0), "test_fraction"),
        (lambda: FinetuneConfig(loop=Loop(batch_size=32)), "epochs"),
        (lambda: FinetuneConfig(regularization=Regularization(label_smoothing=1.0)), "label_smoothing"),
        (lambda: Input(augment="rotate"), "augment"),
    ],
)
def test_config_rules_name_the_field(make, field) -> None:
    with pytest.raises(ConfigError) as e:
        make()
    assert e.value.field == field, e.value


def test_loop_and_optimizer_check_their_fields() -> None:
    for bad, field in ((dict(seed=-1), "seed"), (dict(batch_size=0), "batch_size"), (dict(epochs=1, steps=2), "steps")):
        with pytest.raises(ConfigError) as e:
            Loop(**bad)
        assert e.value.field == field
    with pytest.raises(ConfigError, match="lr must be > 0"):
        Optimizer(lr=0.0)


def test_backbone_lr_scale_applies_per_group() -> None:
    from jaxtl.train.groups import ParamGroups

    grads = {"fc": {"w": jnp.ones((2,))}, "conv": {"w": jnp.ones((2,))}}
    for optimizer in (Optimizer(name="sgd", lr=0.3), Optimizer(name="sgd", lr=0.3, momentum=0.5)):
        tx = ParamGroups.finetune("fc", backbone_lr_scale=0.5).optimizer(optimizer.factory(10), grads)
        updates, _ = tx.update(grads, tx.init(grads), grads)
        # First step of cosine decay from 0.3 (head) and 0.3 * 0.5 (backbone); momentum starts at the gradient.
        np.testing.assert_allclose(updates["conv"]["w"], -0.15 * np.ones(2), rtol=1e-6)
        np.testing.assert_allclose(updates["fc"]["w"], -0.3 * np.ones(2), rtol=1e-6)


def test_large_feature_caches_are_memory_mapped(pretrained, split, tmp_path, monkeypatch) -> None:
    train = split[0].subset(np.arange(64))
    in_memory = finetune(_config("frozen"), pretrained, train, progress=False)
    monkeypatch.setattr(finetune_module, "FEATURES_IN_MEMORY", 0)  # every cache counts as large
    mapped = finetune(_config("frozen"), pretrained, train, workdir=tmp_path, progress=False)
    feats = np.load(tmp_path / "features.npy", mmap_mode="r")
    assert feats.shape == (64, WIDTH)
    kernel = mapped.variables["params"]["fc"]["kernel"]
    np.testing.assert_allclose(kernel, in_memory.variables["params"]["fc"]["kernel"], atol=1e-6)
    mapped_tmp = finetune(_config("frozen"), pretrained, train, progress=False)  # a temporary file, removed after
    np.testing.assert_array_equal(mapped_tmp.variables["params"]["fc"]["kernel"], kernel)


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
