"""Progress of a training loop: a tqdm bar on a terminal, plain lines everywhere else, one-line notices.

On a terminal (the stream's ``isatty()``) the bar redraws in place as usual. When the output goes to a file or a
pipe (``jaxtl pretrain ... | tee log``, ``make demo > out``), carriage-return redraws would pile up, so the reporter
writes one plain line every ``interval_s`` seconds or every ``every_percent`` percent of the steps instead, and a
last one when it closes.

The first step of a run includes XLA's compilation, which can take longer than hundreds of steps; folded into the
rate it makes the first ETA absurd. So until the first step is over the reporter shows ``compiling...``, and the
rate and ETA are measured from the end of the first step (the compile time is shown apart, and kept in
:attr:`Progress.compile_s`).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any, Literal, TextIO

__all__ = ["Progress", "format_duration"]

Mode = Literal["auto", "bar", "lines"]


def format_duration(seconds: float) -> str:
    """``75.2`` -> ``"1m15s"``; ``3725`` -> ``"1h02m05s"``; below a minute ``"42s"`` (``"0.4s"`` below 10 s)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    return f"{m}m{s:02d}s" if m else f"{s}s"


def _postfix_text(postfix: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in postfix.items())


class Progress:
    """Reports ``total`` steps of work, ``initial`` of which were done before (a resumed run).

    Nothing is shown until :meth:`start` (or the first :meth:`update`). Typical use in a fit loop::

        progress = Progress(total_steps, initial=step, desc="fit", enabled=show)
        if step >= total_steps:
            progress.already_finished()                 # one line; no bar
        elif step:
            progress.resuming(step, workdir)            # one line, then the bar
        progress.start()                                # bar / line showing "compiling..."
        for ...:
            progress.update(1, loss=f"{loss:.4f}")      # after each step
        progress.close()

    Args:
      total: the run's number of steps (the bar's 100%).
      initial: steps already done (resumed from a checkpoint).
      desc: a short name shown in front ("fit", "pretrain").
      unit: what a step is called in rates ("step").
      enabled: False shows nothing at all (other processes than 0, ``--no-progress``).
      mode: ``"bar"`` (tqdm), ``"lines"`` (plain lines) or ``"auto"``: a bar when ``stream`` is a terminal.
      stream: where to write (default ``sys.stderr``, as tqdm).
      interval_s: in lines mode, the longest time between two lines.
      every_percent: in lines mode, a line each time this many percent of ``total`` are done.
      clock: seconds, monotonic (for tests).
    """

    def __init__(
        self,
        total: int,
        *,
        initial: int = 0,
        desc: str = "fit",
        unit: str = "step",
        enabled: bool = True,
        mode: Mode = "auto",
        stream: TextIO | None = None,
        interval_s: float = 30.0,
        every_percent: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if total < 0 or initial < 0:
            raise ValueError(f"Progress needs total >= 0 and initial >= 0, got total={total}, initial={initial}")
        if mode not in ("auto", "bar", "lines"):
            raise ValueError(f"Progress mode must be 'auto', 'bar' or 'lines', got {mode!r}")
        if not interval_s > 0 or not every_percent > 0:
            raise ValueError(f"interval_s and every_percent must be > 0, got {interval_s}, {every_percent}")
        self.total = total
        self.n = initial
        self.desc = desc
        self.unit = unit
        self.enabled = enabled
        self.stream: TextIO = stream if stream is not None else sys.stderr
        if mode == "auto":
            isatty = getattr(self.stream, "isatty", None)
            mode = "bar" if isatty is not None and isatty() else "lines"
        self.mode: Literal["bar", "lines"] = mode  # type: ignore[assignment]
        self.interval_s = interval_s
        self.every_percent = every_percent
        self._clock = clock
        self.compile_s: float | None = None
        """Seconds from :meth:`start` to the end of the first step (compilation included); None before."""
        self._bar: Any = None
        self._created_at = clock()
        self._started_at: float | None = None
        self._first_done: tuple[int, float] | None = None  # (n, time) at the end of the first step
        self._last_line: tuple[int, float] | None = None  # (n, time) of the last line written (lines mode)
        self._postfix: dict[str, Any] = {}
        self._closed = False

    # ---- one-line notices --------------------------------------------------------------------------------------

    def notice(self, message: str) -> None:
        """Write ``message`` as one line, above the bar if one is shown (nothing when disabled)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        else:
            self.stream.write(message + "\n")
            self.stream.flush()

    def resuming(self, step: int, workdir: object) -> None:
        """``"<desc>: resuming from step N of M (workdir W)"``."""
        self.notice(f"{self.desc}: resuming from step {step} of {self.total} (workdir {workdir})")

    def already_finished(self, step: int | None = None) -> None:
        """``"<desc>: already finished at step M; nothing to do"``; the bar then stays closed."""
        self.notice(f"{self.desc}: already finished at step {self.total if step is None else step}; nothing to do")
        self._closed = True

    # ---- the bar / the lines -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Show the bar (or a first line) saying the first step is compiling; call it just before the first step.

        The first step's time (:attr:`compile_s`) counts from here (from the reporter's creation without it).
        """
        if self._started_at is not None or self._closed:
            return
        self._started_at = self._clock()
        if not self.enabled or self.n >= self.total:
            return
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=self.total,
                initial=self.n,
                desc=self.desc,
                unit=self.unit,
                file=self.stream,
                dynamic_ncols=True,
                postfix="compiling...",
            )
        else:
            self._write_line(f"{self.desc}: {self.n}/{self.total} {self.unit}s, compiling the first {self.unit}...")

    def set_description(self, desc: str) -> None:
        """A new name in front of the bar / the lines (e.g. the demo's current arm)."""
        self.desc = desc
        if self._bar is not None:
            self._bar.set_description(desc)

    def update(self, n: int = 1, **postfix: Any) -> None:
        """``n`` more steps are done; ``postfix`` (e.g. ``loss="0.1234"``) is shown after the counts."""
        if self._closed:
            return
        if self._started_at is None:
            self.start()
            self._started_at = self._created_at  # no start() before the first step: time it from creation
        now = self._clock()
        self.n += n
        self._postfix = postfix
        first = self._first_done is None
        if first:
            assert self._started_at is not None
            self.compile_s = now - self._started_at
            self._first_done = (self.n, now)
        if not self.enabled:
            return
        if self._bar is not None:
            shown = {"compile": format_duration(self.compile_s or 0.0), **postfix}
            if first:
                # Restart tqdm's clock and rate at the end of the first step, so the compile is not in the ETA.
                self._bar.reset(self.total)
                self._bar.n = self._bar.initial = self._bar.last_print_n = self.n
                self._bar.set_postfix(shown)
            else:
                self._bar.set_postfix(shown, refresh=False)
                self._bar.update(n)
            return
        if first:
            self._write_line(
                f"{self.desc}: {self.n}/{self.total} {self.unit}s, first {self.unit} (compile included) took "
                f"{format_duration(self.compile_s or 0.0)}" + (f", {_postfix_text(postfix)}" if postfix else "")
            )
            return
        assert self._last_line is not None
        last_n, last_t = self._last_line
        step_pct = max(1, math.ceil(self.total * self.every_percent / 100))
        if now - last_t >= self.interval_s or self.n // step_pct > last_n // step_pct or self.n >= self.total:
            self._write_line(self._status_line(now))

    def _rate(self, now: float) -> float | None:
        """Steps per second since the end of the first step; None until a later step is done."""
        if self._first_done is None:
            return None
        n0, t0 = self._first_done
        if self.n <= n0 or now <= t0:
            return None
        return (self.n - n0) / (now - t0)

    def _status_line(self, now: float) -> str:
        pct = 100.0 * self.n / self.total if self.total else 100.0
        parts = [f"{self.desc}: {self.n}/{self.total} {self.unit}s ({pct:.0f}%)"]
        rate = self._rate(now)
        if rate is not None:
            parts.append(f"{rate:.3g} {self.unit}/s")
            if self.n < self.total:
                parts.append(f"eta {format_duration((self.total - self.n) / rate)}")
        if self._started_at is not None:
            parts.append(f"elapsed {format_duration(now - self._started_at)}")
        if self._postfix:
            parts.append(_postfix_text(self._postfix))
        return ", ".join(parts)

    def _write_line(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()
        self._last_line = (self.n, self._clock())

    def close(self) -> None:
        """Close the bar; in lines mode write the last status line if steps were done since the previous one."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and self._last_line is not None and self._last_line[0] != self.n:
            self._write_line(self._status_line(self._clock()))

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
