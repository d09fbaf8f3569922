"""What every kernel test shares: where the backends run, draws, tolerances, shapes.

Where the backends run (``MODE``):

* ``"parent"``: no GPU. The CPU backend runs in this process; the CUDA backend's tests run in one
  child ``pytest`` with ``NUMBA_ENABLE_CUDASIM=1`` (``test_kernels.py::test_cuda_in_simulator``):
  Numba's simulator must be switched on before ``numba.cuda`` is first imported, and other test
  modules import Numba in this process.
* ``"simulator"``: that child. Only the CUDA backend runs, on NumPy arrays, with tiny tiles
  (``TINY_TILE``) so that tiny shapes still cross many tile, block and chunk edges; shape cases
  marked :func:`big` are left out (the simulator runs each CUDA thread as a Python thread).
* ``"gpu"``: CuPy sees a GPU. Both backends run in this process on every case; CUDA memory comes
  from an allocator that fills it with NaN, so that an output element a kernel forgets to write
  cannot pass where the reference is 0.

Tolerances: float64 results must match the reference to ``FLOAT64_TOL``, float32 results to
``FLOAT32_TOL[op]``, relative to the largest |expected| or, where a sum's terms can cancel, to the
largest sum of |terms| (``conv_scale``, ``conv_grad_scales``): rounding error scales with the
terms, and a 1x1 output can be 1e-3 while its terms are ~1. Pure data movement must be exact.
"""
import contextlib
import os
import sys

import numpy as np
import pytest

from minunet.kernels import reference as ref

IN_SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def gpu_usable():
    """Whether CuPy imports and sees a CUDA device."""
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


MODE = "simulator" if IN_SIMULATOR else ("gpu" if gpu_usable() else "parent")
BACKENDS = {"parent": ["cpu"], "simulator": ["cuda"], "gpu": ["cpu", "cuda"]}[MODE]
# "default": each backend's own blocking; "edges": blocks made tiny so small shapes cross many edges.
TILINGS = ["edges"] if MODE == "simulator" else ["default", "edges"]

if IN_SIMULATOR:
    # The simulator's block manager polls its threads in a busy loop: with Python's default 5 ms
    # switch interval each barrier waits for the poller's slice; 0.1 ms runs the tests 3-5x faster.
    sys.setswitchinterval(1e-4)

FLOAT64_TOL = 1e-11
FLOAT32_TOL = {
    "conv2d": 2e-5, "conv_transpose2d": 2e-5, "softmax_cross_entropy": 1e-5, "softmax": 1e-6,
    "optimiser": 1e-6, "add": 1e-7, "exact": 0.0,
}
DTYPES = [np.float64, np.float32]


# ----------------------------------------------------------------------------- draws and checks

def draw(rng, shape, dtype, scale=1.0):
    """Standard normal values of the given dtype, and the same values in float64 for the reference."""
    a = (rng.standard_normal(shape) * scale).astype(dtype)
    return a, a.astype(np.float64)


def to_host(a):
    """A NumPy array from a backend array (CuPy arrays are copied to the host)."""
    if a is not None and not isinstance(a, np.ndarray) and hasattr(a, "get"):
        return a.get()
    return a


def on(backend, *arrays):
    """The arrays as the backend's arrays (None stays None)."""
    out = [None if a is None else backend.asarray(a) for a in arrays]
    return out[0] if len(out) == 1 else out


def tolerance(dtype, op):
    """The largest error allowed, relative to the check's scale, for op in dtype."""
    return FLOAT64_TOL if dtype == np.float64 else FLOAT32_TOL[op]


def assert_close(actual, expected, dtype, op, scale=0.0):
    """|actual - expected| <= tol * max(max|expected|, scale) (tol by dtype and op), and the same shape."""
    actual = to_host(actual)
    assert actual is not None and actual.shape == expected.shape, (getattr(actual, "shape", None), expected.shape)
    assert actual.dtype == dtype, (actual.dtype, dtype)
    tol = tolerance(dtype, op)
    scale = max(np.abs(expected).max(initial=0.0), scale, 1e-30)
    err = np.abs(np.asarray(actual, np.float64) - expected).max(initial=0.0)
    assert err <= tol * scale, f"{op}: max error {err:.3g} > {tol:g} x {scale:.3g}"


