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


@pytest.mark.parametrize("bench", ["kernels", "train-step", "predict", "data", "blockwise"])
def test_bench_help_is_click_with_defaults(bench):
    """Each benchmark's --help is the click help of `minunet bench NAME`, with its defaults shown."""
    out = minunet("bench", bench, "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"Usage: minunet bench {bench} [OPTIONS]")
    assert "[default: " in out.stdout and "--json" in out.stdout


def test_bench_options_reach_the_benchmark(monkeypatch):
    """The click options become the benchmark's own argv, flags and values alike."""
    from click.testing import CliRunner

    from minunet.benchmarks import data
    from minunet.cli.bench import bench
    seen = []
    monkeypatch.setattr(data, "main", lambda argv: seen.append(argv) or 0)
    result = CliRunner().invoke(bench, ["data", "--repeat", "2", "--workers", "0"])
    assert result.exit_code == 0, result.output
    argv = seen[0]
    assert argv[argv.index("--repeat") + 1] == "2" and argv[argv.index("--workers") + 1] == "0"
    assert "--json" not in argv                               # not given, so not forwarded
