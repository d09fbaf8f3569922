"""Resource report of every CUDA kernel: registers, spills, shared and local memory, instruction mix.

    python -m minunet.kernels.cuda.compile_check [--cc 9.0] [--json FILE]     # no GPU needed
    python -m minunet.kernels.cuda.compile_check --device                    # the GPU's own figures

The backend's wrappers run on small NumPy arrays with ``launch`` replaced by a recorder, which
collects each kernel with the exact argument types of its launches (every specialisation the
contract uses, float32 and float64). Without ``--device`` each is compiled to PTX by Numba's CUDA
compiler (NVVM; the ``nvidia-nvvm`` and ``nvidia-cuda-nvrtc`` wheels, no driver) and assembled by
``ptxas -v`` for the compute capability given: registers per thread, spill bytes, stack frame and
shared memory; where ``cuobjdump`` and ``nvdisasm`` are found (the ``nvidia-cuda-cuobjdump`` and
``nvidia-cuda-nvdisasm`` wheels, or a CUDA toolkit), the innermost loop that holds FFMAs is read
from the machine code, and its FFMA per shared-memory load instruction reported. With
``--device`` the kernels are compiled for the GPU present and Numba's compiled-kernel attributes
are reported instead. Exit status 1 if a kernel spills or uses a stack frame. Nothing is computed.
"""
import argparse
import contextlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import tempfile
import types
from pathlib import Path

import numba
import numba.cuda.dispatcher as dispatcher
import numpy as np
from numba import cuda

import minunet.kernels.cuda as kc

from . import arrays, conv, elementwise, loss, optim, pool, upconv


def specialisations():
    """[(name, kernel, argument types)] of every kernel launch the contract makes, float32 and float64."""
    seen = {}

    def record(kernel, grid, block, *args):
        sig = tuple(numba.typeof(a) for a in args)
        name = kernel.py_func.__qualname__.replace(".<locals>", "").split(".")[-1]
        tile = getattr(kernel, "tile", None)
        name += f" {tile.bm}x{tile.bn}x{tile.bk}/{tile.tm}x{tile.tn}" if tile else ""
        seen.setdefault((id(kernel), sig), (name, kernel, sig))

    modules = [m for m in (conv, elementwise, loss, optim, pool, upconv) if hasattr(m, "launch")]
    with contextlib.ExitStack() as undo:
        for module, attr, value in [(arrays, "available", lambda: (True, "resource report")),
                                    (arrays, "array_module", lambda: np),
                                    (conv, "sm_count", lambda: conv.SM_COUNT)] + [(m, "launch", record) for m in modules]:
            if hasattr(module, attr):
                undo.callback(setattr, module, attr, getattr(module, attr))
                setattr(module, attr, value)
        exercise(kc)
    return list(seen.values())


def exercise(kc, asarray=lambda a: a):
    """Call every op of the contract on small arrays (made by ``asarray``), in both dtypes and with
    the network's variants: every kernel specialisation the contract launches."""
    rng = np.random.default_rng(0)
    for dt in (np.float32, np.float64):
        a = lambda *s: asarray(rng.standard_normal(s).astype(dt))
        x, w = a(1, 3, 10, 12), a(8, 3, 3, 3)
        y = kc.conv2d_forward(x, w, a(8), relu=True)
        x96, w96 = a(1, 96, 10, 12), a(96, 96, 3, 3)                  # the wide tile, split-K
        kc.conv2d_backward(x96, w96, kc.conv2d_forward(x96, w96, a(96), relu=True))
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
            kc.softmax_cross_entropy(a(1, 2, 4, 4), asarray(labels), a(1, 4, 4))
        kc.softmax(a(1, 2, 4, 4))
        kc.sgd_step(a(10), a(10), a(10), 0.1, 0.9, 0.0)
        kc.adam_step(a(10), a(10), a(10), abs(a(10)), 1e-3, 0.9, 0.999, 1e-8, 1, 0.0)


def _tool(name):
    """A CUDA tool from the nvidia-* wheels (matching the NVVM wheel), else from PATH or CUDA_HOME."""
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations if spec else []):
        for path in sorted(Path(root).glob(f"cu*/bin/{name}"), reverse=True):
            return str(path)
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    return shutil.which(name) or (str(Path(home, "bin", name)) if Path(home, "bin", name).exists() else None)


