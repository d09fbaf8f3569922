"""2x2 / stride-2 max pooling with a uint8 argmax per window (first maximum wins on ties).

Both kernels run on a grid shaped like the arrays (``arrays.plane_grid``): no index division.
"""
import numpy as np

from . import arrays
from .arrays import cuda, launch, plane_grid


@cuda.jit
def _max_pool(x, y, idx):
    """One thread per output pixel of each (image, channel) plane: the 2x2 window's first maximum."""
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    i = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
    if i >= y.shape[1] or j >= y.shape[2]:
        return
    for c in range(cuda.blockIdx.z, y.shape[0], cuda.gridDim.z):
        best = x[c, 2 * i, 2 * j]
        arg = 0
        v = x[c, 2 * i, 2 * j + 1]
        if v > best:
            best, arg = v, 1
        v = x[c, 2 * i + 1, 2 * j]
        if v > best:
            best, arg = v, 2
        v = x[c, 2 * i + 1, 2 * j + 1]
        if v > best:
            best, arg = v, 3
        y[c, i, j] = best
        idx[c, i, j] = arg


@cuda.jit
def _max_pool_grad(gy, idx, gx, zero):
    """One thread per input pixel of each plane: its window's gradient if it was the argmax, else 0."""
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    i = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
    if i >= gx.shape[1] or j >= gx.shape[2]:
        return
    i2 = i // 2
    j2 = j // 2
    inside = i2 < gy.shape[1] and j2 < gy.shape[2]
    where = 2 * (i - 2 * i2) + (j - 2 * j2)
    for c in range(cuda.blockIdx.z, gx.shape[0], cuda.gridDim.z):
        g = zero
        if inside and idx[c, i2, j2] == where:
            g = gy[c, i2, j2]
        gx[c, i, j] = g


def _planes(a):
    """The (N*C, H, W) view of a contiguous (N, C, H, W) array."""
    return a.reshape(a.shape[0] * a.shape[1], a.shape[2], a.shape[3])


def max_pool2d_forward(x):
    """(y, idx): y (N,C,H//2,W//2) the window maxima, idx uint8 their row-major positions."""
    arrays.require()
    if x.shape[2] < 2 or x.shape[3] < 2:
        raise ValueError(f"max_pool2d: input {x.shape[2]}x{x.shape[3]} is smaller than 2x2")
    xp = arrays.array_module()
    x = arrays.contiguous(x)
    n, c, h, w = x.shape
    y = xp.empty((n, c, h // 2, w // 2), dtype=x.dtype)
    idx = xp.empty(y.shape, dtype=np.uint8)
    if y.size:
        grid, block = plane_grid(h // 2, w // 2, n * c)
        launch(_max_pool, grid, block, _planes(x), _planes(y), _planes(idx))
    return y, idx


def max_pool2d_backward(gy, idx, x_shape):
    """Each output gradient routed to its window's argmax; zeros elsewhere (and in dropped edges)."""
    arrays.require()
    gy, idx = arrays.contiguous(gy), arrays.contiguous(idx)
    gx = arrays.array_module().empty(tuple(x_shape), dtype=gy.dtype)
    if gx.size:
        grid, block = plane_grid(x_shape[2], x_shape[3], x_shape[0] * x_shape[1])
        launch(_max_pool_grad, grid, block, _planes(gy), _planes(idx), _planes(gx), gy.dtype.type(0))
    return gx
