"""The one timing rule of every CPU benchmark: interleave the contenders, take medians after warm-up.

Interleaving (minunet, PyTorch, minunet, PyTorch, ...) in one process means both see the same
machine state (frequency, other load), so their ratio is meaningful even when absolute times drift.
"""
import importlib
import os
import platform
import statistics
import time
from pathlib import Path

clock = time.perf_counter


def use_clock(fn):
    """Time with ``fn`` from now on (``time.process_time``: CPU time, for a shared machine)."""
    global clock
    clock = fn


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
            t0 = clock()
            fn()
            ts.append(clock() - t0)
    return [statistics.median(ts) for ts in times], times


def import_torch(script):
    """PyTorch, the yardstick; a clear exit when it is missing (it is never a minunet dependency)."""
    # minunet's CPU backend first: it starts its OpenMP threads with a short spin, which libgomp
    # reads only when it loads, and importing torch loads the system's libgomp with the default
    # (a spin of milliseconds, which made minunet's step 10-20% slower here). torch keeps its own.
    try:
        importlib.import_module("minunet.kernels.cpu")
    except ImportError:                # pragma: no cover - the CPU backend needs Numba
        pass
    try:
        import torch
    except ImportError:
        raise SystemExit(f"{script} compares against PyTorch, which is not installed: "
                         "pip install torch==2.13.0 (CPU build) to run it") from None
    return torch


def tune_malloc():
    """Make glibc's malloc keep freed memory for reuse in this process; True if it took.

    By default every large array is a fresh ``mmap`` whose pages the kernel faults in and zeroes
    on first touch, and is unmapped again when freed. minunet's CPU backend caches its large
    buffers itself (kernels/cpu/buffers.py); PyTorch's CPU allocator does not, and pays that cost
    every step unless the process's allocator is tuned (jemalloc, tcmalloc, or this). With
    ``--tuned-malloc`` the benchmarks compare both with this tuning, for the figure a PyTorch
    user who tunes the allocator would see.
    """
    import ctypes
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 1 << 31))


def cpu_name():
    """The processor's model name (from /proc/cpuinfo on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine():
    """What a figure was measured on: the CPU (its name and LLVM's), minunet's BLAS and the kernels
    it picked (``OPENBLAS_CORETYPE`` overrides OpenBLAS's own choice), and Numba's threads."""
    import numba
    from llvmlite import binding

    from minunet.kernels.cpu import blas  # here: loading the backend fixes its threads, set by then
    return dict(cpu=cpu_name(), llvm_cpu=binding.get_host_cpu_name(), blas=blas.BLAS_NAME,
                openblas_coretype=os.environ.get("OPENBLAS_CORETYPE"), numba_threads=numba.config.NUMBA_NUM_THREADS)


def describe_machine(info):
    """One line of :func:`machine`'s figures for a benchmark's table."""
    forced = f" (OPENBLAS_CORETYPE={info['openblas_coretype']})" if info["openblas_coretype"] is not None else ""
    return (f"machine: {info['cpu']} ({info['llvm_cpu']}), {info['numba_threads']} Numba thread(s); "
            f"BLAS {info['blas']}{forced}")
