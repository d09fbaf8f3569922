"""The dropout mask's hash: one function that every backend compiles from this source.

A uniform number in [0, 1) per element, a pure function of (seed, flat index): SplitMix64 of
``seed * golden + index``, whose top 24 bits become the number. Written with NumPy ``uint64``
scalars only, so that the reference calls it on whole index arrays, the CPU backend compiles it
with ``numba.njit`` and the CUDA backend with ``cuda.jit(device=True)``: the masks agree bit for bit
across backends, and backward recomputes the mask from the seed instead of storing it.
"""
import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX1 = np.uint64(0xBF58476D1CE4E5B9)
MIX2 = np.uint64(0x94D049BB133111EB)
SHIFT1, SHIFT2, SHIFT3 = np.uint64(30), np.uint64(27), np.uint64(31)
KEEP_BITS = np.uint64(40)                  # 64 - 24: the top 24 bits make the number
UNIT = 1.0 / (1 << 24)


def dropout_uniform(seed, index):
    """A float64 in [0, 1) for (seed, index); uint64 arithmetic wraps modulo 2**64 by design."""
    z = np.uint64(seed) * GOLDEN + np.uint64(index)
    z = (z ^ (z >> SHIFT1)) * MIX1
    z = (z ^ (z >> SHIFT2)) * MIX2
    z = z ^ (z >> SHIFT3)
    return np.float64(z >> KEEP_BITS) * UNIT
