"""The Numba CPU backend against the float64 NumPy reference, op by op, forward and backward.

Every test draws fresh inputs from the ``rng`` fixture (its seed is printed; replay with
``--seed N``). Reference results are computed in float64 from the same inputs. Tolerances are
relative to the largest magnitude of the expected array: 1e-10 in float64; in float32 per op
(FLOAT32_TOL): sums of many products (convolutions, up-convolutions) get 2e-5, the loss 1e-5,
the gradient sum 1e-7 (one rounding), and pure data movement (pooling, crop-and-concatenate, ReLU, dropout) must be exact. A
convolution's forward output is a sum whose terms can cancel (with a 1x1 output, the largest
value can be 1e-3 while the terms are ~1); rounding error scales with the terms, so its scale
is the largest sum of |terms| (``conv_scale``), never less than the largest |expected|.

The ``gradcheck``-marked tests (run with ``pytest --gradcheck``) cover many shapes: odd sizes,
1x1 outputs, 1 channel and more than 64 channels, batches > 1, and tiny GEMM blocks so that the
block edges of the convolution are exercised. The unmarked smoke tests check one small shape
per op in the fast suite.
"""
import numpy as np
import pytest

from minunet.kernels import reference as ref

cpu = pytest.importorskip("minunet.kernels.cpu")
from minunet.kernels.cpu import conv as cpu_conv  # noqa: E402
from minunet.kernels.cpu import direct as cpu_direct  # noqa: E402

FLOAT64_TOL = 1e-10
FLOAT32_TOL = {
    "conv2d": 2e-5, "conv_transpose2d": 2e-5, "softmax_cross_entropy": 1e-5, "softmax": 1e-6,
    "optimiser": 1e-6, "add": 1e-7, "exact": 0.0,
}
DTYPES = [np.float64, np.float32]


def assert_close(actual, expected, dtype, op, scale=0.0):
    """|actual - expected| <= tol * max(max|expected|, scale) (tol by dtype and op), and the same shape."""
    assert actual is not None and actual.shape == expected.shape, (getattr(actual, "shape", None), expected.shape)
    assert actual.dtype == dtype, (actual.dtype, dtype)
    tol = FLOAT64_TOL if dtype == np.float64 else FLOAT32_TOL[op]
    scale = max(np.abs(expected).max(initial=0.0), scale, 1e-30)
    err = np.abs(np.asarray(actual, np.float64) - expected).max(initial=0.0)
    assert err <= tol * scale, f"{op}: max error {err:.3g} > {tol:g} x {scale:.3g}"


def conv_scale(x64, w64, b64):
    """The largest sum of |terms| of a convolution's outputs: the size its rounding error scales with."""
    return ref.conv2d_forward(np.abs(x64), np.abs(w64), None if b64 is None else np.abs(b64)).max(initial=0.0)


def conv_grad_scales(x64, w64, gy64):
    """The largest sums of |terms| of a convolution's gradients (gx, gw, gb): the sizes their
    rounding errors scale with (a weight gradient of 1 output channel summed over a few pixels can
    cancel to a hundredth of its terms)."""
    return [None if g is None else g.max(initial=0.0)
            for g in ref.conv2d_backward(np.abs(x64), np.abs(w64), np.abs(gy64))]


def draw(rng, shape, dtype, scale=1.0):
    """Standard normal values of the given dtype, and the same values in float64 for the reference."""
    a = (rng.standard_normal(shape) * scale).astype(dtype)
    return a, a.astype(np.float64)


# ----------------------------------------------------------------------------- convolution

CONV_CASES = [
    # (N, C, K, H, W, kernel)
    (1, 1, 3, 7, 9, 3),        # one input channel, odd sizes
    (2, 3, 5, 6, 11, 3),       # batch > 1
    (1, 4, 2, 3, 3, 3),        # 1x1 output
    (2, 70, 66, 9, 8, 3),      # many channels (> 64)
    (1, 3, 2, 1, 1, 1),        # 1x1 kernel on 1x1 spatial
    (2, 65, 2, 5, 7, 1),       # 1x1 head, many channels
    (1, 2, 3, 10, 12, 5),      # another kernel size
]


