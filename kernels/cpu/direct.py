"""The direct 3x3 convolution kernels: every layer too small for Winograd, where GEMMs are too short.

Forward (and the input gradient, which is the same kernel on the zero-padded gy with flipped,
transposed weights) has two implementations:

- ``_tiled``, the register-blocked kernel. Its micro-kernel (``_emit_tile``) is LLVM IR emitted
  by a Numba intrinsic: 8 output channels x 2 output rows x one vector of columns (16 float32
  lanes with AVX-512), 16 accumulators held in vector registers over the whole loop over input
  channels. Per input channel and tile it loads 12 input vectors (4 rows, shifted by 0, 1, 2
  columns) and broadcasts 72 weights into 144 fused multiply-adds, and it reads and writes the
  output once, at the end, with the bias and ReLU. Numba's own code cannot keep accumulators
  in registers across a loop (an array is memory to LLVM, and it cannot prove an accumulator
  array does not alias the input), which is why this one kernel is written at the IR level.
  The last column vector of a row overlaps the one before it (recomputing, with identical
  results, a few columns), and so does the last row pair with Ho odd: no scalar tail code.
  With K not a multiple of 8 the last channels take micro-kernels of 4, 2 and 1 channels.
- ``_rows``, plain Numba loops vectorised by LLVM over the columns, for outputs narrower than
  one vector or a single row (the form the tiled kernel replaced; docs/performance.md compares
  them).

The weight gradient (``weight_grad``) is a reduction over positions, also an IR micro-kernel
(``_emit_weight_tile``): for two output channels and one input channel, the 18 sums are vector
accumulators in registers while two gy rows at a time sweep the columns against the four input
rows they share, moved to float64 every ``Dispatch.flush_products`` products per lane. The first layer, which
needs no input gradient and has one input channel, takes ``masked_weight_grad`` instead: plain
Numba loops that read gy and the ReLU mask directly, with no padded copy of gy written first.

Vectors are 64 bytes where the CPU has AVX-512, else 32 (``VECTOR_BYTES``); ``wide_vectors()``
lets LLVM use the full width in these kernels only (kernels/cpu/vector_width.py).
"""
import functools

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .dispatch import current
from .vector_width import host_has_avx512, wide_vectors

# Bytes per vector of the tiled kernel: its micro-kernel holds 16 of them as accumulators, which
# fits AVX-512's 32 registers (with 12 input vectors); with AVX2's 16 registers LLVM spills some.
VECTOR_BYTES = 64 if host_has_avx512() else 32

# Output channels per micro-kernel, largest first: K is covered by blocks of 8, then 4, 2, 1.
TILE_CHANNELS = (8, 4, 2, 1)
TILE_ROWS = 2
# Input rows ahead that the micro-kernel prefetches into L2: the two rows the next row pair of a
# task adds. Each tile reads C channels x 4 rows at once, far more streams than the hardware
# prefetcher follows, so without this the new rows come from memory at the next task, with the
# FMAs waiting (in a step, the inputs were last touched long before).
PREFETCH_ROWS = 2


class _Vectors:
    """What both micro-kernels' IR needs for one dtype: the vector type, index arithmetic, splats,
    vector pointers and the LLVM intrinsics they call."""

    def __init__(self, context, builder, dtype):
        self.builder = builder
        self.itemsize = dtype.bitwidth // 8
        self.lanes = VECTOR_BYTES // self.itemsize
        self.scalar = context.get_data_type(dtype)
        self.type = ir.VectorType(self.scalar, self.lanes)
        self.suffix = f"v{self.lanes}f{8 * self.itemsize}"
        self.fma = self.intrinsic(f"llvm.fma.{self.suffix}", self.type, [self.type] * 3)
        self.zero = ir.Constant(self.type, [0.0] * self.lanes)

    def intrinsic(self, name, result, arguments):
        """The declaration of LLVM intrinsic ``name`` in this module."""
        return cgutils.get_or_insert_function(self.builder.module, ir.FunctionType(result, arguments), name)

    @staticmethod
    def const(value):
        """An i64 constant (array indices are intp)."""
        return ir.Constant(ir.IntType(64), value)

    def add(self, *terms):
        """The sum of i64 index terms."""
        return functools.reduce(self.builder.add, terms)

    def splat(self, value, vector_type=None):
        """``value`` in every lane of a vector (of this dtype unless ``vector_type`` says otherwise)."""
        vector_type = vector_type or self.type
        undef = ir.Constant(vector_type, ir.Undefined)
        one = self.builder.insert_element(undef, value, ir.Constant(ir.IntType(32), 0))
        zeros = ir.Constant(ir.VectorType(ir.IntType(32), vector_type.count), [0] * vector_type.count)
        return self.builder.shuffle_vector(one, undef, zeros)

    def at(self, data, offset):
        """A vector pointer to element ``offset`` of an array's data."""
        return self.builder.bitcast(self.builder.gep(data, [offset]), self.type.as_pointer())

    def load(self, data, offset):
        """The vector starting at element ``offset`` (no alignment assumed beyond the element's)."""
        return self.builder.load(self.at(data, offset), align=self.itemsize)


