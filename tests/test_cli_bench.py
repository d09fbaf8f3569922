"""``minunet bench``: the subcommands reach the benchmark scripts; --device cuda without a GPU is one line."""
import subprocess
import sys

import pytest

from minunet.kernels import cuda


def minunet(*args):
    return subprocess.run([sys.executable, "-m", "minunet.cli.main", *args], capture_output=True, text=True)


def test_bench_help_lists_the_benchmarks():
    out = minunet("bench", "--help")
    assert out.returncode == 0
    for name in ("kernels", "train-step", "predict", "data"):
        assert name in out.stdout


@pytest.mark.skipif(cuda.available()[0], reason="a GPU is present: the CUDA benchmarks would run")
@pytest.mark.parametrize("bench", ["kernels", "train-step", "predict"])
def test_cuda_benchmarks_explain_a_missing_gpu(bench):
    out = minunet("bench", bench, "--device", "cuda")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs a CUDA GPU" in lines[0] and "minunet[cuda]" in lines[0], out.stderr
