"""The ``jaxtl`` command line: parses options and calls library functions, nothing more.

Each subcommand is a :class:`Command` (name, help, a function adding its options, a function running it) in
``COMMANDS``; add one by appending to that list. ``main(argv)`` returns the exit code: 0 on success, 2 on bad input
(a one-line ``jaxtl: error: ...`` on stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn


class UsageError(Exception):
    """Bad input found while running a command; reported as ``jaxtl: error: <message>`` with exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, no usage dump: scripts grep for "jaxtl: error:".
        raise UsageError(f"{message} (see '{self.prog} --help')")


class _SubcommandParser(_Parser):
    """A subcommand's parser: it rejects unknown options itself, so the error names ``jaxtl <command> --help``.

    (argparse otherwise hands them back to the top-level parser, whose error points at ``jaxtl --help``.)
    """

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        ns, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return ns, []


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# ---- convert -------------------------------------------------------------------------------------------------------


def _convert_args(p: argparse.ArgumentParser) -> None:
    from jaxtl.models import list_models

    p.add_argument("src", metavar="SRC", help="torchvision weights: .pth/.pt (state dict) or .safetensors")
    p.add_argument("out", metavar="OUT", help="checkpoint directory to write (Orbax + jaxtl.json)")
    p.add_argument("--arch", choices=list_models("resnet"), help="architecture (default: inferred from the weights)")
    p.add_argument("--num-classes", type=int, help="new head size: drops the checkpoint's fc (0 = backbone only)")
    p.add_argument("--seed", type=int, default=0, help="seed of a new fc head (default 0)")
    p.add_argument("--safetensors", metavar="PATH", help="also write the variables as a Flax-layout .safetensors")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    _weights_location_args(p)


def _weights_location_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--prefix",
        help="key prefix of the ResNet in the state dict, removed (e.g. 'model.'; '' = none; default: detected)",
    )
    p.add_argument(
        "--entry",
        help="checkpoint entry holding the state dict (e.g. model_ema; default: state_dict, model, ... as found)",
    )


def _convert(a: argparse.Namespace) -> int:
    from pathlib import Path

    from jaxtl.bridge import from_torchvision, save_flax_safetensors
    from jaxtl.train.checkpoint import check_overwritable, save_variables

    if a.num_classes is not None and a.num_classes < 0:
        raise UsageError(f"--num-classes must be >= 0, got {a.num_classes}")
    out = Path(a.out)
    check_overwritable(out, a.overwrite, "OUT")
    if a.safetensors and Path(a.safetensors).exists() and not a.overwrite:
        raise UsageError(f"{a.safetensors} already exists; pass --overwrite to replace it")
    if a.safetensors and Path(a.safetensors).is_dir():
        raise UsageError(f"--safetensors {a.safetensors} is a directory")
    result = from_torchvision(
        a.src, arch=a.arch, num_classes=a.num_classes, seed=a.seed, prefix=a.prefix, entry=a.entry
    )
    rep = result.report
    for note in rep.notes:
        print(f"{a.src}: {note}")
    assert rep.arch is not None
    extra = {"source_num_classes": rep.source_num_classes, "fc_reinitialized": rep.fc_reinitialized}
    if rep.fc_reinitialized:
        extra["seed"] = a.seed
    card = result.card.replace(source=str(a.src), extra={**result.card.extra, **extra})
    save_variables(out, result.variables, card, overwrite=a.overwrite)
    if a.safetensors:
        save_flax_safetensors(result.variables, a.safetensors, card=card)
    head = (
        f"new {rep.num_classes}-class fc (seed {a.seed})"
        if rep.fc_reinitialized
        else ("no fc (backbone)" if rep.num_classes == 0 else f"fc {rep.num_classes} classes")
    )
    also = f" and {a.safetensors}" if a.safetensors else ""
    print(f"converted {a.src} -> {out}{also}: {rep.arch}, {rep.param_elements:,} params, {head}")
    return 0


# ---- inspect -------------------------------------------------------------------------------------------------------


def _inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "src",
        metavar="SRC",
        help="weights: .pth/.pt (state dict or training checkpoint), .safetensors (torch or jaxtl)",
    )
    _weights_location_args(p)


