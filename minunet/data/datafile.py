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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minunet.data.slices import parse_slices
from minunet.errors import UserError

FORMAT_VERSION = 1
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


def _attr(value):
    """HDF5 attribute -> plain Python (bytes -> str, arrays -> lists)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [_attr(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list):
        return [_attr(v) for v in value]
    return value


def open_dataset(path):
    """Validate a minunet data file and describe it (:class:`DatasetInfo`).

    Checks that /raw is (N,H,W) of a supported type, that /labels and /weights (if present) match
    it, that labels are uint8 below n_classes (first slice checked) and that the format version is
    one this minunet reads. Every problem is a UserError naming the file and the field.
    """
    import h5py
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file; make one with `minunet data convert` or `minunet data synth`")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise UserError(f"{path}: not an HDF5 file (or damaged); make one with `minunet data convert`") from None
    with f:
        attrs = {k: _attr(v) for k, v in f.attrs.items()}
        version = int(attrs.get("format_version", FORMAT_VERSION))
        if version > FORMAT_VERSION:
            raise UserError(f"{path}: format_version {version} is newer than this minunet reads "
                            f"({FORMAT_VERSION}); update minunet")
        if "raw" not in f or not isinstance(f["raw"], h5py.Dataset):
            raise UserError(f"{path}: no /raw dataset; is this a minunet data file? (see docs/data-format.md)")
        raw = f["raw"]
        if raw.ndim != 3 or raw.shape[0] == 0:
            raise UserError(f"{path}: /raw has shape {raw.shape}; expected (N, H, W) with N >= 1")
        if raw.dtype not in RAW_DTYPES:
            raise UserError(f"{path}: /raw is {raw.dtype}; expected uint8, uint16 or float32")
        has_labels = "labels" in f
        has_weights = "weights" in f
        n_classes = int(attrs.get("n_classes", 0 if not has_labels else 2))
        if has_labels:
            labels = f["labels"]
            if labels.shape != raw.shape:
                raise UserError(f"{path}: /labels has shape {labels.shape} but /raw {raw.shape}; reconvert the data")
            if labels.dtype != np.uint8:
                raise UserError(f"{path}: /labels is {labels.dtype}; expected uint8 class ids")
            top = int(labels[0].max())
            if top >= n_classes:
                raise UserError(f"{path}: /labels holds class {top} but attribute n_classes is {n_classes}")
        if has_weights:
            weights = f["weights"]
            if weights.shape != raw.shape:
                raise UserError(f"{path}: /weights has shape {weights.shape} but /raw {raw.shape}; reconvert the data")
            if weights.dtype != np.float32:
                raise UserError(f"{path}: /weights is {weights.dtype}; expected float32")
        names = attrs.get("class_names") or default_class_names(n_classes)
        return DatasetInfo(path, raw.shape[0], raw.shape[1], raw.shape[2], str(raw.dtype), has_labels,
                           has_weights, n_classes, list(names), attrs)


def info(path):
    """A human-readable multi-line summary of a data file (what ``minunet data info`` prints)."""
    import h5py
    d = open_dataset(path)
    lines = [f"{d.path}: minunet data, format version {d.attrs.get('format_version', '?')}",
             f"  raw       {d.n_slices} x {d.height} x {d.width} {d.dtype}"]
    with h5py.File(d.path, "r") as f:
        if d.has_labels:
            counts = np.zeros(max(d.n_classes, 1), np.int64)
            for i in range(d.n_slices):
                counts += np.bincount(f["labels"][i].ravel(), minlength=len(counts))[:len(counts)]
            total = counts.sum()
            lines.append(f"  labels    {d.n_classes} classes")
            for k, name in enumerate(d.class_names[:d.n_classes]):
                lines.append(f"    {k}  {name:<14} {100.0 * counts[k] / total:5.1f} % of pixels")
        else:
            lines.append("  labels    none (unlabeled, converted with --no-labels)")
        if d.has_weights:
            w = f["weights"][0]
            lines.append(f"  weights   w0 = {d.attrs.get('w0', '?')}, sigma = {d.attrs.get('sigma', '?')} px; "
                         f"slice 0: min {w.min():.3g}, mean {w.mean():.3g}, max {w.max():.3g}")
    sources = d.attrs.get("source_images")
    if sources:
        shown = ", ".join(map(str, sources[:3])) + (", ..." if len(sources) > 3 else "")
        lines.append(f"  sources   {shown} ({len(sources)} slices)")
    return "\n".join(lines)


def load_slices(path, slices=None):
    """``(raw (n,H,W) stored dtype, labels (n,H,W) uint8)`` of the chosen slices, for validation.

    ``slices``: list of indices or a string for :func:`parse_slices`; None = all. Normalise raw
    with :func:`normalize`. Labels are None for an unlabeled file.
    """
    import h5py
    d = open_dataset(path)
    idx = parse_slices(slices, d.n_slices) if not isinstance(slices, (list, tuple, range)) \
        else parse_slices(list(slices), d.n_slices)
    with h5py.File(d.path, "r") as f:
        raw = np.stack([f["raw"][i] for i in idx])
        labels = np.stack([f["labels"][i] for i in idx]) if d.has_labels else None
    return raw, labels


def validation_slices(path, slices=None):
    """Deterministic iterator over whole slices: ``(index, image (H,W) float32, labels, weights)``.

    In the order given, one slice in memory at a time; weights are None if the file has none.
    """
    import h5py
    d = open_dataset(path)
    idx = parse_slices(slices if not isinstance(slices, range) else list(slices), d.n_slices)
    with h5py.File(d.path, "r") as f:
        for i in idx:
            yield (i, normalize(f["raw"][i]), f["labels"][i] if d.has_labels else None,
                   f["weights"][i] if d.has_weights else None)
