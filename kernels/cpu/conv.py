"""Valid, stride-1 convolution as nine (kh x kw) GEMMs over shifted views of the input.

The trick: flatten each image's rows, ``x[c, h*W + w]``. The output pixel ``(r, col)`` of a
valid convolution reads ``x[c, (r+i)*W + (col+j)]``, i.e. flat position ``p + i*W + j`` where
``p = r*W + col``. So if the output is computed at the *input's* row width W ("wide": columns
``col >= Wo`` are junk), the contribution of kernel tap (i, j) is a single GEMM

    y_wide[:, p] += w[:, :, i, j] @ x_flat[:, p + i*W + j]        (K x C) @ (C x positions)

over a shifted window of the input, with no im2col copy. Junk columns are dropped in the
epilogue, which also adds the bias and applies ReLU. The positions are processed in blocks of
whole rows (``Dispatch.gemm_block_bytes``), shared among one worker thread per core (``blas.parallel_for``).

Backward uses the same windows: the weight gradient of tap (i, j) is ``gy_wide @ x_window^T``
and the input gradient is ``w[:, :, i, j]^T @ gy_wide`` accumulated into the shifted window of
``gx`` (a "full" correlation), where gy_wide is gy at row width W with zeros in the junk
columns (and ReLU's mask applied: the fusion of ReLU's backward).

Few channels or small images: with C or K up to ~128 each tap GEMM has a short contraction and
re-reads its accumulator nine times, so OpenBLAS runs far below its peak (and with C = 1, the
first layer, the "GEMMs" are outer products). For those 3x3 convolutions the direct kernels of
``direct.py`` run instead, register-blocked micro-kernels written as LLVM IR: the input gradient
is the forward kernel run on the zero-padded gy with the weights flipped and transposed (a full
correlation is a valid one on padded input), and the weight gradient has a kernel of its own.

Many channels on large images: Winograd's F(2x2, 3x3) (``winograd.py``) does the same 3x3
convolution with 16 GEMMs over 4x fewer positions, 2.25x fewer multiplications; it beats the
other paths from 64 channels and ~700 output tiles up once the layer is big enough.

Which path runs is chosen per direction (``_path``) by the thresholds of ``dispatch.current()``
(measured crossovers, see docs/performance.md).
"""
import numpy as np
from numba import njit, prange

from ..shapes import conv2d_output_hw
from . import buffers, direct, direct_weight_grad, winograd, winograd4
from .blas import WORKERS, gemm, parallel_for
from .dispatch import current


