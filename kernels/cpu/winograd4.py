"""Valid 3x3 convolution by Winograd's F(4x4, 3x3): 4x fewer multiplications than the direct form.

The same scheme as ``winograd.py`` (Lavin & Gray, CVPR 2016), with 4x4 output tiles read from
6x6 input patches: y_tile = A^T [ (G g G^T) (*) (B^T d B) ] A, where position xi of the 6x6
transformed tiles of every channel pair is one GEMM, M[xi] (K x tiles) = U[xi] (K x C) @
V[xi] (C x tiles). Per output pixel that is 36/16 = 2.25 multiplications per channel pair
against F(2x2, 3x3)'s 4 and the direct form's 9, and the transformed input V is 2.25x the
input instead of 4x, so the transforms cost less memory traffic too.

The price is precision: the interpolation points 0, +-1, +-2 put coefficients up to 8 in A and
5 in B (F(2x2, 3x3) has only 0, +-1, 1/2). Measured float32 error, relative to the largest sum
of |terms| of an output (the scale the convolution tests use): about 1e-6 from 16 to 1,024 input
channels, 20x inside the 2e-5 tolerance (tests/test_kernels_cpu_inference.py). The filter
transform runs in float64.

This path computes the forward pass (and the input gradient, which is a forward pass on the
padded gy); the weight gradient stays on F(2x2, 3x3), whose transposed algorithm has no such
large coefficients.
"""
import numpy as np
from numba import njit, prange

from . import buffers, compiled_blas
from .winograd import block_tiling, filter_transform

TILE = 4            # output pixels per tile side
PATCH = TILE + 2    # input pixels per patch side
POSITIONS = PATCH * PATCH


# G of F(4x4, 3x3): the filter transform U = G g G^T (winograd.filter_transform, in float64).
G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])


@njit(cache=True, nogil=True, inline="always")
def _bt(d0, d1, d2, d3, d4, d5):
    """B^T (6x6) times the column (d0, ..., d5), in the inputs' dtype.

    Multiples are sums (4a = (a + a) + (a + a), exact; 5a = 4a + a, one rounding as for 5 * a):
    an integer constant would promote float32 to float64 in Numba.
    """
    d1x2, d2x4, d3x2 = d1 + d1, (d2 + d2) + (d2 + d2), d3 + d3
    d0x4, d1x4, d3x4 = (d0 + d0) + (d0 + d0), d1x2 + d1x2, d3x2 + d3x2
    return (d0x4 - (d2x4 + d2) + d4, (d3 + d4) - (d1x4 + d2x4), (d1x4 - d2x4) + (d4 - d3),
            (d3x2 - d1x2) + (d4 - d2), (d1x2 - d3x2) + (d4 - d2), d1x4 - (d3x4 + d3) + d5)


@njit(cache=True, nogil=True)
def _input_transform(x, tr0, tr1, tiles_x, v):
    """v[xi, c, t] = (B^T d B)[xi] for the 6x6 patch d of each tile t in tile rows tr0..tr1 of x (C, H, W).

    Beyond the image the patch reads zeros. Three passes per tile row, each a loop with
    unit-stride streams that LLVM vectorises: the row combinations of B^T over whole rows, each
    combined row split by column phase (column 4j + p into phase[p, j]), then the column
    combinations, one output position at a time, over the tiles.
    """
    c_in, h, wd = x.shape
    rows = np.zeros((6, TILE * tiles_x + TILE), dtype=v.dtype)    # the columns past W stay zero
    phase = np.empty((TILE, tiles_x + 1), dtype=v.dtype)
    padded = np.zeros((6, wd), dtype=x.dtype)
    for c in range(c_in):
        for ty in range(tr0, tr1):
            r = TILE * ty
            if r + 5 < h:
                src = x[c, r:r + 6]
            else:                                # the last tile rows read zeros below the image
                padded[:] = 0
                padded[:h - r] = x[c, r:h]
                src = padded
            x0, x1, x2, x3, x4, x5 = src[0], src[1], src[2], src[3], src[4], src[5]
            r0, r1, r2, r3, r4, r5 = rows[0], rows[1], rows[2], rows[3], rows[4], rows[5]
            for col in range(wd):
                r0[col], r1[col], r2[col], r3[col], r4[col], r5[col] = _bt(
                    x0[col], x1[col], x2[col], x3[col], x4[col], x5[col])
            t0, t1 = (ty - tr0) * tiles_x, (ty - tr0 + 1) * tiles_x
            p0, p1, p2, p3 = phase[0], phase[1], phase[2], phase[3]
            for i in range(6):
                row = rows[i]
                for j in range(tiles_x + 1):
                    p0[j], p1[j], p2[j], p3[j] = row[TILE * j], row[TILE * j + 1], row[TILE * j + 2], row[TILE * j + 3]
                _tile_columns(p0[:tiles_x], p1[:tiles_x], p2[:tiles_x], p3[:tiles_x], p0[1:], p1[1:],
                              v[6 * i, c, t0:t1], v[6 * i + 1, c, t0:t1], v[6 * i + 2, c, t0:t1],
                              v[6 * i + 3, c, t0:t1], v[6 * i + 4, c, t0:t1], v[6 * i + 5, c, t0:t1])


@njit(cache=True, nogil=True, inline="always")
def _tile_columns(d0, d1, d2, d3, d4, d5, b0, b1, b2, b3, b4, b5):
    """b_i[t] = (B^T (d0[t], ..., d5[t]))_i over unit-stride streams (the loop vectorises over t)."""
    for t in range(b0.shape[0]):
        b0[t], b1[t], b2[t], b3[t], b4[t], b5[t] = _bt(d0[t], d1[t], d2[t], d3[t], d4[t], d5[t])