def _inspect(a: argparse.Namespace) -> int:
    from jaxtl.bridge import inspect_state_dict

    rep = inspect_state_dict(a.src, prefix=a.prefix, entry=a.entry)
    layout = "jaxtl Flax-layout .safetensors" if rep.layout == "jaxtl-flax" else "torchvision state dict"
    print(f"source:        {a.src}")
    print(f"layout:        {layout}")
    print(f"architecture:  {rep.arch or 'unknown'}")
    if rep.entry is not None:
        also = f" (also in the file: {', '.join(rep.alternatives)}; --entry to choose)" if rep.alternatives else ""
        print(f"unwrapped:     entry {rep.entry!r}{also}")
    if rep.prefix:
        print(f"prefix:        {rep.prefix!r} stripped ({'detected' if rep.prefix_detected else 'given'})")
    if rep.outside_prefix:
        print(
            f"left out:      {len(rep.outside_prefix)} key(s) outside the prefix: {', '.join(rep.outside_prefix[:5])}"
        )
    print(f"params:        {rep.param_tensors} tensors, {rep.param_elements:,} elements")
    print(f"batch stats:   {rep.stat_tensors} tensors, {rep.stat_elements:,} elements")
    fc_text = f"{rep.fc_shape} (num_classes={rep.source_num_classes})" if rep.fc_shape else "none (backbone)"
    print(f"fc:            {fc_text}")
    if rep.card:
        pre = rep.card.get("preprocessing", {})
        names = rep.card.get("class_names") or []
        card = rep.card
        print(f"model card:    {card.get('kind')}, {card.get('num_classes')} classes, source {card.get('source')}")
        print(
            f"eval input:    resize {pre.get('resize_size')}, crop {pre.get('crop_size')}, {pre.get('interpolation')}, "
            f"mean {pre.get('mean')}, std {pre.get('std')}"
        )
        if names:
            print(f"classes:       {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}")
    problems = rep.problems
    print(f"problems:      {len(problems) or 'none'}")
    for p in problems:
        print(f"  - {p}")
    return 0


# ---- predict -------------------------------------------------------------------------------------------------------


def _predict_args(p: argparse.ArgumentParser) -> None:
    from jaxtl.models import list_models

    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--weights",
        metavar="NAME|PATH",
        help="torchvision weights: resnet50.IMAGENET1K_V2, ResNet50_Weights.DEFAULT, ... (fetched through torch's "
        "hub cache, $TORCH_HOME), or a .pth/.safetensors file",
    )
    src.add_argument("--checkpoint", metavar="DIR", help="a jaxtl classifier checkpoint (convert/finetune output)")
    p.add_argument("--arch", choices=list_models("resnet"), help="architecture of --weights (default: from the name)")
    p.add_argument("--top-k", type=int, default=5, help="classes shown per image (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")


def _predict(a: argparse.Namespace) -> int:
    import json

    from jaxtl.predict import load_model, predict

    _positive("--top-k", a.top_k)
    module, variables, card = load_model(weights=a.weights, checkpoint=a.checkpoint, arch=a.arch)
    preds = predict(a.images, module, variables, card, top_k=a.top_k)
    if a.json:
        print(json.dumps({"model": card.source or card.arch, "predictions": [p.to_dict() for p in preds]}, indent=2))
        return 0
    for p in preds:
        print(p.source)
        for name, prob, _ in p.top:
            print(f"  {prob:8.4f}  {name}")
    return 0


# ---- shared: data, weights, training options -----------------------------------------------------------------------


def _data_help() -> str:
    from jaxtl.data import DATA_SPECS

    return DATA_SPECS


def _positive(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise UsageError(f"{name} must be > 0, got {value}")


def _nonnegative(name: str, value: float | None) -> None:
    if value is not None and not value >= 0:  # also refuses nan
        raise UsageError(f"{name} must be >= 0, got {value}")


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help=_data_help())
    p.add_argument("--image-size", type=int, help="input (crop) size (default: the model card's)")
    p.add_argument("--resize-size", type=int, help="eval Resize of the shorter side before the crop (streaming data)")
    p.add_argument("--workers", type=int, help="decoding worker processes for streaming data (default: from the cores)")


