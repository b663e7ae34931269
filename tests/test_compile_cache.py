"""jaxtl.enable_compile_cache, the default cache a run turns on (and the ways to turn it off), and the CLI's
--compile-cache / --no-compile-cache.

The cache is process-global jax config (and the test session has its own), so the library checks run in fresh
subprocesses.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxtl.cli import main

PROBE = """
import sys, jax, jax.numpy as jnp, jaxtl
from jaxtl.compile_cache import configured_cache_dir
first = jaxtl.enable_compile_cache({path!r})
again = jaxtl.enable_compile_cache("/somewhere/else")  # an existing cache is kept
jax.jit(lambda x: jnp.tanh(x) @ x.T)(jnp.ones((16, 16))).block_until_ready()
print(first, again, configured_cache_dir(), sep="\\n")
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("JAXTL_COMPILE_CACHE", "JAX_COMPILATION_CACHE_DIR")}
    return {**env, **extra}


def _python(code: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], env=_env(**extra), capture_output=True, text=True, timeout=120)


def test_enable_stores_compiled_programs_and_keeps_an_existing_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache" / "xla"  # created on demand
    proc = _python(PROBE.format(path=str(cache)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(cache)] * 3
    assert any(cache.iterdir()), "nothing was written to the cache"


def test_default_directory_follows_env_then_xdg(tmp_path: Path) -> None:
    code = "from jaxtl.compile_cache import default_cache_dir; print(default_cache_dir())"
    assert _python(code, JAXTL_COMPILE_CACHE=str(tmp_path / "a")).stdout.strip() == str(tmp_path / "a")
    assert _python(code, XDG_CACHE_HOME=str(tmp_path)).stdout.strip() == str(tmp_path / "jaxtl" / "xla")


def test_unwritable_directory_is_an_error_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = _python(PROBE.format(path=str(blocker / "cache")))
    assert proc.returncode != 0
    assert f"compile cache directory '{blocker / 'cache'}' is not writable" in proc.stderr


def test_cli_rejects_a_bad_explicit_cache_and_conflicting_options(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    ckpt = tmp_path / "missing_ckpt"
    assert main(["evaluate", str(ckpt), "--data", "digits", "--compile-cache", str(blocker / "c")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxtl: error: --compile-cache: compile cache directory") and str(blocker) in err
    args = ["evaluate", str(ckpt), "--data", "digits", "--compile-cache", str(tmp_path), "--no-compile-cache"]
    assert main(args) == 2
    assert "not both" in capsys.readouterr().err


@pytest.mark.parametrize("flag", [[], ["--no-compile-cache"]])
def test_cli_cache_options_reach_the_command(tmp_path: Path, capsys, flag: list[str]) -> None:
    # In this test process a cache is already configured (conftest), so the CLI keeps it either way; the command
    # then fails on the missing checkpoint, after the cache options were handled.
    assert main(["evaluate", str(tmp_path / "nothing"), "--data", "digits", *flag]) == 2
    assert "nothing" in capsys.readouterr().err


DEFAULTS = """
import os, sys, jax, jax.numpy as jnp
from jaxtl.compile_cache import configured_cache_dir, default_compile_cache, enable_compile_cache
cache = sys.argv[1]
jax.jit(lambda x: x * 2)(jnp.ones(3)).block_until_ready()  # compiled before any cache: jax has looked already
os.environ["JAXTL_COMPILE_CACHE"] = "0"
print(default_compile_cache(), enable_compile_cache(), configured_cache_dir())  # off by the environment
os.environ["JAXTL_COMPILE_CACHE"] = cache
print(default_compile_cache() == cache)  # a run turns the default on, even after earlier compiles
jax.jit(lambda x: jnp.sin(x) + 1)(jnp.ones(5)).block_until_ready()
print(len([p for p in os.listdir(cache) if p.endswith("-cache")]))
print(enable_compile_cache(False), configured_cache_dir(), default_compile_cache())  # off for this process
"""


def test_the_default_cache_a_run_turns_on_and_the_ways_to_turn_it_off(tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", DEFAULTS, str(tmp_path / "xla")]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    off, on, stored, off_again = proc.stdout.strip().splitlines()
    assert off == "None None None"
    assert on == "True"
    assert int(stored) >= 1, "the program compiled after the cache was turned on was not stored"
    assert off_again == "None None None"


def test_without_filelock_the_cache_is_unbounded_and_still_stores(tmp_path: Path) -> None:
    """JAX locks a size-bounded cache with the filelock package (jax 0.11 stores nothing without it): jaxtl then
    keeps the cache unbounded, says so once, and programs are still stored."""
    cache = tmp_path / "xla"
    code = (
        "import sys; sys.modules['filelock'] = None\n"
        + PROBE.format(path=str(cache))
        + ("print(jax.config.values['jax_compilation_cache_max_size'])\n")
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-1] == "-1"
    assert proc.stderr.count("not size-bounded: JAX needs the filelock package") == 1, proc.stderr[-2000:]
    assert any(p.name.endswith("-cache") for p in cache.iterdir()), "nothing was stored"
