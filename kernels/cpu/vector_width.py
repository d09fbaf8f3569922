"""512-bit vectors for chosen kernels only: ``wide_vectors()`` called inside a Numba function.

Numba compiles for the host CPU, but LLVM's tuning for AVX-512 CPUs (Skylake-X on) prefers
256-bit vectors: its vectoriser never emits zmm registers, though they are there. That is the
right default for memory-bound loops, and wrong for the compute-bound direct convolutions, which
issue FMAs at close to the 256-bit peak and so run at half of what the cores can do. Numba's
CPU-feature override (``NUMBA_CPU_FEATURES`` with ``-prefer-256-bit``) changes every kernel of
the process; LLVM also reads the preference per function, from the function attributes
``"prefer-vector-width"`` and ``"min-legal-vector-width"``. ``wide_vectors()`` is an intrinsic
that emits no code and sets those two attributes on the LLVM function it is compiled into: call
it first thing in the body of a ``prange`` loop (the body is compiled into a function of its own)
and that loop is vectorised 512 bits wide on CPUs with AVX-512, as before elsewhere.

llvmlite's function attributes accept only LLVM's enumerated attributes, so the two string
attributes are appended by a subclass of its attribute set. Should a future llvmlite change that
class, the intrinsic does nothing (``ENABLED`` is then False) and the kernels stay correct at
256 bits; tests/test_kernels_cpu.py checks which one this build gets.
"""
import numba
from llvmlite import binding, ir
from numba import types
from numba.extending import intrinsic

try:
    from llvmlite.ir.values import FunctionAttributes as _FunctionAttributes
except ImportError:                                    # pragma: no cover - other llvmlite layout
    _FunctionAttributes = None

# The widest vectors the direct kernels may use, in bits (a preference: CPUs without AVX-512
# still get 256).
WIDTH_BITS = 512

_ATTRIBUTES = [f'"prefer-vector-width"="{WIDTH_BITS}"', f'"min-legal-vector-width"="{WIDTH_BITS}"']


if _FunctionAttributes is not None:
    class _WideFunctionAttributes(_FunctionAttributes):
        """llvmlite's attribute set plus the two string attributes (always printed)."""

        def __bool__(self):
            return True

        def _to_list(self, ret_type):
            return super()._to_list(ret_type) + _ATTRIBUTES


def _widen(function):
    """Give an llvmlite function the wide-vector attributes, keeping the ones it has; False if not possible."""
    if _FunctionAttributes is None:
        return False
    old = function.attributes
    if isinstance(old, _WideFunctionAttributes):
        return True
    try:
        new = _WideFunctionAttributes()
        for name in old:
            new.add(name)
        new.alignstack = old.alignstack
        new.personality = old.personality
        new._to_list(None)
    except Exception:                                  # pragma: no cover - llvmlite changed
        return False
    function.attributes = new
    return True


def _probe():
    """Whether this llvmlite lets ``_widen`` print the attributes (checked once, on a scratch function)."""
    try:
        module = ir.Module()
        function = ir.Function(module, ir.FunctionType(ir.VoidType(), []), "probe")
        return _widen(function) and all(a in str(function) for a in _ATTRIBUTES)
    except Exception:                                  # pragma: no cover - llvmlite changed
        return False


ENABLED = _probe()


def host_has_avx512():
    """Whether Numba compiles with AVX-512: its feature list (``NUMBA_CPU_FEATURES`` if set, else
    the host's, whatever ``NUMBA_CPU_NAME`` says, as Numba's own codegen decides)."""
    if numba.config.CPU_FEATURES is not None:
        return "+avx512f" in numba.config.CPU_FEATURES.split(",")
    try:
        return bool(binding.get_host_cpu_features().get("avx512f", False))
    except RuntimeError:                               # pragma: no cover - features unknown on this host
        return False


@intrinsic
def wide_vectors(typingctx):
    """Let LLVM vectorise the enclosing function with WIDTH_BITS-bit vectors; emits no instruction."""
    def codegen(context, builder, signature, args):
        if ENABLED:
            _widen(builder.function)
        return context.get_dummy_value()
    return types.void(), codegen
