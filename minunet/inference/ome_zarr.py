"""Predictions as OME-Zarr images (NGFF 0.5), and OME-Zarr images as input.

An output named ``NAME.ome.zarr`` is a Zarr v3 group that napari (napari-ome-zarr), neuroglancer,
``ome-zarr`` and ``ngff-zarr`` open as an image:

- ``ome.multiscales``: one level, array ``0``, at full resolution (the prediction's pixel grid is
  the input's), with axes ``c`` (the classes, for ``probs``), ``z`` (a stack or volume) and ``y``,
  ``x``, and a ``scale`` transform (plus ``translation``) copied from the input when the input is
  an OME-Zarr image, else 1 per pixel; ``ome.omero`` names the class channels;
- with ``labels=True`` the argmax as the labels group ``labels/classes`` (``image-label`` with a
  colour per class and ``source`` pointing back at the image);
- minunet's settings under the group's ``minunet`` attribute.

Writing in one go (:func:`write_prediction`, in-memory ``minunet predict``) and block by block
(:func:`create` then :func:`write_region` per block, :mod:`minunet.inference.blockwise`) make the
same layout. Reading (:func:`read_image`, :func:`open_volume`) takes the first multiscale's first
dataset, the full resolution, of an NGFF 0.4 or 0.5 image and drops singleton ``t`` and ``c`` axes.
"""
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minunet.errors import UserError

NGFF_VERSION = "0.5"
SUFFIX = ".ome.zarr"
LEVEL = "0"                      # the full-resolution array's path inside an image group
LABELS = "classes"               # the label image's name inside the labels group
CHUNK = 1024                     # in-memory outputs: chunk side in pixels
SPATIAL = ("z", "y", "x")


def _zarr():
    try:
        import zarr  # optional: the ome-zarr extra
    except ImportError:
        raise UserError("OME-Zarr needs zarr 3; install it with: pip install 'minunet[ome-zarr]'") from None
    return zarr


def is_output(spec):
    """Whether an OUTPUT names an OME-Zarr image (``NAME.ome.zarr``)."""
    return str(spec).rstrip("/").lower().endswith(SUFFIX)


def is_ome_zarr(path):
    """Whether ``path`` is a Zarr group with NGFF multiscales metadata (0.4 or 0.5)."""
    path = Path(str(path))
    if not path.is_dir() or not any((path / name).exists() for name in ("zarr.json", ".zattrs")):
        return False
    try:
        return _multiscale(_zarr().open_group(str(path), mode="r")) is not None
    except Exception:
        return False


def _multiscale(group):
    """The first multiscale of a group's attributes (NGFF 0.5 nests them under ``ome``), or None."""
    attrs = group.attrs.asdict()
    found = attrs.get("ome", attrs).get("multiscales") or [None]
    return found[0]


# ---------------------------------------------------------------------- reading

@dataclass(frozen=True)
class Space:
    """Axis names, scale, translation and units of an image's spatial axes (z if any, y, x)."""

    names: tuple
    scale: tuple
    translation: tuple = None
    units: tuple = None

    @classmethod
    def pixels(cls, ndim):
        """One unit per pixel, no translation: for inputs that carry no calibration."""
        return cls(SPATIAL[-ndim:], (1.0,) * ndim)

    def last(self, ndim):
        """The last ``ndim`` axes (a single slice of a volume is y, x)."""
        cut = lambda values: None if values is None else tuple(values)[-ndim:]  # noqa: E731
        return Space(self.names[-ndim:], cut(self.scale), cut(self.translation), cut(self.units))

    def axes(self):
        units = self.units or (None,) * len(self.names)
        return [{"name": n, "type": "space", **({"unit": u} if u else {})} for n, u in zip(self.names, units)]

    def transforms(self, lead=0):
        """The dataset's coordinateTransformations, with ``lead`` unscaled axes (channels) first."""
        result = [{"type": "scale", "scale": [1.0] * lead + [float(s) for s in self.scale]}]
        if self.translation is not None and any(self.translation):
            result.append({"type": "translation", "translation": [0.0] * lead + [float(t) for t in self.translation]})
        return result


