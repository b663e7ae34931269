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
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    import flax.linen as nn

    from jaxtl.data.dataset import ArrayDataset


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
    from jaxtl.train.checkpoint import save_variables

    if a.num_classes is not None and a.num_classes < 0:
        raise UsageError(f"--num-classes must be >= 0, got {a.num_classes}")
    out = Path(a.out)
    if out.exists() and not a.overwrite:
        raise UsageError(f"{out} already exists; pass --overwrite to replace it")
    if a.safetensors and Path(a.safetensors).exists() and not a.overwrite:
        raise UsageError(f"{a.safetensors} already exists; pass --overwrite to replace it")
    result = from_torchvision(
        a.src, arch=a.arch, num_classes=a.num_classes, seed=a.seed, prefix=a.prefix, entry=a.entry
    )
    rep = result.report
    for note in rep.notes:
        print(f"{a.src}: {note}")
    assert rep.arch is not None
    meta = {
        "source": str(a.src),
        "source_num_classes": rep.source_num_classes,
        "fc_reinitialized": rep.fc_reinitialized,
    }
    if rep.fc_reinitialized:
        meta["seed"] = a.seed
    save_variables(
        out, result.variables, arch=rep.arch, num_classes=rep.num_classes, metadata=meta, overwrite=a.overwrite
    )
    if a.safetensors:
        save_flax_safetensors(result.variables, a.safetensors)
    head = (
        f"new {rep.num_classes}-class fc (seed {a.seed})"
        if rep.fc_reinitialized
        else ("no fc (backbone)" if rep.num_classes == 0 else f"fc {rep.num_classes} classes")
    )
    extra = f" and {a.safetensors}" if a.safetensors else ""
    print(f"converted {a.src} -> {out}{extra}: {rep.arch}, {rep.param_elements:,} params, {head}")
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
    try:
        module, variables, card = load_model(weights=a.weights, checkpoint=a.checkpoint, arch=a.arch)
        preds = predict(a.images, module, variables, card, top_k=a.top_k)
    except ValueError as e:  # BridgeError and CheckpointError are ValueErrors too
        raise UsageError(str(e)) from None
    if a.json:
        print(json.dumps({"model": card.source or card.arch, "predictions": [p.to_dict() for p in preds]}, indent=2))
        return 0
    for p in preds:
        print(p.source)
        for name, prob, _ in p.top:
            print(f"  {prob:8.4f}  {name}")
    return 0


# ---- shared: data specs, checkpoints -------------------------------------------------------------------------------

DATA_HELP = "digits | folder:DIR (DIR/<class>/<image>) | npz:FILE (keys images, labels)"


def load_data(spec: str, size: int, channels: int = 3, labeled: bool = True) -> ArrayDataset:
    """The dataset named by ``spec`` (``digits``, ``folder:DIR``, ``npz:FILE``) at ``size x size``, in ``[0, 1]``.

    A bad spec, a missing path or an unreadable file is a :class:`UsageError` naming it.
    """
    from jaxtl.data import load_digits, load_image_folder, load_npz

    kind, _, arg = spec.partition(":")
    try:
        if spec == "digits":
            return load_digits(size=size, channels=channels)
        if kind == "folder" and arg:
            return load_image_folder(arg, size=size, channels=channels)
        if kind == "npz" and arg:
            ds = load_npz(arg, labels_key="labels" if labeled else None)
            if ds.images.shape[1:3] != (size, size) or ds.images.shape[3] != channels:
                raise ValueError(
                    f"npz file {arg!r} holds images of shape {ds.images.shape[1:]}, expected {(size, size, channels)} "
                    "(set --image-size to match)"
                )
            return ds
    except ValueError as e:
        raise UsageError(f"--data {spec}: {e}") from None
    raise UsageError(f"--data {spec!r} is not a data spec; expected {DATA_HELP}")


