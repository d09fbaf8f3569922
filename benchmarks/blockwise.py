"""Block-wise prediction: peak memory is bounded by the block, not the volume; throughput per core.

    python benchmarks/blockwise.py [--slices 8] [--size 8192] [--dtype float32] [--block 1024]
                                   [--budget-gb 1.0] [--depth 3] [--width 1] [--workers 2]
                                   [--output-format labels] [--dir /tmp] [--keep] [--json FILE]

Writes a synthetic Zarr volume (``--slices`` x ``--size`` x ``--size``, default 8 x 8192^2 float32 =
2 GiB, smooth structures plus noise, chunks of one block) under ``--dir`` (never the repository),
saves a tiny random U-Net (depth 3, width 1: cheap enough that a 2-core machine predicts the whole
volume in a few minutes; memory per block does not depend on the network's width beyond the
forward pass, which ``--budget-gb`` bounds through the tile size), then runs
:func:`minunet.inference.blockwise.predict_volume` in a child process with ``memory_budget`` = the budget and
reads that child's peak resident set size (``VmHWM`` of ``/proc/self/status``: ``ru_maxrss`` would
carry over the parent's peak, which Linux keeps across the child's exec). Reported: volume bytes, what in-memory
prediction would hold (float32 input + K float32 probabilities per pixel), peak RSS, whether it is
under the budget, seconds, megapixels per second and per core (cores = CPUs this process may use).
The volume and output are deleted afterwards unless ``--keep``.
"""
import argparse
import json
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from minunet.benchmarks.targets import target_line

ROOT = Path(__file__).resolve().parents[1]


def make_volume(path, slices, size, dtype, block, seed=0):
    """A synthetic (slices, size, size) Zarr volume, chunked by block, written one block row at a time."""
    import zarr
    z = zarr.create_array(store=str(path), shape=(slices, size, size), chunks=(1, block, block),
                          dtype=dtype, fill_value=0)
    rng = np.random.default_rng(seed)
    y = np.arange(block, dtype=np.float32)[:, None]
    for s in range(slices):
        for y0 in range(0, size, block):
            rows = min(block, size - y0)
            x = np.arange(size, dtype=np.float32)[None, :]
            cells = 0.5 + 0.25 * np.sin((y[:rows] + y0) / 23.0 + s) * np.cos(x / 31.0)
            noise = rng.standard_normal((rows, size), dtype=np.float32) * 0.1
            value = np.clip(cells + noise, 0, 1)
            if np.dtype(dtype) == np.uint8:
                value = (value * 255).astype(np.uint8)
            z[s, y0:y0 + rows, :] = value.astype(dtype, copy=False)
    return z


def _child(args, queue):
    """Run the prediction and report this process's peak RSS (the measured quantity)."""
    from minunet.inference import blockwise
    start = time.perf_counter()
    result = blockwise.predict_volume(args["model"], args["input"], args["output"], block=args["block"],
                                      device="cpu", output_format=args["output_format"], overwrite=True,
                                      memory_budget=args["budget"], workers=args["workers"])
    result["wall_s"] = time.perf_counter() - start
    result["peak_rss"] = _peak_rss_bytes()
    queue.put(result)


