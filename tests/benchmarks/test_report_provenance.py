"""The README tables say which commit and machine produced them."""

from __future__ import annotations

import json
import pathlib

from benchmarks import report
from jaxtl._provenance import machine, source_revision

ROOT = pathlib.Path(__file__).resolve().parents[2]
HASH = "3f0e619d2a7c5a3d8c1e1b1f7c0f6a1e2b3c4d5e"


def test_commit_text() -> None:
    assert report.commit_text({}) == "commit not recorded"
    assert report.commit_text({"commit": HASH, "commit_dirty": False}) == "commit 3f0e619"
    assert report.commit_text({"commit": HASH, "commit_dirty": True}) == "commit 3f0e619 + uncommitted changes"
    assert report.commit_text({"commit": HASH, "commit_note": "backfilled"}) == "commit 3f0e619 (from git log)"


def test_machine_line_names_cpu_and_commit() -> None:
    line = report.machine_line({"cpu_model": "AMD EPYC", "cpu_count": 2, "jax": "0.10.2", "jax_backend": "cpu"})
    assert line == "AMD EPYC (2 CPU cores), jax 0.10.2 on cpu, commit not recorded"
    assert report.machine_line({"commit": HASH}).endswith(", commit 3f0e619")


def _demo_results() -> dict:
    return json.loads((ROOT / "benchmarks" / "results" / "demo" / "results.json").read_text())


def test_demo_block_names_commit_machine_and_what_varies() -> None:
    res = _demo_results()
    res.update(commit=HASH, commit_dirty=False, machine={"cpu_model": "Some CPU", "cpu_count": 8})
    res.pop("commit_note", None)
    block = report.render_demo(res, "r.json")
    assert "Produced by commit 3f0e619 on Some CPU (8 CPU cores), jax " in block
    assert "on one machine the demo is deterministic" in block
    res.pop("machine")
    res.pop("commit")
    block = report.render_demo(res, "r.json")
    assert "Produced by commit not recorded on " in block and "(CPU model not recorded)" in block


def test_provenance_of_this_checkout() -> None:
    rev = source_revision(ROOT)
    if rev:  # a git checkout (not an unpacked sdist)
        assert len(rev["commit"]) == 40 and isinstance(rev["commit_dirty"], bool)
    assert source_revision("/") == {} or "commit" in source_revision("/")
    m = machine()
    assert m["cpu_model"] and m["cpu_count"] >= 1


def test_committed_results_record_a_commit() -> None:
    # Every results file the README tables come from names the commit that produced it.
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        assert json.loads(path.read_text())["machine"].get("commit"), path
    assert _demo_results().get("commit"), "benchmarks/results/demo/results.json"
