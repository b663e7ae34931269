"""A streaming run (an image folder, RandomResizedCrop + flip in the pipeline, uint8 batches normalised on device)
killed with SIGKILL mid-epoch resumes and ends bit-identical to an uninterrupted run.

Also the subprocess entry: ``python test_pipeline_resume.py WORKDIR FOLDER STEPS SLEEP_S`` trains the tiny model
with ``fit`` on ``folder:FOLDER`` and writes ``WORKDIR/final.npz``.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
STEPS = 9  # 3 epochs of 3 batches (27 images, batch 8, ragged rest dropped): the kill lands in epoch 0 or 1


def run(workdir: str, folder: str, steps: int, sleep_s: float) -> object:
    import jax
    import optax
    from tiny import Tiny, tiny_variables

    from jaxtl.data import open_source
    from jaxtl.train import Checkpoints, Loop, fit

    data = open_source(f"folder:{folder}", image_size=16, augment="rrc", workers=0)
    module = Tiny(num_classes=data.num_classes)
    on_step = (lambda step, m: time.sleep(sleep_s)) if sleep_s else None
    return fit(
        module,
        jax.device_get(tiny_variables(module)),
        data,
        optimizer=optax.adamw(1e-2),
        loop=Loop(steps=steps, batch_size=8, parallel="pmap"),
        checkpoints=Checkpoints(workdir, every=1),
        progress=False,
        callbacks=() if on_step is None else (on_step,),
    )


def _make_folder(root: pathlib.Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(27):
        d = root / f"c{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        h, w = (int(v) for v in rng.integers(18, 30, 2))
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8) // 2 + np.uint8(40 * (i % 3))
        Image.fromarray(arr).save(d / f"{i:02d}.png")


def _env() -> dict[str, str]:
    import jax

    env = dict(os.environ)
    env["JAXTL_TEST_CACHE"] = str(jax.config.jax_compilation_cache_dir or ROOT / ".jax_cache")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests" / "train"), str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _cmd(workdir: pathlib.Path, folder: pathlib.Path, steps: int, sleep_s: float = 0.0) -> list[str]:
    return [sys.executable, str(pathlib.Path(__file__).resolve()), str(workdir), str(folder), str(steps), str(sleep_s)]


def _final(workdir: pathlib.Path) -> list[np.ndarray]:
    with np.load(workdir / "final.npz") as f:
        return [f[k] for k in sorted(f.files)]


def test_streaming_sigkill_then_resume_is_bit_identical(tmp_path):
    folder = tmp_path / "imgs"
    _make_folder(folder)
    straight = tmp_path / "straight"
    subprocess.run(_cmd(straight, folder, STEPS), env=_env(), check=True, timeout=300)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(killed, folder, STEPS, sleep_s=1.0), env=_env())
    ckpts = killed / "checkpoints"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if ckpts.exists() and any(p.name.isdigit() and int(p.name) >= 2 for p in ckpts.iterdir()):
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = max(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    assert 2 <= killed_at < STEPS and not (killed / "final.npz").exists()
    subprocess.run(_cmd(killed, folder, STEPS), env=_env(), check=True, timeout=300)
    a, b = _final(straight), _final(killed)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    import jaxtl

    jaxtl.tune_cpu()
    jax.config.update("jax_compilation_cache_dir", os.environ["JAXTL_TEST_CACHE"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    result = run(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    leaves = {f"{i:05d}": x for i, x in enumerate(jax.tree.leaves(result.state))}  # type: ignore[attr-defined]
    np.savez(os.path.join(sys.argv[1], "final.npz"), **leaves)
