"""Every CUDA kernel of minunet against PyTorch on the GPU (cuDNN, float32, TF32 off).

    python benchmarks/cuda_kernels.py [--batch 1 --batch 16] [--repeat 30] [--json FILE] [--tile 572] [--width 64]
                                      [--conv-tile 128,128,8,8,8]

For every distinct layer shape of the paper's network (depth 5, width 64, 572x572 input tile; the
shapes come from ``minunet.benchmarks.kernels.layer_shapes``) and each batch size, the forward and backward
of each op are timed with CUDA events around each call (warm-up calls first, then the median of
``repeat`` calls, minunet and PyTorch interleaved). PyTorch's backward is called directly
(``aten.convolution_backward``, ``max_pool2d_with_indices_backward``, ...), not through autograd,
so no forward is re-run. Convolutions get separate records for backward_data and backward_weights
(the two cuDNN kernels) and one "backward" record for the whole backward (the CPU benchmark's
direction). Records have the CPU benchmark's keys: op, direction, shape, minunet_ms, torch_ms,
ratio (minunet / torch; below 1 is faster), plus batch, rel_err (the largest |minunet - torch| of
each output over its largest |torch| value: both libraries get the same inputs, so this checks
every output at the network's real sizes; None for dropout, whose masks differ) and, for
convolutions, GFLOP/s. ``summary`` reports the geometric mean of the convolution ratios per batch.

Needs a CUDA GPU, CuPy, numba-cuda and a CUDA build of PyTorch; without them it stops with a
one-line message. ``--conv-tile BM,BN,BK,TM,TN`` runs the convolutions with other tile sizes.
"""
import argparse
import json
import math
import statistics
import sys

import numpy as np


def _require_gpu():
    """(torch, the cuda kernel module) or a one-line UserError saying what is missing."""
    import minunet.kernels.cuda as kc
    from minunet.errors import UserError
    ok, why = kc.available()
    if not ok or kc.arrays.SIMULATOR:
        raise UserError(f"benchmarks/cuda_kernels.py: {kc.arrays.INSTALL_HINT} (missing: "
                        f"{'a real GPU, not the simulator' if ok else why})")
    try:
        import torch
    except ImportError:
        raise UserError("benchmarks/cuda_kernels.py compares against PyTorch: pip install torch (a CUDA build)") from None
    if not torch.cuda.is_available():
        raise UserError("benchmarks/cuda_kernels.py: this PyTorch build sees no CUDA GPU: install a CUDA build of torch")
    fair_fp32(torch)
    return torch, kc


