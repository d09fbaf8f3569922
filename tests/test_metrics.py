"""Tests of minunet.evaluation on hand-made cases with known answers and brute-force references.

tests/test_fiji_reference.py checks the same metrics against Fiji's own values.
"""
import itertools
import json

import numpy as np
import pytest
from scipy import ndimage

from minunet.errors import UserError
from minunet.evaluation import metrics as M
from minunet.evaluation import topology
from minunet.evaluation.overlap import overlap
from minunet.evaluation.rand import adapted_rand_counts, rand_counts, v_info, v_rand
from minunet.evaluation.warping import _warp


def cells(size=20, rows=(7,), cols=(5, 11)):
    """A truth slice: 1 = cell, 0 = one-pixel membranes along the given rows and columns."""
    t = np.ones((size, size), np.uint8)
    t[list(rows), :] = 0
    t[:, list(cols)] = 0
    return t


def patch_of(code):
    """The 3x3 patch (centre background) of a neighbourhood code."""
    patch = np.zeros((3, 3), bool)
    for k, (dy, dx) in enumerate(topology.NEIGHBOURS):
        patch[1 + dy, 1 + dx] = bool(code >> k & 1)
    return patch


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


def fiji_warp_loop(truth, prob, theta):
    """Fiji's simple-point warping as written: full passes over the sorted mismatches until one
    flips nothing (the slow loop that minunet's event-driven warp must reproduce exactly).
    Probabilities compare with theta in float64, as in Fiji."""
    img = truth.astype(np.uint8).copy()
    h, w = img.shape
    while True:
        mismatches = [(x, y) for x in range(w) for y in range(h) if img[y, x] != (float(prob[y, x]) > theta)]
        mismatches.sort(key=lambda p: -np.float32(abs(float(prob[p[1], p[0]]) - theta)))
        flips = 0
        for x, y in mismatches:
            if topology.SIMPLE[topology.neighbourhood_code(img, y, x)]:
                img[y, x] = 1 - img[y, x]
                flips += 1
        if flips == 0:
            return img


def test_thresholds_are_fijis_accumulated_sweep():
    assert len(M.THRESHOLDS) == 11 and M.THRESHOLDS[0] == 0.0
    assert 0.999 < M.THRESHOLDS[-1] < 1.0                 # 0.1 added ten times
    assert len(M.WARP_THRESHOLDS) == 10


def test_simple_point_table_matches_scipy_labelling():
    for code in range(256):
        patch = patch_of(code)
        fg_lab, _ = ndimage.label(patch, structure=M.FOUR)
        touching = {fg_lab[y, x] for y, x in ((0, 1), (1, 0), (1, 2), (2, 1))} - {0}
        bg = ~patch
        bg[1, 1] = False
        n_bg = ndimage.label(bg, structure=M.EIGHT)[1]
        assert topology.SIMPLE[code] == (len(touching) == 1 and n_bg == 1), code
        assert topology.RING_GROUPS[code] == ndimage.label(patch, structure=M.FOUR)[1], code


@pytest.mark.parametrize("levels", [5, 1000])          # few levels: many ties in |p - theta|
def test_event_driven_warp_equals_fijis_pass_loop(rng, levels):
    for _ in range(4):
        truth = ndimage.binary_opening(rng.random((18, 21)) < 0.7).astype(np.uint8)
        prob = (np.round(ndimage.gaussian_filter(rng.random((18, 21)), 1.5) * levels) / levels)
        prob = np.clip((prob - prob.min()) / np.ptp(prob), 0, 1).astype(np.float32)
        for theta in (M.WARP_THRESHOLDS[3], 0.5, 0.7999999999999999):
            warped, remaining = _warp(truth, prob, theta, topology.SIMPLE)
            expected = fiji_warp_loop(truth, prob, theta)
            np.testing.assert_array_equal(warped, expected)
            assert sorted(remaining.tolist()) == np.flatnonzero(expected != M.above(prob, theta)).tolist()


@pytest.mark.parametrize("radius", [1, 2, -1])
def test_split_test_equals_labelling_the_window(rng, radius):
    img = (rng.random((14, 15)) < 0.6).astype(np.uint8)
    h, w = img.shape
    seen, group = np.zeros((h, w), np.int64), np.zeros((h, w), np.int64)
    queue = np.empty(h * w, np.int64)
    for stamp, (y, x) in enumerate(zip(*np.nonzero(img)), start=1):
        window = np.zeros((h, w), bool)
        if radius < 0:
            window[:] = True
        else:
            window[max(0, y - radius):y + radius + 1, max(0, x - radius):x + radius + 1] = True
        removed = img.astype(bool) & window
        removed[y, x] = False
        lab = ndimage.label(removed, structure=M.FOUR)[0]
        around = {lab[v, u] for v in range(y - 1, y + 2) for u in range(x - 1, x + 2)
                  if 0 <= v < h and 0 <= u < w and lab[v, u]}
        assert topology.disconnects(img, y, x, radius, seen, group, stamp, queue) == (len(around) >= 2)


