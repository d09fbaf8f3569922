"""minunet.data.padding: the one padding rule of training crops, prediction tiles and volumes."""
import numpy as np
import pytest

from minunet.data.padding import check_pad, extend, mirror_index, pad_crop
from minunet.errors import UserError


def test_mirror_reflects_without_repeating_the_border():
    row = np.arange(4, dtype=np.float32)[None, None]          # a b c d
    out = extend(row, 0, (0, 8))[0, 0]
    np.testing.assert_array_equal(out, [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1])
    left = extend(np.arange(3, dtype=np.float32).reshape(1, 1, 3), 2, 0)[0]
    np.testing.assert_array_equal(left[2], [2, 1, 0, 1, 2])   # rows mirrored too
    np.testing.assert_array_equal(extend(row, 1, 1, "zero")[0, 0], [0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(extend(row, 1, 1, "zero")[0, 1], [0, 0, 1, 2, 3, 0])
    np.testing.assert_array_equal(mirror_index(np.arange(-3, 4), 1), np.zeros(7))


def test_mirror_matches_numpy_reflect(rng):
    image = rng.standard_normal((1, 7, 5))
    for before, after in [(3, 4), ((2, 6), (9, 1)), (0, (13, 0))]:
        (by, bx) = (before, before) if np.isscalar(before) else before
        (ay, ax) = (after, after) if np.isscalar(after) else after
        want = np.pad(image, ((0, 0), (by, ay), (bx, ax)), mode="reflect")
        np.testing.assert_array_equal(extend(image, before, after), want)


@pytest.mark.parametrize("pad", ["mirror", "zero"])
def test_pad_crop_reads_only_inside_and_pads_like_extend(rng, pad):
    """A crop that leaves the image equals the same window of the extended image, and reads
    only pixels inside the image."""
    image = rng.standard_normal((9, 11))
    reads = []

    def read(ya, yb, xa, xb):
        reads.append((ya, yb, xa, xb))
        return image[ya:yb, xa:xb]
    for y0, y1, x0, x1 in [(-4, 6, -3, 5), (5, 14, 7, 15), (-2, 11, -2, 13), (2, 5, 3, 8)]:
        crop = pad_crop(read, image.shape, y0, y1, x0, x1, pad)
        margin = 8
        whole = extend(image[None], margin, margin, pad)[0]
        np.testing.assert_array_equal(crop, whole[y0 + margin:y1 + margin, x0 + margin:x1 + margin])
    assert all(0 <= ya < yb <= 9 and 0 <= xa < xb <= 11 for ya, yb, xa, xb in reads)


def test_unknown_padding_names_the_option():
    with pytest.raises(UserError, match="--pad edge: unknown padding; use mirror or zero"):
        check_pad("edge")
