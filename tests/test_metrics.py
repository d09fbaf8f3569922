"""Tests of minunet.evaluation.metrics on hand-made cases with known answers and brute-force references."""
import itertools
import json

import numpy as np
import pytest
from scipy import ndimage

from minunet.errors import UserError
from minunet.evaluation import metrics as M


def cells(size=20, rows=(7,), cols=(5, 11)):
    """A truth slice: 1 = cell, 0 = one-pixel membranes along the given rows and columns."""
    t = np.ones((size, size), np.uint8)
    t[list(rows), :] = 0
    t[:, list(cols)] = 0
    return t


def brute_force_rand(pred_fg, truth_fg):
    """Foreground-restricted Rand (TP, same-truth, same-pred) by listing every ordered pixel pair."""
    both = same_t_total = same_p_total = 0
    for p_slice, t_slice in zip(pred_fg, truth_fg):
        t_lab, p_lab = M.label4(t_slice), M.label4(p_slice)
        pixels = list(zip(*np.nonzero(t_lab)))             # truth membrane is ignored
        for a, b in itertools.product(pixels, pixels):
            same_t = t_lab[a] == t_lab[b]
            same_p = a == b or (p_lab[a] > 0 and p_lab[a] == p_lab[b])   # membrane: singletons
            both += same_t and same_p
            same_t_total += same_t
            same_p_total += same_p
    return both, same_t_total, same_p_total


def test_thresholds_are_fijis_accumulated_sweep():
    assert len(M.THRESHOLDS) == 11 and M.THRESHOLDS[0] == 0.0
    assert 0.999 < M.THRESHOLDS[-1] < 1.0                 # 0.1 added ten times
    assert len(M.WARP_THRESHOLDS) == 10


def test_simple_point_table_matches_scipy_labelling():
    for code in range(256):
        patch = np.zeros((3, 3), bool)
        for k, (dy, dx) in enumerate(M.NEIGHBOURS):
            patch[1 + dy, 1 + dx] = bool(code >> k & 1)
        fg_lab, _ = ndimage.label(patch, structure=M.FOUR)
        touching = {fg_lab[y, x] for y, x in ((0, 1), (1, 0), (1, 2), (2, 1))} - {0}
        bg = ~patch
        bg[1, 1] = False
        n_bg = ndimage.label(bg, structure=M.EIGHT)[1]
        assert M.SIMPLE[code] == (len(touching) == 1 and n_bg == 1), code


@pytest.mark.parametrize("form", ["float", "uint8_ids", "uint8_255"])
def test_perfect_prediction_scores_zero_error(form):
    truth = np.stack([cells(), cells(rows=(3, 12), cols=(9,))])
    pred = {"float": truth.astype(np.float32), "uint8_ids": truth,
            "uint8_255": truth * np.uint8(255)}[form]
    r = M.evaluate_stack(pred, truth * 255)                # 0/255 truth as in the PNG labels
    for key in ("pixel_error", "rand_error", "adapted_rand_error", "warping_error",
                "split_merge_error"):
        assert r[key] == 0.0, key
    assert r["splits"] == r["merges"] == 0
    assert r["v_rand"] == r["v_info"] == r["iou_0"] == r["iou_1"] == r["mean_iou"] == 1.0
    json.dumps(r, allow_nan=False)


def test_one_pixel_boundary_shift_is_no_warping_error():
    truth = cells(cols=(5, 11))
    shifted = cells(cols=(6, 12)).astype(np.float32)
    r = M.evaluate_stack(shifted, truth, metrics=("pixel", "warping"))
    assert r["warping_error"] == 0.0
    assert r["splits"] == r["merges"] == 0
    assert r["pixel_error"] > 0.05


@pytest.mark.parametrize("gap", [1, 3])
def test_gap_in_membrane_counts_one_merge(gap):
    truth = cells()
    pred = truth.astype(np.float32)
    pred[2:2 + gap, 5] = 1.0                               # open the membrane between two cells
    r = M.warping_error(pred, truth)
    assert (r["merges"], r["splits"]) == (1, 0)
    assert r["error"] == gap / truth.size                  # every gap pixel is topological


