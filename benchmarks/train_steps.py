"""Per-step throughput, jaxtl vs PyTorch, side by side in one process: ``python -m benchmarks.train_steps``.

Modes (ResNet50 unless ``--arch``): ``full`` fine-tune step, ``frozen`` backbone + head step, ``inference``,
``probe`` (10 epochs of linear probing on a small set, the one-off feature pass included; torch runs the usual
frozen-backbone loop, a backbone forward every batch) and ``autoencoder`` (the ConvNet autoencoder's MSE step).
The other families' rows: ``--extra-archs`` (default ``vit_b_16 convnext_tiny``) in the modes of ``--modes`` that
``--extra-modes`` names (default full, frozen, inference) at ``--extra-size`` (224, batch 8); ``--smoke`` shrinks
them to a few layers on both sides (:data:`SMOKE_SHRINK`).
jaxtl runs its real code paths (``TrainState.create``, ``train_step`` under ``Parallel``, ``freeze``,
``extract_features`` + ``fit_linear_probe``); torch runs ``benchmarks/torch_ref.py``. Timed rounds alternate the
two sides; medians are reported with compile (first call) time apart. ``ratio`` = jaxtl time / torch time.
Each case (mode, size) runs in a fresh process of its own, as a user's training or inference job would: measured
in one long process, a case run after the full step was ~10% slower on the jaxtl side (heap left over from the
bigger step). ``--in-process`` runs every case in this process instead (quicker; ``--smoke`` implies it).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from benchmarks import common

MODES = ("full", "frozen", "inference", "probe", "autoencoder")
ARCH_MODES = ("full", "frozen", "inference", "probe")  # what any classifier architecture runs
EXTRA_ARCHS = ("vit_b_16", "convnext_tiny")
# --smoke: a ViT and a ConvNeXt of a few layers, the same on both sides (jaxtl.create overrides; torchvision's
# VisionTransformer arguments and ConvNeXt block_setting), so the smoke run checks the code, not the machine.
SMOKE_SHRINK: dict[str, dict[str, Any]] = {
    "vit": dict(patch_size=16, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32),
    "convnext": dict(block_setting=((8, 16, 1), (16, None, 1)), stochastic_depth_prob=0.1),
}
AE_WIDTHS = (32, 64, 128)
AE_DECODER = (128, 64, 32)


def parser() -> argparse.ArgumentParser:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--batch-size", type=int, default=None, help="global batch (default 8 at 224, 32 at 64)")
    p.add_argument("--image-size", type=int, nargs="+", default=[224, 64], help="one run per size")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument(
        "--extra-archs",
        nargs="*",
        default=list(EXTRA_ARCHS),
        help="more architectures, each in --extra-modes at --extra-size (none: just --arch)",
    )
    p.add_argument("--extra-modes", nargs="+", choices=ARCH_MODES, default=["full", "frozen", "inference"])
    p.add_argument("--extra-size", type=int, default=224, help="input size of the --extra-archs rows (default 224)")
    p.add_argument("--probe-examples", type=int, default=None, help="probe set size (default 2 batches)")
    p.add_argument("--probe-epochs", type=int, default=10)
    p.add_argument("--probe-repeats", type=int, default=3, help="timed probe runs per side (each is long)")
    p.add_argument("--ae-image-size", type=int, default=32)
    p.add_argument("--ae-batch-size", type=int, default=64)
    p.add_argument("--num-classes", type=int, default=10)
    p.set_defaults(repeats=9)  # single steps on a shared CPU: 5 alternated rounds left ratios moving ~10%
    return p


def default_batch(size: int) -> int:
    return 8 if size >= 160 else 32


# --- jaxtl side ------------------------------------------------------------------------------------------------


def shrink_for(arch: str, smoke: bool) -> dict[str, Any] | None:
    """The :data:`SMOKE_SHRINK` overrides of ``arch``'s family under ``--smoke``, else None (the real model)."""
    if not smoke:
        return None
    from jaxtl.models import get_spec

    return SMOKE_SHRINK.get(get_spec(arch).family)


def build_model(arch: str, num_classes: int, dtype: str, size: int, shrink: dict[str, Any] | None = None) -> Any:
    """``jaxtl.create(arch)`` for ``size``-px input (a ViT is built for it), ``shrink`` applied."""
    import jaxtl

    return jaxtl.create(arch, num_classes=num_classes, dtype=_jnp_dtype(dtype), image_size=size, **(shrink or {}))


def _jnp_dtype(dtype: str) -> Any:
    import jax.numpy as jnp

    return jnp.bfloat16 if dtype == "bfloat16" else jnp.float32


