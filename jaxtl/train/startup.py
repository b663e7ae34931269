"""Getting a run to its first step sooner: work that can overlap does.

- :class:`Ahead`: an iterator whose first item is fetched in a background thread from the moment it is made, so the
  data workers start (a spawned process imports its modules for seconds) and decode the first batch while this
  thread compiles.
- :class:`Program`: a mapped step compiled ahead of its first batch, from the batch's shapes alone
  (:func:`batch_spec`), here or in a background thread of low priority; later calls run that executable. A batch of
  any other shape runs the plain jitted function, which compiles for it as usual, so numbers never depend on
  whether the ahead-of-time compile happened.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from jaxtl.data.image_source import ImageSource
from jaxtl.data.protocol import Source
from jaxtl.train.parallel import Parallel
from jaxtl.train.timings import in_context, mark, phase

__all__ = ["Ahead", "Program", "batch_spec"]


class Ahead:
    """Iterate ``iterator``; its first item is fetched in a daemon thread started at construction (what the thread
    raises is raised here, where the item is asked for). ``name``: the phase the wait is recorded as."""

    def __init__(self, iterator: Iterator[Any], name: str) -> None:
        self._it = iterator
        self._name = name
        self._first: Any = None
        self._error: BaseException | None = None
        self._empty = False
        self._taken = False
        self._thread = threading.Thread(target=in_context(self._fetch), name=f"jaxtl-{name}", daemon=True)
        self._thread.start()

    def _fetch(self) -> None:
        start = time.perf_counter()
        try:
            self._first = next(self._it)
        except StopIteration:
            self._empty = True
        except BaseException as err:  # handed to the thread that asks for the item
            self._error = err
        mark(self._name, start)

    def first(self) -> Any:
        """The first item (None for an empty iterator), waiting for it."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._first

    def __iter__(self) -> Iterator[Any]:
        first = self.first()
        if self._empty:
            return
        self._taken = True
        yield first
        yield from self._it

    def close(self) -> None:
        """Stop: wait for the fetch (a generator cannot be closed while it runs) and close the iterator."""
        self._thread.join()
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


def batch_spec(data: Source, batch_size: int, par: Parallel, *, train: bool) -> Any:
    """The device batches ``par`` makes of ``data``'s batches of ``batch_size`` (``train``: a training epoch, whole
    batches; else a full pass, with a mask), as ``jax.ShapeDtypeStruct`` leaves; None when the source cannot say
    without producing a batch (its first batch then gives the shapes)."""
    if not isinstance(data, ImageSource):
        return None
    host = data.batch_layout(batch_size, drop_remainder=train, process_count=par.process_count)
    zeros = par.put_batch({k: np.zeros(shape, dtype) for k, (shape, dtype) in host.items()})
    return spec_of(zeros)


def spec_of(tree: Any) -> Any:
    """``tree``'s arrays as ``jax.ShapeDtypeStruct`` (shape, dtype, sharding)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


def _key(tree: Any) -> Any:
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((tuple(x.shape), np.dtype(x.dtype)) for x in leaves)


class Program:
    """``fn(*args, batch)`` (a ``jax.jit``/``jax.pmap`` of a per-device step) with its executable built ahead by
    :meth:`compile` for one batch spec; calls with a batch of that spec run it, others run ``fn``."""

    def __init__(self, fn: Callable[..., Any], name: str) -> None:
        self.fn, self.name = fn, name
        self._compiled: Any = None
        self._key: Any = None
        self._lock = threading.Lock()  # held while compiling: a call waits for a compile in progress

    def compile(self, *args: Any) -> None:
        """Build the executable for ``fn(*args)`` (``args[-1]``: the batch spec; the others may be arrays or
        ``jax.ShapeDtypeStruct``). A program that cannot be lowered ahead is compiled by its first call instead,
        which reports any error. Nothing is done if it is built for that batch spec already."""
        key = _key(args[-1])
        with self._lock:
            if self._compiled is not None and self._key == key:
                return
            with phase(f"compile: {self.name}"):
                try:
                    self._compiled = self.fn.lower(*args).compile()  # type: ignore[attr-defined]
                    self._key = key
                except Exception:
                    self._compiled = None

    def compile_in_background(self, *args: Any) -> threading.Thread:
        """:meth:`compile` in a background thread at the lowest CPU priority (Linux), so it takes only what the run
        leaves idle; calls made meanwhile wait for it. Not a daemon: a process ending early (a signal) waits for the
        compile instead of tearing XLA down under it (a segfault at exit)."""

        def run() -> None:
            if sys.platform.startswith("linux"):  # on Linux a thread has its own nice value
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
            self.compile(*args)

        thread = threading.Thread(target=in_context(run), name=f"jaxtl-compile-{self.name}", daemon=False)
        thread.start()
        return thread

    @property
    def compiled(self) -> bool:
        """Whether an executable is built (waiting for a compile in progress)."""
        with self._lock:
            return self._compiled is not None

    def __call__(self, *args: Any) -> Any:
        if self._compiled is None and self._lock.locked():
            with self._lock:  # a compile in progress, most likely for this very call
                pass
        if self._compiled is not None and _key(args[-1]) == self._key:
            try:
                return self._compiled(*args)
            except (TypeError, ValueError):  # other shapes or placement than compiled for (checked before any
                # work runs or any argument is donated): the jitted function takes this batch
                self._compiled = None
        return self.fn(*args)
