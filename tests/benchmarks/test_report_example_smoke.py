"""benchmarks/report_example.py --smoke: the README's per-class report picture comes from a real run's files."""

from __future__ import annotations

import json
import pathlib


def test_report_example_smoke(tmp_path: pathlib.Path) -> None:
    from benchmarks import report_example

    summary = report_example.main(["--smoke", "--out", str(tmp_path / "out"), "--workdir", str(tmp_path / "run")])
    out = tmp_path / "out"
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "report.json").read_text())
    assert [c["class"] for c in report["per_class"]] == [str(i) for i in range(10)]
    assert report["count"] == summary["held_out_ema"]["n"] == summary["held_out"]["n"]
    assert json.loads((out / "summary.json").read_text())["config"]["loop"]["ema"]["decay"] == 0.98
    assert (tmp_path / "run" / "classifier_ema").is_dir() and (tmp_path / "run" / "tensorboard").is_dir()
