"""Which kernel computes each 3x3 convolution, and the block sizes the kernels work in: one object.

Every threshold is a measured crossover between two paths on one machine (``MEASURED_ON``; the
figures and the commands are in docs/performance.md), so they live together, and a test that
must force a path replaces the whole object for its duration (``use``) instead of editing module
globals. Nothing here changes results beyond float rounding: every path computes the same
convolution, and the tests run each one against the float64 reference.
"""
import contextlib
import dataclasses
import threading
from types import MappingProxyType

MEASURED_ON = ("Intel Xeon (Sapphire Rapids, KVM guest), AVX-512 with AVX512-BF16 and AMX, "
               "2 cores, 2 MB L2 per core; NumPy 2.4, Numba 0.68, scipy-openblas32 0.3.34")



def _frozen(mapping):
    """A read-only mapping as a dataclass default (a fresh view each time)."""
    return dataclasses.field(default_factory=lambda: MappingProxyType(dict(mapping)))


@dataclasses.dataclass(frozen=True)
class Dispatch:
    """The CPU backend's dispatch thresholds and block sizes (see ``conv._path``)."""

    # Direct register-blocked kernels (direct.py), per direction, for C x K up to direct_max:
    # with few channels each GEMM of the other paths has a short contraction and re-reads its
    # accumulator. The forward and the input gradient leave for Winograd on big layers
    # (C x K x 2x2-tiles above direct_max_work), where it does 2.25-4x fewer multiplications.
    direct_max: MappingProxyType = _frozen({"forward": 128 * 256, "weight_grad": 64 * 64, "input_grad": 128 * 256})
    direct_max_work: int = 3 * 10 ** 7
    # Outputs of at most this many pixels (the bottom layers) go direct at any channel count where
    # Winograd does not apply: the GEMMs' blocks are too short there. The input gradient only up to
    # direct_max_small_input_grad channels (beyond, the GEMMs win again).
    direct_max_pixels: MappingProxyType = _frozen({"forward": 32 * 32, "weight_grad": 0, "input_grad": 32 * 32})
    direct_max_small_input_grad: int = 256 * 512
    # A backward without input gradient from at most this many input channels (the first layer)
    # reads gy and the ReLU mask directly instead of padding gy first.
    few_inputs_no_gx: int = 4

    # Winograd F(2x2, 3x3) (winograd.py): at least this many channels in and out and output tiles
    # per image (fewer: short GEMMs, the transforms dominate); the weight gradient also needs
    # C x K <= max_filter_per_tile x tiles (each worker re-reads its 16 x K x C sum per block).
    winograd_min_channels: int = 64
    winograd_min_tiles: MappingProxyType = _frozen({"forward": 700, "input_grad": 700, "weight_grad": 500})
    winograd_max_filter_per_tile: int = 512
    # Winograd F(4x4, 3x3) (winograd4.py) takes the forward and the input gradient wherever
    # Winograd runs: 2.25 instead of 4 multiplications per output and channel pair, and the
    # transformed input 2.25x the input's size instead of 4x. Its float32 error, 1e-6 of the
    # terms' scale, is 20x inside the tolerance; False keeps F(2x2, 3x3) everywhere.
    winograd4: bool = True
    # The forward from winograd_min_channels in and out goes to F(4x4, 3x3) on images of at least
    # winograd4_min_tiles 4x4 tiles (it beats the direct kernel from 64 channels at 64 x 64
    # pixels), and on smaller images to F(2x2, 3x3) from winograd_small_image_min_filter = C x K
    # (the 28-32-pixel bottom layers from 256 x 256 channels: short GEMMs, but 2.25x fewer
    # multiplications than the direct kernel's). With winograd4_input_grad the input gradient
    # follows the same F(4x4, 3x3) rule where the weight gradient's path pads gy anyway.
    winograd4_min_tiles: int = 150
    winograd_small_image_min_filter: int = 256 * 256
    winograd4_input_grad: bool = True

    # Block sizes. GEMM path: bytes of one block's operands (input window and accumulator).
    gemm_block_bytes: int = 1 << 23
    # Winograd: tiles per block (at least [0], at most [1]), otherwise as many as keep a worker's
    # transformed tiles within winograd_scratch_bytes.
    winograd_block_tiles: tuple = (256, 2048)
    winograd_scratch_bytes: int = 1 << 24
    # Direct weight gradient: bytes of the input rows one task reads (they stay in L2), and the
    # products each float32 lane sums before its total moves to float64.
    weight_grad_block_bytes: int = 1 << 19
    flush_products: int = 256

    def replace(self, **changes):
        """A copy with some fields changed (dicts become read-only views)."""
        changes = {k: MappingProxyType(dict(v)) if isinstance(v, dict) else v for k, v in changes.items()}
        return dataclasses.replace(self, **changes)


DEFAULT = Dispatch()
_active = DEFAULT
_lock = threading.Lock()


def current():
    """The Dispatch in force."""
    return _active


def install(dispatch):
    """Put ``dispatch`` in force for the whole process; returns the one it replaces."""
    global _active
    with _lock:
        previous, _active = _active, dispatch
    return previous


@contextlib.contextmanager
def use(**changes):
    """``with use(direct_max=...):`` runs the block with those fields changed, then restores."""
    previous = install(current().replace(**changes))
    try:
        yield current()
    finally:
        install(previous)
