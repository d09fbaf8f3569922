"""benchmarks/gpu_check.sh and its one-process half without a GPU: one line, at once; the summary's lines."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minunet.benchmarks.gpu_check import summary_lines
from minunet.kernels import cuda

ROOT = Path(__file__).resolve().parents[1]


def _has_nvidia_smi_gpu():
    smi = shutil.which("nvidia-smi")
    return bool(smi) and subprocess.run([smi, "-L"], capture_output=True).returncode == 0


@pytest.mark.skipif(_has_nvidia_smi_gpu(), reason="a GPU is present: the script would run its checks")
def test_script_without_gpu_says_so_in_one_line(tmp_path):
    t0 = time.perf_counter()
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                         env=dict(os.environ, OUT=str(tmp_path / "out")), timeout=60)
    assert time.perf_counter() - t0 < 10
    assert out.returncode == 2
    lines = (out.stdout + out.stderr).strip().splitlines()
    assert len(lines) == 1 and "no GPU" in lines[0], lines
    assert not (tmp_path / "out").exists()                     # nothing written


@pytest.mark.skipif(cuda.available()[0], reason="a GPU is present")
def test_one_process_half_without_gpu_says_so_in_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "minunet.benchmarks.gpu_check", "--json", str(tmp_path / "b.json")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    lines = (out.stdout + out.stderr).strip().splitlines()
    assert len(lines) == 1 and "no GPU" in lines[0], lines
    assert not (tmp_path / "b.json").exists()


def test_summary_lines_name_every_figure_and_its_target():
    result = dict(
        step=dict(minunet_step_s=0.05, torch_step_s=0.04, step_ratio=0.8, minunet_forward_s=0.02,
                  torch_forward_s=0.015, minunet_peak_mb=9000.0, torch_peak_mb=7000.0, minunet_first_step_s=40.0),
        predict=dict(predict_s=0.02),
        kernels=dict(summary={"N1 conv2d geomean ratio": 1.25}, worst_rel_err=3e-6),
        resources=dict(kernels=[dict(kernel="igemm 128x128x8/8x8", registers=175, local_bytes=0),
                                dict(kernel="_relu", registers=28, local_bytes=0)],
                       host_us_per_call={"relu_forward (1 launch)": 12.5}))
    text = "\n".join(summary_lines(result))
    for expected in ("throughput ratio 0.80 (target >= 0.7)", "minunet 9000, pytorch 7000", "20.0 (target < 25)",
                     "N1 conv2d geomean ratio: 1.25 (throughput ratio 0.80, target >= 0.8)", "3.0e-06",
                     "most registers 175 (igemm 128x128x8/8x8), local memory in: none", "relu_forward (1 launch): 12.5"):
        assert expected in text, expected
    assert summary_lines({}) == []
