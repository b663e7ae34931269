"""The CLI loses nothing and mixes nothing: convert never deletes what it did not write, a work directory has one
writer and one run, evaluate maps labels through the model's class names, and every expected failure is one line
``jaxtl: error: ...`` with exit code 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

import jaxtl
from jaxtl.cli import main
from jaxtl.lifecycle import WorkdirLock
from jaxtl.models import ModelCard
from jaxtl.train import load_variables, save_variables


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxtl: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def _folder(root: Path, classes: tuple[str, ...], per_class: int = 8, size: int = 16) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            img[:, 4 * c : 4 * c + 4] = 230
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    """A convnet_small backbone checkpoint with its card (what `jaxtl pretrain` writes), 16 px input."""
    module = jaxtl.create("convnet_small", num_classes=0)
    variables = jax.device_get(module.init(jax.random.PRNGKey(0), np.zeros((1, 16, 16, 3)), train=False))
    card = ModelCard.for_arch("convnet_small", 0, image_size=16, kind="encoder")
    return save_variables(tmp_path_factory.mktemp("enc") / "encoder", variables, card)


@pytest.fixture(scope="module")
def always_c(tmp_path_factory) -> Path:
    """A 3-class classifier (classes a, b, c) whose head ignores the image and always predicts c."""
    module = jaxtl.create("convnet_small", num_classes=3)
    variables = jax.device_get(module.init(jax.random.PRNGKey(0), np.zeros((1, 16, 16, 3)), train=False))
    variables["params"]["fc"] = {"kernel": np.zeros((128, 3), np.float32), "bias": np.array([0, 0, 5], np.float32)}
    card = ModelCard.for_arch("convnet_small", 3, image_size=16, class_names=("a", "b", "c"))
    return save_variables(tmp_path_factory.mktemp("clf") / "classifier", variables, card)


# --- convert: only jaxtl outputs are replaced -------------------------------------------------------------------


@pytest.fixture(scope="module")
def r18(tmp_path_factory) -> Path:
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    path = tmp_path_factory.mktemp("w") / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def test_convert_overwrite_never_deletes_a_users_folder_or_file(r18, tmp_path, monkeypatch, capsys):
    work = tmp_path / "d"
    work.mkdir()
    shutil.copy(r18, work / "r18.pth")
    (work / "train.py").write_text("x")
    monkeypatch.chdir(work)
    assert main(["convert", "r18.pth", ".", "--overwrite"]) == 2
    assert "is not exactly what jaxtl wrote there" in _one_line_error(capsys)
    assert sorted(p.name for p in work.iterdir()) == ["r18.pth", "train.py"]
    assert main(["convert", "r18.pth", "train.py", "--overwrite"]) == 2
    assert "is not exactly what jaxtl wrote there" in _one_line_error(capsys)
    assert (work / "train.py").read_text() == "x"
    assert main(["convert", "r18.pth", "out"]) == 0
    assert main(["convert", "r18.pth", "out", "--num-classes", "4", "--overwrite"]) == 0  # a jaxtl output: replaced
    assert load_variables(work / "out")[2].num_classes == 4
    assert not [p for p in work.iterdir() if p.name.startswith(".")]  # no leftovers


# --- one writer, one run per work directory ---------------------------------------------------------------------


def _finetune(encoder: Path, data: str, workdir: Path, *extra: str) -> list[str]:
    args = ["finetune", "--init", str(encoder), "--data", data, "--freeze", "none", "--epochs", "1"]
    return [*args, "--batch-size", "8", "--lr", "0.01", "--workdir", str(workdir), "--no-progress", *extra]


def test_a_second_writer_is_refused(encoder, tmp_path, capsys):
    lock = WorkdirLock(tmp_path)
    try:
        assert main(_finetune(encoder, "digits", tmp_path, "--labels-per-class", "2")) == 2
        assert "is in use by another run (host" in _one_line_error(capsys)
    finally:
        lock.close()


def test_resume_with_other_options_is_refused_unless_allowed(encoder, tmp_path, capsys):
    data = f"folder:{_folder(tmp_path / 'imgs', ('a', 'b', 'c'))}"
    assert main(_finetune(encoder, data, tmp_path / "w")) == 0
    before = (tmp_path / "w" / "metrics.jsonl").read_text()
    capsys.readouterr()
    for extra, words in (
        (["--seed", "1"], "the seed changed (0 -> 1)"),
        (["--batch-size", "4"], "the batch size changed (8 -> 4)"),
        (["--lr", "0.1"], "the learning rate changed (0.01 -> 0.1)"),
    ):
        assert main(_finetune(encoder, data, tmp_path / "w", *extra)) == 2
        assert "holds another run: " in (err := _one_line_error(capsys)) and words in err, err
    assert main(_finetune(encoder, "digits", tmp_path / "w", "--labels-per-class", "2")) == 2
    assert "the training data (its files or contents) changed" in _one_line_error(capsys)
    assert (tmp_path / "w" / "metrics.jsonl").read_text() == before  # nothing was mixed in
    assert main(_finetune(encoder, data, tmp_path / "w", "--seed", "1", "--allow-changed-run")) == 0


# --- evaluate follows the model's class names ---------------------------------------------------------------------


def test_evaluate_maps_labels_through_the_checkpoints_class_names(always_c, tmp_path, capsys):
    only_c = _folder(tmp_path / "only_c", ("c",))
    assert main(["evaluate", str(always_c), "--data", f"folder:{only_c}"]) == 0
    assert "top-1: 100.00%" in capsys.readouterr().out  # label of folder c is the model's c, not "first folder"
    renamed = _folder(tmp_path / "renamed", ("a", "x"))
    assert main(["evaluate", str(always_c), "--data", f"folder:{renamed}"]) == 2
    assert "['x']" in _one_line_error(capsys)
    assert main(["evaluate", str(always_c), "--data", "digits"]) == 2  # classes 0..9, not a, b, c
    assert "are not the model's" in _one_line_error(capsys)


# --- every expected failure: one line, exit 2 ---------------------------------------------------------------------


def _edited(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    meta = json.loads((dst / "jaxtl.json").read_text())
    edit(meta["card"])
    (dst / "jaxtl.json").write_text(json.dumps(meta))
    return dst


EDITS = {
    "arch": (lambda c: c.update(arch="resnet9"), "unknown architecture 'resnet9'"),
    "crop_size": (lambda c: c["preprocessing"].update(crop_size="big"), "'crop_size' must be an integer"),
    "std": (lambda c: c["preprocessing"].update(std=[0, 0, 0]), "'std' must hold finite positive numbers"),
    "class_names": (lambda c: c.update(class_names=["a"]), "has 1 names for num_classes=3"),
}


@pytest.mark.parametrize("field", sorted(EDITS))
def test_an_edited_card_is_one_line_naming_the_field(always_c, tmp_path, field, capsys):
    edit, expected = EDITS[field]
    ckpt = _edited(always_c, tmp_path / "ck", edit)
    assert main(["evaluate", str(ckpt), "--data", "digits"]) == 2
    err = _one_line_error(capsys)
    assert expected in err and "jaxtl.json" in err, err


CASES = {
    "lr inf": (["--lr", "inf"], "--lr must be finite"),
    "momentum nan": (["--optimizer", "sgd", "--momentum", "nan"], "--momentum must be finite, got nan"),
    "weight decay nan": (["--weight-decay", "nan"], "--weight-decay must be finite, got nan"),
    "warmup beyond the run": (["--warmup-steps", "100000"], "not more than --warmup-steps 100000"),
    "negative seed": (["--seed", "-1"], "--seed must be >= 0, got -1"),
    "zero batch": (["--batch-size", "0"], "--batch-size must be >= 1"),
    "num-processes alone": (["--num-processes", "2"], "need all of --coordinator, --num-processes and --process-id"),
    "distributed without a cluster": (["--distributed"], "jax.distributed could not start"),
    "labels per class too many": (["--labels-per-class", "500"], "--labels-per-class 500 but some classes"),
    "batch not a multiple of the devices": (["--batch-size", "6", "--parallel", "pmap"], "use 4 or 8"),
    "non-finite loss": (["--optimizer", "sgd", "--lr", "1e30"], "non-finite loss"),
    "workers negative": (["--workers", "-1"], "--workers must be >= 0"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_finetune_failures_are_one_line_exit_2(encoder, tmp_path, case, capsys):
    extra, expected = CASES[case]
    assert main(_finetune(encoder, "digits", tmp_path / "w", *extra)) == 2
    err = _one_line_error(capsys)
    assert expected in err, err


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--denoise", "noise:inf"], "finite number > 0"),
        (["--denoise", "mask:0.5:5"], "patch 5 must divide the image size 16x16"),
    ],
)
def test_pretrain_failures_are_one_line_exit_2(tmp_path, extra, expected, capsys):
    args = ["pretrain", "--data", "digits", "--image-size", "16", "--epochs", "1", "--workdir", str(tmp_path)]
    assert main([*args, "--no-progress", *extra]) == 2
    assert expected in _one_line_error(capsys)


def test_all_checkpoints_damaged_is_one_line(encoder, tmp_path, capsys):
    data = f"folder:{_folder(tmp_path / 'imgs', ('a', 'b'))}"
    assert main(_finetune(encoder, data, tmp_path / "w")) == 0
    for step in (tmp_path / "w" / "checkpoints").iterdir():
        if step.name.isdigit():
            for f in step.rglob("*"):
                if f.is_file() and f.stat().st_size > 100:
                    f.write_bytes(b"\0" * 10)
    capsys.readouterr()
    assert main(_finetune(encoder, data, tmp_path / "w")) == 2
    warning, error = capsys.readouterr().err.strip().splitlines()  # a warning is one line too
    assert warning.startswith("jaxtl: warning: checkpoint step ") and "falling back" in warning, warning
    assert error.startswith("jaxtl: error: every checkpoint in"), error


def test_batch_larger_than_the_data_is_clamped_to_the_devices(encoder, tmp_path, capsys):
    # The same rule in every route (fit, finetune, the CLI): clamped to the data, said in one warning line.
    # 48 images, 20% held out: 38 to train on 4 devices with --batch-size 64 -> batches of 36 (not 38: 4 devices).
    data = f"folder:{_folder(tmp_path / 'imgs', ('a', 'b', 'c'), per_class=16)}"
    argv = _finetune(encoder, data, tmp_path / "w", "--parallel", "pmap")
    argv[argv.index("--batch-size") + 1] = "64"
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "on 38 images" in out
    assert "jaxtl: warning: --batch-size 64 is larger than the 38 training examples: training with batches of 36" in err
    rec = json.loads((tmp_path / "w" / "metrics.jsonl").read_text().splitlines()[0])
    assert rec["count"] == 36


def test_sigterm_saves_a_checkpoint_and_exits_with_one_line(encoder, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    data = _folder(tmp_path / "imgs", ("a", "b"), per_class=40)
    argv = _finetune(encoder, f"folder:{data}", tmp_path / "w", "--workers", "0", "--epochs", "50")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([sys.executable, "-m", "jaxtl.cli", *argv], stderr=subprocess.PIPE, text=True, env=env)
    metrics = tmp_path / "w" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and not (metrics.exists() and metrics.read_text()):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("jaxtl: SIGTERM received: stopped after step ") and "saved in" in last, err
    assert "Traceback" not in err
    steps = [int(p.name) for p in (tmp_path / "w" / "checkpoints").iterdir() if p.name.isdigit()]
    assert steps and max(steps) == int(last.split("stopped after step ")[1].split(";")[0])


def test_a_full_disk_during_convert_is_one_line(r18, tmp_path, monkeypatch, capsys):
    import errno

    import orbax.checkpoint as ocp

    def no_space(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ocp.Checkpointer, "save", no_space)
    assert main(["convert", str(r18), str(tmp_path / "out")]) == 2
    err = _one_line_error(capsys)
    assert f"cannot write {tmp_path / 'out'}" in err and "No space left on device" in err and "MiB free" in err, err
    assert not list(tmp_path.iterdir())  # no half-written output, no temporary folder left


def test_a_value_error_from_inside_a_library_is_a_bug_not_bad_input(always_c, tmp_path, monkeypatch, capsys):
    # Bad input is what jaxtl's own checks reject (one line, exit 2). A ValueError raised inside jax/numpy means
    # jaxtl passed it something it should have checked: exit 1 with the traceback, so that it gets reported.
    _folder(tmp_path / "imgs", ("a", "b", "c"), per_class=2)
    args = ["evaluate", str(always_c), "--data", f"folder:{tmp_path / 'imgs'}", "--workers", "0"]

    def numpy_error(*a, **k):
        return np.add(np.zeros(3), np.zeros(4))  # numpy's own "operands could not be broadcast" ValueError

    import jaxtl.recipes.evaluation as evaluation

    monkeypatch.setattr(evaluation, "evaluate_classifier", numpy_error)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "could not be broadcast" in err and "internal error" in err, err

    monkeypatch.setattr(evaluation, "evaluate_classifier", lambda *a, **k: jaxtl.models.get_spec("resnet9"))
    assert main(args) == 2
    assert "unknown architecture 'resnet9'" in _one_line_error(capsys)
