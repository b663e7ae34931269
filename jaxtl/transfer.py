"""The transfer-learning pipeline as library functions: pretrain an autoencoder, build a classifier, fine-tune,
evaluate.

    ae, ae_vars, hist = pretrain_autoencoder(ConvNet(num_classes=0), unlabeled, steps=500, denoise=("noise", 0.2))
    clf, variables = build_classifier((ae.encoder, ae_vars), num_classes=10, rng=jax.random.PRNGKey(0))
    variables, hist = finetune(clf, variables, few_labels, mode="full", steps=100)
    print(evaluate_classifier(clf, variables, test))  # {"top1", "top5", "loss", "n"}

Input normalisation is the caller's choice and must be the same at pretraining, fine-tuning and evaluation: these
functions feed images exactly as given. Loaders give ``[0, 1]``; a backbone bridged from torchvision was trained on
ImageNet-normalised inputs, so normalise for it with :func:`normalize_dataset` (the registry's mean/std). The
autoencoder reconstructs its input as given: a sigmoid output for ``[0, 1]`` data, a linear one for normalised data.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from jaxtl.data.augment import add_noise, random_crop_flip, random_mask
from jaxtl.data.batching import run_length
from jaxtl.data.dataset import ArrayDataset
from jaxtl.data.datasets import normalize
from jaxtl.data.splits import check_num_classes
from jaxtl.models.autoencoder import Autoencoder, classifier_from_autoencoder
from jaxtl.models.registry import get_spec
from jaxtl.train.fit import evaluate, fit
from jaxtl.train.optim import make_optimizer
from jaxtl.train.probe import extract_features, fit_linear_probe
from jaxtl.train.state import TrainState
from jaxtl.train.step import Augment

__all__ = [
    "MODES",
    "build_classifier",
    "encoder_variables",
    "evaluate_classifier",
    "finetune",
    "normalize_dataset",
    "parse_denoise",
    "pretrain_autoencoder",
]

MODES = ("linear_probe", "frozen", "full")
Denoise = tuple[Any, ...] | None
OnStep = Callable[[int, dict[str, float]], None]


def normalization_stats(arch: str, channels: int = 3) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The registry mean/std of ``arch`` for ``channels``-channel input; gray (1 channel) uses their mean."""
    spec = get_spec(arch)
    if channels == 1:
        return (float(np.mean(spec.mean)),), (float(np.mean(spec.std)),)
    return tuple(spec.mean), tuple(spec.std)


def normalize_dataset(data: ArrayDataset, arch: str) -> ArrayDataset:
    """``data`` with images normalised by the registry mean/std of ``arch`` (``[N, H, W, C]``, labels unchanged).

    Gray images (``C=1``) use the mean of the three channel statistics.
    """
    mean, std = normalization_stats(arch, data.images.shape[-1])
    return ArrayDataset(normalize(data.images, mean, std), data.labels, data.num_classes, data.class_names)


# --- denoising ---------------------------------------------------------------------------------------------------


def parse_denoise(denoise: Denoise | str) -> Denoise:
    """``None``, ``("noise", std)``, ``("mask", ratio, patch)``, or the CLI strings ``"noise:0.2"`` /
    ``"mask:0.5"`` / ``"mask:0.5:4"`` (patch defaults to 4). Returns the tuple form; ValueError naming the spec."""
    if denoise is None:
        return None
    if isinstance(denoise, str):
        parts = denoise.split(":")
        try:
            nums = [float(p) for p in parts[1:]]
        except ValueError:
            raise ValueError(f"denoise {denoise!r}: expected noise:STD, mask:RATIO or mask:RATIO:PATCH") from None
        if parts[0] == "noise" and len(nums) == 1:
            denoise = ("noise", nums[0])
        elif parts[0] == "mask" and len(nums) in (1, 2) and (len(nums) == 1 or nums[1] == int(nums[1])):
            denoise = ("mask", nums[0], int(nums[1]) if len(nums) == 2 else 4)
        else:
            raise ValueError(f"denoise {denoise!r}: expected noise:STD, mask:RATIO or mask:RATIO:PATCH")
    kind = denoise[0] if denoise else None
    if kind == "noise" and len(denoise) == 2:
        if not float(denoise[1]) > 0:
            raise ValueError(f"denoise noise std must be > 0, got {denoise[1]}")
        return ("noise", float(denoise[1]))
    if kind == "mask" and len(denoise) == 3:
        if not 0.0 < float(denoise[1]) < 1.0 or int(denoise[2]) < 1:
            raise ValueError(f"denoise mask needs 0 < ratio < 1 and patch >= 1, got {denoise}")
        return ("mask", float(denoise[1]), int(denoise[2]))
    raise ValueError(f"denoise must be None, ('noise', std) or ('mask', ratio, patch), got {denoise!r}")


