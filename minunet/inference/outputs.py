"""What a prediction writes: the output formats, their arrays, and the files that hold them.

Formats (``--output-format``):

- ``foreground``: float32 probability of class 1 per pixel (the ISBI 2012 submission format:
  1 is cell, 0 membrane); the default for a two-class model.
- ``labels``: uint8 argmax class per pixel; the default for more classes.
- ``probs``: float32 probability of every class, with a class axis before the image axes.

Files: a TIFF (``.tif``, ``.tiff``; pages along the first axis), a dataset in an HDF5 file
(``out.h5`` or ``out.h5:/name``; the other datasets of an existing file are kept) or a Zarr array
(``out.zarr``). Every write is atomic: a reader sees the old file or the complete new one.
"""
import shutil
from pathlib import Path

import numpy as np

from minunet.errors import UserError
from minunet.files.atomic import atomic_h5, atomic_h5_file, check_output_folder, h5_size_bound, write_tiff_atomic
from minunet.files.hdf5 import open_h5
from minunet.files.oserrors import write_error
from minunet.files.space import check_free_space
from minunet.files.specs import parse_spec, same_file

FORMATS = ("foreground", "labels", "probs")
TIFF_SUFFIXES = (".tif", ".tiff")


def default_format(classes, ome=False):
    """Every class's probability for an OME-Zarr image (viewers show the classes as channels); else
    class 1's probability (the ISBI format) for two classes and the class map for more."""
    if ome:
        return "probs"
    return "foreground" if classes == 2 else "labels"


def check_format(output_format, option="--output-format"):
    """The format name itself, or a UserError naming the choices."""
    if output_format not in FORMATS:
        raise UserError(f"{option} {output_format}: use one of {', '.join(FORMATS)}")
    return output_format


def format_probabilities(probs, output_format, class_axis=0):
    """The array a format stores, from class probabilities with the class axis at ``class_axis``."""
    if output_format == "foreground":
        return np.take(probs, 1, axis=class_axis)
    if output_format == "labels":
        return probs.argmax(axis=class_axis).astype(np.uint8)
    return probs


def output_layout(shape, classes, output_format):
    """(shape, dtype) of a format's array for an image of ``shape`` (..., H, W)."""
    if output_format == "probs":
        return tuple(shape[:-2]) + (classes,) + tuple(shape[-2:]), np.float32
    return tuple(shape), np.uint8 if output_format == "labels" else np.float32


def check_output(spec, inputs, force, option="-o"):
    """Refuse, before any work, an output that exists (without ``force``), that is one of the
    ``inputs`` (the model included), whose type is unknown, or whose folder cannot be written."""
    path, kind, _ = parse_spec(spec)
    if kind == "file" and path.suffix.lower() not in TIFF_SUFFIXES:
        raise UserError(f"{option} {spec}: unsupported output type; end the name in .tif, .tiff, .h5 "
                        "(optionally .h5:/dataset) or .zarr")
    check_not_input(spec, inputs, option)
    if path.is_dir() and kind != "zarr":
        raise UserError(f"{option} {spec}: is a folder; name an output file such as {path / 'probs.tif'}")
    if path.exists() and not force and kind != "hdf5":
        raise UserError(f"{option} {spec}: output exists; pass --force to overwrite it or choose another name")
    check_output_folder(path, option)


def check_not_input(spec, inputs, option="-o"):
    """Refuse an output that is one of the command's inputs (the model included)."""
    for given in inputs:
        if same_file(spec, given):
            raise UserError(f"{option} {spec}: is an input of this command ({given}); write the output "
                            "to another file")


def check_output_space(spec, nbytes):
    """UserError before the work when the output's disk lacks room for ``nbytes`` (plus, for an
    existing HDF5 file, the copy of it that the atomic write makes)."""
    path, kind, _ = parse_spec(spec)
    existing = path.stat().st_size if kind == "hdf5" and path.is_file() else 0
    check_free_space(path, h5_size_bound(nbytes) + existing)


def write_output(spec, array, output_format, meta, force=False):
    """Write ``array`` atomically to a TIFF, an HDF5 dataset or a Zarr array, as ``spec`` says."""
    path, kind, dataset = parse_spec(spec)
    if kind == "hdf5":
        _write_hdf5_dataset(path, dataset or f"/{output_format}", array, meta, force)
    elif kind == "zarr":
        _write_zarr(path, array, meta)
    else:
        write_tiff_atomic(path, array, photometric="minisblack")   # never guessed as RGB


def _write_hdf5_dataset(path, name, array, meta, force):
    """Put one dataset into an HDF5 file: a new file, or a copy of the existing one with that
    dataset added (or replaced, with ``force``), renamed over it; its other datasets are kept."""
    if path.exists():
        fix = "choose another output file"
        with open_h5(path, "HDF5 file", fix) as r:
            exists = r.file.get(name, getlink=True) is not None
        if exists and not force:
            raise UserError(f"-o {path}:{name}: the dataset exists; pass --force to replace it or name "
                            f"another dataset ({path}:/NAME)")
        with atomic_h5_file(path, array.nbytes, keep_existing=True) as f:
            if name in f:
                del f[name]
            _create(f, name, array, meta)
        return

    def write(f):
        _create(f, name, array, meta)
    atomic_h5(path, write, nbytes=array.nbytes)


def _create(f, name, array, meta):
    ds = f.create_dataset(name, data=array, compression="gzip", fletcher32=True)
    for key, value in meta.items():
        ds.attrs[key] = value


def _write_zarr(path, array, meta):
    """A Zarr array written beside ``path`` and moved onto it when complete."""
    try:
        import zarr  # optional: the dask extra
    except ImportError:
        raise UserError(f"-o {path}: writing Zarr needs the zarr package: pip install 'minunet[dask]'") from None
    tmp = path.with_name(f".{path.name}.tmp-write")
    shutil.rmtree(tmp, ignore_errors=True)
    check_free_space(path, array.nbytes + (1 << 20))
    try:
        z = zarr.create_array(store=str(tmp), shape=array.shape, dtype=array.dtype,
                              chunks=tuple(min(s, 1 if i < array.ndim - 2 else 1024) for i, s in enumerate(array.shape)))
        z[...] = array
        z.attrs["minunet"] = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in meta.items()}
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            raise write_error(path, err) from None
        raise


def describe(spec, array, output_format):
    """One line saying what was written."""
    path, _, dataset = parse_spec(spec)
    where = f"{path}{dataset or ''}"
    return f"wrote {where}: {output_format} {array.dtype} {'x'.join(map(str, array.shape))}"


def output_path(spec):
    """The file or store on disk that ``spec`` names."""
    return Path(parse_spec(spec).path)
