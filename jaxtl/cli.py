"""The ``jaxtl`` command line: parses options into a config and calls the library, nothing more.

Each subcommand is a :class:`Command` (name, help, a function adding its options, a function running it) in
``COMMANDS``. ``main(argv)`` returns the exit code: 0 on success, 2 on bad input or an expected failure (one line
``jaxtl: error: ...`` on stderr, never a traceback: any :class:`~jaxtl.errors.JaxtlError`, or an ``OSError``),
128 + the signal when SIGINT/SIGTERM stopped a run cleanly, 1 for a bug (traceback, then one line).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import jaxtl.cli_options as opts
import jaxtl.cli_tools as tools
from jaxtl.cli_options import UsageError, archs, data_help
from jaxtl.errors import JaxtlError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, no usage dump: scripts grep for "jaxtl: error:".
        raise UsageError(f"{message} (see '{self.prog} --help')")


class _SubcommandParser(_Parser):
    """A subcommand's parser: it rejects unknown options itself, so the error names ``jaxtl <command> --help``."""

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


def _main_process() -> bool:
    from jaxtl.distributed import is_main_process

    return is_main_process()


# ---- pretrain, finetune, evaluate ----------------------------------------------------------------------------------


def _compile_cache_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--compile-cache",
        metavar="DIR",
        help="JAX's persistent compilation cache, reused by later runs (default: one already configured, else "
        "$JAXTL_COMPILE_CACHE or ~/.cache/jaxtl/xla; JAXTL_COMPILE_CACHE=0 turns it off)",
    )
    p.add_argument("--no-compile-cache", action="store_true", help="compile from scratch, store nothing")


def _training_args(add: Callable[..., None]) -> Callable[[argparse.ArgumentParser], None]:
    def adder(p: argparse.ArgumentParser) -> None:
        from jaxtl.distributed import add_arguments

        add(p)
        _compile_cache_args(p)
        add_arguments(p)

    return adder


def _setup_compile_cache(a: argparse.Namespace) -> None:
    """An explicit --compile-cache must work; the default one is a convenience and only warns when it cannot."""
    from jaxtl.compile_cache import enable_compile_cache

    if a.no_compile_cache:
        if a.compile_cache:
            raise UsageError("give --compile-cache DIR or --no-compile-cache, not both")
        enable_compile_cache(False)  # the library's runs would otherwise turn the default one on
        return
    try:
        enable_compile_cache(a.compile_cache, replace=a.compile_cache is not None)  # an explicit DIR wins
    except OSError as e:
        if a.compile_cache:
            raise UsageError(f"--compile-cache: {e}") from None
        print(f"jaxtl: warning: running without a compile cache ({e})", file=sys.stderr)


def _start(a: argparse.Namespace) -> bool:
    """What every training command does first: jax.distributed (if asked), the compile cache. Returns whether
    this process shows progress."""
    from jaxtl.distributed import initialize_from_args

    initialize_from_args(a)
    _setup_compile_cache(a)
    return not a.no_progress and _main_process()


def _pretrain(a: argparse.Namespace) -> int:
    from jaxtl.recipes import pretrain

    config = opts.pretrain_config(a)  # options checked before jax starts
    progress = _start(a)
    init = None
    if a.torch_weights:
        from jaxtl.models import get_spec

        if not get_spec(a.arch).torchvision:
            raise UsageError(
                f"--torch-weights needs a torchvision --arch (resnet50, vit_b_16, ...); {a.arch} has no "
                "torchvision weights"
            )
        if a.channels != 3:
            raise UsageError("--torch-weights needs --channels 3 (torchvision models take RGB)")
        from jaxtl.bridge import pretrained

        init = pretrained(a.arch, a.torch_weights, num_classes=0)
    result = pretrain(
        config,
        a.data,
        init=init,
        workdir=a.workdir,
        progress=progress,
        allow_changes=a.allow_changed_run,
        tensorboard=not a.no_tensorboard,
    )
    if _main_process():
        x = result.card.extra if result.card is not None else {}
        print(
            f"pretrained {a.arch} as an autoencoder's encoder: mse {x['train_mse_first']:.4f} -> "
            f"{x['train_mse_last']:.4f}; encoder -> {result.path}"
        )
    return 0


