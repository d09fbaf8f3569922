"""The CPU backend's GEMM on strided views (kernels/cpu/blas.py), with either BLAS it can load."""
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from minunet.kernels.cpu import blas


def _window(rng, rows, cols, dtype):
    """A (rows, cols) view with a row stride larger than cols, inside a bigger array."""
    big = rng.standard_normal((rows + 3, cols + 5)).astype(dtype)
    return big[2:2 + rows, 3:3 + cols]


@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_on_windows_accumulates(rng, dtype, tol, trans_a, trans_b):
    m, n, k = (int(v) for v in rng.integers(1, 40, 3))
    a = _window(rng, *((k, m) if trans_a else (m, k)), dtype)
    b = _window(rng, *((n, k) if trans_b else (k, n)), dtype)
    c = _window(rng, m, n, dtype)
    c0 = c.astype(np.float64)
    alpha, beta = 0.5, 1.0
    blas.gemm(a, b, c, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta)
    opa = (a.T if trans_a else a).astype(np.float64)
    opb = (b.T if trans_b else b).astype(np.float64)
    expected = alpha * opa @ opb + beta * c0
    assert np.abs(c - expected).max() <= tol * max(1.0, np.abs(expected).max()) * k


def test_gemm_rejects_bad_operands(rng):
    a = rng.standard_normal((4, 6)).astype(np.float32)
    with pytest.raises(ValueError, match="do not agree"):
        blas.gemm(a, a, np.empty((4, 4), np.float32))
    with pytest.raises(ValueError, match="contiguous"):
        blas.gemm(a[:, ::2], np.ones((3, 4), np.float32), np.empty((4, 4), np.float32))
    with pytest.raises(TypeError, match="dtypes differ"):
        blas.gemm(a, a.T.astype(np.float64), np.empty((4, 4), np.float32))


@pytest.mark.parametrize("choice", ["default", "scipy"])
def test_either_blas_loads_and_agrees(choice):
    """The scipy-openblas32 wheel (default) and the SciPy fallback (MINUNET_BLAS=scipy) both work."""
    code = textwrap.dedent("""
        import numpy as np
        from minunet.kernels.cpu import blas
        rng = np.random.default_rng()
        a, b = rng.standard_normal((37, 53)), rng.standard_normal((53, 29))
        c = np.zeros((37, 29))
        blas.gemm(a, b, c)
        print(blas.BLAS_NAME)
        print(np.abs(c - a @ b).max())
    """)
    env = dict(os.environ)
    env.pop("MINUNET_BLAS", None)
    if choice == "scipy":
        env["MINUNET_BLAS"] = "scipy"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    name, err = out.stdout.strip().splitlines()[-2:]
    assert float(err) < 1e-12
    if choice == "scipy":
        assert name.startswith("SciPy")
    else:
        pytest.importorskip("scipy_openblas32")
        assert name.startswith("OpenBLAS")


def test_parallel_for_splits_in_order_and_joins(monkeypatch):
    """Every item in exactly one part, parts in order, the first on the calling thread; a worker's
    error reaches the caller, after every part has finished."""
    monkeypatch.setattr(blas, "WORKERS", 3)
    caller = threading.get_ident()
    for n in (1, 2, 3, 7, 100):
        parts = blas.parallel_for(lambda part: (list(part), threading.get_ident()), list(range(n)))
        assert [i for part, _ in parts for i in part] == list(range(n))
        assert len(parts) == min(3, n) and parts[0][1] == caller
        assert all(abs(len(p) - n / len(parts)) < 1 for p, _ in parts)

    finished = []

    def fails_last(part):
        if part[0] == 2:
            raise RuntimeError("worker failed")
        time.sleep(0.05)
        finished.append(part[0])

    with pytest.raises(RuntimeError, match="worker failed"):
        blas.parallel_for(fails_last, [0, 1, 2])
    assert sorted(finished) == [0, 1]