@pytest.mark.gradcheck
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("block", [1 << 21, 5])
def test_conv2d(rng, cpu_dispatch, case, dtype, block):
    cpu_dispatch(gemm_block_bytes=block)     # 5: blocks of one row, many block edges
    n, c, k, h, w, r = case
    x, x64 = draw(rng, (n, c, h, w), dtype)
    wt, wt64 = draw(rng, (k, c, r, r), dtype, 1 / np.sqrt(c * r * r))
    b, b64 = draw(rng, (k,), dtype)
    for relu, bias in [(False, True), (True, True), (True, False)]:
        y = cpu.conv2d_forward(x, wt, b if bias else None, relu=relu)
        y64 = ref.conv2d_forward(x64, wt64, b64 if bias else None, relu=relu)
        assert_close(y, y64, dtype, "conv2d", conv_scale(x64, wt64, b64 if bias else None))
        gy, gy64 = draw(rng, y.shape, dtype)
        for need_gx in (True, False):
            # The ReLU mask comes from the CPU output y (fed to both) so that both mask the same pixels.
            got = cpu.conv2d_backward(x, wt, gy, y=y if relu else None, need_gx=need_gx)
            want = ref.conv2d_backward(x64, wt64, gy64, y=y.astype(np.float64) if relu else None, need_gx=need_gx)
            scales = conv_grad_scales(x64, wt64, gy64)
            if need_gx:
                assert_close(got[0], want[0], dtype, "conv2d", scales[0])
            else:
                assert got[0] is None
            assert_close(got[1], want[1], dtype, "conv2d", scales[1])
            assert_close(got[2], want[2], dtype, "conv2d", scales[2])


@pytest.mark.gradcheck
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [(1, 70, 9, 6, 21), (2, 3, 5, 6, 11), (1, 16, 33, 5, 40)])
def test_conv2d_gemm_weight_grad_direct_input_grad(rng, cpu_dispatch, case, dtype):
    """The bottom layers' mix: the weight gradient on the GEMMs (gy widened), the input gradient
    direct (gy padded), both from one backward call."""
    force_direct(cpu_dispatch, forward=True, weight_grad=False, input_grad=True)
    cpu_dispatch(direct_max_pixels={"forward": 0, "weight_grad": 0, "input_grad": 10 ** 9})
    n, c, k, h, w = case
    assert cpu_conv._path("weight_grad", c, k, 3, 3, h - 2, w - 2) == "gemm"
    assert cpu_conv._path("input_grad", c, k, 3, 3, h - 2, w - 2) == "direct"
    check_conv3x3_all_directions(rng, case, dtype)


@pytest.mark.gradcheck
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [
    # (N, C, K, H, W)
    (1, 1, 16, 40, 37),     # the first layer's shape, rows longer than two vectors plus a tail
    (2, 3, 5, 4, 3),        # batch > 1, one output column
    (1, 4, 1, 3, 67),       # one output row
    (1, 2, 7, 19, 18),
])
def test_first_layer_weight_grad(rng, monkeypatch, case, dtype):
    """A backward without input gradient from at most FEW_INPUTS_NO_GX channels takes the kernel
    that reads gy and the ReLU mask directly; from more channels, the padded path. Both against
    the reference, with and without the mask."""
    calls = []
    real = cpu_direct.masked_weight_grad
    monkeypatch.setattr(cpu_direct, "masked_weight_grad", lambda *a: calls.append(a) or real(*a))
    n, c, k, h, w = case
    for channels, fused in [(c, True), (cpu_conv.current().few_inputs_no_gx + 1, False)]:
        calls.clear()
        x, x64 = draw(rng, (n, channels, h, w), dtype)
        wt, wt64 = draw(rng, (k, channels, 3, 3), dtype, 1 / np.sqrt(channels * 9))
        y = cpu.conv2d_forward(x, wt, None, relu=True)
        assert (y == 0).any() and (y > 0).any()
        gy, gy64 = draw(rng, y.shape, dtype)
        for mask in (y, None):
            got = cpu.conv2d_backward(x, wt, gy, y=mask, need_gx=False)
            want = ref.conv2d_backward(x64, wt64, gy64, y=None if mask is None else y.astype(np.float64), need_gx=False)
            assert got[0] is None
            scales = conv_grad_scales(x64, wt64, gy64)
            assert_close(got[1], want[1], dtype, "conv2d", scales[1])
            assert_close(got[2], want[2], dtype, "conv2d", scales[2])
        assert len(calls) == (2 if fused else 0)


def check_conv3x3_all_directions(rng, case, dtype):
    """Forward (with and without ReLU) and backward (with and without gx) of a 3x3 convolution
    of shape case = (N, C, K, H, W) against the reference, on fresh random inputs."""
    n, c, k, h, w = case
    x, x64 = draw(rng, (n, c, h, w), dtype)
    wt, wt64 = draw(rng, (k, c, 3, 3), dtype, 1 / np.sqrt(c * 9))
    b, b64 = draw(rng, (k,), dtype)
    for relu in (False, True):
        y = cpu.conv2d_forward(x, wt, b, relu=relu)
        assert_close(y, ref.conv2d_forward(x64, wt64, b64, relu=relu), dtype, "conv2d", conv_scale(x64, wt64, b64))
        gy, gy64 = draw(rng, y.shape, dtype)
        for need_gx in (True, False):
            # The ReLU mask comes from the CPU output y (fed to both) so that both mask the same pixels.
            got = cpu.conv2d_backward(x, wt, gy, y=y if relu else None, need_gx=need_gx)
            want = ref.conv2d_backward(x64, wt64, gy64, y=y.astype(np.float64) if relu else None, need_gx=need_gx)
            assert (got[0] is None) == (not need_gx)
            for a, e, s in zip(got, want, conv_grad_scales(x64, wt64, gy64)):
                if e is not None:
                    assert_close(a, e, dtype, "conv2d", s)


