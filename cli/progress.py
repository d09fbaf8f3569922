"""Progress of long work on stderr, the same for every command.

On a terminal one line is redrawn in place (at most 10 times a second); in a log (stderr redirected
to a file or a pipe) a plain line is written every ``LOG_EVERY_S`` seconds, and one at the end if
any was, so that a batch job's log shows long work advancing while short work stays silent; with
``quiet`` nothing is shown. Log lines printed while
a bar is drawn go above it (:meth:`Progress.echo`).
"""
import sys
import time

import click

DRAW_EVERY_S = 0.1
LOG_EVERY_S = 10.0
BAR_WIDTH = 24


class Progress:
    """``update(done, total, detail)`` as work advances; ``echo(line)`` for a message; ``close()``."""

    def __init__(self, label, quiet=False, stream=None, log_every_s=LOG_EVERY_S):
        self.label, self.quiet = label, quiet
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.log_every_s = log_every_s
        self.started = time.monotonic()
        self._last = -1e9 if self.tty else self.started
        self._visible, self._pending, self._logged = False, None, False

    def update(self, done, total=None, detail=""):
        """Report ``done`` of ``total`` units (total None: unknown), with optional extra text."""
        if self.quiet:
            return
        now = time.monotonic()
        interval = DRAW_EVERY_S if self.tty else self.log_every_s
        final = total is not None and done >= total
        self._pending = (done, total, detail)
        if now - self._last < interval and not (final and (self.tty or self._logged)):
            return
        self._draw(done, total, detail, final)
        self._last = now

    def _draw(self, done, total, detail, final):
        elapsed = time.monotonic() - self.started
        count = f"{done}/{total}" if total else f"{done}"
        text = f"{self.label} {count}"
        if total:
            fraction = min(done / total, 1.0) if total else 0.0
            filled = int(round(fraction * BAR_WIDTH))
            eta = elapsed * (total - done) / done if done else None
            bar = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] " if self.tty else ""
            text = f"{bar}{text} ({100 * fraction:.0f}%, {clock(elapsed)} elapsed"
            text += f", ETA {clock(eta)})" if eta is not None and not final else ")"
        if detail:
            text += f"  {detail}"
        if self.tty:
            self.stream.write(f"\r\033[K{text}")
            self._visible = True
        else:
            self.stream.write(text + "\n")
            self._logged = True
        self.stream.flush()
        self._pending = None

    def echo(self, line):
        """Print a line (a log message) on stderr, above the progress line."""
        self._clear()
        click.echo(line, err=True)

    def close(self):
        """Finish: a log gets its last count; a terminal line is cleared."""
        if not self.quiet and not self.tty and self._logged and self._pending is not None:
            self._draw(*self._pending, final=True)
        self._clear()

    def _clear(self):
        if self._visible:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._visible = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def iterate(iterable, label, length, quiet=False):
    """Yield from ``iterable`` while showing its progress (``length`` items)."""
    with Progress(label, quiet) as progress:
        for i, item in enumerate(iterable):
            yield item
            progress.update(i + 1, length)


def clock(seconds):
    """Seconds as m:ss or h:mm:ss."""
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"
