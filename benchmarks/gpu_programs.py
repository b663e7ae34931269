"""Compiled step programs for ``benchmarks.gpu_run``: one ahead-of-time compile per program, with what XLA says
about it (compile seconds, memory analysis, FLOPs, a census of the optimised HLO) and its timing.

A program is jaxtl's real code path: ``TrainState.create`` + ``train_step`` (full fine-tune, or the head-only
frozen-backbone step) or the eval forward, each through ``Parallel("none").map`` on one device, fed uint8 images
``[B, S, S, 3]`` as the grain pipeline yields them (normalised on the device by the step).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
import statistics
import time
from collections import Counter
from typing import Any

import numpy as np

from benchmarks import common

MODES = ("full", "frozen", "inference")
# XLA's memory analysis of a compiled program (bytes); absent fields are skipped.
_MEMORY_FIELDS = (
    "argument_size_in_bytes",
    "output_size_in_bytes",
    "alias_size_in_bytes",
    "temp_size_in_bytes",
    "generated_code_size_in_bytes",
)


def normalization() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet ``(mean, std)``: what the steps apply on the device to uint8 batches."""
    from jaxtl.models.registry import IMAGENET_MEAN, IMAGENET_STD

    return tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)


def uint8_batch(batch: int, size: int, num_classes: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``{"images": uint8 [batch, size, size, 3], "labels": int32 [batch]}``: what the pipeline's train batches are."""
    rng = np.random.default_rng(seed)
    return {
        "images": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
        "labels": rng.integers(0, num_classes, batch).astype(np.int32),
    }


def init_variables(arch: str, num_classes: int, size: int) -> dict[str, Any]:
    """Host (numpy) variables of ``arch``, initialised once: parameters are float32 whatever the compute dtype."""
    import jax

    import jaxtl

    module = jaxtl.create(arch, num_classes=num_classes, image_size=size)  # a ViT is built for its input size
    init = jax.jit(functools.partial(module.init, train=False))
    variables = init(jax.random.PRNGKey(0), np.zeros((1, size, size, 3), np.float32))
    return jax.tree.map(np.asarray, jax.device_get(variables))  # type: ignore[no-any-return]


def _opcode(rest: str) -> str | None:
    """The opcode of an HLO instruction from the text after ``name =``: the shape (maybe a tuple) comes first."""
    rest = rest.lstrip()
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += {"(": 1, ")": -1}.get(ch, 0)
            if depth == 0:
                rest = rest[i + 1 :]
                break
    else:
        parts = rest.split(None, 1)
        rest = parts[1] if len(parts) > 1 else ""
    m = re.match(r"\s*([a-z][\w\-]*)\(", rest)
    return m.group(1) if m else None


_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*)$")
_TARGET = re.compile(r'custom_call_target="([^"]+)"')


def hlo_census(hlo_text: str) -> dict[str, Any]:
    """Counts over an optimised HLO module's text: every opcode, custom-call targets, and the ones that matter for
    a conv net on a GPU: cuDNN convolutions (custom calls), layout copies and transposes (in the entry computation
    and anywhere, fusion bodies included), and ``conditional``s (the per-platform kernel choice must leave none)."""
    ops: Counter[str] = Counter()
    entry_ops: Counter[str] = Counter()
    targets: Counter[str] = Counter()
    in_entry = False
    for line in hlo_text.splitlines():
        if line.startswith("ENTRY"):
            in_entry = True
            continue
        if line.startswith("}"):
            in_entry = False
            continue
        m = _INSTR.match(line)
        if not m:
            continue
        op = _opcode(m.group(1))
        if op is None:
            continue
        ops[op] += 1
        if in_entry:
            entry_ops[op] += 1
        if op == "custom-call":
            t = _TARGET.search(line)
            targets[t.group(1) if t else "?"] += 1
    cudnn_convs = sum(n for t, n in targets.items() if "cudnn" in t.lower() and "conv" in t.lower())
    return {
        "cudnn_convolutions": cudnn_convs,
        "cudnn_custom_calls": sum(n for t, n in targets.items() if "cudnn" in t.lower()),
        "convolutions": ops["convolution"],
        "copies": ops["copy"],
        "transposes": ops["transpose"],
        "entry_copies": entry_ops["copy"],
        "entry_transposes": entry_ops["transpose"],
        "conditionals": ops["conditional"],
        "fusions": ops["fusion"],
        "instructions": sum(ops.values()),
        "custom_call_targets": dict(targets.most_common()),
    }


def memory_analysis(compiled: Any) -> dict[str, int] | None:
    """XLA's memory analysis of ``compiled`` (bytes per field), or None where the backend gives none."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # unsupported on some backends/versions: reported as absent
        return None
    if m is None:
        return None
    return {f: int(getattr(m, f)) for f in _MEMORY_FIELDS if getattr(m, f, None) is not None}


def xla_flops(compiled: Any) -> float | None:
    """XLA's FLOP count of one call (its cost analysis; custom calls such as cuDNN convolutions may count 0)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:
        return None
    if isinstance(cost, list | tuple):  # older jax: one dict per computation
        cost = cost[0] if cost else None
    flops = cost.get("flops") if isinstance(cost, dict) else None
    return float(flops) if flops else None


