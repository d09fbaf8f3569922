"""Reading image stacks, for every command that reads a user's images.

A *spec* names a stack of 2-D grayscale slices in one of these forms:

- a multi-page or single-page TIFF (``train-volume.tif``), a single PNG;
- a folder of PNG/TIFF slices, in natural order (``2.png`` before ``10.png``);
- a glob (``"slices/*.png"``), also in natural order;
- an HDF5 dataset ``file.h5:/raw`` (a bare ``file.h5`` means ``file.h5:/raw``).

Slices keep their stored dtype (uint8, uint16, float32...). Decoding is done by tifffile and
Pillow. Colour policy: minunet expects grayscale. An RGB(A) image whose colour channels are
identical (a gray image saved as RGB, common for masks) is reduced to one channel silently; an
image with differing channels is *refused* by default, because silently mixing channels changes
the data a microscopist meant to segment. ``rgb="luminance"`` converts instead (ITU-R 601 weights)
and warns. Palette PNGs keep their palette indices; 1-bit images become 0/255 uint8.
"""
import contextlib
import glob as globlib
import logging
import re
import warnings
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np
import tifffile
from PIL import Image

from minunet.errors import UserError
from minunet.files.hdf5 import open_h5
from minunet.files.space import check_memory
from minunet.files.specs import parse_spec

IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
RGB_POLICIES = ("refuse", "luminance")


class Slice(NamedTuple):
    """One 2-D slice of a stack: the file it lives in, a name for pairing, and its page or index.

    ``stem`` is the file stem for folders and globs (what image/label pairing uses), and
    ``"<stem>[i]"`` for page ``i`` of a multi-page TIFF or index ``i`` of an HDF5 dataset.
    """

    path: Path
    stem: str
    page: int          # page of a TIFF / index in an HDF5 dataset; 0 for single-image files


def natural_key(text):
    """Sort key that orders embedded numbers by value: ``2.png`` before ``10.png``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(text))]


def split_hdf5(spec):
    """``(file, dataset)`` if the spec names an HDF5 dataset (a bare file means ``/raw``), else None."""
    path, kind, dataset = parse_spec(spec)
    return (path, dataset or "/raw") if kind == "hdf5" else None


def _is_glob(text):
    return any(ch in text for ch in "*?[")


def _files(spec):
    """The image files a non-HDF5 spec names, in natural order; UserError when there are none."""
    text = str(spec)
    path = Path(text)
    if path.is_dir():
        files = [p for p in path.iterdir()
                 if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
        if not files:
            raise UserError(f"{path}: folder has no .png/.tif/.tiff slices; "
                            "point to the folder that holds the images")
        return sorted(files, key=lambda p: natural_key(p.name))
    if _is_glob(text) and not path.exists():
        files = [Path(p) for p in globlib.glob(text) if Path(p).is_file()
                 and Path(p).suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise UserError(f"{text}: the pattern matches no .png/.tif/.tiff file; check the path")
        return sorted(files, key=lambda p: natural_key(p.name))
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise UserError(f"{path}: unsupported file type '{path.suffix}'; "
                        "give a TIFF, a PNG, a folder of them, a glob or file.h5:/dataset")
    return [path]


class Layout(NamedTuple):
    """What a file declares before it is decoded: its 2-D slices, their size and type, and the
    bytes decoding the whole file takes."""

    pages: int
    height: int
    width: int
    dtype: np.dtype
    nbytes: int


_PNG_MODES = {"1": (np.uint8, 1), "L": (np.uint8, 1), "P": (np.uint8, 1), "LA": (np.uint8, 2),
              "PA": (np.uint8, 2), "I;16": (np.uint16, 1), "I;16B": (np.uint16, 1), "I;16L": (np.uint16, 1),
              "I": (np.int32, 1), "F": (np.float32, 1), "RGB": (np.uint8, 3), "RGBA": (np.uint8, 4)}
BLOCKWISE_ADVICE = ("for images this large, predict block-wise from an HDF5 or Zarr volume into a .zarr "
                    "output (docs/scaling.md)")


@contextlib.contextmanager
def _quiet_tifffile():
    """tifffile logs what it finds odd in a file (as warnings and errors) and carries on; minunet's
    own one-line errors say what matters, so those logs are silenced while minunet reads."""
    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _tiff_layout(path):
    """The :class:`Layout` a TIFF declares (its first series), read from its headers only."""
    try:
        with _quiet_tifffile(), tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, axes, dtype = tuple(series.shape), series.axes, np.dtype(series.dtype)
    except Exception as err:  # tifffile raises many types for corrupt files
        raise UserError(f"{path}: cannot read TIFF ({err}); is the file complete?") from None
    if "Y" not in axes or "X" not in axes:
        raise UserError(f"{path}: unexpected TIFF layout (axes {axes}); save it as grayscale pages")
    dims = [n for n, a in zip(shape, axes) if a not in "YXS"]
    nbytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    return Layout(int(np.prod(dims)) if dims else 1, shape[axes.index("Y")], shape[axes.index("X")], dtype, nbytes)


def _png_layout(path):
    """The :class:`Layout` a PNG declares in its header."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # the memory check decides
            with Image.open(path) as im:
                (width, height), mode = im.size, im.mode
    except Image.DecompressionBombError:
        raise UserError(f"{path}: declares an image of more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} million "
                        f"pixels, too large to read whole; {BLOCKWISE_ADVICE}") from None
    except Exception as err:
        raise UserError(f"{path}: cannot read image ({err}); is the file complete?") from None
    dtype, bands = _PNG_MODES.get(mode, (np.uint8, 4))
    return Layout(1, height, width, np.dtype(dtype), height * width * bands * np.dtype(dtype).itemsize)


