"""Every route for a ViT and a ConvNeXt (the tests of tests/test_routes_vit.py and tests/test_routes_convnext.py,
one file per family so the two run on separate test workers).

From a torchvision weights file of a random-init torchvision model: ``jaxtl.finetune`` in every mode (frozen on
cached features, frozen per step, full, linear probe; the CLI's runs are ``jaxtl.finetune`` with a work
directory), ``fit``, and the CLI (``convert`` with the architecture inferred, ``inspect`` of a file and of a saved
folder, ``finetune --torch-weights`` with ``--freeze backbone|none|linear-probe``, ``evaluate``, ``predict``).

What must hold: the frozen routes leave every backbone parameter bit-identical; the CLI's linear probe is the
library's, bit for bit, and the cached frozen route trains on the same features; ``fit`` on the recipe's training
split equals the per-step frozen recipe; a saved classifier reloads at its card's size (a ViT built for 64 px);
``evaluate --split test`` finds the held-out numbers the fine-tune reported. Small on purpose: torchvision's
``vit_b_32`` built for 64 px (a 2x2 patch grid, torchvision's ``image_size=64``) and ``convnext_tiny`` at 32 px,
18 images, 2 steps, one device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import traverse_util
from PIL import Image

import jaxtl
from jaxtl.bridge import from_torchvision, pretrained
from jaxtl.cli import main
from jaxtl.models import get_head, get_spec, head_path, init_head, strip_head
from jaxtl.recipes import FinetuneConfig, Input, Split
from jaxtl.recipes.data import split_for_training
from jaxtl.recipes.model import build_classifier
from jaxtl.train import Loop, Optimizer, ParamGroups, fit, load_variables

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

FAMILIES = {"vit_b_32": 64, "convnext_tiny": 32}  # arch -> the input size it is built for / trained at
CLASSES = 3
STEPS, BATCH, LR, TEST = 2, 4, 0.05, 0.25  # plain SGD (momentum 0): no optimizer state to write for 88M params
FREEZE = {"backbone": "frozen", "none": "full", "linear-probe": "linear_probe"}  # CLI flag -> library run


def _flat(tree) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(dict(tree)), sep="/").items()}


def _cli(*argv: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([str(a) for a in argv]) == 0, argv
    return out.getvalue()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """18 PNGs (72x80) of 3 classes told apart by colour."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        (root / f"c{c}").mkdir()
        for i in range(6):
            pixels = rng.integers(0, 80, (72, 80, 3)) + np.array([60 * c, 100, 160 - 60 * c])
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(root / f"c{c}" / f"{i}.png")
    return root


def _torch_weights(arch: str, size: int, path: Path) -> None:
    torch.manual_seed(0)
    kwargs = {"image_size": size} if arch.startswith("vit") else {}
    model = getattr(torchvision.models, arch)(weights=None, **kwargs)
    with torch.no_grad():  # norms and layer scales away from their init: every parameter matters
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):  # ConvNeXt's LayerNorm2d too
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        for name, p in model.named_parameters():
            if name.endswith("layer_scale"):
                p.uniform_(0.05, 0.2)
    torch.save(model.state_dict(), path)


def family_fixture(arch: str):
    """The module-scoped ``family`` fixture of ``arch``: every route run once, the results for the tests."""

    @pytest.fixture(scope="module")
    def family(images, tmp_path_factory):
        return _run_routes(arch, images, tmp_path_factory)

    return family


