"""finetune's and evaluate's options (#24) on a small real model (convnet_small, digits at 16 px): the EMA
classifier saved and evaluated, early stopping on the held-out split, class weights and label smoothing on the
cached-feature path, the imbalance warning, TensorBoard on every path, the rules between options, and the
per-class report (library and files)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

import jaxtl
from jaxtl.errors import ConfigError
from jaxtl.lifecycle import RunMismatchError
from jaxtl.models import ModelCard
from jaxtl.recipes import EvaluateConfig, FinetuneConfig, PretrainConfig, Split, evaluate, finetune
from jaxtl.train import EMA, Loop, Optimizer, Stopping, load_variables, read_images, read_scalars, save_variables
from jaxtl.train.config import Regularization


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    module = jaxtl.create("convnet_small", num_classes=0)
    variables = jax.device_get(module.init(jax.random.PRNGKey(0), np.zeros((1, 16, 16, 3)), train=False))
    card = ModelCard.for_arch("convnet_small", 0, image_size=16, kind="encoder")
    return save_variables(tmp_path_factory.mktemp("enc") / "encoder", variables, card)


def _config(mode="frozen", *, loop=None, test_fraction=0.25, **kw) -> FinetuneConfig:
    loop = loop or Loop(steps=8, batch_size=32)
    return FinetuneConfig(
        mode=mode, optimizer=Optimizer(lr=3e-2), loop=loop, split=Split(test_fraction=test_fraction), **kw
    )


# --- the weight EMA -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ema_run(encoder, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ema")
    config = _config(loop=Loop(steps=8, batch_size=32, ema=EMA(0.8)))
    return finetune(config, encoder, "digits", workdir=workdir, progress=False), workdir


def test_the_ema_classifier_is_saved_beside_the_model_with_its_held_out_metrics(ema_run):
    result, workdir = ema_run
    m = result.metrics
    assert {"top1", "loss", "n", "ema_top1", "ema_loss", "ema_top5"} <= m.keys()
    _, ema_vars, card = load_variables(workdir / "classifier_ema")
    assert card.extra["ema"] == {"decay": 0.8, "warmup": True, "every": 1}
    assert card.extra["test"]["top1"] == m["ema_top1"] and card.extra["test"]["loss"] == m["ema_loss"]
    for a, b in zip(jax.tree.leaves(ema_vars), jax.tree.leaves(result.state.ema_variables)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Its held-out record travels with it: evaluate --split test finds the same images and the same numbers.
    again = evaluate(EvaluateConfig(split="test"), workdir / "classifier_ema", "digits")
    assert again["top1"] == m["ema_top1"] and again["loss"] == pytest.approx(m["ema_loss"], rel=1e-6)
    record = json.loads((workdir / "run.json").read_text())
    assert {"classifier", "classifier_ema"} <= record["outputs"].keys()
    assert read_scalars(workdir / "tensorboard")["train/loss"][-1][0] == 8


def test_another_ema_decay_is_another_run(ema_run, encoder, tmp_path):
    _, workdir = ema_run
    copy = shutil.copytree(workdir, tmp_path / "w")
    config = _config(loop=Loop(steps=8, batch_size=32, ema=EMA(0.9)))
    with pytest.raises(RunMismatchError, match=r"the weight EMA changed \(.*0\.8.* -> .*0\.9"):
        finetune(config, encoder, "digits", workdir=copy, progress=False)


# --- early stopping on the held-out split ---------------------------------------------------------------------


def test_early_stopping_watches_the_held_out_split_and_keeps_the_best(encoder, tmp_path):
    stopping = Stopping(metric="top1", patience=1)
    loop = Loop(steps=60, batch_size=32, eval_every=3, stopping=stopping)
    config = FinetuneConfig(mode="full", optimizer=Optimizer("sgd", lr=1.5, schedule="constant"), loop=loop)
    result = finetune(config, encoder, "digits", workdir=tmp_path, progress=False)
    (stop,) = [r for r in result.history if r["split"] == "stopped"]
    evals = {r["step"]: r for r in result.history if r["split"] == "eval"}
    assert stop["step"] < 60 and stop["step"] == max(evals)
    best = evals[stop["best_step"]]
    assert best["top1"] == max(r["top1"] for r in evals.values())
    # The classifier is the best evaluation's: its held-out numbers are that evaluation's.
    assert result.metrics["top1"] == best["top1"] and result.metrics["n"] == best["count"]
    assert result.metrics["loss"] == pytest.approx(best["loss"], rel=1e-5)


# --- class weights, label smoothing, imbalance ------------------------------------------------------------------


@pytest.fixture(scope="module")
def imbalanced(encoder):
    # Digits prepared as the encoder's card says, classes 0 and 1 kept at 15x and 1x.
    data = jaxtl.open_data("digits", load_variables(encoder)[2])
    labels = np.asarray(data.labels)
    keep = np.concatenate([np.flatnonzero(labels == 0)[:150], np.flatnonzero(labels == 1)[:10]])
    part = data.subset(np.sort(keep))
    from jaxtl.data import ArrayDataset

    return ArrayDataset(part.images, (part.labels == 1).astype(np.int64), 2, class_names=("zero", "one"))


def test_class_weights_and_smoothing_mean_the_same_on_the_cached_path(encoder, imbalanced):
    reg = Regularization(label_smoothing=0.1, class_weights="balanced")
    model = load_variables(encoder)
    cached = finetune(_config(test_fraction=0, regularization=reg), model, imbalanced, progress=False)
    per_step = _config(test_fraction=0, regularization=reg, feature_cache=False)
    steps = finetune(per_step, model, imbalanced, progress=False)
    with pytest.warns(UserWarning, match="imbalanced"):  # no class weights: warned
        plain = finetune(_config(test_fraction=0, feature_cache=False), model, imbalanced, progress=False)
    a, b = cached.variables["params"]["fc"], steps.variables["params"]["fc"]
    for key in ("kernel", "bias"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-6)
    assert not np.allclose(a["bias"], plain.variables["params"]["fc"]["bias"], atol=1e-4)  # the weights acted
    losses = [r["loss"] for r in cached.history]
    assert losses == pytest.approx([r["loss"] for r in steps.history if r["split"] == "train"], rel=1e-4)


def test_an_imbalanced_split_is_warned_about_once_and_bad_weights_refused_before_work(encoder, imbalanced, tmp_path):
    model = load_variables(encoder)
    with pytest.warns(UserWarning, match=r"imbalanced: class 'zero' has 150 examples, class 'one' 10 \(15\.0x"):
        finetune(_config(test_fraction=0), model, imbalanced, progress=False)
    bad = Regularization(class_weights=(1.0, 2.0, 3.0))
    with pytest.raises(ConfigError, match="class_weights has 3 weights, the data has 2 classes") as e:
        finetune(_config(test_fraction=0, regularization=bad), model, imbalanced, workdir=tmp_path / "w")
    assert e.value.field == "class_weights" and not (tmp_path / "w").exists()


def test_the_cached_path_writes_tensorboard_too(encoder, tmp_path):
    result = finetune(_config(), encoder, "digits", workdir=tmp_path, progress=False)
    scalars = read_scalars(tmp_path / "tensorboard")
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, 9))
    assert scalars["train/lr"][0][1] == pytest.approx(3e-2) and "train/top1" in scalars
    assert read_images(tmp_path / "tensorboard")["inputs"][0][0] == 8
    assert [r["loss"] for r in result.history] == pytest.approx([v for _, v in scalars["train/loss"]])
    constant = dataclasses.replace(_config(), optimizer=Optimizer(lr=3e-2, schedule="constant"))
    off = finetune(constant, encoder, "digits", workdir=tmp_path / "off", progress=False, tensorboard=False)
    assert off.path is not None and not (tmp_path / "off" / "tensorboard").exists()
    assert [r["lr"] for r in off.history] == [3e-2] * 8


# --- the rules between options -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: _config("linear_probe", regularization=Regularization(mixup_alpha=0.2)), "mixup_alpha"),
        (lambda: _config(feature_cache=True, regularization=Regularization(cutmix_alpha=1.0)), "cutmix_alpha"),
        (lambda: _config("linear_probe", loop=Loop(steps=4, ema=EMA())), "ema"),
        (lambda: _config(feature_cache=True, loop=Loop(steps=4, accumulate=2)), "accumulate"),
        (lambda: _config(loop=Loop(steps=4, stopping=Stopping(patience=2)), test_fraction=0), "test_fraction"),
        (lambda: PretrainConfig(loop=Loop(steps=4, ema=EMA())), "ema"),
        (lambda: PretrainConfig(loop=Loop(steps=4, stopping=Stopping(patience=1))), "stopping"),
        (lambda: Regularization(class_weights="inverse"), "class_weights"),
        (lambda: Regularization(class_weights=(1.0, -1.0)), "class_weights"),
        (lambda: Regularization(class_weights=(0.0, 0.0)), "class_weights"),
        (lambda: Regularization(mixup_alpha=-1), "mixup_alpha"),
        (lambda: Stopping(patience=0), "patience"),
        (lambda: Stopping(reduce_patience=1, reduce_factor=1.0), "reduce_factor"),
        (lambda: EMA(decay=1.0), "ema"),
        (lambda: EMA(every=0), "ema_every"),
    ],
)
def test_option_rules_name_the_field(make, field):
    with pytest.raises(ConfigError) as e:
        make()
    assert e.value.field == field, e.value


def test_options_that_need_images_leave_the_feature_cache():
    assert _config().cached_features
    for on in (
        dict(regularization=Regularization(mixup_alpha=0.2)),
        dict(loop=Loop(steps=4, ema=EMA())),
        dict(loop=Loop(steps=4, accumulate=2)),
        dict(loop=Loop(steps=4, stopping=Stopping(reduce_patience=1))),
    ):
        assert not _config(**on).cached_features, on
    assert _config(regularization=Regularization(label_smoothing=0.1, class_weights="balanced")).cached_features


# --- the per-class report ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder_classifier(encoder, tmp_path_factory):
    """A classifier fine-tuned on a small image folder (file names for the worst examples)."""
    root = tmp_path_factory.mktemp("shapes") / "imgs"
    rng = np.random.default_rng(0)
    for c, name in enumerate(("left", "middle", "right")):
        (root / name).mkdir(parents=True)
        for i in range(12):
            img = rng.integers(0, 60, (16, 16, 3), dtype=np.uint8)
            img[:, 5 * c : 5 * c + 5] = 230
            Image.fromarray(img).save(root / name / f"{i}.png")
    workdir = tmp_path_factory.mktemp("ft")
    config = FinetuneConfig(
        optimizer=Optimizer(lr=3e-2), loop=Loop(steps=6, batch_size=8), split=Split(test_fraction=0.25)
    )
    finetune(config, encoder, f"folder:{root}", workdir=workdir, progress=False)
    return workdir / "classifier", f"folder:{root}"


def test_evaluate_report_from_the_library_and_into_a_workdir(folder_classifier, tmp_path):
    clf, data = folder_classifier
    plain = evaluate(EvaluateConfig(split="test"), clf, data)
    got = evaluate(EvaluateConfig(split="test", report=True, worst=4), clf, data, workdir=tmp_path)
    report = got.pop("report")
    assert got["top1"] == plain["top1"] and got["n"] == plain["n"] == 9
    assert got["loss"] == pytest.approx(plain["loss"], rel=1e-6)
    assert report.class_names == ("left", "middle", "right") and int(report.support.sum()) == 9
    assert report.accuracy == pytest.approx(plain["top1"])
    assert len(report.worst) == 4 and all(w["name"].endswith(".png") and "/" in w["name"] for w in report.worst)
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["per_class"][0]["class"] == "left" and saved["worst"] == [dict(w) for w in report.worst]
    assert (tmp_path / "report" / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "evaluation.json").read_text())["top1"] == plain["top1"]
    assert "precision" in report.text() and report.worst[0]["name"] in report.text()


def test_a_report_without_matplotlib_writes_its_json_alone(folder_classifier, tmp_path, monkeypatch):
    import importlib.util

    clf, data = folder_classifier
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    with pytest.warns(UserWarning, match=r"confusion\.png needs matplotlib"):
        evaluate(EvaluateConfig(report=True), clf, data, workdir=tmp_path)
    assert [p.name for p in (tmp_path / "report").iterdir()] == ["report.json"]