def test_cut_through_a_cell_counts_one_split():
    truth = cells()
    pred = truth.astype(np.float32)
    pred[14, 12:] = 0.0                                    # membrane from a wall to the border
    r = M.warping_error(pred, truth)
    assert (r["splits"], r["merges"]) == (1, 0)
    assert r["error"] == 1 / truth.size                    # the rest of the cut is a deformation
    assert M.pixel_error(pred, truth)["error"] > 0


def test_warping_respects_theta():
    truth = cells()
    pred = truth.astype(np.float32)
    pred[2, 5] = 0.8                                       # a weak gap: open only below 0.8
    assert M.warping_error(pred, truth, theta=0.9)["error"] == 0.0
    assert M.warping_error(pred, truth, theta=0.5)["error"] == 1 / truth.size
    assert M.warping_error(pred, truth, theta=None)["error"] == 0.0


def test_rand_agrees_with_brute_force_pair_count(rng):
    for _ in range(5):
        truth_fg = rng.random((2, 6, 7)) < 0.7
        pred_fg = rng.random((2, 6, 7)) < 0.6
        truth_lab = np.stack([M.label4(s) for s in truth_fg])
        both, same_t, same_p = brute_force_rand(pred_fg, truth_fg)
        f, precision, recall = M.rand_fscore(pred_fg, truth_lab)
        assert f == pytest.approx(2 * both / (same_t + same_p))
        assert precision == pytest.approx(both / same_p)
        assert recall == pytest.approx(both / same_t)


def test_rand_error_is_best_threshold_of_brute_force(rng):
    truth = (rng.random((2, 6, 6)) < 0.7).astype(np.uint8)
    prob = rng.random((2, 6, 6)).astype(np.float32)
    best = max(2 * b / (t + p) for b, t, p in
               (brute_force_rand(prob > th, truth > 0) for th in M.THRESHOLDS))
    assert M.rand_error(prob, truth)["error"] == pytest.approx(1 - best)


def test_adapted_rand_variant_matches_scikit_image(rng):
    skm = pytest.importorskip("skimage.metrics")
    truth = (rng.random((3, 12, 12)) < 0.75).astype(np.uint8)
    pred_fg = rng.random((3, 12, 12)) < 0.7
    t_lab = np.stack([M.label4(s) for s in truth])
    p_lab = np.stack([M.label4(s) for s in pred_fg])
    sums = sum(np.array(M.adapted_rand_pair_sums(t, p)) for t, p in zip(t_lab, p_lab))
    ours = 1 - M._fscore(*sums)
    # scikit-image on the whole stack, ids made unique per slice (membrane too) so no pair spans slices
    offset = np.arange(3)[:, None, None] * 1000
    theirs = skm.adapted_rand_error(np.where(t_lab > 0, t_lab + offset, 0), p_lab + offset + 1)[0]
    assert ours == pytest.approx(theirs)
    # the challenge's Rand error differs: predicted membrane counts as singletons, pairs as c^2
    assert M.rand_error(pred_fg.astype(np.float32), truth)["error"] != pytest.approx(ours)


def test_thinned_scores_forgive_thick_membranes():
    truth = cells()
    thick = truth.copy()
    thick[:, 4:7] = 0                                      # the membrane at column 5, 3 pixels wide
    thick[:, 10:13] = 0
    thick[6:9, :] = 0
    r = M.evaluate_stack(thick.astype(np.float32), truth, metrics=("rand", "vrand"))
    assert r["rand_error"] > 0.1
    assert r["v_rand"] == r["v_info"] == 1.0
    lines = M.thin_membranes(thick > 0) == 0
    assert lines.sum() == (truth == 0).sum()               # thinned back to one-pixel lines


def test_iou_known_cases():
    truth = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 1, 1, 1]])
    assert M.iou_per_class(pred, truth) == {0: 0.5, 1: 2 / 3}
    r = M.iou_per_class(pred, truth, classes=[0, 1, 2])
    assert np.isnan(r[2])
    r = M.evaluate_stack(np.array([[0.1, 0.6, 0.9, 0.7]], np.float32), truth, metrics=("iou",))
    assert (r["iou_0"], r["iou_1"], r["mean_iou"]) == (0.5, 2 / 3, pytest.approx(7 / 12))


