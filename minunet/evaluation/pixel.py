"""ISBI pixel error: 1 - the best foreground F-score over thresholds (Fiji's ``PixelError``)."""
import numpy as np

from minunet.evaluation.common import THRESHOLDS, above, best_index, fiji_fscore, theta_label
from minunet.evaluation.inputs import prepare


def pixel_fscores(prob, fg, thresholds=THRESHOLDS):
    """Foreground F-score at each threshold, pixel counts summed over the stack.

    prob: (N, H, W) float32 probabilities; fg: (N, H, W) bool truth foreground.
    """
    positives = int(np.count_nonzero(fg))
    scores = []
    for th in thresholds:
        p = above(prob, th)
        tp = int(np.count_nonzero(p & fg))
        scores.append(fiji_fscore(tp, int(np.count_nonzero(p)) - tp, positives - tp))
    return scores


def pixel_error(pred, truth, thresholds=THRESHOLDS):
    """ISBI pixel error: 1 - max over theta of the foreground F1, counts summed over the stack.

    pred: (N, H, W) probabilities; truth: (N, H, W) labels (> 0 = cell).
    Returns {"error", "theta", "f1"} with theta the best threshold (the first among equals).
    """
    prob, truth = prepare(pred, truth)
    scores = pixel_fscores(prob, truth > 0, thresholds)
    best = best_index(scores)
    return {"error": 1.0 - scores[best], "theta": theta_label(thresholds[best]), "f1": scores[best]}
