"""Ranks on GPUs: gradients summed with NCCL through CuPy (``cupy.cuda.nccl``), set up by MPI.

Each rank drives one GPU (its rank on the machine, modulo the GPUs there). Rank 0 makes an NCCL
id and broadcasts it over MPI; the device arrays (the gradient buffer, the weights and optimiser
state at the start) then move GPU to GPU through NCCL, while the small host exchanges (settings,
pixel counts, decisions) stay on MPI. Like MPI's, every NCCL wait has a deadline: past it the
NCCL communicator is aborted and the run ends with one line.

Not exercised by the test suite, which has no GPU: it checks the import and the error without one.
"""
import json
import time

import numpy as np

from minunet.errors import UserError
from minunet.training.distributed import load_optional
from minunet.training.mpi import MPICommunicator

NAP_S = 2e-4


def load_cupy_nccl():
    """(cupy, cupy.cuda.nccl) or a UserError saying what is missing."""
    cupy, nccl = load_optional(["cupy", "cupy.cuda.nccl"], "--device cuda on several ranks sums gradients with "
                               "NCCL through CuPy, which cannot be loaded ({err}); pip install 'minunet[cuda,mpi]' "
                               "(cupy-cuda12x brings NCCL), or use --device cpu")
    if not getattr(nccl, "available", True):
        raise UserError("--device cuda on several ranks needs NCCL, which this CuPy was built without; "
                        "pip install cupy-cuda12x (its wheels include NCCL), or use --device cpu")
    return cupy, nccl


def gpu_count(cupy):
    """GPUs this process can see (0 when the driver or runtime is absent)."""
    try:
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:                     # CUDARuntimeError, or no driver at all
        return 0


def choose_gpu(local_rank):
    """(cupy, nccl, GPU index) for the rank ``local_rank`` of this machine, made current; or a UserError."""
    cupy, nccl = load_cupy_nccl()
    n_gpus = gpu_count(cupy)
    if n_gpus == 0:
        raise UserError("--device cuda: no GPU visible to this rank; check CUDA_VISIBLE_DEVICES and the driver "
                        "(nvidia-smi), or use --device cpu")
    gpu = local_rank % n_gpus
    cupy.cuda.Device(gpu).use()
    _select_numba_device(gpu)
    return cupy, nccl, gpu


class NCCLCommunicator(MPICommunicator):
    """An :class:`MPICommunicator`'s ranks, each on its own GPU, summing device arrays with NCCL.

    Made from the MPI communicator at the same point on every rank: checks CuPy, NCCL and a GPU
    everywhere (one error line from rank 0 if any rank lacks one), picks this rank's GPU, then
    creates the NCCL communicator. Device arrays go through NCCL on the current stream; NumPy
    arrays (settings, pixel counts, decisions) through MPI as before.
    """

    def __init__(self, mpi):
        self.__dict__.update(mpi.__dict__)
        with self.agreement():
            self.cupy, self.nccl, self.gpu = choose_gpu(self.local_rank)
        uid = self.nccl.get_unique_id() if self.is_root else ()
        uid = tuple(json.loads(self._broadcast_bytes(json.dumps(list(uid)).encode())))
        self.nccl_comm = self.nccl.NcclCommunicator(self.size, uid, self.rank)

    def describe(self):
        return super().describe() + f"; gradients on GPU {self.gpu} summed with NCCL {self.nccl.get_version()}"

    def for_device(self, device):
        return self

    def _nccl_type(self, buf):
        nccl = self.nccl
        types = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64,
                 np.dtype(np.int64): nccl.NCCL_INT64, np.dtype(np.uint8): nccl.NCCL_UINT8}
        return types[np.dtype(buf.dtype)]

    def _stream_wait(self, what):
        """Wait for the current stream with the run's deadline; past it, abort NCCL and end the run."""
        stream = self.cupy.cuda.get_current_stream()
        deadline = time.monotonic() + self.timeout
        while not stream.done:
            if time.monotonic() > deadline:
                self.nccl_comm.abort()
                self.fail(what)
            time.sleep(NAP_S)

    def _allreduce(self, buf, what="a sum", nap=False):
        if isinstance(buf, np.ndarray):
            return super()._allreduce(buf, what, nap)
        stream = self.cupy.cuda.get_current_stream()
        self.nccl_comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, self._nccl_type(buf), self.nccl.NCCL_SUM,
                                 stream.ptr)
        self._stream_wait(what)

    def _broadcast(self, buf, what="a broadcast from rank 0"):
        if isinstance(buf, np.ndarray):
            return super()._broadcast(buf, what)
        stream = self.cupy.cuda.get_current_stream()
        self.nccl_comm.bcast(buf.data.ptr, buf.size, self._nccl_type(buf), 0, stream.ptr)
        self._stream_wait(what)


def _select_numba_device(device):
    """Point Numba's CUDA kernels at the same GPU as CuPy (both use its primary context)."""
    try:
        from numba import cuda  # optional: numba-cuda
        cuda.select_device(device)
    except Exception:                     # Numba-CUDA missing: the CUDA backend will say so
        pass
