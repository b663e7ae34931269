"""Explicit CPU tuning for conv nets under XLA:CPU: :func:`tune_cpu`. ``import jaxtl`` never applies it.

What it sets, both process-wide and both measured by ``python -m benchmarks.cpu_workarounds``:

1. XLA flags (``XLA_FLAGS``, read once when jax starts its backend). jaxlib 0.10 routes CPU convolutions through
   YNNPACK by default; for ResNets that is slower than XLA's own Eigen path on the CPUs we measured. XLA aborts the
   process on a flag it does not know, so flags are only added for jaxlib releases where they were checked.
   GPU/TPU ignore them (they are CPU-only).
2. glibc malloc. XLA:CPU allocates every execution's scratch memory afresh (ResNet50 train step, 224x224 batch 8:
   about 1 GB) and glibc serves blocks that large (and any block a worker thread asks for) with a new ``mmap``, so
   the kernel page-faults and zeroes all of it again on every step: ~290k page faults and ~0.4 s of system time per
   step. ``mallopt`` makes glibc reuse freed memory instead (one arena, no mmap, no trimming): the step runs ~20%
   faster. Never trimming has a price that grows with run length: freed holes between live blocks stay resident,
   and a whole ``jaxtl finetune`` over 20,000 images peaked 550 MiB above one over 2,000 (``benchmarks.data_pipeline
   --rss-finetune``). So a daemon thread calls ``malloc_trim(0)`` every ``JAXTL_CPU_MALLOC_TRIM_S`` seconds (default
   5; 0: never), which hands free pages back to the kernel: a step after a trim page-faults once, not every step.
   Applied only where jax will run on the CPU (no GPU/TPU plugin installed, or ``JAX_PLATFORMS=cpu``).

Both change the whole process, which a library must not do behind its user's back, hence an explicit call, made by
the ``jaxtl`` command line, the demo and the benchmarks. Environment opt-outs, honoured by :func:`tune_cpu`:
``JAXTL_CPU_TUNING=0`` (both) or ``JAXTL_CPU_MALLOC=0`` (the malloc settings only).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import os
import sys
import threading
import time
import warnings

# XLA flags tune_cpu adds, with the jaxlib (major, minor) releases they were checked on (XLA aborts on unknown
# flags). The A/B behind each: benchmarks/cpu_workarounds.py. jaxlib 0.11.2 knows the flag with the same values
# and help text as 0.10.2 (checked by passing it, and a bad value, to both).
YNN_CONV_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
CPU_FLAGS = (YNN_CONV_FLAG,)
_CHECKED_JAXLIB = ((0, 10), (0, 11))

# What tune_cpu has put in effect in this process (never set by import).
_STATUS = {"xla_flag": False, "malloc": False}


def cpu_tuning_status() -> dict[str, bool]:
    """Which of :func:`tune_cpu`'s settings are in effect in this process: ``{"xla_flag", "malloc"}``.

    Both are False until :func:`tune_cpu` is called (``import jaxtl`` changes nothing); ``xla_flag`` is also True
    when the flags were already in ``XLA_FLAGS`` when it was called.
    """
    return dict(_STATUS)


def _jaxlib_minor() -> tuple[int, int] | None:
    try:
        parts = importlib.metadata.version("jaxlib").split(".")
        return int(parts[0]), int(parts[1])
    except (importlib.metadata.PackageNotFoundError, ValueError, IndexError):
        return None


def backend_started() -> bool:
    """True once jax has created its backends: ``XLA_FLAGS`` and ``JAX_PLATFORMS`` no longer take effect."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    if bridge is None:
        return False
    started = getattr(bridge, "backends_are_initialized", None)
    return True if started is None else bool(started())


def _flags_in_effect(flags: str) -> bool:
    return all(flag in flags for flag in CPU_FLAGS)


