"""Valid, stride-1 convolution as nine (kh x kw) GEMMs over shifted views of the input.

The trick: flatten each image's rows, ``x[c, h*W + w]``. The output pixel ``(r, col)`` of a
valid convolution reads ``x[c, (r+i)*W + (col+j)]``, i.e. flat position ``p + i*W + j`` where
``p = r*W + col``. So if the output is computed at the *input's* row width W ("wide": columns
``col >= Wo`` are junk), the contribution of kernel tap (i, j) is a single GEMM

    y_wide[:, p] += w[:, :, i, j] @ x_flat[:, p + i*W + j]        (K x C) @ (C x positions)

over a shifted window of the input, with no im2col copy. Junk columns are dropped in the
epilogue, which also adds the bias and applies ReLU. The positions are processed in blocks of
whole rows (``BLOCK_BYTES``), shared among one worker thread per core (``blas.parallel_for``).

Backward uses the same windows: the weight gradient of tap (i, j) is ``gy_wide @ x_window^T``
and the input gradient is ``w[:, :, i, j]^T @ gy_wide`` accumulated into the shifted window of
``gx`` (a "full" correlation), where gy_wide is gy at row width W with zeros in the junk
columns (and ReLU's mask applied: the fusion of ReLU's backward).

Few channels: with C or K around 16-32 each tap GEMM has a contraction of only C and re-reads its
accumulator nine times, so OpenBLAS runs far below its peak (and with C = 1, the first layer, the
"GEMMs" are outer products). For 3x3 kernels and few channels a direct Numba loop nest is used
instead (``_direct3x3``): the input gradient is the same kernel run on the zero-padded gy with
the weights flipped and transposed (a full correlation is a valid one on padded input), and the
weight gradient has a direct kernel of its own.

Many channels on large images: Winograd's F(2x2, 3x3) (``winograd.py``) does the same 3x3
convolution with 16 GEMMs over 4x fewer positions, 2.25x fewer multiplications; it beat the nine
GEMMs by 1.1-1.6x from 64 channels and ~700 output tiles up.

Which path runs is chosen per direction (``_path``) by the thresholds in ``DIRECT_MAX`` and
``winograd.applies`` (measured crossovers, see docs/performance.md).
"""
import numpy as np
from numba import njit, prange

from ..shapes import conv2d_output_hw
from . import buffers, winograd
from .blas import WORKERS, gemm, parallel_for

# Bytes of one block's operands (the C x block input window and the K x block accumulator).
# Fewer channels -> longer blocks -> fewer, larger GEMMs. 2 MB (this machine's L2) made the bottom
# layers' GEMMs too short (240 positions for 1024 channels at 30x30); 8 MB made those 1.1-1.4x
# faster and moved the other GEMM-path layers by less than +-5% (docs/performance.md).
BLOCK_BYTES = 1 << 23


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


# The direct path runs for 3x3 kernels when C * K is at most this, per direction: measured
# crossovers, one core each, against OpenBLAS (docs/performance.md). Forward: direct wins up to
# 32->32 (1.15-3x), ties at 64->32, loses from 32->64 on. Backward: direct wins up to 32->32
# (1.1-1.8x), loses from 64->32 on; mixing the paths costs a second pass over gy (gy_wide and
# gy_pad), so both gradients switch together here. (The Winograd thresholds do mix them, for a
# big filter with few tiles, where the second pass is cheap.) Tests set these to 0 or a huge
# value to force a path.
DIRECT_MAX = {"forward": 32 * 32, "weight_grad": 32 * 32, "input_grad": 32 * 32}


def _use_direct(direction, c, k, kh, kw):
    """Whether ``direction`` ("forward", "weight_grad", "input_grad") takes the direct 3x3 path."""
    return kh == 3 and kw == 3 and c * k <= DIRECT_MAX[direction]


def _path(direction, c, k, kh, kw, ho, wo):
    """Which kernel computes ``direction`` of a convolution: "direct", "winograd" or "gemm".

    Few channels: direct. Many channels on large images: Winograd. Otherwise nine GEMMs.
    """
    if _use_direct(direction, c, k, kh, kw):
        return "direct"
    if kh == 3 and kw == 3 and winograd.applies(direction, c, k, ho, wo):
        return "winograd"
    return "gemm"


