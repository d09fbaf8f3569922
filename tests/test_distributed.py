"""Data-parallel training: the pieces in-process, and real runs of 2 ranks under MPICH's mpiexec.

The MPI tests launch ``mpiexec -n 2`` (the MPICH wheel of the ``test`` extra; its launcher runs as
root and with as many ranks as cores) on a tiny network, one CPU thread per rank.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import h5py
import numpy as np
import pytest

from minunet.data.sampler import TileSampler
from minunet.errors import UserError
from minunet.model.checkpoint import load_checkpoint
from minunet.model.geometry import check_tile
from minunet.training import distributed as D
from minunet.training import trainer as T
from minunet.training.collective import Communicator
from minunet.training.commstats import CommStats
from minunet.training.config import TrainConfig, resume_config
from tests.distributed_driver import TINY
from tests.test_train import write_data

ROOT = Path(__file__).resolve().parents[1]
MPIEXEC = shutil.which("mpiexec", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
TIMEOUT_S = 8                      # MINUNET_COMM_TIMEOUT in the tests that stop a rank
CLI_TINY = ["--depth", "3", "--width", "4", "--tile", "92", "--val-slices", "4", "--device", "cpu"]


def needs_mpi():
    pytest.importorskip("mpi4py")
    if MPIEXEC is None:
        pytest.skip("no mpiexec (pip install 'minunet[mpi]')")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    """The tiny data of test_train, with an unlabelled band (255) in training slices 1-3, so that
    ranks count different numbers of pixels in their tiles."""
    path = write_data(tmp_path_factory.mktemp("data") / "tiny.h5")
    with h5py.File(path, "r+") as f:
        labels = f["labels"][...]
        labels[1:4, 20:34, :] = 255           # (the file check reads slice 0)
        f["labels"][...] = labels
    return path


def mpiexec(*args, ranks=2, timeout=None, **env):
    """Start ``mpiexec -n ranks ARGS`` (a Popen), one thread per rank."""
    environ = dict(os.environ, NUMBA_NUM_THREADS="1", PYTHONPATH=str(ROOT), **env)
    return subprocess.Popen([MPIEXEC, "-n", str(ranks), *map(str, args)], cwd=ROOT, env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def train_cli(*args, ranks=2):
    proc = mpiexec(sys.executable, "-m", "minunet.cli.main", "train", *args, ranks=ranks)
    out, err = proc.communicate(timeout=240)
    return proc.returncode, out, err


# ----------------------------------------------------------------------------- in-process pieces

def test_launched_ranks_from_the_launchers_environment():
    assert D.launched_ranks({}) == 1
    assert D.launched_ranks({"PMI_SIZE": "4"}) == 4                      # MPICH, Intel MPI
    assert D.launched_ranks({"OMPI_COMM_WORLD_SIZE": "3"}) == 3          # Open MPI
    assert D.launched_ranks({"SLURM_STEP_NUM_TASKS": "8", "SLURM_NTASKS": "16"}) == 8
    assert D.launched_ranks({"SLURM_NTASKS": "16"}) == 1                 # a batch script, not srun
    assert isinstance(D.connect({}), D.SingleProcess)


def test_threads_divide_shared_cpus_and_keep_bound_ones():
    all16 = set(range(16))
    assert D.threads_per_rank(all16, [all16]) == 8                       # mpiexec without binding
    assert D.threads_per_rank(all16, [all16] * 3) == 4
    assert D.threads_per_rank({0, 1, 2, 3}, [{4, 5, 6, 7}]) == 4          # bound to their own cores
    assert D.threads_per_rank({0}, [{0}, {0}]) == 1                      # oversubscribed: at least one
    env = {}
    assert D.set_cpu_threads(3, env) == 3 and env["NUMBA_NUM_THREADS"] == "3"
    assert D.set_cpu_threads(5, {"NUMBA_NUM_THREADS": "2"}) == 2        # the user's choice stands


def test_timeout_setting():
    assert D.comm_timeout({}) == D.DEFAULT_TIMEOUT_S
    assert D.comm_timeout({D.TIMEOUT_VARIABLE: "2.5"}) == 2.5
    for bad in ("0", "soon", "-3"):
        with pytest.raises(UserError, match=D.TIMEOUT_VARIABLE):
            D.comm_timeout({D.TIMEOUT_VARIABLE: bad})


def test_each_rank_draws_its_own_tiles(data_file):
    """Tile k of rank r is a pure function of (seed, r, k); rank 0 draws what one process draws."""
    g = check_tile(92, 3, 2)
    make = lambda rank: TileSampler(data_file, [0, 1, 2, 3], g.input_size, g.output_size, seed=7, rank=rank)
    with make(0) as single, make(0) as r0, make(1) as r1, make(1) as again, make(2) as r2:
        for k in (0, 5):
            for a, b in zip(single.sample_at(k), r0.sample_at(k)):
                assert np.array_equal(a, b)
            for a, b in zip(r1.sample_at(k), again.sample_at(k)):
                assert np.array_equal(a, b)
            assert not np.array_equal(r0.sample_at(k)[0], r1.sample_at(k)[0])
            assert not np.array_equal(r1.sample_at(k)[0], r2.sample_at(k)[0])


def test_rank_dropout_keeps_rank_0s_state():
    rng0, rng1 = np.random.default_rng(3), np.random.default_rng(3)
    ranked = D.RankDropout(rng1, 1)
    seeds0 = [int(rng0.integers(2 ** 62)) for _ in range(4)]
    seeds1 = [ranked.integers(2 ** 62) for _ in range(4)]
    assert all(0 <= s < 2 ** 62 for s in seeds1) and not set(seeds0) & set(seeds1)
    assert ranked.bit_generator.state == rng0.bit_generator.state       # what checkpoint.h5 saves
    assert D.RankDropout(np.random.default_rng(3), 2).integers(2 ** 62) != seeds1[0]


def test_resume_note_says_what_changes():
    assert D.resume_note(2, 2, 1) is None
    note = D.resume_note(4, 2, 1)
    assert "effective batch becomes 2" in note and "instead of 4" in note and "resume with 4 ranks" in note


class TwoRanks(Communicator):
    """Rank ``rank`` of 2 in-process: the other rank's start ended with ``theirs`` (b"" if it went well)."""

    def __init__(self, rank, theirs):
        super().__init__(rank, 2, timeout=1.0)
        self.theirs = theirs

    def _allgather_bytes(self, data):
        return [data, self.theirs] if self.rank == 0 else [self.theirs, data]


