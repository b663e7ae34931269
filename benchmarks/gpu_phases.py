"""The phases of ``benchmarks.gpu_run``, most important first (``PHASES``). Each takes the run (``gpu_run.Run``),
records every result the moment it is measured (``run.record``) and raises to report a failure; the run goes on
to the next."""

from __future__ import annotations

import concurrent.futures
import os
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks import common, gpu_programs
from benchmarks.gpu_checks import PhaseFailed, nvidia_smi, phase_env

if TYPE_CHECKING:
    from benchmarks.gpu_run import Run


def _model_rates(run: Run, prog: gpu_programs.Program, images_per_s: float) -> dict[str, Any]:
    from benchmarks.train_steps import gflop_per_image

    out: dict[str, Any] = {}
    gflop = gflop_per_image(prog.arch, prog.mode, prog.size)
    if gflop is not None:
        out["model_gflop_per_image"] = gflop
        out["model_tflops"] = images_per_s * gflop / 1e3
        peak = run.peak_tflops(prog.dtype, prog.device)
        if peak:
            out["peak_tflops"] = peak
            out["mfu"] = out["model_tflops"] / peak
    xla = prog.info.get("xla_gflops_per_call")
    if xla:
        out["xla_tflops"] = images_per_s / prog.batch * xla / 1e3
    return out


def measure_steps(run: Run, dtype: str, batch: int) -> None:
    """Full, frozen and inference programs of the plan's model: compile, describe, time; one record each."""
    p = run.plan
    rates = []
    for mode in gpu_programs.MODES:
        prog = run.program(mode, dtype, batch)
        timing = gpu_programs.time_program(
            prog, target_s=p.target_s, min_steps=p.min_steps, max_steps=p.max_steps, per_step=p.per_step
        )
        rec = {**prog.describe(), **timing, **_model_rates(run, prog, timing["images_per_s"])}
        rec["device_peak_mib_so_far"] = gpu_programs.device_peak_mib(prog.device)  # the process's, not this program's
        rec["clocks_after"] = nvidia_smi()
        run.record("step", **rec)
        conds = rec["census"]["conditionals"]
        rates.append(f"{mode} {timing['images_per_s']:.0f} img/s" + (f" MFU {rec['mfu']:.2f}" if "mfu" in rec else ""))
        if conds:
            raise PhaseFailed(f"{prog.name}: {conds} conditional(s) left in the compiled program (must be 0)")
        run.headline(", ".join(rates))


def phase_steps_bf16(run: Run) -> None:
    measure_steps(run, "bfloat16", run.plan.batch)


def phase_steps_f32(run: Run) -> None:
    measure_steps(run, "float32", run.plan.batch_f32)


def _rate(batches: Any, skip: int) -> tuple[float, float, int]:
    """(images/s after the first ``skip`` batches, seconds to the first batch, batches) of one pass."""
    t0 = time.perf_counter()
    first, n, images, t_skip = 0.0, 0, 0, None
    for b in batches:
        n += 1
        if n == 1:
            first = time.perf_counter() - t0
        if n == skip:
            t_skip = time.perf_counter()
        elif n > skip:
            images += len(b["images"])
    if t_skip is None or images == 0:
        raise PhaseFailed(f"the pipeline gave {n} batches, too few to time after the first {skip}")
    return images / (time.perf_counter() - t_skip), first, n


