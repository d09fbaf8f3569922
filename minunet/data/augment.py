"""Data augmentation of the U-Net paper: elastic deformation, rotation, flips, shifts, gray values.

Everything geometric is folded into one *coordinate map*: for each pixel of the input tile, the
position in the source slice it is read from. A random map is the identity grid around the tile
centre, flipped, rotated by any angle, shifted, plus the paper's elastic displacement (a 3 x 3
coarse grid of N(0, 10 px) vectors upsampled bicubically to every pixel). The image is then
resampled bicubically, the labels by nearest neighbour and the weights linearly, all with the
same map (scipy.ndimage.map_coordinates), so image, labels and weights stay aligned. Only the
region the map actually reads is cut from the slice (a crop a little larger than the tile,
mirror-padded at the slice border by the caller), so no border artefacts reach the tile.

All randomness comes from a ``numpy.random.Generator`` the caller owns: same seed, same tiles.
"""
import functools
from dataclasses import asdict, dataclass

import numpy as np


def _ndimage():
    """scipy.ndimage, imported on first use: it costs 0.3-0.6 s of start-up that prediction,
    which imports this module through minunet.data.dataset, does not need."""
    from scipy import ndimage
    return ndimage


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation strengths. ``AugmentConfig.off()`` gives the identity (no augmentation).

    elastic: std (px) of the coarse-grid displacements; grid: coarse grid points per side;
    rotate: random angle in [0, 360); flip: random mirror; shift: max extra shift (px, uniform);
    brightness: std of an added offset; contrast: std of log contrast factor; gamma: std of
    log gamma (gamma is applied to values clipped to [0, 1], i.e. to normalised integer data).
    """

    elastic: float = 10.0
    grid: int = 3
    rotate: bool = True
    flip: bool = True
    shift: float = 0.0
    brightness: float = 0.05
    contrast: float = 0.1
    gamma: float = 0.1

    @classmethod
    def off(cls):
        """No augmentation at all: identity geometry, unchanged gray values."""
        return cls(elastic=0.0, rotate=False, flip=False, shift=0.0, brightness=0.0,
                   contrast=0.0, gamma=0.0)

    def to_dict(self):
        """Plain dict, for run logs."""
        return asdict(self)


@functools.lru_cache(maxsize=16)
def _upsampler(grid, size):
    """(size, grid) matrix M with zoom(v) == M @ v for cubic-spline zoom of a length-grid vector."""
    eye = np.eye(grid)
    return np.stack([_ndimage().zoom(e, size / grid, order=3, mode="nearest", grid_mode=False)[:size] for e in eye],
                    axis=1)


def displacement_field(rng, size, grid=3, sigma=10.0):
    """Elastic displacement field ``(2, size, size)`` float64 in pixels (dy, dx).

    A ``grid x grid`` array of N(0, sigma) vectors, corners on the tile corners, upsampled to every
    pixel with cubic spline interpolation: smooth by construction. The upsampling is
    ``scipy.ndimage.zoom(order=3)``, applied as the equivalent separable matrix product
    ``M @ coarse @ M.T`` (zoom is linear and separable), which is ~50x faster than a 2-D zoom.
    """
    if sigma <= 0:
        return np.zeros((2, size, size))
    coarse = rng.normal(0.0, sigma, size=(2, grid, grid))
    m = _upsampler(grid, size)
    # sum of grid outer products via einsum (no BLAS call: threaded GEMM stalls on a busy machine)
    return np.stack([np.einsum("ij,kj->ik", np.einsum("ij,jk->ik", m, c), m) for c in coarse])


def identity_coords(size):
    """Tile pixel offsets from the tile centre, ``(2, size, size)``: the map without augmentation."""
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    return np.stack(np.meshgrid(r, r, indexing="ij"))


def random_coords(rng, size, config=AugmentConfig()):
    """A random coordinate map ``(2, size, size)``: source offsets from the tile centre.

    Add the (random) tile centre in the slice to get absolute source coordinates.
    """
    coords = identity_coords(size)
    if config.flip and rng.random() < 0.5:
        coords[1] = -coords[1]
    if config.rotate:
        theta = rng.uniform(0.0, 2 * np.pi)
        c, s = np.cos(theta), np.sin(theta)
        coords = np.stack([c * coords[0] - s * coords[1], s * coords[0] + c * coords[1]])
    if config.shift > 0:
        coords += rng.uniform(-config.shift, config.shift, size=2)[:, None, None]
    if config.elastic > 0:
        coords += displacement_field(rng, size, config.grid, config.elastic)
    return coords


def center_crop(array, size):
    """The central ``size x size`` window of the last two axes (the output tile of an input tile)."""
    h, w = array.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return array[..., top:top + size, left:left + size]


def warp(image, coords, order):
    """Resample ``image`` (H, W) at ``coords`` (2, h, w): order 3 image, 1 weights, 0 labels."""
    if order == 0:
        return _ndimage().map_coordinates(image, coords, order=0, mode="mirror", output=image.dtype)
    src = image.astype(np.float32, copy=False)
    if order > 1:                                   # the spline prefilter, in float32 (half the time)
        src = _ndimage().spline_filter(src, order, output=np.float32, mode="mirror")
    return _ndimage().map_coordinates(src, coords, order=order, mode="mirror", output=np.float32, prefilter=False)


def gray_values(tile, rng, config=AugmentConfig(), gamma_ok=True):
    """Random brightness, contrast and gamma on a float tile (values ~ [0, 1]); returns float32.

    Gamma (``x ** g`` on x clipped to [0, 1]) only when ``gamma_ok`` (normalised integer data).
    """
    tile = tile.astype(np.float32, copy=True)
    if gamma_ok and config.gamma > 0:
        g = np.float32(np.exp(rng.normal(0.0, config.gamma)))
        np.clip(tile, 0.0, 1.0, out=tile)
        np.power(tile, g, out=tile)
    if config.contrast > 0:
        c = np.float32(np.exp(rng.normal(0.0, config.contrast)))
        mean = np.float32(tile.mean())
        tile = (tile - mean) * c + mean
    if config.brightness > 0:
        tile += np.float32(rng.normal(0.0, config.brightness))
    return tile
