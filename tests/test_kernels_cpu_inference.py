"""The CPU backend's inference kernels against the float64 reference, and the dispatch object.

Winograd F(4x4, 3x3) (``kernels/cpu/winograd4.py``) computes the forward pass and the input
gradient of the large 3x3 convolutions. Its transform matrices have coefficients up to 8, so its
float32 rounding error is larger than the other paths' (about 1e-6 of the outputs' scale, the
largest sum of |terms|); the tolerance is the convolution's, 2e-5 of that scale (float64: 1e-10),
as for every path. Inputs are fresh random draws (the ``rng`` fixture prints its seed), at odd
sizes: outputs that are not multiples of the 4x4 tile, smaller than one tile, one pixel, blocks
of one tile row.
"""
import dataclasses

import numpy as np
import pytest

from minunet.kernels import reference as ref
from tests.test_kernels_cpu import DTYPES, assert_close, check_conv3x3_all_directions, conv_scale, draw, force_direct

cpu = pytest.importorskip("minunet.kernels.cpu")
from minunet.kernels.cpu import compiled_blas, dispatch, upconv, winograd4  # noqa: E402
from minunet.kernels.cpu import conv as cpu_conv  # noqa: E402

WINOGRAD4_CASES = [
    # (N, C, K, H, W)
    (1, 1, 1, 3, 3),           # 1x1 output: one tile, 15 of its 16 outputs overhang
    (1, 3, 5, 7, 9),           # odd output (5 x 7): overhanging tile row and column
    (2, 3, 5, 6, 11),          # batch 2
    (1, 2, 7, 6, 6),           # one whole tile exactly
    (1, 16, 24, 21, 14),       # several tile rows and columns, K = 24
    (2, 70, 66, 13, 10),       # many channels
]


def force_winograd4(cpu_dispatch, gx_path="winograd4"):
    """Every 3x3 forward on F(4x4, 3x3); the input gradient too unless gx_path is "gemm"."""
    force_direct(cpu_dispatch, forward=False, weight_grad=False, input_grad=False)
    never = 10 ** 9
    cpu_dispatch(direct_max_work=0, winograd_min_channels=0, winograd_max_filter_per_tile=float("inf"),
                 winograd_min_tiles={"forward": 0, "weight_grad": 0, "input_grad": never if gx_path == "gemm" else 0})


def threads_of(monkeypatch, threads):
    """Blocks split over Numba's threads (each calling BLAS), or all in one part (the split taken
    with SciPy's BLAS, which threads each GEMM itself)."""
    if threads == "one_part":
        monkeypatch.setattr(compiled_blas, "CONCURRENT", False)
        assert compiled_blas.parts(8) == 1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", WINOGRAD4_CASES)
@pytest.mark.parametrize("blocks", ["default", "one_tile_row"])
@pytest.mark.parametrize("threads", ["per_thread", "one_part"])
def test_winograd4_forward(rng, cpu_dispatch, monkeypatch, case, dtype, blocks, threads):
    """The kernel alone, with and without bias + ReLU, into an output it must fill entirely."""
    threads_of(monkeypatch, threads)
    if blocks == "one_tile_row":               # blocks of one tile row: many block edges
        cpu_dispatch(winograd_block_tiles=(1, 1), winograd_scratch_bytes=1)
    n, c, k, h, w = case
    x, x64 = draw(rng, (n, c, h, w), dtype)
    wt, wt64 = draw(rng, (k, c, 3, 3), dtype, 1 / np.sqrt(c * 9))
    b, b64 = draw(rng, (k,), dtype)
    for relu in (False, True):
        y = winograd4.conv3x3_forward(x, wt, b, relu)
        assert_close(y, ref.conv2d_forward(x64, wt64, b64, relu=relu), dtype, "conv2d", conv_scale(x64, wt64, b64))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [(1, 1, 1, 1, 1), (2, 3, 5, 4, 7), (1, 16, 8, 9, 1), (2, 9, 4, 3, 3)])
@pytest.mark.parametrize("kernel", [2, 4])
@pytest.mark.parametrize("threads", ["per_thread", "one_part"])
def test_upconv_forward_on_either_threads(rng, monkeypatch, case, dtype, kernel, threads):
    """The up-convolution's GEMM split over Numba's threads or in one part: both equal the float64 reference."""
    threads_of(monkeypatch, threads)
    n, c, k, h, w = case
    x, x64 = draw(rng, (n, c, h, w), dtype)
    wt, wt64 = draw(rng, (c, k, kernel, kernel), dtype, 1 / np.sqrt(c))
    b, b64 = draw(rng, (k,), dtype)
    expected = ref.conv_transpose2d_forward(x64, wt64, b64)
    scale = np.abs(x64).max() * np.abs(wt64).sum(axis=(0, 2, 3)).max() + np.abs(b64).max()
    assert_close(upconv.conv_transpose2d_forward(x, wt, b), expected, dtype, "conv_transpose2d", scale)


