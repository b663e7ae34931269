"""TensorBoard: scalars from metrics records and images are in the event file when read back; off, or on a process
other than 0, nothing is written."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorboardX")

from jaxtl.train.tensorboard import TensorBoard, displayable, read_images, read_scalars


def test_scalars_and_images_read_back(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 8, 6, 3), dtype=np.uint8)
    with TensorBoard(tmp_path, process_index=0) as tb:
        for step in (1, 2, 3):
            rec = {"step": step, "split": "train", "epoch": 0, "batch": step - 1, "count": 8.0}
            tb.record({**rec, "loss": 1.0 / step, "grad_norm": 0.5, "images_per_s": 100.0 + step})
            tb.scalar("train/lr", 0.1 * step, step)
        tb.record({"step": 3, "split": "eval", "loss": 0.7, "top1": 0.75, "count": 40.0})
        tb.images("inputs", images, 3)
        mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
        normalised = (images / 255.0 - np.array(mean)) / np.array(std)
        tb.reconstructions("reconstructions", normalised, normalised, 3, normalization=(mean, std))
    scalars = read_scalars(tmp_path)
    assert set(scalars) == {"train/loss", "train/grad_norm", "train/images_per_s", "train/lr", "eval/loss", "eval/top1"}
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3]
    np.testing.assert_allclose([v for _, v in scalars["train/loss"]], [1.0, 0.5, 1 / 3], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in scalars["train/lr"]], [0.1, 0.2, 0.3], rtol=1e-6)
    assert scalars["eval/top1"] == [(3, 0.75)]
    pictures = read_images(tmp_path)
    ((step, row),) = pictures["inputs"]
    assert step == 3 and row.shape[:2] == (8, 3 * 6 + 2 * 2)
    np.testing.assert_array_equal(row[:, :6, :3], images[0])  # lossless PNG: the pixels themselves
    ((_, pair),) = pictures["reconstructions"]
    assert pair.shape[0] == 16  # inputs over reconstructions
    np.testing.assert_allclose(pair[:8, :6, :3].astype(int), images[0].astype(int), atol=1)  # normalisation undone


def test_resumed_run_purges_what_the_killed_run_logged_past_its_checkpoint(tmp_path):
    first = TensorBoard(tmp_path, process_index=0)
    for step in range(1, 6):  # killed after step 5, last checkpoint at step 3
        first.record({"step": step, "split": "train", "loss": float(step)})
    first.close()
    resumed = TensorBoard(tmp_path, process_index=0, purge_step=4)
    for step in range(4, 7):
        resumed.record({"step": step, "split": "train", "loss": 10.0 * step})
    resumed.close()
    assert len(list(tmp_path.iterdir())) == 2
    assert read_scalars(tmp_path)["train/loss"] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0), (6, 60.0)]


def test_off_and_other_processes_write_nothing(tmp_path):
    for kwargs in ({"enabled": False, "process_index": 0}, {"process_index": 1}):
        d = tmp_path / str(len(kwargs))
        tb = TensorBoard(d, **kwargs)
        tb.record({"step": 1, "split": "train", "loss": 1.0})
        tb.images("x", np.zeros((1, 4, 4, 3), np.uint8), 1)
        tb.close()
        assert not d.exists() or not any(d.iterdir())


def test_displayable_checks_and_gray():
    gray = displayable(np.full((2, 4, 4, 1), 0.5, np.float32))
    assert gray.shape == (2, 4, 4, 3) and gray.dtype == np.uint8 and np.all(gray == 128)
    with pytest.raises(ValueError, match=r"\[N, H, W, C\] with C 1 or 3"):
        displayable(np.zeros((4, 4, 3)))
