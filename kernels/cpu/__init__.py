"""Numba CPU backend (see minunet.kernels for the contract)."""
