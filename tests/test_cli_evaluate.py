"""Tests of ``minunet evaluate``: files in, a table or JSON out, one-line errors (exit status 2)."""
import importlib.util
import json
import re

import numpy as np
import pytest

from minunet.cli.evaluate import parse_metrics, parse_slices, select_slices
from minunet.errors import UserError
from tests.cli_runner import run

needs_imageio = pytest.mark.skipif(importlib.util.find_spec("minunet.data.imageio") is None,
                                   reason="minunet.data.imageio (read_stack) not written yet")


def truth_stack(n=3, size=20):
    """n label slices (1 = cell, 0 = one-pixel membranes), each with its membranes moved."""
    out = np.ones((n, size, size), np.uint8)
    for k in range(n):
        out[k, 4 + k, :] = 0
        out[k, :, 6 + 2 * k] = 0
    return out


@pytest.fixture
def files(tmp_path):
    """A perfect float32 TIFF prediction, a 0/255 PNG label folder and an HDF5 data file."""
    tifffile = pytest.importorskip("tifffile")
    h5py = pytest.importorskip("h5py")
    from PIL import Image

    truth = truth_stack()
    tifffile.imwrite(tmp_path / "probs.tif", truth.astype(np.float32), photometric="minisblack")
    labels = tmp_path / "labels"
    labels.mkdir()
    for k, s in enumerate(truth):
        Image.fromarray(s * np.uint8(255)).save(labels / f"{k}.png")
    with h5py.File(tmp_path / "data.h5", "w") as f:
        f["labels"] = np.concatenate([truth_stack(2), truth])      # slices 2-4 are `truth`
    return tmp_path, truth


def test_parse_slices():
    assert parse_slices("24-29,3") == [24, 25, 26, 27, 28, 29, 3]
    assert parse_slices(" 5 ") == [5]
    for bad, message in (("3-1", "backwards"), ("a-b", "cannot read"), ("1,1", "twice")):
        with pytest.raises(UserError, match=message):
            parse_slices(bad)


def test_parse_metrics():
    assert parse_metrics("all") == ("pixel", "rand", "warping", "vrand", "iou")
    assert parse_metrics("rand, pixel") == ("pixel", "rand")
    with pytest.raises(UserError, match="unknown dice"):
        parse_metrics("pixel,dice")


def test_select_slices_rules():
    six, thirty = np.zeros((6, 2, 2)), np.zeros((30, 2, 2))
    pred, truth, applied = select_slices(six, thirty, list(range(24, 30)), "P", "T")
    assert (len(pred), len(truth), applied) == (6, 6, "truth")
    pred, truth, applied = select_slices(thirty, thirty, [1, 2], "P", "T")
    assert (len(pred), len(truth), applied) == (2, 2, "both")
    with pytest.raises(UserError, match="out of range for T"):
        select_slices(six, thirty, [30], "P", "T")
    with pytest.raises(UserError, match="select as many"):
        select_slices(six, thirty, [1, 2], "P", "T")


@needs_imageio
def test_perfect_prediction_prints_zero_errors(files, capsys):
    tmp, _ = files
    code, out, err = run(["evaluate", str(tmp / "probs.tif"), str(tmp / "labels"),
                          "--json", str(tmp / "scores.json")], capsys)
    assert code == 0, err
    for label in ("pixel error", "Rand error", "warping error"):
        line = next(line for line in out.splitlines() if line.startswith(label))
        assert line.split()[-2] == "0.000000", line
    scores = json.loads((tmp / "scores.json").read_text())
    assert scores["pixel_error"] == scores["rand_error"] == scores["warping_error"] == 0.0
    assert scores["v_rand"] == scores["mean_iou"] == 1.0 and scores["slices"] == 3