def file_layout(path):
    """The :class:`Layout` of one TIFF or PNG file, from its headers (nothing decoded)."""
    return _tiff_layout(path) if path.suffix.lower() in (".tif", ".tiff") else _png_layout(path)


def check_decodable(path, layout):
    """UserError when decoding a file whole would not fit in memory (checked before decoding)."""
    check_memory(2 * layout.nbytes, f"{path}: a {layout.pages} x {layout.height} x {layout.width} "
                 f"{layout.dtype} image", BLOCKWISE_ADVICE)


@contextlib.contextmanager
def hdf5_dataset(path, name):
    """An HDF5 input opened through the checked reader: yields the dataset (H,W) or (N,H,W)."""
    if not path.exists():
        raise UserError(f"{path}: no such file")
    fix = f"store the image as a plain dataset and give it as {path}:/NAME"
    with open_h5(path, "HDF5 file", fix) as r:
        if r.file.get(name, getlink=True) is None:
            names = ["/" + k for k in r.members(r.file, 10000)
                     if isinstance(r.file.get(k, getlink=True), h5py.HardLink) and r.file.get(k, getclass=True) is h5py.Dataset]
            raise UserError(f"{path}: no dataset {name}; the file has {names or 'no datasets'} "
                            f"(write the input as {path}:/NAME)")
        ds = r.dataset(name, minunet_file=False)
        if ds.ndim not in (2, 3) or min(ds.shape) == 0:
            raise UserError(f"{path}:{name}: shape {ds.shape} is not (H,W) or (N,H,W); "
                            "store one grayscale slice per index")
        yield ds


def stack_layout(spec):
    """``(n, height, width, dtype)`` a spec declares, from headers only (nothing decoded)."""
    h5 = split_hdf5(spec)
    if h5 is not None:
        with hdf5_dataset(*h5) as ds:
            shape = (1,) + tuple(ds.shape) if ds.ndim == 2 else tuple(ds.shape)
            return shape + (ds.dtype,)
    layouts = [file_layout(path) for path in _files(spec)]
    first = layouts[0]
    return sum(lay.pages for lay in layouts), first.height, first.width, first.dtype


def list_slices(spec):
    """The slices a spec names, in order, as :class:`Slice` tuples, without decoding pixels.

    Used to pair images with labels by stem and to name output files after their input.
    """
    h5 = split_hdf5(spec)
    if h5 is not None:
        path, name = h5
        with hdf5_dataset(path, name) as ds:
            n = 1 if ds.ndim == 2 else ds.shape[0]
        return [Slice(path, f"{path.stem}[{i}]", i) for i in range(n)]
    out = []
    for path in _files(spec):
        n = file_layout(path).pages
        if n == 1:
            out.append(Slice(path, path.stem, 0))
        else:
            out.extend(Slice(path, f"{path.stem}[{i}]", i) for i in range(n))
    if not out:
        raise UserError(f"{spec}: the stack is empty (no pages)")
    return out


def _to_gray(array, source, rgb):
    """Reduce an (..., H, W, C) colour array to (..., H, W) under the colour policy."""
    channels = array[..., :3] if array.shape[-1] >= 3 else array[..., :1]
    first = channels[..., 0]
    if all(np.array_equal(first, channels[..., c]) for c in range(1, channels.shape[-1])):
        return first
    if rgb == "luminance":
        warnings.warn(f"{source}: colour image converted to grayscale (0.299 R + 0.587 G + 0.114 B)",
                      stacklevel=3)
        gray = channels[..., :3].astype(np.float32) @ np.float32([0.299, 0.587, 0.114])
        if np.issubdtype(array.dtype, np.integer):
            gray = np.clip(np.rint(gray), 0, np.iinfo(array.dtype).max).astype(array.dtype)
        return gray
    raise UserError(f"{source}: colour (RGB) image with differing channels; minunet expects grayscale: "
                    "save one channel or a grayscale version of it (refused rather than guessed)")


