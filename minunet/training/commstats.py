"""Where a data-parallel step's time goes: packing the gradients, waiting for slower ranks, summing.

Rank 0 logs a line of these figures at every validation, so train.log shows what the
communication costs on the machines at hand (docs/scaling.md explains how to read it).
"""
import contextlib
import time

import numpy as np

PHASES = ("pack", "wait", "sum")


class CommStats:
    """Per-step timings of one rank since the last report (medians, robust to a slow step)."""

    def __init__(self):
        self._rows, self._previous = [], None
        self._current = dict.fromkeys(PHASES, 0.0)

    @contextlib.contextmanager
    def timing(self, phase):
        """Add the time spent in the block to this step's ``phase``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self._current[phase] += time.perf_counter() - start

    def step_done(self):
        """The gradients are summed: close this step's row (its period runs from the last one's end)."""
        now = time.perf_counter()
        period = None if self._previous is None else now - self._previous
        self._rows.append((period,) + tuple(self._current[p] for p in PHASES))
        self._current, self._previous = dict.fromkeys(PHASES, 0.0), now

    def due(self, iteration, every):
        """Whether the step ending at ``iteration`` is one to report at."""
        return iteration % every == 0 and any(r[0] is not None for r in self._rows)

    def medians(self):
        """(step period, pack, wait, sum) in seconds: medians over the steps since the last report."""
        rows = np.array([r for r in self._rows if r[0] is not None], np.float64)
        return tuple(float(v) for v in np.median(rows, axis=0))

    def report(self):
        """One log line of the medians, then start counting afresh."""
        step, pack, wait, total = self.medians()
        n = sum(1 for r in self._rows if r[0] is not None)
        self._rows = []
        return (f"communication, median of {n} steps: step {step:.3f} s, packing the gradients {1e3 * pack:.1f} ms, "
                f"waiting for the slowest rank {1e3 * wait:.1f} ms, summing {1e3 * total:.1f} ms "
                f"({100 * (pack + wait + total) / step:.1f}% of the step)")
