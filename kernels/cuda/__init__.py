"""Numba CUDA backend (see minunet.kernels for the contract)."""
