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

import contextlib
import dataclasses
import json
import pathlib
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtl.data.augment import add_noise, random_crop_flip, random_mask
from jaxtl.data.batching import run_length
from jaxtl.data.dataset import ArrayDataset
from jaxtl.data.loaders import normalize
from jaxtl.data.source import Source, check_labels
from jaxtl.models.autoencoder import Autoencoder, classifier_from_autoencoder
from jaxtl.models.card import ModelCard
from jaxtl.models.heads import head_classes, head_name, strip_head
from jaxtl.train.fit import Checkpoints, Loop, evaluate_variables, fit
from jaxtl.train.groups import ParamGroups
from jaxtl.train.optim import make_optimizer
from jaxtl.train.probe import extract_features, fit_linear_probe
from jaxtl.train.step import Augment

__all__ = [
    "AUGMENT_CHOICES",
    "MODES",
    "Finetuned",
    "build_classifier",
    "evaluate_checkpoint",
    "finetune_classifier",
    "open_data",
    "pretrain_encoder",
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
    """The mean/std of ``arch``'s model card for ``channels``-channel input (gray: the mean of the three)."""
    pre = ModelCard.for_arch(arch, 0, channels=channels).preprocessing
    return pre.mean, pre.std


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
        if not 0 < float(denoise[1]) < float("inf"):
            raise ValueError(f"denoise noise std must be a finite number > 0, got {denoise[1]}")
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
    data: Source,
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
    eval_data: Source | None = None,
    workdir: str | pathlib.Path | None = None,
    seed: int = 0,
    parallel: str = "auto",
    variables: Mapping[str, Any] | None = None,
    progress: bool = True,
    on_step: OnStep | None = None,
    allow_changed_run: bool = False,
) -> tuple[Autoencoder, dict[str, Any], list[dict[str, Any]]]:
    """Train an :class:`Autoencoder` around ``encoder_module`` on ``data``'s images (any Source; labels ignored).

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
    h, w, c = data.image_shape
    if sigmoid_output is None:  # uint8 sources are normalised on device: not in [0, 1]
        images = getattr(data, "images", None)
        sigmoid_output = images is not None and bool(images.min() >= 0.0 and images.max() <= 1.0)
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
    augments = aug is not None or _source_augments(train)  # on device, or in the data's workers (e.g. rrc)
    if mode == "linear_probe" and augments:
        raise ValueError("mode='linear_probe' caches features once and cannot augment; use mode='frozen'")
    if feature_cache and (mode == "full" or augments):
        raise ValueError("feature_cache=True needs mode='frozen' or 'linear_probe' without augmentation")
    cached = mode == "linear_probe" or (mode == "frozen" and not augments and feature_cache is not False)
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
        with _feature_file(module, len(train), workdir) as out_path:
            feats = extract_features(
                module, variables, train, batch_size=batch_size, parallel=parallel, out_path=out_path
            )
            probe = _probe(feats, train, num_outputs, opts, variables, head, total, batch_size, seed)
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


FEATURES_IN_MEMORY = 1 << 30  # cached features beyond 1 GiB go to a memory-mapped .npy file


@contextlib.contextmanager
def _feature_file(module: nn.Module, n: int, workdir: str | pathlib.Path | None) -> Iterator[pathlib.Path | None]:
    """Where a large feature cache is memory-mapped (``workdir/features.npy`` or a temporary file, removed after),
    or None when ``n`` examples' features fit comfortably in memory."""
    if n * int(getattr(module, "num_features", 2048)) * 4 <= FEATURES_IN_MEMORY:
        yield None
        return
    if workdir is not None:
        path = pathlib.Path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        yield path / "features.npy"
        return
    with tempfile.TemporaryDirectory(prefix="jaxtl-features-") as tmp:
        yield pathlib.Path(tmp) / "features.npy"


