"""minunet's HDF5 data format: what a data file holds, how it is checked and read.

File layout (``docs/data-format.md``; ``FORMAT_VERSION`` 1)::

    /raw      (N, H, W)  uint8 | uint16 | float32   the images
    /labels   (N, H, W)  uint8                      class ids 0..n_classes-1   (absent: --no-labels)
    /weights  (N, H, W)  float32                    border weight maps (minunet.data.weights)
    attrs: format_version, n_classes, class_names, class_values, class_weights, w0, sigma,
           source_images, source_labels, created_by

Normalisation (:func:`normalize`, used by training *and* prediction): uint8 / 255, uint16 / 65535,
float data as is; always float32.
"""
import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minunet.data.slices import parse_slices
from minunet.errors import UserError
from minunet.files.hdf5 import open_h5, row_blocks
from minunet.files.space import check_memory

FORMAT_VERSION = 1
UNLABELLED = 255                 # a label value that means "no label here": no loss, not scored
RAW_DTYPES = (np.uint8, np.uint16, np.float32)


def normalize(raw):
    """Raw pixels -> float32 network input: uint8 / 255, uint16 / 65535, float as is.

    The one place this rule lives, so that prediction sees what training saw.
    """
    raw = np.asarray(raw)
    if raw.dtype == np.uint8:
        return raw.astype(np.float32) / np.float32(255)
    if raw.dtype == np.uint16:
        return raw.astype(np.float32) / np.float32(65535)
    if raw.dtype.kind == "f":
        return raw.astype(np.float32, copy=False)
    if raw.dtype.kind in "iub":
        info = np.iinfo(raw.dtype) if raw.dtype.kind != "b" else None
        scale = 1.0 if info is None else float(info.max)
        return raw.astype(np.float32) / np.float32(scale)
    raise UserError(f"images of type {raw.dtype} are not supported; save them as uint8, uint16 or float32")


def default_class_names(n):
    """Class names when none are given: membrane/cell for 2 classes (EM data: class 0 is the
    membrane, class 1 the cell interior, as ISBI 2012 labels them), class0.. otherwise."""
    return ["membrane", "cell"] if n == 2 else [f"class{i}" for i in range(n)]


@dataclass
class DatasetInfo:
    """What :func:`open_dataset` learned about a data file (the file itself is closed again)."""

    path: Path
    n_slices: int
    height: int
    width: int
    dtype: str
    has_labels: bool
    has_weights: bool
    n_classes: int
    class_names: list = field(default_factory=list)
    attrs: dict = field(default_factory=dict)

    @property
    def shape(self):
        """(N, H, W) of /raw."""
        return (self.n_slices, self.height, self.width)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_text_list(value):
    return isinstance(value, list) and all(isinstance(v, str) and len(v) <= 4096 for v in value)


# the attributes minunet reads, each with its check (any other attribute is never read)
ATTRIBUTES = {
    "format_version": lambda v: isinstance(v, int) and 1 <= v,
    "n_classes": lambda v: isinstance(v, int) and 0 <= v <= 255,
    "class_names": _is_text_list,
    "class_values": lambda v: isinstance(v, str),
    "class_weights": lambda v: isinstance(v, list) and all(_is_number(w) and w >= 0 for w in v),
    "w0": _is_number,
    "sigma": _is_number,
    "background": lambda v: isinstance(v, int),
    "source_images": _is_text_list,
    "source_labels": _is_text_list,
    "created_by": lambda v: isinstance(v, str),
}
FIX = "make it with `minunet data convert` or `minunet data synth` (docs/data-format.md)"


def _attributes(r):
    """The known attributes of the file, each checked (a one-element list may be stored as a scalar)."""
    attrs = {}
    for name, ok in ATTRIBUTES.items():
        value = r.attr(r.file, name, None)
        if value is None:
            continue
        if name in ("class_names", "class_weights", "source_images", "source_labels") and not isinstance(value, list):
            value = [value]
        if not ok(value):
            r.fail(f"attribute '{name}' holds an invalid value ({str(value)[:60]})")
        attrs[name] = value
    r.verify_attributes(r.file, list(ATTRIBUTES))
    return attrs


