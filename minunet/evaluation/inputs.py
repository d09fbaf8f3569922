"""Checks and conversions of what the metrics accept: probability maps, class maps, segmentations.

A *prediction* is one of
- foreground (cell) probabilities in [0, 1], float (the ISBI submission format);
- a class map of integer ids (0/255 masks allowed), 8-bit: foreground is id > 0;
- a segmentation: integer segment ids, one per object, 0 = boundary or unassigned
  (``minunet segment`` writes them).
*Truth* is a label stack whose pixels > 0 are foreground (cell) and 0 is membrane.
Every problem is a :class:`~minunet.errors.UserError` naming the input.
"""
import numpy as np

from minunet.errors import UserError

KINDS = ("auto", "probabilities", "classes", "segments")
MAX_SEGMENT_SHARE = 0.25       # more distinct ids than this share of a slice's pixels: not objects
MAX_CLASS_IDS = 64        # more distinct values in an 8-bit image: not a class map


def as_stack(array, name="array"):
    """An (N, H, W) view of a 2D image or a 3D stack; other ranks are a UserError naming `name`."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or min(array.shape) == 0:
        raise UserError(f"{name}: expected a 2D image or an (N, H, W) stack, got shape {array.shape}")
    return array


def _values(array):
    """Sorted distinct values of an integer array (a bincount for 8-bit images: much faster)."""
    if array.dtype in (np.uint8, np.bool_):
        return np.flatnonzero(np.bincount(array.ravel().view(np.uint8), minlength=2))
    return np.unique(array)


def check_same_shape(pred, truth, pred_name="prediction", truth_name="truth"):
    """UserError unless the two stacks have the same (N, H, W) shape."""
    if pred.shape != truth.shape:
        raise UserError(f"{pred_name} has shape {tuple(pred.shape)} (slices, height, width) but "
                        f"{truth_name} has {tuple(truth.shape)}; select matching slices (--slices)")


def prepare(pred, truth, pred_name="prediction", truth_name="truth"):
    """Validated (float32 probabilities, truth class ids) stacks of one shape."""
    prob = pred_probabilities(pred, pred_name)
    truth = truth_classes(truth, truth_name)
    check_same_shape(prob, truth, pred_name, truth_name)
    return prob, truth


def truth_classes(truth, name="truth"):
    """Truth as integer class ids: 0/255 masks become 0/1, integral floats become ints.

    Why: ISBI PNG labels are 0/255 while ``minunet data convert`` writes 0/1 class ids; both mean
    0 = membrane, 1 = cell. Non-integral or negative values are a UserError naming `name`.
    """
    truth = as_stack(truth, name)
    if truth.dtype == bool:
        return truth.astype(np.uint8)
    if not np.issubdtype(truth.dtype, np.integer):
        if not np.all(np.isfinite(truth)) or np.any(truth != np.round(truth)):
            raise UserError(f"{name}: labels must be integer class ids (0 = membrane, >0 = cell), "
                            "got non-integral values; pass a label image, not probabilities")
        truth = truth.astype(np.int64)
    if truth.min() < 0:
        raise UserError(f"{name}: labels must be >= 0 (0 = membrane), got minimum {truth.min()}")
    values = _values(truth)
    if values.size <= 2 and set(values.tolist()) <= {0, 255} and values.max() == 255:
        return (truth == 255).astype(np.uint8)
    return truth


def prediction_kind(pred, kind="auto"):
    """What a prediction holds: "probabilities" (floats), "classes" or "segments" (integers).

    "auto" reads floats as probabilities, 8-bit (and boolean) images as class maps and wider
    integer images (16 or 32 bits, as ``minunet segment`` writes) as segmentations.
    """
    if kind not in KINDS:
        raise UserError(f"prediction kind {kind!r}: choose one of {', '.join(KINDS)}")
    if kind != "auto":
        return kind
    dtype = np.asarray(pred).dtype
    if dtype == np.bool_ or (np.issubdtype(dtype, np.integer) and dtype.itemsize == 1):
        return "classes"
    return "segments" if np.issubdtype(dtype, np.integer) else "probabilities"


def pred_probabilities(pred, name="prediction"):
    """Prediction as float32 foreground probabilities in [0, 1].

    Floats must lie in [0, 1] (the ISBI submission format). Integer inputs are class maps (0/255
    masks allowed): foreground is id > 0, so they become exact 0/1 probabilities. An integer image
    with many distinct values is most likely an 8-bit probability map and is refused, since
    reading it as class ids would score garbage.
    """
    pred = as_stack(pred, name)
    if pred.dtype == bool or np.issubdtype(pred.dtype, np.integer):
        values = _values(pred)
        if values.size > MAX_CLASS_IDS:
            raise UserError(f"{name}: integer image with {values.size} distinct values looks like an "
                            "8-bit probability map; save float probabilities in [0, 1] or class ids "
                            "(a segmentation with one id per object: save it as 16 or 32 bits)")
        if values.min() < 0:
            raise UserError(f"{name}: class ids must be >= 0, got minimum {values.min()}")
        return (pred > 0).astype(np.float32)
    if not np.all(np.isfinite(pred)):
        raise UserError(f"{name}: contains NaN or infinite values")
    lo, hi = float(pred.min()), float(pred.max())
    if lo < 0.0 or hi > 1.0:
        raise UserError(f"{name}: probabilities must lie in [0, 1] (0 = membrane, 1 = cell), "
                        f"got range [{lo:g}, {hi:g}]")
    return pred.astype(np.float32, copy=False)


def pred_classes(pred, name="prediction"):
    """Prediction as integer class ids for IoU: class maps as given (0/255 -> 0/1), probabilities > 0.5."""
    pred = as_stack(pred, name)
    if pred.dtype == bool or np.issubdtype(pred.dtype, np.integer):
        return truth_classes(pred, name)
    return (pred_probabilities(pred, name) > 0.5).astype(np.uint8)


def pred_segments(pred, name="prediction"):
    """Prediction as int64 segment ids per slice (0 = boundary); integers >= 0 only."""
    pred = as_stack(pred, name)
    if not (pred.dtype == bool or np.issubdtype(pred.dtype, np.integer)):
        raise UserError(f"{name}: a segmentation holds integer segment ids, got {pred.dtype} values; "
                        "pass a label image (minunet segment) or score it as probabilities")
    if pred.size and pred.min() < 0:
        raise UserError(f"{name}: segment ids must be >= 0 (0 = boundary), got minimum {pred.min()}")
    for k, slice_ in enumerate(pred):
        if np.unique(slice_).size > MAX_SEGMENT_SHARE * slice_.size:
            bits = 8 * pred.dtype.itemsize
            raise UserError(f"{name}: slice {k} has nearly as many distinct values as pixels, not objects: "
                            f"it looks like a {bits}-bit probability map; save float probabilities in "
                            "[0, 1] (objects average at least 4 pixels)")
    return pred.astype(np.int64)


def check_has_cells(truth, spec, chosen):
    """UserError when every truth pixel is membrane: nothing to match, so the pixel error is 1 and
    the Rand error undefined for any prediction (only IoU means something)."""
    if set(chosen) - {"iou"} and not np.any(truth > 0):
        raise UserError(f"{spec}: every pixel is 0 (membrane), so there is no cell to score: the pixel "
                        "error would be 1 and the Rand error undefined; check that these are the labels "
                        "(cells > 0), or score with --metrics iou")
