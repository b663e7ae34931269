"""Test set-up that catches JAX mistakes on CPU.

Four fake CPU devices (so pmap/shard_map really split work), jaxtl's CPU tuning (as the CLI runs), rank promotion
raising, and JAX's persistent compilation cache so repeated runs skip most compile time. The device count and the
tuning must come before jax starts its backend.
"""

from __future__ import annotations

import os
import pathlib

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (importing jax does not start a backend; the first device query does)

import jaxtl  # noqa: E402
from jaxtl.compile_cache import DEFAULT_MAX_SIZE  # noqa: E402

jaxtl.tune_cpu()  # the settings the CLI and benchmarks run with; must come before the backend starts

ROOT = pathlib.Path(__file__).resolve().parent.parent
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_compilation_cache_dir", os.environ.get("JAXTL_TEST_CACHE", str(ROOT / ".jax_cache")))
# CLI runs in subprocesses use the same cache instead of the user's ~/.cache/jaxtl/xla.
os.environ.setdefault("JAXTL_COMPILE_CACHE", jax.config.values["jax_compilation_cache_dir"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
# Size-bounded as jaxtl bounds its cache in the CLI subprocesses: a bounded writer's eviction reads every entry's
# access-time file, which an unbounded writer (this session, a worker script) does not write ("Error writing
# persistent compilation cache entry" on stderr).
jax.config.update("jax_compilation_cache_max_size", DEFAULT_MAX_SIZE)
os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(DEFAULT_MAX_SIZE)  # and every subprocess's jax (workers, snippets)

assert jax.device_count() >= 4, "tests need at least 4 (fake) devices; XLA_FLAGS was set too late"

# Fuzz tests draw new random examples on every run, in CI too (a fixed draw would hide every new failure from CI);
# the profile bounds their number, so the suite time does not grow. A failure is shrunk and printed with its
# reproduce blob: keep it in the test as an explicit @example (or a plain test case) before fixing it.
# `pytest --hypothesis-profile=explore tests/fuzz` searches harder (about 25x the examples).
from hypothesis import settings  # noqa: E402

settings.register_profile("jaxtl", max_examples=40, deadline=None, print_blob=True)
settings.register_profile("ci", settings.get_profile("jaxtl"), database=None)
settings.register_profile("explore", settings.get_profile("jaxtl"), max_examples=1000)
settings.load_profile("ci" if os.environ.get("CI", "").lower() in ("1", "true", "yes") else "jaxtl")
