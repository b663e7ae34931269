"""The GPU run rehearsed on the CPU exactly as it runs on the GPU machine: jaxtl built into a wheel from this
checkout, installed with ``pip install --no-index --no-deps --target`` into a folder, and ``python -m
benchmarks.gpu_run --smoke`` started from outside the checkout with ``PYTHONPATH=<that folder>:<checkout>`` (grain
comes from this environment here; on the GPU machine from the carried wheels)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("torch")  # the PyTorch and bridge phases need it, as on the GPU machine

from benchmarks import gpu_phases, gpu_report, gpu_run, gpu_wheels

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """jaxtl's wheel built from this checkout and installed into a target folder, as on the GPU machine."""
    base = tmp_path_factory.mktemp("gpu-rehearsal")
    wheel = gpu_wheels.build_jaxtl_wheel(base / "whl")
    target = base / "site"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--target"]
    subprocess.run([*cmd, str(target), str(wheel)], check=True, capture_output=True, timeout=120)
    # Every source file is in the wheel (pyproject lists the packages one by one: a new subpackage must be added),
    # bridge/ mapped to jaxtl/bridge by the package-dir rule.
    sources = {p.relative_to(ROOT / "jaxtl") for p in (ROOT / "jaxtl").rglob("*.py")}
    sources |= {"bridge" / p.relative_to(ROOT / "bridge") for p in (ROOT / "bridge").rglob("*.py")}
    installed = {p.relative_to(target / "jaxtl") for p in (target / "jaxtl").rglob("*.py")}
    assert not sources - installed, f"not in the jaxtl wheel: {sorted(map(str, sources - installed))}"
    return target


def _run_driver(tmp: pathlib.Path, pythonpath: list[pathlib.Path], *args: str) -> subprocess.CompletedProcess[str]:
    cwd = tmp / "cwd"  # outside the checkout: its jaxtl/ (no bridge) must not shadow the installed wheel
    cwd.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, pythonpath)), "PYTHONUNBUFFERED": "1"}
    env.pop("XLA_FLAGS", None)  # the test session's 4 fake devices: the GPU run has one device
    cache = os.environ.get("JAXTL_COMPILE_CACHE", str(tmp / "xla"))
    cmd = [sys.executable, "-m", "benchmarks.gpu_run", "--smoke", "--out", str(tmp / "out"), "--cache-dir", cache]
    cmd += ["--data-dir", str(tmp / "data"), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_rehearsal_runs_every_phase_from_the_installed_wheel(tmp_path: pathlib.Path, site: pathlib.Path) -> None:
    proc = _run_driver(tmp_path, [site, ROOT])
    out = tmp_path / "out"
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(gpu_run.FILES)  # nothing else comes back from $OUT
    payload, records = gpu_report.load(out)
    assert payload["finished"] and [p["phase"] for p in payload["phases"]] == [p[0] for p in gpu_phases.PHASES]
    assert all(p["status"] == "ok" for p in payload["phases"]), payload["phases"]
    kinds = [r["kind"] for r in records]
    assert kinds.count("step") == 6 and kinds.count("torch") == 4 and kinds.count("gpu_vs_cpu") == 3
    assert {"machine", "check", "pipeline", "feed", "bridge"} <= set(kinds)

    checks = {r["name"]: r for r in records if r["kind"] == "check"}
    assert all(c["ok"] for c in checks.values()) and set(checks) == {
        "jax",
        "jaxtl",
        "grain",
        "tiny_step",
        "jaxtl.bridge",
    }
    assert pathlib.Path(checks["jaxtl"]["file"]).is_relative_to(site.resolve())
    assert not checks["jaxtl"]["from_checkout"] and checks["jaxtl.bridge"]["ok"] and checks["grain"]["ok"]
    machine = next(r for r in records if r["kind"] == "machine")
    assert machine["versions"]["jax"] and machine["source"].get("commit") == gpu_wheels.source_stamp().get("commit")

    steps = [r for r in records if r["kind"] == "step"]
    assert {(r["mode"], r["dtype"]) for r in steps} == {(m, d) for m in ("full", "frozen", "inference")
                                                         for d in ("bfloat16", "float32")}  # fmt: skip
    for r in steps:
        assert r["compile_s"] > 0 and r["images_per_s"] > 0 and r["step_median_s"] > 0
        assert r["census"]["conditionals"] == 0 and r["census"]["instructions"] > 0
        assert r["memory"]["temp_size_in_bytes"] > 0
    feeds = {r["mode"]: r for r in records if r["kind"] == "feed"}
    assert set(feeds) == {"full", "frozen"} and all(f["limit"] in ("input pipeline", "compute") for f in feeds.values())
    for r in (r for r in records if r["kind"] == "gpu_vs_cpu"):  # the CPU against itself: identical numbers
        assert r["update_rel_diff"] == 0 and r["loss_rel_diff"] == 0
    torch_rows = [r for r in records if r["kind"] == "torch"]
    assert all(r["jaxtl_images_per_s"] > 0 and r["jaxtl_over_torch"] > 0 for r in torch_rows)
    bridge = next(r for r in records if r["kind"] == "bridge")
    assert bridge["max_abs_diff"] < 1e-4 * max(1.0, bridge["max_abs_logit"])

    text = proc.stdout[proc.stdout.index("=== summary ===") :]  # the summary table is printed last
    for name, *_ in gpu_phases.PHASES:
        assert f"\n{name} " in text
    assert (out / "driver.log").read_text().count("=== summary ===") == 1
    assert "| convnet_small full | bf16 | 8 |" in (out / "summary.md").read_text()


def test_missing_grain_is_a_reported_phase_failure(tmp_path: pathlib.Path, site: pathlib.Path) -> None:
    blocker = tmp_path / "blocker" / "grain"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('No module named grain (blocked by the test)')\n")
    proc = _run_driver(tmp_path, [blocker.parent, site, ROOT], "--phases", "env", "pipeline")
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-3000:]  # failed phases, not a crash
    payload, records = gpu_report.load(tmp_path / "out")
    status = {p["phase"]: p for p in payload["phases"]}
    assert status["env"]["status"] == "failed" and "grain" in status["env"]["error"]
    # The phase after a failed one still runs (and fails on its own, naming grain).
    assert status["pipeline"]["status"] == "failed" and "grain" in status["pipeline"]["error"]
    checks = {r["name"]: r for r in records if r["kind"] == "check"}
    assert not checks["grain"]["ok"] and checks["jaxtl"]["ok"] and checks["tiny_step"]["ok"]
    assert "=== summary ===" in proc.stdout
