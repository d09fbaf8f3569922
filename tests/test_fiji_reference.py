"""``minunet evaluate``'s metrics against the values of Fiji's own metric code, the ISBI 2012 challenge's.

The cases and Fiji's values per threshold lie in ``../shared/metrics-reference`` (its README says
how they were made and what each key is; ``MINUNET_METRICS_REFERENCE`` names another folder).
Scores must agree to 1e-9, pixel counts exactly. Skipped when the folder is absent.
"""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from minunet.evaluation.stack import evaluate_stack

REFERENCE = Path(os.environ.get("MINUNET_METRICS_REFERENCE",
                                Path(__file__).resolve().parents[2] / "shared" / "metrics-reference"))
CASES = ("a_label", "b_blur_noise", "c_merge_split", "d_all_cell", "e_random")
TOL = 1e-9

pytestmark = pytest.mark.skipif(not (REFERENCE / "labels.tif").is_file(),
                                reason=f"no Fiji reference values at {REFERENCE}")


def fiji_values(name):
    """A reference JSON file; Fiji's log lines before the JSON object are skipped."""
    text = (REFERENCE / f"fiji_{name}.json").read_text()
    return json.loads(text[text.index("{"):])


def read(name):
    import tifffile
    return tifffile.imread(REFERENCE / f"{name}.tif")


@pytest.fixture(scope="module")
def labels():
    return read("labels")


def check_warping(scores, fiji, suffix="r20"):
    """Per-threshold warping counts of an evaluate_stack result against Fiji's, exactly."""
    table = scores["per_threshold"]
    assert table["mismatches"] == fiji["mismatch_px_per_th"]
    assert [list(p) for p in zip(table["split_pixels"], table["merge_pixels"])] == \
        fiji[f"split_merge_px_per_th_{suffix}"]
    if f"split_merge_clusters_per_th_{suffix}" in fiji:
        assert [list(p) for p in zip(table["splits"], table["merges"])] == \
            fiji[f"split_merge_clusters_per_th_{suffix}"]
    pixels = scores["slices"] * scores["height"] * scores["width"]
    errors = [(s + m) / pixels for s, m in fiji[f"split_merge_px_per_th_{suffix}"]]
    assert scores["warping_error"] == pytest.approx(min(errors), abs=TOL)
    best = errors.index(min(errors))
    assert scores["warping_error_theta"] == pytest.approx(table["warp_thresholds"][best])
    assert [scores["split_pixels"], scores["merge_pixels"]] == fiji[f"split_merge_px_per_th_{suffix}"][best]
    assert scores["mismatch_error"] == fiji["mismatch_px_per_th"][-1] / pixels      # at theta 0.9
    if "official_sm_warping_error_r20" in fiji and suffix == "r20":
        assert scores["warping_error"] == pytest.approx(fiji["official_sm_warping_error_r20"], abs=TOL)


@pytest.mark.parametrize("case", CASES)
def test_every_metric_matches_fiji(case, labels):
    fiji = fiji_values(case)
    prob = read(case)
    metrics = ("pixel", "rand", "vrand") + (("warping",) if "mismatch_px_per_th" in fiji else ())
    scores = evaluate_stack(prob, labels, metrics=metrics, per_threshold=True)
    table = scores["per_threshold"]
    for ours, theirs in (("pixel_f", "pixel_f_per_th"), ("rand_f", "rand_f_per_th"),
                         ("v_rand", "v_rand_per_th"), ("v_info", "v_info_per_th")):
        np.testing.assert_allclose(table[ours], fiji[theirs], rtol=0, atol=TOL, err_msg=ours)
    assert scores["pixel_error"] == pytest.approx(fiji["pixel_error"], abs=TOL)
    assert scores["rand_error"] == pytest.approx(1 - max(fiji["rand_f_per_th"]), abs=TOL)
    assert scores["v_rand"] == pytest.approx(max(fiji["v_rand_per_th"]), abs=TOL)
    assert scores["v_info"] == pytest.approx(max(fiji["v_info_per_th"]), abs=TOL)
    if "mismatch_px_per_th" in fiji:
        check_warping(scores, fiji)
    if "split_merge_px_per_th_full" in fiji:                 # Fiji's radius -1: the whole image
        whole = evaluate_stack(prob, labels, metrics=("warping",), split_radius=-1, per_threshold=True)
        check_warping(whole, fiji, "full")


def test_warping_on_random_noise_matches_fiji(labels):
    fiji = fiji_values("e_random_slice0")
    scores = evaluate_stack(read("e_random")[:1], labels[:1], metrics=("warping",), per_threshold=True)
    check_warping(scores, fiji)
