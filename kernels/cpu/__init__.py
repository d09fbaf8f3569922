"""Numba CPU backend (see minunet.kernels for the contract): the default device.

Convolutions are direct register-blocked kernels (few channels), Winograd transforms around
BLAS GEMMs (from 64 channels), or BLAS GEMMs over strided views (no im2col); everything else
single fused Numba passes (``@njit(parallel=True, cache=True)``). One module per family of ops:

    blas.py         row-major GEMM with accumulation on strided views (OpenBLAS via ctypes)
    compiled_blas.py  the same GEMM called from compiled code, so blocks run on Numba's threads
    buffers.py      the cache the kernels' large outputs come from, reused across steps
    conv.py         valid convolution, forward (bias + ReLU epilogue) and backward (ReLU mask fused)
    dispatch.py     which path computes each convolution: the measured thresholds, in one object
    direct.py       the direct 3x3 convolution: register-blocked micro-kernels in LLVM IR (from conv.py)
    direct_weight_grad.py  its weight gradient: an LLVM IR reduction, and the first layer's masked one
    winograd.py     the 3x3 convolution by Winograd's F(2x2, 3x3), all three directions (from conv.py)
    winograd4.py    Winograd's F(4x4, 3x3): the forward and the input gradient from 64 channels
    vector_width.py 512-bit vectors for the kernels that ask for them
    upconv.py       stride-2 transposed convolution: GEMM + col2im, backward im2col + GEMMs
    pool.py         2x2 max pooling with uint8 argmax
    elementwise.py  ReLU, dropout (the contract's hash mask), crop-and-concatenate, gradient sums
    loss.py         fused weighted softmax cross-entropy, softmax
    optim.py        SGD with momentum, Adam
"""
import os

import numba
import numpy as np

from .. import CONTRACT
from .conv import conv2d_backward, conv2d_forward
from .elementwise import (
    add,
    crop_concat_backward,
    crop_concat_forward,
    dropout_backward,
    dropout_forward,
    relu_backward,
    relu_forward,
)
from .loss import softmax, softmax_cross_entropy
from .optim import adam_step, sgd_step
from .pool import max_pool2d_backward, max_pool2d_forward
from .upconv import conv_transpose2d_backward, conv_transpose2d_forward

# Numba's threading layer: OpenMP, with short spinning, unless the user chose a layer.
# Each parallel kernel is one parallel region, and a training step runs about 300 of them: the
# "workqueue" layer's threads sleep between regions and are slow to wake, GNU OpenMP's spin for a
# while and start the next region at once (docs/performance.md has the figures). Spinning long
# (libgomp's default) fought the BLAS worker threads of the GEMM path for the cores, so the spin
# is cut to SPIN_COUNT iterations of libgomp's wait loop, which still covers the Python between
# two kernels. libgomp reads GOMP_SPINCOUNT when it loads, so the
# threads are started here, with the variable set only meanwhile (other OpenMP runtimes in the
# process, PyTorch's for one, keep their own settings; but if something loaded the system's
# libgomp first, as `import torch` does, it keeps its default spin). Without OpenMP, workqueue.
SPIN_COUNT = 10000


def _start_threads():
    """Start Numba's worker threads on OpenMP with a short spin (workqueue if OpenMP will not load)."""
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "workqueue", "tbb"]
    numba.config.THREADING_LAYER = "default"
    user_spin = os.environ.get("GOMP_SPINCOUNT")
    if user_spin is None:
        os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    try:
        from numba.np.ufunc import parallel  # private Numba API, guarded
        parallel._launch_threads()
    except (ImportError, AttributeError):      # pragma: no cover - Numba moved it: threads start lazily
        return
    finally:
        if user_spin is None:
            os.environ.pop("GOMP_SPINCOUNT", None)


if "NUMBA_THREADING_LAYER" not in os.environ:
    _start_threads()

name = "cpu"
xp = np


def asarray(a, dtype=None):
    """A NumPy array (the CPU backend's array type)."""
    return np.asarray(a, dtype=dtype)


def to_numpy(a):
    """The array itself: CPU arrays already are NumPy arrays."""
    return np.asarray(a)


__all__ = list(CONTRACT)
