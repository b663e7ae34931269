"""Fine-tuning resnet18 from an image folder, end to end, jaxtl vs PyTorch: ``python -m benchmarks.folder_finetune``.

One generated JPEG folder (:func:`benchmarks.data_pipeline.make_folder`), one random torchvision resnet18 saved
to a ``.pth`` (nothing downloaded), and per mode (``frozen``: only the new head trains, the backbone runs
BatchNorm on running averages; ``full``: everything trains) whole runs of:

- ``jaxtl``: what a user calls, ``jaxtl.pretrained(path)`` then
  ``jaxtl.finetune(FinetuneConfig(..., input=Input(augment="rrc")), model, "folder:DIR")`` (the route of
  ``jaxtl finetune --data folder:DIR --augment rrc``): grain workers decode, RandomResizedCrop + flip; a
  stratified 80/20 split, ``--epochs`` epochs, evaluation on the held-out part.
- ``torch``: the loop a PyTorch user writes (:func:`benchmarks.torch_ref.folder_finetune`): ``ImageFolder`` +
  ``DataLoader(num_workers, persistent_workers)`` + v2 transforms, the same split, SGD, evaluation.
- ``jaxtl warm`` (``--warm``): the same call run again as a user re-runs a script: JAX's persistent compilation
  cache and the converted-weights cache (both on by default) hold what a first, untimed run put there.
- ``jaxtl CLI`` (``--cli``): ``jaxtl finetune`` itself, which also saves checkpoints and the classifier.

Same image size, batch, epochs, worker count, optimizer (SGD with momentum, constant learning rate) and split on
every side. Each run is a fresh process (imports, weight loading, worker start, compilation, training and
evaluation all count: the ``jaxtl`` row converts the weights afresh and compiles with no compilation cache,
``JAXTL_COMPILE_CACHE=0``); the sides take turns, never overlapping, over ``--repeats`` rounds. ``wall_s`` is the
median process wall time, ``images_per_s`` the training images (steps x batch) over it, ``ratio`` jaxtl's wall time
over torch's (< 1: jaxtl is faster).

Every jaxtl library run records its start-up profile (:func:`jaxtl.train.record_timings`: the interpreter and
imports, loading the weights, listing the data, the new head, each compile, the first batch, evaluation, stopping
the workers, and the exit measured from outside); the medians over the rounds are printed and kept in the JSON
(``profile`` of each side).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import jaxtl  # at the top, as a user's script has it (cheap: its names load on first use)
from benchmarks import common

MODES = ("frozen", "full")
FREEZE = {"frozen": "backbone", "full": "none"}  # jaxtl finetune --freeze
CLI = "jaxtl CLI"
WARM = "jaxtl warm"
EXIT = "exit (interpreter teardown, seen from outside)"


def _worker_env() -> dict[str, str]:
    """This environment without fake-device flags (tests set them): each side sees the machine as a user's
    process does, one CPU device."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags)
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _run_options(args: argparse.Namespace) -> list[str]:
    return [
        "--image-size",
        str(args.image_size),
        "--batch-size",
        str(args.batch_size),
        "--epochs",
        str(args.epochs),
        "--workers",
        str(args.workers),
        "--lr",
        str(args.lr),
        "--momentum",
        str(args.momentum),
        "--test-fraction",
        str(args.test_fraction),
    ]


