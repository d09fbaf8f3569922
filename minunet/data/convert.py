"""Converting images and label masks into a minunet data file (and writing in-memory stacks).

Folders and globs are paired by file stem, single stacks by position; label values are mapped to
class ids (``--classes``), class weights are balanced over the whole set and the border weight
maps computed (:mod:`minunet.data.weights`). Files are written under a temporary name and
renamed at the end, so on any error nothing is left behind.
"""
import json
from pathlib import Path

import numpy as np

from minunet import __version__
from minunet.data import imageio
from minunet.data.datafile import ATTRIBUTES, FORMAT_VERSION, RAW_DTYPES, check_finite, default_class_names
from minunet.errors import UserError
from minunet.files.atomic import atomic_h5_file, check_output_folder
from minunet.files.hdf5 import seal_attributes
from minunet.files.specs import same_file

CHUNK = 256                       # HDF5 chunk side: a training crop touches a few chunks per slice


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
    for kind, stack in (("image", img), ("label", lab)):
        seen = {}
        for s in stack:
            if s.stem in seen:
                raise UserError(f"{s.path}: {kind} files {seen[s.stem].name} and {s.path.name} share the stem "
                                f"'{s.stem}', so which one pairs with which is ambiguous; keep one")
            seen[s.stem] = s.path
    stems = {s.stem: s for s in lab}
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
    h5 = imageio.split_hdf5(spec)
    if h5 is not None:
        with imageio.hdf5_dataset(*h5) as ds:
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
    out = Path(out)
    if out.exists() and not force:
        raise UserError(f"{out}: output exists; use --force to overwrite it or choose another name")
    if w0 < 0 or sigma <= 0:
        raise UserError(f"--w0 {w0} / --sigma {sigma}: w0 must be >= 0 and sigma > 0")
    _check_not_an_input(out, images, labels)
    check_output_folder(out)
    img_slices, lab_slices = _pairs(images, labels)
    n = len(img_slices)
    _, height, width, dtype = imageio.stack_layout(images)
    nbytes = n * height * width * (max(np.dtype(dtype).itemsize, 4) + (5 if lab_slices is not None else 0))
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
    with atomic_h5_file(out, nbytes, force=force) as f:
        raw_ds = None
        for i, (s, raw) in enumerate(zip(img_slices, progress(_arrays(images, img_slices), "reading images", n))):
            check_finite(raw, f"{_source_name(s)}", "replace them (e.g. with 0) before converting")
            if raw_ds is None:
                first = s
                h, w = raw.shape
                chunks = (1, min(h, CHUNK), min(w, CHUNK))
                raw_ds = f.create_dataset("raw", (n, h, w), dtype=_raw_dtype(raw, s.path), chunks=chunks,
                                          fletcher32=True)
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
            seal_attributes(f, ATTRIBUTES)
            return out
        lut_values = np.array(sorted(mapping), dtype=np.int64)
        lut_ids = np.array([mapping[v] for v in lut_values], dtype=np.uint8)
        counts = np.zeros(n_classes, np.int64)
        lab_ds = f.create_dataset("labels", raw_ds.shape, dtype=np.uint8, chunks=raw_ds.chunks, fletcher32=True)
        for i, (s, lab) in enumerate(zip(lab_slices, _arrays(labels, lab_slices))):
            if lab.shape != raw_ds.shape[1:]:
                raise UserError(f"{s.path}: label {s.stem} is {lab.shape[0]}x{lab.shape[1]} but its image "
                                f"{img_slices[i].stem} is {raw_ds.shape[1]}x{raw_ds.shape[2]}; labels must "
                                "match their image pixel for pixel (resized or cropped by mistake?)")
            ids = lut_ids[np.searchsorted(lut_values, lab.astype(np.int64))]
            lab_ds[i] = ids
            counts += np.bincount(ids.ravel(), minlength=n_classes)
        from minunet.data import weights as wm  # heavy (Numba, scipy.ndimage): labelled data only
        cw = wm.class_weights(counts)
        w_ds = f.create_dataset("weights", raw_ds.shape, dtype=np.float32, chunks=raw_ds.chunks, fletcher32=True)
        for i in progress(range(n), "weight maps", n):
            w_ds[i] = wm.weight_map(lab_ds[i], w0=w0, sigma=sigma, class_weight=cw, n_classes=n_classes)
        f.attrs.update(n_classes=n_classes, class_names=names, class_weights=cw,
                       class_values=json.dumps({str(k): v for k, v in sorted(mapping.items())}),
                       w0=float(w0), sigma=float(sigma), background=0,
                       source_labels=[_source_name(s) for s in lab_slices])
        seal_attributes(f, ATTRIBUTES)
    return out


def _check_not_an_input(out, *specs):
    """UserError when the output file is one of the inputs (writing it would replace them)."""
    for spec in specs:
        if spec is not None and same_file(out, spec):
            raise UserError(f"-o {out}: is an input of this command ({spec}); write the output to another file")


def save_arrays(out, raw, labels=None, n_classes=2, class_names=None, w0=10.0, sigma=5.0, sources=None,
                force=False, progress=_identity):
    """Write in-memory stacks (raw (N,H,W), labels (N,H,W) class ids) as a data file, atomically.

    Used by ``data synth`` and tests; weights are computed as in :func:`convert`.
    """
    out = Path(out)
    raw = np.asarray(raw)
    dtype = _raw_dtype(raw, out)
    check_finite(raw, f"{out}: raw", "replace them (e.g. with 0) before saving")
    nbytes = raw.size * (dtype.itemsize + (5 if labels is not None else 0))
    with atomic_h5_file(out, nbytes, force=force) as f:
        chunks = (1, min(raw.shape[1], CHUNK), min(raw.shape[2], CHUNK))
        f.create_dataset("raw", data=raw.astype(dtype, copy=False), chunks=chunks, fletcher32=True)
        if labels is not None:
            from minunet.data import weights as wm  # heavy (Numba, scipy.ndimage): labelled data only
            labels = np.asarray(labels, np.uint8)
            counts = np.bincount(labels.ravel(), minlength=n_classes)[:n_classes]
            cw = wm.class_weights(counts)
            f.create_dataset("labels", data=labels, chunks=chunks, fletcher32=True)
            w_ds = f.create_dataset("weights", raw.shape, dtype=np.float32, chunks=chunks, fletcher32=True)
            for i in progress(range(len(labels)), "weight maps", len(labels)):
                w_ds[i] = wm.weight_map(labels[i], w0=w0, sigma=sigma, class_weight=cw, n_classes=n_classes)
            f.attrs.update(n_classes=n_classes, class_weights=cw, w0=float(w0), sigma=float(sigma),
                           background=0, class_names=list(class_names or default_class_names(n_classes)),
                           class_values=json.dumps({str(i): i for i in range(n_classes)}))
        else:
            f.attrs["n_classes"] = 0
        f.attrs.update(format_version=FORMAT_VERSION, created_by=_created_by(),
                       source_images=list(sources or []))
        seal_attributes(f, ATTRIBUTES)
    return out


def _created_by():
    return f"minunet {__version__}"
