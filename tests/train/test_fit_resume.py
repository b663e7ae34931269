"""fit: exact resume in a fresh process, resume after SIGKILL, NaN stops the run with the last checkpoint intact."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from run_fit import make_tx, run

from jaxtl.train import NonFiniteLossError, RunStore, TrainState

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
STEPS = 10  # 5 per epoch of 40 examples at batch 8


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = os.environ["XLA_FLAGS"]  # the same fake devices and CPU flags as this process
    env["JAXTL_TEST_CACHE"] = str(jax.config.jax_compilation_cache_dir or ROOT / ".jax_cache")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _script(workdir, steps, sleep_s=0.0) -> list[str]:
    return [sys.executable, str(HERE / "run_fit.py"), str(workdir), str(steps), str(sleep_s)]


def _final(workdir) -> list[np.ndarray]:
    with np.load(pathlib.Path(workdir) / "final.npz") as f:
        return [f[k] for k in sorted(f.files)]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted reference run of STEPS steps, in a subprocess like the others."""
    workdir = tmp_path_factory.mktemp("straight")
    subprocess.run(_script(workdir, STEPS), env=_env(), check=True, timeout=300)
    return _final(workdir)


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_resume_in_fresh_process_is_bit_identical(straight, tmp_path):
    subprocess.run(_script(tmp_path, STEPS // 2 + 1), env=_env(), check=True, timeout=300)  # stops mid-epoch
    first = _final(tmp_path)
    subprocess.run(_script(tmp_path, STEPS), env=_env(), check=True, timeout=300)
    resumed = _final(tmp_path)
    with pytest.raises(AssertionError):
        _assert_same(first, resumed)  # the second process did train
    _assert_same(straight, resumed)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    train_steps = [int(ln.split('"step": ')[1].split(",")[0]) for ln in lines if '"split": "train"' in ln]
    assert train_steps == list(range(1, STEPS + 1))


def test_sigkill_then_resume_finishes_like_uninterrupted(straight, tmp_path):
    proc = subprocess.Popen(_script(tmp_path, STEPS, sleep_s=1.0), env=_env())
    ckpts = tmp_path / "checkpoints"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            done = [p for p in ckpts.glob("*") if p.name.isdigit()] if ckpts.exists() else []
            if done:
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (tmp_path / "final.npz").exists()
    killed_at = max(int(p.name) for p in ckpts.glob("*") if p.name.isdigit())
    assert killed_at < STEPS
    subprocess.run(_script(tmp_path, STEPS), env=_env(), check=True, timeout=300)
    _assert_same(straight, _final(tmp_path))


@pytest.mark.parametrize("bad_step", [3, 4])
def test_nan_stops_with_step_and_previous_checkpoint_restores(tmp_path, bad_step):
    # Checkpoints every 2 steps. Step 4 is a checkpoint step; step 3 is not, and fit reads its loss only once step
    # 4 is queued (one step in flight): the NaN must still stop the run before step 4's checkpoint is written.
    from tiny import Tiny, tiny_variables

    from jaxtl.data.batching import epoch_indices

    order = epoch_indices(40, 0, 0)  # the bad_step-th step (batch index bad_step - 1) sees a NaN image
    with pytest.raises(NonFiniteLossError, match=f"at step {bad_step};.*last good checkpoint: step 2") as err:
        run(str(tmp_path), STEPS, nan_example=int(order[8 * (bad_step - 1)]))
    assert err.value.step == bad_step
    module = Tiny()
    template = TrainState.create(module, jax.device_get(tiny_variables(module)), make_tx())
    with RunStore(tmp_path, readonly=True) as store:
        assert store.manager.latest_step() == 2
        state, position = store.restore_latest(template)
    assert position == {"step": 2, "epoch": 0, "batch": 2}
    clean = run(str(tmp_path / "clean"), 2)
    _assert_same(jax.tree.leaves(clean.state), jax.tree.leaves(state))
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))


def test_keeps_latest_and_the_best_checkpoint(tmp_path):
    # keep=1 latest plus the best by eval top1: after a run whose best eval is not the last step, two remain and
    # the best one's metric is the maximum of the logged evals.
    import json

    import optax
    from tiny import Tiny, tiny_dataset, tiny_variables

    from jaxtl.train import Checkpoints, Loop, fit

    module = Tiny()
    data = tiny_dataset(40)
    fit(
        module,
        tiny_variables(module),
        data,
        eval_data=tiny_dataset(24, seed=1),
        optimizer=optax.sgd(0.5),  # large steps: eval accuracy moves around, so the best is rarely the last
        loop=Loop(batch_size=8, steps=12, eval_every=1, parallel="none"),
        checkpoints=Checkpoints(tmp_path, every=1, keep=1, best_metric="top1"),
        progress=False,
    )
    evals = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if r["split"] == "eval"]
    best = max(evals, key=lambda r: (r["top1"], r["step"]))
    kept = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert kept[-1] == 12
    assert any(evals[k - 1]["top1"] == best["top1"] for k in kept), (kept, [r["top1"] for r in evals])
    assert len(kept) <= 2, kept  # the latest and the best; the rest were deleted