def force_direct(cpu_dispatch, forward, weight_grad, input_grad):
    """Make each direction of a 3x3 convolution take the direct path (True) or not (False)."""
    never, always = 0, 10 ** 9
    cpu_dispatch(direct_max={"forward": always if forward else never, "weight_grad": always if weight_grad else never,
                             "input_grad": always if input_grad else never},
                 direct_max_pixels=dict.fromkeys(("forward", "weight_grad", "input_grad"), 0), direct_max_work=always,
                 winograd4_min_tiles=always, winograd_small_image_min_filter=always, winograd4_input_grad=False)


DIRECT_CASES = [
    # (N, C, K, H, W): the direct 3x3 kernels; outputs narrower than one vector (16 float32, 8
    # float64 with AVX-512) take the row kernel, wider ones the tiled kernel
    (1, 1, 3, 7, 9),           # one input channel (the first layer), odd sizes, odd K
    (2, 1, 4, 5, 12),          # one input channel, batch 2
    (2, 3, 5, 6, 11),          # batch 2, odd K (the last channel has no partner)
    (1, 16, 16, 13, 10),       # the width-16 shapes, small
    (2, 5, 2, 3, 3),           # 1x1 output
    (1, 2, 1, 4, 40),          # K = 1, long rows
    (1, 3, 13, 6, 21),         # tiled: K = 8 + 4 + 1 channels, the last column vector overlaps
    (2, 16, 16, 7, 34),        # tiled: odd Ho (the last row pair overlaps), batch 2
    (1, 70, 9, 4, 18),         # tiled: many input channels, Ho = 2, Wo = 16 (one vector exactly)
]


@pytest.mark.gradcheck
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", DIRECT_CASES)
@pytest.mark.parametrize("path", ["direct", "gemm", "mixed"])
@pytest.mark.parametrize("block, flush", [(1 << 19, None), (5, None), (1 << 19, 2)])
def test_conv2d_direct(rng, cpu_dispatch, case, dtype, path, block, flush):
    """Both paths (and the direct weight gradient with the GEMM input gradient) against the reference."""
    cpu_dispatch(weight_grad_block_bytes=block)   # 5: weight-gradient tasks of one row
    if flush:                                # the weight gradient's sums move to float64 after every row pair
        cpu_dispatch(flush_products=flush)
    force_direct(cpu_dispatch, forward=path != "gemm", weight_grad=path != "gemm", input_grad=path == "direct")
    n, c, k, h, w = case
    for direction, want in [("forward", path != "gemm"), ("weight_grad", path != "gemm"), ("input_grad", path == "direct")]:
        assert (cpu_conv._path(direction, c, k, 3, 3, h - 2, w - 2) == "direct") == want, direction
    check_conv3x3_all_directions(rng, case, dtype)


@pytest.mark.gradcheck
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [
    # (N, C, K, Ho, Wo) of the output, in units of the vector width where it matters
    (1, 1, 8, 2, "lanes"),         # one micro-kernel tile, exactly (few inputs: blocks of 8 outside)
    (2, 4, 15, 3, "lanes + 1"),    # K = 8 + 4 + 2 + 1, odd Ho, overlapping last vector
    (1, 9, 24, 5, "3 * lanes - 5"),  # column vectors outside
    (1, 33, 6, 4, "2 * lanes"),    # K = 4 + 2 only
])
def test_direct_tiled_kernel(rng, monkeypatch, case, dtype):
    """The register-blocked kernel alone (the row kernel made to fail), every channel-block size,
    row and column overlap, with and without ReLU, against the reference."""
    n, c, k, ho, wo_expr = case
    lanes = cpu_direct.VECTOR_BYTES // np.dtype(dtype).itemsize
    wo = eval(wo_expr, {"lanes": lanes})

    def no_rows(*args):
        raise AssertionError("the row kernel ran")
    monkeypatch.setattr(cpu_direct, "_rows", no_rows)
    x, x64 = draw(rng, (n, c, ho + 2, wo + 2), dtype)
    wt, wt64 = draw(rng, (k, c, 3, 3), dtype, 1 / np.sqrt(c * 9))
    b, b64 = draw(rng, (k,), dtype)
    for relu in (False, True):
        y = np.full((n, k, ho, wo), np.nan, dtype)
        cpu_direct.conv3x3(x, wt, b, relu, y)
        assert_close(y, ref.conv2d_forward(x64, wt64, b64, relu=relu), dtype, "conv2d", conv_scale(x64, wt64, b64))


