"""The GPU measurements of benchmarks/gpu_check.sh, in ONE process so every kernel compiles once.

    python -m minunet.benchmarks.gpu_check --json FILE [--seconds 240] [--tiny]

Stages, each skipped when less time is left than it needs (``--seconds``, from the start):

``step``       a training step of the paper's network (width 64, 572 x 572 tile, batch 1) in minunet
               and in PyTorch CUDA with the same weights and data (TF32 off, cuDNN benchmark mode
               on), interleaved, median of 5 after a warm-up; the first minunet step alone (kernel
               compilation included); the inference forward; GPU peak memory of each library: CuPy's
               pool (peak bytes in use, by an allocator that records them) and
               ``torch.cuda.max_memory_allocated``.
``predict``    a 512 x 512 overlap-tile prediction (median of 5 after a warm-up).
``kernels``    every kernel against PyTorch/cuDNN on the paper's layer shapes (batch 1): time and
               each output's relative error (``cuda_kernels.run``).
``resources``  registers, shared and local memory of every kernel specialisation as compiled for
               this GPU, and host microseconds per launch (a one-element ReLU, a small convolution).

``--tiny`` instead runs every op once on small arrays (the run compute-sanitizer watches).
Without a GPU it prints one line and exits with status 2.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

STAGE_SECONDS = {"step": 90, "predict": 20, "kernels": 90, "resources": 40}   # what each needs, cold


def _gpu():
    """(kernel module, torch) on a real GPU, else a SystemExit with one line."""
    import minunet.kernels.cuda as kc
    ok, why = kc.available()
    if not ok or kc.arrays.SIMULATOR:
        raise SystemExit(f"gpu_check: no GPU here (missing: {why if not ok else 'a real GPU, not the simulator'})")
    import torch
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: this PyTorch sees no CUDA GPU")
    return kc, torch


class PeakPool:
    """CuPy's default pool behind an allocator that records the peak of bytes in use."""

    def __init__(self):
        import cupy
        self.cupy, self.pool, self.peak = cupy, cupy.get_default_memory_pool(), 0
        cupy.cuda.set_allocator(self.malloc)

    def malloc(self, size):
        mem = self.pool.malloc(size)
        self.peak = max(self.peak, self.pool.used_bytes())
        return mem



def gpu_peak_meter(library):
    """A function giving the peak bytes of GPU memory ``library`` ("minunet": CuPy's pool; "torch":
    its caching allocator) has had in use since this call."""
    if library == "minunet":
        pool = PeakPool()
        return lambda: pool.peak
    import torch
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.max_memory_allocated


def stage_step(kc, torch, width=64, tile=572, repeat=5):
    from minunet.benchmarks.timing import interleaved
    from minunet.benchmarks.train_step import MinunetCase, TorchCase
    minunet_peak = gpu_peak_meter("minunet")
    t0 = time.perf_counter()
    mine = MinunetCase(width, tile, "cuda")
    first_loss = mine.step()
    first = time.perf_counter() - t0
    torch_peak = gpu_peak_meter("torch")
    theirs = TorchCase(mine, "cuda")
    (m_step, t_step), _ = interleaved([mine.step, theirs.step], 1, repeat)
    minunet_peak, torch_peak = minunet_peak(), torch_peak()
    (m_fwd, t_fwd), _ = interleaved([mine.forward, theirs.forward], 1, repeat)
    return dict(width=width, tile=tile, minunet_first_step_s=first, first_loss=first_loss,
                minunet_step_s=m_step, torch_step_s=t_step, step_ratio=t_step / m_step,
                minunet_forward_s=m_fwd, torch_forward_s=t_fwd, forward_ratio=t_fwd / m_fwd,
                minunet_peak_mb=minunet_peak / 2 ** 20, torch_peak_mb=torch_peak / 2 ** 20)


def stage_predict(kc, torch, size=512, repeat=5):
    from minunet.inference.tiling import predict_image
    from minunet.model.unet import UNet
    model = UNet(width=64, device="cuda", seed=0)
    image = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    predict_image(model, image)                                   # warm-up: compilation, tile choice
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        predict_image(model, image)
        times.append(time.perf_counter() - t0)
    return dict(size=size, predict_s=statistics.median(times))


def stage_kernels(kc, torch, repeat=10):
    from minunet.benchmarks import cuda_kernels
    records = cuda_kernels.run(repeat=repeat, batch=1, warmup=2)
    errors = [r["rel_err"] for r in records if r.get("rel_err") is not None]
    return dict(records=records, summary=cuda_kernels.summary(records), worst_rel_err=max(errors, default=None))


