"""ReLU, dropout (the contract's SplitMix64 mask, bit for bit) and crop-and-concatenate.

All are memory-bound one-pass kernels: ReLU and dropout over flat (contiguous) arrays, one element
per thread in a grid-stride loop, so consecutive threads touch consecutive addresses; the window
copies of crop-and-concatenate on a grid shaped like the window (``arrays.plane_grid``), so that
no thread divides an index.
"""
import numpy as np

from .. import dropout_hash
from ..shapes import crop_margins
from . import arrays
from .arrays import THREADS, blocks, cuda, launch, plane_grid

# The contract's hash (reference.dropout_uniform bit for bit), compiled from its one source.
dropout_uniform = cuda.jit(device=True)(dropout_hash.dropout_uniform)


@cuda.jit
def _relu(x, y, zero):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = x[i]
        y[i] = v if v > zero else zero


@cuda.jit
def _relu_grad(gy, y, gx, zero):
    for i in range(cuda.grid(1), gy.size, cuda.gridsize(1)):
        gx[i] = gy[i] if y[i] > 0 else zero


@cuda.jit
def _dropout(x, y, p, scale, seed, zero):
    """y = x / (1 - p) where the hash of (seed, i) >= p, else 0; ``scale`` is 1 - p in x's dtype."""
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        y[i] = x[i] / scale if dropout_uniform(seed, i) >= p else zero


@cuda.jit
def _copy_window(src, dst, c_src, top, left, c_dst):
    """dst[n, c_dst + c, h, w] = src[n, c_src + c, top + h, left + w] over the overlap of both windows.

    Grid x along w (a warp's reads and writes are contiguous rows), y along h, z over channels.
    """
    nc = min(src.shape[1] - c_src, dst.shape[1] - c_dst)
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    i = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
    if i >= min(src.shape[2] - top, dst.shape[2]) or j >= min(src.shape[3] - left, dst.shape[3]):
        return
    for c in range(cuda.blockIdx.z, nc, cuda.gridDim.z):
        for n in range(src.shape[0]):
            dst[n, c_dst + c, i, j] = src[n, c_src + c, top + i, left + j]


@cuda.jit
def _paste_window(src, dst, c_src, top, left):
    """dst[n, c, top + h, left + w] = src[n, c_src + c, h, w]; dst elsewhere untouched (zeros)."""
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    i = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
    if i >= src.shape[2] or j >= src.shape[3]:
        return
    for c in range(cuda.blockIdx.z, dst.shape[1], cuda.gridDim.z):
        for n in range(src.shape[0]):
            dst[n, c, top + i, left + j] = src[n, c_src + c, i, j]


def _window(kernel, src, dst, channels, height, width, *args):
    """Launch a window kernel over channels x height x width."""
    if channels and height and width and src.shape[0]:
        grid, block = plane_grid(height, width, channels)
        launch(kernel, grid, block, src, dst, *args)


def _flat(a):
    return arrays.contiguous(a).reshape(-1)


# ----------------------------------------------------------------------------- the contract

def add(a, b):
    """a + b, a new array (CuPy's elementwise kernel; the engine's sum of two gradients)."""
    return a + b


def relu_forward(x):
    """max(x, 0)."""
    arrays.require()
    x = arrays.contiguous(x)
    y = arrays.array_module().empty_like(x)
    if x.size:
        launch(_relu, blocks(x.size), THREADS, x.reshape(-1), y.reshape(-1), x.dtype.type(0))
    return y


def relu_backward(gy, y):
    """gy where y > 0, else 0."""
    arrays.require()
    gy = arrays.contiguous(gy)
    gx = arrays.array_module().empty_like(gy)
    if gy.size:
        launch(_relu_grad, blocks(gy.size), THREADS, gy.reshape(-1), _flat(y), gx.reshape(-1),
               gy.dtype.type(0))
    return gx


def dropout_forward(x, p, seed):
    """Inverted dropout with the contract's hash mask (reference.dropout_keep_mask)."""
    arrays.require()
    x = arrays.contiguous(x)
    if p <= 0:
        return x.copy()
    y = arrays.array_module().empty_like(x)
    if x.size:
        launch(_dropout, blocks(x.size), THREADS, x.reshape(-1), y.reshape(-1), float(p),
               x.dtype.type(1 - p), np.uint64(seed), x.dtype.type(0))
    return y


def dropout_backward(gy, p, seed):
    """The forward's mask and scale applied to the gradient."""
    return dropout_forward(gy, p, seed)


def crop_concat_forward(skip, up):
    """concat([center_crop(skip), up], axis=1): two window copies into one output."""
    arrays.require()
    if skip.shape[0] != up.shape[0]:
        raise ValueError(f"crop_concat: batch sizes differ ({skip.shape[0]} vs {up.shape[0]})")
    top, left = crop_margins(skip.shape[2:], up.shape[2:])
    skip, up = arrays.contiguous(skip), arrays.contiguous(up)
    arrays.float_dtype(skip, up)
    n, cs = skip.shape[:2]
    cu, hu, wu = up.shape[1:]
    y = arrays.array_module().empty((n, cs + cu, hu, wu), dtype=up.dtype)
    _window(_copy_window, skip, y, cs, hu, wu, 0, top, left, 0)
    _window(_copy_window, up, y, cu, hu, wu, 0, 0, 0, cs)
    return y


def crop_concat_backward(gy, skip_shape):
    """(gskip, gup): the skip's channels pasted back into its cropped window, the rest copied."""
    arrays.require()
    xp = arrays.array_module()
    gy = arrays.contiguous(gy)
    n, cs = skip_shape[:2]
    hu, wu = gy.shape[2:]
    top, left = crop_margins(skip_shape[2:], (hu, wu))
    gskip = xp.zeros(tuple(skip_shape), dtype=gy.dtype)
    gup = xp.empty((n, gy.shape[1] - cs, hu, wu), dtype=gy.dtype)
    _window(_paste_window, gy, gskip, cs, hu, wu, 0, top, left)
    _window(_copy_window, gy, gup, gy.shape[1] - cs, hu, wu, cs, 0, 0, 0)
    return gskip, gup