@pytest.mark.parametrize("form", ["float", "uint8_ids", "uint8_255"])
def test_perfect_prediction_scores_zero_error(form):
    truth = np.stack([cells(), cells(rows=(3, 12), cols=(9,))])
    pred = {"float": truth.astype(np.float32), "uint8_ids": truth,
            "uint8_255": truth * np.uint8(255)}[form]
    r = M.evaluate_stack(pred, truth * 255)                # 0/255 truth as in the PNG labels
    for key in ("pixel_error", "rand_error", "adapted_rand_error", "warping_error", "mismatch_error"):
        assert r[key] == 0.0, key
    assert r["splits"] == r["merges"] == r["split_pixels"] == r["merge_pixels"] == 0
    assert r["v_rand"] == r["v_info"] == r["iou_0"] == r["iou_1"] == r["mean_iou"] == 1.0
    json.dumps(r, allow_nan=False)


def test_one_pixel_boundary_shift_is_no_warping_error():
    truth = cells(cols=(5, 11))
    shifted = cells(cols=(6, 12)).astype(np.float32)
    r = M.evaluate_stack(shifted, truth, metrics=("pixel", "warping"))
    assert r["warping_error"] == r["mismatch_error"] == 0.0
    assert r["splits"] == r["merges"] == 0
    assert r["pixel_error"] > 0.05


@pytest.mark.parametrize("gap", [1, 3])
def test_gap_in_membrane_counts_one_merge(gap):
    truth = cells()
    pred = truth.astype(np.float32)
    pred[2:2 + gap, 5] = 1.0                               # open the membrane between two cells
    r = M.warping_error(pred, truth)
    assert (r["merges"], r["splits"], r["merge_pixels"]) == (1, 0, gap)
    assert r["error"] == r["mismatch_error"] == gap / truth.size   # every gap pixel is a merge


def test_cut_through_a_cell_counts_one_split():
    truth = cells()
    pred = truth.astype(np.float32)
    pred[14, 12:] = 0.0                                    # membrane from a wall to the border
    r = M.warping_error(pred, truth)
    assert (r["splits"], r["merges"], r["split_pixels"]) == (1, 0, 1)
    assert r["error"] == r["mismatch_error"] == 1 / truth.size     # the rest is a deformation
    assert M.pixel_error(pred, truth)["error"] > 0


def test_split_window_radius():
    """A ring-shaped cell cut once: the cut pixel's two sides meet only far around the ring, so it
    is a split inside a small window and a hole deletion (no error) in the whole image."""
    truth = np.ones((30, 30), np.uint8)
    truth[[0, -1], :] = truth[:, [0, -1]] = 0              # a membrane frame
    truth[10:20, 10:20] = 0                                # a membrane island: the cell is a ring
    pred = truth.astype(np.float32)
    pred[1:10, 15] = 0.0                                   # a wall from the frame to the island
    near = M.warping_error(pred, truth, radius=3)
    whole = M.warping_error(pred, truth, radius=-1)
    assert near["split_pixels"] == 1 and near["error"] == 1 / truth.size
    assert whole["split_pixels"] == 0 and whole["error"] == 0.0
    assert whole["mismatch_error"] == 1 / truth.size       # the classic error counts it


def test_mismatch_error_respects_theta():
    truth = cells()
    pred = truth.astype(np.float32)
    pred[2, 5] = 0.8                                       # a weak gap: open below 0.8 only
    assert M.warping_error(pred, truth, mismatch_theta=0.9)["mismatch_error"] == 0.0
    assert M.warping_error(pred, truth, mismatch_theta=0.5)["mismatch_error"] == 1 / truth.size
    assert M.warping_error(pred, truth, mismatch_theta=0.55)["mismatch_error"] == 1 / truth.size
    r = M.warping_error(pred, truth, mismatch_theta=None)
    assert r["mismatch_error"] == r["error"] == 0.0 and r["theta"] == 0.9


def test_rand_counts_agree_with_brute_force_pair_count(rng):
    for _ in range(5):
        truth_fg = rng.random((1, 6, 7)) < 0.7
        pred_fg = rng.random((1, 6, 7)) < 0.6
        both, same_t, same_p = brute_force_rand(pred_fg, truth_fg)
        tp, fp, fn = rand_counts(overlap(M.label4(truth_fg[0]), M.label4(pred_fg[0])))
        assert (tp, tp + fp, tp + fn) == (both, same_p, same_t)


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
    tp, fp, fn = np.sum([adapted_rand_counts(overlap(t, p)) for t, p in zip(t_lab, p_lab)], axis=0)
    ours = 1 - 2 * tp / (2 * tp + fp + fn)
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


def test_slice_without_cells_floods_into_one_segment():
    segments = M.thin_membranes(np.zeros((6, 7), bool))
    assert (segments == 1).all()
    truth = cells()
    r = M.evaluate_stack(np.zeros(truth.shape, np.float32), truth, metrics=("vrand",))
    one = overlap(M.label4(truth), np.ones(truth.shape, np.int64))
    assert r["v_rand"] == pytest.approx(v_rand(one)) and r["v_info"] == 0.0


