"""The CUDA kernels against the float64 reference, forward and backward, on a GPU or in the simulator.

Where the checks run (``pytest --gradcheck``):

* **On a GPU** (CuPy imports and sees a device): in this process, on CuPy arrays, with the
  production tile sizes and with tiny tiles.
* **Without a GPU**: Numba's CUDA simulator must be switched on (``NUMBA_ENABLE_CUDASIM=1``)
  before ``numba.cuda`` is first imported, and it then replaces the CUDA target for the whole
  process. Other test modules import Numba in this pytest process, so instead of flipping the
  variable here, :func:`test_cuda_kernels_in_simulator` runs this same file in a child
  ``python -m pytest`` with the variable set, and reports the child's failures (with their
  random seeds). In that child (or in any run started with the variable already set) the
  kernel tests below run directly in the simulator on NumPy arrays.

The simulator runs every CUDA thread as a Python thread, so the shapes are tiny; the kernels are
instantiated with tiny tiles (``SMALL_TILE``) so that the same shapes still cross many tile, block
and chunk edges: sizes that are not multiples of the tiles, a single output pixel, several blocks
in every grid axis, batch > 1, channel counts above the tile width, several reduction chunks.
One test also runs the production tiles on a shape just over one tile. Every run draws fresh
random inputs (seed printed; replay with ``--seed``).
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minunet.kernels import reference as ref

ROOT = Path(__file__).resolve().parents[1]
IN_SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def _gpu_usable():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


MODE = "simulator" if IN_SIMULATOR else ("gpu" if _gpu_usable() else "parent")
on_device = pytest.mark.skipif(MODE == "parent", reason="runs in the simulator child (test_cuda_kernels_in_simulator)")


# ----------------------------------------------------------------------------- the simulator child

@pytest.mark.gradcheck
@pytest.mark.skipif(MODE != "parent", reason="kernel tests run directly here")
def test_cuda_kernels_in_simulator(request):
    """Run this module's kernel tests in Numba's CUDA simulator, in a child process."""
    cmd = [sys.executable, "-m", "pytest", str(Path(__file__).resolve()), "--gradcheck", "-q", "-rfE",
           "-p", "no:cacheprovider", "-W", "ignore:overflow encountered:RuntimeWarning"]
    seed = request.config.getoption("--seed")
    if seed is not None:
        cmd += ["--seed", str(seed)]
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    tail = (res.stdout + res.stderr)[-8000:]
    print(tail)
    assert res.returncode == 0, f"CUDA kernels failed in the simulator:\n{tail}"


@pytest.mark.skipif(MODE != "parent", reason="a GPU or the simulator is present")
def test_cuda_without_gpu_is_a_clear_error():
    import minunet.kernels.cuda as kc
    from minunet.kernels import BackendUnavailable
    ok, why = kc.available()
    assert not ok and why
    with pytest.raises(BackendUnavailable, match=r"pip install 'minunet\[cuda\]' \(missing: "):
        kc.conv2d_forward(np.zeros((1, 1, 3, 3)), np.zeros((1, 1, 3, 3)), None)


# ----------------------------------------------------------------------------- helpers

TOL = {np.float32: 3e-5, np.float64: 1e-11}


@pytest.fixture(scope="module")
def kb():
    import minunet.kernels.cuda as kc
    ok, why = kc.available()
    assert ok, why
    return kc


@pytest.fixture(params=["small"] if MODE == "simulator" else ["small", "production"])
def tiles(request, monkeypatch, kb):
    """Tiny tiles (many edges on tiny shapes) everywhere; also the production tiles on a GPU."""
    from minunet.kernels.cuda import conv
    if request.param == "small":
        monkeypatch.setattr(conv, "TILE", SMALL_TILE(conv))
        monkeypatch.setattr(conv, "BIAS_THREADS", 16)
        monkeypatch.setattr(conv, "BIAS_PIXELS_PER_THREAD", 2)
        monkeypatch.setattr(conv, "WGRAD_MIN_CHUNK", 24)
    return request.param


def SMALL_TILE(conv):
    """4 channels x 16 pixels per block, 8-deep slices, 2x2 per thread: 16 threads."""
    return conv.Tile(bm=4, bn=16, bk=8, tm=2, tn=2)


def draw(rng, shape, dtype, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


def check(kb, got, want, dtype, what=""):
    """got (a backend array, computed in dtype) against the float64 reference want."""
    got = kb.to_numpy(got)
    assert got.dtype == dtype, what
    assert got.shape == want.shape, what
    tol = TOL[dtype]
    scale = max(1.0, float(np.abs(want).max()) if want.size else 1.0)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale, err_msg=what)


def as64(*arrays):
    return [None if a is None else a.astype(np.float64) for a in arrays]


# ----------------------------------------------------------------------------- convolution

CONV_CASES = [
    # x shape, w shape, bias, relu, dtype, need_gx
    ((2, 3, 7, 9), (5, 3, 3, 3), True, True, np.float32, True),     # several blocks on every axis, batch 2
    ((2, 3, 7, 9), (5, 3, 3, 3), True, False, np.float64, False),   # float64, first layer (no gx)
    ((1, 2, 3, 3), (3, 2, 3, 3), True, True, np.float32, True),     # a single output pixel
    ((2, 3, 4, 5), (2, 3, 2, 3), False, False, np.float64, True),   # non-square kernel, no bias
    ((1, 10, 3, 4), (6, 10, 1, 1), True, False, np.float32, True),  # 1x1 head, channels > tile width
]


@pytest.mark.gradcheck
@on_device
@pytest.mark.parametrize("xs, ws, bias, relu, dtype, need_gx", CONV_CASES)
def test_conv2d(kb, tiles, rng, xs, ws, bias, relu, dtype, need_gx):
    x, w = draw(rng, xs, dtype), draw(rng, ws, dtype, 1 / np.sqrt(np.prod(ws[1:])))
    b = draw(rng, ws[:1], dtype) if bias else None
    y = kb.conv2d_forward(kb.asarray(x), kb.asarray(w), None if b is None else kb.asarray(b), relu=relu)
    y_ref = ref.conv2d_forward(*as64(x, w, b), relu=relu)
    check(kb, y, y_ref, dtype, "conv2d forward")
    gy = draw(rng, y_ref.shape, dtype)
    got = kb.conv2d_backward(kb.asarray(x), kb.asarray(w), kb.asarray(gy), y=y if relu else None, need_gx=need_gx)
    want = ref.conv2d_backward(*as64(x, w, gy), y=y_ref if relu else None, need_gx=need_gx)
    for name, g, r in zip(("gx", "gw", "gb"), got, want):
        if r is None:
            assert g is None
        else:
            check(kb, g, r, dtype, f"conv2d backward {name}")


@pytest.mark.gradcheck
@on_device
def test_conv2d_production_tiles(kb, rng):
    """The production tiles on a shape just over one tile: 2 pixel blocks, 2 reduction slices."""
    from minunet.kernels.cuda import conv
    assert conv.TILE.bn < 72
    x, w, b = draw(rng, (1, 2, 10, 11), np.float32), draw(rng, (3, 2, 3, 3), np.float32), draw(rng, (3,), np.float32)
    y = kb.conv2d_forward(kb.asarray(x), kb.asarray(w), kb.asarray(b), relu=True)
    check(kb, y, ref.conv2d_forward(*as64(x, w, b), relu=True), np.float32, "conv2d forward, production tile")
    gy = draw(rng, (1, 3, 8, 9), np.float32)
    got = kb.conv2d_backward(kb.asarray(x), kb.asarray(w), kb.asarray(gy))
    for name, g, r in zip(("gx", "gw", "gb"), got, ref.conv2d_backward(*as64(x, w, gy))):
        check(kb, g, r, np.float32, f"conv2d backward {name}, production tile")


@pytest.mark.gradcheck
@on_device
@pytest.mark.parametrize("k, bias, dtype", [(2, True, np.float32), (4, True, np.float32), (3, False, np.float64)])
def test_conv_transpose2d(kb, tiles, rng, k, bias, dtype):
    x, w = draw(rng, (2, 5, 3, 4), dtype), draw(rng, (5, 3, k, k), dtype, 0.5)
    b = draw(rng, (3,), dtype) if bias else None
    y = kb.conv_transpose2d_forward(kb.asarray(x), kb.asarray(w), None if b is None else kb.asarray(b))
    y_ref = ref.conv_transpose2d_forward(*as64(x, w, b))
    check(kb, y, y_ref, dtype, "conv_transpose2d forward")
    gy = draw(rng, y_ref.shape, dtype)
    got = kb.conv_transpose2d_backward(kb.asarray(x), kb.asarray(w), kb.asarray(gy))
    for name, g, r in zip(("gx", "gw", "gb"), got, ref.conv_transpose2d_backward(*as64(x, w, gy))):
        check(kb, g, r, dtype, f"conv_transpose2d backward {name}")


# ----------------------------------------------------------------------------- pooling, crop, elementwise

@pytest.mark.gradcheck
@on_device
@pytest.mark.parametrize("shape, dtype", [((2, 3, 7, 9), np.float32), ((1, 1, 2, 2), np.float64)])
def test_max_pool2d(kb, rng, shape, dtype):
    x = rng.permutation(np.linspace(-1, 1, int(np.prod(shape)))).reshape(shape).astype(dtype)   # no ties
    y, idx = kb.max_pool2d_forward(kb.asarray(x))
    y_ref, idx_ref = ref.max_pool2d_forward(x.astype(np.float64))
    check(kb, y, y_ref, dtype, "max_pool2d forward")
    assert kb.to_numpy(idx).dtype == np.uint8
    np.testing.assert_array_equal(kb.to_numpy(idx), idx_ref)
    gy = draw(rng, y_ref.shape, dtype)
    check(kb, kb.max_pool2d_backward(kb.asarray(gy), idx, x.shape),
          ref.max_pool2d_backward(gy.astype(np.float64), idx_ref, x.shape), dtype, "max_pool2d backward")


@pytest.mark.gradcheck
@on_device
def test_max_pool2d_ties_first_wins(kb, rng):
    x = rng.integers(0, 2, (2, 2, 5, 6)).astype(np.float32)
    _, idx = kb.max_pool2d_forward(kb.asarray(x))
    np.testing.assert_array_equal(kb.to_numpy(idx), ref.max_pool2d_forward(x)[1])


@pytest.mark.gradcheck
@on_device
def test_crop_concat(kb, rng):
    skip, up = draw(rng, (2, 3, 9, 11), np.float32), draw(rng, (2, 4, 5, 7), np.float32)
    y = kb.crop_concat_forward(kb.asarray(skip), kb.asarray(up))
    y_ref = ref.crop_concat_forward(skip, up)
    np.testing.assert_array_equal(kb.to_numpy(y), y_ref)
    gy = draw(rng, y_ref.shape, np.float32)
    for g, r in zip(kb.crop_concat_backward(kb.asarray(gy), skip.shape), ref.crop_concat_backward(gy, skip.shape)):
        np.testing.assert_array_equal(kb.to_numpy(g), r)
    with pytest.raises(ValueError, match="odd"):
        kb.crop_concat_forward(kb.asarray(skip), kb.asarray(up[:, :, :4]))


@pytest.mark.gradcheck
@on_device
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_and_dropout(kb, rng, dtype):
    x = draw(rng, (2, 3, 5, 7), dtype)
    x[0, 0, 0, :3] = 0
    y = kb.relu_forward(kb.asarray(x))
    np.testing.assert_array_equal(kb.to_numpy(y), ref.relu_forward(x))
    gy = draw(rng, x.shape, dtype)
    np.testing.assert_array_equal(kb.to_numpy(kb.relu_backward(kb.asarray(gy), y)), ref.relu_backward(gy, x.clip(0)))
    seed, p = int(rng.integers(0, 2 ** 63)), 0.3
    got = kb.to_numpy(kb.dropout_forward(kb.asarray(x), p, seed))
    want = ref.dropout_forward(x, p, seed)
    np.testing.assert_array_equal(got == 0, want == 0)             # the hash mask, bit for bit
    check(kb, got, want.astype(np.float64), dtype, "dropout forward")
    check(kb, kb.dropout_backward(kb.asarray(gy), p, seed), ref.dropout_backward(gy, p, seed).astype(np.float64),
          dtype, "dropout backward")
    np.testing.assert_array_equal(kb.to_numpy(kb.add(kb.asarray(x), kb.asarray(gy))), x + gy)
    np.testing.assert_array_equal(kb.to_numpy(kb.dropout_forward(kb.asarray(x), 0.0, seed)), x)


# ----------------------------------------------------------------------------- loss and optimisers

@pytest.mark.gradcheck
@on_device
@pytest.mark.parametrize("dtype, scale, weighted, label_dtype", [
    (np.float32, 3.0, True, np.uint8), (np.float32, 1e4, False, np.int64), (np.float64, 3.0, True, np.int64)])
def test_softmax_cross_entropy(kb, rng, dtype, scale, weighted, label_dtype):
    n, k, h, w = 2, 3, 5, 7
    logits = draw(rng, (n, k, h, w), dtype, scale)
    labels = rng.integers(0, k, (n, h, w)).astype(label_dtype)
    labels[0, 0, :4] = 255                                           # ignored pixels
    weights = rng.random((n, h, w)).astype(dtype) if weighted else None
    loss, count, g = kb.softmax_cross_entropy(kb.asarray(logits), kb.asarray(labels),
                                              None if weights is None else kb.asarray(weights))
    loss_ref, count_ref, g_ref = ref.softmax_cross_entropy(logits.astype(np.float64), labels,
                                                           None if weights is None else weights.astype(np.float64))
    assert isinstance(loss, float) and isinstance(count, int)
    assert count == count_ref
    np.testing.assert_allclose(loss, loss_ref, rtol=TOL[dtype] * 10, atol=TOL[dtype] * scale)
    check(kb, g, g_ref, dtype, "softmax_cross_entropy gradient")
    check(kb, kb.softmax(kb.asarray(logits)), ref.softmax(logits.astype(np.float64)), dtype, "softmax")
    labels[1, 2, 3] = k                                              # out of range and not ignore
    with pytest.raises(ValueError, match="labels must lie"):
        kb.softmax_cross_entropy(kb.asarray(logits), kb.asarray(labels), None)


@pytest.mark.gradcheck
@on_device
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_optimisers(kb, rng, dtype):
    shape = (3, 5, 7)
    p, v, m, v2 = draw(rng, shape, dtype), draw(rng, shape, dtype), draw(rng, shape, dtype), np.abs(draw(rng, shape, dtype))
    states = {"sgd": [p.copy(), v.copy()], "adam": [p.copy(), m.copy(), v2.copy()]}
    refs = {key: [a.astype(np.float64) for a in arrs] for key, arrs in states.items()}
    dev = {key: [kb.asarray(a) for a in arrs] for key, arrs in states.items()}
    for step in range(1, 4):
        g = draw(rng, shape, dtype)
        kb.sgd_step(dev["sgd"][0], kb.asarray(g), dev["sgd"][1], 0.1, 0.9, 1e-3)
        ref.sgd_step(refs["sgd"][0], g.astype(np.float64), refs["sgd"][1], 0.1, 0.9, 1e-3)
        kb.adam_step(*dev["adam"][:1], kb.asarray(g), *dev["adam"][1:], 1e-2, 0.9, 0.999, 1e-8, step, 1e-3)
        ref.adam_step(*refs["adam"][:1], g.astype(np.float64), *refs["adam"][1:], 1e-2, 0.9, 0.999, 1e-8, step, 1e-3)
    for key in states:
        for got, want in zip(dev[key], refs[key]):
            check(kb, got, want, dtype, key)