@njit(cache=True, nogil=True, fastmath={"contract"}, inline="always")
def _taps_2x2(o0, o1, p0, p1, u, v, x0, x1, x2, x3):
    """Two output rows of two output channels from one input channel's four input rows.

    o0, o1 += u, v (*) rows x0..x2 (output row r); p0, p1 += u, v (*) rows x1..x3 (row r + 1).
    u, v are the 3x3 weights of the two channels. The four outputs share the twelve input loads
    per column: register blocking that took the kernel from ~165 to ~190 GFLOP/s on 2 cores
    (two channels of one row: 9 loads for 18 multiply-adds; this: 12 for 36). LLVM vectorises
    across the independent columns; "contract" lets it use FMA instructions (no reassociation:
    the sum's order is as written). Inlined into ``_direct3x3`` (which must carry the same flag:
    an inlined body takes its caller's flags).
    """
    u0, u1, u2, u3, u4, u5, u6, u7, u8 = u[0, 0], u[0, 1], u[0, 2], u[1, 0], u[1, 1], u[1, 2], u[2, 0], u[2, 1], u[2, 2]
    v0, v1, v2, v3, v4, v5, v6, v7, v8 = v[0, 0], v[0, 1], v[0, 2], v[1, 0], v[1, 1], v[1, 2], v[2, 0], v[2, 1], v[2, 2]
    for col in range(o0.shape[0]):
        a0, a1, a2 = x0[col], x0[col + 1], x0[col + 2]
        a3, a4, a5 = x1[col], x1[col + 1], x1[col + 2]
        a6, a7, a8 = x2[col], x2[col + 1], x2[col + 2]
        b0, b1, b2 = x3[col], x3[col + 1], x3[col + 2]
        o0[col] += u0 * a0 + u1 * a1 + u2 * a2 + u3 * a3 + u4 * a4 + u5 * a5 + u6 * a6 + u7 * a7 + u8 * a8
        o1[col] += v0 * a0 + v1 * a1 + v2 * a2 + v3 * a3 + v4 * a4 + v5 * a5 + v6 * a6 + v7 * a7 + v8 * a8
        p0[col] += u0 * a3 + u1 * a4 + u2 * a5 + u3 * a6 + u4 * a7 + u5 * a8 + u6 * b0 + u7 * b1 + u8 * b2
        p1[col] += v0 * a3 + v1 * a4 + v2 * a5 + v3 * a6 + v4 * a7 + v5 * a8 + v6 * b0 + v7 * b1 + v8 * b2


