"""Pretraining without labels (what ``jaxtl pretrain`` does): an architecture's backbone trained as the encoder of
a (denoising) convolutional autoencoder, saved as an encoder that ``finetune`` takes as its model."""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtl.compile_cache import default_compile_cache
from jaxtl.data.augment import add_noise, random_mask
from jaxtl.data.batching import run_length
from jaxtl.data.dataset import ArrayDataset
from jaxtl.data.protocol import Source
from jaxtl.data.splits import split_indices
from jaxtl.errors import ConfigError, DataError
from jaxtl.lifecycle import Run
from jaxtl.models.autoencoder import Autoencoder
from jaxtl.models.card import ModelCard
from jaxtl.models.heads import head_name, strip_head
from jaxtl.models.registry import create
from jaxtl.recipes.config import WORDS, PretrainConfig
from jaxtl.recipes.data import open_data
from jaxtl.recipes.model import ModelLike, as_model, variables_digest
from jaxtl.train.config import Checkpoints, fit_batch
from jaxtl.train.fit import WRITES as FIT_WRITES
from jaxtl.train.fit import OnStep, fit
from jaxtl.train.losses import Reconstruction
from jaxtl.train.model_files import write_variables
from jaxtl.train.parallel import Parallel
from jaxtl.train.result import RunResult
from jaxtl.train.step import Augment

__all__ = ["corruption", "encoder_variables", "pretrain"]

WRITES = (*FIT_WRITES, "encoder")


def corruption(denoise: tuple[Any, ...] | None) -> Augment | None:
    """The on-device input corruption of a parsed ``denoise`` (``("noise", std)`` / ``("mask", ratio, patch)``)."""
    if denoise is None:
        return None
    if denoise[0] == "noise":
        std = float(denoise[1])

        def corrupt(rng: jax.Array, x: jax.Array) -> jax.Array:
            return add_noise(rng, x, std)
    else:
        ratio, patch = float(denoise[1]), int(denoise[2])

        def corrupt(rng: jax.Array, x: jax.Array) -> jax.Array:
            return random_mask(rng, x, ratio, patch)

    return corrupt


def encoder_variables(ae_variables: Mapping[str, Any]) -> dict[str, Any]:
    """The encoder's own ``{"params", "batch_stats"}`` out of an :class:`Autoencoder`'s variables."""
    out: dict[str, Any] = {"params": ae_variables["params"]["encoder"]}
    stats = ae_variables.get("batch_stats", {}).get("encoder")
    if stats:
        out["batch_stats"] = stats
    return out


def _in_unit_range(data: Source) -> bool:
    # The decoder ends in a sigmoid for data in [0, 1]; uint8 streams are normalised on device, so never.
    return isinstance(data, ArrayDataset) and bool(data.images.min() >= 0.0 and data.images.max() <= 1.0)


def _pretraining_data(config: PretrainConfig, data: str | Source, card: ModelCard) -> Source:
    fraction = config.split.test_fraction
    source = open_data(data, card, config.input, labeled=fraction > 0)
    if fraction > 0:
        if source.labels is None:
            raise DataError(
                "split.test_fraction leaves out the held-out part of labeled data; this data has no labels "
                "(hold out images yourself, or use test_fraction=0)"
            )
        try:
            train_idx, _ = split_indices(len(source), np.asarray(source.labels), fraction, config.loop.seed)
        except ValueError as e:
            raise ConfigError(str(e), "test_fraction") from None
        source = source.subset(train_idx)  # type: ignore[attr-defined]
    return source.unlabeled() if source.labels is not None else source  # type: ignore[attr-defined, no-any-return]


def _autoencoder(config: PretrainConfig, encoder: nn.Module, data: Source, sigmoid: bool) -> Autoencoder:
    kwargs: dict[str, Any] = dict(encoder=encoder, out_channels=data.image_shape[2], sigmoid_output=sigmoid)
    if config.decoder_widths is not None:
        kwargs["decoder_widths"] = config.decoder_widths
    return Autoencoder(**kwargs)


