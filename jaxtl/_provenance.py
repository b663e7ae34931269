"""Where a result came from: the source commit and the machine, recorded into results files when a run happens."""

from __future__ import annotations

import os
import pathlib
import platform
import subprocess
from typing import Any

__all__ = ["cpu_model", "machine", "source_revision"]

_PACKAGE_ROOT = pathlib.Path(__file__).resolve().parent.parent


def source_revision(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """``{"commit": full hash, "commit_dirty": bool}`` of the git checkout holding ``path`` (default: jaxtl's
    source), ``commit_dirty`` True when tracked files differ from that commit; ``{}`` when it is not a git checkout
    (an installed wheel) or git is missing."""
    where = str(path or _PACKAGE_ROOT)
    try:
        head = subprocess.run(
            ["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "-C", where, "diff", "--quiet", "HEAD", "--"], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return {}
    if not head or dirty.returncode not in (0, 1):
        return {}
    return {"commit": head, "commit_dirty": dirty.returncode == 1}


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else :func:`platform.processor`, else the machine type."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """The CPU model, its core count and the OS: what a CPU timing or a float rounding depends on."""
    return {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform()}
