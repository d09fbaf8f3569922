"""The names of datasets inside files: ``file.h5:/dataset`` and ``volume.zarr:/array``.

Every command reads and writes these the same way: an HDF5 file (``.h5``, ``.hdf5``, ``.hdf``)
optionally followed by ``:/path/in/file``, and a Zarr store (``.zarr``, ``.ome.zarr``) optionally
followed by ``:/array/in/group``.
"""
import re
from pathlib import Path
from typing import NamedTuple, Optional

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
_HDF5 = re.compile(r"^(.*\.(?:h5|hdf5|hdf))(?::(/.*))?$", re.IGNORECASE)
_ZARR = re.compile(r"^(.*\.zarr)/?(?::(/.*))?$", re.IGNORECASE)


class Spec(NamedTuple):
    """A parsed spec: the file or store on disk, its kind and the dataset inside (None if not named)."""

    path: Path
    kind: str                  # "hdf5", "zarr" or "file" (anything else: TIFF, PNG, a folder, a glob)
    dataset: Optional[str]


def parse_spec(spec):
    """Split ``spec`` into the file on disk, its kind and the named dataset (None when not named)."""
    text = str(spec)
    match = _HDF5.match(text)
    if match:
        return Spec(Path(match.group(1)), "hdf5", match.group(2))
    match = _ZARR.match(text.rstrip("/") if ":" not in text else text)
    if match:
        return Spec(Path(match.group(1)), "zarr", match.group(2))
    return Spec(Path(text), "file", None)


def is_zarr(spec):
    """Whether ``spec`` names a Zarr store (or an array in one)."""
    return parse_spec(spec).kind == "zarr"


def same_file(a, b):
    """Whether two specs refer to one file on disk (the output would overwrite that input)."""
    pa, pb = parse_spec(a).path, parse_spec(b).path
    try:
        return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()
    except OSError:
        return False
