"""Time to first step: ``import jaxtl`` imports nothing heavy, the lazy exports are exactly the typed imports, and a
second identical fine-tuning run compiles nothing (the compile cache is on by default) while both report their
start-up phases."""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

import jaxtl
from jaxtl.models import ModelCard

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("jaxtl", "jaxtl.data", "jaxtl.models", "jaxtl.train", "jaxtl.recipes")
HEAVY = ("jax", "flax", "optax", "orbax", "grain", "torch", "sklearn", "matplotlib", "tensorboardX")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("JAXTL_COMPILE_CACHE", "JAX_COMPILATION_CACHE_DIR")}
    return {**env, "JAX_PLATFORMS": "cpu", **extra}


def _python(code: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", code, *args]
    return subprocess.run(cmd, env=_env(**env), capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_import_jaxtl_imports_nothing_heavy():
    r = _python(f"import sys, jaxtl; print([m for m in {HEAVY!r} if m in sys.modules])")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def _typed_imports(package: str) -> dict[str, str]:
    """``{name: module}`` of the ``if TYPE_CHECKING:`` imports of a package's ``__init__``."""
    path = Path(importlib.import_module(package).__file__ or "")
    found: dict[str, str] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom)
                for alias in imp.names:
                    found[alias.asname or alias.name] = (
                        f"{imp.module}.{alias.name}" if imp.module == package else (imp.module or "")
                    )
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_lazy_exports_are_the_typed_imports_and_all_of_them_resolve(package):
    mod = importlib.import_module(package)
    typed = _typed_imports(package)
    assert sorted(typed) == sorted(n for n in mod.__all__ if n != "__version__")
    for name in mod.__all__:
        value = getattr(mod, name)
        home = typed.get(name)
        if home is not None and home.rpartition(".")[2] != name:
            assert value is getattr(importlib.import_module(home), name), name
    assert set(mod.__all__) <= set(dir(mod))
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        mod.no_such_name  # noqa: B018


RUN = """
import json, sys
import jaxtl
from jaxtl.train import record_timings

if __name__ == "__main__":
    config = jaxtl.FinetuneConfig(
        mode="full",
        loop=jaxtl.Loop(batch_size=8, steps=3, parallel="none"),
        input=jaxtl.Input(image_size=16, workers=0),
        split=jaxtl.Split(test_fraction=0.25),
    )
    with record_timings() as t:
        result = jaxtl.finetune(config, sys.argv[2], "folder:" + sys.argv[1], progress=False)
    print(json.dumps({"compiled": t.compiled, "hits": t.jax["cache_hits"], "phases": sorted(t.seconds()),
                      "top1": result.metrics["top1"]}))
"""


@pytest.fixture(scope="module")
def folder_and_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("startup")
    rng = np.random.default_rng(0)
    for i in range(24):
        d = root / "images" / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(d / f"{i:02d}.jpg")
    module = jaxtl.create("convnet_small", num_classes=0)
    variables = jax.jit(lambda k: module.init(k, np.zeros((1, 16, 16, 3), np.float32), train=False))(
        jax.random.PRNGKey(0)
    )
    card = ModelCard.for_arch("convnet_small", 0, image_size=16, kind="encoder")
    model = jaxtl.save_variables(root / "encoder", jax.device_get(variables), card)
    return root / "images", model


def test_a_second_identical_run_compiles_nothing_and_both_report_their_phases(folder_and_model, tmp_path):
    folder, model = folder_and_model
    cache = tmp_path / "xla"
    runs = []
    for _ in range(2):
        r = _python(RUN, str(folder), str(model), JAXTL_COMPILE_CACHE=str(cache))
        assert r.returncode == 0, r.stderr[-3000:]
        runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    first, second = runs
    assert first["compiled"] > 0 and any(cache.iterdir()), "the default cache was not used"
    assert second["compiled"] == 0 and second["hits"] >= 3, second
    assert second["top1"] == first["top1"]
    for name in ("data: first batch", "compile: train step", "train: first step", "compile: eval step", "eval: pass"):
        assert name in second["phases"], (name, second["phases"])
