"""What a file is, in a few lines: ``minunet data info`` on anything minunet reads or writes.

A training data file, a checkpoint (its architecture and iteration), a prediction (its shape and
classes), a TIFF or PNG stack, a Zarr array or group: each is recognised by its content, not its
name, and described without reading its arrays whole.
"""
import json
from pathlib import Path

import h5py
import tifffile
from PIL import Image

from minunet.data.datafile import info as data_info
from minunet.errors import UserError
from minunet.files.hdf5 import open_h5
from minunet.files.specs import HDF5_SUFFIXES
from minunet.inference.outputs import FORMATS
from minunet.model.checkpoint import FORMAT as CHECKPOINT_FORMAT
from minunet.model.checkpoint import load_checkpoint

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
FIX = "write it again (minunet data convert, minunet train, minunet predict)"


def describe(path):
    """A multi-line description of the file or store at ``path``; UserError if minunet cannot read it."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    if path.is_dir():
        return _describe_zarr(path)
    if path.suffix.lower() in HDF5_SUFFIXES:
        with open_h5(path, "HDF5 file", FIX) as reader:
            kind = reader.attr(reader.file, "format", None)
            has_raw = "raw" in reader.file
        if kind == CHECKPOINT_FORMAT:
            return _describe_checkpoint(path)
        if has_raw:
            return data_info(path)
        return _describe_hdf5(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return _describe_image(path)
    raise UserError(f"{path}: not a file minunet reads (HDF5, TIFF, PNG or a Zarr folder)")


def _describe_checkpoint(path):
    ckpt = load_checkpoint(path)
    m = ckpt.model
    n_params = sum(int(a.size) for a in ckpt.params.values())
    config = ckpt.extra.get("config") or {}
    lines = [f"{path}: minunet checkpoint (a trained model), iteration {ckpt.iteration}",
             f"  network   depth {m.get('depth')}, width {m.get('width')}, {m.get('in_channels')} input "
             f"channel(s), {m.get('classes')} classes, {m.get('up_kernel')}x{m.get('up_kernel')} up-convolutions"
             + (", deep supervision" if m.get("deep_supervision") else ""),
             f"  weights   {n_params:,} parameters"]
    if ckpt.optimizer:
        lines.append(f"  optimiser {ckpt.optimizer.get('kind')}, lr {ckpt.optimizer.get('lr')}")
    if config:
        lines.append(f"  trained   on {config.get('data')} slices {config.get('train_slices')}, "
                     f"pad {config.get('pad', 'mirror')}, tile {config.get('tile')}")
    best = ckpt.extra.get("best_score", ckpt.extra.get("best_rand_error"))
    if best is not None:
        lines.append(f"  best      validation score {best:.4g} at iteration {ckpt.extra.get('best_iteration')}")
    lines.append(f"  use it    minunet predict --model {path} IMAGES -o probs.tif")
    return "\n".join(lines)


def _describe_hdf5(path):
    lines = [f"{path}: HDF5 file"]
    with open_h5(path, "HDF5 file", FIX) as reader:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                attrs = {key: reader.attr(obj, key, None) for key in ("model", "input")}
                lines.append("  " + _dataset_line(f"/{name}", obj.shape, obj.dtype, attrs))
        reader.file.visititems(visit)
    if len(lines) == 1:
        lines.append("  no datasets")
    return "\n".join(lines)


def _dataset_line(name, shape, dtype, attrs):
    """One dataset: shape and type, and what minunet wrote it as (a prediction's format and source)."""
    line = f"{name:<12} {' x '.join(map(str, shape))} {dtype}"
    fmt = name.strip("/").split("/")[-1]
    if attrs.get("model") is not None and fmt in FORMATS:
        what = {"foreground": "probability of class 1 per pixel", "labels": "class per pixel",
                "probs": f"probabilities of {shape[-3] if len(shape) >= 3 else '?'} classes"}[fmt]
        line += f"  minunet prediction ({what}) of {attrs.get('input')} by {attrs.get('model')}"
    return line


def _describe_image(path):
    if path.suffix.lower() == ".png":
        with Image.open(path) as image:
            return f"{path}: PNG image, {image.height} x {image.width}, mode {image.mode}"
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, dtype, axes = series.shape, series.dtype, series.axes
    except Exception as err:                  # tifffile raises many types for damaged files
        raise UserError(f"{path}: cannot read TIFF ({type(err).__name__}); is the file complete?") from None
    return f"{path}: TIFF, {' x '.join(map(str, shape))} {dtype} (axes {axes})"


def _describe_zarr(path):
    try:
        import zarr  # optional: the dask extra
    except ImportError:
        raise UserError(f"{path}: a folder; reading Zarr needs the zarr package: pip install 'minunet[dask]'") from None
    try:
        node = zarr.open(store=str(path), mode="r")
    except Exception:
        raise UserError(f"{path}: a folder, not a Zarr array or group; give a file or a .zarr store") from None
    lines = [f"{path}: Zarr {'array' if isinstance(node, zarr.Array) else 'group'}"]
    arrays = [("", node)] if isinstance(node, zarr.Array) else sorted(node.arrays())
    for name, array in arrays:
        meta = dict(array.attrs).get("minunet")
        line = (f"  {('/' + name) if name else '':<10} {' x '.join(map(str, array.shape))} {array.dtype}, "
                f"chunks {' x '.join(map(str, array.chunks))}")
        if meta:
            line += f"  minunet: {json.dumps(meta, default=str)[:160]}"
        lines.append(line)
    return "\n".join(lines)
