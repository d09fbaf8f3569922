"""Test-time averaging over 1, 4 or 8 versions of an image (minunet.inference.tiling, --tta)."""
import numpy as np
import pytest

from minunet.errors import UserError
from minunet.inference import tiling
from minunet.model.unet import UNet


def small_unet():
    return UNet(depth=3, width=4, device="cpu", seed=3).eval()


def test_four_versions_are_the_mean_over_the_rotations(rng):
    model = small_unet()
    image = rng.standard_normal((23, 31)).astype(np.float32)
    got = tiling.predict_image(model, image, tile=52, tta=4)
    manual = [np.rot90(tiling.predict_image(model, np.ascontiguousarray(np.rot90(image, k)), tile=52),
                       -k, axes=(1, 2)) for k in range(4)]
    assert np.abs(got - np.mean(manual, axis=0)).max() < 1e-5
    # averaging the rotations makes the prediction rotation-equivariant
    turned = tiling.predict_image(model, np.ascontiguousarray(np.rot90(image)), tile=52, tta=4)
    assert np.abs(turned - np.rot90(got, axes=(1, 2))).max() < 1e-5
    assert np.abs(tiling.predict_image(model, image, tile=52, tta=1) - manual[0]).max() == 0
    assert np.abs(tiling.predict_image(model, image, tile=52, tta=True)
                  - tiling.predict_image(model, image, tile=52, tta=8)).max() == 0


def test_versions_multiply_the_tiles_and_bad_counts_are_refused():
    model = small_unet()
    one = tiling.count_tiles(model, 52, 40, 40)
    assert [tiling.count_tiles(model, 52, 40, 40, tta) for tta in (1, 4, 8, True, False)] == \
        [one, 4 * one, 8 * one, 8 * one, one]
    with pytest.raises(UserError, match="1, 4"):
        tiling.predict_image(model, np.zeros((20, 20), np.float32), tile=52, tta=7)
