"""Fused weighted softmax cross-entropy: loss and logit gradient in one pass over the pixels."""
import math

import numpy as np
from numba import njit, prange

from . import buffers


@njit(parallel=True, cache=True)
def _softmax_xent(logits, labels, weights, use_weights, ignore, grad):
    """Per pixel: shift by the max (stable at |logits| ~ 1e4), log-sum-exp, loss and gradient.

    One exp per class and one log per pixel, in float64: each class's exp is parked in ``grad``
    until the sum is known, then scaled to wt * p (computing p as exp(z - lse) took a second exp
    per class, and the kernel twice as long).
    """
    n, k, h, w = logits.shape
    loss = 0.0
    valid = 0
    for row in prange(n * h):
        img, r = row // h, row % h
        for col in range(w):
            lab = labels[img, r, col]
            if lab == ignore:
                for ch in range(k):
                    grad[img, ch, r, col] = 0
                continue
            wt = np.float64(weights[img, r, col]) if use_weights else 1.0
            top = np.float64(logits[img, 0, r, col])
            for ch in range(1, k):
                top = max(top, np.float64(logits[img, ch, r, col]))
            total = 0.0
            for ch in range(k):
                e = math.exp(np.float64(logits[img, ch, r, col]) - top)
                grad[img, ch, r, col] = e
                total += e
            scale = wt / total
            for ch in range(k):
                g = np.float64(grad[img, ch, r, col]) * scale
                if ch == lab:
                    g -= wt
                grad[img, ch, r, col] = g
            loss += -wt * (np.float64(logits[img, lab, r, col]) - top - math.log(total))
            valid += 1
    return loss, valid


def softmax_cross_entropy(logits, labels, weights, ignore=255):
    """(loss_sum, n_valid, glogits) of the weighted softmax cross-entropy; see the contract."""
    n, k, h, w = logits.shape
    if labels.shape != (n, h, w):
        raise ValueError(f"softmax_cross_entropy: labels {labels.shape} do not match logits {logits.shape}")
    bad = (labels != ignore) & ((labels < 0) | (labels >= k))
    if bad.any():
        raise ValueError(f"softmax_cross_entropy: labels must lie in [0, {k}) or equal ignore={ignore}")
    logits = np.ascontiguousarray(logits)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    use_weights = weights is not None
    weights = np.ascontiguousarray(weights) if use_weights else np.ones((1, 1, 1), logits.dtype)
    grad = buffers.empty_like(logits)
    loss, valid = _softmax_xent(logits, labels, weights, use_weights, int(ignore), grad)
    return float(loss), int(valid), grad


@njit(parallel=True, cache=True)
def _softmax(logits, probs):
    n, k, h, w = logits.shape
    for row in prange(n * h):
        img, r = row // h, row % h
        for col in range(w):
            top = logits[img, 0, r, col]
            for ch in range(1, k):
                top = max(top, logits[img, ch, r, col])
            total = 0.0
            for ch in range(k):
                e = math.exp(np.float64(logits[img, ch, r, col] - top))
                probs[img, ch, r, col] = e
                total += e
            for ch in range(k):
                probs[img, ch, r, col] = probs[img, ch, r, col] / total


def softmax(logits):
    """Softmax over the channel axis (N,K,H,W), shifted by the maximum for stability."""
    logits = np.ascontiguousarray(logits)
    probs = buffers.empty_like(logits)
    _softmax(logits, probs)
    return probs
