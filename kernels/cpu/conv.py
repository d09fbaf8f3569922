"""Valid, stride-1 convolution as nine (kh x kw) GEMMs over shifted views of the input.

The trick: flatten each image's rows, ``x[c, h*W + w]``. The output pixel ``(r, col)`` of a
valid convolution reads ``x[c, (r+i)*W + (col+j)]``, i.e. flat position ``p + i*W + j`` where
``p = r*W + col``. So if the output is computed at the *input's* row width W ("wide": columns
``col >= Wo`` are junk), the contribution of kernel tap (i, j) is a single GEMM

    y_wide[:, p] += w[:, :, i, j] @ x_flat[:, p + i*W + j]        (K x C) @ (C x positions)

over a shifted window of the input, with no im2col copy. Junk columns are dropped in the
epilogue, which also adds the bias and applies ReLU. The positions are processed in blocks of
whole rows small enough that the accumulating output block stays in L2 across the nine GEMMs;
the blocks are shared among one worker thread per core (``blas.parallel_for``).

Backward uses the same windows: the weight gradient of tap (i, j) is ``gy_wide @ x_window^T``
and the input gradient is ``w[:, :, i, j]^T @ gy_wide`` accumulated into the shifted window of
``gx`` (a "full" correlation), where gy_wide is gy at row width W with zeros in the junk
columns (and ReLU's mask applied: the fusion of ReLU's backward).
"""
import numpy as np
from numba import njit, prange

from .blas import WORKERS, gemm, parallel_for

# Bytes of one block's operands (the C x block input window and the K x block accumulator): they
# should stay in L2 across the nine GEMMs. Fewer channels -> longer blocks -> fewer, larger GEMMs.
BLOCK_BYTES = 1 << 21