def _run_routes(arch: str, images: Path, tmp_path_factory) -> dict:
    size = FAMILIES[arch]
    work = tmp_path_factory.mktemp(arch)
    weights = work / f"{arch}.pth"
    _torch_weights(arch, size, weights)
    data = f"folder:{images}"
    runs: dict = {"arch": arch, "size": size, "work": work, "weights": weights, "data": data}

    runs["convert"] = _cli("convert", weights, work / "converted")
    runs["inspect_file"] = _cli("inspect", weights)
    runs["inspect_dir"] = _cli("inspect", work / "converted")

    model = pretrained(None, str(weights))
    runs["model"] = model
    # The library's runs without a work directory; the CLI's below run jaxtl.finetune with one (the cached frozen
    # route, full and the linear probe, saved and reloaded), so each mode runs once and the CLI is checked against
    # the library where both ran it.
    config = FinetuneConfig(
        mode="frozen",
        optimizer=Optimizer("sgd", lr=LR, momentum=0.0),
        loop=Loop(steps=STEPS, batch_size=BATCH, parallel="none"),
        split=Split(test_fraction=TEST),
        input=Input(image_size=size, workers=0),
        feature_cache=False,
    )
    probe = dataclasses.replace(config, mode="linear_probe", feature_cache=None)
    runs["lib"] = {
        mode: jaxtl.finetune(c, model, data, progress=False, tensorboard=False)
        for mode, c in (("frozen_per_step", config), ("linear_probe", probe))
    }

    # fit on the recipe's own training split, from the recipe's classifier: the per-step frozen route by hand.
    source = jaxtl.open_data(data, model.card, Input(image_size=size, workers=0))
    train, _, _ = split_for_training(source, Split(test_fraction=TEST), 0)
    clf, clf_vars = build_classifier((model.module, model.variables), CLASSES, jax.random.PRNGKey(0))
    runs["classifier_start"] = (clf, clf_vars)
    loop = Loop(steps=STEPS, batch_size=BATCH, parallel="none")
    runs["fit"] = fit(
        clf,
        clf_vars,
        train,
        optimizer=Optimizer("sgd", lr=LR, momentum=0.0),
        groups=ParamGroups.head_only(clf),
        loop=loop,
        progress=False,
    )

    flags = ["--data", data, "--image-size", size, "--workers", 0, "--optimizer", "sgd", "--lr", LR, "--momentum", 0]
    flags += ["--steps", STEPS, "--batch-size", BATCH, "--test-fraction", TEST, "--parallel", "none"]
    flags += ["--no-progress", "--no-tensorboard"]
    runs["cli"] = {}
    for freeze in FREEZE:
        out = work / f"cli-{freeze}"
        text = _cli("finetune", "--torch-weights", weights, "--freeze", freeze, "--workdir", out, *flags)
        runs["cli"][freeze] = (text, load_variables(out / "classifier"))
    classifier = work / "cli-backbone" / "classifier"
    runs["evaluate"] = _cli("evaluate", classifier, "--data", data, "--split", "test", "--workers", 0)
    picture = sorted((images / "c1").iterdir())[0]
    runs["predict"] = json.loads(_cli("predict", picture, "--checkpoint", classifier, "--top-k", 2, "--json"))
    return runs


def _backbone(variables, module) -> dict[str, np.ndarray]:
    return _flat(strip_head(variables, module)["params"])


def _assert_equal(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"{what}: {k}")


def test_convert_infers_the_architecture_and_inspect_reads_file_and_folder(family) -> None:
    arch, size = family["arch"], family["size"]
    assert f": {arch}," in family["convert"] and "head of 1000 classes" in family["convert"]
    assert f"architecture:  {arch}" in family["inspect_file"] and "num_classes=1000" in family["inspect_file"]
    assert f"architecture:  {arch}" in family["inspect_dir"] and "head:          1000 classes" in family["inspect_dir"]
    # A ViT's size is read from its position embedding; a ConvNeXt takes any size: the card says its weights' 224.
    crop = size if get_spec(arch).patch_size else get_spec(arch).preprocessing.crop_size
    assert f"crop {crop}" in family["inspect_dir"]
    module, variables, card = load_variables(family["work"] / "converted")
    assert card.arch == arch and card.preprocessing.crop_size == crop and module.input_size in (None, size)
    _assert_equal(_flat(variables["params"]), _flat(from_torchvision(family["weights"]).variables["params"]), "convert")


def test_frozen_routes_leave_every_backbone_parameter_bit_identical(family) -> None:
    module, variables, _ = family["model"]
    start = _backbone(variables, module)
    clf, clf_vars = family["classifier_start"]
    first_head = _flat(get_head(clf_vars, clf))
    frozen = {f"finetune {m}": family["lib"][m].variables for m in ("frozen_per_step", "linear_probe")}
    frozen["fit head_only"] = family["fit"].variables
    frozen.update({f"cli --freeze {f}": family["cli"][f][1][1] for f in ("backbone", "linear-probe")})
    for route, got in frozen.items():
        _assert_equal(_backbone(got, clf), start, route)
        head = _flat(get_head(got, clf))
        assert head["kernel"].shape == (module.num_features, CLASSES), route
        assert any(not np.array_equal(head[k], first_head[k]) for k in head), f"{route}: the head did not train"


