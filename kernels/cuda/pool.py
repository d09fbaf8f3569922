"""2x2 / stride-2 max pooling with a uint8 argmax per window (first maximum wins on ties)."""
import numpy as np

from . import arrays
from .arrays import THREADS, blocks, cuda, launch, unravel_nchw


@cuda.jit
def _max_pool(x, y, idx):
    """One thread per output pixel (w fastest): read the 2x2 window, keep the first maximum."""
    n_, c_, ho, wo = y.shape
    total = n_ * c_ * ho * wo
    for e in range(cuda.grid(1), total, cuda.gridsize(1)):
        n, c, i, j = unravel_nchw(e, c_, ho, wo)
        best = x[n, c, 2 * i, 2 * j]
        arg = 0
        v = x[n, c, 2 * i, 2 * j + 1]
        if v > best:
            best, arg = v, 1
        v = x[n, c, 2 * i + 1, 2 * j]
        if v > best:
            best, arg = v, 2
        v = x[n, c, 2 * i + 1, 2 * j + 1]
        if v > best:
            best, arg = v, 3
        y[n, c, i, j] = best
        idx[n, c, i, j] = arg


@cuda.jit
def _max_pool_grad(gy, idx, gx, zero):
    """One thread per input pixel (w fastest): its window's gradient if it was the argmax, else 0."""
    n_, c_, h, wd = gx.shape
    ho, wo = gy.shape[2], gy.shape[3]
    total = n_ * c_ * h * wd
    for e in range(cuda.grid(1), total, cuda.gridsize(1)):
        n, c, i, j = unravel_nchw(e, c_, h, wd)
        i2 = i // 2
        j2 = j // 2
        g = zero
        if i2 < ho and j2 < wo and idx[n, c, i2, j2] == 2 * (i - 2 * i2) + (j - 2 * j2):
            g = gy[n, c, i2, j2]
        gx[n, c, i, j] = g


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
        launch(_max_pool, blocks(y.size), THREADS, x, y, idx)
    return y, idx


def max_pool2d_backward(gy, idx, x_shape):
    """Each output gradient routed to its window's argmax; zeros elsewhere (and in dropped edges)."""
    arrays.require()
    gy, idx = arrays.contiguous(gy), arrays.contiguous(idx)
    gx = arrays.array_module().empty(tuple(x_shape), dtype=gy.dtype)
    if gx.size:
        launch(_max_pool_grad, blocks(gx.size), THREADS, gy, idx, gx, gy.dtype.type(0))
    return gx
