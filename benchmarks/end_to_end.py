"""End to end: N epochs of frozen-backbone fine-tuning on a fixed synthetic set: ``python -m benchmarks.end_to_end``.

Four runs to the same number of optimizer steps (``epochs * (examples // batch)``), wall time including
everything a user waits for (jaxtl: compilation; torch: its first-step set-up): jaxtl ``fit(groups=head_only)``
(a backbone forward every step), jaxtl's linear-probe fast path (``extract_features`` once, then
``fit_linear_probe``), ``finetune(mode="frozen")`` (which takes that fast path by itself), and the usual PyTorch
loop (``requires_grad=False`` backbone, a forward every batch).
The first four compile from scratch (``jaxtl.enable_compile_cache(False)``: no persistent cache). A fifth row re-runs
``fit`` the way a user re-runs a fine-tuning script: a new process whose compiled steps come from JAX's persistent
compilation cache, on by default (``$JAXTL_COMPILE_CACHE`` points it at a fresh folder a first process fills).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from benchmarks import common


def _warm_cache_runs(argv: Sequence[str] | None, repeats: int) -> list[float]:
    """``fit`` wall times of fresh processes whose compilation cache (the default one, in a fresh folder) a first
    (untimed) process filled."""
    base = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--no-warm-cache"]
    with tempfile.TemporaryDirectory(prefix="jaxtl-e2e-cache-") as cache:
        env = {**os.environ, "JAXTL_COMPILE_CACHE": cache}
        runs = [
            common.run_worker("benchmarks.end_to_end", [*base, "--worker-cache"], what="warm-cache worker", env=env)
            for _ in range(repeats + 1)
        ]
    return [float(r["wall_s"]) for r in runs[1:]]  # the first process only fills the cache


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--examples", type=int, default=256)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--no-warm-cache", action="store_true", help="skip the re-run with a warm compilation cache")
    p.add_argument("--worker-cache", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(repeats=1)
    args = p.parse_args(argv)
    if args.smoke:
        args.arch, args.examples, args.image_size, args.batch_size, args.epochs = "convnet_small", 16, 16, 4, 2
    common.prepare_backend(args.device, args.devices)
    import jax
    import optax

    import jaxtl
    from benchmarks import torch_ref
    from benchmarks.train_steps import _jnp_dtype, make_parallel
    from jaxtl.data import ArrayDataset
    from jaxtl.train import Loop, ParamGroups, extract_features, fit, fit_linear_probe

    if args.examples < args.batch_size:
        raise SystemExit(f"--examples {args.examples} is fewer than one --batch-size {args.batch_size}")
    rng = np.random.default_rng(0)
    images = rng.standard_normal((args.examples, args.image_size, args.image_size, 3), dtype=np.float32)
    labels = rng.integers(0, args.num_classes, args.examples).astype(np.int32)
    ds = ArrayDataset(images, labels, args.num_classes)
    steps = args.epochs * (args.examples // args.batch_size)
    par = make_parallel(args.devices)
    module = jaxtl.create(args.arch, num_classes=args.num_classes, dtype=_jnp_dtype(args.dtype))
    variables = jax.device_get(jax.jit(lambda k: module.init(k, images[:1], train=False))(jax.random.PRNGKey(0)))
    tx = optax.sgd(0.01, momentum=0.9)
    head_out: dict[str, Any] = {}

    def jaxtl_fit() -> None:
        res = fit(
            module,
            variables,
            ds,
            optimizer=tx,
            groups=ParamGroups.head_only(),
            loop=Loop(batch_size=args.batch_size, epochs=args.epochs, parallel=par.kind),
            progress=False,
        )
        head_out["fit"] = res.variables["params"]["fc"]

    def jaxtl_probe() -> None:
        feats = extract_features(module.clone(num_classes=0), variables, ds, args.batch_size, parallel=par.kind)
        res = fit_linear_probe(
            feats, labels, args.num_classes, tx, variables=variables, epochs=args.epochs, batch_size=args.batch_size
        )
        head_out["probe"] = res.head

    def jaxtl_finetune() -> None:
        # What a user calls: mode="frozen" without augmentation takes the cached-feature path by itself.
        config = jaxtl.FinetuneConfig(
            mode="frozen",
            optimizer=jaxtl.Optimizer("sgd", lr=0.01, momentum=0.9, schedule="constant"),  # = optax.sgd(0.01, 0.9)
            loop=jaxtl.Loop(batch_size=args.batch_size, epochs=args.epochs, parallel=par.kind),
            split=jaxtl.Split(test_fraction=0),  # the same examples as fit and the probe
        )
        new_vars = jaxtl.finetune(config, (module, variables), ds, progress=False).variables
        head_out["finetune"] = new_vars["params"]["fc"]

    if args.worker_cache:  # fit turns the default cache on ($JAXTL_COMPILE_CACHE) as a user's re-run does
        common.emit_result({"wall_s": common.time_once(jaxtl_fit)})
        return {}
    jaxtl.enable_compile_cache(False)  # the rows below compile from scratch

    sides: dict[str, Callable[[], Any]] = {
        "jaxtl fit": jaxtl_fit,
        "jaxtl linear probe": jaxtl_probe,
        "jaxtl finetune(mode='frozen')": jaxtl_finetune,
    }
    if not args.no_torch:
        dev = torch_ref.setup(args.threads, args.device)
        sides["PyTorch loop"] = torch_ref.linear_probe_fn(
            arch=args.arch,
            images=images,
            labels=labels,
            batch=args.batch_size,
            epochs=args.epochs,
            num_classes=args.num_classes,
            dev=dev,
        )
    info = common.machine_info(args.device)
    times = common.alternate(sides, args.repeats)
    if not args.no_warm_cache:
        times["jaxtl fit, re-run (warm compile cache)"] = _warm_cache_runs(argv, args.repeats)
    # Same data order and optimizer: the fast path must train the head fit trains (a guard, not a benchmark).
    fit_k, probe_k = np.asarray(head_out["fit"]["kernel"]), np.asarray(head_out["probe"]["kernel"])
    head_diff = float(np.max(np.abs(fit_k - probe_k)))
    head_diff = max(head_diff, float(np.max(np.abs(fit_k - np.asarray(head_out["finetune"]["kernel"])))))
    torch_s = common.summarize(times["PyTorch loop"])["median_s"] if "PyTorch loop" in times else None
    results = []
    for name, samples in times.items():
        s = common.summarize(samples)
        results.append(
            {
                "side": name,
                "steps": steps,
                "wall_s": s["median_s"],
                "samples_s": samples,
                "ratio_to_torch": s["median_s"] / torch_s if torch_s else None,
            }
        )
    common.print_table(
        ["run", "steps", "wall_s", "time/torch"],
        [[r["side"], r["steps"], r["wall_s"], r["ratio_to_torch"]] for r in results],
    )
    print(f"max |fit head - probe head| = {head_diff:.2e}")
    payload = {
        "benchmark": "end_to_end",
        "machine": info,
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "results": results,
        "fit_vs_probe_head_max_abs_diff": head_diff,
        "notes": "wall time of one whole run each, compilation included; runs alternated; the warm-cache re-run is a "
        "new process each time (fit's wall time only, not the process start)",
    }
    print(f"wrote {common.write_results('end_to_end', payload, args.out)}")
    return payload


if __name__ == "__main__":
    main()