@pytest.mark.gradcheck
@pytest.mark.parametrize("dtype", DTYPES)
def test_direct_narrow_output_takes_the_row_kernel(rng, monkeypatch, dtype):
    """Outputs narrower than one vector, or one row high, go to the row kernel (the tiled one would read past them)."""
    lanes = cpu_direct.VECTOR_BYTES // np.dtype(dtype).itemsize

    def no_tiles(*args):
        raise AssertionError("the tiled kernel ran")
    monkeypatch.setattr(cpu_direct, "_tiled", no_tiles)
    for ho, wo in [(4, lanes - 1), (1, 3 * lanes)]:
        x, x64 = draw(rng, (1, 3, ho + 2, wo + 2), dtype)
        wt, wt64 = draw(rng, (5, 3, 3, 3), dtype)
        b, b64 = draw(rng, (5,), dtype)
        y = np.empty((1, 5, ho, wo), dtype)
        cpu_direct.conv3x3(x, wt, b, True, y)
        assert_close(y, ref.conv2d_forward(x64, wt64, b64, relu=True), dtype, "conv2d", conv_scale(x64, wt64, b64))


def test_wide_vectors_reach_the_machine_code():
    """``wide_vectors()`` marks the function that calls it, and only that one, for 512-bit vectors,
    and on an AVX-512 CPU its machine code uses them. Whether LLVM also picks 512-bit vectors for
    unmarked code is the CPU model's default (no on Intel Xeons, yes on AMD Zen 4/5), so the
    "only there" half is checked on the LLVM attributes, which are the same on every CPU."""
    from numba import njit

    from minunet.kernels.cpu import vector_width
    assert vector_width.ENABLED, "this llvmlite no longer takes the attributes: the direct kernels lost 512-bit vectors"

    def axpy(a, x, y):
        for i in range(x.shape[0]):
            y[i] += a * x[i]

    def wide_axpy(a, x, y):
        vector_width.wide_vectors()
        for i in range(x.shape[0]):
            y[i] += a * x[i]
    x = np.ones(1000, np.float32)
    ir, asm = {}, {}
    for fn in (axpy, wide_axpy):
        jitted = njit(fastmath=True)(fn)
        y = np.zeros_like(x)
        jitted(np.float32(2), x, y)
        assert np.all(y == 2)
        ir[fn.__name__] = jitted.inspect_llvm(jitted.signatures[0])
        asm[fn.__name__] = jitted.inspect_asm(jitted.signatures[0])
    wide = '"prefer-vector-width"="512"'
    assert wide in ir["wide_axpy"]
    assert wide not in ir["axpy"]
    if vector_width.host_has_avx512():
        assert "zmm" in asm["wide_axpy"]
    else:
        assert "zmm" not in asm["wide_axpy"]


def test_tiled_kernel_prefetches_the_next_rows():
    """The micro-kernel's machine code prefetches into L2 (prefetcht1) when asked to, and the
    results do not depend on it; its prefetches past the last row (which every test's last row
    pair makes) read nothing."""
    from numba import njit

    @njit
    def one_tile(x, w, bias, y, prefetch):
        cpu_direct._tile1(x, w, bias, y, 0, 0, 0, 0, False, prefetch)

    lanes = cpu_direct.VECTOR_BYTES // 4
    x = np.arange(9 * 4 * (lanes + 2), dtype=np.float32).reshape(1, 9, 4, lanes + 2)
    w = np.linspace(-1, 1, 81, dtype=np.float32).reshape(1, 9, 3, 3)
    ys = []
    for prefetch in (False, True):
        ys.append(np.zeros((1, 1, 2, lanes), np.float32))
        one_tile(x, w, np.ones(1, np.float32), ys[-1], prefetch)
    np.testing.assert_array_equal(ys[0], ys[1])
    np.testing.assert_allclose(ys[0], ref.conv2d_forward(x.astype(np.float64), w.astype(np.float64), np.ones(1)),
                               rtol=1e-5)
    assert "prefetcht1" in one_tile.inspect_asm(one_tile.signatures[0])


WINOGRAD_CASES = [
    # (N, C, K, H, W): Winograd F(2x2, 3x3); odd outputs leave overhanging tiles
    (1, 1, 3, 7, 9),           # one input channel, odd output (5 x 7)
    (2, 3, 5, 6, 11),          # batch 2, even x odd output
    (1, 4, 2, 3, 3),           # 1x1 output: one tile, three quarters overhang
    (1, 2, 1, 4, 40),          # K = 1, one tile row
    (2, 70, 66, 9, 8),         # many channels, 7 x 6 output
    (1, 16, 24, 21, 14),       # several tile rows and columns
]


