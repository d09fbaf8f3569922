"""Objects from boundary probabilities: one label image per slice (seeded watershed, size filter, merge).

The network predicts, per pixel, the probability of cell (1) against membrane (0); biologists want
the cells as objects. Thresholding that map leaves every small gap in a membrane as a merge of two
cells. Here each cell grows from a seed, its core away from the membrane, so a narrow gap does not
join two seeds:

1. **seeds**: the pixels with P(cell) > ``threshold`` are the cells, with their holes filled (a
   region of membrane enclosed by one cell is an organelle, not a boundary); the pixels more than
   ``distance`` pixels away from the nearest membrane pixel (a Euclidean distance transform) form
   the cores, and each 4-connected core is one seed, so a bridge through a gap narrower than
   2 ``distance`` pixels separates two seeds;
2. **watershed**: the seeds flood the membrane probability 1 - P(cell) (scikit-image's
   ``watershed``) until they meet on its ridges, so every pixel belongs to one object;
3. **size filter**: objects smaller than ``min_size`` pixels are dissolved and flooded by their
   neighbours;
4. **merge** (optional): neighbouring objects whose shared boundary is weak, a mean membrane
   probability under ``merge`` along it, are joined, the weakest boundary first.

The defaults were chosen on the ISBI 2012 training slices 0-23 only (docs/results.md).
"""
import heapq
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from minunet.errors import UserError


@dataclass(frozen=True)
class SegmentParams:
    """Parameters of :func:`segment_slice` (see the module docstring)."""

    threshold: float = 0.5    # P(cell) above which a pixel counts as cell for the seeds
    distance: float = 1.0     # seeds: cells farther than this from the membrane (pixels)
    min_size: int = 25        # smaller objects are dissolved into their neighbours (pixels)
    merge: float = 0.5        # join neighbours whose boundary's mean membrane probability is lower; 0: never

    def check(self):
        """UserError naming the option of an out-of-range parameter."""
        if not 0.0 <= self.threshold < 1.0:
            raise UserError(f"--threshold {self.threshold:g}: must lie in [0, 1)")
        for name in ("distance", "min_size"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name):g}: must be >= 0")
        if not 0.0 <= self.merge <= 1.0:
            raise UserError(f"--merge {self.merge:g}: must lie in [0, 1] (0: no merging)")
        return self

    def describe(self):
        """One line of the parameters, as options."""
        return " ".join(f"--{k.replace('_', '-')} {v:g}" for k, v in asdict(self).items())


def seeds(prob, params):
    """Seed labels (int32, 0 = none): the 4-connected cores of the hole-filled cells, the pixels
    more than ``params.distance`` from the membrane."""
    cells = ndimage.binary_fill_holes(prob > params.threshold)
    cores = ndimage.distance_transform_edt(cells) > params.distance
    return ndimage.label(cores, output=np.int32)[0]


def _flood(boundary, markers):
    from skimage.segmentation import watershed
    return watershed(boundary, markers).astype(np.int32)


def dissolve_small(labels, boundary, min_size):
    """Labels without the objects smaller than min_size, their pixels flooded by their neighbours."""
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    if not small[1:].any() or small[1:].all():
        return labels
    return _flood(boundary, np.where(small[labels], 0, labels))


def boundary_strengths(labels, boundary):
    """{(a, b): [sum, count]} over 4-adjacent pixel pairs of objects a < b: the membrane
    probability summed over both pixels of each pair, and the number of pixels summed."""
    edges = {}
    for axis in (0, 1):
        a = labels if axis else labels
        lo = np.take(a, range(a.shape[axis] - 1), axis=axis)
        hi = np.take(a, range(1, a.shape[axis]), axis=axis)
        value = np.take(boundary, range(a.shape[axis] - 1), axis=axis) + \
            np.take(boundary, range(1, a.shape[axis]), axis=axis)
        cut = lo != hi
        pairs = np.stack([np.minimum(lo[cut], hi[cut]), np.maximum(lo[cut], hi[cut])], axis=1).astype(np.int64)
        keys = pairs[:, 0] * (int(labels.max()) + 1) + pairs[:, 1]
        uniq, inverse = np.unique(keys, return_inverse=True)
        sums = np.bincount(inverse, weights=value[cut])
        counts = np.bincount(inverse) * 2
        for key, s, c in zip(uniq.tolist(), sums.tolist(), counts.tolist()):
            pair = divmod(key, int(labels.max()) + 1)
            total = edges.setdefault(pair, [0.0, 0])
            total[0] += s
            total[1] += c
    return edges


