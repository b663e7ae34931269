"""torchvision <-> jaxtl conversion time and eval-logit agreement per architecture: ``python -m benchmarks.bridge``.

For each resnet-family architecture: a randomly initialised torchvision model (``weights=None``) with randomised
BatchNorm running statistics (so eval-mode BN is not the identity), ``from_torchvision`` and ``to_torchvision``
timed, and max|diff| of eval logits on a small float32 input ``[2, 3, S, S]``. Then the one-line route,
``jaxtl.bridge.pretrained(arch, weights="DEFAULT")``, on that model saved under torchvision's file name in a
temporary ``TORCH_HOME``: the first load (read the .pth with torch, convert, write the jaxtl cache), the second
load in the same process (from the cache), and the second load in a fresh process (interpreter start and imports
included; it must not import torch).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks import common


def _randomize_bn(model: Any, seed: int) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))


def one_arch(arch: str, size: int) -> dict[str, Any]:
    import jax
    import torch
    import torchvision

    from jaxtl.bridge import from_torchvision, to_torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    _randomize_bn(model, 1)
    x = np.random.default_rng(0).standard_normal((2, 3, size, size), dtype=np.float32)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    state_dict = model.state_dict()
    t0 = time.perf_counter()
    module, variables = from_torchvision(state_dict, arch=arch)
    jax.block_until_ready(variables)
    from_s = time.perf_counter() - t0
    out = np.asarray(jax.jit(lambda v, a: module.apply(v, a, train=False))(variables, x.transpose(0, 2, 3, 1)))
    t0 = time.perf_counter()
    back = to_torchvision(variables, arch)
    to_s = time.perf_counter() - t0
    model.load_state_dict(back, strict=True)  # raises on any missing/unexpected/mis-shaped key
    loads = pretrained_loads(arch, model)
    return {
        **loads,
        "arch": arch,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "from_torch_s": from_s,
        "to_torch_s": to_s,
        "max_abs_diff": float(np.max(np.abs(out - ref))),
        "max_abs_logit": float(np.max(np.abs(ref))),
        "image_size": size,
    }


def eval_parity(arch: str, size: int, batch: int, device: str) -> dict[str, Any]:
    """torchvision's eval logits vs jaxtl's for the converted weights, both on ``device`` ("cpu" | "gpu") at full
    float32 precision (TF32 off in torch, ``jax.default_matmul_precision("highest")``): max|diff| of the logits of a
    random input ``[batch, 3, size, size]``, the largest |logit| for scale, and the seconds each side took."""
    import jax
    import torch
    import torchvision

    from jaxtl.bridge import from_torchvision

    dev = torch.device("cuda" if device == "gpu" else "cpu")
    flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        torch.manual_seed(0)
        model = getattr(torchvision.models, arch)(weights=None).eval()
        _randomize_bn(model, 1)
        x = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
        t0 = time.perf_counter()
        module, variables = from_torchvision(model.state_dict(), arch=arch)
        convert_s = time.perf_counter() - t0
        model = model.to(dev)
        with torch.inference_mode():
            ref = model(torch.from_numpy(x).to(dev)).float().cpu().numpy()
        jax_dev = jax.devices()[0] if device == "gpu" else jax.devices("cpu")[0]
        with jax.default_matmul_precision("highest"):
            fwd = jax.jit(lambda v, a: module.apply(v, a, train=False))
            t0 = time.perf_counter()
            out = np.asarray(fwd(jax.device_put(variables, jax_dev), jax.device_put(x.transpose(0, 2, 3, 1), jax_dev)))
            jax_s = time.perf_counter() - t0
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags
    return {
        "arch": arch,
        "image_size": size,
        "batch_size": batch,
        "device": device,
        "jax_platform": jax_dev.platform,
        "max_abs_diff": float(np.max(np.abs(out - ref))),
        "max_abs_logit": float(np.max(np.abs(ref))),
        "convert_s": convert_s,
        "jax_compile_and_run_s": jax_s,
    }


_CACHED_LOAD = """
import sys, time, json
t0 = time.perf_counter()
from jaxtl.bridge import pretrained
import jax
loaded = pretrained({arch!r}, weights="DEFAULT")
jax.block_until_ready(loaded.variables)
seconds = time.perf_counter() - t0
print(json.dumps({{"s": seconds, "cached": bool(loaded.report.cached), "torch": "torch" in sys.modules}}))
"""


def pretrained_loads(arch: str, model: Any) -> dict[str, Any]:
    """Seconds for ``pretrained(arch)``: first (convert + cache), cached in-process, cached in a fresh process."""
    import jax
    import torch

    from jaxtl.bridge import cached_weights_file, pretrained, resolve_name

    with tempfile.TemporaryDirectory() as tmp:
        env = {"TORCH_HOME": os.path.join(tmp, "torch"), "JAXTL_WEIGHTS_CACHE": os.path.join(tmp, "cache")}
        saved = {k: os.environ.get(k) for k in (*env, "JAXTL_OFFLINE")}
        os.environ.update(env, JAXTL_OFFLINE="1")
        try:
            path = cached_weights_file(resolve_name(arch, "DEFAULT"))
            path.parent.mkdir(parents=True)
            torch.save(model.state_dict(), path)
            times = {}
            for name in ("first", "cached"):
                t0 = time.perf_counter()
                loaded = pretrained(arch, weights="DEFAULT")
                jax.block_until_ready(loaded.variables)
                times[name] = time.perf_counter() - t0
            assert loaded.report.cached, "the second load did not come from the cache"
            run = subprocess.run(
                [sys.executable, "-c", _CACHED_LOAD.format(arch=arch)],
                env={**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")},
                capture_output=True,
                text=True,
                check=True,
            )
            fresh = json.loads(run.stdout.strip().splitlines()[-1])
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    if not fresh["cached"] or fresh["torch"]:
        raise RuntimeError(f"fresh-process load: from cache {fresh['cached']}, torch imported {fresh['torch']}")
    return {
        "pretrained_first_s": times["first"],
        "pretrained_cached_s": times["cached"],
        "pretrained_cached_fresh_process_s": fresh["s"],
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="+", default=None, help="default: every resnet-family architecture")
    p.add_argument("--image-size", type=int, default=64)
    args = p.parse_args(argv)
    common.prepare_backend("cpu" if args.device == "cpu" else args.device, 1)
    import jaxtl

    archs = args.archs or jaxtl.list_models("resnet")
    if args.smoke:
        archs, args.image_size = ["resnet18"], 32
    unknown = [a for a in archs if a not in jaxtl.list_models("resnet")]
    if unknown:
        raise SystemExit(
            f"--archs: not resnet-family architectures: {unknown}; choose from {jaxtl.list_models('resnet')}"
        )
    results = []
    for arch in archs:
        results.append(one_arch(arch, args.image_size))
        r = results[-1]
        print(
            f"{arch}: from {r['from_torch_s']:.2f}s to {r['to_torch_s']:.2f}s max|diff| {r['max_abs_diff']:.2e}; "
            f"pretrained() first {r['pretrained_first_s']:.2f}s, cached {r['pretrained_cached_s']:.2f}s, "
            f"cached in a fresh process {r['pretrained_cached_fresh_process_s']:.2f}s",
            flush=True,
        )
    common.print_table(
        ["arch", "params_M", "from_torch_s", "to_torch_s", "max_abs_diff", "first_load_s", "cached_s", "fresh_proc_s"],
        [
            [
                r["arch"],
                r["params_m"],
                r["from_torch_s"],
                r["to_torch_s"],
                r["max_abs_diff"],
                r["pretrained_first_s"],
                r["pretrained_cached_s"],
                r["pretrained_cached_fresh_process_s"],
            ]
            for r in results
        ],
    )
    payload = {
        "benchmark": "bridge",
        "machine": common.machine_info(args.device),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "results": results,
    }
    print(f"wrote {common.write_results('bridge', payload, args.out)}")
    return payload


if __name__ == "__main__":
    main()
