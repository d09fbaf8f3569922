"""A tiny training on every rank, run by tests/test_distributed.py under ``mpiexec -n K``.

``python -m tests.distributed_driver DATA OUT REPORT [--iterations N] [--deep] [--dropout P]``
trains through :class:`minunet.training.trainer.Trainer` with the communicator of the launch, and
after every step compares a digest of every rank's weights. Rank 0 writes REPORT (JSON: whether the
weights were identical after every step, the losses) and REPORT.npz (the final weights).
"""
import argparse
import hashlib
import json

import numpy as np

from minunet.training import distributed
from minunet.training.config import TrainConfig
from minunet.training.trainer import Trainer

TINY = dict(device="cpu", depth=3, width=4, tile=92, val_every=3, val_slices="4", workers=0)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("report")
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--deep", action="store_true")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--device", default=TINY["device"])
    args = parser.parse_args()

    comm = distributed.connect()
    config = TrainConfig(**dict(TINY, data=args.data, out=args.out, iterations=args.iterations, device=args.device,
                                deep_supervision=args.deep, dropout=args.dropout))
    trainer = Trainer(config, comm=comm)
    identical, losses = [], []

    def compare(trainer, loss):
        flat = np.concatenate([p.numpy().ravel() for p in trainer.model.parameters()])
        digests = comm._allgather_bytes(hashlib.sha256(flat.tobytes()).digest())
        identical.append(len(set(digests)) == 1)
        losses.append(loss)

    trainer.run(progress=compare, handle_signals=False)
    trainer.close()
    if comm.is_root:
        np.savez(args.report + ".npz", **{name: p.numpy() for name, p in trainer.model.named_parameters()})
        with open(args.report, "w") as f:
            json.dump({"ranks": comm.size, "identical": identical, "losses": losses}, f)


if __name__ == "__main__":
    main()
