"""``minunet predict``: segment an image or a stack with a trained model (overlap-tile strategy).

The options become a :class:`minunet.inference.run.Request` (or a block-wise job for Zarr
volumes, :mod:`minunet.inference.blockwise`); this module only parses and reports.
"""
import click

from minunet.cli.progress import Progress
from minunet.cli.startup import announce_compilation
from minunet.engine.devices import resolve_device
from minunet.errors import UserError
from minunet.inference.outputs import FORMATS


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("input_spec", metavar="INPUT")
@click.option("--model", "-m", "model_path", required=True, metavar="CHECKPOINT",
              help="A checkpoint written by minunet train (RUN/best.h5 or RUN/checkpoint.h5).")
@click.option("--output", "-o", required=True, metavar="OUTPUT",
              help="Output file: .tif/.tiff, or .h5 (optionally .h5:/dataset).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "reference"]), default="auto", show_default=True,
              help="auto: the GPU when one is usable, else the CPU (reference: slow NumPy, tests).")
@click.option("--tile", type=int, default=None, metavar="N",
              help="Input tile size (572 for the paper's network). Default: among the sizes that fit "
                   "memory (up to 1024), the one needing the least work for the image. "
                   "An invalid size is refused with the nearest valid ones.")
@click.option("--batch", type=click.IntRange(min=1), default=4, show_default=True,
              help="Tiles per forward pass.")
@click.option("--pad", type=click.Choice(["mirror", "zero"]), default=None,
              help="Context beyond the image border: mirror (the paper) or zero (the dental network). "
                   "Default: what the model was trained with, else mirror.")
@click.option("--tta", type=click.Choice(["1", "4", "8"]), default="1", flag_value="8", is_flag=False,
              show_default=True, metavar="1|4|8",
              help="Test-time averaging: the mean of the prediction of 4 (the rotations) or 8 "
                   "(rotations and flips) versions of each slice, costing 4x or 8x the time "
                   "(--tta alone: 8). Measured effect on ISBI: docs/results.md.")
@click.option("--output-format", type=click.Choice(FORMATS), default=None,
              help="foreground: float32 probability of class 1 (ISBI submission format); "
                   "labels: uint8 argmax class map; probs: float32 probabilities of every class. "
                   "Default: foreground for a 2-class model, labels for more classes.")
@click.option("--segment", is_flag=True,
              help="Write objects instead of probabilities: a 16-bit label image per slice, as "
                   "`minunet segment` with its defaults makes from the probabilities (2-class models).")
@click.option("--labels", is_flag=True,
              help="OME-Zarr output (NAME.ome.zarr): also write the class map (argmax) as the image's NGFF labels "
                   "group labels/classes, for napari.")
@click.option("--force", "--overwrite", "force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option("--scheduler", default="local", show_default=True, metavar="local|ADDRESS",
              help="Zarr (block-wise) prediction: local threads, or a dask.distributed scheduler address "
                   "such as tcp://host:8786.")
@click.option("--block", type=click.IntRange(min=1), default=2048, show_default=True,
              help="Zarr (block-wise) prediction: block side in pixels, a multiple of 2^(depth-1).")
@click.option("--resume", is_flag=True, help="Zarr (block-wise) prediction: skip the blocks already written.")
@click.option("--quiet", "-q", is_flag=True, help="No progress and no summary line.")
def predict(input_spec, model_path, output, device, tile, batch, pad, tta, output_format, segment, labels, force,
            scheduler, block, resume, quiet):
    """Segment INPUT with a trained U-Net, tile by tile (the paper's overlap-tile strategy).

    INPUT is a TIFF (single or multi-page), a PNG, a folder of slices, a quoted glob, or an HDF5
    dataset (file.h5:/raw), of any size. Each output tile is predicted from an input tile that adds
    the network's context; at the border the image is mirrored (or zero-padded). Valid convolutions
    make the stitching exact: no seams, no blending.

    The output holds one value per input pixel: shape (N, H, W) for a stack and (H, W) for a single
    slice; --output-format probs adds a class axis (N, K, H, W). In the default foreground format
    (ISBI 2012) 1 means cell and 0 membrane. An .h5 output stores one dataset, named after the
    format unless given (probs.h5:/probs).

    \b
    Examples:
      minunet predict --model runs/isbi/best.h5 ../shared/data/isbi2012/test -o test-probs.tif
      minunet predict -m runs/isbi/best.h5 "slices/*.png" -o seg.h5 --output-format labels --tta 8
      minunet predict -m runs/dental/best.h5 xray.png -o xray-probs.h5:/probs --output-format probs
      minunet predict -m runs/isbi/best.h5 volume.zarr -o probs.zarr --block 2048 --scheduler tcp://host:8786

    A .zarr INPUT or OUTPUT predicts block by block on Dask (volumes larger than memory): each block
    is read with its context, predicted, and written as one chunk of the Zarr OUTPUT; --resume
    skips finished blocks. See docs/scaling.md.

    An OUTPUT named NAME.ome.zarr is an OME-Zarr (NGFF 0.5) image for napari and neuroglancer: all
    class probabilities by default (channel axis c), --labels adds the class map as its labels
    group. An OME-Zarr INPUT is read at full resolution. See docs/interop.md.
    """
    from minunet.inference import volume_stores
    from minunet.inference.run import Request, predict_to_file

    device, tta = resolve_device(device), int(tta)
    if segment and (output_format or volume_stores.wants_blockwise(input_spec, output)):
        raise UserError("--segment: writes a label image of its own; drop --output-format "
                        "(and use a .tif or .h5 OUTPUT)")
    if volume_stores.wants_blockwise(input_spec, output):
        _predict_blockwise(input_spec, model_path, output, device, tile, batch, pad, tta, output_format,
                           force, scheduler, block, resume, quiet, labels)
        return
    request = Request(model_path, input_spec, output, device, tile, batch, pad, tta, output_format, force, labels,
                      segment)
    with Progress("predicting: tiles", quiet=quiet) as progress:
        line = predict_to_file(request, progress=progress.update,
                               starting=lambda: announce_compilation(device, progress.echo, quiet))
    if not quiet:
        click.echo(line, err=True)


def _predict_blockwise(input_spec, model_path, output, device, tile, batch, pad, tta, output_format, force,
                       scheduler, block, resume, quiet, labels):
    """Block-wise prediction of a Zarr/HDF5 volume into a Zarr store (minunet.inference.blockwise)."""
    from minunet.inference import blockwise, ome_zarr, outputs
    from minunet.inference.run import trained_pad
    from minunet.model.checkpoint import load_checkpoint
    if tta > 1:
        raise UserError(f"--tta {tta}: not available for Zarr (block-wise) prediction; drop --tta")
    checkpoint = load_checkpoint(model_path, training_state=False)
    pad = pad or trained_pad(checkpoint)
    output_format = output_format or outputs.default_format(checkpoint.model.get("classes", 2),
                                                            ome=ome_zarr.is_output(output))
    with Progress("predicting: blocks", quiet=quiet) as progress:
        result = blockwise.predict_volume(model_path, input_spec, output, block=block, scheduler=scheduler,
                                          device=device, tile=tile, pad=pad, output_format=output_format,
                                          resume=resume, overwrite=force, progress=progress.update, batch=batch,
                                          labels=labels,
                                          starting=lambda: announce_compilation(device, progress.echo, quiet))
    if not quiet:
        click.echo(f"wrote {result['output']}: {output_format} {'x'.join(map(str, result['shape']))}, "
                   f"{result['computed']} block(s) predicted, {result['skipped']} skipped (tile {result['tile']})",
                   err=True)
