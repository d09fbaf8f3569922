"""Stride-2 transposed convolution (k x k kernel, no padding) as one GEMM plus a col2im pass.

Forward: ``cols = W^T @ x`` turns each input pixel into its K*k*k "stamp" (one GEMM,
(K*k*k, C) @ (C, H*W)); a Numba pass then adds the stamps into the output, each input pixel's
stamp placed 2 pixels after its neighbour's (col2im). For k=2 the stamps do not overlap and
are interleaved into the output rows; for k=4 each output pixel gathers 4 of them. Backward
mirrors it: an im2col gather of gy into the stamps' layout, then two GEMMs (gx = W @ gcols,
gw = x @ gcols^T).
"""
import numpy as np
from numba import njit, prange

from ..shapes import conv_transpose2d_output_hw
from . import buffers, compiled_blas
from .blas import gemm, parallel_for


@njit(parallel=True, cache=True)
def _col2im(cols, bias, y):
    """y[k, oy, ox] = bias[k] + sum of cols[k, i, j, h, w] over (2h+i, 2w+j) = (oy, ox)."""
    k_out, kh, kw, h, w = cols.shape
    _, oh, ow = y.shape
    for k in prange(k_out):
        for oy in range(oh):
            for ox in range(ow):
                total = bias[k]
                # Taps i with the same parity as oy and 0 <= (oy - i) / 2 < h.
                for i in range(oy % 2, kh, 2):
                    r = (oy - i) // 2
                    if r < 0 or r >= h:
                        continue
                    for j in range(ox % 2, kw, 2):
                        q = (ox - j) // 2
                        if 0 <= q < w:
                            total += cols[k, i, j, r, q]
                y[k, oy, ox] = total


@njit(parallel=True, cache=True)
def _interleave(cols, bias, y):
    """_col2im for 2x2 stamps, which tile the output without overlap: y[k, 2h+i, 2w+j] = bias[k] + cols[k, i, j, h, w].

    No per-pixel tap search: the two column taps of a row are interleaved.
    """
    k_out, _, _, h, w = cols.shape
    for task in prange(k_out * h):
        k, r = task // h, task % h
        for i in range(2):
            row, even, odd = y[k, 2 * r + i], cols[k, i, 0, r], cols[k, i, 1, r]
            for q in range(w):
                row[2 * q] = even[q] + bias[k]
                row[2 * q + 1] = odd[q] + bias[k]


@njit(parallel=True, cache=True, fastmath={"reassoc"})
def _im2col(gy, gcols, gb):
    """gcols[k, i, j, h, w] = gy[k, 2h+i, 2w+j]: the stamps' layout of _col2im, gathered; gb[k] += sum of gy[k].

    The bias gradient rides along, summed in float64 lanes ("reassoc"): NumPy's float64 sum over
    the image axes runs on one core.
    """
    k_out, kh, kw, h, w = gcols.shape
    for k in prange(k_out):
        for i in range(kh):
            for j in range(kw):
                for r in range(h):
                    for q in range(w):
                        gcols[k, i, j, r, q] = gy[k, 2 * r + i, 2 * q + j]
        total = 0.0
        for row in range(gy.shape[1]):
            for col in range(gy.shape[2]):
                total += gy[k, row, col]
        gb[k] += total


def conv_transpose2d_forward(x, w, b):
    """x (N,C,H,W), w (C,K,k,k), b (K,) or None -> y (N,K,2(H-1)+k,2(W-1)+k)."""
    n, c, h, wd = x.shape
    _, k, kh, kw = w.shape
    x = np.ascontiguousarray(x)
    w_mat = np.ascontiguousarray(w, dtype=x.dtype).reshape(c, k * kh * kw)
    bias = np.zeros(k, x.dtype) if b is None else np.ascontiguousarray(b, dtype=x.dtype)
    y = buffers.empty((n, k) + conv_transpose2d_output_hw(x.shape, w.shape), x.dtype)
    cols = buffers.empty((k * kh * kw, h * wd), x.dtype)
    place = _interleave if (kh, kw) == (2, 2) else _col2im
    w_t = np.ascontiguousarray(w_mat.T)
    for img in range(n):
        x_flat = x[img].reshape(c, h * wd)
        _stamp_columns(compiled_blas.routine(x.dtype), w_t, x_flat, cols, compiled_blas.parts(h * wd))
        place(cols.reshape(k, kh, kw, h, wd), bias, y[img])
    return y


@njit(parallel=True, cache=True)
def _stamp_columns(f, w_t, x_flat, cols, parts):
    """cols = w_t @ x_flat on Numba's threads, each part a contiguous range of columns (pixels)."""
    n = x_flat.shape[1]
    for p in prange(parts):
        a, b = n * p // parts, n * (p + 1) // parts
        compiled_blas.gemm(f, w_t, x_flat[:, a:b], cols[:, a:b])


def conv_transpose2d_backward(x, w, gy):
    """(gx, gw, gb) of the stride-2 transposed convolution."""
    n, c, h, wd = x.shape
    _, k, kh, kw = w.shape
    dtype = x.dtype
    x = np.ascontiguousarray(x)
    gy = np.ascontiguousarray(gy, dtype=dtype)
    w_mat = np.ascontiguousarray(w, dtype=dtype).reshape(c, k * kh * kw)
    gx = buffers.empty_like(x)
    gw = np.zeros((c, k * kh * kw), dtype=dtype)
    gcols = buffers.empty((k * kh * kw, h * wd), dtype)
    gb = np.zeros(k)
    for img in range(n):
        _im2col(gy[img], gcols.reshape(k, kh, kw, h, wd), gb)
        x_flat, gx_flat = x[img].reshape(c, h * wd), gx[img].reshape(c, h * wd)

        def grads(part):                   # one worker: a range of input pixels; its share of gw
            a, b = part[0], part[-1] + 1
            gemm(w_mat, gcols[:, a:b], gx_flat[:, a:b])
            return gemm(x_flat[:, a:b], gcols[:, a:b], np.zeros_like(gw), trans_b=True)

        gw += sum(parallel_for(grads, range(h * wd)))
    return gx, gw.reshape(c, k, kh, kw), gb.astype(dtype)