def _rows_per_block(height, width, channels, itemsize):
    """Whole rows per block: ``channels`` rows of a block fill the GEMM block bytes, and every worker gets one."""
    return max(1, min(current().gemm_block_bytes // (itemsize * channels * width), -(-height // WORKERS)))


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


def _path(direction, c, k, kh, kw, ho, wo):
    """Which kernel computes ``direction`` ("forward", "weight_grad", "input_grad") of a
    convolution with C inputs, K outputs and an Ho x Wo output: "direct", "winograd",
    "winograd4" (F(4x4, 3x3), forward and input gradient) or "gemm".

    Few channels, or few pixels: direct. Many channels: Winograd (the forward from 64 channels,
    the gradients on large images only). Otherwise nine GEMMs (and always for kernels other than
    3x3). The thresholds: ``dispatch.current()``.
    """
    if kh != 3 or kw != 3:
        return "gemm"
    d = current()
    if direction == "forward" and min(c, k) >= d.winograd_min_channels:
        if d.winograd4 and -(-ho // 4) * -(-wo // 4) >= d.winograd4_min_tiles:
            return "winograd4"
        if c * k >= d.winograd_small_image_min_filter:
            return "winograd"
    if direction == "input_grad" and d.winograd4_input_grad and d.winograd4 and min(c, k) >= d.winograd_min_channels \
            and -(-(ho + 2) // 4) * -(-(wo + 2) // 4) >= d.winograd4_min_tiles \
            and _path("weight_grad", c, k, kh, kw, ho, wo) != "gemm":
        return "winograd4"     # on the padded gy that the weight gradient's path reads anyway
    few_channels = c * k <= d.direct_max[direction]
    wino = winograd.applies(direction, c, k, ho, wo)
    if wino and not (few_channels and c * k * -(-ho // 2) * -(-wo // 2) <= d.direct_max_work):
        return _winograd_path(direction, c, k, ho, wo)
    small = ho * wo <= d.direct_max_pixels[direction]
    if direction == "input_grad":
        small = small and c * k <= d.direct_max_small_input_grad
    if direction == "input_grad" and not small and _path("weight_grad", c, k, kh, kw, ho, wo) == "gemm":
        return "gemm"      # the weight gradient's GEMMs read gy widened: padding it too would cost a pass
    if few_channels or small:
        return "direct"
    return _winograd_path(direction, c, k, ho, wo) if wino else "gemm"


def _winograd_path(direction, c, k, ho, wo):
    """F(4x4, 3x3) for the forward and the input gradient where it is on, else F(2x2, 3x3)."""
    return "winograd4" if direction != "weight_grad" and current().winograd4 else "winograd"


_WINOGRAD = {"winograd": winograd, "winograd4": winograd4}


def conv2d_forward(x, w, b, relu=False):
    """Valid stride-1 convolution: x (N,C,H,W), w (K,C,kh,kw), b (K,) or None -> (N,K,Ho,Wo).

    ``relu=True`` applies ReLU in the epilogue (the bias + ReLU fusion).
    """
    n, c, h, wd = x.shape
    k, c2, kh, kw = w.shape
    ho, wo = conv2d_output_hw(x.shape, w.shape)
    x = np.ascontiguousarray(x)
    bias = np.zeros(k, x.dtype) if b is None else np.ascontiguousarray(b, dtype=x.dtype)
    path = _path("forward", c, k, kh, kw, ho, wo)
    if path in _WINOGRAD:
        return _WINOGRAD[path].conv3x3_forward(x, np.ascontiguousarray(w), bias, relu)
    y = buffers.empty((n, k, ho, wo), x.dtype)
    if path == "direct":
        direct.conv3x3(x, np.ascontiguousarray(w, dtype=x.dtype), bias, relu, y)
        return y
    taps = np.ascontiguousarray(w.transpose(2, 3, 0, 1), dtype=x.dtype)   # (kh, kw, K, C)
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


@njit(parallel=True, cache=True, fastmath={"reassoc"})
def _place_grad(gy, y, use_mask, out, top, left, gb):
    """out[:, k, top + r, left + col] = gy (masked by y > 0 if use_mask), zero elsewhere; gb = its sum.

    With top = left = 0 and out at row width W this is gy "widened" for the GEMMs (junk columns
    zero); with top, left = kh - 1, kw - 1 it is gy zero-padded for the direct input gradient.
    "reassoc" lets LLVM sum gb in vector lanes: summed in order, the float64 additions are one
    dependency chain, which made this pass up to 2.8x slower.
    """
    n, k_out, ho, wo = gy.shape
    for k in prange(k_out):
        total = 0.0
        for img in range(n):
            for row_out in range(out.shape[2]):
                row, r = out[img, k, row_out], row_out - top
                row[:] = 0
                if r < 0 or r >= ho:
                    continue
                for col in range(wo):
                    g = gy[img, k, r, col]
                    if use_mask and not y[img, k, r, col] > 0:
                        g = 0
                    row[left + col] = g
                    total += g
        gb[k] = total


@njit(parallel=True, cache=True, nogil=True)
def _flip_transpose(w, out):
    """out[c, k] = w[k, c] rotated by 180 degrees: the weights of the input gradient's correlation.

    (A parallel kernel: NumPy's copy of the reversed, transposed view runs on one core.)
    """
    k_out, c_in, kh, kw = w.shape
    for c in prange(c_in):
        for k in range(k_out):
            for i in range(kh):
                for j in range(kw):
                    out[c, k, kh - 1 - i, kw - 1 - j] = w[k, c, i, j]


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
    y = None if y is None else np.ascontiguousarray(y)
    if not need_gx and kh == kw == 3 and c <= current().few_inputs_no_gx:
        gw, gb = direct_weight_grad.masked_weight_grad(x, gy, y)
        return None, gw, gb
    mask = y if y is not None else gy
    gb = np.empty(k, dtype=dtype)
    gw_path = _path("weight_grad", c, k, kh, kw, ho, wo)
    gx_path = _path("input_grad", c, k, kh, kw, ho, wo) if need_gx else None
    paths = (gw_path, gx_path)
    gy_wide = gy_pad = None
    if "gemm" in paths:
        gy_wide = buffers.empty((n, k, ho * wd), dtype)
        _place_grad(gy, mask, y is not None, gy_wide.reshape(n, k, ho, wd), 0, 0, gb)
    if "direct" in paths or "winograd" in paths or "winograd4" in paths:
        # Padded by kh-1, kw-1 on every side (Ho+4 x Wo+4 for 3x3), the form the direct and
        # Winograd kernels read.
        gy_pad = buffers.empty((n, k, ho + 2 * (kh - 1), wo + 2 * (kw - 1)), dtype)
        _place_grad(gy, mask, y is not None, gy_pad, kh - 1, kw - 1, gb)
    del mask

    if gw_path == "winograd":
        gw = winograd.conv3x3_weight_grad(x, gy_pad)
    elif gw_path == "direct":
        gw = direct_weight_grad.weight_grad(x, gy_pad)
    else:
        gw = _gemm_weight_grad(x, w, gy_wide)
    gx = None
    if gx_path in ("direct", "winograd", "winograd4"):
        # gx is the valid correlation of the padded gy with the flipped, transposed weights.
        w_flip = np.empty((c, k, kh, kw), dtype)
        _flip_transpose(w, w_flip)
        if gx_path in _WINOGRAD:
            gx = _WINOGRAD[gx_path].conv3x3_forward(gy_pad, w_flip, np.zeros(c, dtype), False)
        else:
            gx = buffers.empty_like(x)
            direct.conv3x3(gy_pad, w_flip, np.zeros(c, dtype), False, gx)
    elif gx_path == "gemm":
        gx = _gemm_input_grad(x, w, gy_wide)
    return gx, gw, gb


def _gemm_weight_grad(x, w, gy_wide):
    """gw (K, C, kh, kw) as nine GEMMs per block: gy block x shifted x block^T, accumulated."""
    n, c, h, wd = x.shape
    k, _, kh, kw = w.shape
    ho, wo = h - kh + 1, wd - kw + 1
    wide_len = (ho - 1) * wd + wo
    rows = _rows_per_block(ho, wd, c + k, x.itemsize)

    def weight_grad(part):                 # one worker: its blocks, into its own gtaps
        gtaps = np.zeros((kh, kw, k, c), dtype=x.dtype)
        for img, r0 in part:
            x_flat, g = x[img].reshape(c, h * wd), gy_wide[img]
            p0, p1 = r0 * wd, min((r0 + rows) * wd, wide_len)
            for i in range(kh):
                for j in range(kw):
                    off = i * wd + j
                    gemm(g[:, p0:p1], x_flat[:, p0 + off:p1 + off], gtaps[i, j], trans_b=True, beta=1.0)
        return gtaps

    gtaps = sum(parallel_for(weight_grad, [(img, r0) for img in range(n) for r0 in range(0, ho, rows)]))
    return np.ascontiguousarray(gtaps.transpose(2, 3, 0, 1))


def _gemm_input_grad(x, w, gy_wide):
    """gx as a "full" correlation: per block of gx rows, tap (i, j) adds w_ij^T @ gy shifted."""
    n, c, h, wd = x.shape
    k, _, kh, kw = w.shape
    ho, wo = h - kh + 1, wd - kw + 1
    wide_len = (ho - 1) * wd + wo
    rows = _rows_per_block(ho, wd, c + k, x.itemsize)
    taps = np.ascontiguousarray(w.transpose(2, 3, 0, 1), dtype=x.dtype)     # (kh, kw, K, C)
    gx = buffers.zeros(x.shape, x.dtype)

    def input_grad(part):                  # one worker: blocks of gx rows
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
    return gx