def make_parallel(devices: int) -> Any:
    """``Parallel("none")`` on one device, else ``Parallel("shard_map")`` over the first ``devices`` devices."""
    import jax

    from jaxtl.train import Parallel

    have = jax.devices()
    if devices > len(have):
        raise SystemExit(f"--devices {devices}: only {len(have)} JAX devices ({have[0].platform})")
    if devices == 1:
        return Parallel("none")
    return Parallel("shard_map", devices=have[:devices])


def _batch(n: int, size: int, num_classes: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "images": rng.standard_normal((n, size, size, 3), dtype=np.float32),
        "labels": rng.integers(0, num_classes, n).astype(np.int32),
    }


def jaxtl_step_fn(
    mode: str,
    *,
    arch: str,
    batch: int,
    size: int,
    num_classes: int,
    dtype: str,
    devices: int,
    shrink: dict[str, Any] | None = None,
) -> tuple[Callable[[], None], float]:
    """(timed callable, compile-and-first-run seconds) for ``mode`` in full/frozen/inference/autoencoder."""
    import jax
    import optax

    import jaxtl
    from jaxtl.models import Autoencoder
    from jaxtl.train import CrossEntropy, ParamGroups, Reconstruction, TrainState, train_step

    par = make_parallel(devices)
    if batch % par.num_devices:
        raise SystemExit(f"--batch-size {batch} is not divisible by --devices {par.num_devices}")
    if mode == "autoencoder":
        enc = jaxtl.create("convnet_small", num_classes=0, dtype=_jnp_dtype(dtype))
        module: Any = Autoencoder(enc, decoder_widths=AE_DECODER, dtype=_jnp_dtype(dtype))
        host = _batch(batch, size, num_classes)
        host = {"images": np.random.default_rng(0).uniform(size=host["images"].shape).astype(np.float32)}
        tx = optax.adam(1e-3)
    else:
        module = build_model(arch, num_classes, dtype, size, shrink)
        host = _batch(batch, size, num_classes)
        tx = optax.sgd(0.01, momentum=0.9)
    variables = jax.jit(functools.partial(module.init, train=False))(jax.random.PRNGKey(0), host["images"][:1])
    placed_batch = par.put_batch(host)

    if mode == "inference":

        def infer(v: Any, b: Any, axis_name: Any) -> Any:
            del axis_name
            return module.apply(v, b["images"], train=False)

        fn = par.map(infer, donate=False, n_out=1, batch_out=True)
        placed_vars = par.put_state(variables)

        def run() -> None:
            common.block(fn(placed_vars, placed_batch))

    else:
        groups = ParamGroups.head_only(module) if mode == "frozen" else None
        state = TrainState.create(module, variables, tx, 0, groups=groups)
        if mode == "frozen":
            assert state.backbone_frozen, "frozen mode must take the frozen-backbone path"
        loss = Reconstruction() if mode == "autoencoder" else CrossEntropy()
        step = par.map(functools.partial(train_step, loss=loss))
        holder = [par.put_state(state)]

        def run() -> None:
            holder[0], metrics = step(holder[0], placed_batch)
            common.block(metrics)

    compile_s = common.time_once(run)
    return run, compile_s


def jaxtl_probe_fn(
    *,
    arch: str,
    images: np.ndarray,
    labels: np.ndarray,
    batch: int,
    epochs: int,
    num_classes: int,
    dtype: str,
    devices: int,
    shrink: dict[str, Any] | None = None,
) -> Callable[[], None]:
    """The linear-probe fast path: ``extract_features`` once, then ``fit_linear_probe`` for ``epochs``."""
    import jax
    import optax

    from jaxtl.data import ArrayDataset
    from jaxtl.train import extract_features, fit_linear_probe

    par = make_parallel(devices)
    module = build_model(arch, num_classes, dtype, images.shape[1], shrink)

    variables = jax.jit(functools.partial(module.init, train=False))(jax.random.PRNGKey(0), images[:1])
    backbone = module.clone(num_classes=0)
    ds = ArrayDataset(images, labels, num_classes)
    tx = optax.sgd(0.01, momentum=0.9)  # one optimizer object: its compiled probe is reused, as a user's would be

    def run() -> None:
        feats = extract_features(backbone, variables, ds, batch, parallel=par.kind)
        fit_linear_probe(
            feats,
            labels,
            num_classes,
            tx,
            variables=variables,
            classifier=module,
            epochs=epochs,
            batch_size=batch,
        )

    return run


# --- the benchmark ---------------------------------------------------------------------------------------------