def _corrupt_fn(denoise: Denoise) -> Augment | None:
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


# --- pretraining -------------------------------------------------------------------------------------------------


def _without_head(variables: Mapping[str, Any], classifier: str = "fc") -> dict[str, Any]:
    out = {k: dict(v) for k, v in variables.items() if k in ("params", "batch_stats")}
    out["params"].pop(classifier, None)
    out["batch_stats"] = out.get("batch_stats", {})
    out["batch_stats"].pop(classifier, None)
    return out


def encoder_variables(ae_variables: Mapping[str, Any]) -> dict[str, Any]:
    """The encoder's own ``{"params", "batch_stats"}`` out of an :class:`Autoencoder`'s variables."""
    out: dict[str, Any] = {"params": ae_variables["params"]["encoder"]}
    stats = ae_variables.get("batch_stats", {}).get("encoder")
    if stats:
        out["batch_stats"] = stats
    return out


def pretrain_autoencoder(
    encoder_module: nn.Module,
    data: ArrayDataset,
    *,
    epochs: int | None = None,
    steps: int | None = None,
    batch_size: int = 64,
    lr: float = 1e-3,
    optimizer: str | dict[str, Any] = "adamw",
    weight_decay: float = 0.0,
    denoise: Denoise | str = None,
    decoder_widths: tuple[int, ...] | None = None,
    sigmoid_output: bool | None = None,
    eval_data: ArrayDataset | None = None,
    workdir: str | pathlib.Path | None = None,
    seed: int = 0,
    parallel: str = "none",
    variables: Mapping[str, Any] | None = None,
    progress: bool = True,
    on_step: OnStep | None = None,
) -> tuple[Autoencoder, dict[str, Any], list[dict[str, Any]]]:
    """Train an :class:`Autoencoder` around ``encoder_module`` on ``data`` images ``[N, H, W, C]`` (labels ignored).

    Runs :func:`jaxtl.train.fit` with ``loss="mse"`` (resumable from ``workdir``). ``denoise``: ``None``,
    ``("noise", std)`` (Gaussian noise) or ``("mask", ratio, patch)`` (zeroed patches) corrupts only the input; the
    target stays clean. ``variables``: the encoder's starting ``{"params", "batch_stats"}`` (e.g. a bridged ResNet;
    an ``fc`` is dropped), else a fresh init from ``seed``. ``sigmoid_output`` defaults to whether ``data`` lies in
    ``[0, 1]``. ``optimizer`` is a :func:`make_optimizer` name (with ``lr``/``weight_decay``, cosine schedule) or its
    full kwargs. Returns the plain ``(Autoencoder, ae_variables, history)``; the history is fit's metric records.
    """
    if getattr(encoder_module, "num_classes", 0):
        encoder_module = encoder_module.clone(num_classes=0)
    denoise = parse_denoise(denoise)
    images = data.images
    _, h, w, c = images.shape
    if sigmoid_output is None:
        sigmoid_output = bool(images.min() >= 0.0 and images.max() <= 1.0)
    if denoise is not None and denoise[0] == "mask" and (h % denoise[2] or w % denoise[2]):
        raise ValueError(f"denoise mask patch {denoise[2]} must divide the image size {h}x{w}")
    kwargs: dict[str, Any] = dict(encoder=encoder_module, out_channels=c, sigmoid_output=sigmoid_output)
    if decoder_widths is not None:
        kwargs["decoder_widths"] = tuple(decoder_widths)
    train_module = Autoencoder(**kwargs)
    init_vars = train_module.init(jax.random.PRNGKey(seed), jnp.zeros((1, h, w, c), jnp.float32), train=False)
    init_vars = {k: dict(v) for k, v in init_vars.items()}
    if variables is not None:
        enc = _without_head(variables)
        init_vars["params"]["encoder"] = enc["params"]
        if enc["batch_stats"]:
            init_vars.setdefault("batch_stats", {})["encoder"] = enc["batch_stats"]
    opt = optimizer if isinstance(optimizer, dict) else dict(name=optimizer, lr=lr, weight_decay=weight_decay)
    result = fit(
        train_module,
        init_vars,
        data.unlabeled() if data.labels is not None else data,
        eval_data=None if eval_data is None else eval_data.unlabeled(),
        optimizer=opt,
        batch_size=batch_size,
        epochs=epochs,
        steps=steps,
        seed=seed,
        workdir=workdir,
        parallel=parallel,
        corrupt=_corrupt_fn(denoise),
        loss="mse",
        progress=progress,
        on_step=on_step,
    )
    return train_module, result.variables, result.history


