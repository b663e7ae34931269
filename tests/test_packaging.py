"""The built package installs jaxtl.bridge (from bridge/) and no top-level `bridge`; importing jaxtl skips torch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(code: str, cwd: Path, pythonpath: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["JAX_PLATFORMS"] = "cpu"
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    # Build from a copy: an in-tree build would write build/ and *.egg-info into the repo, racing other runs.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, src / name)
    for pkg in ("jaxtl", "bridge"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
            "--no-compile", "--target", str(target), str(src),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    return target


def test_wheel_installs_bridge_inside_jaxtl(installed, tmp_path) -> None:
    assert (installed / "jaxtl" / "bridge" / "__init__.py").is_file()
    assert not (installed / "bridge").exists(), "a top-level package named 'bridge' was installed"
    r = _run(
        "import sys, jaxtl, jaxtl.bridge; "
        "print(jaxtl.__file__); print(jaxtl.bridge.__file__); print(jaxtl.bridge.from_torchvision.__module__); "
        "import importlib.util; print(importlib.util.find_spec('bridge'))",
        cwd=tmp_path,
        pythonpath=str(installed),
    )
    assert r.returncode == 0, r.stderr
    jaxtl_file, bridge_file, fn_module, bare = r.stdout.split()
    assert Path(jaxtl_file).is_relative_to(installed) and Path(bridge_file).is_relative_to(installed)
    assert fn_module == "jaxtl.bridge.convert"
    assert bare == "None"


@pytest.mark.parametrize("module", ["jaxtl", "jaxtl.bridge"])
def test_import_does_not_import_torch(module, tmp_path) -> None:
    r = _run(f"import sys, {module}; print('torch' in sys.modules)", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
