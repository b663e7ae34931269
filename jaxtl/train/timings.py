"""Where a run's time goes before and around its steps: named phases (listing the data, building the head, compiling
each program, waiting for the first batch, evaluating) recorded only while a :class:`Timings` is active.

    with jaxtl.train.record_timings() as timings:
        model = jaxtl.pretrained("resnet18", "resnet18.pth")
        result = jaxtl.finetune(config, model, "folder:images/")
    print(timings.table())

Nothing is recorded, and nothing is measurably spent, without one: a phase costs one context-variable read. This is
not a log (``metrics.jsonl`` and TensorBoard hold the steps' numbers); it answers "why did the first step come so
late". Phases may overlap (work done in threads at the same time: a compile while the data workers start), so their
durations can add up to more than the wall time. While a recorder is active, JAX's compile events are counted too:
programs built (compiled, or loaded from the persistent compilation cache), seconds spent on them, cache hits.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

__all__ = ["Span", "Timings", "in_context", "mark", "phase", "record_timings"]

T = TypeVar("T")

_ACTIVE: contextvars.ContextVar[Timings | None] = contextvars.ContextVar("jaxtl_timings", default=None)
_NULL = contextlib.nullcontext()
_listening = False
_listen_lock = threading.Lock()

# JAX's monitoring events a recorder counts (names as jax 0.4.30+ records them).
_COMPILE = "/jax/core/compile/backend_compile_duration"
_TRACE = "/jax/core/compile/jaxpr_trace_duration"
_HIT = "/jax/compilation_cache/cache_hits"
_MISS = "/jax/compilation_cache/cache_misses"


@dataclasses.dataclass(frozen=True)
class Span:
    """One phase: seconds from the recorder's start to its ``start`` and ``end``, and the thread that ran it."""

    name: str
    start: float
    end: float
    thread: str

    @property
    def seconds(self) -> float:
        return self.end - self.start


class Timings:
    """The phases of what ran while it was active (see the module docstring), in the order they ended.

    ``spans``: every :class:`Span`; ``jax``: JAX's compile events (``programs`` built and ``compile_s`` spent on
    them, ``cache_hits`` among them from the persistent cache, ``cache_misses``, ``trace_s``); ``compiled``: programs
    XLA compiled. :meth:`to_dict` is its JSON form, :meth:`table` a text table.
    """

    def __init__(self, origin: float | None = None) -> None:
        self.origin = time.perf_counter() if origin is None else origin  # when time 0 is, on perf_counter's clock
        self.spans: list[Span] = []
        self.jax: dict[str, float] = {
            "programs": 0,
            "compile_s": 0.0,
            "trace_s": 0.0,
            "cache_hits": 0,
            "cache_misses": 0,
        }
        self._lock = threading.Lock()

    def add(self, name: str, start: float, end: float) -> None:
        """Record phase ``name`` between two ``time.perf_counter()`` readings."""
        span = Span(name, start - self.origin, end - self.origin, threading.current_thread().name)
        with self._lock:
            self.spans.append(span)

    @property
    def compiled(self) -> int:
        """Programs XLA compiled (built, less those loaded from the persistent compilation cache)."""
        return int(self.jax["programs"] - self.jax["cache_hits"])

    def seconds(self) -> dict[str, float]:
        """Total seconds per phase name (a phase that ran several times is summed)."""
        out: dict[str, float] = {}
        for s in self.spans:
            out[s.name] = out.get(s.name, 0.0) + s.seconds
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "phases": [
                {"name": s.name, "start_s": round(s.start, 4), "end_s": round(s.end, 4), "thread": s.thread}
                for s in sorted(self.spans, key=lambda s: s.start)
            ],
            "seconds": {k: round(v, 4) for k, v in self.seconds().items()},
            "jax": {**self.jax, "compiled": self.compiled},
        }

    def table(self) -> str:
        """One line per phase in start order: start, end and duration in seconds, name, thread (if not main)."""
        lines = [f"{'start':>7} {'end':>7} {'s':>6}  phase"]
        for s in sorted(self.spans, key=lambda s: s.start):
            where = "" if s.thread == "MainThread" else f"  [{s.thread}]"
            lines.append(f"{s.start:7.2f} {s.end:7.2f} {s.seconds:6.2f}  {s.name}{where}")
        j = self.jax
        lines.append(
            f"jax: {int(j['programs'])} programs, {self.compiled} compiled and {int(j['cache_hits'])} from the "
            f"persistent cache ({j['compile_s']:.2f} s), {j['trace_s']:.2f} s tracing"
        )
        return "\n".join(lines)

    def _jax_event(self, name: str, seconds: float | None) -> None:
        with self._lock:
            if name == _COMPILE:
                self.jax["programs"] += 1
                self.jax["compile_s"] += seconds or 0.0
            elif name == _TRACE:
                self.jax["trace_s"] += seconds or 0.0
            elif name == _HIT:
                self.jax["cache_hits"] += 1
            elif name == _MISS:
                self.jax["cache_misses"] += 1


def _on_duration(event: str, duration_secs: float, **kwargs: str | int) -> None:
    active = _ACTIVE.get()
    if active is not None:
        active._jax_event(event, duration_secs)


def _on_event(event: str, **kwargs: str | int) -> None:
    active = _ACTIVE.get()
    if active is not None:
        active._jax_event(event, None)


def _listen_to_jax() -> None:
    """Register the compile-event listeners once per process (on the first recorder, never on import)."""
    global _listening
    with _listen_lock:
        if _listening:
            return
        import jax

        jax.monitoring.register_event_duration_secs_listener(_on_duration)
        jax.monitoring.register_event_listener(_on_event)
        _listening = True


@contextlib.contextmanager
def record_timings(timings: Timings | None = None) -> Iterator[Timings]:
    """Record the phases of everything run inside the block (this thread, and the threads jaxtl starts for it)."""
    timings = Timings() if timings is None else timings
    _listen_to_jax()
    token = _ACTIVE.set(timings)
    try:
        yield timings
    finally:
        _ACTIVE.reset(token)


class _Phase:
    __slots__ = ("name", "start", "timings")

    def __init__(self, name: str, timings: Timings):
        self.name, self.timings = name, timings

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timings.add(self.name, self.start, time.perf_counter())


def phase(name: str) -> contextlib.AbstractContextManager[None]:
    """``with phase("compile: train step"):`` records the block as a phase of the active recorder (if any)."""
    active = _ACTIVE.get()
    return _NULL if active is None else _Phase(name, active)


def mark(name: str, since: float | None = None) -> None:
    """Record phase ``name`` from ``since`` (a ``time.perf_counter()`` reading; default: now, an instant) to now."""
    active = _ACTIVE.get()
    if active is not None:
        now = time.perf_counter()
        active.add(name, now if since is None else since, now)


def in_context(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` bound to a copy of the caller's context, for a thread: its phases and compiles go to the caller's
    recorder."""
    ctx = contextvars.copy_context()

    def run(*args: Any, **kwargs: Any) -> T:
        return ctx.run(fn, *args, **kwargs)

    return run
