"""One process of a (multi-process) fit: ``python mp_worker.py OUT PARALLEL STEPS [COORD NPROC PID]``.

Without the last three it is a single process. Every process trains the tiny model with ``fit`` in the shared
``OUT/work``, evaluates, extracts features, and writes ``OUT/result_<pid>.npz`` (final state leaves, features,
eval metrics). The device count comes from ``XLA_FLAGS`` set by the caller.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax
import numpy as np
import optax

import jaxtl

jaxtl.tune_cpu()  # the tests' process settings, before the backend starts

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "train"))
from tiny import Tiny, tiny_dataset, tiny_variables  # noqa: E402

from jaxtl.distributed import initialize  # noqa: E402
from jaxtl.train import Checkpoints, Loop, Parallel, evaluate, extract_features, fit  # noqa: E402

BATCH = 8


def train(out: pathlib.Path, parallel: str, steps: int) -> dict[str, np.ndarray]:
    """Train/evaluate/extract in this process (after ``jax.distributed`` if any); the arrays to compare."""
    module = Tiny()
    result = fit(
        module,
        jax.device_get(tiny_variables(module)),
        tiny_dataset(40),
        eval_data=tiny_dataset(13, seed=5),
        optimizer=optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2, weight_decay=1e-3)),
        loop=Loop(steps=steps, batch_size=BATCH, eval_every=3, parallel=parallel),
        checkpoints=Checkpoints(out / "work", every=3),
        progress=False,
    )
    par = Parallel(parallel)
    ev = evaluate(par.put_state(result.state), tiny_dataset(13, seed=5), BATCH, par=par)
    feats = extract_features(module, result.variables, tiny_dataset(13, seed=5), BATCH, parallel=parallel)
    arrays = {f"leaf{i:05d}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(result.state))}
    arrays["features"] = feats
    arrays["eval"] = np.array([ev["loss"], ev["top1"], ev["count"]])
    arrays["history"] = np.array([h["loss"] for h in result.history if h["split"] == "train"])
    return arrays


if __name__ == "__main__":
    out_dir = pathlib.Path(sys.argv[1])
    parallel_kind, n_steps = sys.argv[2], int(sys.argv[3])
    if len(sys.argv) > 4:
        initialize(sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
    if "JAXTL_TEST_CACHE" in os.environ:
        jax.config.update("jax_compilation_cache_dir", os.environ["JAXTL_TEST_CACHE"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_numpy_rank_promotion", "raise")
    res = train(out_dir, parallel_kind, n_steps)
    pid = jax.process_index()
    np.savez(out_dir / f"result_{pid}.npz", **res)
    (out_dir / f"devices_{pid}.json").write_text(
        json.dumps({"global": jax.device_count(), "local": jax.local_device_count(), "processes": jax.process_count()})
    )
