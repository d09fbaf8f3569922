"""Valid convolution as implicit GEMM: the launches behind conv2d and conv_transpose2d (kernels in gemm.py).

``igemm`` computes, for each output group g (one, or the four output parities of an
up-convolution),

    y[n, m, oh*s_out + oy0, ow*s_out + ox0] = act(bias[m] + sum_{c,i,j} a[g, m, (c,i,j)] * x[n, c, oh*s_in + i - pad_h, ow*s_in + j - pad_w])

as a GEMM with M = output channels, columns = the N*Ho*Wo output pixels and reduction R = C*kh*kw.
Neither operand is materialised: blocks stage slices of the weights and of the implicit im2col
matrix (gathered from x with zero padding at the borders) in shared memory. With different
weights, strides and offsets the same kernel computes

    conv2d forward                 a = w (K, C*kh*kw), s_in = 1, pad = 0
    conv2d backward-data           a = w flipped and transposed (C, K*kh*kw), pad = k-1 (the full correlation)
    conv_transpose2d forward       one launch, one group per output parity (upconv.py)
    conv_transpose2d backward-data a = w (C, K*k*k) as stored, s_in = 2 (a strided valid convolution)

``wgrad`` computes out[m, (c,i,j)] = sum_{n,oh,ow} g[n,m,oh,ow] * x[n, c, oh*s_in + i, ow*s_in + j],
a GEMM whose reduction runs over the pixels, split into chunks (the grid's z axis) so that large
images still fill the GPU; each block adds its tile with one atomic add per weight.

Tiles (``TILES``) are chosen per dtype and number of output rows: 128 x 128 blocks with 8 x 8
micro-tiles, 64 x 256 when there are at most 64 rows (the decoder's last layers), 64 x 64 with
4 x 4 in float64. A layer whose grid would give fewer than ``MIN_BLOCKS_PER_SM`` blocks per SM
(the bottom layers: 28-32 pixels, 512-1024 channels) splits its reduction across blocks (split-K)
and adds bias and ReLU in a second pass (``bias_act``).
"""
import functools

import numpy as np

from ..shapes import conv2d_output_hw
from . import arrays
from .arrays import ceil_div, cuda, launch
from .elementwise import relu_backward
from .gemm import Tile, igemm_kernel, wgrad_kernel

TILES = {
    "float32": Tile(bm=128, bn=128, bk=8, tm=8, tn=8),      # 256 threads, 8x8 per thread
    "float32_few_rows": Tile(bm=64, bn=256, bk=8, tm=8, tn=8),
    "float64": Tile(bm=64, bn=64, bk=8, tm=4, tn=4),        # doubles: half the registers per value
}
SM_COUNT = 132                    # SMs of the H200, the planning figure where no GPU says otherwise
MIN_BLOCKS_PER_SM = 2             # below this many blocks per SM, split the reduction (split-K)
MIN_SLICES_PER_SPLIT = 8          # ... into ranges of at least this many BK slices
MAX_SPLITS = 16
WGRAD_TARGET_BLOCKS = 1024        # split the weight gradient's pixels until about this many blocks
WGRAD_MIN_CHUNK = 256             # ... but give each block at least this many pixels
BIAS_THREADS = 256                # threads of the bias-gradient reduction (a power of 2)
BIAS_PIXELS_PER_THREAD = 16       # pixels of each image each bias-gradient thread sums
PLANE_THREADS = 256               # threads per block of the per-plane kernels (bias_act)


def tile_for(dtype, rows):
    """The block tile for a GEMM of ``rows`` output rows in dtype."""
    if dtype == np.float64:
        return TILES["float64"]
    few = TILES["float32_few_rows"]
    return few if rows <= few.bm else TILES["float32"]


@functools.lru_cache(maxsize=None)
def _device_sm_count():
    return cuda.get_current_device().MULTIPROCESSOR_COUNT


def sm_count():
    """The GPU's SM count (SM_COUNT in the simulator and without a GPU)."""
    return _device_sm_count() if arrays.available()[0] and not arrays.SIMULATOR else SM_COUNT