def assert_equal(actual, expected):
    """Bit for bit, and the same dtype (data movement, masks, argmax indices)."""
    actual = to_host(actual)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    np.testing.assert_array_equal(actual, expected)


def conv_scale(x64, w64, b64):
    """The largest sum of |terms| of a convolution's outputs: the size its rounding error scales with."""
    return ref.conv2d_forward(np.abs(x64), np.abs(w64), None if b64 is None else np.abs(b64)).max(initial=0.0)


def conv_grad_scales(x64, w64, gy64):
    """The largest sums of |terms| of a convolution's gradients (gx, gw, gb): the sizes their
    rounding errors scale with (a weight gradient of 1 output channel summed over a few pixels can
    cancel to a hundredth of its terms)."""
    return [None if g is None else g.max(initial=0.0)
            for g in ref.conv2d_backward(np.abs(x64), np.abs(w64), np.abs(gy64))]


# ----------------------------------------------------------------------------- shape cases

class big(tuple):
    """A shape case too large for the CUDA simulator: it runs on the CPU and on a GPU only."""


def cases(*items):
    """The shape cases of one op for this process: all of them, or in the simulator the small ones."""
    return [tuple(c) for c in items if not (IN_SIMULATOR and isinstance(c, big))]


CONV_CASES = cases(
    # (N, C, K, H, W, kh, kw)
    (1, 1, 3, 7, 9, 3, 3),        # one input channel, odd sizes
    (2, 3, 5, 6, 11, 3, 3),       # batch > 1
    (1, 4, 2, 3, 3, 3, 3),        # 1x1 output
    big((2, 70, 66, 9, 8, 3, 3)),  # many channels (> 64)
    (1, 3, 2, 1, 1, 1, 1),        # 1x1 kernel on 1x1 spatial
    (2, 65, 2, 5, 7, 1, 1),       # 1x1 head, many channels
    (1, 2, 3, 10, 12, 5, 5),      # another kernel size
    (2, 3, 2, 4, 5, 2, 3),        # a non-square kernel
    (1, 10, 6, 3, 4, 1, 1),       # 1x1 head, channels above the CUDA tile width
    (2, 3, 5, 7, 9, 3, 3),        # several CUDA blocks on every grid axis, batch 2
    (1, 2, 3, 3, 3, 3, 3),        # a single output pixel
)
# (relu, bias) of each forward; each forward's backward runs with and without the input gradient.
# In the simulator the backward alternates need_gx instead: the CUDA backward's paths (mask or
# not, input gradient or not) are still all taken, at a third of the cost.
CONV_FORWARDS = [(False, True), (True, True), (True, False)]


def conv_backward_variants(index):
    """need_gx values for the backward after the index-th forward of CONV_FORWARDS."""
    return [index % 2 == 1] if IN_SIMULATOR else [True, False]


UPCONV_CASES = cases(
    # (N, C, K, H, W); kernels 2, 3, 4
    (1, 1, 1, 1, 1), (2, 3, 5, 4, 7), big((1, 72, 66, 3, 2)), (2, 2, 1, 5, 5), (2, 5, 3, 3, 4),
)
POOL_SHAPES = cases((1, 1, 2, 2), (2, 3, 7, 9), big((1, 70, 10, 8)), (3, 2, 3, 2), (1, 9, 4, 6))
CROP_CASES = cases(
    # (skip shape, up shape)
    ((1, 1, 5, 7), (1, 1, 1, 1)), big(((2, 3, 12, 10), (2, 70, 8, 6))), ((2, 66, 4, 4), (2, 2, 4, 4)),
    ((2, 3, 9, 11), (2, 4, 5, 7)),
)
ELEMENTWISE_SHAPES = cases((1, 1, 1, 1), big((2, 70, 5, 3)), (2, 3, 5, 7))
DROPOUT_SHAPES = cases(big((2, 70, 7, 5)), (2, 3, 5, 7))
LOSS_CASES = cases((1, 2, 1, 1), (2, 3, 5, 7), (1, 7, 6, 4), big((2, 70, 3, 3)))
OPTIMISER_SHAPES = cases(big((70, 3, 3, 3)), (7,), big((301, 250)), (3, 5, 7))
ADD_SHAPES = cases((1,), (7,), (1, 3, 5, 7), big((2, 16, 31, 33)))