def _positive(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise UsageError(f"{name} must be > 0, got {value}")


def _common_train_args(p: argparse.ArgumentParser) -> None:
    from jaxtl.distributed import add_arguments

    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--epochs", type=int, default=5, help="passes over the training data (default 5)")
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
    p.add_argument("--image-size", type=int, help="input size (default: the architecture's registry input size)")
    p.add_argument("--workdir", required=True, help="run directory: metrics, resumable checkpoints, the result")
    p.add_argument(
        "--parallel",
        choices=("auto", "pmap", "shard_map", "none"),
        default="auto",
        help="data-parallel wrapper; auto (default): pmap over all devices when there are several, else none",
    )
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
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
    if a.momentum < 0 or a.weight_decay < 0 or a.warmup_steps < 0:
        raise UsageError("--momentum, --weight-decay and --warmup-steps must be >= 0")
    if a.clip_norm is not None and not a.clip_norm > 0:
        raise UsageError(f"--clip-norm must be > 0, got {a.clip_norm}")
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


def _resolve_parallel(parallel: str) -> str:
    import jax

    if parallel != "auto":
        return parallel
    return "pmap" if jax.device_count() > 1 else "none"


def _check_train_args(a: argparse.Namespace) -> None:
    for name in ("epochs", "batch_size", "lr", "image_size"):
        _positive("--" + name.replace("_", "-"), getattr(a, name))


def _normalization(arch: str, channels: int) -> dict[str, list[float]]:
    from jaxtl.transfer import normalization_stats

    mean, std = normalization_stats(arch, channels)
    return {"mean": list(mean), "std": list(std)}


def _normalized(ds: ArrayDataset, norm: dict[str, list[float]] | None) -> ArrayDataset:
    from jaxtl.data import ArrayDataset, normalize

    if not norm:
        return ds
    if len(norm["mean"]) != ds.images.shape[-1]:
        raise UsageError(
            f"the model expects {len(norm['mean'])}-channel input, the data has {ds.images.shape[-1]} channels"
        )
    return ArrayDataset(normalize(ds.images, norm["mean"], norm["std"]), ds.labels, ds.num_classes, ds.class_names)


# ---- pretrain ------------------------------------------------------------------------------------------------------


def _pretrain_args(p: argparse.ArgumentParser) -> None:
    from jaxtl.models import list_models

    p.add_argument("--arch", choices=list_models(), default="convnet_small", help="encoder (default convnet_small)")
    p.add_argument("--torch-weights", metavar="PATH", help="start the encoder from torchvision weights (resnets)")
    p.add_argument("--denoise", metavar="SPEC", help="corrupt the input: noise:STD or mask:RATIO[:PATCH]")
    p.add_argument("--channels", type=int, choices=(1, 3), default=3, help="image channels (default 3)")
    _common_train_args(p)


def _pretrain(a: argparse.Namespace) -> int:
    from pathlib import Path

    from jaxtl.distributed import initialize_from_args, is_main_process

    initialize_from_args(a)
    _setup_compile_cache(a)
    a.parallel = _resolve_parallel(a.parallel)
    import jaxtl
    from jaxtl.models import get_spec
    from jaxtl.train.checkpoint import save_variables
    from jaxtl.transfer import encoder_variables, parse_denoise, pretrain_autoencoder

    _check_train_args(a)
    try:
        denoise = parse_denoise(a.denoise)
    except ValueError as e:
        raise UsageError(f"--denoise: {e}") from None
    spec = get_spec(a.arch)
    size = a.image_size or spec.input_size
    variables = None
    if a.torch_weights:
        if spec.family != "resnet":
            raise UsageError(f"--torch-weights needs a resnet-family --arch, got {a.arch}")
        if a.channels != 3:
            raise UsageError("--torch-weights needs --channels 3 (torchvision models take RGB)")
        from jaxtl.bridge import from_torchvision

        _, variables = from_torchvision(a.torch_weights, arch=a.arch, num_classes=0)
    # Inputs are normalised with the registry mean/std (what torchvision weights expect); the decoder then
    # reconstructs the normalised image with a linear output.
    norm = _normalization(a.arch, a.channels)
    data = _normalized(load_data(a.data, size, a.channels, labeled=False), norm)
    encoder = jaxtl.create(a.arch, num_classes=0)
    workdir = Path(a.workdir)
    _, ae_vars, hist = pretrain_autoencoder(
        encoder,
        data,
        epochs=a.epochs,
        batch_size=min(a.batch_size, len(data)),
        lr=a.lr,
        optimizer=_optimizer(a),
        denoise=denoise,
        sigmoid_output=False,
        workdir=workdir / "run",
        seed=a.seed,
        parallel=a.parallel,
        variables=variables,
        progress=not a.no_progress and is_main_process(),
    )
    losses = [h["loss"] for h in hist if h.get("split") == "train"]
    if is_main_process():
        meta = {
            "kind": "encoder",
            "normalization": norm,
            "image_size": size,
            "channels": a.channels,
            "data": a.data,
            "denoise": a.denoise,
            "steps": len(losses),
            "train_mse_first": losses[0],
            "train_mse_last": losses[-1],
            "torch_weights": a.torch_weights,
        }
        out = save_variables(
            workdir / "encoder", encoder_variables(ae_vars), arch=a.arch, num_classes=0, metadata=meta, overwrite=True
        )
        print(f"pretrained {a.arch} autoencoder: mse {losses[0]:.4f} -> {losses[-1]:.4f}; encoder -> {out}")
    return 0


# ---- finetune ------------------------------------------------------------------------------------------------------

FREEZE = {"backbone": "frozen", "none": "full", "linear-probe": "linear_probe"}


def _finetune_args(p: argparse.ArgumentParser) -> None:
    from jaxtl.models import list_models

    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--torch-weights", metavar="PATH", help="torchvision weights (.pth/.safetensors) to start from")
    src.add_argument("--init", metavar="CKPT_DIR", help="a jaxtl checkpoint: from 'jaxtl convert' or 'jaxtl pretrain'")
    p.add_argument("--arch", choices=list_models("resnet"), help="architecture of --torch-weights (default: inferred)")
    p.add_argument("--freeze", choices=tuple(FREEZE), default="backbone", help="what to freeze (default backbone)")
    p.add_argument("--backbone-lr-scale", type=float, default=1.0, help="--freeze none: backbone lr = lr * this")
    p.add_argument("--labels-per-class", type=int, help="train on only N labeled examples per class")
    p.add_argument("--test-fraction", type=float, default=0.2, help="held-out stratified test split (default 0.2)")
    p.add_argument("--augment", action="store_true", help="random crop + flip (not with --freeze linear-probe)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype")
    _common_train_args(p)


def _load_init(path: str) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    import jax.numpy as jnp

    from jaxtl.train.checkpoint import load_variables, read_metadata

    # A classifier fine-tuned in bfloat16 is evaluated in the dtype it was trained in.
    dtype = jnp.bfloat16 if read_metadata(path).get("metadata", {}).get("dtype") == "bfloat16" else jnp.float32
    module, variables, meta = load_variables(path, dtype=dtype)
    return module, variables, meta


def _finetune(a: argparse.Namespace) -> int:
    from pathlib import Path

    from jaxtl.distributed import initialize_from_args, is_main_process

    initialize_from_args(a)
    _setup_compile_cache(a)
    a.parallel = _resolve_parallel(a.parallel)
    import jax
    import jax.numpy as jnp

    from jaxtl.data import labeled_unlabeled_split, train_test_split
    from jaxtl.models import get_spec
    from jaxtl.train.checkpoint import save_variables
    from jaxtl.transfer import build_classifier, evaluate_classifier, finetune

    _check_train_args(a)
    _positive("--backbone-lr-scale", a.backbone_lr_scale)
    if not 0 < a.test_fraction < 1:
        raise UsageError(f"--test-fraction must lie in (0, 1), got {a.test_fraction}")
    _positive("--labels-per-class", a.labels_per_class)
    if a.augment and a.freeze == "linear-probe":
        raise UsageError("--augment cannot be used with --freeze linear-probe (features are computed once)")
    if a.init:
        module, variables, meta = _load_init(a.init)
        arch = meta["arch"]
        if a.arch and a.arch != arch:
            raise UsageError(f"--arch {a.arch} does not match {a.init}, which holds {arch}")
        info = meta.get("metadata", {})
        channels = int(info.get("channels", 3))
        norm = info.get("normalization") or _normalization(arch, channels)
        size = a.image_size or int(info.get("image_size", get_spec(arch).input_size))
        source = str(a.init)
    else:
        from jaxtl.bridge import from_torchvision

        conversion = from_torchvision(a.torch_weights, arch=a.arch)
        module, variables = conversion
        assert conversion.report.arch is not None
        arch = conversion.report.arch
        channels = 3
        norm = _normalization(arch, channels)
        size = a.image_size or get_spec(arch).input_size
        source = str(a.torch_weights)
    data = _normalized(load_data(a.data, size, channels), norm)
    if data.labels is None:
        raise UsageError(f"--data {a.data} has no labels; finetune needs labeled data")
    try:
        train, test = train_test_split(data, a.test_fraction, a.seed)
        if a.labels_per_class:
            train, _ = labeled_unlabeled_split(train, a.labels_per_class, a.seed)
    except ValueError as e:
        raise UsageError(f"--data {a.data}: {e}") from None
    batch_size = min(a.batch_size, len(train))
    clf, variables = build_classifier((module, variables), data.num_classes, jax.random.PRNGKey(a.seed), None)
    if a.dtype == "bfloat16":
        clf = clf.clone(dtype=jnp.bfloat16)
    variables, _ = finetune(
        clf,
        variables,
        train,
        mode=FREEZE[a.freeze],
        backbone_lr_scale=a.backbone_lr_scale,
        epochs=a.epochs,
        batch_size=batch_size,
        lr=a.lr,
        optimizer=_optimizer(a),
        augment=a.augment,
        workdir=Path(a.workdir) / "run",
        seed=a.seed,
        parallel=a.parallel,
        progress=not a.no_progress and is_main_process(),
    )
    metrics = evaluate_classifier(clf, variables, test)
    if is_main_process():
        meta = {
            "kind": "classifier",
            "source": source,
            "normalization": norm,
            "image_size": size,
            "channels": channels,
            "class_names": list(data.class_names),
            "data": a.data,
            "split": {"test_fraction": a.test_fraction, "seed": a.seed, "labels_per_class": a.labels_per_class},
            "freeze": a.freeze,
            "dtype": a.dtype,
            "test": metrics,
        }
        out = save_variables(
            Path(a.workdir) / "classifier",
            variables,
            arch=arch,
            num_classes=data.num_classes,
            metadata=meta,
            overwrite=True,
        )
        print(
            f"fine-tuned {arch} (--freeze {a.freeze}) on {len(train)} images; held-out {metrics['n']}: "
            f"top-1 {100 * metrics['top1']:.2f}%, top-5 {100 * metrics['top5']:.2f}%, loss {metrics['loss']:.4f}; "
            f"classifier -> {out}"
        )
    return 0


# ---- evaluate ------------------------------------------------------------------------------------------------------


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("ckpt", metavar="CKPT_DIR", help="a classifier checkpoint (e.g. WORKDIR/classifier of finetune)")
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument(
        "--split", choices=("all", "test"), default="all", help="all images, or finetune's held-out test split"
    )
    p.add_argument("--image-size", type=int, help="input size (default: the checkpoint's)")
    p.add_argument("--batch-size", type=int, default=256, help="default 256")
    _compile_cache_args(p)


def _evaluate(a: argparse.Namespace) -> int:
    from jaxtl.data import train_test_split
    from jaxtl.transfer import evaluate_classifier

    _positive("--batch-size", a.batch_size)
    _positive("--image-size", a.image_size)
    _setup_compile_cache(a)
    module, variables, meta = _load_init(a.ckpt)
    if int(meta["num_classes"]) < 1:
        raise UsageError(f"{a.ckpt} holds a backbone without classifier head (num_classes=0); fine-tune it first")
    info = meta.get("metadata", {})
    channels = int(info.get("channels", 3))
    size = a.image_size or int(info.get("image_size", 0)) or _spec_size(meta["arch"])
    data = _normalized(load_data(a.data, size, channels), info.get("normalization"))
    if data.labels is None:
        raise UsageError(f"--data {a.data} has no labels to evaluate against")
    if data.num_classes > int(meta["num_classes"]):
        raise UsageError(f"--data {a.data} has {data.num_classes} classes, the classifier {meta['num_classes']}")
    if a.split == "test":
        split = info.get("split")
        if not split:
            raise UsageError(f"{a.ckpt} records no held-out split (not written by 'jaxtl finetune'); use --split all")
        _, data = train_test_split(data, float(split["test_fraction"]), int(split["seed"]))
    m = evaluate_classifier(module, variables, data, a.batch_size)
    print(f"{a.ckpt} on {a.data} ({a.split}, {m['n']} images):")
    print(f"top-1: {100 * m['top1']:.2f}%  top-5: {100 * m['top5']:.2f}%  loss: {m['loss']:.4f}")
    return 0


def _spec_size(arch: str) -> int:
    from jaxtl.models import get_spec

    return get_spec(arch).input_size


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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (``--help`` prints and returns 0)."""
    import jaxtl

    jaxtl.tune_cpu()  # before anything starts jax's backend: XLA reads its flags once
    from jaxtl.bridge import BridgeError
    from jaxtl.train.checkpoint import CheckpointError

    try:
        args = build_parser().parse_args(argv)
        return int(args._run(args))
    except SystemExit as e:  # --help / --version
        return e.code if isinstance(e.code, int) else 0
    except (UsageError, BridgeError, CheckpointError, OSError) as e:
        print(f"jaxtl: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