@njit(cache=True, nogil=True, inline="always")
def _at(m0, m1, m2, m3, m4, m5):
    """A^T (4x6) times the column (m0, ..., m5), in their dtype (multiples as sums, as in ``_bt``)."""
    p, q = m1 + m2, m1 - m2
    s, d = m3 + m4, m3 - m4
    d2, s2 = d + d, s + s
    d4 = d2 + d2
    return m0 + p + s, q + d2, p + (s2 + s2), q + (d4 + d4) + m5


@njit(cache=True, nogil=True, inline="always")
def _act(value, bias, relu):
    """bias + value, through ReLU if ``relu``."""
    value += bias
    return max(value, 0) if relu else value


@njit(cache=True, nogil=True, inline="always")
def _columns_at(m0, m1, m2, m3, m4, m5, s0, s1, s2, s3):
    """s_a[t] = (A^T (m0[t], ..., m5[t]))_a over unit-stride streams (the loop vectorises over t)."""
    for t in range(s0.shape[0]):
        s0[t], s1[t], s2[t], s3[t] = _at(m0[t], m1[t], m2[t], m3[t], m4[t], m5[t])


@njit(cache=True, nogil=True)
def _output_transform(m, bias, relu, tr0, tr1, tiles_x, y):
    """y[k, 4ty + a, 4tx + b] = act(bias[k] + (A^T m_t A)[a, b]) for the block's tiles; overhang dropped.

    Per output channel, two passes of unit-stride loops over all the block's tiles (A^T down
    the columns, then across the rows, into per-position streams), then each tile row's 4x4
    outputs are interleaved into the image rows, with the bias and ReLU.
    """
    k_out, ho, wo = y.shape
    tiles = (tr1 - tr0) * tiles_x
    s = np.empty((4, 6, tiles), dtype=m.dtype)
    out = np.empty((4, 4, tiles), dtype=m.dtype)
    for k in range(k_out):
        for j in range(6):
            _columns_at(m[j, k, :tiles], m[6 + j, k, :tiles], m[12 + j, k, :tiles], m[18 + j, k, :tiles],
                        m[24 + j, k, :tiles], m[30 + j, k, :tiles], s[0, j], s[1, j], s[2, j], s[3, j])
        for a in range(4):
            sa = s[a]
            _columns_at(sa[0], sa[1], sa[2], sa[3], sa[4], sa[5], out[a, 0], out[a, 1], out[a, 2], out[a, 3])
        bk = bias[k]
        for ty in range(tr0, tr1):
            t0, r = (ty - tr0) * tiles_x, TILE * ty
            for a in range(min(TILE, ho - r)):
                row, o0, o1, o2, o3 = y[k, r + a], out[a, 0, t0:], out[a, 1, t0:], out[a, 2, t0:], out[a, 3, t0:]
                whole = wo // TILE
                for q in range(whole):
                    row[TILE * q] = _act(o0[q], bk, relu)
                    row[TILE * q + 1] = _act(o1[q], bk, relu)
                    row[TILE * q + 2] = _act(o2[q], bk, relu)
                    row[TILE * q + 3] = _act(o3[q], bk, relu)
                for col in range(TILE * whole, wo):
                    row[col] = _act(out[a, col % TILE, t0 + col // TILE], bk, relu)


def conv3x3_forward(x, w, bias, relu):
    """act(valid 3x3 correlation of x (N, C, H, W) with w (K, C, 3, 3) + bias) -> (N, K, H-2, W-2)."""
    n, c, h, wd = x.shape
    k = w.shape[0]
    ho, wo = h - 2, wd - 2
    tiles_x, tiles_y, rows, items = block_tiling(n, ho, wo, c + k, x.itemsize, TILE)
    u = np.empty((POSITIONS, k, c), x.dtype)
    filter_transform(np.ascontiguousarray(w, dtype=x.dtype), G, u)
    y = buffers.empty((n, k, ho, wo), x.dtype)
    items = np.array(items, np.int64).reshape(-1, 2)
    parts = compiled_blas.parts(len(items))
    v = buffers.empty((parts, POSITIONS, c, rows * tiles_x), x.dtype)
    m = buffers.empty((parts, POSITIONS, k, rows * tiles_x), x.dtype)
    _forward_blocks(compiled_blas.routine(x.dtype), x, u, bias, relu, items, rows, tiles_x, tiles_y, v, m, y)
    return y


@njit(parallel=True, cache=True)
def _forward_blocks(f, x, u, bias, relu, items, rows, tiles_x, tiles_y, v, m, y):
    """The blocks of :func:`conv3x3_forward` on Numba's threads: part p of ``v.shape[0]`` takes a
    contiguous share of the (image, first tile row) ``items``, with its own scratch v[p], m[p]."""
    parts = v.shape[0]
    for p in prange(parts):
        for i in range(len(items) * p // parts, len(items) * (p + 1) // parts):
            img, tr0 = items[i, 0], items[i, 1]
            tr1 = min(tr0 + rows, tiles_y)
            tiles = (tr1 - tr0) * tiles_x
            _input_transform(x[img], tr0, tr1, tiles_x, v[p])
            for xi in range(POSITIONS):
                compiled_blas.gemm(f, u[xi], v[p, xi, :, :tiles], m[p, xi, :, :tiles])
            _output_transform(m[p], bias, relu, tr0, tr1, tiles_x, y[img])
