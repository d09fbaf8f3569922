"""Atomic writes: a reader sees either the previous file or the complete new one.

Everything minunet writes goes to a temporary name beside its destination (``.NAME.tmp-*``) and
is renamed over it when complete; on any error the temporary file is removed. A process killed in
the middle leaves at most a hidden temporary file, which :func:`remove_stale_temporaries` clears.
"""
import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from minunet.errors import UserError
from minunet.files.oserrors import reason, where, write_error
from minunet.files.reserved import ReservedFile
from minunet.files.space import check_free_space

TMP_MARK = ".tmp-"


def check_output_folder(path, option="-o"):
    """UserError unless the folder that will hold ``path`` exists and can be written."""
    path = Path(path)
    folder = path.parent
    existing = next((p for p in [folder, *folder.parents] if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UserError(f"{where(option, path)}: {existing} is a file, not a folder; choose another path")
    if not folder.is_dir():
        raise UserError(f"{where(option, path)}: output folder {folder} does not exist; create it first")
    _check_writable(folder, path, option)


def check_folder_creatable(folder, option):
    """UserError unless ``folder`` exists as a writable folder or can be created (its nearest
    existing ancestor is a writable folder): checked before a job starts writing into it."""
    folder = Path(folder)
    existing = next((p for p in [folder, *folder.parents] if p.exists()), Path("."))
    if not existing.is_dir():
        raise UserError(f"{where(option, folder)}: {existing} is a file, not a folder; choose another path")
    _check_writable(existing, folder, option)


def _check_writable(folder, path, option):
    try:                                      # the real test of writability (os.access lies for root)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise UserError(f"{where(option, path)}: cannot write to folder {folder} ({reason(err)}); "
                        "choose a writable folder") from None


def h5_size_bound(nbytes):
    """An upper bound of the size of an HDF5 file holding ``nbytes`` of arrays: their bytes, 2% for
    chunk indexes, checksums and compression that does not compress, and 256 KiB of metadata (a
    checkpoint's 140 datasets take under 80 KiB). Should a file outgrow it, its write still fails
    cleanly (:mod:`minunet.files.reserved`)."""
    return int(nbytes) + int(nbytes) // 50 + (256 << 10)


@contextlib.contextmanager
def atomic_path(path, force=True, option="-o", reserve=0):
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, else delete it.

    With ``force=False`` an existing ``path`` is refused with a UserError before any work is done;
    ``reserve`` (bytes the file will need) is checked against the free space first. An OSError
    while writing (a full disk, a read-only file system) becomes a one-line UserError.
    """
    path = Path(path)
    if path.exists() and not force:
        raise UserError(f"{where(option, path)}: output exists; use --force to overwrite it or choose another name")
    check_output_folder(path, option)
    if reserve:
        check_free_space(path, reserve, option)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_MARK}", dir=path.parent)
    except OSError as err:
        raise write_error(path, err, option) from None
    os.close(fd)
    tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)             # mkstemp makes 0600; give the file normal permissions
        yield tmp
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(err, OSError) and getattr(err, "filename", None) in (None, str(tmp), str(path)):
            raise write_error(path, err, option) from None
        raise
    _sync_folder(path.parent)


@contextlib.contextmanager
def atomic_h5_file(path, nbytes=0, force=True, option="-o", keep_existing=False):
    """Yield a new HDF5 file (an h5py.File) that replaces ``path`` when the block ends cleanly.

    ``nbytes``: the bytes of the arrays it will hold; the space is reserved before HDF5 writes
    (:mod:`minunet.files.reserved`), so a full disk is a one-line error, never a half-written file
    or a crash in the HDF5 library. ``keep_existing``: start from a copy of ``path`` (its other
    datasets are kept).
    """
    import h5py  # lazy: `minunet predict --help` imports this module
    path = Path(path)
    reserve = h5_size_bound(nbytes)
    existing = path.stat().st_size if keep_existing else 0
    with atomic_path(path, force=force, option=option, reserve=reserve + existing) as tmp:
        if keep_existing:
            shutil.copyfile(path, tmp)
        sink = ReservedFile(tmp, reserve, keep=keep_existing)
        try:
            with h5py.File(sink, "r+" if keep_existing else "w") as f:
                yield f
        finally:
            error = sink.finish()
        if error is not None:
            raise error


def atomic_h5(path, write, force=True, nbytes=0, option="-o"):
    """Call ``write(h5file)`` on a temporary HDF5 file, synced to disk, then rename it over ``path``.

    ``option`` names the command-line option that chose ``path`` in messages (None: the path alone).
    """
    with atomic_h5_file(path, nbytes, force=force, option=option) as f:
        write(f)


def write_tiff_atomic(path, array, **kwargs):
    """Write ``array`` as a TIFF (pages along the first axis of a 3-D array) atomically.

    Extra kwargs go to ``tifffile.imwrite`` (e.g. ``compression="zlib"``); grayscale pages
    (``minisblack``) unless a ``photometric`` is given, so a 3-slice stack is never taken for RGB.
    """
    import tifffile  # lazy: `minunet predict --help` imports this module
    kwargs.setdefault("photometric", "minisblack")
    array = np.asarray(array)
    with atomic_path(path, reserve=array.nbytes + (1 << 20)) as tmp:
        tifffile.imwrite(tmp, array, **kwargs)


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