def test_an_error_on_any_rank_ends_every_rank_and_rank_0_says_it():
    with TwoRanks(0, b"").agreement():
        pass                                                       # nobody failed
    with pytest.raises(UserError, match="^rank 1 of 2: --data x.h5: no such file$"):
        with TwoRanks(0, b"--data x.h5: no such file").agreement():
            pass
    with pytest.raises(UserError, match="^bad tile$"):              # rank 0's own error, as it was
        with TwoRanks(0, b"").agreement():
            raise UserError("bad tile")
    with pytest.raises(SystemExit) as exit_:                        # the others leave quietly
        with TwoRanks(1, b"").agreement():
            raise UserError("bad tile")
    assert exit_.value.code == 2
    with pytest.raises(ZeroDivisionError):                          # a bug keeps its traceback
        with TwoRanks(1, b"").agreement():
            1 / 0


def test_communication_report(monkeypatch):
    clock = iter([0.0, 1.0, 1.5, 2.0, 2.25, 4.0, 4.25, 4.5, 4.75, 6.0])
    monkeypatch.setattr("minunet.training.commstats.time.perf_counter", lambda: next(clock))
    stats = CommStats()
    for _ in range(2):
        with stats.timing("pack"):
            pass
        with stats.timing("sum"):
            pass
        stats.step_done()
    assert stats.due(10, 5) and not stats.due(11, 5)
    assert stats.medians() == (3.75, 0.25, 0.0, 0.25)              # the second step (2.25 -> 6.0) only
    assert stats.report().endswith("summing 250.0 ms (13.3% of the step)")