@njit(parallel=True, cache=True, nogil=True, fastmath={"contract"})
def _direct3x3(x, w, bias, relu, y):
    """y[n, k, r, :] = act(bias[k] + sum_c,i,j w[k, c, i, j] x[n, c, r + i, j:j + Wo]), 3x3 valid.

    One task per pair of output rows (all K channels): their four input rows of every channel
    (4 C W values) stay in L1/L2 while the K output rows are computed from them, two channels
    at a time (``_taps_2x2``). With K odd the last channel's partner, and with Ho odd the last
    task's second row, are scratch rows.
    """
    n, k_out, ho, wo = y.shape
    c_in = x.shape[1]
    pairs = (ho + 1) // 2
    for task in prange(n * pairs):
        img, r = task // pairs, 2 * (task % pairs)
        two = r + 1 < ho
        scratch = np.empty((3, wo), dtype=y.dtype)
        for k in range(0, k_out, 2):
            k1 = min(k + 1, k_out - 1)
            o0 = y[img, k, r]
            o1 = y[img, k1, r] if k1 > k else scratch[0]
            p0 = y[img, k, r + 1] if two else scratch[1]
            p1 = y[img, k1, r + 1] if two and k1 > k else scratch[2]
            o0[:] = bias[k]
            o1[:] = bias[k1]
            p0[:] = bias[k]
            p1[:] = bias[k1]
            for c in range(c_in):
                x3 = x[img, c, r + 3] if two else x[img, c, r + 2]
                _taps_2x2(o0, o1, p0, p1, w[k, c], w[k1, c], x[img, c, r], x[img, c, r + 1], x[img, c, r + 2], x3)
        if relu:
            for k in range(k_out):
                for row in range(r, r + 2 if two else r + 1):
                    out = y[img, k, row]
                    for col in range(wo):
                        if out[col] < 0:
                            out[col] = 0


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"}, inline="always")
def _dots_2x2(g, g2, h, h2, x0, x1, x2, x3, zero, tg, th):
    """tg[3i + j] += g . x_i[j:j + Wo] + g2 . x_(i+1)[j:j + Wo], and th likewise with h, h2.

    Two consecutive gy rows (r, r + 1) of two output channels: output row r reads input rows
    x0..x2, row r + 1 reads x1..x3, so the four gy rows share 12 input loads per column for 36
    multiply-adds (two rows of one channel each: 9 loads for 18; ~1.2x faster). ``zero`` is 0
    in the input's dtype, so the 18 dot products accumulate in it; "reassoc" lets LLVM split
    each into vector lanes, as BLAS would (no other fast-math flag: NaN and Inf behave). The
    sums are added to the float64 totals tg, th. Inlined like ``_taps_2x2``.
    """
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = zero
    t0 = t1 = t2 = t3 = t4 = t5 = t6 = t7 = t8 = zero
    for col in range(g.shape[0]):
        a0, a1, a2 = x0[col], x0[col + 1], x0[col + 2]
        a3, a4, a5 = x1[col], x1[col + 1], x1[col + 2]
        a6, a7, a8 = x2[col], x2[col + 1], x2[col + 2]
        b0, b1, b2 = x3[col], x3[col + 1], x3[col + 2]
        u, u2, v, v2 = g[col], g2[col], h[col], h2[col]
        s0 += u * a0 + u2 * a3
        s1 += u * a1 + u2 * a4
        s2 += u * a2 + u2 * a5
        s3 += u * a3 + u2 * a6
        s4 += u * a4 + u2 * a7
        s5 += u * a5 + u2 * a8
        s6 += u * a6 + u2 * b0
        s7 += u * a7 + u2 * b1
        s8 += u * a8 + u2 * b2
        t0 += v * a0 + v2 * a3
        t1 += v * a1 + v2 * a4
        t2 += v * a2 + v2 * a5
        t3 += v * a3 + v2 * a6
        t4 += v * a4 + v2 * a7
        t5 += v * a5 + v2 * a8
        t6 += v * a6 + v2 * b0
        t7 += v * a7 + v2 * b1
        t8 += v * a8 + v2 * b2
    tg[0] += s0
    tg[1] += s1
    tg[2] += s2
    tg[3] += s3
    tg[4] += s4
    tg[5] += s5
    tg[6] += s6
    tg[7] += s7
    tg[8] += s8
    th[0] += t0
    th[1] += t1
    th[2] += t2
    th[3] += t3
    th[4] += t4
    th[5] += t5
    th[6] += t6
    th[7] += t7
    th[8] += t8


