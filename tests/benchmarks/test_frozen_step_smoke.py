"""benchmarks/frozen_step.py --smoke: the four programs run in turns and the JSON holds each one's time and its
excess over inference."""

from __future__ import annotations

import json
import pathlib

from benchmarks import frozen_step


def test_frozen_step_smoke(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "frozen_step.json"
    payload = frozen_step.main(["--smoke", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["results"] == json.loads(json.dumps(payload["results"]))
    rows = {r["program"]: r for r in saved["results"]}
    assert list(rows) == ["inference", "+ loss", "+ head gradient", "frozen step"]
    assert rows["inference"]["plus_wall_ms"] == 0.0 and rows["inference"]["plus_cpu_ms"] == 0.0
    for r in rows.values():
        assert r["wall_ms"] > 0 and r["cpu_ms"] >= 0 and r["wall_min_ms"] <= r["wall_ms"]
    assert saved["settings"]["arch"] == "convnet_small"
