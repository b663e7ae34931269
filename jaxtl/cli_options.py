"""The ``jaxtl`` command line's options: one function adds a command's options, one function builds its config
from them, and the table that words the library's messages with the command line's flags.

The library names options as Python does (``labels_per_class=40``, ``feature_cache=False``); a user of the
command line typed flags (``--labels-per-class 40``, ``--no-feature-cache``). :func:`flag_words` rewrites a
message in the flags' terms, so every message a command prints names what the user can type.
"""

from __future__ import annotations

import argparse
import dataclasses
import re

from jaxtl.errors import ConfigError, JaxtlError
from jaxtl.recipes.config import (
    AUGMENT_CHOICES,
    ConvertConfig,
    EvaluateConfig,
    FinetuneConfig,
    Input,
    PretrainConfig,
    Split,
)
from jaxtl.train.config import STOP_METRICS, Loop, Optimizer, Regularization, Stopping
from jaxtl.train.ema import EMA

FREEZE = {"backbone": "frozen", "none": "full", "linear-probe": "linear_probe"}


class UsageError(JaxtlError):
    """Bad input found while running a command; reported as ``jaxtl: error: <message>`` with exit code 2."""


def archs() -> list[str]:
    """Every registered architecture (``--arch`` choices)."""
    from jaxtl.models import list_models

    return list_models()


def data_help() -> str:
    from jaxtl.data import DATA_SPECS

    return DATA_SPECS


# Python words -> flags. Booleans and choices whose flag differs from the field's spelling are listed whole.
_PHRASES = {
    "feature_cache=False": "--no-feature-cache",
    "feature_cache=True": "the feature cache (--freeze backbone without --augment)",
    "allow_changes=True": "--allow-changed-run",
    "tensorboard=False": "--no-tensorboard",
    "restore_best=False": "--no-restore-best",
    "allow changes (--allow-changed-run)": "--allow-changed-run",
    "overwrite=True (--overwrite)": "--overwrite",
    "overwrite=True": "--overwrite",
    "mode='frozen'": "--freeze backbone",
    "mode='full'": "--freeze none",
    "mode='linear_probe'": "--freeze linear-probe",
    "split='all'": "--split all",
    "split='test'": "--split test",
    "loop=Loop(epochs=N) or Loop(steps=N)": "--epochs N or --steps N",
}
_NAMES = {"mode": "--freeze", "name": "--optimizer", "optimizer": "--optimizer", "test_fraction": "--test-fraction"}


def flag_words(message: str, parser: argparse.ArgumentParser, field: str | None = None) -> str:
    """``message`` with the library's Python option names replaced by ``parser``'s flags; ``field`` (a
    :class:`~jaxtl.errors.ConfigError`'s) is the option the message is about, named as its flag where it leads."""
    for phrase, flag in _PHRASES.items():
        message = message.replace(phrase, flag)
    flags = dict(_NAMES)
    for action in parser._actions:  # argparse keeps no public list of a parser's actions
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs and action.dest not in flags:
            flags[action.dest] = longs[0]

    def word(m: re.Match[str]) -> str:
        name, value = m.group(1), m.group(2)
        flag = flags.get(name)
        if flag is None:
            return m.group(0)
        return f"{flag} {value.strip(chr(39))}" if value else flag

    if field is not None:
        name = field.rsplit(".", 1)[-1]
        if name in flags and message.startswith(f"{name} "):
            message = flags[name] + message[len(name) :]
    # name=value anywhere; a bare name only when it is an identifier (has an underscore), not an English word.
    message = re.sub(r"\b([a-z][a-z0-9_]*)=('?[^\s,;:)']+'?)", word, message)
    return re.sub(r"(?<![-\w])([a-z][a-z0-9]*_[a-z0-9_]+)\b(?!=)()", word, message)


# ---- options shared by the training commands ---------------------------------------------------------------------


def add_data(p: argparse.ArgumentParser, data_help: str, image_default: str = "the model card's") -> None:
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--image-size", type=int, help=f"input (crop) size (default: {image_default})")
    p.add_argument(
        "--resize-size", type=int, help="evaluation Resize of the shorter side before the crop (default: the card's)"
    )
    p.add_argument(
        "--workers", type=int, help="decoding processes for folder/csv/arrayrecord data (default: cores - 1, max 16)"
    )


