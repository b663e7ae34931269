"""Freezing by label: every parameter path is "trainable" or "frozen", and the frozen group gets no update at all.

``optax.masked(tx, mask)`` is the trap this avoids: it passes the *raw gradient* through as the update of the
masked-out leaves, so a "frozen" backbone moves. :func:`freeze` uses ``optax.partition`` with
``optax.set_to_zero()`` for the frozen group, so frozen leaves get zero updates and hold no optimizer state, and
weight decay or clipping inside ``tx`` only ever see trainable leaves.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import optax
from flax import traverse_util

Trainable = str | Sequence[str] | Callable[[str], bool] | None
Params = Mapping[str, Any]

TRAINABLE, FROZEN = "trainable", "frozen"


def param_paths(params: Params) -> list[str]:
    """The ``"a/b/c"`` paths of every leaf of a nested params dict, in flattening order."""
    return list(traverse_util.flatten_dict(dict(params), sep="/").keys())


def _predicate(trainable: Trainable, paths: Iterable[str]) -> Callable[[str], bool]:
    if trainable is None:
        return lambda path: True
    if callable(trainable):
        return trainable
    patterns = [trainable] if isinstance(trainable, str) else list(trainable)
    if not patterns:
        raise ValueError("trainable is an empty list of patterns: nothing would be trained")
    compiled = []
    paths = list(paths)
    for pattern in patterns:
        try:
            rx = re.compile(pattern)
        except re.error as err:
            raise ValueError(f"trainable pattern {pattern!r} is not a valid regex: {err}") from None
        if not any(rx.search(p) for p in paths):
            sample = ", ".join(paths[:6]) + (", ..." if len(paths) > 6 else "")
            raise ValueError(f"trainable pattern {pattern!r} matches no parameter path (paths look like: {sample})")
        compiled.append(rx)
    return lambda path: any(rx.search(path) for rx in compiled)


def trainable_paths(params: Params, trainable: Trainable) -> tuple[str, ...]:
    """The paths selected by ``trainable`` (regex, list of regexes, predicate, or None for all).

    Raises ValueError naming the pattern when one matches nothing, and when nothing at all is trainable.
    """
    paths = param_paths(params)
    pred = _predicate(trainable, paths)
    selected = tuple(p for p in paths if pred(p))
    if not selected:
        raise ValueError(f"trainable={trainable!r} leaves no parameter trainable")
    return selected


def trainable_mask(params: Params, trainable: Trainable) -> Any:
    """A pytree of bools shaped like ``params``: True where the leaf is trainable."""
    selected = set(trainable_paths(params, trainable))
    flat = traverse_util.flatten_dict(dict(params), sep="/")
    return traverse_util.unflatten_dict({k: k in selected for k in flat}, sep="/")


def freeze(tx: optax.GradientTransformation, params: Params, trainable: Trainable) -> optax.GradientTransformation:
    """``tx`` for the trainable leaves, exact zeros (and no state) for the frozen ones.

    ``trainable`` is a regex or list of regexes matched with ``re.search`` against ``"a/b/c"`` paths
    (e.g. ``"^fc/"``), or a predicate ``path -> bool``.
    """
    mask = trainable_mask(params, trainable)
    labels = jax.tree.map(lambda t: TRAINABLE if t else FROZEN, mask)
    return optax.partition({TRAINABLE: tx, FROZEN: optax.set_to_zero()}, labels)


def is_backbone_frozen(paths: Iterable[str], all_paths: Iterable[str], classifier: str = "fc") -> bool:
    """True when the trainable ``paths`` are exactly the classifier head's (and the model has other params)."""
    paths, all_paths = set(paths), set(all_paths)
    head = {p for p in all_paths if p.startswith(classifier + "/")}
    return bool(head) and paths == head and head != all_paths


def split_params(params: Params, paths: Iterable[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``params`` into flat ``{path: leaf}`` dicts (selected, rest)."""
    selected = set(paths)
    flat = traverse_util.flatten_dict(dict(params), sep="/")
    return {k: v for k, v in flat.items() if k in selected}, {k: v for k, v in flat.items() if k not in selected}


def merge_params(*flats: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`split_params`: one nested params dict from flat ``{path: leaf}`` dicts."""
    merged: dict[str, Any] = {}
    for flat in flats:
        merged.update(flat)
    return traverse_util.unflatten_dict(merged, sep="/")  # type: ignore[no-any-return]


def frozen_stat_paths(batch_stats: Params, paths: Iterable[str]) -> tuple[str, ...]:
    """batch_stats leaves whose module has no trainable parameter (its statistics must not change)."""
    selected = set(paths)
    trainable_modules = {p.rsplit("/", 1)[0] for p in selected}
    out = []
    for p in traverse_util.flatten_dict(dict(batch_stats), sep="/"):
        if p.rsplit("/", 1)[0] not in trainable_modules:
            out.append(p)
    return tuple(out)
