"""The streaming image pipeline vs torchvision's, and its memory: ``python -m benchmarks.data_pipeline``.

1. Throughput: images/s of decode + RandomResizedCrop(``--image-size``) + horizontal flip + batching (uint8) over
   one generated JPEG folder, jaxtl's grain pipeline (:func:`jaxtl.data.open_source`, ``workers=N``) vs
   torchvision ``ImageFolder`` + ``DataLoader(num_workers=N)`` with ``v2.RandomResizedCrop`` +
   ``v2.RandomHorizontalFlip`` + ``v2.PILToTensor`` (both end at uint8 batches; normalisation happens on device
   in jaxtl and would be one more transform in torch). Each side runs ``--epochs`` consecutive epochs as a training
   run would (jaxtl keeps its grain workers between epochs, torch its ``persistent_workers``); the sides take turns,
   never overlapping. ``images_per_s`` counts all epochs including worker start-up; ``warm_images_per_s`` the
   epochs after the first.
2. Memory (``--rss``): the peak RSS of one streaming epoch (eval transform) over generated folders of each of
   ``--rss-sizes`` images, each in a fresh process: the main process and its largest worker. A streaming pass
   holds a few batches, not the dataset, so the two sizes should differ by little (a pass under 256 examples,
   ``IN_PROCESS_BELOW``, decodes in the process itself: no worker). ``--rss-finetune`` measures
   whole ``jaxtl finetune`` runs instead (resnet18 from random torchvision weights, ``--freeze backbone``, one
   epoch at ``--image-size``): the issue's 2,000 vs 20,000 image comparison. ``--rss-only`` skips part 1 and
   writes ``data_pipeline_rss.json`` instead, leaving the throughput results as they are.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from benchmarks import common
from jaxtl.data.stream import IN_PROCESS_BELOW  # imports no jax (--feed sets the platform first)

Epoch = tuple[float, float, int]  # wall seconds, seconds to the first batch, images


def _write_jpeg(job: tuple[str, int, int, int, int]) -> None:
    """Image ``i`` of a generated folder: its own seeded draws, so any number of processes writes the same files."""
    import numpy as np
    from PIL import Image

    root, i, classes, min_side, max_side = job
    rng = np.random.default_rng((0, i))
    d = pathlib.Path(root) / f"class{i % classes:02d}"
    d.mkdir(parents=True, exist_ok=True)
    h, w = (int(v) for v in rng.integers(min_side, max_side + 1, 2))
    # Smooth colour fields plus grain: decodes like a photo (noise alone would be an unusually hard JPEG).
    small = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    arr = np.clip(np.asarray(small, np.int16) + rng.integers(-12, 13, (h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(d / f"{i:06d}.jpg", quality=90)


def make_folder(
    root: pathlib.Path,
    images: int,
    classes: int = 10,
    min_side: int = 256,
    max_side: int = 400,
    processes: int = 1,
) -> None:
    """``images`` JPEGs (quality 90, sides in ``[min_side, max_side]``) in ``classes`` folders; kept when complete.

    ``processes > 1`` writes them from that many processes (the same files: each image has its own seed).
    """
    stamp = root / f".complete-{images}-{classes}-{min_side}-{max_side}"
    if stamp.exists():
        return
    jobs = [(str(root), i, classes, min_side, max_side) for i in range(images)]
    if processes > 1:
        import multiprocessing

        # spawn: the caller may already run jax (threads), which must not be forked.
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            pool.map(_write_jpeg, jobs, chunksize=max(1, images // (8 * processes)))
    else:
        for job in jobs:
            _write_jpeg(job)
    stamp.write_text("")


def jaxtl_epochs(
    folder: pathlib.Path, workers: int, size: int, batch: int, epochs: int
) -> list[tuple[float, float, int]]:
    """``epochs`` consecutive training epochs of jaxtl's streaming source: ``(wall_s, first_batch_s, images)`` each.

    One source, as a training run uses it: its grain workers start in the first epoch and stay up for the next.
    """
    from jaxtl.data import open_source

    src = open_source(f"folder:{folder}", image_size=size, augment="rrc", workers=workers)
    out = []
    with src:
        for e in range(epochs):
            t0 = time.perf_counter()
            first, n = 0.0, 0
            for b in src.batches(batch, seed=0, epoch=e, drop_remainder=True, train=True):
                if n == 0:
                    first = time.perf_counter() - t0
                n += len(b["images"])
            out.append((time.perf_counter() - t0, first, n))
    return out


def torch_epochs(
    folder: pathlib.Path, workers: int, size: int, batch: int, epochs: int
) -> list[tuple[float, float, int]]:
    """The same with torchvision ImageFolder + DataLoader (``persistent_workers`` when ``workers > 0``)."""
    import torch
    from torchvision import datasets
    from torchvision.transforms import v2

    tf = v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(), v2.PILToTensor()])
    ds = datasets.ImageFolder(str(folder), transform=tf)
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )
    out = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        first, n = 0.0, 0
        for x, _ in loader:
            if n == 0:
                first = time.perf_counter() - t0
            n += len(x)
        out.append((time.perf_counter() - t0, first, n))
    del loader
    return out


def _side_summary(runs: list[list[Epoch]]) -> dict[str, Any]:
    """Per repeat, a list of epochs: the first (cold: starts the workers) and the rest (warm) apart."""
    n = runs[0][0][2]
    cold = [r[0][0] for r in runs]
    out: dict[str, Any] = {"images_per_epoch": n, "epochs": len(runs[0]), "cold_epoch": common.summarize(cold)}
    out["cold_images_per_s"] = n / statistics.median(cold)
    out["first_batch_s"] = statistics.median(r[0][1] for r in runs)
    warm = [w for r in runs for w, _, _ in r[1:]]
    if warm:
        out["warm_epoch"] = common.summarize(warm)
        out["warm_images_per_s"] = n / statistics.median(warm)
    total = statistics.median(sum(w for w, _, _ in r) for r in runs)
    out["images_per_s"] = n * len(runs[0]) / total  # all epochs of a repeat, worker start included
    return out


def throughput(args: argparse.Namespace, folder: pathlib.Path) -> list[dict[str, Any]]:
    """For each worker count: ``--repeats`` rounds, each running one side's ``--epochs`` then the other's (the
    order alternates), never both at once: a pipeline prefetching in the background would steal the other's CPU."""
    import grain  # noqa: F401  (imports are not timed: both sides import their libraries first)
    import torchvision  # noqa: F401

    rows = []
    sides = {"jaxtl": jaxtl_epochs} if args.no_torch else {"jaxtl": jaxtl_epochs, "torch": torch_epochs}
    for workers in args.workers:
        runs: dict[str, list[list[Epoch]]] = {name: [] for name in sides}
        for r in range(args.repeats):
            for name in sorted(sides, reverse=bool(r % 2)):
                runs[name].append(sides[name](folder, workers, args.image_size, args.batch_size, args.epochs))
        row: dict[str, Any] = {"workers": workers}
        for name, rs in runs.items():
            row[name] = _side_summary(rs)
        if "torch" in row:
            row["ratio"] = row["jaxtl"]["images_per_s"] / row["torch"]["images_per_s"]
            if "warm_images_per_s" in row["jaxtl"]:
                row["warm_ratio"] = row["jaxtl"]["warm_images_per_s"] / row["torch"]["warm_images_per_s"]
        rows.append(row)
    return rows