@pytest.mark.gradcheck
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", WINOGRAD_CASES)
@pytest.mark.parametrize("gw_path, gx_path", [("winograd", "winograd"), ("winograd", "gemm"), ("gemm", "winograd")])
@pytest.mark.parametrize("blocks", ["default", "one_tile_row"])
def test_conv2d_winograd(rng, cpu_dispatch, case, dtype, gw_path, gx_path, blocks):
    """The Winograd F(2x2, 3x3) path in every direction, alone and mixed with the GEMM path, against
    the reference (F(4x4, 3x3) off: tests/test_kernels_cpu_inference.py covers it)."""
    force_direct(cpu_dispatch, forward=False, weight_grad=False, input_grad=False)
    never = 10 ** 9
    cpu_dispatch(direct_max_work=0, winograd4=False, winograd_min_channels=0, winograd_max_filter_per_tile=float("inf"),
                 winograd_min_tiles={"forward": 0, "weight_grad": never if gw_path == "gemm" else 0,
                                     "input_grad": never if gx_path == "gemm" else 0})
    if blocks == "one_tile_row":                 # blocks of one tile row: many block edges
        cpu_dispatch(winograd_block_tiles=(1, 1), winograd_scratch_bytes=1)
    n, c, k, h, w = case
    for direction, path in {"forward": "winograd", "weight_grad": gw_path, "input_grad": gx_path}.items():
        assert cpu_conv._path(direction, c, k, 3, 3, h - 2, w - 2) == path, direction
    check_conv3x3_all_directions(rng, case, dtype)


@pytest.mark.gradcheck
@pytest.mark.parametrize("case", [(1, 128, 128, 40, 37), (1, 512, 512, 14, 13)])
def test_conv2d_winograd_float32_at_network_channel_counts(rng, cpu_dispatch, case):
    """float32 Winograd F(2x2, 3x3) sums over 128-512 channels (contractions of 1,152-4,608 products)
    stay within the convolution's 2e-5 tolerance, with the default block sizes (small images: path forced)."""
    cpu_dispatch(winograd_min_tiles=dict.fromkeys(("forward", "weight_grad", "input_grad"), 0), winograd4=False,
                 winograd_max_filter_per_tile=float("inf"), direct_max_work=0)
    n, c, k, h, w = case
    for direction in ("forward", "weight_grad", "input_grad"):
        assert cpu_conv._path(direction, c, k, 3, 3, h - 2, w - 2) == "winograd"
    check_conv3x3_all_directions(rng, case, np.float32)


def test_conv2d_paths_of_the_paper_network():
    """The dispatch (measured crossovers, docs/performance.md): few channels or few pixels direct,
    the large 64-512-channel layers Winograd (F(4x4, 3x3) forward and input gradient, F(2x2, 3x3)
    weight gradient), and no second pass over gy just for the input gradient."""
    path = cpu_conv._path
    directions = ("forward", "weight_grad", "input_grad")
    # width 64
    assert [path(d, 1, 64, 3, 3, 570, 570) for d in directions] == ["direct"] * 3
    for c, k, hw in [(64, 64, 568), (128, 128, 280), (128, 256, 138), (512, 512, 64), (64, 64, 388)]:
        assert [path(d, c, k, 3, 3, hw, hw) for d in directions] == ["winograd4", "winograd", "winograd4"], (c, k, hw)
    assert [path(d, 1024, 1024, 3, 3, 28, 28) for d in directions] == ["winograd", "gemm", "gemm"]
    assert path("weight_grad", 1024, 512, 3, 3, 54, 54) == "gemm"     # big filter, few tiles
    assert path("forward", 64, 2, 1, 1, 388, 388) == "gemm"           # the 1x1 head
    # width 16: direct below 64 channels; from 64 the forward and the input gradient on
    # F(4x4, 3x3), the weight gradient direct up to 64 x 64 channels, Winograd from 64 x 128 ...
    assert [path(d, 16, 16, 3, 3, 568, 568) for d in directions] == ["direct"] * 3
    assert [path(d, 64, 64, 3, 3, 136, 136) for d in directions] == ["winograd4", "direct", "winograd4"]
    assert [path(d, 64, 128, 3, 3, 66, 66) for d in directions] == ["winograd4", "winograd", "winograd4"]
    assert path("forward", 128, 256, 3, 3, 30, 30) == "direct"       # few tiles, small filter
    # ... and input gradients whose weight gradient reads gy widened for the GEMMs
    assert [path(d, 64, 32, 3, 3, 198, 198) for d in directions] == ["direct"] * 3
    assert [path(d, 32, 256, 3, 3, 198, 198) for d in directions] == ["direct", "gemm", "gemm"]
    # the bottom layers: the input gradient direct on small images up to 256 x 512 channels
    # (their forward on F(2x2, 3x3): few tiles, but filters from 256 x 256)
    assert [path(d, 256, 256, 3, 3, 28, 28) for d in directions] == ["winograd", "gemm", "direct"]
    assert [path(d, 256, 512, 3, 3, 30, 30) for d in directions] == ["winograd", "gemm", "direct"]
    assert [path(d, 512, 512, 3, 3, 28, 28) for d in directions] == ["winograd", "gemm", "gemm"]


@pytest.mark.gradcheck
def test_conv2d_errors_and_views(rng):
    with pytest.raises(ValueError):
        cpu.conv2d_forward(np.zeros((1, 2, 5, 5)), np.zeros((3, 4, 3, 3)), None)
    with pytest.raises(ValueError):
        cpu.conv2d_forward(np.zeros((1, 2, 2, 5)), np.zeros((3, 2, 3, 3)), None)
    # Non-contiguous inputs (a channel slice, Fortran-ordered weights) give the same result.
    x = rng.standard_normal((2, 6, 8, 9))[:, ::2]
    w = np.asfortranarray(rng.standard_normal((4, 3, 3, 3)))
    assert_close(cpu.conv2d_forward(x, w, None), ref.conv2d_forward(x, w, None), np.float64, "conv2d")


