"""The warping error of the ISBI 2012 challenge, and the classic one of Jain et al. (2010).

The truth of each slice is warped towards the prediction thresholded at theta by flipping simple
points (:mod:`minunet.evaluation.topology`); the pixels where they still disagree are the
topological mismatches, classified as Fiji's ``WarpingError.classifyMismatches2d`` does: a
membrane pixel between two or more segments is a *merge*, a cell pixel between two or more, or one
whose removal disconnects its segment inside a (2r+1)^2 window (r = 20, the challenge script's
radius), a *split*; the rest add or delete objects or holes.

- **warping error** (the challenge's, quoted by the U-Net paper): the minimum over theta = 0.0,
  0.1, ..., 0.9 of (split + merge pixels) / all pixels;
- **mismatch error** (Jain et al.'s original warping error): all mismatch pixels / all pixels.

The warp reproduces Fiji's loop: each pass visits the remaining mismatches by descending
|p - theta| (rounded to float32), ties in column-major order, and flips each that is simple at that
moment; passes repeat until one flips nothing. Outside the image is membrane.
"""
import numba
import numpy as np

from minunet.evaluation.common import WARP_THRESHOLDS, best_index, map_slices, theta_label
from minunet.evaluation.inputs import prepare
from minunet.evaluation.topology import DX, DY, SIMPLE, disconnects, label_components, neighbourhood_code

SPLIT_RADIUS = 20
MERGE, SPLIT, OTHER = 1, 2, 3
STATS = ("mismatches", "split_pixels", "merge_pixels", "splits", "merges")


@numba.njit(cache=True, nogil=True)
def _visit_order(truth, prob, theta):
    """Pixel indices (y * W + x) of the mismatches of truth and prob > theta in Fiji's visiting
    order: |prob - theta| rounded to float32, descending; ties in column-major order.

    One sort of 64-bit keys: the float's bits (monotonic for non-negative floats) inverted, then
    the column-major index.
    """
    h, w = truth.shape
    gaps = np.empty(h * w, np.float32)
    column_major = np.empty(h * w, np.int64)
    m = 0
    for y in range(h):
        for x in range(w):
            if truth[y, x] != (prob[y, x] > theta):
                gaps[m] = abs(np.float64(prob[y, x]) - theta)
                column_major[m] = x * h + y
                m += 1
    bits = gaps[:m].view(np.uint32)
    keys = np.empty(m, np.uint64)
    for k in range(m):
        keys[k] = ((np.uint64(0xFFFFFFFF) - np.uint64(bits[k])) << np.uint64(32)) | np.uint64(column_major[k])
    keys = np.sort(keys)
    order = np.empty(m, np.int64)
    for r in range(m):
        column_major = np.int64(keys[r] & np.uint64(0xFFFFFFFF))
        order[r] = (column_major % h) * w + column_major // h
    return order


@numba.njit(cache=True, nogil=True)
def _warp(truth, prob, theta, simple):
    """Fiji's simple-point warping of one binary truth slice towards prob > theta.

    Returns (warped uint8 image, pixel indices of the remaining mismatches). Each pass visits the
    mismatches in :func:`_visit_order` and flips the simple ones, as Fiji's loop; but a mismatch is
    re-examined only when a neighbour flipped since its last examination (its simplicity cannot
    change otherwise): in the same pass if the flip came before its turn, else in the next.
    """
    h, w = truth.shape
    img = truth.copy()
    pixel = _visit_order(truth, prob, theta)
    m = pixel.size
    rank = np.full(h * w, -1, np.int64)
    for r in range(m):
        rank[pixel[r]] = r
    alive = np.ones(m, np.bool_)
    now = np.ones(m, np.bool_)                    # to examine in this pass
    later = np.zeros(m, np.bool_)                 # to examine in the next pass
    lo, hi = 0, m - 1
    while lo <= hi:
        next_lo, next_hi = m, -1
        r = lo
        while r <= hi:
            if now[r]:
                now[r] = False
                y, x = pixel[r] // w, pixel[r] % w
                if simple[neighbourhood_code(img, y, x)]:
                    img[y, x] = 1 - img[y, x]
                    alive[r] = False
                    for j in range(8):
                        v, u = y + DY[j], x + DX[j]
                        if 0 <= v < h and 0 <= u < w:
                            rn = rank[v * w + u]
                            if rn >= 0 and alive[rn]:
                                if rn > r:
                                    now[rn] = True
                                    hi = max(hi, rn)
                                else:
                                    later[rn] = True
                                    next_lo, next_hi = min(next_lo, rn), max(next_hi, rn)
            r += 1
        now, later = later, now
        lo, hi = next_lo, next_hi
    return img, pixel[alive]


