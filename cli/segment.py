"""``minunet segment PROBS -o labels.tif``: objects (a label image per slice) from probabilities.

The algorithm is :mod:`minunet.inference.segmentation`; this module reads the probability map,
optionally chooses the parameters on annotated slices (``--tune``), and writes the labels
atomically (TIFF or HDF5, as ``minunet predict`` writes).
"""

import click

from minunet.cli.progress import Progress
from minunet.errors import UserError


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
    from minunet.inference import outputs
    from minunet.inference.segmentation import SegmentParams, read_probabilities, segment_stack
    from minunet.training.segment_tuning import tune

    params = SegmentParams(threshold, distance, min_size, merge).check()
    if slices and not tune_spec:
        raise UserError("--slices: only used with --tune; drop it or add --tune TRUTH")
    outputs.check_output(output, [probs_spec], force)
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
    with Progress("segmenting slices") as progress:
        labels = segment_stack(probs, params, progress=progress.update)
    outputs.write_output(output, labels, "segments", {"probs": str(probs_spec), "params": params.describe()}, force)
    click.echo(f"{outputs.describe(output, labels, 'segments')}, {int(labels.max())} objects in the fullest slice "
               f"({params.describe()})", err=True)
