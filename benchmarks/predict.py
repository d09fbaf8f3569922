"""Prediction on the CPU: minunet against PyTorch, ONNX Runtime and OpenVINO, with the same weights.

    python benchmarks/predict.py [--widths 16,64] [--cases tile,image,stack] [--mode both]
                                 [--repeat 5] [--warmup 1] [--rounds 3] [--stack 30] [--json FILE]

The paper's network (depth 5, 1 channel, 2 classes) with He-initialised weights, float32, in
every contender of ``benchmarks/anchors.py`` (minunet; PyTorch NCHW and channels_last under
inference_mode; ONNX Runtime's CPU provider; OpenVINO f32, and its default, bf16 on this CPU,
reported apart). Three cases:

- ``tile``: the forward of one 572x572 input tile (batch 1), logits;
- ``image``: one 512x512 image through overlap-tile prediction, class probabilities;
- ``stack``: a ``--stack`` x 512 x 512 stack (30 by default) the same way.

Overlap-tile prediction cuts and stitches the same tiles for everyone, as
``minunet.inference.tiling`` does (mirror-extended context, tiles at multiples of 16; for a
512x512 slice one 700x700 tile, or ``--tile``), ``--batch`` tiles per call across the slices of
a stack; minunet runs ``tiling.predict_stack`` itself, the others the same cuts here.

Two timings (``--mode``): ``interleaved``, all contenders in one process, called in turn
(medians of ``--repeat`` runs after ``--warmup``); ``alone``, each contender in a process of its
own, the processes alternating over ``--rounds`` rounds (running next to another library slows
whichever runs next: caches, thread pools). Every output is compared with minunet's (max |diff|
/ max |minunet|). The targets of issue 20 are marked met or missed: the tile's forward at most
1.0x the fastest float32 anchor's time (stretch 0.8x), and the stack's throughput at least the
fastest float32 anchor's.

``--json FILE`` writes every record (case, width, contender, mode, runs, median, relative
difference) and the targets. ``minunet bench predict`` runs the same. On a shared machine,
``--threads 1 --clock cpu`` times one thread per library in CPU time, which other jobs move far
less than wall time. A full default run is long on 2 cores (the width-64 stack of 30 slices,
six contenders, four timings each: about two hours); ``--stack 8``, ``--rounds 1`` or fewer
``--contenders`` shorten it.
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from minunet.benchmarks import anchors, timing
from minunet.benchmarks.timing import interleaved

CASES = ("tile", "image", "stack")
FORWARD_TILE = 572
TARGETS = {"tile": (1.0, 0.8), "stack": (1.0, None)}     # minunet time / fastest float32 anchor's


class Workload:
    """The inputs of one case and how a contender runs it (the same tiles for every contender)."""

    def __init__(self, case, width, size=512, stack=30, tile=None, batch=4, seed=0):
        from minunet.inference import tiling
        self.case, self.width, self.batch = case, width, batch
        self.model = anchors.make_model(width, seed)
        rng = np.random.default_rng(seed)
        if case == "tile":
            self.tile = FORWARD_TILE
            self.data = rng.standard_normal((1, 1, self.tile, self.tile)).astype(np.float32)
        else:
            self.data = rng.standard_normal((stack if case == "stack" else 1, size, size)).astype(np.float32)
            self.tile = tile or tiling.fit_tile(self.model, tiling.MAX_TILE, size, size)
        self.tiles = 1 if case == "tile" else len(self.data) * tiling.count_tiles(self.model, self.tile, size, size)

    def runner(self, name, contender):
        """A zero-argument function that runs the case once on ``contender`` and returns its output."""
        if self.case == "tile":
            return lambda: contender.logits(self.data)
        if name.startswith("minunet"):
            from minunet.inference import tiling
            return lambda: tiling.predict_stack(self.model, self.data, tile=self.tile, batch=self.batch)
        return lambda: overlap_tile(contender.probabilities, self.data, self.model, self.tile, self.batch)


def overlap_tile(probabilities, stack, model, tile, batch):
    """(N, K, H, W) probabilities of a stack by minunet's overlap-tile scheme, with ``probabilities``
    running each batch of tiles (N', C, tile, tile) -> (N', K, out, out), batches across slices."""
    from minunet.inference import tiling
    n, h, w = stack.shape
    geo = model.geometry(tile)
    out, stride = geo.output_size, tiling.tile_stride(model, tile)
    rows, cols = tiling.tile_starts(h, stride, out), tiling.tile_starts(w, stride, out)
    after = (tiling.context_size(h, tile, stride, out) - h - geo.margin,
             tiling.context_size(w, tile, stride, out) - w - geo.margin)
    contexts = [tiling.extend(image[None], geo.margin, after) for image in stack]
    corners = [(i, y, x) for i in range(n) for y in rows for x in cols]
    probs = np.empty((n, model.classes, rows[-1] + out, cols[-1] + out), np.float32)
    for start in range(0, len(corners), batch):
        chunk = corners[start:start + batch]
        p = probabilities(np.stack([contexts[i][:, y:y + tile, x:x + tile] for i, y, x in chunk]))
        for (i, y, x), tile_probs in zip(chunk, p):
            probs[i, :, y:y + out, x:x + out] = tile_probs
    return probs[:, :, :h, :w]


def contenders_for(names, work, folder):
    """{name: contender} for the available ``names`` (and {name: why} for the missing ones)."""
    onnx = None
    built, absent = {}, {}
    for name in names:
        why = anchors.missing(name)
        if why:
            absent[name] = why
            continue
        if name in ("ort", "ov_f32", "ov_default") and onnx is None:
            onnx = [anchors.make_onnx(work.model, Path(folder) / f"unet{work.width}-{kind}.onnx", work.tile, softmax)
                    for kind, softmax in (("logits", False), ("probs", True))]
        built[name] = anchors.build(name, work.model, onnx)
    return built, absent


def time_interleaved(work, names, warmup, repeat):
    """Records of every contender called in turn in this process, and their outputs."""
    with tempfile.TemporaryDirectory() as folder:
        built, absent = contenders_for(names, work, folder)
        outputs = {}

        def keep(name, fn):
            return lambda: outputs.__setitem__(name, fn())
        fns = [keep(name, work.runner(name, c)) for name, c in built.items()]
        _, runs = interleaved(fns, warmup, repeat)
    records = [dict(contender=name, mode="interleaved", runs_s=ts) for name, ts in zip(built, runs)]
    return records, outputs, absent


def time_alone(work_args, names, warmup, repeat, rounds, progress):
    """Records of each contender in a process of its own, the processes alternating over ``rounds``."""
    runs, outputs, absent = {name: [] for name in names}, {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for r in range(rounds):
            for name in names:
                if name in absent:
                    continue
                out = Path(folder) / f"{name}.npy"
                cmd = [sys.executable, "-m", "minunet.benchmarks.predict", "--child", name, "--child-out", str(out),
                       "--warmup", str(warmup), "--repeat", str(repeat)] + work_args \
                    + (["--clock", "cpu"] if timing.clock is time.process_time else [])
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode:
                    raise RuntimeError(f"{name} alone failed:\n{done.stderr[-3000:]}")
                answer = json.loads(done.stdout.strip().splitlines()[-1])
                if "missing" in answer:
                    absent[name] = answer["missing"]
                    continue
                runs[name].append(answer["runs_s"])
                if r == 0:
                    outputs[name] = np.load(out, allow_pickle=False)
            progress(f"  alone, round {r + 1} of {rounds} done")
    records = [dict(contender=name, mode="alone", runs_s=[t for rnd in ts for t in rnd],
                    round_medians_s=[statistics.median(rnd) for rnd in ts]) for name, ts in runs.items() if ts]
    return records, outputs, absent


def child_main(args):
    """One contender alone in this process: warm up, time, save its output, print the times as JSON."""
    work = Workload(args.cases[0], args.widths[0], args.size, args.stack, args.tile, args.batch)
    with tempfile.TemporaryDirectory() as folder:
        built, absent = contenders_for([args.child], work, folder)
        if absent:
            print(json.dumps({"missing": absent[args.child]}))
            return 0
        fn = work.runner(args.child, built[args.child])
        for _ in range(args.warmup):
            fn()
        times = []
        for _ in range(args.repeat):
            t0 = timing.clock()
            output = fn()
            times.append(timing.clock() - t0)
    np.save(args.child_out, np.asarray(output), allow_pickle=False)
    print(json.dumps({"runs_s": times}))
    return 0


def run_case(case, width, names, mode, warmup, repeat, rounds, size, stack, tile, batch, progress=print):
    """All records of one (case, width), the relative differences and the targets' verdicts."""
    work = Workload(case, width, size, stack, tile, batch)
    progress(f"{case}, width {width}: tile {work.tile}, {work.tiles} tile(s), {anchors.threads()} threads")
    records, outputs, absent = [], {}, {}
    if mode in ("interleaved", "both"):
        r, o, a = time_interleaved(work, names, warmup, repeat)
        records, outputs, absent = records + r, {**o, **outputs}, {**absent, **a}
    if mode in ("alone", "both"):
        work_args = ["--cases", case, "--widths", str(width), "--size", str(size), "--stack", str(stack),
                     "--batch", str(batch)] + (["--tile", str(tile)] if tile else [])
        r, o, a = time_alone(work_args, names, warmup, repeat, rounds, progress)
        records, outputs, absent = records + r, {**o, **outputs}, {**absent, **a}
    reference = outputs.get("minunet")
    for rec in records:
        rec.update(case=case, width=width, tile=work.tile, tiles=work.tiles, threads=anchors.threads(),
                   median_s=statistics.median(rec["runs_s"]))
        if reference is not None and rec["contender"] in outputs:
            rec["relative_difference"] = anchors.relative_difference(outputs[rec["contender"]], reference)
    return records, absent, verdicts(case, width, records)


