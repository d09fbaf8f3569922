"""What a tile sees beyond the image border: the one owner of the padding rule.

``mirror`` (the paper's EM network) reflects the image about its edge pixels without repeating
them, as ``numpy.pad(mode="reflect")`` does, periodically for any distance; ``zero`` (the dental
network) fills with zeros. Training crops, prediction tiles and block-wise volumes all use these
functions, so a network sees at prediction what it saw in training.
"""
import numpy as np

from minunet.errors import UserError

PADS = ("mirror", "zero")


def check_pad(pad, option="--pad"):
    """The padding name itself, or a UserError naming ``option`` and the choices."""
    if pad not in PADS:
        raise UserError(f"{option} {pad}: unknown padding; use {' or '.join(PADS)}")
    return pad


def mirror_index(index, n):
    """Indices into an axis of length n for positions ``index`` (any integers), reflected at
    both ends without repeating the border pixel (period 2(n-1))."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    index = np.mod(index, period)
    return np.where(index < n, index, period - index)


def _pair(value):
    return (value, value) if np.isscalar(value) else tuple(value)


def extend(image, before, after, pad="mirror"):
    """The image (C, H, W) extended by ``before`` pixels on top and left and ``after`` on bottom
    and right (each an int or (rows, cols)), by mirroring or with zeros."""
    check_pad(pad, "pad")
    (before_y, before_x), (after_y, after_x) = _pair(before), _pair(after)
    _, h, w = image.shape
    if pad == "zero":
        return np.pad(image, ((0, 0), (before_y, after_y), (before_x, after_x)))
    rows = mirror_index(np.arange(-before_y, h + after_y), h)
    cols = mirror_index(np.arange(-before_x, w + after_x), w)
    return image[:, rows[:, None], cols[None, :]]


def pad_crop(read, shape, y0, y1, x0, x1, pad):
    """Region [y0:y1, x0:x1] of a (H, W) array that may extend beyond it, padded by ``pad``
    exactly as :func:`extend` pads the whole array.

    ``read(ya, yb, xa, xb)`` returns an in-bounds part (a lazy HDF5 slice read, say): only the
    rows and columns the region needs are read, never the whole array.
    """
    h, w = shape
    if pad == "zero":
        out = None
        ya, yb, xa, xb = max(y0, 0), min(y1, h), max(x0, 0), min(x1, w)
        if ya < yb and xa < xb:
            part = read(ya, yb, xa, xb)
            out = np.zeros((y1 - y0, x1 - x0), part.dtype)
            out[ya - y0:yb - y0, xa - x0:xb - x0] = part
        return out if out is not None else np.zeros((y1 - y0, x1 - x0), read(0, 1, 0, 1).dtype)
    check_pad(pad, "pad")
    rows, cols = mirror_index(np.arange(y0, y1), h), mirror_index(np.arange(x0, x1), w)
    ya, xa = int(rows.min()), int(cols.min())
    part = read(ya, int(rows.max()) + 1, xa, int(cols.max()) + 1)
    return part[(rows - ya)[:, None], (cols - xa)[None, :]]
