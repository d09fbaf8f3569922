"""``minunet predict``: segment an image or a stack with a trained model (overlap-tile strategy).

Reads the input with :mod:`minunet.data.imageio`, normalises it as training did
(:func:`minunet.data.dataset.normalize`), predicts each slice with :func:`minunet.inference.tiling.predict_stack`
and writes the result atomically (TIFF or HDF5). Every check that can fail (output path, device,
checkpoint, tile size, input, channel count) runs before the network does, and a failure leaves no
output file behind.
"""
import re
import sys
import tempfile
from pathlib import Path

import click
import numpy as np

from minunet.errors import UserError

FORMATS = ("foreground", "labels", "probs")
TIFF_SUFFIXES = (".tif", ".tiff")
HDF5_SUFFIXES = (".h5", ".hdf5")


def parse_output(spec):
    """(path, dataset or None) of an OUTPUT: ``x.tif``, ``x.h5`` or ``x.h5:/dataset``."""
    match = re.match(r"^(.*\.(?:h5|hdf5))(?::(/[^:]+))?$", spec, re.IGNORECASE)
    if match:
        return Path(match.group(1)), match.group(2)
    path = Path(spec)
    if path.suffix.lower() not in TIFF_SUFFIXES:
        raise UserError(f"-o {spec}: unsupported output type; end the name in .tif, .tiff or .h5 "
                        "(optionally .h5:/dataset)")
    return path, None


def check_output(path, force):
    """Refuse an existing output without --force and a folder we cannot write, before any work."""
    if path.is_dir():
        raise UserError(f"-o {path}: is a folder; name an output file such as {path / 'probs.tif'}")
    if path.exists() and not force:
        raise UserError(f"-o {path}: output exists; pass --force to overwrite it or choose another name")
    folder = path.parent
    if not folder.is_dir():
        raise UserError(f"-o {path}: output folder {folder} does not exist; create it first")
    try:                                      # the real test of writability (os.access lies for root)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise UserError(f"-o {path}: cannot write to folder {folder} ({err.strerror}); "
                        "choose a writable folder") from None


def check_not_input(path, input_spec):
    """Refuse to replace the input file itself (an .h5 output would drop its other datasets)."""
    source = Path(re.sub(r"\.(h5|hdf5|hdf):/.*$", r".\1", input_spec, flags=re.IGNORECASE))
    if path.exists() and source.is_file() and source.resolve() == path.resolve():
        raise UserError(f"-o {path}: is the input file; write the prediction to another file")


def resolve_device(device):
    """"auto" is cuda when a GPU is usable (never the slow CUDA simulator), else cpu;
    an explicit but unusable cuda is a UserError."""
    if device == "cpu":
        return device
    try:
        from minunet.kernels import cuda
        usable, what = cuda.available()
    except Exception as err:                  # a broken CUDA install must not break the CPU path
        usable, what = False, str(err)
    if device == "auto":
        return "cuda" if usable and "simulator" not in what.lower() else "cpu"
    if not usable:
        raise UserError(f"--device cuda: no usable GPU here (missing: {what}); use --device cpu, "
                        "or pip install 'minunet[cuda]' on a machine with an NVIDIA GPU")
    return device


def read_input(spec, in_channels):
    """The input stack (N, H, W) normalised as for training; UserError if it does not fit the model."""
    from minunet.data import dataset as data
    from minunet.data.imageio import read_stack
    raw = read_stack(spec)
    if in_channels != 1:
        raise UserError(f"{spec}: grayscale slices (1 channel) but the model expects {in_channels} "
                        "input channels; use a model trained on single-channel images")
    return np.asarray(data.normalize(raw), dtype=np.float32)


def format_output(probs, output_format, single):
    """The array to write: foreground (N,H,W), labels (N,H,W) uint8 or probs (N,K,H,W); squeezed
    to one image when the input was one."""
    if output_format == "foreground":
        result = probs[:, 1]
    elif output_format == "labels":
        result = probs.argmax(axis=1).astype(np.uint8)
    else:
        result = probs
    return result[0] if single else result


def write_output(path, dataset, array, output_format, meta):
    """Write atomically: a TIFF, or an HDF5 file with one dataset (default named after the format)."""
    if path.suffix.lower() in TIFF_SUFFIXES:
        from minunet.data.imageio import write_tiff_atomic
        write_tiff_atomic(path, array, photometric="minisblack")   # never guessed as RGB
        return
    from minunet.model.checkpoint import atomic_h5

    def write(f):
        ds = f.create_dataset(dataset or f"/{output_format}", data=array, compression="gzip")
        for key, value in meta.items():
            ds.attrs[key] = value
    atomic_h5(path, write)


class _Progress:
    """A progress bar over tiles on stderr, only when stderr is a terminal."""

    def __init__(self, n_slices):
        self.bar, self.n_slices = None, n_slices
        self.enabled = sys.stderr.isatty()

    def __call__(self, done, total):
        if not self.enabled:
            return
        if self.bar is None:
            self.bar = click.progressbar(length=total, label=f"predicting {self.n_slices} slice(s), tiles",
                                         file=sys.stderr, show_pos=True, show_eta=True)
            self.bar.__enter__()
        self.bar.update(done - self.bar.pos)

    def close(self):
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("input_spec", metavar="INPUT")
@click.option("--model", "-m", "model_path", required=True, metavar="CHECKPOINT",
              help="A checkpoint written by minunet train (RUN/best.h5 or RUN/checkpoint.h5).")