def _read_png(path, rgb):
    check_decodable(path, _png_layout(path))
    try:
        with warnings.catch_warnings(), Image.open(path) as im:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im.load()
            mode = im.mode
            if mode == "1":
                return np.asarray(im, dtype=np.uint8) * np.uint8(255)
            if mode in ("I;16", "I;16B", "I;16L"):
                return np.asarray(im).astype(np.uint16)
            if mode in ("LA", "PA"):
                im = im.getchannel(0)
            elif mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
                return _to_gray(np.asarray(im.convert("RGB") if mode not in ("RGB", "RGBA") else im),
                                path, rgb)
            array = np.asarray(im)
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"{path}: cannot read image ({err}); is the file complete?") from None
    if array.dtype == np.int32:                      # Pillow's mode "I": keep the smallest exact type
        array = array.astype(np.uint16) if array.min() >= 0 and array.max() < 65536 else array
    return array


def _read_tiff(path, rgb):
    """All slices of one TIFF as (N,H,W), once its declared size has been checked against memory."""
    check_decodable(path, _tiff_layout(path))
    try:
        with _quiet_tifffile(), tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes = series.axes
            array = series.asarray()
    except Exception as err:
        raise UserError(f"{path}: cannot read TIFF ({err}); is the file complete?") from None
    if "S" in axes:
        array = np.moveaxis(array, axes.index("S"), -1)
        axes = axes.replace("S", "") + "S"
        array = _to_gray(array, path, rgb)
        axes = axes[:-1]
    if "C" in axes and array.shape[axes.index("C")] > 1:
        raise UserError(f"{path}: multi-channel TIFF (axes {axes}, shape {array.shape}); "
                        "save the channel to segment as its own grayscale stack")
    if not axes.endswith("YX") or array.ndim < 2:
        raise UserError(f"{path}: unexpected TIFF layout (axes {axes}); save it as grayscale pages")
    return array.reshape((-1,) + array.shape[-2:])


def iter_slices(spec, rgb="refuse"):
    """Yield ``(Slice, array (H,W))`` for each slice of a spec, decoding one file at a time.

    All slices must share shape and dtype; the first one that differs is named in the error.
    Reading slice by slice lets ``data convert`` handle stacks larger than memory.
    """
    if rgb not in RGB_POLICIES:
        raise ValueError(f"rgb must be one of {RGB_POLICIES}, not {rgb!r}")
    first = None
    h5 = split_hdf5(spec)
    if h5 is not None:
        path, name = h5
        with hdf5_dataset(path, name) as ds:
            if ds.ndim == 2:
                yield Slice(path, f"{path.stem}[0]", 0), ds[()]
            else:
                for i in range(ds.shape[0]):
                    yield Slice(path, f"{path.stem}[{i}]", i), ds[i]
        return
    for path in _files(spec):
        if path.suffix.lower() == ".png":
            pages = [_read_png(path, rgb)]
            if pages[0].ndim != 2:
                raise UserError(f"{path}: unexpected image shape {pages[0].shape}; expected grayscale")
        else:
            pages = _read_tiff(path, rgb)
            if len(pages) == 0:
                raise UserError(f"{path}: the TIFF has no pages")
        for i, page in enumerate(pages):
            stem = path.stem if len(pages) == 1 else f"{path.stem}[{i}]"
            if first is None:
                first = (page.shape, page.dtype, stem)
            elif page.shape != first[0]:
                raise UserError(f"{path}: slice {stem} is {page.shape[0]}x{page.shape[1]} but "
                                f"{first[2]} is {first[0][0]}x{first[0][1]}; all slices must be the same size")
            elif page.dtype != first[1]:
                raise UserError(f"{path}: slice {stem} is {page.dtype} but {first[2]} is {first[1]}; "
                                "save all slices with the same bit depth")
            yield Slice(path, stem, i), page


def read_stack(spec, rgb="refuse"):
    """Read a whole stack as an ``(N, H, W)`` array in its stored dtype.

    ``spec``: TIFF / PNG / folder / glob / ``file.h5:/dataset`` (see the module docstring).
    ``rgb``: ``"refuse"`` (default) or ``"luminance"`` for colour images with differing channels.
    Raises UserError for missing, unreadable, empty or inconsistent inputs, and for stacks whose
    declared size does not fit in memory (checked before decoding).
    """
    n, height, width, dtype = stack_layout(spec)
    check_memory(2 * n * height * width * np.dtype(dtype).itemsize,
                 f"{spec}: {n} slice(s) of {height} x {width} {dtype}", BLOCKWISE_ADVICE)
    slices = [array for _, array in iter_slices(spec, rgb)]
    if not slices:
        raise UserError(f"{spec}: the stack is empty")
    return np.stack(slices)
