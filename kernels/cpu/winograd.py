"""Valid 3x3 convolution by Winograd's minimal filtering F(2x2, 3x3): 2.25x fewer multiplications.

Each 2x2 block of outputs ("tile") reads a 4x4 patch d of the input. Winograd (Lavin & Gray,
"Fast Algorithms for Convolutional Neural Networks", CVPR 2016) computes it as

    y_tile = A^T [ (G g G^T) (*) (B^T d B) ] A          (*): elementwise, over 4x4 positions xi

with small constant matrices A, B, G. Summed over input channels, position xi of every tile of
every output channel is one GEMM: M[xi] (K x tiles) = U[xi] (K x C) @ V[xi] (C x tiles), where
U = G w G^T is the transformed filter and V = B^T d B the transformed input. So a convolution is
an input transform, 16 GEMMs (BLAS) and an output transform, against 9 GEMMs over 4x as many
positions (one per output pixel) for the direct form: 16/4 = 4 multiplications per output
instead of 9.
The transforms cost memory traffic (V is 4x the input), which is why this pays only where the
GEMMs are large: many channels and many tiles (``applies``).

The same machinery gives the gradients:

- the input gradient is a valid correlation of gy zero-padded by 2 with the flipped, transposed
  weights: the forward kernel again;
- the weight gradient is F(3x3, 2x2), the transpose of F(2x2, 3x3) (same input transform B,
  gy tiles transformed by A, result by G): dW^[xi] (K x C) = sum over tiles of gy^[xi] (K x
  tiles) @ V[xi]^T (tiles x C), again 16 GEMMs, then dW = G^T dW^ G.

The tiles are processed in blocks of whole tile rows of one image, shared among one worker
thread per core (``blas.parallel_for``), each with its own scratch V and M. Tiles that overhang
an odd-sized output read zeros beyond the input, and their extra outputs are dropped.
The transform coefficients are 0, +-1 and 1/2, so float32 results stay within the tolerance of
the direct form (tests/test_kernels_cpu.py).
"""
import numpy as np
from numba import njit, prange

from . import buffers
from .blas import WORKERS, gemm, parallel_for
from .dispatch import current


def applies(direction, c, k, ho, wo):
    """Whether ``direction`` ("forward", "input_grad", "weight_grad") of a 3x3 convolution with C
    inputs, K outputs and an Ho x Wo output takes this path."""
    d = current()
    tiles = -(-ho // 2) * -(-wo // 2)
    if min(c, k) < d.winograd_min_channels or tiles < d.winograd_min_tiles[direction]:
        return False
    return direction != "weight_grad" or c * k <= d.winograd_max_filter_per_tile * tiles


# G of F(2x2, 3x3): the filter transform U = G g G^T.
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])


@njit(parallel=True, cache=True, nogil=True)
def filter_transform(w, g, u):
    """u[p i + j, k, c] = (G w[k, c] G^T)[i, j] for G = g (p x 3), computed in float64.

    In parallel over k, each k's weights first gathered with c innermost so that every loop
    runs over contiguous c (vectorised): the big layers' transform is not negligible.
    """
    k_out, c_in = w.shape[:2]
    p = g.shape[0]
    for k in prange(k_out):
        wk = np.empty((3, 3, c_in))
        t = np.empty((p, 3, c_in))
        for c in range(c_in):
            for a in range(3):
                for b in range(3):
                    wk[a, b, c] = w[k, c, a, b]
        for i in range(p):
            for b in range(3):
                for c in range(c_in):
                    t[i, b, c] = g[i, 0] * wk[0, b, c] + g[i, 1] * wk[1, b, c] + g[i, 2] * wk[2, b, c]
        for i in range(p):
            for j in range(p):
                out = u[p * i + j, k]
                for c in range(c_in):
                    out[c] = t[i, 0, c] * g[j, 0] + t[i, 1, c] * g[j, 1] + t[i, 2, c] * g[j, 2]


@njit(cache=True, nogil=True)
def _input_transform(x, tr0, tr1, tiles_x, v):
    """v[xi, c, t] = (B^T d B)[xi] for the 4x4 patch d of each tile t in tile rows tr0..tr1 of x (C, H, W).

    Beyond the image the patch reads zeros. B^T d B is done as four row combinations over whole
    rows (vectorisable), then the same combinations across each tile's four columns.
    """
    c_in, h, wd = x.shape
    rows = np.zeros((4, 2 * tiles_x + 2), dtype=v.dtype)      # the columns past W stay zero
    for c in range(c_in):
        for ty in range(tr0, tr1):
            r = 2 * ty
            for col in range(wd):
                d0 = x[c, r, col] if r < h else 0
                d1 = x[c, r + 1, col] if r + 1 < h else 0
                d2 = x[c, r + 2, col] if r + 2 < h else 0
                d3 = x[c, r + 3, col] if r + 3 < h else 0
                rows[0, col] = d0 - d2
                rows[1, col] = d1 + d2
                rows[2, col] = d2 - d1
                rows[3, col] = d1 - d3
            t0 = (ty - tr0) * tiles_x
            for i in range(4):
                row, v0, v1, v2, v3 = rows[i], v[4 * i, c], v[4 * i + 1, c], v[4 * i + 2, c], v[4 * i + 3, c]
                for tx in range(tiles_x):
                    a0, a1, a2, a3 = row[2 * tx], row[2 * tx + 1], row[2 * tx + 2], row[2 * tx + 3]
                    v0[t0 + tx] = a0 - a2
                    v1[t0 + tx] = a1 + a2
                    v2[t0 + tx] = a2 - a1
                    v3[t0 + tx] = a1 - a3


