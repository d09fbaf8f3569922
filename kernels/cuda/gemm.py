"""The two GEMM kernels behind every convolution: implicit GEMM (``igemm``) and the weight gradient (``wgrad``).

Both multiply a BM x BK slice of one operand by a BK x BN slice of the other per step, staged in
shared memory, each thread accumulating a TM x TN micro-tile in registers (``Tile``):

* **Micro-tile layout.** A thread owns rows ``ty*4 + u`` of every group of ``4*TY`` rows (and
  columns likewise), so each group of 4 is contiguous in shared memory: the compiler loads it with
  one 128-bit ``LDS.128``, and an 8 x 8 micro-tile does 64 FFMA per 4 vector loads.
* **Double buffering.** The next slice is read from global memory into registers while the
  current one is multiplied; it is then stored to the other shared buffer: one barrier per slice.
* **Tap table in shared memory** (``igemm``): the reduction index r = (c, i, j) maps to an input
  offset and a packed (i, j) through a table (no division in the loop); each slice's entries are
  staged in shared memory two slices ahead, by BK threads, instead of being read per element.
* **Split-K.** The grid's z axis also splits the reduction (``igemm``: into ``gridDim.z / groups``
  ranges of ``r_split``; ``wgrad``: into pixel chunks) so that small images with many channels
  still fill the GPU; split results are added with atomics (igemm then runs ``bias_act``).

Kernels are built per dtype and tile by cached factories: closure constants are compile-time
constants in Numba, so the loops over the micro-tile unroll and the accumulators stay in registers.
"""
import functools
from collections import namedtuple

import numpy as np

from .arrays import SIMULATOR, cuda

Tile = namedtuple("Tile", "bm bn bk tm tn")
Tile.__doc__ = """Block tile: bm rows (channels) x bn columns (pixels or weights), bk-deep reduction slices,
each thread owning a tm x tn micro-tile; (bn/tn) x (bm/tm) threads per block."""

ALIGN = None if SIMULATOR else 16          # 16-byte shared tiles for 128-bit loads (the simulator takes none)
PAD = 4      # shared rows padded by 4 elements: column stores of a warp hit 32 banks, rows stay 16-byte aligned


