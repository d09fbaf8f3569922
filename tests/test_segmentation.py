"""Tests of minunet.inference.segmentation and of ``minunet segment`` / ``minunet predict --segment``."""
from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from minunet.errors import UserError
from minunet.evaluation.stack import evaluate_stack
from minunet.inference import segmentation as S
from tests.cli_runner import run

pytest.importorskip("skimage")


def grid_cells(size=64, step=16):
    """Truth (1 = cell, 0 = membrane) of square cells on a grid, membranes 2 pixels wide."""
    truth = np.ones((size, size), np.uint8)
    for k in range(0, size, step):
        truth[k:k + 2, :] = 0
        truth[:, k:k + 2] = 0
    return truth


def soft(truth, sigma=1.0):
    """A network-like P(cell): the truth blurred, in [0, 1]."""
    return np.clip(ndimage.gaussian_filter(truth.astype(np.float32), sigma), 0, 1)


def test_a_gap_in_a_membrane_merges_thresholded_cells_but_not_objects():
    truth = grid_cells()
    prob = soft(truth)
    prob[16:18, 23:25] = 1.0                              # a gap in the wall between two cells
    labels = S.segment_slice(prob, S.SegmentParams(distance=1.5, merge=0.0))
    assert labels.min() >= 1 and labels.shape == truth.shape   # a partition: every pixel an object
    thresholded = evaluate_stack(prob, truth, metrics=("vrand",))
    objects = evaluate_stack(labels.astype(np.uint16), truth, metrics=("vrand",))
    assert thresholded["v_rand"] < 1.0                    # the gap merges two cells
    assert objects["v_rand"] == objects["v_info"] == 1.0


def test_small_objects_are_dissolved():
    truth = grid_cells()
    truth[2:7, 40] = truth[6, 34:41] = 0                  # walls off a 4x6 cell in a corner
    prob = soft(truth, 0.5)
    params = S.SegmentParams(distance=0.0, merge=0.0)
    with_specks = S.segment_slice(prob, replace(params, min_size=0))
    without = S.segment_slice(prob, replace(params, min_size=60))
    assert np.bincount(with_specks.ravel())[1:].min() < 60
    assert np.bincount(without.ravel())[1:].min() >= 60


def merge(labels, boundary, threshold):
    graph = S.RegionGraph(labels, boundary)
    S.merge_weak(graph, threshold)
    return graph.result()


def test_weak_boundaries_merge_strong_ones_stay():
    labels = np.zeros((10, 12), np.int64)
    labels[:, :4], labels[:, 4:8], labels[:, 8:] = 1, 2, 3
    boundary = np.zeros((10, 12), np.float32)
    boundary[:, 3:5] = 0.2                                # weak between 1 and 2
    boundary[:, 7:9] = 0.9                                # strong between 2 and 3
    merged = merge(labels, boundary, 0.5)
    assert len(np.unique(merged[:, :8])) == 1 and merged[0, 0] != merged[0, 11]
    assert len(np.unique(merge(labels, boundary, 0.95))) == 1
    assert len(np.unique(merge(labels, boundary, 0.1))) == 3


def test_merging_pools_the_boundaries_of_joined_objects():
    """Objects 1 | 2 | 3 in a row: after 1 and 2 join, their boundary with 3 is 2-3's alone."""
    labels = np.repeat(np.array([[1, 1, 2, 2, 3, 3]]), 4, axis=0)
    boundary = np.zeros(labels.shape, np.float32)
    boundary[:, 3:5] = 0.4                                # the 2-3 boundary: mean 0.4
    merged = merge(labels, boundary, 0.45)
    assert len(np.unique(merged)) == 1
    assert S.boundary_strengths(labels, boundary)[(2, 3)] == [pytest.approx(0.8 * 4), 8]


def test_small_objects_join_their_weakest_neighbour():
    labels = np.repeat(np.array([[1, 1, 1, 2, 3, 3, 3]]), 3, axis=0)
    boundary = np.zeros(labels.shape, np.float32)
    boundary[:, 4:] = 0.9                                 # 2 | 3 strong, 1 | 2 weak
    graph = S.RegionGraph(labels, boundary)
    S.dissolve_small(graph, 4)
    joined = graph.result()
    assert (joined[:, :4] == joined[0, 0]).all() and joined[0, 6] != joined[0, 0]


