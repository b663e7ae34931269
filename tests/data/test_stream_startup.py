"""A stream's start-up: prepare() starts a pass ahead and the pass then gives the very same batches; a short
evaluation pass decodes in this process (no worker to start) with the same batches as the workers give; the batch
layout a source announces is the one its batches have; a data worker imports no jax, flax or optax of ours, and a
worker of a script that imports jaxtl loads grain without jax and Orbax, silently, with the same batches."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxtl.data import open_source
from jaxtl.data.stream import IN_PROCESS_BELOW

N = 22


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(N):
        d = root / f"c{i % 3}"
        d.mkdir(exist_ok=True)
        h, w = int(rng.integers(20, 40)), int(rng.integers(20, 40))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / f"{i:03d}.jpg", quality=90)
    return root


def _same(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


@pytest.mark.parametrize("workers", [0, 1])
def test_prepare_then_batches_gives_the_same_batches_from_the_started_stream(photos, workers):
    src = open_source(f"folder:{photos}", image_size=12, augment="rrc", workers=workers)
    fresh = open_source(f"folder:{photos}", image_size=12, augment="rrc", workers=0)
    src.prepare(8, seed=3, epoch=1)
    started = src._stream
    got = list(src.batches(8, seed=3, epoch=1))
    assert src._stream is started, "batches() did not take the prepared stream"
    _same(got, list(fresh.batches(8, seed=3, epoch=1)))
    # Other options than prepared: a new stream, still the right batches.
    src.prepare(8, seed=3, epoch=5)
    _same(list(src.batches(8, seed=4, epoch=2)), list(fresh.batches(8, seed=4, epoch=2)))
    src.close()


def test_batch_layout_is_what_batches_yield(photos):
    src = open_source(f"folder:{photos}", image_size=12, workers=0)
    for drop in (True, False):
        layout = src.batch_layout(8, drop_remainder=drop, process_count=2)
        for batch in src.batches(8, drop_remainder=drop, process_count=2, shuffle=False, train=drop):
            assert {k: (v.shape, v.dtype) for k, v in batch.items()} == layout
    assert "labels" not in src.unlabeled().batch_layout(8)


def test_a_short_evaluation_pass_decodes_here_with_the_workers_batches(photos):
    assert N < IN_PROCESS_BELOW
    src = open_source(f"folder:{photos}", image_size=12, workers=1)
    got = list(src.batches(8, shuffle=False, drop_remainder=False, train=False))
    assert src._stream is not None and src._stream.in_process
    here = open_source(f"folder:{photos}", image_size=12, workers=0)
    _same(got, list(here.batches(8, shuffle=False, drop_remainder=False, train=False)))
    src.close()


WORKER_IMPORTS = """
import sys
import jaxtl.data.decoding, jaxtl.data.listing, jaxtl.data.transforms, jaxtl.data.workers  # what a worker unpickles
print(sorted(m for m in ("jax", "flax", "optax", "orbax", "torch", "sklearn", "matplotlib") if m in sys.modules))
"""


def test_what_a_data_worker_unpickles_imports_no_jax_flax_optax():
    out = subprocess.run([sys.executable, "-c", WORKER_IMPORTS], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


WORKER_SCRIPT = """
import json, os, sys
import jaxtl
from jaxtl.data import open_source


class Probe:  # the reader, recording what the worker process has imported when it reads the first image
    def __init__(self, inner, out):
        self.inner, self.out = inner, out

    def __len__(self):
        return len(self.inner)

    def name(self, i):
        return self.inner.name(i)

    def read(self, i):
        if os.getpid() != int(os.environ["MAIN_PID"]) and not os.path.exists(self.out):
            with open(self.out, "w") as f:
                json.dump(sorted(m for m in ("jax", "jaxlib", "orbax", "flax") if m in sys.modules), f)
        return self.inner.read(i)


if __name__ == "__main__":
    os.environ["MAIN_PID"] = str(os.getpid())
    src = open_source("folder:" + sys.argv[1], image_size=12, augment="rrc", workers=1)
    src.reader = Probe(src.reader, sys.argv[2])
    batches = list(src.batches(8, seed=1))
    src.close()
    here = open_source("folder:" + sys.argv[1], image_size=12, augment="rrc", workers=0)
    same = all((a[k] == b[k]).all() for a, b in zip(batches, here.batches(8, seed=1)) for k in a)
    print(json.dumps({"same": same, "n": len(batches)}))
"""


def test_a_worker_of_a_script_importing_jaxtl_loads_grain_without_jax(photos, tmp_path):
    out = tmp_path / "imported.json"
    script = tmp_path / "script.py"
    script.write_text(WORKER_SCRIPT)
    r = subprocess.run(
        [sys.executable, str(script), str(photos), str(out)], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == '{"same": true, "n": 2}'
    assert out.read_text() == "[]"  # no jax, jaxlib, orbax or flax in the worker
    assert "jax" not in r.stderr.lower(), r.stderr  # nothing said about it (grain's missing-profiler warning)
