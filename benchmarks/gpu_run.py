"""One GPU run that answers the most: ``python3 -m benchmarks.gpu_run --out DIR [--budget 480] [--smoke]``.

One process, one deadline. The phases (``benchmarks/gpu_phases.py``) run most important first, each with its own
deadline inside the global budget (its share of the budget plus whatever earlier phases left unused); a phase that
fails or runs out is reported and the next one runs. Every result is appended to ``DIR/results.jsonl`` the moment
it is measured and ``DIR/summary.json`` / ``DIR/summary.md`` are rewritten after every phase, so a kill loses
nothing already measured; ``DIR/driver.log`` holds everything printed. A watchdog ends the process shortly after
the budget even if a phase is stuck inside XLA. Each program compiles once (a persistent compile cache in
``--cache-dir``; compiled steps are shared between phases; variables are initialised once per architecture).

``--smoke`` runs every phase on the CPU at a tiny size (the rehearsal ``make test`` runs, from the built wheel).
The procedure on the GPU machine (wheels, the one command, what comes back) is in README.md, section GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, TextIO

REPO = pathlib.Path(__file__).resolve().parent.parent
FILES = ("results.jsonl", "summary.json", "summary.md", "driver.log")  # everything the run writes under --out


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes of one run: the GPU defaults, or ``smoke()``'s tiny CPU ones."""

    arch: str = "resnet50"
    size: int = 224
    batch: int = 256  # bf16 steps, the pipeline and PyTorch AMP
    batch_f32: int = 128
    num_classes: int = 1000
    images: int = 8192  # generated JPEGs for the pipeline
    min_side: int = 256
    max_side: int = 400
    workers: int = 0  # grain workers (0: one per core but one)
    feed_epochs: int = 2
    check_arch: str = "resnet50"  # GPU vs CPU step
    check_batch: int = 8
    bridge_arch: str = "resnet50"
    bridge_size: int = 224
    bridge_batch: int = 4
    target_s: float = 3.0  # pipelined timing per program
    min_steps: int = 5
    max_steps: int = 200
    per_step: int = 10  # synchronised steps for the per-step median

    @classmethod
    def smoke(cls) -> Plan:
        return cls(
            arch="convnet_small", size=32, batch=8, batch_f32=8, num_classes=10, images=48, min_side=40, max_side=64,
            workers=1, feed_epochs=2, check_arch="convnet_small", check_batch=4, bridge_arch="resnet18",
            bridge_size=32, bridge_batch=2, target_s=0.1, min_steps=2, max_steps=3, per_step=2,
        )  # fmt: skip


class PhaseTimeout(BaseException):
    """Raised in the main thread when a phase's deadline passes (BaseException: no ``except Exception`` eats it)."""


class Terminated(BaseException):
    """SIGTERM: stop, keeping what was measured."""


class _Tee:
    """Writes to a stream and to the run's log file."""

    def __init__(self, stream: TextIO, log: TextIO) -> None:
        self.stream, self.log = stream, log

    def write(self, s: str) -> int:
        self.log.write(s)
        return self.stream.write(s)

    def flush(self) -> None:
        self.log.flush()
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


