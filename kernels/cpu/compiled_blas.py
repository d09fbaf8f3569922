"""BLAS GEMM called from compiled code, so that a kernel's blocks can run on Numba's threads.

``blas.gemm`` calls OpenBLAS through ctypes from Python; ``blas.parallel_for`` spreads a kernel's
blocks over Python worker threads. On layers of a few milliseconds (the F(4x4, 3x3) layers of
the width-16 network) waking those threads and holding the GIL around dozens of GEMM calls per
block cost as much as the second core gives (docs/performance.md). Here the same ``sgemm_`` /
``dgemm_`` is a first-class function argument of Numba-compiled code (Numba's wrapper address
protocol): a ``prange`` loop calls it on Numba's OpenMP threads, which spin briefly between
kernels, and because the function's address is an argument, not a constant, Numba's on-disk
cache keeps the compiled kernels. Every pointer argument of the Fortran routine is passed as an
unsigned integer address (the same register on x86-64 and AArch64).
"""
import ctypes

import numba.experimental.function_type  # noqa: F401 - registers the typing of function objects
import numpy as np
from numba import njit, types

from . import blas
from .blas import WORKERS

_ADDRESS = types.uintp
_FORTRAN_GEMM = types.void(*([_ADDRESS] * 13))
_N = 78                                         # ord("N"): no transposition


class _Gemm(types.WrapperAddressProtocol):
    """The BLAS ``?gemm_`` that ``blas.gemm`` calls, as a function Numba-compiled code can call."""

    def __init__(self, routine):
        self.address = ctypes.cast(routine, ctypes.c_void_p).value

    def __wrapper_address__(self):
        return self.address

    def signature(self):
        return _FORTRAN_GEMM


GEMM = {np.dtype(np.float32): _Gemm(blas._sgemm), np.dtype(np.float64): _Gemm(blas._dgemm)}
# Threads may call BLAS at once only when it runs single-threaded in each (our own OpenBLAS);
# SciPy's BLAS, the fallback, threads each call itself instead.
CONCURRENT = blas._OWN_BLAS


def parts(count):
    """Into how many parts to split ``count`` blocks, one per Numba thread: one per worker when
    BLAS may be called from every thread at once, else one (BLAS then threads each GEMM)."""
    return max(1, min(WORKERS if CONCURRENT else 1, count))


def routine(dtype):
    """The GEMM function object for arrays of ``dtype`` (float32 or float64)."""
    return GEMM[np.dtype(dtype)]


@njit(cache=True, nogil=True)
def gemm(f, a, b, c):
    """``c = a @ b`` with BLAS routine ``f`` (:func:`routine`) on 2-D row-major views whose rows are
    contiguous, from compiled code. Fortran sees ``c^T = b^T a^T``: the same memory, no copy."""
    m, n = c.shape
    k = a.shape[1]
    if m == 0 or n == 0:
        return
    ints = np.empty(7, np.int32)
    scalars = np.empty(2, c.dtype)
    item = c.itemsize
    ints[0], ints[1], ints[2] = n, m, k
    ints[3] = max(b.strides[0] // item, n, 1)
    ints[4] = max(a.strides[0] // item, k, 1)
    ints[5] = max(c.strides[0] // item, n, 1)
    ints[6] = _N
    scalars[0], scalars[1] = 1.0, 0.0
    p, s, u = ints.ctypes.data, scalars.ctypes.data, types.uintp
    f(p + u(24), p + u(24), p, p + u(4), p + u(8), s, b.ctypes.data, p + u(12), a.ctypes.data, p + u(16),
      s + u(item), c.ctypes.data, p + u(20))