def _emit_tile(channels, context, builder, sig, args):
    """LLVM IR of y[img, k0:k0+channels, r:r+2, col:col+lanes] = act(bias + 3x3 correlation), x and w C-ordered;
    with ``prefetch``, also prefetches the input rows that the next row pair adds (PREFETCH_ROWS)."""
    x_arr, w_arr, b_arr, y_arr = (context.make_array(t)(context, builder, v) for t, v in zip(sig.args[:4], args[:4]))
    img, k0, r, col = (context.cast(builder, v, t, types.intp) for v, t in zip(args[4:8], sig.args[4:8]))
    relu, prefetch = (context.cast(builder, v, t, types.boolean) for v, t in zip(args[8:10], sig.args[8:10]))
    _, c_in, h, wd = cgutils.unpack_tuple(builder, x_arr.shape, 4)
    _, k_out, ho, wo = cgutils.unpack_tuple(builder, y_arr.shape, 4)

    v = _Vectors(context, builder, sig.args[0].dtype)
    const, add = v.const, v.add
    i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
    prefetch_fn = v.intrinsic("llvm.prefetch.p0", ir.VoidType(), [i8p, i32, i32, i32])
    # llvm.prefetch(address, read, locality 2: into L2 and below, data cache)
    prefetch_args = [ir.Constant(i32, 0), ir.Constant(i32, 2), ir.Constant(i32, 1)]

    # The accumulators start as the bias; allocas that LLVM promotes to registers.
    acc = []
    for kk in range(channels):
        bias = v.splat(builder.load(builder.gep(b_arr.data, [add(k0, const(kk))])))
        acc.append([cgutils.alloca_once_value(builder, bias) for _ in range(TILE_ROWS)])

    with cgutils.for_range(builder, c_in) as loop:
        c = loop.index
        top_left = add(builder.mul(add(builder.mul(add(builder.mul(img, c_in), c), h), r), wd), col)
        xs = [[v.load(x_arr.data, add(top_left, builder.mul(const(i), wd), const(j))) for j in range(3)]
              for i in range(TILE_ROWS + 2)]
        with builder.if_then(prefetch):
            # The first and last cache line of this column window in each row the next row pair
            # adds. Beyond the last row these addresses may lie outside x: a prefetch never faults.
            for i in range(TILE_ROWS + 2, TILE_ROWS + 2 + PREFETCH_ROWS):
                for j in (0, v.lanes + 1):
                    at = builder.gep(x_arr.data, [add(top_left, builder.mul(const(i), wd), const(j))])
                    builder.call(prefetch_fn, [builder.bitcast(at, i8p)] + prefetch_args)
        for kk in range(channels):
            w_base = builder.mul(add(builder.mul(add(k0, const(kk)), c_in), c), const(9))
            ws = [v.splat(builder.load(builder.gep(w_arr.data, [add(w_base, const(t))]))) for t in range(9)]
            for row in range(TILE_ROWS):
                a = builder.load(acc[kk][row])
                for i in range(3):
                    for j in range(3):
                        a = builder.call(v.fma, [xs[row + i][j], ws[3 * i + j], a])
                builder.store(a, acc[kk][row])

    for kk in range(channels):
        for row in range(TILE_ROWS):
            out = builder.load(acc[kk][row])
            out = builder.select(relu, builder.select(builder.fcmp_ordered("<", out, v.zero), v.zero, out), out)
            at = add(builder.mul(add(builder.mul(add(builder.mul(img, k_out), k0, const(kk)), ho), r, const(row)), wo), col)
            builder.store(out, v.at(y_arr.data, at), align=v.itemsize)
    return context.get_dummy_value()


