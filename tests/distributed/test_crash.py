"""Faults around checkpoints: SIGKILL in the middle of a checkpoint write, damaged newest checkpoint, bad workdir."""

from __future__ import annotations

import collections
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings

import jax
import numpy as np
import pytest
from conftest import HERE, TIMEOUT_S, child_env, python
from crash_worker import run

from jaxtl.train import CheckpointDamagedError, RunStore, WorkdirError

STEPS = 6  # checkpoints at 2, 4, 6
WORKER = HERE / "crash_worker.py"


def _leaves(result) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(result.state)]


def _final(workdir: pathlib.Path) -> list[np.ndarray]:
    with np.load(workdir / "final.npz") as f:
        return [f[k] for k in sorted(f.files)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    return _leaves(run(tmp_path_factory.mktemp("straight"), STEPS))


@pytest.fixture(scope="module")
def at_four(tmp_path_factory):
    """A work directory holding the complete checkpoints of steps 2 and 4."""
    workdir = tmp_path_factory.mktemp("at_four")
    run(workdir, 4)
    return workdir


def test_sigkill_during_checkpoint_write_then_resume(straight, tmp_path):
    proc = subprocess.Popen(python(WORKER, tmp_path, STEPS, 4), env=child_env(4), stderr=subprocess.PIPE)
    marker = tmp_path / "pausing"
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), f"the worker never reached the step-4 commit: {proc.poll()=}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    ckpts = tmp_path / "checkpoints"
    assert pathlib.Path(marker.read_text()).exists(), "the half-written checkpoint should be on disk"
    assert sorted(p.name for p in ckpts.iterdir() if p.name.isdigit()) == ["2"], stderr[-2000:]
    subprocess.run(python(WORKER, tmp_path, STEPS), env=child_env(4), check=True, timeout=TIMEOUT_S)
    _assert_same(straight, _final(tmp_path))
    assert sorted(p.name for p in ckpts.iterdir()) == ["2", "4", "6"]  # the temporary folder was cleaned up


