"""Figure for docs/results.md: thresholded probabilities against ``minunet segment``'s objects.

    python -m minunet.benchmarks.segmentation_figure --data isbi.h5 --pred probs.tif --labels labels.tif \
        --slice 24 --threshold 0.5 -o docs/img/isbi-segment24.png

``--pred``: the output of ``minunet predict`` on the same stack (all slices, in file order);
``--labels``: the output of ``minunet segment`` on it; ``--threshold``: where to cut the probability
map (its best threshold for V_Rand, from ``minunet evaluate``). Five panels of one slice: the
input, P(cell), the thresholded map's segments after Fiji's thinning (what V_Rand scores), the
objects, and the truth's segments; segments in random colours, thinned lines and membrane black.
"""
import argparse
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def colours(labels, seed=0):
    """An RGB image of a label image: each id a random colour, 0 black."""
    palette = np.random.default_rng(seed).uniform(0.25, 1.0, (int(labels.max()) + 1, 3))
    palette[0] = 0
    return palette[labels]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="HDF5 data file (minunet data convert)")
    parser.add_argument("--pred", required=True, help="cell probabilities from minunet predict")
    parser.add_argument("--labels", required=True, help="objects from minunet segment")
    parser.add_argument("--slice", type=int, default=24)
    parser.add_argument("--threshold", type=float, default=0.5, help="threshold of the probability map")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args(argv)
    from minunet.data.datafile import load_slices
    from minunet.data.imageio import read_stack
    from minunet.evaluation.common import label4
    from minunet.evaluation.thinning import thin_membranes
    raw, truth = load_slices(args.data, [args.slice])
    prob = read_stack(args.pred)[args.slice]
    objects = read_stack(args.labels)[args.slice].astype(np.int64)
    panels = {f"input (slice {args.slice})": np.stack([raw[0] / 255.0] * 3, axis=-1),
              "P(cell)": np.stack([prob] * 3, axis=-1),
              f"P(cell) > {args.threshold:g}, thinned": colours(thin_membranes(prob > args.threshold)),
              "minunet segment": colours(objects), "truth": colours(label4(truth[0] > 0))}
    fig, axes = plt.subplots(1, len(panels), figsize=(20, 4.4), subplot_kw=dict(xticks=[], yticks=[]))
    for k, title in enumerate(panels):               # every panel RGB: no colour map needed
        axes[k].imshow(panels[title], interpolation="nearest")
        axes[k].set_title(title)
    fig.savefig(args.output, dpi=80, bbox_inches="tight")
    return 0


if __name__ == "__main__":
    sys.exit(main())