def add_training(p: argparse.ArgumentParser, data_help: str) -> None:
    add_data(p, data_help)
    p.add_argument("--epochs", type=int, help="passes over the training data (default 5)")
    p.add_argument("--steps", type=int, help="optimizer steps instead of --epochs")
    p.add_argument("--batch-size", type=int, default=32, help="global batch size, all devices (default 32)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate, after --warmup-steps (default 1e-3)")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw", help="(default adamw)")
    p.add_argument("--momentum", type=float, default=0.9, help="sgd momentum (default 0.9)")
    p.add_argument("--nesterov", action="store_true", help="sgd with Nesterov momentum")
    p.add_argument("--weight-decay", type=float, default=0.0, help="(default 0; trainable parameters only)")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up from 0 (default 0)")
    p.add_argument(
        "--schedule",
        choices=("cosine", "constant"),
        default="cosine",
        help="learning rate after the warm-up: cosine decay to 0 at the last step, or constant (default cosine)",
    )
    p.add_argument("--clip-norm", type=float, help="clip the global gradient norm of the trainable parameters")
    p.add_argument("--workdir", required=True, help="run directory: metrics, resumable checkpoints, the result")
    p.add_argument(
        "--parallel",
        choices=("auto", "pmap", "shard_map", "none"),
        default="auto",
        help="data-parallel wrapper; auto: pmap over all devices when there are several, else none (default auto)",
    )
    p.add_argument("--seed", type=int, default=0, help="order, augmentation, new head and split (default 0)")
    p.add_argument(
        "--accumulate",
        type=int,
        default=1,
        metavar="N",
        help="average the gradients of N batches into one optimizer step: an effective batch of N x --batch-size "
        "(--steps counts batches, --warmup-steps optimizer steps; the run's batches must be a multiple of N) "
        "(default 1)",
    )
    p.add_argument(
        "--no-tensorboard",
        action="store_true",
        help="write no TensorBoard event files (default: WORKDIR/tensorboard; view with tensorboard --logdir WORKDIR)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    p.add_argument(
        "--allow-changed-run",
        action="store_true",
        help="continue a --workdir whose run had other options or data (default: refused, saying what changed)",
    )


def _optimizer(a: argparse.Namespace) -> Optimizer:
    return Optimizer(
        name=a.optimizer,
        lr=a.lr,
        momentum=a.momentum,
        nesterov=a.nesterov,
        weight_decay=a.weight_decay,
        warmup_steps=a.warmup_steps,
        schedule=a.schedule,
        clip_norm=a.clip_norm,
    )


def _loop(a: argparse.Namespace) -> Loop:
    epochs = a.epochs if a.epochs is not None or a.steps is not None else 5
    return Loop(
        batch_size=a.batch_size,
        epochs=epochs,
        steps=a.steps,
        seed=a.seed,
        parallel=a.parallel,
        accumulate=a.accumulate,
    )