def feed(args: argparse.Namespace, folder: pathlib.Path) -> dict[str, Any]:
    """``--feed ARCH``: whether data or compute limits training here. ARCH's full train step (``--feed-dtype``, SGD)
    on the default device, images/s (a) fed by the streaming source (RandomResizedCrop + flip, the largest
    ``--workers``, batches prefetched to the device as ``fit`` does) and (b) on one batch already on the device.
    The first fed epoch (compilation, worker start) is not timed; ``--epochs`` more are. (a) well below (b) means
    the input pipeline is the limit; (a) close to (b) means the step is."""
    import functools

    import jax
    import numpy as np
    import optax

    import jaxtl
    from benchmarks.train_steps import _jnp_dtype
    from jaxtl.data import open_source
    from jaxtl.train import CrossEntropy, Parallel, TrainState, prefetch_to_device, train_step

    workers, size, bs = max(args.workers), args.image_size, args.batch_size
    par = Parallel("none")
    src = open_source(f"folder:{folder}", image_size=size, augment="rrc", workers=workers)
    module = jaxtl.create(args.feed, num_classes=src.num_classes, dtype=_jnp_dtype(args.feed_dtype))
    init = jax.jit(functools.partial(module.init, train=False))
    variables = init(jax.random.PRNGKey(0), np.zeros((1, size, size, 3), np.float32))
    tx = optax.sgd(0.01, momentum=0.9)
    state = par.put_state(TrainState.create(module, variables, tx, 0, normalization=src.normalization))
    step = par.map(functools.partial(train_step, loss=CrossEntropy()))

    def epoch(e: int) -> Any:
        it = src.batches(bs, seed=0, epoch=e, drop_remainder=True, train=True)
        return prefetch_to_device(it, 2, par.put_batch)

    with src:
        t0 = time.perf_counter()
        steps, fixed, metrics = 0, None, None
        for b in epoch(0):  # compiles and starts the workers: not timed
            state, metrics = step(state, b)
            fixed, steps = b, steps + 1
        common.block(metrics)
        warmup_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for e in range(1, args.epochs + 1):
            for b in epoch(e):
                state, metrics = step(state, b)
        common.block(metrics)
        fed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps * args.epochs):
        state, metrics = step(state, fixed)
    common.block(metrics)
    alone_s = time.perf_counter() - t0
    images = steps * args.epochs * bs
    fed, alone = images / fed_s, images / alone_s
    return {
        "arch": args.feed,
        "dtype": args.feed_dtype,
        "device": jax.devices()[0].platform,
        "workers": workers,
        "steps": steps * args.epochs,
        "warmup_epoch_s": warmup_s,
        "fed_images_per_s": fed,
        "step_alone_images_per_s": alone,
        "fed_over_alone": fed / alone,
        "limit": "input pipeline" if fed < 0.9 * alone else "compute",
    }