def stage_resources(kc, torch, calls=200):
    from minunet.kernels.cuda import compile_check
    rows = compile_check.device_report()
    one = kc.asarray(np.ones(1, np.float32))
    x, w = kc.asarray(np.ones((1, 8, 10, 10), np.float32)), kc.asarray(np.ones((8, 8, 3, 3), np.float32))
    launches = {}
    for name, fn in [("relu_forward (1 launch)", lambda: kc.relu_forward(one)),
                     ("conv2d_forward 8->8 @10 (1 launch)", lambda: kc.conv2d_forward(x, w, None))]:
        fn()
        kc.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        launches[name] = (time.perf_counter() - t0) / calls * 1e6
        kc.synchronize()
    return dict(kernels=rows, host_us_per_call=launches)


def tiny(kc):
    """Every op once on small device arrays (for compute-sanitizer)."""
    from minunet.kernels.cuda import compile_check
    compile_check.exercise(kc, kc.asarray)
    kc.synchronize()
    print("gpu_check --tiny: every op ran")


def summary_lines(result):
    """Key: value lines for the summary table of gpu_check.sh."""
    out = []
    s = result.get("step")
    if s:
        out += [f"training step (s): minunet {s['minunet_step_s']:.4f}, pytorch {s['torch_step_s']:.4f}, "
                f"throughput ratio {s['step_ratio']:.2f} (target >= 0.7)",
                f"inference forward (s): minunet {s['minunet_forward_s']:.4f}, pytorch {s['torch_forward_s']:.4f}",
                f"GPU peak memory (MB): minunet {s['minunet_peak_mb']:.0f}, pytorch {s['torch_peak_mb']:.0f}",
                f"first minunet step, compilation included (s): {s['minunet_first_step_s']:.1f}"]
    if "predict" in result:
        out.append(f"512x512 prediction (ms): {result['predict']['predict_s'] * 1e3:.1f} (target < 25)")
    k = result.get("kernels")
    if k:
        out += [f"{key}: {value:.2f} (throughput ratio {1 / value:.2f}, target >= 0.8)"
                for key, value in k["summary"].items()]
        out.append(f"worst relative error against PyTorch: {k['worst_rel_err']:.1e}")
    r = result.get("resources")
    if r:
        worst = max(r["kernels"], key=lambda row: row["registers"])
        local = [row["kernel"] for row in r["kernels"] if row["local_bytes"]]
        out.append(f"kernels: {len(r['kernels'])} specialisations, most registers {worst['registers']} "
                   f"({worst['kernel']}), local memory in: {', '.join(local) or 'none'}")
        out += [f"host us per call, {name}: {us:.1f}" for name, us in r["host_us_per_call"].items()]
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="FILE", help="write every figure as JSON")
    parser.add_argument("--seconds", type=float, default=240, help="time for all stages; a stage is skipped "
                        "when less is left than it needs")
    parser.add_argument("--stages", default="step,predict,kernels,resources")
    parser.add_argument("--tiny", action="store_true", help="run every op once on small arrays and stop")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        kc, torch = _gpu()
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 2
    if args.tiny:
        tiny(kc)
        return 0
    stages = {"step": stage_step, "predict": stage_predict, "kernels": stage_kernels, "resources": stage_resources}
    result = dict(gpu=kc.available()[1], torch=torch.__version__)
    for name in args.stages.split(","):
        left = args.seconds - (time.perf_counter() - start)
        if left < STAGE_SECONDS[name]:
            result.setdefault("skipped", []).append(name)
            print(f"gpu_check: {name} skipped ({left:.0f} s left, it needs about {STAGE_SECONDS[name]})", flush=True)
            continue
        t0 = time.perf_counter()
        try:
            result[name] = stages[name](kc, torch)
        except Exception as e:                  # one stage failing still leaves the others' figures
            result.setdefault("failed", {})[name] = f"{type(e).__name__}: {e}"
            print(f"gpu_check: {name} failed: {type(e).__name__}: {e}", flush=True)
        result.setdefault("stage_seconds", {})[name] = time.perf_counter() - t0
        print(f"gpu_check: {name} done in {time.perf_counter() - t0:.0f} s", flush=True)
        if args.json:                           # written after every stage: a timeout keeps what was done
            Path(args.json).write_text(json.dumps(result, indent=1, default=float))
    for line in summary_lines(result):
        print("SUMMARY", line)
    return 1 if result.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
