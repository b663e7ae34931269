"""``import jaxtl`` changes no process setting; :func:`jaxtl.tune_cpu` sets XLA's flags and glibc's malloc options
only when called, warns when called after jax's backend started, and honours the environment opt-outs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jaxtl

# Runs in a fresh process. mallopt(M_MMAP_MAX, 0) shows as glibc's count of mmap'd blocks (mallinfo2().hblks) not
# growing for a block far above the mmap threshold; without it the 64 MiB block is one more mmap'd block.
_PROBE = """
import ctypes, json, os, sys, warnings
import numpy as np
names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uord ford keep".split()
class MI(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in names]
libc = ctypes.CDLL(None); libc.mallinfo2.restype = MI
flags_before = os.environ.get("XLA_FLAGS")
import jaxtl
if sys.argv[1] == "late":
    import jax
    jax.devices()  # the backend starts: XLA has read its flags
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    status = jaxtl.tune_cpu() if sys.argv[1] != "import" else jaxtl.cpu_tuning_status()
before = libc.mallinfo2().hblks
a = np.ones(64 << 20, np.uint8)
new_mmaps = libc.mallinfo2().hblks - before
del a  # freed, not trimmed: the heap keeps it (M_TRIM_THRESHOLD) until the trimming thread hands it back
heap_freed = libc.mallinfo2().arena
import threading, time
time.sleep(1.0)
print(json.dumps({
    "flags_before": flags_before, "flags": os.environ.get("XLA_FLAGS"), "status": status,
    "new_mmaps": new_mmaps, "warnings": [str(w.message) for w in caught],
    "heap_mib_after_free": heap_freed / 2**20, "heap_mib_later": libc.mallinfo2().arena / 2**20,
    "trim_thread": any(t.name == "jaxtl-malloc-trim" for t in threading.enumerate()),
}))
"""


def _probe(mode: str, **env: str) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith("JAXTL_CPU") and k != "XLA_FLAGS"}
    base.update({"JAX_PLATFORMS": "cpu", **env})
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], env=base, capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_import_changes_no_process_setting():
    got = _probe("import", XLA_FLAGS="--xla_cpu_enable_fast_math=false")
    assert got["flags"] == got["flags_before"] == "--xla_cpu_enable_fast_math=false"
    assert got["status"] == {"xla_flag": False, "malloc": False}
    assert got["new_mmaps"] == 1  # glibc's defaults: mallopt was not called
    assert got["warnings"] == []


def test_tune_cpu_sets_flags_and_malloc_before_the_backend_starts():
    got = _probe("tune")
    assert got["flags_before"] is None and jaxtl._cpu_tuning.YNN_CONV_FLAG in got["flags"]
    assert got["status"] == {"xla_flag": True, "malloc": True}
    assert got["new_mmaps"] == 0  # the 64 MiB block came from the heap
    assert got["warnings"] == []


def test_tune_cpu_opt_outs_and_accelerators():
    no_malloc = _probe("tune", JAXTL_CPU_MALLOC="0")
    assert no_malloc["status"] == {"xla_flag": True, "malloc": False} and no_malloc["new_mmaps"] == 1
    off = _probe("tune", JAXTL_CPU_TUNING="0")
    assert off["flags"] is None and off["status"] == {"xla_flag": False, "malloc": False}
    assert off["new_mmaps"] == 1
    gpu = _probe("tune", JAX_PLATFORMS="cuda")  # an accelerator run keeps glibc's defaults
    assert gpu["status"]["malloc"] is False and gpu["new_mmaps"] == 1


def test_tune_cpu_too_late_warns_and_names_what_it_could_not_set():
    got = _probe("late")
    assert got["status"] == {"xla_flag": False, "malloc": True}
    assert got["flags"] is None  # not written: XLA would never read it
    (message,) = got["warnings"]
    assert "backend already started" in message and "ynn_fusion_type" in message


def test_tune_cpu_again_is_a_quiet_no_op():
    # conftest called it before the backend started; pytest turns a jaxtl UserWarning into an error.
    flags = os.environ["XLA_FLAGS"]
    assert jaxtl.tune_cpu() == jaxtl.cpu_tuning_status() == {"xla_flag": True, "malloc": True}
    assert os.environ["XLA_FLAGS"] == flags


def test_a_thread_hands_free_heap_back_now_and_then():
    # Never trimming on free keeps the step's scratch memory mapped; without trims the freed holes of a long run
    # would stay resident too (peak RSS growing with the number of steps). The thread trims every period.
    trimmed = _probe("tune", JAXTL_CPU_MALLOC_TRIM_S="0.25")
    assert trimmed["trim_thread"] and trimmed["heap_mib_after_free"] >= 64
    assert trimmed["heap_mib_later"] < 64, trimmed
    kept = _probe("tune", JAXTL_CPU_MALLOC_TRIM_S="0")
    assert not kept["trim_thread"] and kept["heap_mib_after_free"] >= 64 and kept["heap_mib_later"] >= 64, kept