def _level(spec):
    """(array, multiscale, axis names) of an OME-Zarr image's full-resolution level."""
    zarr = _zarr()
    group = zarr.open_group(str(spec), mode="r")
    multiscale = _multiscale(group)
    axes = [a["name"] if isinstance(a, dict) else str(a) for a in multiscale.get("axes", SPATIAL)]
    array = group[multiscale["datasets"][0]["path"]]
    if len(axes) != array.ndim or not {"y", "x"} <= set(axes):
        raise UserError(f"{spec}: OME-Zarr axes {axes} do not fit its {array.ndim}-D array; "
                        "expected axes ending in y, x")
    return array, multiscale, axes


def _grayscale_index(spec, axes, shape):
    """Index keeping z, y, x and dropping singleton t and c; UserError for several channels or times."""
    index = []
    for name, size in zip(axes, shape):
        if name in SPATIAL:
            index.append(slice(None))
        elif size == 1:
            index.append(0)
        else:
            raise UserError(f"{spec}: axis {name!r} has {size} entries; minunet predicts one grayscale channel "
                            "of one time point; write that channel to its own OME-Zarr image")
    return tuple(index)


def read_image(spec):
    """The full-resolution image as a NumPy (N, H, W) stack (N = 1 without a z axis)."""
    array, _, axes = _level(spec)
    image = np.asarray(array[_grayscale_index(spec, axes, array.shape)])
    return image[None] if image.ndim == 2 else image


def open_volume(spec):
    """The full-resolution image as a lazy dask array (H, W) or (Z, H, W), nothing read yet."""
    import dask.array as da  # optional: the dask extra
    array, _, axes = _level(spec)
    return da.from_zarr(array)[_grayscale_index(spec, axes, array.shape)]


def source_space(spec):
    """The Space of an OME-Zarr input's full-resolution level (dataset and multiscale transforms
    combined), or None when ``spec`` is not an OME-Zarr image."""
    if not is_ome_zarr(spec):
        return None
    _, multiscale, axes = _level(spec)
    n = len(axes)
    scale, translation = np.ones(n), np.zeros(n)
    for transforms in (multiscale["datasets"][0].get("coordinateTransformations", []),
                       multiscale.get("coordinateTransformations", [])):
        for t in transforms:                       # the dataset's first, then the multiscale's
            if t.get("type") == "scale":
                scale, translation = scale * t["scale"], translation * t["scale"]
            elif t.get("type") == "translation":
                translation = translation + t["translation"]
    keep = [i for i, name in enumerate(axes) if name in SPATIAL]
    units = [(multiscale["axes"][i].get("unit") if isinstance(multiscale["axes"][i], dict) else None) for i in keep]
    return Space(tuple(axes[i] for i in keep), tuple(scale[keep]), tuple(translation[keep]),
                 tuple(units) if any(units) else None)


# ---------------------------------------------------------------------- writing

def _colors(classes):
    from matplotlib import colormaps  # heavy, and only for label colours
    table = colormaps["tab20"](np.arange(classes) % 20)
    return [[int(round(255 * v)) for v in rgba] for rgba in table]


def _image_attrs(name, axes, transforms, extra=None):
    multiscale = {"name": name, "axes": axes, "datasets": [{"path": LEVEL, "coordinateTransformations": transforms}]}
    return {"ome": {"version": NGFF_VERSION, "multiscales": [multiscale], **(extra or {})}}


