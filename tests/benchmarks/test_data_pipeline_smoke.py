"""benchmarks/data_pipeline.py --smoke: both sides run over the same generated folder and the JSON has the numbers
the README table reads (images/s per side and worker count, cold and warm; peak RSS per folder size)."""

from __future__ import annotations

import json
import pathlib

import pytest

pytest.importorskip("torchvision")

from benchmarks import data_pipeline
from jaxtl.data.stream import IN_PROCESS_BELOW


def test_data_pipeline_smoke(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "data_pipeline.json"
    args = ["--smoke", "--workers", "0", "--rss", "--data-dir", str(tmp_path / "data"), "--out", str(out)]
    payload = data_pipeline.main([*args, "--feed", "convnet_small"])
    saved = json.loads(out.read_text())
    assert saved["results"] == json.loads(json.dumps(payload["results"]))
    (row,) = saved["results"]
    assert row["workers"] == 0
    for side in ("jaxtl", "torch"):
        s = row[side]
        # 48 images, batch 8, drop_last: 6 batches of 8 per epoch on both sides.
        assert s["images_per_epoch"] == 48 and s["epochs"] == 2
        assert s["images_per_s"] > 0 and s["warm_images_per_s"] > 0 and s["cold_epoch"]["n"] == 1
    assert row["ratio"] == pytest.approx(row["jaxtl"]["images_per_s"] / row["torch"]["images_per_s"])
    sizes = [r["folder_images"] for r in saved["rss"]]
    assert sizes == [24, IN_PROCESS_BELOW + 44]
    short, long = saved["rss"]
    for r in saved["rss"]:
        assert r["images"] == r["folder_images"]  # every image of the folder streamed once (eval, masked)
        assert r["peak_rss_mib"] > 0
    assert short["worker_peak_rss_mib"] == 0  # a short evaluation pass decodes in this process: no worker started
    assert long["worker_peak_rss_mib"] > 0  # one grain worker process was sampled
    assert saved["settings"]["transforms"].startswith("decode + RandomResizedCrop(32)")
    assert (tmp_path / "data" / "throughput-48").is_dir()  # --data-dir keeps the generated folders
    fed = saved["feed"]  # the pipeline feeding a train step, against the step on one batch already on the device
    assert fed["arch"] == "convnet_small" and fed["workers"] == 0 and fed["steps"] == 6 * 2  # 2 timed epochs
    assert fed["fed_images_per_s"] > 0 and fed["step_alone_images_per_s"] > 0
    assert fed["limit"] == ("input pipeline" if fed["fed_over_alone"] < 0.9 else "compute")
    from benchmarks import report

    assert "Feeding a train step (convnet_small float32 on cpu" in report.render({"data_pipeline": saved})
