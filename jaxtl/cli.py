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
from typing import NoReturn


class UsageError(Exception):
    """Bad input found while running a command; reported as ``jaxtl: error: <message>`` with exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, no usage dump: scripts grep for "jaxtl: error:".
        raise UsageError(f"{message} (see '{self.prog} --help')")


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
    result = from_torchvision(a.src, arch=a.arch, num_classes=a.num_classes, seed=a.seed)
    rep = result.report
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
    p.add_argument("src", metavar="SRC", help="torchvision weights: .pth/.pt (state dict) or .safetensors")


def _inspect(a: argparse.Namespace) -> int:
    from jaxtl.bridge import inspect_state_dict, load_state_dict

    sd = load_state_dict(a.src)
    rep = inspect_state_dict(sd)
    fc = sd.get("fc.weight")
    print(f"source:        {a.src}")
    print(f"architecture:  {rep.arch or 'unknown'}")
    print(f"params:        {rep.param_tensors} tensors, {rep.param_elements:,} elements")
    print(f"batch stats:   {rep.stat_tensors} tensors, {rep.stat_elements:,} elements")
    fc_text = f"{list(fc.shape)} (num_classes={rep.source_num_classes})" if fc is not None else "none (backbone)"
    print(f"fc:            {fc_text}")
    problems = rep.problems
    print(f"problems:      {len(problems) or 'none'}")
    for p in problems:
        print(f"  - {p}")
    return 0


COMMANDS: list[Command] = [
    Command("convert", "convert torchvision weights to a jaxtl checkpoint", _convert_args, _convert),
    Command("inspect", "describe torchvision weights: architecture, sizes, problems", _inspect_args, _inspect),
]


def build_parser() -> argparse.ArgumentParser:
    """The parser with every command in ``COMMANDS`` as a subcommand."""
    parser = _Parser(prog="jaxtl", description="Transfer learning in JAX.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for c in COMMANDS:
        sp = sub.add_parser(c.name, help=c.help, description=c.help)
        c.add_arguments(sp)
        sp.set_defaults(_run=c.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (``--help`` prints and returns 0)."""
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