def _data_files(step_dir: pathlib.Path) -> list[pathlib.Path]:
    return sorted((p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"), key=str)


def _truncate(step_dir: pathlib.Path) -> None:
    for p in _data_files(step_dir):
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _corrupt(step_dir: pathlib.Path) -> None:
    biggest = max(_data_files(step_dir), key=lambda p: p.stat().st_size)
    data = bytearray(biggest.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 16):
        data[i] ^= 0xFF
    biggest.write_bytes(bytes(data))


def _no_checkpoint_metadata(step_dir: pathlib.Path) -> None:
    (step_dir / "_CHECKPOINT_METADATA").unlink()


def _no_position(step_dir: pathlib.Path) -> None:
    (step_dir / "meta" / "metadata").unlink()


def _no_state_manifest(step_dir: pathlib.Path) -> None:
    for p in (step_dir / "state").rglob("manifest.ocdbt"):
        p.unlink()
    (step_dir / "state" / "_METADATA").unlink()


def _empty(step_dir: pathlib.Path) -> None:
    shutil.rmtree(step_dir)
    step_dir.mkdir()


DAMAGE = {
    f.__name__.strip("_"): f
    for f in (_truncate, _corrupt, _no_checkpoint_metadata, _no_position, _no_state_manifest, _empty)
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_checkpoint_warns_and_uses_previous(damage, at_four, straight, tmp_path):
    workdir = tmp_path / "work"
    shutil.copytree(at_four, workdir)
    DAMAGE[damage](workdir / "checkpoints" / "4")
    seen = collections.Counter()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = run(workdir, STEPS, on_step=lambda step, m: seen.update([step]))
    messages = [str(w.message) for w in record if issubclass(w.category, RuntimeWarning)]
    assert any(re.search(r"checkpoint step 4 at .*checkpoints/4\b.*previous", m) for m in messages), messages
    assert any(re.search(r"damaged checkpoint step 4 moved", m) for m in messages), messages
    assert sorted(seen) == [3, 4, 5, 6]  # resumed from step 2
    _assert_same(straight, _leaves(result))
    assert [p.name.split("-")[0] for p in (workdir / "damaged_checkpoints").iterdir()] == ["4"]


def test_every_checkpoint_damaged_is_an_error_not_a_fresh_start(at_four, tmp_path):
    workdir = tmp_path / "work"
    shutil.copytree(at_four, workdir)
    for step in ("2", "4"):
        _truncate(workdir / "checkpoints" / step)
    expected = r"every checkpoint.*\[4, 2\]"
    with warnings.catch_warnings(record=True), pytest.raises(CheckpointDamagedError, match=expected):
        warnings.simplefilter("always")
        run(workdir, STEPS)


AFTER_DAMAGE = """
import gc, sys, time
from crash_worker import run
from jaxtl.train import CheckpointDamagedError
try:
    run(sys.argv[1], 6)
except CheckpointDamagedError as e:
    print("stopped:", e, flush=True)
for _ in range(3):  # let the reads left in flight finish and their tasks be collected, as a longer run would
    time.sleep(0.3)
    gc.collect()
"""


def test_damaged_checkpoints_print_their_warnings_and_nothing_else(at_four, tmp_path):
    # Orbax stops a restore at its first failed read and closes its event loop; the reads still in flight used to
    # print a dozen "Event loop is closed" / "Task exception was never retrieved" tracebacks around the warnings,
    # and each warning carried tensorstore's 2 kB spec.
    workdir = tmp_path / "work"
    shutil.copytree(at_four, workdir)
    for step in ("2", "4"):
        _truncate(workdir / "checkpoints" / step)
    proc = subprocess.run(
        python("-c", AFTER_DAMAGE, workdir), env=child_env(4), capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert proc.returncode == 0 and "stopped: every checkpoint" in proc.stdout, proc.stderr[-3000:]
    warned = [line for line in proc.stderr.splitlines() if "RuntimeWarning: checkpoint step" in line]
    assert len(warned) == 2 and all("cannot be read: ValueError: " in line for line in warned), proc.stderr
    for noise in ("Traceback", "Event loop is closed", "never retrieved", "tensorstore_spec"):
        assert noise not in proc.stderr, proc.stderr[-3000:]


def test_only_the_failed_reads_are_quieted(tmp_path):
    # What a failed restore installs drops exactly two things: a closed loop's wake-up error raised in
    # call_soon_threadsafe, and asyncio's records for errors naming a damaged checkpoint's folder.
    import asyncio
    import logging
    import types

    from jaxtl.train import run_store

    folder = str(tmp_path / "checkpoints" / "4")
    run_store._quiet_failed_reads(folder)
    installed = sys.unraisablehook
    run_store._quiet_failed_reads(folder)  # once per process: not wrapped again
    assert sys.unraisablehook is installed and installed._jaxtl_drops_closed_loop_wakeups

    def raised(exc: BaseException, *, in_loop: bool) -> types.SimpleNamespace:
        loop = asyncio.new_event_loop()
        loop.close()
        try:
            if in_loop:
                loop.call_soon_threadsafe(print)
            raise exc
        except BaseException as e:
            return types.SimpleNamespace(
                exc_type=type(e), exc_value=e, exc_traceback=e.__traceback__, err_msg=None, object=None
            )

    seen: list = []
    hook = run_store._closed_loop_filter(seen.append)
    hook(raised(RuntimeError("Event loop is closed"), in_loop=True))  # dropped
    hook(raised(RuntimeError("Event loop is closed"), in_loop=False))  # the same words, raised elsewhere
    hook(raised(ValueError("something else"), in_loop=False))
    assert [str(a.exc_value) for a in seen] == ["Event loop is closed", "something else"]

    def record(text: str) -> logging.LogRecord:
        err = ValueError(text)
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "Task exception", None, (ValueError, err, None))

    log = logging.getLogger("asyncio")
    assert not log.filter(record(f"OUT_OF_RANGE: Error reading {folder}/state/d/0a1b"))
    assert log.filter(record(f"OUT_OF_RANGE: Error reading {tmp_path}/elsewhere/d/0a1b"))
    plain = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "no exception", None, None)
    assert log.filter(plain)


def test_restore_of_an_explicit_damaged_step_raises(at_four, tmp_path):
    from tiny import Tiny, tiny_variables

    from jaxtl.train import TrainState

    workdir = tmp_path / "work"
    shutil.copytree(at_four, workdir)
    _corrupt(workdir / "checkpoints" / "4")
    module = Tiny()
    template = TrainState.create(module, jax.device_get(tiny_variables(module)), _tx())
    with RunStore(workdir, readonly=True) as store:
        with pytest.raises(CheckpointDamagedError, match="step 4"):
            store.restore_step(template, 4)
        _, position = store.restore_step(template, 2)
        assert position == {"step": 2, "epoch": 0, "batch": 2}


def _tx():
    import optax

    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2, weight_decay=1e-3))


def test_workdir_under_a_file_is_an_error_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(WorkdirError, match=r"cannot create work directory .*file/sub"):
        run(blocker / "sub", STEPS, on_step=lambda *_: pytest.fail("trained"))
    with pytest.raises(WorkdirError, match="exists and is not a directory"):
        run(blocker, STEPS, on_step=lambda *_: pytest.fail("trained"))


def test_full_disk_is_an_error_before_training(tmp_path, monkeypatch):
    lifecycle = sys.modules["jaxtl.lifecycle"]
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(lifecycle.shutil, "disk_usage", lambda p: usage._replace(free=4096))
    with pytest.raises(WorkdirError, match=r"0\.0 MiB free; this run needs about 1\.\d MiB"):
        run(tmp_path / "work", STEPS, on_step=lambda *_: pytest.fail("trained"))
    assert not (tmp_path / "work" / "checkpoints").exists()