def phase_pipeline(run: Run) -> None:
    """The grain pipeline (RandomResizedCrop + flip, uint8 batches) alone, then feeding the full and the frozen
    bf16 steps (prefetched to the device as ``fit`` does), each against the same step on a resident batch."""
    from benchmarks.data_pipeline import make_folder
    from jaxtl.data import open_source
    from jaxtl.train import Parallel, prefetch_to_device

    p = run.plan
    folder = run.data_dir / f"jpegs-{p.images}-{p.min_side}-{p.max_side}"
    t0 = time.perf_counter()
    make_folder(
        folder,
        p.images,
        min_side=p.min_side,
        max_side=p.max_side,
        processes=min(os.cpu_count() or 1, 1 + p.images // 256),
    )
    gen_s = time.perf_counter() - t0
    epoch_steps = p.images // p.batch
    skip = max(1, epoch_steps // 8)
    src = open_source(f"folder:{folder}", image_size=p.size, augment="rrc", workers=p.workers)
    par = Parallel("none")
    summary = []
    with src:

        def epochs(first: int, count: int) -> Any:
            for e in range(first, first + count):
                yield from src.batches(p.batch, seed=0, epoch=e, drop_remainder=True, train=True)

        alone, first_s, n = _rate(epochs(0, p.feed_epochs), skip)
        run.record(
            "pipeline", images=p.images, workers=p.workers, batch_size=p.batch, image_size=p.size, generate_s=gen_s,
            epochs=p.feed_epochs, batches=n, first_batch_s=first_s, steady_images_per_s=alone,
            transforms=f"decode + RandomResizedCrop({p.size}) + horizontal flip + uint8 batch",
        )  # fmt: skip
        summary.append(f"pipeline {alone:.0f} img/s ({p.workers} workers)")
        next_epoch = p.feed_epochs
        for mode in ("full", "frozen"):
            prog = run.program(mode, "bfloat16", p.batch)
            metrics = None
            fed_t0, fed_images = 0.0, 0
            it = prefetch_to_device(epochs(next_epoch, p.feed_epochs), 2, par.put_batch)
            for i, b in enumerate(it):
                if i == skip:
                    common.block(metrics)
                    fed_t0 = time.perf_counter()
                elif i > skip:
                    fed_images += p.batch
                metrics = prog(b)
            common.block(metrics)
            fed = fed_images / (time.perf_counter() - fed_t0) if fed_images else float("nan")
            next_epoch += p.feed_epochs
            steps = max(1, fed_images // p.batch)
            t0 = time.perf_counter()
            for _ in range(steps):
                metrics = prog()
            common.block(metrics)
            resident = steps * p.batch / (time.perf_counter() - t0)
            limit = "input pipeline" if fed < 0.9 * resident else "compute"
            run.record(
                "feed", mode=mode, dtype="bfloat16", arch=p.arch, batch_size=p.batch, workers=p.workers, steps=steps,
                fed_images_per_s=fed, resident_images_per_s=resident, fed_over_resident=fed / resident,
                pipeline_alone_images_per_s=alone, limit=limit,
            )  # fmt: skip
            summary.append(f"{mode} fed {fed:.0f} vs resident {resident:.0f} img/s ({limit})")
            run.headline("; ".join(summary))


def _flat(tree: Any) -> np.ndarray:
    import jax

    leaves = [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)]
    return np.concatenate(leaves) if leaves else np.zeros(0)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    den = float(np.linalg.norm(b))
    return float(np.linalg.norm(a - b)) / den if den else float(np.linalg.norm(a - b))


def _one_sgd_step(run: Run, dtype: str, precision: str, device: Any) -> dict[str, Any]:
    """One SGD step of the check model from the shared initial variables on ``device``: loss, the parameter update
    and the change of the BatchNorm running statistics, as host float64 vectors."""
    import jax

    p = run.plan
    variables = run.variables(p.check_arch, p.num_classes)
    options = {"xla_gpu_autotune_level": 0} if device.platform == "gpu" else None  # numbers, not speed: no autotuning
    prog = gpu_programs.build(
        "full", arch=p.check_arch, dtype=dtype, batch=p.check_batch, size=p.size, variables=variables,
        num_classes=p.num_classes, device=device, precision=precision, lr=0.1, compiler_options=options,
    )  # fmt: skip
    metrics = jax.device_get(prog())
    state = jax.device_get(prog.holder[0])
    before = dict(_paths(variables.get("batch_stats", {})))

    def delta(suffix: str) -> np.ndarray:
        parts = [v.ravel() - before[k].ravel() for k, v in _paths(state.batch_stats) if k.endswith(suffix)]
        return np.concatenate(parts) if parts else np.zeros(0)

    return {
        "loss": float(metrics["loss"]),
        "grad_norm": float(metrics["grad_norm"]),
        "update": _flat(state.params) - _flat(variables["params"]),
        "bn_mean_delta": delta("mean']"),
        "bn_var_delta": delta("var']"),
        "compile_s": prog.compile_s,
        "platform": device.platform,
    }


def _paths(tree: Any) -> list[tuple[str, np.ndarray]]:
    import jax

    return [(jax.tree_util.keystr(k), np.asarray(v, np.float64)) for k, v in jax.tree_util.tree_leaves_with_path(tree)]


def _compare(test: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    return {
        "loss": test["loss"],
        "loss_reference": ref["loss"],
        "loss_rel_diff": abs(test["loss"] - ref["loss"]) / max(abs(ref["loss"]), 1e-30),
        "grad_norm_rel_diff": abs(test["grad_norm"] - ref["grad_norm"]) / max(abs(ref["grad_norm"]), 1e-30),
        "update_rel_diff": _rel(test["update"], ref["update"]),
        "update_max_abs_diff": float(np.max(np.abs(test["update"] - ref["update"]))),
        "bn_mean_rel_diff": _rel(test["bn_mean_delta"], ref["bn_mean_delta"]),
        "bn_var_rel_diff": _rel(test["bn_var_delta"], ref["bn_var_delta"]),
    }


def phase_gpu_vs_cpu(run: Run) -> None:
    """One SGD step on the accelerator vs the CPU backend, same variables and batch: f32 at highest precision, f32
    at the default (TF32 on a GPU), bf16; relative differences of the loss, the update and the BatchNorm statistics
    (their change in the step)."""
    import jax

    # Without an accelerator: the last CPU device against the first (--smoke makes two), so the rehearsal runs the
    # same code, threads included; the numbers are then identical by construction.
    acc, cpu = jax.devices()[0], jax.devices("cpu")[-1]
    same = acc == cpu
    if acc.platform == "cpu":
        run.note(f"no accelerator: {acc} against {cpu} (this checks the code path, not the numbers)")
    steps: dict[tuple[Any, ...], Any] = {}

    def step(dtype: str, precision: str, device: Any) -> dict[str, Any]:
        key = (device.platform, device.id, dtype, precision)  # the CPU compared with itself computes each once
        if key not in steps:
            steps[key] = _one_sgd_step(run, dtype, precision, device)
        got = steps[key]
        return got.result() if isinstance(got, concurrent.futures.Future) else got  # type: ignore[no-any-return]

    run.variables(run.plan.check_arch, run.plan.num_classes)  # initialised here, once, before the threads use them
    pool = None
    if not same:
        # The CPU references compile and run in threads while the accelerator's steps compile here (XLA:CPU takes
        # tens of seconds to compile a ResNet50 train step); waiting on them is interrupted by the deadline.
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="cpu-reference")
        for dtype, precision in (("float32", "highest"), ("bfloat16", "default")):
            steps[(cpu.platform, cpu.id, dtype, precision)] = pool.submit(_one_sgd_step, run, dtype, precision, cpu)
    cases = (
        # label, dtype, precision on the accelerator; the CPU reference runs f32 at highest, bf16 at the default
        ("f32 highest", "float32", "highest"),
        ("f32 default (TF32 on GPU)", "float32", "default"),
        ("bf16", "bfloat16", "default"),
    )
    try:
        heads = []
        for label, dtype, precision in cases:
            test = step(dtype, precision, acc)
            ref = step(dtype, "highest" if dtype == "float32" else "default", cpu)
            rec = {"label": label, "dtype": dtype, "precision": precision, "platform": test["platform"],
                   "reference": f"cpu {dtype}", "arch": run.plan.check_arch, "batch_size": run.plan.check_batch,
                   "image_size": run.plan.size, "compile_s": test["compile_s"], **_compare(test, ref)}  # fmt: skip
            if dtype == "bfloat16":
                rec["vs_cpu_f32"] = _compare(test, step("float32", "highest", cpu))
            run.record("gpu_vs_cpu", **rec)
            heads.append(f"{label}: update {rec['update_rel_diff']:.1e}")
            run.headline("; ".join(heads))
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def phase_torch(run: Run) -> None:
    """PyTorch on the same machine: AMP bf16 channels_last with cudnn.benchmark (full, frozen, inference at the
    bf16 batch) and full f32 at the f32 batch; each against jaxtl's rate from the step phases."""
    import torch

    from benchmarks import torch_ref

    run.drop_programs()  # jaxtl's compiled steps are done with: their device memory goes back to JAX's pool
    p = run.plan
    cuda = torch.cuda.is_available()
    dev = torch_ref.setup(None, "gpu" if cuda else "cpu")
    if not cuda:
        run.note("torch sees no CUDA device: PyTorch runs on the CPU")
    flags = {
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    heads = []
    for mode, dtype, batch in (
        *((m, "bfloat16", p.batch) for m in gpu_programs.MODES),
        ("full", "float32", p.batch_f32),
    ):
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        step = torch_ref.train_step_fn(
            mode, arch=p.arch, batch=batch, size=p.size, num_classes=p.num_classes, dtype=dtype, dev=dev,
            sync_each=False,
        )  # fmt: skip

        def synced(step: Any = step) -> None:
            step()
            torch_ref.sync(dev)

        first = common.time_once(synced)
        synced()
        times = [common.time_once(synced) for _ in range(p.per_step)]
        median = float(np.median(times))
        n = int(min(p.max_steps, max(p.min_steps, p.target_s / max(median, 1e-6))))
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        torch_ref.sync(dev)
        pipelined = (time.perf_counter() - t0) / n
        rec: dict[str, Any] = {
            "mode": mode, "dtype": dtype, "amp": dtype == "bfloat16", "batch_size": batch, "arch": p.arch,
            "image_size": p.size, "device": str(dev), "first_step_s": first, "step_median_s": median,
            "pipelined_steps": n, "pipelined_step_s": pipelined, "images_per_s": batch / pipelined,
            "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None, **flags,
        }  # fmt: skip
        jx = run.find("step", mode=mode, dtype=dtype, batch_size=batch)
        if jx:
            rec["jaxtl_images_per_s"] = jx[-1]["images_per_s"]
            rec["jaxtl_over_torch"] = rec["jaxtl_images_per_s"] / rec["images_per_s"]
        run.record("torch", **rec)
        del step
        ratio = f" (jaxtl {rec['jaxtl_over_torch']:.2f}x)" if "jaxtl_over_torch" in rec else ""
        heads.append(f"{mode} {dtype[:4]} {rec['images_per_s']:.0f} img/s{ratio}")
        run.headline(", ".join(heads))


def phase_bridge(run: Run) -> None:
    """torchvision's eval logits vs jaxtl's for the converted weights, both on the accelerator at full f32."""
    import jax

    from benchmarks import bridge

    p = run.plan
    device = "gpu" if jax.default_backend() in ("gpu", "cuda") else "cpu"
    rec = bridge.eval_parity(p.bridge_arch, p.bridge_size, p.bridge_batch, device)
    run.record("bridge", **rec)
    rel = rec["max_abs_diff"] / max(rec["max_abs_logit"], 1.0)
    run.headline(f"{rec['arch']} max|diff| {rec['max_abs_diff']:.1e} (max|logit| {rec['max_abs_logit']:.1f})")
    if not rel < 1e-3:
        raise PhaseFailed(f"logits differ by {rec['max_abs_diff']:.3g} (max|logit| {rec['max_abs_logit']:.3g})")


PHASES = (
    # name, seconds of the default 480 s budget, what it answers, function
    ("env", 40, "environment, versions, import check and a tiny step", phase_env),
    ("steps_bf16", 150, "bf16 full/frozen/inference steps: compile, memory, img/s, MFU, HLO census", phase_steps_bf16),
    ("pipeline", 85, "grain pipeline alone and feeding the bf16 full and frozen steps", phase_pipeline),
    (
        "gpu_vs_cpu",
        75,
        "one SGD step on the accelerator vs the CPU backend (f32 highest, TF32, bf16)",
        phase_gpu_vs_cpu,
    ),
    ("steps_f32", 60, "f32 (TF32) full/frozen/inference steps", phase_steps_f32),
    ("torch", 55, "PyTorch AMP bf16 channels_last (+ full f32) side by side", phase_torch),
    ("bridge", 20, "bridge parity: torchvision vs jaxtl eval logits at full f32", phase_bridge),
)
