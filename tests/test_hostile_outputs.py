"""Outputs: other datasets and inputs are never overwritten; unwritable folders and full disks end
in one line with nothing left behind (no partial file, no temporary file, no crash in HDF5).

Full disks are real where this machine allows a private mount namespace (``unshare``: a small
tmpfs); elsewhere those tests skip, and the simulated ones (a write that fails with ENOSPC)
still run. Read-only folders are a read-only bind mount for root (who may write anywhere), a
folder without write permission otherwise.
"""
import errno
import os

import h5py
import numpy as np
import pytest

from tests.backends import fast_device
from tests.cli_runner import run
from tests.hostile import in_namespace, refused, snapshot, tiff_image, tiny_model, unshare_available
from tests.test_train import write_data

NAMESPACE = unshare_available()
needs_namespace = pytest.mark.skipif(not NAMESPACE, reason="no private mount namespace (unshare) here")
TRAIN = ["--device", fast_device(), "--depth", "2", "--width", "2", "--tile", "44", "--val-slices", "none",
         "--workers", "0", "--iterations", "2", "-q"]
# checks switched off inside the subprocess, so that the write itself meets the full disk
UNCHECKED = ("import sys, os, minunet.files.space as s; s.free_bytes = lambda folder: None; "
             "os.posix_fallocate = lambda *x: None; from minunet.cli.main import main; main(sys.argv[1:])")


@pytest.fixture
def work(tmp_path, rng):
    tiny_model(tmp_path / "m.h5")
    tiff_image(tmp_path / "in.tif", rng.integers(0, 256, (40, 40), dtype=np.uint8))
    write_data(tmp_path / "d.h5", n=3, size=48)
    return tmp_path


def predict(work, output, *extra):
    return ["predict", "-m", work / "m.h5", work / "in.tif", "-o", output, "--device", "reference", "-q", *extra]


def test_hdf5_output_keeps_the_other_datasets(work, capsys):
    with h5py.File(work / "d.h5") as f:
        before = {name: f[name][()] for name in ("raw", "labels", "weights")}
    for _ in range(2):                                   # written, then replaced with --force
        code, _, err = run(predict(work, f"{work / 'd.h5'}:/pred", "--force"), capsys)
        assert code == 0, err
    with h5py.File(work / "d.h5") as f:
        assert set(f) == {"raw", "labels", "weights", "pred"}
        for name, array in before.items():
            np.testing.assert_array_equal(f[name][()], array)
    assert sorted(p.name for p in work.iterdir()) == ["d.h5", "in.tif", "m.h5"]


def test_an_input_is_never_an_output(work, capsys):
    refused(predict(work, work / "m.h5", "--force"), capsys, "is an input", folders=[work])
    refused(predict(work, f"{work / 'm.h5'}:/pred", "--force"), capsys, "is an input", folders=[work])
    refused(["predict", "-m", work / "m.h5", f"{work / 'd.h5'}:/raw", "-o", f"{work / 'd.h5'}:/pred", "--force",
             "--device", "reference"], capsys, "is an input", folders=[work])
    refused(["data", "convert", f"{work / 'd.h5'}:/raw", "--no-labels", "-o", work / "d.h5", "--force"], capsys,
            "is an input", folders=[work])


def test_parent_that_is_a_file(work, capsys):
    blocker = work / "in.tif"
    for args in (predict(work, blocker / "out.tif"), ["data", "synth", "-o", blocker / "s.h5", "--size", "32"],
                 ["data", "convert", work / "in.tif", "--no-labels", "-o", blocker / "x" / "d.h5"],
                 ["train", "--data", work / "d.h5", "--out", blocker / "run", *TRAIN]):
        refused(args, capsys, "is a file, not a folder", folders=[work])


def _read_only_runs(folder, commands):
    """(exit status, stderr) of each command with ``folder`` read-only."""
    if os.geteuid() != 0:
        from tests.cli_runner import run as run_here
        folder.chmod(0o500)
        try:
            return [run_here(args, _Capture())[::2] for args in commands]
        finally:
            folder.chmod(0o700)
    setup = f"mount --bind {folder} {folder} && mount -o remount,ro,bind {folder} {folder}"
    return [in_namespace(setup, ["-m", "minunet.cli.main", *map(str, args)]) for args in commands]


class _Capture:
    """A stand-in for pytest's capsys when commands run in this process (no root)."""

    def readouterr(self):
        import types
        return types.SimpleNamespace(out="", err="")


