"""Hand-written kernels of minunet, three backends behind one contract.

Backends
--------
``reference``  plain NumPy, written for clarity; float64 is the ground truth of every test.
``cpu``        Numba (``@njit(parallel=True, cache=True)``) plus BLAS GEMM; the default device.
``cuda``       Numba CUDA kernels on CuPy arrays (or, under ``NUMBA_ENABLE_CUDASIM=1``, on
               NumPy arrays in Numba's CUDA simulator, which is how CI checks them).

Kernels know nothing of autograd: they take arrays and return arrays. The engine
(``minunet.engine.autograd``) and the ops (``minunet.engine.functional``) decide what to keep for backward.

The contract
------------
Every backend module exposes the same names with the same signatures. Layout is NCHW; float32
by default, float64 supported everywhere. Shapes: N batch, C input channels, K output channels.

Arrays
    ``name``                              the backend's name ("reference", "cpu", "cuda")
    ``xp``                                its array module (numpy or cupy)
    ``asarray(a, dtype=None)``            a backend array from a NumPy array (or scalar)
    ``to_numpy(a)``                       a NumPy array from a backend array

Valid convolution, stride 1, any kernel size (3x3 and 1x1 are used)
    ``conv2d_forward(x, w, b, relu=False) -> y``
        x (N,C,H,W), w (K,C,kh,kw), b (K,) or None  ->  y (N,K,H-kh+1,W-kw+1).
        ``relu=True`` applies ReLU in the epilogue (the bias + ReLU fusion).
    ``conv2d_backward(x, w, gy, y=None, need_gx=True) -> (gx, gw, gb)``
        Gradients for the output gradient gy. When ``y`` (the output of a ``relu=True``
        forward) is given, gy is first masked by ``y > 0``: ReLU's backward fused in.
        gx is None when ``need_gx`` is False (the first layer needs no input gradient).

Max pooling, 2x2 window, stride 2 (floor: a trailing odd row/column is dropped)
    ``max_pool2d_forward(x) -> (y, idx)``
        y (N,C,H//2,W//2); idx uint8, the argmax within each window in row-major order
        (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right); on ties the first wins.
    ``max_pool2d_backward(gy, idx, x_shape) -> gx``
        Routes each gradient to its window's argmax; zeros elsewhere.

Transposed convolution, stride 2, no padding, kernel 2x2 or 4x4 (any k >= 2 works)
    ``conv_transpose2d_forward(x, w, b) -> y``
        x (N,C,H,W), w (C,K,k,k) (PyTorch's layout), b (K,) or None
        ->  y (N,K,2(H-1)+k,2(W-1)+k): (2H,2W) for k=2, (2H+2,2W+2) for k=4.
    ``conv_transpose2d_backward(x, w, gy) -> (gx, gw, gb)``

Crop and concatenate (the U-Net's skip connection)
    ``crop_concat_forward(skip, up) -> y``
        y = concat([center_crop(skip to up's H,W), up], channel axis). The margins
        (skip size - up size) must be even; odd margins raise ValueError.
    ``crop_concat_backward(gy, skip_shape) -> (gskip, gup)``

ReLU and dropout
    ``relu_forward(x) -> y``;  ``relu_backward(gy, y) -> gx``
    ``dropout_forward(x, p, seed) -> y``;  ``dropout_backward(gy, p, seed) -> gx``
        Inverted dropout: kept values scaled by 1/(1-p). The mask is a pure function of
        (seed, flat index), see :func:`minunet.kernels.reference.dropout_keep_mask`, so every
        backend draws the same mask and backward recomputes it instead of storing it.

Fused weighted softmax cross-entropy
    ``softmax_cross_entropy(logits, labels, weights, ignore=255) -> (loss_sum, n_valid, glogits)``
        logits (N,K,H,W); labels (N,H,W) integer class ids; weights (N,H,W) or None (all 1).
        One pass gives loss_sum = -sum_x w(x) log p_{l(x)}(x) over pixels whose label is not
        ``ignore`` (a Python float), n_valid the number of those pixels (an int), and
        glogits = w(x) (p(x) - onehot(l(x))) (zero at ignored pixels), the gradient of loss_sum.
        Stable for logits of magnitude 1e4. Labels outside [0, K) other than ``ignore`` raise.
    ``softmax(logits) -> probs``  over the channel axis (for inference)

Gradient accumulation
    ``add(a, b) -> a + b``
        The elementwise sum of two arrays of one shape and dtype, as a new array: the engine
        sums the gradients of a tensor used twice (the U-Net's skip connections) with it.

Optimiser updates (in place)
    ``sgd_step(param, grad, velocity, lr, momentum, weight_decay)``
        v = momentum v - lr (g + weight_decay p);  p += v
    ``adam_step(param, grad, m, v, lr, beta1, beta2, eps, step, weight_decay)``
"""
import importlib

BACKENDS = ("reference", "cpu", "cuda")

# The contract's names: every backend module exposes each of them (tests/test_kernels.py checks).
ARRAY_NAMES = ("name", "xp", "asarray", "to_numpy")
OPS = (
    "conv2d_forward", "conv2d_backward", "max_pool2d_forward", "max_pool2d_backward",
    "conv_transpose2d_forward", "conv_transpose2d_backward", "crop_concat_forward", "crop_concat_backward",
    "relu_forward", "relu_backward", "dropout_forward", "dropout_backward",
    "softmax_cross_entropy", "softmax", "sgd_step", "adam_step", "add",
)
CONTRACT = ARRAY_NAMES + OPS


class BackendUnavailable(RuntimeError):
    """A backend cannot run here (no GPU, a missing package); the message says what to install."""


def get_backend(name):
    """The kernel module for a backend name ("reference", "cpu" or "cuda")."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return importlib.import_module(f"minunet.kernels.{name}")
