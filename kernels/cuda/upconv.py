"""Stride-2 transposed convolution on the convolution kernels of conv.py (STYLE item 3).

Forward: each output parity (py, px) in {0,1}^2 is an ordinary correlation of x, padded by
(n-1), with the sub-kernel w[:, :, py::2, px::2] flipped (n = its size: 1 for k=2, 2 for k=4),
written to every second output pixel. So four launches of the implicit-GEMM kernel, no
scatter, no atomics, and no multiplications by the zeros of a dilated input.
Backward-data: gx = a stride-2 valid convolution of gy with w as stored (C, K*k*k).
Backward-weights: gw[c, (k,i,j)] = sum x[n,c,h,w] gy[n,k,2h+i,2w+j]: the weight-gradient kernel
with x as the "output gradient" and gy as the strided input.
"""
from . import arrays
from .conv import bias_grad, run_igemm, run_wgrad


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
    for py in range(2):
        for px in range(2):
            sub = w[:, :, py::2, px::2]                       # (C, K, nh, nw)
            nh, nw = sub.shape[2], sub.shape[3]
            a = arrays.contiguous(sub[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)).reshape(k, c * nh * nw)
            run_igemm(x, a, b, y, nh, nw, (hy - py + 1) // 2, (wy - px + 1) // 2,
                      pad=(nh - 1, nw - 1), s_out=2, offset=(py, px))
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
    run_igemm(gy, w.reshape(c, k * kh * kw), None, gx, kh, kw, x.shape[2], x.shape[3], s_in=2)
    gw = xp.zeros(w.shape, dtype=w.dtype)
    run_wgrad(x, gy, gw.reshape(c, k * kh * kw), kh, kw, s_in=2)
    return gx, gw, bias_grad(gy)
