"""Phase ``env`` of ``benchmarks.gpu_run``: the machine, versions, and whether jax, jaxtl (from the installed
wheel, not the checkout), jaxtl.bridge and grain import and run one tiny step. A failure here costs seconds."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import time
import traceback
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks import gpu_programs

if TYPE_CHECKING:
    from benchmarks.gpu_run import Run

DISTRIBUTIONS = (
    "jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda13-pjrt", "jax-cuda12-plugin", "jax-cuda12-pjrt", "flax", "optax",
    "orbax-checkpoint", "grain", "array_record", "portpicker", "numpy", "ml_dtypes", "torch", "torchvision", "pillow",
    "psutil", "tensorboardX", "jaxtl",
)  # fmt: skip
_SMI_FIELDS = (
    "name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,memory.total,memory.used,"
    "power.draw,power.limit,temperature.gpu,pstate"
)


class PhaseFailed(Exception):
    """A phase measured what it could but something it checks failed (the message says what)."""


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def nvidia_smi() -> dict[str, str] | None:
    """One row of ``nvidia-smi --query-gpu`` (name, driver, clocks, memory, power, temperature), None without it."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        proc = subprocess.run(
            [exe, f"--query-gpu={_SMI_FIELDS}", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError) as e:
        return {"error": str(e)}
    out = proc.stdout.strip()
    if proc.returncode or not out:
        return {"error": (proc.stderr or proc.stdout).strip()[-500:] or f"exit {proc.returncode}"}
    values = [v.strip() for v in out.splitlines()[0].split(",")]
    return dict(zip(_SMI_FIELDS.split(","), values))


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        return None


def _meminfo() -> dict[str, float]:
    out = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, value = line.split(":", 1)
                if key in ("MemTotal", "MemAvailable"):
                    out[key + "_gib"] = int(value.split()[0]) / 2**20
    except OSError:
        pass
    return out


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".strip()[:2000]


def _check(run: Run, checks: dict[str, Any], name: str, fn: Any) -> None:
    """Run one import/tiny-step check and record its result or its error at once (a timeout keeps the earlier)."""
    t0 = time.perf_counter()
    try:
        result = {"ok": True, **(fn() or {})}
    except Exception as e:  # every check is reported, whatever it raised
        result = {"ok": False, "error": _error(e), "traceback": traceback.format_exc()[-3000:]}
    checks[name] = {**result, "s": time.perf_counter() - t0}
    run.record("check", name=name, **checks[name])


def phase_env(run: Run) -> None:
    """Versions, the machine, and whether jax, jaxtl, jaxtl.bridge and grain import and run one tiny step."""
    shm = shutil.disk_usage("/dev/shm") if os.path.isdir("/dev/shm") else None
    smi = nvidia_smi()
    machine = run.record(
        "machine",
        python=sys.version.split()[0],
        executable=sys.executable,
        versions={d: version(d) for d in DISTRIBUTIONS},
        cores=os.cpu_count(),
        cores_usable=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        cpu_model=_cpu_model(),
        memory=_meminfo(),
        dev_shm_free_gib=None if shm is None else shm.free / 2**30,
        nvidia_smi=smi,
        env={
            k: os.environ.get(k) for k in ("XLA_FLAGS", "JAX_PLATFORMS", "XLA_PYTHON_CLIENT_MEM_FRACTION", "PYTHONPATH")
        },
        source=run.source,
    )
    # Printed in full: the end of the output comes back even when no file does.
    print("  versions: " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v), flush=True)
    gpu = ", ".join(f"{k} {v}" for k, v in smi.items()) if smi else "no nvidia-smi"
    shm_free = "-" if machine["dev_shm_free_gib"] is None else f"{machine['dev_shm_free_gib']:.1f} GiB"
    print(f"  python {machine['python']}; {machine['cores']} cores ({machine['cpu_model']}); /dev/shm free {shm_free}; "
          f"source {run.source}\n  gpu: {gpu}", flush=True)  # fmt: skip
    checks: dict[str, Any] = {}

    def jax_check() -> dict[str, Any]:
        import jax

        devs = jax.devices()
        if devs[0].platform == "cpu" and smi and "name" in smi and not run.settings.get("smoke"):
            # A CUDA plugin that failed to start leaves jax on the CPU with only a warning: every phase would crawl.
            raise RuntimeError(f"jax runs on the CPU although nvidia-smi sees {smi['name']}")
        return {"backend": jax.default_backend(), "devices": [str(d) for d in devs], "device_kind": devs[0].device_kind}

    def jaxtl_check() -> dict[str, Any]:
        import jaxtl
        import jaxtl.bridge

        where = os.path.realpath(jaxtl.__file__)
        home = os.path.dirname(where) + os.sep
        # A module the wheel lacks (a subpackage missing from pyproject's list) may still be found elsewhere, e.g. by
        # an editable install's finder: every jaxtl module must come from the same installed package.
        files = {n: getattr(m, "__file__", None) for n, m in list(sys.modules.items()) if n.split(".")[0] == "jaxtl"}
        strays = sorted(
            f"{n} from {f}" for n, f in files.items() if isinstance(f, str) and not os.path.realpath(f).startswith(home)
        )
        if strays:
            raise RuntimeError(f"jaxtl is {where}, but {'; '.join(strays)} (is the wheel missing a subpackage?)")
        return {"file": where, "from_checkout": where.startswith(str(run.repo) + os.sep), "tuning": run.cpu_tuning}

    def bridge_check() -> dict[str, Any]:
        import jaxtl.bridge

        if importlib.util.find_spec("torch") is None:
            return {"converted": None, "note": "torch is not installed: import only"}
        import torchvision

        sd = torchvision.models.resnet18(weights=None).state_dict()
        _, variables = jaxtl.bridge.from_torchvision(sd, arch="resnet18")
        return {"converted": "resnet18", "params": len(jaxtl.bridge.to_torchvision(variables, "resnet18"))}

    def grain_check() -> dict[str, Any]:
        import grain

        got = [int(x) for x in grain.MapDataset.range(6).map(lambda i: i * 2)]
        if got != [0, 2, 4, 6, 8, 10]:
            raise RuntimeError(f"grain MapDataset gave {got}")
        return {"version": version("grain")}

    def step_check() -> dict[str, Any]:
        variables = run.variables("convnet_small", 10, 16)
        prog = gpu_programs.build(
            "full", arch="convnet_small", dtype="float32", batch=8, size=16, variables=variables, num_classes=10
        )
        loss = float(prog()["loss"])
        if not np.isfinite(loss):
            raise RuntimeError(f"the tiny train step's loss is {loss}")
        return {"loss": loss, "compile_s": prog.compile_s, "platform": prog.device.platform}

    for name, fn in (("jax", jax_check), ("jaxtl", jaxtl_check), ("grain", grain_check), ("tiny_step", step_check),
                     ("jaxtl.bridge", bridge_check)):  # fmt: skip
        _check(run, checks, name, fn)
    bad = [k for k, v in checks.items() if not v["ok"]]
    if checks.get("jaxtl", {}).get("from_checkout"):
        bad.append("jaxtl imported from the checkout, not the installed wheel")
    run.headline(
        f"{checks.get('jax', {}).get('device_kind', '?')}; " + ("all imports and the tiny step ok" if not bad else "")
    )
    if bad:
        raise PhaseFailed(
            "failed: " + "; ".join(f"{k}: {checks[k].get('error', '')}" if k in checks else k for k in bad)
        )
