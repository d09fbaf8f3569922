"""Developer check without a GPU: compile every kernel to PTX with the real CUDA compiler (NVVM).

    pip install nvidia-cuda-nvrtc nvidia-nvvm nvidia-cuda-runtime   # CUDA 13 wheels, no driver needed
    python -m minunet.kernels.cuda.compile_check [--cc 9.0]

The simulator runs kernels as Python, so it cannot catch what only Numba's CUDA compiler sees
(typing errors, float64 promotion in float32 kernels, micro-tiles spilled to local memory). This
runs the backend's wrappers on NumPy arrays with ``launch`` replaced by ``cuda.compile_ptx`` on
the exact argument types, and prints per kernel and dtype the local-memory bytes (0 means the
accumulators stay in registers) and the float64 instructions of float32 specialisations.
Nothing is computed; it relies on numba-cuda internals and is not part of the test suite.
"""
import argparse
import re
import types

import numba
import numpy as np
from numba import cuda


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cc", default="9.0", help="compute capability to compile for")
    cc = tuple(int(v) for v in parser.parse_args(argv).cc.split("."))
    import numba.cuda.dispatcher as dispatcher

    import minunet.kernels.cuda as kc

    from . import arrays, conv, elementwise, loss, optim, pool, upconv
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=cc)   # device functions
    arrays.available = lambda: (True, "compile check")
    arrays.array_module = lambda: np
    seen, problems = set(), []

    def compile_only(kernel, grid, block, *args):
        sig = tuple(numba.typeof(a) for a in args)
        key = (kernel.py_func.__qualname__, sig)
        if key in seen:
            return
        seen.add(key)
        ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=cc)
        local = sum(int(v) for v in re.findall(r"__local_depot\d+\[(\d+)\]", ptx))
        f64 = len(re.findall(r"\.f64", ptx)) if "float32" in str(sig) else 0
        name = kernel.py_func.__qualname__.replace(".<locals>", "")
        print(f"{name:30s} {str(sig[0]):24s} local bytes {local:4d}  f64 ops in float32 {f64}")
        if local:
            problems.append(name)

    for module in (conv, elementwise, loss, optim, pool, upconv):
        module.launch = compile_only
    rng = np.random.default_rng(0)
    for dt in (np.float32, np.float64):
        a = lambda *s: rng.standard_normal(s).astype(dt)
        x, w = a(1, 3, 10, 12), a(8, 3, 3, 3)
        y = kc.conv2d_forward(x, w, a(8), relu=True)
        kc.conv2d_forward(x, w, None)
        kc.conv2d_backward(x, w, a(*y.shape), y=y)
        kc.conv_transpose2d_forward(a(1, 3, 4, 5), a(3, 4, 2, 2), a(4))
        kc.conv_transpose2d_backward(a(1, 3, 4, 5), a(3, 4, 2, 2), a(1, 4, 8, 10))
        _, idx = kc.max_pool2d_forward(x)
        kc.max_pool2d_backward(a(1, 3, 5, 6), idx, x.shape)
        kc.relu_forward(x)
        kc.relu_backward(x, x)
        kc.dropout_forward(x, 0.5, 3)
        kc.crop_concat_forward(a(1, 2, 9, 9), a(1, 3, 5, 5))
        kc.crop_concat_backward(a(1, 5, 5, 5), (1, 2, 9, 9))
        for labels in (np.zeros((1, 4, 4), np.uint8), np.zeros((1, 4, 4), np.int64)):
            kc.softmax_cross_entropy(a(1, 2, 4, 4), labels, a(1, 4, 4))
        kc.softmax(a(1, 2, 4, 4))
        kc.sgd_step(a(10), a(10), a(10), 0.1, 0.9, 0.0)
        kc.adam_step(a(10), a(10), a(10), np.abs(a(10)), 1e-3, 0.9, 0.999, 1e-8, 1, 0.0)
    print(f"{len(seen)} kernel specialisations compiled for sm_{cc[0]}{cc[1]}; "
          + (f"local memory in: {', '.join(problems)}" if problems else "no local memory"))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
