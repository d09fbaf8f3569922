"""Row-major GEMM on strided NumPy views, straight into BLAS, with accumulation.

NumPy's ``matmul`` cannot accumulate (``C += A @ B`` allocates ``A @ B`` first) and SciPy's
Python wrappers copy any view that is not contiguous. The convolutions need both: nine GEMMs
over shifted, strided windows of one image, all summed into one output block. So we call a
Fortran ``sgemm``/``dgemm`` through ctypes, passing each view's pointer and leading dimension.

Which BLAS: our own copy of OpenBLAS from the ``scipy-openblas32`` wheel (the build NumPy and
SciPy ship, kept by their maintainers; a dependency), loaded separately from the copy inside
SciPy, so we can make it single-threaded for the whole process without touching NumPy's (and
its sgemm is the newer, faster one on our shapes: docs/performance.md). Without that wheel, SciPy's own sgemm (``scipy.linalg.cython_blas``, a
public API) is used, made single-threaded per worker thread.

Row-major ``C = op(A) op(B)`` is column-major ``C^T = op(B)^T op(A)^T``: the same memory,
read transposed, so we swap the operands instead of copying anything.

Parallelism: the convolutions issue thousands of modest GEMMs per training step. Letting BLAS
thread each one costs a fork/join barrier per call, and on a busy machine a barrier waits for a
descheduled thread: a step became 6x slower under load. Instead ``parallel_for`` splits an op's
blocks between the calling thread and a few Python worker threads (ctypes and ``nogil`` Numba
kernels release the GIL), each of which calls BLAS single-threaded (OpenBLAS's
``openblas_set_num_threads_local``): one join per op.
"""
import ctypes
import glob
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numba
import numpy as np
import scipy
from numba.extending import get_cython_function_address

_PTR = ctypes.c_void_p
_FORTRAN_GEMM = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p,
                                 _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR)


def _own_openblas():
    """(sgemm, dgemm, description) from the scipy-openblas32 wheel, single-threaded; None if absent."""
    if os.environ.get("MINUNET_BLAS") == "scipy":
        return None
    try:
        import scipy_openblas32  # else SciPy's BLAS (or MINUNET_BLAS=scipy)
    except ImportError:
        return None
    lib = ctypes.CDLL(os.path.join(scipy_openblas32.get_lib_dir(), scipy_openblas32.get_library(fullname=True)))
    lib.scipy_openblas_set_num_threads(1)
    lib.scipy_openblas_get_config.restype = ctypes.c_char_p
    gemms = [ctypes.cast(getattr(lib, name), _FORTRAN_GEMM) for name in ("scipy_sgemm_", "scipy_dgemm_")]
    return gemms + [lib.scipy_openblas_get_config().decode()]


def _scipy_blas():
    """(sgemm, dgemm, description) that SciPy exports for Cython."""
    return [_FORTRAN_GEMM(get_cython_function_address("scipy.linalg.cython_blas", name)) for name in ("sgemm", "dgemm")] \
        + ["SciPy's BLAS (scipy.linalg.cython_blas)"]


_OWN = _own_openblas()
_OWN_BLAS = _OWN is not None
_sgemm, _dgemm, BLAS_NAME = _OWN or _scipy_blas()
_GEMM = {np.dtype(np.float32): (_sgemm, ctypes.c_float), np.dtype(np.float64): (_dgemm, ctypes.c_double)}


