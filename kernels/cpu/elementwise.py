"""ReLU, dropout, the U-Net's crop-and-concatenate and gradient sums: single parallel passes over memory."""
import numpy as np
from numba import njit, prange

from .. import dropout_hash
from ..shapes import crop_margins
from . import buffers

# ----------------------------------------------------------------------------- ReLU

@njit(parallel=True, cache=True)
def _relu(x, y):
    for i in prange(x.size):
        y[i] = x[i] if x[i] > 0 else 0


@njit(parallel=True, cache=True)
def _relu_grad(gy, y, gx):
    for i in prange(gy.size):
        gx[i] = gy[i] if y[i] > 0 else 0


def relu_forward(x):
    """max(x, 0)."""
    x = np.ascontiguousarray(x)
    y = buffers.empty_like(x)
    _relu(x.reshape(-1), y.reshape(-1))
    return y


def relu_backward(gy, y):
    """gy where y > 0, else 0."""
    gy, y = np.ascontiguousarray(gy), np.ascontiguousarray(y)
    gx = buffers.empty_like(gy)
    _relu_grad(gy.reshape(-1), y.reshape(-1), gx.reshape(-1))
    return gx


# ----------------------------------------------------------------------------- gradient sums

@njit(parallel=True, cache=True)
def _add(a, b, out):
    for i in prange(a.size):
        out[i] = a[i] + b[i]


def add(a, b):
    """a + b as a new array, for the engine's sum of a tensor's gradients.

    Why not NumPy's ``+``: at the skip connections these are the step's largest arrays (16 x 568
    x 568 at width 16), and NumPy sums them on one core into freshly mapped pages. Arrays that
    differ in shape or dtype take NumPy's rules.
    """
    if a.shape != b.shape or a.dtype != b.dtype:
        return a + b
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    out = buffers.empty_like(a)
    _add(a.reshape(-1), b.reshape(-1), out.reshape(-1))
    return out


# ----------------------------------------------------------------------------- dropout

# The contract's hash (reference.dropout_uniform bit for bit), compiled from its one source.
dropout_uniform = njit(cache=True, inline="always")(dropout_hash.dropout_uniform)


@njit(parallel=True, cache=True)
def _dropout(x, p, keep_scale, seed, y):
    """y = x / keep_scale where the (seed, index) uniform >= p, else 0."""
    for i in prange(x.size):
        if dropout_uniform(seed, np.uint64(i)) >= p:
            y[i] = x[i] / keep_scale
        else:
            y[i] = 0


def dropout_forward(x, p, seed):
    """Inverted dropout with the contract's hash mask: kept values scaled by 1/(1-p)."""
    x = np.ascontiguousarray(x)
    if p <= 0:
        return x.copy()
    y = buffers.empty_like(x)
    # The division happens in x's dtype, as in the reference (NumPy casts 1 - p to x's dtype).
    _dropout(x.reshape(-1), float(p), x.dtype.type(1 - p), np.uint64(seed), y.reshape(-1))
    return y


def dropout_backward(gy, p, seed):
    """The same mask and scale, recomputed from the seed, applied to the gradient."""
    return dropout_forward(gy, p, seed)


# ----------------------------------------------------------------------------- crop and concatenate

@njit(parallel=True, cache=True)
def _crop_concat(skip, up, top, left, y):
    """y[:, :cs] = skip cropped at (top, left), y[:, cs:] = up: one task per output plane, whole
    rows copied (a branch per pixel between the two sources is slower)."""
    n, cs, hu, wu = skip.shape[0], skip.shape[1], up.shape[2], up.shape[3]
    cu = up.shape[1]
    for plane in prange(n * (cs + cu)):
        img, ch = plane // (cs + cu), plane % (cs + cu)
        if ch < cs:
            for r in range(hu):
                y[img, ch, r, :] = skip[img, ch, top + r, left:left + wu]
        else:
            for r in range(hu):
                y[img, ch, r, :] = up[img, ch - cs, r, :]


@njit(parallel=True, cache=True)
def _uncrop(gy, top, left, gskip):
    """gskip = gy's first channels placed at (top, left), zeros around them."""
    n, cs, hs, ws = gskip.shape
    hu, wu = gy.shape[2], gy.shape[3]
    for plane in prange(n * cs):
        img, ch = plane // cs, plane % cs
        for r in range(hs):
            for col in range(ws):
                inside = top <= r < top + hu and left <= col < left + wu
                gskip[img, ch, r, col] = gy[img, ch, r - top, col - left] if inside else 0


def crop_concat_forward(skip, up):
    """[center_crop(skip to up's H,W), up] stacked on channels, written once into a new buffer."""
    if skip.shape[0] != up.shape[0]:
        raise ValueError(f"crop_concat: batch sizes differ ({skip.shape[0]} vs {up.shape[0]})")
    top, left = crop_margins(skip.shape[2:], up.shape[2:])
    n, cs, cu = skip.shape[0], skip.shape[1], up.shape[1]
    y = buffers.empty((n, cs + cu) + tuple(up.shape[2:]), np.result_type(skip.dtype, up.dtype))
    _crop_concat(skip, up, top, left, y)
    return y


def crop_concat_backward(gy, skip_shape):
    """(gskip, gup): the skip's channels go back into its cropped window (zeros around it); gup
    is gy's other channels, a view of gy where that is contiguous (one image), else a copy."""
    n, cs, hs, ws = skip_shape
    hu, wu = gy.shape[2:]
    top, left = crop_margins((hs, ws), (hu, wu))
    gskip = buffers.empty(skip_shape, gy.dtype)
    _uncrop(gy, top, left, gskip)
    gup = gy[:, cs:]
    if not gup.flags.c_contiguous:
        gup = _copy(gup)
    return gskip, gup


def _copy(a):
    """A C-contiguous copy of ``a`` in a cached buffer."""
    out = buffers.empty(a.shape, a.dtype)
    out[...] = a
    return out
