"""Intersection over union per class: the paper's measure for PhC-U373 and DIC-HeLa."""
import numpy as np

from minunet.errors import UserError


def iou_per_class(pred_labels, truth_labels, classes=None):
    """Intersection over union per class id, counts summed over the stack.

    pred_labels, truth_labels: integer class maps of one shape. classes: ids to score (default:
    every id present in either). Returns {class_id: IoU}, nan for a class absent from both.
    """
    pred_labels, truth_labels = np.asarray(pred_labels), np.asarray(truth_labels)
    if pred_labels.shape != truth_labels.shape:
        raise UserError(f"IoU: prediction shape {pred_labels.shape} != truth shape {truth_labels.shape}")
    if classes is None:
        classes = np.union1d(np.unique(pred_labels), np.unique(truth_labels)).tolist()
    out = {}
    for c in classes:
        p, t = pred_labels == c, truth_labels == c
        union = int(np.count_nonzero(p | t))
        out[int(c)] = int(np.count_nonzero(p & t)) / union if union else float("nan")
    return out
