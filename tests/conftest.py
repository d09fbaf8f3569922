"""Shared test options and fixtures.

``pytest`` runs the fast suite. ``pytest --gradcheck`` also runs the tests marked ``gradcheck``:
finite-difference gradient checks on the float64 reference backend and the cross-backend checks of
every backend (CPU; CUDA on a GPU or in Numba's simulator). Every random test draws a fresh seed,
printed so a failure can be replayed with ``--seed N``.
"""
import os
from pathlib import Path

import numpy as np
import pytest

from minunet.data.isbi import ENV as ISBI_ENV
from minunet.data.isbi import isbi_dir

ROOT = Path(__file__).resolve().parents[1]
ISBI = isbi_dir()


def pytest_addoption(parser):
    parser.addoption("--gradcheck", action="store_true", default=False,
                     help="also run numerical gradient checks and cross-backend kernel checks")
    parser.addoption("--seed", type=int, default=None, help="replay random tests with this seed")


def pytest_configure(config):
    config.addinivalue_line("markers", "gradcheck: numerical gradient and cross-backend checks (--gradcheck)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--gradcheck"):
        return
    skip = pytest.mark.skip(reason="gradient/cross-backend check: run with pytest --gradcheck")
    for item in items:
        if "gradcheck" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def seed(request):
    """A fresh random seed per test (or --seed), printed for replay."""
    value = request.config.getoption("--seed")
    if value is None:
        value = int.from_bytes(os.urandom(4), "little")
    print(f"random seed: {value} (replay with --seed {value})")
    return value


@pytest.fixture
def rng(seed):
    """A NumPy Generator drawn from the test's seed."""
    return np.random.default_rng(seed)


@pytest.fixture
def isbi_dir():
    """The ISBI 2012 PNG slices beside the repository; skips when they are absent."""
    if not (ISBI / "train" / "image").is_dir():
        pytest.skip(f"ISBI 2012 data not found at {ISBI} (set {ISBI_ENV} to its folder)")
    return ISBI


@pytest.fixture
def cpu_dispatch():
    """Change the CPU backend's dispatch thresholds and block sizes for one test:
    ``cpu_dispatch(direct_max=..., ...)`` (fields of ``minunet.kernels.cpu.dispatch.Dispatch``);
    the measured defaults come back afterwards."""
    dispatch = pytest.importorskip("minunet.kernels.cpu.dispatch")
    saved = dispatch.current()
    yield lambda **changes: dispatch.install(dispatch.current().replace(**changes))
    dispatch.install(saved)