@contextlib.contextmanager
def _reader(path):
    """The data file open through the checked reader (:mod:`minunet.files.hdf5`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file; make one with `minunet data convert` or `minunet data synth`")
    with open_h5(path, "data file", FIX) as r:
        yield r


def _describe(r):
    """Check the layout of an open data file (nothing read but one slice of labels, in blocks)."""
    attrs = _attributes(r)
    version = attrs.get("format_version", FORMAT_VERSION)
    if version > FORMAT_VERSION:
        r.fail(f"format_version {version} is newer than this minunet reads ({FORMAT_VERSION})", "update minunet")
    if r.file.get("raw", getlink=True) is None:
        r.fail("no /raw dataset; is this a minunet data file? (see docs/data-format.md)")
    raw = r.dataset("/raw", dtypes=RAW_DTYPES)
    if raw.ndim != 3 or min(raw.shape) == 0:
        r.fail(f"/raw has shape {raw.shape}; expected (N, H, W) with N, H, W >= 1")
    labels = r.dataset("/labels", required=False)
    weights = r.dataset("/weights", required=False)
    n_classes = attrs.get("n_classes", 0 if labels is None else 2)
    for ds, dtype in ((labels, np.uint8), (weights, np.float32)):
        if ds is not None and ds.shape != raw.shape:
            r.fail(f"{ds.name} has shape {ds.shape} but /raw {raw.shape}", "reconvert the data")
        if ds is not None and ds.dtype != dtype:
            r.fail(f"{ds.name} is {ds.dtype}; expected {np.dtype(dtype)}", "reconvert the data")
    if labels is not None:
        top = max(int(block.max()) for block in row_blocks(labels, 0))
        if top >= n_classes:
            r.fail(f"/labels holds class {top} but attribute n_classes is {n_classes}", "reconvert the data")
    names = attrs.get("class_names") or default_class_names(n_classes)
    return DatasetInfo(r.path, raw.shape[0], raw.shape[1], raw.shape[2], str(raw.dtype), labels is not None,
                       weights is not None, n_classes, list(names), attrs)


def open_dataset(path):
    """Validate a minunet data file and describe it (:class:`DatasetInfo`).

    Through :mod:`minunet.files.hdf5`: no links, external or virtual storage; /raw (N,H,W) of a
    supported type, /labels and /weights (if present) of its shape and their types, labels of the
    first slice below n_classes, known attributes of the right types, the attribute checksum when
    the file has one, a format version this minunet reads. Every problem is a one-line UserError.
    """
    with _reader(path) as r:
        return _describe(r)


def check_labels(labels, n_classes, where):
    """UserError when class ids at or above ``n_classes`` appear (a crafted or damaged file);
    ``UNLABELLED`` (255) marks pixels without a label, which carry no loss."""
    if not labels.size:
        return
    top = int(np.where(labels == UNLABELLED, 0, labels).max())
    if top >= n_classes:
        raise UserError(f"{where}: /labels holds class {top} but the file has {n_classes} "
                        "classes; reconvert the data")


def check_finite(image, where, fix="replace them (e.g. with 0) or mask them before using the image"):
    """UserError when a float image holds NaN or infinite values (they would poison every result)."""
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        bad = int(np.count_nonzero(~np.isfinite(image)))
        raise UserError(f"{where}: {bad} pixel(s) are NaN or infinite; {fix}")


def info(path):
    """A human-readable multi-line summary of a data file (what ``minunet data info`` prints)."""
    with _reader(path) as r:
        d = _describe(r)
        lines = [f"{d.path}: minunet data, format version {d.attrs.get('format_version', '?')}",
                 f"  raw       {d.n_slices} x {d.height} x {d.width} {d.dtype}"]
        if d.has_labels:
            labels = r.file["labels"]
            counts = np.zeros(max(d.n_classes, 1), np.int64)
            for i in range(d.n_slices):
                for block in row_blocks(labels, i):
                    counts += np.bincount(block.ravel(), minlength=len(counts))[:len(counts)]
            total = counts.sum()
            lines.append(f"  labels    {d.n_classes} classes")
            for k, name in enumerate(d.class_names[:d.n_classes]):
                lines.append(f"    {k}  {name:<14} {100.0 * counts[k] / total:5.1f} % of pixels")
        else:
            lines.append("  labels    none (unlabeled, converted with --no-labels)")
        if d.has_weights:
            w = next(row_blocks(r.file["weights"], 0))
            lines.append(f"  weights   w0 = {d.attrs.get('w0', '?')}, sigma = {d.attrs.get('sigma', '?')} px; "
                         f"slice 0 (first rows): min {w.min():.3g}, mean {w.mean():.3g}, max {w.max():.3g}")
    sources = d.attrs.get("source_images")
    if sources:
        shown = ", ".join(map(str, sources[:3])) + (", ..." if len(sources) > 3 else "")
        lines.append(f"  sources   {shown} ({len(sources)} slices)")
    return "\n".join(lines)


def load_slices(path, slices=None):
    """``(raw (n,H,W) stored dtype, labels (n,H,W) uint8)`` of the chosen slices, for validation.

    ``slices``: list of indices or a string for :func:`parse_slices`; None = all. Normalise raw
    with :func:`normalize`. Labels are None for an unlabeled file. The memory they need is
    checked before reading; float images with NaN or infinite values, and labels beyond the
    file's classes, are refused.
    """
    with _reader(path) as r:
        d = _describe(r)
        idx = parse_slices(list(slices) if isinstance(slices, (list, tuple, range)) else slices, d.n_slices)
        per_pixel = np.dtype(d.dtype).itemsize + 1 + 4 + 4        # raw, labels, normalised, probabilities
        check_memory(len(idx) * d.height * d.width * per_pixel * 2,
                     f"{d.path}: {len(idx)} whole slices of {d.height} x {d.width}",
                     "validate on fewer or smaller slices (--val-slices)")
        raw = np.stack([r.file["raw"][i] for i in idx])
        check_finite(raw, f"{d.path}: /raw", "reconvert the data from images without them")
        labels = np.stack([r.file["labels"][i] for i in idx]) if d.has_labels else None
        if labels is not None:
            check_labels(labels, d.n_classes, d.path)
    return raw, labels


def validation_slices(path, slices=None):
    """Deterministic iterator over whole slices: ``(index, image (H,W) float32, labels, weights)``.

    In the order given, one slice in memory at a time; weights are None if the file has none.
    """
    with _reader(path) as r:
        d = _describe(r)
        idx = parse_slices(slices if not isinstance(slices, range) else list(slices), d.n_slices)
        f = r.file
        for i in idx:
            yield (i, normalize(f["raw"][i]), f["labels"][i] if d.has_labels else None,
                   f["weights"][i] if d.has_weights else None)
