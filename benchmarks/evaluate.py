"""The speed of ``minunet evaluate``: every metric of six 512x512 ISBI slices.

    python -m minunet.benchmarks.evaluate [--pred PROBS] [--slices 24-29] [--repeat 3] [--json FILE]
    minunet bench evaluate [same options]

Times :func:`minunet.evaluation.stack.evaluate_stack` with all metrics (pixel and Rand error over
11 thresholds, the warping error over 10, V_Rand and V_Info after thinning over 11, IoU) and each
metric alone: the median of ``--repeat`` runs after one warm-up (which loads Numba's compiled
kernels), wall time and CPU time of all threads. The work runs on as many threads as the machine
has cores (``--workers`` to change). Target: all metrics in <= 10 s on 2 cores.

Truth: ISBI 2012 training labels of ``--slices`` (``MINUNET_ISBI_DIR``, else
``../shared/data/isbi2012``), or synthetic 512x512 labels without the data. Prediction: ``--pred``
(a probability stack of those slices or of all 30, e.g. from ``minunet predict``), else the labels blurred
(Gaussian, sigma 2) with noise (sigma 0.1), a stand-in with a network's soft membranes.
The scores are printed with the times, so runs on different machines can be checked equal.
"""
import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from minunet.data.isbi import isbi_dir

TARGET_S = 10.0
METRICS = ("pixel", "rand", "warping", "vrand", "iou")


def parse_slices(text):
    """Slice indices from "24-29" or "0,5,10-12"."""
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def load_case(pred=None, slices=range(24, 30), seed=0):
    """(probabilities, labels, source) of the benchmark: ISBI labels (or synthetic) and a prediction."""
    from scipy import ndimage
    label_dir = isbi_dir() / "train" / "label"
    if label_dir.is_dir():
        from minunet.data.imageio import read_stack
        labels = np.stack([read_stack(label_dir / f"{i}.png")[0] for i in slices])
        source = f"ISBI 2012 training labels {slices[0]}-{slices[-1]}" if len(slices) > 1 else f"ISBI label {slices[0]}"
    else:
        from minunet.data import synth
        labels = synth.synth_stack(len(slices), 512, seed=seed)[1]
        source = f"{len(slices)} synthetic 512x512 label slices"
    if pred is not None:
        from minunet.data.imageio import read_stack
        probs = np.asarray(read_stack(pred), np.float32)
        if probs.ndim == 2:
            probs = probs[None]
        if len(probs) != len(labels) and len(probs) > max(slices):
            probs = probs[list(slices)]                # a prediction of the whole stack
        return probs, labels, source + f", prediction {pred}"
    rng = np.random.default_rng(seed)
    probs = np.stack([ndimage.gaussian_filter((s > 0).astype(np.float32), 2) for s in labels])
    probs = np.clip(probs + rng.normal(0, 0.1, probs.shape), 0, 1).astype(np.float32)
    return probs, labels, source + ", blurred noisy labels as prediction"


def _time(fn, repeat):
    """Median wall and CPU seconds of fn after one warm-up call, and its last result."""
    result = fn()
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu), result


def run(pred=None, slices=tuple(range(24, 30)), repeat=3, workers=None, progress=print):
    """Time evaluate_stack on the benchmark case; returns the figures (and the scores) as a dict."""
    from minunet.evaluation import common
    from minunet.evaluation.stack import evaluate_stack
    probs, labels, source = load_case(pred, list(slices))
    if workers:
        common.WORKERS = workers
    records = []
    for name, metrics in [("all metrics", METRICS)] + [(m, (m,)) for m in METRICS]:
        wall, cpu, scores = _time(lambda: evaluate_stack(probs, labels, metrics=metrics), repeat)
        records.append(dict(name=name, wall_s=wall, cpu_s=cpu))
        if name == "all metrics":
            all_scores = scores
        progress(f"  {name:<12} {wall:7.2f} s wall {cpu:7.2f} s cpu")
    total = records[0]["wall_s"]
    return dict(source=source, shape=list(probs.shape), cores=os.cpu_count(), workers=common.WORKERS,
                repeat=repeat, records=records, target_s=TARGET_S, met=total <= TARGET_S, scores=all_scores)


def format_summary(r):
    """The headline line: all metrics' time against the target, then the scores."""
    total = r["records"][0]["wall_s"]
    verdict = "met" if r["met"] else "missed"
    scores = {k: v for k, v in r["scores"].items() if isinstance(v, float) and not k.endswith("theta")}
    return "\n".join([f"all metrics of {r['shape'][0]} slices of {r['shape'][1]}x{r['shape'][2]}: "
                      f"{total:.2f} s (target <= {r['target_s']:g} s on 2 cores: {verdict}; "
                      f"{r['cores']} cores here, {r['workers']} threads)",
                      "scores: " + ", ".join(f"{k} {v:.6g}" for k, v in scores.items())])


def arguments():
    """The command-line options (also those of ``minunet bench``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pred", metavar="PROBS", help="a probability stack of the slices (default: "
                        "the labels blurred with noise)")
    parser.add_argument("--slices", default="24-29", help="ISBI training slices (default 24-29)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs (median), after one warm-up")
    parser.add_argument("--workers", type=int, default=None, help="threads (default: one per core)")
    parser.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    return parser


def main(argv=None):
    parser = arguments()
    args = parser.parse_args(argv)
    result = run(args.pred, parse_slices(args.slices), args.repeat, args.workers)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    print(format_summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