def test_metric_subset_and_unknown_metric():
    truth = cells()
    r = M.evaluate_stack(truth.astype(np.float32), truth, metrics=("pixel", "rand"))
    assert set(r) == {"slices", "height", "width", "pixel_error", "pixel_error_theta",
                      "rand_error", "rand_error_theta", "adapted_rand_error",
                      "adapted_rand_error_theta"}
    with pytest.raises(UserError, match="unknown metric"):
        M.evaluate_stack(truth, truth, metrics=("pixel", "dice"))


def test_undefined_without_truth_cells_is_none():
    truth = np.zeros((8, 8), np.uint8)
    r = M.evaluate_stack(np.zeros((8, 8), np.float32), truth, metrics=("rand", "vrand"))
    assert r["rand_error"] is None and r["v_rand"] is None
    json.dumps(r, allow_nan=False)


@pytest.mark.parametrize("pred, message", [
    (np.full((1, 16, 16), 1.5, np.float32), r"in \[0, 1\]"),
    (np.full((1, 16, 16), np.nan, np.float32), "NaN"),
    (np.arange(256, dtype=np.uint8).reshape(1, 16, 16), "8-bit probability"),
    (np.zeros((2, 16, 16), np.float32), "shape"),
    (np.zeros((16,), np.float32), "2D image"),
])
def test_bad_inputs_are_user_errors(pred, message):
    with pytest.raises(UserError, match=message):
        M.evaluate_stack(pred, np.ones((1, 16, 16), np.uint8), metrics=("pixel",))


def test_probabilities_as_truth_are_refused():
    with pytest.raises(UserError, match="integer class ids"):
        M.truth_classes(np.full((4, 4), 0.5))


def test_isbi_labels(isbi_dir):
    from PIL import Image
    truth = np.stack([np.array(Image.open(isbi_dir / "train" / "label" / f"{i}.png"))
                      for i in (0, 15, 29)])
    r = M.evaluate_stack(truth, truth)
    assert r["pixel_error"] == r["rand_error"] == r["warping_error"] == 0.0
    assert r["v_rand"] == r["v_info"] == 1.0
    # perturb: open membranes (a 3x3 closing of the cells) and sprinkle membrane noise
    rng = np.random.default_rng(0)
    perturbed = np.stack([ndimage.binary_closing(s > 0, np.ones((3, 3))) for s in truth])
    perturbed &= rng.random(truth.shape) > 0.01
    r = M.evaluate_stack(perturbed.astype(np.float32), truth)
    assert r["pixel_error"] > 0 and r["rand_error"] > 0 and r["warping_error"] > 0
    assert r["merges"] > 0 and r["v_rand"] < 1 and r["v_info"] < 1


def test_thresholds_compare_in_float64_like_fiji():
    theta = M.THRESHOLDS[3]                                # 0.30000000000000004
    assert M.above(np.float32([0.3]), theta)[0]            # 0.3f = 0.30000001 > theta in float64
    truth = cells()
    pred = truth * np.float32(0.3)
    assert M.warping_error(pred, truth, theta=theta)["error"] == 0.0
    assert M.pixel_error(pred, truth, thresholds=(theta,))["error"] == 0.0


def test_v_info_is_normalised_mutual_information(rng):
    truth_fg = rng.random((10, 10)) < 0.75
    pred_fg = rng.random((10, 10)) < 0.7
    t_lab, p_lab = M.label4(truth_fg), M.label4(pred_fg)
    v_rand, v_info = M.info_scores(t_lab, p_lab)
    # reference: predicted membrane inside truth cells gets one fresh id per pixel
    inside = t_lab > 0
    t, p = t_lab[inside], p_lab[inside].astype(np.int64)
    p[p == 0] = np.arange(1, (p == 0).sum() + 1) + p.max()
    entropy = lambda x: -sum(c / x.size * np.log(c / x.size) for c in np.unique(x, return_counts=True)[1])  # noqa: E731
    joint = entropy(t * (p.max() + 1) + p)
    mutual = entropy(t) + entropy(p) - joint
    assert v_info == pytest.approx(2 * mutual / (entropy(t) + entropy(p)))
    both, same_t, same_p = brute_force_rand(pred_fg[None], truth_fg[None])
    assert v_rand == pytest.approx(2 * both / (same_t + same_p))
