"""The gradient sum of data-parallel training, timed between the MPI ranks of one launch.

    mpiexec -n 2 python -m minunet.benchmarks.allreduce [--widths 16,64] [--depth 5] [--repeat 10] [--json FILE]

For each width, a flat float32 buffer the size of the U-Net's gradients (plus the 3 control slots
of :class:`minunet.training.distributed.Communicator`) is summed in place over the ranks with the
very primitives a training step uses (an arrival barrier, then the non-blocking allreduce polled
to completion), ``--repeat`` times after one warm-up. Rank 0 prints, per width: the parameters, the
buffer's megabytes, the median seconds, and two bandwidths: the buffer over the time
(*algorithm* bandwidth) and ``2 (K-1)/K`` times that (*bus* bandwidth, the bytes each rank sends in
a ring allreduce per second: comparable across K and with a link's rate; docs/scaling.md).
"""
import argparse
import json
import statistics
import sys
import time

import numpy as np

from minunet.training import distributed


def parameters(depth, width):
    """The U-Net's parameter count (two classes, one input channel), without building it."""
    from minunet.model.unet import UNet
    return UNet(depth=depth, width=width, in_channels=1, classes=2, device="reference").num_parameters()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", default="16,64", help="comma-separated network widths")
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--json", help="also write the results here (rank 0)")
    args = parser.parse_args(argv)
    comm = distributed.connect()
    if comm.size < 2:
        print("run it under an MPI launcher with at least 2 ranks: mpiexec -n 2 python -m "
              "minunet.benchmarks.allreduce", file=sys.stderr)
        return 2
    rows = []
    for width in (int(w) for w in args.widths.split(",")):
        n = parameters(args.depth, width) + comm.CONTROL
        buf = np.ones(n, np.float32)
        times = []
        for i in range(args.repeat + 1):
            comm._arrive("the benchmark")
            start = time.perf_counter()
            comm._allreduce(buf, "the benchmark")
            if i:
                times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        rows.append(dict(ranks=comm.size, width=width, depth=args.depth, parameters=n - comm.CONTROL,
                         megabytes=buf.nbytes / 1e6, seconds=seconds, algorithm_gb_s=buf.nbytes / seconds / 1e9,
                         bus_gb_s=2 * (comm.size - 1) / comm.size * buf.nbytes / seconds / 1e9,
                         library=comm.describe()))
        if comm.is_root:
            r = rows[-1]
            print(f"width {width}: {r['parameters']:,} parameters, {r['megabytes']:.1f} MB: {1e3 * seconds:.1f} ms "
                  f"(median of {args.repeat}), algorithm {r['algorithm_gb_s']:.2f} GB/s, bus {r['bus_gb_s']:.2f} GB/s")
    if comm.is_root and args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
