"""Every CPU benchmark with its default settings, then the README table: ``python -m benchmarks.run_all``.

Each benchmark runs in its own process (its own XLA flags, its own peak RSS). ``--quick`` drops the 224x224
step benchmarks and shrinks the rest. ``--write README.md`` updates the table between the bench markers at the end.
For the GPU: ``python3 -m benchmarks.gpu_run`` (README, section GPU).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence

PLAN: list[tuple[str, list[str]]] = [
    ("train_steps", []),
    ("end_to_end", []),
    ("folder_finetune", ["--warm"]),
    ("scaling", []),
    ("bridge", ["--archs", "resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "vit_b_16", "convnext_tiny"]),
    ("cpu_workarounds", []),
    ("data_pipeline", ["--workers", "0", "1", "--rss"]),
]
QUICK: dict[str, list[str]] = {
    "train_steps": ["--image-size", "64", "--extra-size", "64", "--repeats", "3"],
    "end_to_end": ["--examples", "128", "--epochs", "3"],
    "folder_finetune": ["--images", "200", "--epochs", "1", "--repeats", "1", "--warm"],
    "scaling": ["--devices", "1", "2", "--batch-sizes", "16", "32", "--repeats", "3"],
    "bridge": ["--archs", "resnet18", "resnet50"],
    "cpu_workarounds": ["--image-size", "64", "--batch", "32", "--repeats", "3"],
    "data_pipeline": ["--workers", "0", "1", "--images", "200"],
}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", nargs="+", choices=[n for n, _ in PLAN], default=None)
    p.add_argument("--write", default=None, help="README to update between the bench markers")
    args = p.parse_args(argv)
    failed = []
    for name, extra in PLAN:
        if args.only and name not in args.only:
            continue
        cmd = [sys.executable, "-m", f"benchmarks.{name}", *(QUICK[name] if args.quick else extra)]
        print(f"=== {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        print(f"=== {name}: {time.perf_counter() - t0:.0f}s, exit {rc}", flush=True)
        if rc:
            failed.append(name)
    report = [sys.executable, "-m", "benchmarks.report"] + (["--write", args.write] if args.write else [])
    rc = subprocess.call(report)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed or rc else 0


if __name__ == "__main__":
    sys.exit(main())
