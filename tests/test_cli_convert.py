"""`jaxtl convert` and `jaxtl inspect`: happy paths, and one-line errors with exit code 2 for bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from jaxtl.bridge import from_torchvision, load_flax_safetensors  # noqa: E402
from jaxtl.cli import main  # noqa: E402
from jaxtl.train.model_files import load_variables  # noqa: E402


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxtl: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_convert_happy_path(weights, tmp_path, capsys) -> None:
    out, st = tmp_path / "ck", tmp_path / "flax.safetensors"
    assert (
        main(["convert", str(weights), str(out), "--num-classes", "10", "--seed", "1", "--safetensors", str(st)]) == 0
    )
    summary = capsys.readouterr().out.strip()
    assert summary.count("\n") == 0 and "resnet18" in summary and "new 10-class head (seed 1)" in summary
    module, restored, card = load_variables(out)
    assert module.num_classes == 10 and card.arch == "resnet18" and card.extra["seed"] == 1
    _, expected = from_torchvision(weights, num_classes=10, seed=1)
    assert jax.tree.all(jax.tree.map(lambda a, b: a.dtype == b.dtype and np.array_equal(a, b), restored, expected))
    flat = load_flax_safetensors(st)
    assert jax.tree.all(jax.tree.map(np.array_equal, flat, expected))

    assert main(["convert", str(weights), str(out)]) == 2
    assert "already exists; pass --overwrite to replace it" in _one_line_error(capsys)
    assert main(["convert", str(weights), str(out), "--overwrite"]) == 0
    assert load_variables(out)[0].num_classes == 1000


def test_inspect_reports_arch_sizes_and_problems(weights, tmp_path, capsys) -> None:
    assert main(["inspect", str(weights)]) == 0
    text = capsys.readouterr().out
    assert "architecture:  resnet18" in text
    assert "params:        62 tensors, 11,689,512 elements" in text
    assert "batch stats:   60 tensors, 9,620 elements" in text
    assert "head:          [1000, 512] (num_classes=1000)" in text
    assert "problems:      none" in text

    sd = torch.load(weights, weights_only=True)
    del sd["layer2.0.bn1.running_var"]
    sd["extra"] = torch.zeros(1)
    sd["layer1.0.conv2.weight"] = torch.zeros(64, 64, 1, 1)
    torch.save(sd, tmp_path / "bad.pth")
    assert main(["inspect", str(tmp_path / "bad.pth")]) == 0
    text = capsys.readouterr().out
    assert "problems:      3" in text
    assert "missing key 'layer2.0.bn1.running_var'" in text and "unexpected key 'extra'" in text
    assert "shape of 'layer1.0.conv2.weight' is [64, 64, 1, 1]" in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["convert", "{tmp}/missing.pth", "{tmp}/o"], "no such file"),
        (["inspect", "{tmp}/missing.pth"], "no such file"),
        (["convert", "{w}", "{tmp}/o", "--arch", "resnet99"], "invalid choice: 'resnet99'"),
        (["convert", "{w}", "{tmp}/o", "--num-classes", "ten"], "invalid int value: 'ten'"),
        (["convert", "{w}", "{tmp}/o", "--num-classes", "-1"], "--num-classes must be >= 0"),
        (["convert", "{w}", "{w}"], "OUT {w} is the input"),
        (["convert", "{w}", "{tmp}/o", "--safetensors", "{w}"], "safetensors {w} is the input"),
        (["convert", "{w}", "{tmp}/o", "--arch", "resnet50"], "cannot convert"),
        (["convert", "{w}"], "required: OUT"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "required: COMMAND"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, message, weights, tmp_path, capsys) -> None:
    argv = [a.format(tmp=tmp_path, w=weights) for a in argv]
    assert main(argv) == 2
    assert message.format(tmp=tmp_path, w=weights) in _one_line_error(capsys)
    assert not (tmp_path / "o").exists()


def test_help_for_each_subcommand(capsys) -> None:
    for cmd in ("convert", "inspect"):
        assert main([cmd, "--help"]) == 0
        assert f"usage: jaxtl {cmd}" in capsys.readouterr().out


def test_real_entry_point(weights, tmp_path) -> None:
    exe = Path(sys.executable).with_name("jaxtl")
    if not exe.exists():
        pytest.skip("jaxtl console script not installed in this environment")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    ok = subprocess.run([str(exe), "inspect", str(weights)], capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0 and "architecture:  resnet18" in ok.stdout, ok.stderr
    bad = subprocess.run(
        [str(exe), "convert", str(tmp_path / "nope.pth"), str(tmp_path / "o")], capture_output=True, text=True, env=env
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [f"jaxtl: error: no such file: {tmp_path / 'nope.pth'}"]


def test_convert_backbone_counts_the_params_it_saved_and_inspect_reads_the_folder(weights, tmp_path, capsys) -> None:
    out = tmp_path / "backbone"
    assert main(["convert", str(weights), str(out), "--num-classes", "0"]) == 0
    summary = capsys.readouterr().out
    # resnet18 has 11,689,512 parameters, 513,000 of them in fc: the backbone saved has the rest.
    assert "resnet18, 11,176,512 params, no head (backbone)" in summary, summary
    assert main(["inspect", str(out)]) == 0  # the folder convert just wrote
    text = capsys.readouterr().out
    assert "layout:        jaxtl model directory (backbone)" in text
    assert "params:        60 tensors, 11,176,512 elements" in text and "head:          none (backbone)" in text


def test_a_run_folder_given_for_a_model_names_the_model_inside(weights, tmp_path, capsys) -> None:
    run = tmp_path / "ft"
    assert main(["convert", str(weights), str(run / "classifier"), "--num-classes", "3"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", "digits"]) == 2
    err = _one_line_error(capsys)
    assert f"the run there saved its model in {run / 'classifier'}" in err, err
