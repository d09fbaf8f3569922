"""V_Rand and V_Info after membrane thinning: the ISBI leaderboard's scores since 2013.

At each threshold the predicted membranes are thinned (:mod:`minunet.evaluation.thinning`), each
slice is scored (:func:`minunet.evaluation.rand.v_rand`, :func:`~minunet.evaluation.rand.v_info`)
and the scores are averaged over slices (Fiji's ``getMaximalVRandAfterThinning`` with per-slice
averaging and ``getMaximalVInfoAfterThinning``); each score is the maximum over thresholds.
Higher is better, 1 is perfect. Slices without truth cells are left out of the averages (Fiji
scores them 0 or nan). A segmentation (segment ids) is scored directly, without thresholds.
"""
import numpy as np

from minunet.evaluation.common import THRESHOLDS, above, best_index, map_slices, theta_label
from minunet.evaluation.inputs import prepare
from minunet.evaluation.overlap import overlap
from minunet.evaluation.rand import truth_segments, v_info, v_rand
from minunet.evaluation.thinning import thin_membranes, thin_segments


def _scores(truth_lab, pred_segments):
    """(V_Rand, V_Info) of one slice's (already thinned) predicted segments."""
    ov = overlap(truth_lab, pred_segments)
    return v_rand(ov), v_info(ov)


def _slice_scores(truth_lab, prob, theta):
    return _scores(truth_lab, thin_membranes(above(prob, theta)))


def _segments_scores(truth_lab, segments):
    return _scores(truth_lab, thin_segments(segments))


def _mean_over_slices(scores):
    """Per-slice (v_rand, v_info) averaged over the slices with truth cells (nan if none)."""
    scores = np.array(scores, np.float64).reshape(-1, 2)
    scores = scores[~np.isnan(scores[:, 0])]
    return tuple(scores.mean(axis=0)) if len(scores) else (float("nan"), float("nan"))


def thinned_table(prob, truth_lab, thresholds=THRESHOLDS):
    """Per threshold: (V_Rand, V_Info) averaged over slices. prob, truth_lab: (N, H, W)."""
    n = prob.shape[0]
    tasks = [(truth_lab[k], prob[k], th) for th in thresholds for k in range(n)]
    scores = map_slices(_slice_scores, tasks)
    return [_mean_over_slices(scores[i * n:(i + 1) * n]) for i in range(len(thresholds))]


def thinned_result(table, thresholds):
    """{"v_rand", "v_rand_theta", "v_info", "v_info_theta"}: each maximised over thresholds."""
    out = {}
    for col, name in enumerate(("v_rand", "v_info")):
        best = best_index([row[col] for row in table])
        out[name] = float("nan") if best is None else float(table[best][col])
        out[name + "_theta"] = None if best is None else theta_label(thresholds[best])
    return out


def thinned_scores(pred, truth, thresholds=THRESHOLDS):
    """V_Rand and V_Info after thinning predicted membranes, each maximised over theta.

    Returns {"v_rand", "v_rand_theta", "v_info", "v_info_theta"}.
    """
    prob, truth = prepare(pred, truth)
    return thinned_result(thinned_table(prob, truth_segments(truth), thresholds), thresholds)


def segmentation_scores(segments, truth_lab):
    """V_Rand and V_Info of a segmentation (N, H, W) of ids (0 = boundary), averaged over slices.

    A boundary (id 0) is thinned from the given segments first; a partition is scored as it is.
    """
    scores = map_slices(_segments_scores, zip(truth_lab, segments))
    v_r, v_i = _mean_over_slices(scores)
    return {"v_rand": v_r, "v_info": v_i}
