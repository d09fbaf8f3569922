"""Every kernel of a backend against its PyTorch CPU equivalent, at the paper network's layer shapes.

    python benchmarks/kernels.py --device cpu [--json FILE] [--repeat N] [--tile 572] [--width 64]

For each distinct layer shape of the U-Net (depth 5, 1 input channel, 2 classes, batch 1) the
forward and the backward of each op are timed in minunet and in PyTorch in one process,
interleaved (minunet, torch, minunet, torch, ...), after one warm-up call each; the median is
reported. Convolutions also report GFLOP/s. ``--json`` writes one record per (op, direction,
shape) with the keys op, direction, shape, minunet_ms, torch_ms, ratio (minunet / torch).

The softmax cross-entropy is one fused kernel in minunet (loss and gradient in one pass); it is
recorded as direction "forward" against PyTorch's forward plus backward of the same loss.
PyTorch is imported only here; it is not a dependency of minunet.
"""
import argparse
import json
import sys

import numpy as np

from minunet.benchmarks.targets import target_line
from minunet.benchmarks.timing import interleaved

KERNEL_SUM_TARGET = 1.0          # minunet's kernel time over PyTorch's, summed over the layer shapes


def network_ops(tile=572, width=64, depth=5, in_channels=1, classes=2, up_kernel=2):
    """Every op of the U-Net for one tile, in order, walking the network as UNet does.

    Returns a list of (op, params) with params a dict of shapes.
    """
    ops, s, c = [], tile, in_channels
    skips = []
    for level in range(depth):
        out = width * 2 ** level
        for _ in range(2):
            ops.append(("conv2d", dict(c=c, k=out, h=s, kernel=3)))
            c, s = out, s - 2
        if level < depth - 1:
            skips.append((c, s))
            ops.append(("max_pool2d", dict(c=c, h=s)))
            s //= 2
    ops.append(("dropout", dict(c=c, h=s)))
    for level in range(depth - 2, -1, -1):
        out = width * 2 ** level
        ops.append(("conv_transpose2d", dict(c=c, k=out, h=s, kernel=up_kernel)))
        c, s = out, 2 * (s - 1) + up_kernel
        skip_c, skip_s = skips[level]
        ops.append(("crop_concat", dict(c_skip=skip_c, h_skip=skip_s, c_up=c, h=s)))
        c = skip_c + c
        for _ in range(2):
            ops.append(("conv2d", dict(c=c, k=out, h=s, kernel=3)))
            c, s = out, s - 2
    ops.append(("conv2d", dict(c=c, k=classes, h=s, kernel=1, relu=False)))
    ops.append(("softmax_cross_entropy", dict(k=classes, h=s)))
    return ops


def layer_shapes(tile=572, width=64, **network):
    """The distinct op shapes of the U-Net (see network_ops), plus a standalone ReLU at the first level."""
    ops = network_ops(tile, width, **network) + [("relu", dict(c=width, h=tile - 2))]
    unique, seen = [], set()
    for op, p in ops:
        key = (op, tuple(sorted(p.items())))
        if key not in seen:
            seen.add(key)
            unique.append((op, p))
    return unique


def _describe(op, p):
    if op == "conv2d":
        return f"{p['c']}->{p['k']} {p['kernel']}x{p['kernel']} @{p['h']}"
    if op == "conv_transpose2d":
        return f"{p['c']}->{p['k']} {p['kernel']}x{p['kernel']}/2 @{p['h']}"
    if op == "crop_concat":
        return f"{p['c_skip']}@{p['h_skip']} + {p['c_up']}@{p['h']}"
    if op == "softmax_cross_entropy":
        return f"{p['k']} classes @{p['h']}"
    if op == "sgd_step":
        return f"{p['n']} params"
    return f"{p['c']}@{p['h']}"