# ----------------------------------------------------------------------------- max pooling

@pytest.mark.gradcheck
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 2, 2), (2, 3, 7, 9), (1, 70, 10, 8), (3, 2, 3, 2)])
def test_max_pool2d(rng, shape, dtype):
    # A shuffled linspace: no ties, so the argmax is unambiguous.
    x = rng.permutation(np.linspace(-1, 1, int(np.prod(shape)))).reshape(shape).astype(dtype)
    y, idx = cpu.max_pool2d_forward(x)
    y_ref, idx_ref = ref.max_pool2d_forward(x.astype(np.float64))
    assert_close(y, y_ref, dtype, "exact")
    assert idx.dtype == np.uint8 and np.array_equal(idx, idx_ref)
    gy, gy64 = draw(rng, y.shape, dtype)
    assert_close(cpu.max_pool2d_backward(gy, idx, x.shape), ref.max_pool2d_backward(gy64, idx_ref, x.shape),
                 dtype, "exact")


@pytest.mark.gradcheck
def test_max_pool2d_ties_first_wins(rng):
    x = rng.integers(0, 2, (2, 3, 6, 6)).astype(np.float32)      # many ties
    assert np.array_equal(cpu.max_pool2d_forward(x)[1], ref.max_pool2d_forward(x)[1])
    with pytest.raises(ValueError):
        cpu.max_pool2d_forward(np.zeros((1, 1, 1, 4)))


# ----------------------------------------------------------------------------- transposed convolution

@pytest.mark.gradcheck
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", [2, 3, 4])
@pytest.mark.parametrize("case", [(1, 1, 1, 1, 1), (2, 3, 5, 4, 7), (1, 72, 66, 3, 2), (2, 2, 1, 5, 5)])
def test_conv_transpose2d(rng, case, kernel, dtype):
    n, c, k, h, w = case
    x, x64 = draw(rng, (n, c, h, w), dtype)
    wt, wt64 = draw(rng, (c, k, kernel, kernel), dtype, 1 / np.sqrt(c))
    b, b64 = draw(rng, (k,), dtype)
    for bias in (True, False):
        y = cpu.conv_transpose2d_forward(x, wt, b if bias else None)
        assert_close(y, ref.conv_transpose2d_forward(x64, wt64, b64 if bias else None), dtype, "conv_transpose2d")
    gy, gy64 = draw(rng, y.shape, dtype)
    for got, want in zip(cpu.conv_transpose2d_backward(x, wt, gy), ref.conv_transpose2d_backward(x64, wt64, gy64)):
        assert_close(got, want, dtype, "conv_transpose2d")


# ----------------------------------------------------------------------------- crop and concatenate

@pytest.mark.gradcheck
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [((1, 1, 5, 7), (1, 1, 1, 1)), ((2, 3, 12, 10), (2, 70, 8, 6)),
                                  ((2, 66, 4, 4), (2, 2, 4, 4))])
def test_crop_concat(rng, case, dtype):
    skip_shape, up_shape = case
    skip, skip64 = draw(rng, skip_shape, dtype)
    up, up64 = draw(rng, up_shape, dtype)
    assert_close(cpu.crop_concat_forward(skip, up), ref.crop_concat_forward(skip64, up64), dtype, "exact")
    gy, gy64 = draw(rng, (up_shape[0], skip_shape[1] + up_shape[1]) + up_shape[2:], dtype)
    grads = cpu.crop_concat_backward(gy, skip_shape)
    for got, want in zip(grads, ref.crop_concat_backward(gy64, skip_shape)):
        assert_close(got, want, dtype, "exact")
        assert got.flags.c_contiguous
    assert np.shares_memory(grads[1], gy) == (up_shape[0] == 1)     # one image: gup is a view of gy


@pytest.mark.gradcheck
def test_crop_concat_odd_margin_raises():
    with pytest.raises(ValueError):
        cpu.crop_concat_forward(np.zeros((1, 1, 5, 5)), np.zeros((1, 1, 4, 4)))


# ----------------------------------------------------------------------------- ReLU and dropout

@pytest.mark.gradcheck
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 70, 5, 3)])
def test_relu(rng, shape, dtype):
    x, x64 = draw(rng, shape, dtype)
    gy, gy64 = draw(rng, shape, dtype)
    assert_close(cpu.relu_forward(x), ref.relu_forward(x64), dtype, "exact")
    assert_close(cpu.relu_backward(gy, x), ref.relu_backward(gy64, x64), dtype, "exact")


