"""The one timing rule of every CPU benchmark: interleave the contenders, take medians after warm-up.

Interleaving (minunet, PyTorch, minunet, PyTorch, ...) in one process means both see the same
machine state (frequency, other load), so their ratio is meaningful even when absolute times drift.
"""
import statistics
import time


def interleaved(fns, warmup=1, repeat=3):
    """Median seconds of each zero-argument function, called in turn, after ``warmup`` calls each.

    Returns (medians, all times per function).
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times], times


def import_torch(script):
    """PyTorch, the yardstick; a clear exit when it is missing (it is never a minunet dependency)."""
    try:
        import torch
    except ImportError:
        raise SystemExit(f"{script} compares against PyTorch, which is not installed: "
                         "pip install torch==2.13.0 (CPU build) to run it") from None
    return torch
