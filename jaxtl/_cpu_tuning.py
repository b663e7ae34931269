"""CPU settings that make convolutional nets faster under XLA:CPU, applied before jax starts its backend.

1. XLA flag. jaxlib 0.10 routes CPU convolutions through YNNPACK by default; for ResNets that is slower than XLA's
   own Eigen path on the CPUs we measured. XLA aborts the process on a flag it does not know, so the flag is only
   added for jaxlib releases where it was checked. GPU/TPU are unaffected (the flag is CPU-only).
2. malloc. XLA:CPU allocates every execution's scratch memory afresh (ResNet50 train step, 224x224 batch 8: about
   1 GB) and glibc serves blocks that large (and any block a worker thread asks for) with a new ``mmap``, so the
   kernel page-faults and zeroes all of it again on every step: ~290k page faults and ~0.4 s of system time per
   step. :func:`tune_malloc` makes glibc reuse freed memory instead (one arena, no mmap, no trimming): the step
   runs ~20% faster. The price: the process keeps its peak heap until it exits, the usual trade of a caching
   allocator. Applied only where jax will run on the CPU (no GPU/TPU plugin installed, or ``JAX_PLATFORMS=cpu``).

``python -m benchmarks.cpu_workarounds`` measures each against XLA's default in separate processes. Opt out with
``JAXTL_CPU_TUNING=0`` (both) or ``JAXTL_CPU_MALLOC=0`` (the malloc settings only).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import os
import sys

YNN_CONV_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
_CHECKED_JAXLIB = ((0, 10),)


def _jaxlib_minor() -> tuple[int, int] | None:
    try:
        parts = importlib.metadata.version("jaxlib").split(".")
        return int(parts[0]), int(parts[1])
    except (importlib.metadata.PackageNotFoundError, ValueError, IndexError):
        return None


def apply_cpu_flags() -> bool:
    """Add the CPU convolution flag to ``XLA_FLAGS`` if allowed and known to this jaxlib; True if it is set.

    Has an effect only if called before jax initialises its CPU backend (``import jaxtl`` does it first thing).
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_experimental_ynn_fusion_type" in flags:
        return YNN_CONV_FLAG in flags
    if os.environ.get("JAXTL_CPU_TUNING", "1") == "0" or _jaxlib_minor() not in _CHECKED_JAXLIB:
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {YNN_CONV_FLAG}".strip()
    return True


# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin", "libtpu")


def _jax_will_use_cpu() -> bool:
    platforms = os.environ.get("JAX_PLATFORMS", os.environ.get("JAX_PLATFORM_NAME", "")).strip().lower()
    if platforms:
        return platforms.split(",")[0] == "cpu"
    return not any(importlib.util.find_spec(name) is not None for name in _ACCELERATOR_PLUGINS)


def tune_malloc() -> bool:
    """Make glibc's malloc keep and reuse freed memory (see the module docstring); True if it was applied.

    Skipped (False) off Linux/glibc, when ``JAXTL_CPU_TUNING=0`` or ``JAXTL_CPU_MALLOC=0``, or when jax will run
    on an accelerator. Must run before jax starts its thread pools to cover their allocations.
    """
    if os.environ.get("JAXTL_CPU_TUNING", "1") == "0" or os.environ.get("JAXTL_CPU_MALLOC", "1") == "0":
        return False
    if not sys.platform.startswith("linux") or not _jax_will_use_cpu():
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        if not hasattr(libc, "gnu_get_libc_version"):  # musl and others: mallopt differs or is absent
            return False
        # -1 as size_t: never trim. Each call returns 1 on success.
        settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
        return all(libc.mallopt(param, value) == 1 for param, value in settings)
    except (OSError, AttributeError):
        return False


def apply_cpu_tuning() -> dict[str, bool]:
    """Both settings (the XLA flag, then malloc); which of them are in effect."""
    return {"xla_flag": apply_cpu_flags(), "malloc": tune_malloc()}