def check_tile(t):
    """The number of threads of tile t, after checking that its loads divide among them."""
    threads = (t.bn // t.tn) * (t.bm // t.tm)
    vm, vn = min(4, t.tm), min(4, t.tn)
    ok = (t.bm % t.tm == 0 and t.bn % t.tn == 0 and t.tm % vm == 0 and t.tn % vn == 0
          and threads % t.bn == 0 and threads % t.bk == 0 and threads >= 2 * t.bk
          and (t.bm * t.bk) % threads == 0 and (t.bn * t.bk) % threads == 0 and t.bm % (threads // t.bk) == 0)
    if not ok:
        raise ValueError(f"tile {t} does not divide into its {threads} threads")
    return threads


def _mma_factory(tile, acc_type):
    """(mma, clear): acc += As[buf]^T Bs[buf] over one BK slice for the thread at (tx, ty) (the
    inner loop), and acc = 0."""
    BM, BN, BK, TM, TN = tile
    TX, TY = BN // TN, BM // TM
    VM, VN = min(4, TM), min(4, TN)

    @cuda.jit(device=True, inline="always")
    def mma(As, Bs, buf, tx, ty, acc):
        a_reg = cuda.local.array(TM, acc_type)
        b_reg = cuda.local.array(TN, acc_type)
        for kk in range(BK):
            for g in range(TM // VM):
                for u in range(VM):
                    a_reg[g * VM + u] = As[buf, kk, g * VM * TY + ty * VM + u]
            for g in range(TN // VN):
                for u in range(VN):
                    b_reg[g * VN + u] = Bs[buf, kk, g * VN * TX + tx * VN + u]
            for im in range(TM):
                for jn in range(TN):
                    acc[im, jn] += a_reg[im] * b_reg[jn]

    @cuda.jit(device=True, inline="always")
    def clear(acc):
        for im in range(TM):
            for jn in range(TN):
                acc[im, jn] = acc_type(0)
    return mma, clear


@functools.lru_cache(maxsize=None)
def igemm_kernel(dtype, tile):
    """The implicit-GEMM convolution kernel for one dtype ("float32"/"float64") and tile.

    y[n, m, oh*s_out + oy0, ow*s_out + ox0] (+)= act(bias[m] + sum_r a[g, m, r] * x[n, c, oh*s_in + i - pad_h,
    ow*s_in + j - pad_w]) with r = (c, i, j); g, the group, is blockIdx.z // splits (with ``parity``
    the output parity (oy0, ox0) = (g // 2, g % 2), else (0, 0)), and each split adds its range of
    r_split reductions with atomics (no bias, no activation) when there are several.
    """
    BM, BN, BK, TM, TN = tile
    NT = check_tile(tile)
    TX, TY = BN // TN, BM // TM
    VM, VN = min(4, TM), min(4, TN)
    AW, BW = BM + PAD, BN + PAD                     # shared row lengths
    A_LOADS, A_STEP = BM * BK // NT, NT // BK       # weight elements each thread stages per slice
    B_LOADS, B_STEP = BN * BK // NT, NT // BN       # im2col elements each thread stages per slice
    ACC = getattr(np, dtype)
    zero = ACC(0)
    mma, clear = _mma_factory(tile, ACC)

    @cuda.jit(device=True, inline="always")
    def stage(xf, a, g, m0, r, a_row, a_k, m_total, r_end, Ts, tb, b_row, p_ok, base, iy0, ix0, hx, wx,
              a_pre, b_pre):
        """Read slice r of both operands into registers (zeros outside the image and the ranges)."""
        for t in range(A_LOADS):
            mm = m0 + a_row + t * A_STEP
            v = zero
            if mm < m_total and r + a_k < r_end:
                v = a[g, mm, r + a_k]
            a_pre[t] = v
        for t in range(B_LOADS):
            kk = b_row + t * B_STEP
            v = zero
            if p_ok and r + kk < r_end:
                ij = Ts[tb, 1, kk]
                iy = iy0 + (ij >> 16)
                ix = ix0 + (ij & 0xFFFF)
                if iy >= 0 and iy < hx and ix >= 0 and ix < wx:
                    v = xf[base + Ts[tb, 0, kk]]
            b_pre[t] = v

    @cuda.jit(device=True, inline="always")
    def put(As, Bs, buf, a_row, a_k, b_row, b_col, a_pre, b_pre):
        for t in range(A_LOADS):
            As[buf, a_k, a_row + t * A_STEP] = a_pre[t]
        for t in range(B_LOADS):
            Bs[buf, b_row + t * B_STEP, b_col] = b_pre[t]

    @cuda.jit
    def igemm(xf, n_img, hx, wx, taps, a, bias, y, yf, s_in, pad_h, pad_w, s_out, parity, has_bias, relu, r_split):
        """xf: the input (n_img, C, hx, wx) flattened, yf: y flattened; taps (2, R): offset c*hx*wx + i*wx + j
        and i << 16 | j."""
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * TX + tx
        splits = cuda.gridDim.z // a.shape[0]
        g = cuda.blockIdx.z // splits
        oy0 = g // 2 if parity else 0
        ox0 = g % 2 if parity else 0
        ho = (y.shape[2] - oy0 + s_out - 1) // s_out
        wo = (y.shape[3] - ox0 + s_out - 1) // s_out
        p0 = cuda.blockIdx.x * BN
        m0 = cuda.blockIdx.y * BM
        m_total = a.shape[1]
        r_begin = (cuda.blockIdx.z % splits) * r_split
        r_end = min(r_begin + r_split, a.shape[2])
        hwo = ho * wo
        p_total = n_img * hwo
        if r_begin >= r_end or p0 >= p_total:
            return

        As = cuda.shared.array((2, BK, AW), ACC, alignment=ALIGN)
        Bs = cuda.shared.array((2, BK, BW), ACC, alignment=ALIGN)
        Ts = cuda.shared.array((2, 2, BK), np.int32)
        acc = cuda.local.array((TM, TN), ACC)
        a_pre = cuda.local.array(A_LOADS, ACC)
        b_pre = cuda.local.array(B_LOADS, ACC)
        clear(acc)

        # The im2col column this thread stages is fixed: decompose its pixel once.
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

        # Prologue: the taps of the first two slices, then the first slice's tiles.
        if tid < 2 * BK:
            r = r_begin + tid
            if r < r_end:
                Ts[tid // BK, 0, tid % BK] = taps[0, r]
                Ts[tid // BK, 1, tid % BK] = taps[1, r]
        cuda.syncthreads()
        stage(xf, a, g, m0, r_begin, a_row, a_k, m_total, r_end, Ts, 0, b_row, p_ok, base, iy0, ix0, hx, wx,
              a_pre, b_pre)
        put(As, Bs, 0, a_row, a_k, b_row, b_col, a_pre, b_pre)
        cuda.syncthreads()

        buf = 0
        for r0 in range(r_begin, r_end, BK):
            more = r0 + BK < r_end
            if more:                            # the next slice, from global memory, while this one runs
                stage(xf, a, g, m0, r0 + BK, a_row, a_k, m_total, r_end, Ts, 1 - buf, b_row, p_ok, base,
                      iy0, ix0, hx, wx, a_pre, b_pre)
            r_tap = r0 + 2 * BK + tid
            tap_ok = tid < BK and r_tap < r_end
            t_off = 0
            t_ij = 0
            if tap_ok:                          # the taps two slices ahead
                t_off = taps[0, r_tap]
                t_ij = taps[1, r_tap]
            mma(As, Bs, buf, tx, ty, acc)
            if more:
                put(As, Bs, 1 - buf, a_row, a_k, b_row, b_col, a_pre, b_pre)
            if tap_ok:
                Ts[buf, 0, tid] = t_off
                Ts[buf, 1, tid] = t_ij
            cuda.syncthreads()
            buf = 1 - buf

        # Epilogue: bias, ReLU, store (or add the split's share); thread x walks pixels. The pixels'
        # offsets first, so that the store loop is small enough to unroll (acc stays in registers).
        plane = y.shape[2] * y.shape[3]
        out_off = cuda.local.array(TN, np.int64)
        for jn in range(TN):
            pe = p0 + (jn // VN) * VN * TX + tx * VN + jn % VN
            o = -1
            if pe < p_total:
                ne = pe // hwo
                qe = pe - ne * hwo
                ohe = qe // wo
                o = ne * m_total * plane + (ohe * s_out + oy0) * y.shape[3] + (qe - ohe * wo) * s_out + ox0
            out_off[jn] = o
        if splits > 1:
            for im in range(TM):
                m = m0 + (im // VM) * VM * TY + ty * VM + im % VM
                for jn in range(TN):
                    if m < m_total and out_off[jn] >= 0:
                        cuda.atomic.add(yf, out_off[jn] + m * plane, acc[im, jn])
            return
        for im in range(TM):
            m = m0 + (im // VM) * VM * TY + ty * VM + im % VM
            bm = bias[min(m, m_total - 1)] if has_bias else zero
            for jn in range(TN):
                v = acc[im, jn] + bm
                if relu and v < zero:
                    v = zero
                if m < m_total and out_off[jn] >= 0:
                    yf[out_off[jn] + m * plane] = v

    igemm.tile = tile
    return igemm


@functools.lru_cache(maxsize=None)
def wgrad_kernel(dtype, tile):
    """The weight-gradient kernel: out[m, (c,i,j)] += sum over a chunk of pixels of g[n,m,oh,ow] *
    x[n, c, oh*s_in + i, ow*s_in + j]; the pixel chunks (grid z) add their tiles with atomics."""
    BM, BN, BK, TM, TN = tile
    NT = check_tile(tile)
    TX, TY = BN // TN, BM // TM
    VM, VN = min(4, TM), min(4, TN)
    AW, BW = BM + PAD, BN + PAD                     # shared row lengths
    A_LOADS, A_STEP = BM * BK // NT, NT // BK
    B_LOADS, B_STEP = BN * BK // NT, NT // BK
    ACC = getattr(np, dtype)
    zero = ACC(0)
    mma, clear = _mma_factory(tile, ACC)

    @cuda.jit(device=True, inline="always")
    def stage(g, xf, n, oh, ow, ok, m0, r0, row, m_total, r_total, x_img, s_in, wx, r_off, a_pre, b_pre):
        """Read this thread's pixel (n, oh, ow) of both operands into registers."""
        for t in range(A_LOADS):
            mm = m0 + row + t * A_STEP
            v = zero
            if ok and mm < m_total:
                v = g[n, mm, oh, ow]
            a_pre[t] = v
        for t in range(B_LOADS):
            v = zero
            if ok and r0 + row + t * B_STEP < r_total:
                v = xf[n * x_img + (oh * s_in) * wx + ow * s_in + r_off[t]]
            b_pre[t] = v

    @cuda.jit(device=True, inline="always")
    def put(As, Bs, buf, kk, row, a_pre, b_pre):
        for t in range(A_LOADS):
            As[buf, kk, row + t * A_STEP] = a_pre[t]
        for t in range(B_LOADS):
            Bs[buf, kk, row + t * B_STEP] = b_pre[t]

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

        # Each thread stages one pixel (row kk of both tiles) per slice, thread id fastest along
        # pixels (coalesced loads). Its weight columns are fixed: decompose them once; its pixel
        # advances by BK per slice: walk (n, oh, ow) forward without division.
        kk = tid % BK
        row = tid // BK
        r_off = cuda.local.array(B_LOADS, np.int64)
        a_pre = cuda.local.array(A_LOADS, ACC)
        b_pre = cuda.local.array(B_LOADS, ACC)
        As = cuda.shared.array((2, BK, AW), ACC, alignment=ALIGN)
        Bs = cuda.shared.array((2, BK, BW), ACC, alignment=ALIGN)
        acc = cuda.local.array((TM, TN), ACC)
        clear(acc)
        for t in range(B_LOADS):
            r = r0 + row + t * B_STEP
            c = r // khw
            ij = r - c * khw
            i = ij // kw
            r_off[t] = c * (hx * wx) + i * wx + ij - i * kw
        x_img = xf.size // g.shape[0]
        p = p_begin + kk
        n = p // hwo
        q = p - n * hwo
        oh = q // wo
        ow = q - oh * wo
        stage(g, xf, n, oh, ow, p < p_end, m0, r0, row, m_total, r_total, x_img, s_in, wx, r_off, a_pre, b_pre)
        put(As, Bs, 0, kk, row, a_pre, b_pre)
        cuda.syncthreads()
        buf = 0
        for pb in range(p_begin, p_end, BK):
            more = pb + BK < p_end
            if more:
                ow += BK
                while ow >= wo:
                    ow -= wo
                    oh += 1
                while oh >= ho:
                    oh -= ho
                    n += 1
                stage(g, xf, n, oh, ow, pb + BK + kk < p_end, m0, r0, row, m_total, r_total, x_img, s_in, wx,
                      r_off, a_pre, b_pre)
            mma(As, Bs, buf, tx, ty, acc)
            if more:
                put(As, Bs, 1 - buf, kk, row, a_pre, b_pre)
            cuda.syncthreads()
            buf = 1 - buf

        # One atomic add per weight per chunk.
        for im in range(TM):
            m = m0 + (im // VM) * VM * TY + ty * VM + im % VM
            if m < m_total:
                for jn in range(TN):
                    r = r0 + (jn // VN) * VN * TX + tx * VN + jn % VN
                    if r < r_total:
                        cuda.atomic.add(out, (m, r), acc[im, jn])

    wgrad.tile = tile
    return wgrad
