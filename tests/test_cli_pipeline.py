"""`jaxtl pretrain | finetune | evaluate | demo`: happy paths on tiny data, one-line errors (exit 2) on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxtl.cli import main
from jaxtl.train.model_files import load_variables


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxtl: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Three classes of 36x36 RGB images (a bright square at a class-specific place, plus noise)."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for c, name in enumerate(("left", "middle", "right")):
        (root / name).mkdir()
        for i in range(10):
            img = rng.integers(0, 60, (36, 36, 3), dtype=np.uint8)
            img[10:26, 2 + 11 * c : 14 + 11 * c] = 230
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("pre")
    args = ["pretrain", "--data", "digits", "--image-size", "16", "--epochs", "1", "--batch-size", "128"]
    args += ["--denoise", "noise:0.2", "--lr", "3e-3", "--workdir", str(work), "--no-progress"]
    assert main(args) == 0
    return work


def test_pretrain_writes_encoder_and_resumes(pretrained, capsys) -> None:
    module, variables, card = load_variables(pretrained / "encoder")
    assert module.num_classes == 0
    assert card.arch == "convnet_small" and card.num_classes == 0 and "fc" not in variables["params"]
    assert card.kind == "encoder" and card.preprocessing.crop_size == 16 and card.preprocessing.mean == (0.5,) * 3
    assert card.extra["train_mse_last"] < card.extra["train_mse_first"]
    assert (pretrained / "metrics.jsonl").exists() and any((pretrained / "checkpoints").iterdir())
    # The same command again finds the finished run in its workdir: nothing is retrained.
    lines = (pretrained / "metrics.jsonl").read_text().splitlines()
    args = ["pretrain", "--data", "digits", "--image-size", "16", "--epochs", "1", "--batch-size", "128"]
    assert main([*args, "--denoise", "noise:0.2", "--lr", "3e-3", "--workdir", str(pretrained), "--no-progress"]) == 0
    assert (pretrained / "metrics.jsonl").read_text().splitlines() == lines
    assert "encoder ->" in capsys.readouterr().out


def test_finetune_from_pretrain_then_evaluate(pretrained, tmp_path, capsys) -> None:
    work = tmp_path / "ft"
    args = ["finetune", "--init", str(pretrained / "encoder"), "--data", "digits", "--freeze", "none"]
    args += ["--labels-per-class", "5", "--epochs", "2", "--batch-size", "16", "--workdir", str(work), "--no-progress"]
    assert main([*args, "--backbone-lr-scale", "0.5", "--parallel", "pmap", "--dtype", "bfloat16"]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "classifier ->" in out
    module, _, card = load_variables(work / "classifier")
    assert module.num_classes == 10 and card.extra["split"]["labels_per_class"] == 5
    assert card.dtype == "bfloat16"  # evaluate rebuilds the model in it: same numbers below
    assert card.class_names == tuple(str(i) for i in range(10))
    assert main(["evaluate", str(work / "classifier"), "--data", "digits", "--split", "test"]) == 0
    text = capsys.readouterr().out
    test_top1 = card.extra["test"]["top1"]
    assert f"top-1: {100 * test_top1:.2f}%" in text and f"(test, {card.extra['test']['n']} images)" in text
    assert main(["evaluate", str(work / "classifier"), "--data", "digits"]) == 0
    assert "(all, 1797 images)" in capsys.readouterr().out


@pytest.fixture(scope="module")
def torch_weights(tmp_path_factory) -> Path:
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tw") / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def test_finetune_from_converted_torchvision(torch_weights, folder, tmp_path, capsys) -> None:
    ckpt = tmp_path / "converted"
    assert main(["convert", str(torch_weights), str(ckpt)]) == 0
    work = tmp_path / "ft"
    args = ["finetune", "--init", str(ckpt), "--data", f"folder:{folder}", "--image-size", "32", "--freeze", "backbone"]
    args += ["--optimizer", "sgd", "--nesterov", "--warmup-steps", "1", "--clip-norm", "1.0", "--weight-decay", "1e-4"]
    assert main([*args, "--epochs", "1", "--batch-size", "8", "--workdir", str(work), "--no-progress"]) == 0
    module, variables, card = load_variables(work / "classifier")
    assert card.arch == "resnet18" and module.num_classes == 3
    assert card.class_names == ("left", "middle", "right")
    assert card.preprocessing.mean == (0.485, 0.456, 0.406) and card.preprocessing.crop_size == 32
    _, converted, _ = load_variables(ckpt)
    assert np.array_equal(variables["params"]["conv1"]["kernel"], converted["params"]["conv1"]["kernel"])
    capsys.readouterr()
    assert main(["evaluate", str(work / "classifier"), "--data", f"folder:{folder}"]) == 0
    assert "(all, 30 images)" in capsys.readouterr().out


def test_finetune_from_torch_weights_linear_probe(torch_weights, folder, tmp_path, capsys) -> None:
    args = ["finetune", "--torch-weights", str(torch_weights), "--data", f"folder:{folder}", "--image-size", "32"]
    args += ["--freeze", "linear-probe", "--epochs", "2", "--batch-size", "8", "--lr", "0.01"]
    assert main([*args, "--workdir", str(tmp_path), "--no-progress"]) == 0
    assert "resnet18 (--freeze linear-probe)" in capsys.readouterr().out
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["split"] == "train"


def test_demo_quick(tmp_path, capsys) -> None:
    assert main(["demo", "--quick", "--seeds", "1", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "every arm: 10 steps" in out and "linear_probe" in out
    res = json.loads((tmp_path / "results.json").read_text())
    assert set(res["summary"]) == {"scratch", "linear_probe", "frozen", "full"}
    assert (tmp_path / "accuracy.png").exists() and (tmp_path / "reconstructions.png").exists()


@pytest.mark.parametrize("command", ["pretrain", "finetune", "evaluate", "demo"])
def test_help(command, capsys) -> None:
    assert main([command, "--help"]) == 0
    assert "usage: jaxtl " + command in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["pretrain", "--data", "folder:/no/such/dir", "--workdir", "W"], "does not exist"),
        (["pretrain", "--data", "mnist", "--workdir", "W"], "'mnist' is not a data spec"),
        (["pretrain", "--data", "npz:/no/such.npz", "--workdir", "W"], "does not exist"),
        (["pretrain", "--data", "digits", "--denoise", "blur:1", "--workdir", "W"], "--denoise"),
        (["pretrain", "--data", "digits", "--epochs", "0", "--workdir", "W"], "--epochs must be >= 1, got 0"),
        (["pretrain", "--data", "digits", "--arch", "vgg", "--workdir", "W"], "invalid choice: 'vgg'"),
        (
            ["pretrain", "--data", "digits", "--torch-weights", "x.pth", "--workdir", "W"],
            "convnet_small has no torchvision weights",
        ),
        (["pretrain", "--data", "digits"], "--workdir"),
        (["finetune", "--data", "digits", "--workdir", "W"], "one of the arguments --weights --torch-weights --init"),
        (["finetune", "--init", "/no/ckpt", "--data", "digits", "--workdir", "W"], "/no/ckpt does not exist"),
        (["finetune", "--torch-weights", "/no/w.pth", "--data", "digits", "--workdir", "W"], "/no/w.pth"),
        (["evaluate", "/no/ckpt", "--data", "digits"], "/no/ckpt does not exist"),
        (["demo", "--seeds", "0"], "--seeds must be >= 1"),
        (["pretrain", "--data", "digits", "--clip-norm", "0", "--workdir", "W"], "--clip-norm must be > 0"),
        (["pretrain", "--data", "digits", "--schedule", "step", "--workdir", "W"], "invalid choice: 'step'"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, expected, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert expected in _one_line_error(capsys)


def test_bad_input_against_real_checkpoints(pretrained, folder, tmp_path, capsys) -> None:
    enc = str(pretrained / "encoder")
    assert main(["evaluate", enc, "--data", "digits"]) == 2
    assert "num_classes=0" in _one_line_error(capsys)
    argv = ["finetune", "--init", enc, "--data", "digits", "--freeze", "linear-probe", "--augment"]
    assert main([*argv, "--workdir", str(tmp_path)]) == 2
    assert "--freeze linear-probe computes features once and cannot augment" in _one_line_error(capsys)
    argv = ["finetune", "--init", enc, "--data", "digits", "--labels-per-class", "500", "--workdir", str(tmp_path)]
    assert main(argv) == 2
    assert "--labels-per-class 500 but some classes have fewer examples" in _one_line_error(capsys)
