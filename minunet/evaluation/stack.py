"""Every metric of a predicted stack against its truth: the entry point of ``minunet evaluate``.

Probability maps (and class maps) get the ISBI 2012 challenge's metrics, as Fiji computes them
(:mod:`minunet.evaluation.common`); a segmentation (one id per object) gets the scores of a
partition: Rand error, V_Rand and V_Info of its segments, without thresholds.
"""
import math

import numpy as np

from minunet.errors import UserError
from minunet.evaluation import inputs
from minunet.evaluation.common import THRESHOLDS, WARP_THRESHOLDS, theta_label
from minunet.evaluation.iou import iou_per_class
from minunet.evaluation.pixel import pixel_fscores
from minunet.evaluation.rand import rand_result, rand_table, segmentation_rand, truth_segments
from minunet.evaluation.thinned_scores import segmentation_scores, thinned_result, thinned_table
from minunet.evaluation.warping import SPLIT_RADIUS, STATS, mismatch_result, warping_result, warping_table

ALL_METRICS = ("pixel", "rand", "warping", "vrand", "iou")
SEGMENT_METRICS = ("rand", "vrand")          # what a segmentation is scored with


def _check_metrics(metrics):
    unknown = set(metrics) - set(ALL_METRICS)
    if unknown:
        raise UserError(f"unknown metric(s) {', '.join(sorted(unknown))}; "
                        f"choose from {', '.join(ALL_METRICS)}")


def _rand_keys(r):
    return dict(rand_error=r["error"], rand_error_theta=r["theta"],
                adapted_rand_error=r["adapted_error"], adapted_rand_error_theta=r["adapted_theta"])


def _score_probabilities(prob, truth, metrics, thresholds, mismatch_theta, split_radius, raw_pred, pred_name):
    """The challenge's metrics of a probability map; (scores, per-threshold tables)."""
    out, tables = {}, {"thresholds": [theta_label(t) for t in thresholds]}
    segments = truth_segments(truth) if {"rand", "vrand"} & set(metrics) else None
    if "pixel" in metrics:
        scores = pixel_fscores(prob, truth > 0, thresholds)
        best = int(np.argmax(scores))
        out.update(pixel_error=1.0 - scores[best], pixel_error_theta=theta_label(thresholds[best]))
        tables["pixel_f"] = scores
    if "rand" in metrics:
        table = rand_table(prob, segments, thresholds)
        out.update(_rand_keys(rand_result(table, thresholds)))
        tables["rand_f"] = [row[0] for row in table]
    if "warping" in metrics:
        fg = truth > 0
        table = warping_table(prob, fg, WARP_THRESHOLDS, split_radius)
        r = warping_result(table, WARP_THRESHOLDS, fg.size)
        out.update(warping_error=r["error"], warping_error_theta=r["theta"], splits=r["splits"],
                   merges=r["merges"], split_pixels=r["split_pixels"], merge_pixels=r["merge_pixels"],
                   **mismatch_result(table, WARP_THRESHOLDS, prob, fg, mismatch_theta))
        tables["warp_thresholds"] = [theta_label(t) for t in WARP_THRESHOLDS]
        tables.update({name: table[:, col].tolist() for col, name in enumerate(STATS)})
    if "vrand" in metrics:
        table = thinned_table(prob, segments, thresholds)
        out.update(thinned_result(table, thresholds))
        tables["v_rand"] = [row[0] for row in table]
        tables["v_info"] = [row[1] for row in table]
    if "iou" in metrics:
        ious = iou_per_class(inputs.pred_classes(raw_pred, pred_name), truth)
        out.update({f"iou_{c}": v for c, v in ious.items()})
        valid = [v for v in ious.values() if not math.isnan(v)]
        out["mean_iou"] = float(np.mean(valid)) if valid else float("nan")
    return out, tables


def _score_segments(segments, truth, metrics):
    """Rand error, V_Rand and V_Info of a segmentation, scored as it is."""
    out = {}
    truth_lab = truth_segments(truth)
    if "rand" in metrics:
        out.update(_rand_keys(segmentation_rand(segments, truth_lab)))
    if "vrand" in metrics:
        r = segmentation_scores(segments, truth_lab)
        out.update(v_rand=r["v_rand"], v_rand_theta=None, v_info=r["v_info"], v_info_theta=None)
    return out


def evaluate_stack(pred, truth, metrics=ALL_METRICS, mismatch_theta=0.9, thresholds=THRESHOLDS,
                   pred_name="prediction", truth_name="truth", pred_kind="auto",
                   split_radius=SPLIT_RADIUS, per_threshold=False):
    """Every requested metric of a predicted stack against its truth, as a flat JSON-ready dict.

    pred: (N, H, W) or (H, W): foreground probabilities in [0, 1], a class map (8-bit ids) or a
    segmentation (wider integer ids, one per object, 0 = boundary); `pred_kind` ("auto",
    "probabilities", "classes", "segments") overrides the guess from the dtype
    (:func:`~minunet.evaluation.inputs.prediction_kind`).
    truth: same shape, class ids (0 = membrane, > 0 = cell; 0/255 masks accepted).
    metrics: any of "pixel", "rand", "warping", "vrand", "iou". Training validation should use
    ("pixel", "rand"): the warping error warps ten thresholds and is the slowest. A segmentation
    is scored with "rand" and "vrand" only (the others are left out).
    mismatch_theta: threshold of the classic warping error (None: minimised over 0.0..0.9).
    split_radius: the window of the warping error's split test (20 as the challenge; < 1: whole image).
    per_threshold: add "per_threshold", each score at each threshold of the sweeps.
    Errors are in [0, 1], lower is better; v_rand, v_info and IoU are scores, higher is better.
    Undefined values (no truth cells) are None. Input problems raise UserError naming
    `pred_name` / `truth_name`.
    """
    _check_metrics(metrics)
    raw_pred = inputs.as_stack(pred, pred_name)
    truth = inputs.truth_classes(truth, truth_name)
    kind = inputs.prediction_kind(raw_pred, pred_kind)
    tables = None
    if kind == "segments":
        segments = inputs.pred_segments(raw_pred, pred_name)
        inputs.check_same_shape(segments, truth, pred_name, truth_name)
        out = _score_segments(segments, truth, metrics)
    else:
        prob = inputs.pred_probabilities(raw_pred, pred_name)
        inputs.check_same_shape(prob, truth, pred_name, truth_name)
        out, tables = _score_probabilities(prob, truth, metrics, thresholds, mismatch_theta, split_radius,
                                           raw_pred, pred_name)
    n, h, w = truth.shape
    out = {"slices": n, "height": h, "width": w, "prediction": kind, **out}
    if per_threshold and tables is not None:
        out["per_threshold"] = tables
    return {k: _nan_to_none(v) for k, v in out.items()}


def _nan_to_none(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value
