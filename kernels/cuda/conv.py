"""Valid convolution as tiled implicit GEMM: two kernels serve every convolution of the network.

``igemm`` (the forward kernel) computes, for one parity/sub-grid of the output,

    y[n, m, oh*s_out + oy0, ow*s_out + ox0] = act(bias[m] + sum_{c,i,j} a[m, (c,i,j)] * x[n, c, oh*s_in + i - pad_h, ow*s_in + j - pad_w])

as a GEMM with M = output channels, columns = the N*Ho*Wo output pixels and reduction R = C*kh*kw.
Neither operand is materialised: each block stages a BK-deep slice of the weights (BM x BK) and of
the implicit im2col matrix (BK x BN, gathered from x with zero padding at the borders) in shared
memory, and each thread accumulates a TM x TN micro-tile in registers. Bias and ReLU are applied in
the epilogue. With different weights, strides and offsets the same kernel computes

    conv2d forward                 a = w (K, C*kh*kw), s_in = 1, pad = 0
    conv2d backward-data           a = w flipped and transposed (C, K*kh*kw), pad = k-1 (the full correlation)
    conv_transpose2d forward       4 launches, one per output parity, each a small correlation (upconv.py)
    conv_transpose2d backward-data a = w (C, K*k*k) as stored, s_in = 2 (a strided valid convolution)

``wgrad`` (the weight-gradient kernel) computes out[m, (c,i,j)] = sum_{n,oh,ow} g[n,m,oh,ow] *
x[n, c, oh*s_in + i, ow*s_in + j], a GEMM whose reduction runs over the pixels. The pixels are split
into chunks (the third grid axis) so that large images still fill the GPU; each block reduces its
chunk in registers and adds its tile to the result with one atomic add per weight.

Thread x maps to pixels, the contiguous axis of every activation, so global loads and stores of
a warp are coalesced; shared tiles are padded by one column where a warp stores down a column.
Tile sizes are named constants (``TILE``); the kernels are built per dtype and tile by a factory
(closure constants are compile-time constants in Numba), so tests can also run the same source
with tiny tiles to cross many tile edges cheaply in the simulator.
"""
import functools
from collections import namedtuple

import numpy as np

from ..shapes import conv2d_output_hw
from . import arrays
from .arrays import ceil_div, cuda, launch
from .elementwise import relu_backward

Tile = namedtuple("Tile", "bm bn bk tm tn")
Tile.__doc__ = """Block tile: bm rows (channels) x bn columns (pixels or weights), bk-deep reduction slices,
each thread owning a tm x tn micro-tile; (bn/tn) x (bm/tm) threads per block."""

TILE = Tile(bm=64, bn=64, bk=16, tm=4, tn=4)      # 256 threads, 64x64 outputs per block
WGRAD_TARGET_BLOCKS = 1024                        # split the pixel reduction until about this many blocks
WGRAD_MIN_CHUNK = 256                             # ... but give each block at least this many pixels
BIAS_THREADS = 256                                # threads of the bias-gradient reduction (a power of 2)
BIAS_PIXELS_PER_THREAD = 16                       # pixels each bias-gradient thread sums