class Run:
    """What the phases share: the plan, where results go, the compiled programs and the initial variables."""

    def __init__(self, plan: Plan, out: pathlib.Path, data_dir: pathlib.Path, settings: dict[str, Any]) -> None:
        self.plan, self.out, self.data_dir, self.settings = plan, out, data_dir, settings
        self.repo = REPO
        self.t_start = time.perf_counter()
        self.phase = "setup"
        self.phases: list[dict[str, Any]] = []
        self.records: list[dict[str, Any]] = []
        self.source = source_info()
        self.cpu_tuning: dict[str, Any] | None = None
        self._programs: dict[tuple[Any, ...], Any] = {}
        self._variables: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()
        self._current: dict[str, Any] = {}
        out.mkdir(parents=True, exist_ok=True)
        self._results = open(out / "results.jsonl", "a", buffering=1)  # noqa: SIM115  (open for the whole run)

    # --- recording ------------------------------------------------------------------------------------------
    def record(self, kind: str, /, **fields: Any) -> dict[str, Any]:
        """Append one result to results.jsonl now (flushed and synced), tagged with the phase and the time."""
        rec = {**fields, "phase": self.phase, "kind": kind, "t_s": round(time.perf_counter() - self.t_start, 3)}
        rec = json.loads(json.dumps(rec, default=_jsonable))
        with self._lock:
            self._results.write(json.dumps(rec) + "\n")
            self._results.flush()
            os.fsync(self._results.fileno())
            self.records.append(rec)
        print(f"  [{self.phase}] {kind}: {_short(rec)}", flush=True)
        return rec

    def headline(self, text: str) -> None:
        self._current["headline"] = text

    def note(self, text: str) -> None:
        self._current.setdefault("notes", []).append(text)
        print(f"  [{self.phase}] note: {text}", flush=True)

    def find(self, kind: str, **match: Any) -> list[dict[str, Any]]:
        return [r for r in self.records if r["kind"] == kind and all(r.get(k) == v for k, v in match.items())]

    # --- shared state ---------------------------------------------------------------------------------------
    def variables(self, arch: str, num_classes: int, size: int | None = None) -> dict[str, Any]:
        from benchmarks import gpu_programs

        key = (arch, num_classes)
        if key not in self._variables:
            self._variables[key] = gpu_programs.init_variables(arch, num_classes, size or self.plan.size)
        return self._variables[key]  # type: ignore[no-any-return]

    def program(self, mode: str, dtype: str, batch: int) -> Any:
        """The plan's model's ``mode`` program at ``dtype`` and ``batch`` on the default device, compiled once."""
        from benchmarks import gpu_programs

        p = self.plan
        key = (p.arch, mode, dtype, batch, p.size)
        if key not in self._programs:
            self._programs[key] = gpu_programs.build(
                mode, arch=p.arch, dtype=dtype, batch=batch, size=p.size,
                variables=self.variables(p.arch, p.num_classes), num_classes=p.num_classes,
            )  # fmt: skip
        return self._programs[key]

    def drop_programs(self) -> None:
        """Forget the compiled programs and their buffers (after a timeout a donated state may be gone)."""
        import gc

        self._programs.clear()
        gc.collect()

    def peak_tflops(self, dtype: str, device: Any) -> float | None:
        """Dense peak of one device for ``dtype`` (float32: TF32), from ``--peak-tflops`` or the known chips."""
        from benchmarks.train_steps import PEAK_TFLOPS

        if device.platform == "cpu":
            return None
        if self.settings.get("peak_tflops"):
            return float(self.settings["peak_tflops"])
        for key, (bf16, f32) in PEAK_TFLOPS.items():
            if key.lower() in device.device_kind.lower():
                return bf16 if dtype == "bfloat16" else f32
        return None

    # --- phases ---------------------------------------------------------------------------------------------
    def run_phase(self, name: str, title: str, fn: Callable[[Run], None], deadline: float) -> dict[str, Any]:
        """Run one phase until ``deadline`` (perf_counter seconds); its entry in the summary."""
        self.phase = name
        self._current = {"phase": name, "title": title, "status": "running"}
        limit = deadline - time.perf_counter()
        print(f"=== {name}: {title} (deadline {limit:.0f}s) ===", flush=True)
        t0 = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, max(0.01, limit))
        try:
            fn(self)
            self._current["status"] = "ok"
        except PhaseTimeout:
            self._current["status"] = "timeout"
            self._current["error"] = f"ran out of its {limit:.0f}s"
            self.drop_programs()
        except Terminated:
            self._current["status"] = "terminated"
            raise
        except (Exception, SystemExit) as e:  # reported; the next phase runs
            from benchmarks.gpu_checks import PhaseFailed

            self._current["status"] = "failed"
            self._current["error"] = f"{type(e).__name__}: {e}"[:2000]
            if not isinstance(e, PhaseFailed):
                self._current["traceback"] = traceback.format_exc()[-4000:]
                print(self._current["traceback"], file=sys.stderr, flush=True)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self._current["seconds"] = round(time.perf_counter() - t0, 2)
            self._current["records"] = sum(1 for r in self.records if r["phase"] == name)
            self.phases.append(self._current)
            self.write_summary()
            status = self._current["status"]
            print(f"=== {name}: {status} in {self._current['seconds']:.0f}s "
                  f"{self._current.get('error', self._current.get('headline', ''))} ===", flush=True)  # fmt: skip
        return self._current

    def write_summary(self, final: bool = False) -> None:
        from benchmarks import gpu_report

        payload = {
            "benchmark": "gpu_run",
            "finished": final,
            "elapsed_s": round(time.perf_counter() - self.t_start, 1),
            "settings": self.settings,
            "plan": dataclasses.asdict(self.plan),
            "source": self.source,
            "phases": self.phases,
        }
        _atomic_write(self.out / "summary.json", json.dumps(payload, indent=2, default=_jsonable) + "\n")
        _atomic_write(self.out / "summary.md", gpu_report.markdown(payload, self.records))


