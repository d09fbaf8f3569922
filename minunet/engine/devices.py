"""Devices: which kernel backend a run uses, decided in one place for every command.

``cpu`` (the Numba backend, the default), ``cuda`` (Numba CUDA kernels on CuPy arrays) and
``reference`` (plain NumPy in float64 terms: slow, for tests) name kernel backends; ``auto`` is
``cuda`` when a GPU is usable and ``cpu`` otherwise, never Numba's CUDA simulator, which is a
correctness tool hundreds of times slower than the CPU backend.
"""
import ctypes.util
import os

import numpy as np

from minunet.errors import UserError
from minunet.kernels import BackendUnavailable, get_backend

DEVICES = ("auto", "cpu", "cuda", "reference")


def _no_gpu_driver():
    """True when this machine has no NVIDIA driver at all: no need to import the CUDA stack (over
    2 s of a CPU-only ``minunet predict``'s start-up) to learn that ``auto`` means the CPU."""
    driver = os.path.exists("/proc/driver/nvidia") or os.path.exists("/dev/nvidiactl")
    return not driver and ctypes.util.find_library("cuda") is None


def cuda_status():
    """(usable, description): whether CUDA kernels can run here, and the GPU or what is missing."""
    try:
        from minunet.kernels import cuda  # heavy and optional: the CUDA stack (2-3 s)
        return cuda.available()
    except Exception as err:                  # a broken CUDA install must not break the CPU path
        return False, f"the CUDA backend cannot be loaded ({err})"


def resolve_device(device, option="--device"):
    """The backend name for a requested device; UserError naming ``option`` if it cannot be used."""
    if device in ("cpu", "reference"):
        return device
    if device not in DEVICES:
        raise UserError(f"{option} {device}: unknown device; use {', '.join(DEVICES)}")
    if device == "auto" and _no_gpu_driver():
        return "cpu"
    usable, what = cuda_status()
    if device == "auto":
        return "cuda" if usable and "simulator" not in what.lower() else "cpu"
    if not usable:
        raise UserError(f"{option} cuda: no usable GPU here (missing: {what}); use {option} cpu, "
                        "or pip install 'minunet[cuda]' on a machine with an NVIDIA GPU")
    return device


def to_device(array, device):
    """A contiguous backend array of ``device`` holding a NumPy array's values."""
    try:
        return get_backend(device).asarray(np.ascontiguousarray(array))
    except BackendUnavailable as err:
        raise UserError(str(err)) from None
