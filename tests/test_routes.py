"""One meaning per word, whatever the route: the same frozen-head fine-tuning request through the README's
lower-level snippet (extracted from README.md and executed as written), ``fit``, ``finetune`` and the CLI ends with
bitwise-identical params and batch_stats after 3 steps, and the backbone did not move at all."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import traverse_util

import jaxtl
from jaxtl.cli import main
from jaxtl.recipes import FinetuneConfig, Split
from jaxtl.train import Loop, Optimizer, ParamGroups, fit, load_variables

ROOT = Path(__file__).resolve().parent.parent
MARKER = "TrainState.create("  # the README's lower-level snippet is the python block that builds a state by hand


def _readme_snippet() -> str:
    blocks = re.findall(r"^```python[^\n]*\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)
    found = [b for b in blocks if MARKER in b]
    assert len(found) == 1, f"expected one README python block with {MARKER!r}, found {len(found)}"
    return found[0]


def _flat(tree) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(tree), sep="/").items()}


def _assert_same(a, b, what):
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys(), what
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=f"{what}: {k}")


@pytest.fixture(scope="module")
def routes(tmp_path_factory):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    work = tmp_path_factory.mktemp("routes")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        for m in model.modules():  # non-trivial running statistics: eval-mode BatchNorm must use them
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    torch.save(model.state_dict(), work / "resnet18.pth")

    import os

    cwd = os.getcwd()
    os.chdir(work)
    try:
        ns: dict = {}
        exec(compile(_readme_snippet(), "README.md (lower-level snippet)", "exec"), ns)
    finally:
        os.chdir(cwd)
    out = {"readme": ns["state"]}
    model_, variables, train = ns["model"], ns["variables"], ns["train"]

    out["fit"] = fit(
        model_,
        variables,
        train,
        optimizer={"name": "sgd", "lr": 0.01},
        groups=ParamGroups.head_only(),
        loop=Loop(steps=3, batch_size=16),
        progress=False,
    ).state
    config = FinetuneConfig(
        mode="frozen",
        optimizer=Optimizer("sgd", lr=0.01),
        loop=Loop(steps=3, batch_size=16),
        split=Split(test_fraction=0),  # the snippet split the data itself
        feature_cache=False,
    )
    out["finetune"] = jaxtl.finetune(config, (model_, variables), train, progress=False).variables
    cached = dataclasses.replace(config, feature_cache=None)  # the default: features computed once
    out["cached"] = jaxtl.finetune(cached, (model_, variables), train, progress=False).variables
    argv = ["finetune", "--torch-weights", str(work / "resnet18.pth"), "--data", "digits", "--image-size", "32"]
    argv += ["--freeze", "backbone", "--optimizer", "sgd", "--lr", "0.01", "--steps", "3", "--batch-size", "16"]
    assert main([*argv, "--no-feature-cache", "--workdir", str(work / "cli"), "--no-progress"]) == 0
    _, cli_vars, card = load_variables(work / "cli" / "classifier")
    out["cli"] = cli_vars
    return out, variables, card


@pytest.mark.parametrize("route", ["fit", "finetune", "cli"])
def test_every_route_trains_the_same_model(routes, route):
    out, _, _ = routes
    ref = out["readme"]
    got = out[route]
    params = got.params if hasattr(got, "params") else got["params"]
    stats = got.batch_stats if hasattr(got, "batch_stats") else got["batch_stats"]
    _assert_same(ref.params, params, f"params ({route} vs README)")
    _assert_same(ref.batch_stats, stats, f"batch_stats ({route} vs README)")


def test_the_cached_feature_route_trains_the_same_head(routes):
    # Features computed once, then the head trained on them: the same model to float rounding (the backbone's
    # forward pass runs in other batch shapes), and the backbone and its statistics exactly the same.
    out, _, _ = routes
    ref, got = _flat(out["readme"].params), _flat(out["cached"]["params"])
    assert ref.keys() == got.keys()
    for k in ref:
        if k.startswith("fc/"):
            np.testing.assert_allclose(ref[k], got[k], rtol=1e-5, atol=1e-6, err_msg=k)
        else:
            np.testing.assert_array_equal(ref[k], got[k], err_msg=k)
    _assert_same(out["readme"].batch_stats, out["cached"]["batch_stats"], "batch_stats (cached vs README)")


def test_frozen_means_the_backbone_and_its_statistics_never_move(routes):
    out, start, card = routes
    after = out["readme"]
    p0, p1 = _flat(start["params"]), _flat(after.params)
    assert any(not np.array_equal(p0[k], p1[k]) for k in p0 if k.startswith("fc/"))
    for k in p0:
        if not k.startswith("fc/"):
            np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)
    _assert_same(start["batch_stats"], after.batch_stats, "batch_stats")
    assert card.class_names == tuple(str(i) for i in range(10)) and card.extra["mode"] == "frozen"
