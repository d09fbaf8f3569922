"""Numba CPU backend (see minunet.kernels for the contract): the default device.

Convolutions are BLAS GEMMs over strided views (no im2col) or, with many channels, Winograd
transforms around BLAS GEMMs, or direct Numba loops with few channels; everything else single
fused Numba passes (``@njit(parallel=True, cache=True)``). One module per family of ops:

    blas.py         row-major GEMM with accumulation on strided views (OpenBLAS via ctypes)
    buffers.py      the cache the kernels' large outputs come from, reused across steps
    conv.py         valid convolution, forward (bias + ReLU epilogue) and backward (ReLU mask fused)
    winograd.py     the 3x3 convolution by Winograd's F(2x2, 3x3), for many channels (from conv.py)
    upconv.py       stride-2 transposed convolution: GEMM + col2im, backward im2col + GEMMs
    pool.py         2x2 max pooling with uint8 argmax
    elementwise.py  ReLU, dropout (the contract's hash mask), crop-and-concatenate
    loss.py         fused weighted softmax cross-entropy, softmax
    optim.py        SGD with momentum, Adam
"""
import os

import numba
import numpy as np

from .conv import conv2d_backward, conv2d_forward
from .elementwise import (crop_concat_backward, crop_concat_forward, dropout_backward, dropout_forward,
                          relu_backward, relu_forward)
from .loss import softmax, softmax_cross_entropy
from .optim import adam_step, sgd_step
from .pool import max_pool2d_backward, max_pool2d_forward
from .upconv import conv_transpose2d_backward, conv_transpose2d_forward

# Set before the first parallel kernel runs, unless the user chose a layer. Numba's "workqueue"
# threads sleep between parallel regions; the OpenMP layer's threads spin after each region and
# fight OpenBLAS's spinning threads for the cores: small kernels run between GEMMs became up to
# 10x slower. (workqueue does not allow parallel kernels called from several threads at once.)
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

name = "cpu"
xp = np


def asarray(a, dtype=None):
    """A NumPy array (the CPU backend's array type)."""
    return np.asarray(a, dtype=dtype)


def to_numpy(a):
    """The array itself: CPU arrays already are NumPy arrays."""
    return np.asarray(a)


__all__ = [
    "name", "xp", "asarray", "to_numpy",
    "conv2d_forward", "conv2d_backward", "max_pool2d_forward", "max_pool2d_backward",
    "conv_transpose2d_forward", "conv_transpose2d_backward", "crop_concat_forward", "crop_concat_backward",
    "relu_forward", "relu_backward", "dropout_forward", "dropout_backward",
    "softmax_cross_entropy", "softmax", "sgd_step", "adam_step",
]