@click.option("--output", "-o", required=True, metavar="OUTPUT",
              help="Output file: .tif/.tiff, or .h5 (optionally .h5:/dataset).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: the GPU when one is usable, else the CPU.")
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
@click.option("--force", "--overwrite", "force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option("--scheduler", default="local", show_default=True, metavar="local|ADDRESS",
              help="Zarr (block-wise) prediction: local threads, or a dask.distributed scheduler address "
                   "such as tcp://host:8786.")
@click.option("--block", type=click.IntRange(min=1), default=2048, show_default=True,
              help="Zarr (block-wise) prediction: block side in pixels, a multiple of 2^(depth-1).")
@click.option("--resume", is_flag=True, help="Zarr (block-wise) prediction: skip the blocks already written.")
def predict(input_spec, model_path, output, device, tile, batch, pad, tta, output_format, segment, force,
            scheduler, block, resume):
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
    """
    from minunet.inference import blockwise, tiling
    from minunet.model.checkpoint import load_checkpoint, load_model

    tta = int(tta)
    if segment and (output_format or blockwise.wants_blockwise(input_spec, output)):
        raise UserError("--segment: writes a label image of its own; drop --output-format "
                        "(and use a .tif or .h5 OUTPUT)")
    if blockwise.wants_blockwise(input_spec, output):
        checkpoint = load_checkpoint(model_path)
        _predict_blockwise(input_spec, model_path, output, resolve_device(device), tile, batch,
                           pad or _trained_pad(checkpoint), tta,
                           output_format or _default_format(checkpoint.model.get("classes", 2)),
                           force, scheduler, block, resume)
        return
    path, dataset = parse_output(output)
    check_output(path, force)
    check_not_input(path, input_spec)
    device = resolve_device(device)
    model, checkpoint = load_model(model_path, device=device)
    if tile is not None:
        try:
            model.geometry(tile)
        except UserError as err:
            raise UserError(f"--tile: {err}") from None
    pad = pad or _trained_pad(checkpoint)
    if segment and model.classes != 2:
        raise UserError(f"--segment: needs a 2-class (cell/membrane) model; {model_path} has {model.classes} classes")
    output_format = output_format or _default_format(model.classes)
    stack = read_input(input_spec, model.in_channels)
    n, h, w = stack.shape
    if tile is None:
        tile = tiling.fit_tile(model, tiling.choose_tile(model, device, batch=batch), h, w)
    try:
        tiling.check_stride(model, tile, h, w)
    except UserError as err:
        raise UserError(f"--tile: {err}") from None

    progress = _Progress(n)
    try:
        probs = tiling.predict_stack(model, stack, tile=tile, pad=pad, batch=batch, tta=tta, progress=progress)
    finally:
        progress.close()
    single = n == 1
    array = format_output(probs, output_format, single)
    if segment:
        from minunet.inference.segmentation import segment_stack
        array, output_format = segment_stack(array), "segments"
    meta = dict(model=str(model_path), input=str(input_spec), tile=tile, pad=pad, tta=tta)
    write_output(path, dataset, array, output_format, meta)
    click.echo(f"wrote {path}{dataset or ''}: {output_format} {array.dtype} {'x'.join(map(str, array.shape))} "
               f"(tile {tile}, pad {pad}{f', tta {tta}' if tta > 1 else ''}, device {device})", err=True)


def _trained_pad(checkpoint):
    """The border padding the model was trained with (mirror for files that do not say)."""
    return (checkpoint.extra.get("config") or {}).get("pad", "mirror")


def _default_format(classes):
    """Class 1's probability (the ISBI format) for two classes, the class map for more."""
    return "foreground" if classes == 2 else "labels"


def _predict_blockwise(input_spec, model_path, output, device, tile, batch, pad, tta, output_format, force,
                       scheduler, block, resume):
    """Block-wise prediction of a Zarr/HDF5 volume into a Zarr store (minunet.inference.blockwise)."""
    from minunet.inference import blockwise
    if tta > 1:
        raise UserError("--tta: not available for Zarr (block-wise) prediction; drop --tta")
    bar = click.progressbar(length=1, label="predicting blocks", file=sys.stderr, show_pos=True) \
        if sys.stderr.isatty() else None

    def progress(done, total):
        if bar is not None:
            bar.length = total
            bar.update(done - bar.pos)
    result = blockwise.predict_volume(model_path, input_spec, output, block=block, scheduler=scheduler,
                                      device=device, tile=tile, pad=pad, output_format=output_format,
                                      resume=resume, overwrite=force, progress=progress, batch=batch)
    if bar is not None:
        bar.render_finish()
    click.echo(f"wrote {result['output']}: {output_format} {'x'.join(map(str, result['shape']))}, "
               f"{result['computed']} block(s) predicted, {result['skipped']} skipped (tile {result['tile']})",
               err=True)