@njit(cache=True, nogil=True)
def _output_transform(m, bias, relu, tr0, tr1, tiles_x, y):
    """y[k, 2ty + a, 2tx + b] = act(bias[k] + (A^T m_t A)[a, b]) for the block's tiles; overhang dropped."""
    k_out, ho, wo = y.shape
    for k in range(k_out):
        for ty in range(tr0, tr1):
            t0, r = (ty - tr0) * tiles_x, 2 * ty
            for tx in range(tiles_x):
                t = t0 + tx
                # A^T m: rows (s) and the column combinations (q) of each of the four rows.
                s0 = m[0, k, t] + m[1, k, t] + m[2, k, t]
                q0 = m[1, k, t] - m[2, k, t] - m[3, k, t]
                s1 = m[4, k, t] + m[5, k, t] + m[6, k, t]
                q1 = m[5, k, t] - m[6, k, t] - m[7, k, t]
                s2 = m[8, k, t] + m[9, k, t] + m[10, k, t]
                q2 = m[9, k, t] - m[10, k, t] - m[11, k, t]
                s3 = m[12, k, t] + m[13, k, t] + m[14, k, t]
                q3 = m[13, k, t] - m[14, k, t] - m[15, k, t]
                y00 = s0 + s1 + s2 + bias[k]
                y01 = q0 + q1 + q2 + bias[k]
                y10 = s1 - s2 - s3 + bias[k]
                y11 = q1 - q2 - q3 + bias[k]
                if relu:
                    y00, y01, y10, y11 = max(y00, 0), max(y01, 0), max(y10, 0), max(y11, 0)
                col = 2 * tx
                y[k, r, col] = y00
                if col + 1 < wo:
                    y[k, r, col + 1] = y01
                if r + 1 < ho:
                    y[k, r + 1, col] = y10
                    if col + 1 < wo:
                        y[k, r + 1, col + 1] = y11


@njit(cache=True, nogil=True)
def _grad_transform(gy_pad, tr0, tr1, tiles_x, g):
    """g[xi, k, t] = (A gy_t A^T)[xi] for the 2x2 gy tile t; gy is the interior of gy_pad (padded by 2).

    Like the input transform: the row combinations of A (g0, g0 + g1, g0 - g1, -g1) over whole
    rows, then the same across each tile's two columns.
    """
    k_out, _, width = gy_pad.shape
    rows = np.empty((4, width), dtype=g.dtype)
    for k in range(k_out):
        for ty in range(tr0, tr1):
            top, bottom = gy_pad[k, 2 + 2 * ty], gy_pad[k, 3 + 2 * ty]
            for col in range(width):
                rows[0, col] = top[col]
                rows[1, col] = top[col] + bottom[col]
                rows[2, col] = top[col] - bottom[col]
                rows[3, col] = -bottom[col]
            t0 = (ty - tr0) * tiles_x
            for i in range(4):
                row, g0, g1, g2, g3 = rows[i], g[4 * i, k], g[4 * i + 1, k], g[4 * i + 2, k], g[4 * i + 3, k]
                for tx in range(tiles_x):
                    p, q = row[2 + 2 * tx], row[3 + 2 * tx]
                    g0[t0 + tx] = p
                    g1[t0 + tx] = p + q
                    g2[t0 + tx] = p - q
                    g3[t0 + tx] = -q


