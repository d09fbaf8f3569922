"""Several ranks: the exchanges of a data-parallel run, over a few primitives an MPI or NCCL class provides.

:mod:`minunet.training.distributed` says what the ranks do; this module does it, whatever carries
the bytes: agreeing on errors at the start, sharing rank 0's settings and state, the pixel counts
that scale each rank's loss, the per-step gradient sum (with the loss and stop requests in the same
buffer), rank 0's decisions, and the one-line end when a rank stops answering.
"""
import contextlib
import json
import os
import signal
import sys

import numpy as np

from minunet.errors import UserError
from minunet.model.checkpoint import generator_state, restore_generator
from minunet.training.commstats import CommStats
from minunet.training.config import TrainConfig
from minunet.training.distributed import TIMEOUT_VARIABLE, RankDropout, SingleProcess
from minunet.training.provenance import jsonable


class Communicator(SingleProcess):
    """Several ranks: the exchanges of a run, over the primitives a subclass provides.

    ``_allreduce(buf, what, nap)`` sums an array in place over the ranks, ``_broadcast(buf)`` copies
    rank 0's array into every rank's, ``_allgather_bytes(data)`` collects one bytes object per rank,
    ``_arrive(what)`` waits for every rank; each waits at most ``timeout`` seconds and otherwise
    ends every rank (:meth:`fail`). ``what`` names the exchange in that message; ``nap`` lets a rank
    that waits for slower ones sleep between polls.
    """

    CONTROL = 3                       # slots after the gradients: the loss, SIGINT requests, SIGTERM requests
    MESSAGE_BYTES = 1024              # an error message, as rank 0 receives it

    def __init__(self, rank, size, timeout):
        self.rank, self.size, self.timeout = int(rank), int(size), float(timeout)
        self.is_root = self.rank == 0
        self.out = None
        self._buffer, self._sink, self._cleanup = None, None, []
        self.stats = CommStats()

    # --------------------------------------------------------------- startup

    @contextlib.contextmanager
    def agreement(self):
        error = None
        try:
            yield
        except Exception as err:          # reported to every rank, then raised where it happened
            error = err
        message = b"" if error is None else _describe(error).encode()[:self.MESSAGE_BYTES]
        failed = [(rank, m.decode(errors="replace")) for rank, m in enumerate(self._allgather_bytes(message)) if m]
        if not failed:
            return
        if error is not None and (self.is_root or not isinstance(error, UserError)):
            raise error
        if self.is_root:
            rank, message = failed[0]
            raise UserError(f"rank {rank} of {self.size}: {message}")
        raise SystemExit(2)               # rank 0 prints what went wrong

    def share_config(self, config):
        data = json.dumps(config.to_json()).encode() if self.is_root else b""
        return TrainConfig(**json.loads(self._broadcast_bytes(data)))

    def _broadcast_bytes(self, data):
        """Rank 0's bytes on every rank."""
        length = np.array([len(data)], np.int64)
        self._broadcast(length)
        buf = np.frombuffer(data, np.uint8).copy() if self.is_root else np.empty(int(length[0]), np.uint8)
        self._broadcast(buf)
        return buf.tobytes()

    def synchronise(self, trainer):
        self.out = trainer.out
        self._cleanup.append(trainer.close)
        state = {"iteration": trainer.iteration, "sampler": jsonable(trainer.sampler.state()),
                 "dropout": generator_state(trainer.model.dropout_rng),
                 "steps": trainer.optimizer.state()["steps"]} if self.is_root else {}
        state = json.loads(self._broadcast_bytes(json.dumps(state).encode()))
        buffers = trainer.optimizer.state()
        for p in trainer.model.parameters():
            self._broadcast(p.data)
        for key in sorted(k for k in buffers if k != "steps"):
            self._broadcast(buffers[key])
        if not self.is_root:
            trainer.optimizer.load_state(dict(buffers, steps=state["steps"]))
            trainer.iteration = int(state["iteration"])
            trainer.sampler.set_state(state["sampler"])
            trainer.model.dropout_rng = RankDropout(restore_generator(state["dropout"]), self.rank)
        batch = trainer.config.batch
        trainer.log(f"data parallel: {self.describe()}; effective batch {self.size * batch} "
                    f"({self.size} ranks x --batch {batch})")
        self._note_ranks(trainer)

    # --------------------------------------------------------------- every step

    def signal_sink(self, trainer):
        self._sink = _StopRequest(trainer.echo)
        return self._sink

    def loss_shares(self, labels, ignore=255):
        local = np.array([np.count_nonzero(np.asarray(lab) != ignore) for lab in labels], np.float64)
        total = local.copy()
        with self.stats.timing("wait"):   # the first exchange of a step: ranks meet here
            self._allreduce(total, "the pixel counts", nap=True)
        return [float(n / t) if t else 0.0 for n, t in zip(local, total)]

    def sum_gradients(self, trainer, loss):
        params = trainer.optimizer.params
        buf, spans = self._gradient_buffer(params)
        with self.stats.timing("pack"):
            for p, (start, stop) in zip(params, spans):
                if p.grad is None:
                    buf[start:stop] = 0
                else:
                    buf[start:stop] = p.grad.reshape(-1)
            requested = self._sink.stop_signal if self._sink is not None else None
            control = [loss, requested == signal.SIGINT, requested == signal.SIGTERM]
            buf[-self.CONTROL:] = params[0].backend.asarray(np.array(control, np.float64), dtype=buf.dtype)
        with self.stats.timing("wait"):
            self._arrive("the gradient sum")
        with self.stats.timing("sum"):
            self._allreduce(buf, "the gradient sum")
        self.stats.step_done()
        for p, (start, stop) in zip(params, spans):
            if p.grad is not None:
                p.grad = buf[start:stop].reshape(p.shape)
        total, interrupts, terminations = (float(v) for v in params[0].backend.to_numpy(buf[-self.CONTROL:]))
        if interrupts:
            trainer.stop_signal = signal.SIGINT
        elif terminations:
            trainer.stop_signal = signal.SIGTERM
        if self.is_root and self.stats.due(trainer.iteration + 1, trainer.config.val_every):
            trainer.log(self.stats.report())
        return total

    def _gradient_buffer(self, params):
        """One flat array for every gradient plus the control slots (allocated once), and each span."""
        if self._buffer is None:
            sizes = [int(np.prod(p.shape)) for p in params]
            ends = np.cumsum([0] + sizes)
            spans = list(zip(ends[:-1].tolist(), ends[1:].tolist()))
            xp = params[0].backend.xp
            self._buffer = (xp.zeros(int(ends[-1]) + self.CONTROL, dtype=params[0].data.dtype), spans)
        return self._buffer

    def agree(self, flag):
        buf = np.array([bool(flag)], np.uint8)
        self._broadcast(buf)
        return bool(buf[0])

    # --------------------------------------------------------------- failure

    def fail(self, what):
        """A collective waited longer than the timeout: say so in one line and end every rank."""
        resume = f"; continue from the last checkpoint: minunet train --out {self.out} --resume" if self.out else ""
        sys.stderr.write(f"minunet train: rank {self.rank} of {self.size} waited {self.timeout:g} s for the other "
                         f"ranks in {what} (a rank died or hangs; {TIMEOUT_VARIABLE} sets the limit); "
                         f"ending every rank{resume}\n")
        sys.stderr.flush()
        for cleanup in self._cleanup:
            with contextlib.suppress(Exception):
                cleanup()
        self._abort()
        os._exit(1)         # MPI_Abort can return (MPICH, when the rank it waits for is stopped)

    def _allreduce(self, buf, what="a sum", nap=False):
        raise NotImplementedError

    def _broadcast(self, buf, what="a broadcast from rank 0"):
        raise NotImplementedError

    def _allgather_bytes(self, data):
        raise NotImplementedError

    def _arrive(self, what):
        """Wait until every rank has reached this point (rank 0 may be validating meanwhile)."""
        raise NotImplementedError

    def _abort(self):
        """End every rank at once."""
        raise NotImplementedError


class _StopRequest:
    """Where the signal handlers mark a stop request on a rank, until the next step shares it."""

    def __init__(self, echo):
        self.stop_signal, self.echo = None, echo


def _describe(error):
    """An exception as one line."""
    if isinstance(error, UserError):
        return str(error)
    return f"{type(error).__name__}: {error}"
