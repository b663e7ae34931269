"""benchmarks/folder_finetune.py --smoke: jaxtl's library route and the PyTorch loop each fine-tune resnet18 from
the same generated folder, in both modes, in processes of their own, and the JSON holds what the README table reads
(wall time, images/s, the ratio, jaxtl's start-up profile) with the same work on both sides (same split, same
optimizer steps)."""

from __future__ import annotations

import json
import math
import os
import pathlib

import pytest

pytest.importorskip("torchvision")

from benchmarks import folder_finetune, report


def test_folder_finetune_smoke(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The worker processes share the test suite's compilation cache (a benchmark run has none): the smoke test
    # checks the script, not the compile time.
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", os.environ["JAXTL_COMPILE_CACHE"])
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    out = tmp_path / "results" / "folder_finetune.json"
    payload = folder_finetune.main(["--smoke", "--data-dir", str(tmp_path / "data"), "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["results"] == json.loads(json.dumps(payload["results"]))
    assert [r["mode"] for r in saved["results"]] == ["frozen", "full"]
    for row in saved["results"]:
        j, t = row["jaxtl"], row["torch"]
        for side in (j, t):
            assert side["wall_s"] > 0 and side["images_per_s"] > 0 and 0 < side["run_s"] < side["wall_s"]
            assert 0.0 <= side["top1"] <= 1.0
        # 48 images, 20% held out: 38 train -> 4 steps of 8 (drop_last), 10 test images, on both sides.
        assert (j["steps"], j["train_images"], j["test_images"]) == (4, 32, 10)
        assert (t["steps"], t["train_images"], t["test_images"]) == (4, 32, 10)
        assert math.isfinite(row["ratio"]) and row["ratio"] == pytest.approx(j["wall_s"] / t["wall_s"])
        # jaxtl's start-up profile: medians per phase, from process start to exit, in start order.
        phases = {p["phase"]: p for p in j["profile"]}
        for name in ("python start, imports, jax backend", "weights: read + convert", "compile: train step"):
            assert name in phases, sorted(phases)
        assert "data: first batch" in phases and "eval: pass" in phases and folder_finetune.EXIT in phases
        starts = [p["start_s"] for p in j["profile"]]
        assert starts == sorted(starts) and phases[folder_finetune.EXIT]["end_s"] == pytest.approx(j["wall_s"])
        assert j["jax"]["programs"] >= 2
    assert saved["settings"]["image_size"] == 32
    assert (tmp_path / "data" / "resnet18-random.pth").is_file()  # --data-dir keeps the folder and the weights
    block = report.render(report.load_results(out.parent))
    assert "Fine-tuning from an image folder" in block
    assert "| frozen |" in block and "| full |" in block


def test_report_renders_streaming_and_finetune_rss_apart(tmp_path: pathlib.Path) -> None:
    # data_pipeline --rss-only --rss-finetune writes data_pipeline_rss.json: no throughput rows, whole-run RSS rows.
    machine = {"cpu_model": "Test CPU", "cpu_count": 2, "commit": "0" * 40}
    run = "jaxtl finetune --freeze backbone, 1 epoch"
    rss = [
        {"mode": run, "folder_images": 20000, "peak_rss_mib": 900.0, "worker_peak_rss_mib": 300.0, "wall_s": 60.0},
        {"mode": run, "folder_images": 2000, "peak_rss_mib": 800.0, "worker_peak_rss_mib": 290.0, "wall_s": 9.0},
    ]
    payload = {"benchmark": "data_pipeline", "machine": machine, "settings": {}, "results": [], "rss": rss}
    (tmp_path / "data_pipeline_rss.json").write_text(json.dumps(payload))
    stream = {"mode": "streaming pass (eval transform)", "folder_images": 2000, "images": 2000, "peak_rss_mib": 250.0}
    both = dict(payload, rss=[stream, *rss])
    block = report.render(report.load_results(tmp_path))
    assert "Input pipeline memory: peak RSS" in block and "Peak RSS of a whole run" in block
    assert "| 2,000 | 800 | 290 | 9 |" in block and "| 20,000 | 900 | 300 | 60 |" in block  # sorted by size
    assert "20,000 vs 2,000 images: main process +100 MiB." in block
    assert "streaming pass" not in block
    ranged = dict(rss[1], peak_rss_mib_range=[780.0, 820.0], runs=[{}, {}])
    assert "| 2,000 | 800 (780-820) | 290 | 9 |" in report._rss_rows([ranged])
    assert "median (min-max) of 2 runs per size" in report._rss_rows([ranged])
    text = report._rss_rows(both["rss"])
    assert text.index("Peak RSS of a streaming pass") < text.index("Peak RSS of a whole run")
    assert text.count("vs 2,000 images") == 1  # one streaming size: no difference line for it


def test_data_pipeline_rss_only_needs_an_rss_part() -> None:
    from benchmarks import data_pipeline

    with pytest.raises(SystemExit, match="--rss-only needs --rss or --rss-finetune"):
        data_pipeline.main(["--rss-only"])


@pytest.mark.parametrize(("n", "classes", "fraction", "seed"), [(48, 10, 0.2, 0), (512, 10, 0.2, 0), (97, 3, 0.35, 7)])
def test_the_torch_side_splits_exactly_as_jaxtl(n: int, classes: int, fraction: float, seed: int) -> None:
    # torch_ref keeps a numpy copy of train_test_split (its worker must not import jax, or its start-up would
    # count jax's import): both sides must train and evaluate on the same images.
    import numpy as np

    from benchmarks.torch_ref import stratified_split
    from jaxtl.data import ArrayDataset, train_test_split

    labels = np.random.default_rng(seed).integers(0, classes, n)
    ids = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1)  # each example's image is its index
    train, test = train_test_split(ArrayDataset(ids, labels, classes), fraction, seed)
    got_train, got_test = stratified_split(labels, fraction, seed)
    np.testing.assert_array_equal(got_train, train.images.ravel().astype(int))
    np.testing.assert_array_equal(got_test, test.images.ravel().astype(int))
