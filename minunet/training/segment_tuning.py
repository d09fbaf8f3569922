"""Choosing the segmentation's parameters on annotated slices (``minunet segment --tune``).

A small grid search that fits the parameters to labelled data, as training fits weights: it scores
each set with the challenge's V_Rand and V_Info (:mod:`minunet.evaluation`) of
:func:`minunet.inference.segmentation.segment_stack`'s objects.
"""
import itertools
from dataclasses import replace

from minunet.evaluation.stack import evaluate_stack
from minunet.inference.segmentation import segment_stack

# The parameter sets --tune scores: seeds first, then size filter and merge.
TUNE_SEEDS = dict(threshold=(0.3, 0.4, 0.5, 0.6, 0.7), distance=(0.0, 1.0, 2.0))
TUNE_CLEANUP = dict(min_size=(0, 50, 100, 200, 400), merge=(0.0, 0.3, 0.5, 0.7))


def score(labels, truth):
    """(V_Rand, V_Info) of a segmentation against truth labels."""
    r = evaluate_stack(labels, truth, metrics=("vrand",), pred_kind="segments")
    return r["v_rand"], r["v_info"]


def tune(probs, truth, base, progress=None):
    """The parameters, starting from `base`, that maximise (V_Rand + V_Info) / 2 on these slices.

    Two stages over the grids above: seeds (threshold, distance) without size filter and merge,
    then size filter and merge with the best seeds. Returns (best params, [(params, v_rand, v_info)]).
    """
    tried = []

    def stage(start, grid):
        best = None
        for values in itertools.product(*grid.values()):
            params = replace(start, **dict(zip(grid, values)))
            v_rand, v_info = score(segment_stack(probs, params), truth)
            tried.append((params, v_rand, v_info))
            if progress is not None:
                progress(params, v_rand, v_info)
            if best is None or v_rand + v_info > best[1]:
                best = (params, v_rand + v_info)
        return best[0]
    seeded = stage(replace(base, min_size=0, merge=0.0), TUNE_SEEDS)
    return stage(seeded, TUNE_CLEANUP), tried