def _rows_per_block(height, width, channels, itemsize):
    """Whole rows per block: ``channels`` rows of a block fill BLOCK_BYTES, and every worker gets one."""
    return max(1, min(BLOCK_BYTES // (itemsize * channels * width), -(-height // WORKERS)))


@njit(cache=True, nogil=True)
def _epilogue(acc, bias, relu, y, r0, width):
    """y[:, r0 + r, col] = act(acc[:, r*width + col] + bias) for the block's rows, dropping junk columns."""
    k_out, ho, wo = y.shape
    rows = min(acc.shape[1] // width, ho - r0)
    for k in range(k_out):
        for r in range(rows):
            for col in range(wo):
                v = acc[k, r * width + col] + bias[k]
                if relu and v < 0:
                    v = 0
                y[k, r0 + r, col] = v


def conv2d_forward(x, w, b, relu=False):
    """Valid stride-1 convolution: x (N,C,H,W), w (K,C,kh,kw), b (K,) or None -> (N,K,Ho,Wo).

    ``relu=True`` applies ReLU in the epilogue (the bias + ReLU fusion).
    """
    n, c, h, wd = x.shape
    k, c2, kh, kw = w.shape
    if c != c2:
        raise ValueError(f"conv2d: input has {c} channels but the weights expect {c2}")
    ho, wo = h - kh + 1, wd - kw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"conv2d: input {h}x{wd} is smaller than the {kh}x{kw} kernel")
    x = np.ascontiguousarray(x)
    taps = np.ascontiguousarray(w.transpose(2, 3, 0, 1), dtype=x.dtype)   # (kh, kw, K, C)
    bias = np.zeros(k, x.dtype) if b is None else np.ascontiguousarray(b, dtype=x.dtype)
    y = np.empty((n, k, ho, wo), dtype=x.dtype)
    wide_len = (ho - 1) * wd + wo          # flat positions whose windows stay inside the image
    rows = _rows_per_block(ho, wd, c + k, x.itemsize)

    def blocks(part):                      # one worker: its (image, first row) blocks
        acc = np.empty((k, rows * wd), dtype=x.dtype)
        for img, r0 in part:
            x_flat = x[img].reshape(c, h * wd)
            p0, p1 = r0 * wd, min((r0 + rows) * wd, wide_len)
            for i in range(kh):
                for j in range(kw):
                    off = i * wd + j
                    gemm(taps[i, j], x_flat[:, p0 + off:p1 + off], acc[:, :p1 - p0],
                         beta=0.0 if i == j == 0 else 1.0)
            _epilogue(acc, bias, relu, y[img], r0, wd)

    parallel_for(blocks, [(img, r0) for img in range(n) for r0 in range(0, ho, rows)])
    return y


@njit(parallel=True, cache=True)
def _widen_grad(gy, y, use_mask, width, gy_wide, gb):
    """gy at row width ``width`` (junk columns zero), masked by y > 0 if use_mask; gb = its sum."""
    n, k_out, ho, wo = gy.shape
    for k in prange(k_out):
        total = 0.0
        for img in range(n):
            for r in range(ho):
                row = gy_wide[img, k, r * width:(r + 1) * width]
                for col in range(wo):
                    g = gy[img, k, r, col]
                    if use_mask and not y[img, k, r, col] > 0:
                        g = 0
                    row[col] = g
                    total += g
                row[wo:] = 0
        gb[k] = total


def conv2d_backward(x, w, gy, y=None, need_gx=True):
    """(gx, gw, gb) of the valid convolution; gy is first masked by y > 0 when y is given.

    gx is None when ``need_gx`` is False.
    """
    n, c, h, wd = x.shape
    k, _, kh, kw = w.shape
    ho, wo = gy.shape[2], gy.shape[3]
    dtype = x.dtype
    x = np.ascontiguousarray(x)
    gy = np.ascontiguousarray(gy, dtype=dtype)
    mask = np.ascontiguousarray(y) if y is not None else gy
    gy_wide = np.empty((n, k, ho * wd), dtype=dtype)
    gb = np.empty(k, dtype=dtype)
    _widen_grad(gy, mask, y is not None, wd, gy_wide, gb)
    del mask

    taps = np.ascontiguousarray(w.transpose(2, 3, 0, 1), dtype=dtype)     # (kh, kw, K, C)
    wide_len = (ho - 1) * wd + wo
    rows = _rows_per_block(ho, wd, c + k, x.itemsize)

    def weight_grad(part):                 # one worker: gy block x shifted x block^T, nine GEMMs each
        gtaps = np.zeros((kh, kw, k, c), dtype=dtype)
        for img, r0 in part:
            x_flat, g = x[img].reshape(c, h * wd), gy_wide[img]
            p0, p1 = r0 * wd, min((r0 + rows) * wd, wide_len)
            for i in range(kh):
                for j in range(kw):
                    off = i * wd + j
                    gemm(g[:, p0:p1], x_flat[:, p0 + off:p1 + off], gtaps[i, j], trans_b=True, beta=1.0)
        return gtaps

    gtaps = sum(parallel_for(weight_grad, [(img, r0) for img in range(n) for r0 in range(0, ho, rows)]))
    gx = None
    if need_gx:
        gx = np.zeros_like(x)

        def input_grad(part):              # one worker: blocks of gx rows; tap (i, j) adds w_ij^T @ gy shifted
            for img, r0 in part:
                gx_flat, g = gx[img].reshape(c, h * wd), gy_wide[img]
                q0, q1 = r0 * wd, min((r0 + rows) * wd, h * wd)
                for i in range(kh):
                    for j in range(kw):
                        off = i * wd + j
                        p0, p1 = max(0, q0 - off), min(wide_len, q1 - off)
                        if p1 > p0:
                            gemm(taps[i, j], g[:, p0:p1], gx_flat[:, p0 + off:p1 + off], trans_a=True, beta=1.0)

        parallel_for(input_grad, [(img, r0) for img in range(n) for r0 in range(0, h, rows)])
    gw = np.ascontiguousarray(gtaps.transpose(2, 3, 0, 1))
    return gx, gw, gb
