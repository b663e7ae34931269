"""save_variables / load_variables: exact round trip with the model card, refusal to overwrite, atomic writes, clear
errors."""

from __future__ import annotations

import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxtl
from jaxtl.errors import CheckpointError, OutputError
from jaxtl.models.card import ModelCard
from jaxtl.train.model_files import load_variables, save_variables

CARD = ModelCard.for_arch("resnet18", 5, class_names=("a", "b", "c", "d", "e"), source="test")


@pytest.fixture(scope="module")
def variables():
    module = jaxtl.create("resnet18", num_classes=5)
    v = jax.jit(lambda k: module.init(k, jnp.zeros((1, 32, 32, 3)), train=False))(jax.random.PRNGKey(0))
    v = jax.tree.map(lambda a: a + 1 if a.dtype == jnp.int32 else a, v)  # non-default counters
    return v


def _equal(a, b) -> bool:
    same_structure = jax.tree.structure(a) == jax.tree.structure(b)
    return same_structure and jax.tree.all(jax.tree.map(lambda x, y: x.dtype == y.dtype and np.array_equal(x, y), a, b))


def test_roundtrip_and_overwrite(variables, tmp_path) -> None:
    d = tmp_path / "ck"
    save_variables(d, variables, CARD)
    module, restored, card = load_variables(d)
    assert module.num_classes == 5 and card == CARD
    assert json.loads((d / "jaxtl.json").read_text())["jaxtl_version"] == jaxtl.__version__
    assert _equal(restored, variables)
    with pytest.raises(OutputError, match="already exists"):
        save_variables(d, variables, CARD)
    changed = jax.tree.map(lambda a: a * 2, variables)
    save_variables(d, changed, CARD, overwrite=True)
    assert _equal(load_variables(d)[1], changed)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"], "temporary siblings left behind"
    # A file of the user's inside it: the folder is no longer what jaxtl wrote, and is never replaced.
    (d / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not exactly what jaxtl wrote there"):
        save_variables(d, variables, CARD, overwrite=True)
    assert (d / "notes.txt").read_text() == "mine" and _equal(load_variables(d)[1], changed)


def test_failed_write_leaves_nothing(variables, tmp_path, monkeypatch) -> None:
    with pytest.raises(CheckpointError, match=r"not arrays: \['params'\]\['x'\]"):
        save_variables(tmp_path / "ck", {"params": {"x": object()}}, CARD)
    assert list(tmp_path.iterdir()) == []

    def failing_rename(self, target):
        raise OSError(f"simulated crash renaming {self}")

    # Everything written, then the final step fails: no checkpoint and no temporary left.
    with monkeypatch.context() as m:
        m.setattr(pathlib.Path, "rename", failing_rename)
        with pytest.raises(OSError, match="simulated crash"):
            save_variables(tmp_path / "ck", variables, CARD)
    assert list(tmp_path.iterdir()) == []
    # A failing overwrite keeps the old checkpoint intact.
    save_variables(tmp_path / "ck", variables, CARD)
    with monkeypatch.context() as m:
        m.setattr(pathlib.Path, "rename", failing_rename)
        with pytest.raises(OSError, match="simulated crash"):
            save_variables(tmp_path / "ck", jax.tree.map(lambda a: a * 2, variables), CARD, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]
    assert _equal(load_variables(tmp_path / "ck")[1], variables)
    with pytest.raises(CheckpointError, match="not JSON-serialisable"):
        save_variables(tmp_path / "ck2", variables, CARD.replace(extra={"x": object()}))
    assert not (tmp_path / "ck2").exists()


def test_missing_and_damaged(variables, tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"nothing does not exist"):
        load_variables(tmp_path / "nothing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(CheckpointError, match=r"plain is not a jaxtl model directory: jaxtl\.json is missing"):
        load_variables(tmp_path / "plain")
    d = tmp_path / "ck"
    save_variables(d, variables, CARD)
    broken = tmp_path / "broken_json"
    shutil.copytree(d, broken)
    (broken / "jaxtl.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"broken_json/jaxtl\.json is damaged"):
        load_variables(broken)
    wrong = tmp_path / "wrong_arch"
    shutil.copytree(d, wrong)
    meta = json.loads((wrong / "jaxtl.json").read_text())
    (wrong / "jaxtl.json").write_text(json.dumps({**meta, "card": {**meta["card"], "arch": "resnet34"}}))
    with pytest.raises(CheckpointError, match="do not match the model card"):
        load_variables(wrong)
    no_state = tmp_path / "no_state"
    shutil.copytree(d, no_state)
    shutil.rmtree(no_state / "variables")
    with pytest.raises(CheckpointError, match="variables/ is missing"):
        load_variables(no_state)
    assert issubclass(CheckpointError, ValueError)
