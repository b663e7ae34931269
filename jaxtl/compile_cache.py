"""JAX's persistent compilation cache, switched on the jaxtl way.

A ResNet50 train step takes seconds to compile on a CPU, and a fine-tuning session re-runs the same steps again
and again; with the cache, every run after the first finds the compiled executable on disk (the key covers the
program, the jax/jaxlib versions, the devices and the XLA flags, so a stale entry is never used).

``jaxtl`` CLI commands turn it on by default (``--compile-cache DIR``, ``--no-compile-cache``); library users call
:func:`enable_compile_cache` themselves.
"""

from __future__ import annotations

import os
import pathlib

import jax

ENV_DIR = "JAXTL_COMPILE_CACHE"


def default_cache_dir() -> pathlib.Path:
    """``$JAXTL_COMPILE_CACHE``, else ``$XDG_CACHE_HOME/jaxtl/xla``, else ``~/.cache/jaxtl/xla``."""
    if os.environ.get(ENV_DIR):
        return pathlib.Path(os.environ[ENV_DIR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "jaxtl" / "xla"


def configured_cache_dir() -> str | None:
    """The cache directory jax uses now, or None if the cache is off."""
    value = jax.config.values.get("jax_compilation_cache_dir")
    return str(value) if value else None


def enable_compile_cache(
    path: str | pathlib.Path | None = None, *, min_compile_time_s: float = 0.0, replace: bool = False
) -> str:
    """Turn on JAX's persistent compilation cache in ``path`` (default :func:`default_cache_dir`); returns the
    directory in use.

    A cache the process already configured (``jax.config`` or ``JAX_COMPILATION_CACHE_DIR``) is kept and returned
    unless ``replace``: by default this never moves someone else's cache. Programs that compile in under
    ``min_compile_time_s`` are not stored. Raises ``OSError`` naming the directory if it cannot be created or
    written.
    """
    current = configured_cache_dir()
    if current and not replace:
        return current
    target = pathlib.Path(path).expanduser() if path is not None else default_cache_dir()
    try:
        target.mkdir(parents=True, exist_ok=True)
        probe = target / f".jaxtl-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise OSError(f"compile cache directory {str(target)!r} is not writable: {err.strerror or err}") from None
    jax.config.update("jax_compilation_cache_dir", str(target))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    return str(target)
