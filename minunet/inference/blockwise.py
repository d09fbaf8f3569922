"""Block-wise prediction of volumes larger than memory, on Dask (``minunet predict IN.zarr -o OUT.zarr``).

A 2-D image (H, W) or a 3-D volume (Z, H, W, predicted slice by slice) in a Zarr store or an HDF5
dataset (``file.h5:/raw``) is cut into square *blocks* of ``block`` x ``block`` pixels per slice.
Each block is one Dask task, independent of all others (no data moves between workers):

1. read the block plus its *halo* lazily as a ``dask.array`` slice of the input store: ``margin``
   = (input tile - output tile) / 2 pixels on top and left (:attr:`minunet.model.geometry.Geometry.margin`),
   and on bottom and right whatever the block's last tiles reach (:func:`minunet.inference.tiling.context_size`).
   Inside the volume the halo is real neighbouring data; beyond the volume's border it is mirrored
   with :func:`minunet.data.padding.mirror_index` in *volume* coordinates (NumPy "reflect", the border
   pixel not repeated, as in-memory prediction does; Dask's ``boundary="reflect"`` repeats it, so
   ``map_overlap`` is not used) or zero (``pad="zero"``);
2. normalise it as training did (:func:`minunet.data.datafile.normalize`) and predict it with the
   overlap-tile core :func:`minunet.inference.tiling.predict_valid`;
3. write it into a chunked Zarr array whose chunks are the blocks, then an empty marker file
   ``OUTPUT/.minunet-done/<z>.<y>.<x>``: ``resume=True`` skips the blocks with a marker, so a killed
   job loses only the blocks in flight (a block whose data was written but not its marker is redone).

Blocks start at multiples of ``block``, itself a multiple of 2^(depth-1), so every tile's pooling
windows line up with those of the in-memory prediction and the result equals
:func:`minunet.inference.tiling.predict_stack` on the whole volume to float32 rounding
(``tests/test_blockwise.py``). Memory is bounded by the block, not the volume: one block's input,
context and probabilities per worker thread, plus one forward pass's activations per process
(forward passes take a per-process lock: the kernels already use every core, and Numba's workqueue
threading layer forbids concurrent parallel launches). ``benchmarks/blockwise.py`` measures it.

``scheduler="local"`` runs the tasks on Dask's threaded scheduler in this process;
``"tcp://host:port"`` on an existing ``dask.distributed`` cluster, whose workers must import minunet
and see the model, input and output paths (a shared file system); each worker process loads the
model once (:func:`cached_model`). Dask, distributed and zarr (v3 API) are imported lazily:
``pip install minunet[dask]``. See docs/scaling.md.
"""
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minunet.data.datafile import check_finite, normalize
from minunet.data.padding import check_pad, mirror_index
from minunet.errors import UserError
from minunet.inference import ome_zarr, outputs, tiling
from minunet.inference.volume_stores import DONE_DIR, open_volume, output_layout, prepare_output, require, split_spec
from minunet.model import geometry
from minunet.model.checkpoint import load_model

BASELINE_BYTES = 400 << 20          # a worker process without data: Python, NumPy, Numba, Dask, zarr

_MODELS = {}                        # per process: (path, mtime, device) -> UNet
_MODELS_LOCK = threading.Lock()
_COMPUTE_LOCK = threading.Lock()    # one forward pass at a time per process


# ---------------------------------------------------------------------- one block

@dataclass(frozen=True)
class Job:
    """Everything a worker needs to predict one block: small and picklable (paths, not arrays)."""

    model_path: str
    device: str
    input_spec: str
    output_path: str
    shape: tuple            # input (H, W) or (Z, H, W)
    block: int
    tile: int
    pad: str
    batch: int
    output_format: str
    labels: bool = False    # OME-Zarr output: also the argmax labels group


def cached_model(path, device):
    """The model of a checkpoint, loaded once per process (and again only if the file changes)."""
    key = (os.path.abspath(path), os.stat(path).st_mtime_ns if os.path.isfile(path) else None, device)
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = load_model(path, device=device)[0]
        return _MODELS[key]