def source_info() -> dict[str, Any]:
    """The commit the run's code came from: git when the checkout has it, else ``.whl/SOURCE.json`` (written with
    the wheels by ``benchmarks.gpu_wheels``; the GPU machine's copy of the tree may have no ``.git``), else {}."""
    from benchmarks.gpu_wheels import source_stamp

    stamp = source_stamp()
    if "commit" in stamp:
        return {"commit": stamp["commit"], "commit_dirty": stamp["commit_dirty"], "from": "git"}
    path = REPO / ".whl" / "SOURCE.json"
    try:
        return {**json.loads(path.read_text()), "from": str(path)}
    except (OSError, ValueError):
        return {}


def _atomic_write(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _jsonable(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, pathlib.Path):
        return str(x)
    return repr(x)


def _short(rec: dict[str, Any]) -> str:
    keys = ("name", "ok", "device_kind", "file", "error", "mode", "dtype", "batch_size", "label", "compile_s",
            "images_per_s", "mfu", "steady_images_per_s", "fed_images_per_s", "limit", "update_rel_diff",
            "max_abs_diff", "jaxtl_over_torch")  # fmt: skip
    parts = []
    for k in keys:
        if k in rec and rec[k] is not None:
            v = rec[k]
            parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts) or ", ".join(k for k in rec if k not in ("phase", "kind", "t_s"))


def parser() -> argparse.ArgumentParser:
    from benchmarks.gpu_phases import PHASES

    names = [p[0] for p in PHASES]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=pathlib.Path, default=os.environ.get("OUT"), help="results folder (default $OUT)")
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds for all phases (default 480; --smoke 900: a check that the code runs, not a timing)",
    )
    p.add_argument("--smoke", action="store_true", help="every phase on the CPU at a tiny size (the rehearsal)")
    p.add_argument("--phases", nargs="+", choices=names, default=names, help="run only these (in the fixed order)")
    p.add_argument(
        "--arch",
        default=None,
        help="model of the step, pipeline and PyTorch phases: any registered classifier, e.g. vit_b_16 (built for "
        "the plan's input size) or convnext_tiny (default resnet50)",
    )
    p.add_argument("--workers", type=int, default=None, help="grain workers (default: one per core but one)")
    p.add_argument("--images", type=int, default=None, help="generated JPEGs for the pipeline phase (default 8192)")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: known chips)")
    p.add_argument("--cache-dir", default="/tmp/jaxtl-gpu-run/xla", help="persistent compile cache ('' = off)")
    p.add_argument("--data-dir", type=pathlib.Path, default=pathlib.Path("/tmp/jaxtl-gpu-run/data"))
    p.add_argument(
        "--mem-fraction", default="0.55", help="XLA_PYTHON_CLIENT_MEM_FRACTION unless set (PyTorch needs the rest)"
    )
    return p