def _finetune_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--weights",
        metavar="NAME",
        help="torchvision weights by name (resnet50.IMAGENET1K_V2, vit_b_16.IMAGENET1K_V1, ...; torch's hub cache)",
    )
    src.add_argument("--torch-weights", metavar="PATH", help="torchvision weights file (.pth/.safetensors)")
    src.add_argument("--init", metavar="DIR", help="a jaxtl model directory: from convert, pretrain or finetune")
    p.add_argument("--arch", choices=archs(), help="architecture of --weights/--torch-weights (default: inferred)")
    opts.add_finetune(p, data_help())


def _load_model(a: argparse.Namespace, progress: bool) -> Any:
    if a.init:
        from jaxtl.train.model_files import load_variables

        model = load_variables(a.init)
        if a.arch and a.arch != model[2].arch:
            raise UsageError(f"--arch {a.arch} does not match {a.init}, which holds {model[2].arch}")
        return model
    from jaxtl.bridge import pretrained

    return pretrained(a.arch, a.weights or a.torch_weights, progress=progress)


def _finetune(a: argparse.Namespace) -> int:
    from jaxtl.recipes import finetune

    config = opts.finetune_config(a)
    progress = _start(a)
    result = finetune(
        config,
        _load_model(a, progress),
        a.data,
        workdir=a.workdir,
        progress=progress,
        allow_changes=a.allow_changed_run,
        tensorboard=not a.no_tensorboard,
    )
    if _main_process():
        m = result.metrics
        held = "nothing held out"
        if m:
            top5 = f", top-5 {100 * m['top5']:.2f}%" if "top5" in m else ""
            held = f"held-out {m['n']}: top-1 {100 * m['top1']:.2f}%{top5}, loss {m['loss']:.4f}"
            if "ema_top1" in m:
                held += f"; EMA top-1 {100 * m['ema_top1']:.2f}%, loss {m['ema_loss']:.4f}"
        arch = result.card.arch if result.card is not None else "model"
        what = f"fine-tuned {arch} (--freeze {a.freeze}) on {result.train_size} images"
        stop = next((r for r in result.history if r.get("split") == "stopped"), None)
        if stop is not None:
            kept = f", step {stop['best_step']}'s model kept" if stop["restored"] else ""
            what += f", stopped early at step {stop['step']}{kept}"
        saved = f"classifier -> {result.path}"
        if result.path is not None and a.ema is not None:
            saved += f" (EMA -> {result.path.parent / 'classifier_ema'})"
        print(f"{what}; {held}; {saved}")
    return 0


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("ckpt", metavar="DIR", help="a classifier directory (e.g. WORKDIR/classifier of finetune)")
    opts.add_data(p, data_help())
    p.add_argument(
        "--split",
        choices=("all", "test"),
        default="all",
        help="all images, or the held-out images finetune recorded (refused if the data lacks them) (default all)",
    )
    p.add_argument("--batch-size", type=int, default=256, help="(default 256)")
    p.add_argument(
        "--report",
        action="store_true",
        help="per-class precision/recall/F1/support, the confusion matrix and the worst-classified images: printed, "
        "or with --workdir written to WORKDIR/report (report.json, confusion.png)",
    )
    p.add_argument("--workdir", help="also write the metrics to WORKDIR/evaluation.json (and --report's files)")
    _compile_cache_args(p)