# Forward GFLOP per 224x224 image: 2x torchvision's GMACs ("_ops": ResNet50 4.09, ViT-B/16 17.56, ConvNeXt-T
# 4.46); a trained image costs about 3x (forward + two backward).
FWD_GFLOP_224 = {"resnet50": 8.2, "vit_b_16": 35.1, "convnext_tiny": 8.9}
RESNET50_FWD_GFLOP_224 = FWD_GFLOP_224["resnet50"]
RESNET50_TRAIN_GFLOP_224 = 24.5
PEAK_TFLOPS = {  # dense, per chip: (bfloat16, float32 [TF32 where the library may use it])
    "H200": (989.0, 494.0),
    "H100": (989.0, 494.0),
    "A100": (312.0, 156.0),
    "L4": (121.0, 60.0),
}


def gflop_per_image(arch: str, mode: str, size: int) -> float | None:
    """Model FLOPs per image (ResNet50, ViT-B/16, ConvNeXt-T; convolutional networks scaled by pixel count from
    224x224, a ViT at 224 only: its attention does not scale so)."""
    fwd = FWD_GFLOP_224.get(arch)
    if fwd is None or mode not in ("full", "frozen", "inference") or (arch.startswith("vit") and size != 224):
        return None
    base = (RESNET50_TRAIN_GFLOP_224 if arch == "resnet50" else 3 * fwd) if mode == "full" else fwd
    return base * (size / 224) ** 2


def peak_tflops(args: argparse.Namespace, device_name: str | None) -> float | None:
    if getattr(args, "peak_tflops", None):
        return float(args.peak_tflops)
    if args.device == "cpu" or not device_name:
        return None
    for key, (bf16, f32) in PEAK_TFLOPS.items():
        if key.lower() in device_name.lower():
            return bf16 if args.dtype == "bfloat16" else f32
    return None


