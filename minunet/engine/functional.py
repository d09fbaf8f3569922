"""The ops of the U-Net as autograd Functions over the kernel contract.

Each op calls its backend's forward kernel, saves only what its backward kernel needs (the
pooling argmax, the dropout seed, the ReLU-fused output, never a copy of an input) and returns
one gradient per tensor input. The functions at the bottom are the public, tensor-level API.
"""
from minunet.engine.autograd import Function, Tensor


class Conv2d(Function):
    """Valid stride-1 convolution with bias, optionally with ReLU fused into its epilogue."""

    def forward(self, x, w, b, relu=False):
        y = self.backend.conv2d_forward(x, w, b, relu=relu)
        self.save_for_backward(x, w, y if relu else None)
        return y

    def backward(self, grad):
        x, w, y = self.saved
        return self.backend.conv2d_backward(x, w, grad, y=y, need_gx=self.needs_input_grad[0])


class MaxPool2d(Function):
    """2x2 stride-2 max pooling; backward routes gradients through the saved argmax."""

    def forward(self, x):
        y, idx = self.backend.max_pool2d_forward(x)
        self.save_for_backward(idx, x.shape)
        return y

    def backward(self, grad):
        idx, x_shape = self.saved
        return (self.backend.max_pool2d_backward(grad, idx, x_shape),)


class ConvTranspose2d(Function):
    """Stride-2 transposed convolution ("up-convolution") with bias."""

    def forward(self, x, w, b):
        self.save_for_backward(x, w)
        return self.backend.conv_transpose2d_forward(x, w, b)

    def backward(self, grad):
        x, w = self.saved
        return self.backend.conv_transpose2d_backward(x, w, grad)


class CropConcat(Function):
    """Center-crop the skip connection to the up-sampled map and concatenate on channels."""

    def forward(self, skip, up):
        self.save_for_backward(skip.shape)
        return self.backend.crop_concat_forward(skip, up)

    def backward(self, grad):
        (skip_shape,) = self.saved
        return self.backend.crop_concat_backward(grad, skip_shape)


class ReLU(Function):
    """max(x, 0); backward needs only the output's sign."""

    def forward(self, x):
        y = self.backend.relu_forward(x)
        self.save_for_backward(y)
        return y

    def backward(self, grad):
        (y,) = self.saved
        return (self.backend.relu_backward(grad, y),)


class Dropout(Function):
    """Inverted dropout whose mask is recomputed from its seed in backward, never stored."""

    def forward(self, x, p, seed):
        self.save_for_backward(p, seed)
        return self.backend.dropout_forward(x, p, seed)

    def backward(self, grad):
        p, seed = self.saved
        return (self.backend.dropout_backward(grad, p, seed),)


class SoftmaxCrossEntropy(Function):
    """Fused weighted softmax cross-entropy; forward computes the logit gradient too."""

    def forward(self, logits, labels, weights, ignore=255, reduction="mean"):
        loss_sum, n_valid, glogits = self.backend.softmax_cross_entropy(logits, labels, weights, ignore=ignore)
        scale = 1.0 / max(n_valid, 1) if reduction == "mean" else 1.0
        self.save_for_backward(glogits, scale)
        return self.backend.xp.asarray(loss_sum * scale, dtype=logits.dtype)

    def backward(self, grad):
        glogits, scale = self.saved
        return (glogits * (grad * scale).astype(glogits.dtype),)


class Add(Function):
    """a + b for tensors of the same shape (sums of losses under deep supervision)."""

    def forward(self, a, b):
        return a + b

    def backward(self, grad):
        return grad, grad


class Scale(Function):
    """c * a for a Python number c (loss weights)."""

    def forward(self, a, c=1.0):
        self.save_for_backward(c)
        return a * a.dtype.type(c)

    def backward(self, grad):
        (c,) = self.saved
        return (grad * grad.dtype.type(c),)


# ----------------------------------------------------------------------------- tensor-level API

def conv2d(x, w, b=None, relu=False):
    """Valid convolution of x (N,C,H,W) by w (K,C,kh,kw) plus bias b (K,); ReLU fused if asked."""
    if b is None:
        b = Tensor(w.backend.xp.zeros(w.shape[0], dtype=w.dtype), device=w.device)
    return Conv2d.apply(x, w, b, relu=relu)


def max_pool2d(x):
    """2x2 max pooling with stride 2."""
    return MaxPool2d.apply(x)


def conv_transpose2d(x, w, b=None):
    """Stride-2 transposed convolution of x (N,C,H,W) by w (C,K,k,k); output 2(H-1)+k."""
    if b is None:
        b = Tensor(w.backend.xp.zeros(w.shape[1], dtype=w.dtype), device=w.device)
    return ConvTranspose2d.apply(x, w, b)


def crop_concat(skip, up):
    """[center_crop(skip), up] stacked on the channel axis (the U-Net's skip connection)."""
    return CropConcat.apply(skip, up)


def relu(x):
    """max(x, 0)."""
    return ReLU.apply(x)


def dropout(x, p, seed, training=True):
    """Zero a fraction p of x (scaling the rest) in training; the identity otherwise."""
    if not training or p <= 0:
        return x
    return Dropout.apply(x, p=float(p), seed=int(seed))


def softmax_cross_entropy(logits, labels, weights=None, ignore=255, reduction="mean"):
    """E = -sum_x w(x) log p_{l(x)}(x); ``reduction="mean"`` divides by the non-ignored pixels.

    ``labels`` (N,H,W) and ``weights`` (N,H,W) are arrays (or tensors) on the logits' device:
    they are data, not differentiated.
    """
    xp = logits.backend.xp
    labels = labels.data if isinstance(labels, Tensor) else xp.asarray(labels)
    if weights is not None:
        weights = weights.data if isinstance(weights, Tensor) else xp.asarray(weights)
        weights = weights.astype(logits.dtype, copy=False)
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', not {reduction!r}")
    return SoftmaxCrossEntropy.apply(logits, labels=labels, weights=weights, ignore=ignore, reduction=reduction)


def add(a, b):
    """a + b."""
    return Add.apply(a, b)


def scale(a, c):
    """c * a for a number c."""
    return Scale.apply(a, c=float(c))


def softmax(logits):
    """Class probabilities over the channel axis (no gradient: for inference)."""
    return Tensor(logits.backend.softmax(logits.data), device=logits.device)


