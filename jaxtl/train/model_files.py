"""A saved model: a directory holding variables with their model card (what ``convert``, ``pretrain`` and
``finetune`` write, and ``evaluate``, ``predict`` and ``--init`` read)::

    directory/
      jaxtl.json           {"format": "jaxtl-variables", "version": 2, "jaxtl_version", "card": ModelCard}
      variables/           Orbax StandardCheckpointer output of {"params": ..., "batch_stats": ...}
      jaxtl-outputs.json   the record of the files written (SHA-256 each)

written under a temporary name and renamed into place when complete (:func:`jaxtl.lifecycle.write_outputs`). An
existing directory is replaced only with ``overwrite=True`` and only when it is exactly what jaxtl recorded writing.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtl._trees import tree_mismatch
from jaxtl._version import __version__
from jaxtl.errors import CheckpointError, JaxtlError
from jaxtl.models.card import ModelCard, ModelCardError, Preprocessing
from jaxtl.models.registry import get_spec
from jaxtl.outputs import Output, write_outputs

__all__ = ["is_saved_model", "load_variables", "read_card", "save_variables", "write_variables"]

_FORMAT = "jaxtl-variables"
_VERSION = 2
_META = "jaxtl.json"
_STATE = "variables"


def _check_leaves(target: Path, variables: Mapping[str, Any]) -> None:
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise CheckpointError(f"cannot save {target}: variables must be a dict with 'params' (and 'batch_stats')")
    bad = [
        jax.tree_util.keystr(k)
        for k, v in jax.tree_util.tree_flatten_with_path(dict(variables))[0]
        if not (hasattr(v, "shape") and hasattr(v, "dtype"))
    ]
    if bad:
        raise CheckpointError(f"cannot save {target}: leaves that are not arrays: {', '.join(bad[:10])}")


def is_saved_model(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a directory jaxtl wrote with :func:`save_variables` (it carries ``jaxtl.json``)."""
    p = Path(path)
    try:
        meta = json.loads((p / _META).read_text())
    except (OSError, ValueError):
        return False
    return p.is_dir() and isinstance(meta, dict) and meta.get("format") == _FORMAT


def _meta_text(target: Path, card: ModelCard) -> str:
    if not isinstance(card, ModelCard):
        raise CheckpointError(f"cannot save {target}: card must be a jaxtl.models.ModelCard, got {type(card).__name__}")
    get_spec(card.arch)  # unknown arch: an error naming the choices, before anything is written
    meta = {"format": _FORMAT, "version": _VERSION, "jaxtl_version": __version__, "card": card.to_dict()}
    try:
        return json.dumps(meta, indent=2)
    except TypeError as e:
        raise CheckpointError(f"the model card's extra fields for {target} are not JSON-serialisable: {e}") from e


def write_variables(directory: Path, variables: Mapping[str, Any], card: ModelCard) -> None:
    """Write ``variables`` and ``card`` into the new, empty-to-be ``directory`` (no atomicity: callers write to a
    temporary name, as :func:`save_variables` and :meth:`jaxtl.lifecycle.Run.output` do)."""
    import orbax.checkpoint as ocp

    meta_text = _meta_text(directory, card)
    _check_leaves(directory, variables)
    # The synchronous checkpointer (an async one may still write after a failure was raised), and process-local:
    # Orbax's default all-process barrier would wait forever for processes that do not save.
    here = jax.process_index()
    local = ocp.options.MultiprocessingOptions(primary_host=here, active_processes={here})
    ckptr = ocp.Checkpointer(ocp.StandardCheckpointHandler(), multiprocessing_options=local)
    try:
        directory.mkdir()
        ckptr.save(directory.absolute() / _STATE, dict(variables))
        (directory / _META).write_text(meta_text)
    finally:
        with contextlib.suppress(Exception):
            ckptr.close()


def save_variables(
    directory: str | os.PathLike[str], variables: Mapping[str, Any], card: ModelCard, *, overwrite: bool = False
) -> Path:
    """Save ``variables`` (``{"params", "batch_stats"}``) with their :class:`~jaxtl.models.card.ModelCard`.

    Refuses an existing ``directory`` unless ``overwrite=True``, and even then anything jaxtl did not write there
    (a user's file in it included). Process-local (a multi-process run saves from one process). Returns the absolute
    path written.
    """
    target = Path(directory).absolute()
    _meta_text(target, card)  # bad card or arch: refused before anything is written
    _check_leaves(target, variables)
    write_outputs(
        [Output(target, "dir", "checkpoint")],
        lambda tmps: write_variables(tmps[0], variables, card),
        overwrite=overwrite,
    )
    return target


