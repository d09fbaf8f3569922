"""Rules every ISBI 2012 metric shares: the threshold sweep, binarisation, segments, F-scores.

The challenge scored submissions with the ``trainableSegmentation.metrics`` classes of Fiji
(Arganda-Carreras et al., Front. Neuroanat. 2015); the U-Net paper's table quotes those numbers.
The rules here are that code's:

- a pixel is foreground (cell) at threshold theta iff its probability is > theta, compared in
  float64 (:func:`above`);
- the sweep is theta = 0.0, 0.1, ... built by repeated addition of 0.1, so the values are
  0.30000000000000004, ..., 0.9999999999999999 (:func:`fiji_thresholds`);
- segments are 4-connected foreground components (:func:`label4`);
- an F-score counts "no false positives" as precision 1 and "no false negatives" as recall 1
  (:func:`fiji_fscore`).
"""
import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage

FOUR = ndimage.generate_binary_structure(2, 1)    # 4-connectivity: the challenge's segments
EIGHT = ndimage.generate_binary_structure(2, 2)
WORKERS = os.cpu_count() or 1                     # threads of map_slices


def fiji_thresholds(lo=0.0, hi=1.0, step=0.1):
    """Thresholds lo, lo+step, ... <= hi accumulated by repeated addition, exactly as Fiji's loops."""
    out, th = [], lo
    while th <= hi:
        out.append(th)
        th += step
    return tuple(out)


THRESHOLDS = fiji_thresholds()                 # 0.0 .. 1.0, 11 values: pixel, Rand, V_Rand, V_Info
WARP_THRESHOLDS = fiji_thresholds(0.0, 0.9)     # 0.0 .. 0.9, 10 values: the warping error


def above(prob, theta):
    """Foreground mask prob > theta, compared in float64 as Fiji does.

    Why: NumPy compares a float32 array with a Python float in float32, where Fiji's accumulated
    0.30000000000000004 becomes 0.3f and a probability of exactly 0.3f flips class.
    """
    return prob > np.float64(theta)


def label4(mask):
    """4-connected components of a 2D mask as int32 labels (0 = background)."""
    return ndimage.label(mask, structure=FOUR, output=np.int32)[0]


def fiji_fscore(tp, fp, fn):
    """F-score of Fiji's ``ClassificationStatistics``: no fp means precision 1, no fn recall 1."""
    precision = 1.0 if fp == 0 else tp / (tp + fp)
    recall = 1.0 if fn == 0 else tp / (tp + fn)
    return 2.0 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def best_index(values, lower_is_better=False):
    """Index of the first best value (Fiji keeps the first threshold among equals); None if all nan."""
    best = None
    for i, v in enumerate(values):
        if math.isnan(v):
            continue
        if best is None or (v < values[best] if lower_is_better else v > values[best]):
            best = i
    return best


def theta_label(th):
    """A threshold as reported: 0.30000000000000004 -> 0.3."""
    return None if th is None else round(float(th), 6)


def map_slices(function, tasks):
    """function(*task) for every task, on WORKERS threads (the Numba kernels release the GIL), in order."""
    tasks = list(tasks)
    if len(tasks) < 2 or WORKERS <= 1:
        return [function(*task) for task in tasks]
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        return list(pool.map(lambda task: function(*task), tasks))