def _axis(start, length, n, pad):
    """Indices into an axis of length n for positions start..start+length, and which are inside."""
    pos = np.arange(start, start + length)
    if pad == "mirror":
        return mirror_index(pos, n), None
    return np.clip(pos, 0, n - 1), (pos >= 0) & (pos < n)


def read_context(volume, z, y0, x0, size, margin, pad):
    """Block (y0, x0) of slice z (None for an image) with its halo, normalised, as (1, H', W') float32.

    The context covers volume rows y0 - margin .. y0 - margin + size[0] (columns likewise); only
    the rows and columns it needs are read, then mirrored (or zeroed) beyond the volume's border.
    """
    height, width = volume.shape[-2:]
    rows, row_in = _axis(y0 - margin, size[0], height, pad)
    cols, col_in = _axis(x0 - margin, size[1], width, pad)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    window = volume[r0:r1, c0:c1] if z is None else volume[z, r0:r1, c0:c1]
    raw = np.asarray(window.compute(scheduler="synchronous"))
    check_finite(raw, f"block at row {y0}, column {x0}{'' if z is None else f' of slice {z}'}",
                 "replace NaN and infinite values (e.g. with 0) before predicting")
    context = normalize(raw[np.ix_(rows - r0, cols - c0)])
    if pad == "zero":
        context = np.where(row_in[:, None] & col_in[None, :], context, np.float32(0))
    return np.ascontiguousarray(context, dtype=np.float32)[None]


def block_name(z, by, bx):
    """A block's marker name: ``<z>.<y>.<x>`` in block units (z = 0 for an image)."""
    return f"{z}.{by}.{bx}"


def predict_block(job, z, by, bx):
    """Predict one block and write it, then its marker; returns its name. Runs on a worker."""
    zarr = require("zarr")
    model = cached_model(job.model_path, job.device)
    geo = model.geometry(job.tile)
    stride = tiling.tile_stride(model, job.tile)
    height, width = job.shape[-2:]
    y0, x0 = by * job.block, bx * job.block
    h, w = min(job.block, height - y0), min(job.block, width - x0)
    need = (tiling.context_size(h, job.tile, stride, geo.output_size),
            tiling.context_size(w, job.tile, stride, geo.output_size))
    volume, close = open_volume(job.input_spec)
    try:
        context = read_context(volume, z if len(job.shape) == 3 else None, y0, x0, need, geo.margin, job.pad)
    finally:
        close()
    with _COMPUTE_LOCK:
        probs = tiling.predict_valid(model, context, job.tile, (h, w), batch=job.batch)
    if ome_zarr.is_output(job.output_path):
        ome_zarr.write_region(job.output_path, z if len(job.shape) == 3 else None, y0, x0, probs,
                              job.output_format, job.labels)
        return _mark_done(job, z, by, bx)
    out = zarr.open_array(store=job.output_path, mode="r+")
    where = (z,) if len(job.shape) == 3 else ()
    classes = (slice(None),) if job.output_format == "probs" else ()
    out[where + classes + (slice(y0, y0 + h), slice(x0, x0 + w))] = \
        outputs.format_probabilities(probs, job.output_format, class_axis=0)
    return _mark_done(job, z, by, bx)


def _mark_done(job, z, by, bx):
    name = block_name(z, by, bx)
    Path(job.output_path, DONE_DIR, name).touch()        # after the data: a marker means written
    return name


# ---------------------------------------------------------------------- the whole volume

def block_bytes(model, block, tile, itemsize, output_format):
    """Bytes one block in flight holds: raw and float32 context, probabilities, encoded output."""
    geo = model.geometry(tile)
    ctx = tiling.context_size(block, tile, tiling.tile_stride(model, tile), geo.output_size)
    out_item = 1 if output_format == "labels" else 4
    out_planes = model.classes if output_format == "probs" else 1
    return ctx ** 2 * (itemsize + 2 * 4) + block ** 2 * (4 * model.classes + 2 * out_item * out_planes)


