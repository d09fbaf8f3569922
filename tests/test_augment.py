"""minunet.data.augment: identity is exact, deformations are smooth and keep labels valid, seeds reproduce."""
import numpy as np

from minunet.data import augment as A


def test_zero_displacement_leaves_image_unchanged(rng):
    image = rng.random((40, 40)).astype(np.float32)
    coords = A.identity_coords(40) + 19.5
    for order in (0, 1, 3):
        np.testing.assert_allclose(A.warp(image, coords, order), image, atol=1e-5)
    off = A.random_coords(rng, 40, A.AugmentConfig.off())
    np.testing.assert_array_equal(off, A.identity_coords(40))
    np.testing.assert_array_equal(A.gray_values(image, rng, A.AugmentConfig.off()), image)


def test_field_is_smooth_and_matches_2d_zoom(rng):
    from scipy import ndimage as ndi
    field = A.displacement_field(np.random.default_rng(5), 572)
    coarse = np.random.default_rng(5).normal(0, 10, (2, 3, 3))
    np.testing.assert_allclose(field[0], ndi.zoom(coarse[0], 572 / 3, order=3, mode="nearest",
                                                  grid_mode=False), atol=1e-9)
    np.testing.assert_allclose(field[:, 0, 0], coarse[:, 0, 0], atol=1e-9)       # corners are grid points
    assert np.abs(np.diff(field, axis=1)).max() < 0.5                           # px per px: no folding
    assert np.abs(np.diff(field, n=2, axis=2)).max() < 0.01                     # smooth


def test_labels_stay_in_class_set_and_align(rng):
    labels = np.kron(rng.choice(np.array([0, 3, 5], np.uint8), (6, 6)), np.ones((10, 10), np.uint8))
    coords = A.random_coords(rng, 50) + 29.5
    out = A.warp(labels, coords, 0)
    assert out.dtype == np.uint8 and set(np.unique(out)) <= {0, 3, 5}
    image = labels.astype(np.float32)                   # the image warped with the same map agrees
    agree = np.abs(A.warp(image, coords, 1) - out) < 1e-3
    assert agree.mean() > 0.7


def test_reproducible(seed):
    a = A.random_coords(np.random.default_rng(seed), 64)
    b = A.random_coords(np.random.default_rng(seed), 64)
    np.testing.assert_array_equal(a, b)
    tile = np.full((8, 8), 0.5, np.float32)
    np.testing.assert_array_equal(A.gray_values(tile, np.random.default_rng(seed)),
                                  A.gray_values(tile, np.random.default_rng(seed)))


def test_rotation_without_elastic_is_rigid(rng):
    cfg = A.AugmentConfig(elastic=0, flip=False)
    coords = A.random_coords(rng, 21, cfg)
    d = np.hypot(*(coords - coords[:, 10:11, 10:11]))
    np.testing.assert_allclose(d, np.hypot(*A.identity_coords(21)), atol=1e-9)
