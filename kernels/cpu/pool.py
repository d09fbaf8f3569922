"""2x2 / stride-2 max pooling, one pass over the input; argmax kept as uint8 for backward."""
import numpy as np
from numba import njit, prange

from . import buffers


@njit(parallel=True, cache=True)
def _pool_forward(x, y, idx):
    n, c, ho, wo = y.shape
    for plane in prange(n * c):
        img, ch = plane // c, plane % c
        for r in range(ho):
            for col in range(wo):
                # Window in row-major order; strict ">" keeps the first maximum on ties.
                best, arg = x[img, ch, 2 * r, 2 * col], 0
                v = x[img, ch, 2 * r, 2 * col + 1]
                if v > best:
                    best, arg = v, 1
                v = x[img, ch, 2 * r + 1, 2 * col]
                if v > best:
                    best, arg = v, 2
                v = x[img, ch, 2 * r + 1, 2 * col + 1]
                if v > best:
                    best, arg = v, 3
                y[img, ch, r, col] = best
                idx[img, ch, r, col] = arg


@njit(parallel=True, cache=True)
def _pool_backward(gy, idx, gx):
    n, c, ho, wo = gy.shape
    for plane in prange(n * c):
        img, ch = plane // c, plane % c
        for r in range(gx.shape[2]):
            for col in range(gx.shape[3]):
                gx[img, ch, r, col] = 0
        for r in range(ho):
            for col in range(wo):
                a = idx[img, ch, r, col]
                gx[img, ch, 2 * r + a // 2, 2 * col + a % 2] = gy[img, ch, r, col]


def max_pool2d_forward(x):
    """2x2/2 max pooling of x (N,C,H,W) -> (y (N,C,H//2,W//2), idx uint8 argmax 0..3 row-major)."""
    n, c, h, w = x.shape
    if h < 2 or w < 2:
        raise ValueError(f"max_pool2d: input {h}x{w} is smaller than 2x2")
    y = buffers.empty((n, c, h // 2, w // 2), x.dtype)
    idx = buffers.empty((n, c, h // 2, w // 2), np.uint8)
    _pool_forward(x, y, idx)
    return y, idx


def max_pool2d_backward(gy, idx, x_shape):
    """Each output gradient goes to its window's argmax; zeros elsewhere."""
    gx = buffers.empty(x_shape, gy.dtype)
    _pool_backward(gy, idx, gx)
    return gx
