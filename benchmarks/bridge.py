"""torchvision <-> jaxtl conversion time and eval-logit agreement per architecture: ``python -m benchmarks.bridge``.

For each architecture the bridge converts (torchvision's ResNets, ViTs and ConvNeXts): a randomly initialised
torchvision model (``weights=None``) with randomised norms (BatchNorm running statistics and affine, LayerNorm
affine, layer scales) and a ViT's zero head made random (so no layer is the identity and the logits are not 0),
``from_torchvision`` and ``to_torchvision`` timed, and max|diff| of eval logits on a small float32 input
``[2, 3, S, S]`` (a ViT at its weights' 224 px). Then the one-line route, ``jaxtl.bridge.pretrained(arch,
weights=W)`` (``DEFAULT``; a ViT's 224-px weights), on that model saved under torchvision's file name in a
temporary ``TORCH_HOME``: the first load (read the .pth with torch, convert, write the jaxtl cache), the second load
in the same process (from the cache), and the second load in a fresh process (interpreter start and imports
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


def _randomize_norms(model: Any, seed: int) -> None:
    """BatchNorm statistics and affine, LayerNorm affine and layer scales away from their init, and zero-initialised
    weights (a ViT's head) made random: a converted model with any layer wrong cannot give the same logits."""
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
            elif isinstance(m, torch.nn.LayerNorm):  # ConvNeXt's LayerNorm2d too
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
        for name, p in model.named_parameters():
            if name.endswith("layer_scale"):
                p.copy_(0.05 + 0.15 * torch.rand(p.shape, generator=g))
            elif p.ndim == 2 and not p.any():
                p.copy_(0.02 * torch.randn(p.shape, generator=g))


def model_size(arch: str, size: int) -> int:
    """The input size an architecture is converted and checked at: a ViT's weights' 224 px, ``size`` otherwise."""
    from jaxtl.models import get_spec

    spec = get_spec(arch)
    return spec.input_size if spec.patch_size else size


def weights_name(arch: str, size: int) -> str:
    """The torchvision weights ``pretrained()`` loads for a model built at ``size`` px: ``DEFAULT``, or for a ViT
    the first weights made for that size (vit_h_14's DEFAULT are 518-px SWAG weights; its 224-px ones the SWAG
    linear-probe weights)."""
    from jaxtl.models import get_spec

    if not get_spec(arch).patch_size:
        return "DEFAULT"
    import torchvision

    for member in torchvision.models.get_model_weights(arch):
        if member.transforms().crop_size[0] == size:
            return str(member.name)
    raise SystemExit(f"{arch}: torchvision has no {size}-px weights")


def one_arch(arch: str, size: int) -> dict[str, Any]:
    import jax
    import torch
    import torchvision

    from jaxtl.bridge import from_torchvision, to_torchvision
    from jaxtl.models import get_spec

    torch.manual_seed(0)
    size = model_size(arch, size)
    kwargs = {"image_size": size} if get_spec(arch).patch_size else {}
    model = getattr(torchvision.models, arch)(weights=None, **kwargs).eval()
    _randomize_norms(model, 1)
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
    loads = pretrained_loads(arch, model, weights_name(arch, size))
    return {
        **loads,
        "arch": arch,
        "weights": weights_name(arch, size),
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
        kwargs = {"image_size": size} if arch.startswith("vit_") else {}
        model = getattr(torchvision.models, arch)(weights=None, **kwargs).eval()
        _randomize_norms(model, 1)
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
loaded = pretrained({arch!r}, weights={weights!r})
jax.block_until_ready(loaded.variables)
seconds = time.perf_counter() - t0
print(json.dumps({{"s": seconds, "cached": bool(loaded.report.cached), "torch": "torch" in sys.modules}}))
"""


def pretrained_loads(arch: str, model: Any, weights: str = "DEFAULT") -> dict[str, Any]:
    """Seconds for ``pretrained(arch, weights)``: first (convert + cache), cached in-process, cached in a fresh
    process; ``model`` is saved as those weights' file."""
    import jax
    import torch

    from jaxtl.bridge import cached_weights_file, pretrained, resolve_name

    with tempfile.TemporaryDirectory() as tmp:
        env = {"TORCH_HOME": os.path.join(tmp, "torch"), "JAXTL_WEIGHTS_CACHE": os.path.join(tmp, "cache")}
        saved = {k: os.environ.get(k) for k in (*env, "JAXTL_OFFLINE")}
        os.environ.update(env, JAXTL_OFFLINE="1")
        try:
            path = cached_weights_file(resolve_name(arch, weights))
            path.parent.mkdir(parents=True)
            torch.save(model.state_dict(), path)
            times = {}
            for name in ("first", "cached"):
                t0 = time.perf_counter()
                loaded = pretrained(arch, weights=weights)
                jax.block_until_ready(loaded.variables)
                times[name] = time.perf_counter() - t0
            assert loaded.report.cached, "the second load did not come from the cache"
            run = subprocess.run(
                [sys.executable, "-c", _CACHED_LOAD.format(arch=arch, weights=weights)],
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
    p.add_argument("--archs", nargs="+", default=None, help="default: every architecture the bridge converts")
    p.add_argument("--image-size", type=int, default=64, help="input of the logit check (a ViT: its weights' 224)")
    args = p.parse_args(argv)
    common.prepare_backend("cpu" if args.device == "cpu" else args.device, 1)
    import jaxtl

    convertible = jaxtl.list_models(torchvision=True)
    archs = args.archs or convertible
    if args.smoke:
        archs, args.image_size = ["resnet18", "convnext_tiny", "vit_b_32"], 32
    unknown = [a for a in archs if a not in convertible]
    if unknown:
        raise SystemExit(f"--archs: the bridge does not convert {unknown}; choose from {convertible}")
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
