"""The direct 3x3 convolution's weight gradient: a reduction over positions, not a convolution.

``weight_grad`` is an LLVM IR micro-kernel (``_emit_weight_tile``): for two output channels and
one input channel, the 18 sums are vector accumulators in registers while two gy rows at a time
sweep the columns against the four input rows they share, moved to float64 every
``Dispatch.flush_products`` products per lane. It reads gy zero-padded by 2 (the padded copy the
direct input gradient reads too), one job per block of rows and pair of output channels, and the
blocks' partial sums are added in float64 (``_sum_blocks``).

The first layer, which needs no input gradient and has few input channels, takes
``masked_weight_grad`` instead: plain Numba loops that read gy and the ReLU mask directly, with
no padded copy of gy written first.

The IR helpers and the vector width (``_Vectors``, ``VECTOR_BYTES``) are the forward's, in
direct.py; ``wide_vectors()`` lets LLVM use the full width (kernels/cpu/vector_width.py).
"""
import functools

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .direct import VECTOR_BYTES, _Vectors
from .dispatch import current
from .vector_width import wide_vectors


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


def _weight_grad_rows(c, width, itemsize):
    """Output rows per weight-gradient task: its input rows fill ``Dispatch.weight_grad_block_bytes``."""
    return max(1, current().weight_grad_block_bytes // (itemsize * c * width))


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