def _common_train_args(p: argparse.ArgumentParser) -> None:
    from jaxtl.distributed import add_arguments

    _data_args(p)
    p.add_argument("--epochs", type=int, default=5, help="passes over the training data (default 5)")
    p.add_argument("--steps", type=int, help="optimizer steps instead of --epochs")
    p.add_argument("--batch-size", type=int, default=32, help="global batch size (default 32)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate, cosine decay (default 1e-3)")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw", help="default adamw")
    p.add_argument("--momentum", type=float, default=0.9, help="sgd momentum (default 0.9)")
    p.add_argument("--nesterov", action="store_true", help="sgd with Nesterov momentum")
    p.add_argument("--weight-decay", type=float, default=0.0, help="default 0 (trainable params only)")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up steps (default 0)")
    p.add_argument(
        "--schedule", choices=("cosine", "constant"), default="cosine", help="after warm-up (default cosine)"
    )
    p.add_argument("--clip-norm", type=float, help="clip the global gradient norm of the trainable params")
    p.add_argument("--workdir", required=True, help="run directory: metrics, resumable checkpoints, the result")
    p.add_argument(
        "--parallel",
        choices=("auto", "pmap", "shard_map", "none"),
        default="auto",
        help="data-parallel wrapper; auto (default): pmap over all devices when there are several, else none",
    )
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    p.add_argument(
        "--allow-changed-run",
        action="store_true",
        help="resume a --workdir whose run had other options or data (default: refused, listing what differs)",
    )
    _compile_cache_args(p)
    add_arguments(p)


def _compile_cache_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--compile-cache",
        metavar="DIR",
        help="JAX's persistent compilation cache, reused by later runs (default: one already configured, else "
        "$JAXTL_COMPILE_CACHE or ~/.cache/jaxtl/xla)",
    )
    p.add_argument("--no-compile-cache", action="store_true", help="compile from scratch, store nothing")


def _setup_compile_cache(a: argparse.Namespace) -> None:
    """An explicit --compile-cache must work; the default one is a convenience and only warns when it cannot."""
    from jaxtl.compile_cache import enable_compile_cache

    if a.no_compile_cache:
        if a.compile_cache:
            raise UsageError("give --compile-cache DIR or --no-compile-cache, not both")
        return
    try:
        enable_compile_cache(a.compile_cache, replace=a.compile_cache is not None)  # an explicit DIR wins
    except OSError as e:
        if a.compile_cache:
            raise UsageError(f"--compile-cache: {e}") from None
        print(f"jaxtl: warning: running without a compile cache ({e})", file=sys.stderr)


def _optimizer(a: argparse.Namespace) -> dict[str, Any]:
    """make_optimizer's keyword arguments from the common training options (total_steps is filled in later)."""
    for name in ("momentum", "weight_decay", "warmup_steps"):
        _nonnegative("--" + name.replace("_", "-"), getattr(a, name))
    _positive("--clip-norm", a.clip_norm)
    return dict(
        name=a.optimizer,
        lr=a.lr,
        momentum=a.momentum,
        nesterov=a.nesterov,
        weight_decay=a.weight_decay,
        warmup_steps=a.warmup_steps,
        schedule=a.schedule,
        clip_norm=a.clip_norm,
    )


def _check_train_args(a: argparse.Namespace) -> None:
    import math

    for name in ("epochs", "steps", "batch_size", "lr", "image_size", "resize_size"):
        _positive("--" + name.replace("_", "-"), getattr(a, name))
    if not math.isfinite(a.lr):
        raise UsageError(f"--lr must be finite, got {a.lr}")
    _nonnegative("--workers", a.workers)


def _start(a: argparse.Namespace) -> None:
    """What every training command does first: jax.distributed (if asked), the compile cache, option checks."""
    from jaxtl.distributed import initialize_from_args

    _check_train_args(a)
    initialize_from_args(a)
    _setup_compile_cache(a)


def _show_progress(a: argparse.Namespace) -> bool:
    from jaxtl.distributed import is_main_process

    return not a.no_progress and is_main_process()


# ---- pretrain ------------------------------------------------------------------------------------------------------


def _pretrain_args(p: argparse.ArgumentParser) -> None:
    from jaxtl.models import list_models

    p.add_argument("--arch", choices=list_models(), default="convnet_small", help="encoder (default convnet_small)")
    p.add_argument("--torch-weights", metavar="PATH", help="start the encoder from torchvision weights (resnets)")
    p.add_argument("--denoise", metavar="SPEC", help="corrupt the input: noise:STD or mask:RATIO[:PATCH]")
    p.add_argument("--channels", type=int, choices=(1, 3), default=3, help="image channels (default 3)")
    _common_train_args(p)