def _make_tile(channels):
    """The micro-kernel for ``channels`` output channels as a Numba intrinsic:
    tile(x, w, bias, y, img, k0, r, col, relu, prefetch), all arrays C-ordered, in bounds (the caller's job)."""
    @intrinsic
    def tile(typingctx, x, w, bias, y, img, k0, r, col, relu, prefetch):
        arrays = (x, w, bias, y)
        if not all(isinstance(a, types.Array) and a.layout == "C" and a.dtype == x.dtype for a in arrays):
            return None
        return types.void(x, w, bias, y, img, k0, r, col, relu, prefetch), functools.partial(_emit_tile, channels)
    return tile


_tile8, _tile4, _tile2, _tile1 = (_make_tile(channels) for channels in TILE_CHANNELS)


@njit(cache=True, nogil=True, inline="always")
def _tile_channels(x, w, bias, y, img, k0, k1, r, col, relu, prefetch):
    """Output channels k0..k1-1 (k1 - k0 <= 8, or any number in blocks of 8 then 4, 2, 1) of the
    two rows at r and the column vector at col; the first block prefetches if ``prefetch``."""
    k = k0
    while k1 - k >= 8:
        _tile8(x, w, bias, y, img, k, r, col, relu, prefetch and k == k0)
        k += 8
    if k1 - k >= 4:
        _tile4(x, w, bias, y, img, k, r, col, relu, prefetch and k == k0)
        k += 4
    if k1 - k >= 2:
        _tile2(x, w, bias, y, img, k, r, col, relu, prefetch and k == k0)
        k += 2
    if k1 - k >= 1:
        _tile1(x, w, bias, y, img, k, r, col, relu, prefetch and k == k0)


# Input channels up to which a task sweeps the columns once per block of 8 output channels
# instead of all output channels once per column vector: with so few inputs a tile is mostly its
# 16 output stores, and sweeping rows keeps each output row's cache lines together; from 16
# channels on the input window's reuse across blocks wins.
FEW_INPUTS = 8


@njit(parallel=True, cache=True, nogil=True)
def _tiled(x, w, bias, relu, y):
    """y = act(bias + 3x3 valid correlation of x with w), one task per pair of output rows.

    Within a task, column vectors outside and channel blocks inside: the input window of one
    column vector (4 rows x (lanes + 2) x C) stays in L1 while every channel block reads it;
    with at most FEW_INPUTS input channels the other way round. Needs Wo >= lanes and Ho >= 2
    (``conv3x3`` checks).
    """
    n, k_out, ho, wo = y.shape
    lanes = VECTOR_BYTES // y.itemsize
    pairs = (ho + 1) // 2
    for task in prange(n * pairs):
        wide_vectors()
        img = task // pairs
        r = min(2 * (task % pairs), ho - 2)
        if x.shape[1] <= FEW_INPUTS:
            for k in range(0, k_out, 8):
                for col0 in range(0, wo, lanes):
                    _tile_channels(x, w, bias, y, img, k, min(k + 8, k_out), r, min(col0, wo - lanes), relu, k == 0)
        else:
            for col0 in range(0, wo, lanes):
                _tile_channels(x, w, bias, y, img, 0, k_out, r, min(col0, wo - lanes), relu, True)


def conv3x3(x, w, bias, relu, y):
    """y (N, K, Ho, Wo) = act(bias + valid 3x3 correlation of x (N, C, H, W) with w (K, C, 3, 3)).

    All arrays C-ordered and of one dtype; ``relu`` applies ReLU. The tiled kernel where the
    output has a vector's width and two rows, the row kernel otherwise.
    """
    if y.shape[3] >= VECTOR_BYTES // y.itemsize and y.shape[2] >= 2:
        _tiled(x, w, bias, relu, y)
    else:
        _rows(x, w, bias, relu, y)


