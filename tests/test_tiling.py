"""Overlap-tile prediction: stitching is exact, borders extend as documented, TTA averages symmetries."""
import numpy as np
import pytest

from minunet.engine import functional as F
from minunet.engine.autograd import Tensor, no_grad
from minunet.errors import UserError
from minunet.inference import tiling
from minunet.model import geometry
from minunet.model.unet import UNet
from tests.backends import fast_device


def small_unet(depth=3, width=4, **kw):
    return UNet(depth=depth, width=width, device=fast_device(), seed=3, **kw).eval()


def one_pass(model, image, pad):
    """The network applied once to the whole image extended by ``pad``, cropped to the image."""
    image = image if image.ndim == 3 else image[None]
    _, h, w = image.shape
    size = geometry.input_size_for(max(h, w) + 2 ** model.depth, model.depth, model.up_kernel)
    margin = model.geometry(size).margin
    context = tiling.extend(image.astype(np.float32), margin, (size - h - margin, size - w - margin), pad)
    with no_grad():
        scores = model(Tensor(context[None], device=model.device))
        return F.softmax(scores).numpy()[0][:, :h, :w]


@pytest.mark.parametrize("pad", ["mirror", "zero"])
@pytest.mark.parametrize("depth,tiles", [(3, (52, 60, 76)), (4, (108, 124))])
def test_stitched_equals_one_pass(rng, pad, depth, tiles):
    model = small_unet(depth)
    for h, w in [(77, 101), (45, 33)]:
        image = rng.standard_normal((h, w)).astype(np.float32)
        expected = one_pass(model, image, pad)
        for tile in tiles:
            got = tiling.predict_image(model, image, tile=tile, pad=pad, batch=3)
            assert got.shape == (2, h, w) and got.dtype == np.float32
            assert np.abs(got - expected).max() < 1e-5, (h, w, tile)


def test_paper_depth_steps_by_multiples_of_16(rng):
    """Depth 5: outputs are 4 more than a multiple of 16, so tiles overlap by 4 and still agree."""
    model = small_unet(5, 2)
    assert model.geometry(220).output_size == 36 and tiling.tile_stride(model, 220) == 32
    image = rng.standard_normal((70, 53)).astype(np.float32)
    got = tiling.predict_image(model, image, tile=220)
    assert np.abs(got - one_pass(model, image, "mirror")).max() < 1e-5
    with pytest.raises(UserError, match="too small to stitch"):
        tiling.predict_image(model, image, tile=188)          # a 4-pixel output cannot step by 16


def test_image_smaller_than_a_tile(rng):
    model = small_unet()
    image = rng.standard_normal((5, 9)).astype(np.float32)
    for tile in (None, 52, 92):
        got = tiling.predict_image(model, image, tile=tile)
        assert got.shape == (2, 5, 9)
        assert np.abs(got - one_pass(model, image, "mirror")).max() < 1e-5
    one = tiling.predict_image(model, np.ones((1, 1), np.float32), tile=60)
    assert one.shape == (2, 1, 1) and np.allclose(one.sum(0), 1)


def test_multichannel_and_class_count(rng):
    model = small_unet(in_channels=3, classes=4)
    image = rng.standard_normal((3, 30, 41)).astype(np.float32)
    got = tiling.predict_image(model, image, tile=52)
    assert got.shape == (4, 30, 41)
    assert np.abs(got - one_pass(model, image, "mirror")).max() < 1e-5
    with pytest.raises(UserError, match="3 input channel"):
        tiling.predict_image(model, image[0])


def test_tta_is_the_mean_over_the_eight_symmetries(rng):
    model = small_unet()
    image = rng.standard_normal((23, 31)).astype(np.float32)
    got = tiling.predict_image(model, image, tile=52, tta=True)
    manual = []
    for flip in (False, True):
        for k in range(4):
            view = np.rot90(image[:, ::-1] if flip else image, k)
            p = tiling.predict_image(model, np.ascontiguousarray(view), tile=52)
            p = np.rot90(p, -k, axes=(1, 2))
            manual.append(p[:, :, ::-1] if flip else p)
    assert np.abs(got - np.mean(manual, axis=0)).max() < 1e-5
    # TTA makes the prediction equivariant: predicting a flipped image flips the prediction.
    flipped = tiling.predict_image(model, np.ascontiguousarray(image.T), tile=60, tta=True)
    assert np.abs(flipped - got.transpose(0, 2, 1)).max() < 1e-5


def test_stack_progress_and_model_mode(rng):
    model = small_unet(dropout=0.5).train()
    stack = rng.standard_normal((3, 40, 50)).astype(np.float32)
    calls = []
    got = tiling.predict_stack(model, stack, tile=60, batch=2, progress=lambda d, t: calls.append((d, t)))
    per_slice = tiling.count_tiles(model, 60, 40, 50)
    assert got.shape == (3, 2, 40, 50)
    assert calls[-1] == (3 * per_slice, 3 * per_slice) and len(calls) == 3 * -(-per_slice // 2)
    assert model.training                                     # restored after predicting in eval mode
    np.testing.assert_allclose(got[1], tiling.predict_image(model, stack[1], tile=60), atol=1e-6)


def test_stack_batches_tiles_across_slices(rng):
    """Slices of one tile each share forward passes (batch 3: 5 slices in passes of 3 and 2), and
    each slice's result is its own prediction."""
    model = small_unet()
    stack = rng.standard_normal((5, 30, 27)).astype(np.float32)
    assert tiling.count_tiles(model, 76, 30, 27) == 1
    calls = []
    got = tiling.predict_stack(model, stack, tile=76, batch=3, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(3, 5), (5, 5)]
    for i in range(5):
        np.testing.assert_allclose(got[i], tiling.predict_image(model, stack[i], tile=76), atol=1e-6)


def test_choose_tile_returns_valid_sizes():
    model = small_unet(4, 8)
    sizes = []
    for budget in (1 << 16, 1 << 22, 1 << 26, 1 << 40):
        tile = tiling.choose_tile(model, memory_budget_bytes=budget)
        assert geometry.is_valid(tile, 4) and tile <= tiling.MAX_TILE
        sizes.append(tile)
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    geo = model.geometry(sizes[2])
    assert tiling.SAFETY * tiling.activation_bytes(geo, 8) <= 1 << 26
    assert tiling.choose_tile(model, memory_budget_bytes=1 << 26, batch=4) <= sizes[2]
    assert tiling.choose_tile(model, tile=124) == 124
    with pytest.raises(UserError, match="use 116 or 124"):
        tiling.choose_tile(model, tile=120)
    assert tiling.choose_tile(model) in geometry.valid_sizes(1, tiling.MAX_TILE, 4)


def test_paper_network_memory_estimate():
    """The width-64 network at 572: roughly 0.7 GB of activations per tile."""
    geo = geometry.check_tile(572)
    assert 0.5e9 < tiling.activation_bytes(geo, 64) < 1.0e9
