"""Comparing variable trees by path, shape and dtype, for errors that name every difference."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def tree_mismatch(mine: Any, theirs: Any, limit: int = 8) -> list[str]:
    """Missing, unexpected and mis-shaped leaves of ``mine`` against ``theirs`` (at most ``limit`` of each)."""

    def flat(tree: Any) -> dict[str, tuple[tuple[int, ...], Any]]:
        leaves = jax.tree_util.tree_leaves_with_path(tree)
        return {jax.tree_util.keystr(p): (tuple(a.shape), jnp.dtype(a.dtype)) for p, a in leaves}

    a, b = flat(mine), flat(theirs)
    out = []
    missing = [k for k in b if k not in a]
    unexpected = [k for k in a if k not in b]
    shaped = [f"{k} {a[k]} vs {b[k]}" for k in a if k in b and a[k] != b[k]]
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shaped)):
        if items:
            out.append(f"{len(items)} {label}: {', '.join(items[:limit])}" + (", ..." if len(items) > limit else ""))
    return out
