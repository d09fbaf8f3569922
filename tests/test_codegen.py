"""The CPU kernels on other CPUs' code generation: the CPU backend's path tests, compiled by Numba
for an AVX2-only Intel (Haswell) and for AMD Zen 4, in child processes with their own Numba cache.

LLVM picks vector widths and instruction mixes per CPU model (Zen 4/5 use 512-bit vectors by
default, Intel Xeons 256-bit; Haswell has no AVX-512 at all, and the direct kernels then use
32-byte vectors), so a kernel that is right here can be wrong, or a test can assume this CPU's
code, elsewhere. A target whose instructions this machine cannot run is skipped.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ["tests/test_kernels_cpu.py", "tests/test_kernels_cpu_inference.py"]
HASWELL = ("+64bit,+avx,+avx2,+fma,+sse,+sse2,+sse3,+ssse3,+sse4.1,+sse4.2,+bmi,+bmi2,+f16c,+popcnt,+lzcnt,"
           "+movbe,+cx16,+fxsr,+xsave,+cmov,+mmx,-avx512f,-avx512bw,-avx512dq,-avx512vl,-avx512cd")


def _host_features():
    from llvmlite import binding
    return binding.get_host_cpu_features()


@pytest.mark.gradcheck
@pytest.mark.parametrize("cpu", ["haswell", "znver4"])
def test_cpu_kernels_under_another_cpus_code_generation(cpu, tmp_path, request):
    import platform
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("x86-64 code generation only")
    features = _host_features()
    if cpu == "haswell":
        if not (features.get("avx2") and features.get("fma")):
            pytest.skip("this CPU cannot run AVX2 code")
        flags = HASWELL
    else:
        if not all(features.get(f) for f in ("avx512f", "avx512bw", "avx512dq", "avx512vl")):
            pytest.skip("this CPU cannot run Zen 4's AVX-512 code")
        flags = features.flatten()                 # this CPU's instructions, Zen 4's tuning
    env = dict(os.environ, NUMBA_CPU_NAME=cpu, NUMBA_CPU_FEATURES=flags, NUMBA_CACHE_DIR=str(tmp_path))
    cmd = [sys.executable, "-m", "pytest", *TESTS, "--gradcheck", "-q", "-x", "-p", "no:cacheprovider"]
    seed = request.config.getoption("--seed")
    if seed is not None:
        cmd += ["--seed", str(seed)]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    tail = (result.stdout + result.stderr)[-6000:]
    assert result.returncode == 0, f"CPU kernels under {cpu} code generation:\n{tail}"
