"""A work directory belongs to one run: a second writer is refused, a resume with another fingerprint is refused
naming what differs (unless allowed), labels outside the head are errors, SIGTERM/SIGINT stop after a checkpoint
and the run resumes exactly, a full disk names the path and the space."""

from __future__ import annotations

import errno
import os
import signal

import jax
import numpy as np
import optax
import pytest
from tiny import Tiny, tiny_dataset, tiny_variables

from jaxtl.data import ArrayDataset
from jaxtl.lifecycle import WorkdirLock
from jaxtl.train import (
    Checkpoints,
    Loop,
    NonFiniteLossError,
    ParamGroups,
    RunInterrupted,
    RunMismatchError,
    WorkdirError,
    fit,
    fit_linear_probe,
)

BASE = dict(
    optimizer={"name": "adamw", "lr": 1e-2},
    groups=None,
    loop=Loop(steps=4, batch_size=8, parallel="none"),
    loss="ce",
)


def _shift(rng, images):
    return images + 0.0


def _run(workdir, *, module=None, data=None, callbacks=(), allow=False, **overrides):
    module = module or Tiny()
    return fit(
        module,
        jax.device_get(tiny_variables(module)),
        data if data is not None else tiny_dataset(40),
        checkpoints=Checkpoints(workdir, every=2, allow_changes=allow),
        progress=False,
        callbacks=callbacks,
        **{**BASE, **overrides},
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("finished")
    _run(workdir)
    return workdir


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


CHANGES = {
    "model": dict(module=Tiny(width=4)),
    "groups": dict(groups=ParamGroups.head_only()),
    "optimizer.lr": dict(optimizer={"name": "adamw", "lr": 3e-2}),
    "optimizer_state": dict(optimizer=optax.sgd(0.1)),
    "loop.batch_size": dict(loop=Loop(steps=4, batch_size=4, parallel="none")),
    "loop.seed": dict(loop=Loop(steps=4, batch_size=8, seed=1, parallel="none")),
    "data": dict(data=tiny_dataset(40, seed=3)),
    "augment": dict(augment=_shift),
}


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_resume_with_another_run_is_refused_naming_what_differs(finished, tmp_path, field):
    workdir = _copy(finished, tmp_path / "w")
    change = dict(CHANGES[field])
    with pytest.raises(RunMismatchError, match=rf"holds another run: .*\b{field} changed"):
        _run(workdir, **change)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4"]  # nothing touched


def test_changed_run_resumes_when_allowed_and_more_steps_extend(finished, tmp_path):
    workdir = _copy(finished, tmp_path / "w")
    with pytest.warns(
        UserWarning, match=r"continuing .* with a changed run: loop.seed changed \(0 -> 1\); .*total_steps changed"
    ):
        result = _run(workdir, loop=Loop(steps=6, batch_size=8, seed=1, parallel="none"), allow=True)
    assert result.resumed_from == 4
    # The run's length is not its identity when the optimizer does not depend on it (tx given): 4 -> 6 steps.
    workdir2 = tmp_path / "tx"
    _run(workdir2, optimizer=optax.sgd(0.1))
    assert _run(workdir2, optimizer=optax.sgd(0.1), loop=Loop(steps=6, batch_size=8, parallel="none")).resumed_from == 4


def test_second_writer_is_refused_naming_the_holder(tmp_path):
    lock = WorkdirLock(tmp_path)  # what a running fit holds
    with pytest.raises(WorkdirError, match=rf"in use by another run \(host .* pid {os.getpid()}"):
        _run(tmp_path)
    lock.close()
    _run(tmp_path)  # released: a run may start now


def test_labels_outside_the_head_are_an_error(tmp_path):
    data = tiny_dataset(40)
    shifted = ArrayDataset(data.images, data.labels + 3, 8)  # labels 3..7, the head has 5 outputs
    with pytest.raises(ValueError, match=r"labels in \[3, 7\], but the model's head has 5 outputs"):
        _run(tmp_path, data=shifted)
    with pytest.raises(ValueError, match=r"labels lie in \[3, 7\], but the head has 5 outputs"):
        fit_linear_probe(np.ones((40, 8), np.float32), shifted.labels, 5, optax.sgd(0.1), steps=2, batch_size=8)


def test_linear_probe_stops_on_a_non_finite_loss():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(32, 8)).astype(np.float32)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss .* at step"):
        fit_linear_probe(feats, rng.integers(0, 3, 32), 3, optax.sgd(1e38), steps=6, batch_size=8)