@pytest.mark.gradcheck
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9])
def test_dropout_matches_reference_bit_for_bit(rng, p, dtype):
    x = rng.standard_normal((2, 70, 7, 5)).astype(dtype)
    seed = int(rng.integers(2 ** 62))
    y = cpu.dropout_forward(x, p, seed)
    assert y.dtype == dtype and np.array_equal(y, ref.dropout_forward(x, p, seed))
    assert np.array_equal(cpu.dropout_backward(x, p, seed), ref.dropout_backward(x, p, seed))


# ----------------------------------------------------------------------------- loss

@pytest.mark.gradcheck
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [(1, 2, 1, 1), (2, 3, 5, 7), (1, 7, 6, 4), (2, 70, 3, 3)])
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_softmax_cross_entropy(rng, case, scale, dtype):
    n, k, h, w = case
    logits, logits64 = draw(rng, case, dtype, scale)
    labels = rng.integers(0, k, (n, h, w)).astype(np.uint8)
    labels[rng.random((n, h, w)) < 0.2] = 255                   # some ignored pixels
    weights = rng.random((n, h, w)).astype(dtype)
    for wts in (weights, None):
        loss, count, grad = cpu.softmax_cross_entropy(logits, labels, wts)
        loss_ref, count_ref, grad_ref = ref.softmax_cross_entropy(
            logits64, labels, None if wts is None else wts.astype(np.float64))
        assert isinstance(loss, float) and isinstance(count, int) and count == count_ref
        assert np.isfinite(loss) and np.all(np.isfinite(grad))
        tol = FLOAT64_TOL if dtype == np.float64 else FLOAT32_TOL["softmax_cross_entropy"]
        assert abs(loss - loss_ref) <= tol * max(abs(loss_ref), 1.0)
        assert_close(grad, grad_ref, dtype, "softmax_cross_entropy")
    assert_close(cpu.softmax(logits), ref.softmax(logits64), dtype, "softmax")


@pytest.mark.gradcheck
def test_softmax_cross_entropy_edge_cases():
    logits = np.zeros((1, 2, 2, 2))
    with pytest.raises(ValueError):
        cpu.softmax_cross_entropy(logits, np.array([[[0, 1], [2, 0]]]), None)
    with pytest.raises(ValueError):
        cpu.softmax_cross_entropy(logits, np.zeros((1, 2, 3), int), None)
    loss, count, grad = cpu.softmax_cross_entropy(logits, np.full((1, 2, 2), 7), None, ignore=7)
    assert loss == 0.0 and count == 0 and not grad.any()


# ----------------------------------------------------------------------------- optimisers

@pytest.mark.gradcheck
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(70, 3, 3, 3), (7,), (301, 250)])   # serial, serial, parallel loop
def test_optimisers_in_place(rng, dtype, shape):
    from minunet.kernels.cpu import optim
    assert (np.prod(shape) >= optim.PARALLEL_MIN) == (shape == (301, 250))
    p, g, v, m = (rng.standard_normal(shape).astype(dtype) for _ in range(4))
    v2 = np.abs(v)
    ours = [a.copy() for a in (p, v)]
    theirs = [a.astype(np.float64) for a in (p, v)]
    for _ in range(3):
        cpu.sgd_step(ours[0], g, ours[1], 0.01, 0.99, 1e-4)
        ref.sgd_step(theirs[0], g.astype(np.float64), theirs[1], 0.01, 0.99, 1e-4)
    for a, b in zip(ours, theirs):
        assert_close(a, b, dtype, "optimiser")
    ours = [a.copy() for a in (p, m, v2)]
    theirs = [a.astype(np.float64) for a in (p, m, v2)]
    for step in (1, 2, 3):
        cpu.adam_step(*ours[:1], g, *ours[1:], 1e-3, 0.9, 0.999, 1e-8, step, 1e-4)
        ref.adam_step(*theirs[:1], g.astype(np.float64), *theirs[1:], 1e-3, 0.9, 0.999, 1e-8, step, 1e-4)
    for a, b in zip(ours, theirs):
        assert_close(a, b, dtype, "optimiser")


@pytest.mark.gradcheck
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1,), (7,), (1, 3, 5, 7), (2, 16, 31, 33)])
def test_add(rng, dtype, shape):
    """The engine's gradient sum: IEEE addition, so bit for bit NumPy's; views and mixed shapes too."""
    a, a64 = draw(rng, shape, dtype)
    b, b64 = draw(rng, shape, dtype)
    got = cpu.add(a, b)
    assert got.dtype == dtype and got is not a and got is not b
    np.testing.assert_array_equal(got, a + b)
    assert_close(got, ref.add(a64, b64), dtype, "add")
    if len(shape) == 4:                              # strided views, a broadcast
        np.testing.assert_array_equal(cpu.add(a[:, :, ::2], b[:, ::-1, ::2]), a[:, :, ::2] + b[:, ::-1, ::2])
        np.testing.assert_array_equal(cpu.add(a, b[:1, :1]), a + b[:1, :1])


# ----------------------------------------------------------------------------- smoke tests (fast suite)

