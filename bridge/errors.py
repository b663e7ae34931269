"""The bridge's one error type."""

from __future__ import annotations

from collections.abc import Sequence

from jaxtl.errors import JaxtlError


class BridgeError(JaxtlError, ValueError):
    """A state dict or file that cannot be converted; the message names every offending key or the file."""


def format_problems(title: str, problems: Sequence[str], limit: int = 25) -> str:
    """One message listing ``problems`` (the first ``limit`` of them, then a count of the rest)."""
    shown = [f"  - {p}" for p in problems[:limit]]
    if len(problems) > limit:
        shown.append(f"  ... and {len(problems) - limit} more")
    return "\n".join([f"{title} ({len(problems)} problem{'s' if len(problems) != 1 else ''}):", *shown])


class WeightsUnavailableError(BridgeError, OSError):
    """Named torchvision weights that are neither in torch's hub cache nor downloadable now. ``path`` is where the
    file must be placed (torch's hub cache), ``url`` where it comes from; the message says both."""

    def __init__(self, message: str, path: str, url: str) -> None:
        super().__init__(message)
        self.path, self.url = path, url

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:  # picklable with its fields (worker processes)
        return type(self), (str(self), self.path, self.url)
