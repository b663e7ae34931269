"""jaxtl's errors: one base class, so a caller (the CLI included) tells bad input from a bug by type.

Every check jaxtl makes on what it is given (a config, a file, a folder, a checkpoint, a state dict) raises a
:class:`JaxtlError`, whose message names the problem (file, key, shape or option). Anything else escaping jaxtl is
a bug. The subclasses also derive from the builtin a caller would expect (``ValueError``, ``KeyError``,
``OSError``), so ``except ValueError`` keeps working.

This module imports nothing from jaxtl: every layer may raise these.
"""

from __future__ import annotations

__all__ = [
    "CheckpointDamagedError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "JaxtlError",
    "OutputError",
    "UnknownArchError",
]


class JaxtlError(Exception):
    """Bad input or an expected failure, reported in one line (the CLI: ``jaxtl: error: ...``, exit 2)."""


class ConfigError(JaxtlError, ValueError):
    """An option that is missing, out of range or inconsistent with another; ``field`` names it (as in Python:
    ``labels_per_class``, ``optimizer.lr``). The CLI words it as its flag."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class DataError(JaxtlError, ValueError):
    """Data that cannot be used as asked: a spec, a folder, a file list, labels, a split."""


class UnknownArchError(JaxtlError, KeyError):
    """An architecture name the registry does not know; the message lists the choices."""

    def __str__(self) -> str:  # KeyError quotes its argument; this one is a sentence
        return str(self.args[0]) if self.args else ""


class OutputError(JaxtlError, OSError):
    """An output that cannot be written: the path exists and is not this run's, the folder is not writable, the
    disk is full, or another run holds it. The message names the path and what to do."""


class CheckpointError(JaxtlError, ValueError):
    """A saved model or run checkpoint that cannot be written or read; the message names the path."""


class CheckpointDamagedError(CheckpointError):
    """A checkpoint could not be read back, or its arrays do not match the digest written with it."""