def test_stack_ids_restart_per_slice_and_fit_16_bits():
    truth = grid_cells()
    probs = np.stack([soft(truth), soft(truth[::-1].copy())])
    labels = S.segment_stack(probs)
    assert labels.dtype == np.uint16 and labels.shape == probs.shape
    for s in labels:
        assert set(np.unique(s)) == set(range(1, s.max() + 1))
    assert S.segment_stack(probs[0]).shape == truth.shape
    assert (S.segment_slice(np.zeros((8, 8), np.float32)) == 1).all()   # no cell: one object


@pytest.mark.parametrize("field, value, option", [("threshold", 1.0, "--threshold"), ("min_size", -1, "--min-size"),
                                                  ("merge", 1.5, "--merge")])
def test_bad_parameters_name_their_option(field, value, option):
    with pytest.raises(UserError, match=option):
        replace(S.SegmentParams(), **{field: value}).check()


@pytest.fixture
def probs_file(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    truth = np.stack([grid_cells(), grid_cells(step=32)])
    probs = np.stack([soft(t) for t in truth])
    probs[0, 16:18, 23:25] = 1.0
    tifffile.imwrite(tmp_path / "probs.tif", probs, photometric="minisblack")
    tifffile.imwrite(tmp_path / "truth.tif", truth, photometric="minisblack")
    return tmp_path, truth


def test_segment_command_writes_labels_that_evaluate_scores(probs_file, capsys):
    import tifffile
    tmp, truth = probs_file
    code, out, err = run(["segment", str(tmp / "probs.tif"), "-o", str(tmp / "labels.tif")], capsys)
    assert code == 0, err
    labels = tifffile.imread(tmp / "labels.tif")
    assert labels.dtype == np.uint16 and labels.shape == truth.shape and labels.min() >= 1
    code, out, err = run(["evaluate", str(tmp / "labels.tif"), str(tmp / "truth.tif")], capsys)
    assert code == 0 and "scored as a segmentation" in out, err
    code, _, err = run(["segment", str(tmp / "probs.tif"), "-o", str(tmp / "labels.tif")], capsys)
    assert code == 2 and "--force" in err


def test_segment_tune_picks_from_the_grid(probs_file, capsys, monkeypatch):
    from minunet.training import segment_tuning
    monkeypatch.setattr(segment_tuning, "TUNE_SEEDS", dict(distance=(1.0, 30.0)))
    monkeypatch.setattr(segment_tuning, "TUNE_CLEANUP", dict(merge=(0.0, 0.99)))
    tmp, _ = probs_file
    code, out, err = run(["segment", str(tmp / "probs.tif"), "--tune", str(tmp / "truth.tif"), "--slices", "0",
                          "-o", str(tmp / "tuned.tif")], capsys)
    assert code == 0, err
    assert "chosen: --threshold 0.4 --distance 1 --min-size 0 --merge 0" in err   # 30 and 0.99: one object
    assert err.count(": 1.00000 1.00000") >= 1


@pytest.mark.parametrize("args, message", [
    (["--slices", "0"], "only used with --tune"),
    (["--merge", "2"], "--merge"),
])
def test_segment_user_errors(probs_file, capsys, args, message):
    tmp, _ = probs_file
    code, _, err = run(["segment", str(tmp / "probs.tif"), "-o", str(tmp / "x.tif"), *args], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_segment_refuses_integer_input(probs_file, capsys):
    tmp, _ = probs_file
    code, _, err = run(["segment", str(tmp / "truth.tif"), "-o", str(tmp / "x.tif")], capsys)
    assert code == 2 and "float probabilities" in err


def test_predict_segment_writes_objects(tmp_path, capsys):
    import tifffile

    from minunet.model.checkpoint import save_checkpoint
    from minunet.model.unet import UNet
    save_checkpoint(tmp_path / "model.h5", UNet(depth=2, width=2, device="cpu", seed=5))
    raw = np.random.default_rng(0).integers(0, 256, (2, 40, 50), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "in.tif", raw, photometric="minisblack")
    code, _, err = run(["predict", "-m", str(tmp_path / "model.h5"), str(tmp_path / "in.tif"), "-o",
                        str(tmp_path / "objects.tif"), "--segment", "--device", "cpu"], capsys)
    assert code == 0, err
    labels = tifffile.imread(tmp_path / "objects.tif")
    assert labels.dtype == np.uint16 and labels.shape == raw.shape and labels.min() >= 1
    code, _, err = run(["predict", "-m", str(tmp_path / "model.h5"), str(tmp_path / "in.tif"), "-o",
                        str(tmp_path / "o2.tif"), "--segment", "--output-format", "probs"], capsys)
    assert code == 2 and "--segment" in err