def _vm_hwm_mib() -> float:
    """This process's peak RSS (``VmHWM``; unlike ``ru_maxrss`` it is not inherited from the parent across exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return common.peak_rss_mib()


def rss_worker(args: argparse.Namespace) -> None:
    """One streaming eval epoch over ``--folder``: the peak RSS of this process and of its largest worker process
    (sampled every 50 ms with psutil: a worker's own peak is not readable once grain has stopped it)."""
    import threading

    import psutil

    from jaxtl.data import open_source

    me = psutil.Process()
    worker_peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            for child in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    worker_peak[0] = max(worker_peak[0], child.memory_info().rss / 2**20)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    n = 0
    t0 = time.perf_counter()
    with open_source(f"folder:{args.folder}", image_size=args.image_size, workers=args.rss_workers) as src:
        for b in src.batches(args.batch_size, shuffle=True, drop_remainder=False, train=False):
            n += int(b["mask"].sum())
        wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    common.emit_result(
        {"images": n, "wall_s": wall, "peak_rss_mib": _vm_hwm_mib(), "worker_peak_rss_mib": worker_peak[0]}
    )


def _tree_peak_rss(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd``; the peak RSS of its main process (``peak_rss_mib``: the kernel's high-water mark, read when the
    process is reaped; exact, unlike sampling, which misses short peaks) and of its largest child (sampled every
    50 ms with psutil: a worker's own mark is gone once it has been reaped)."""
    import subprocess

    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    ps = psutil.Process(proc.pid)
    main_peak = child_peak = hwm = 0.0
    while time.perf_counter() - t0 < timeout:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:  # reaped here, so its rusage is ours: ru_maxrss (KiB) = max of it and its reaped children
            proc.returncode = os.waitstatus_to_exitcode(status)
            hwm = usage.ru_maxrss / 1024.0
            break
        with contextlib.suppress(psutil.Error):
            main_peak = max(main_peak, ps.memory_info().rss / 2**20)
            for child in ps.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child_peak = max(child_peak, child.memory_info().rss / 2**20)
        time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
    out, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed (exit {proc.returncode}):\n{err[-3000:]}")
    return {
        "wall_s": time.perf_counter() - t0,
        "peak_rss_mib": max(hwm, main_peak),
        "sampled_peak_rss_mib": main_peak,
        "worker_peak_rss_mib": child_peak,
        "output": out.strip().splitlines()[-1:],
    }


def _random_resnet18(path: pathlib.Path) -> None:
    """Randomly initialised torchvision resnet18 weights (no download): what ``jaxtl finetune`` starts from."""
    import torch
    from torchvision.models import resnet18

    if not path.exists():
        torch.manual_seed(0)
        torch.save(resnet18(weights=None).state_dict(), path)


def memory(args: argparse.Namespace, base: pathlib.Path) -> list[dict[str, Any]]:
    """Peak RSS per folder size: a streaming pass (``--rss``), or a whole ``jaxtl finetune`` run
    (``--rss-finetune``: resnet18, ``--freeze backbone``, one epoch, as the issue's measurement). With
    ``--rss-repeats R`` each size runs R times, the sizes' order alternating; a row holds the median peak and
    every run (``runs``)."""
    import sys

    def one(n: int) -> dict[str, Any]:
        folder = base / f"rss-{n}"
        make_folder(folder, n, min_side=args.min_side, max_side=args.max_side)
        if args.rss_finetune:
            weights = base / "resnet18-random.pth"
            _random_resnet18(weights)
            workdir = base / f"finetune-{n}"
            if workdir.exists():  # a run of its own, not a resume of an earlier benchmark's
                shutil.rmtree(workdir)
            cmd = [sys.executable, "-m", "jaxtl.cli", "finetune", "--torch-weights", str(weights)]
            cmd += ["--arch", "resnet18", "--data", f"folder:{folder}", "--image-size", str(args.image_size)]
            cmd += ["--freeze", "backbone", "--epochs", "1", "--batch-size", str(args.batch_size)]
            cmd += ["--workers", str(args.rss_workers), "--workdir", str(workdir), "--no-progress"]
            cmd += ["--no-compile-cache"]  # every size compiles (compiling takes memory too): like against like
            with tempfile.TemporaryDirectory(prefix="jaxtl-weights-") as cache:  # and converts (imports torch)
                r = _tree_peak_rss(cmd, timeout=7200, env={**os.environ, "JAXTL_WEIGHTS_CACHE": cache})
            r["mode"] = "jaxtl finetune --freeze backbone, 1 epoch"
        else:
            extra = ["--image-size", str(args.image_size), "--batch-size", str(args.batch_size)]
            extra += ["--rss-workers", str(args.rss_workers), "--folder", str(folder), "--rss-worker"]
            r = common.run_worker("benchmarks.data_pipeline", extra, what=f"streaming pass over {n} images")
            r["mode"] = "streaming pass (eval transform)"
        r["folder_images"] = n
        return r

    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in args.rss_sizes}
    for k in range(args.rss_repeats):
        for n in args.rss_sizes if k % 2 == 0 else args.rss_sizes[::-1]:
            runs[n].append(one(n))
    rows = []
    for rs in runs.values():
        peaks = [r["peak_rss_mib"] for r in rs]
        row = dict(rs[0])
        if len(rs) > 1:
            row["peak_rss_mib"] = statistics.median(peaks)
            row["peak_rss_mib_range"] = [min(peaks), max(peaks)]
            row["worker_peak_rss_mib"] = statistics.median(r["worker_peak_rss_mib"] for r in rs)
            row["wall_s"] = statistics.median(r["wall_s"] for r in rs)
            row["runs"] = [{key: v for key, v in r.items() if key.endswith(("_mib", "_s"))} for r in rs]
        rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from jaxtl.data import default_workers

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000, help="JPEGs in the throughput folder (default 2000)")
    p.add_argument("--workers", type=int, nargs="+", default=None, help="worker counts (default: jaxtl's default)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--min-side", type=int, default=256, help="generated image sides lie in [min, max] (256)")
    p.add_argument("--max-side", type=int, default=400, help="(default 400)")
    p.add_argument("--epochs", type=int, default=3, help="consecutive epochs per side and round (default 3)")
    p.add_argument("--repeats", type=int, default=2, help="rounds, sides alternating (default 2)")
    p.add_argument("--rss", action="store_true", help="also measure peak RSS of streaming passes")
    p.add_argument("--rss-finetune", action="store_true", help="--rss of whole 'jaxtl finetune' runs instead")
    p.add_argument(
        "--rss-only",
        action="store_true",
        help="only the --rss/--rss-finetune part, written to data_pipeline_rss.json (the throughput results stay)",
    )
    p.add_argument("--rss-sizes", type=int, nargs="+", default=[2000, 20000])
    p.add_argument("--rss-workers", type=int, default=2)
    p.add_argument("--rss-repeats", type=int, default=1, help="runs per size, alternating (median reported)")
    p.add_argument("--data-dir", default=None, help="where generated folders live (kept; default: a temp dir)")
    p.add_argument("--no-torch", action="store_true", help="jaxtl side only")
    p.add_argument("--feed", default=None, metavar="ARCH", help="also: the pipeline feeding ARCH's train step")
    p.add_argument("--feed-dtype", default="float32", choices=("float32", "bfloat16"), help="--feed's compute dtype")
    p.add_argument("--device", choices=("cpu", "gpu", "tpu"), default="cpu", help="where --feed's step runs (cpu)")
    p.add_argument("--out", default=None)
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs")
    p.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    p.add_argument("--rss-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rss_worker:
        rss_worker(args)
        return {}
    if args.smoke:
        args.images, args.image_size, args.batch_size, args.repeats, args.epochs = 48, 32, 8, 1, 2
        args.min_side, args.max_side = 40, 64
        args.rss_sizes, args.rss_workers = [24, IN_PROCESS_BELOW + 44], 1  # below and above the in-process rule
        args.workers = args.workers or [0, 1]
    args.workers = args.workers or [default_workers()]
    if args.feed:
        common.prepare_backend(args.device)  # the step's platform and tune_cpu, before jax starts

    if args.rss_only and not (args.rss or args.rss_finetune):
        raise SystemExit("--rss-only needs --rss or --rss-finetune")
    rows: list[dict[str, Any]] = []
    fed: dict[str, Any] | None = None
    with common.data_dir(args.data_dir, "jaxtl-bench-data-") as base:
        if not args.rss_only:
            folder = base / f"throughput-{args.images}"
            make_folder(folder, args.images, min_side=args.min_side, max_side=args.max_side)
            rows = throughput(args, folder)
            fed = feed(args, folder) if args.feed else None
        rss = memory(args, base) if args.rss or args.rss_finetune else []
    payload = {
        "benchmark": "data_pipeline",
        "machine": common.machine_info(args.device if args.feed else "cpu"),
        "settings": {
            "images": args.images,
            "image_sides": [args.min_side, args.max_side],
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "epochs": args.epochs,
            "transforms": f"decode + RandomResizedCrop({args.image_size}) + horizontal flip + uint8 batch",
            "cpu_count": os.cpu_count(),
            "rss_workers": args.rss_workers,
            "rss_repeats": args.rss_repeats,
        },
        "results": rows,
        "rss": rss,
        **({"feed": fed} if fed else {}),
    }
    name = "data_pipeline_rss" if args.rss_only else "data_pipeline"
    path = common.write_results(name, payload, None if args.out is None else pathlib.Path(args.out))
    table = []
    for r in rows:
        j, t = r["jaxtl"], r.get("torch", {})
        table.append(
            [
                r["workers"],
                j["images_per_s"],
                j.get("warm_images_per_s"),
                t.get("images_per_s"),
                t.get("warm_images_per_s"),
                r.get("ratio"),
                r.get("warm_ratio"),
            ]
        )
    common.print_table(
        ["workers", "jaxtl_img/s", "jaxtl_warm", "torch_img/s", "torch_warm", "ratio", "warm_ratio"], table
    )
    if rss:
        common.print_table(
            ["images", "peak_rss_mib", "worker_peak_rss_mib", "wall_s"],
            [[r["folder_images"], r["peak_rss_mib"], r["worker_peak_rss_mib"], r["wall_s"]] for r in rss],
        )
    if fed:
        keys = ["arch", "dtype", "device", "workers", "fed_images_per_s", "step_alone_images_per_s", "limit"]
        common.print_table(keys, [[fed[k] for k in keys]])
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
