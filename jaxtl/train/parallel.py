"""Run the per-device steps data-parallel: ``jax.pmap``, or ``jax.jit`` + ``jax.shard_map`` over a device Mesh.

Both wrappers take the same per-device function. Under pmap the state is replicated with a leading device axis
and host batches are reshaped to ``[D, B // D, ...]``; under shard_map the state is one array replicated by a
``NamedSharding(mesh, P())`` and the batch is sharded along ``"data"``. ``parallel="none"`` runs the step
unmapped under ``jax.jit`` on one device (axis name None). The mesh uses the global device set.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxtl.data.batching import shard_for_devices

PARALLEL = ("pmap", "shard_map", "none")


def pmap_step(fn: Callable[..., Any], axis_name: str = "data", donate: bool = True) -> Callable[..., Any]:
    """``jax.pmap(fn, axis_name)``, donating the state (argument 0) when ``donate``."""
    return jax.pmap(fn, axis_name=axis_name, donate_argnums=(0,) if donate else ())


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


class Parallel:
    """How state and batches go to devices and how steps are mapped, for one ``parallel`` option.

    ``devices`` defaults to ``jax.devices()`` (all devices, for "pmap"/"shard_map") or the first (for "none").
    """

    def __init__(self, parallel: str = "pmap", axis_name: str = "data", devices: Sequence[Any] | None = None):
        if parallel not in PARALLEL:
            raise ValueError(f"parallel must be one of {PARALLEL}, got {parallel!r}")
        self.kind = parallel
        if devices is None:
            devices = jax.devices()[:1] if parallel == "none" else jax.devices()
        self.devices = list(devices)
        if parallel == "none" and len(self.devices) != 1:
            raise ValueError(f"parallel='none' runs on one device, got {len(self.devices)}")
        self.axis_name: str | None = None if parallel == "none" else axis_name
        self.mesh = Mesh(np.array(self.devices), (axis_name,))

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    def map(
        self, fn: Callable[..., Any], donate: bool = True, n_out: int = 2, batch_out: bool = False
    ) -> Callable[..., Any]:
        """Map the per-device ``fn(state, batch)`` (``fn`` takes ``axis_name=`` as a keyword).

        Outputs are replicated (``n_out`` of them) or, with ``batch_out``, one per-example output; under pmap
        either kind keeps its leading device axis (see :meth:`get_metrics`, :meth:`gather`).
        """
        per_device = functools.partial(fn, axis_name=self.axis_name)
        if self.kind == "pmap":
            return pmap_step(per_device, self.axis_name or "data", donate)
        if self.kind == "shard_map":
            return shard_map_step(per_device, self.mesh, self.axis_name or "data", donate, n_out, batch_out)
        return jax.jit(per_device, donate_argnums=(0,) if donate else ())

    def put_state(self, state: Any) -> Any:
        """Place a host/device state on the devices, replicated. Always a copy: the steps donate their state."""
        if self.kind == "pmap":
            # pmap takes a leading device axis; a NamedSharding over it is what pmap itself returns.
            stacked = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (self.num_devices, *np.shape(x))), state)
            return jax.device_put(stacked, NamedSharding(self.mesh, P(self.axis_name)), may_alias=False)
        if self.kind == "shard_map":
            # may_alias=False is not enough here: the replicated array would reuse the caller's device-0 buffer.
            state = jax.tree.map(lambda x: np.array(x, copy=True), state)
            return jax.device_put(state, NamedSharding(self.mesh, P()))
        return jax.device_put(state, self.devices[0], may_alias=False)

    def get_state(self, state: Any) -> Any:
        """One copy of a replicated state, as host numpy arrays."""
        if self.kind == "pmap":
            state = jax.tree.map(lambda x: x[0], state)
        return jax.device_get(state)

    def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """Split a host global batch ``[B, ...]`` over the devices (B must be divisible by the device count)."""
        if self.kind == "pmap":
            sharded = shard_for_devices(batch, self.num_devices)
            return jax.device_put(sharded, NamedSharding(self.mesh, P(self.axis_name)))  # type: ignore[no-any-return]
        if self.kind == "shard_map":
            shard_for_devices(batch, self.num_devices)  # raises the clear divisibility error
            return jax.device_put(batch, NamedSharding(self.mesh, P(self.axis_name)))  # type: ignore[no-any-return]
        return jax.device_put(batch, self.devices[0])  # type: ignore[no-any-return]

    def gather(self, out: Any) -> np.ndarray:
        """A per-example output ``[B, ...]`` on the host (undoing pmap's ``[D, B // D, ...]``)."""
        arr = np.asarray(jax.device_get(out))
        return arr.reshape(-1, *arr.shape[2:]) if self.kind == "pmap" else arr

    def get_metrics(self, metrics: Any) -> dict[str, float]:
        """Host floats from (replicated) device metrics."""
        if self.kind == "pmap":
            metrics = jax.tree.map(lambda x: x[0], metrics)
        return {k: float(v) for k, v in jax.device_get(metrics).items()}


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
