"""Training processes: killed, signalled, run twice at once, diverging, resumed with bad settings.

The SIGKILL test kills a run three times (at random moments and in the middle of a checkpoint
write), then checks that no process of the run survives, that every checkpoint left loads, and
that resuming to the end gives bitwise the weights and optimiser state of a run never killed.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from minunet.model.checkpoint import load_checkpoint
from minunet.training import config as C
from minunet.training import trainer as T
from tests.backends import fast_device
from tests.cli_runner import run
from tests.hostile import ROOT, refused
from tests.test_train import config, write_data

SMALL = ["--device", fast_device(), "--depth", "3", "--width", "4", "--tile", "92", "--val-slices", "4"]
ENV = dict(os.environ, NUMBA_NUM_THREADS="1", PYTHONPATH=str(ROOT))
# checkpoint writes slowed down (2 ms per HDF5 write call), so that a kill can land inside one
SLOW_WRITES = ("import sys, time, minunet.files.reserved as r; w = r.ReservedFile.write; "
               "r.ReservedFile.write = lambda self, b: (time.sleep(0.002), w(self, b))[1]; "
               "from minunet.cli.main import main; main(sys.argv[1:])")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("data") / "tiny.h5")


def start(args, code=None):
    """A training in a subprocess (``code``: a ``python -c`` runner instead of the plain CLI)."""
    runner = ["-c", code] if code else ["-m", "minunet.cli.main"]
    return subprocess.Popen([sys.executable, *runner, "train", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)


def wait_for(predicate, timeout=90.0, every=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False


def log_says(out, *words):
    try:
        text = (out / "train.log").read_text()
    except OSError:
        return False
    return any(w in text for w in words)


def descendants(pid):
    """The live processes below ``pid`` (from /proc)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if fields[0] != "Z":
                    parents.setdefault(int(fields[1]), []).append(int(entry))
            except OSError:
                pass
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigkill_leaves_nothing_running_and_resumes_bitwise(data_file, tmp_path, rng):
    budget = ["--iterations", "12", "--val-every", "2", "--workers", "1", "-q", *SMALL]
    reference = start(["--data", data_file, "--out", tmp_path / "a", *budget])
    assert reference.wait(timeout=300) == 0, reference.stderr.read()

    out = tmp_path / "b"
    for kill in ("random", "checkpoint write", "random"):
        resume = (out / "checkpoint.h5").is_file()
        proc = start(["--out", out, "--resume", *budget[:2], "-q"] if resume else
                     ["--data", data_file, "--out", out, *budget], SLOW_WRITES)
        assert wait_for(lambda: log_says(out, "training at", "resuming at") or proc.poll() is not None)
        assert wait_for(lambda: descendants(proc.pid) or proc.poll() is not None)     # the sampling worker
        if kill == "checkpoint write":
            wait_for(lambda: any(".checkpoint.h5.tmp-" in n for n in os.listdir(out)), timeout=30, every=0.001)
        else:
            time.sleep(float(rng.uniform(0.0, 1.5)))
        family = descendants(proc.pid)
        proc.kill()
        proc.wait(timeout=30)
        assert family, "the run had no sampling worker"
        assert wait_for(lambda: not any(alive(p) for p in family), timeout=15), \
            f"processes of the killed run survive: {[p for p in family if alive(p)]}"
        if (out / "checkpoint.h5").is_file():
            load_checkpoint(out / "checkpoint.h5")                  # loads, checksums verified

    final = start(["--out", out, "--resume", "--iterations", "12", "-q"] if (out / "checkpoint.h5").is_file()
                  else ["--data", data_file, "--out", out, *budget])
    assert final.wait(timeout=300) == 0, final.stderr.read()
    assert not [n for n in os.listdir(out) if ".tmp-" in n]          # stale temporaries were removed
    a, b = load_checkpoint(tmp_path / "a" / "checkpoint.h5"), load_checkpoint(out / "checkpoint.h5")
    assert a.iteration == b.iteration == 12
    for name in a.params:
        assert np.array_equal(a.params[name], b.params[name]), name
    for key in a.optimizer_state:
        assert np.array_equal(a.optimizer_state[key], b.optimizer_state[key]), key
    assert a.rng == b.rng


def test_second_training_on_the_same_folder_is_refused(data_file, tmp_path, capsys):
    out = tmp_path / "run"
    first = start(["--data", data_file, "--out", out, "--iterations", "1000000", "--val-every", "2",
                   "--workers", "0", *SMALL])
    try:
        assert wait_for(lambda: (out / "checkpoint.h5").is_file() and (out / "config.json").is_file())
        (out / ".checkpoint.h5.tmp-in-flight").write_bytes(b"being written")   # the first run's, not stale
        log = (out / "train.log").read_text()
        refused(["train", "--data", data_file, "--out", out, "--iterations", "2", *SMALL], capsys,
                f"PID {first.pid}", "another training")
        refused(["train", "--out", out, "--resume", "--iterations", "2"], capsys, f"PID {first.pid}")
        assert (out / ".checkpoint.h5.tmp-in-flight").exists()
        assert (out / "train.log").read_text().startswith(log)
    finally:
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=120)
    assert first.returncode == 143, err