@dataclasses.dataclass
class Program:
    """One compiled step and its arguments: ``prog()`` runs it on the resident batch, ``prog(batch)`` on another
    (same shapes and device). A train step's state is donated and replaced in ``holder`` at every call."""

    mode: str
    arch: str
    dtype: str
    batch: int
    size: int
    precision: str
    compiled: Any
    holder: list[Any]
    batch_dev: Any
    device: Any
    lower_s: float
    compile_s: float
    info: dict[str, Any]

    def __call__(self, batch: Any = None) -> Any:
        b = self.batch_dev if batch is None else batch
        if self.mode == "inference":
            return self.compiled(self.holder[0], b)
        self.holder[0], metrics = self.compiled(self.holder[0], b)
        return metrics

    @property
    def name(self) -> str:
        return f"{self.arch} {self.mode} {self.dtype} b{self.batch} {self.size}px"

    @property
    def math(self) -> str:
        """What the convolutions and matmuls compute in: float32 at the default precision is TF32 on a GPU."""
        if self.dtype == "bfloat16":
            return "bf16"
        tf32 = self.device.platform == "gpu" and self.precision in ("default", "tensorfloat32", "high")
        return "tf32" if tf32 else "f32"

    def describe(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "mode": self.mode,
            "dtype": self.dtype,
            "math": self.math,
            "batch_size": self.batch,
            "image_size": self.size,
            "precision": self.precision,
            "platform": self.device.platform,
            "lower_s": self.lower_s,
            "compile_s": self.compile_s,
            **self.info,
        }


def precision_scope(precision: str | None) -> Any:
    """``jax.default_matmul_precision(precision)`` (convolutions included), or nothing for the default."""
    if precision in (None, "default"):
        return contextlib.nullcontext()
    import jax

    return jax.default_matmul_precision(precision)


def build(
    mode: str,
    *,
    arch: str,
    dtype: str,
    batch: int,
    size: int,
    variables: dict[str, Any],
    num_classes: int,
    device: Any = None,
    precision: str | None = None,
    lr: float = 0.01,
    compiler_options: dict[str, Any] | None = None,
) -> Program:
    """Lower and compile ``mode``'s program once on ``device`` (default: the first device) and describe it.

    Train steps use SGD with momentum 0.9 (the first step from a fresh state is plain SGD: ``-lr * grad``).
    ``compiler_options`` go to XLA for this compile only (e.g. ``{"xla_gpu_autotune_level": 0}``); refused ones
    are dropped and the program compiled without them (``info["compiler_options"]`` says which applied).
    """
    import jax.numpy as jnp
    import optax

    import jaxtl
    from jaxtl.train import CrossEntropy, Parallel, ParamGroups, TrainState, prepare_images, train_step

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    dt = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    module = jaxtl.create(arch, num_classes=num_classes, dtype=dt, image_size=size)  # a ViT is built for size
    par = Parallel("none", devices=None if device is None else [device])
    norm = normalization()
    batch_dev = par.put_batch(uint8_batch(batch, size, num_classes))
    if mode == "inference":

        def infer(v: Any, b: Any, axis_name: Any) -> Any:
            del axis_name
            return module.apply(v, prepare_images(b["images"], norm), train=False)

        jitted: Any = par.map(infer, donate=False, n_out=1, batch_out=True)
        holder = [par.put_state(variables)]
    else:
        groups = ParamGroups.head_only(module) if mode == "frozen" else None
        tx = optax.sgd(lr, momentum=0.9)
        state = TrainState.create(module, variables, tx, 0, groups=groups, normalization=norm)
        if mode == "frozen" and not state.backbone_frozen:
            raise RuntimeError("frozen mode did not take the frozen-backbone path")
        jitted = par.map(functools.partial(train_step, loss=CrossEntropy()))
        holder = [par.put_state(state)]
    t0 = time.perf_counter()
    with precision_scope(precision):
        lowered = jitted.lower(holder[0], batch_dev)
    lower_s = time.perf_counter() - t0
    cases = lowered.as_text().count("stablehlo.case")
    t0 = time.perf_counter()
    applied: dict[str, Any] = {}
    compiled = None
    if compiler_options:
        try:
            compiled = lowered.compile(compiler_options=compiler_options)
            applied = dict(compiler_options)
        except Exception:  # an option this XLA does not take: compile as usual
            compiled = None
    if compiled is None:
        compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    census = hlo_census(compiled.as_text() or "")
    census["stablehlo_cases"] = cases
    info = {
        "memory": memory_analysis(compiled),
        "xla_gflops_per_call": None if (f := xla_flops(compiled)) is None else f / 1e9,
        "census": census,
        "compiler_options": applied,
    }
    dev = par.devices[0]
    label = precision or "default"
    return Program(mode, arch, dtype, batch, size, label, compiled, holder, batch_dev, dev, lower_s, compile_s, info)


def device_peak_mib(device: Any) -> float | None:
    """Peak bytes the device's allocator has held (GPU/TPU; None on the CPU)."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return float(stats["peak_bytes_in_use"]) / 2**20


def time_program(prog: Program, *, target_s: float, min_steps: int, max_steps: int, per_step: int) -> dict[str, Any]:
    """Warm up, then ``per_step`` steps each synchronised (their median) and ``n`` steps pipelined with one sync at
    the end, ``n`` sized from the warm step time so the pipelined run takes about ``target_s`` (within
    ``[min_steps, max_steps]``). Images/s from the pipelined run (what training sees)."""
    first = common.time_once(lambda: common.block(prog()))
    common.block(prog())
    synced = [common.time_once(lambda: common.block(prog())) for _ in range(per_step)]
    median = statistics.median(synced)
    n = int(min(max_steps, max(min_steps, target_s / max(median, 1e-6))))
    t0 = time.perf_counter()
    out = None
    for _ in range(n):
        out = prog()
    common.block(out)
    pipelined = (time.perf_counter() - t0) / n
    return {
        "first_call_s": first,
        "step_median_s": median,
        "step_min_s": min(synced),
        "step_max_s": max(synced),
        "synced_steps": per_step,
        "pipelined_steps": n,
        "pipelined_step_s": pipelined,
        "images_per_s": prog.batch / pipelined,
        "images_per_s_median_step": prog.batch / median,
    }
