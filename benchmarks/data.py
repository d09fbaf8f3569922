"""The data pipeline's speed: weight maps, synthetic slices, augmented samples, the loop's wait.

    python benchmarks/data.py [--json FILE] [--repeat N] [--isbi DIR]

Times (median of ``--repeat`` after one warm-up): the weight map of one 512x512 label slice (ISBI
slice 0 when ``../shared/data/isbi2012`` exists, else a synthetic slice), one synthetic 512x512
slice, and one augmented 572x572 training sample (input 572, output 388, read from HDF5,
elastic + rotation + flip + gray values). Then a training loop stand-in that spends ``--step-ms``
per iteration while a background worker prepares samples: the loop's mean wait per sample.
Wall and CPU time are both recorded (CPU time = the cost on an idle machine).
Targets: weight map <= 0.2 s, sample <= 50 ms or a loop wait near 0. ``--json`` writes the records
(name, value (wall), cpu, unit, target, source).
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from minunet.benchmarks.targets import verdict
from minunet.data.isbi import isbi_dir

ISBI = isbi_dir()


def _median_time(fn, repeat):
    """Median wall time and median CPU time of this process (the CPU time is what the work costs
    on an idle machine; on a shared one the wall time also holds the waits for a core)."""
    fn()
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def run(repeat=5, isbi=ISBI, step_ms=200.0, loop_samples=20, workers=1):
    """Run the data benchmarks; returns a list of records (dicts) for tables and JSON."""
    from minunet.data import synth, weights
    from minunet.data.convert import save_arrays
    from minunet.data.sampler import TileSampler
    records = []
    label_png = Path(isbi) / "train" / "label" / "0.png"
    if label_png.is_file():
        from minunet.data.imageio import read_stack
        labels = (read_stack(label_png)[0] > 0).astype(np.uint8)
        source = f"ISBI {label_png.name}"
    else:
        labels = synth.synth_slice(np.random.default_rng(0), 512)[1]
        source = "synthetic 512x512"
    t, c = _median_time(lambda: weights.weight_map(labels), repeat)
    records.append(dict(name="weight map per slice", value=t, cpu=c, unit="s", target=0.2, source=source))
    rng = np.random.default_rng(1)
    t, c = _median_time(lambda: synth.synth_slice(rng, 512), repeat)
    records.append(dict(name="synthetic slice 512x512", value=t, cpu=c, unit="s", target=1.0, source="synth"))
    with tempfile.TemporaryDirectory() as tmp:
        raw, lab = synth.synth_stack(4, 512, seed=0)
        path = save_arrays(Path(tmp) / "bench.h5", raw, lab)
        with TileSampler(path, None, 572, 388, seed=0) as sampler:
            t, c = _median_time(sampler.sample, max(repeat, 10))
        records.append(dict(name="augmented sample 572->388", value=t * 1e3, cpu=c * 1e3, unit="ms", target=50.0,
                            source="synthetic HDF5"))
        with TileSampler(path, None, 572, 388, seed=0, workers=workers) as sampler:
            sampler.sample()                       # start the worker (spawn), not counted
            sampler.wait_s = 0.0
            for _ in range(loop_samples):
                sampler.sample()
                time.sleep(step_ms / 1e3)          # stands in for a training step
            wait = sampler.wait_s / loop_samples
        records.append(dict(name=f"loop wait per sample ({workers} worker, {step_ms:g} ms steps)",
                            value=wait * 1e3, cpu=None, unit="ms", target=1.0, source="synthetic HDF5"))
    return records


def table(records):
    """The records as a plain-text table."""
    lines = [f"{'benchmark':<46} {'wall':>10} {'cpu':>10} {'target':>10}  {'verdict':<8} source"]
    for r in records:
        cpu = "-" if r["cpu"] is None else format(r["cpu"], ".3g")
        lines.append(f"{r['name']:<46} {r['value']:>8.3g} {r['unit']:<2}{cpu:>8} {r['unit']:<2}"
                     f"{'<= ' + format(r['target'], 'g'):>9} {r['unit']:<2} {verdict(r['value'], r['target']):<8} "
                     f"{r['source']}")
    return "\n".join(lines)


def arguments():
    """The command-line options (also those of ``minunet bench``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="FILE", help="write the records as JSON")
    parser.add_argument("--repeat", type=int, default=5, help="timed repetitions (median)")
    parser.add_argument("--isbi", default=str(ISBI), help="ISBI 2012 folder (label slice 0 is used)")
    parser.add_argument("--step-ms", type=float, default=200.0, help="simulated training step (ms)")
    parser.add_argument("--workers", type=int, default=1, help="background sample workers")
    return parser


def main(argv=None):
    parser = arguments()
    args = parser.parse_args(argv)
    records = run(args.repeat, args.isbi, args.step_ms, workers=args.workers)
    print(table(records))
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