def create(path, spatial_shape, classes, output_format, labels=False, space=None, block=CHUNK, attributes=None):
    """Create an empty OME-Zarr prediction image at ``path`` (array ``0``, and ``labels/classes/0``).

    Args:
        spatial_shape: (H, W) or (Z, H, W) of the prediction (the input's).
        classes: the model's classes. output_format: "probs" (a class axis first), "foreground" or "labels".
        labels: also create the argmax labels group.
        space: the input's Space (None: one unit per pixel). block: chunk side in y and x.
        attributes: stored under the group's ``minunet`` attribute.
    """
    zarr = _zarr()
    ndim = len(spatial_shape)
    space = (space or Space.pixels(ndim)).last(ndim)
    chunks = (1,) * (ndim - 2) + tuple(min(block, s) for s in spatial_shape[-2:])
    lead = 1 if output_format == "probs" else 0
    axes = ([{"name": "c", "type": "channel"}] if lead else []) + space.axes()
    extra = {"omero": {"channels": [{"label": f"class{k}", "color": "%02X%02X%02X" % tuple(rgb[:3]), "active": True,
                                     "window": {"min": 0.0, "max": 1.0, "start": 0.0, "end": 1.0}}
                                    for k, rgb in enumerate(_colors(classes))]}} if lead else None
    root = zarr.open_group(str(path), mode="w-", zarr_format=3,
                           attributes={**_image_attrs(output_format, axes, space.transforms(lead), extra),
                                       "minunet": attributes or {}})
    root.create_array(LEVEL, shape=(classes,) * lead + tuple(spatial_shape), chunks=(classes,) * lead + chunks,
                      dtype=np.uint8 if output_format == "labels" else np.float32, fill_value=0,
                      dimension_names=[a["name"] for a in axes])
    if labels:
        group = root.create_group("labels", attributes={"ome": {"version": NGFF_VERSION, "labels": [LABELS]}})
        image_label = {"colors": [{"label-value": k, "rgba": rgba} for k, rgba in enumerate(_colors(classes))],
                       "properties": [{"label-value": k, "class": f"class{k}"} for k in range(classes)],
                       "source": {"image": "../../"}}
        label = group.create_group(LABELS, attributes=_image_attrs(LABELS, space.axes(), space.transforms(),
                                                                   {"image-label": image_label}))
        label.create_array(LEVEL, shape=tuple(spatial_shape), chunks=chunks, dtype=np.uint8, fill_value=0,
                           dimension_names=list(space.names))


def write_region(path, z, y0, x0, probs, output_format, labels=False):
    """Write class probabilities (K, h, w) at rows y0.., columns x0.. of slice z (None for an image)."""
    zarr = _zarr()
    _, h, w = probs.shape
    where = ((z,) if z is not None else ()) + (slice(y0, y0 + h), slice(x0, x0 + w))
    image = zarr.open_array(str(path), path=LEVEL, mode="r+")
    if output_format == "probs":
        image[(slice(None),) + where] = probs
    elif output_format == "labels":
        image[where] = probs.argmax(axis=0).astype(np.uint8)
    else:
        image[where] = probs[1]
    if labels:
        zarr.open_array(str(path), path=f"labels/{LABELS}/{LEVEL}", mode="r+")[where] = \
            probs.argmax(axis=0).astype(np.uint8)


def check_output(path, force):
    """Refuse an existing output without ``force``, anything but a Zarr store even with it, and a missing folder."""
    path = Path(path)
    if path.exists():
        if not force:
            raise UserError(f"-o {path}: output exists; pass --force to overwrite it or choose another name")
        if not (path / "zarr.json").exists():
            raise UserError(f"-o {path}: exists and is not a Zarr store; choose another name "
                            "(minunet replaces only Zarr stores)")
    if not path.parent.is_dir():
        raise UserError(f"-o {path}: output folder {path.parent} does not exist; create it first")


def write_prediction(path, probs, output_format, labels=False, space=None, attributes=None, force=False):
    """Write a whole prediction (N, K, H, W) as one OME-Zarr image, atomically.

    N = 1 writes a 2-D image (y, x), more a stack (z, y, x). The store is written beside ``path``
    under a temporary name and renamed into place, so a failure leaves nothing half-written.
    """
    path = Path(path)
    check_output(path, force)
    probs = np.asarray(probs, dtype=np.float32)
    spatial = probs.shape[2:] if probs.shape[0] == 1 else (probs.shape[0],) + probs.shape[2:]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        create(tmp, spatial, probs.shape[1], output_format, labels, space, CHUNK, attributes)
        for z, slice_probs in enumerate(probs):
            write_region(tmp, None if len(spatial) == 2 else z, 0, 0, slice_probs, output_format, labels)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
