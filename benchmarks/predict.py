"""Overlap-tile prediction of a 512x512 image in minunet against PyTorch running the same tiles.

    python benchmarks/predict.py [--width 64] [--tile 572] [--size 512] [--batch 4] [--device cpu]
                                 [--repeat 3] [--warmup 1] [--json FILE]

The paper's network (depth 5, width 64, 2 classes) with random He-initialised weights; PyTorch
holds a copy of the same weights (``minunet.benchmarks.torch_unet.TorchUNet.from_minunet``). Both predict
the same image with the same tiles: 572 input tiles, 388 output pixels each, so a 512x512 image
takes 2x2 = 4 tiles, cut from the same mirror-extended image by :func:`minunet.data.padding.extend`,
``--batch`` tiles per forward pass, softmax, pasted into the probability map. Timed end to end,
interleaved (minunet, torch, minunet, ...) after ``--warmup`` runs each; the median of
``--repeat`` runs is reported with the ratio minunet / torch (below 1: minunet faster). The two
probability maps are compared as a check (max abs diff).

``--json FILE`` writes minunet_s, torch_s, ratio, the runs, max_abs_diff, tiles, torch_threads
and the case. PyTorch is imported only here; it is not a dependency of minunet.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

from minunet.benchmarks.timing import import_torch, interleaved

ROOT = Path(__file__).resolve().parents[1]


def torch_predict(twin, image, model, tile, batch, device="cpu"):
    """The overlap-tile strategy of minunet.inference.tiling, with the PyTorch twin running the tiles."""
    torch = import_torch("benchmarks/predict.py")
    from minunet.inference import tiling
    h, w = image.shape
    geo = model.geometry(tile)
    out, stride, margin = geo.output_size, tiling.tile_stride(model, tile), geo.margin
    rows, cols = tiling.tile_starts(h, stride, out), tiling.tile_starts(w, stride, out)
    after = (tiling.context_size(h, tile, stride, out) - h - margin,
             tiling.context_size(w, tile, stride, out) - w - margin)
    context = tiling.extend(image[None].astype(np.float32), margin, after)
    corners = [(y, x) for y in rows for x in cols]
    probs = np.empty((model.classes, rows[-1] + out, cols[-1] + out), np.float32)
    with torch.no_grad():
        for start in range(0, len(corners), batch):
            chunk = corners[start:start + batch]
            tiles = torch.from_numpy(np.stack([context[:, y:y + tile, x:x + tile] for y, x in chunk]))
            p = torch.softmax(twin(tiles.to(device)), dim=1).cpu().numpy()
            for (y, x), tp in zip(chunk, p):
                probs[:, y:y + out, x:x + out] = tp
    return probs[:, :h, :w]


def run(width=64, tile=572, size=512, batch=4, device="cpu", repeat=3, warmup=1, seed=0, progress=print):
    """Time overlap-tile prediction in minunet and PyTorch; returns the figures as a dict."""
    torch = import_torch("benchmarks/predict.py")
    from minunet.benchmarks.torch_unet import TorchUNet
    from minunet.inference import tiling
    from minunet.model.unet import UNet

    model = UNet(width=width, device=device, seed=seed).eval()
    torch_device = "cuda" if device == "cuda" and torch.cuda.is_available() else "cpu"
    twin = TorchUNet.from_minunet(model).to(torch_device).eval()
    image = np.random.default_rng(seed).standard_normal((size, size)).astype(np.float32)
    sync = getattr(model.parameters()[0].backend, "synchronize", lambda: None)
    results = {}

    def mine():
        results["minunet"] = tiling.predict_image(model, image, tile=tile, batch=batch)
        sync()

    def theirs():
        results["torch"] = torch_predict(twin, image, model, tile, batch, torch_device)

    n_tiles = tiling.count_tiles(model, tile, size, size)
    progress(f"{size}x{size} image, tile {tile} ({n_tiles} tiles, batch {batch}), width {width}, "
             f"device {device}: {warmup} warm-up + {repeat} timed runs each, interleaved ...")
    (m, t), runs = interleaved([mine, theirs], warmup, repeat)
    return dict(width=width, tile=tile, size=size, batch=batch, device=device, repeat=repeat, tiles=n_tiles,
                torch_threads=torch.get_num_threads(), minunet_s=m, torch_s=t, ratio=m / t,
                minunet_runs_s=runs[0], torch_runs_s=runs[1],
                max_abs_diff=float(np.abs(results["minunet"] - results["torch"]).max()))


def format_table(r):
    return "\n".join([
        f"predict {r['size']}x{r['size']}, U-Net width {r['width']}, tile {r['tile']} ({r['tiles']} tiles, "
        f"batch {r['batch']}), device {r['device']}, median of {r['repeat']}",
        f"{'':12s} {'minunet':>10s} {'pytorch':>10s} {'ratio':>7s}",
        f"{'seconds':12s} {r['minunet_s']:10.3f} {r['torch_s']:10.3f} {r['ratio']:7.2f}",
        f"max abs difference of the probabilities: {r['max_abs_diff']:.2e} "
        f"(torch threads: {r['torch_threads']})"])


def arguments():
    """The command-line options (also those of ``minunet bench``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--tile", type=int, default=572)
    parser.add_argument("--size", type=int, default=512, help="side of the square image")
    parser.add_argument("--batch", type=int, default=4, help="tiles per forward pass")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "reference"])
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per library (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    return parser


def main(argv=None):
    parser = arguments()
    args = parser.parse_args(argv)
    from minunet.benchmarks.train_step import cuda_missing
    missing = cuda_missing(args.device)
    if missing:
        print(f"benchmarks/predict.py: {missing}", file=sys.stderr)
        return 2
    result = run(args.width, args.tile, args.size, args.batch, args.device, args.repeat, args.warmup)
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