def weight_grad(x, gy_pad):
    """gw (K, C, 3, 3) of the valid 3x3 convolution of x, from gy zero-padded by 2 on every side."""
    n, c, _, width = x.shape
    k, ho, wo = gy_pad.shape[1], gy_pad.shape[2] - 4, gy_pad.shape[3] - 4
    rows = _weight_grad_rows(c, width, x.itemsize)
    lanes = VECTOR_BYTES // x.itemsize
    pairs_per_flush = max(1, current().flush_products // (2 * -(-wo // lanes)))
    partial = np.empty((n * -(-ho // rows), k, c, 9), dtype=np.float64)
    _weight_grad_blocks(x, gy_pad, rows, pairs_per_flush, partial)
    gw = np.empty((k, c, 3, 3), x.dtype)
    _sum_blocks(partial, gw.reshape(k, c, 9))
    return gw


@njit(parallel=True, cache=True, nogil=True)
def _sum_blocks(partial, gw):
    """gw[k, c, t] = the sum over blocks b of partial[b, k, c, t], in float64, in block order."""
    blocks, k_out = partial.shape[:2]
    for k in prange(k_out):
        for c in range(partial.shape[2]):
            for t in range(partial.shape[3]):
                total = 0.0
                for b in range(blocks):
                    total += partial[b, k, c, t]
                gw[k, c, t] = total


@njit(cache=True, nogil=True, fastmath={"contract"}, inline="always")
def _taps_2x2(o0, o1, p0, p1, u, v, x0, x1, x2, x3):
    """Two output rows of two output channels from one input channel's four input rows.

    o0, o1 += u, v (*) rows x0..x2 (output row r); p0, p1 += u, v (*) rows x1..x3 (row r + 1).
    u, v are the 3x3 weights of the two channels. The four outputs share the twelve input loads
    per column: register blocking (two channels of one row: 9 loads for 18 multiply-adds; this:
    12 for 36). LLVM vectorises
    across the independent columns; "contract" lets it use FMA instructions (no reassociation:
    the sum's order is as written). Inlined into ``_rows`` (which must carry the same flag:
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
def _rows(x, w, bias, relu, y):
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
        wide_vectors()
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


@njit(parallel=True, cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _masked_weight_grad(x, gy, mask, use_mask, gw, gb):
    """gw[k, c, i, j] = sum of g[k] * x[c] shifted by (i, j), gb[k] = sum of g[k], where g = gy
    masked by mask > 0 if use_mask; one task per output channel.

    Each gy row is masked once into a scratch row (its sum is the bias gradient), then dotted with
    the 3 x C input rows under it, three shifts at a time. The dot products of one row are summed
    in the arrays' dtype (vector lanes: "reassoc"), the rows' sums in float64.
    """
    n, k_out, ho, wo = gy.shape
    c_in = x.shape[1]
    for k in prange(k_out):
        g = np.empty(wo, gy.dtype)
        zero = np.zeros(1, gy.dtype)[0]
        totals = np.zeros((c_in, 9))
        bias_total = 0.0
        for img in range(n):
            for r in range(ho):
                row_sum = zero
                for col in range(wo):
                    v = gy[img, k, r, col]
                    if use_mask and not mask[img, k, r, col] > 0:
                        v = zero
                    g[col] = v
                    row_sum += v
                bias_total += row_sum
                for c in range(c_in):
                    for i in range(3):
                        xr = x[img, c, r + i]
                        s0 = s1 = s2 = zero
                        for col in range(wo):
                            s0 += g[col] * xr[col]
                            s1 += g[col] * xr[col + 1]
                            s2 += g[col] * xr[col + 2]
                        totals[c, 3 * i] += s0
                        totals[c, 3 * i + 1] += s1
                        totals[c, 3 * i + 2] += s2
        for c in range(c_in):
            for t in range(9):
                gw[k, c, t // 3, t % 3] = totals[c, t]
        gb[k] = bias_total


def masked_weight_grad(x, gy, y=None):
    """(gw, gb) of a valid 3x3 convolution with few input channels, straight from gy (masked by
    y > 0 when y is given): the first layer's backward, which needs no input gradient.

    The general kernels read gy zero-padded and masked, which costs a pass writing it, longer at
    the first layer than its weight gradient itself.
    """
    k, c = gy.shape[1], x.shape[1]
    gw = np.empty((k, c, 3, 3), x.dtype)
    gb = np.empty(k, x.dtype)
    _masked_weight_grad(x, gy, gy if y is None else y, y is not None, gw, gb)
    return gw, gb


def _weight_grad_rows(c, width, itemsize):
    """Output rows per weight-gradient task: its input rows fill ``Dispatch.weight_grad_block_bytes``."""
    return max(1, current().weight_grad_block_bytes // (itemsize * c * width))


def _emit_weight_tile(channels, context, builder, sig, args):
    """LLVM IR of partial[task, k0:k0+channels, c, 3i+j] = sum over rows r0..r1 of gy[k] (.) x[c] shifted by (i, j).

    The 9 x channels sums are vector accumulators held in registers across the columns of two
    gy rows (which share four input rows: 12 input vectors and 2 x channels gy vectors feed
    18 x channels fused multiply-adds), moved to float64 vectors every ``pairs_per_flush`` row
    pairs, and reduced across lanes at the end. The last, partial vector of a row is read with
    masked loads, so nothing beyond the row is read or counted.
    """
    x_arr, g_arr, p_arr = (context.make_array(t)(context, builder, v) for t, v in zip(sig.args[:3], args[:3]))
    task, img, k0, c, r0, r1, pairs_per_flush = (
        context.cast(builder, v, t, types.intp) for v, t in zip(args[3:10], sig.args[3:10]))
    _, c_in, h, wd = cgutils.unpack_tuple(builder, x_arr.shape, 4)
    _, k_out, hp, wp = cgutils.unpack_tuple(builder, g_arr.shape, 4)
    _, p_k, p_c, _ = cgutils.unpack_tuple(builder, p_arr.shape, 4)

    v = _Vectors(context, builder, sig.args[0].dtype)
    const, add, lanes, zero = v.const, v.add, v.lanes, v.zero
    i32, i64 = ir.IntType(32), ir.IntType(64)
    wide = ir.VectorType(ir.DoubleType(), lanes)
    masked_load = v.intrinsic(f"llvm.masked.load.{v.suffix}.p0", v.type,
                              [v.type.as_pointer(), i32, ir.VectorType(ir.IntType(1), lanes), v.type])

    wo = builder.sub(wp, const(4))
    full, rem = builder.sdiv(wo, const(lanes)), builder.srem(wo, const(lanes))
    lane_index = ir.Constant(ir.VectorType(i64, lanes), list(range(lanes)))
    tail_mask = builder.icmp_signed("<", lane_index, v.splat(rem, ir.VectorType(i64, lanes)))

    acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(9)] for _ in range(channels)]
    totals = [[cgutils.alloca_once_value(builder, ir.Constant(wide, [0.0] * lanes)) for _ in range(9)]
              for _ in range(channels)]

    def rows_at(r, n_rows):
        """Accumulate gy rows r .. r + n_rows - 1 of the channel block against x[c]."""
        def columns(col, mask):
            def load(arr, offset):
                if mask is None:
                    return v.load(arr.data, offset)
                return builder.call(masked_load, [v.at(arr.data, offset), ir.Constant(i32, v.itemsize), mask, zero])
            x0 = add(builder.mul(add(builder.mul(add(builder.mul(img, c_in), c), h), r), wd), col)
            xs = [[load(x_arr, add(x0, builder.mul(const(i), wd), const(j))) for j in range(3)]
                  for i in range(n_rows + 2)]
            for kk in range(channels):
                g0 = add(builder.mul(add(builder.mul(add(builder.mul(img, k_out), k0, const(kk)), hp), r, const(2)), wp),
                         col, const(2))
                gs = [load(g_arr, add(g0, builder.mul(const(rr), wp))) for rr in range(n_rows)]
                for t in range(9):
                    i, j = divmod(t, 3)
                    a = builder.load(acc[kk][t])
                    for rr in range(n_rows):
                        a = builder.call(v.fma, [gs[rr], xs[rr + i][j], a])
                    builder.store(a, acc[kk][t])

        with cgutils.for_range(builder, full) as loop:
            columns(builder.mul(loop.index, const(lanes)), None)
        with builder.if_then(builder.icmp_signed(">", rem, const(0))):
            columns(builder.mul(full, const(lanes)), tail_mask)

    def flush():
        for kk in range(channels):
            for t in range(9):
                part = builder.load(acc[kk][t])
                if v.itemsize == 4:
                    part = builder.fpext(part, wide)
                builder.store(builder.fadd(builder.load(totals[kk][t]), part), totals[kk][t])
                builder.store(zero, acc[kk][t])

    pairs = builder.sdiv(builder.sub(r1, r0), const(2))
    with cgutils.for_range(builder, pairs) as loop:
        rows_at(add(r0, builder.mul(loop.index, const(2))), 2)
        done = builder.add(loop.index, const(1))
        with builder.if_then(builder.icmp_signed("==", builder.srem(done, pairs_per_flush), const(0))):
            flush()
    with builder.if_then(builder.icmp_signed(">", builder.srem(builder.sub(r1, r0), const(2)), const(0))):
        rows_at(builder.sub(r1, const(1)), 1)
    flush()

    # Across the lanes as a tree ("reassoc" lets LLVM pair lanes up: 4 shuffle-and-add levels for
    # 16 lanes instead of a chain of 15 dependent additions, which cost as much as the products on
    # small images).
    reduce_add = v.intrinsic(f"llvm.vector.reduce.fadd.v{lanes}f64", ir.DoubleType(), [ir.DoubleType(), wide])
    for kk in range(channels):
        base = builder.mul(add(builder.mul(add(builder.mul(task, p_k), k0, const(kk)), p_c), c), const(9))
        for t in range(9):
            total = builder.call(reduce_add, [ir.Constant(ir.DoubleType(), 0.0), builder.load(totals[kk][t])],
                                 fastmath=("reassoc",))
            builder.store(total, builder.gep(p_arr.data, [add(base, const(t))]))
    return context.get_dummy_value()


def _make_weight_tile(channels):
    """The weight-gradient micro-kernel for ``channels`` output channels as a Numba intrinsic:
    wtile(x, gy_pad, partial, task, img, k0, c, r0, r1, pairs_per_flush), arrays C-ordered."""
    @intrinsic
    def wtile(typingctx, x, gy_pad, partial, task, img, k0, c, r0, r1, pairs_per_flush):
        if not all(isinstance(a, types.Array) and a.layout == "C" for a in (x, gy_pad, partial)):
            return None
        if gy_pad.dtype != x.dtype or partial.dtype != types.float64:
            return None
        sig = types.void(x, gy_pad, partial, task, img, k0, c, r0, r1, pairs_per_flush)
        return sig, functools.partial(_emit_weight_tile, channels)
    return wtile


_weight_tile2, _weight_tile1 = _make_weight_tile(2), _make_weight_tile(1)


@njit(parallel=True, cache=True, nogil=True)
def _weight_grad_blocks(x, gy_pad, rows, pairs_per_flush, partial):
    """partial[t, k, c, 3i + j] = sum over the rows of block t of gy[k] * x[c] shifted by (i, j).

    One job per block of ``rows`` output rows (of one image) and pair of output channels (the
    last channel alone with K odd): the block's input rows stay in L2 while the pairs read them,
    and small images still make enough jobs for every core. The caller sums the blocks.
    """
    n, k_out = gy_pad.shape[:2]
    ho = gy_pad.shape[2] - 4
    c_in = x.shape[1]
    per_img = (ho + rows - 1) // rows
    pairs = (k_out + 1) // 2
    for job in prange(n * per_img * pairs):
        wide_vectors()
        task, k = job // pairs, 2 * (job % pairs)
        img, r0 = task // per_img, (task % per_img) * rows
        r1 = min(r0 + rows, ho)
        if k + 1 < k_out:
            for c in range(c_in):
                _weight_tile2(x, gy_pad, partial, task, img, k, c, r0, r1, pairs_per_flush)
        else:
            for c in range(c_in):
                _weight_tile1(x, gy_pad, partial, task, img, k, c, r0, r1, pairs_per_flush)
