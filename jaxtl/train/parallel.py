"""Run the per-device steps data-parallel: ``jax.pmap``, or ``jax.jit`` + ``jax.shard_map`` over a device Mesh.

Both wrappers take the same per-device function. Under pmap the state is replicated with a leading device axis
and host batches are reshaped to ``[D, B // D, ...]``; under shard_map the state is one array replicated by a
``NamedSharding(mesh, P())`` and the batch is sharded along ``"data"``. ``parallel="none"`` runs the step
unmapped under ``jax.jit`` on one device (axis name None). The mesh uses the global device set.

Multi-process (``jax.distributed`` initialised): the mappings span every process's devices, ordered by process,
and each process feeds only its contiguous slice of every global batch (``[B / P, ...]``, see
:func:`jaxtl.data.batching.process_slice`): pmap takes it as ``[local D, B / (P * local D), ...]``, shard_map as
the process-local part of one global array (``jax.make_array_from_process_local_data``). Replicated outputs are
read from this process's first device; per-example outputs are gathered from all processes.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxtl.data.batching import shard_for_devices
from jaxtl.data.protocol import Source

PARALLEL = ("pmap", "shard_map", "none")


def pmap_step(
    fn: Callable[..., Any], axis_name: str = "data", donate: bool = True, devices: Sequence[Any] | None = None
) -> Callable[..., Any]:
    """``jax.pmap(fn, axis_name)``, donating the state (argument 0) when ``donate``; over ``devices`` if given."""
    return jax.pmap(fn, axis_name=axis_name, donate_argnums=(0,) if donate else (), devices=devices)


def shard_map_step(
    fn: Callable[..., Any],
    mesh: Mesh,
    axis_name: str = "data",
    donate: bool = True,
    n_out: int = 2,
    batch_out: bool = False,
) -> Callable[..., Any]:
    """``jax.jit(jax.shard_map(fn, in_specs=(P(), P(axis)), out_specs=P() per output))``.

    ``batch_out=True`` instead concatenates the single output along the batch (``P(axis)``), e.g. features.
    ``check_vma=False``: the step does its own collectives (psum of gradients), exactly as under pmap.
    """
    out_specs: Any = tuple(P() for _ in range(n_out)) if n_out > 1 else P()
    if batch_out:
        out_specs = P(axis_name)
    mapped = jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(axis_name)), out_specs=out_specs, check_vma=False)
    return jax.jit(mapped, donate_argnums=(0,) if donate else ())


def _first_replica(x: Any, stacked: bool) -> np.ndarray:
    # A multi-process array is not fully addressable: read one local copy instead of jax.device_get of it all.
    if not isinstance(x, jax.Array):
        arr = np.asarray(x)
        return arr[0] if stacked else arr
    local = np.asarray(x.addressable_data(0))
    return local.reshape(x.shape[1:]) if stacked else local


def resolve_parallel(parallel: str, devices: Sequence[Any] | None = None) -> str:
    """``"auto"`` -> ``"pmap"`` when there are several devices (all processes), else ``"none"``; others unchanged."""
    if parallel not in (*PARALLEL, "auto"):
        raise ValueError(f"parallel must be one of {('auto', *PARALLEL)}, got {parallel!r}")
    if parallel != "auto":
        return parallel
    n = len(devices) if devices is not None else jax.device_count()
    return "pmap" if n > 1 else "none"


class Parallel:
    """How state and batches go to devices and how steps are mapped, for one ``parallel`` option
    (``"auto"``, the default everywhere in jaxtl: ``"pmap"`` over all devices when there are several, else
    ``"none"``).

    ``devices`` defaults to ``jax.devices()`` (all devices of all processes, ordered by process, for
    "pmap"/"shard_map") or this process's first device (for "none", which stays within its process).
    Batches given to :meth:`put_batch` are this process's slice of the global batch (all of it in one process).
    """

    def __init__(self, parallel: str = "auto", axis_name: str = "data", devices: Sequence[Any] | None = None):
        parallel = resolve_parallel(parallel, devices)
        self.kind = parallel
        # The slice of every global batch this process feeds. "none" is process-local: it takes whole batches and
        # runs no collective, so in a multi-process run each process computes the same result on its own.
        local_only = parallel == "none"
        self.process_index = 0 if local_only else jax.process_index()
        self.process_count = 1 if local_only else jax.process_count()
        explicit = devices is not None
        if devices is None:
            devices = jax.local_devices()[:1] if parallel == "none" else jax.devices()
        # Process-major order puts each process's devices, and so its slice of the batch, in one contiguous block.
        self.devices = sorted(devices, key=lambda d: (d.process_index, d.id))
        if parallel == "none" and len(self.devices) != 1:
            raise ValueError(f"parallel='none' runs on one device, got {len(self.devices)}")
        self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
        per_process = collections.Counter(d.process_index for d in self.devices)
        if len(set(per_process.values())) != 1 or len(per_process) != self.process_count:
            raise ValueError(
                f"every process must own the same number of the mapped devices, got {dict(per_process)} "
                f"for {self.process_count} processes"
            )
        self.axis_name: str | None = None if parallel == "none" else axis_name
        self.mesh = Mesh(np.array(self.devices), (axis_name,))
        self.local_mesh = Mesh(np.array(self.local_devices), (axis_name,))
        self._pmap_devices = self.devices if explicit else None

    @property
    def num_devices(self) -> int:
        """Devices over all processes."""
        return len(self.devices)

    @property
    def num_local_devices(self) -> int:
        return len(self.local_devices)

    def map(
        self, fn: Callable[..., Any], donate: bool = True, n_out: int = 2, batch_out: bool = False
    ) -> Callable[..., Any]:
        """Map the per-device ``fn(state, batch)`` (``fn`` takes ``axis_name=`` as a keyword).

        Outputs are replicated (``n_out`` of them) or, with ``batch_out``, one per-example output; under pmap
        either kind keeps its leading device axis (see :meth:`get_metrics`, :meth:`gather`).
        """
        per_device = functools.partial(fn, axis_name=self.axis_name)
        if self.kind == "pmap":
            return pmap_step(per_device, self.axis_name or "data", donate, self._pmap_devices)
        if self.kind == "shard_map":
            return shard_map_step(per_device, self.mesh, self.axis_name or "data", donate, n_out, batch_out)
        return jax.jit(per_device, donate_argnums=(0,) if donate else ())

    def put_state(self, state: Any) -> Any:
        """Place a host/device state on the devices, replicated. Always a copy: the steps donate their state.

        Multi-process: every process must pass the same state (as ``fit`` does: same init or same checkpoint).
        """
        if self.kind == "pmap":
            # pmap takes this process's devices as a leading axis; a NamedSharding over it is what pmap returns.
            n = self.num_local_devices
            stacked = jax.tree.map(lambda x: np.broadcast_to(_host(x), (n, *np.shape(x))), state)
            return jax.device_put(stacked, NamedSharding(self.local_mesh, P(self.axis_name)), may_alias=False)
        if self.kind == "shard_map":
            # may_alias=False is not enough here: the replicated array would reuse the caller's device-0 buffer.
            state = jax.tree.map(lambda x: np.array(_host(x), copy=True), state)
            return jax.device_put(state, NamedSharding(self.mesh, P()))
        return jax.device_put(state, self.devices[0], may_alias=False)

    def get_state(self, state: Any) -> Any:
        """One copy of a replicated state, as host numpy arrays (read from this process's first device)."""
        return jax.tree.map(lambda x: _first_replica(x, self.kind == "pmap"), state)

    def full_pass(self, dataset: Source, batch_size: int, prefetch: int = 2) -> Iterator[dict[str, Any]]:
        """Every example of ``dataset`` once, in order, as device batches of the global ``batch_size``.

        The ragged last batch is padded and masked (``batch["mask"]``), never dropped; each process feeds its
        slice of every global batch. For evaluation and feature extraction.
        """
        if batch_size % self.num_devices:
            raise ValueError(f"batch_size={batch_size} is not divisible by the {self.num_devices} devices")
        batches = dataset.batches(
            batch_size,
            shuffle=False,
            drop_remainder=False,
            process_index=self.process_index,
            process_count=self.process_count,
            train=False,
        )
        return prefetch_to_device(batches, prefetch, self.put_batch)

    def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """Split this process's batch ``[B / P, ...]`` over its devices (divisible by the local device count).

        In a single process this is the whole global batch ``[B, ...]``.
        """
        if self.kind == "pmap":
            sharded = shard_for_devices(batch, self.num_local_devices)
            return jax.device_put(sharded, NamedSharding(self.local_mesh, P(self.axis_name)))  # type: ignore[no-any-return]
        if self.kind == "shard_map":
            shard_for_devices(batch, self.num_local_devices)  # raises the clear divisibility error
            sharding = NamedSharding(self.mesh, P(self.axis_name))
            if self.process_count == 1:
                return jax.device_put(batch, sharding)  # type: ignore[no-any-return]
            return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
        return jax.device_put(batch, self.devices[0])  # type: ignore[no-any-return]

    def gather(self, out: Any) -> np.ndarray:
        """A per-example output as the global ``[B, ...]`` on every host (undoing pmap's ``[D, B // D, ...]``)."""
        if self.kind == "pmap":
            if isinstance(out, jax.Array) and not out.is_fully_addressable:
                shards = sorted(out.addressable_shards, key=lambda s: _start(s.index[0]))
                local = np.concatenate([np.asarray(s.data).reshape(-1, *out.shape[2:]) for s in shards])
            else:
                arr = np.asarray(out)
                local = arr.reshape(-1, *arr.shape[2:])
            if self.process_count == 1:
                return local
            return np.asarray(multihost_utils.process_allgather(local, tiled=True))
        if self.kind == "shard_map" and self.process_count > 1:
            return np.asarray(multihost_utils.process_allgather(out, tiled=True))
        return np.asarray(jax.device_get(out))

    def get_metrics(self, metrics: Any) -> dict[str, float]:
        """Host floats from (replicated) device metrics."""
        return {k: float(_first_replica(v, self.kind == "pmap")) for k, v in metrics.items()}


def _start(index: Any) -> int:
    return index if isinstance(index, int) else (index.start or 0)


def _host(x: Any) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


def prefetch_to_device(
    iterator: Iterable[dict[str, np.ndarray]], size: int = 2, put: Callable[[Any], Any] | None = None
) -> Iterator[Any]:
    """Keep ``size`` batches already transferred (``put``, e.g. ``Parallel.put_batch``) ahead of the consumer.

    Transfers are asynchronous in JAX, so queueing them overlaps host-to-device copies with compute.
    """
    if size < 1:
        raise ValueError(f"prefetch size must be >= 1, got {size}")
    put = put or jax.device_put
    queue: collections.deque[Any] = collections.deque()
    it = iter(iterator)
    for item in it:
        queue.append(put(item))
        if len(queue) >= size:
            break
    while queue:
        yield queue.popleft()
        for item in it:
            queue.append(put(item))
            break
