"""One prediction job: a model file and an input stack in, an output file written.

Every check that can fail (output path, checkpoint, tile size, input, channel count) runs before
the network does, and a failure leaves no output behind. Block-wise prediction of volumes larger
than memory (:mod:`minunet.inference.blockwise`) shares the output formats and checks.
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minunet.data.datafile import check_finite, normalize
from minunet.data.imageio import BLOCKWISE_ADVICE, read_stack, stack_layout
from minunet.errors import UserError
from minunet.files.space import check_memory, gib
from minunet.inference import ome_zarr, outputs, tiling
from minunet.model.checkpoint import load_model
from minunet.model.memory import activation_bytes, memory_budget


@dataclass
class Request:
    """What to predict and how; None means the model's or the image's default."""

    model_path: str
    input_spec: str
    output_spec: str
    device: str = "cpu"
    tile: int = None
    batch: int = 4
    pad: str = None
    tta: int = 1                  # versions averaged: 1, 4 (rotations) or 8 (rotations and flips)
    output_format: str = None
    force: bool = False
    labels: bool = False          # OME-Zarr outputs: also the class map as an NGFF labels group
    segment: bool = False         # write objects (a label image per slice) instead of probabilities


def trained_pad(checkpoint):
    """The border padding the model was trained with (mirror for files that do not say)."""
    return (checkpoint.extra.get("config") or {}).get("pad", "mirror")


def read_input(spec, in_channels):
    """The input stack (N, H, W) normalised as for training; UserError if it does not fit the model
    or holds NaN or infinite values (they would spread through every tile they touch)."""
    if in_channels != 1:
        raise UserError(f"{spec}: grayscale slices (1 channel) but the model expects {in_channels} "
                        "input channels; use a model trained on single-channel images")
    raw = ome_zarr.read_image(spec) if ome_zarr.is_ome_zarr(spec) else read_stack(spec)
    check_finite(raw, str(spec), "replace them (e.g. with 0) before predicting")
    return np.asarray(normalize(raw), dtype=np.float32)


def check_job_memory(spec, classes, output_format):
    """UserError, before anything is decoded, when the whole-image job cannot fit in memory: the
    input, its float32 copy, the class probabilities and the output (sizes from the file headers).
    Returns the bytes of the output array."""
    n, height, width, dtype = stack_layout(spec)
    shape, out_dtype = outputs.output_layout((n, height, width), classes, output_format)
    per_pixel = np.dtype(dtype).itemsize + 4 + 4 * classes
    out_bytes = int(np.prod(shape, dtype=np.float64)) * np.dtype(out_dtype).itemsize
    check_memory(n * height * width * per_pixel + out_bytes, f"{spec}: {n} x {height} x {width} pixels",
                 BLOCKWISE_ADVICE)
    return out_bytes


def check_tile_memory(model, tile, batch, device):
    """UserError when ``batch`` tiles of size ``tile`` will not fit (checked before allocating)."""
    geo = model.geometry(tile)
    need = tiling.SAFETY * activation_bytes(geo, model.width, model.in_channels, model.classes,
                                            model.up_kernel, batch)
    budget = memory_budget(device)
    if need > budget:
        fits = tiling.choose_tile(model, device, batch=batch, max_tile=tile)
        raise UserError(f"--tile {tile}: {batch} tile(s) need about {gib(need)} but {gib(budget)} can be used "
                        f"on {device}; use --tile {fits} or less, or a smaller --batch")


def predict_to_file(request, progress=None, starting=None):
    """Run a :class:`Request`; returns a one-line description of what was written.

    ``progress(done, total)`` follows the tiles; ``starting()`` is called once every input has been
    checked, just before the first forward pass (where a command says that kernels compile).
    """
    r = request
    ngff = ome_zarr.is_output(r.output_spec)
    if r.labels and not ngff:
        raise UserError(f"--labels: only for an OME-Zarr output; name it -o {Path(r.output_spec).stem}.ome.zarr")
    if ngff:
        outputs.check_not_input(r.output_spec, [r.input_spec, r.model_path])
        ome_zarr.check_output(Path(r.output_spec), r.force)
    else:
        outputs.check_output(r.output_spec, [r.input_spec, r.model_path], r.force)
    model, checkpoint = load_model(r.model_path, device=r.device)
    if r.tile is not None:
        try:
            model.geometry(r.tile)
        except UserError as err:
            raise UserError(f"--tile: {err}") from None
        check_tile_memory(model, r.tile, r.batch, r.device)
    pad = r.pad or trained_pad(checkpoint)
    if r.segment and model.classes != 2:
        raise UserError(f"--segment: needs a 2-class (cell/membrane) model; {r.model_path} has {model.classes} classes")
    output_format = outputs.check_format(r.output_format or outputs.default_format(model.classes, ngff))
    if not ome_zarr.is_ome_zarr(r.input_spec):
        outputs.check_output_space(r.output_spec, check_job_memory(r.input_spec, model.classes, output_format))
    stack = read_input(r.input_spec, model.in_channels)
    n, h, w = stack.shape
    tile = r.tile or tiling.fit_tile(model, tiling.choose_tile(model, r.device, batch=r.batch), h, w)
    try:
        tiling.check_stride(model, tile, h, w)
    except UserError as err:
        raise UserError(f"--tile: {err}") from None
    if starting is not None:
        starting()
    probs = tiling.predict_stack(model, stack, tile=tile, pad=pad, batch=r.batch, tta=r.tta, progress=progress)
    meta = dict(model=str(r.model_path), input=str(r.input_spec), tile=tile, pad=pad, tta=r.tta)
    settings = f"(tile {tile}, pad {pad}{f', tta {int(r.tta)}' if int(r.tta) > 1 else ''}, device {r.device})"
    if ngff:
        ome_zarr.write_prediction(Path(r.output_spec), probs, output_format, r.labels,
                                  ome_zarr.source_space(r.input_spec), meta, r.force)
        return (f"wrote {r.output_spec}: OME-Zarr image, {output_format}"
                f"{' and labels/classes' if r.labels else ''} {settings}")
    if r.segment:
        from minunet.inference.segmentation import segment_stack  # heavy: scipy.ndimage, only with --segment
        array, output_format = segment_stack(probs[:, 1]), "segments"
    else:
        array = outputs.format_probabilities(probs, output_format, class_axis=1)
    if n == 1:
        array = array[0]
    outputs.write_output(r.output_spec, array, output_format, meta, r.force)
    return f"{outputs.describe(r.output_spec, array, output_format)} {settings}"
