"""A whole U-Net training step, and inference, in minunet against PyTorch: time and peak memory.

    python benchmarks/train_step.py [--width 64] [--tile 572] [--device cpu] [--repeat 3]
                                    [--mode interleaved|alone|both] [--rounds 3] [--json FILE]

The paper's network (depth 5, 1 input channel, 2 classes, 2x2 up-convolutions, dropout 0.5) on one
tile, batch 1. A training step is forward, weighted softmax cross-entropy over the output tile,
backward and an SGD momentum (0.99) update. Both libraries run in ONE process with the same
weights (``minunet.benchmarks.torch_unet.TorchUNet.from_minunet``), interleaved (minunet step, torch step,
...), after one warm-up step each; the median of ``--repeat`` steps is reported, then the same for
the forward pass alone (inference: no graph, no dropout). On the CPU PyTorch runs in both its
layouts, NCHW and channels_last (NHWC, its fastest there). ``--mode alone`` times each library
in a process of its own instead, the processes alternating over ``--rounds`` rounds (a library
that runs right after another is slowed by the other's caches and thread pools, which flatters
whichever runs first); ``--mode both`` gives both figures. Peak resident memory is measured in
separate child processes, one per library, each running two training steps. A third child, with
an empty Numba cache directory, times minunet's first step cold (compilation included); the
memory child times the first step with the on-disk cache warm.

``--json FILE`` writes minunet_step_s, torch_step_s, torch_cl_step_s, step_ratio (minunet /
torch), the same for the forward, alone_<library>_step_s and _forward_s (with each round's
median) in the alone mode, minunet_peak_rss_mb, torch_peak_rss_mb (and on a GPU minunet_gpu_peak_mb,
torch_gpu_peak_mb: CuPy's pool and torch.cuda.max_memory_allocated),
minunet_first_step_cold_s, minunet_first_step_warm_cache_s and the case (width, tile, device).
PyTorch is imported only here; it is not a dependency of minunet.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from minunet.benchmarks import timing
from minunet.benchmarks.timing import import_torch, interleaved, tune_malloc

ROOT = Path(__file__).resolve().parents[1]


class MinunetCase:
    """The minunet side: model, SGD, a fixed random tile with labels and weights."""

    def __init__(self, width, tile, device, seed=0):
        from minunet.engine import functional as F
        from minunet.engine.autograd import Tensor, no_grad
        from minunet.engine.optim import SGD
        from minunet.model.unet import UNet
        self.F, self.no_grad = F, no_grad
        self.model = UNet(width=width, device=device, seed=seed)
        self.opt = SGD(self.model.parameters(), lr=1e-4, momentum=0.99)
        rng = np.random.default_rng(seed)
        out = self.model.geometry(tile).output_size
        backend = self.model.parameters()[0].backend
        self.x_np = rng.standard_normal((1, 1, tile, tile)).astype(np.float32)
        self.labels_np = rng.integers(0, 2, (1, out, out)).astype(np.uint8)
        self.weights_np = rng.uniform(1, 10, (1, out, out)).astype(np.float32)
        self.x = Tensor(backend.asarray(self.x_np), device=device)
        self.labels, self.weights = backend.asarray(self.labels_np), backend.asarray(self.weights_np)
        self.sync = getattr(backend, "synchronize", lambda: None)

    def step(self):
        self.model.train()
        self.opt.zero_grad()
        loss = self.F.softmax_cross_entropy(self.model(self.x), self.labels, self.weights)
        loss.backward()
        self.opt.step()
        value = loss.item()
        self.sync()
        return value

    def forward(self):
        self.model.eval()
        with self.no_grad():
            out = self.model(self.x)
        self.sync()
        return out


class TorchCase:
    """The PyTorch twin with the same weights and data; ``channels_last`` for PyTorch's NHWC layout
    (its fastest on CPUs: oneDNN's blocked kernels without a reorder per layer)."""

    def __init__(self, mine, device, channels_last=False):
        torch = import_torch("benchmarks/train_step.py")
        if os.environ.get("MINUNET_BENCH_THREADS"):
            torch.set_num_threads(int(os.environ["MINUNET_BENCH_THREADS"]))
        from minunet.benchmarks.torch_unet import TorchUNet, weighted_cross_entropy
        self.torch, self.loss_fn = torch, weighted_cross_entropy
        self.device = "cuda" if device == "cuda" and torch.cuda.is_available() else "cpu"
        if self.device == "cuda":
            from minunet.benchmarks.cuda_kernels import fair_fp32
            fair_fp32(torch)                  # TF32 off, cuDNN benchmark mode on: float32 against float32
        self.format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = TorchUNet.from_minunet(mine.model).to(self.device).to(memory_format=self.format)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-4, momentum=0.99)
        self.x = torch.from_numpy(mine.x_np).to(self.device).contiguous(memory_format=self.format)
        self.labels = torch.from_numpy(mine.labels_np).to(self.device)
        self.weights = torch.from_numpy(mine.weights_np).to(self.device)
        self.p = mine.model.dropout_rate
        m = mine.model
        bottom = m.geometry(mine.x_np.shape[-1]).encoder_sizes[-1]
        self.mask_shape = (1, m.width * 2 ** (m.depth - 1), bottom, bottom)

    def _sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def step(self):
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        # Dropout as in the paper's network: a fresh Bernoulli mask at the end of the contracting path.
        mask = (self.torch.rand(self.mask_shape, device=self.device) >= self.p).float()
        loss = self.loss_fn(self.model(self.x, dropout_mask=mask, dropout_p=self.p), self.labels, self.weights)
        loss.backward()
        self.opt.step()
        value = loss.item()
        self._sync()
        return value

    def forward(self):
        self.model.eval()
        with self.torch.no_grad():
            out = self.model(self.x)
        self._sync()
        return out


