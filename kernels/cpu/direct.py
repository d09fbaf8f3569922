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

The weight gradient is in direct_weight_grad.py, whose micro-kernel shares ``_Vectors``.

Vectors are 64 bytes where the CPU has AVX-512, else 32 (``VECTOR_BYTES``); ``wide_vectors()``
lets LLVM use the full width in these kernels only (kernels/cpu/vector_width.py).
"""
import functools

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

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
    """What the micro-kernels' IR (these and direct_weight_grad.py's) needs for one dtype: the vector type, index arithmetic, splats,
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