def _check_block(model, block):
    align = geometry.alignment(model.depth)
    if block < align or block % align:
        lower, upper = max(align, block // align * align), (block // align + 1) * align
        raise UserError(f"--block {block}: must be a multiple of {align} for a depth-{model.depth} "
                        f"U-Net (so tiles line up with the pooling grid); use {lower} or {upper}")


def predict_volume(model_path, input_spec, output_path, block=2048, scheduler="local", device="cpu",
                   tile=None, pad="mirror", output_format="foreground", resume=False, overwrite=False,
                   progress=None, memory_budget=None, batch=4, workers=2, labels=False, starting=None):
    """Predict a Zarr / HDF5 image or volume block by block into a chunked Zarr array.

    Args:
        model_path: a minunet checkpoint (.h5).
        input_spec: ``vol.zarr``, ``vol.zarr:/array`` (an array in a group) or ``vol.h5:/raw``;
            (H, W) or (Z, H, W), one grayscale channel, any dtype :func:`minunet.data.datafile.normalize` takes.
        output_path: the Zarr array to write: (Z, H, W) float32 foreground probabilities, uint8
            labels, or (Z, K, H, W) float32 probs (no Z for an image); chunks are the blocks.
        block: block side in pixels, a multiple of 2^(depth-1) (16 for the paper's network).
        scheduler: "local" (Dask's threaded scheduler, ``workers`` threads), "synchronous", or a
            ``dask.distributed`` scheduler address ("tcp://host:8786").
        device: "cpu", "cuda" or "reference", on every worker.
        tile: input tile size; None chooses the largest that fits ``memory_budget`` (then the one
            needing least work for a block). pad: "mirror" or "zero" beyond the volume's border.
        output_format: "foreground" (class 1), "labels" (argmax) or "probs".
        resume: skip blocks already finished (marker files); refuse an output with other settings.
        overwrite: delete an existing output store first.
        progress: ``progress(done, total)`` in blocks, on this process.
        memory_budget: bytes per worker process; sets the tile so that the process baseline, the
            blocks in flight and one forward pass fit. None: half the free memory for the tile.
        batch: tiles per forward pass. workers: threads of the local scheduler.
        labels: for an OME-Zarr output (``NAME.ome.zarr``), also write the argmax as its labels group.
        starting: called once every input has been checked, before the first block is predicted.

    Returns:
        dict with blocks (total), computed, skipped, tile, shape, output and seconds.
    """
    outputs.check_format(output_format)
    check_pad(pad)
    if not str(output_path).rstrip("/").lower().endswith(".zarr"):
        raise UserError(f"-o {output_path}: block-wise prediction writes a Zarr store; "
                        "name the output NAME.zarr")
    require("dask")
    model_path, output_path = os.path.abspath(model_path), os.path.abspath(output_path)
    _, path, name = split_spec(input_spec)
    input_spec = str(path.resolve()) + (f":{name}" if name else "")
    volume, close = open_volume(input_spec)
    shape, itemsize = tuple(int(s) for s in volume.shape), volume.dtype.itemsize
    close()

    model = cached_model(model_path, device)
    if model.in_channels != 1:
        raise UserError(f"{model_path}: the model expects {model.in_channels} input channels; "
                        "block-wise prediction reads one grayscale channel")
    block = int(block)
    _check_block(model, block)
    height, width = shape[-2:]
    span = (min(block, height), min(block, width))
    if tile is None:
        smallest = geometry.input_size_for(geometry.alignment(model.depth), model.depth, model.up_kernel)
        budget = None
        if memory_budget is not None:
            in_flight = block_bytes(model, block, smallest, itemsize, output_format) * max(1, workers)
            budget = memory_budget - BASELINE_BYTES - in_flight
            if budget <= 0:
                raise UserError(f"memory budget {memory_budget / 2**30:.2f} GiB is too small for "
                                f"{workers} block(s) of {block} in flight; use a smaller --block")
        tile = tiling.fit_tile(model, tiling.choose_tile(model, device, budget, batch), *span)
    try:
        tile = model.geometry(int(tile)).input_size
        tiling.check_stride(model, tile, *span)
    except UserError as err:
        raise UserError(f"--tile: {err}") from None

    settings = dict(input=input_spec, shape=list(shape), model=model_path, block=block, pad=pad,
                    output_format=output_format, tile=tile, device=device,
                    halo=model.geometry(tile).margin, minunet_version=__import__("minunet").__version__)
    layout = output_layout(shape, model.classes, block, output_format)
    if ome_zarr.is_output(output_path):       # the layout of minunet.inference.ome_zarr, chunks = blocks
        settings["labels"] = bool(labels)
        space = ome_zarr.source_space(path)
        layout = lambda out, attrs: ome_zarr.create(out, shape, model.classes, output_format, labels,  # noqa: E731
                                                    space, block, attrs)
    elif labels:
        raise UserError(f"--labels: only for an OME-Zarr output; name it {Path(output_path).stem}.ome.zarr")
    client = _connect(scheduler)
    try:
        done = prepare_output(output_path, settings, layout, resume, overwrite)
        job = Job(model_path, device, input_spec, output_path, shape, block, tile, pad, batch, output_format, labels)
        if starting is not None:
            starting()
        return _predict_blocks(job, done, progress, scheduler, client, workers)
    finally:
        if client is not None:
            client.close()


def _predict_blocks(job, done, progress, scheduler, client, workers):
    """One Dask task per block not in ``done``, run; the summary dict of predict_volume."""
    import dask  # optional: the dask extra
    shape, block = job.shape, job.block
    height, width = shape[-2:]
    grid = [(z, by, bx) for z in range(shape[0] if len(shape) == 3 else 1)
            for by in range(-(-height // block)) for bx in range(-(-width // block))]
    todo = [b for b in grid if block_name(*b) not in done]
    start = time.perf_counter()
    finished = [len(grid) - len(todo)]

    def report(_name):
        finished[0] += 1
        if progress is not None:
            progress(finished[0], len(grid))

    if progress is not None:
        progress(finished[0], len(grid))
    tasks = [dask.delayed(predict_block, pure=False)(job, *b, dask_key_name=f"minunet-block-{block_name(*b)}")
             for b in todo]
    if tasks:
        _run(tasks, scheduler, client, workers, report)
    return dict(blocks=len(grid), computed=len(todo), skipped=len(grid) - len(todo), tile=job.tile,
                shape=shape, output=job.output_path, seconds=time.perf_counter() - start)


def _connect(scheduler):
    """A distributed Client for an address, None for the local schedulers; UserError otherwise."""
    if "://" not in str(scheduler):
        if scheduler not in ("local", "synchronous"):
            raise UserError(f"--scheduler {scheduler}: use local, synchronous or a dask.distributed "
                            "address such as tcp://host:8786")
        return None
    distributed = require("distributed")
    try:
        return distributed.Client(scheduler, timeout="10s", set_as_default=False)
    except (OSError, TimeoutError) as err:
        raise UserError(f"--scheduler {scheduler}: no Dask scheduler answers there ({err}); "
                        "start one (dask scheduler) or use --scheduler local") from None


def _run(tasks, scheduler, client, workers, report):
    """Compute the block tasks on the chosen scheduler, calling ``report(name)`` per finished block."""
    import dask  # optional: the dask extra
    if client is not None:
        from distributed import as_completed  # optional: the dask extra
        for future in as_completed(client.compute(tasks), loop=client.loop):
            report(future.result())
        return
    from dask.callbacks import Callback  # optional: the dask extra

    class Blocks(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):
            if str(key).startswith("minunet-block-"):
                report(result)

    with Blocks():
        if scheduler == "synchronous":
            dask.compute(*tasks, scheduler="synchronous")
        else:
            dask.compute(*tasks, scheduler="threads", num_workers=max(1, int(workers)))
