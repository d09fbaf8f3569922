"""The overlap (contingency) counts of two segmentations of one slice, restricted to truth cells.

Every pair-counting and information score of the challenge (Rand error, V_Rand, V_Info and
scikit-image's adapted Rand error) is a function of a few sums over the overlap counts c_ij (pixels
in truth segment i and predicted segment j), computed here in one O(pixels) pass. As in Fiji's
``RandError`` and ``VariationOfInformation``: pixels of truth membrane (id 0) are left out, and a
pixel of predicted boundary (id 0) inside a truth cell is a singleton, a segment of its own.
"""
from typing import NamedTuple

import numba
import numpy as np


class Overlap(NamedTuple):
    """Sums over the overlap counts of one slice (all exact integers except the x log x sums)."""

    n: int               # truth cell pixels
    truth_sq: int        # sum_i a_i^2, a_i = pixels of truth segment i
    pred_sq: int         # sum_{j>0} b_j^2, b_j = truth cell pixels of predicted segment j
    singles: int         # truth cell pixels on predicted boundary (j = 0)
    both_sq: int         # sum_{i, j>0} c_ij^2
    singles_sq: int      # sum_i c_i0^2
    truth_xlogx: float   # sum_i a_i log a_i
    pred_xlogx: float    # sum_{j>0} b_j log b_j
    both_xlogx: float    # sum_{i, j>0} c_ij log c_ij
    truth_segments: int  # distinct truth segments
    pred_segments: int   # distinct predicted segments j > 0 (singletons not counted)


@numba.njit(cache=True, nogil=True)
def _xlogx_sum(counts):
    """sum c log c over the counts, summed in sorted order: equal multisets give equal sums.

    Why: a prediction identical to the truth must score exactly 1, which needs the truth's, the
    prediction's and the joint entropy to round the same way.
    """
    total = 0.0
    for c in np.sort(counts):
        total += c * np.log(c)
    return total


@numba.njit(cache=True, nogil=True)
def _overlap_sums(truth, pred):
    """The sums of :class:`Overlap` (int64 and float64 arrays) by a counting sort on pred."""
    t = truth.ravel()
    p = pred.ravel()
    n_t = 0
    n_p = 0
    for k in range(t.size):
        if t[k] > 0:
            n_t = max(n_t, t[k])
            n_p = max(n_p, p[k])
    a = np.zeros(n_t + 1, np.int64)
    b = np.zeros(n_p + 1, np.int64)
    for k in range(t.size):
        if t[k] > 0:
            a[t[k]] += 1
            b[p[k]] += 1
    start = np.zeros(n_p + 2, np.int64)
    for j in range(n_p + 1):
        start[j + 1] = start[j] + b[j]
    fill = start[:-1].copy()
    by_pred = np.empty(start[-1], np.int64)       # truth ids grouped by predicted id
    for k in range(t.size):
        if t[k] > 0:
            by_pred[fill[p[k]]] = t[k]
            fill[p[k]] += 1
    ints = np.zeros(8, np.int64)
    joint = np.empty(start[-1], np.int64)         # the nonzero c_ij, j > 0
    m = 0
    count = np.zeros(n_t + 1, np.int64)
    for j in range(n_p + 1):
        for k in range(start[j], start[j + 1]):
            count[by_pred[k]] += 1
        for k in range(start[j], start[j + 1]):
            c = count[by_pred[k]]
            if c == 0:
                continue                           # this truth id is already counted
            count[by_pred[k]] = 0
            if j == 0:
                ints[5] += c * c
            else:
                ints[4] += c * c
                joint[m] = c
                m += 1
    a = a[1:][a[1:] > 0]
    b_pos = b[1:][b[1:] > 0]
    ints[0] = a.sum()
    ints[1] = (a * a).sum()
    ints[2] = (b_pos * b_pos).sum()
    ints[3] = b[0]
    ints[6] = a.size
    ints[7] = b_pos.size
    reals = np.array([_xlogx_sum(a), _xlogx_sum(b_pos), _xlogx_sum(joint[:m])])
    return ints, reals


def overlap(truth_segments, pred_segments):
    """The :class:`Overlap` of a truth and a predicted segmentation of one (H, W) slice.

    Both are integer segment ids; truth 0 is membrane (left out), prediction 0 is boundary
    (singletons).
    """
    ints, reals = _overlap_sums(np.ascontiguousarray(truth_segments, dtype=np.int64),
                                np.ascontiguousarray(pred_segments, dtype=np.int64))
    n, truth_sq, pred_sq, singles, both_sq, singles_sq, truth_count, pred_count = (int(v) for v in ints)
    return Overlap(n, truth_sq, pred_sq, singles, both_sq, singles_sq, float(reals[0]),
                   float(reals[1]), float(reals[2]), truth_count, pred_count)