def test_v_info_is_zero_when_an_entropy_is_zero():
    one_cell = np.ones((5, 5), np.int64)
    assert v_info(overlap(one_cell, one_cell)) == 0.0      # both entropies 0, as Fiji
    assert v_rand(overlap(one_cell, one_cell)) == 1.0
    two = one_cell.copy()
    two[:, 3:] = 2
    assert v_info(overlap(one_cell, two)) == v_info(overlap(two, one_cell)) == 0.0


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
    assert set(r) == {"slices", "height", "width", "prediction", "pixel_error", "pixel_error_theta",
                      "rand_error", "rand_error_theta", "adapted_rand_error", "adapted_rand_error_theta"}
    with pytest.raises(UserError, match="unknown metric"):
        M.evaluate_stack(truth, truth, metrics=("pixel", "dice"))


def test_per_threshold_tables():
    truth = cells()
    r = M.evaluate_stack(truth.astype(np.float32), truth, per_threshold=True)
    table = r["per_threshold"]
    assert len(table["thresholds"]) == len(table["pixel_f"]) == len(table["v_info"]) == 11
    assert len(table["warp_thresholds"]) == len(table["split_pixels"]) == 10
    json.dumps(r, allow_nan=False)


def test_undefined_without_truth_cells_is_none():
    truth = np.zeros((8, 8), np.uint8)
    r = M.evaluate_stack(np.zeros((8, 8), np.float32), truth, metrics=("rand", "vrand"))
    assert r["rand_error"] is None and r["v_rand"] is None
    json.dumps(r, allow_nan=False)


def test_segmentation_is_scored_as_a_partition():
    truth = np.stack([cells(), cells(rows=(3, 12), cols=(9,))])
    segments = np.stack([M.label4(s) for s in truth]).astype(np.uint16)
    r = M.evaluate_stack(segments, truth)                  # 16 bits: read as segment ids
    assert r["prediction"] == "segments"
    assert r["rand_error"] == 0.0 and r["v_rand"] == r["v_info"] == 1.0
    assert "pixel_error" not in r and "warping_error" not in r
    partition = np.stack([ndimage.grey_dilation(s, size=3) for s in segments])   # boundaries filled
    assert partition.min() > 0
    r = M.evaluate_stack(partition, truth, metrics=("vrand",))
    assert r["v_rand"] == r["v_info"] == 1.0
    merged = segments.copy()
    merged[merged == 2] = 1                                # two cells as one object
    r = M.evaluate_stack(merged, truth, metrics=("rand", "vrand"))
    assert r["rand_error"] > 0 and r["v_rand"] < 1
    as_classes = M.evaluate_stack(segments, truth, metrics=("pixel",), pred_kind="classes")
    assert as_classes["prediction"] == "classes" and as_classes["pixel_error"] == 0.0


@pytest.mark.parametrize("pred, message", [
    (np.full((1, 16, 16), 1.5, np.float32), r"in \[0, 1\]"),
    (np.full((1, 16, 16), np.nan, np.float32), "NaN"),
    (np.arange(256, dtype=np.uint8).reshape(1, 16, 16), "8-bit probability"),
    (np.zeros((2, 16, 16), np.float32), "shape"),
    (np.zeros((16,), np.float32), "2D image"),
    (np.full((1, 16, 16), -1, np.int32), "segment ids must be >= 0"),
])
def test_bad_inputs_are_user_errors(pred, message):
    with pytest.raises(UserError, match=message):
        M.evaluate_stack(pred, np.ones((1, 16, 16), np.uint8), metrics=("pixel", "rand"))


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
    assert M.warping_error(pred, truth, mismatch_theta=theta)["mismatch_error"] == 0.0
    assert M.pixel_error(pred, truth, thresholds=(theta,))["error"] == 0.0


def test_v_info_is_normalised_mutual_information(rng):
    truth_fg = rng.random((10, 10)) < 0.75
    pred_fg = rng.random((10, 10)) < 0.7
    t_lab, p_lab = M.label4(truth_fg), M.label4(pred_fg)
    ov = overlap(t_lab, p_lab)
    # reference: predicted membrane inside truth cells gets one fresh id per pixel
    inside = t_lab > 0
    t, p = t_lab[inside], p_lab[inside].astype(np.int64)
    p[p == 0] = np.arange(1, (p == 0).sum() + 1) + p.max()
    entropy = lambda x: -sum(c / x.size * np.log(c / x.size) for c in np.unique(x, return_counts=True)[1])  # noqa: E731
    joint = entropy(t * (p.max() + 1) + p)
    mutual = entropy(t) + entropy(p) - joint
    assert v_info(ov) == pytest.approx(2 * mutual / (entropy(t) + entropy(p)))
    both, same_t, same_p = brute_force_rand(pred_fg[None], truth_fg[None])
    assert v_rand(ov) == pytest.approx(2 * both / (same_t + same_p))
