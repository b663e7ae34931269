"""The progress reporter on its own: plain lines off a terminal, a bar on one, the compile kept out of the ETA."""

from __future__ import annotations

import io

import pytest

from jaxtl.train.progress import Progress, format_duration


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_format_duration() -> None:
    assert format_duration(0.44) == "0.4s"
    assert format_duration(42) == "42s"
    assert format_duration(75.2) == "1m15s"
    assert format_duration(3725) == "1h02m05s"
    assert format_duration(float("inf")) == "?"


def test_auto_mode_follows_isatty() -> None:
    assert Progress(10, stream=io.StringIO()).mode == "lines"
    assert Progress(10, stream=Tty()).mode == "bar"


def test_lines_mode_writes_plain_lines_with_compile_apart_and_eta_from_later_steps() -> None:
    out, clock = io.StringIO(), FakeClock()
    p = Progress(100, desc="fit", stream=out, mode="auto", interval_s=1e9, every_percent=25, clock=clock)
    p.start()
    assert _lines(out) == ["fit: 0/100 steps, compiling the first step..."]
    clock.t += 46.0  # the first step: compilation
    p.update(loss="2.3026")
    assert p.compile_s == pytest.approx(46.0)
    assert _lines(out)[-1] == "fit: 1/100 steps, first step (compile included) took 46s, loss=2.3026"
    for _ in range(24):  # 0.5 s per step from here on
        clock.t += 0.5
        p.update(loss="1.0")
    lines = _lines(out)
    assert len(lines) == 3, lines  # start, first step, the 25% mark (no line per step)
    assert lines[-1].startswith("fit: 25/100 steps (25%), 2 step/s, eta 38s, elapsed 58s, loss=1.0")
    clock.t += 0.5
    p.update(loss="0.9")  # 26%: no new line
    assert len(_lines(out)) == 3
    p.close()
    final = _lines(out)[-1]
    assert final.startswith("fit: 26/100 steps (26%), 2 step/s")
    assert "\r" not in out.getvalue()
    p.close()  # idempotent
    assert len(_lines(out)) == 4


def test_lines_mode_writes_a_line_every_interval() -> None:
    out, clock = io.StringIO(), FakeClock()
    p = Progress(1000, stream=out, mode="lines", interval_s=10, every_percent=100, clock=clock)
    p.update()
    for _ in range(30):
        clock.t += 1.0
        p.update()
    assert len(_lines(out)) == 2 + 3  # compiling, first step, then one line per 10 s


def test_lines_mode_final_step_gets_a_line_and_close_does_not_repeat_it() -> None:
    out, clock = io.StringIO(), FakeClock()
    p = Progress(4, stream=out, mode="lines", interval_s=1e9, every_percent=100, clock=clock)
    p.start()
    for _ in range(4):
        clock.t += 1.0
        p.update()
    p.close()
    lines = _lines(out)
    assert lines[-1].startswith("fit: 4/4 steps (100%), 1 step/s, elapsed 4.0s")
    assert sum(ln.startswith("fit: 4/4") for ln in lines) == 1


def test_notices_are_one_line_each() -> None:
    out = io.StringIO()
    p = Progress(1120, initial=560, desc="pretrain", stream=out, mode="lines")
    p.resuming(560, "runs/ae/run")
    assert _lines(out) == ["pretrain: resuming from step 560 of 1120 (workdir runs/ae/run)"]
    done = Progress(1120, initial=1120, stream=out, mode="lines")
    done.already_finished()
    done.start()
    done.update()
    done.close()
    assert _lines(out)[1:] == ["fit: already finished at step 1120; nothing to do"]


def test_disabled_shows_nothing_but_still_measures_the_compile() -> None:
    out, clock = io.StringIO(), FakeClock()
    p = Progress(10, stream=out, mode="lines", enabled=False, clock=clock)
    p.resuming(3, "w")
    clock.t += 5.0
    p.update()
    p.close()
    assert out.getvalue() == ""
    assert p.compile_s == pytest.approx(5.0)


def test_bar_mode_shows_compiling_then_restarts_the_rate_after_the_first_step() -> None:
    out, clock = Tty(), FakeClock()
    p = Progress(100, desc="fit", stream=out, clock=clock)
    p.start()
    assert "compiling..." in out.getvalue()
    clock.t += 46.0
    p.update(loss="2.3")
    bar = p._bar
    assert bar is not None
    # tqdm's clock restarts at the end of the first step, counting from there: the compile is not in its rate.
    assert bar.n == bar.initial == 1
    assert bar.format_dict["elapsed"] < 5.0
    assert "compile=46s" in out.getvalue()
    for _ in range(3):
        p.update(loss="1.0")
    assert bar.n == 4
    p.notice("a notice")
    p.close()
    assert "a notice\n" in out.getvalue()


@pytest.mark.parametrize(
    "kwargs",
    [dict(total=-1), dict(total=3, initial=-1), dict(total=3, mode="fancy"), dict(total=3, interval_s=0)],
)
def test_bad_arguments_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=r"Progress|interval_s"):
        Progress(**kwargs)
