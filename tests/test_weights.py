"""minunet.data.weights: the fast weight map equals the brute-force definition."""
import math

import numpy as np
import pytest

from minunet.data import weights as W
from minunet.data.synth import synth_slice


def random_cells(rng, size=24, n=6):
    """Binary labels: a few rectangles of cells (1) on membrane (0), some touching diagonally."""
    labels = np.zeros((size, size), np.uint8)
    for _ in range(n):
        y, x = rng.integers(0, size - 3, 2)
        h, w = rng.integers(2, 7, 2)
        labels[y:y + h, x:x + w] = 1
    return labels


def test_matches_brute_force_binary(rng):
    for _ in range(3):
        labels = random_cells(rng)
        np.testing.assert_allclose(W.weight_map(labels), W.weight_map_reference(labels), atol=1e-5)


def test_matches_brute_force_synthetic_and_multiclass(rng):
    labels = synth_slice(rng, 48)[1]
    np.testing.assert_allclose(W.weight_map(labels, w0=7, sigma=3), W.weight_map_reference(labels, w0=7, sigma=3),
                               atol=1e-5)
    multi = rng.integers(0, 4, (20, 20)).astype(np.uint8)
    multi[rng.random((20, 20)) < 0.5] = 0
    np.testing.assert_allclose(W.weight_map(multi), W.weight_map_reference(multi), atol=1e-5)


def test_two_cells_by_hand():
    """One membrane column between two cells: d1 = d2 = 1 there, so w = w_c + w0 exp(-4/(2 sigma^2))."""
    labels = np.ones((5, 7), np.uint8)
    labels[:, 3] = 0
    cw = np.array([2.0, 0.5], np.float32)
    w = W.weight_map(labels, class_weight=cw)
    assert w[2, 3] == pytest.approx(2.0 + 10 * math.exp(-4 / 50), rel=1e-6)
    assert w[2, 0] == pytest.approx(0.5)


def test_class_weights_balance():
    cw = W.class_weights([300, 100, 0])
    assert cw[2] == 0 and cw[0] * 300 == pytest.approx(cw[1] * 100)
    assert (cw[0] * 300 + cw[1] * 100) / 400 == pytest.approx(1.0)


def test_one_object_no_border_term():
    labels = np.zeros((8, 8), np.uint8)
    labels[2:5, 2:5] = 1
    w = W.weight_map(labels)
    assert len(np.unique(w)) == 2                         # class weights only
