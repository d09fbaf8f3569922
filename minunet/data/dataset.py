"""minunet's training data: the HDF5 format, conversion, the tile sampler and validation slices.

File layout (``docs/data-format.md``; ``FORMAT_VERSION`` 1)::

    /raw      (N, H, W)  uint8 | uint16 | float32   the images
    /labels   (N, H, W)  uint8                      class ids 0..n_classes-1   (absent: --no-labels)
    /weights  (N, H, W)  float32                    border weight maps (minunet.data.weights)
    attrs: format_version, n_classes, class_names, class_values, class_weights, w0, sigma,
           source_images, source_labels, created_by

Normalisation (:func:`normalize`, used by training *and* prediction): uint8 / 255, uint16 / 65535,
float data as is; always float32.

Training tiles (:class:`TileSampler`) are read lazily from the file (one crop per sample, never the
whole stack), so stacks larger than memory work.
"""
import json
import math
import re
import signal
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minunet.data import augment as aug
from minunet.data import imageio
from minunet.errors import UserError

FORMAT_VERSION = 1
RAW_DTYPES = (np.uint8, np.uint16, np.float32)
PADS = ("mirror", "zero")
_CACHE_BYTES = 64 * 2**20          # HDF5 chunk cache per open file: repeated tiles hit memory


# ----------------------------------------------------------------------------- small helpers

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


def parse_slices(text, n=None):
    """Parse a slice selection like ``"24-29"``, ``"0-23"``, ``"0,3,5-9"`` or ``"all"`` into a list.

    Ranges are inclusive (``24-29`` is 6 slices). With ``n`` (number of slices) every index is
    checked and ``"all"``/``None`` means ``range(n)``. Raises UserError on bad syntax or range.
    """
    if text is None or str(text).strip().lower() in ("", "all", ":"):
        if n is None:
            raise UserError("slice selection 'all' needs the number of slices")
        return list(range(n))
    if isinstance(text, (list, tuple, range)):
        out = [int(v) for v in text]
    else:
        out = []
        for part in str(text).replace(" ", "").split(","):
            m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            if not m:
                raise UserError(f"slices '{text}': cannot read '{part}'; write slices like 24-29 or 0,3,5-9")
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            if hi < lo:
                raise UserError(f"slices '{text}': range {part} runs backwards; write {hi}-{lo}")
            out.extend(range(lo, hi + 1))
    if not out:
        raise UserError(f"slices '{text}': the selection is empty")
    if n is not None:
        bad = [i for i in out if not 0 <= i < n]
        if bad:
            raise UserError(f"slices '{text}': slice {bad[0]} is out of range; the file has slices 0-{n - 1}")
    return out


