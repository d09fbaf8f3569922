"""Tile geometry of the valid-convolution U-Net."""
import pytest

from minunet.errors import UserError
from minunet.model import geometry


def test_paper_tile():
    g = geometry.check_tile(572)
    assert g.output_size == 388 and g.margin == 92
    assert g.encoder_sizes == (568, 280, 136, 64, 28)
    assert g.decoder_sizes == (52, 100, 196, 388)


def test_invalid_tile_names_nearest_valid():
    with pytest.raises(UserError, match="570.*556 or 572"):
        geometry.check_tile(570)
    assert geometry.nearest_valid(570) == (556, 572)


def test_valid_sizes_are_exactly_those_that_trace(rng):
    for depth, k in [(5, 2), (5, 4), (3, 2), (4, 4)]:
        for size in rng.integers(1, 700, 50):
            size = int(size)
            g = geometry.trace(size, depth, k)
            if g is None:
                continue
            s = size
            for level in range(depth - 1):                  # every pooling sees an even size
                s -= 4
                assert s % 2 == 0
                s //= 2
            assert g.output_size >= 1


def test_input_size_for_output():
    assert geometry.input_size_for(388) == 572
    assert geometry.output_size(geometry.input_size_for(100)) >= 100
    assert geometry.output_size(geometry.input_size_for(100) - 16) < 100


def test_four_by_four_upconv_geometry():
    g = geometry.check_tile(572, up_kernel=4)
    assert g.decoder_sizes == (54, 106, 210, 418)
