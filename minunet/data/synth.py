"""Synthetic EM-like data, so minunet can be tried and tested without downloading anything.

Each slice is a Voronoi tessellation of random seeds, its borders bent by a smooth random warp,
drawn as dark membranes whose width varies smoothly along them (about 2-6 px). Cell interiors get
a per-cell gray level, fine texture and dark "organelles" (blobs that are *not* membrane, so a
network must learn shape, not just darkness); the whole slice is blurred and noised. Labels use
the ISBI layout: 0 = membrane, 1 = cell, cells 4-connected and separated by membrane. Everything
is drawn from a seeded ``numpy.random.Generator``: same seed, same data.
"""
import numpy as np
from scipy import ndimage as ndi


def _smooth_noise(rng, shape, sigma):
    """Gaussian-filtered white noise scaled to zero mean, unit standard deviation.

    Wide filters run on a coarser grid and are upsampled linearly (same look, a fraction of the time).
    """
    step = max(1, int(sigma // 4))
    coarse = shape if step == 1 else tuple(-(-n // step) + 1 for n in shape)
    field = ndi.gaussian_filter(rng.standard_normal(coarse), sigma / step, mode="wrap")
    if step > 1:
        field = ndi.zoom(field, step, order=1)[:shape[0], :shape[1]]
    return (field - field.mean()) / (field.std() + 1e-12)


def cells(rng, size=512, cell_size=36.0, warp=6.0):
    """Cell ids (size x size, int32, 1..M): a warped Voronoi tessellation of random seeds."""
    n = max(2, int(round(size * size / cell_size ** 2)))
    seeds = rng.uniform(0, size, (n, 2))
    grid = np.ones((size, size), bool)
    ys, xs = np.clip(seeds.astype(int), 0, size - 1).T
    grid[ys, xs] = False
    ids_at = np.zeros((size, size), np.int32)
    ids_at[ys, xs] = np.arange(1, n + 1)
    _, (iy, ix) = ndi.distance_transform_edt(grid, return_indices=True)
    ids = ids_at[iy, ix]
    r = np.arange(size, dtype=np.float64)
    coords = np.stack(np.meshgrid(r, r, indexing="ij"))
    coords += warp * np.stack([_smooth_noise(rng, (size, size), size / 16) for _ in range(2)])
    return ndi.map_coordinates(ids, coords, order=0, mode="nearest")


def synth_slice(rng, size=512):
    """One synthetic slice: ``(raw (size,size) uint8, labels (size,size) uint8)``, 0 = membrane."""
    ids = cells(rng, size)
    border = np.zeros(ids.shape, bool)
    dy, dx = ids[1:] != ids[:-1], ids[:, 1:] != ids[:, :-1]
    border[1:] |= dy
    border[:-1] |= dy
    border[:, 1:] |= dx
    border[:, :-1] |= dx
    half_width = 0.6 + 1.2 * (1 + np.tanh(_smooth_noise(rng, ids.shape, size / 24)))   # 0.6 .. 3 px
    membrane = ndi.distance_transform_edt(~border) <= half_width
    labels = (~membrane).astype(np.uint8)

    level = rng.uniform(0.55, 0.8, ids.max() + 1)[ids]
    texture = 0.06 * _smooth_noise(rng, ids.shape, 1.5) + 0.04 * _smooth_noise(rng, ids.shape, 6)
    image = level + texture
    n_blobs = int(size * size / 1500)
    blobs = np.zeros(ids.shape)
    by, bx = rng.integers(0, size, (2, n_blobs))
    blobs[by, bx] = rng.uniform(0.5, 1.0, n_blobs)
    blobs = ndi.gaussian_filter(blobs, rng.uniform(1.5, 3.0)) * 40
    image -= np.clip(blobs, 0, 0.35) * labels
    dark = rng.uniform(0.12, 0.28) + 0.04 * _smooth_noise(rng, ids.shape, 3)
    image = np.where(membrane, dark, image)
    image = ndi.gaussian_filter(image, rng.uniform(0.8, 1.3))
    image += rng.normal(0, rng.uniform(0.03, 0.07), ids.shape)
    raw = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
    return raw, labels


def synth_stack(n=30, size=512, seed=0):
    """``n`` independent synthetic slices: ``(raw (n,size,size) uint8, labels (n,size,size) uint8)``.

    Slice i depends only on (seed, i), so a smaller stack is a prefix of a larger one.
    """
    pairs = [synth_slice(np.random.default_rng([seed, i]), size) for i in range(n)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