def _check_tile(t):
    threads = (t.bn // t.tn) * (t.bm // t.tm)
    ok = (t.bm % t.tm == 0 and t.bn % t.tn == 0 and threads % t.bn == 0 and threads % t.bk == 0
          and (t.bm * t.bk) % threads == 0 and (t.bn * t.bk) % threads == 0)
    if not ok:
        raise ValueError(f"tile {t} does not divide into its {threads} threads")
    return threads


@functools.lru_cache(maxsize=None)
def igemm_kernel(dtype, tile):
    """The implicit-GEMM convolution kernel for one dtype ("float32"/"float64") and tile."""
    BM, BN, BK, TM, TN = tile
    NT = _check_tile(tile)
    TX, TY = BN // TN, BM // TM                    # thread block shape: x along pixels
    BM_PAD = BM + 1                                # As is stored down columns: pad against bank conflicts
    A_LOADS, A_STEP = BM * BK // NT, NT // BK       # weight elements each thread stages per slice
    B_LOADS, B_STEP = BN * BK // NT, NT // BN       # im2col elements each thread stages per slice
    ACC = getattr(np, dtype)
    zero = ACC(0)

    @cuda.jit
    def igemm(xf, n_img, hx, wx, taps, a, bias, y, ho, wo, s_in, pad_h, pad_w, s_out, oy0, ox0, has_bias, relu):
        """xf: the input (n_img, C, hx, wx) flattened; taps: tap_table(C, kh, kw, wx, hx)."""
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * TX + tx
        p0 = cuda.blockIdx.x * BN
        m0 = cuda.blockIdx.y * BM
        m_total = a.shape[0]
        r_total = a.shape[1]
        hwo = ho * wo
        p_total = n_img * hwo

        As = cuda.shared.array((BK, BM_PAD), ACC)
        Bs = cuda.shared.array((BK, BN), ACC)
        acc = cuda.local.array((TM, TN), ACC)
        a_reg = cuda.local.array(TM, ACC)
        b_reg = cuda.local.array(TN, ACC)
        for im in range(TM):
            for jn in range(TN):
                acc[im, jn] = zero

        # The im2col column this thread stages is fixed: decompose its pixel once. Reduction
        # indices r = (c, i, j) are looked up in the tap table (no integer division in the loop).
        b_col = tid % BN
        b_row = tid // BN
        p = p0 + b_col
        p_ok = p < p_total
        n = p // hwo
        q = p - n * hwo
        oh = q // wo
        iy0 = oh * s_in - pad_h
        ix0 = (q - oh * wo) * s_in - pad_w
        base = n * (xf.size // n_img) + iy0 * wx + ix0
        a_k = tid % BK
        a_row = tid // BK

        for r0 in range(0, r_total, BK):
            # Stage weights: consecutive threads read consecutive r of one row (coalesced).
            r = r0 + a_k
            for t in range(A_LOADS):
                mm = a_row + t * A_STEP
                v = zero
                if m0 + mm < m_total and r < r_total:
                    v = a[m0 + mm, r]
                As[a_k, mm] = v
            # Stage the implicit im2col slice: consecutive threads read consecutive pixels (coalesced).
            for t in range(B_LOADS):
                kk = b_row + t * B_STEP
                rb = r0 + kk
                v = zero
                if p_ok and rb < r_total:
                    iy = iy0 + taps[1, rb]
                    ix = ix0 + taps[2, rb]
                    if iy >= 0 and iy < hx and ix >= 0 and ix < wx:
                        v = xf[base + taps[0, rb]]
                Bs[kk, b_col] = v
            cuda.syncthreads()
            for kk in range(BK):
                for im in range(TM):
                    a_reg[im] = As[kk, ty + im * TY]
                for jn in range(TN):
                    b_reg[jn] = Bs[kk, tx + jn * TX]
                for im in range(TM):
                    for jn in range(TN):
                        acc[im, jn] += a_reg[im] * b_reg[jn]
            cuda.syncthreads()

        # Epilogue: bias, ReLU, store; thread x walks pixels so a warp's stores are contiguous.
        for jn in range(TN):
            pe = p0 + tx + jn * TX
            if pe < p_total:
                ne = pe // hwo
                qe = pe - ne * hwo
                ohe = qe // wo
                yy = ohe * s_out + oy0
                xx = (qe - ohe * wo) * s_out + ox0
                for im in range(TM):
                    m = m0 + ty + im * TY
                    if m < m_total:
                        v = acc[im, jn]
                        if has_bias:
                            v += bias[m]
                        if relu and v < zero:
                            v = zero
                        y[ne, m, yy, xx] = v

    return igemm


@functools.lru_cache(maxsize=None)
def wgrad_kernel(dtype, tile):
    """The weight-gradient kernel (a GEMM reducing over pixels, split into chunks)."""
    BM, BN, BK, TM, TN = tile
    NT = _check_tile(tile)
    TX, TY = BN // TN, BM // TM
    BM_PAD, BN_PAD = BM + 1, BN + 1                # both tiles are stored down columns: pad them
    A_LOADS, A_STEP = BM * BK // NT, NT // BK
    B_LOADS, B_STEP = BN * BK // NT, NT // BK
    ACC = getattr(np, dtype)
    zero = ACC(0)

    @cuda.jit
    def wgrad(g, xf, hx, wx, out, kh, kw, s_in, chunk):
        """xf: the strided input (N, C, hx, wx) flattened; out (M, C*kh*kw) accumulates."""
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * TX + tx
        r0 = cuda.blockIdx.x * BN
        m0 = cuda.blockIdx.y * BM
        ho = g.shape[2]
        wo = g.shape[3]
        m_total = out.shape[0]
        r_total = out.shape[1]
        khw = kh * kw
        hwo = ho * wo
        p_total = g.shape[0] * hwo
        p_begin = cuda.blockIdx.z * chunk
        p_end = min(p_begin + chunk, p_total)

        As = cuda.shared.array((BK, BM_PAD), ACC)
        Bs = cuda.shared.array((BK, BN_PAD), ACC)
        acc = cuda.local.array((TM, TN), ACC)
        a_reg = cuda.local.array(TM, ACC)
        b_reg = cuda.local.array(TN, ACC)
        for im in range(TM):
            for jn in range(TN):
                acc[im, jn] = zero

        # Each thread stages one pixel (row kk of both tiles) per slice: thread id fastest along
        # pixels, so loads of g and x are coalesced. Its weight columns are fixed: decompose them
        # once; its pixel advances by BK per slice: walk (n, oh, ow) forward without division.
        kk = tid % BK
        row = tid // BK
        r_off = cuda.local.array(B_LOADS, np.int64)
        r_i = cuda.local.array(B_LOADS, np.int64)
        for t in range(B_LOADS):
            r = r0 + row + t * B_STEP
            c = r // khw
            ij = r - c * khw
            i = ij // kw
            r_i[t] = i
            r_off[t] = c * (hx * wx) + i * wx + ij - i * kw
        x_img = xf.size // g.shape[0]
        p = p_begin + kk
        n = p // hwo
        q = p - n * hwo
        oh = q // wo
        ow = q - oh * wo
        for pb in range(p_begin, p_end, BK):
            p_ok = pb + kk < p_end
            for t in range(A_LOADS):
                mm = row + t * A_STEP
                v = zero
                if p_ok and m0 + mm < m_total:
                    v = g[n, m0 + mm, oh, ow]
                As[kk, mm] = v
            for t in range(B_LOADS):
                rr = row + t * B_STEP
                r = r0 + rr
                v = zero
                if p_ok and r < r_total:
                    v = xf[n * x_img + (oh * s_in) * wx + ow * s_in + r_off[t]]
                Bs[kk, rr] = v
            cuda.syncthreads()
            for k2 in range(BK):
                for im in range(TM):
                    a_reg[im] = As[k2, ty + im * TY]
                for jn in range(TN):
                    b_reg[jn] = Bs[k2, tx + jn * TX]
                for im in range(TM):
                    for jn in range(TN):
                        acc[im, jn] += a_reg[im] * b_reg[jn]
            cuda.syncthreads()
            ow += BK
            while ow >= wo:
                ow -= wo
                oh += 1
            while oh >= ho:
                oh -= ho
                n += 1

        # One atomic add per weight per chunk.
        for im in range(TM):
            m = m0 + ty + im * TY
            if m < m_total:
                for jn in range(TN):
                    r = r0 + tx + jn * TX
                    if r < r_total:
                        cuda.atomic.add(out, (m, r), acc[im, jn])

    return wgrad


@functools.lru_cache(maxsize=None)
def bias_grad_kernel(dtype, threads):
    """Sum of g (N, M, H, W) over all but the channel axis: one block per (channel, chunk)."""
    if threads & (threads - 1):
        raise ValueError(f"bias_grad_kernel: {threads} threads is not a power of 2")
    NT = threads
    ACC = getattr(np, dtype)
    zero = ACC(0)

    @cuda.jit
    def bias_grad(g, out, chunk):
        m = cuda.blockIdx.x
        t = cuda.threadIdx.x
        hw = g.shape[2] * g.shape[3]
        wd = g.shape[3]
        p_total = g.shape[0] * hw
        p_begin = cuda.blockIdx.y * chunk
        p_end = min(p_begin + chunk, p_total)
        s = zero
        for p in range(p_begin + t, p_end, NT):
            n = p // hw
            q = p - n * hw
            h = q // wd
            s += g[n, m, h, q - h * wd]
        part = cuda.shared.array(NT, ACC)
        part[t] = s
        cuda.syncthreads()
        half = NT // 2
        while half > 0:
            if t < half:
                part[t] += part[t + half]
            cuda.syncthreads()
            half //= 2
        if t == 0:
            cuda.atomic.add(out, m, part[0])

    return bias_grad


# ----------------------------------------------------------------------------- launches

def run_igemm(x, a, bias, y, kh, kw, ho, wo, s_in=1, pad=(0, 0), s_out=1, offset=(0, 0), relu=False, tile=None):
    """Launch the implicit GEMM over an ho x wo output sub-grid of y (see the module docstring)."""
    tile = tile or TILE
    m, p_total = a.shape[0], x.shape[0] * ho * wo
    if m == 0 or p_total == 0:
        return
    kernel = igemm_kernel(x.dtype.name, tile)
    has_bias = bias is not None
    bias_arg = bias if has_bias else a[0, :1]
    launch(kernel, (ceil_div(p_total, tile.bn), ceil_div(m, tile.bm)), (tile.bn // tile.tn, tile.bm // tile.tm),
           x.reshape(-1), x.shape[0], x.shape[2], x.shape[3], tap_table(x.shape[1], kh, kw, x.shape[3], x.shape[2]),
           a, bias_arg, y, ho, wo, s_in, pad[0], pad[1], s_out, offset[0], offset[1], has_bias, relu)


@functools.lru_cache(maxsize=256)
def _tap_table(c, kh, kw, wx, hx, xp_name):
    xp = arrays.array_module()
    r = xp.arange(c * kh * kw, dtype=np.int64)
    ch, i, j = r // (kh * kw), (r // kw) % kh, r % kw
    return xp.stack([ch * (hx * wx) + i * wx + j, i, j]).astype(np.int32)


def tap_table(c, kh, kw, wx, hx):
    """(3, C*kh*kw) int32: for each reduction index r = (c, i, j), the flat offset c*H*W + i*W + j, i and j.

    The implicit GEMM looks these up instead of dividing r in its inner loop; cached per geometry.
    """
    return _tap_table(c, kh, kw, wx, hx, arrays.array_module().__name__)


def wgrad_chunk(tiles, p_total, bk):
    """Pixels per block of the weight-gradient reduction: split until the grid is large enough."""
    chunks = max(1, min(ceil_div(WGRAD_TARGET_BLOCKS, tiles), ceil_div(p_total, WGRAD_MIN_CHUNK)))
    return ceil_div(ceil_div(p_total, chunks), bk) * bk


def run_wgrad(g, x, out, kh, kw, s_in=1, tile=None, chunk=None):
    """Add sum_pixels g (x) im2col(x) into out (M, C*kh*kw), which must start at zero."""
    tile = tile or TILE
    m, r = out.shape
    p_total = g.shape[0] * g.shape[2] * g.shape[3]
    if p_total == 0:
        return
    grid_xy = (ceil_div(r, tile.bn), ceil_div(m, tile.bm))
    chunk = chunk or wgrad_chunk(grid_xy[0] * grid_xy[1], p_total, tile.bk)
    launch(wgrad_kernel(g.dtype.name, tile), grid_xy + (ceil_div(p_total, chunk),),
           (tile.bn // tile.tn, tile.bm // tile.tm), g, x.reshape(-1), x.shape[2], x.shape[3], out, kh, kw, s_in, chunk)


def bias_grad(g):
    """gb[m] = sum of g[:, m] (float accumulation per block, one atomic add per block)."""
    xp = arrays.array_module()
    out = xp.zeros(g.shape[1], dtype=g.dtype)
    p_total = g.shape[0] * g.shape[2] * g.shape[3]
    if p_total and g.shape[1]:
        chunk = BIAS_PIXELS_PER_THREAD * BIAS_THREADS
        launch(bias_grad_kernel(g.dtype.name, BIAS_THREADS), (g.shape[1], ceil_div(p_total, chunk)), BIAS_THREADS,
               g, out, chunk)
    return out


# ----------------------------------------------------------------------------- the contract

def conv2d_forward(x, w, b, relu=False):
    """Valid stride-1 convolution x (N,C,H,W) * w (K,C,kh,kw) + b -> (N,K,H-kh+1,W-kw+1), ReLU fused."""
    arrays.require()
    n, c, h, wd = x.shape
    k, c2, kh, kw = w.shape
    ho, wo = conv2d_output_hw(x.shape, w.shape)
    dt = arrays.float_dtype(x, w, b)
    xp = arrays.array_module()
    x, w = arrays.contiguous(x), arrays.contiguous(w)
    y = xp.empty((n, k, ho, wo), dtype=dt)
    run_igemm(x, w.reshape(k, c * kh * kw), None if b is None else arrays.contiguous(b), y, kh, kw, ho, wo, relu=relu)
    return y


def conv2d_backward(x, w, gy, y=None, need_gx=True):
    """(gx, gw, gb) of the valid convolution; gy is masked by y > 0 first when y is given (fused ReLU)."""
    arrays.require()
    xp = arrays.array_module()
    k, c, kh, kw = w.shape
    x, w, gy = arrays.contiguous(x), arrays.contiguous(w), arrays.contiguous(gy)
    arrays.float_dtype(x, w, gy)
    if y is not None:
        gy = relu_backward(gy, y)
    gw = xp.zeros(w.shape, dtype=w.dtype)
    run_wgrad(gy, x, gw.reshape(k, c * kh * kw), kh, kw)
    gb = bias_grad(gy)
    gx = None
    if need_gx:
        # The full correlation of gy with the flipped kernel, channels swapped: (C, K*kh*kw).
        wt = arrays.contiguous(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)).reshape(c, k * kh * kw)
        gx = xp.empty(x.shape, dtype=x.dtype)
        run_igemm(gy, wt, None, gx, kh, kw, x.shape[2], x.shape[3], pad=(kh - 1, kw - 1))
    return gx, gw, gb