def test_full_fine_tuning_trains_the_backbone(family) -> None:
    module, variables, _ = family["model"]
    start = _backbone(variables, module)
    text, (_, full, card) = family["cli"]["none"]
    moved = _backbone(full, module)
    changed = [k for k in start if not np.array_equal(start[k], moved[k])]
    assert len(changed) > len(start) // 2, f"only {len(changed)} of {len(start)} backbone arrays moved"
    assert all(np.isfinite(v).all() for v in moved.values())
    assert f"fine-tuned {family['arch']} (--freeze none)" in text and card.extra["mode"] == "full"


def test_the_routes_agree(family) -> None:
    lib, cli, clf = family["lib"], family["cli"], family["classifier_start"][0]
    _assert_equal(_flat(family["fit"].variables), _flat(lib["frozen_per_step"].variables), "fit vs finetune")
    # The CLI's linear probe is the library's, and the cached frozen route trains on the same cached features.
    probe = _flat(cli["linear-probe"][1][1])
    _assert_equal(probe, _flat(lib["linear_probe"].variables), "--freeze linear-probe vs mode=linear_probe")
    _assert_equal(_flat(cli["backbone"][1][1]), probe, "--freeze backbone (cached features) vs the linear probe")
    assert cli["backbone"][1][2].extra["mode"] == "frozen" and cli["linear-probe"][1][2].extra["mode"] == "linear_probe"
    # Features computed once vs the backbone run every step: the same head to float rounding (other batch shapes).
    cached = _flat(get_head(cli["backbone"][1][1], clf))
    per_step = _flat(get_head(lib["frozen_per_step"].variables, clf))
    for k in cached:
        np.testing.assert_allclose(cached[k], per_step[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_the_saved_classifier_reloads_at_its_cards_size_and_evaluates(family) -> None:
    arch, size = family["arch"], family["size"]
    module, variables, card = family["cli"]["backbone"][1]
    assert card.arch == arch and card.num_classes == CLASSES and card.preprocessing.crop_size == size
    assert module.num_classes == CLASSES and module.input_size in (None, size) and head_path(module)
    x = np.zeros((1, size, size, 3), np.float32)
    assert jax.eval_shape(module.apply, variables, x).shape == (1, CLASSES)
    held = card.extra["test"]  # what the fine-tune measured on its held-out split
    assert held["n"] == round(TEST * 18)
    expect = f"test, {held['n']} images):\ntop-1: {100 * held['top1']:.2f}%  loss: {held['loss']:.4f}"
    assert expect in family["evaluate"]
    (pred,) = family["predict"]["predictions"]
    assert len(pred["top"]) == 2 and {t["class"] for t in pred["top"]} <= {"c0", "c1", "c2"}
    assert 0.0 < sum(t["probability"] for t in pred["top"]) <= 1.0 + 1e-6


def test_the_head_rule_made_the_new_head(family) -> None:
    # The recipe's classifier over a torchvision model of 1000 classes: a new 3-class head by the head rule.
    clf, clf_vars = family["classifier_start"]
    want = init_head(clf, CLASSES, 0)
    got = get_head(clf_vars, clf)
    for k in ("kernel", "bias"):
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]))


OTHER_SIZE = {"vit_b_32": 96, "convnext_tiny": 48}  # another input size than the weights were built for


def test_layer_decay_at_another_input_size(family, tmp_path) -> None:
    # A full fine-tune with layer-wise lr decay at another size than the model was built for: a ViT is rebuilt for
    # it (position embedding interpolated), a ConvNeXt takes it as it is; the saved card says the new size.
    arch, other = family["arch"], OTHER_SIZE[family["arch"]]
    flags = ["--data", family["data"], "--image-size", other, "--workers", 0, "--optimizer", "sgd", "--lr", LR]
    flags += ["--momentum", 0, "--steps", STEPS, "--batch-size", BATCH, "--test-fraction", TEST, "--parallel", "none"]
    out = tmp_path / "ld"
    text = _cli(
        "finetune",
        "--torch-weights",
        family["weights"],
        "--freeze",
        "none",
        "--layer-decay",
        0.75,
        "--workdir",
        out,
        "--no-progress",
        "--no-tensorboard",
        *flags,
    )
    assert "fine-tuned" in text, text
    module, variables, card = load_variables(out / "classifier")
    assert card.arch == arch and card.preprocessing.crop_size == other
    x = np.zeros((1, other, other, 3), np.float32)
    assert jax.eval_shape(module.apply, variables, x).shape == (1, CLASSES)
    identity = json.loads((out / "run.json").read_text())["identity"]
    assert identity["layer_decay"] == 0.75
