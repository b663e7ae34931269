"""One grain pipeline of an :class:`~jaxtl.data.image_source.ImageSource`: batch after batch of a
:class:`~jaxtl.data.decoding.Plan`, decoded by worker processes (or, for a short evaluation pass, in this process),
kept across epochs, started ahead of use when asked (:meth:`Stream.prime`) and stopped in the background.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import threading
import weakref
from typing import Any

import numpy as np

from jaxtl.data.batching import Batch
from jaxtl.data.decoding import LoadBatch
from jaxtl.data.workers import MainGuardError, check_not_bootstrapping, is_bootstrap_failure, worker_init

__all__ = ["IN_PROCESS_BELOW", "Stream", "close_live_streams"]

IN_PROCESS_BELOW = 256  # examples: an evaluation pass this short decodes in this process, not in started workers


_LIVE_STREAMS: weakref.WeakSet[Stream] | None = None
_CLOSING: set[threading.Thread] = set()  # streams being stopped in the background


def close_live_streams() -> None:
    """At exit: close the streams still open, so grain unlinks the shared memory of batches nobody took (otherwise
    Python's resource tracker reports them as leaked at shutdown), and drop grain's iterators while the modules
    they need still exist (collected at interpreter teardown, their ``__del__`` fails: "Exception ignored")."""
    for stream in list(_LIVE_STREAMS or ()):
        with contextlib.suppress(Exception):
            stream.close(wait=True)
        stream._it = None
    for closing in list(_CLOSING):
        closing.join()
    gc.collect()


def _track(stream: Stream) -> None:
    global _LIVE_STREAMS
    if _LIVE_STREAMS is None:  # registered on first use, not on import
        _LIVE_STREAMS = weakref.WeakSet()
        atexit.register(close_live_streams)
    _LIVE_STREAMS.add(stream)


class Stream:
    """One grain pipeline yielding batch after batch of a :class:`Plan`, across epochs, from ``(epoch, batch)``.

    Kept by the source between ``batches()`` calls, so consecutive epochs reuse the worker processes (starting
    them costs seconds: each imports jax through grain) and the next epoch's first batches are ready in time.
    """

    _LENGTH = 1 << 50  # batches: a stream never runs out; it is closed or dropped instead

    def __init__(self, load: LoadBatch, *, workers: int, read_threads: int, prefetch: int) -> None:
        import grain

        plan = load.plan
        ds = grain.MapDataset.range(self._LENGTH).map(load)
        read = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch)
        it = ds.to_iter_dataset(read)
        short = not plan.train and plan.num_examples < IN_PROCESS_BELOW  # starting a worker would cost more
        self.in_process = workers == 0 or short
        if not self.in_process:
            check_not_bootstrapping()
            _let_grain_read_its_flags()
            opts = grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=prefetch)
            it = it.mp_prefetch(opts, worker_init_fn=worker_init)
        self.plan = plan
        self.next = load.start
        self.owner: object | None = None  # the batches() generator reading it now
        self._it: Any = iter(it)
        self._ahead: threading.Thread | None = None  # fetching the next batch already (see prime)
        self._fetched: tuple[Any, BaseException | None] | None = None
        _track(self)

    def prime(self) -> None:
        """Start the workers and fetch the next batch in a background thread; :meth:`take` hands it out."""
        if self._ahead is None and self._fetched is None:
            self._ahead = threading.Thread(target=self._fetch, name="jaxtl-data-prime", daemon=True)
            self._ahead.start()

    def _fetch(self) -> None:
        try:
            self._fetched = (next(self._it), None)
        except BaseException as err:  # raised again by take(), in the thread that reads the stream
            self._fetched = (None, err)

    def _next_shared(self) -> Any:
        if self._ahead is not None:
            self._ahead.join()
            self._ahead = None
        if self._fetched is not None:
            shared, err = self._fetched
            self._fetched = None
            if err is not None:
                raise err
            return shared
        return next(self._it)

    def take(self) -> Batch:
        try:
            shared = self._next_shared()
        except RuntimeError as err:
            if is_bootstrap_failure(err):
                raise MainGuardError() from None
            raise
        # Copied out of grain's shared memory (one memcpy, small next to decoding the batch): the segment is freed
        # now, whatever keeps the batch alive later (jax on CPU may alias host arrays instead of copying them).
        batch = {k: np.array(v, copy=True) for k, v in shared.items()}
        del shared
        where = (int(batch["where"][0]), int(batch["where"][1]))
        if where != self.next:  # grain keeps order; never hand out a batch of another position regardless
            raise RuntimeError(f"data stream out of step: got batch {where}, expected {self.next}")
        e, b = self.next
        self.next = (e, b + 1) if b + 1 < self.plan.per_epoch else (e + 1, 0)
        del batch["where"]
        return batch

    def close(self, wait: bool = False) -> None:
        """Stop the workers: grain lets each finish its current batch and joins it (up to a second or so), which
        happens in a background thread unless ``wait`` (at exit every stop is waited for)."""
        if self._ahead is not None:
            self._ahead.join()
            self._ahead = None
        self._fetched = None  # a batch fetched and never taken: its shared memory goes with it
        close = getattr(self._it, "close", None)
        if close is None:
            return
        if not wait:
            closing = threading.Thread(target=_stop, args=(close,), name="jaxtl-data-stop", daemon=True)
            try:
                closing.start()
            except RuntimeError:  # no new threads at interpreter shutdown: stop it here
                pass
            else:
                _CLOSING.add(closing)
                return
        close()


def _stop(close: Any) -> None:
    with contextlib.suppress(Exception):  # a worker that already died: nothing left to stop
        close()
    _CLOSING.discard(threading.current_thread())


def _let_grain_read_its_flags() -> None:
    """grain 0.2 reads an absl flag when it starts worker processes, which fails unless absl parsed the command
    line (an ``absl.app`` program). Outside one, mark only that flag as given (its default value): the same thing
    grain does for its own debug flags in the workers. Nothing else about absl's state changes."""
    from absl import flags

    name = "grain_enable_multiprocess_worker_profiling"
    if not flags.FLAGS.is_parsed() and name in flags.FLAGS:
        flags.FLAGS[name].present = 1
