"""Figure for docs/results.md: input, predicted cell probability and label of one validation slice.

    python benchmarks/results_figure.py --data isbi.h5 --pred val-probs.tif --slice 24 -o docs/img/isbi-val.png

``--pred`` is the output of ``minunet predict`` on the same stack (all slices, in file order).
"""
import argparse
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="HDF5 data file (minunet data convert)")
    parser.add_argument("--pred", required=True, help="foreground probabilities from minunet predict")
    parser.add_argument("--slice", type=int, default=24)
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args(argv)
    from minunet.data.datafile import load_slices
    from minunet.data.imageio import read_stack
    raw, labels = load_slices(args.data, [args.slice])
    pred = read_stack(args.pred)[args.slice]
    panels = [(raw[0], "input (slice %d)" % args.slice, "gray"), (pred, "minunet: P(cell)", "gray"),
              (pred > 0.5, "prediction > 0.5", "gray"), (labels[0], "label (white = cell)", "gray")]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    for ax, (image, title, cmap) in zip(axes, panels):
        ax.imshow(np.asarray(image, dtype=np.float32), cmap=cmap, interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(args.output, dpi=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