def _cases(op, p, kb, torch, dtype, rng):
    """(direction, minunet_fn, torch_fn, flops or None) for one op shape."""
    F = torch.nn.functional
    arr = lambda *shape: kb.asarray(rng.standard_normal(shape).astype(dtype))
    t = lambda a, grad=False: torch.from_numpy(np.array(kb.to_numpy(a))).requires_grad_(grad)
    if op == "conv2d":
        c, k, h, r = p["c"], p["k"], p["h"], p["kernel"]
        relu, first = p.get("relu", True), p["c"] == 1
        x, w, b = arr(1, c, h, h), arr(k, c, r, r) * float(np.sqrt(2 / (c * r * r))), arr(k)
        y = kb.conv2d_forward(x, w, b, relu=relu)
        gy = arr(*y.shape)
        tx, tw, tb, tgy = t(x, not first), t(w, True), t(b, True), t(gy)
        tfwd = (lambda: F.relu(F.conv2d(tx, tw, tb))) if relu else (lambda: F.conv2d(tx, tw, tb))
        def torch_backward():
            ty = tfwd()
            torch.autograd.grad(ty, [tw, tb] if first else [tx, tw, tb], tgy)
        flops = 2.0 * c * k * r * r * y.shape[2] * y.shape[3]
        def torch_forward():
            with torch.no_grad():
                tfwd()
        yield ("forward", lambda: kb.conv2d_forward(x, w, b, relu=relu), torch_forward, flops)
        # PyTorch's backward includes re-running its forward (autograd needs the graph): subtract it.
        yield ("backward", lambda: kb.conv2d_backward(x, w, gy, y=y if relu else None, need_gx=not first),
               torch_backward, flops * (1 if first else 2), "minus_forward")
    elif op == "conv_transpose2d":
        c, k, h, r = p["c"], p["k"], p["h"], p["kernel"]
        x, w, b = arr(1, c, h, h), arr(c, k, r, r) * float(np.sqrt(1 / c)), arr(k)
        y = kb.conv_transpose2d_forward(x, w, b)
        gy = arr(*y.shape)
        tx, tw, tb, tgy = t(x, True), t(w, True), t(b, True), t(gy)
        flops = 2.0 * c * k * r * r * h * h
        def torch_forward():
            with torch.no_grad():
                F.conv_transpose2d(tx, tw, tb, stride=2)
        yield ("forward", lambda: kb.conv_transpose2d_forward(x, w, b), torch_forward, flops)
        yield ("backward", lambda: kb.conv_transpose2d_backward(x, w, gy),
               lambda: torch.autograd.grad(F.conv_transpose2d(tx, tw, tb, stride=2), [tx, tw, tb], tgy),
               2 * flops, "minus_forward")
    elif op == "max_pool2d":
        x = arr(1, p["c"], p["h"], p["h"])
        y, idx = kb.max_pool2d_forward(x)
        gy = arr(*y.shape)
        tx, tgy = t(x, True), t(gy)
        def torch_forward():
            with torch.no_grad():
                F.max_pool2d(tx, 2, return_indices=True)
        yield ("forward", lambda: kb.max_pool2d_forward(x), torch_forward, None)
        yield ("backward", lambda: kb.max_pool2d_backward(gy, idx, x.shape),
               lambda: torch.autograd.grad(F.max_pool2d(tx, 2), [tx], tgy), None, "minus_forward")
    elif op == "crop_concat":
        skip, up = arr(1, p["c_skip"], p["h_skip"], p["h_skip"]), arr(1, p["c_up"], p["h"], p["h"])
        y = kb.crop_concat_forward(skip, up)
        gy = arr(*y.shape)
        ts, tu, tgy = t(skip, True), t(up, True), t(gy)
        m, h = (p["h_skip"] - p["h"]) // 2, p["h"]
        tfwd = lambda: torch.cat([ts[:, :, m:m + h, m:m + h], tu], 1)
        def torch_forward():
            with torch.no_grad():
                tfwd()
        yield ("forward", lambda: kb.crop_concat_forward(skip, up), torch_forward, None)
        yield ("backward", lambda: kb.crop_concat_backward(gy, skip.shape),
               lambda: torch.autograd.grad(tfwd(), [ts, tu], tgy), None, "minus_forward")
    elif op in ("relu", "dropout"):
        x = arr(1, p["c"], p["h"], p["h"])
        tx, tgy = t(x, True), t(arr(1, p["c"], p["h"], p["h"]))
        gy = kb.asarray(tgy.numpy())
        if op == "relu":
            y = kb.relu_forward(x)
            mine_f, mine_b, tfwd = (lambda: kb.relu_forward(x)), (lambda: kb.relu_backward(gy, y)), (lambda: F.relu(tx))
        else:
            mine_f = lambda: kb.dropout_forward(x, 0.5, 1234)
            mine_b = lambda: kb.dropout_backward(gy, 0.5, 1234)
            tfwd = lambda: F.dropout(tx, 0.5, training=True)
        def torch_forward():
            with torch.no_grad():
                tfwd()
        yield ("forward", mine_f, torch_forward, None)
        yield ("backward", mine_b, lambda: torch.autograd.grad(tfwd(), [tx], tgy), None, "minus_forward")
    elif op == "softmax_cross_entropy":
        k, h = p["k"], p["h"]
        logits = arr(1, k, h, h)
        labels = rng.integers(0, k, (1, h, h)).astype(np.uint8)
        weights = kb.asarray(rng.random((1, h, h)).astype(dtype))
        labels_b = kb.asarray(labels)
        tl, tlab, tw = t(logits, True), torch.from_numpy(labels.astype(np.int64)), t(weights)
        def torch_fused():
            loss = (F.cross_entropy(tl, tlab, reduction="none") * tw).sum()
            torch.autograd.grad(loss, [tl])
        yield ("forward", lambda: kb.softmax_cross_entropy(logits, labels_b, weights), torch_fused, None)
    elif op == "sgd_step":
        sizes = p["sizes"]
        params = [arr(s) for s in sizes]
        grads = [arr(s) for s in sizes]
        vel = [kb.xp.zeros_like(a) for a in params]
        tparams = [t(a, True) for a in params]
        for tp, g in zip(tparams, grads):
            tp.grad = t(g)
        topt = torch.optim.SGD(tparams, lr=1e-9, momentum=0.99)
        def mine():
            for a, g, v in zip(params, grads, vel):
                kb.sgd_step(a, g, v, 1e-9, 0.99, 0.0)
        yield ("forward", mine, topt.step, None)


