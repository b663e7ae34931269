"""One run lifecycle for every writing route (#20): the default fine-tune (frozen backbone, cached features) keeps
the promises the per-step path keeps, and convert/pack/evaluate never touch what they did not write."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

import jaxtl
from jaxtl.cli import main
from jaxtl.lifecycle import WorkdirLock
from jaxtl.models import ModelCard
from jaxtl.train import save_variables


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxtl: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def _folder(root: Path, classes=("a", "b", "c"), per_class: int = 8, size: int = 16) -> Path:
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
    module = jaxtl.create("convnet_small", num_classes=0)
    variables = jax.device_get(module.init(jax.random.PRNGKey(0), np.zeros((1, 16, 16, 3)), train=False))
    card = ModelCard.for_arch("convnet_small", 0, image_size=16, kind="encoder")
    return save_variables(tmp_path_factory.mktemp("enc") / "encoder", variables, card)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return _folder(tmp_path_factory.mktemp("data") / "imgs")


def _finetune(encoder: Path, data: str, workdir: Path, *extra: str) -> list[str]:
    args = ["finetune", "--init", str(encoder), "--data", data, "--epochs", "1", "--batch-size", "8"]
    return [*args, "--workers", "0", "--workdir", str(workdir), "--no-progress", *extra]


# --- the default fine-tune: frozen backbone, features computed once ----------------------------------------------


def test_default_finetune_has_one_writer(encoder, images, tmp_path, capsys):
    lock = WorkdirLock(tmp_path)  # what a running fine-tune holds
    try:
        assert main(_finetune(encoder, f"folder:{images}", tmp_path)) == 2
        assert "is in use by another run (host" in _one_line_error(capsys)
    finally:
        lock.close()
    assert not (tmp_path / "classifier").exists()


def test_default_finetune_refuses_a_changed_run(encoder, images, tmp_path, capsys):
    assert main(_finetune(encoder, f"folder:{images}", tmp_path)) == 0
    first = (tmp_path / "classifier" / "jaxtl.json").read_text()
    capsys.readouterr()
    assert main(_finetune(encoder, f"folder:{images}", tmp_path, "--seed", "3", "--lr", "0.01")) == 2
    err = _one_line_error(capsys)
    assert "holds another run: the seed changed (0 -> 3); the learning rate changed (0.001 -> 0.01)" in err, err
    assert (tmp_path / "classifier" / "jaxtl.json").read_text() == first  # the earlier classifier is kept
    # The same run again replaces only its own output; a file of the user's in it stops that.
    assert main(_finetune(encoder, f"folder:{images}", tmp_path)) == 0
    (tmp_path / "classifier" / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(_finetune(encoder, f"folder:{images}", tmp_path)) == 2
    assert "is not what this run wrote there" in _one_line_error(capsys)
    assert (tmp_path / "classifier" / "notes.txt").read_text() == "mine"


def test_an_unwritable_workdir_fails_before_any_work(encoder, images, tmp_path, monkeypatch, capsys):
    import jaxtl.lifecycle as lifecycle
    import jaxtl.recipes.finetuning as finetuning

    real_open = Path.open

    def read_only(self, mode="r", *a, **k):
        if ".jaxtl-write-probe" in self.name:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_open(self, mode, *a, **k)

    def no_work(*a, **k):
        raise AssertionError("features were extracted before the work directory was checked")

    monkeypatch.setattr(Path, "open", read_only)
    monkeypatch.setattr(finetuning, "extract_features", no_work)
    assert main(_finetune(encoder, f"folder:{images}", tmp_path / "w")) == 2
    err = _one_line_error(capsys)
    assert "is not writable: Permission denied" in err and "choose a writable location" in err, err
    assert lifecycle.RUN_RECORD not in os.listdir(tmp_path / "w")


def test_a_full_disk_while_saving_the_classifier_is_one_line_and_leaves_nothing(
    encoder, images, tmp_path, monkeypatch, capsys
):
    import jaxtl.recipes.finetuning as finetuning

    real = finetuning.write_variables

    def full(directory, variables, card):
        real(directory, variables, card)  # most of it written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(finetuning, "write_variables", full)
    assert main(_finetune(encoder, f"folder:{images}", tmp_path)) == 2
    err = _one_line_error(capsys)
    assert f"cannot write {tmp_path / 'classifier'}: No space left on device" in err and "MiB free" in err, err
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".classifier")]  # no temporaries
    monkeypatch.setattr(finetuning, "write_variables", real)
    assert main(_finetune(encoder, f"folder:{images}", tmp_path)) == 0  # the same command now succeeds


def test_sigterm_on_the_default_path_stops_cleanly_in_one_line(encoder, tmp_path):
    data = _folder(tmp_path / "many", ("a", "b"), per_class=400, size=48)  # seconds of extraction, 4 at a time
    argv = _finetune(encoder, f"folder:{data}", tmp_path / "w", "--image-size", "48", "--batch-size", "4")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "jaxtl.cli", *argv], stderr=subprocess.PIPE, text=True, env=env)
    record = tmp_path / "w" / "run.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and not record.exists():
        time.sleep(0.1)
    time.sleep(1.0)  # into the feature extraction
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1] == (
        "jaxtl: SIGTERM received during feature extraction: stopped; nothing to save yet, run the same command to "
        "start over"
    ), err
    assert "Traceback" not in err
    assert not (tmp_path / "w" / "classifier").exists()


# --- evaluate: the recorded held-out split, by content ------------------------------------------------------------


def test_evaluate_split_test_uses_the_recorded_split(encoder, images, tmp_path, capsys):
    assert main(_finetune(encoder, f"folder:{images}", tmp_path / "w")) == 0
    held = json.loads((tmp_path / "w" / "classifier" / "heldout.json").read_text())["test"]["names"]
    assert len(held) == 5 and all("/" in n for n in held)  # 20% of 24 images, names relative to the folder
    capsys.readouterr()
    clf = str(tmp_path / "w" / "classifier")
    # The same folder spelled another way (relative, through a symlink): the same held-out images.
    os.symlink(images, tmp_path / "link")
    for spelling in (str(tmp_path / "link"), os.path.relpath(images)):
        assert main(["evaluate", clf, "--data", f"folder:{spelling}", "--split", "test", "--workers", "0"]) == 0
        assert "(test, 5 images)" in capsys.readouterr().out
    # Another folder holding other images: refused, not "held-out" accuracy measured on training images.
    other = _folder(tmp_path / "other", per_class=4)
    assert main(["evaluate", clf, "--data", f"folder:{other}", "--split", "test"]) == 2
    assert "held-out images are not in this data" in _one_line_error(capsys)
    # A held-out image changed since: refused.
    copy = tmp_path / "copy"
    shutil.copytree(images, copy)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(copy / held[0])
    assert main(["evaluate", clf, "--data", f"folder:{copy}", "--split", "test"]) == 2
    assert "held-out image(s) changed since fine-tuning" in _one_line_error(capsys)


def test_evaluate_with_a_workdir_writes_through_the_lifecycle(encoder, images, tmp_path, capsys):
    assert main(_finetune(encoder, f"folder:{images}", tmp_path / "w", "--test-fraction", "0")) == 0
    clf = str(tmp_path / "w" / "classifier")
    capsys.readouterr()
    assert main(["evaluate", clf, "--data", f"folder:{images}", "--split", "test"]) == 2
    assert "there is no held-out split" in _one_line_error(capsys)
    assert main(["evaluate", clf, "--data", f"folder:{images}", "--workdir", str(tmp_path / "e")]) == 0
    saved = json.loads((tmp_path / "e" / "evaluation.json").read_text())
    assert saved["n"] == 24 and 0 <= saved["top1"] <= 1
    assert "top5" not in saved and "top-5" not in capsys.readouterr().out  # always 100% with 3 classes: not shown


# --- convert and pack own only what they wrote ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def r18(tmp_path_factory) -> Path:
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    path = tmp_path_factory.mktemp("w") / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def test_convert_never_replaces_a_users_file(r18, tmp_path, capsys):
    mine = tmp_path / "mine.safetensors"
    mine.write_bytes(b"the user's file")
    assert main(["convert", str(r18), str(tmp_path / "out"), "--safetensors", str(mine), "--overwrite"]) == 2
    assert "is not exactly what jaxtl wrote there" in _one_line_error(capsys)
    assert mine.read_bytes() == b"the user's file" and not (tmp_path / "out").exists()
    # A safetensors path that cannot be written: nothing written at all, so the same command works once fixed.
    (tmp_path / "blocker").write_text("a file where a folder is needed")
    assert main(["convert", str(r18), str(tmp_path / "out"), "--safetensors", str(tmp_path / "blocker" / "x")]) == 2
    _one_line_error(capsys)
    assert not (tmp_path / "out").exists()
    st = tmp_path / "flax.safetensors"
    assert main(["convert", str(r18), str(tmp_path / "out"), "--safetensors", str(st)]) == 0
    # Both outputs are jaxtl's now (the folder's record lists the file): --overwrite replaces them together.
    assert main(["convert", str(r18), str(tmp_path / "out"), "--safetensors", str(st), "--overwrite"]) == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_pack_overwrite_deletes_only_its_own_pack(images, tmp_path, capsys):
    out = tmp_path / "packed"
    assert main(["pack", str(images), str(out)]) == 0
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    index = json.loads((out / "jaxtl_pack.json").read_text())
    index["shards"].append({"file": "../victim.txt", "num_records": 0, "first": 0})  # a crafted index
    (out / "jaxtl_pack.json").write_text(json.dumps(index))
    capsys.readouterr()
    assert main(["pack", str(images), str(out), "--overwrite"]) == 2
    assert "is not exactly what jaxtl wrote there" in _one_line_error(capsys)
    assert victim.read_text() == "keep me" and (out / "jaxtl_pack.json").exists()


def test_a_failed_pack_keeps_the_previous_one_and_leaves_nothing(images, tmp_path, monkeypatch, capsys):
    import jaxtl.data.pack as pack

    out = tmp_path / "packed"
    assert main(["pack", str(images), str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = pack._write_pack

    def half_then_full(listing, root, out_s, num_shards, records_per_shard):
        real(listing, root, out_s, num_shards, records_per_shard)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pack, "_write_pack", half_then_full)
    assert main(["pack", str(images), str(out), "--overwrite"]) == 2
    assert "No space left on device" in _one_line_error(capsys)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the previous pack, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["packed"]  # no partial pack, no temporary
    assert main(["pack", str(images), str(tmp_path / "new")]) == 2  # a failed pack blocks no rerun...
    _one_line_error(capsys)
    monkeypatch.setattr(pack, "_write_pack", real)
    assert main(["pack", str(images), str(tmp_path / "new")]) == 0  # ...which works once the disk has room