def _apply_xla_flags(started: bool) -> tuple[bool, str | None]:
    """(in effect, why not) for the XLA flags."""
    flags = os.environ.get("XLA_FLAGS", "")
    if _flags_in_effect(flags):
        return True, None
    if "xla_cpu_experimental_ynn_fusion_type" in flags:
        return False, None  # the user's own YNNPACK setting wins
    if _jaxlib_minor() not in _CHECKED_JAXLIB:
        return False, None  # unchecked flags could abort XLA: skipped
    if started:
        return False, f"jax's backend already started, so XLA_FLAGS can no longer take {' '.join(CPU_FLAGS)}"
    os.environ["XLA_FLAGS"] = " ".join([flags, *CPU_FLAGS]).strip()
    return True, None


# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin", "libtpu")


def _jax_will_use_cpu(started: bool) -> bool:
    if started:
        import jax

        return jax.default_backend() == "cpu"
    platforms = os.environ.get("JAX_PLATFORMS", os.environ.get("JAX_PLATFORM_NAME", "")).strip().lower()
    if platforms:
        return platforms.split(",")[0] == "cpu"
    return not any(importlib.util.find_spec(name) is not None for name in _ACCELERATOR_PLUGINS)


def _apply_malloc(started: bool) -> tuple[bool, str | None]:
    """(in effect, why not) for glibc's malloc settings."""
    if _STATUS["malloc"]:
        return True, None
    if os.environ.get("JAXTL_CPU_MALLOC", "1") == "0":
        return False, None  # the user's choice: nothing to warn about
    if not sys.platform.startswith("linux") or not _jax_will_use_cpu(started):
        return False, None  # not applicable here
    name = ctypes.util.find_library("c")
    if name is None:
        return False, None
    try:
        libc = ctypes.CDLL(name)
        if not hasattr(libc, "gnu_get_libc_version"):  # musl and others: mallopt differs or is absent
            return False, None
        # -1 as size_t: never trim on free (the trimming thread does it now and then). Each call returns 1 on success.
        settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
        ok = all(libc.mallopt(param, value) == 1 for param, value in settings)
        period = float(os.environ.get("JAXTL_CPU_MALLOC_TRIM_S", "5"))
    except (OSError, AttributeError) as e:
        return False, f"mallopt failed: {e}"
    except ValueError:
        return ok, f"JAXTL_CPU_MALLOC_TRIM_S must be a number of seconds, got {os.environ['JAXTL_CPU_MALLOC_TRIM_S']!r}"
    if ok and period > 0:
        threading.Thread(target=_trim_forever, args=(libc, period), name="jaxtl-malloc-trim", daemon=True).start()
    return ok, None if ok else "mallopt refused a setting"


def _trim_forever(libc: ctypes.CDLL, period: float) -> None:
    """Hand glibc's free pages back to the kernel every ``period`` seconds (see the module docstring)."""
    while True:
        time.sleep(period)
        libc.malloc_trim(0)


def tune_cpu(*, malloc: bool = True) -> dict[str, bool]:
    """Make conv nets faster on XLA:CPU: jaxtl's XLA flags and glibc malloc settings (see the module docstring).

    Call it first thing, before anything starts jax's backend (the first computation or device query): XLA reads
    its flags once. Called later it warns, naming what it could not set, and applies the rest (the malloc settings
    then cover only arenas made from now on). ``malloc=False`` leaves glibc alone. Repeated calls are free.
    Does nothing under ``JAXTL_CPU_TUNING=0``; ``JAXTL_CPU_MALLOC=0`` skips the malloc part. Returns
    :func:`cpu_tuning_status`.
    """
    if os.environ.get("JAXTL_CPU_TUNING", "1") == "0":
        return cpu_tuning_status()
    started = backend_started()
    problems = []
    _STATUS["xla_flag"], why = _apply_xla_flags(started)
    if why:
        problems.append(why)
    if malloc:
        _STATUS["malloc"], why = _apply_malloc(started)
        if why:
            problems.append(why)
    if problems:
        warnings.warn(f"jaxtl.tune_cpu: {'; '.join(problems)}", UserWarning, stacklevel=2)
    return cpu_tuning_status()
