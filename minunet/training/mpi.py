"""The ranks of ``mpiexec``/``srun`` talking through mpi4py (``pip install 'minunet[mpi]'``).

Every collective is non-blocking and waited for with a deadline, so a rank that died or hangs
ends the run (one line, then ``MPI_Abort``) instead of blocking it forever. Buffers are NumPy
arrays; nothing is pickled (mpi4py's lower-case methods are not used).
"""
import os
import time

import numpy as np

from minunet.training.collective import Communicator
from minunet.training.distributed import load_optional, set_cpu_threads, threads_per_rank

NAP_S = 2e-4                        # between polls while a rank waits for slower ones


def _mpi():
    """mpi4py's MPI module, or a UserError saying how to install it."""
    (MPI,) = load_optional(["mpi4py.MPI"], "minunet train was started by an MPI launcher but mpi4py cannot be "
                           "loaded ({err}); pip install 'minunet[mpi]' (mpi4py and MPICH), or mpi4py for your "
                           "cluster's MPI (docs/scaling.md)")
    return MPI


class MPICommunicator(Communicator):
    """The ranks of MPI_COMM_WORLD; rank 0 is the root. Divides the machine's CPUs among its ranks."""

    def __init__(self, timeout):
        MPI = _mpi()
        self.MPI, self.world = MPI, MPI.COMM_WORLD
        super().__init__(self.world.Get_rank(), self.world.Get_size(), timeout)
        self.local = self.world.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = self.local.Get_rank(), self.local.Get_size()
        self.threads = set_cpu_threads(self._threads())

    def _threads(self):
        """This rank's share of the CPUs it may use, among the ranks on this machine."""
        n = os.cpu_count() or 1
        mine = np.zeros(n, np.uint8)
        mine[sorted(c for c in os.sched_getaffinity(0) if c < n)] = 1
        everyone = np.empty((self.local_size, n), np.uint8)
        self._wait(self.local.Iallgather(mine, everyone), "the start", nap=NAP_S)
        cpus = [set(np.flatnonzero(row).tolist()) for row in everyone]
        return threads_per_rank(cpus[self.local_rank], cpus[:self.local_rank] + cpus[self.local_rank + 1:])

    def describe(self):
        library = " ".join(self.MPI.Get_library_version().split("\n")[0].split())
        return (f"{self.size} ranks over MPI ({library}), {self.local_size} on this machine, "
                f"{self.threads} CPU thread(s) each")

    def for_device(self, device):
        if device != "cuda":
            return self
        from minunet.training.nccl import NCCLCommunicator  # cycle: nccl.py subclasses MPICommunicator
        return NCCLCommunicator(self)

    # --------------------------------------------------------------- the primitives

    def _wait(self, request, what, nap=0.0):
        """Poll a request until it completes; past the deadline, :meth:`fail`.

        While data moves the poll spins (MPICH progresses a transfer only inside MPI calls); while
        ranks wait for a slower one it naps, leaving the cores to the ranks still computing.
        """
        deadline = time.monotonic() + self.timeout
        while not request.Test():
            if time.monotonic() > deadline:
                self.fail(what)
            if nap:
                time.sleep(nap)

    def _allreduce(self, buf, what="a sum", nap=False):
        self._wait(self.world.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM), what, nap=NAP_S if nap else 0.0)

    def _broadcast(self, buf, what="a broadcast from rank 0"):
        self._wait(self.world.Ibcast(buf, root=0), what, nap=NAP_S)

    def _allgather_bytes(self, data):
        buf = np.zeros(self.MESSAGE_BYTES, np.uint8)
        buf[:len(data)] = np.frombuffer(data, np.uint8)
        out = np.empty((self.size, self.MESSAGE_BYTES), np.uint8)
        self._wait(self.world.Iallgather(buf, out), "the start", nap=NAP_S)
        return [row.tobytes().rstrip(b"\0") for row in out]

    def _arrive(self, what):
        self._wait(self.world.Ibarrier(), what, nap=NAP_S)

    def _abort(self):
        self.world.Abort(1)