def _leading_dim(a):
    """Row stride of a 2-D view in elements; its rows must be contiguous."""
    rows, cols = a.shape
    if cols > 1 and a.strides[1] != a.itemsize:
        raise ValueError("gemm: each row of an operand must be contiguous")
    return max(a.strides[0] // a.itemsize, cols, 1)


def gemm(a, b, c, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    """In place, ``c = alpha op(a) @ op(b) + beta c`` for 2-D row-major views of one dtype.

    ``op(a)`` is ``a.T`` when ``trans_a``; views may be windows of larger arrays (any row
    stride) as long as each row is contiguous. ``beta=1`` accumulates into ``c``.
    """
    fn, scalar = _GEMM[c.dtype]
    if a.dtype != c.dtype or b.dtype != c.dtype:
        raise TypeError(f"gemm: dtypes differ ({a.dtype}, {b.dtype}, {c.dtype})")
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    if (a.shape[1] if trans_a else a.shape[0]) != m or (b.shape[0] if trans_b else b.shape[1]) != n \
            or (b.shape[1] if trans_b else b.shape[0]) != k:
        raise ValueError(f"gemm: shapes {a.shape}, {b.shape} -> {c.shape} do not agree")
    if m == 0 or n == 0:
        return c
    i32 = ctypes.c_int
    # Column-major C^T (n x m) = op(B)^T (n x k) @ op(A)^T (k x m): operands swapped.
    fn(b"T" if trans_b else b"N", b"T" if trans_a else b"N",
       ctypes.byref(i32(n)), ctypes.byref(i32(m)), ctypes.byref(i32(k)), ctypes.byref(scalar(alpha)),
       b.ctypes.data, ctypes.byref(i32(_leading_dim(b))),
       a.ctypes.data, ctypes.byref(i32(_leading_dim(a))),
       ctypes.byref(scalar(beta)), c.ctypes.data, ctypes.byref(i32(_leading_dim(c))))
    return c


def _openblas_local_threads():
    """OpenBLAS's per-thread thread-count setter in SciPy's bundled BLAS, or None if not found."""
    for path in glob.glob(str(Path(scipy.__file__).parent.parent / "scipy.libs" / "libscipy_openblas*.so*")):
        lib = ctypes.CDLL(path)
        if hasattr(lib, "openblas_set_num_threads_local"):
            return lib.openblas_set_num_threads_local
    return None


_SET_LOCAL_THREADS = None if _OWN_BLAS else _openblas_local_threads()
# Workers: one per core Numba may use, each calling a single-threaded BLAS; 1 (BLAS threads each
# call itself) when we can neither own a BLAS nor make SciPy's single-threaded per thread.
_SINGLE_THREADED = _OWN_BLAS or _SET_LOCAL_THREADS is not None
WORKERS = min(numba.config.NUMBA_NUM_THREADS, len(os.sched_getaffinity(0))) if _SINGLE_THREADED else 1
_pool = None


_single_threaded = threading.local()


def _single_threaded_blas():
    """Make BLAS single-threaded in the calling thread (once; SciPy's BLAS is set per thread)."""
    if _SET_LOCAL_THREADS is not None and not getattr(_single_threaded, "done", False):
        _SET_LOCAL_THREADS(1)
        _single_threaded.done = True


def parallel_for(fn, items):
    """Call ``fn(part)`` for ``WORKERS`` contiguous slices of the sequence ``items``: the first
    here, the others on worker threads.

    Returns the results in order. BLAS runs single-threaded in every part. The calling thread
    takes a part rather than waiting: one thread less to wake (a worker that slept can take a
    millisecond to start on this VM), and the caller's caches are warm. The split is fixed, so
    sums over the parts are the same from run to run.
    """
    global _pool
    parts = min(WORKERS, len(items))
    if parts <= 1:
        return [fn(items)]
    if _pool is None:
        _pool = ThreadPoolExecutor(WORKERS - 1, thread_name_prefix="minunet-blas", initializer=_single_threaded_blas)
    bounds = [len(items) * i // parts for i in range(parts + 1)]
    futures = [_pool.submit(fn, items[a:b]) for a, b in zip(bounds[1:-1], bounds[2:])]
    try:
        _single_threaded_blas()
        first = fn(items[bounds[0]:bounds[1]])
    finally:
        rest = [f.result() for f in futures] if futures else []
    return [first] + rest
