"""Whether the CPU kernels' compiled code is already on disk (Numba's cache, ``cache=True``).

A fresh install compiles every kernel on its first use, which takes tens of seconds; the commands
say so before they start instead of appearing to hang.
"""
import os

from numba.core.registry import CPUDispatcher

from . import (
    compiled_blas,
    conv,
    direct,
    direct_weight_grad,
    elementwise,
    loss,
    optim,
    pool,
    upconv,
    winograd,
    winograd4,
)

COLD_COMPILE_S = (20, 60)         # the range of a first run's compilation on 2-4 cores


def _cache_folders():
    """(module file stem, Numba cache folder) of each kernel module with cached kernels."""
    for module in (compiled_blas, conv, direct, direct_weight_grad, elementwise, loss, optim, pool, upconv, winograd,
                   winograd4):
        for value in vars(module).values():
            if isinstance(value, CPUDispatcher) and getattr(value, "_cache", None) is not None:
                yield os.path.splitext(os.path.basename(module.__file__))[0], value._cache._cache_path
                break


def cache_is_warm():
    """True when every kernel module has compiled code in Numba's cache (the helpers that are
    only inlined into other kernels never get an index of their own, so modules are checked,
    not functions)."""
    for stem, folder in _cache_folders():
        try:
            names = os.listdir(folder)
        except OSError:
            return False
        if not any(n.startswith(stem + ".") and n.endswith(".nbi") for n in names):
            return False
    return True
