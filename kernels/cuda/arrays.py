"""Arrays, availability and kernel launches of the CUDA backend.

On a GPU the backend's arrays are CuPy arrays: CuPy owns the memory (its pool) and Numba kernels
read and write them in place through ``__cuda_array_interface__`` (zero copy), launched on CuPy's
current stream. Under ``NUMBA_ENABLE_CUDASIM=1`` the arrays are NumPy arrays and the very same
kernels run in Numba's CUDA simulator (one Python thread per CUDA thread), which is how CI checks
them without a GPU. Without either, every kernel raises :class:`minunet.kernels.BackendUnavailable`.
"""
import functools
import os

import numpy as np

from .. import BackendUnavailable

try:
    from numba import cuda
except ImportError:                     # numba-cuda (and a numba with a CUDA target) missing
    cuda = None

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
INSTALL_HINT = "--device cuda needs a CUDA GPU and the [cuda] extra: pip install 'minunet[cuda]'"

THREADS = 256          # threads per block of the one-dimensional (elementwise) kernels
MAX_BLOCKS = 4096      # grid cap of the elementwise kernels; each thread strides over the rest


@functools.lru_cache(maxsize=None)
def available():
    """(True, description) when kernels can run here, else (False, what is missing)."""
    if cuda is None:
        return False, "numba-cuda"
    if SIMULATOR:
        return True, "Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1), NumPy arrays"
    missing = []
    try:
        import cupy  # optional: the cuda extra
    except ImportError:
        cupy = None
        missing.append("cupy")
    try:
        gpu = cuda.is_available() and (cupy is None or cupy.cuda.runtime.getDeviceCount() > 0)
    except Exception:                   # a driver that cannot be loaded counts as no GPU
        gpu = False
    if not gpu:
        missing.append("a CUDA GPU with its driver")
    if missing:
        return False, ", ".join(missing)
    name = cuda.get_current_device().name
    return True, name.decode() if isinstance(name, bytes) else str(name)


def require():
    """Raise BackendUnavailable with the install hint unless kernels can run here."""
    ok, why = available()
    if not ok:
        raise BackendUnavailable(f"{INSTALL_HINT} (missing: {why})")


def array_module():
    """CuPy on a GPU, NumPy under the simulator (and, for inspection only, without a GPU)."""
    if available()[0] and not SIMULATOR:
        import cupy  # optional: the cuda extra
        return cupy
    return np


def asarray(a, dtype=None):
    """A backend array (CuPy on a GPU, NumPy in the simulator) from a NumPy array or scalar."""
    require()
    return array_module().asarray(a, dtype=dtype)


def to_numpy(a):
    """A NumPy array from a backend array (copies device memory to the host on a GPU)."""
    require()
    if hasattr(a, "get") and not isinstance(a, np.ndarray):
        return a.get()
    return np.asarray(a)


def synchronize():
    """Wait for every kernel queued on CuPy's current stream (for timing; a no-op in the simulator)."""
    require()
    if not SIMULATOR:
        import cupy  # optional: the cuda extra
        cupy.cuda.get_current_stream().synchronize()


def contiguous(a):
    """The array itself when C-contiguous, else a contiguous copy (kernels index flat memory)."""
    return array_module().ascontiguousarray(a)


def blocks(n, threads=THREADS):
    """Blocks for n items of a grid-stride kernel: enough to cover n, at most MAX_BLOCKS."""
    return max(1, min(MAX_BLOCKS, -(-n // threads)))


@functools.lru_cache(maxsize=None)
def _numba_stream(ptr):
    return cuda.default_stream() if ptr == 0 else cuda.external_stream(ptr)


def _device_view(a):
    """A Numba view of a CuPy array (no copy, no host sync); other arguments pass through."""
    if hasattr(a, "__cuda_array_interface__"):
        return cuda.as_cuda_array(a, sync=False)
    return a


def launch(kernel, grid, block, *args):
    """Run ``kernel[grid, block](*args)``: on CuPy's current stream on a GPU, directly in the simulator."""
    if SIMULATOR:
        kernel[grid, block](*args)
        return
    import cupy  # optional: the cuda extra
    stream = _numba_stream(cupy.cuda.get_current_stream().ptr)
    kernel[grid, block, stream](*[_device_view(a) for a in args])


PLANE_BLOCK = (32, 8)    # threads of the per-plane kernels: 32 along a row (one warp), 8 rows
MAX_GRID_Z = 65535


def plane_grid(height, width, planes):
    """(grid, block) of a kernel with one thread per (row, column) of ``planes`` image planes: x along
    columns, y along rows, z over the planes (each z strides over the planes beyond the grid's limit).
    No thread divides an index: the grid axes are the array's axes."""
    bx, by = PLANE_BLOCK
    return (ceil_div(width, bx), ceil_div(height, by), max(1, min(planes, MAX_GRID_Z))), PLANE_BLOCK


def ceil_div(a, b):
    """Integer ceiling of a / b."""
    return -(-a // b)


def float_dtype(*arrays):
    """The common floating dtype of the arrays (float32 or float64), checked."""
    dt = arrays[0].dtype
    for a in arrays[1:]:
        if a is not None and a.dtype != dt:
            raise ValueError(f"cuda kernels: mixed dtypes {dt} and {a.dtype}")
    if dt not in (np.float32, np.float64):
        raise ValueError(f"cuda kernels support float32 and float64, not {dt}")
    return np.dtype(dt)
