"""The CUDA backend's own configuration: the production tiles, long reductions, weight-gradient chunks.

The contract tests (tests/test_kernels.py) run the CUDA kernels with tiny tiles in the simulator;
these run the production tile configuration (``conv.TILE`` and the chunking constants as
shipped) on shapes chosen so that small images still take the production paths: many reduction
slices, several weight-gradient chunks, several pixel blocks and batches > 1. They run where the
CUDA backend runs: on a GPU in this process, else in the simulator child of
``tests/test_kernels.py::test_cuda_in_simulator``.
"""
import numpy as np
import pytest

from minunet.kernels import reference as ref

from .kernel_checks import (
    MODE,
    assert_close,
    backend_under_test,
    conv_grad_scales,
    conv_scale,
    draw,
    on,
    to_host,
)

if MODE == "parent":
    pytest.skip("the CUDA tests run in the simulator child of tests/test_kernels.py::test_cuda_in_simulator",
                allow_module_level=True)


@pytest.fixture
def kc(monkeypatch):
    """The CUDA backend with its production tiles and NaN-filled new memory."""
    with backend_under_test("cuda", "default", monkeypatch) as module:
        yield module


def check_conv(kc, rng, x_shape, w_shape, relu=True, need_gx=True, dtype=np.float32):
    """Forward (bias, ReLU) and backward (masked by the forward's output) against the reference."""
    x, x64 = draw(rng, x_shape, dtype)
    w, w64 = draw(rng, w_shape, dtype, 1 / np.sqrt(np.prod(w_shape[1:])))
    b, b64 = draw(rng, w_shape[:1], dtype)
    X, W, B = on(kc, x, w, b)
    y = kc.conv2d_forward(X, W, B, relu=relu)
    assert_close(y, ref.conv2d_forward(x64, w64, b64, relu=relu), dtype, "conv2d", conv_scale(x64, w64, b64))
    gy, gy64 = draw(rng, to_host(y).shape, dtype)
    got = kc.conv2d_backward(X, W, on(kc, gy), y=y if relu else None, need_gx=need_gx)
    want = ref.conv2d_backward(x64, w64, gy64, y=to_host(y).astype(np.float64) if relu else None, need_gx=need_gx)
    for name, g, r, s in zip(("gx", "gw", "gb"), got, want, conv_grad_scales(x64, w64, gy64)):
        if r is None:
            assert g is None, name
        else:
            assert_close(g, r, dtype, "conv2d", s)


@pytest.mark.gradcheck
def test_conv2d_production_tiles(kc, rng):
    """The production tiles on a shape just over one tile: 2 pixel blocks, 2 reduction slices."""
    from minunet.kernels.cuda import conv
    assert conv.TILE.bn < 72
    check_conv(kc, rng, (1, 2, 10, 11), (3, 2, 3, 3))
