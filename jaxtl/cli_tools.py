"""The ``jaxtl`` commands that convert, describe, predict, pack and demonstrate (the training commands are in
:mod:`jaxtl.cli`): each a function adding its options and one running it, nothing but parsing and printing."""

from __future__ import annotations

import argparse
import os
import sys

import jaxtl.cli_options as opts
from jaxtl.cli_options import UsageError, archs

# ---- convert, inspect ------------------------------------------------------------------------------------------------

WEIGHTS_FILES = ".pth/.pt (a state dict or a training checkpoint) or .safetensors (torchvision's or jaxtl's)"


def location_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prefix", help="key prefix of the model in the state dict, removed ('' = none; default: detected)")
    p.add_argument("--entry", help="checkpoint entry holding the state dict (e.g. model_ema; default: as found)")


def convert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="SRC", help=f"torchvision weights: {WEIGHTS_FILES}")
    p.add_argument("out", metavar="OUT", help="model directory to write (variables + model card)")
    p.add_argument("--arch", choices=archs(), help="architecture (default: inferred from the weights)")
    p.add_argument("--num-classes", type=int, help="a new head of N classes (0: backbone only; default: keep the head)")
    p.add_argument("--seed", type=int, default=0, help="seed of a new head (default 0)")
    p.add_argument("--safetensors", metavar="PATH", help="also write the variables as a Flax-layout .safetensors")
    p.add_argument(
        "--overwrite", action="store_true", help="replace outputs jaxtl wrote before (never a file of yours)"
    )
    location_args(p)


def run_convert(a: argparse.Namespace) -> int:
    from jaxtl.recipes import convert

    result = convert(a.src, a.out, opts.convert_config(a), overwrite=a.overwrite)
    rep = result.report
    for note in rep.notes:
        print(f"{a.src}: {note}")
    n = result.card.num_classes if result.card is not None else 0
    if rep.fc_reinitialized and n:
        head = f"new {n}-class head (seed {a.seed})"
    else:
        head = "no head (backbone)" if n == 0 else f"head of {n} classes"
    also = f" and {a.safetensors}" if a.safetensors else ""
    print(f"converted {a.src} -> {a.out}{also}: {rep.arch}, {result.param_count:,} params, {head}")
    return 0


def inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="SRC", help=f"weights ({WEIGHTS_FILES}) or a jaxtl model directory")
    location_args(p)


def inspect_saved(path: str) -> int:
    import jax
    import numpy as np

    from jaxtl.train.model_files import load_variables

    _, variables, card = load_variables(path)
    params = jax.tree.leaves(variables["params"])
    stats = jax.tree.leaves(variables.get("batch_stats", {}))
    pre = card.preprocessing
    print(f"source:        {path}")
    print(f"layout:        jaxtl model directory ({card.kind})")
    print(f"architecture:  {card.arch}")
    print(f"params:        {len(params)} tensors, {sum(int(np.size(x)) for x in params):,} elements")
    print(f"batch stats:   {len(stats)} tensors, {sum(int(np.size(x)) for x in stats):,} elements")
    print(f"head:          {f'{card.num_classes} classes' if card.num_classes else 'none (backbone)'}")
    print(f"eval input:    resize {pre.resize_size}, crop {pre.crop_size}, {pre.interpolation}, mean {pre.mean}")
    print(f"weights from:  {card.source or 'unknown'}")
    return 0


def run_inspect(a: argparse.Namespace) -> int:
    from jaxtl.bridge import inspect_state_dict

    if os.path.isdir(a.src):
        return inspect_saved(a.src)
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
    head = f"{rep.fc_shape} (num_classes={rep.source_num_classes})" if rep.fc_shape else "none (backbone)"
    print(f"head:          {head}")
    if rep.card:
        pre, names = rep.card.get("preprocessing", {}), rep.card.get("class_names") or []
        card = rep.card
        print(f"model card:    {card.get('kind')}, {card.get('num_classes')} classes, source {card.get('source')}")
        print(
            f"eval input:    resize {pre.get('resize_size')}, crop {pre.get('crop_size')}, {pre.get('interpolation')}, "
            f"mean {pre.get('mean')}, std {pre.get('std')}"
        )
        if names:
            print(f"classes:       {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}")
    print(f"problems:      {len(rep.problems) or 'none'}")
    for problem in rep.problems:
        print(f"  - {problem}")
    return 0


# ---- predict -------------------------------------------------------------------------------------------------------


def predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--weights",
        metavar="NAME|PATH",
        help="torchvision weights: resnet50.IMAGENET1K_V2, ResNet50_Weights.DEFAULT, ... (through torch's hub cache, "
        "$TORCH_HOME), or a .pth/.safetensors file",
    )
    src.add_argument("--checkpoint", metavar="DIR", help="a jaxtl classifier directory (convert/finetune output)")
    p.add_argument("--arch", choices=archs(), help="architecture of --weights (default: from the name or the keys)")
    p.add_argument("--top-k", type=int, default=5, help="classes shown per image (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")


def run_predict(a: argparse.Namespace) -> int:
    from jaxtl.predict import load_model, predict, write_predictions

    if a.top_k < 1:
        raise UsageError(f"--top-k must be >= 1, got {a.top_k}")
    module, variables, card = load_model(weights=a.weights, checkpoint=a.checkpoint, arch=a.arch)
    preds = predict(a.images, module, variables, card, top_k=a.top_k)
    # The checkpoint given is what the user knows the model by; weights by name or file: the card's source.
    write_predictions(preds, str(a.checkpoint or card.source or card.arch), as_json=a.json)
    failed = [p for p in preds if p.error is not None]
    if failed:
        names = ", ".join(p.source for p in failed[:5]) + (" ..." if len(failed) > 5 else "")
        print(f"jaxtl: error: {len(failed)} of {len(preds)} images could not be read: {names}", file=sys.stderr)
        for p in failed:
            print(f"jaxtl:   {p.source}: {p.error}", file=sys.stderr)
        return 2
    return 0


# ---- pack, demo ----------------------------------------------------------------------------------------------------


def pack_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="DIR", help="image folder DIR/<class>/<image> (torchvision ImageFolder layout)")
    p.add_argument("out", metavar="OUT", help="pack directory to write: ArrayRecord shards + jaxtl_pack.json")
    p.add_argument("--num-shards", type=int, help="number of shards (default: one per 10,000 images)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT when it holds a pack jaxtl wrote")


def run_pack(a: argparse.Namespace) -> int:
    from jaxtl.data import pack_image_folder

    r = pack_image_folder(a.src, a.out, num_shards=a.num_shards, overwrite=a.overwrite)
    print(
        f"packed {r.num_records} images of {len(r.class_names)} classes from {a.src} -> {r.out}: "
        f"{len(r.shards)} shard(s), {r.num_bytes / 2**20:.1f} MiB; train with --data arrayrecord:{a.out}"
    )
    return 0


def demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    p.add_argument("--quick", action="store_true", help="a few seconds of training (a smoke run; numbers meaningless)")
    p.add_argument("--seeds", type=int, help="seeds per arm and label count (default 3; 1 with --quick)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_demo(a: argparse.Namespace) -> int:
    from jaxtl.demo import DemoConfig, run_demo

    overrides = {}
    if a.seeds is not None:
        if a.seeds < 1:
            raise UsageError(f"--seeds must be >= 1, got {a.seeds}")
        overrides["seeds"] = a.seeds
    cfg = DemoConfig.quick(**overrides) if a.quick else DemoConfig(**overrides)
    run_demo(a.out, config=cfg, progress=not a.no_progress)
    return 0
