"""Atomic writes: a reader sees either the previous file or the complete new one.

Everything minunet writes goes to a temporary name beside its destination (``.NAME.tmp-*``) and
is renamed over it when complete; on any error the temporary file is removed. A process killed in
the middle leaves at most a hidden temporary file, which :func:`remove_stale_temporaries` clears.
"""
import contextlib
import os
import tempfile
from pathlib import Path

from minunet.errors import UserError

TMP_MARK = ".tmp-"


def check_output_folder(path, option="-o"):
    """UserError unless the folder that will hold ``path`` exists and can be written."""
    path = Path(path)
    folder = path.parent
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{option} {path}: {folder} is a file, not a folder; choose another path")
    if not folder.is_dir():
        raise UserError(f"{option} {path}: output folder {folder} does not exist; create it first")
    try:                                      # the real test of writability (os.access lies for root)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise UserError(f"{option} {path}: cannot write to folder {folder} ({err.strerror}); "
                        "choose a writable folder") from None


@contextlib.contextmanager
def atomic_path(path, force=True, option="-o"):
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, else delete it.

    With ``force=False`` an existing ``path`` is refused with a UserError before any work is done.
    """
    path = Path(path)
    if path.exists() and not force:
        raise UserError(f"{option} {path}: output exists; use --force to overwrite it or choose another name")
    check_output_folder(path, option)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_MARK}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)                 # mkstemp makes 0600; give the file normal permissions
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _sync_folder(path.parent)


def atomic_h5(path, write, force=True):
    """Call ``write(h5file)`` on a temporary HDF5 file, flushed to disk, then rename it over ``path``."""
    import h5py
    with atomic_path(path, force=force) as tmp:
        with h5py.File(tmp, "w") as f:
            write(f)
            f.flush()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())


def write_tiff_atomic(path, array, **kwargs):
    """Write ``array`` as a TIFF (pages along the first axis of a 3-D array) atomically.

    Extra kwargs go to ``tifffile.imwrite`` (e.g. ``compression="zlib"``); grayscale pages
    (``minisblack``) unless a ``photometric`` is given, so a 3-slice stack is never taken for RGB.
    """
    import numpy as np
    import tifffile
    kwargs.setdefault("photometric", "minisblack")
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, np.asarray(array), **kwargs)


def remove_stale_temporaries(folder):
    """Delete the temporary files that killed writers left in ``folder``; returns their names."""
    removed = []
    for entry in Path(folder).glob(f".*{TMP_MARK}*"):
        with contextlib.suppress(OSError):
            entry.unlink()
            removed.append(entry.name)
    return removed


def _sync_folder(folder):
    """Make a rename in ``folder`` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
