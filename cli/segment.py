"""``minunet segment PROBS -o labels.tif``: objects (a label image per slice) from probabilities.

The algorithm is :mod:`minunet.inference.segmentation`; this module reads the probability map,
optionally chooses the parameters on annotated slices (``--tune``), and writes the labels
atomically (TIFF or HDF5, as ``minunet predict`` writes).
"""
import itertools
import sys
from dataclasses import replace

import click
import numpy as np

from minunet.errors import UserError

# The parameter sets --tune scores: seeds first, then size filter and merge.
TUNE_SEEDS = dict(threshold=(0.3, 0.4, 0.5, 0.6, 0.7), distance=(0.0, 1.0, 2.0))
TUNE_CLEANUP = dict(min_size=(0, 50, 100, 200, 400), merge=(0.0, 0.3, 0.5, 0.7))


def read_probabilities(spec):
    """A probability stack (N, H, W) float32 in [0, 1]; a UserError names the file otherwise."""
    from minunet.data.imageio import read_stack
    from minunet.evaluation.inputs import as_stack
    stack = np.asarray(read_stack(spec))
    if not np.issubdtype(stack.dtype, np.floating):
        raise UserError(f"PROBS {spec}: holds {stack.dtype} values; segment the float probabilities "
                        "written by `minunet predict` (P(cell) in [0, 1])")
    stack = as_stack(stack, f"PROBS {spec}")
    if not np.all(np.isfinite(stack)) or stack.min() < 0 or stack.max() > 1:
        raise UserError(f"PROBS {spec}: values must be probabilities in [0, 1] (1 = cell, 0 = membrane)")
    return stack.astype(np.float32, copy=False)


def score(labels, truth):
    """(V_Rand, V_Info) of a segmentation against truth labels."""
    from minunet.evaluation.stack import evaluate_stack
    r = evaluate_stack(labels, truth, metrics=("vrand",), pred_kind="segments")
    return r["v_rand"], r["v_info"]


def tune(probs, truth, base, progress=None):
    """The parameters, starting from `base`, that maximise (V_Rand + V_Info) / 2 on these slices.

    Two stages over the grids above: seeds (threshold, distance) without size filter and merge,
    then size filter and merge with the best seeds. Returns (best params, [(params, v_rand, v_info)]).
    """
    from minunet.inference.segmentation import segment_stack
    tried = []

    def stage(start, grid):
        best = None
        for values in itertools.product(*grid.values()):
            params = replace(start, **dict(zip(grid, values)))
            v_rand, v_info = score(segment_stack(probs, params), truth)
            tried.append((params, v_rand, v_info))
            if progress is not None:
                progress(params, v_rand, v_info)
            if best is None or v_rand + v_info > best[1]:
                best = (params, v_rand + v_info)
        return best[0]
    seeded = stage(replace(base, min_size=0, merge=0.0), TUNE_SEEDS)
    return stage(seeded, TUNE_CLEANUP), tried


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("probs_spec", metavar="PROBS")
@click.option("--output", "-o", required=True, metavar="OUTPUT",
              help="Label image: .tif/.tiff, or .h5 (optionally .h5:/dataset).")
@click.option("--threshold", type=float, default=0.4, show_default=True,
              help="P(cell) above which a pixel is cell when placing the seeds.")
@click.option("--distance", type=float, default=2.0, show_default=True,
              help="Seeds are the cells' cores, the pixels farther than this (pixels) from the "
                   "membrane; a larger distance separates cells joined through wider gaps.")
@click.option("--min-size", type=int, default=200, show_default=True,
              help="Objects smaller than this (pixels) are dissolved into their neighbours.")
@click.option("--merge", type=float, default=0.7, show_default=True,
              help="Join neighbours whose shared boundary has a mean membrane probability below "
                   "this (0: never join).")
@click.option("--tune", "tune_spec", metavar="TRUTH",
              help="Choose the parameters first: score a grid of them on annotated slices (TRUTH, "
                   "as for `minunet evaluate`, with --slices) and segment with the best.")
@click.option("--slices", metavar="LIST",
              help="With --tune: the slices to tune on (e.g. 0-23), of both stacks or of the longer "
                   "one, as `minunet evaluate --slices`; never the slices you report scores on.")
@click.option("--force", "--overwrite", "force", is_flag=True, help="Overwrite OUTPUT if it exists.")
def segment(probs_spec, output, threshold, distance, min_size, merge, tune_spec, slices, force):
    """Turn PROBS, cell probabilities from `minunet predict`, into objects: one label image per slice.

    Each cell grows from a seed, its core away from the thresholded membrane, by a watershed
    of the membrane probability, so a narrow gap in a membrane does not merge two cells; tiny
    objects are dissolved and neighbours split by a weak boundary are joined. Every pixel gets an object id (1..n per slice), written as
    16-bit integers (32 if needed). Score the result with `minunet evaluate labels.tif TRUTH`.
    The defaults were chosen on the ISBI 2012 training slices 0-23 (docs/results.md).

    \b
    Examples:
      minunet predict -m runs/isbi/best.h5 isbi.h5:/raw -o probs.tif
      minunet segment probs.tif -o labels.tif
      minunet segment probs.tif --tune isbi.h5 --slices 0-23 -o labels.tif
    """
    from minunet.cli.evaluate import parse_slices, read_stack_checked, resolve_truth_spec, select_slices
    from minunet.cli.predict import check_not_input, check_output, parse_output, write_output
    from minunet.inference.segmentation import SegmentParams, segment_stack

    params = SegmentParams(threshold, distance, min_size, merge).check()
    if slices and not tune_spec:
        raise UserError("--slices: only used with --tune; drop it or add --tune TRUTH")
    path, dataset = parse_output(output)
    check_output(path, force)
    check_not_input(path, probs_spec)
    probs = read_probabilities(probs_spec)
    if tune_spec:
        spec = resolve_truth_spec(tune_spec)
        truth = read_stack_checked(spec, "TRUTH")
        tune_probs, truth, _ = select_slices(probs, truth, parse_slices(slices) if slices else None,
                                             f"PROBS {probs_spec}", f"TRUTH {spec}")
        click.echo(f"tuning on {len(truth)} slice(s) of {spec}: V_Rand, V_Info per parameter set", err=True)
        params, _ = tune(tune_probs, truth, params,
                         progress=lambda p, r, i: click.echo(f"  {p.describe()}: {r:.5f} {i:.5f}", err=True))
        click.echo(f"chosen: {params.describe()}", err=True)
    bar = click.progressbar(length=len(probs), label="segmenting slices", file=sys.stderr) \
        if sys.stderr.isatty() else None
    labels = segment_stack(probs, params, progress=(lambda done, total: bar.update(1)) if bar else None)
    if bar is not None:
        bar.render_finish()
    write_output(path, dataset, labels, "labels", {"probs": str(probs_spec), "params": params.describe()})
    click.echo(f"wrote {path}{dataset or ''}: {labels.dtype} labels {'x'.join(map(str, labels.shape))}, "
               f"{int(labels.max())} objects in the fullest slice ({params.describe()})", err=True)