@pytest.mark.parametrize("dtype", DTYPES)
def test_compiled_gemm_on_strided_views(rng, dtype):
    """compiled_blas.gemm: c = a @ b on row-major views with row strides larger than their widths,
    odd and unit sizes, and empty outputs left alone; against float64 NumPy."""
    from numba import njit

    @njit
    def call(f, a, b, c):
        compiled_blas.gemm(f, a, b, c)

    f = compiled_blas.routine(dtype)
    for m, k, n in [(1, 1, 1), (5, 7, 3), (17, 1, 9), (33, 64, 65), (3, 5, 0)]:
        a_full, _ = draw(rng, (m + 2, k + 3), dtype)
        b_full, _ = draw(rng, (k + 1, n + 4), dtype)
        c_full = np.full((m + 1, n + 5), 7.0, dtype)
        a, b, c = a_full[1:m + 1, 2:k + 2], b_full[:k, 3:n + 3], c_full[:m, 1:n + 1]
        call(f, a, b, c)
        assert_close(c, a.astype(np.float64) @ b.astype(np.float64), dtype, "conv2d", np.abs(a).sum(axis=1).max()
                     * np.abs(b).max(initial=0.0))
        outside = np.ones(c_full.shape, bool)
        outside[:m, 1:n + 1] = False
        assert (c_full[outside] == 7.0).all()


@pytest.mark.gradcheck
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", WINOGRAD4_CASES)
@pytest.mark.parametrize("gx_path", ["winograd4", "gemm"])
def test_conv2d_on_winograd4(rng, cpu_dispatch, case, dtype, gx_path):
    """conv2d_forward and conv2d_backward with F(4x4, 3x3) dispatched: the forward, and the input
    gradient (the kernel on the padded gy with flipped weights) or the GEMMs; the weight gradient
    on F(2x2, 3x3)."""
    force_winograd4(cpu_dispatch, gx_path)
    n, c, k, h, w = case
    paths = {"forward": "winograd4", "weight_grad": "winograd", "input_grad": gx_path}
    for direction, path in paths.items():
        assert cpu_conv._path(direction, c, k, 3, 3, h - 2, w - 2) == path, direction
    check_conv3x3_all_directions(rng, case, dtype)


@pytest.mark.gradcheck
@pytest.mark.parametrize("case", [(1, 128, 128, 40, 37), (1, 512, 64, 14, 13), (1, 1024, 16, 10, 11)])
def test_winograd4_float32_at_network_channel_counts(rng, case):
    """float32 sums over 128-1,024 input channels (contractions of up to 9,216 products) stay
    within the convolution's 2e-5 tolerance."""
    n, c, k, h, w = case
    x, x64 = draw(rng, (n, c, h, w), np.float32)
    wt, wt64 = draw(rng, (k, c, 3, 3), np.float32, 1 / np.sqrt(c * 9))
    b, b64 = draw(rng, (k,), np.float32)
    y = winograd4.conv3x3_forward(x, wt, b, True)
    assert_close(y, ref.conv2d_forward(x64, wt64, b64, relu=True), np.float32, "conv2d", conv_scale(x64, wt64, b64))


def test_winograd4_can_be_switched_off(cpu_dispatch):
    """``winograd4=False`` keeps F(2x2, 3x3) for the forward of the network's large layers."""
    assert cpu_conv._path("forward", 128, 128, 3, 3, 280, 280) == "winograd4"
    cpu_dispatch(winograd4=False)
    assert cpu_conv._path("forward", 128, 128, 3, 3, 280, 280) == "winograd"


def test_dispatch_is_one_frozen_object_and_use_restores_it():
    """The thresholds are read-only; ``use`` changes them for a block and puts the old object back."""
    before = dispatch.current()
    with pytest.raises(dataclasses.FrozenInstanceError):
        before.direct_max_work = 0
    with pytest.raises(TypeError):
        before.direct_max["forward"] = 0
    with dispatch.use(direct_max={"forward": 0, "weight_grad": 0, "input_grad": 0}, direct_max_work=0) as inside:
        assert dispatch.current() is inside and inside.direct_max["forward"] == 0
        assert cpu_conv._path("forward", 16, 16, 3, 3, 568, 568) == "gemm"
    assert dispatch.current() is before
    assert cpu_conv._path("forward", 16, 16, 3, 3, 568, 568) == "direct"
    assert dispatch.DEFAULT.replace() == dispatch.DEFAULT