def format_slices(indices):
    """Inverse of :func:`parse_slices`: ``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    indices = sorted(set(int(i) for i in indices))
    parts, start = [], None
    for a, b in zip(indices, indices[1:] + [None]):
        start = a if start is None else start
        if b != a + 1:
            parts.append(str(a) if start == a else f"{start}-{a}")
            start = None
    return ",".join(parts)


def parse_classes(text):
    """Parse ``--classes``: ``"0:0,255:1"`` (value:class), ``"0,50,100"`` (value i -> class i) or
    ``"K"`` (labels already hold class ids 0..K-1). Returns a dict {label value: class id}.
    """
    text = str(text).replace(" ", "")
    try:
        if ":" in text:
            pairs = [p.split(":") for p in text.split(",") if p]
            mapping = {int(float(v)): int(c) for v, c in pairs}
        elif "," in text:
            mapping = {int(float(v)): i for i, v in enumerate(p for p in text.split(",") if p)}
        else:
            k = int(text)
            if k < 1:
                raise ValueError
            mapping = {i: i for i in range(k)}
    except ValueError:
        raise UserError(f"--classes '{text}': write value:class pairs (0:0,255:1), the values of "
                        "classes 0..K-1 in order (0,128,255), or the number of classes (3)") from None
    ids = sorted(set(mapping.values()))
    if ids != list(range(len(ids))):
        raise UserError(f"--classes '{text}': class ids must be 0..K-1 without gaps, got {ids}")
    if len(ids) > 255:
        raise UserError(f"--classes '{text}': at most 255 classes are supported")
    return mapping


# ----------------------------------------------------------------------------- reading a file

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


def default_class_names(n):
    """Class names when none are given: background/foreground for 2 classes, class0.. otherwise."""
    return ["background", "foreground"] if n == 2 else [f"class{i}" for i in range(n)]


# ----------------------------------------------------------------------------- writing a file

def _identity(iterable, label, length):
    return iterable


def _label_mapping(values, classes, source):
    """The {value: class} mapping for the label values found, or a UserError explaining the fix."""
    values = sorted(int(v) for v in values)
    shown = ", ".join(map(str, values[:8])) + (", ..." if len(values) > 8 else "")
    if len(values) == 1:
        raise UserError(f"{source}: every label pixel has value {values[0]} (one class); check that these "
                        "are the label masks and that they were not saved blank or thresholded wrongly")
    if classes is None:
        if set(values) <= {0, 255}:
            return {0: 0, 255: 1}
        if set(values) <= {0, 1}:
            return {0: 0, 1: 1}
        if len(values) > 32:
            raise UserError(f"{source}: labels have {len(values)} distinct values ({shown}); masks must hold "
                            "a few class values: were they saved with anti-aliasing, resized or saved as JPEG? "
                            "Threshold them, or map values with --classes")
        raise UserError(f"{source}: labels hold values {shown}, not a binary 0/255 or 0/1 mask; "
                        f"say which class each value is, e.g. --classes {','.join(map(str, values))}")
    mapping = parse_classes(classes) if not isinstance(classes, dict) else dict(classes)
    missing = [v for v in values if v not in mapping]
    if missing:
        hint = ""
        if set(values) <= {0, 255} and 255 in missing:
            hint = ("; these look like 0/255 binary masks: drop --classes (the default maps 255 -> 1) "
                    "or use --classes 0:0,255:1")
        raise UserError(f"{source}: label value {missing[0]} is not covered by --classes {classes} "
                        f"(values found: {shown}){hint or '; add it to --classes or fix the masks'}")
    return mapping


def _pairs(images, labels):
    """Pair image slices with label slices: by stem for folders/globs, by position for stacks."""
    img = imageio.list_slices(images)
    if labels is None:
        return img, None
    lab = imageio.list_slices(labels)
    by_stem = len({s.path for s in img}) > 1 and len({s.path for s in lab}) > 1
    if not by_stem:
        if len(img) != len(lab):
            raise UserError(f"{images} has {len(img)} slices but {labels} has {len(lab)}; "
                            "give one label slice per image slice")
        return img, lab
    stems = {s.stem: s for s in lab}
    if len(stems) != len(lab):
        dup = next(s for s in lab if sum(t.stem == s.stem for t in lab) > 1)
        raise UserError(f"{dup.path}: two label files share the stem '{dup.stem}'; keep one")
    img_stems = {s.stem for s in img}
    for s in img:
        if s.stem not in stems:
            raise UserError(f"{s.path}: image has no label with stem '{s.stem}' in {labels}; "
                            "label files must have the same name as their image (suffix may differ)")
    for s in lab:
        if s.stem not in img_stems:
            raise UserError(f"{s.path}: label has no image with stem '{s.stem}' in {images}; "
                            "remove it or add its image")
    return img, [stems[s.stem] for s in img]


def _arrays(spec, slices, rgb="refuse"):
    """Decode the given slices of a spec one at a time, in the given order (pairing may reorder)."""
    h5 = imageio._split_hdf5(spec)
    if h5 is not None:
        import h5py
        with h5py.File(h5[0], "r") as f:
            ds = f[h5[1]]
            for s in slices:
                yield ds[()] if ds.ndim == 2 else ds[s.page]
        return
    path, pages = None, None
    for s in slices:
        if s.path != path:                    # a file may hold several pages: decode it once
            path, pages = s.path, [a for _, a in imageio.iter_slices(s.path, rgb)]
        yield pages[s.page]


def _raw_dtype(array, source):
    """The stored dtype for raw images of this type, or a UserError naming the fix."""
    if array.dtype in RAW_DTYPES:
        return array.dtype
    if array.dtype.kind == "f":
        return np.dtype(np.float32)
    if array.dtype == np.bool_:
        return np.dtype(np.uint8)
    raise UserError(f"{source}: images of type {array.dtype} are not supported; "
                    "save them as 8- or 16-bit unsigned or 32-bit float")


def _source_name(s):
    return str(s.path) if s.stem == s.path.stem else f"{s.path}[{s.page}]"


def convert(images, labels, out, classes=None, class_names=None, w0=10.0, sigma=5.0, force=False,
            progress=_identity):
    """Convert image (and label) stacks into a minunet HDF5 data file, atomically.

    ``images``/``labels``: any :mod:`minunet.data.imageio` spec; ``labels=None`` for unlabeled data.
    Folders/globs are paired by file stem; single stacks by position. ``classes``: None (binary
    0/255 or 0/1 default), a ``--classes`` string or a {value: class} dict. Class weights w_c are
    balanced over the whole dataset; weight maps use ``w0``, ``sigma`` (:mod:`minunet.data.weights`).
    ``progress(iterable, label, length)`` wraps long loops (the CLI passes a progress bar).
    The file is written under a temporary name and renamed at the end: on any error nothing is
    left behind. Returns the output Path.
    """
    import h5py

    from minunet.data import weights as wm
    out = Path(out)
    if out.exists() and not force:
        raise UserError(f"{out}: output exists; use --force to overwrite it or choose another name")
    if w0 < 0 or sigma <= 0:
        raise UserError(f"--w0 {w0} / --sigma {sigma}: w0 must be >= 0 and sigma > 0")
    img_slices, lab_slices = _pairs(images, labels)
    n = len(img_slices)
    if lab_slices is not None:                # pass 1: which label values occur -> the class mapping
        values = set()
        for s, lab in zip(lab_slices, progress(_arrays(labels, lab_slices), "checking labels", n)):
            if lab.dtype.kind == "f" and not (np.all(np.isfinite(lab)) and np.array_equal(lab, np.round(lab))):
                raise UserError(f"{s.path}: label slice {s.stem} holds non-integer values; "
                                "labels must be class values (e.g. 0/255)")
            values.update(np.unique(lab).tolist())
        mapping = _label_mapping(values, classes, labels)
        n_classes = max(mapping.values()) + 1
        names = list(class_names) if class_names else default_class_names(n_classes)
        if len(names) != n_classes:
            raise UserError(f"--names: {len(names)} names given for {n_classes} classes")
    with imageio.atomic_path(out, force=force) as tmp, h5py.File(tmp, "w") as f:
        raw_ds = None
        for i, (s, raw) in enumerate(zip(img_slices, progress(_arrays(images, img_slices), "reading images", n))):
            if raw_ds is None:
                first = s
                h, w = raw.shape
                chunks = (1, min(h, 256), min(w, 256))
                raw_ds = f.create_dataset("raw", (n, h, w), dtype=_raw_dtype(raw, s.path), chunks=chunks)
            elif raw.shape != raw_ds.shape[1:]:
                raise UserError(f"{s.path}: image {s.stem} is {raw.shape[0]}x{raw.shape[1]} but {first.stem} is "
                                f"{raw_ds.shape[1]}x{raw_ds.shape[2]}; all images must be the same size")
            elif _raw_dtype(raw, s.path) != raw_ds.dtype:
                raise UserError(f"{s.path}: image {s.stem} is {raw.dtype} but {first.stem} is {raw_ds.dtype}; "
                                "save all images with the same bit depth")
            raw_ds[i] = raw.astype(raw_ds.dtype, copy=False)
        f.attrs.update(format_version=FORMAT_VERSION, created_by=_created_by(),
                       source_images=[_source_name(s) for s in img_slices], n_classes=0)
        if lab_slices is None:
            return out
        lut_values = np.array(sorted(mapping), dtype=np.int64)
        lut_ids = np.array([mapping[v] for v in lut_values], dtype=np.uint8)
        counts = np.zeros(n_classes, np.int64)
        lab_ds = f.create_dataset("labels", raw_ds.shape, dtype=np.uint8, chunks=raw_ds.chunks)
        for i, (s, lab) in enumerate(zip(lab_slices, _arrays(labels, lab_slices))):
            if lab.shape != raw_ds.shape[1:]:
                raise UserError(f"{s.path}: label {s.stem} is {lab.shape[0]}x{lab.shape[1]} but its image "
                                f"{img_slices[i].stem} is {raw_ds.shape[1]}x{raw_ds.shape[2]}; labels must "
                                "match their image pixel for pixel (resized or cropped by mistake?)")
            ids = lut_ids[np.searchsorted(lut_values, lab.astype(np.int64))]
            lab_ds[i] = ids
            counts += np.bincount(ids.ravel(), minlength=n_classes)
        cw = wm.class_weights(counts)
        w_ds = f.create_dataset("weights", raw_ds.shape, dtype=np.float32, chunks=raw_ds.chunks)
        for i in progress(range(n), "weight maps", n):
            w_ds[i] = wm.weight_map(lab_ds[i], w0=w0, sigma=sigma, class_weight=cw, n_classes=n_classes)
        f.attrs.update(n_classes=n_classes, class_names=names, class_weights=cw,
                       class_values=json.dumps({str(k): v for k, v in sorted(mapping.items())}),
                       w0=float(w0), sigma=float(sigma), background=0,
                       source_labels=[_source_name(s) for s in lab_slices])
    return out


def save_arrays(out, raw, labels=None, n_classes=2, class_names=None, w0=10.0, sigma=5.0, sources=None,
                force=False, progress=_identity):
    """Write in-memory stacks (raw (N,H,W), labels (N,H,W) class ids) as a data file, atomically.

    Used by ``data synth`` and tests; weights are computed as in :func:`convert`.
    """
    import h5py

    from minunet.data import weights as wm
    out = Path(out)
    raw = np.asarray(raw)
    dtype = _raw_dtype(raw, out)
    with imageio.atomic_path(out, force=force) as tmp, h5py.File(tmp, "w") as f:
        chunks = (1, min(raw.shape[1], 256), min(raw.shape[2], 256))
        f.create_dataset("raw", data=raw.astype(dtype, copy=False), chunks=chunks)
        if labels is not None:
            labels = np.asarray(labels, np.uint8)
            counts = np.bincount(labels.ravel(), minlength=n_classes)[:n_classes]
            cw = wm.class_weights(counts)
            f.create_dataset("labels", data=labels, chunks=chunks)
            w_ds = f.create_dataset("weights", raw.shape, dtype=np.float32, chunks=chunks)
            for i in progress(range(len(labels)), "weight maps", len(labels)):
                w_ds[i] = wm.weight_map(labels[i], w0=w0, sigma=sigma, class_weight=cw, n_classes=n_classes)
            f.attrs.update(n_classes=n_classes, class_weights=cw, w0=float(w0), sigma=float(sigma),
                           background=0, class_names=list(class_names or default_class_names(n_classes)),
                           class_values=json.dumps({str(i): i for i in range(n_classes)}))
        else:
            f.attrs["n_classes"] = 0
        f.attrs.update(format_version=FORMAT_VERSION, created_by=_created_by(),
                       source_images=list(sources or []))
    return out


def _created_by():
    from minunet import __version__
    return f"minunet {__version__}"


# ----------------------------------------------------------------------------- training tiles

def pad_crop(read, shape, y0, y1, x0, x1, pad):
    """Region [y0:y1, x0:x1] of a (H, W) array that may extend beyond it, padded by mirroring
    (``"mirror"``: reflection about the edge pixel, as ``numpy.pad(mode="reflect")``) or zeros.

    ``read(ya, yb, xa, xb)`` returns the in-bounds part (e.g. a lazy HDF5 slice read).
    """
    h, w = shape
    ya, yb, xa, xb = max(y0, 0), min(y1, h), max(x0, 0), min(x1, w)
    if ya >= yb or xa >= xb:                      # entirely outside: only possible with zero padding
        ya, yb, xa, xb = 0, min(h, 1), 0, min(w, 1)
    part = read(ya, yb, xa, xb)
    widths = ((ya - y0, y1 - yb), (xa - x0, x1 - xb))
    if any(a or b for a, b in widths):
        if pad == "mirror" and min(part.shape) > 1:
            part = np.pad(part, widths, mode="reflect")
        else:
            part = np.pad(part, widths, mode="constant" if pad == "zero" else "edge")
    return part


class TileSampler:
    """Random training tiles from a minunet data file, with the paper's augmentation.

    ``TileSampler(path, slices, in_size, out_size, augment=True, pad="mirror", seed=0, workers=0)``

    - ``slices``: indices to draw from (list, or a string for :func:`parse_slices`, None = all).
    - ``in_size``/``out_size``: the network's input and output tile (the margin
      ``(in_size - out_size) / 2`` is context); the caller computes them (minunet.model.geometry).
    - ``augment``: True (paper defaults), False (plain crops) or an
      :class:`minunet.data.augment.AugmentConfig`.
    - ``pad``: ``"mirror"`` or ``"zero"``: what the input tile sees beyond the slice border.
    - ``workers``: background processes that prepare the next samples while the caller trains
      (0: samples are made on demand). Results are identical either way.

    Each sample picks a slice, then an output window position uniformly among those inside the
    slice (a window larger than the slice is centred on it), so every labeled pixel can appear in
    an output window; the input tile's context beyond the border is mirrored or zero. Where a
    rotated or deformed window reaches beyond the border, ``pad="mirror"`` mirrors labels and
    weights with the image (a reflected image is still a valid example); with ``pad="zero"``
    those output pixels get weight 0 (there is no image to learn from).

    ``sample()`` -> ``(image (1,in,in) float32 normalised, labels (out,out) uint8, weights
    (out,out) float32)``; ``batch(n)`` stacks n samples (``(n,1,in,in)``, ``(n,out,out)`` x2).
    Sample k is drawn from its own generator seeded by ``(seed, k)``, so ``state()`` is just
    ``{"seed": seed, "drawn": k}`` (JSON-able) and ``set_state`` resumes exactly, with or without
    workers. ``wait_s`` accumulates the time callers spent waiting for samples.
    Reads crops lazily from HDF5 (the file stays open; ``close()`` or use as a context manager).
    """

    def __init__(self, path, slices, in_size, out_size, augment=True, pad="mirror", seed=0, workers=0):
        import h5py
        self.info = open_dataset(path)
        if not self.info.has_labels:
            raise UserError(f"{path}: no /labels (converted with --no-labels); convert it with labels to train")
        if pad not in PADS:
            raise UserError(f"pad '{pad}': choose mirror or zero")
        in_size, out_size = int(in_size), int(out_size)
        if out_size < 1 or in_size < out_size or (in_size - out_size) % 2:
            raise UserError(f"tile sizes in {in_size} / out {out_size}: the input tile must be at least the "
                            "output tile and larger by an even number of pixels")
        self.slices = parse_slices(list(slices) if isinstance(slices, range) else slices, self.info.n_slices)
        self.in_size, self.out_size, self.pad = in_size, out_size, pad
        if augment is True:
            augment = aug.AugmentConfig()
        elif not augment:
            augment = aug.AugmentConfig.off()
        self.config = augment
        self.seed, self.drawn, self.wait_s = int(seed), 0, 0.0
        self._args = (str(self.info.path), self.slices, in_size, out_size, augment, pad, self.seed)
        self._file = h5py.File(self.info.path, "r", rdcc_nbytes=_CACHE_BYTES)
        self._raw, self._labels = self._file["raw"], self._file["labels"]
        self._weights = self._file["weights"] if self.info.has_weights else None
        self._gamma_ok = self._raw.dtype != np.float32
        self.workers, self._pool, self._pending = int(workers), None, {}

    def close(self):
        """Stop the workers and close the HDF5 file."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool, self._pending = None, {}
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def state(self):
        """``{"seed": s, "drawn": k}``: the next sample is the k-th of seed s."""
        return {"seed": self.seed, "drawn": self.drawn}

    def set_state(self, state):
        """Restore a :meth:`state` (resume gives the very tiles a run would have drawn)."""
        self.seed, self.drawn = int(state["seed"]), int(state["drawn"])
        self._args = self._args[:-1] + (self.seed,)
        if self._pool is not None:
            for fut in self._pending.values():
                fut.cancel()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool, self._pending = None, {}

    def _crop(self, ds, i, coords, pad):
        """Read the source region the map ``coords`` (2, h, w) needs; returns (array, origin)."""
        y0 = int(math.floor(coords[0].min())) - 2
        x0 = int(math.floor(coords[1].min())) - 2
        y1 = int(math.ceil(coords[0].max())) + 3
        x1 = int(math.ceil(coords[1].max())) + 3
        array = pad_crop(lambda a, b, c, d: ds[i, a:b, c:d], ds.shape[1:], y0, y1, x0, x1, pad)
        return array, np.array([y0, x0], np.float64)[:, None, None]

    def sample_at(self, k):
        """The k-th sample of this sampler's seed (a pure function of seed and k)."""
        rng, cfg = np.random.default_rng([self.seed, k]), self.config
        i = self.slices[rng.integers(len(self.slices))]
        h, w = self.info.height, self.info.width
        # the output window lies inside the slice when it fits (else it is centred on the slice)
        oy = rng.integers(0, h - self.out_size + 1) if h >= self.out_size else (h - self.out_size) // 2
        ox = rng.integers(0, w - self.out_size + 1) if w >= self.out_size else (w - self.out_size) // 2
        margin = (self.in_size - self.out_size) // 2
        centre = np.array([oy - margin, ox - margin], np.float64) + (self.in_size - 1) / 2.0
        coords = aug.random_coords(rng, self.in_size, cfg) + centre[:, None, None]
        out_coords = aug.center_crop(coords, self.out_size)
        plain = cfg == aug.AugmentConfig.off()        # integer coordinates: exact copies, no filtering

        raw, origin = self._crop(self._raw, i, coords, self.pad)
        image = normalize(raw)
        tile = aug.warp(image, coords - origin, 0 if plain else 3)
        lab, origin = self._crop(self._labels, i, out_coords, "mirror")
        labels = aug.warp(lab, out_coords - origin, 0)
        if self._weights is not None:
            wts, origin = self._crop(self._weights, i, out_coords, "mirror")
            weights = aug.warp(wts, out_coords - origin, 0 if plain else 1)
        else:
            weights = np.ones(labels.shape, np.float32)
        if self.pad == "zero":
            outside = ((out_coords[0] < -0.5) | (out_coords[0] > h - 0.5) |
                       (out_coords[1] < -0.5) | (out_coords[1] > w - 0.5))
            weights[outside] = 0.0
        if cfg.brightness or cfg.contrast or cfg.gamma:
            tile = aug.gray_values(tile, rng, cfg, gamma_ok=self._gamma_ok)
        return (tile[None].astype(np.float32, copy=False), labels.astype(np.uint8, copy=False),
                weights.astype(np.float32, copy=False))

    def _fetch(self, k):
        """Sample k from the worker pool, keeping 2 x workers samples in flight ahead of it."""
        if self._pool is None:
            import concurrent.futures as cf
            import multiprocessing as mp
            self._pool = cf.ProcessPoolExecutor(self.workers, mp.get_context("spawn"),
                                                initializer=_worker_init, initargs=self._args)
        for j in range(k, k + 2 * self.workers + 1):
            if j not in self._pending:
                self._pending[j] = self._pool.submit(_worker_sample, j)
        return self._pending.pop(k).result()

    def sample(self):
        """The next training sample: (image (1,in,in), labels (out,out), weights (out,out))."""
        import time
        start = time.perf_counter()
        out = self._fetch(self.drawn) if self.workers > 0 else self.sample_at(self.drawn)
        self.wait_s += time.perf_counter() - start
        self.drawn += 1
        return out

    def batch(self, n):
        """n samples stacked: images (n,1,in,in) float32, labels (n,out,out) uint8, weights float32."""
        samples = [self.sample() for _ in range(n)]
        return tuple(np.stack(parts) for parts in zip(*samples))


_WORKER = None


def _worker_init(*args):
    """Each worker process opens its own sampler (its own HDF5 handle).

    It ignores SIGINT: Ctrl-C reaches the terminal's whole process group, and the training
    process, not its workers, decides how to stop (finish the step, write a checkpoint).
    """
    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER = TileSampler(*args)


def _worker_sample(k):
    return _WORKER.sample_at(k)
