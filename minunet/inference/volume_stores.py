"""The stores of block-wise prediction: which jobs are block-wise, the input volume opened lazily
(Zarr, OME-Zarr or an HDF5 dataset), and the output Zarr array created or reopened for --resume.

Each finished block leaves an empty marker file ``OUTPUT/.minunet-done/<z>.<y>.<x>``; a resumed job
skips the blocks that have one and refuses an output written with other settings (:data:`RESUME_KEYS`).
"""
import contextlib
import importlib
import os
import shutil
from pathlib import Path

from minunet.data.imageio import hdf5_dataset
from minunet.errors import UserError
from minunet.files.specs import is_zarr, parse_spec
from minunet.inference import ome_zarr, outputs

DONE_DIR = ".minunet-done"          # completion markers, one empty file per finished block
RESUME_KEYS = ("input", "shape", "model", "block", "pad", "output_format", "labels")


def require(module):
    """Import an optional dependency, or a UserError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"block-wise prediction needs {module.split('.')[0]}; "
                        "install it with: pip install 'minunet[dask]'") from None


def wants_blockwise(input_spec, output):
    """Whether ``minunet predict INPUT -o OUTPUT`` is block-wise: a Zarr or HDF5 volume into a Zarr
    output, or a plain Zarr input. Images from TIFF or PNG files go into any output in memory, and so
    does an OME-Zarr image into a file."""
    zarr_in, zarr_out = is_zarr(input_spec), is_zarr(output)
    if zarr_out:
        return parse_spec(input_spec).kind != "file"
    return zarr_in and not ome_zarr.is_ome_zarr(input_spec)


def split_spec(spec):
    """(kind, path, dataset) of an input: ``x.h5[:/raw]`` -> hdf5, ``x.zarr[:/array]`` or a folder -> zarr."""
    path, kind, dataset = parse_spec(spec)
    if kind == "hdf5":
        return "hdf5", path, dataset or "/raw"
    return "zarr", path, dataset


def open_volume(spec):
    """The input as a lazy ``dask.array`` (H, W) or (Z, H, W) in its stored dtype, and a closer.

    Nothing is read until a slice is computed. UserError for a missing store or dataset, or a
    shape that is not one grayscale image or volume.
    """
    da = require("dask.array")
    kind, path, name = split_spec(spec)
    if not path.exists():
        raise UserError(f"{spec}: no such {'HDF5 file' if kind == 'hdf5' else 'Zarr store'}; "
                        "check the path (an HDF5 dataset is written file.h5:/raw)")
    if kind == "hdf5":
        files = contextlib.ExitStack()
        ds = files.enter_context(hdf5_dataset(path, name))     # checked: no links, external or virtual data
        array = da.from_array(ds, chunks=ds.chunks or "auto", lock=True, asarray=False)
        close = files.close
    elif name is None and ome_zarr.is_ome_zarr(path):     # its full-resolution level, singleton t/c dropped
        array, close = ome_zarr.open_volume(path), lambda: None  # noqa: E731
    else:
        zarr = require("zarr")
        try:
            z = zarr.open_array(store=str(path), path=(name or "").strip("/"), mode="r")
        except Exception as err:
            hint = "" if name else f"; if it is a group, name the array as {path}:/NAME"
            raise UserError(f"{spec}: not a readable Zarr array ({type(err).__name__}){hint}") from None
        array = da.from_zarr(z)
        close = lambda: None  # noqa: E731 - zarr holds no open file
    if array.ndim not in (2, 3):
        close()
        raise UserError(f"{spec}: shape {tuple(array.shape)} is neither an image (H, W) nor a volume "
                        "(Z, H, W); store one grayscale channel, slices along the first axis")
    return array, close


def output_layout(shape, classes, block, output_format):
    """(shape, chunks, dtype) of the output array for an input of ``shape`` (H, W) or (Z, H, W)."""
    out_shape, dtype = outputs.output_layout(shape, classes, output_format)
    square = (min(block, shape[-2]), min(block, shape[-1]))
    chunks = (1,) * (len(out_shape) - 2) + square
    if output_format == "probs":
        chunks = chunks[:-3] + (classes,) + square
    return out_shape, chunks, dtype


def _is_zarr_store(path):
    return any((path / name).exists() for name in ("zarr.json", ".zarray", ".zgroup"))


def prepare_output(output_path, settings, layout, resume, overwrite):
    """Create (or, with ``resume``, reopen) the output array; the set of finished block names.

    An existing output is refused without ``overwrite`` or ``resume``; ``resume`` also refuses one
    written with different settings. ``overwrite`` deletes only something that is a Zarr store.
    """
    zarr = require("zarr")
    path = Path(output_path)
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; pass one of them")
    if path.exists():
        if not _is_zarr_store(path):
            raise UserError(f"-o {path}: exists and is not a Zarr store; choose another name "
                            "(minunet deletes only its own outputs)")
        if resume:
            try:
                previous = dict(zarr.open(store=str(path), mode="r").attrs).get("minunet", {})
            except Exception:
                previous = {}
            differs = [f"{k} {previous.get(k)!r} vs {v!r}" for k, v in settings.items()
                       if k in RESUME_KEYS and previous.get(k) != v]
            if differs:
                raise UserError(f"-o {path}: cannot resume, it was written with other settings "
                                f"({'; '.join(differs)}); pass --overwrite to start again")
            done_dir = path / DONE_DIR
            return set(os.listdir(done_dir)) if done_dir.is_dir() else set()
        if not overwrite:
            raise UserError(f"-o {path}: output exists; pass --resume to finish it or --overwrite "
                            "to start again")
        shutil.rmtree(path)
    if not path.parent.is_dir():
        raise UserError(f"-o {path}: output folder {path.parent} does not exist; create it first")
    if callable(layout):                      # an OME-Zarr image: ome_zarr.create
        layout(path, settings)
    else:
        shape, chunks, dtype = layout
        zarr.create_array(store=str(path), shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
                          attributes={"minunet": settings})
    (path / DONE_DIR).mkdir()
    return set()