def test_stale_temporaries_are_removed_when_a_run_resumes(data_file, tmp_path):
    T.Trainer(config(data_file, tmp_path, iterations=2)).run(handle_signals=False)
    stale = tmp_path / ".checkpoint.h5.tmp-12345"
    stale.write_bytes(b"\0" * 4096)
    trainer = T.Trainer(C.resume_config(tmp_path, iterations=3), resume=True)
    trainer.close()
    assert not stale.exists()


def test_second_sigterm_exits_143_without_a_checkpoint(data_file, tmp_path):
    """Two SIGTERMs before the first checkpoint: exit 143, and the message says there is none."""
    out = tmp_path / "run"
    proc = start(["--data", data_file, "--out", out, "--iterations", "1000000", "--val-every", "1000000",
                  "--workers", "0", "--device", fast_device(), "--depth", "3", "--width", "16", "--tile", "188",
                  "--val-slices", "4"])
    try:
        assert wait_for(lambda: log_says(out, "training at"))
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    if not (out / "checkpoint.h5").exists():
        assert "no checkpoint was written yet" in err and "holds the last checkpoint" not in err, err


def test_signal_before_the_first_step(data_file, tmp_path):
    trainer = T.Trainer(config(data_file, tmp_path, iterations=5))
    trainer.stop_signal = signal.SIGTERM
    result = trainer.run(handle_signals=False)
    trainer.close()
    assert result.reason == "signal" and result.iteration == 0
    assert not (tmp_path / "checkpoint.h5").exists() and not (tmp_path / "config.json").exists()
    assert "no checkpoint was written" in (tmp_path / "train.log").read_text()


def test_divergence_is_found_before_validating(data_file, tmp_path, capsys):
    """--val-every 1 with an absurd learning rate: a stop line naming the cause, not a NaN prediction."""
    code, _, err = run(["train", "--data", data_file, "--out", tmp_path / "run", "--iterations", "20",
                        "--val-every", "1", "--lr", "1e6", "--workers", "0", "-q", *SMALL], capsys)
    assert code == 2 and err.count("\n") == 1 and "NaN or infinite" in err and "--lr" in err, err
    log = (tmp_path / "run" / "train.log").read_text()
    assert "contains NaN" not in err
    assert "stopped:" in log and "contains NaN" not in log


def test_failed_resume_keeps_the_stored_settings(data_file, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(["train", "--data", data_file, "--out", out, "--iterations", "2", "--val-every", "2",
                        "--workers", "0", "-q", *SMALL], capsys)
    assert code == 0, err
    before = (out / "config.json").read_text()
    code, _, err = run(["train", "--out", out, "--resume", "--iterations", "30", "--lr", "1e6", "-q"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--lr" in err, err
    assert (out / "config.json").read_text() == before
    assert json.loads(before)["settings"]["lr"] == C.DEFAULT_LR[json.loads(before)["settings"]["optimizer"]]
    code, _, err = run(["train", "--out", out, "--resume", "--iterations", "4", "-q"], capsys)
    assert code == 0, err                                          # a plain --resume goes on as before


def test_no_best_model_is_named_without_validation(tmp_path, capsys):
    """Four slices: no validation slices by default, so no best.h5, and the last line does not name it."""
    data = write_data(tmp_path / "four.h5", n=4)
    code, out, err = run(["train", "--data", data, "--out", tmp_path / "run", "--iterations", "2", "--workers", "0",
                          "--device", fast_device(), "--depth", "3", "--width", "4", "--tile", "92"], capsys)
    assert code == 0, err
    assert not (tmp_path / "run" / "best.h5").exists()
    assert "best.h5" not in out and "no validation" in out


def test_a_refused_start_leaves_the_folder_as_it_was(data_file, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    refused(["train", "--data", data_file, "--out", tmp_path, "--tile", "90", *SMALL[:-4]], capsys, "--tile",
            folders=[tmp_path])
    refused(["train", "--data", tmp_path / "missing.h5", "--out", tmp_path, *SMALL], capsys, "missing.h5",
            folders=[tmp_path])


def test_a_second_signal_lost_in_a_finaliser_still_stops_the_run(capsys):
    """Python drops an exception raised inside ``__del__`` (Numba's compiler runs many): the second
    signal's SecondSignal reaches the main thread anyway, with no traceback printed."""
    from minunet.training.signals import SecondSignal, install_handlers, restore_handlers

    class StoppingRun:
        stop_signal, echo = signal.SIGTERM, None       # the first signal has arrived

    class Finaliser:
        def __del__(self):
            raise SecondSignal(signal.SIGTERM)

    previous = install_handlers(StoppingRun())
    try:
        with pytest.raises(SecondSignal) as stopped:
            Finaliser()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                time.sleep(0.01)
        assert stopped.value.signum == signal.SIGTERM
    finally:
        restore_handlers(previous)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Exception ignored" not in err, err
