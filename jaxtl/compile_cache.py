"""JAX's persistent compilation cache, on by default for every jaxtl run.

A ResNet50 train step takes seconds to compile on a CPU (more on an accelerator), and a fine-tuning session re-runs
the same programs again and again; with the cache, every run after the first loads the compiled executables from
disk (the key covers the program, the jax/jaxlib versions, the devices and the XLA flags, so a stale entry is never
used).

- **Where**: ``$JAXTL_COMPILE_CACHE``, else ``$XDG_CACHE_HOME/jaxtl/xla``, else ``~/.cache/jaxtl/xla``.
- **When**: a run (``fit``, ``finetune``, ``pretrain``, an evaluation, feature extraction, every ``jaxtl`` command)
  switches it on as it starts, unless a cache is already configured (``jax.config``'s
  ``jax_compilation_cache_dir`` or ``JAX_COMPILATION_CACHE_DIR``: that one is used, never moved). Importing
  jaxtl changes nothing.
- **Off**: ``JAXTL_COMPILE_CACHE=0`` (or ``off``), ``jaxtl.enable_compile_cache(False)``, or the CLI's
  ``--no-compile-cache``.
- **Several processes and hosts**: jaxtl's cache is size-bounded (least recently used entries go beyond
  ``max_size_bytes``), which makes JAX take a file lock around every read and write, so processes sharing the folder
  never see a half-written entry; in a multi-process (``jax.distributed``) run only process 0 writes, the others
  read what it wrote (a folder on a shared filesystem serves every host).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import warnings
from typing import Literal

__all__ = [
    "DEFAULT_MAX_SIZE",
    "ENV_DIR",
    "configured_cache_dir",
    "default_cache_dir",
    "default_compile_cache",
    "enable_compile_cache",
    "off_by_env",
]

ENV_DIR = "JAXTL_COMPILE_CACHE"
OFF = ("0", "off", "false", "no", "none")
DEFAULT_MAX_SIZE = 4 << 30  # bytes; a ResNet50 train step's entry is about 1 MB on a CPU

_state: dict[str, str | bool | None] = {"off": False, "ours": None, "warned": False}


def default_cache_dir() -> pathlib.Path:
    """``$JAXTL_COMPILE_CACHE``, else ``$XDG_CACHE_HOME/jaxtl/xla``, else ``~/.cache/jaxtl/xla`` (the place; see
    :func:`off_by_env` for the values that turn the cache off instead)."""
    value = os.environ.get(ENV_DIR, "")
    if value and value.strip().lower() not in OFF:
        return pathlib.Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "jaxtl" / "xla"


def off_by_env() -> bool:
    """Whether ``$JAXTL_COMPILE_CACHE`` turns the default cache off (``0``, ``off``, ``false``, ``no``, ``none``)."""
    return os.environ.get(ENV_DIR, "").strip().lower() in OFF and bool(os.environ.get(ENV_DIR, "").strip())


def configured_cache_dir() -> str | None:
    """The cache directory jax uses now, or None if the cache is off."""
    import jax

    value = jax.config.values.get("jax_compilation_cache_dir")
    return str(value) if value else None


def _backfill_access_times(folder: pathlib.Path) -> None:
    """Give every entry of ``folder`` the access-time file a size-bounded cache keeps beside it (entries written
    while the folder was unbounded have none, and JAX's eviction would fail on them)."""
    for entry in folder.glob("*-cache"):
        stamp = entry.with_name(entry.name.removesuffix("-cache") + "-atime")
        if not stamp.exists():
            with contextlib.suppress(OSError):  # removed meanwhile by another process's eviction
                stamp.write_bytes(entry.stat().st_mtime_ns.to_bytes(8, "little"))


def _bounded_size(max_size_bytes: int) -> int:
    """``max_size_bytes``, or -1 (unbounded) with one warning when the ``filelock`` package JAX locks a bounded
    cache with is missing: JAX would otherwise fail every read and write of the cache (jax 0.11) and store
    nothing."""
    try:
        import filelock  # noqa: F401
    except ImportError:
        if max_size_bytes == -1:
            return -1
    else:
        return max_size_bytes
    warnings.warn(
        "jaxtl: the compile cache is not size-bounded: JAX needs the filelock package for that "
        "(pip install filelock); without it several processes sharing the folder are not locked",
        stacklevel=4,
    )
    return -1


def _use(target: str | None, min_compile_time_s: float | None, max_size_bytes: int) -> None:
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    jax.config.update("jax_compilation_cache_dir", target)
    if target is not None:
        assert min_compile_time_s is not None
        jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
        jax.config.update("jax_compilation_cache_max_size", _bounded_size(int(max_size_bytes)))
    # jax decides once, at its first compile, whether a cache is in use: make it look again, so a cache switched
    # on after some compiles (or off) takes effect from the next compile.
    compilation_cache.reset_cache()


def enable_compile_cache(
    path: str | pathlib.Path | Literal[False] | None = None,
    *,
    min_compile_time_s: float = 0.0,
    replace: bool = False,
    max_size_bytes: int = DEFAULT_MAX_SIZE,
) -> str | None:
    """Turn on JAX's persistent compilation cache in ``path`` (default :func:`default_cache_dir`); returns the
    directory in use, or None when the cache is off.

    ``path=False`` turns it off for this process: runs then compile from scratch (a cache jaxtl had switched on is
    switched off; one configured by someone else is left alone). With ``path=None`` the default place is used unless
    ``$JAXTL_COMPILE_CACHE`` turns the cache off. A cache the process already configured (``jax.config`` or
    ``JAX_COMPILATION_CACHE_DIR``) is kept and returned unless ``replace``: by default this never moves someone
    else's cache. Programs that compile in under ``min_compile_time_s`` are not stored; beyond ``max_size_bytes``
    the least recently used entries are removed (-1: unbounded, and no file lock). Raises ``OSError`` naming the
    directory if it cannot be created or written.
    """
    if path is False:
        _state["off"] = True
        if _state["ours"] is not None and configured_cache_dir() == _state["ours"]:
            _use(None, None, max_size_bytes)
        _state["ours"] = None
        return None
    if path is None and off_by_env():
        return None
    current = configured_cache_dir()
    if current and not replace:
        return current
    target = pathlib.Path(path).expanduser() if path is not None else default_cache_dir()
    try:
        target.mkdir(parents=True, exist_ok=True)
        probe = target / f".jaxtl-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        if max_size_bytes != -1:
            _backfill_access_times(target)
    except OSError as err:
        raise OSError(f"compile cache directory {str(target)!r} is not writable: {err.strerror or err}") from None
    _use(str(target), min_compile_time_s, max_size_bytes)
    _state["off"], _state["ours"] = False, str(target)
    return str(target)


def default_compile_cache() -> str | None:
    """What a run calls as it starts: the cache already configured, else the default one (:func:`enable_compile_cache`)
    unless it was turned off (``enable_compile_cache(False)``, ``$JAXTL_COMPILE_CACHE=0``). A default folder that
    cannot be written costs a warning (once), not the run."""
    if _state["off"] or off_by_env():
        return None
    current = configured_cache_dir()
    if current:
        return current
    try:
        return enable_compile_cache()
    except OSError as err:
        if not _state["warned"]:
            _state["warned"] = True
            warnings.warn(f"running without a compile cache ({err}); set {ENV_DIR}=DIR or 0", stacklevel=3)
        return None