@needs_imageio
def test_hdf5_truth_uses_labels_and_slices(files, capsys):
    tmp, _ = files
    code, out, err = run(["evaluate", str(tmp / "probs.tif"), str(tmp / "data.h5"),
                          "--slices", "2-4", "--metrics", "pixel,rand", "--json", "-"], capsys)
    assert code == 0, err
    scores = json.loads(out)
    assert scores["truth"].endswith("data.h5:/labels")
    assert scores["selection_applied_to"] == "truth"
    assert scores["pixel_error"] == scores["rand_error"] == 0.0
    assert "warping_error" not in scores
    code, out, err = run(["evaluate", str(tmp / "probs.tif"), str(tmp / "data.h5"),
                          "--slices", "0-2", "--metrics", "pixel", "--json", "-"], capsys)
    assert code == 0 and json.loads(out)["pixel_error"] > 0      # the wrong slices score worse


@needs_imageio
def test_same_count_slices_apply_to_both(files, capsys):
    tmp, _ = files
    code, out, err = run(["evaluate", str(tmp / "probs.tif"), str(tmp / "labels"),
                          "--slices", "0,2", "--metrics", "pixel"], capsys)
    assert code == 0, err
    assert "2 slices of 20x20 (--slices applied to both)" in out


@needs_imageio
@pytest.mark.parametrize("case, message", [
    ("missing", "no such file"),
    ("shape", "shape"),
    ("range", r"\[0, 1\]"),
    ("slices", "out of range"),
    ("metric", "unknown"),
])
def test_user_errors_are_one_line(files, capsys, case, message):
    import tifffile

    tmp, truth = files
    pred, extra = tmp / "probs.tif", []
    if case == "missing":
        pred = tmp / "nope.tif"
    elif case == "shape":
        pred = tmp / "short.tif"
        tifffile.imwrite(pred, truth[:2].astype(np.float32), photometric="minisblack")
    elif case == "range":
        pred = tmp / "range.tif"
        tifffile.imwrite(pred, truth.astype(np.float32) * 2, photometric="minisblack")
    elif case == "slices":
        extra = ["--slices", "7"]
    elif case == "metric":
        extra = ["--metrics", "dice"]
    code, out, err = run(["evaluate", str(pred), str(tmp / "labels"), *extra], capsys)
    assert code == 2
    assert err.startswith("Error: ") and len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err
    if case in ("missing", "range"):
        assert str(pred) in err                            # the message names the file


@needs_imageio
def test_json_has_every_threshold_and_the_challenges_warping_error(files, capsys):
    tmp, truth = files
    import tifffile
    pred = truth.astype(np.float32)
    pred[0, 1:3, 6] = 1.0                                 # open a membrane: a merge
    tifffile.imwrite(tmp / "gap.tif", pred, photometric="minisblack")
    code, out, err = run(["evaluate", str(tmp / "gap.tif"), str(tmp / "labels"), "--metrics", "warping",
                          "--mismatch-theta", "min", "--json", "-"], capsys)
    assert code == 0, err
    scores = json.loads(out)
    assert scores["merges"] == 1 and scores["merge_pixels"] == 2
    assert scores["warping_error"] == 2 / truth.size and scores["warping_error_theta"] == 0.0
    assert scores["mismatch_theta"] == 0.0
    table = scores["per_threshold"]
    assert len(table["warp_thresholds"]) == len(table["merge_pixels"]) == 10


@needs_imageio
def test_segmentation_is_scored_without_thresholds(files, capsys):
    import tifffile
    from scipy import ndimage
    tmp, truth = files
    segments = np.stack([ndimage.label(s)[0] for s in truth]).astype(np.uint16)
    tifffile.imwrite(tmp / "segments.tif", segments, photometric="minisblack")
    code, out, err = run(["evaluate", str(tmp / "segments.tif"), str(tmp / "labels")], capsys)
    assert code == 0, err
    assert "scored as a segmentation" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert rows["V_Rand"][-1] == rows["V_Info"][-1] == "1.000000"
    assert "pixel" not in rows and "warping" not in rows


def test_bench_evaluate_runs(capsys, isbi_dir):
    from minunet.benchmarks import evaluate as bench
    assert bench.main(["--slices", "0", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "all metrics of 1 slices of 512x512" in out and ("met" in out or "missed" in out)
