"""The public API of minunet's segmentation metrics, gathered from the modules that define them.

- :mod:`~minunet.evaluation.common`: thresholds, binarisation, segments (the rules all share);
- :mod:`~minunet.evaluation.inputs`: what a prediction and a truth may be;
- :mod:`~minunet.evaluation.pixel`, :mod:`~minunet.evaluation.rand`,
  :mod:`~minunet.evaluation.warping`, :mod:`~minunet.evaluation.thinned_scores`,
  :mod:`~minunet.evaluation.iou`: one metric each;
- :mod:`~minunet.evaluation.stack`: :func:`evaluate_stack`, all of them at once (``minunet evaluate``
  and the training loop's validation).
"""
from minunet.evaluation.common import EIGHT, FOUR, THRESHOLDS, WARP_THRESHOLDS, above, fiji_thresholds, label4
from minunet.evaluation.inputs import (
                                       as_stack,
                                       check_same_shape,
                                       pred_classes,
                                       pred_probabilities,
                                       pred_segments,
                                       prediction_kind,
                                       prepare,
                                       truth_classes,
)
from minunet.evaluation.iou import iou_per_class
from minunet.evaluation.pixel import pixel_error
from minunet.evaluation.rand import rand_error, truth_segments
from minunet.evaluation.stack import ALL_METRICS, evaluate_stack
from minunet.evaluation.thinned_scores import thinned_scores
from minunet.evaluation.thinning import thin_membranes
from minunet.evaluation.warping import MERGE, OTHER, SPLIT, SPLIT_RADIUS, warp_slice, warping_error

__all__ = ["ALL_METRICS", "EIGHT", "FOUR", "MERGE", "OTHER", "SPLIT", "SPLIT_RADIUS", "THRESHOLDS",
           "WARP_THRESHOLDS", "above", "as_stack", "check_same_shape", "evaluate_stack", "fiji_thresholds",
           "iou_per_class", "label4", "pixel_error", "pred_classes", "pred_probabilities", "pred_segments",
           "prediction_kind", "prepare", "rand_error", "thin_membranes", "thinned_scores", "truth_classes",
           "truth_segments", "warp_slice", "warping_error"]
