"""Models as the recipes take them: anything that unpacks as ``(module, variables[, card])``, and the one head rule.

The head rule: fine-tuning trains a classifier of the data's classes. A model whose head already maps exactly
those classes (same count, and the same names in the same order when its card names them) keeps its head and
trains on; any other model (a backbone, an encoder, a classifier of other classes) gets a fresh head of torch's
Linear init drawn from the run's seed. Every route (``finetune``, the CLI, the README's low-level snippet with
:func:`build_classifier`) makes the same head from the same seed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from jaxtl.errors import ConfigError
from jaxtl.models.autoencoder import classifier_from_autoencoder
from jaxtl.models.card import ModelCard
from jaxtl.models.heads import head_classes, head_name, strip_head

__all__ = ["ModelLike", "as_model", "build_classifier", "classifier_for", "variables_digest"]

ModelLike = Any  # (module, variables[, card]), a RunResult, a bridge result, or a saved model directory


def as_model(model: ModelLike) -> tuple[nn.Module, dict[str, Any], ModelCard | None]:
    """``(module, variables, card or None)`` from what a user holds: a tuple, a :class:`~jaxtl.train.result.
    RunResult`, :func:`jaxtl.bridge.pretrained`'s result, or the path of a saved model."""
    if isinstance(model, (str, os.PathLike)):
        from jaxtl.train.model_files import load_variables

        return load_variables(Path(model))
    try:
        parts = tuple(model)
    except TypeError:
        raise ConfigError(
            f"a model is (module, variables) or (module, variables, card), got {type(model).__name__}", "model"
        ) from None
    if len(parts) not in (2, 3) or not isinstance(parts[0], nn.Module) or not isinstance(parts[1], Mapping):
        raise ConfigError("a model is (module, variables) or (module, variables, card)", "model")
    card = parts[2] if len(parts) == 3 else None
    if card is not None and not isinstance(card, ModelCard):
        raise ConfigError(f"the third part of a model is its ModelCard, got {type(card).__name__}", "model")
    variables = {k: v for k, v in parts[1].items() if k in ("params", "batch_stats")}
    if "params" not in variables:
        raise ConfigError(f"the model's variables must hold 'params', got keys {sorted(parts[1])}", "model")
    return parts[0], variables, card


def variables_digest(variables: Mapping[str, Any]) -> str:
    """A short SHA-256 of every array (path, dtype, shape, bytes): the identity of a model's weights."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(dict(variables))[0]:
        arr = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}:{arr.dtype.str}:{arr.shape};".encode())
        h.update(arr.tobytes())
    return h.hexdigest()[:16]


def build_classifier(
    source: tuple[nn.Module, Mapping[str, Any]],
    num_classes: int,
    rng: jax.Array,
    input_shape: tuple[int, int, int] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """A classifier with a fresh head of ``num_classes`` outputs over a pretrained backbone.

    ``source`` is ``(encoder_module, ae_variables)`` of an autoencoder (variables hold ``params["encoder"]``) or
    ``(module, variables)`` of a backbone or classifier (e.g. a bridged model), whose head, if any, is replaced.
    The backbone's params and batch_stats are taken unchanged. ``input_shape`` ``(H, W, C)`` is used to initialise
    the head (default 32x32, the stem's channels).
    """
    module, variables = source
    if "params" not in variables:
        raise ConfigError(f"build_classifier: variables must hold 'params', got keys {sorted(variables)}", "model")
    if "encoder" in variables["params"] and "decoder" in variables["params"]:
        ae_vars = dict(variables)
    else:
        enc = strip_head(variables, head_name(module))
        ae_vars = {"params": {"encoder": enc["params"]}, "batch_stats": {"encoder": enc.get("batch_stats", {})}}
    backbone = module.clone(num_classes=0) if module.num_classes else module
    return classifier_from_autoencoder(ae_vars, backbone, num_classes, rng, input_shape)


def keeps_head(
    module: nn.Module, variables: Mapping[str, Any], card: ModelCard | None, class_names: Sequence[str], n: int
) -> bool:
    """Whether the model's head already maps exactly the data's ``n`` classes (see the module docstring)."""
    if head_classes(variables, head_name(module)) != n:
        return False
    if card is None or not card.class_names:
        return True
    return tuple(card.class_names) == tuple(class_names)


def classifier_for(
    module: nn.Module,
    variables: Mapping[str, Any],
    card: ModelCard | None,
    class_names: Sequence[str],
    num_classes: int,
    seed: int,
) -> tuple[nn.Module, dict[str, Any], bool]:
    """``(classifier, variables, new_head)`` for data of ``num_classes`` classes under the head rule."""
    if keeps_head(module, variables, card, class_names, num_classes):
        return module, dict(variables), False
    clf, clf_vars = build_classifier((module, variables), num_classes, jax.random.PRNGKey(seed))
    return clf, clf_vars, True