def fair_fp32(torch):
    """PyTorch CUDA as the yardstick for float32 kernels: TF32 off (10-bit mantissas would not be the
    same arithmetic) and cuDNN's benchmark mode on (its fastest algorithm per shape)."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True


def _time(fns, repeat, warmup):
    """Median milliseconds of each zero-argument GPU function, by CUDA events, interleaved."""
    import cupy
    for fn in fns:
        for _ in range(warmup):
            fn()
    cupy.cuda.Device().synchronize()
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, ts in zip(fns, times):
            start, end = cupy.cuda.Event(), cupy.cuda.Event()
            start.record()
            fn()
            end.record()
            end.synchronize()
            ts.append(cupy.cuda.get_elapsed_time(start, end))
    return [statistics.median(ts) for ts in times]


def _cases(op, p, batch, kc, torch, rng):
    """(direction, minunet_fn, torch_fn, flops or None) for one op shape at one batch size."""
    import cupy

    from minunet.kernels.cuda import conv
    F, aten = torch.nn.functional, torch.ops.aten

    def arr(*shape, scale=1.0):
        return cupy.asarray((scale * rng.standard_normal(shape)).astype(np.float32))

    def t(a):
        return torch.as_tensor(a, device="cuda")             # zero copy through __cuda_array_interface__

    if op in ("conv2d", "conv_transpose2d"):
        c, k, h, r = p["c"], p["k"], p["h"], p["kernel"]
        transposed = op == "conv_transpose2d"
        relu, first = p.get("relu", not transposed), p["c"] == 1 and not transposed
        x = arr(batch, c, h, h)
        if transposed:
            w, b = arr(c, k, r, r, scale=math.sqrt(1 / c)), arr(k)
            fwd = lambda: kc.conv_transpose2d_forward(x, w, b)
            tfwd = lambda: F.conv_transpose2d(t(x), t(w), t(b), stride=2)
            stride = [2, 2]
        else:
            w, b = arr(k, c, r, r, scale=math.sqrt(2 / (c * r * r))), arr(k)
            fwd = lambda: kc.conv2d_forward(x, w, b, relu=relu)
            tfwd = (lambda: F.relu(F.conv2d(t(x), t(w), t(b)))) if relu else (lambda: F.conv2d(t(x), t(w), t(b)))
            stride = [1, 1]
        y = fwd()
        gy = arr(*y.shape)
        tx, tw, ty, tgy = t(x), t(w), t(y), t(gy)
        out_px = y.shape[0] * y.shape[2] * y.shape[3] if not transposed else batch * h * h
        flops = 2.0 * c * k * r * r * out_px
        yield "forward", fwd, tfwd, flops    # no tensor requires grad: PyTorch builds no graph

        def tbwd(mask):
            g = aten.threshold_backward(tgy, ty, 0) if relu else tgy
            return aten.convolution_backward(g, tx, tw, [k], stride, [0, 0], [1, 1], transposed, [0, 0], 1, mask)

        if transposed:
            yield "backward", lambda: kc.conv_transpose2d_backward(x, w, gy), lambda: tbwd([True, True, True]), 2 * flops
            return
        yield ("backward", lambda: kc.conv2d_backward(x, w, gy, y=y if relu else None, need_gx=not first),
               lambda: tbwd([not first, True, True]), flops * (1 if first else 2))
        gym = kc.relu_backward(gy, y) if relu else gy

        def mine_weights():
            gw = cupy.zeros(w.shape, dtype=w.dtype)
            conv.run_wgrad(gym, x, gw.reshape(k, -1), r, r)
            return gw, conv.bias_grad(gym)
        yield "backward_weights", mine_weights, lambda: tbwd([False, True, True]), flops
        if not first:
            def mine_data():
                wt = cupy.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)).reshape(1, c, -1)
                gx = cupy.empty(x.shape, dtype=x.dtype)
                conv.run_igemm(gym, wt, None, gx, r, r, pad=(r - 1, r - 1))
                return gx
            yield "backward_data", mine_data, lambda: tbwd([True, False, False]), flops
    elif op == "max_pool2d":
        x = arr(batch, p["c"], p["h"], p["h"])
        y, idx = kc.max_pool2d_forward(x)
        gy = arr(*y.shape)
        tx, tgy = t(x), t(gy)
        _, tidx = F.max_pool2d(tx, 2, return_indices=True)
        yield "forward", lambda: kc.max_pool2d_forward(x), lambda: F.max_pool2d(tx, 2, return_indices=True), None
        yield ("backward", lambda: kc.max_pool2d_backward(gy, idx, x.shape),
               lambda: aten.max_pool2d_with_indices_backward(tgy, tx, [2, 2], [2, 2], [0, 0], [1, 1], False, tidx), None)
    elif op == "crop_concat":
        skip, up = arr(batch, p["c_skip"], p["h_skip"], p["h_skip"]), arr(batch, p["c_up"], p["h"], p["h"])
        ts, tu = t(skip), t(up)
        m, h, cs = (p["h_skip"] - p["h"]) // 2, p["h"], p["c_skip"]
        gy = arr(batch, cs + p["c_up"], h, h)
        tgy = t(gy)

        def torch_backward():
            gskip = torch.zeros_like(ts)
            gskip[:, :, m:m + h, m:m + h] = tgy[:, :cs]
            return gskip, tgy[:, cs:].contiguous()
        yield ("forward", lambda: kc.crop_concat_forward(skip, up),
               lambda: torch.cat([ts[:, :, m:m + h, m:m + h], tu], 1), None)
        yield "backward", lambda: kc.crop_concat_backward(gy, skip.shape), torch_backward, None
    elif op in ("relu", "dropout"):
        x, gy = arr(batch, p["c"], p["h"], p["h"]), arr(batch, p["c"], p["h"], p["h"])
        tx, tgy = t(x), t(gy)
        if op == "relu":
            y = kc.relu_forward(x)
            ty = t(y)
            yield "forward", lambda: kc.relu_forward(x), lambda: F.relu(tx), None
            yield "backward", lambda: kc.relu_backward(gy, y), lambda: aten.threshold_backward(tgy, ty, 0), None
        else:
            _, tmask = aten.native_dropout(tx, 0.5, True)
            yield "forward", lambda: kc.dropout_forward(x, 0.5, 1234), lambda: aten.native_dropout(tx, 0.5, True), None
            yield ("backward", lambda: kc.dropout_backward(gy, 0.5, 1234),
                   lambda: aten.native_dropout_backward(tgy, tmask, 2.0), None)
    elif op == "softmax_cross_entropy":
        k, h = p["k"], p["h"]
        logits = arr(batch, k, h, h)
        labels = cupy.asarray(rng.integers(0, k, (batch, h, h)).astype(np.uint8))
        weights = cupy.asarray(rng.random((batch, h, h)).astype(np.float32))
        tl, tlab, tw = t(logits).requires_grad_(True), t(labels).long(), t(weights)

        def torch_fused():
            with torch.enable_grad():
                loss = (F.cross_entropy(tl, tlab, reduction="none", ignore_index=255) * tw).sum()
                return torch.autograd.grad(loss, [tl])
        yield "forward", lambda: kc.softmax_cross_entropy(logits, labels, weights), torch_fused, None
    elif op == "sgd_step":
        params = [arr(s) for s in p["sizes"]]
        grads = [arr(s) for s in p["sizes"]]
        vel = [cupy.zeros_like(a) for a in params]
        tparams = [t(a).requires_grad_(True) for a in params]
        for tp, g in zip(tparams, grads):
            tp.grad = t(g)
        topt = torch.optim.SGD(tparams, lr=1e-9, momentum=0.99)

        def mine():
            for a, g, v in zip(params, grads, vel):
                kc.sgd_step(a, g, v, 1e-9, 0.99, 0.0)
        yield "forward", mine, topt.step, None


def _arrays(out):
    """The output arrays of a call (a tuple's non-None items, or the array itself)."""
    items = out if isinstance(out, (tuple, list)) else [out]
    return [a for a in items if a is not None and hasattr(a, "shape")]


def relative_error(op, direction, mine, theirs):
    """max |minunet - torch| / max |torch| over the outputs both compute, or None where they are not
    the same numbers (dropout draws other masks; the SGD step updates shared parameters)."""
    import cupy
    if op in ("dropout", "sgd_step"):
        return None
    ours, yours = _arrays(mine), _arrays(theirs)
    if op == "max_pool2d" and direction == "forward":          # argmax indices come in other formats
        ours, yours = ours[:1], yours[:1]
    if op == "softmax_cross_entropy":                          # minunet: (loss, count, glogits); torch: (glogits,)
        ours = ours[-1:]
    if len(ours) != len(yours):
        raise RuntimeError(f"{op} {direction}: {len(ours)} minunet outputs against {len(yours)} torch outputs")
    worst = 0.0
    for a, b in zip(ours, yours):
        a, b = cupy.asarray(a, dtype=cupy.float64), cupy.asarray(b).astype(cupy.float64)
        if a.shape != b.shape:
            raise RuntimeError(f"{op} {direction}: shape {a.shape} against torch's {b.shape}")
        worst = max(worst, float(cupy.abs(a - b).max()) / max(float(cupy.abs(b).max()), 1e-30))
    return worst


def _describe(op, p):
    from minunet.benchmarks.kernels import _describe as describe  # the CPU benchmark's shape strings
    return describe(op, p)


def run(repeat=30, batch=1, tile=572, width=64, warmup=3, seed=0, conv_tile=None, progress=None):
    """Time every CUDA kernel against PyTorch/cuDNN at one batch size; a list of record dicts."""
    torch, kc = _require_gpu()
    from minunet.benchmarks.kernels import layer_shapes
    from minunet.kernels.cuda import conv
    if conv_tile is not None:
        conv.TILES = dict(conv.TILES, float32=conv.Tile(*conv_tile), float32_few_rows=conv.Tile(*conv_tile))
    rng = np.random.default_rng(seed)
    shapes = layer_shapes(tile=tile, width=width)
    sizes = []
    for op, p in shapes:
        if op in ("conv2d", "conv_transpose2d"):
            sizes += [p["k"] * p["c"] * p["kernel"] ** 2, p["k"]]
    shapes.append(("sgd_step", dict(n=sum(sizes), sizes=sizes)))
    records = []
    for op, p in shapes:
        for direction, mine, theirs, flops in _cases(op, p, batch, kc, torch, rng):
            mine_ms, torch_ms = _time([mine, theirs], repeat, warmup)
            rec = dict(op=op, direction=direction, shape=_describe(op, p), minunet_ms=mine_ms,
                       torch_ms=torch_ms, ratio=mine_ms / torch_ms, batch=batch,
                       rel_err=relative_error(op, direction, mine(), theirs()))
            if flops:
                rec["minunet_gflops"] = flops / mine_ms / 1e6
                rec["torch_gflops"] = flops / torch_ms / 1e6
            records.append(rec)
            if progress:
                progress(rec)
        torch.cuda.empty_cache()
    return records


def format_error(rec):
    """The record's relative error as a 9-character column ("-" where not compared)."""
    return f"{rec['rel_err']:9.1e}" if rec.get("rel_err") is not None else f"{'-':>9s}"


def summary(records):
    """Per batch: the geometric mean of the convolution ratios (forward, backward_data, backward_weights)."""
    out = {}
    for batch in sorted({r["batch"] for r in records}):
        for ops in (("conv2d",), ("conv_transpose2d",)):
            ratios = [r["ratio"] for r in records if r["batch"] == batch and r["op"] in ops
                      and r["direction"] in ("forward", "backward_data", "backward_weights")]
            if ratios:
                out[f"N{batch} {ops[0]} geomean ratio"] = math.exp(sum(map(math.log, ratios)) / len(ratios))
    return out


def arguments():
    """The command-line options (also those of ``minunet bench``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, action="append", help="batch size (repeatable; default 1 and 16)")
    parser.add_argument("--repeat", type=int, default=30, help="timed calls per op (median reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--tile", type=int, default=572)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--conv-tile", help="BM,BN,BK,TM,TN tile of the convolution kernels")
    parser.add_argument("--json", metavar="FILE", help="write the records as JSON")
    return parser


def main(argv=None):
    from minunet.benchmarks.kernels import format_row, header
    from minunet.errors import UserError
    parser = arguments()
    args = parser.parse_args(argv)
    conv_tile = tuple(int(v) for v in args.conv_tile.split(",")) if args.conv_tile else None
    records = []
    try:
        _, kc = _require_gpu()
        kc_name = kc.available()[1]
        for batch in args.batch or [1, 16]:
            print(f"# batch {batch} on {kc_name}")
            print(header() + f" {'rel err':>9s}")
            records += run(args.repeat, batch, tile=args.tile, width=args.width, warmup=args.warmup,
                           conv_tile=conv_tile, progress=lambda r: print(format_row(r) + f" {format_error(r)}", flush=True))
    except UserError as e:
        print(e, file=sys.stderr)
        return 2
    for key, value in summary(records).items():
        print(f"{key}: {value:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