@pytest.fixture
def default_sigint():
    """SIGINT as an interactive Python process has it, whatever the test runner inherited (a shell's background job
    runs with SIGINT ignored); restored after."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_after_a_checkpoint_and_the_run_resumes_exactly(tmp_path, signum, default_sigint):
    straight = _run(tmp_path / "straight", loop=Loop(steps=6, batch_size=8, parallel="none"))
    loop = Loop(steps=6, batch_size=8, parallel="none")

    def kill_at_3(step, _m):
        if step == 3:
            os.kill(os.getpid(), signum)

    # The callback of step 3 runs in step 4's bookkeeping (one step stays in flight), after step 4 read the signal
    # flag: the run stops after step 5, with a checkpoint of it.
    name = signal.Signals(signum).name
    with pytest.raises(RunInterrupted, match=rf"{name} received: stopped after step (\d); checkpoint of step \1 saved"):
        _run(tmp_path / "w", loop=loop, callbacks=(kill_at_3,))
    resumed = _run(tmp_path / "w", loop=loop)
    assert resumed.resumed_from == 5
    for a, b in zip(jax.tree.leaves(straight.state), jax.tree.leaves(resumed.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_an_ignored_sigint_stays_ignored(tmp_path):
    """A process told to ignore SIGINT (started as a shell's background job, say) keeps ignoring it during a run:
    the run goes to its end, and the handler is SIG_IGN after."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:

        def interrupt_at_2(step, _m):
            if step == 2:
                os.kill(os.getpid(), signal.SIGINT)

        res = _run(tmp_path / "w", loop=Loop(steps=4, batch_size=8, parallel="none"), callbacks=(interrupt_at_2,))
        assert int(res.state.step) == 4
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_signal_between_checkpoints_still_saves_the_step_it_stops_after(tmp_path):
    """The signal comes while a step's bookkeeping runs (here: a callback, as a SIGTERM arriving while the previous
    step's metrics are awaited), with no checkpoint due: the run still saves the step it stops after (it used to
    stop with nothing saved, "no work directory", although it had one)."""
    module = Tiny()
    loop = Loop(steps=12, batch_size=8, parallel="none")

    def kill_at_3(step, _m):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(RunInterrupted) as err:
        fit(
            module,
            jax.device_get(tiny_variables(module)),
            tiny_dataset(40),
            checkpoints=Checkpoints(tmp_path, every=10),
            progress=False,
            callbacks=(kill_at_3,),
            **{**BASE, "loop": loop},
        )
    assert err.value.checkpoint == err.value.step and err.value.step < 10, str(err.value)
    assert f"checkpoint of step {err.value.step} saved in" in str(err.value)
    resumed = _run(tmp_path, loop=loop)
    assert resumed.resumed_from == err.value.step


def test_full_disk_during_a_checkpoint_names_the_path_and_space(tmp_path, monkeypatch):
    def no_space(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    import orbax.checkpoint as ocp

    monkeypatch.setattr(ocp.CheckpointManager, "save", no_space)
    with pytest.raises(WorkdirError, match=r"cannot write checkpoint step 2: No space left on device \(.* MiB free"):
        _run(tmp_path)


def test_resume_and_finished_runs_say_so_in_one_line_each(tmp_path, capsys):
    def run(steps):
        module = Tiny()
        fit(
            module,
            jax.device_get(tiny_variables(module)),
            tiny_dataset(40),
            optimizer=optax.sgd(0.01),  # no schedule over the run's length: the run may be extended
            loop=Loop(steps=steps, batch_size=8, parallel="none"),
            checkpoints=Checkpoints(tmp_path, every=2),
            progress=True,
        )
        return capsys.readouterr().err

    first = run(4)
    assert "compiling" in first and "\r" not in first  # not a terminal: plain lines, the compile shown apart
    assert "resuming" not in first
    assert f"fit: resuming from step 4 of 6 (workdir {tmp_path})" in run(6)
    again = run(6)
    assert "fit: already finished at step 6; nothing to do" in again and "compiling" not in again