def innermost_ffma_loop(sass):
    """(FFMA, shared loads) of the innermost loop of the machine code that contains FFMAs (DFMAs)."""
    lines = []
    for line in sass.splitlines():
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);", line)
        if m:
            lines.append((int(m.group(1), 16), m.group(3), m.group(4)))
    best = None
    for addr, op, operand in lines:
        target = re.match(r"\s*(0x[0-9a-f]+)", operand) if op.startswith("BRA") else None
        if target and int(target.group(1), 16) < addr:
            body = [o for a, o, _ in lines if int(target.group(1), 16) <= a <= addr]
            fma = sum(o.startswith(("FFMA", "DFMA")) for o in body)
            if fma and (best is None or len(body) < best[0]):
                best = (len(body), fma, sum(o.startswith("LDS") for o in body))
    return (best[1], best[2]) if best else (0, 0)


def offline_report(cc=(9, 0), sass=True):
    """Per kernel specialisation: ptxas figures (and the inner loop's FFMA / LDS where a disassembler is found)."""
    ptxas, cuobjdump = _tool("ptxas"), _tool("cuobjdump")
    nvdisasm = _tool("nvdisasm")
    if ptxas is None:
        raise SystemExit("compile_check: ptxas not found (pip install nvidia-cuda-nvcc, or a CUDA toolkit)")
    env = dict(os.environ, PATH=os.pathsep.join(filter(None, [nvdisasm and str(Path(nvdisasm).parent),
                                                             os.environ.get("PATH")])))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, kernel, sig in specialisations():
            ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=cc)
            Path(tmp, "k.ptx").write_text(ptx)
            out = subprocess.run([ptxas, "-v", f"-arch=sm_{cc[0]}{cc[1]}", "k.ptx", "-o", "k.cubin"], cwd=tmp,
                                 capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"compile_check: ptxas failed on {name}: {out.stderr.strip()[-500:]}")
            info = out.stderr
            row = dict(kernel=name, dtype=_dtype(sig), registers=_int(r"Used (\d+) registers", info),
                       spill_bytes=_int(r"(\d+) bytes spill stores", info) + _int(r"(\d+) bytes spill loads", info),
                       stack_bytes=_int(r"(\d+) bytes stack frame", info), shared_bytes=_int(r"(\d+) bytes smem", info))
            if sass and cuobjdump and nvdisasm:
                code = subprocess.run([cuobjdump, "-sass", "k.cubin"], cwd=tmp, env=env, capture_output=True,
                                      text=True).stdout
                fma, lds = innermost_ffma_loop(code)
                if fma:
                    row.update(loop_ffma=fma, loop_shared_loads=lds)
            rows.append(row)
    return rows


def device_report():
    """Per kernel specialisation, compiled for the GPU present: Numba's compiled-kernel attributes."""
    rows = []
    for name, kernel, sig in specialisations():
        kernel.compile(sig)
        rows.append(dict(kernel=name, dtype=_dtype(sig), registers=kernel.get_regs_per_thread(sig),
                         local_bytes=kernel.get_local_mem_per_thread(sig),
                         shared_bytes=kernel.get_shared_mem_per_block(sig),
                         max_threads=kernel.get_max_threads_per_block(sig)))
    return rows


def _int(pattern, text):
    m = re.search(pattern, text)
    return int(m.group(1)) if m else 0


def _dtype(sig):
    floats = {str(getattr(t, "dtype", t)) for t in sig} & {"float32", "float64"}
    return "float64" if "float64" in floats and "float32" not in floats else (
        "float32" if "float32" in floats else "-")


def format_report(rows):
    """The rows as a table (one line per kernel specialisation)."""
    keys = [k for k in ("registers", "spill_bytes", "stack_bytes", "local_bytes", "shared_bytes", "max_threads",
                        "loop_ffma", "loop_shared_loads") if any(k in r for r in rows)]
    lines = [f"{'kernel':32s} {'dtype':8s} " + " ".join(f"{k:>17s}" for k in keys)]
    for r in rows:
        lines.append(f"{r['kernel'][:32]:32s} {r['dtype']:8s} " + " ".join(f"{r.get(k, ''):>17}" for k in keys))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cc", default="9.0", help="compute capability to compile for (offline)")
    parser.add_argument("--device", action="store_true", help="compile for the GPU present and report its figures")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    if args.device:
        rows = device_report()
    else:
        cc = tuple(int(v) for v in args.cc.split("."))
        dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=cc)   # device functions
        rows = offline_report(cc)
    print(format_report(rows))
    bad = [r["kernel"] for r in rows if r.get("spill_bytes") or r.get("stack_bytes") or r.get("local_bytes")]
    print(f"{len(rows)} kernel specialisations; " + (f"local memory in: {', '.join(bad)}" if bad else "no spills, no local memory"))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
