"""cli/progress.py: a redrawn line on a terminal, periodic plain lines in a log, nothing when quiet."""
import io
import types

from minunet.cli import progress as progress_module
from minunet.cli.progress import Progress, clock


class Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_log_gets_periodic_lines_and_a_last_one(monkeypatch):
    """A line once log_every_s has passed since the last one, and the last count at close (a fake clock:
    updates 3 s apart, a line every 5 s, so lines at 6 s and 12 s and the closing one)."""
    now = [0.0]
    monkeypatch.setattr(progress_module, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    stream = Stream(tty=False)
    with Progress("tiles", stream=stream, log_every_s=5) as progress:
        for done in range(1, 6):
            now[0] += 3
            progress.update(done, 10)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert [line.split(" (")[0] for line in lines] == ["tiles 2/10", "tiles 4/10", "tiles 5/10"], lines
    assert lines[-1].startswith("tiles 5/10 (50%")                  # the last count, at close


def test_short_work_in_a_log_is_silent():
    stream = Stream(tty=False)
    with Progress("tiles", stream=stream, log_every_s=60) as progress:
        for done in range(1, 4):
            progress.update(done, 3)
    assert stream.getvalue() == ""


def test_terminal_line_is_redrawn_and_cleared():
    stream = Stream(tty=True)
    progress = Progress("iteration", stream=stream)
    progress.update(3, 10, "loss 0.5")
    assert stream.getvalue().startswith("\r\033[K[") and "iteration 3/10" in stream.getvalue()
    progress.close()
    assert stream.getvalue().endswith("\r\033[K")


def test_quiet_shows_nothing():
    for tty in (True, False):
        stream = Stream(tty)
        with Progress("x", quiet=True, stream=stream, log_every_s=0) as progress:
            progress.update(1, 1)
        assert stream.getvalue() == ""


def test_clock():
    assert clock(59) == "0:59" and clock(61) == "1:01" and clock(3725) == "1:02:05"