def verdicts(case, width, records):
    """For each mode: minunet's time over the fastest float32 anchor's, and met/missed."""
    if case not in TARGETS:
        return []
    target, stretch = TARGETS[case]
    found = []
    for mode in ("interleaved", "alone"):
        medians = {r["contender"]: r["median_s"] for r in records if r["mode"] == mode}
        rivals = {k: v for k, v in medians.items() if k in anchors.FLOAT32_ANCHORS}
        if "minunet" not in medians or not rivals:
            continue
        best = min(rivals, key=rivals.get)
        ratio = medians["minunet"] / rivals[best]
        found.append(dict(case=case, width=width, mode=mode, fastest_anchor=best, ratio=ratio, target=target,
                          met=ratio <= target, stretch=stretch, stretch_met=None if stretch is None else ratio <= stretch))
    return found


def format_table(records, absent, found):
    """The figures of one (case, width) as text: a row per contender and mode, then the targets."""
    if not records:
        return "no contender ran"
    r0 = records[0]
    what = {"tile": f"forward of one {r0['tile']} tile", "image": "one 512x512 image, overlap-tile",
            "stack": f"stack of {r0['tiles']} tile(s) of {r0['tile']}, overlap-tile"}[r0["case"]]
    mine = {r["mode"]: r["median_s"] for r in records if r["contender"] == "minunet"}
    clock = "CPU time" if timing.clock is time.process_time else "wall time"
    lines = [f"{what}, width {r0['width']}, {r0['threads']} thread(s), {clock} (medians; ratio = minunet / contender)",
             f"{'contender':40s} {'mode':12s} {'median s':>9s} {'min-max s':>15s} {'ratio':>6s} {'rel. diff':>9s}"]
    for r in records:
        ratio = mine.get(r["mode"], float("nan")) / r["median_s"]
        diff = r.get("relative_difference")
        spread = r.get("round_medians_s", r["runs_s"])
        lines.append(f"{anchors.LABELS.get(r['contender'], r['contender']):40s} {r['mode']:12s} {r['median_s']:9.3f} "
                     f"{min(spread):7.3f}-{max(spread):<7.3f} {ratio:6.2f} {'' if diff is None else f'{diff:9.1e}'}")
    for name, why in absent.items():
        lines.append(f"{anchors.LABELS.get(name, name):40s} not run: {why}")
    for v in found:
        stretch = "" if v["stretch"] is None else f", stretch {v['stretch']}: {'met' if v['stretch_met'] else 'missed'}"
        lines.append(f"target ({v['mode']}): minunet <= {v['target']}x the fastest float32 anchor ({v['fastest_anchor']}): "
                     f"{v['ratio']:.2f}, {'met' if v['met'] else 'missed'}{stretch}")
    return "\n".join(lines)


