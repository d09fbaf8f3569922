"""Fused weighted softmax cross-entropy (loss and logit gradient in one pass) and softmax.

One thread per pixel (a grid of images x pixels: no index division; consecutive threads read
consecutive pixels of each channel plane, coalesced): the channel maximum,
the log-sum-exp, the gradient w (p - onehot) written for every channel, and the pixel's loss.
Each block then reduces its threads' loss sums (in float64), valid-pixel counts and bad-label
counts in shared memory and writes one partial per block; the partials are summed on the device
and read back in one copy (the training step's only device-to-host transfer).
"""
import functools
import math

import numpy as np

from . import arrays
from .arrays import THREADS, blocks, cuda, launch


@functools.lru_cache(maxsize=None)
def _xent_kernel(dtype):
    ACC = getattr(np, dtype)
    zero, one = ACC(0), ACC(1)

    @cuda.jit
    def xent(logits, labels, weights, has_weights, ignore, glogits, parts):
        """logits, glogits (N, K, H*W); labels, weights (N, H*W); grid y over the images, x over their
        pixels (no index division). parts (3, blocks): each block's loss sum, valid-pixel count and
        bad-label count."""
        k_ = logits.shape[1]
        n = cuda.blockIdx.y
        t = cuda.threadIdx.x
        loss = 0.0
        count = 0
        bad = 0
        for e in range(cuda.grid(1), logits.shape[2], cuda.gridsize(1)):
            lab = np.int64(labels[n, e])
            valid = lab != ignore
            if valid and (lab < 0 or lab >= k_):
                bad += 1                       # reported by the host as a ValueError
                valid = False
            wt = zero
            if valid:
                wt = weights[n, e] if has_weights else one
            mx = logits[n, 0, e]
            for c in range(1, k_):
                mx = max(mx, logits[n, c, e])
            s = zero
            for c in range(k_):
                s += math.exp(logits[n, c, e] - mx)
            lse = math.log(s)
            for c in range(k_):
                pr = math.exp(logits[n, c, e] - mx - lse)
                if c == lab:
                    pr -= one
                glogits[n, c, e] = wt * pr
            if valid:
                loss -= np.float64(wt) * np.float64(logits[n, lab, e] - mx - lse)
                count += 1
        s_loss = cuda.shared.array(THREADS, np.float64)
        s_count = cuda.shared.array(THREADS, np.int64)
        s_bad = cuda.shared.array(THREADS, np.int64)
        s_loss[t] = loss
        s_count[t] = count
        s_bad[t] = bad
        cuda.syncthreads()
        half = THREADS // 2
        while half > 0:
            if t < half:
                s_loss[t] += s_loss[t + half]
                s_count[t] += s_count[t + half]
                s_bad[t] += s_bad[t + half]
            cuda.syncthreads()
            half //= 2
        if t == 0:
            b = cuda.blockIdx.y * cuda.gridDim.x + cuda.blockIdx.x
            parts[0, b] = s_loss[0]
            parts[1, b] = s_count[0]          # counts below 2**53: exact in float64
            parts[2, b] = s_bad[0]

    return xent


@cuda.jit
def _softmax(logits, probs, zero):
    """logits, probs (N, K, H*W); grid y over the images, x over their pixels."""
    k_ = logits.shape[1]
    n = cuda.blockIdx.y
    for e in range(cuda.grid(1), logits.shape[2], cuda.gridsize(1)):
        mx = logits[n, 0, e]
        for c in range(1, k_):
            mx = max(mx, logits[n, c, e])
        s = zero
        for c in range(k_):
            s += math.exp(logits[n, c, e] - mx)
        for c in range(k_):
            probs[n, c, e] = math.exp(logits[n, c, e] - mx) / s


def _per_image(a):
    """The (N, K, H*W) or (N, H*W) view of a contiguous (N, K, H, W) or (N, H, W) array."""
    return a.reshape(a.shape[:-2] + (a.shape[-2] * a.shape[-1],))


def softmax_cross_entropy(logits, labels, weights, ignore=255):
    """(loss_sum, n_valid, glogits) of the weighted softmax cross-entropy; see minunet.kernels."""
    arrays.require()
    n, k, h, w = logits.shape
    if labels.shape != (n, h, w):
        raise ValueError(f"softmax_cross_entropy: labels {labels.shape} do not match logits {logits.shape}")
    dt = arrays.float_dtype(logits)
    xp = arrays.array_module()
    logits, labels = arrays.contiguous(logits), arrays.contiguous(labels)
    has_weights = weights is not None
    weights = arrays.contiguous(weights.astype(dt, copy=False)) if has_weights else logits[:1, 0]
    glogits = xp.empty_like(logits)
    grid = (blocks(h * w), n)
    parts = xp.zeros((3, grid[0] * n), dtype=np.float64)
    if n * h * w:
        launch(_xent_kernel(dt.name), grid, THREADS, _per_image(logits), _per_image(labels), _per_image(weights),
               has_weights, int(ignore), _per_image(glogits), parts)
    loss, count, bad = arrays.to_numpy(parts.sum(axis=1))        # the step's one read-back to the host
    if bad:
        raise ValueError(f"softmax_cross_entropy: labels must lie in [0, {k}) or equal ignore={ignore}")
    return float(loss), int(count), glogits


def softmax(logits):
    """Softmax over the channel axis (for inference)."""
    arrays.require()
    arrays.float_dtype(logits)
    logits = arrays.contiguous(logits)
    probs = arrays.array_module().empty_like(logits)
    n, _, h, w = logits.shape
    if n * h * w:
        launch(_softmax, (blocks(h * w), n), THREADS, _per_image(logits), _per_image(probs), logits.dtype.type(0))
    return probs