# --- classifiers -------------------------------------------------------------------------------------------------


def build_classifier(
    source: tuple[nn.Module, Mapping[str, Any]],
    num_classes: int,
    rng: jax.Array,
    input_shape: tuple[int, int, int] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """A classifier with a fresh ``fc`` of ``num_classes`` outputs over a pretrained backbone.

    ``source`` is ``(encoder_module, ae_variables)`` of an autoencoder (variables hold ``params["encoder"]``; see
    :func:`classifier_from_autoencoder`) or ``(module, variables)`` of a backbone or classifier (e.g. a bridged
    ResNet), whose ``fc``, if any, is replaced. The backbone's params and batch_stats are taken unchanged.
    ``input_shape`` ``(H, W, C)`` is used to initialise the head (default 32x32, the stem's channels).
    """
    module, variables = source
    if "params" not in variables:
        raise ValueError(f"build_classifier: variables must hold 'params', got keys {sorted(variables)}")
    if "encoder" in variables["params"] and "decoder" in variables["params"]:
        ae_vars = variables
    else:
        enc = _without_head(variables)
        ae_vars = {"params": {"encoder": enc["params"]}, "batch_stats": {"encoder": enc["batch_stats"]}}
    backbone = module.clone(num_classes=0) if getattr(module, "num_classes", 0) else module
    return classifier_from_autoencoder(ae_vars, backbone, num_classes, rng, input_shape)


def _tx(
    optimizer: str | dict[str, Any], lr: float, weight_decay: float, total_steps: int, lr_scale: float = 1.0
) -> optax.GradientTransformation:
    kwargs: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay, "total_steps": total_steps}
    kwargs.update(optimizer if isinstance(optimizer, dict) else {"name": optimizer})
    kwargs["lr"] = kwargs["lr"] * lr_scale  # a dict's own lr is scaled too (smaller backbone lr)
    return make_optimizer(**kwargs)