@njit(parallel=True, cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _direct3x3_weight_grad(x, gy_pad, rows, zero, partial):
    """partial[t, k, c, 3i + j] = sum over the rows of block t of gy[k] * x[c] shifted by (i, j).

    One task per block of ``rows`` output rows (of one image), so the block's input rows stay
    in cache while every (k, c) pair reads them; two output channels and two rows at a time
    (``_dots_2x2``; an odd last row is paired with a row of zeros; with K odd the last channel's
    partner is a dummy). gy is the interior of gy_pad (padded by 2 on
    every side): passing the contiguous padded array, not a strided view of it, lets Numba know
    its rows are contiguous, which LLVM needs to vectorise the column loop. Rows add up in
    float64; the caller sums the blocks.
    """
    n, k_out = gy_pad.shape[:2]
    ho, wo = gy_pad.shape[2] - 4, gy_pad.shape[3] - 4
    c_in = x.shape[1]
    per_img = (ho + rows - 1) // rows
    for task in prange(n * per_img):
        img, r0 = task // per_img, (task % per_img) * rows
        dummy = np.zeros(9)
        no_row = np.zeros(wo, dtype=gy_pad.dtype)         # the partner of an odd last row
        for k in range(0, k_out, 2):
            k1 = min(k + 1, k_out - 1)
            for c in range(c_in):
                tg = partial[task, k, c]
                th = partial[task, k1, c] if k1 > k else dummy
                tg[:] = 0
                th[:] = 0
                r_end = min(r0 + rows, ho)
                for r in range(r0, r_end - 1, 2):           # two rows at a time, then the odd one
                    _dots_2x2(gy_pad[img, k, r + 2, 2:2 + wo], gy_pad[img, k, r + 3, 2:2 + wo],
                              gy_pad[img, k1, r + 2, 2:2 + wo], gy_pad[img, k1, r + 3, 2:2 + wo],
                              x[img, c, r], x[img, c, r + 1], x[img, c, r + 2], x[img, c, r + 3], zero, tg, th)
                if (r_end - r0) % 2:
                    r = r_end - 1
                    _dots_2x2(gy_pad[img, k, r + 2, 2:2 + wo], no_row, gy_pad[img, k1, r + 2, 2:2 + wo], no_row,
                              x[img, c, r], x[img, c, r + 1], x[img, c, r + 2], x[img, c, r + 2], zero, tg, th)


# Bytes of the input rows one direct weight-gradient task reads (C x rows x W): they stay in L2.
DIRECT_BLOCK_BYTES = 1 << 19


def _direct_rows(c, width, itemsize):
    """Output rows per direct weight-gradient task: its input rows fill DIRECT_BLOCK_BYTES."""
    return max(1, DIRECT_BLOCK_BYTES // (itemsize * c * width))


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
    if path == "winograd":
        return winograd.conv3x3_forward(x, np.ascontiguousarray(w), bias, relu)
    y = buffers.empty((n, k, ho, wo), x.dtype)
    if path == "direct":
        _direct3x3(x, np.ascontiguousarray(w, dtype=x.dtype), bias, relu, y)
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


@njit(parallel=True, cache=True)
def _place_grad(gy, y, use_mask, out, top, left, gb):
    """out[:, k, top + r, left + col] = gy (masked by y > 0 if use_mask), zero elsewhere; gb = its sum.

    With top = left = 0 and out at row width W this is gy "widened" for the GEMMs (junk columns
    zero); with top, left = kh - 1, kw - 1 it is gy zero-padded for the direct input gradient.
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
    gb = np.empty(k, dtype=dtype)
    gw_path = _path("weight_grad", c, k, kh, kw, ho, wo)
    gx_path = _path("input_grad", c, k, kh, kw, ho, wo) if need_gx else None
    paths = (gw_path, gx_path)
    gy_wide = gy_pad = None
    if "gemm" in paths:
        gy_wide = buffers.empty((n, k, ho * wd), dtype)
        _place_grad(gy, mask, y is not None, gy_wide.reshape(n, k, ho, wd), 0, 0, gb)
    if "direct" in paths or "winograd" in paths:
        # Padded by kh-1, kw-1 on every side (Ho+4 x Wo+4 for 3x3), the form the direct and
        # Winograd kernels read.
        gy_pad = buffers.empty((n, k, ho + 2 * (kh - 1), wo + 2 * (kw - 1)), dtype)
        _place_grad(gy, mask, y is not None, gy_pad, kh - 1, kw - 1, gb)
    del mask

    if gw_path == "winograd":
        gw = winograd.conv3x3_weight_grad(x, gy_pad)
    elif gw_path == "direct":
        rows = _direct_rows(c, wd, x.itemsize)
        partial = np.empty((n * -(-ho // rows), k, c, kh * kw), dtype=np.float64)
        _direct3x3_weight_grad(x, gy_pad, rows, dtype.type(0), partial)
        gw = partial.sum(axis=0).astype(dtype).reshape(k, c, kh, kw)
    else:
        gw = _gemm_weight_grad(x, w, gy_wide)
    gx = None
    if gx_path in ("direct", "winograd"):
        # gx is the valid correlation of the padded gy with the flipped, transposed weights.
        w_flip = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3), dtype=dtype)
        if gx_path == "winograd":
            gx = winograd.conv3x3_forward(gy_pad, w_flip, np.zeros(c, dtype), False)
        else:
            gx = buffers.empty_like(x)
            _direct3x3(gy_pad, w_flip, np.zeros(c, dtype), False, gx)
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
