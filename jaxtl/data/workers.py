"""The data workers (grain's spawned processes): how many make sense, how they treat Ctrl-C, and the one mistake
that breaks them (a script without a ``__main__`` guard), reported in one sentence.

- Ctrl-C reaches every process of the terminal's foreground group, workers included. Workers ignore SIGINT: the
  main process decides what an interrupt means (fit saves a checkpoint) and stops its streams, which stops the
  workers and frees their shared memory. A worker ignores it from the moment ``jaxtl.data`` is imported while it
  starts (:func:`ignore_sigint_if_starting_worker`: a spawned worker first re-imports the main module, which takes
  seconds) and again from :func:`worker_init`, the first thing grain runs in it.
- Workers are *spawned*: each starts a fresh interpreter that re-imports the main module. A script that opens
  streaming data with workers at its top level, without ``if __name__ == "__main__":``, would start workers from
  every worker. Such a worker exits at once with :data:`BOOTSTRAP_EXIT` instead, and the main process raises
  :class:`MainGuardError` saying what to change.
- A worker decodes and augments images: it needs numpy and Pillow, not jax. grain imports jax and Orbax only when
  it can (its jax-free install takes the same path: pure-Python trees, no profiler), and a worker's start is mostly
  that import (1.2 s of grain's 1.4 s here). So a worker starting without jax imported loads grain that way: while
  grain's own modules import, ``jax``, ``jaxlib`` and ``orbax`` are reported missing (grain then imports in 0.2 s);
  from :func:`worker_init` on, imports are as usual. This happens where ``jaxtl`` is imported while the worker
  imports the main module (a script with ``import jaxtl`` at its top, the ``jaxtl`` command).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import multiprocessing
import os
import signal
import sys
import threading
import types
import warnings
from collections.abc import Sequence

from jaxtl.errors import JaxtlError

__all__ = [
    "BOOTSTRAP_EXIT",
    "MainGuardError",
    "TooManyWorkersWarning",
    "check_not_bootstrapping",
    "check_worker_count",
    "ignore_sigint_if_starting_worker",
    "is_bootstrap_failure",
    "usable_cores",
    "warn_at_caller",
    "worker_init",
]

BOOTSTRAP_EXIT = 87
"""Exit status of a worker that found itself re-running an unguarded script (seen by the main process)."""

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../jaxtl
_warned_counts: set[tuple[int, int]] = set()


class MainGuardError(JaxtlError, RuntimeError):
    """Data workers re-ran the main script's top-level code: it lacks ``if __name__ == "__main__":``."""

    def __init__(self) -> None:
        main = getattr(sys.modules.get("__main__"), "__file__", None)
        where = f" ({main})" if main else ""
        super().__init__(
            f"the data workers re-ran this script's top-level code{where}: they are spawned processes that import "
            'the main module, so put the code that trains or reads data under `if __name__ == "__main__":`, or '
            "use workers=0 (--workers 0)"
        )


class TooManyWorkersWarning(UserWarning):
    """More data workers were asked for than this process may use cores."""


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def warn_at_caller(message: str, category: type[Warning]) -> None:
    """Warn pointing at the first frame outside jaxtl (the user's call), as ``skip_file_prefixes`` does in Python
    3.12: not at a line of jaxtl or of the loop that happened to pull a batch."""
    frame = sys._getframe(1)
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR + os.sep):
        frame = frame.f_back
    module_globals = frame.f_globals
    warnings.warn_explicit(
        message,
        category,
        frame.f_code.co_filename,
        frame.f_lineno,
        module=module_globals.get("__name__", "<unknown>"),
        registry=module_globals.setdefault("__warningregistry__", {}),
        module_globals=module_globals,
    )


def check_worker_count(workers: int) -> None:
    """One :class:`TooManyWorkersWarning` per process and count when ``workers`` exceeds the usable cores: extra
    workers add start-up time (each imports jax) and memory, not speed, when decoding is CPU-bound."""
    cores = usable_cores()
    if workers <= cores or (workers, cores) in _warned_counts:
        return
    _warned_counts.add((workers, cores))
    warn_at_caller(
        f"workers={workers} is more than the {cores} CPU core(s) this process may use; each worker starts its own "
        f"interpreter (seconds each) and decodes on a core: {max(0, cores - 1)} or fewer is usually fastest",
        TooManyWorkersWarning,
    )


def check_not_bootstrapping() -> None:
    """In a spawned process still importing the main module, end it quietly with :data:`BOOTSTRAP_EXIT`: the
    script is starting workers from its top level (no ``__main__`` guard), which would start workers from every
    worker. The main process turns that exit status into :class:`MainGuardError`."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise SystemExit(BOOTSTRAP_EXIT)


class _GrainWithoutJax(importlib.abc.MetaPathFinder):
    """Reports jax, jaxlib and Orbax missing to grain's own modules (see the module docstring)."""

    BLOCKED = ("jax", "jaxlib", "orbax")

    def __init__(self) -> None:
        self.absl_level: int | None = None

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.partition(".")[0] in self.BLOCKED and _imported_by_grain():
            raise ModuleNotFoundError(f"{fullname} is not loaded in a jaxtl data worker", name=fullname)
        return None


def _imported_by_grain() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if str(frame.f_globals.get("__name__", "")).startswith("grain"):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


_GRAIN_WITHOUT_JAX = _GrainWithoutJax()


def ignore_sigint_if_starting_worker() -> None:
    """In a grain worker that is still starting (importing the main module: multiprocessing's bootstrapping
    phase, the process already named by grain), ignore SIGINT from now on, and load grain without jax and Orbax
    when jax is not imported yet (see the module docstring). Nothing happens in any other process."""
    proc = multiprocessing.current_process()
    if (
        getattr(proc, "_inheriting", False)
        and proc.name.startswith("grain-process-prefetch")
        and threading.current_thread() is threading.main_thread()
    ):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if "jax" not in sys.modules and "grain" not in sys.modules and _GRAIN_WITHOUT_JAX not in sys.meta_path:
            sys.meta_path.insert(0, _GRAIN_WITHOUT_JAX)
            absl = logging.getLogger("absl")  # grain logs a warning when it finds no jax profiler: not news here
            _GRAIN_WITHOUT_JAX.absl_level = absl.level
            absl.setLevel(logging.ERROR)


def worker_init(index: int, count: int) -> None:
    """Run by grain first in every worker process: ignore SIGINT (the main process stops the workers); imports are
    as usual from here on."""
    del index, count
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if _GRAIN_WITHOUT_JAX in sys.meta_path:
        sys.meta_path.remove(_GRAIN_WITHOUT_JAX)
        if _GRAIN_WITHOUT_JAX.absl_level is not None:
            logging.getLogger("absl").setLevel(_GRAIN_WITHOUT_JAX.absl_level)


def is_bootstrap_failure(error: BaseException) -> bool:
    """Whether ``error`` (raised by grain in the main process) reports a worker that exited with
    :data:`BOOTSTRAP_EXIT`."""
    return isinstance(error, RuntimeError) and f"exit code {BOOTSTRAP_EXIT}" in str(error)


# Imported first by jaxtl.data: in a grain worker still importing the main module, Ctrl-C is ignored from here on.
ignore_sigint_if_starting_worker()