def _names(text, allowed=None):
    """A comma-separated option as a list (checked against ``allowed``)."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if allowed is not None and n not in allowed]
    if bad:
        raise SystemExit(f"benchmarks/predict.py: unknown {', '.join(bad)}; choose from {', '.join(allowed)}")
    return names


def arguments():
    """The command-line options (also those of ``minunet bench predict``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", default="16,64", help="network widths, comma-separated")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--contenders", default=",".join(anchors.ALL), help=f"comma-separated, of {', '.join(anchors.ALL)}")
    parser.add_argument("--mode", choices=["interleaved", "alone", "both"], default="both",
                        help="all contenders in one process, each alone in its own (alternating), or both")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per contender (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="alone: processes per contender, alternating")
    parser.add_argument("--size", type=int, default=512, help="side of the square slices")
    parser.add_argument("--stack", type=int, default=30, help="slices of the stack case")
    parser.add_argument("--tile", type=int, default=None, help="overlap-tile input tile (default: the least work)")
    parser.add_argument("--batch", type=int, default=4, help="tiles per call, across slices")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads of every contender (default: the cores this process may use)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: the process's CPU time instead of wall time (with --threads 1, a "
                             "measure that other jobs on a shared machine hardly move)")
    parser.add_argument("--json", metavar="FILE", help="write the records and the targets as JSON")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cpu (the anchors are CPU runtimes)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    args = arguments().parse_args(argv)
    args.widths = [int(w) for w in _names(args.widths)]
    args.cases = _names(args.cases, CASES)
    args.contenders = _names(args.contenders, anchors.ALL)
    if args.device != "cpu":
        from minunet.benchmarks.train_step import cuda_missing
        why = cuda_missing(args.device) or "it compares CPU runtimes; for the GPU run minunet bench train-step --device cuda"
        print(f"benchmarks/predict.py --device {args.device}: {why}", file=sys.stderr)
        return 2
    if args.threads:
        anchors.use_threads(args.threads)
    if args.clock == "cpu":
        timing.use_clock(time.process_time)
    if args.child:
        return child_main(args)
    everything = dict(records=[], targets=[], missing={}, machine=timing.machine(), threads=anchors.threads(),
                      clock=args.clock)
    print(timing.describe_machine(everything["machine"]), flush=True)
    for width in args.widths:
        for case in args.cases:
            records, absent, found = run_case(case, width, args.contenders, args.mode, args.warmup, args.repeat,
                                              args.rounds, args.size, args.stack, args.tile, args.batch)
            print(format_table(records, absent, found), flush=True)
            everything["records"] += records
            everything["targets"] += found
            everything["missing"].update(absent)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(everything, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
