"""What a frozen-backbone train step costs over inference, side by side: ``python -m benchmarks.frozen_step``.

One process, one model (ResNet50 by default, 224 px, batch 8), programs run in turns (each round in another order),
so a machine's load falls on all of them alike. Rows, each adding one part of the step to the one above:

- ``inference``: ``module.apply(variables, images, train=False)``, the logits (what ``train_steps`` times);
- ``+ loss``: the same forward pass and the mean cross-entropy;
- ``+ head gradient``: ``jax.value_and_grad`` of that loss w.r.t. the head only (the backbone a constant);
- ``frozen step``: jaxtl's ``train_step`` (optimizer update of the head, metrics, the new state; the state donated).

Wall time per call (median, min) and the process's CPU time per call (median: steadier than wall time on a shared
machine, all of XLA's threads counted); ``+ms``: the median's excess over inference.
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from benchmarks import common


def programs(arch: str, size: int, batch: int, num_classes: int) -> dict[str, Callable[[], None]]:
    """The timed callables, compiled and run once."""
    import jax
    import jax.numpy as jnp
    import optax

    import jaxtl
    from jaxtl.models import head_path
    from jaxtl.train import CrossEntropy, ParamGroups, TrainState, train_step
    from jaxtl.train.groups import merge_params, split_params
    from jaxtl.train.losses import cross_entropy

    module = jaxtl.create(arch, num_classes=num_classes)
    rng = np.random.default_rng(0)
    host = {
        "images": rng.standard_normal((batch, size, size, 3)).astype(np.float32),
        "labels": rng.integers(0, num_classes, batch).astype(np.int32),
    }
    variables = jax.device_get(
        jax.jit(functools.partial(module.init, train=False))(jax.random.PRNGKey(0), host["images"][:1])
    )
    dev = jax.devices()[0]
    placed = jax.device_put(variables, dev)
    b = jax.device_put(host, dev)
    head = "/".join(head_path(module)) + "/"
    trainable = [p for p in split_params(variables["params"], [])[1] if p.startswith(head)]

    def logits(v: Any, batch: Any) -> Any:
        return module.apply(v, batch["images"], train=False)

    def loss(v: Any, batch: Any) -> Any:
        return jnp.mean(cross_entropy(logits(v, batch), batch["labels"]))

    def head_grad(v: Any, batch: Any) -> Any:
        diff, fixed = split_params(v["params"], trainable)
        fixed = jax.tree.map(jax.lax.stop_gradient, fixed)

        def f(d: Any) -> Any:
            return loss({**v, "params": merge_params(d, fixed)}, batch)

        return jax.value_and_grad(f)(diff)

    state = TrainState.create(module, variables, optax.sgd(0.01, momentum=0.9), 0, groups=ParamGroups.head_only(module))
    assert state.backbone_frozen
    step = jax.jit(functools.partial(train_step, loss=CrossEntropy(), axis_name=None), donate_argnums=(0,))
    holder = [jax.device_put(state, dev)]
    jitted = {"inference": jax.jit(logits), "+ loss": jax.jit(loss), "+ head gradient": jax.jit(head_grad)}

    def run_jitted(fn: Callable[..., Any]) -> Callable[[], None]:
        return lambda: jax.block_until_ready(fn(placed, b))

    def run_step() -> None:
        holder[0], metrics = step(holder[0], b)
        jax.block_until_ready(metrics)

    out: dict[str, Callable[[], None]] = {name: run_jitted(fn) for name, fn in jitted.items()}
    out["frozen step"] = run_step
    for fn in out.values():
        fn()
        fn()
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--repeats", type=int, default=20, help="rounds; every program runs once a round")
    p.add_argument("--smoke", action="store_true", help="convnet_small at 16 px, 3 rounds: checks it runs")
    p.add_argument("--out", default=None, help="JSON file (default benchmarks/results/frozen_step.json)")
    args = p.parse_args(argv)
    if args.smoke:
        args.arch, args.image_size, args.batch_size, args.repeats = "convnet_small", 16, 4, 3
    common.prepare_backend("cpu")
    fns = programs(args.arch, args.image_size, args.batch_size, args.num_classes)
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    load = []
    names = list(fns)
    for r in range(args.repeats):
        order = names[r % len(names) :] + names[: r % len(names)]  # each program leads a round in turn
        for name in order if r % 2 == 0 else order[::-1]:
            t, c = time.perf_counter(), time.process_time()
            fns[name]()
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
        load.append(common.load_average())
    base_wall, base_cpu = statistics.median(wall["inference"]), statistics.median(cpu["inference"])
    rows = [
        {
            "program": name,
            "wall_ms": 1e3 * statistics.median(wall[name]),
            "wall_min_ms": 1e3 * min(wall[name]),
            "cpu_ms": 1e3 * statistics.median(cpu[name]),
            "plus_wall_ms": 1e3 * (statistics.median(wall[name]) - base_wall),
            "plus_cpu_ms": 1e3 * (statistics.median(cpu[name]) - base_cpu),
        }
        for name in names
    ]
    common.print_table(
        ["program", "wall ms", "min ms", "+ms", "cpu ms", "+cpu ms"],
        [
            [r["program"], r["wall_ms"], r["wall_min_ms"], r["plus_wall_ms"], r["cpu_ms"], r["plus_cpu_ms"]]
            for r in rows
        ],
    )
    payload = {
        "benchmark": "frozen_step",
        "machine": common.machine_info("cpu"),
        "settings": {
            "arch": args.arch,
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "load_average_1min": {"median": statistics.median(load), "min": min(load), "max": max(load)},
        },
        "results": rows,
    }
    out = None if args.out is None else pathlib.Path(args.out)
    print(f"wrote {common.write_results('frozen_step', payload, out)}")
    return payload


if __name__ == "__main__":
    main()
