"""`minunet train` on the command line: a run, resume, signals, and one-line errors."""
import csv
import os
import signal
import subprocess
import sys
import time

import pytest

from minunet.model.checkpoint import load_checkpoint
from tests.backends import fast_device
from tests.cli_runner import run
from tests.test_train import one_thread, write_data  # noqa: F401  (one_thread: an autouse fixture)

TINY = ["--device", fast_device(), "--depth", "3", "--width", "4", "--tile", "92", "--val-slices", "4"]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("data") / "tiny.h5")


def test_help_explains_the_cpu_defaults(capsys):
    code, out, _ = run(["train", "--help"], capsys)
    assert code == 0
    for words in ("--width 16", "40-minute", "--resume", "--deep-supervision", "--aux-weights", "--pad"):
        assert words in " ".join(out.split()), words


def test_train_and_resume(data_file, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, stderr = run(["train", "--data", str(data_file), "--out", str(out), "--iterations", "4",
                                "--val-every", "2", *TINY], capsys)
    assert code == 0, stderr
    assert "Done" in stdout and "iteration 4" in stderr and "\r" not in stderr      # no bar without a TTY
    code, _, stderr = run(["train", "--data", str(data_file), "--out", str(out), "--iterations", "4", *TINY], capsys)
    assert code == 2 and "already holds a run" in stderr and "--resume" in stderr and stderr.count("\n") == 1
    code, _, stderr = run(["train", "--out", str(out), "--resume", "--iterations", "6", "--quiet"], capsys)
    assert code == 0 and stderr == ""
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4, 5, 6]          # a loss row each step
    assert [int(r["iteration"]) for r in rows if r["val_rand_error"]] == [2, 4, 6]
    assert load_checkpoint(out / "checkpoint.h5").iteration == 6
    code, _, stderr = run(["train", "--out", str(out), "--resume", "--iterations", "8", "--width", "8"], capsys)
    assert code == 2 and "--width 8" in stderr and "--width 4" in stderr


def test_deep_supervision_options(data_file, tmp_path, capsys):
    argv = ["train", "--data", str(data_file), "--out", str(tmp_path / "r"), "--iterations", "2", "-q",
            "--device", fast_device(), "--depth", "3", "--width", "2", "--tile", "92", "--val-slices", "none",
            "--up-kernel", "4", "--pad", "zero", "--deep-supervision", "--aux-weights", "0.3"]
    code, _, stderr = run(argv, capsys)
    assert code == 0, stderr
    ckpt = load_checkpoint(tmp_path / "r" / "checkpoint.h5")
    assert ckpt.model["up_kernel"] == 4 and ckpt.model["deep_supervision"] and ckpt.extra["config"]["pad"] == "zero"
    code, _, stderr = run(argv[:-1] + ["0.3,0.2"] + ["--out", str(tmp_path / "s")], capsys)
    assert code == 2 and "--aux-weights" in stderr


@pytest.mark.parametrize("make_argv, message", [
    (lambda d, t: ["--out", str(t / "r"), "--data", str(t / "missing.h5")], "missing.h5"),
    (lambda d, t: ["--out", str(t / "r"), "--data", str(t / "bad.h5")], "bad.h5"),
    (lambda d, t: ["--out", str(t / "r"), "--data", str(d), "--tile", "90"], "88 or 92"),
    (lambda d, t: ["--out", str(t / "r"), "--data", str(d), "--val-slices", "2-40"], "--val-slices"),
    (lambda d, t: ["--out", str(t), "--resume"], "no checkpoint.h5"),
    (lambda d, t: ["--resume"], "--out"),
    (lambda d, t: ["--out", str(t / "r")], "--data"),
])
def test_one_line_errors(data_file, tmp_path, capsys, make_argv, message):
    (tmp_path / "bad.h5").write_text("not HDF5\n")
    argv = ["train", "--iterations", "1", *TINY]
    code, _, stderr = run(argv + make_argv(data_file, tmp_path), capsys)
    assert code == 2 and stderr.startswith("Error: ") and stderr.count("\n") == 1 and message in stderr, stderr


def test_tile_too_large_names_one_that_fits(data_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("minunet.training.memory.memory_budget", lambda device: 64 << 20)
    code, _, stderr = run(["train", "--data", str(data_file), "--out", str(tmp_path / "r"), "--iterations", "1",
                           "--depth", "3", "--width", "16", "--tile", "1500", "--device", fast_device()], capsys)
    assert code == 2 and "GiB" in stderr and "use --tile" in stderr and stderr.count("\n") == 1, stderr


def test_cuda_without_gpu(data_file, tmp_path, capsys):
    from minunet.engine.devices import resolve_device
    if resolve_device("auto") == "cuda":
        pytest.skip("a GPU is usable here")
    code, _, stderr = run(["train", "--data", str(data_file), "--out", str(tmp_path / "r"), "--device", "cuda"],
                          capsys)
    assert code == 2 and "--device cuda" in stderr and stderr.count("\n") == 1


def test_progress_line_shows_rate_and_eta(capsys):
    """The rate counts from the end of the first step (never 1e9 it/s), the line has the ETA."""
    from types import SimpleNamespace

    from minunet.cli.progress import Progress
    from minunet.cli.train import TrainProgress
    progress = Progress("iteration", log_every_s=0.0)
    show = TrainProgress(progress)
    trainer = SimpleNamespace(iteration=1, config=SimpleNamespace(iterations=10, minutes=None), elapsed=lambda: 1.0)
    show(trainer, 0.7)
    time.sleep(0.12)
    trainer.iteration = 5
    show(trainer, 0.5)
    progress.close()
    err = capsys.readouterr().err
    first, last = err.splitlines()[0], err.splitlines()[-1]
    assert "iteration 1/10" in first and "it/s" not in first
    assert "iteration 5/10" in last and "ETA" in last and "loss" in last
    rate = float(last.split(" it/s")[0].split()[-1])
    assert 4 / 0.5 < rate < 4 / 0.12 + 1


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_checkpoints_and_exits(data_file, tmp_path, sig, status):
    out = tmp_path / "run"
    env = dict(os.environ, NUMBA_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "minunet.cli.main", "train", "--data", str(data_file),
                             "--out", str(out), "--iterations", "1000000", "--val-every", "1000000", *TINY],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "training at" not in _read(out / "train.log"):
            time.sleep(0.1)
        time.sleep(0.5)                           # some steps
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == status, stderr
    assert f"--out {out} --resume" in stderr and "Traceback" not in stderr
    assert load_checkpoint(out / "checkpoint.h5").iteration >= 1


def _read(path):
    try:
        return path.read_text()
    except OSError:
        return ""
