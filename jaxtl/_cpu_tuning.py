"""XLA:CPU settings that make convolutional nets faster on this jaxlib, applied before jax starts its backend.

jaxlib 0.10 routes CPU convolutions through YNNPACK by default; for ResNets that is slower than XLA's own
Eigen path on the CPUs we measured (``python -m benchmarks.cpu_workarounds`` compares both in one run).
XLA aborts the process on a flag it does not know, so the flag is only added for jaxlib releases where it was
checked. Set ``JAXTL_CPU_TUNING=0`` to leave XLA_FLAGS alone. GPU/TPU are unaffected (the flag is CPU-only).
"""

from __future__ import annotations

import importlib.metadata
import os

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
