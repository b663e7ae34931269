"""Fill the git-ignored ``.whl/`` with what the GPU machine lacks for ``benchmarks.gpu_run``:
``python -m benchmarks.gpu_wheels`` (here, with network; the GPU machine has none).

- jaxtl itself, as a wheel built from this checkout (``import jaxtl`` from a plain checkout cannot work:
  ``jaxtl.bridge`` exists only through pyproject's package-dir mapping, which an installed wheel applies);
- cp312 manylinux wheels of grain, array_record and portpicker, and tensorboardX's pure-Python wheel (a jaxtl
  dependency: fit writes TensorBoard events by default), at the versions installed in this Python (the ones the
  tests ran with). Everything else they need (absl-py, etils, cloudpickle, numpy, protobuf, psutil) is installed on
  the GPU machine already;
- ``SOURCE.json``: the commit the wheel was built from (the GPU machine gets no ``.git``), which the driver
  reports.

On the GPU machine (README, section GPU) they are installed with ``pip install --no-index --no-deps --target DIR``
and the driver runs with ``PYTHONPATH=DIR:<checkout>`` from a directory outside the checkout.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

REPO = pathlib.Path(__file__).resolve().parent.parent
DEST = REPO / ".whl"
# What the GPU machine's Python lacks (its package list: /work/.library/device/KINDS.md in the lab).
MISSING = ("grain", "array_record", "portpicker", "tensorboardX")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")  # fmt: skip
SOURCES = ("pyproject.toml", "README.md", "jaxtl", "bridge")  # what building the jaxtl wheel reads


def build_jaxtl_wheel(dest: pathlib.Path, python: str = sys.executable) -> pathlib.Path:
    """Build the jaxtl wheel from a copy of this checkout's sources into ``dest``; returns its path.

    The copy keeps ``build/`` and ``*.egg-info`` out of the checkout (another build may be running there).
    Needs setuptools in ``python`` (no build isolation: nothing is downloaded).
    """
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="jaxtl-wheel-") as tmp:
        src = pathlib.Path(tmp) / "src"
        src.mkdir()
        for name in SOURCES:
            path = REPO / name
            if path.is_dir():
                shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(path, src / name)
        out = pathlib.Path(tmp) / "dist"
        cmd = [python, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src), "-w", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"building the jaxtl wheel failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        (wheel,) = out.glob("jaxtl-*.whl")
        target = dest / wheel.name
        shutil.copy2(wheel, target)
    return target


def download_missing(dest: pathlib.Path, python: str = sys.executable, py_version: str = "3.12") -> list[str]:
    """cp``py_version`` manylinux wheels of :data:`MISSING` at this Python's installed versions, into ``dest``."""
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in MISSING]
    cmd = [python, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", py_version,
           "--implementation", "cp", "-d", str(dest)]  # fmt: skip
    for plat in PLATFORMS:
        cmd += ["--platform", plat]
    proc = subprocess.run([*cmd, *pins], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"pip download {' '.join(pins)} failed:\n{proc.stderr[-3000:]}")
    return pins


def source_stamp() -> dict[str, object]:
    """``{"commit", "commit_dirty", "built"}`` of this checkout (``commit`` absent without git)."""
    stamp: dict[str, object] = {"built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(REPO), "diff", "--quiet", "HEAD", "--"], capture_output=True)
    except OSError:
        return stamp
    if head.returncode == 0:
        stamp.update(commit=head.stdout.strip(), commit_dirty=dirty.returncode == 1)
    return stamp


def main(argv: Sequence[str] | None = None) -> pathlib.Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dest", type=pathlib.Path, default=DEST, help="folder to fill (emptied first; default .whl)")
    p.add_argument("--python-version", default="3.12", help="the GPU machine's Python (default 3.12)")
    p.add_argument("--no-download", action="store_true", help="only the jaxtl wheel (no network)")
    args = p.parse_args(argv)
    if args.dest.exists():
        shutil.rmtree(args.dest)
    args.dest.mkdir(parents=True)
    wheel = build_jaxtl_wheel(args.dest)
    pins = [] if args.no_download else download_missing(args.dest, py_version=args.python_version)
    stamp = {**source_stamp(), "jaxtl_wheel": wheel.name, "downloaded": pins}
    (args.dest / "SOURCE.json").write_text(json.dumps(stamp, indent=2) + "\n")
    total = sum(f.stat().st_size for f in args.dest.iterdir()) / 2**20
    for f in sorted(args.dest.iterdir()):
        print(f"{f.stat().st_size / 2**20:7.2f} MiB  {f.name}")
    print(f"{total:.1f} MiB in {args.dest} (the device run carries it: carry ['.whl'])")
    return args.dest


if __name__ == "__main__":
    main()
