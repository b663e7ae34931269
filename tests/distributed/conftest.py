"""Helpers for tests that start JAX subprocesses: environment, free ports, launch with timeouts and clean-up."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

import jax

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
TIMEOUT_S = 120


def child_env(devices: int) -> dict[str, str]:
    """This process's environment with ``devices`` fake CPU devices and the shared compilation cache."""
    env = dict(os.environ)
    flags = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f)
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["JAXTL_TEST_CACHE"] = str(jax.config.jax_compilation_cache_dir or ROOT / ".jax_cache")
    paths = [str(HERE), str(ROOT / "tests" / "train"), str(ROOT), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_all(commands: list[list[str]], env: dict[str, str], cwd: pathlib.Path, timeout: float = TIMEOUT_S) -> None:
    """Run the commands concurrently; fail with every child's output if one fails or times out; never leak one."""
    logs = [open(cwd / f"child_{i}.log", "wb") for i in range(len(commands))]  # noqa: SIM115
    procs = [subprocess.Popen(c, env=env, stdout=f, stderr=subprocess.STDOUT) for c, f in zip(commands, logs)]
    codes: list[int | None] = [None] * len(procs)
    try:
        for i, p in enumerate(procs):
            try:
                codes[i] = p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                codes[i] = None
                break
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in logs:
            f.close()
    if any(c != 0 for c in codes):
        out = "\n".join(
            f"--- child {i} (exit {c}) ---\n{(cwd / f'child_{i}.log').read_text(errors='replace')[-4000:]}"
            for i, c in enumerate(codes)
        )
        raise AssertionError(f"a child process failed or timed out after {timeout}s:\n{out}")


def python(*args: object) -> list[str]:
    return [sys.executable, *(str(a) for a in args)]
