"""Programs that run once (a new head's init, an optimizer's init), compiled for a quick start rather than speed.

XLA's CPU backend spends about 0.45 s optimising even one ``jax.random.uniform`` (threefry's rounds go through LLVM
at its full optimisation level); a program run once gains nothing from that. :func:`run_once` compiles such a
program with ``xla_backend_optimization_level=1`` on CPU and runs it: a new ResNet18 head in a fine-tune's start-up
took 0.56-0.64 s instead of 1.13 s (benchmarks.folder_finetune's profile). Level 1 gives the same bits as a default
compile (tests/models/test_head_rule.py compares every family's new head with the module's own ``init`` compiled
as usual); level 0 would be faster still but rounds differently (the last bit of about half a ResNet head's values).
Other backends compile as usual.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

ONE_SHOT_CPU_OPTIONS = {"xla_backend_optimization_level": 1}


def one_shot_options() -> dict[str, Any] | None:
    """The compiler options for a program run once on the default backend (None: XLA's defaults)."""
    return dict(ONE_SHOT_CPU_OPTIONS) if jax.default_backend() == "cpu" else None


def compile_once(fn: Callable[..., Any], *args: Any) -> Callable[..., Any]:
    """``jax.jit(fn)`` lowered for ``args`` and compiled with :func:`one_shot_options`: a compiled program to call
    with arguments of the same shapes and dtypes."""
    return jax.jit(fn).lower(*args).compile(one_shot_options())


def run_once(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` as one program compiled by :func:`compile_once`."""
    return compile_once(fn, *args)(*args)
