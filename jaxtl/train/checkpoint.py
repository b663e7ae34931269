"""A directory holding converted/trained model variables: an Orbax checkpoint plus a small JSON of what to build.

    directory/
      jaxtl.json     {"format": "jaxtl-variables", "arch", "num_classes", "jaxtl_version", "metadata"}
      variables/     Orbax StandardCheckpointer output of {"params": ..., "batch_stats": ...}

Writes go to a temporary sibling that is renamed into place only when complete, so an interrupted write never
leaves a half checkpoint at ``directory``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtl._trees import tree_mismatch

_FORMAT = "jaxtl-variables"
_META = "jaxtl.json"
_STATE = "variables"


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be written or read; the message names the path."""


def _sibling(directory: Path, tag: str) -> Path:
    return directory.parent / f".{directory.name}.{tag}-{uuid.uuid4().hex[:8]}"


def _check_leaves(target: Path, variables: dict[str, Any]) -> None:
    if not isinstance(variables, dict) or "params" not in variables:
        raise CheckpointError(f"cannot save {target}: variables must be a dict with 'params' (and 'batch_stats')")
    bad = [
        jax.tree_util.keystr(k)
        for k, v in jax.tree_util.tree_flatten_with_path(variables)[0]
        if not (hasattr(v, "shape") and hasattr(v, "dtype"))
    ]
    if bad:
        raise CheckpointError(f"cannot save {target}: leaves that are not arrays: {', '.join(bad[:10])}")


def save_variables(
    directory: str | os.PathLike,
    variables: dict[str, Any],
    *,
    arch: str,
    num_classes: int,
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Save ``variables`` (``{"params", "batch_stats"}``) of ``jaxtl.create(arch, num_classes)`` to ``directory``.

    Refuses an existing ``directory`` unless ``overwrite=True``; ``metadata`` must be JSON-serialisable.
    Returns the absolute path written.
    """
    import orbax.checkpoint as ocp

    import jaxtl

    target = Path(directory).absolute()
    if target.exists() and not overwrite:
        raise CheckpointError(f"{target} already exists; pass overwrite=True (--overwrite) to replace it")
    jaxtl.models.get_spec(arch)  # unknown arch: a KeyError naming the choices, before anything is written
    meta = {
        "format": _FORMAT,
        "arch": arch,
        "num_classes": int(num_classes),
        "jaxtl_version": jaxtl.__version__,
        "metadata": metadata or {},
    }
    try:
        meta_text = json.dumps(meta, indent=2)
    except TypeError as e:
        raise CheckpointError(f"metadata for {target} is not JSON-serialisable: {e}") from e
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(target, "tmp")
    _check_leaves(target, variables)
    # The synchronous checkpointer: an async one may still be writing into `tmp` after a failure was raised.
    # Process-local: a multi-process run saves its result from one process (is_main_process); Orbax's default
    # all-process barrier would wait forever for the others.
    here = jax.process_index()
    local = ocp.options.MultiprocessingOptions(primary_host=here, active_processes={here})
    ckptr = ocp.Checkpointer(ocp.StandardCheckpointHandler(), multiprocessing_options=local)
    try:
        tmp.mkdir()
        ckptr.save(tmp / _STATE, variables)
        (tmp / _META).write_text(meta_text)
        if target.exists():
            old = _sibling(target, "old")
            target.rename(old)
            try:
                tmp.rename(target)
            except BaseException:
                old.rename(target)  # put the previous checkpoint back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    except BaseException:
        with contextlib.suppress(Exception):
            ckptr.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    ckptr.close()
    return target


def read_metadata(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``jaxtl.json`` of a checkpoint directory (arch, num_classes, jaxtl_version, metadata)."""
    d = Path(directory).absolute()
    if not d.is_dir():
        raise CheckpointError(f"no checkpoint directory at {d}")
    try:
        meta = json.loads((d / _META).read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{d} is not a jaxtl checkpoint: {_META} is missing") from e
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{d / _META} is damaged: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT or "arch" not in meta or "num_classes" not in meta:
        raise CheckpointError(f"{d / _META} is not a jaxtl variables description (format/arch/num_classes)")
    return meta


def _check_resnet_structure(d: Path, module: nn.Module, variables: dict[str, Any]) -> None:
    abstract = jax.eval_shape(
        functools.partial(module.init, train=False),
        jax.random.PRNGKey(0),
        jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32),
    )
    problems = tree_mismatch(variables, abstract)
    if problems:
        raise CheckpointError(f"{d}: variables do not match the described model: {'; '.join(problems)}")


def load_variables(
    directory: str | os.PathLike, dtype: Any = jnp.float32
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Load a directory written by :func:`save_variables` -> ``(module, variables, metadata)``.

    The module is rebuilt with ``jaxtl.create(arch, num_classes, dtype=dtype)``; ``metadata`` is the full
    ``jaxtl.json`` content. CheckpointError naming the path if it is missing or damaged.
    """
    import orbax.checkpoint as ocp

    import jaxtl

    d = Path(directory).absolute()
    meta = read_metadata(d)
    try:
        module = jaxtl.create(meta["arch"], num_classes=int(meta["num_classes"]), dtype=dtype)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{d / _META} names a model jaxtl cannot build: {e}") from e
    if not (d / _STATE).is_dir():
        raise CheckpointError(f"{d} is damaged: {_STATE}/ is missing")
    try:
        # No abstract target: the input channels (hence some kernel shapes) of non-ResNet models are not in the arch.
        ckptr = ocp.StandardCheckpointer()
        variables = ckptr.restore(d / _STATE)
        ckptr.close()
    except Exception as e:  # Orbax raises assorted types (ValueError, FileNotFoundError, tensorstore errors)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot restore {d / _STATE}: {first}") from e
    if not isinstance(variables, dict) or "params" not in variables:
        raise CheckpointError(f"{d / _STATE} holds no 'params' collection")
    if jaxtl.models.get_spec(meta["arch"]).family == "resnet":
        _check_resnet_structure(d, module, variables)
    variables = jax.tree.map(jnp.asarray, variables)
    return module, dict(variables), meta
