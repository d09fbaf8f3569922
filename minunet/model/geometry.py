"""Tile sizes of the valid-convolution U-Net, computed in code, never by hand.

With unpadded 3x3 convolutions every level loses 4 pixels, each 2x2 pooling halves the size
(and needs an even size to see whole windows), and each stride-2 up-convolution with a k x k
kernel maps s to 2(s-1)+k. An input tile is *valid* when every pooling sees an even size and the
output is at least one pixel; then every skip connection has even crop margins too. For the
paper's network (depth 5, 2x2 up-convolutions) a 572 tile gives a 388 output.
"""
from dataclasses import dataclass

from minunet.errors import UserError


@dataclass(frozen=True)
class Geometry:
    """Sizes through the network for one input tile size (square tiles; rows and columns alike)."""

    input_size: int
    output_size: int
    encoder_sizes: tuple      # size after each encoder level's two convolutions
    decoder_sizes: tuple      # size after each decoder level's two convolutions, deepest first

    @property
    def margin(self):
        """Context lost on each side: (input - output) / 2, the overlap-tile halo."""
        return (self.input_size - self.output_size) // 2


def alignment(depth=5):
    """The pixel grid that the poolings of a depth-``depth`` network impose: 2^(depth-1).

    Tiles and blocks that start on it see the same pooling windows as one pass over the whole
    image, so their stitched outputs agree exactly.
    """
    return 2 ** (depth - 1)


def trace(size, depth=5, up_kernel=2, convs_per_level=2, kernel=3):
    """The Geometry of an input size, or None when the size is not valid for the network."""
    loss = convs_per_level * (kernel - 1)
    s, encoder = size, []
    for level in range(depth):
        s -= loss
        if s < 1:
            return None
        encoder.append(s)
        if level < depth - 1:
            if s % 2:
                return None
            s //= 2
    decoder = []
    for level in range(depth - 2, -1, -1):
        s = 2 * (s - 1) + up_kernel
        if s > encoder[level] or (encoder[level] - s) % 2:
            return None
        s -= loss
        if s < 1:
            return None
        decoder.append(s)
    return Geometry(size, s, tuple(encoder), tuple(decoder))


def output_size(size, depth=5, up_kernel=2):
    """The output tile size for an input tile size; raises UserError for an invalid size."""
    return check_tile(size, depth, up_kernel).output_size


def is_valid(size, depth=5, up_kernel=2):
    """Whether an input tile size goes through the network with whole pooling windows."""
    return trace(size, depth, up_kernel) is not None


def nearest_valid(size, depth=5, up_kernel=2):
    """The largest valid input size <= size and the smallest >= size (either may be None)."""
    below = next((s for s in range(size, 0, -1) if is_valid(s, depth, up_kernel)), None)
    above = next((s for s in range(max(size, 1), size + 2 ** (depth + 1) + 64) if is_valid(s, depth, up_kernel)), None)
    return below, above


def check_tile(size, depth=5, up_kernel=2):
    """The Geometry of a tile size, or a UserError naming the nearest valid sizes."""
    geometry = trace(size, depth, up_kernel)
    if geometry is None:
        below, above = nearest_valid(size, depth, up_kernel)
        options = " or ".join(str(s) for s in (below, above) if s is not None)
        raise UserError(
            f"tile size {size} is not valid for a depth-{depth} U-Net with {up_kernel}x{up_kernel} "
            f"up-convolutions (every pooling must see an even size); use {options}")
    return geometry


def input_size_for(out_size, depth=5, up_kernel=2):
    """The smallest valid input tile whose output is at least ``out_size`` pixels."""
    size = 1
    while True:
        geometry = trace(size, depth, up_kernel)
        if geometry is not None and geometry.output_size >= out_size:
            return size
        size += 1


def valid_sizes(low, high, depth=5, up_kernel=2):
    """All valid input tile sizes in [low, high]."""
    return [s for s in range(low, high + 1) if is_valid(s, depth, up_kernel)]
