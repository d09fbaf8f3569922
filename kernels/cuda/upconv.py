"""Stride-2 transposed convolution on the convolution kernels of conv.py (STYLE item 3).

Forward: each output parity (py, px) in {0,1}^2 is an ordinary correlation of x, padded by
(n-1), with the sub-kernel w[:, :, py::2, px::2] flipped (n = its size: 1 for k=2, 2 for k=4),
written to every second output pixel. The four sub-kernels are stacked (an odd k's smaller ones
padded with zero taps in front) and one launch of the implicit-GEMM kernel computes all four
parities, one per group of its grid: no scatter, no multiplications by the zeros of a dilated input.
Backward-data: gx = a stride-2 valid convolution of gy with w as stored (C, K*k*k).
Backward-weights: gw[c, (k,i,j)] = sum x[n,c,h,w] gy[n,k,2h+i,2w+j]: the weight-gradient kernel
with x as the "output gradient" and gy as the strided input.
"""
import functools

import numpy as np

from . import arrays
from .conv import bias_grad, run_igemm, run_wgrad


@functools.lru_cache(maxsize=64)
def _parity_index(c, k, kh, kw, xp_name):
    nh, nw = (kh + 1) // 2, (kw + 1) // 2                      # the largest sub-kernel
    index = np.full((4, k, c, nh, nw), -1, dtype=np.int64)
    flat = np.arange(c * k * kh * kw).reshape(c, k, kh, kw)
    for py in range(2):
        for px in range(2):
            sub = flat[:, :, py::2, px::2][:, :, ::-1, ::-1].transpose(1, 0, 2, 3)   # (K, C, sh, sw), flipped
            index[2 * py + px, :, :, nh - sub.shape[2]:, nw - sub.shape[3]:] = sub
    return arrays.array_module().asarray(index.reshape(4, k, c * nh * nw))


def parity_index(c, k, kh, kw):
    """(4, K, C*nh*nw) indices into w (C, K, kh, kw) flattened: each output parity's sub-kernel,
    flipped and transposed, smaller ones padded in front with -1 (a zero appended to w). One gather
    builds the weights of the single launch; cached per shape."""
    return _parity_index(c, k, kh, kw, arrays.array_module().__name__)


def _check(x, w):
    if x.shape[1] != w.shape[0]:
        raise ValueError(f"conv_transpose2d: input has {x.shape[1]} channels but the weights expect {w.shape[0]}")


def conv_transpose2d_forward(x, w, b):
    """x (N,C,H,W), w (C,K,kh,kw), b (K,) or None -> y (N,K,2(H-1)+kh,2(W-1)+kw)."""
    arrays.require()
    _check(x, w)
    arrays.float_dtype(x, w, b)
    xp = arrays.array_module()
    x, w = arrays.contiguous(x), arrays.contiguous(w)
    b = None if b is None else arrays.contiguous(b)
    n, c, h, wd = x.shape
    _, k, kh, kw = w.shape
    hy, wy = 2 * (h - 1) + kh, 2 * (wd - 1) + kw
    y = xp.empty((n, k, hy, wy), dtype=x.dtype)
    index = parity_index(c, k, kh, kw)
    flat = w.reshape(-1)
    if kh % 2 or kw % 2:                                       # zero taps: index -1, one zero appended
        flat = xp.concatenate([flat, xp.zeros(1, dtype=w.dtype)])
    nh, nw = (kh + 1) // 2, (kw + 1) // 2
    run_igemm(x, flat[index], b, y, nh, nw, pad=(nh - 1, nw - 1), s_out=2, parity=True)
    return y


def conv_transpose2d_backward(x, w, gy):
    """(gx, gw, gb) of the stride-2 transposed convolution."""
    arrays.require()
    _check(x, w)
    xp = arrays.array_module()
    x, w, gy = arrays.contiguous(x), arrays.contiguous(w), arrays.contiguous(gy)
    arrays.float_dtype(x, w, gy)
    c, k, kh, kw = w.shape
    gx = xp.empty(x.shape, dtype=x.dtype)
    run_igemm(gy, w.reshape(1, c, k * kh * kw), None, gx, kh, kw, s_in=2)
    gw = xp.zeros(w.shape, dtype=w.dtype)
    run_wgrad(x, gy, gw.reshape(c, k * kh * kw), kh, kw, s_in=2)
    return gx, gw, bias_grad(gy)
