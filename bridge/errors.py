"""The bridge's one error type."""

from __future__ import annotations

from collections.abc import Sequence


class BridgeError(ValueError):
    """A state dict or file that cannot be converted; the message names every offending key or the file."""


def format_problems(title: str, problems: Sequence[str], limit: int = 25) -> str:
    """One message listing ``problems`` (the first ``limit`` of them, then a count of the rest)."""
    shown = [f"  - {p}" for p in problems[:limit]]
    if len(problems) > limit:
        shown.append(f"  ... and {len(problems) - limit} more")
    return "\n".join([f"{title} ({len(problems)} problem{'s' if len(problems) != 1 else ''}):", *shown])