def _pretrain(a: argparse.Namespace) -> int:
    from jaxtl.distributed import is_main_process
    from jaxtl.models import get_spec
    from jaxtl.transfer import parse_denoise, pretrain_encoder

    _start(a)
    try:
        denoise = parse_denoise(a.denoise)
    except ValueError as e:
        raise UsageError(f"--denoise: {e}") from None
    init = None
    if a.torch_weights:
        if get_spec(a.arch).family != "resnet":
            raise UsageError(f"--torch-weights needs a resnet-family --arch, got {a.arch}")
        if a.channels != 3:
            raise UsageError("--torch-weights needs --channels 3 (torchvision models take RGB)")
        from jaxtl.bridge import pretrained

        init = tuple(pretrained(a.arch, a.torch_weights, num_classes=0))
    result = pretrain_encoder(
        a.arch,
        a.data,
        init=init,  # type: ignore[arg-type]
        image_size=a.image_size,
        channels=a.channels,
        denoise=denoise,
        epochs=a.epochs,
        steps=a.steps,
        batch_size=a.batch_size,
        lr=a.lr,
        optimizer=_optimizer(a),
        seed=a.seed,
        parallel=a.parallel,
        workers=a.workers,
        workdir=a.workdir,
        progress=_show_progress(a),
        allow_changed_run=a.allow_changed_run,
    )
    if is_main_process():
        x = result.card.extra
        print(
            f"pretrained {a.arch} autoencoder: mse {x['train_mse_first']:.4f} -> {x['train_mse_last']:.4f}; "
            f"encoder -> {result.path}"
        )
    return 0


# ---- finetune ------------------------------------------------------------------------------------------------------

FREEZE = {"backbone": "frozen", "none": "full", "linear-probe": "linear_probe"}


def _finetune_args(p: argparse.ArgumentParser) -> None:
    from jaxtl.models import list_models
    from jaxtl.transfer import AUGMENT_CHOICES

    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--weights",
        metavar="NAME",
        help="torchvision weights by name (resnet50.IMAGENET1K_V2, ...; through torch's hub cache, $TORCH_HOME)",
    )
    src.add_argument(
        "--torch-weights", metavar="PATH", help="torchvision weights file (.pth/.safetensors) to start from"
    )
    src.add_argument("--init", metavar="CKPT_DIR", help="a jaxtl checkpoint: from 'jaxtl convert' or 'jaxtl pretrain'")
    p.add_argument("--arch", choices=list_models("resnet"), help="architecture of --weights/--torch-weights")
    p.add_argument("--freeze", choices=tuple(FREEZE), default="backbone", help="what to freeze (default backbone)")
    p.add_argument("--backbone-lr-scale", type=float, default=1.0, help="--freeze none: backbone lr = lr * this")
    p.add_argument("--labels-per-class", type=int, help="train on only N labeled examples per class")
    p.add_argument("--test-fraction", type=float, default=0.2, help="held-out stratified test split (default 0.2)")
    p.add_argument(
        "--augment",
        nargs="?",
        const="auto",
        default="none",
        choices=AUGMENT_CHOICES,
        help="training augmentation: auto (bare --augment) = RandomResizedCrop + flip for folder/csv/arrayrecord "
        "data, random crop + flip for digits/npz; or rrc, flip, crop-flip (default none)",
    )
    p.add_argument("--dtype", choices=("float32", "bfloat16"), help="compute dtype (default: the weights' card)")
    p.add_argument(
        "--no-feature-cache",
        action="store_true",
        help="--freeze backbone without --augment: run the frozen backbone every step instead of computing its "
        "features once (same results to float rounding; slower)",
    )
    _common_train_args(p)


def _load_model(a: argparse.Namespace) -> tuple[Any, ...]:
    from jaxtl.train.checkpoint import load_variables

    if a.init:
        module, variables, card = load_variables(a.init)
        if a.arch and a.arch != card.arch:
            raise UsageError(f"--arch {a.arch} does not match {a.init}, which holds {card.arch}")
        return module, variables, card
    from jaxtl.bridge import pretrained

    weights = a.weights or a.torch_weights
    return tuple(pretrained(a.arch, weights, progress=_show_progress(a)))