def class_weights_arg(text: str) -> str | tuple[float, ...]:
    """``--class-weights``: ``balanced`` or one number per class, separated by commas."""
    if text.strip() == "balanced":
        return "balanced"
    try:
        return tuple(float(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'balanced' or one number per class separated by commas (e.g. 1,2.5,1), got {text!r}"
        ) from None


def _input(a: argparse.Namespace, augment: str = "none") -> Input:
    return Input(image_size=a.image_size, resize_size=a.resize_size, workers=a.workers, augment=augment)


# ---- per command ---------------------------------------------------------------------------------------------------


def add_finetune(p: argparse.ArgumentParser, data_help: str) -> None:
    p.add_argument(
        "--freeze",
        choices=tuple(FREEZE),
        default="backbone",
        help="backbone: train a new head on the frozen backbone; none: train everything; linear-probe: a head on "
        "features computed once (the fastest; no --augment) (default backbone)",
    )
    p.add_argument("--backbone-lr-scale", type=float, default=1.0, help="--freeze none: backbone lr = lr * this")
    p.add_argument(
        "--layer-decay",
        type=float,
        help="--freeze none: layer-wise lr decay, each layer at this times the rate of the one above (e.g. 0.75)",
    )
    p.add_argument("--labels-per-class", type=int, help="train on only N labeled examples per class")
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="stratified held-out part, never trained on, evaluated at the end (default 0.2; 0: train on all)",
    )
    p.add_argument(
        "--augment",
        nargs="?",
        const="auto",
        default="none",
        choices=AUGMENT_CHOICES,
        help="training augmentation: auto (bare --augment) = RandomResizedCrop + flip for folder/csv/arrayrecord "
        "data, random crop + flip for digits/npz; or rrc, flip, crop-flip (default none)",
    )
    p.add_argument(
        "--label-smoothing",
        type=float,
        default=0.0,
        help="target (1 - S) * onehot + S / classes, as torch's CrossEntropyLoss (default 0)",
    )
    p.add_argument(
        "--class-weights",
        type=class_weights_arg,
        metavar="balanced|W1,W2,...",
        help="weigh each class's loss: balanced (n / (classes x count) over the training split) or one weight per "
        "class; the mean divides by the weight sum, as torch (default: none)",
    )
    p.add_argument(
        "--mixup",
        dest="mixup_alpha",
        type=float,
        default=0.0,
        metavar="ALPHA",
        help="mixup on the device, torchvision's v2.MixUp: lam ~ Beta(ALPHA, ALPHA) per batch, soft targets "
        "(0.2 in torchvision's recipes; default 0: off)",
    )
    p.add_argument(
        "--cutmix",
        dest="cutmix_alpha",
        type=float,
        default=0.0,
        metavar="ALPHA",
        help="cutmix on the device, torchvision's v2.CutMix (1.0 in torchvision's recipes; with --mixup one of the "
        "two per batch; default 0: off)",
    )
    p.add_argument(
        "--ema",
        nargs="?",
        type=float,
        const=EMA.decay,
        metavar="DECAY",
        help=f"keep a weight average (BatchNorm statistics included), evaluated and saved beside the model as "
        f"WORKDIR/classifier_ema; bare --ema: decay {EMA.decay} with warm-up min(decay, (1 + n) / (10 + n)) "
        "(default: off)",
    )
    p.add_argument(
        "--ema-every", type=int, default=1, metavar="N", help="update the average every N optimizer steps (default 1)"
    )
    p.add_argument(
        "--early-stopping",
        dest="patience",
        type=int,
        metavar="PATIENCE",
        help="stop once PATIENCE held-out evaluations in a row did not improve --stopping-metric, and keep the best "
        "evaluation's model (needs --test-fraction > 0; default: off)",
    )
    p.add_argument(
        "--reduce-lr-on-plateau",
        dest="reduce_patience",
        type=int,
        metavar="PATIENCE",
        help="multiply the learning rate by --reduce-lr-factor after more than PATIENCE held-out evaluations without "
        "improvement (torch's ReduceLROnPlateau; default: off)",
    )
    p.add_argument("--reduce-lr-factor", dest="reduce_factor", type=float, default=0.1, help="(default 0.1)")
    p.add_argument(
        "--stopping-metric",
        choices=STOP_METRICS,
        default="loss",
        help="what --early-stopping and --reduce-lr-on-plateau watch: the held-out loss (lower is better) or top1 / "
        "top5 (higher is better) (default loss)",
    )
    p.add_argument(
        "--min-delta", type=float, default=0.0, help="an evaluation improves when it beats the best by more (default 0)"
    )
    p.add_argument(
        "--no-restore-best",
        dest="restore_best",
        action="store_false",
        help="--early-stopping: keep the last model, not the best evaluation's (default: the best is kept)",
    )
    p.add_argument(
        "--eval-every",
        type=int,
        metavar="N",
        help="with --early-stopping/--reduce-lr-on-plateau: evaluate the held-out split every N batches (default: "
        "every epoch)",
    )
    p.add_argument("--dtype", choices=("float32", "bfloat16"), help="compute dtype (default: the weights' card)")
    p.add_argument(
        "--no-feature-cache",
        action="store_true",
        help="--freeze backbone without --augment: run the frozen backbone every step instead of computing its "
        "features once (same results to float rounding; slower)",
    )
    add_training(p, data_help)