def _evaluate(a: argparse.Namespace) -> int:
    from jaxtl.recipes import evaluate

    config = opts.evaluate_config(a)
    _setup_compile_cache(a)
    m = evaluate(config, a.ckpt, a.data, workdir=a.workdir)
    print(f"{a.ckpt} on {a.data} ({a.split}, {m['n']} images):")
    top5 = f"  top-5: {100 * m['top5']:.2f}%" if "top5" in m else ""
    print(f"top-1: {100 * m['top1']:.2f}%{top5}  loss: {m['loss']:.4f}")
    report = m.get("report")
    if report is not None and a.workdir:
        print(f"per-class report -> {os.path.join(a.workdir, 'report')} (report.json, confusion.png)")
    elif report is not None:
        print(f"\n{report.text()}")
    return 0


COMMANDS: list[Command] = [
    Command("convert", "convert torchvision weights to a jaxtl model directory", tools.convert_args, tools.run_convert),
    Command(
        "inspect",
        "describe weights or a jaxtl model: architecture, sizes, problems",
        tools.inspect_args,
        tools.run_inspect,
    ),
    Command("predict", "classify images: top-k class names with probabilities", tools.predict_args, tools.run_predict),
    Command(
        "pretrain",
        "pretrain an autoencoder on unlabeled images; writes an encoder",
        _training_args(lambda p: opts.add_pretrain(p, data_help(), archs())),
        _pretrain,
    ),
    Command(
        "finetune",
        "fine-tune a pretrained backbone on labeled images; writes a classifier",
        _training_args(_finetune_args),
        _finetune,
    ),
    Command("evaluate", "evaluate a classifier: top-1, top-5, loss", _evaluate_args, _evaluate),
    Command(
        "pack",
        "write an image folder as ArrayRecord shards (then --data arrayrecord:OUT)",
        tools.pack_args,
        tools.run_pack,
    ),
    Command(
        "demo", "pretrain -> transfer -> few-label fine-tuning on digits, measured", tools.demo_args, tools.run_demo
    ),
]


def build_parser() -> argparse.ArgumentParser:
    """The parser with every command in ``COMMANDS`` as a subcommand."""
    from jaxtl._version import __version__

    parser = _Parser(prog="jaxtl", description="Transfer learning in JAX.")
    parser.add_argument("--version", action="version", version=f"jaxtl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_SubcommandParser)
    sub.required = True
    for c in COMMANDS:
        sp = sub.add_parser(c.name, help=c.help, description=c.help)
        c.add_arguments(sp)
        sp.set_defaults(_run=c.run, _parser=sp)
    return parser


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _warning_printer(parser: argparse.ArgumentParser) -> Callable[..., None]:
    def show(
        message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None
    ) -> None:
        # One line per warning, no source line: a user reads what happened, not where in jaxtl it was noticed.
        print(f"jaxtl: warning: {_one_line(opts.flag_words(str(message), parser))}", file=file or sys.stderr)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    from jaxtl._cpu_tuning import tune_cpu

    tune_cpu()  # before anything starts jax's backend: XLA reads its flags once
    from jaxtl.lifecycle import RunInterrupted

    parser = build_parser()
    args = None
    try:
        with warnings.catch_warnings():
            # The command line shows warnings once each, as one line (its own filters, whatever the caller's).
            warnings.simplefilter("default")
            warnings.showwarning = _warning_printer(parser)
            args = parser.parse_args(argv)
            warnings.showwarning = _warning_printer(args._parser)
            return int(args._run(args))
    except SystemExit as e:  # --help / --version
        return e.code if isinstance(e.code, int) else 0
    except RunInterrupted as e:
        print(f"jaxtl: {_one_line(e)}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("jaxtl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `jaxtl predict ... | head`: the reader has all it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except (JaxtlError, OSError) as e:
        text = e.args[0] if isinstance(e, KeyError) and e.args else e
        sub = getattr(args, "_parser", None) or parser
        field = getattr(e, "field", None)
        print(f"jaxtl: error: {_one_line(opts.flag_words(str(text), sub, field))}", file=sys.stderr)
        return 2
    except Exception as e:
        import traceback

        traceback.print_exc()
        print(
            f"jaxtl: internal error (a bug in jaxtl, please report it with the traceback above): {_one_line(e)}",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