def _finetune(a: argparse.Namespace) -> int:
    from jaxtl.distributed import is_main_process
    from jaxtl.transfer import finetune_classifier

    _start(a)
    _positive("--backbone-lr-scale", a.backbone_lr_scale)
    _positive("--labels-per-class", a.labels_per_class)
    if not 0 < a.test_fraction < 1:
        raise UsageError(f"--test-fraction must lie in (0, 1), got {a.test_fraction}")
    if a.augment != "none" and a.freeze == "linear-probe":
        raise UsageError("--augment cannot be used with --freeze linear-probe (features are computed once)")
    result = finetune_classifier(
        _load_model(a),  # type: ignore[arg-type]
        a.data,
        mode=FREEZE[a.freeze],
        test_fraction=a.test_fraction,
        labels_per_class=a.labels_per_class,
        epochs=a.epochs,
        steps=a.steps,
        batch_size=a.batch_size,
        lr=a.lr,
        optimizer=_optimizer(a),
        backbone_lr_scale=a.backbone_lr_scale,
        feature_cache=False if a.no_feature_cache else None,
        augment=a.augment,
        workers=a.workers,
        image_size=a.image_size,
        dtype=a.dtype,
        seed=a.seed,
        parallel=a.parallel,
        workdir=a.workdir,
        progress=_show_progress(a),
        allow_changed_run=a.allow_changed_run,
    )
    if is_main_process():
        m = result.metrics
        print(
            f"fine-tuned {result.card.arch} (--freeze {a.freeze}) on {result.train_size} images; held-out {m['n']}: "
            f"top-1 {100 * m['top1']:.2f}%, top-5 {100 * m['top5']:.2f}%, loss {m['loss']:.4f}; "
            f"classifier -> {result.path}"
        )
    return 0


# ---- evaluate ------------------------------------------------------------------------------------------------------


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("ckpt", metavar="CKPT_DIR", help="a classifier checkpoint (e.g. WORKDIR/classifier of finetune)")
    _data_args(p)
    p.add_argument(
        "--split", choices=("all", "test"), default="all", help="all images, or finetune's held-out test split"
    )
    p.add_argument("--batch-size", type=int, default=256, help="default 256")
    _compile_cache_args(p)


def _evaluate(a: argparse.Namespace) -> int:
    from jaxtl.transfer import evaluate_checkpoint

    for name in ("batch_size", "image_size", "resize_size"):
        _positive("--" + name.replace("_", "-"), getattr(a, name))
    _nonnegative("--workers", a.workers)
    _setup_compile_cache(a)
    m = evaluate_checkpoint(
        a.ckpt, a.data, split=a.split, batch_size=a.batch_size, image_size=a.image_size, workers=a.workers
    )
    print(f"{a.ckpt} on {a.data} ({a.split}, {m['n']} images):")
    print(f"top-1: {100 * m['top1']:.2f}%  top-5: {100 * m['top5']:.2f}%  loss: {m['loss']:.4f}")
    return 0


# ---- pack ----------------------------------------------------------------------------------------------------------


def _pack_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="DIR", help="image folder DIR/<class>/<image> (torchvision ImageFolder layout)")
    p.add_argument("out", metavar="OUT", help="pack directory to write: ArrayRecord shards + jaxtl_pack.json")
    p.add_argument("--num-shards", type=int, help="number of shards (default: one per 10,000 images)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT when it holds an earlier pack")


def _pack(a: argparse.Namespace) -> int:
    from jaxtl.data import pack_image_folder

    r = pack_image_folder(a.src, a.out, num_shards=a.num_shards, overwrite=a.overwrite)
    print(
        f"packed {r.num_records} images of {len(r.class_names)} classes from {a.src} -> {r.out}: "
        f"{len(r.shards)} shard(s), {r.num_bytes / 2**20:.1f} MiB; train with --data arrayrecord:{r.out}"
    )
    return 0