def test_contract_names():
    for name in ("asarray", "to_numpy", "conv2d_forward", "conv2d_backward", "max_pool2d_forward",
                 "max_pool2d_backward", "conv_transpose2d_forward", "conv_transpose2d_backward",
                 "crop_concat_forward", "crop_concat_backward", "relu_forward", "relu_backward",
                 "dropout_forward", "dropout_backward", "softmax_cross_entropy", "softmax", "sgd_step", "adam_step", "add"):
        assert callable(getattr(cpu, name)), name
    assert cpu.name == "cpu" and cpu.xp is np
    a = cpu.asarray([1, 2], dtype=np.float32)
    assert a.dtype == np.float32 and np.array_equal(cpu.to_numpy(a), [1, 2])


def test_smoke_conv2d(rng):
    x, x64 = draw(rng, (1, 2, 6, 5), np.float32)
    w, w64 = draw(rng, (3, 2, 3, 3), np.float32)
    b, b64 = draw(rng, (3,), np.float32)
    y = cpu.conv2d_forward(x, w, b, relu=True)
    assert_close(y, ref.conv2d_forward(x64, w64, b64, relu=True), np.float32, "conv2d", conv_scale(x64, w64, b64))
    gy, gy64 = draw(rng, y.shape, np.float32)
    got = cpu.conv2d_backward(x, w, gy, y=y)
    want = ref.conv2d_backward(x64, w64, gy64, y=y.astype(np.float64))
    for a, e, s in zip(got, want, conv_grad_scales(x64, w64, gy64)):
        assert_close(a, e, np.float32, "conv2d", s)


def test_smoke_pool_upconv_concat(rng):
    x, x64 = draw(rng, (1, 2, 4, 6), np.float32)
    y, idx = cpu.max_pool2d_forward(x)
    assert np.array_equal(y, ref.max_pool2d_forward(x)[0])
    assert np.array_equal(cpu.max_pool2d_backward(y, idx, x.shape), ref.max_pool2d_backward(y, idx, x.shape))
    w, w64 = draw(rng, (2, 3, 2, 2), np.float32)
    up = cpu.conv_transpose2d_forward(x, w, None)
    assert_close(up, ref.conv_transpose2d_forward(x64, w64, None), np.float32, "conv_transpose2d")
    for a, e in zip(cpu.conv_transpose2d_backward(x, w, up), ref.conv_transpose2d_backward(x64, w64, up.astype(float))):
        assert_close(a, e, np.float32, "conv_transpose2d")
    skip, _ = draw(rng, (1, 2, 10, 14), np.float32)
    cat = cpu.crop_concat_forward(skip, up)
    assert np.array_equal(cat, ref.crop_concat_forward(skip, up))
    for a, e in zip(cpu.crop_concat_backward(cat, skip.shape), ref.crop_concat_backward(cat, skip.shape)):
        assert np.array_equal(a, e)


def test_smoke_elementwise_loss_optim(rng):
    x = rng.standard_normal((1, 3, 4, 5)).astype(np.float32)
    assert np.array_equal(cpu.relu_forward(x), ref.relu_forward(x))
    assert np.array_equal(cpu.relu_backward(x, x), ref.relu_backward(x, x))
    assert np.array_equal(cpu.dropout_forward(x, 0.5, 42), ref.dropout_forward(x, 0.5, 42))
    labels = rng.integers(0, 3, (1, 4, 5))
    loss, count, grad = cpu.softmax_cross_entropy(x * 1e4, labels, None)
    loss_ref, count_ref, grad_ref = ref.softmax_cross_entropy((x * 1e4).astype(np.float64), labels, None)
    assert count == count_ref and abs(loss - loss_ref) <= 1e-5 * abs(loss_ref)
    assert_close(grad, grad_ref, np.float32, "softmax_cross_entropy")
    p, v = x.copy(), np.zeros_like(x)
    cpu.sgd_step(p, x, v, 0.1, 0.9, 0.0)
    assert_close(p, 0.9 * x.astype(np.float64), np.float32, "optimiser")


def test_cpu_backend_threads_on_openmp_and_leaves_the_environment_alone():
    """The backend starts Numba's threads on OpenMP (workqueue where libgomp will not load), with
    its short spin set only while libgomp loads: nothing is left in the environment."""
    import os
    import subprocess
    import sys
    try:
        import numba.np.ufunc.omppool  # noqa: F401
        expected = "omp"
    except ImportError:
        expected = "workqueue"
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_THREADING_LAYER", "GOMP_SPINCOUNT")}
    code = ("import os, numba, numpy, minunet.kernels.cpu as cpu; cpu.relu_forward(numpy.ones(4)); "
            "print(numba.threading_layer(), os.environ.get('GOMP_SPINCOUNT'), cpu.SPIN_COUNT)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == [expected, "None", "10000"]
    env["NUMBA_THREADING_LAYER"] = "workqueue"      # the user's choice wins
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "workqueue"
