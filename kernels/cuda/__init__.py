"""Numba CUDA backend (see minunet.kernels for the contract): hand-written kernels on CuPy arrays.

On a GPU the arrays are CuPy arrays and the kernels (``numba.cuda.jit``) run on them in place
through ``__cuda_array_interface__``. With ``NUMBA_ENABLE_CUDASIM=1`` (set before numba is
imported) the same kernels run in Numba's CUDA simulator on NumPy arrays: that is how CI checks
them without a GPU. Without either, importing this module still works; :func:`available` says
what is missing and every kernel raises :class:`minunet.kernels.BackendUnavailable`, one line saying what to install.

    arrays.py       availability, CuPy/NumPy arrays, launches on CuPy's stream
    gemm.py         the two GEMM kernels of every convolution: implicit GEMM and weight gradient
    conv.py         convolution launches (tiles, split-K), bias gradient; compile_check.py: resource report
    upconv.py       stride-2 transposed convolution on the kernels of conv.py
    pool.py         2x2 max pooling with uint8 argmax
    elementwise.py  ReLU, dropout (the contract's hash mask), crop-and-concatenate
    loss.py         fused weighted softmax cross-entropy, softmax
    optim.py        SGD with momentum, Adam
"""
from .. import CONTRACT, OPS
from .arrays import array_module, asarray, available, cuda, synchronize, to_numpy

name = "cuda"

__all__ = [*CONTRACT, "available", "synchronize"]

if cuda is not None:
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
else:                                   # no numba-cuda: every kernel explains what to install
    from .arrays import require as _require

    def _missing(op):
        def kernel(*args, **kwargs):
            _require()
        kernel.__name__ = op
        kernel.__doc__ = f"{op}: needs numba-cuda (pip install 'minunet[cuda]')."
        return kernel

    for _op in OPS:
        globals()[_op] = _missing(_op)


def __getattr__(attr):
    """``xp``: CuPy on a GPU, NumPy under the simulator; resolved on first use, not at import."""
    if attr == "xp":
        return array_module()
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
