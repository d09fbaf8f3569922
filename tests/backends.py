"""Which kernel backends can run here, for tests that loop over them."""
import importlib


def cpu_ready():
    """Whether the Numba CPU backend implements the contract (it is the default device)."""
    try:
        module = importlib.import_module("minunet.kernels.cpu")
    except ImportError:
        return False
    return hasattr(module, "conv2d_forward")


def fast_device():
    """The fastest backend that runs on this machine without a GPU."""
    return "cpu" if cpu_ready() else "reference"