def _setup_jax(run: Run, cache_dir: str, smoke: bool) -> None:
    """Before any computation: the platform (CPU for --smoke), jaxtl's CPU tuning, the compile cache."""
    if smoke:  # two CPU devices: the accelerator-vs-CPU phase compares one with the other
        os.environ["JAX_PLATFORMS"] = "cpu"
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_force_host_platform_device_count" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=2".strip()
    try:
        import jaxtl

        run.cpu_tuning = jaxtl.tune_cpu()  # as the CLI does; on a GPU machine only the CPU backend's flag applies
    except Exception as e:  # phase env reports the import failure
        run.cpu_tuning = {"error": f"{type(e).__name__}: {e}"}
    if cache_dir:
        try:
            import jax

            pathlib.Path(cache_dir).mkdir(parents=True, exist_ok=True)
            jax.config.update("jax_compilation_cache_dir", cache_dir)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        except Exception as e:
            print(f"compile cache not set: {type(e).__name__}: {e}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the phases; exit status 0 when every phase passed, 1 otherwise (the results are written either way)."""
    from benchmarks import gpu_report
    from benchmarks.gpu_phases import PHASES

    args = parser().parse_args(argv)
    if args.out is None:
        raise SystemExit("--out DIR is needed (or $OUT)")
    plan = Plan.smoke() if args.smoke else Plan()
    overrides = {"arch": args.arch, "workers": args.workers, "images": args.images}
    plan = dataclasses.replace(plan, **{k: v for k, v in overrides.items() if v is not None})
    if plan.workers == 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        plan = dataclasses.replace(plan, workers=max(1, min(16, cores - 1)))
    budget = args.budget or (900.0 if args.smoke else 480.0)
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", args.mem_fraction)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "driver.log", "a", buffering=1)  # noqa: SIM115
    sys.stdout, sys.stderr = _Tee(sys.stdout, log), _Tee(sys.stderr, log)  # type: ignore[assignment]
    settings = {k: v for k, v in vars(args).items() if k != "out"} | {"budget": budget, "argv": sys.argv}
    run = Run(plan, out, args.data_dir, settings)
    end = run.t_start + budget

    def watchdog() -> None:  # a phase stuck in C code (compiling, a hung device) never sees its alarm
        print(f"!!! watchdog: the budget of {budget:.0f}s is spent and phase {run.phase} is still running", flush=True)
        run.phases.append({**run._current, "status": "killed", "error": "stuck past the budget (watchdog)"})
        run.write_summary(final=True)
        print(gpu_report.text(run.phases, run.records), flush=True)
        os._exit(3)

    restore = install_signal_handlers()
    dog = threading.Timer(budget + (20.0 if args.smoke else 30.0), watchdog)
    dog.daemon = True
    dog.start()
    print(f"gpu_run: budget {budget:.0f}s, phases {' '.join(args.phases)}, out {out}", flush=True)
    _setup_jax(run, args.cache_dir, args.smoke)
    try:
        for name, _, title, fn in PHASES:
            if name not in args.phases:
                continue
            now = time.perf_counter()
            deadline = phase_deadline(name, args.phases, now, end)
            if end - now < 1.0:
                run.phases.append({"phase": name, "title": title, "status": "skipped", "error": "no budget left"})
                continue
            run.run_phase(name, title, fn, deadline)
    except Terminated:
        print("!!! SIGTERM: stopping; everything measured so far is in", out, flush=True)
    finally:
        dog.cancel()
        restore()
        run.phase = "done"
        run.write_summary(final=True)
        print(gpu_report.text(run.phases, run.records), flush=True)
    return 0 if all(p["status"] == "ok" for p in run.phases) else 1


def phase_deadline(name: str, selected: Sequence[str], now: float, end: float) -> float:
    """When phase ``name`` must stop: the time left until ``end`` shared among it and the selected phases after it
    in proportion to their limits, so time an earlier phase did not use goes to the later ones and no phase can
    take a later one's share."""
    from benchmarks.gpu_phases import PHASES

    order = [p[0] for p in PHASES]
    limits = {p[0]: p[1] for p in PHASES}
    later = sum(limits[n] for n in selected if order.index(n) > order.index(name))
    return now + max(0.0, end - now) * limits[name] / (limits[name] + later)


def install_signal_handlers() -> Callable[[], None]:
    """SIGALRM (a phase's deadline) raises :class:`PhaseTimeout`, SIGTERM :class:`Terminated`, in the main thread;
    returns a function that puts the previous handlers back."""

    def on_alarm(signum: int, frame: Any) -> None:
        raise PhaseTimeout

    def on_term(signum: int, frame: Any) -> None:
        raise Terminated

    old = {sig: signal.signal(sig, fn) for sig, fn in ((signal.SIGALRM, on_alarm), (signal.SIGTERM, on_term))}

    def restore() -> None:
        for sig, fn in old.items():
            signal.signal(sig, fn)

    return restore


if __name__ == "__main__":
    sys.exit(main())
