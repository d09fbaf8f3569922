"""Deep supervision (the paper's dental network): targets for the coarse expanding levels.

Each coarse level's class scores get their own weighted loss; its labels and weights are the
output tile's, sampled at the pixel each coarse pixel stands for.
"""
import numpy as np

from minunet.data.datafile import UNLABELLED

IGNORE = UNLABELLED                 # label of pixels that carry no loss (the data format's unlabelled value)


def coarse_positions(coarse_size, levels_up, up_kernel=2, convs_per_level=2, kernel=3):
    """Where the pixel centres of a coarse expanding-level map fall in the final output.

    Each level up, a stride-2 up-convolution with a k x k kernel spreads coarse pixel j over fine
    pixels 2j .. 2j+k-1 (centre 2j + (k-1)/2), then the level's valid convolutions crop
    ``convs_per_level * (kernel-1) / 2`` pixels from each side. Returns float positions (one per
    coarse row or column) in the coordinates of the output tile.
    """
    pos = np.arange(coarse_size, dtype=np.float64)
    crop = convs_per_level * (kernel - 1) / 2
    for _ in range(levels_up):
        pos = 2 * pos + (up_kernel - 1) / 2 - crop
    return pos


def coarse_index(coarse_size, levels_up, out_size, up_kernel=2):
    """Output-tile row (or column) read by each coarse pixel, or -1 where it falls outside.

    The coarse map at stride 2^k covers the output window, centred, with one block of 2^k x 2^k
    output pixels per coarse pixel; its label is the label of the block's centre pixel (nearest
    neighbour; a block of even size has its centre between pixels, and the one below/right of it
    is taken). Coarse pixels whose centre lies outside the output tile get the ignore label.
    """
    idx = np.floor(coarse_positions(coarse_size, levels_up, up_kernel) + 0.5).astype(np.int64)
    idx[(idx < 0) | (idx >= out_size)] = -1
    return idx


def coarse_targets(labels, weights, idx):
    """Labels and weights (N, S, S) brought to a coarse level by nearest sampling at ``idx``.

    Pixels outside the output tile get label 255 (ignored) and weight 0.
    """
    inside = idx >= 0
    safe = np.where(inside, idx, 0)
    lab = labels[:, safe][:, :, safe].copy()
    wgt = weights[:, safe][:, :, safe].copy()
    outside = ~(inside[:, None] & inside[None, :])
    lab[:, outside] = IGNORE
    wgt[:, outside] = 0
    return lab, wgt
