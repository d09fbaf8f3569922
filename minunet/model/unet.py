"""The U-Net of Ronneberger, Fischer and Brox, "U-Net: Convolutional Networks for Biomedical
Image Segmentation", MICCAI 2015 (arXiv:1505.04597).

A contracting path of ``depth`` levels (two unpadded 3x3 convolutions with ReLU each, 2x2 max
pooling between levels, channels doubling from ``width``), dropout at the end of the contracting
path, and an expanding path of stride-2 up-convolutions, crop-and-concatenate skip connections and
two 3x3 convolutions per level, closed by a 1x1 convolution to the class scores. With the paper's
settings (depth 5, width 64, 1 input channel, 2 classes) it has 23 convolutional layers and
31,030,658 parameters and maps a 572x572 tile to a 388x388 output.

The dental variant of the paper (ISBI 2015) uses 4x4 up-convolutions (``up_kernel=4``), 7 classes,
and extra softmax losses on the expanding path's low-resolution maps (``deep_supervision=True``:
a 1x1 convolution to the classes after each expanding level but the last).
"""
import numpy as np

from minunet.engine import functional as F
from minunet.engine.nn import Conv2d, ConvTranspose2d, Module
from minunet.model import geometry


class UNet(Module):
    """The paper's network; ``model(x)`` maps (N, in_channels, S, S) to (N, classes, S', S').

    Args:
        depth: levels of the contracting path (5 in the paper: 4 poolings).
        width: channels of the first level (64), doubling at each level down.
        in_channels, classes: input channels and output classes (1 and 2 for EM).
        up_kernel: 2 (EM network) or 4 (dental network) for the stride-2 up-convolutions.
        dropout: drop rate at the end of the contracting path during training (0.5).
        deep_supervision: also return class scores at each coarser expanding level.
        device: kernel backend, "cpu" (default), "cuda" or "reference".
        seed: seeds the He initialisation and the dropout masks.
    """

    def __init__(self, depth=5, width=64, in_channels=1, classes=2, up_kernel=2, dropout=0.5,
                 deep_supervision=False, device="cpu", seed=0, dtype=np.float32):
        if depth < 1 or width < 1 or classes < 2 or in_channels < 1:
            raise ValueError("UNet needs depth >= 1, width >= 1, in_channels >= 1 and classes >= 2")
        self.depth, self.width, self.in_channels, self.classes = depth, width, in_channels, classes
        self.up_kernel, self.dropout_rate, self.deep_supervision = up_kernel, dropout, deep_supervision
        self.device, self.seed = device, seed
        rng = np.random.default_rng(seed)
        self.dropout_rng = np.random.default_rng([seed, 1])
        layer = dict(rng=rng, device=device, dtype=dtype)

        channels = [width * 2 ** level for level in range(depth)]
        self.encoder = []
        previous = in_channels
        for c in channels:
            self.encoder.append(DoubleConv(previous, c, **layer))
            previous = c
        self.up, self.decoder, self.aux_heads = [], [], []
        for level in range(depth - 2, -1, -1):
            c = channels[level]
            self.up.append(ConvTranspose2d(channels[level + 1], c, up_kernel, **layer))
            self.decoder.append(DoubleConv(2 * c, c, **layer))
            if deep_supervision and level > 0:
                self.aux_heads.append(Conv2d(c, classes, 1, **layer))
        self.head = Conv2d(channels[0], classes, 1, **layer)

    def config(self):
        """The architecture as a JSON-friendly dict (stored in checkpoints)."""
        return dict(depth=self.depth, width=self.width, in_channels=self.in_channels, classes=self.classes,
                    up_kernel=self.up_kernel, dropout=self.dropout_rate, deep_supervision=self.deep_supervision)

    def geometry(self, tile):
        """Sizes through the network for an input tile; UserError naming valid sizes if invalid."""
        return geometry.check_tile(tile, self.depth, self.up_kernel)

    def __call__(self, x):
        """Class scores (logits) for input x; with deep supervision also the coarse scores."""
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x)
            if level < self.depth - 1:
                skips.append(x)
                x = F.max_pool2d(x)
        if self.dropout_rate > 0 and self.training:
            x = F.dropout(x, self.dropout_rate, seed=self.dropout_rng.integers(2 ** 62))
        aux = []
        heads = iter(self.aux_heads)
        for i, (up, block) in enumerate(zip(self.up, self.decoder)):
            x = block(F.crop_concat(skips[-1 - i], up(x)))
            if self.deep_supervision and i < len(self.decoder) - 1:
                aux.append(next(heads)(x))
        logits = self.head(x)
        return (logits, aux) if self.deep_supervision else logits


class DoubleConv(Module):
    """Two unpadded 3x3 convolutions, each followed by ReLU (fused into the convolution)."""

    def __init__(self, in_channels, out_channels, **layer):
        self.conv1 = Conv2d(in_channels, out_channels, 3, relu=True, **layer)
        self.conv2 = Conv2d(out_channels, out_channels, 3, relu=True, **layer)

    def __call__(self, x):
        return self.conv2(self.conv1(x))
