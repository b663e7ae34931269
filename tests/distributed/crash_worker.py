"""Subprocess entry for the crash tests: ``python crash_worker.py WORKDIR STEPS [PAUSE_STEP]``.

Trains the tiny model with ``fit`` (checkpoints every 2 steps) and writes ``WORKDIR/final.npz``. With
``PAUSE_STEP`` the checkpoint of that step stops just before Orbax commits it (its files are written to a
temporary folder, the atomic rename has not happened): the worker touches ``WORKDIR/pausing`` and sleeps there,
so a test can SIGKILL it in the middle of a checkpoint write deterministically.
"""

from __future__ import annotations

import os
import pathlib
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax
import numpy as np
import optax
from orbax.checkpoint._src.path import atomicity

import jaxtl

jaxtl.tune_cpu()  # the tests' process settings, before the backend starts

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "train"))
from tiny import Tiny, tiny_dataset, tiny_variables  # noqa: E402

from jaxtl.train import Checkpoints, Loop, fit  # noqa: E402


def pause_before_commit(workdir: pathlib.Path, step: int) -> None:
    """Make the commit (atomic rename / commit file) of checkpoint ``step`` hang, after a marker file."""
    for cls in (atomicity.AtomicRenameTemporaryPath, atomicity.CommitFileTemporaryPath):
        original = cls.finalize

        async def finalize(self, *args, _original=original, **kwargs):  # type: ignore[no-untyped-def]
            if pathlib.Path(self.get_final()).name == str(step):
                tmp = pathlib.Path(self.get())
                (workdir / "pausing").write_text(str(tmp))
                time.sleep(600)
            return await _original(self, *args, **kwargs)

        cls.finalize = finalize  # type: ignore[method-assign]


def run(workdir: str | pathlib.Path, steps: int, on_step=None):  # type: ignore[no-untyped-def]
    module = Tiny()
    return fit(
        module,
        jax.device_get(tiny_variables(module)),
        tiny_dataset(40),
        optimizer=optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2, weight_decay=1e-3)),
        loop=Loop(steps=steps, batch_size=8, parallel="pmap"),
        checkpoints=Checkpoints(workdir, every=2),
        progress=False,
        callbacks=() if on_step is None else (on_step,),
    )


if __name__ == "__main__":
    if "JAXTL_TEST_CACHE" in os.environ:
        jax.config.update("jax_compilation_cache_dir", os.environ["JAXTL_TEST_CACHE"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    wd = pathlib.Path(sys.argv[1])
    if len(sys.argv) > 3:
        pause_before_commit(wd, int(sys.argv[3]))
    result = run(wd, int(sys.argv[2]))
    np.savez(wd / "final.npz", **{f"{i:05d}": x for i, x in enumerate(jax.tree.leaves(result.state))})
