"""Data workers as a user meets them: Ctrl-C stops a streaming run without a traceback from any worker, a leaked
shared-memory warning or an "Exception ignored" line at exit; a script without a ``__main__`` guard gets one error
saying so; more workers than cores get one warning line; warnings point at the user's code, not at jaxtl's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
from PIL import Image

import jaxtl
from jaxtl.data import ImageSource, open_source
from jaxtl.data.in_memory import SkippedFilesWarning
from jaxtl.data.workers import MainGuardError, TooManyWorkersWarning, usable_cores

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("workers")
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir()
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (12, 14, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


STREAM = """
import signal, sys, threading, time
from jaxtl.data import open_source

def run():
    # As fit does: SIGINT sets a flag, the loop stops at the next batch (a KeyboardInterrupt can be lost when it
    # is raised inside a garbage-collection callback, e.g. jax's).
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    src = open_source(sys.argv[1], image_size=8, workers=int(sys.argv[2]))
    print("streaming", flush=True)
    for epoch in range(10_000):
        for _ in src.batches(4, epoch=epoch):
            if stop.is_set():
                print("stopped", flush=True)
                return
            print("batch", flush=True)
            time.sleep(0.01)

if __name__ == "__main__":
    run()
"""


def _python(script: str, *args: str, tmp_path) -> subprocess.Popen[str]:
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(script))
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(
        [sys.executable, str(path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group: the SIGINT a terminal sends to the foreground group
    )


def _wait_for(proc: subprocess.Popen[str], line: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        got = proc.stdout.readline()
        if got.strip() == line:
            return
        if not got and proc.poll() is not None:
            break
    proc.kill()
    pytest.fail(f"no {line!r} line; stderr: {proc.communicate()[1][-2000:]}")


@pytest.mark.parametrize(
    ("workers", "when"),
    [(2, "batch"), (1, "streaming")],  # while batches flow; while the worker is still starting (importing)
)
def test_ctrl_c_with_workers_is_quiet(folder, tmp_path, workers, when):
    proc = _python(STREAM, f"folder:{folder}", str(workers), tmp_path=tmp_path)
    _wait_for(proc, when)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: every process of the group, workers included
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and out.rstrip().endswith("stopped"), (out[-500:], err)
    for noise in ("Traceback", "KeyboardInterrupt", "leaked", "Exception ignored", "resource_tracker"):
        assert noise not in err, err


def test_script_without_main_guard_gets_one_clear_error(folder, tmp_path):
    script = """
    import sys
    from jaxtl.data import open_source
    src = open_source(sys.argv[1], image_size=8, workers=1)
    print(next(iter(src.batches(4)))["images"].shape)
    """
    proc = _python(script, f"folder:{folder}", tmp_path=tmp_path)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 1 and not out
    assert err.rstrip().splitlines()[-1].startswith("jaxtl.data.workers.MainGuardError: the data workers re-ran")
    assert 'if __name__ == "__main__":' in err and "workers=0" in err
    assert err.count("Traceback") == 1 and "bootstrapping phase" not in err and len(err.splitlines()) < 20, err
    assert issubclass(MainGuardError, RuntimeError)


def test_more_workers_than_cores_warns_once_at_the_callers_line(folder):
    many = usable_cores() + 3
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        src = open_source(f"folder:{folder}", image_size=8, workers=many)
        src.with_options(image_size=6).subset(np.arange(4))  # the same count again: no second warning
        open_source(f"folder:{folder}", image_size=8, workers=usable_cores())
    (w,) = [w for w in record if issubclass(w.category, TooManyWorkersWarning)]
    assert f"workers={many} is more than the {usable_cores()} CPU core(s)" in str(w.message)
    assert "\n" not in str(w.message) and w.filename == __file__
    assert isinstance(src, ImageSource) and src.workers == many  # a warning, not a cap: the batches are the same


def test_unreadable_image_warning_points_at_the_callers_line(folder, tmp_path):
    bad = tmp_path / "bad"
    (bad / "a").mkdir(parents=True)
    for name in ("0.png", "1.png"):
        (bad / "a" / name).write_bytes((folder / "a" / name).read_bytes())
    (bad / "a" / "2.png").write_bytes(b"not a png")
    src = open_source(f"folder:{bad}", image_size=8, workers=0)
    # The batches pulled by a loop inside jaxtl (as fit's is): the warning skips jaxtl's frames.
    loop = compile("list(src.batches(3, shuffle=False, drop_remainder=False, train=False))", jaxtl.__file__, "eval")
    with pytest.warns(SkippedFilesWarning, match=r"1 unreadable image\(s\) masked out: .*2\.png") as record:
        eval(loop, {"src": src})
    assert record[0].filename == __file__