def jaxtl_worker(args: argparse.Namespace) -> dict[str, Any]:
    """One whole jaxtl run in this process, as a user's script does it (``tune_cpu`` first, as the README says),
    with its start-up profile."""
    origin = common.process_start()
    from jaxtl.train.timings import Timings, mark, phase, record_timings

    timings = Timings(origin)
    with record_timings(timings):
        common.prepare_backend("cpu")
        import jax

        jax.devices()
        mark("python start, imports, jax backend", origin)
        t0 = time.perf_counter()
        with phase("weights: read + convert" if not args.worker_warm else "weights: from the converted cache"):
            model = jaxtl.pretrained("resnet18", args.weights, use_cache=args.worker_warm, progress=False)
        config = jaxtl.FinetuneConfig(
            mode=args.worker_mode,
            optimizer=jaxtl.Optimizer("sgd", lr=args.lr, momentum=args.momentum, schedule="constant"),
            loop=jaxtl.Loop(batch_size=args.batch_size, epochs=args.epochs),
            input=jaxtl.Input(image_size=args.image_size, workers=args.workers, augment="rrc"),
            split=jaxtl.Split(test_fraction=args.test_fraction),
        )
        with phase("finetune (whole call)"):
            res = jaxtl.finetune(config, model, f"folder:{args.folder}", progress=False)
    train = [r for r in res.history if r.get("split") == "train"]
    steps = max(int(r["step"]) for r in train)
    rates = [float(r["images_per_s"]) for r in train if r["batch"]]  # the first of an epoch waits for workers
    return {
        "run_s": time.perf_counter() - t0,
        "steps": steps,
        "train_images": steps * args.batch_size,
        "test_images": int(res.metrics["n"]),
        "top1": float(res.metrics["top1"]),
        "step_images_per_s": statistics.median(rates) if rates else None,
        "profile": timings.to_dict(),
        "elapsed_s": time.perf_counter() - origin,
    }