LIBRARIES = {"minunet": "minunet", "torch": "PyTorch, NCHW", "torch_cl": "PyTorch, channels_last"}


def _make_case(which, width, tile, device):
    """The minunet case, or a PyTorch twin of it (``torch``, ``torch_cl``)."""
    mine = MinunetCase(width, tile, device)
    return mine if which == "minunet" else TorchCase(mine, device, channels_last=which == "torch_cl")


def _child(which, width, tile, device, env=None, repeat=0, warmup=1):
    """Run one library in a fresh process: two training steps (first-step time, peak RSS), or with
    ``repeat`` also ``warmup`` + ``repeat`` timed steps and forwards."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", which, "--width", str(width),
           "--tile", str(tile), "--device", device, "--repeat", str(repeat), "--warmup", str(warmup)] \
        + (["--clock", "cpu"] if timing.clock is time.process_time else [])
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(ROOT))
    if out.returncode:
        raise RuntimeError(f"child {which} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _child_main(which, width, tile, device, repeat, warmup):
    t0 = time.perf_counter()
    peak = None
    if device == "cuda":                         # on a GPU: the library's peak of device memory in use
        from minunet.benchmarks.gpu_check import gpu_peak_meter
        peak = gpu_peak_meter("minunet" if which == "minunet" else "torch")
    case = _make_case(which, width, tile, device)
    t1 = time.perf_counter()
    case.step()
    first = time.perf_counter() - t1
    case.step()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024      # KiB on Linux
    result = dict(first_step_s=first, setup_s=t1 - t0, peak_rss_mb=rss_mb)
    if peak:
        result["gpu_peak_mb"] = peak() / 2 ** 20
    if repeat:
        _, (result["step_runs_s"],) = interleaved([case.step], warmup, repeat)
        _, (result["forward_runs_s"],) = interleaved([case.forward], warmup, repeat)
    print(json.dumps(result))


def _alone(width, tile, device, repeat, warmup, rounds, libraries, progress):
    """Each library timed in a process of its own, the processes alternating over ``rounds``:
    running right after another library slows whichever runs next (caches, thread pools), which
    the interleaved figures include. Medians over all rounds' steps, and each round's median."""
    runs = {which: {"step": [], "forward": []} for which in libraries}
    for r in range(rounds):
        for which in libraries:
            child = _child(which, width, tile, device, repeat=repeat, warmup=warmup)
            runs[which]["step"].append(child["step_runs_s"])
            runs[which]["forward"].append(child["forward_runs_s"])
        progress(f"  alone, round {r + 1} of {rounds} done")
    result = {}
    for which, kinds in runs.items():
        for kind, rounds_runs in kinds.items():
            result[f"alone_{which}_{kind}_s"] = statistics.median(t for rnd in rounds_runs for t in rnd)
            result[f"alone_{which}_{kind}_round_medians_s"] = [statistics.median(rnd) for rnd in rounds_runs]
    return result


def run(width=64, tile=572, device="cpu", repeat=3, warmup=1, memory=True, cold=True, tuned_malloc=False,
        mode="interleaved", rounds=3, progress=print):
    """Time a training step and inference in minunet and PyTorch; returns the figures as a dict.

    ``tuned_malloc`` tunes this process's malloc (``timing.tune_malloc``) before the timed steps;
    the memory and cold-start children keep the default allocator. ``mode``: "interleaved" (one
    process), "alone" (a process per library, alternating over ``rounds``) or "both". On the CPU
    PyTorch runs twice, NCHW and channels_last.
    """
    import_torch("benchmarks/train_step.py")
    result = dict(width=width, tile=tile, device=device, repeat=repeat, tuned_malloc=bool(tuned_malloc))
    if cold:
        with tempfile.TemporaryDirectory() as cache:
            progress("first minunet step with an empty Numba cache (compiling everything) ...")
            env = dict(os.environ, NUMBA_CACHE_DIR=cache)
            result["minunet_first_step_cold_s"] = _child("minunet", width, tile, device, env)["first_step_s"]
    if memory:
        progress("peak memory: one child process per library ...")
        mine_child = _child("minunet", width, tile, device)
        torch_child = _child("torch", width, tile, device)
        result["minunet_first_step_warm_cache_s"] = mine_child["first_step_s"]
        result["minunet_peak_rss_mb"] = mine_child["peak_rss_mb"]
        result["torch_peak_rss_mb"] = torch_child["peak_rss_mb"]
        if "gpu_peak_mb" in mine_child:
            result["minunet_gpu_peak_mb"], result["torch_gpu_peak_mb"] = mine_child["gpu_peak_mb"], torch_child["gpu_peak_mb"]
    libraries = ["minunet", "torch"] + (["torch_cl"] if device == "cpu" else [])
    if mode in ("alone", "both"):
        progress(f"timing each library alone: {rounds} rounds of {repeat} steps after {warmup} warm-up ...")
        result.update(_alone(width, tile, device, repeat, warmup, rounds, libraries, progress))
    if mode == "alone":
        return result
    if tuned_malloc and not tune_malloc():
        raise RuntimeError("--tuned-malloc: mallopt failed (glibc only)")
    progress(f"timing {repeat} interleaved training steps after {warmup} warm-up ...")
    mine = MinunetCase(width, tile, device)
    cases = [mine, TorchCase(mine, device)] + ([TorchCase(mine, device, channels_last=True)] if device == "cpu" else [])
    step_medians, steps = interleaved([c.step for c in cases], warmup, repeat)
    fwd_medians, fwds = interleaved([c.forward for c in cases], warmup, repeat)
    for which, m_step, step_runs, m_fwd, fwd_runs in zip(libraries, step_medians, steps, fwd_medians, fwds):
        result.update({f"{which}_step_s": m_step, f"{which}_forward_s": m_fwd,
                       f"{which}_step_runs_s": step_runs, f"{which}_forward_runs_s": fwd_runs})
    result.update(step_ratio=result["minunet_step_s"] / result["torch_step_s"],
                  forward_ratio=result["minunet_forward_s"] / result["torch_forward_s"])
    return result


def format_table(r):
    lines = [f"U-Net width {r['width']}, tile {r['tile']}, device {r['device']}, median of {r['repeat']}"
             + (", malloc tuned for both" if r.get("tuned_malloc") else ""),
             f"{'':60s} {'minunet':>10s} {'pytorch':>10s} {'ratio':>7s}"]
    for prefix, mode in (("", "interleaved"), ("alone_", "alone")):
        for kind, what in (("step", "training step (s)"), ("forward", "forward / inference (s)")):
            mine = r.get(f"{prefix}minunet_{kind}_s")
            for which in ("torch", "torch_cl"):
                theirs = r.get(f"{prefix}{which}_{kind}_s")
                if mine is not None and theirs is not None:
                    name = f"{what}, {mode}, {LIBRARIES[which]}"
                    lines.append(f"{name:60s} {mine:10.3f} {theirs:10.3f} {mine / theirs:7.2f}")
    if "minunet_peak_rss_mb" in r:
        a, b = r["minunet_peak_rss_mb"], r["torch_peak_rss_mb"]
        lines.append(f"{'peak RSS, training (MB), PyTorch NCHW':60s} {a:10.3f} {b:10.3f} {a / b:7.2f}")
    if "minunet_gpu_peak_mb" in r:
        a, b = r["minunet_gpu_peak_mb"], r["torch_gpu_peak_mb"]
        lines.append(f"{'GPU peak, training (MB)':60s} {a:10.3f} {b:10.3f} {a / b:7.2f}")
    if "minunet_first_step_cold_s" in r:
        lines.append(f"first minunet step, empty Numba cache: {r['minunet_first_step_cold_s']:.1f} s")
    if "minunet_first_step_warm_cache_s" in r:
        lines.append(f"first minunet step, warm Numba cache:  {r['minunet_first_step_warm_cache_s']:.1f} s")
    return "\n".join(lines)


def cuda_missing(device):
    """A one-line reason when --device cuda cannot run here, else None."""
    if device != "cuda":
        return None
    from minunet.kernels import cuda
    ok, why = cuda.available()
    return None if ok else f"--device cuda needs a CUDA GPU and the [cuda] extra: pip install 'minunet[cuda]' (missing: {why})"


def arguments():
    """The command-line options (also those of ``minunet bench train-step``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--tile", type=int, default=572)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "reference"])
    parser.add_argument("--repeat", type=int, default=3, help="timed steps per library (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS child processes")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold-compile child process")
    parser.add_argument("--tuned-malloc", action="store_true",
                        help="tune glibc malloc to reuse freed memory for the timed steps (both libraries)")
    parser.add_argument("--mode", choices=["interleaved", "alone", "both"], default="interleaved",
                        help="interleaved in one process, each library alone in its own process "
                             "(alternating over --rounds), or both")
    parser.add_argument("--rounds", type=int, default=3, help="alone: processes per library, alternating")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads of each library (default: Numba's and PyTorch's own, the cores)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: the process's CPU time instead of wall time (with --threads 1, a "
                             "measure that other jobs on a shared machine hardly move)")
    parser.add_argument("--child", choices=list(LIBRARIES), help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    args = arguments().parse_args(argv)
    if args.threads:              # before minunet's CPU backend loads: Numba reads it once
        os.environ["MINUNET_BENCH_THREADS"] = os.environ["NUMBA_NUM_THREADS"] = str(args.threads)
    if args.clock == "cpu":
        timing.use_clock(time.process_time)
    missing = cuda_missing(args.device)
    if missing:
        print(f"benchmarks/train_step.py: {missing}", file=sys.stderr)
        return 2
    if args.child:
        _child_main(args.child, args.width, args.tile, args.device, args.repeat, args.warmup)
        return 0
    result = run(args.width, args.tile, args.device, args.repeat, args.warmup,
                 memory=not args.no_memory, cold=not args.no_cold, tuned_malloc=args.tuned_malloc,
                 mode=args.mode, rounds=args.rounds)
    result["machine"] = timing.machine()
    print(timing.describe_machine(result["machine"]))
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
