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
3. **size filter**: each object smaller than ``min_size`` pixels joins the neighbour it shares its
   weakest boundary with (the lowest mean membrane probability along it);
4. **merge** (optional): neighbouring objects whose shared boundary is weak, a mean membrane
   probability under ``merge`` along it, are joined, the weakest boundary first.

The defaults were chosen on the ISBI 2012 training slices 0-23 only, by ``minunet segment --tune``
with a width-16 network's probabilities (docs/results.md).
"""
import heapq
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from minunet.data.imageio import read_stack
from minunet.errors import UserError


@dataclass(frozen=True)
class SegmentParams:
    """Parameters of :func:`segment_slice` (see the module docstring)."""

    threshold: float = 0.4    # P(cell) above which a pixel counts as cell for the seeds
    distance: float = 2.0     # seeds: cells farther than this from the membrane (pixels)
    min_size: int = 200       # smaller objects join a neighbour (pixels)
    merge: float = 0.7        # join neighbours whose boundary's mean membrane probability is lower; 0: never

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
    from skimage.segmentation import watershed  # heavy (~0.5 s), only to flood
    return watershed(boundary, markers).astype(np.int64)


def boundary_strengths(labels, boundary):
    """{(a, b): [sum, count]} over 4-adjacent pixel pairs of objects a < b: the membrane
    probability summed over both pixels of each pair, and the number of pixels summed."""
    width = int(labels.max()) + 1
    keys, values = [], []
    for lo, hi, b_lo, b_hi in ((labels[:-1], labels[1:], boundary[:-1], boundary[1:]),
                               (labels[:, :-1], labels[:, 1:], boundary[:, :-1], boundary[:, 1:])):
        cut = lo != hi
        keys.append(np.minimum(lo[cut], hi[cut]) * width + np.maximum(lo[cut], hi[cut]))
        values.append(b_lo[cut] + b_hi[cut])
    uniq, inverse = np.unique(np.concatenate(keys), return_inverse=True)
    sums = np.bincount(inverse, weights=np.concatenate(values))
    counts = np.bincount(inverse) * 2
    return {divmod(int(k), width): [float(s), int(c)] for k, s, c in zip(uniq, sums, counts)}


class RegionGraph:
    """Objects of a label image, their sizes and the boundaries between neighbours, joined in place.

    Joining b into a pools b's pixels and b's boundaries with its other neighbours into a's, so
    every boundary's mean membrane probability stays that of all its pixel pairs.
    """

    def __init__(self, labels, boundary):
        self.labels = labels
        self.sizes = np.bincount(labels.ravel()).tolist()
        self.edges = boundary_strengths(labels, boundary)
        self.neighbours = {}
        for a, b in self.edges:
            self.neighbours.setdefault(a, set()).add(b)
            self.neighbours.setdefault(b, set()).add(a)
        self.parent = np.arange(len(self.sizes))

    def mean(self, a, b):
        """Mean membrane probability along the boundary of a and b."""
        total, count = self.edges[(min(a, b), max(a, b))]
        return total / count

    def join(self, a, b):
        """Object b becomes part of a; returns the neighbours whose boundary with a changed."""
        self.parent[b] = a
        self.sizes[a] += self.sizes[b]
        del self.edges[(min(a, b), max(a, b))]
        self.neighbours[a].discard(b)
        changed = self.neighbours.pop(b) - {a}
        for c in changed:
            old = self.edges.pop((min(b, c), max(b, c)))
            self.neighbours[c].discard(b)
            pooled = self.edges.setdefault((min(a, c), max(a, c)), [0.0, 0])
            pooled[0] += old[0]
            pooled[1] += old[1]
            self.neighbours[a].add(c)
            self.neighbours[c].add(a)
        return changed

    def result(self):
        """The label image with every joined object under its root's id."""
        parent = self.parent
        for i in range(len(parent)):
            root = i
            while parent[root] != root:
                root = parent[root]
            parent[i] = root
        return parent[self.labels]


def dissolve_small(graph, min_size):
    """Join each object smaller than min_size (smallest first) to the neighbour it shares its
    weakest boundary with, until none is left (or only one object remains)."""
    heap = [(size, a) for a, size in enumerate(graph.sizes) if 0 < size < min_size]
    heapq.heapify(heap)
    while heap:
        size, a = heapq.heappop(heap)
        if graph.parent[a] != a or graph.sizes[a] != size or not graph.neighbours.get(a):
            continue                               # joined or grown since, or alone
        into = min(graph.neighbours[a], key=lambda c: graph.mean(a, c))
        graph.join(into, a)
        if graph.sizes[into] < min_size:
            heapq.heappush(heap, (graph.sizes[into], into))


def merge_weak(graph, threshold):
    """Join neighbouring objects while the weakest shared boundary's mean is below `threshold`,
    the weakest first (greedy agglomeration)."""
    heap = [(s / c, a, b) for (a, b), (s, c) in graph.edges.items() if s / c < threshold]
    heapq.heapify(heap)
    while heap:
        mean, a, b = heapq.heappop(heap)
        if (a, b) not in graph.edges or graph.mean(a, b) != mean:
            continue                               # stale: joined away or boundary pooled since
        for c in graph.join(a, b):
            if graph.mean(a, c) < threshold:
                heapq.heappush(heap, (graph.mean(a, c), min(a, c), max(a, c)))


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
    graph = RegionGraph(_flood(boundary, markers), boundary)
    if params.min_size > 1:
        dissolve_small(graph, params.min_size)
    if params.merge > 0:
        merge_weak(graph, params.merge)
    return relabel(graph.result())


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


def read_probabilities(spec):
    """A probability stack (N, H, W) float32 in [0, 1]; a UserError names the file otherwise."""
    stack = np.asarray(read_stack(spec))
    if not np.issubdtype(stack.dtype, np.floating):
        raise UserError(f"PROBS {spec}: holds {stack.dtype} values; segment the float probabilities "
                        "written by `minunet predict` (P(cell) in [0, 1])")
    stack = stack[None] if stack.ndim == 2 else stack
    if stack.ndim != 3:
        raise UserError(f"PROBS {spec}: expected a 2D image or an (N, H, W) stack, got shape {stack.shape}")
    if not np.all(np.isfinite(stack)) or stack.min() < 0 or stack.max() > 1:
        raise UserError(f"PROBS {spec}: values must be probabilities in [0, 1] (1 = cell, 0 = membrane)")
    return stack.astype(np.float32, copy=False)
