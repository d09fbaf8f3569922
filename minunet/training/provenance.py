"""What a run was made from: the data file's checksum, the library versions, JSON-able state."""
import hashlib
import platform

import numpy as np

from minunet import __version__


def file_sha256(path, chunk=1 << 20):
    """The sha256 of a file, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def versions():
    """Versions of minunet, Python and the libraries that decide the numbers."""
    out = {"minunet": __version__, "python": platform.python_version(), "numpy": np.__version__,
           "platform": platform.platform()}
    for name in ("numba", "h5py", "scipy"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            pass
    return out


def jsonable(value):
    """NumPy scalars and arrays inside a state dict as plain JSON values."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