def torch_worker(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks import torch_ref

    torch_ref.setup(args.threads, "cpu")
    t0 = time.perf_counter()
    out = torch_ref.folder_finetune(
        folder=args.folder,
        weights=args.weights,
        mode=args.worker_mode,
        size=args.image_size,
        batch=args.batch_size,
        epochs=args.epochs,
        workers=args.workers,
        lr=args.lr,
        momentum=args.momentum,
        test_fraction=args.test_fraction,
        seed=0,
    )
    return {"run_s": time.perf_counter() - t0, **out}


def _run_side(
    args: argparse.Namespace, side: str, mode: str, folder: pathlib.Path, weights: pathlib.Path, caches: pathlib.Path
) -> dict[str, Any]:
    """One whole run of ``side`` in a fresh process; its record plus ``wall_s`` (process start to exit).

    ``jaxtl`` compiles and converts afresh; ``jaxtl warm`` uses the compilation and weights caches in ``caches``
    (the library's defaults, pointed at a folder of this benchmark)."""
    env = _worker_env()
    env["JAXTL_COMPILE_CACHE"] = str(caches / "xla") if side == WARM else "0"
    env["JAXTL_WEIGHTS_CACHE"] = str(caches / "weights")
    t0 = time.perf_counter()
    if side == CLI:
        with tempfile.TemporaryDirectory(prefix="jaxtl-folder-ft-") as tmp:
            env["JAXTL_WEIGHTS_CACHE"] = os.path.join(tmp, "weights")  # converted afresh, like the library row
            cmd = [sys.executable, "-m", "jaxtl.cli", "finetune", "--torch-weights", str(weights), "--arch"]
            cmd += ["resnet18", "--data", f"folder:{folder}", "--augment", "rrc", "--freeze", FREEZE[mode]]
            cmd += ["--optimizer", "sgd", "--schedule", "constant", "--workdir", os.path.join(tmp, "run")]
            cmd += [*_run_options(args), "--no-progress", "--no-compile-cache"]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
            wall = time.perf_counter() - t0
        if proc.returncode:
            raise SystemExit(f"{side} {mode} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        train = args.train_images_per_epoch // args.batch_size * args.batch_size * args.epochs
        return {"wall_s": wall, "train_images": train, "output": proc.stdout.strip().splitlines()[-1:]}
    worker = "torch" if side == "torch" else "jaxtl"
    extra = ["--worker", worker, "--worker-mode", mode, "--folder", str(folder), "--weights", str(weights)]
    extra += [*_run_options(args), "--threads", str(args.threads), *(["--worker-warm"] if side == WARM else [])]
    rec = common.run_worker("benchmarks.folder_finetune", extra, what=f"{side} {mode} run", env=env)
    rec["wall_s"] = time.perf_counter() - t0
    if "elapsed_s" in rec:
        rec["profile"]["phases"].append({"name": EXIT, "start_s": rec["elapsed_s"], "end_s": rec["wall_s"]})
    return rec


def _profile(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each phase's median start, end and seconds over the runs (phases in the last run's start order); a phase
    that ran more than once in a run is summed, at its first start and last end."""
    per_run: list[dict[str, tuple[float, float, float]]] = []
    for r in runs:
        phases: dict[str, tuple[float, float, float]] = {}
        for p in r["profile"]["phases"]:
            start, end = float(p["start_s"]), float(p["end_s"])
            if p["name"] in phases:
                s0, e0, d0 = phases[p["name"]]
                phases[p["name"]] = (min(s0, start), max(e0, end), d0 + end - start)
            else:
                phases[p["name"]] = (start, end, end - start)
        per_run.append(phases)
    names = sorted(per_run[-1], key=lambda n: per_run[-1][n][0])
    out = []
    for name in names:
        got = [p[name] for p in per_run if name in p]
        out.append(
            {
                "phase": name,
                "start_s": statistics.median(g[0] for g in got),
                "end_s": statistics.median(g[1] for g in got),
                "s": statistics.median(g[2] for g in got),
            }
        )
    return out


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    walls = [r["wall_s"] for r in runs]
    s = common.summarize(walls)
    out: dict[str, Any] = {"wall": s, "wall_s": s["median_s"], "samples_s": walls}
    out["train_images"] = runs[0]["train_images"]
    out["images_per_s"] = out["train_images"] / s["median_s"]
    if "run_s" in runs[0]:
        out["run_s"] = statistics.median(r["run_s"] for r in runs)
    rates = [r["step_images_per_s"] for r in runs if r.get("step_images_per_s")]
    if rates:
        out["step_images_per_s"] = statistics.median(rates)  # steady training rate, start-up excluded
    if all("profile" in r for r in runs):
        out["profile"] = _profile(runs)
        out["jax"] = runs[-1]["profile"]["jax"]
    for key in ("steps", "test_images", "top1", "output"):
        if key in runs[-1]:
            out[key] = runs[-1][key]
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=512, help="JPEGs in the generated folder, 10 classes (512)")
    p.add_argument("--image-size", type=int, default=112, help="RandomResizedCrop / eval crop size (112)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--workers", type=int, default=None, help="data-loading worker processes a side (1; smoke: 0)")
    p.add_argument("--lr", type=float, default=0.01, help="SGD learning rate, constant (0.01)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--test-fraction", type=float, default=0.2, help="held-out stratified split (0.2, as the CLI)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--repeats", type=int, default=2, help="rounds, the sides' order alternating (2)")
    p.add_argument("--cli", action="store_true", help="another row: the jaxtl finetune command itself")
    p.add_argument("--warm", action="store_true", help="another row: jaxtl re-run with its caches warm (default on)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    p.add_argument("--min-side", type=int, default=256, help="generated image sides lie in [min, max] (256)")
    p.add_argument("--max-side", type=int, default=400, help="(default 400)")
    p.add_argument("--data-dir", default=None, help="where the folder and weights live (kept; default: a temp dir)")
    p.add_argument("--no-torch", action="store_true", help="jaxtl side(s) only")
    p.add_argument("--out", type=pathlib.Path, default=None)
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes (32 px, 48 images, 1 epoch, loading in the main process): checks it runs",
    )
    p.add_argument("--worker", choices=("jaxtl", "torch"), help=argparse.SUPPRESS)
    p.add_argument("--worker-mode", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--worker-warm", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        common.emit_result((jaxtl_worker if args.worker == "jaxtl" else torch_worker)(args))
        return {}
    if args.smoke:
        args.images, args.image_size, args.batch_size, args.epochs, args.repeats = 48, 32, 8, 1, 1
        args.min_side, args.max_side = 40, 64
    if args.workers is None:
        args.workers = 0 if args.smoke else 1
    n_test = round(args.test_fraction * args.images)
    args.train_images_per_epoch = args.images - n_test
    if n_test < 1 or args.train_images_per_epoch < args.batch_size:
        raise SystemExit(
            f"--images {args.images} with --test-fraction {args.test_fraction} leaves {n_test} test and "
            f"{args.train_images_per_epoch} train images; need >= 1 and >= one --batch-size ({args.batch_size})"
        )
    from benchmarks.data_pipeline import _random_resnet18, make_folder

    sides = ["jaxtl"] + ([WARM] if args.warm else []) + ([CLI] if args.cli else [])
    sides += [] if args.no_torch else ["torch"]
    with (
        common.data_dir(args.data_dir, "jaxtl-bench-folder-ft-") as base,
        tempfile.TemporaryDirectory(prefix="jaxtl-folder-ft-caches-") as caches,
    ):
        folder = base / f"finetune-{args.images}-{args.min_side}-{args.max_side}"
        make_folder(folder, args.images, min_side=args.min_side, max_side=args.max_side)
        weights = base / "resnet18-random.pth"
        _random_resnet18(weights)
        if args.warm:  # the untimed first runs that fill the caches
            for mode in args.modes:
                _run_side(args, WARM, mode, folder, weights, pathlib.Path(caches))
        runs: dict[tuple[str, str], list[dict[str, Any]]] = {(m, s): [] for m in args.modes for s in sides}
        load: list[float] = []
        for rnd in range(args.repeats):
            for mode in args.modes:
                for side in sides if rnd % 2 == 0 else sides[::-1]:
                    rec = _run_side(args, side, mode, folder, weights, pathlib.Path(caches))
                    load.append(common.load_average())
                    print(
                        f"round {rnd + 1}/{args.repeats} {mode:6s} {side:10s} {rec['wall_s']:.1f}s "
                        f"(load {load[-1]:.1f})",
                        flush=True,
                    )
                    runs[(mode, side)].append(rec)
    rows = []
    for mode in args.modes:
        row: dict[str, Any] = {"mode": mode}
        for side in sides:
            row[side] = _summary(runs[(mode, side)])
        if "torch" in row:
            for side in sides:
                if side != "torch":
                    key = {"jaxtl": "ratio", WARM: "warm_ratio", CLI: "cli_ratio"}[side]
                    row[key] = row[side]["wall_s"] / row["torch"]["wall_s"]
        rows.append(row)
    payload = {
        "benchmark": "folder_finetune",
        "machine": common.machine_info("cpu"),
        "settings": {
            "arch": "resnet18",
            "images": args.images,
            "classes": 10,
            "image_sides": [args.min_side, args.max_side],
            "train_images_per_epoch": args.train_images_per_epoch,
            "test_fraction": args.test_fraction,
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "epochs": args.epochs,
            "workers": args.workers,
            "optimizer": f"SGD lr {args.lr} momentum {args.momentum}, constant",
            "augment": f"RandomResizedCrop({args.image_size}) + horizontal flip",
            "repeats": args.repeats,
            "threads": args.threads,
            "cpu_count": os.cpu_count(),
            "load_average_1min": {"median": statistics.median(load), "min": min(load), "max": max(load)},
        },
        "results": rows,
        "notes": "wall time of one whole run per process (start-up, imports, weight loading, workers, compilation, "
        "training, held-out evaluation); sides alternated, never overlapping; 'jaxtl' without compilation or "
        "weight-conversion cache, 'jaxtl warm' with both (filled by an untimed first run); load_average_1min: the "
        "machine's load after each run (other processes share it)",
    }
    path = common.write_results("folder_finetune", payload, args.out)
    common.print_table(
        ["mode", "side", "wall_s", "img/s", "run_s", "top1", "time/torch"],
        [
            [
                r["mode"],
                side,
                r[side]["wall_s"],
                r[side]["images_per_s"],
                r[side].get("run_s"),
                r[side].get("top1"),
                r[side]["wall_s"] / r["torch"]["wall_s"] if "torch" in r else None,
            ]
            for r in rows
            for side in sides
        ],
    )
    for r in rows:
        for side in sides:
            if "profile" in r[side]:
                print(f"\nstart-up profile, {r['mode']}, {side} (medians over {args.repeats} runs; phases overlap)")
                print(_profile_table(r[side]["profile"], r[side].get("jax")))
    print(f"wrote {path}")
    return payload


def _profile_table(profile: list[dict[str, Any]], jax_counts: dict[str, Any] | None) -> str:
    lines = [f"{'start':>7} {'end':>7} {'s':>6}  phase"]
    lines += [f"{p['start_s']:7.2f} {p['end_s']:7.2f} {p['s']:6.2f}  {p['phase']}" for p in profile]
    if jax_counts:
        lines.append(
            f"jax: {int(jax_counts['programs'])} programs built, {int(jax_counts.get('compiled', 0))} compiled "
            f"({jax_counts['compile_s']:.2f} s), {int(jax_counts['cache_hits'])} from the persistent cache"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
