"""The kernel contract, op by op, forward and backward: every backend against the float64 reference.

Each test takes a ``backend`` fixture parametrised over the backends that run in this process
(``tests/kernel_checks.py`` says where each runs: the CPU here; CUDA on a GPU here, else in
Numba's CUDA simulator in one child pytest started by :func:`test_cuda_in_simulator`, whose
failures and seeds are reported here). Convolution tests also run each backend with its blocks
made tiny (``-edges``) so that small shapes cross many block edges. Every test draws fresh inputs
from the ``rng`` fixture (its seed is printed; replay with ``--seed N``) and compares with the
reference in float64 under the per-op tolerances of ``kernel_checks``.

The ``gradcheck``-marked tests (``pytest --gradcheck``) cover many shapes: odd sizes, 1x1
outputs, 1 channel and more than 64 channels, batches > 1, non-square kernels. The unmarked
smoke tests check one small shape per op in the fast suite. Backend-specific paths are tested
apart: tests/test_kernels_cpu.py (dispatch, direct, Winograd, GEMM blocks, prefetch, vector
width, threads) and tests/test_kernels_cuda_tiles.py (production tiles, long reductions, chunks).
"""
import importlib
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from minunet.kernels import CONTRACT, OPS
from minunet.kernels import reference as ref

from .kernel_checks import (
    ADD_SHAPES,
    BACKENDS,
    CONV_CASES,
    CONV_FORWARDS,
    CROP_CASES,
    DROPOUT_SHAPES,
    DTYPES,
    ELEMENTWISE_SHAPES,
    LOSS_CASES,
    MODE,
    OPTIMISER_SHAPES,
    POOL_SHAPES,
    TILINGS,
    UPCONV_CASES,
    assert_close,
    assert_equal,
    backend_under_test,
    conv_backward_variants,
    conv_grad_scales,
    conv_scale,
    draw,
    on,
    to_host,
    tolerance,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """A backend's kernel module, with its own blocking (tiny tiles in the simulator)."""
    with backend_under_test(request.param, TILINGS[0], monkeypatch) as module:
        yield module


def _tiled(op):
    """(backend, tiling) pairs for a convolution-like op; the CPU up-convolution has no blocks to shrink."""
    return [pytest.param((name, tiling), id=f"{name}-{tiling}") for name in BACKENDS for tiling in TILINGS
            if not (name == "cpu" and op == "conv_transpose2d" and tiling == "edges")]


@pytest.fixture(params=_tiled("conv2d"))
def conv_backend(request, monkeypatch):
    with backend_under_test(*request.param, monkeypatch) as module:
        yield module


@pytest.fixture(params=_tiled("conv_transpose2d"))
def upconv_backend(request, monkeypatch):
    with backend_under_test(*request.param, monkeypatch) as module:
        yield module


# ----------------------------------------------------------------------------- where the backends run

@pytest.mark.gradcheck
@pytest.mark.skipif(MODE != "parent", reason="the CUDA tests run in this process")
def test_cuda_in_simulator(request):
    """Every CUDA kernel test (this module and test_kernels_cuda_tiles.py) in Numba's CUDA
    simulator, in one child pytest; each failure is reported here with its seed."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "tests/test_kernels.py", "tests/test_kernels_cuda_tiles.py",
               "--gradcheck", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", "-o", "junit_logging=system-out",
               "-W", "ignore:overflow encountered:RuntimeWarning"]
        seed = request.config.getoption("--seed")
        if seed is not None:
            cmd += ["--seed", str(seed)]
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
        tail = (res.stdout + res.stderr)[-3000:]
        print(tail)
        failures = _failures(report) if report.exists() else []
    assert res.returncode == 0 and not failures, "CUDA kernels failed in the simulator:\n" + (
        "\n".join(failures) or tail)


def _failures(report):
    """'test id (seed N): first lines of the error' for each failed or erroring test of a JUnit report."""
    out = []
    for case in ET.parse(report).iter("testcase"):
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        if problem is None:
            continue
        stdout = case.findtext("system-out") or ""
        seed = next((line.split()[2] for line in stdout.splitlines() if line.startswith("random seed:")), "none")
        message = (problem.get("message") or problem.text or "").strip().splitlines()
        out.append(f"{case.get('classname')}::{case.get('name')} (seed {seed}; replay with "
                   f"NUMBA_ENABLE_CUDASIM=1 pytest --gradcheck --seed {seed}): {' | '.join(message[:6])}")
    return out


@pytest.mark.skipif(MODE != "parent", reason="a GPU or the simulator is present")
def test_cuda_without_gpu_is_a_clear_error():
    import minunet.kernels.cuda as kc
    from minunet.kernels import BackendUnavailable
    ok, why = kc.available()
    assert not ok and why
    with pytest.raises(BackendUnavailable, match=r"pip install 'minunet\[cuda\]' \(missing: "):
        kc.conv2d_forward(np.zeros((1, 1, 3, 3)), np.zeros((1, 1, 3, 3)), None)


@pytest.mark.parametrize("name", ["reference", "cpu", "cuda"])
def test_every_backend_module_exposes_the_contract(name):
    """Every name of minunet.kernels.CONTRACT, the ops callable, the module's name its backend's."""
    module = importlib.import_module(f"minunet.kernels.{name}")
    missing = [attr for attr in CONTRACT if not hasattr(module, attr)]
    assert not missing, f"minunet.kernels.{name} lacks {missing}"
    assert all(callable(getattr(module, op)) for op in OPS + ("asarray", "to_numpy"))
    assert module.name == name


def test_arrays_round_trip(backend):
    a = backend.asarray([1, 2], dtype=np.float32)
    assert a.dtype == np.float32 and np.array_equal(backend.to_numpy(a), [1, 2])
    assert isinstance(backend.to_numpy(a), np.ndarray) and isinstance(a, backend.xp.ndarray)


# ----------------------------------------------------------------------------- convolution

@pytest.mark.gradcheck
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d(rng, conv_backend, case, dtype):
    kb = conv_backend
    n, c, k, h, w, kh, kw = case
    x, x64 = draw(rng, (n, c, h, w), dtype)
    wt, wt64 = draw(rng, (k, c, kh, kw), dtype, 1 / np.sqrt(c * kh * kw))
    b, b64 = draw(rng, (k,), dtype)
    X, W, B = on(kb, x, wt, b)
    for index, (relu, bias) in enumerate(CONV_FORWARDS):
        y = kb.conv2d_forward(X, W, B if bias else None, relu=relu)
        y64 = ref.conv2d_forward(x64, wt64, b64 if bias else None, relu=relu)
        assert_close(y, y64, dtype, "conv2d", conv_scale(x64, wt64, b64 if bias else None))
        gy, gy64 = draw(rng, y64.shape, dtype)
        for need_gx in conv_backward_variants(index):
            # The ReLU mask comes from the backend's output y (fed to both) so that both mask the same pixels.
            got = kb.conv2d_backward(X, W, on(kb, gy), y=y if relu else None, need_gx=need_gx)
            want = ref.conv2d_backward(x64, wt64, gy64, y=to_host(y).astype(np.float64) if relu else None,
                                       need_gx=need_gx)
            scales = conv_grad_scales(x64, wt64, gy64)
            if need_gx:
                assert_close(got[0], want[0], dtype, "conv2d", scales[0])
            else:
                assert got[0] is None
            assert_close(got[1], want[1], dtype, "conv2d", scales[1])
            assert_close(got[2], want[2], dtype, "conv2d", scales[2])


@pytest.mark.gradcheck
def test_conv2d_errors_and_views(rng, backend):
    with pytest.raises(ValueError):
        backend.conv2d_forward(*on(backend, np.zeros((1, 2, 5, 5)), np.zeros((3, 4, 3, 3))), None)
    with pytest.raises(ValueError):
        backend.conv2d_forward(*on(backend, np.zeros((1, 2, 2, 5)), np.zeros((3, 2, 3, 3))), None)
    # Non-contiguous inputs (a channel slice, Fortran-ordered weights) give the same result.
    x = rng.standard_normal((2, 6, 8, 9))
    w = rng.standard_normal((4, 3, 3, 3))
    got = backend.conv2d_forward(on(backend, x)[:, ::2], backend.xp.asfortranarray(on(backend, w)), None)
    assert_close(got, ref.conv2d_forward(x[:, ::2], w, None), np.float64, "conv2d")


# ----------------------------------------------------------------------------- max pooling

@pytest.mark.gradcheck
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", POOL_SHAPES)
def test_max_pool2d(rng, backend, shape, dtype):
    # A shuffled linspace: no ties, so the argmax is unambiguous.
    x = rng.permutation(np.linspace(-1, 1, int(np.prod(shape)))).reshape(shape).astype(dtype)
    y, idx = backend.max_pool2d_forward(on(backend, x))
    y_ref, idx_ref = ref.max_pool2d_forward(x.astype(np.float64))
    assert_close(y, y_ref, dtype, "exact")
    assert_equal(idx, idx_ref.astype(np.uint8))
    gy, gy64 = draw(rng, y_ref.shape, dtype)
    assert_close(backend.max_pool2d_backward(on(backend, gy), idx, x.shape),
                 ref.max_pool2d_backward(gy64, idx_ref, x.shape), dtype, "exact")


@pytest.mark.gradcheck
def test_max_pool2d_ties_first_wins(rng, backend):
    for shape in [(2, 3, 6, 6), (2, 2, 5, 6)]:                       # many ties; an odd row dropped
        x = rng.integers(0, 2, shape).astype(np.float32)
        assert_equal(backend.max_pool2d_forward(on(backend, x))[1], ref.max_pool2d_forward(x)[1].astype(np.uint8))
    with pytest.raises(ValueError):
        backend.max_pool2d_forward(on(backend, np.zeros((1, 1, 1, 4))))


# ----------------------------------------------------------------------------- transposed convolution

@pytest.mark.gradcheck
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", [2, 3, 4])
@pytest.mark.parametrize("case", UPCONV_CASES)
def test_conv_transpose2d(rng, upconv_backend, case, kernel, dtype):
    kb = upconv_backend
    n, c, k, h, w = case
    x, x64 = draw(rng, (n, c, h, w), dtype)
    wt, wt64 = draw(rng, (c, k, kernel, kernel), dtype, 1 / np.sqrt(c))
    b, b64 = draw(rng, (k,), dtype)
    X, W, B = on(kb, x, wt, b)
    for bias in (True, False):
        y = kb.conv_transpose2d_forward(X, W, B if bias else None)
        assert_close(y, ref.conv_transpose2d_forward(x64, wt64, b64 if bias else None), dtype, "conv_transpose2d")
    gy, gy64 = draw(rng, y.shape, dtype)
    for got, want in zip(kb.conv_transpose2d_backward(X, W, on(kb, gy)), ref.conv_transpose2d_backward(x64, wt64, gy64)):
        assert_close(got, want, dtype, "conv_transpose2d")


# ----------------------------------------------------------------------------- crop and concatenate

@pytest.mark.gradcheck
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CROP_CASES)
def test_crop_concat(rng, backend, case, dtype):
    skip_shape, up_shape = case
    skip, skip64 = draw(rng, skip_shape, dtype)
    up, up64 = draw(rng, up_shape, dtype)
    assert_close(backend.crop_concat_forward(*on(backend, skip, up)), ref.crop_concat_forward(skip64, up64),
                 dtype, "exact")
    gy, gy64 = draw(rng, (up_shape[0], skip_shape[1] + up_shape[1]) + up_shape[2:], dtype)
    for got, want in zip(backend.crop_concat_backward(on(backend, gy), skip_shape),
                         ref.crop_concat_backward(gy64, skip_shape)):
        assert_close(got, want, dtype, "exact")
        assert got.flags.c_contiguous


@pytest.mark.gradcheck
def test_crop_concat_odd_margin_raises(backend):
    with pytest.raises(ValueError, match="odd"):
        backend.crop_concat_forward(*on(backend, np.zeros((1, 1, 5, 5)), np.zeros((1, 1, 4, 4))))


# ----------------------------------------------------------------------------- ReLU, dropout, gradient sums

@pytest.mark.gradcheck
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ELEMENTWISE_SHAPES)
def test_relu(rng, backend, shape, dtype):
    x, _ = draw(rng, shape, dtype)
    x.reshape(-1)[::3] = 0                                      # exact zeros: no gradient passes
    gy, gy64 = draw(rng, shape, dtype)
    y = backend.relu_forward(on(backend, x))
    assert_close(y, ref.relu_forward(x.astype(np.float64)), dtype, "exact")
    assert_close(backend.relu_backward(on(backend, gy), y), ref.relu_backward(gy64, x.astype(np.float64)),
                 dtype, "exact")


@pytest.mark.gradcheck
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9])
@pytest.mark.parametrize("shape", DROPOUT_SHAPES)
def test_dropout_matches_reference_bit_for_bit(rng, backend, shape, p, dtype):
    x = rng.standard_normal(shape).astype(dtype)
    seed = int(rng.integers(2 ** 62))
    assert_equal(backend.dropout_forward(on(backend, x), p, seed), ref.dropout_forward(x, p, seed))
    assert_equal(backend.dropout_backward(on(backend, x), p, seed), ref.dropout_backward(x, p, seed))


@pytest.mark.gradcheck
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ADD_SHAPES)
def test_add(rng, backend, dtype, shape):
    """The engine's gradient sum: IEEE addition, so bit for bit NumPy's; views and mixed shapes too."""
    a, a64 = draw(rng, shape, dtype)
    b, b64 = draw(rng, shape, dtype)
    A, B = on(backend, a, b)
    got = backend.add(A, B)
    assert got is not A and got is not B
    assert_equal(got, a + b)
    assert_close(got, ref.add(a64, b64), dtype, "add")
    if len(shape) == 4:                              # strided views, a broadcast
        assert_equal(backend.add(A[:, :, ::2], B[:, ::-1, ::2]), a[:, :, ::2] + b[:, ::-1, ::2])
        assert_equal(backend.add(A, B[:1, :1]), a + b[:1, :1])


# ----------------------------------------------------------------------------- loss

@pytest.mark.gradcheck
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", LOSS_CASES)
@pytest.mark.parametrize("scale, label_dtype", [(1.0, np.uint8), (1e4, np.int64)])
def test_softmax_cross_entropy(rng, backend, case, scale, label_dtype, dtype):
    n, k, h, w = case
    logits, logits64 = draw(rng, case, dtype, scale)
    labels = rng.integers(0, k, (n, h, w)).astype(label_dtype)
    labels[rng.random((n, h, w)) < 0.2] = 255                   # some ignored pixels
    weights = rng.random((n, h, w)).astype(dtype)
    for wts in (weights, None):
        loss, count, grad = backend.softmax_cross_entropy(*on(backend, logits, labels, wts))
        loss_ref, count_ref, grad_ref = ref.softmax_cross_entropy(
            logits64, labels, None if wts is None else wts.astype(np.float64))
        assert isinstance(loss, float) and isinstance(count, int) and count == count_ref
        assert np.isfinite(loss) and np.all(np.isfinite(to_host(grad)))
        assert abs(loss - loss_ref) <= tolerance(dtype, "softmax_cross_entropy") * max(abs(loss_ref), 1.0)
        assert_close(grad, grad_ref, dtype, "softmax_cross_entropy")
    assert_close(backend.softmax(on(backend, logits)), ref.softmax(logits64), dtype, "softmax")


@pytest.mark.gradcheck
def test_softmax_cross_entropy_edge_cases(backend):
    logits = on(backend, np.zeros((1, 2, 2, 2)))
    with pytest.raises(ValueError, match="labels must lie"):              # 2 is out of range, not ignored
        backend.softmax_cross_entropy(logits, on(backend, np.array([[[0, 1], [2, 0]]])), None)
    with pytest.raises(ValueError):
        backend.softmax_cross_entropy(logits, on(backend, np.zeros((1, 2, 3), int)), None)
    loss, count, grad = backend.softmax_cross_entropy(logits, on(backend, np.full((1, 2, 2), 7)), None, ignore=7)
    assert loss == 0.0 and count == 0 and not to_host(grad).any()


# ----------------------------------------------------------------------------- optimisers

@pytest.mark.gradcheck
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", OPTIMISER_SHAPES)
def test_optimisers_in_place(rng, backend, dtype, shape):
    """Three steps of SGD and of Adam with fresh gradients, in place on the backend's arrays."""
    p, v, m = (rng.standard_normal(shape).astype(dtype) for _ in range(3))
    states = {"sgd": [p, v], "adam": [p, m, np.abs(v)]}
    theirs = {key: [a.astype(np.float64) for a in arrays] for key, arrays in states.items()}
    ours = {key: list(on(backend, *[a.copy() for a in arrays])) for key, arrays in states.items()}
    for step in (1, 2, 3):
        g = rng.standard_normal(shape).astype(dtype)
        backend.sgd_step(ours["sgd"][0], on(backend, g), ours["sgd"][1], 0.01, 0.99, 1e-4)
        ref.sgd_step(theirs["sgd"][0], g.astype(np.float64), theirs["sgd"][1], 0.01, 0.99, 1e-4)
        backend.adam_step(ours["adam"][0], on(backend, g), *ours["adam"][1:], 1e-3, 0.9, 0.999, 1e-8, step, 1e-4)
        ref.adam_step(theirs["adam"][0], g.astype(np.float64), *theirs["adam"][1:], 1e-3, 0.9, 0.999, 1e-8, step, 1e-4)
    for key in states:
        for a, b in zip(ours[key], theirs[key]):
            assert_close(a, b, dtype, "optimiser")


# ----------------------------------------------------------------------------- smoke tests (fast suite)

def test_smoke_conv2d(rng, backend):
    x, x64 = draw(rng, (1, 2, 6, 5), np.float32)
    w, w64 = draw(rng, (3, 2, 3, 3), np.float32)
    b, b64 = draw(rng, (3,), np.float32)
    X, W, B = on(backend, x, w, b)
    y = backend.conv2d_forward(X, W, B, relu=True)
    assert_close(y, ref.conv2d_forward(x64, w64, b64, relu=True), np.float32, "conv2d", conv_scale(x64, w64, b64))
    gy, gy64 = draw(rng, y.shape, np.float32)
    got = backend.conv2d_backward(X, W, on(backend, gy), y=y)
    want = ref.conv2d_backward(x64, w64, gy64, y=to_host(y).astype(np.float64))
    for a, e, s in zip(got, want, conv_grad_scales(x64, w64, gy64)):
        assert_close(a, e, np.float32, "conv2d", s)


def test_smoke_pool_upconv_concat(rng, backend):
    x, x64 = draw(rng, (1, 2, 4, 6), np.float32)
    y, idx = backend.max_pool2d_forward(on(backend, x))
    y_ref, idx_ref = ref.max_pool2d_forward(x)
    assert_equal(y, y_ref)
    assert_equal(backend.max_pool2d_backward(y, idx, x.shape), ref.max_pool2d_backward(y_ref, idx_ref, x.shape))
    w, w64 = draw(rng, (2, 3, 2, 2), np.float32)
    X, W = on(backend, x, w)
    up = backend.conv_transpose2d_forward(X, W, None)
    assert_close(up, ref.conv_transpose2d_forward(x64, w64, None), np.float32, "conv_transpose2d")
    up64 = to_host(up).astype(np.float64)
    for a, e in zip(backend.conv_transpose2d_backward(X, W, up), ref.conv_transpose2d_backward(x64, w64, up64)):
        assert_close(a, e, np.float32, "conv_transpose2d")
    skip, _ = draw(rng, (1, 2, 10, 14), np.float32)
    cat = backend.crop_concat_forward(on(backend, skip), up)
    assert_equal(cat, ref.crop_concat_forward(skip, to_host(up)))
    for a, e in zip(backend.crop_concat_backward(cat, skip.shape), ref.crop_concat_backward(to_host(cat), skip.shape)):
        assert_equal(a, e)


def test_smoke_elementwise_loss_optim(rng, backend):
    x = rng.standard_normal((1, 3, 4, 5)).astype(np.float32)
    X = on(backend, x)
    assert_equal(backend.relu_forward(X), ref.relu_forward(x))
    assert_equal(backend.relu_backward(X, X), ref.relu_backward(x, x))
    assert_equal(backend.dropout_forward(X, 0.5, 42), ref.dropout_forward(x, 0.5, 42))
    labels = rng.integers(0, 3, (1, 4, 5))
    loss, count, grad = backend.softmax_cross_entropy(X * 1e4, on(backend, labels), None)
    loss_ref, count_ref, grad_ref = ref.softmax_cross_entropy((x * 1e4).astype(np.float64), labels, None)
    assert count == count_ref and abs(loss - loss_ref) <= 1e-5 * abs(loss_ref)
    assert_close(grad, grad_ref, np.float32, "softmax_cross_entropy")
    p, v = on(backend, x.copy(), np.zeros_like(x))
    backend.sgd_step(p, X, v, 0.1, 0.9, 0.0)
    assert_close(p, 0.9 * x.astype(np.float64), np.float32, "optimiser")