def _peak_rss_bytes():
    """This process's own peak resident set size (VmHWM), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024        # not Linux: the nearest figure


def run(slices=8, size=8192, dtype="float32", block=1024, budget_gb=1.0, depth=3, width=1, workers=2,
        output_format="labels", folder=None, keep=False):
    """Write the volume, predict it in a child process, return the measurements as a dict."""
    from minunet.model.checkpoint import save_checkpoint
    from minunet.model.unet import UNet
    work = Path(tempfile.mkdtemp(prefix="minunet-blockwise-", dir=folder or tempfile.gettempdir()))
    if ROOT in work.resolve().parents:
        raise SystemExit(f"--dir {folder}: inside the repository; use a scratch folder such as /tmp")
    try:
        t0 = time.perf_counter()
        make_volume(work / "volume.zarr", slices, size, dtype, block)
        write_s = time.perf_counter() - t0
        model = UNet(depth=depth, width=width, device="cpu", seed=0)
        save_checkpoint(work / "model.h5", model)
        budget = int(budget_gb * 2 ** 30)
        args = dict(model=str(work / "model.h5"), input=str(work / "volume.zarr"),
                    output=str(work / "out.zarr"), block=block, budget=budget, workers=workers,
                    output_format=output_format)
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        child = ctx.Process(target=_child, args=(args, queue))
        child.start()
        result = queue.get()
        child.join()
        if child.exitcode:
            raise SystemExit(f"the prediction process failed (exit code {child.exitcode})")
        children_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        pixels = slices * size * size
        volume_bytes = pixels * np.dtype(dtype).itemsize
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        predict_s = result["seconds"]
        return dict(
            volume_shape=[slices, size, size], dtype=dtype, volume_bytes=volume_bytes,
            in_memory_bytes=pixels * 4 * (1 + model.classes), block=block, tile=result["tile"],
            blocks=result["blocks"], budget_bytes=budget, peak_rss_bytes=result["peak_rss"],
            children_peak_rss_bytes=children_rss, under_budget=result["peak_rss"] < budget,
            volume_over_budget=volume_bytes / budget, depth=depth, width=width, workers=workers,
            output_format=output_format, write_volume_s=write_s, predict_s=predict_s,
            child_wall_s=result["wall_s"], cores=cores, mpx_per_s=pixels / predict_s / 1e6,
            mpx_per_s_per_core=pixels / predict_s / 1e6 / cores)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def arguments():
    """The command-line options (also those of ``minunet bench``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=8, help="slices of the synthetic volume")
    parser.add_argument("--size", type=int, default=8192, help="side of each slice (px)")
    parser.add_argument("--dtype", choices=["uint8", "float32"], default="float32", help="voxel type")
    parser.add_argument("--block", type=int, default=1024, help="block side (px)")
    parser.add_argument("--budget-gb", type=float, default=1.0, help="memory budget of the prediction (GiB)")
    parser.add_argument("--depth", type=int, default=3, help="U-Net depth")
    parser.add_argument("--width", type=int, default=1, help="U-Net width (channels of the first level)")
    parser.add_argument("--workers", type=int, default=2, help="worker threads")
    parser.add_argument("--output-format", choices=["foreground", "labels", "probs"], default="labels",
                        help="what the output stores")
    parser.add_argument("--dir", default=None, help="scratch folder for the volume (default: the temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the volume and the output")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    return parser


def main(argv=None):
    parser = arguments()
    a = parser.parse_args(argv)
    r = run(a.slices, a.size, a.dtype, a.block, a.budget_gb, a.depth, a.width, a.workers, a.output_format,
            a.dir, a.keep)
    gib = 2 ** 30
    print(f"volume {'x'.join(map(str, r['volume_shape']))} {r['dtype']}: {r['volume_bytes'] / gib:.2f} GiB "
          f"({r['volume_over_budget']:.1f}x the budget; in-memory prediction would hold "
          f"{r['in_memory_bytes'] / gib:.1f} GiB)")
    print(f"blocks {r['blocks']} of {r['block']}^2, tile {r['tile']}, U-Net depth {r['depth']} width "
          f"{r['width']}, {r['workers']} worker threads")
    print(target_line("peak RSS", r["peak_rss_bytes"] / gib, r["budget_bytes"] / gib, " GiB"))
    print(f"predicted in {r['predict_s']:.1f} s: {r['mpx_per_s']:.3g} Mpx/s, {r['mpx_per_s_per_core']:.3g} "
          f"Mpx/s per core ({r['cores']} cores); volume written in {r['write_volume_s']:.1f} s")
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=2))
    return 0 if r["under_budget"] else 1


if __name__ == "__main__":
    sys.exit(main())
