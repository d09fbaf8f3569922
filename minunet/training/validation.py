"""Validation during training: the held-out slices predicted whole, scored, and judged.

Two classes (EM membranes): the ISBI pixel and Rand errors of the foreground probability; the
lower Rand error marks the best model (the paper's criterion). More classes: the argmax pixel
error marks it, and the Rand error of foreground against background is reported beside it.

A model that calls (almost) every pixel one class scores exactly what a constant prediction
scores, whatever its loss says; :func:`degenerate_reason` recognises that, so that the log and
the summary can say so instead of reporting a number that looks like a result.
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np

from minunet.data.datafile import UNLABELLED, load_slices, normalize
from minunet.engine.autograd import no_grad
from minunet.errors import UserError
from minunet.evaluation import metrics
from minunet.inference import tiling

ONE_CLASS = 0.99                 # a prediction with this share of its pixels in one class is degenerate
BASELINE_MARGIN = 0.005          # within this of the constant prediction's Rand error: no better than it


@dataclass
class Scores:
    """One validation's figures; ``key`` is the one that ranks models (lower is better)."""

    pixel_error: float
    rand_error: Optional[float]
    key: float
    majority_share: float        # the largest share of pixels predicted as one class
    best_threshold: Optional[float] = None


class Validation:
    """The validation slices of a data file, loaded once, and how a model scores on them."""

    def __init__(self, data_path, slices, classes, pad="mirror", batch=1):
        raw, labels = load_slices(data_path, slices)
        self.images, self.labels = normalize(raw), np.asarray(labels)
        if (self.labels == UNLABELLED).any():
            raise UserError(f"--val-slices: {data_path} has unlabelled pixels (label {UNLABELLED}) in the "
                            "validation slices, which cannot be scored; validate on fully labelled slices")
        self.classes, self.pad, self.batch = classes, pad, batch
        self._baseline = None

    @property
    def key_name(self):
        """What ranks models: the Rand error (two classes) or the pixel error (more)."""
        return "Rand error" if self.classes == 2 else "pixel error"

    def probabilities(self, model, max_tile):
        """Class probabilities (N, K, H, W) of the validation slices (overlap-tile, eval mode)."""
        tile = tiling.fit_tile(model, max_tile, *self.images.shape[-2:])
        was_training = model.training
        model.eval()
        try:
            with no_grad():
                return tiling.predict_stack(model, self.images, tile=tile, pad=self.pad, batch=self.batch)
        finally:
            model.train(was_training)

    def score(self, probs):
        """The :class:`Scores` of class probabilities (N, K, H, W) against the labels."""
        predicted = probs.argmax(axis=1)
        shares = np.bincount(predicted.ravel(), minlength=probs.shape[1]) / predicted.size
        if self.classes == 2:
            s = metrics.evaluate_stack(probs[:, 1], self.labels, metrics=("pixel", "rand"))
            return Scores(s["pixel_error"], s["rand_error"], s["rand_error"], float(shares.max()),
                          s["pixel_error_theta"])
        truth = self.labels.astype(np.int64)
        pixel = float(np.mean(predicted != truth))
        s = metrics.evaluate_stack(1.0 - probs[:, 0], (truth > 0).astype(np.uint8), metrics=("rand",))
        return Scores(pixel, s["rand_error"], pixel, float(shares.max()))

    def baseline(self):
        """The best :class:`Scores` a constant prediction (every pixel one class) gets here."""
        if self._baseline is None:
            shape = (len(self.images), self.classes) + self.images.shape[-2:]
            constant = []
            for c in range(self.classes):
                probs = np.zeros(shape, np.float32)
                probs[:, c] = 1.0
                constant.append(self.score(probs))
            best_rand = [s.rand_error for s in constant if s.rand_error is not None]
            self._baseline = Scores(min(s.pixel_error for s in constant), min(best_rand) if best_rand else None,
                                    min(s.key for s in constant), 1.0)
        return self._baseline


def degenerate_reason(scores, baseline):
    """Why these scores are those of a model that has not learned yet, or None if they are not."""
    if scores.majority_share >= ONE_CLASS:
        return f"it calls {100 * scores.majority_share:.1f}% of the validation pixels one class"
    if (scores.best_threshold in (0.0, 1.0)
            and scores.pixel_error >= baseline.pixel_error - BASELINE_MARGIN):
        return (f"its best threshold is {scores.best_threshold:g}, an extreme, and its pixel error "
                f"{scores.pixel_error:.4g} no better than one class's ({baseline.pixel_error:.4g})")
    if (scores.rand_error is not None and baseline.rand_error is not None
            and scores.rand_error >= baseline.rand_error - BASELINE_MARGIN):
        return (f"its Rand error {scores.rand_error:.4g} is no better than calling every pixel one class "
                f"({baseline.rand_error:.4g})")
    return None


ADVICE = ("likely causes: too few iterations so far, a learning rate too high or too low for this "
          "data (try the default --optimizer adam --lr 3e-4), or labels with the classes swapped or "
          "blank (check with `minunet data info`)")