def run_case(
    args: argparse.Namespace, mode: str, size: int, batch: int, dev: Any, arch: str | None = None
) -> dict[str, Any]:
    """Build both sides of one case (``arch``, default ``--arch``), warm up, alternate timed rounds; returns the
    JSON record."""
    from benchmarks import torch_ref

    arch = arch or args.arch
    shrink = shrink_for(arch, args.smoke)
    name = "convnet_ae" if mode == "autoencoder" else arch
    record: dict[str, Any] = {"arch": name, "mode": mode, "image_size": size, "batch_size": batch, "dtype": args.dtype}
    model: dict[str, Any] = {"arch": arch, "num_classes": args.num_classes, "shrink": shrink}  # both sides' model
    sides: dict[str, Callable[[], Any]] = {}
    compile_s: dict[str, float] = {}
    if mode == "probe":
        n = args.probe_examples or 2 * batch
        rng = np.random.default_rng(1)
        images = rng.standard_normal((n, size, size, 3), dtype=np.float32)
        labels = rng.integers(0, args.num_classes, n).astype(np.int32)
        record.update(examples=n, epochs=args.probe_epochs, steps=args.probe_epochs * (n // batch))
        j = jaxtl_probe_fn(
            **model, images=images, labels=labels, batch=batch, epochs=args.probe_epochs, dtype=args.dtype,
            devices=args.devices,
        )  # fmt: skip
        compile_s["jaxtl"] = common.time_once(j)  # includes compiling the feature pass and the head step
        sides["jaxtl"] = j
        if not args.no_torch:
            t = torch_ref.linear_probe_fn(
                **model, images=images, labels=labels, batch=batch, epochs=args.probe_epochs, dev=dev
            )
            compile_s["torch"] = common.time_once(t)
            sides["torch"] = t
        per = "run"
    else:
        j, compile_s["jaxtl"] = jaxtl_step_fn(
            mode, **model, batch=batch, size=size, dtype=args.dtype, devices=args.devices
        )
        sides["jaxtl"] = j
        if not args.no_torch:
            if mode == "autoencoder":
                t = torch_ref.autoencoder_step_fn(
                    batch=batch, size=size, widths=AE_WIDTHS, decoder_widths=AE_DECODER, dtype=args.dtype, dev=dev
                )
            else:
                t = torch_ref.train_step_fn(mode, **model, batch=batch, size=size, dtype=args.dtype, dev=dev)
            compile_s["torch"] = common.time_once(t)  # torch's first step: allocator and kernel selection
            sides["torch"] = t
        per = "step"
    if mode != "probe":  # one more untimed round each: caches, allocator (a probe run is long enough)
        for fn in sides.values():
            fn()
    times = common.alternate(sides, min(args.repeats, args.probe_repeats) if mode == "probe" else args.repeats)
    record["unit"] = per
    record["first_call_s"] = compile_s
    for name, samples in times.items():
        s = common.summarize(samples)
        s["images_per_s"] = (batch if per == "step" else record["steps"] * batch) / s["median_s"]
        record[name] = s
    if "torch" in times:
        record["ratio"] = record["jaxtl"]["median_s"] / record["torch"]["median_s"]
    record["peak_rss_mib_so_far"] = common.peak_rss_mib()
    gflop = None if shrink else gflop_per_image(arch, mode, size)
    record["gflop_per_image"] = gflop
    if gflop and args.peak_tf is not None:
        for name in times:
            record[name]["mfu"] = record[name]["images_per_s"] * gflop * 1e9 / (args.peak_tf * 1e12)
    return record


def _case_in_subprocess(argv: Sequence[str] | None, mode: str, size: int, batch: int, arch: str) -> dict[str, Any]:
    """``run_case`` for one case in a fresh ``python -m benchmarks.train_steps --case ...`` process."""
    args = [*(sys.argv[1:] if argv is None else argv), "--case", mode, str(size), str(batch), arch]
    return common.run_worker("benchmarks.train_steps", args, what=f"case {arch} {mode} {size}x{size} b{batch}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = parser()
    p.add_argument("--devices", type=int, default=1, help="JAX devices (fake CPU devices are created if needed)")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak FLOP/s of one device, for MFU")
    p.add_argument("--in-process", action="store_true", help="run every case in this process (no fresh processes)")
    p.add_argument("--case", nargs=4, metavar=("MODE", "SIZE", "BATCH", "ARCH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    common.prepare_backend(args.device, args.devices)
    from benchmarks import torch_ref

    if args.smoke:
        args.repeats, args.probe_epochs = 2, 2
        args.arch = "convnet_small" if args.arch == "resnet50" else args.arch
        args.image_size = [16]
        args.batch_size = 4
        args.ae_image_size, args.ae_batch_size = 16, 4
        args.extra_size = 32  # the shrunk ViT's 2x2 patch grid; ConvNeXt's smallest input
    dev = None if args.no_torch else torch_ref.setup(args.threads, args.device)
    info = common.machine_info(args.device)
    args.peak_tf = peak_tflops(args, info.get("gpu") or info.get("jax_device_kind"))
    rows, records = [], []
    cases = []
    for size in args.image_size:
        batch = args.batch_size or default_batch(size)
        cases += [(m, size, batch, args.arch) for m in args.modes if m != "autoencoder"]
    if "autoencoder" in args.modes:
        cases.append(("autoencoder", args.ae_image_size, args.ae_batch_size, args.arch))
    extra_batch = args.batch_size or default_batch(args.extra_size)
    for arch in args.extra_archs:
        cases += [(m, args.extra_size, extra_batch, arch) for m in args.modes if m in args.extra_modes]
    if args.case:
        mode, size, batch, arch = args.case[0], int(args.case[1]), int(args.case[2]), args.case[3]
        common.emit_result(run_case(args, mode, size, batch, dev, arch))
        return {}
    isolate = not (args.in_process or args.smoke)
    for mode, size, batch, arch in cases:
        t0 = time.perf_counter()
        if isolate:
            rec = _case_in_subprocess(argv, mode, size, batch, arch)
        else:
            rec = run_case(args, mode, size, batch, dev, arch)
        rec["wall_s"] = time.perf_counter() - t0
        records.append(rec)
        rows.append(_row("convnet_ae" if mode == "autoencoder" else arch, rec))
        print(f"[{arch} {mode} {size}x{size} b{batch}] done in {rec['wall_s']:.0f}s", flush=True)
    headers = [
        "model",
        "mode",
        "size",
        "batch",
        "unit",
        "jaxtl_s",
        "torch_s",
        "ratio",
        "jaxtl_img/s",
        "torch_img/s",
        "jaxtl_compile_s",
        "jaxtl_mfu",
    ]
    common.print_table(headers, rows)
    payload = {
        "benchmark": "train_steps",
        "machine": info,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "results": records,
    }
    path = common.write_results("train_steps", payload, args.out)
    print(f"wrote {path}")
    return payload


def _row(arch: str, rec: dict[str, Any]) -> list[Any]:
    j, t = rec["jaxtl"], rec.get("torch")
    return [
        arch,
        rec["mode"],
        rec["image_size"],
        rec["batch_size"],
        rec["unit"],
        j["median_s"],
        t and t["median_s"],
        rec.get("ratio"),
        j["images_per_s"],
        t and t["images_per_s"],
        rec["first_call_s"]["jaxtl"],
        j.get("mfu"),
    ]


if __name__ == "__main__":
    main()