def split_k(blocks, r_total, bk):
    """How many reduction ranges to split a GEMM of ``blocks`` blocks into, and their length."""
    slices = ceil_div(r_total, bk)
    target = MIN_BLOCKS_PER_SM * sm_count()
    splits = 1
    if blocks < target:
        splits = max(1, min(ceil_div(target, blocks), slices // MIN_SLICES_PER_SPLIT, MAX_SPLITS))
    r_split = ceil_div(slices, splits) * bk
    return ceil_div(r_total, r_split), r_split


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
        """g (N, M, H*W): block (m, chunk) sums channel m over its chunk of every image's pixels."""
        m = cuda.blockIdx.x
        t = cuda.threadIdx.x
        p_begin = cuda.blockIdx.y * chunk
        p_end = min(p_begin + chunk, g.shape[2])
        s = zero
        for n in range(g.shape[0]):
            for p in range(p_begin + t, p_end, NT):
                s += g[n, m, p]
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


@cuda.jit
def _bias_act(planes, channels, bias, has_bias, relu, zero):
    """planes[n*M + m] = act(planes[n*M + m] + bias[m]): grid x over a plane's pixels, y over the planes."""
    plane = cuda.blockIdx.y
    b = bias[plane % channels] if has_bias else zero
    for e in range(cuda.grid(1), planes.shape[1], cuda.gridsize(1)):
        v = planes[plane, e] + b
        if relu and v < zero:
            v = zero
        planes[plane, e] = v


# ----------------------------------------------------------------------------- launches

def run_igemm(x, a, bias, y, kh, kw, s_in=1, pad=(0, 0), s_out=1, parity=False, relu=False):
    """y (=) the implicit GEMM of x with a (groups, M, R): one group, or with ``parity`` the four output
    parities of a stride-2 up-convolution (see the module docstring); split-K where the grid is small."""
    groups, m, r_total = a.shape
    ho, wo = ceil_div(y.shape[2], s_out), ceil_div(y.shape[3], s_out)      # the largest group's output
    p_total = x.shape[0] * ho * wo
    if m == 0 or p_total == 0:
        return
    tile = tile_for(x.dtype, m)
    grid_xy = (ceil_div(p_total, tile.bn), ceil_div(m, tile.bm))
    splits, r_split = split_k(grid_xy[0] * grid_xy[1] * groups, r_total, tile.bk)
    if splits > 1:
        y.fill(0)
    has_bias = bias is not None
    launch(igemm_kernel(x.dtype.name, tile), grid_xy + (groups * splits,), (tile.bn // tile.tn, tile.bm // tile.tm),
           x.reshape(-1), x.shape[0], x.shape[2], x.shape[3], tap_table(x.shape[1], kh, kw, x.shape[3], x.shape[2]),
           a, bias if has_bias else a[0, 0, :1], y, y.reshape(-1), s_in, pad[0], pad[1], s_out, parity, has_bias and splits == 1,
           relu and splits == 1, r_split)
    if splits > 1 and (has_bias or relu):
        planes = y.reshape(y.shape[0] * y.shape[1], -1)
        launch(_bias_act, (min(arrays.MAX_BLOCKS, ceil_div(planes.shape[1], PLANE_THREADS)), planes.shape[0]),
               PLANE_THREADS, planes, y.shape[1], bias if has_bias else planes[0, :1], has_bias, relu,
               y.dtype.type(0))


@functools.lru_cache(maxsize=256)
def _tap_table(c, kh, kw, wx, hx, xp_name):
    xp = arrays.array_module()
    r = xp.arange(c * kh * kw, dtype=np.int64)
    ch, i, j = r // (kh * kw), (r // kw) % kh, r % kw
    return xp.stack([ch * (hx * wx) + i * wx + j, (i << 16) | j]).astype(np.int32)


def tap_table(c, kh, kw, wx, hx):
    """(2, C*kh*kw) int32: for each reduction index r = (c, i, j), the flat offset c*H*W + i*W + j and i << 16 | j.

    The implicit GEMM looks these up instead of dividing r in its inner loop; cached per geometry.
    """
    return _tap_table(c, kh, kw, wx, hx, arrays.array_module().__name__)


def wgrad_chunk(tiles, p_total, bk):
    """Pixels per block of the weight-gradient reduction: split until the grid is large enough."""
    chunks = max(1, min(ceil_div(WGRAD_TARGET_BLOCKS, tiles), ceil_div(p_total, WGRAD_MIN_CHUNK)))
    return ceil_div(ceil_div(p_total, chunks), bk) * bk


def run_wgrad(g, x, out, kh, kw, s_in=1, chunk=None):
    """Add sum_pixels g (x) im2col(x) into out (M, C*kh*kw), which must start at zero."""
    m, r = out.shape
    p_total = g.shape[0] * g.shape[2] * g.shape[3]
    if p_total == 0 or m == 0:
        return
    tile = tile_for(g.dtype, m)
    grid_xy = (ceil_div(r, tile.bn), ceil_div(m, tile.bm))
    chunk = chunk or wgrad_chunk(grid_xy[0] * grid_xy[1], p_total, tile.bk)
    launch(wgrad_kernel(g.dtype.name, tile), grid_xy + (ceil_div(p_total, chunk),),
           (tile.bn // tile.tn, tile.bm // tile.tm), g, x.reshape(-1), x.shape[2], x.shape[3], out, kh, kw, s_in, chunk)


def bias_grad(g):
    """gb[m] = sum of g[:, m] (float accumulation per block, one atomic add per block)."""
    xp = arrays.array_module()
    out = xp.zeros(g.shape[1], dtype=g.dtype)
    pixels = g.shape[2] * g.shape[3]
    if pixels and g.shape[0] and g.shape[1]:
        chunk = BIAS_PIXELS_PER_THREAD * BIAS_THREADS
        launch(bias_grad_kernel(g.dtype.name, BIAS_THREADS), (g.shape[1], ceil_div(pixels, chunk)), BIAS_THREADS,
               g.reshape(g.shape[0], g.shape[1], pixels), out, chunk)
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
    run_igemm(x, w.reshape(1, k, c * kh * kw), None if b is None else arrays.contiguous(b), y, kh, kw, relu=relu)
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
        wt = arrays.contiguous(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)).reshape(1, c, k * kh * kw)
        gx = xp.empty(x.shape, dtype=x.dtype)
        run_igemm(gy, wt, None, gx, kh, kw, pad=(kh - 1, kw - 1))
    return gx, gw, gb