# ---- demo ----------------------------------------------------------------------------------------------------------


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    p.add_argument("--quick", action="store_true", help="a few seconds of training (a smoke run; numbers meaningless)")
    p.add_argument("--seeds", type=int, help="seeds per arm and label count (default 3; 1 with --quick)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _demo(a: argparse.Namespace) -> int:
    from jaxtl.demo import DemoConfig, run_demo

    overrides = {}
    if a.seeds is not None:
        if a.seeds < 1:
            raise UsageError(f"--seeds must be >= 1, got {a.seeds}")
        overrides["seeds"] = a.seeds
    cfg = DemoConfig.quick(**overrides) if a.quick else DemoConfig(**overrides)
    run_demo(a.out, config=cfg, progress=not a.no_progress)
    return 0


COMMANDS: list[Command] = [
    Command("convert", "convert torchvision weights to a jaxtl checkpoint", _convert_args, _convert),
    Command("inspect", "describe torchvision weights: architecture, sizes, problems", _inspect_args, _inspect),
    Command("predict", "classify images: top-k class names with probabilities", _predict_args, _predict),
    Command(
        "pretrain",
        "pretrain an autoencoder on unlabeled images; writes an encoder checkpoint",
        _pretrain_args,
        _pretrain,
    ),
    Command(
        "finetune", "fine-tune a pretrained backbone on labeled images; writes a classifier", _finetune_args, _finetune
    ),
    Command("evaluate", "evaluate a classifier checkpoint: top-1, top-5, loss", _evaluate_args, _evaluate),
    Command("pack", "write an image folder as ArrayRecord shards (then --data arrayrecord:OUT)", _pack_args, _pack),
    Command("demo", "pretrain -> transfer -> few-label fine-tuning on digits, measured", _demo_args, _demo),
]


def build_parser() -> argparse.ArgumentParser:
    """The parser with every command in ``COMMANDS`` as a subcommand."""
    parser = _Parser(prog="jaxtl", description="Transfer learning in JAX.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_SubcommandParser)
    sub.required = True
    for c in COMMANDS:
        sp = sub.add_parser(c.name, help=c.help, description=c.help)
        c.add_arguments(sp)
        sp.set_defaults(_run=c.run)
    return parser


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _raised_in_jaxtl(e: BaseException) -> bool:
    """Whether ``e`` was raised by jaxtl's own code (the innermost frame of its traceback is in jaxtl or its bridge)."""
    import pathlib

    import jaxtl
    import jaxtl.bridge

    own = (pathlib.Path(jaxtl.__file__).parent, pathlib.Path(jaxtl.bridge.__file__).parent)
    tb, filename = e.__traceback__, None
    while tb is not None:
        filename, tb = tb.tb_frame.f_code.co_filename, tb.tb_next
    return filename is not None and any(pathlib.Path(filename).resolve().is_relative_to(d.resolve()) for d in own)


def _expected_failure(e: BaseException, expected: tuple[type[BaseException], ...]) -> bool:
    """Bad input or an expected failure (one line, exit 2) rather than a bug (traceback, exit 1).

    ``expected`` classes count wherever they come from (a missing file is an ``OSError`` from any library); a
    ``ValueError`` or ``KeyError`` only when jaxtl's own checks raised it (``BridgeError``, ``CheckpointError``,
    ``ModelCardError`` and the input checks are ValueErrors). The same types raised inside jax, flax or numpy mean
    jaxtl passed them something it should have checked first: a bug, shown with its traceback.
    """
    if isinstance(e, expected):
        return True
    return isinstance(e, (ValueError, KeyError)) and _raised_in_jaxtl(e)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code.

    0: success (``--help`` included). 2: bad input or an expected failure (a missing or damaged file, a wrong option,
    a non-finite loss, a locked or mismatched work directory, a full disk): one line ``jaxtl: error: ...`` on
    stderr. 130/143: stopped by SIGINT/SIGTERM after saving a checkpoint. 1: a bug (traceback, then one line).
    """
    import jaxtl

    jaxtl.tune_cpu()  # before anything starts jax's backend: XLA reads its flags once
    from jaxtl.train.fit import NonFiniteLossError, RunInterrupted

    try:
        args = build_parser().parse_args(argv)
        return int(args._run(args))
    except SystemExit as e:  # --help / --version
        return e.code if isinstance(e.code, int) else 0
    except RunInterrupted as e:
        print(f"jaxtl: {_one_line(e)}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("jaxtl: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if _expected_failure(e, (UsageError, OSError, NonFiniteLossError)):
            text = e.args[0] if isinstance(e, KeyError) and e.args else e
            print(f"jaxtl: error: {_one_line(text)}", file=sys.stderr)
            return 2
        import traceback

        traceback.print_exc()
        print(
            f"jaxtl: internal error (a bug in jaxtl, please report it with the traceback above): {_one_line(e)}",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
