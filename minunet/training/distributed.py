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

Each rank scales its loss terms by its share of the batch's counted pixels, so K ranks at
``--batch B`` compute the gradient of one rank at ``--batch K*B`` (to float32 rounding of the sum's
order). A collective that waits longer than ``MINUNET_COMM_TIMEOUT`` seconds (a rank died or hangs)
ends every rank with one line.

Implementations of the interface: :class:`SingleProcess` (one process; every method a no-op), and
for several ranks :class:`minunet.training.collective.Communicator` (the exchanges) over MPI through
mpi4py (:mod:`minunet.training.mpi`) or NCCL through CuPy for ``--device cuda``
(:mod:`minunet.training.nccl`). This module also holds what the trainer and the sampler need
without MPI: the launch's size, the CPU threads per rank, each rank's dropout seeds.
"""
import contextlib
import importlib
import os
import sys

import numpy as np

from minunet.errors import UserError
from minunet.training.rundir import RunDirectory

# what a launcher sets in each rank's environment: the number of ranks (MPICH/Intel MPI, Open MPI, Slurm's srun)
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS")
DEFAULT_TIMEOUT_S = 600.0            # rank 0 validates meanwhile: 6 ISBI slices at width 64 take ~20 s on 2 cores
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
    launched = launched_ranks(environ)
    if launched <= 1:
        return SingleProcess()
    from minunet.training.mpi import MPICommunicator  # cycle: mpi.py imports this module
    comm = MPICommunicator(timeout=comm_timeout(environ))
    if comm.size != launched:       # each rank would train alone, all into one run directory
        raise UserError(f"the launcher started {launched} ranks but MPI sees {comm.size}: mpi4py uses another MPI "
                        f"than this mpiexec ({comm.describe()}); launch with the mpiexec of that MPI, or "
                        f"reinstall mpi4py for yours (docs/scaling.md)")
    return comm


def load_optional(modules, need):
    """The modules named (dotted), or a UserError: ``need`` says what wants them and how to install
    them (``{err}`` in it is replaced by the import error)."""
    try:
        return [importlib.import_module(name) for name in modules]
    except ImportError as err:
        raise UserError(need.format(err=err)) from None


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
    if "numba" in sys.modules:
        import numba  # only if already imported: Numba reads NUMBA_NUM_THREADS on import
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
    """The run directory as the ranks other than 0 see it: they write nothing and lock nothing."""

    def check_writable(self):
        pass

    def holds_a_run(self):
        return False

    def acquire(self):
        pass

    def release(self):
        pass

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