def _default_augment(rng: jax.Array, images: jax.Array) -> jax.Array:
    # Shifts by up to 1/8 of the side, with mirroring: torchvision-style crop+flip scaled to the image size.
    pad = max(1, min(images.shape[1], images.shape[2]) // 8)
    return random_crop_flip(rng, images, padding=pad, flip=True)


def finetune(
    module: nn.Module,
    variables: Mapping[str, Any],
    train: ArrayDataset,
    *,
    mode: str = "full",
    backbone_lr_scale: float = 1.0,
    epochs: int | None = None,
    steps: int | None = None,
    batch_size: int = 32,
    lr: float = 1e-3,
    optimizer: str | dict[str, Any] = "adamw",
    weight_decay: float = 0.0,
    augment: bool | Augment = False,
    eval_data: ArrayDataset | None = None,
    workdir: str | pathlib.Path | None = None,
    seed: int = 0,
    parallel: str = "none",
    progress: bool = True,
    classifier: str = "fc",
    on_step: OnStep | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train a classifier (``module`` with a ``classifier`` head) on labeled ``train`` images ``[N, H, W, C]``.

    ``mode``: ``"linear_probe"`` computes the frozen backbone's pooled features once and trains the head on them;
    ``"frozen"`` trains the head through :func:`fit` with the backbone frozen (eval-mode BatchNorm; allows
    ``augment``); ``"full"`` trains everything, the backbone at ``lr * backbone_lr_scale``. Run length is ``steps``
    or ``epochs`` (``N // batch_size`` steps each); the optimizer (``"adamw"``/``"sgd"`` with a cosine schedule, or
    :func:`make_optimizer` kwargs) and the batch order are the same in every mode, so the modes get the same budget.
    ``augment``: True for random crop (1/8 of the side) + flip, or a function ``(rng, images) -> images``.
    Returns ``(variables, history)``; with ``eval_data`` the history ends with an ``{"split": "eval", ...}`` record.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if train.labels is None:
        raise ValueError("finetune needs a labeled train set (labels=None)")
    if classifier not in variables.get("params", {}):
        raise ValueError(f"the classifier has no head {classifier!r}; params: {sorted(variables.get('params', {}))}")
    head_classes = int(variables["params"][classifier]["bias"].shape[0])
    check_num_classes(train, head_classes)
    if not backbone_lr_scale > 0:
        raise ValueError(f"backbone_lr_scale must be > 0 (use mode='frozen' to freeze), got {backbone_lr_scale}")
    _, total = run_length(len(train), batch_size, epochs, steps)
    aug: Augment | None = _default_augment if augment is True else (augment or None)  # type: ignore[assignment]
    variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
    history: list[dict[str, Any]]

    if mode == "linear_probe":
        if aug is not None:
            raise ValueError("mode='linear_probe' caches features once and cannot augment; use mode='frozen'")
        feats = extract_features(module, variables, train, batch_size=max(batch_size, 64), parallel=parallel)
        probe = fit_linear_probe(
            feats,
            train.labels,
            head_classes,
            _tx(optimizer, lr, weight_decay, total),
            variables=variables,
            classifier=classifier,
            steps=total,
            batch_size=batch_size,
            seed=seed,
        )
        assert probe.variables is not None
        new_vars = jax.tree.map(jnp.asarray, probe.variables)
        history = [{"split": "train", **rec} for rec in probe.history]
        if on_step is not None:
            for rec in probe.history:
                on_step(int(rec["step"]), rec)
    else:
        if mode == "full" and backbone_lr_scale != 1.0:
            labels = traverse_util.unflatten_dict(
                {
                    k: "head" if k[0] == classifier else "backbone"
                    for k in traverse_util.flatten_dict(dict(variables["params"]))
                }
            )
            tx = optax.multi_transform(
                {
                    "head": _tx(optimizer, lr, weight_decay, total),
                    "backbone": _tx(optimizer, lr, weight_decay, total, lr_scale=backbone_lr_scale),
                },
                labels,
            )
        else:
            tx = _tx(optimizer, lr, weight_decay, total)
        result = fit(
            module,
            variables,
            train,
            tx=tx,
            batch_size=batch_size,
            steps=total,
            seed=seed,
            workdir=workdir,
            trainable=f"^{classifier}/" if mode == "frozen" else None,
            parallel=parallel,
            augment=aug,
            classifier=classifier,
            progress=progress,
            on_step=on_step,
        )
        new_vars = result.variables
        history = list(result.history)
    if eval_data is not None:
        history.append({"step": total, "split": "eval", **evaluate_classifier(module, new_vars, eval_data)})
    if workdir is not None and mode == "linear_probe":
        path = pathlib.Path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    return new_vars, history


def evaluate_classifier(
    module: nn.Module, variables: Mapping[str, Any], data: ArrayDataset, batch_size: int = 256
) -> dict[str, float]:
    """Exact ``top1``, ``top5``, mean cross-entropy ``loss`` and ``n`` over every example of labeled ``data``.

    Eval-mode BatchNorm, one device; the ragged last batch is padded and masked, never dropped.
    """
    if data.labels is None:
        raise ValueError("evaluate_classifier needs labeled data (labels=None)")
    state = TrainState.create(
        module, {k: v for k, v in variables.items() if k in ("params", "batch_stats")}, optax.identity()
    )
    m = evaluate(state, data, max(1, min(batch_size, len(data))), loss="ce")
    return {"top1": float(m["top1"]), "top5": float(m["top5"]), "loss": float(m["loss"]), "n": int(m["count"])}
