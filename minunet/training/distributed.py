"""Data-parallel training on several processes ("ranks"): what they exchange, behind one interface.

``mpiexec -n K minunet train ...`` (or a cluster's ``srun``) starts K copies of the command, the
ranks; they train one model in lockstep (synchronous data parallelism):

- rank 0 broadcasts its settings, weights, optimiser state and counters, so every rank starts
  from the same state (a fresh run or a resumed one);
- each rank draws its own tiles: tile k of rank r is a pure function of (seed, r, k)
  (:class:`minunet.data.sampler.TileSampler`), and its own dropout masks (:class:`RankDropout`);
- after each backward pass one in-place allreduce of a flat buffer sums the gradients, and also
  carries the step's loss and any rank's stop request (Ctrl-C, SIGTERM);
- every rank then takes the same optimiser step on the same sum, so the weights stay bitwise
  identical; rank 0 alone validates and writes the run directory.

Each rank scales its loss terms by its share of the batch's counted pixels
(:meth:`Communicator.loss_shares`), so K ranks at ``--batch B`` compute the gradient of one rank at
``--batch K*B`` (to float32 rounding of the sum's order). A collective that waits longer than
``MINUNET_COMM_TIMEOUT`` seconds (a rank died or hangs) ends every rank with one line.

Implementations: :class:`SingleProcess` (one process; every method a no-op), MPI through mpi4py
(:mod:`minunet.training.mpi`), and NCCL through CuPy for ``--device cuda`` (:mod:`minunet.training.nccl`).
"""
import contextlib
import os
import signal

import numpy as np

from minunet.errors import UserError
from minunet.training.commstats import CommStats
from minunet.training.rundir import RunDirectory

# what a launcher sets in each rank's environment: the number of ranks (MPICH/Intel MPI, Open MPI, Slurm's srun)
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS")
DEFAULT_TIMEOUT_S = 600.0            # above rank 0's validation of the ISBI slices at width 64 on a CPU
TIMEOUT_VARIABLE = "MINUNET_COMM_TIMEOUT"


def launched_ranks(environ=None):
    """How many ranks the launcher started (1 when not launched by mpiexec/srun), without starting MPI."""
    environ = os.environ if environ is None else environ
    for name in SIZE_VARIABLES:
        value = environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def comm_timeout(environ=None):
    """Seconds a rank waits for the others in one collective before ending the run."""
    environ = os.environ if environ is None else environ
    value = environ.get(TIMEOUT_VARIABLE)
    if value is None:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise UserError(f"{TIMEOUT_VARIABLE}={value}: give the collective timeout in seconds, e.g. "
                        f"{TIMEOUT_VARIABLE}={DEFAULT_TIMEOUT_S:g}")
    return seconds


def connect(environ=None):
    """The communicator of this process: :class:`SingleProcess`, or MPI when a launcher started several.

    Call it before anything imports Numba: the ranks on one machine divide its CPUs between them
    (``NUMBA_NUM_THREADS``, see :func:`threads_per_rank`).
    """
    if launched_ranks(environ) <= 1:
        return SingleProcess()
    from minunet.training.mpi import MPICommunicator
    return MPICommunicator(timeout=comm_timeout(environ))