def pretrain(
    config: PretrainConfig,
    data: str | Source,
    *,
    init: ModelLike | None = None,
    workdir: str | pathlib.Path | None = None,
    progress: bool = True,
    allow_changes: bool = False,
    callbacks: Sequence[OnStep] = (),
    tensorboard: bool = True,
) -> RunResult:
    """Pretrain ``config.arch``'s backbone as an autoencoder's encoder on ``data``'s images, labels ignored;
    returns a :class:`~jaxtl.train.result.RunResult` holding the encoder (``module, variables, card``; ``.state``
    is the whole autoencoder's final state, e.g. for reconstructions) that :func:`jaxtl.finetune` takes.

    Images are prepared with the registry's preprocessing for the architecture (or ``init``'s card, e.g.
    torchvision weights to start from), so the decoder reconstructs normalised images with a linear output; a
    ready Source in ``[0, 1]`` gets a sigmoid output. ``init``: weights to start from (a model with its card), or
    a bare encoder module (``num_classes=0``) to pretrain from a fresh init instead of ``config.arch``'s (not saved
    by name: no ``workdir``). ``workdir``: resumable there, the encoder saved to ``workdir/encoder`` with its card;
    TensorBoard event files in ``workdir/tensorboard`` (the loss, and at the end inputs over their reconstructions)
    unless ``tensorboard=False``. ``callbacks``: ``fn(step, train_metrics)`` after every step.
    """
    if not isinstance(config, PretrainConfig):
        raise ConfigError(f"config must be a PretrainConfig, got {type(config).__name__}", "config")
    default_compile_cache()  # on unless configured otherwise or turned off (jaxtl.compile_cache)
    start: dict[str, Any] | None = None
    encoder = None
    if isinstance(init, nn.Module):
        if workdir is not None:
            raise ConfigError("a bare encoder module cannot be saved by name; pretrain a registered arch", "init")
        encoder, init = init, None
    if init is not None:
        init_module, start, card_ = as_model(init)
        if card_ is None:
            raise ConfigError("init needs its model card: pass (module, variables, card)", "init")
        if card_.preprocessing.channels != config.channels:
            raise ConfigError(
                f"init takes {card_.preprocessing.channels}-channel input, not {config.channels}", "channels"
            )
        if card_.arch != config.arch:
            raise ConfigError(f"init holds {card_.arch} weights, but arch={config.arch!r}", "arch")
        start = strip_head(start, head_name(init_module))
        card = card_
    else:
        card = ModelCard.for_arch(config.arch, 0, channels=config.channels)
    if config.input.image_size is not None:
        card = card.replace(
            preprocessing=card.preprocessing.with_size(config.input.image_size, config.input.resize_size)
        )
    card = card.replace(num_classes=0, class_names=(), kind="encoder")
    source = _pretraining_data(config, data, card)
    h, w, c = source.image_shape
    if config.denoise is not None and config.denoise[0] == "mask" and (h % config.denoise[2] or w % config.denoise[2]):
        raise ConfigError(f"denoise mask patch {config.denoise[2]} must divide the image size {h}x{w}", "denoise")
    encoder = encoder if encoder is not None else create(config.arch, num_classes=0)
    module = _autoencoder(config, encoder, source, _in_unit_range(source))
    variables = module.init(jax.random.PRNGKey(config.loop.seed), jnp.zeros((1, h, w, c), jnp.float32), train=False)
    variables = {k: dict(v) for k, v in variables.items()}
    if start is not None:
        variables["params"]["encoder"] = start["params"]
        if start.get("batch_stats"):
            variables.setdefault("batch_stats", {})["encoder"] = start["batch_stats"]
    batch = fit_batch(config.loop.batch_size, len(source), Parallel(config.loop.parallel).num_devices)
    _, total = run_length(len(source), batch, config.loop.epochs, config.loop.steps)
    config.loop.check_length(total)  # before the run opens: a refused length must not leave a recorded run
    identity = {
        **config.identity(total),
        "data": source.digest(),
        "num_examples": len(source),
        "init": None if start is None else variables_digest(start),
    }
    run = None
    if workdir is not None:
        run = Run(pathlib.Path(workdir), identity, WORDS, WRITES, allow_changes=allow_changes, kind="pretrain")
    with run if run is not None else contextlib.nullcontext():
        if run is not None:
            run.check_output("encoder")
        result = fit(
            module,
            variables,
            source,
            optimizer=config.optimizer,
            loop=dataclasses.replace(config.loop, batch_size=batch, epochs=None, steps=total),
            checkpoints=None if run is None else Checkpoints(run, tensorboard=tensorboard),
            loss=Reconstruction(corrupt=corruption(config.denoise)),
            callbacks=callbacks,
            progress=progress,
        )
        losses = [r["loss"] for r in result.history if r.get("split") == "train"]
        card = card.replace(
            extra={
                "data": data if isinstance(data, str) else repr(data),
                "denoise": list(config.denoise) if config.denoise else None,
                "held_out": {"test_fraction": config.split.test_fraction, "seed": config.loop.seed},
                "steps": len(losses),
                "train_mse_first": losses[0] if losses else None,
                "train_mse_last": losses[-1] if losses else None,
            }
        )
        enc = encoder_variables(result.variables)
        path = None
        if run is not None and run.main:
            with run.output("encoder") as tmp:
                write_variables(tmp, enc, card)
            path = run.workdir / "encoder"
    return RunResult(encoder, enc, card, result.history, {}, path, result.state, result.resumed_from, len(source))