def run(device="cpu", repeat=5, tile=572, width=64, dtype="float32", seed=0, progress=None):
    """Time every op of ``device``'s backend against PyTorch CPU; returns a list of record dicts."""
    from minunet.benchmarks.timing import import_torch
    torch = import_torch("benchmarks/kernels.py")      # after minunet's CPU backend (see there)
    from minunet.kernels import get_backend
    kb = get_backend(device)
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    shapes = layer_shapes(tile=tile, width=width)
    # The optimiser update over all parameters of the network (one sgd_step per tensor).
    sizes = []
    for op, p in network_ops(tile=tile, width=width):
        if op in ("conv2d", "conv_transpose2d"):
            sizes += [p["k"] * p["c"] * p["kernel"] ** 2, p["k"]]
    shapes.append(("sgd_step", dict(n=sum(sizes), sizes=sizes)))
    records = []
    for op, p in shapes:
        for case in _cases(op, p, kb, torch, dtype, rng):
            direction, mine, theirs, flops = case[:4]
            minus_forward = len(case) > 4
            if minus_forward:
                # Torch's backward is timed as forward+backward (autograd must build its graph)
                # minus a separately timed forward, interleaved in the same loop.
                forward = next(c for c in records[::-1] if c["op"] == op and c["direction"] == "forward"
                               and c["shape"] == _describe(op, p))["_torch_fwd"]
                mine_s, both_s, fwd_s = interleaved([mine, theirs, forward], 1, repeat)[0]
                torch_s = max(both_s - fwd_s, 1e-9)
            else:
                mine_s, torch_s = interleaved([mine, theirs], 1, repeat)[0]
            rec = dict(op=op, direction=direction, shape=_describe(op, p), minunet_ms=1e3 * mine_s,
                       torch_ms=1e3 * torch_s, ratio=mine_s / torch_s)
            if flops:
                rec["minunet_gflops"] = flops / mine_s / 1e9
                rec["torch_gflops"] = flops / torch_s / 1e9
            rec["_torch_fwd"] = theirs
            records.append(rec)
            if progress:
                progress(rec)
    for rec in records:
        del rec["_torch_fwd"]
    return records


def format_row(rec):
    gf = ""
    if "minunet_gflops" in rec:
        gf = f"{rec['minunet_gflops']:8.1f} {rec['torch_gflops']:8.1f}"
    return (f"{rec['op']:22s} {rec['direction']:9s} {rec['shape']:26s} {rec['minunet_ms']:10.2f} "
            f"{rec['torch_ms']:10.2f} {rec['ratio']:6.2f} {gf}")


def header():
    return (f"{'op':22s} {'direction':9s} {'shape':26s} {'minunet ms':>10s} {'torch ms':>10s} {'ratio':>6s} "
            f"{'GF/s mu':>8s} {'GF/s pt':>8s}")


def arguments():
    """The command-line options (also those of ``minunet bench``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "reference"],
                        help="backend to time (cuda: against cuDNN, see cuda_kernels.py)")
    parser.add_argument("--json", metavar="FILE", help="write the records as JSON")
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per op (median reported)")
    parser.add_argument("--tile", type=int, default=572, help="input tile of the network whose layers are timed")
    parser.add_argument("--width", type=int, default=64, help="channels of the first level (64: the paper)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="array type")
    return parser


def main(argv=None):
    parser = arguments()
    args, rest = parser.parse_known_args(argv)
    if args.device == "cuda":
        # GPU timing needs CUDA events and cuDNN settings of its own: benchmarks/cuda_kernels.py.
        from minunet.benchmarks import cuda_kernels
        forwarded = ["--repeat", str(args.repeat), "--tile", str(args.tile), "--width", str(args.width)]
        return cuda_kernels.main(forwarded + (["--json", args.json] if args.json else []) + rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    print(header())
    records = run(args.device, args.repeat, tile=args.tile, width=args.width, dtype=args.dtype,
                  progress=lambda r: print(format_row(r), flush=True))
    total_mine = sum(r["minunet_ms"] for r in records)
    total_torch = sum(r["torch_ms"] for r in records)
    print(f"{'sum over distinct shapes':59s} {total_mine:10.2f} {total_torch:10.2f} {total_mine / total_torch:6.2f}")
    print(target_line("kernel time / PyTorch's, summed over the shapes", total_mine / total_torch, KERNEL_SUM_TARGET))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
