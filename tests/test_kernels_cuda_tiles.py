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
    set_tiling,
    to_host,
)


@pytest.fixture
def kc(monkeypatch):
    """The CUDA backend with its production tiles and NaN-filled new memory."""
    if MODE == "parent":
        pytest.skip("runs in the simulator child of tests/test_kernels.py::test_cuda_in_simulator")
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
def test_conv2d_production_tiles_batch_2(kc, rng):
    """Production tiles, batch 2: a pixel block spans both images, 9-18 reduction slices go through
    the double buffer and the staged taps, and the weight gradient splits into 2 pixel chunks."""
    from minunet.kernels.cuda import conv
    x_shape, w_shape = (2, 8, 14, 13), (16, 8, 3, 3)
    tile = conv.tile_for(np.dtype(np.float32), w_shape[0])
    pixels = 2 * 12 * 11
    assert pixels > tile.bn and pixels < 2 * tile.bn and 8 * 9 >= 9 * tile.bk
    assert conv.ceil_div(pixels, conv.wgrad_chunk(1, pixels, tile.bk)) == 2
    check_conv(kc, rng, x_shape, w_shape)


@pytest.mark.gradcheck
@pytest.mark.parametrize("max_splits", [16, 1])
def test_long_reduction_split_k(kc, rng, monkeypatch, max_splits):
    """A bottom-layer reduction (R = 512 x 9 = 4,608) on a tiny image: the forward's grid has one
    block, so it splits the reduction 16 ways and adds bias and ReLU in a second pass; and in one
    range (576 slices). Tiny tiles (production split constants): the simulator runs every FMA in Python."""
    from minunet.kernels.cuda import conv
    set_tiling("cuda", "edges", monkeypatch)
    monkeypatch.setattr(conv, "MAX_SPLITS", max_splits)
    tile = conv.tile_for(np.dtype(np.float32), 4)
    assert conv.split_k(1, 512 * 9, tile.bk)[0] == max_splits
    check_conv(kc, rng, (1, 512, 3, 6), (4, 512, 3, 3))


@pytest.mark.gradcheck
def test_weight_gradient_chunks_production_tiles(kc, rng):
    """The first layer's weight gradient (one input channel) over 544 pixels in 3 chunks of 184,
    with production tiles: chunk edges fall inside rows and images."""
    from minunet.kernels.cuda import conv
    pixels = 2 * 16 * 17
    assert conv.ceil_div(pixels, conv.wgrad_chunk(1, pixels, 8)) == 3
    check_conv(kc, rng, (2, 1, 18, 19), (4, 1, 3, 3), need_gx=False)


@pytest.mark.gradcheck
def test_conv_transpose2d_production_tiles(kc, rng):
    """The up-convolution's four output parities in one launch, production tiles, batch 2."""
    x, x64 = draw(rng, (2, 8, 5, 6), np.float32)
    w, w64 = draw(rng, (8, 4, 2, 2), np.float32, 0.5)
    b, b64 = draw(rng, (4,), np.float32)
    X, W, B = on(kc, x, w, b)
    y = kc.conv_transpose2d_forward(X, W, B)
    assert_close(y, ref.conv_transpose2d_forward(x64, w64, b64), np.float32, "conv_transpose2d")
    gy, gy64 = draw(rng, to_host(y).shape, np.float32)
    for got, want in zip(kc.conv_transpose2d_backward(X, W, on(kc, gy)), ref.conv_transpose2d_backward(x64, w64, gy64)):
        assert_close(got, want, np.float32, "conv_transpose2d")


def test_paper_layers_fill_the_gpu():
    """On every conv layer of the paper's network (572 px, width 64, batch 1), with the production
    tiles: the forward and backward-data grids have at least MIN_BLOCKS_PER_SM blocks per SM (split-K
    where the image is small), and the weight gradient's chunks cover the pixels in multiples of BK."""
    from minunet.benchmarks.kernels import layer_shapes
    from minunet.kernels.cuda import conv
    target = conv.MIN_BLOCKS_PER_SM * conv.SM_COUNT
    for op, p in layer_shapes(tile=572, width=64):
        if op != "conv2d" or p["kernel"] != 3:
            continue
        c, k, h = p["c"], p["k"], p["h"]
        ho = h - 2
        for rows, pixels, reduction in [(k, ho * ho, c * 9), (c, h * h, k * 9)]:
            tile = conv.tile_for(np.dtype(np.float32), rows)
            blocks = conv.ceil_div(pixels, tile.bn) * conv.ceil_div(rows, tile.bm)
            splits, r_split = conv.split_k(blocks, reduction, tile.bk)
            assert r_split % tile.bk == 0 and splits * r_split >= reduction > (splits - 1) * r_split
            slices = conv.ceil_div(reduction, tile.bk)
            assert blocks * splits >= target or splits == min(conv.MAX_SPLITS, slices // conv.MIN_SLICES_PER_SPLIT)
        tile = conv.tile_for(np.dtype(np.float32), k)
        tiles = conv.ceil_div(c * 9, tile.bn) * conv.ceil_div(k, tile.bm)
        chunk = conv.wgrad_chunk(tiles, ho * ho, tile.bk)
        chunks = conv.ceil_div(ho * ho, chunk)
        assert chunk % tile.bk == 0 and chunks * chunk >= ho * ho
        assert tiles * chunks >= target or chunk <= conv.WGRAD_MIN_CHUNK + tile.bk