def _probe(
    feats: np.ndarray,
    train: Source,
    num_outputs: int,
    opts: dict[str, Any],
    variables: dict[str, Any],
    head: str,
    total: int,
    batch_size: int,
    seed: int,
) -> Any:
    return fit_linear_probe(
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


# --- whole runs: what `jaxtl pretrain / finetune / evaluate` do, as library calls ----------------------------------

AUGMENT_CHOICES = ("none", "auto", "flip", "rrc", "crop-flip")


def _source_augments(data: Source) -> bool:
    return getattr(getattr(data, "transform", None), "augment", "none") != "none"


def open_data(
    spec: str | Source,
    card: ModelCard,
    *,
    augment: str = "none",
    workers: int | None = None,
    labeled: bool = True,
    image_size: int | None = None,
    resize_size: int | None = None,
    map_classes: bool = False,
) -> Source:
    """The data named by ``spec`` (see :data:`jaxtl.data.DATA_SPECS`), prepared as ``card`` says: its crop and
    resize sizes (``image_size``/``resize_size`` override them), channels and mean/std. A ready
    :class:`~jaxtl.data.source.Source` is returned as it is.

    ``augment``: ``"none"``, ``"rrc"`` (RandomResizedCrop + flip in the workers) or ``"flip"`` for streaming
    sources; ``"auto"`` picks ``"rrc"`` for them. In-memory data (``digits``, ``npz:``) is augmented on the device
    by the training loop instead (see :func:`finetune_classifier`). ``map_classes``: labels follow the card's
    class names (a folder class the model does not know is an error; a subset is fine).
    """
    if not isinstance(spec, str):
        return spec
    from jaxtl.data.pipeline import open_source

    pre = card.preprocessing
    if image_size is not None:
        pre = pre.with_size(image_size, resize_size)
    elif resize_size is not None:
        pre = pre.with_size(pre.crop_size, resize_size)
    streaming = spec.partition(":")[0] in ("folder", "csv", "arrayrecord")
    worker_aug = {"auto": "rrc", "crop-flip": "none"}.get(augment, augment) if streaming else "none"
    names = card.class_names if map_classes and card.class_names else None
    return open_source(  # type: ignore[no-any-return]
        spec,
        image_size=pre.crop_size,
        resize_size=pre.resize_size,
        channels=pre.channels,
        augment=worker_aug,
        workers=workers,
        mean=pre.mean,
        std=pre.std,
        labeled=labeled,
        class_names=names,
    )


@dataclasses.dataclass
class Finetuned:
    """What :func:`finetune_classifier` produced: the classifier, its card, held-out ``metrics`` (top1, top5,
    loss, n), the training ``history``, and ``path`` where it was saved (None without a workdir)."""

    module: nn.Module
    variables: dict[str, Any]
    card: ModelCard
    metrics: dict[str, float]
    history: list[dict[str, Any]]
    path: pathlib.Path | None
    train_size: int


def _fit_batch(batch_size: int, n: int, parallel: str) -> int:
    from jaxtl.train.parallel import Parallel

    devices = Parallel(parallel).num_devices
    bs = min(batch_size, n) // devices * devices
    if bs < 1:
        raise ValueError(f"{n} training examples cannot fill one batch on {devices} devices (one example each)")
    return bs


def finetune_classifier(
    model: tuple[nn.Module, Mapping[str, Any], ModelCard],
    data: str | Source,
    *,
    mode: str = "frozen",
    test_fraction: float = 0.2,
    labels_per_class: int | None = None,
    epochs: int | None = 5,
    steps: int | None = None,
    batch_size: int = 32,
    lr: float = 1e-3,
    optimizer: str | dict[str, Any] = "adamw",
    weight_decay: float = 0.0,
    backbone_lr_scale: float = 1.0,
    augment: str = "none",
    workers: int | None = None,
    image_size: int | None = None,
    dtype: str | None = None,
    seed: int = 0,
    parallel: str = "auto",
    workdir: str | pathlib.Path | None = None,
    progress: bool = True,
    feature_cache: bool | None = None,
    allow_changed_run: bool = False,
) -> Finetuned:
    """Fine-tune a pretrained backbone into a classifier of ``data``'s classes, end to end (what ``jaxtl finetune``
    runs): a new head, a stratified held-out split (``test_fraction``, ``seed``), optionally only
    ``labels_per_class`` labels per class, :func:`finetune`, evaluation on the held-out part, and with ``workdir``
    the run in ``workdir/run`` (resumable) and the classifier with its model card in ``workdir/classifier``.

    ``model`` is ``(module, variables, card)`` as :func:`jaxtl.bridge.pretrained` and
    :func:`jaxtl.train.load_variables` return it. ``data`` is a data spec or a Source; it is prepared with the
    card's preprocessing (``image_size`` overrides the crop size). ``augment``: ``"none"``, ``"auto"``
    (RandomResizedCrop + flip for streaming data, random crop + flip on device for in-memory data), ``"rrc"``,
    ``"flip"`` or ``"crop-flip"``. ``dtype``: ``"float32"`` or ``"bfloat16"`` compute (default: the card's).
    """
    if augment not in AUGMENT_CHOICES:
        raise ValueError(f"augment must be one of {AUGMENT_CHOICES}, got {augment!r}")
    from jaxtl.data.splits import labeled_unlabeled_split, train_test_split
    from jaxtl.train.checkpoint import save_variables

    module, variables, card = model
    dtype = dtype or card.dtype
    source = open_data(data, card, augment=augment, workers=workers, image_size=image_size)
    if source.labels is None:
        raise ValueError(f"{data}: no labels; fine-tuning needs labeled data")
    train, test = train_test_split(source, test_fraction, seed)  # type: ignore[arg-type]
    if labels_per_class:
        train, _ = labeled_unlabeled_split(train, labels_per_class, seed)
    on_device = isinstance(source, ArrayDataset) and augment in ("auto", "crop-flip")
    if isinstance(source, ArrayDataset) and augment in ("rrc", "flip"):
        raise ValueError(f"augment={augment!r} needs streaming data (folder:, csv:, arrayrecord:); use 'crop-flip'")
    if not isinstance(source, ArrayDataset) and augment == "crop-flip":
        raise ValueError("augment='crop-flip' is for in-memory data; streaming data uses 'rrc' or 'flip'")
    if _source_augments(test):
        test = test.with_options(augment="none")  # type: ignore[attr-defined]
    if mode == "linear_probe" and (on_device or _source_augments(train)):
        raise ValueError("mode='linear_probe' computes features once and cannot augment; use mode='frozen'")
    clf, variables = build_classifier((module, variables), source.num_classes, jax.random.PRNGKey(seed), None)
    if dtype == "bfloat16":
        clf = clf.clone(dtype=jnp.bfloat16)
    bs = _fit_batch(batch_size, len(train), parallel)
    run_dir = None if workdir is None else pathlib.Path(workdir) / "run"
    variables, history = finetune(
        clf,
        variables,
        train,
        mode=mode,
        backbone_lr_scale=backbone_lr_scale,
        epochs=None if steps is not None else epochs,
        steps=steps,
        batch_size=bs,
        lr=lr,
        optimizer=optimizer,
        weight_decay=weight_decay,
        augment=on_device,
        workdir=run_dir,
        seed=seed,
        parallel=parallel,
        progress=progress,
        feature_cache=False if _source_augments(train) else feature_cache,
        allow_changed_run=allow_changed_run,
        run_info={
            "source": card.source,
            "split": {"test_fraction": test_fraction, "seed": seed, "labels_per_class": labels_per_class},
            "augment_data": augment,
        },
    )
    metrics = evaluate_classifier(clf, variables, test)
    new_card = card.replace(
        num_classes=source.num_classes,
        class_names=tuple(source.class_names),
        kind="classifier",
        dtype=dtype,
        preprocessing=card.preprocessing.with_size(source.image_shape[0])
        if source.image_shape[0] != card.preprocessing.crop_size
        else card.preprocessing,
        extra={
            **{k: v for k, v in card.extra.items() if k not in ("test", "split", "mode")},
            "data": data if isinstance(data, str) else repr(data),
            "split": {"test_fraction": test_fraction, "seed": seed, "labels_per_class": labels_per_class},
            "mode": mode,
            "test": metrics,
        },
    )
    path = None
    if workdir is not None and jax.process_index() == 0:
        path = save_variables(pathlib.Path(workdir) / "classifier", variables, new_card, overwrite=True)
    return Finetuned(clf, variables, new_card, metrics, history, path, len(train))


def evaluate_checkpoint(
    checkpoint: str | pathlib.Path | tuple[nn.Module, Mapping[str, Any], ModelCard],
    data: str | Source,
    *,
    split: str = "all",
    batch_size: int = 256,
    image_size: int | None = None,
    workers: int | None = None,
    parallel: str = "none",
) -> dict[str, float]:
    """Top-1/top-5/loss of a saved classifier on ``data``, prepared as its model card says, labels mapped through
    the card's class names (a folder class the model does not know is an error; a subset of classes is fine).
    ``split="test"`` evaluates the held-out part :func:`finetune_classifier` recorded in the card."""
    from jaxtl.data.splits import train_test_split
    from jaxtl.train.checkpoint import load_variables

    module, variables, card = load_variables(checkpoint) if not isinstance(checkpoint, tuple) else checkpoint
    if card.num_classes < 1:
        raise ValueError(f"{checkpoint} holds a backbone without classifier head (num_classes=0); fine-tune it first")
    source = open_data(data, card, workers=workers, image_size=image_size, map_classes=True)
    if source.labels is None:
        raise ValueError(f"{data}: no labels to evaluate against")
    if card.class_names and list(source.class_names) != list(card.class_names):
        # Folders are listed with the card's class order (open_data); other sources carry their own label order.
        raise ValueError(
            f"{data}: its classes {list(source.class_names)[:10]} are not the model's {list(card.class_names)[:10]} "
            "in that order; evaluate with the classes the model was trained on"
        )
    if source.num_classes > card.num_classes:
        raise ValueError(f"{data}: {source.num_classes} classes, but the classifier has {card.num_classes}")
    if split == "test":
        rec = card.extra.get("split")
        if not rec:
            raise ValueError(f"{checkpoint}: its card records no held-out split (not from finetune); use split='all'")
        _, source = train_test_split(source, float(rec["test_fraction"]), int(rec["seed"]))  # type: ignore[arg-type]
    elif split != "all":
        raise ValueError(f"split must be 'all' or 'test', got {split!r}")
    return evaluate_classifier(module, variables, source, batch_size, parallel=parallel)


@dataclasses.dataclass
class Pretrained:
    """What :func:`pretrain_encoder` produced: the encoder (a backbone), its card, the autoencoder's history
    (train MSE per step) and ``path`` where the encoder was saved (None without a workdir)."""

    module: nn.Module
    variables: dict[str, Any]
    card: ModelCard
    history: list[dict[str, Any]]
    path: pathlib.Path | None


def pretrain_encoder(
    arch: str,
    data: str | Source,
    *,
    init: tuple[nn.Module, Mapping[str, Any], ModelCard] | None = None,
    image_size: int | None = None,
    channels: int = 3,
    denoise: Denoise | str = None,
    epochs: int | None = 5,
    steps: int | None = None,
    batch_size: int = 32,
    lr: float = 1e-3,
    optimizer: str | dict[str, Any] = "adamw",
    seed: int = 0,
    parallel: str = "auto",
    workers: int | None = None,
    workdir: str | pathlib.Path | None = None,
    progress: bool = True,
    allow_changed_run: bool = False,
) -> Pretrained:
    """Pretrain ``arch``'s backbone as the encoder of a (denoising) autoencoder on ``data``'s images, labels
    ignored (what ``jaxtl pretrain`` runs). Inputs are prepared with the registry's preprocessing for ``arch`` (or
    ``init``'s card, e.g. torchvision weights to start from), so the decoder reconstructs normalised images with a
    linear output. With ``workdir``: the run in ``workdir/run`` (resumable), the encoder with its card in
    ``workdir/encoder``."""
    import jaxtl
    from jaxtl.train.checkpoint import save_variables

    if init is not None:
        card = init[2]
        if card.preprocessing.channels != channels:
            raise ValueError(f"the initial weights take {card.preprocessing.channels}-channel input, not {channels}")
    else:
        card = ModelCard.for_arch(arch, 0, channels=channels)
    if image_size is not None:
        card = card.replace(preprocessing=card.preprocessing.with_size(image_size))
    card = card.replace(num_classes=0, class_names=(), kind="encoder")
    denoise = parse_denoise(denoise)
    source = open_data(data, card, labeled=False, workers=workers)
    encoder = jaxtl.create(arch, num_classes=0)
    bs = _fit_batch(batch_size, len(source), parallel)
    _, ae_vars, history = pretrain_autoencoder(
        encoder,
        source,
        epochs=None if steps is not None else epochs,
        steps=steps,
        batch_size=bs,
        lr=lr,
        optimizer=optimizer,
        denoise=denoise,
        sigmoid_output=False,
        workdir=None if workdir is None else pathlib.Path(workdir) / "run",
        seed=seed,
        parallel=parallel,
        variables=None if init is None else init[1],
        progress=progress,
        allow_changed_run=allow_changed_run,
    )
    losses = [h["loss"] for h in history if h.get("split") == "train"]
    card = card.replace(
        source=card.source,
        extra={
            "data": data if isinstance(data, str) else repr(data),
            "denoise": list(denoise) if denoise else None,
            "steps": len(losses),
            "train_mse_first": losses[0] if losses else None,
            "train_mse_last": losses[-1] if losses else None,
        },
    )
    variables = encoder_variables(ae_vars)
    path = None
    if workdir is not None and jax.process_index() == 0:
        path = save_variables(pathlib.Path(workdir) / "encoder", variables, card, overwrite=True)
    return Pretrained(encoder, variables, card, history, path)
