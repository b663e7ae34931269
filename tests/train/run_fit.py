"""Subprocess entry for the resume tests: ``python run_fit.py WORKDIR STEPS [SLEEP_S]``; writes WORKDIR/final.npz."""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax
import numpy as np
import optax

import jaxtl

jaxtl.tune_cpu()  # the tests' process settings, before the backend starts

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny import Tiny, tiny_dataset, tiny_variables  # noqa: E402

from jaxtl.train import Checkpoints, Loop, fit  # noqa: E402


def run(workdir: str, steps: int, sleep_s: float = 0.0, nan_example: int | None = None):
    module = Tiny()
    data = tiny_dataset(40)
    if nan_example is not None:
        data.images[nan_example] = float("nan")
    on_step = (lambda step, m: time.sleep(sleep_s)) if sleep_s else None
    return fit(
        module,
        jax.device_get(tiny_variables(module)),
        data,
        eval_data=tiny_dataset(13, seed=5),
        optimizer=make_tx(),
        loop=Loop(steps=steps, batch_size=8, eval_every=5, parallel="pmap"),
        checkpoints=Checkpoints(workdir, every=2),
        progress=False,
        callbacks=() if on_step is None else (on_step,),
    )


def make_tx() -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2, weight_decay=1e-3))


if __name__ == "__main__":
    jax.config.update("jax_compilation_cache_dir", os.environ["JAXTL_TEST_CACHE"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    result = run(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 0.0)
    leaves = {f"{i:05d}": x for i, x in enumerate(jax.tree.leaves(result.state))}
    np.savez(os.path.join(sys.argv[1], "final.npz"), **leaves)
