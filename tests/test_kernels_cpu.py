"""The CPU backend's own paths: dispatch, direct, Winograd and GEMM kernels, prefetch, vector width, threads.

The contract tests (every op against the float64 reference, every backend) are in
tests/test_kernels.py; these force each of the CPU convolution's paths (direct register-blocked
kernels, Winograd F(2x2, 3x3), nine GEMMs) and their block sizes, and check the machine-code and
threading choices the CPU backend makes. Draws, tolerances and scales come from
tests/kernel_checks.py: fresh random inputs from the ``rng`` fixture (seed printed; ``--seed N``
replays), compared with the float64 reference relative to the largest sum of |terms|.
"""
import numpy as np
import pytest

from minunet.kernels import reference as ref

from .kernel_checks import DTYPES, OPTIMISER_SHAPES, assert_close, conv_grad_scales, conv_scale, draw

cpu = pytest.importorskip("minunet.kernels.cpu")
from minunet.kernels.cpu import conv as cpu_conv  # noqa: E402
from minunet.kernels.cpu import direct as cpu_direct  # noqa: E402
from minunet.kernels.cpu import direct_weight_grad as cpu_direct_weight_grad  # noqa: E402


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
    real = cpu_direct_weight_grad.masked_weight_grad
    monkeypatch.setattr(cpu_direct_weight_grad, "masked_weight_grad", lambda *a: calls.append(a) or real(*a))
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


def test_optimiser_shapes_cover_the_serial_and_parallel_loops():
    """The contract tests' optimiser shapes take both of the CPU update's loops."""
    from minunet.kernels.cpu import optim
    assert {int(np.prod(s)) >= optim.PARALLEL_MIN for s in OPTIMISER_SHAPES} == {False, True}


@pytest.mark.gradcheck
@pytest.mark.parametrize("n", [1, 2])
def test_crop_concat_backward_of_one_image_is_a_view(rng, n):
    """With one image the up-sampled half of the gradient is a view of gy (no copy); with more, a copy."""
    gy = rng.standard_normal((n, 5, 4, 4)).astype(np.float32)
    gskip, gup = cpu.crop_concat_backward(gy, (n, 3, 6, 6))
    assert np.shares_memory(gup, gy) == (n == 1)
    assert gskip.flags.c_contiguous and gup.flags.c_contiguous
    np.testing.assert_array_equal(gup, gy[:, 3:])

