"""jaxtl images/s against device count and against batch size: ``python -m benchmarks.scaling``.

Every point runs in its own subprocess, so each device count gets its own ``XLA_FLAGS`` (fake CPU devices on CPU,
the first N real devices on accelerators). The step is jaxtl's ``train_step`` under ``Parallel("shard_map")``
(``"none"`` on one device). On CPU the fake devices share the same cores: the sweep checks the parallel path and
its overhead, not a speed-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Sequence
from typing import Any

from benchmarks import common


def worker(args: argparse.Namespace) -> None:
    """One point: build the step, compile, time ``repeats`` steps, print one JSON line."""
    common.prepare_backend(args.device, args.devices[0])
    from benchmarks.train_steps import jaxtl_step_fn

    run, compile_s = jaxtl_step_fn(
        args.mode,
        arch=args.arch,
        batch=args.batch_sizes[0],
        size=args.image_size,
        num_classes=10,
        dtype=args.dtype,
        devices=args.devices[0],
    )
    run()
    samples = [common.time_once(run) for _ in range(args.repeats)]
    med = statistics.median(samples)
    common.emit_result(
        {
            "compile_s": compile_s,
            "step_s": med,
            "samples_s": samples,
            "peak_rss_mib": common.peak_rss_mib(),
            "peak_device_mib": common.jax_peak_memory_mib(),
        }
    )


def _point(args: argparse.Namespace, devices: int, batch: int) -> dict[str, Any]:
    worker_args = [
        "--worker",
        "--devices",
        str(devices),
        "--batch-sizes",
        str(batch),
        "--arch",
        args.arch,
        "--mode",
        args.mode,
        "--image-size",
        str(args.image_size),
        "--dtype",
        args.dtype,
        "--device",
        args.device,
        "--repeats",
        str(args.repeats),
    ]
    env = dict(os.environ)
    import jax

    cache = jax.config.values.get("jax_compilation_cache_dir")
    if cache:  # a persistent compilation cache set in this process (the tests do) serves the workers too
        env["JAX_COMPILATION_CACHE_DIR"] = str(cache)
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = str(
            jax.config.values.get("jax_persistent_cache_min_compile_time_secs", 1.0)
        )
    env.pop("XLA_FLAGS", None) if "xla_force_host_platform_device_count" in env.get("XLA_FLAGS", "") else None
    what = f"scaling point devices={devices} batch={batch}"
    out = common.run_worker("benchmarks.scaling", worker_args, what=what, env=env, timeout=args.timeout)
    out.update(devices=devices, batch_size=batch, images_per_s=batch / out["step_s"])
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--mode", choices=["full", "frozen", "inference"], default="full")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4], help="device counts (global batch fixed)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64], help="batch sweep on one device")
    p.add_argument("--base-batch", type=int, default=32, help="global batch of the device sweep")
    p.add_argument("--timeout", type=int, default=900, help="seconds per point")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(repeats=5)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return {}
    if args.smoke:
        args.arch, args.image_size, args.devices, args.batch_sizes, args.base_batch = (
            "convnet_small",
            16,
            [1, 2],
            [4],
            4,
        )
        args.repeats = 2
    results = []
    done: dict[tuple[int, int], dict[str, Any]] = {}
    for d in args.devices:
        if args.base_batch % d:
            raise SystemExit(f"--base-batch {args.base_batch} is not divisible by {d} devices")
        done[d, args.base_batch] = _point(args, d, args.base_batch)
        results.append({"axis": "devices", **done[d, args.base_batch]})
    for b in args.batch_sizes:
        point = done[1, b] if (1, b) in done else _point(args, 1, b)
        results.append({"axis": "batch", **point})
    common.print_table(
        ["sweep", "devices", "batch", "img/s", "step_s", "compile_s"],
        [[r["axis"], r["devices"], r["batch_size"], r["images_per_s"], r["step_s"], r["compile_s"]] for r in results],
    )
    common.prepare_backend(args.device, 1)
    payload = {
        "benchmark": "scaling",
        "machine": common.machine_info(args.device),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "worker")},
        "results": results,
    }
    print(f"wrote {common.write_results('scaling', payload, args.out)}")
    return payload


if __name__ == "__main__":
    main()