@pytest.mark.skipif(os.geteuid() == 0 and not NAMESPACE, reason="root writes anywhere without a read-only mount")
def test_read_only_folder(work, tmp_path_factory):
    locked = tmp_path_factory.mktemp("locked")
    commands = [predict(work, locked / "p.tif"), predict(work, locked / "p.h5"),
                ["data", "synth", "-o", locked / "s.h5", "--size", "32", "--slices", "2"],
                ["data", "convert", work / "in.tif", "--no-labels", "-o", locked / "d.h5"],
                ["train", "--data", work / "d.h5", "--out", locked / "run", *TRAIN]]
    before = snapshot(work)
    for args, (code, err) in zip(commands, _read_only_runs(locked, commands)):
        assert code == 2 and "Traceback" not in err, (args, err)
        assert err.count("\n") == 1 and "cannot write" in err and ("read-only" in err or "ermission" in err), err
    assert list(locked.iterdir()) == [] and snapshot(work) == before


@needs_namespace
def test_full_disk_is_found_before_writing(work, tmp_path_factory):
    full = tmp_path_factory.mktemp("full")
    setup = f"mount -t tmpfs -o size=256k none {full}"
    for args in (["data", "synth", "-o", full / "s.h5", "--size", "256", "--slices", "8"],
                 ["train", "--data", work / "d.h5", "--out", full / "run", *TRAIN]):
        code, err = in_namespace(setup, ["-m", "minunet.cli.main", *map(str, args)])
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        assert "free" in err or "no space" in err.lower(), err


@needs_namespace
@pytest.mark.parametrize("output", ["p.h5", "p.tif", "s.h5", "run"])
def test_full_disk_during_a_write(work, tmp_path_factory, output):
    """The checks before writing switched off: the write itself meets ENOSPC. One line, exit 2 (not a
    crash inside HDF5), and the file system is left as it was."""
    full = tmp_path_factory.mktemp("full")
    setup = f"mount -t tmpfs -o size=64k none {full} && head -c 40000 /dev/zero > {full}/ballast"
    if output == "s.h5":
        args = ["data", "synth", "-o", full / output, "--size", "128", "--slices", "4"]
    elif output == "run":
        args = ["train", "--data", work / "d.h5", "--out", full / output, *TRAIN, "--width", "8"]
    else:
        args = ["predict", "-m", work / "m.h5", work / "in.tif", "-o", full / output, "--device", "reference",
                "--output-format", "probs", "-q"]
        tiff_image(work / "in.tif", np.random.default_rng(0).random((4, 64, 64)).astype(np.float32))
    script = f"{setup} && {os.sys.executable} -c '{UNCHECKED}' " + " ".join(map(str, args)) + \
        f"; echo status=$?; find {full} -mindepth 1 -name '.*' -o -mindepth 1 -size 0"
    import subprocess
    proc = subprocess.run(["unshare", "-Urm", "sh", "-c", script], capture_output=True, text=True, timeout=180)
    status = int(proc.stdout.split("status=")[1].split()[0])
    hidden_or_empty = proc.stdout.split("status=")[1].split()[1:]
    assert status == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and "no space left on device" in proc.stderr, proc.stderr
    assert hidden_or_empty == [], hidden_or_empty            # no temporary, no empty file


def test_simulated_full_disk(work, capsys, monkeypatch):
    """Writes that fail with ENOSPC, wherever this runs: HDF5 (through the reserved file) and TIFF."""
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr("minunet.files.reserved.os.pwrite", no_space)
    refused(predict(work, work / "p.h5"), capsys, "p.h5", "no space left on device", folders=[work])
    refused(["data", "synth", "-o", work / "s.h5", "--size", "32", "--slices", "2"], capsys, "no space left",
            folders=[work])
    monkeypatch.setattr("tifffile.imwrite", no_space)
    refused(predict(work, work / "p.tif"), capsys, "p.tif", "no space left on device", folders=[work])


def test_free_space_is_checked_before_large_writes(work, capsys, monkeypatch):
    monkeypatch.setattr("minunet.files.space.free_bytes", lambda folder: 1000)
    refused(predict(work, work / "p.tif"), capsys, "p.tif", "only 1000 bytes are free", folders=[work])
    refused(["data", "synth", "-o", work / "s.h5", "--size", "32", "--slices", "2"], capsys, "are free",
            folders=[work])