def block_tiling(n, ho, wo, channels, itemsize, tile=2):
    """(tiles_x, tiles_y, rows, blocks) for an Ho x Wo output of n images in tile x tile output
    tiles: tiles per row and column, tile rows per block (``Dispatch.winograd_block_tiles`` within
    ``winograd_scratch_bytes`` of transformed tiles; every worker gets one), and the blocks as
    (image, first tile row).

    An image's blocks come in a multiple of the workers, of near-equal height, so that the
    workers' shares match: 69 tile rows in blocks of 30 (30 + 39 rows per worker with two)
    left a core idle for a quarter of the weight gradient of 64->64 @138.
    """
    block_tiles, scratch_bytes = current().winograd_block_tiles, current().winograd_scratch_bytes
    tiles_y, tiles_x = -(-ho // tile), -(-wo // tile)
    tiles = scratch_bytes // ((tile + 2) ** 2 * channels * itemsize)
    tiles = min(block_tiles[1], max(block_tiles[0], tiles))
    rows = max(1, min(-(-tiles // tiles_x), -(-tiles_y // WORKERS)))
    blocks = -(-tiles_y // rows)
    rows = -(-tiles_y // (-(-blocks // WORKERS) * WORKERS))
    return tiles_x, tiles_y, rows, [(img, tr) for img in range(n) for tr in range(0, tiles_y, rows)]


def conv3x3_forward(x, w, bias, relu):
    """act(valid 3x3 correlation of x (N, C, H, W) with w (K, C, 3, 3) + bias) -> (N, K, H-2, W-2)."""
    n, c, h, wd = x.shape
    k = w.shape[0]
    ho, wo = h - 2, wd - 2
    tiles_x, tiles_y, rows, items = block_tiling(n, ho, wo, c + k, x.itemsize)
    u = np.empty((16, k, c), x.dtype)
    filter_transform(np.ascontiguousarray(w, dtype=x.dtype), G, u)
    y = buffers.empty((n, k, ho, wo), x.dtype)

    def blocks(part):                      # one worker: its (image, first tile row) blocks
        v = buffers.empty((16, c, rows * tiles_x), x.dtype)
        m = buffers.empty((16, k, rows * tiles_x), x.dtype)
        for img, tr0 in part:
            tr1 = min(tr0 + rows, tiles_y)
            tiles = (tr1 - tr0) * tiles_x
            _input_transform(x[img], tr0, tr1, tiles_x, v)
            for xi in range(16):
                gemm(u[xi], v[xi, :, :tiles], m[xi, :, :tiles])
            _output_transform(m, bias, relu, tr0, tr1, tiles_x, y[img])

    parallel_for(blocks, items)
    return y


@njit(cache=True, nogil=True, inline="always")
def _g_t(a0, a1, a2, a3):
    """G^T (3x4) times the column (a0, a1, a2, a3)."""
    return a0 + 0.5 * (a1 + a2), 0.5 * (a1 - a2), 0.5 * (a1 + a2) + a3


@njit(parallel=True, cache=True, nogil=True)
def _filter_grad_transform(partials, gw):
    """gw[k, c] = G^T m G, m (4x4) = the sum over workers of partials[:, xi, k, c], in float64.

    In parallel over k: on one core it is a visible part of the small layers' weight gradient.
    """
    k_out, c_in = gw.shape[:2]
    for k in prange(k_out):
        m, cols = np.zeros((16, c_in)), np.empty((3, 4))
        for part in range(partials.shape[0]):
            for xi in range(16):
                m[xi] += partials[part, xi, k]
        for c in range(c_in):
            for j in range(4):              # G^T m, column by column
                cols[0, j], cols[1, j], cols[2, j] = _g_t(m[j, c], m[4 + j, c], m[8 + j, c], m[12 + j, c])
            for i in range(3):              # (G^T m) G, row by row
                gw[k, c, i, 0], gw[k, c, i, 1], gw[k, c, i, 2] = _g_t(cols[i, 0], cols[i, 1], cols[i, 2], cols[i, 3])


def conv3x3_weight_grad(x, gy_pad):
    """dL/dw (K, C, 3, 3) of a valid 3x3 convolution, from x (N, C, H, W) and gy padded by 2 on every side."""
    n, c, h, wd = x.shape
    k = gy_pad.shape[1]
    ho, wo = gy_pad.shape[2] - 4, gy_pad.shape[3] - 4
    tiles_x, tiles_y, rows, items = block_tiling(n, ho, wo, c + k, x.itemsize)

    def blocks(part):                      # one worker: its blocks, summed into its own dW^
        v = buffers.empty((16, c, rows * tiles_x), x.dtype)
        g = buffers.empty((16, k, rows * tiles_x), x.dtype)
        acc = np.zeros((16, k, c), x.dtype)
        for img, tr0 in part:
            tr1 = min(tr0 + rows, tiles_y)
            tiles = (tr1 - tr0) * tiles_x
            _input_transform(x[img], tr0, tr1, tiles_x, v)
            _grad_transform(gy_pad[img], tr0, tr1, tiles_x, g)
            for xi in range(16):
                gemm(g[xi, :, :tiles], v[xi, :, :tiles], acc[xi], trans_b=True, beta=1.0)
        return acc

    partials = np.stack(parallel_for(blocks, items))
    gw = np.empty((k, c, 3, 3), x.dtype)
    _filter_grad_transform(partials, gw)
    return gw
