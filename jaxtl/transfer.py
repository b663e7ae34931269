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
import sys
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtl.data.augment import add_noise, random_crop_flip, random_mask
from jaxtl.data.batching import run_length
from jaxtl.data.dataset import ArrayDataset
from jaxtl.data.datasets import normalize
from jaxtl.data.source import Source
from jaxtl.models.autoencoder import Autoencoder, classifier_from_autoencoder
from jaxtl.models.heads import head_classes, head_name, strip_head
from jaxtl.models.registry import get_spec
from jaxtl.train.fit import Checkpoints, Loop, check_labels, evaluate_variables, fit
from jaxtl.train.groups import ParamGroups
from jaxtl.train.optim import make_optimizer
from jaxtl.train.probe import extract_features, fit_linear_probe
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
    parallel: str = "auto",
    variables: Mapping[str, Any] | None = None,
    progress: bool = True,
    on_step: OnStep | None = None,
    allow_changed_run: bool = False,
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
        enc = strip_head(variables, head_name(encoder_module))
        init_vars["params"]["encoder"] = enc["params"]
        if enc.get("batch_stats"):
            init_vars.setdefault("batch_stats", {})["encoder"] = enc["batch_stats"]
    opt = optimizer if isinstance(optimizer, dict) else dict(name=optimizer, lr=lr, weight_decay=weight_decay)
    result = fit(
        train_module,
        init_vars,
        data,
        eval_data=eval_data,
        optimizer=opt,
        loop=Loop(batch_size=batch_size, epochs=epochs, steps=steps, seed=seed, parallel=parallel),
        checkpoints=None if workdir is None else Checkpoints(workdir, allow_changes=allow_changed_run),
        corrupt=_corrupt_fn(denoise),
        loss="mse",
        progress=progress,
        callbacks=() if on_step is None else (on_step,),
        run_info={"denoise": list(denoise) if denoise else None},
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
        enc = strip_head(variables, head_name(module))
        ae_vars = {"params": {"encoder": enc["params"]}, "batch_stats": {"encoder": enc.get("batch_stats", {})}}
    backbone = module.clone(num_classes=0) if getattr(module, "num_classes", 0) else module
    return classifier_from_autoencoder(ae_vars, backbone, num_classes, rng, input_shape)


def _default_augment(rng: jax.Array, images: jax.Array) -> jax.Array:
    # Shifts by up to 1/8 of the side, with mirroring: torchvision-style crop+flip scaled to the image size.
    pad = max(1, min(images.shape[1], images.shape[2]) // 8)
    return random_crop_flip(rng, images, padding=pad, flip=True)


def finetune(
    module: nn.Module,
    variables: Mapping[str, Any],
    train: Source,
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
    eval_data: Source | None = None,
    workdir: str | pathlib.Path | None = None,
    seed: int = 0,
    parallel: str = "auto",
    progress: bool = True,
    on_step: OnStep | None = None,
    feature_cache: bool | None = None,
    allow_changed_run: bool = False,
    run_info: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train a classifier (``module`` with a head ``fc``) on labeled ``train`` data (any
    :class:`~jaxtl.data.source.Source`: an ``ArrayDataset`` ``[N, H, W, C]`` or a streaming image folder).

    ``mode``: ``"frozen"`` trains the head with the backbone frozen (eval-mode BatchNorm, no backward through it);
    ``"linear_probe"`` is the same with the backbone's pooled features computed once and the head trained on them;
    ``"full"`` trains everything, the backbone at ``lr * backbone_lr_scale``. ``mode="frozen"`` without
    augmentation takes the cached-feature path by itself (``feature_cache=None``; it says so once when ``progress``):
    the results equal the per-step path to float rounding; ``feature_cache=False`` keeps the per-step path.
    Run length is ``steps`` or ``epochs`` (``N // batch_size`` steps each); the optimizer (``"adamw"``/``"sgd"``
    with a cosine schedule, or :func:`make_optimizer` kwargs) and the batch order are the same in every mode, so
    the modes get the same budget. ``augment``: True for random crop (1/8 of the side) + flip, or a function
    ``(rng, images) -> images``. ``workdir``: checkpoints and resume (per-step paths), metrics.jsonl (all).
    Returns ``(variables, history)``; with ``eval_data`` the history ends with an ``{"split": "eval", ...}`` record.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if train.labels is None:
        raise ValueError("finetune needs a labeled train set (labels=None)")
    head = head_name(module)
    if head not in variables.get("params", {}):
        raise ValueError(f"the classifier has no head {head!r}; params: {sorted(variables.get('params', {}))}")
    num_outputs = head_classes(variables, head)
    check_labels(train, num_outputs)
    if not backbone_lr_scale > 0:
        raise ValueError(f"backbone_lr_scale must be > 0 (use mode='frozen' to freeze), got {backbone_lr_scale}")
    _, total = run_length(len(train), batch_size, epochs, steps)
    aug: Augment | None = _default_augment if augment is True else (augment or None)  # type: ignore[assignment]
    if mode == "linear_probe" and aug is not None:
        raise ValueError("mode='linear_probe' caches features once and cannot augment; use mode='frozen'")
    if feature_cache and (mode == "full" or aug is not None):
        raise ValueError("feature_cache=True needs mode='frozen' or 'linear_probe' without augmentation")
    cached = mode == "linear_probe" or (mode == "frozen" and aug is None and feature_cache is not False)
    variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
    opts: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay, "total_steps": total}
    opts.update(optimizer if isinstance(optimizer, dict) else {"name": optimizer})
    history: list[dict[str, Any]]

    if cached:
        if mode == "frozen" and progress and jax.process_index() == 0:
            print(
                "finetune: frozen backbone without augmentation -> its features are computed once and the head is "
                "trained on them (feature_cache=False to run the backbone every step)",
                file=sys.stderr,
            )
        feats = extract_features(module, variables, train, batch_size=max(batch_size, 64), parallel=parallel)
        probe = fit_linear_probe(
            feats,
            np.asarray(train.labels),
            num_outputs,
            make_optimizer(**opts),
            variables=variables,
            classifier=head,
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
        groups = ParamGroups.head_only(head) if mode == "frozen" else ParamGroups.finetune(head, backbone_lr_scale)
        result = fit(
            module,
            variables,
            train,
            optimizer=opts,
            groups=groups,
            loop=Loop(batch_size=batch_size, steps=total, seed=seed, parallel=parallel),
            checkpoints=None if workdir is None else Checkpoints(workdir, allow_changes=allow_changed_run),
            augment=aug,
            progress=progress,
            callbacks=() if on_step is None else (on_step,),
            run_info={"mode": mode, "augment": _describe(augment), **(run_info or {})},
        )
        new_vars = result.variables
        history = list(result.history)
    if eval_data is not None:
        history.append({"step": total, "split": "eval", **evaluate_classifier(module, new_vars, eval_data)})
    if workdir is not None and cached and jax.process_index() == 0:
        path = pathlib.Path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    return new_vars, history


def _describe(augment: Any) -> Any:
    if augment is True or augment is False or augment is None:
        return bool(augment)
    return getattr(augment, "__qualname__", type(augment).__name__)


def evaluate_classifier(
    module: nn.Module, variables: Mapping[str, Any], data: Source, batch_size: int = 256, parallel: str = "none"
) -> dict[str, float]:
    """Exact ``top1``, ``top5``, mean cross-entropy ``loss`` and ``n`` over every example of labeled ``data``.

    Eval-mode BatchNorm, no optimizer state; one device of this process by default (``parallel="auto"`` to use
    all); the ragged last batch is padded and masked, never dropped. Labels outside the head are an error.
    """
    if data.labels is None:
        raise ValueError("evaluate_classifier needs labeled data (labels=None)")
    check_labels(data, head_classes(variables, head_name(module)), "eval data")
    from jaxtl.train.parallel import Parallel

    par = None if parallel == "none" else Parallel(parallel)
    placed = (
        dict(variables)
        if par is None
        else par.put_state({k: v for k, v in variables.items() if k in ("params", "batch_stats")})
    )
    bs = max(1, min(batch_size, len(data)))
    if par is not None:
        bs = -(-bs // par.num_devices) * par.num_devices
    m = evaluate_variables(module, placed, data, bs, par=par, loss="ce")
    return {"top1": float(m["top1"]), "top5": float(m["top5"]), "loss": float(m["loss"]), "n": int(m["count"])}