def merge_weak(labels, boundary, threshold):
    """Join neighbouring objects while the weakest shared boundary's mean is below `threshold`.

    Greedy agglomeration: the pair with the lowest mean membrane probability along its boundary is
    joined first; the joined object's boundaries with its neighbours pool their pixels.
    """
    edges = boundary_strengths(labels, boundary)
    neighbours = {}
    for a, b in edges:
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    heap = [(s / c, a, b) for (a, b), (s, c) in edges.items() if s / c < threshold]
    heapq.heapify(heap)
    parent = np.arange(int(labels.max()) + 1)
    while heap:
        mean, a, b = heapq.heappop(heap)
        stats = edges.get((a, b))
        if stats is None or stats[0] / stats[1] != mean:
            continue                               # stale: merged away or boundary pooled since
        parent[b] = a                              # b joins a; a's boundaries pool b's
        del edges[(a, b)]
        neighbours[a].discard(b)
        for c in neighbours.pop(b) - {a}:
            old = edges.pop((min(b, c), max(b, c)))
            neighbours[c].discard(b)
            pooled = edges.setdefault((min(a, c), max(a, c)), [0.0, 0])
            pooled[0] += old[0]
            pooled[1] += old[1]
            neighbours[a].add(c)
            neighbours[c].add(a)
            if pooled[0] / pooled[1] < threshold:
                heapq.heappush(heap, (pooled[0] / pooled[1], min(a, c), max(a, c)))
    for i in range(len(parent)):                   # flatten the chains of joins
        root = i
        while parent[root] != root:
            root = parent[root]
        parent[i] = root
    return parent[labels]


def relabel(labels):
    """Ids 1..n in order of first appearance (row-major); 0 stays 0."""
    ids, first = np.unique(labels.ravel(), return_index=True)
    order = np.argsort(first)
    lookup = np.zeros(int(ids.max()) + 1, np.int64)
    lookup[ids[order]] = np.arange(1, len(ids) + 1)
    return lookup[labels]


def segment_slice(prob, params=SegmentParams()):
    """Objects of one slice: (H, W) int64 labels 1..n covering every pixel.

    prob: (H, W) probability of cell (1 = cell, 0 = membrane), the ISBI format of ``minunet predict``.
    """
    prob = np.asarray(prob, np.float32)
    boundary = 1.0 - prob
    markers = seeds(prob, params)
    if markers.max() == 0:                         # no cell anywhere: one object
        return np.ones(prob.shape, np.int64)
    labels = _flood(boundary, markers)
    if params.min_size > 1:
        labels = dissolve_small(labels, boundary, params.min_size)
    if params.merge > 0:
        labels = merge_weak(labels, boundary, params.merge)
    return relabel(labels)


def segment_stack(probs, params=SegmentParams(), progress=None):
    """Objects of every slice of an (N, H, W) or (H, W) probability map; ids restart per slice.

    Returns uint16 labels (uint32 when a slice holds 65,535 objects or more), the shape of probs.
    """
    probs = np.asarray(probs)
    single = probs.ndim == 2
    stack = probs[None] if single else probs
    if stack.ndim != 3:
        raise UserError(f"probabilities: expected (N, H, W) or (H, W), got shape {probs.shape}")
    params.check()
    out = []
    for k, prob in enumerate(stack):
        out.append(segment_slice(prob, params))
        if progress is not None:
            progress(k + 1, len(stack))
    labels = np.stack(out)
    labels = labels.astype(np.uint16 if labels.max() < 2 ** 16 else np.uint32)
    return labels[0] if single else labels