def _stopping(a: argparse.Namespace) -> Stopping | None:
    if a.patience is None and a.reduce_patience is None:
        return None
    return Stopping(
        metric=a.stopping_metric,
        patience=a.patience,
        min_delta=a.min_delta,
        restore_best=a.restore_best,
        reduce_patience=a.reduce_patience,
        reduce_factor=a.reduce_factor,
    )


def _check_companions(a: argparse.Namespace) -> None:
    # A flag that only tunes another one is an error without it, not silently ignored.
    stopping = a.patience is not None or a.reduce_patience is not None
    either = "--early-stopping or --reduce-lr-on-plateau"
    tuned = [
        (a.ema is None and a.ema_every != 1, "--ema-every", "--ema"),
        (not stopping and a.stopping_metric != "loss", "--stopping-metric", either),
        (not stopping and a.min_delta != 0.0, "--min-delta", either),
        (not stopping and a.eval_every is not None, "--eval-every", either),
        (a.reduce_patience is None and a.reduce_factor != 0.1, "--reduce-lr-factor", "--reduce-lr-on-plateau"),
        (a.patience is None and not a.restore_best, "--no-restore-best", "--early-stopping"),
    ]
    for bad, flag, needs in tuned:
        if bad:
            raise ConfigError(f"{flag} tunes {needs}, which is not given", flag)


def finetune_config(a: argparse.Namespace) -> FinetuneConfig:
    """The :class:`FinetuneConfig` of ``jaxtl finetune``'s options."""
    _check_companions(a)
    ema = None if a.ema is None else EMA(decay=a.ema, every=a.ema_every)
    loop = dataclasses.replace(_loop(a), ema=ema, stopping=_stopping(a), eval_every=a.eval_every)
    return FinetuneConfig(
        mode=FREEZE[a.freeze],
        optimizer=_optimizer(a),
        loop=loop,
        input=_input(a, a.augment),
        split=Split(test_fraction=a.test_fraction, labels_per_class=a.labels_per_class),
        backbone_lr_scale=a.backbone_lr_scale,
        layer_decay=a.layer_decay,
        dtype=a.dtype,
        feature_cache=False if a.no_feature_cache else None,
        regularization=Regularization(
            label_smoothing=a.label_smoothing,
            class_weights=a.class_weights,
            mixup_alpha=a.mixup_alpha,
            cutmix_alpha=a.cutmix_alpha,
        ),
    )


def add_pretrain(p: argparse.ArgumentParser, data_help: str, archs: list[str]) -> None:
    p.add_argument("--arch", choices=archs, default="convnet_small", help="encoder (default convnet_small)")
    p.add_argument(
        "--torch-weights", metavar="PATH", help="start the encoder from torchvision weights (.pth/.safetensors)"
    )
    p.add_argument("--denoise", metavar="SPEC", help="corrupt the input: noise:STD or mask:RATIO[:PATCH]")
    p.add_argument("--channels", type=int, choices=(1, 3), default=3, help="image channels (default 3)")
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.0,
        help="leave out the stratified held-out part a later `finetune --test-fraction F --seed S` evaluates on, "
        "so pretraining never sees it (labeled data; default 0: pretrain on everything)",
    )
    add_training(p, data_help)


def pretrain_config(a: argparse.Namespace) -> PretrainConfig:
    """The :class:`PretrainConfig` of ``jaxtl pretrain``'s options."""
    return PretrainConfig(
        arch=a.arch,
        channels=a.channels,
        denoise=a.denoise,
        optimizer=_optimizer(a),
        loop=_loop(a),
        input=_input(a),
        split=Split(test_fraction=a.test_fraction),
    )


def evaluate_config(a: argparse.Namespace) -> EvaluateConfig:
    """The :class:`EvaluateConfig` of ``jaxtl evaluate``'s options."""
    return EvaluateConfig(split=a.split, batch_size=a.batch_size, input=_input(a), report=a.report)


def convert_config(a: argparse.Namespace) -> ConvertConfig:
    """The :class:`ConvertConfig` of ``jaxtl convert``'s options."""
    return ConvertConfig(
        arch=a.arch, num_classes=a.num_classes, seed=a.seed, prefix=a.prefix, entry=a.entry, safetensors=a.safetensors
    )
