"""Multi-process (multi-host) start-up: ``jax.distributed`` from explicit options or cluster auto-detection."""

from __future__ import annotations

import argparse
from typing import Any

import jax

from jaxtl.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The CLI options of a multi-process run (all optional; a single process needs none)."""
    g = parser.add_argument_group("multi-process (jax.distributed)")
    g.add_argument("--coordinator", default=None, help="HOST:PORT of process 0's coordinator")
    g.add_argument("--num-processes", type=int, default=None, help="total number of processes")
    g.add_argument("--process-id", type=int, default=None, help="this process's index in [0, num-processes)")
    g.add_argument(
        "--distributed",
        action="store_true",
        help="initialise jax.distributed with cluster auto-detection (SLURM, TPU VMs, ...)",
    )


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    auto: bool = False,
) -> bool:
    """Start ``jax.distributed`` when asked; return True if this is a multi-process run.

    Either give all of ``coordinator``, ``num_processes`` and ``process_id``, or ``auto=True`` to let JAX detect
    the cluster, or nothing (single process). Must run before anything touches a jax device.
    """
    explicit = [coordinator, num_processes, process_id]
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise ConfigError("multi-process runs need all of --coordinator, --num-processes and --process-id")
        assert num_processes is not None and process_id is not None and coordinator is not None
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ConfigError(f"--process-id must lie in [0, {num_processes}), got {process_id}")
        if ":" not in coordinator:
            raise ConfigError(f"--coordinator must be HOST:PORT, got {coordinator!r}")
        _start(lambda: jax.distributed.initialize(coordinator, num_processes, process_id), f"coordinator {coordinator}")
        return True
    if auto:
        _start(jax.distributed.initialize, "cluster auto-detection (--distributed)")
        return True
    return False


def _start(init: Any, what: str) -> None:
    try:
        init()
    except (RuntimeError, ValueError) as e:  # no cluster found, coordinator unreachable, initialised twice
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"jax.distributed could not start with {what}: {first}") from None


def initialize_from_args(args: argparse.Namespace) -> bool:
    """:func:`initialize` from the options of :func:`add_arguments`."""
    return initialize(args.coordinator, args.num_processes, args.process_id, auto=args.distributed)


def is_main_process() -> bool:
    """True in the process that writes logs, progress and reports (process 0)."""
    return jax.process_index() == 0