# ----------------------------------------------------------------------------- backends

def tiny_tile(conv):
    """CUDA convolution tiles of 4 channels x 16 pixels, 8-deep slices, 2x2 per thread: 16 threads."""
    return conv.Tile(bm=4, bn=16, bk=8, tm=2, tn=2)


def set_tiling(name, tiling, monkeypatch):
    """Make the backend's blocking tiny ("edges") or leave its own ("default")."""
    if tiling == "default":
        return
    if name == "cpu":
        from minunet.kernels.cpu import dispatch  # blocks of one row: many block edges
        monkeypatch.setattr(dispatch, "_active", dispatch.current().replace(gemm_block_bytes=5))
    elif name == "cuda":
        from minunet.kernels.cuda import conv
        monkeypatch.setattr(conv, "TILES", dict.fromkeys(conv.TILES, tiny_tile(conv)))
        monkeypatch.setattr(conv, "BIAS_THREADS", 16)
        monkeypatch.setattr(conv, "BIAS_PIXELS_PER_THREAD", 2)
        monkeypatch.setattr(conv, "WGRAD_MIN_CHUNK", 24)


def cuda_backend():
    """The CUDA kernel module, checked to be able to run here."""
    import minunet.kernels.cuda as kc
    ok, why = kc.available()
    assert ok, why
    return kc


def backend_module(name):
    """The kernel module of a backend that runs in this process."""
    if name == "cuda":
        return cuda_backend()
    cpu = pytest.importorskip(f"minunet.kernels.{name}")
    return cpu


class _NanFilledNumpy:
    """NumPy whose ``empty`` and ``empty_like`` fill new arrays with NaN (integers with their maximum)."""

    __name__ = "numpy"

    def __getattr__(self, attr):
        return getattr(np, attr)

    @staticmethod
    def _fill(a):
        a.fill(np.nan if a.dtype.kind in "fc" else np.iinfo(a.dtype).max)
        return a

    def empty(self, *args, **kwargs):
        return self._fill(np.empty(*args, **kwargs))

    def empty_like(self, *args, **kwargs):
        return self._fill(np.empty_like(*args, **kwargs))


@contextlib.contextmanager
def nan_filled_memory(monkeypatch):
    """New CUDA backend arrays start as NaN (all bits set: NaN in both float widths), so that an
    element a kernel does not write fails the comparison instead of passing as a stale 0."""
    if MODE == "simulator":
        from minunet.kernels.cuda import arrays
        monkeypatch.setattr(arrays, "array_module", lambda: _NanFilledNumpy())
        yield
        return
    import cupy
    pool = cupy.get_default_memory_pool()

    def malloc(size):
        mem = pool.malloc(size)
        if size:
            mem.memset_async(0xFF, size)
        return mem
    cupy.cuda.set_allocator(malloc)
    try:
        yield
    finally:
        cupy.cuda.set_allocator(pool.malloc)


@contextlib.contextmanager
def backend_under_test(name, tiling, monkeypatch):
    """The backend's module, blocked as asked, with NaN-filled new memory for CUDA."""
    module = backend_module(name)
    set_tiling(name, tiling, monkeypatch)
    if name != "cuda":
        yield module
        return
    with nan_filled_memory(monkeypatch):
        yield module