def test_nccl_path_imports_and_explains_a_missing_gpu(monkeypatch):
    from minunet.training import nccl
    if "cupy" not in sys.modules:
        monkeypatch.setitem(sys.modules, "cupy", None)               # CuPy not installed
        with pytest.raises(UserError, match=r"pip install 'minunet\[cuda,mpi\]'"):
            nccl.choose_gpu(0)

    def no_device():
        raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")
    fake_nccl = types.SimpleNamespace(available=True)
    fake_cuda = types.SimpleNamespace(nccl=fake_nccl, runtime=types.SimpleNamespace(getDeviceCount=no_device))
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(cuda=fake_cuda))
    monkeypatch.setitem(sys.modules, "cupy.cuda", fake_cuda)
    monkeypatch.setitem(sys.modules, "cupy.cuda.nccl", fake_nccl)
    with pytest.raises(UserError, match="no GPU visible to this rank.*--device cpu"):
        nccl.choose_gpu(0)


# ----------------------------------------------------------------------------- 2 ranks under mpiexec

class PairSampler:
    """One process at --batch 2, fed tile k of rank 0 and tile k of rank 1 at step k."""

    def __init__(self, samplers):
        self.samplers = samplers

    def batch(self, n):
        assert n == len(self.samplers)
        return tuple(np.stack(parts) for parts in zip(*(s.sample() for s in self.samplers)))

    def state(self):
        return self.samplers[0].state()

    def set_state(self, state):
        for s in self.samplers:
            s.set_state(state)

    def close(self):
        for s in self.samplers:
            s.close()


def test_two_ranks_at_batch_1_train_like_one_at_batch_2(data_file, tmp_path):
    """Deep supervision and unlabelled pixels: every loss term is shared by its pixel counts."""
    needs_mpi()
    report, steps = tmp_path / "report.json", 4
    proc = mpiexec(sys.executable, "-m", "tests.distributed_driver", data_file, tmp_path / "ranks", report,
                   "--iterations", steps, "--deep")
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    ranks = json.loads(report.read_text())
    assert ranks["ranks"] == 2 and ranks["identical"] == [True] * steps       # bitwise, after every step

    g = check_tile(TINY["tile"], TINY["depth"], 2)
    seed = int(np.random.SeedSequence([0, T.SAMPLER_STREAM]).generate_state(1)[0])
    pair = PairSampler([TileSampler(data_file, [0, 1, 2, 3], g.input_size, g.output_size, seed=seed, rank=r)
                        for r in (0, 1)])
    config = TrainConfig(**dict(TINY, data=str(data_file), out=str(tmp_path / "one"), iterations=steps, batch=2,
                                deep_supervision=True, dropout=0.0))
    losses = []
    one = T.Trainer(config, sampler=pair)
    one.run(progress=lambda trainer, loss: losses.append(loss), handle_signals=False)
    one.close()
    np.testing.assert_allclose(ranks["losses"], losses, rtol=1e-5)
    weights = np.load(str(report) + ".npz")
    for name, p in one.model.named_parameters():
        np.testing.assert_allclose(weights[name], p.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)


def test_resume_on_two_ranks_is_bitwise(data_file, tmp_path):
    """6 iterations in one go == 3, stop, resume to 6; dropout and a sampling worker on every rank."""
    needs_mpi()
    common = ["--data", data_file, "--val-every", "3", "--workers", "1", *CLI_TINY, "--quiet"]
    for args in (["--out", tmp_path / "a", "--iterations", 6], ["--out", tmp_path / "b", "--iterations", 3],
                 ["--out", tmp_path / "b", "--iterations", 6, "--resume"]):
        code, _, err = train_cli(*common, *args)
        assert code == 0, err
    a, b = load_checkpoint(tmp_path / "a" / "checkpoint.h5"), load_checkpoint(tmp_path / "b" / "checkpoint.h5")
    assert a.iteration == b.iteration == 6 and a.rng == b.rng and b.extra["ranks"] == 2
    for name in a.params:
        assert np.array_equal(a.params[name], b.params[name]), name
    for key in a.optimizer_state:
        assert np.array_equal(np.asarray(a.optimizer_state[key]), np.asarray(b.optimizer_state[key])), key
    record = json.loads((tmp_path / "b" / "config.json").read_text())
    assert record["ranks"] == 2 and [s["ranks"] for s in record["sessions"]] == [2, 2]

    one = T.Trainer(resume_config(tmp_path / "a", iterations=7), resume=True)      # one process goes on
    one.run(handle_signals=False)
    one.close()
    assert "resuming a run trained on 2 rank(s) with 1: the effective batch becomes 1" in (tmp_path / "a" / "train.log").read_text()
    assert load_checkpoint(tmp_path / "a" / "checkpoint.h5").extra["ranks"] == 1