def _legacy_card(meta: dict[str, Any], where: str) -> ModelCard:
    # Version 1 (jaxtl 0.1): {"arch", "num_classes", "metadata": {normalization, image_size, channels, ...}}.
    info = meta.get("metadata") or {}
    fields: dict[str, Any] = {"channels": int(info.get("channels", 3))}
    if info.get("image_size"):
        fields["image_size"] = int(info["image_size"])
    card = ModelCard.for_arch(meta["arch"], int(meta["num_classes"]), **fields)
    norm = info.get("normalization")
    pre = card.preprocessing
    if norm:
        pre = Preprocessing.from_dict({**pre.to_dict(), "mean": norm["mean"], "std": norm["std"]}, where)
    names = tuple(info.get("class_names") or ())
    kind = info.get("kind") or card.kind
    dtype = info.get("dtype") or "float32"
    extra = {k: v for k, v in info.items() if k not in ("normalization", "image_size", "channels", "class_names")}
    return card.replace(preprocessing=pre, class_names=names, kind=kind, dtype=dtype, extra=extra)


def _not_a_saved_model(d: Path) -> CheckpointError:
    hint = ""
    for sub in ("classifier", "encoder"):
        if (d / sub / _META).is_file():
            hint = f"; the run there saved its model in {d / sub}"
    if not hint and (d / "variables").is_dir() is False and any(d.glob("*.safetensors")):
        hint = "; for a .safetensors file give the file itself"
    return CheckpointError(f"{d} is not a jaxtl model directory: {_META} is missing{hint}")


def read_card(directory: str | os.PathLike[str]) -> ModelCard:
    """The :class:`~jaxtl.models.card.ModelCard` of a saved model; :class:`CheckpointError` naming the file and
    field when it is missing or damaged (an edited ``jaxtl.json`` included)."""
    d = Path(directory).absolute()
    if not d.is_dir():
        what = "is a file, not a jaxtl model directory" if d.is_file() else "does not exist"
        raise CheckpointError(f"{d} {what}")
    where = str(d / _META)
    try:
        meta = json.loads((d / _META).read_text())
    except FileNotFoundError:
        raise _not_a_saved_model(d) from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{where} is damaged: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise CheckpointError(f"{where} is not a jaxtl variables description (format {_FORMAT!r})")
    try:
        if "card" in meta:
            card = ModelCard.from_dict(meta["card"], where)
        elif "arch" in meta and "num_classes" in meta:
            card = _legacy_card(meta, where)
        else:
            raise CheckpointError(f"{where} holds no model card")
        get_spec(card.arch)
    except CheckpointError:
        raise
    except (ModelCardError, TypeError, ValueError) as e:
        raise CheckpointError(str(e) if where in str(e) else f"{where}: {e}") from None
    except (KeyError, JaxtlError) as e:
        raise CheckpointError(f"{where}: {e.args[0] if e.args else e}") from None
    return card


def _check_structure(d: Path, module: nn.Module, variables: dict[str, Any], card: ModelCard) -> None:
    size = card.preprocessing.crop_size  # abstract: no compute, whatever the size
    abstract = jax.eval_shape(
        functools.partial(module.init, train=False),
        jax.random.PRNGKey(0),
        jax.ShapeDtypeStruct((1, size, size, card.preprocessing.channels), jnp.float32),
    )
    problems = tree_mismatch(variables, abstract)
    if problems:
        raise CheckpointError(f"{d}: variables do not match the model card: {'; '.join(problems)}")


def load_variables(directory: str | os.PathLike[str], dtype: Any = None) -> tuple[nn.Module, dict[str, Any], ModelCard]:
    """Load a directory written by :func:`save_variables` -> ``(module, variables, card)``.

    The module is the card's architecture with its head (a ViT at the card's input size), in ``dtype`` (default:
    the card's dtype).
    :class:`CheckpointError` naming the path if it is missing, damaged or does not match its card.
    """
    import orbax.checkpoint as ocp

    d = Path(directory).absolute()
    card = read_card(d)
    dtype = dtype if dtype is not None else jnp.dtype(card.dtype)
    try:
        module = card.build_module(dtype)  # a transformer at the card's input size
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{d / _META} names a model jaxtl cannot build: {e}") from e
    if not (d / _STATE).is_dir():
        raise CheckpointError(f"{d} is damaged: {_STATE}/ is missing")
    try:
        ckptr = ocp.StandardCheckpointer()
        variables = ckptr.restore(d / _STATE)
        ckptr.close()
    except Exception as e:  # Orbax raises assorted types (ValueError, FileNotFoundError, tensorstore errors)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot restore {d / _STATE}: {first}") from e
    if not isinstance(variables, dict) or "params" not in variables:
        raise CheckpointError(f"{d / _STATE} holds no 'params' collection")
    _check_structure(d, module, variables, card)
    variables = jax.device_put(variables)  # one transfer for the tree, not one dispatch per leaf
    return module, dict(variables), card