@numba.njit(cache=True, nogil=True)
def _classify(warped, remaining, radius):
    """MERGE, SPLIT or OTHER per remaining mismatch, as an image (0 where prediction and warp agree)."""
    h, w = warped.shape
    comp, _ = label_components(warped, False)
    kinds = np.zeros((h, w), np.uint8)
    seen = np.zeros((h, w), np.int64)
    group = np.zeros((h, w), np.int64)
    queue = np.empty(h * w, np.int64)
    for stamp in range(1, remaining.size + 1):
        y, x = remaining[stamp - 1] // w, remaining[stamp - 1] % w
        first = second = -1                       # distinct segment ids around, 0 included
        distinct = 0
        for k in range(8):
            v, u = y + DY[k], x + DX[k]
            if 0 <= v < h and 0 <= u < w:
                c = comp[v, u]
                if distinct == 0:
                    first, distinct = c, 1
                elif distinct == 1 and c != first:
                    second, distinct = c, 2
                elif distinct == 2 and c != first and c != second:
                    distinct = 3
        kind = OTHER
        if distinct >= 3:
            kind = SPLIT if warped[y, x] else MERGE
        elif distinct == 2 and warped[y, x] and disconnects(warped, y, x, radius, seen, group, stamp, queue):
            kind = SPLIT
        kinds[y, x] = kind
    return kinds


@numba.njit(cache=True, nogil=True)
def _warp_stats(truth, prob, theta, radius, simple):
    """[mismatches, split pixels, merge pixels, splits, merges] of one slice at one threshold.

    Splits count 4-connected groups of split pixels, merges 8-connected groups of merge pixels
    (Fiji's ``clusterMismatchesByError``).
    """
    warped, remaining = _warp(truth, prob, theta, simple)
    kinds = _classify(warped, remaining, radius)
    splits, merges = kinds == SPLIT, kinds == MERGE
    out = np.zeros(5, np.int64)
    out[0] = remaining.size
    out[1] = splits.sum()
    out[2] = merges.sum()
    out[3] = label_components(splits, False)[1]
    out[4] = label_components(merges, True)[1]
    return out


def _radius(radius, shape):
    """Fiji's rule: a radius < 1 or larger than the image means the whole image (-1)."""
    return -1 if radius is None or radius < 1 or radius > min(shape) else int(radius)


def warp_slice(truth_fg, prob, theta, radius=SPLIT_RADIUS):
    """Warp a binary truth slice towards prob > theta; classify the remaining mismatches.

    Returns (warped, kinds): the warped truth (uint8 0/1) and, per pixel, 0 where it agrees with
    the prediction, else MERGE, SPLIT or OTHER.
    """
    truth_fg = np.ascontiguousarray(truth_fg, dtype=np.uint8)
    prob = np.ascontiguousarray(prob, dtype=np.float32)
    warped, remaining = _warp(truth_fg, prob, float(theta), SIMPLE)
    return warped, _classify(warped, remaining, _radius(radius, truth_fg.shape))


def warping_table(prob, fg, thresholds=WARP_THRESHOLDS, radius=SPLIT_RADIUS):
    """(len(thresholds), 5) int64 counts summed over slices, columns as :data:`STATS`.

    prob: (N, H, W) float32 probabilities; fg: (N, H, W) truth foreground (cells).
    """
    fg = np.ascontiguousarray(fg, dtype=np.uint8)
    prob = np.ascontiguousarray(prob, dtype=np.float32)
    r = _radius(radius, fg.shape[1:])
    tasks = [(fg[k], prob[k], float(th), r, SIMPLE) for th in thresholds for k in range(len(fg))]
    stats = np.array(map_slices(_warp_stats, tasks), np.int64)
    return stats.reshape(len(thresholds), len(fg), 5).sum(axis=1)


def warping_result(table, thresholds, pixels):
    """The warping error dict of a :func:`warping_table` over `pixels` pixels.

    error: the minimum over thresholds of (split + merge pixels) / pixels, at the first threshold
    among equals (as Fiji); splits, merges and their pixels at that threshold.
    """
    errors = [(int(row[1]) + int(row[2])) / pixels for row in table]
    best = best_index(errors, lower_is_better=True)
    row = table[best]
    return {"error": errors[best], "theta": theta_label(thresholds[best]),
            "splits": int(row[3]), "merges": int(row[4]),
            "split_pixels": int(row[1]), "merge_pixels": int(row[2])}


def mismatch_result(table, thresholds, prob, fg, theta=0.9):
    """The classic (Jain et al.) warping error: all mismatches / pixels at `theta`.

    theta None: the minimum over the table's thresholds. A theta outside them is warped anew.
    """
    if theta is None:
        at = best_index([int(row[0]) for row in table], lower_is_better=True)
        count, theta = int(table[at][0]), thresholds[at]
    else:
        near = [i for i, th in enumerate(thresholds) if abs(th - theta) < 1e-9]
        count = int(table[near[0]][0]) if near else int(warping_table(prob, fg, (theta,))[0][0])
    return {"mismatch_error": count / fg.size, "mismatch_theta": theta_label(theta)}


def warping_error(pred, truth, mismatch_theta=0.9, radius=SPLIT_RADIUS):
    """The challenge's warping error with split and merge counts, and the classic mismatch error.

    pred: (N, H, W) probabilities; truth: (N, H, W) labels (> 0 = cell). Returns {"error",
    "theta", "splits", "merges", "split_pixels", "merge_pixels", "mismatch_error",
    "mismatch_theta"}: see :func:`warping_result` and :func:`mismatch_result`.
    """
    prob, truth = prepare(pred, truth)
    fg = truth > 0
    table = warping_table(prob, fg, WARP_THRESHOLDS, radius)
    return {**warping_result(table, WARP_THRESHOLDS, fg.size),
            **mismatch_result(table, WARP_THRESHOLDS, prob, fg, mismatch_theta)}