def test_an_error_on_start_is_one_line(tmp_path):
    needs_mpi()
    code, out, err = train_cli("--data", tmp_path / "missing.h5", "--out", tmp_path / "run", "--iterations", 2)
    assert code == 2 and err.strip().splitlines() == [f"Error: --data {tmp_path / 'missing.h5'}: no such file; make "
                                                      f"one with `minunet data convert` or `minunet data synth -o demo.h5`"]


def _start_training(data_file, out, **env):
    """mpiexec -n 2 minunet train (endless), once every rank trains: (Popen, {rank: psutil.Process}, all processes)."""
    psutil = pytest.importorskip("psutil")
    proc = mpiexec(sys.executable, "-m", "minunet.cli.main", "train", "--data", data_file, "--out", out,
                   "--iterations", 10 ** 6, "--val-every", 10 ** 6, "--workers", "1", *CLI_TINY, **env)
    deadline = time.monotonic() + 120
    while "training at" not in _read(out / "train.log"):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    time.sleep(1.0)                                        # some steps
    tree = psutil.Process(proc.pid).children(recursive=True)
    ranks = {int(p.environ()["PMI_RANK"]): p for p in tree if "minunet.cli.main" in " ".join(p.cmdline())}
    assert sorted(ranks) == [0, 1]
    return proc, ranks, tree


def _no_orphans(tree, grace_s=10):
    """Every process of the run (launcher proxies, ranks, sampling workers) is gone (killed ones may take a moment)."""
    import psutil
    _, alive = psutil.wait_procs(tree, timeout=grace_s)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, [(p.pid, p.status(), p.cmdline()) for p in alive]


def _read(path):
    try:
        return path.read_text()
    except OSError:
        return ""


@pytest.mark.parametrize("target, sig, status", [("launcher", signal.SIGINT, 130), ("rank 1", signal.SIGTERM, 143)])
def test_a_signal_checkpoints_and_stops_every_rank(data_file, tmp_path, target, sig, status):
    """Ctrl-C to mpiexec (which passes it to every rank), or SIGTERM to one rank only."""
    needs_mpi()
    proc, ranks, tree = _start_training(data_file, tmp_path / "run")
    try:
        os.kill(proc.pid if target == "launcher" else ranks[1].pid, sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == status, err
    assert f"--out {tmp_path / 'run'} --resume" in err and "Traceback" not in err
    assert load_checkpoint(tmp_path / "run" / "checkpoint.h5").iteration >= 1
    _no_orphans(tree)


@pytest.mark.parametrize("fate, rank", [("killed", 1), ("hung", 0)])
def test_a_lost_rank_ends_the_run(data_file, tmp_path, fate, rank):
    """Killed: the launcher sees the death and ends the other rank. Hung (SIGSTOP): the other rank
    waits MINUNET_COMM_TIMEOUT, says so in one line and ends every rank. Nothing is left running."""
    needs_mpi()
    launched = time.monotonic()
    proc, ranks, tree = _start_training(data_file, tmp_path / "run", MINUNET_COMM_TIMEOUT=str(TIMEOUT_S))
    start = time.monotonic()
    try:
        ranks[rank].kill() if fate == "killed" else ranks[rank].suspend()
        _, err = proc.communicate(timeout=TIMEOUT_S + 60)
    finally:
        proc.kill()
    ended = time.monotonic()
    assert proc.returncode != 0 and ended - start < TIMEOUT_S + 30, err
    if fate == "hung":
        # The other rank's deadline starts when it posts the collective, which may be just before
        # the suspend (it waits for rank 0 to finish the same step): only the launch precedes it surely.
        ours = [line for line in err.splitlines() if line.startswith("minunet train: rank")]
        assert ended - launched >= TIMEOUT_S and len(ours) == 1, err
        assert f"waited {TIMEOUT_S} s for the other ranks" in ours[0] and f"--out {tmp_path / 'run'} --resume" in ours[0]
    _no_orphans(tree)
