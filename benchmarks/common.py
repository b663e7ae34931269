"""Shared benchmark plumbing: machine description, timing, side-by-side alternation, JSON results."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"


def set_device_count(n: int | None) -> None:
    """Ask XLA for ``n`` fake CPU devices; must run before jax starts its backend."""
    if n:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def backend_started() -> bool:
    """True once jax has created its backends (XLA_FLAGS / JAX_PLATFORMS no longer take effect)."""
    from jaxtl._cpu_tuning import backend_started as started

    return started()


def prepare_backend(device: str, devices: int = 1) -> None:
    """Before jax starts: the platform, ``devices`` fake CPU devices when on CPU, and :func:`jaxtl.tune_cpu`.

    In a process whose backend already runs (tests) this changes nothing; ``--devices`` then picks from what exists.
    """
    if not backend_started():
        if device == "cpu":
            os.environ["JAX_PLATFORMS"] = "cpu"
            if devices > 1:
                set_device_count(devices)
        elif os.environ.get("JAX_PLATFORMS") == "cpu":
            del os.environ["JAX_PLATFORMS"]
        import jaxtl

        jaxtl.tune_cpu()  # as the CLI runs: benchmarks measure what users get (JAXTL_CPU_TUNING=0 opts out)
    import jax

    platform = jax.default_backend()
    want = {"cpu": "cpu", "gpu": "gpu", "tpu": "tpu"}[device]
    if platform != want and not (want == "gpu" and platform == "cuda"):
        raise SystemExit(f"--device {device}: JAX runs on {platform!r} here")


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", choices=["cpu", "gpu", "tpu"], default="cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads (CPU)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per side (after warm-up)")
    p.add_argument("--out", type=pathlib.Path, default=None, help="JSON file (default benchmarks/results/NAME.json)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, 2 steps: checks the script runs")
    p.add_argument("--no-torch", action="store_true", help="jaxtl side only")
    return p


def machine_info(device: str) -> dict[str, Any]:
    import jax

    import jaxtl

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "jax_device_kind": jax.devices()[0].device_kind,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jaxtl_cpu_tuning": jaxtl.cpu_tuning_status(),
    }
    from jaxtl._provenance import source_revision

    info.update(source_revision())  # commit, commit_dirty: the report prints them next to the tables
    try:
        import flax
        import optax

        info["flax"], info["optax"] = flax.__version__, optax.__version__
    except ImportError:  # pragma: no cover
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if device == "gpu" and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


RESULT_MARK = "JAXTL_BENCH_RESULT "


def emit_result(result: dict[str, Any]) -> None:
    """A worker's answer to :func:`run_worker`: one marked JSON line on stdout."""
    print(RESULT_MARK + json.dumps(result), flush=True)


def run_worker(
    module: str, args: Sequence[str], *, what: str, env: dict[str, str] | None = None, timeout: float = 3600
) -> dict[str, Any]:
    """``python -m module *args`` in a fresh process; the JSON it passed to :func:`emit_result`.

    A failed or silent worker stops the benchmark (SystemExit naming ``what``, with the end of its stderr).
    """
    cmd = [sys.executable, "-m", module, *args]
    root = pathlib.Path(__file__).resolve().parent.parent  # so ``-m benchmarks.*`` resolves from any directory
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARK)]
    if proc.returncode or not lines:
        raise SystemExit(f"{what} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1][len(RESULT_MARK) :])
    return result


def load_average() -> float:
    """The machine's 1-minute load average (0 where the OS does not say): printed beside timings on shared machines."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def process_start() -> float:
    """When this process started, on ``time.perf_counter()``'s clock (Linux: from ``/proc``; elsewhere: now), so a
    start-up profile can count the interpreter's own start and the imports."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.perf_counter() - max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.perf_counter()


def block(x: Any) -> Any:
    """Wait for JAX (or torch CUDA) work behind ``x`` to finish."""
    import jax

    jax.block_until_ready(x)
    return x


def time_once(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@contextlib.contextmanager
def data_dir(path: str | None, prefix: str) -> Iterator[pathlib.Path]:
    """Where a benchmark's generated data lives: ``path`` (created, kept for the next run) or a temporary directory
    removed afterwards."""
    if path is not None:
        base = pathlib.Path(path)
        base.mkdir(parents=True, exist_ok=True)
        yield base
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield pathlib.Path(tmp)


def alternate(sides: dict[str, Callable[[], Any]], repeats: int, seed: int = 0) -> dict[str, list[float]]:
    """Run each side's timed callable ``repeats`` times, every side once per round, so drift hits all equally.

    The order within a round is shuffled (seeded): in a fixed order one side always runs right after another, and
    on a CPU that follows PyTorch's OpenMP threads measurably (caches, thread wake-up), which biases the ratio.
    """
    import random

    order, rng = list(sides), random.Random(seed)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        rng.shuffle(order)
        for name in order:
            times[name].append(time_once(sides[name]))
    return times


def summarize(samples: list[float]) -> dict[str, float]:
    return {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
        "n": len(samples),
    }


def peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def jax_peak_memory_mib() -> float | None:
    """Peak device memory from the first device's allocator stats, where the backend reports them (GPU/TPU)."""
    import jax

    stats = jax.devices()[0].memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return float(stats["peak_bytes_in_use"]) / 2**20


def write_results(name: str, payload: dict[str, Any], out: pathlib.Path | None) -> pathlib.Path:
    path = out or RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for j, r in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def _fmt(c: Any) -> str:
    if isinstance(c, float):
        return f"{c:.3g}" if abs(c) < 1000 else f"{c:.0f}"
    return "-" if c is None else str(c)