def threads_per_rank(my_cpus, others_cpus):
    """CPU threads for one rank: its CPUs divided among the ranks on this machine that share them.

    ``my_cpus``: the set of CPUs this rank may run on; ``others_cpus``: those of the other ranks on
    the same machine. A launcher that binds each rank to its own cores gives disjoint sets (each
    rank uses all of its own); one that binds none gives every rank every CPU (they divide them).
    """
    sharing = 1 + sum(1 for cpus in others_cpus if set(cpus) & set(my_cpus))
    return max(1, len(my_cpus) // sharing)


def set_cpu_threads(threads, environ=None):
    """Use ``threads`` CPU threads in the kernels, unless the user chose ``NUMBA_NUM_THREADS``.

    Returns the number in force. Numba reads the variable when it is first imported; if it already
    is, its thread count is lowered in place.
    """
    environ = os.environ if environ is None else environ
    if "NUMBA_NUM_THREADS" in environ:
        return int(environ["NUMBA_NUM_THREADS"])
    environ["NUMBA_NUM_THREADS"] = str(threads)
    import sys
    if "numba" in sys.modules:
        import numba
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    return threads


class RankDropout:
    """Rank r's dropout seeds: rank 0's generator, each draw mixed with r.

    Every rank holds the same generator state as rank 0 (the one checkpoint.h5 saves), yet masks
    its own tiles with its own seeds, so a resumed run continues every rank's masks exactly.
    """

    def __init__(self, rng, rank):
        self.rng, self.rank = rng, int(rank)

    @property
    def bit_generator(self):
        return self.rng.bit_generator

    def integers(self, high):
        """The next seed in [0, high): rank 0's draw, hashed with the rank."""
        seed = int(self.rng.integers(high))
        mixed = np.random.SeedSequence([seed, self.rank]).generate_state(2, np.uint32)
        return (int(mixed[0]) << 32 | int(mixed[1])) % int(high)


class NullRunDirectory(RunDirectory):
    """The run directory as the ranks other than 0 see it: they write nothing."""

    def log(self, message):
        pass

    def clear_results(self):
        pass

    def read_config(self):
        return {}

    def write_config(self, record):
        pass

    def append_metrics(self, row):
        pass

    def truncate_metrics(self, iteration):
        pass

    def plot(self):
        pass


def resume_note(previous, ranks, batch):
    """What changes when a run of ``previous`` ranks resumes on ``ranks`` (None when they agree)."""
    if previous == ranks:
        return None
    return (f"resuming a run trained on {previous} rank(s) with {ranks}: the effective batch becomes "
            f"{ranks * batch} tiles per step ({ranks} x --batch {batch}) instead of {previous * batch}, at the "
            f"same learning rate, and the tiles from here on differ from an uninterrupted {previous}-rank run "
            f"(weights, optimiser state and iteration carry over); resume with {previous} ranks to continue exactly")


class SingleProcess:
    """One process: no ranks to talk to. Every method costs nothing and changes nothing."""

    rank, size, local_rank = 0, 1, 0
    is_root = True

    def describe(self):
        return "one process"

    def run_directory(self, path):
        """The run directory this rank writes (rank 0: the real one; the others: none)."""
        return RunDirectory(path) if self.is_root else NullRunDirectory(path)

    def for_device(self, device):
        """The communicator for a backend (NCCL for ``cuda`` on several ranks)."""
        return self

    @contextlib.contextmanager
    def agreement(self):
        """A block every rank runs; an error on any rank ends them all (rank 0 says it)."""
        yield

    def share_config(self, config):
        """Rank 0's TrainConfig, on every rank."""
        return config

    def synchronise(self, trainer):
        """Give every rank rank 0's weights, optimiser state and counters; say what a change of K changes."""
        self._note_ranks(trainer)

    def _note_ranks(self, trainer):
        note = resume_note(getattr(trainer, "resumed_ranks", self.size), self.size, trainer.config.batch)
        if note is not None:
            trainer.log(note)

    def signal_sink(self, trainer):
        """The object Ctrl-C/SIGTERM handlers mark (``stop_signal``, ``echo``)."""
        return trainer

    def loss_shares(self, labels, ignore=255):
        """Each loss term's factor: this rank's part of the term's counted pixels over all ranks."""
        return [1.0] * len(labels)

    def sum_gradients(self, trainer, loss):
        """Sum the parameters' gradients and the loss over the ranks; returns the batch's loss."""
        return loss

    def agree(self, flag):
        """Rank 0's value of a local decision (a wall-time budget), on every rank."""
        return flag


class Communicator(SingleProcess):
    """Several ranks: the exchanges of a run, over three primitives a subclass provides.

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
        from minunet.training.config import TrainConfig
        import json
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
        import json

        from minunet.model.checkpoint import generator_state, restore_generator
        from minunet.training.provenance import jsonable
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
        import sys
        resume = f"; continue from the last checkpoint: minunet train --out {self.out} --resume" if self.out else ""
        sys.stderr.write(f"minunet train: rank {self.rank} of {self.size} waited {self.timeout:g} s for the other "
                         f"ranks in {what} (a rank died or hangs; {TIMEOUT_VARIABLE} sets the limit); "
                         f"ending every rank{resume}\n")
        sys.stderr.flush()
        for cleanup in self._cleanup:
            with contextlib.suppress(Exception):
                cleanup()
        self._abort()

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
