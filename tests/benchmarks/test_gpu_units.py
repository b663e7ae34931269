"""The GPU driver's parts that need no accelerator: the HLO census, phase deadlines, a phase that times out or fails
(reported, the next one runs, what it recorded kept), and reading back a run killed mid-write."""

from __future__ import annotations

import json
import pathlib
import time

import jax
import jax.numpy as jnp
import pytest

from benchmarks import gpu_phases, gpu_programs, gpu_report, gpu_run

GPU_HLO = """HloModule jit_step, entry_computation_layout={(bf16[8,4]{1,0})->(f32[], bf16[4,8]{1,0})}

%fused_transpose (param_0: bf16[8,4]) -> bf16[4,8] {
  %param_0 = bf16[8,4]{1,0} parameter(0)
  ROOT %transpose.1 = bf16[4,8]{1,0} transpose(bf16[8,4]{1,0} %param_0), dimensions={1,0}
}

ENTRY %main.9 (p0: bf16[8,4], p1: bf16[3,3,4,4]) -> (f32[], bf16[4,8]) {
  %p0 = bf16[8,4]{1,0} parameter(0)
  %p1 = bf16[3,3,4,4]{3,2,1,0} parameter(1)
  %custom-call.1 = (bf16[8,4]{1,0}, u8[0]{0}) custom-call(%p0, %p1), custom_call_target="__cudnn$convForward"
  %cc.2 = (bf16[3,3,4,4]{3,2,1,0}, u8[0]{0}) custom-call(%p0, %p0), custom_call_target="__cudnn$convBackwardFilter"
  %get-tuple-element = bf16[8,4]{1,0} get-tuple-element((bf16[8,4]{1,0}, u8[0]{0}) %custom-call.1), index=0
  %copy.3 = bf16[8,4]{0,1} copy(bf16[8,4]{1,0} %get-tuple-element)
  %fusion = bf16[4,8]{1,0} fusion(bf16[8,4]{0,1} %copy.3), kind=kLoop, calls=%fused_transpose
  %constant = f32[] constant(0)
  ROOT %tuple = (f32[], bf16[4,8]{1,0}) tuple(f32[] %constant, bf16[4,8]{1,0} %fusion)
}
"""


def test_census_of_gpu_like_hlo() -> None:
    c = gpu_programs.hlo_census(GPU_HLO)
    assert c["cudnn_convolutions"] == 2 and c["cudnn_custom_calls"] == 2
    assert c["custom_call_targets"] == {"__cudnn$convForward": 1, "__cudnn$convBackwardFilter": 1}
    assert (c["copies"], c["entry_copies"], c["transposes"], c["entry_transposes"]) == (1, 1, 1, 0)
    assert c["fusions"] == 1 and c["conditionals"] == 0 and c["convolutions"] == 0


def test_census_of_compiled_programs_counts_conditionals() -> None:
    x = jnp.ones((4, 4))
    chosen = jax.jit(lambda a: jax.lax.platform_dependent(a, cpu=jnp.sin, default=jnp.cos)).lower(x).compile()
    assert gpu_programs.hlo_census(chosen.as_text() or "")["conditionals"] == 0  # one platform: the choice is folded
    branchy = jax.jit(lambda a: jax.lax.cond(a.sum() > 0, jnp.sin, jnp.cos, a)).lower(x).compile()
    assert gpu_programs.hlo_census(branchy.as_text() or "")["conditionals"] == 1
    mem = gpu_programs.memory_analysis(branchy)
    assert mem is not None and mem["argument_size_in_bytes"] == 64


def test_deadlines_share_the_time_left() -> None:
    names = [p[0] for p in gpu_phases.PHASES]
    limits = {p[0]: p[1] for p in gpu_phases.PHASES}
    budget = float(sum(limits.values()))
    assert gpu_run.phase_deadline(names[0], names, 0.0, budget) == pytest.approx(limits[names[0]])
    # Time an earlier phase left unused goes to the later ones, in proportion to their limits.
    left = budget - 1.0
    got = gpu_run.phase_deadline(names[1], names, 1.0, budget) - 1.0
    assert got == pytest.approx(left * limits[names[1]] / sum(limits[n] for n in names[1:]))
    assert gpu_run.phase_deadline(names[-1], names, 100.0, budget) == pytest.approx(budget)  # the last takes the rest
    assert gpu_run.phase_deadline(names[-1], names, budget + 5, budget) == budget + 5  # none left: now


def test_a_phase_that_times_out_or_fails_is_reported_and_the_next_runs(tmp_path: pathlib.Path) -> None:
    run = gpu_run.Run(gpu_run.Plan.smoke(), tmp_path / "out", tmp_path / "data", {"budget": 10})
    restore = gpu_run.install_signal_handlers()

    def slow(r: gpu_run.Run) -> None:
        r.record("partial", value=1)
        time.sleep(5)

    def bad(r: gpu_run.Run) -> None:
        raise ValueError("boom")

    def good(r: gpu_run.Run) -> None:
        r.headline("fine")

    try:
        t0 = time.perf_counter()
        assert run.run_phase("slow", "sleeps", slow, time.perf_counter() + 0.3)["status"] == "timeout"
        assert time.perf_counter() - t0 < 3
        failed = run.run_phase("bad", "raises", bad, time.perf_counter() + 5)
        ok = run.run_phase("good", "works", good, time.perf_counter() + 5)
    finally:
        restore()
    assert failed["status"] == "failed" and failed["error"] == "ValueError: boom" and "Traceback" in failed["traceback"]
    assert ok["status"] == "ok" and ok["headline"] == "fine"
    payload, records = gpu_report.load(tmp_path / "out")
    assert [p["status"] for p in payload["phases"]] == ["timeout", "failed", "ok"]
    assert [(r["phase"], r["kind"], r["value"]) for r in records] == [("slow", "partial", 1)]  # kept past the timeout
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "| slow | timeout |" in md and "| good | ok |" in md


def test_a_run_killed_mid_write_reads_back(tmp_path: pathlib.Path) -> None:
    (tmp_path / "summary.json").write_text(json.dumps({"phases": [{"phase": "env", "status": "ok"}]}))
    rec = {"phase": "steps_bf16", "kind": "bridge", "arch": "resnet50", "device": "gpu", "image_size": 224}
    rec |= {"max_abs_diff": 1e-5, "max_abs_logit": 3.0}
    (tmp_path / "results.jsonl").write_text(json.dumps(rec) + '\n{"phase": "steps_bf16", "kin')
    payload, records = gpu_report.load(tmp_path)
    assert records == [rec]
    assert "resnet50" in gpu_report.text(payload["phases"], records)


@pytest.mark.parametrize("arch", ["vit_b_16", "convnext_tiny"])
def test_the_driver_builds_other_families_frozen_steps(arch: str) -> None:
    # --arch vit_b_16 / convnext_tiny: a ViT built for the plan's size, the head found at the model's own path.
    variables = gpu_programs.init_variables(arch, 10, 32)
    prog = gpu_programs.build(
        "frozen", arch=arch, dtype="float32", batch=2, size=32, variables=variables, num_classes=10
    )
    metrics = jax.device_get(prog())
    assert jnp.isfinite(metrics["loss"]) and prog.describe()["arch"] == arch
