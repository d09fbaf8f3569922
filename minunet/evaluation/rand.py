"""ISBI Rand error and the scores V_Rand and V_Info of one slice, from its overlap counts.

The challenge's Rand error is 1 - the best foreground-restricted Rand F-score over thresholds,
pair counts summed over the stack (Fiji's ``RandError`` with N^2 normalisation): segments are
4-connected foreground components, truth membrane is left out, predicted membrane inside a truth
cell counts as singletons, and pairs are ordered with self-pairs (c_ij^2). V_Rand is the same
F-score of one slice; V_Info its information-theoretic analogue (Fiji's
``VariationOfInformation``); both are scored after thinning (:mod:`minunet.evaluation.thinning`).
"""
import math

import numpy as np

from minunet.evaluation.common import THRESHOLDS, above, best_index, fiji_fscore, label4, map_slices, theta_label
from minunet.evaluation.inputs import prepare
from minunet.evaluation.overlap import overlap


def rand_counts(ov):
    """(tp, fp, fn) of the foreground-restricted Rand index of one slice (Fiji's N^2 statistics).

    tp: ordered pixel pairs in one segment of both; fp: in one predicted segment only; fn: in one
    truth segment only. Precision is tp / (tp + fp), recall tp / (tp + fn).
    """
    tp = ov.both_sq + ov.singles
    return tp, ov.pred_sq + ov.singles - tp, ov.truth_sq - tp


def adapted_rand_counts(ov):
    """(tp, fp, fn) of scikit-image's ``adapted_rand_error`` of one slice (for the variant).

    Differences from :func:`rand_counts`: only pairs of distinct pixels count (c(c-1) rather than
    c^2), and predicted boundary inside truth cells is one more segment instead of singletons.
    """
    n = ov.n
    tp = ov.both_sq + ov.singles_sq - n
    return tp, ov.pred_sq + ov.singles * ov.singles - n - tp, ov.truth_sq - n - tp


def v_rand(ov):
    """V_Rand of one slice: the foreground-restricted Rand F-score (nan without truth cells)."""
    return fiji_fscore(*rand_counts(ov)) if ov.n else float("nan")


def v_info(ov):
    """V_Info of one slice: harmonic mean of I/H(truth) and I/H(prediction) (nan without truth cells).

    I is the mutual information of the two segmentations, H their entropies, singletons included.
    As in Fiji, the score is 0 where either entropy is 0 (one truth segment, or one predicted
    segment and no singletons), both included; the entropies are computed exactly from counts.
    """
    n = ov.n
    if n == 0:
        return float("nan")
    if ov.truth_segments == 1 or (ov.pred_segments == 1 and ov.singles == 0):
        return 0.0
    log_n = math.log(n)
    h_truth = log_n - ov.truth_xlogx / n
    h_pred = log_n - ov.pred_xlogx / n             # each singleton adds (1/n) log n
    h_joint = log_n - ov.both_xlogx / n
    mutual = h_truth + h_pred - h_joint
    precision, recall = mutual / h_truth, mutual / h_pred
    return 2.0 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def truth_segments(truth):
    """4-connected cell segments of each truth slice, (N, H, W) int32 (0 = membrane)."""
    return np.stack([label4(s > 0) for s in truth])


def _counts(truth_lab, pred_segments):
    """(tp, fp, fn) of the challenge's Rand index and of the adapted variant, one slice."""
    ov = overlap(truth_lab, pred_segments)
    return np.array(rand_counts(ov) + adapted_rand_counts(ov), np.int64)


def _slice_counts(truth_lab, prob, theta):
    return _counts(truth_lab, label4(above(prob, theta)))


def rand_table(prob, truth_lab, thresholds=THRESHOLDS):
    """Per threshold: (Rand F-score, precision, recall, adapted Rand F-score), counts summed over slices.

    prob: (N, H, W) probabilities; truth_lab: (N, H, W) truth segment ids. nan without truth cells.
    """
    tasks = [(truth_lab[k], prob[k], th) for th in thresholds for k in range(prob.shape[0])]
    counts = np.array(map_slices(_slice_counts, tasks)).reshape(len(thresholds), prob.shape[0], 6).sum(1)
    return [summed_scores(row) for row in counts]


def summed_scores(row):
    """(F, precision, recall, adapted F) of summed (tp, fp, fn, adapted tp, fp, fn) counts."""
    tp, fp, fn, atp, afp, afn = (int(v) for v in row)
    if tp + fn == 0:                                      # no truth cells anywhere: undefined
        return (float("nan"),) * 4
    precision = 1.0 if fp == 0 else tp / (tp + fp)
    recall = 1.0 if fn == 0 else tp / (tp + fn)
    return fiji_fscore(tp, fp, fn), precision, recall, fiji_fscore(atp, afp, afn)


def rand_result(table, thresholds):
    """The error dict of a :func:`rand_table`: best threshold of the challenge's and of the variant."""
    best = best_index([row[0] for row in table])
    best_adapted = best_index([row[3] for row in table])
    if best is None:
        nan = float("nan")
        return {"error": nan, "theta": None, "precision": nan, "recall": nan,
                "adapted_error": nan, "adapted_theta": None}
    f, precision, recall, _ = table[best]
    return {"error": 1.0 - f, "theta": theta_label(thresholds[best]), "precision": precision,
            "recall": recall, "adapted_error": 1.0 - table[best_adapted][3],
            "adapted_theta": theta_label(thresholds[best_adapted])}


def segmentation_rand(segments, truth_lab):
    """Rand error (and the adapted variant) of a segmentation (N, H, W) of ids (0 = boundary).

    The segments are scored as given, without thresholds or thinning; counts summed over slices.
    """
    counts = sum(map_slices(_counts, zip(truth_lab, segments)))
    f, precision, recall, adapted = summed_scores(counts)
    return {"error": 1.0 - f, "theta": None, "precision": precision, "recall": recall,
            "adapted_error": 1.0 - adapted, "adapted_theta": None}


def rand_error(pred, truth, thresholds=THRESHOLDS):
    """ISBI Rand error: 1 - max over theta of the foreground-restricted Rand F-score.

    Also returns the scikit-image ``adapted_rand_error`` variant (:func:`adapted_rand_counts`),
    minimised over the same thresholds on the same segments.
    Returns {"error", "theta", "precision", "recall", "adapted_error", "adapted_theta"}.
    """
    prob, truth = prepare(pred, truth)
    return rand_result(rand_table(prob, truth_segments(truth), thresholds), thresholds)
