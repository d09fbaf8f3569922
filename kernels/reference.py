"""The reference backend: every kernel of the contract in plain NumPy.

Written to be read and trusted, not to be fast. In float64 it is the ground truth that the
CPU and CUDA backends are tested against, and the backend on which ``pytest --gradcheck``
compares analytic gradients with finite differences. See ``minunet.kernels`` for the contract.
"""
import numpy as np

from . import dropout_hash
from .shapes import conv2d_output_hw, conv_transpose2d_output_hw, crop_margins

name = "reference"
xp = np


def asarray(a, dtype=None):
    """A NumPy array (the reference backend's array type)."""
    return np.asarray(a, dtype=dtype)


def to_numpy(a):
    """The array itself: reference arrays already are NumPy arrays."""
    return np.asarray(a)


# ----------------------------------------------------------------------------- convolution

def conv2d_forward(x, w, b, relu=False):
    """Valid, stride-1 convolution as a sum over kernel offsets of channel contractions."""
    n = x.shape[0]
    k, _, kh, kw = w.shape
    ho, wo = conv2d_output_hw(x.shape, w.shape)
    y = np.zeros((n, k, ho, wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            y += np.einsum("nchw,kc->nkhw", x[:, :, i:i + ho, j:j + wo], w[:, :, i, j], optimize=True)
    if b is not None:
        y += b[None, :, None, None]
    return np.maximum(y, 0) if relu else y


def conv2d_backward(x, w, gy, y=None, need_gx=True):
    """Input, weight and bias gradients of the valid convolution (ReLU mask applied if y given)."""
    if y is not None:
        gy = gy * (y > 0)
    k, c, kh, kw = w.shape
    ho, wo = gy.shape[2], gy.shape[3]
    gx = np.zeros_like(x) if need_gx else None
    gw = np.zeros_like(w)
    for i in range(kh):
        for j in range(kw):
            window = x[:, :, i:i + ho, j:j + wo]
            gw[:, :, i, j] = np.einsum("nkhw,nchw->kc", gy, window, optimize=True)
            if need_gx:
                gx[:, :, i:i + ho, j:j + wo] += np.einsum("nkhw,kc->nchw", gy, w[:, :, i, j], optimize=True)
    gb = gy.sum(axis=(0, 2, 3))
    return gx, gw, gb


# ----------------------------------------------------------------------------- max pooling

def _windows(x):
    """The 2x2 windows of x as a trailing axis of 4, row-major: (N, C, H//2, W//2, 4)."""
    n, c, h, w = x.shape
    ho, wo = h // 2, w // 2
    blocks = x[:, :, :2 * ho, :2 * wo].reshape(n, c, ho, 2, wo, 2)
    return blocks.transpose(0, 1, 2, 4, 3, 5).reshape(n, c, ho, wo, 4)


def max_pool2d_forward(x):
    """2x2/2 max pooling; also returns each window's argmax (first max on ties)."""
    if x.shape[2] < 2 or x.shape[3] < 2:
        raise ValueError(f"max_pool2d: input {x.shape[2]}x{x.shape[3]} is smaller than 2x2")
    win = _windows(x)
    idx = np.argmax(win, axis=-1).astype(np.uint8)
    y = np.take_along_axis(win, idx[..., None].astype(np.intp), axis=-1)[..., 0]
    return y, idx


def max_pool2d_backward(gy, idx, x_shape):
    """Each output gradient goes to the input pixel that was its window's maximum."""
    n, c, h, w = x_shape
    ho, wo = gy.shape[2], gy.shape[3]
    onehot = (np.arange(4)[None, None, None, None, :] == idx[..., None])
    win_grad = onehot * gy[..., None]                           # (N, C, Ho, Wo, 4)
    blocks = win_grad.reshape(n, c, ho, wo, 2, 2).transpose(0, 1, 2, 4, 3, 5)
    gx = np.zeros(x_shape, dtype=gy.dtype)
    gx[:, :, :2 * ho, :2 * wo] = blocks.reshape(n, c, 2 * ho, 2 * wo)
    return gx


# ----------------------------------------------------------------------------- transposed convolution

def conv_transpose2d_forward(x, w, b):
    """Stride-2 transposed convolution: every input pixel stamps a k x k kernel, 2 pixels apart."""
    n, c, h, wd = x.shape
    _, k, kh, kw = w.shape
    y = np.zeros((n, k) + conv_transpose2d_output_hw(x.shape, w.shape), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            y[:, :, i:i + 2 * h - 1:2, j:j + 2 * wd - 1:2] += np.einsum("nchw,ck->nkhw", x, w[:, :, i, j], optimize=True)
    if b is not None:
        y += b[None, :, None, None]
    return y


def conv_transpose2d_backward(x, w, gy):
    """Input, weight and bias gradients of the stride-2 transposed convolution."""
    n, c, h, wd = x.shape
    _, k, kh, kw = w.shape
    gx = np.zeros_like(x)
    gw = np.zeros_like(w)
    for i in range(kh):
        for j in range(kw):
            g = gy[:, :, i:i + 2 * h - 1:2, j:j + 2 * wd - 1:2]
            gx += np.einsum("nkhw,ck->nchw", g, w[:, :, i, j], optimize=True)
            gw[:, :, i, j] = np.einsum("nchw,nkhw->ck", x, g, optimize=True)
    gb = gy.sum(axis=(0, 2, 3))
    return gx, gw, gb


# ----------------------------------------------------------------------------- crop and concatenate

def crop_concat_forward(skip, up):
    """Center-crop the skip map to the up-sampled map's size and stack [skip, up] on channels."""
    if skip.shape[0] != up.shape[0]:
        raise ValueError(f"crop_concat: batch sizes differ ({skip.shape[0]} vs {up.shape[0]})")
    top, left = crop_margins(skip.shape[2:], up.shape[2:])
    hu, wu = up.shape[2:]
    cropped = skip[:, :, top:top + hu, left:left + wu]
    return np.concatenate([cropped, up], axis=1)


def crop_concat_backward(gy, skip_shape):
    """Split the gradient by channel; the skip's share goes back into its cropped window."""
    cs = skip_shape[1]
    hu, wu = gy.shape[2:]
    top, left = crop_margins(skip_shape[2:], (hu, wu))
    gskip = np.zeros(skip_shape, dtype=gy.dtype)
    gskip[:, :, top:top + hu, left:left + wu] = gy[:, :cs]
    return gskip, gy[:, cs:].copy()


# ----------------------------------------------------------------------------- ReLU and dropout

def relu_forward(x):
    """max(x, 0)."""
    return np.maximum(x, 0)


def add(a, b):
    """a + b, a new array: the engine's sum of two gradients of one tensor."""
    return a + b


def relu_backward(gy, y):
    """Gradient passes where the output is positive."""
    return gy * (y > 0)


def dropout_uniform(seed, index):
    """A uniform number in [0, 1) for each flat index, a pure function of (seed, index).

    The hash every backend shares (:mod:`minunet.kernels.dropout_hash`), so masks agree across
    backends and backward can recompute the mask from the seed instead of storing it.
    """
    with np.errstate(over="ignore"):
        return dropout_hash.dropout_uniform(seed, index.astype(np.uint64))


def dropout_keep_mask(shape, p, seed):
    """Boolean mask of the elements dropout keeps (uniform >= p)."""
    index = np.arange(int(np.prod(shape)), dtype=np.uint64)
    return (dropout_uniform(seed, index) >= p).reshape(shape)


def dropout_forward(x, p, seed):
    """Inverted dropout: zero a fraction p of the elements, scale the rest by 1/(1-p)."""
    if p <= 0:
        return x.copy()
    keep = dropout_keep_mask(x.shape, p, seed)
    return np.where(keep, x / (1 - p), 0).astype(x.dtype)


def dropout_backward(gy, p, seed):
    """The same mask and scale applied to the gradient."""
    return dropout_forward(gy, p, seed)


# ----------------------------------------------------------------------------- loss

def softmax(logits):
    """Softmax over the channel axis, shifted by the maximum for stability."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def softmax_cross_entropy(logits, labels, weights, ignore=255):
    """Fused weighted softmax cross-entropy: the summed loss, the pixel count, the logit gradient."""
    n, k, h, w = logits.shape
    if labels.shape != (n, h, w):
        raise ValueError(f"softmax_cross_entropy: labels {labels.shape} do not match logits {logits.shape}")
    valid = labels != ignore
    lab = np.where(valid, labels, 0).astype(np.intp)
    if lab.size and (lab.min() < 0 or lab.max() >= k):
        raise ValueError(f"softmax_cross_entropy: labels must lie in [0, {k}) or equal ignore={ignore}")
    wt = np.ones((n, h, w), dtype=logits.dtype) if weights is None else weights.astype(logits.dtype)
    wt = np.where(valid, wt, 0)
    z = logits - logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    z_label = np.take_along_axis(z, lab[:, None], axis=1)[:, 0]
    loss_sum = float(-(wt * (z_label - lse)).sum())
    p = np.exp(z - lse[:, None])
    onehot = np.arange(k)[None, :, None, None] == lab[:, None]
    glogits = (wt[:, None] * (p - onehot)).astype(logits.dtype)
    return loss_sum, int(valid.sum()), glogits


# ----------------------------------------------------------------------------- optimisers

def sgd_step(param, grad, velocity, lr, momentum, weight_decay):
    """SGD with (heavy-ball) momentum, in place: v = m v - lr (g + wd p); p += v."""
    velocity *= momentum
    velocity -= lr * (grad + weight_decay * param)
    param += velocity


def adam_step(param, grad, m, v, lr, beta1, beta2, eps, step, weight_decay):
    """Adam (with L2 weight decay added to the gradient), in place; step counts from 1."""
    g = grad + weight_decay * param
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * g * g
    m_hat = m / (1 - beta1 ** step)
    v_hat = v / (1 - beta2 ** step)
    param -= lr * m_hat / (np.sqrt(v_hat) + eps)
